"""Several processes running one study (``jaxconv train STUDY`` twice, the same workdir): each trains the
runs it claims, skips the ones another process holds, and the last to finish writes the report."""

import json
import subprocess
import sys

from conftest import REPO
from jaxconv.train import workdir as workdir_lib

STUDY = """
from jaxconv import experiments
from jaxconv.config import apply_overrides

_base = experiments.load_study("pixelcnn_variants", smoke=True)["pixelcnn"]
VARIANTS = {f"r{k}": apply_overrides(_base, [f"train.seed={k}", "train.steps=2", "parallel.num_devices=1"])
            for k in range(3)}
"""


def start(study, workdir):
    return subprocess.Popen([sys.executable, "-m", "jaxconv", "train", str(study), "--workdir", str(workdir)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc):
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err and "terminate called" not in err, err[-3000:]
    return out


def trained(out):
    return {line.split(":")[1].strip() for line in out.splitlines() if line.startswith("study: r") and "trained" in line}


def test_processes_share_a_study_and_the_last_writes_the_report(tmp_path):
    study, workdir = tmp_path / "seeds.py", tmp_path / "study"
    study.write_text(STUDY)
    workdir.mkdir()
    with workdir_lib.held(workdir / "r1.claim", "", workdir):  # as if another process were training r1
        out = finish(start(study, workdir))
    assert trained(out) == {"r0", "r2"} and "study: r1: skipped, another process is training it" in out
    assert "study: 2 of 3 runs finished" in out and not (workdir / "results.md").exists()

    first, second = start(study, workdir), start(study, workdir)  # r1 is left: one trains it
    outs = [finish(first), finish(second)]
    assert set.union(*map(trained, outs)) == {"r1"} and sum(len(trained(o)) for o in outs) == 1
    table = (workdir / "results.md").read_text().splitlines()
    assert len(table) == 3 and "| 0, 1, 2 |" in table[2]  # one variant, its three seeds
    rows = json.loads((workdir / "results.json").read_text())
    assert [r["run"] for r in rows] == ["r0", "r1", "r2"] and len({r["nll_nats"] for r in rows}) == 3


def test_a_resumed_run_is_timed_whole(tmp_path):
    """A study run stopped (SIGTERM) and finished by a second process reports the training time of both
    parts: the table's time compares variants, so it must not shrink to the last process's share. The
    first process is held (SIGSTOP) for PAUSE seconds mid-run, more than the second process takes."""
    import signal
    import time

    from jaxconv.train.metrics import read_metrics

    pause = 15.0
    study, workdir = tmp_path / "one.py", tmp_path / "study"
    study.write_text(STUDY.replace("for k in range(3)", "for k in range(1)").replace(
        '"train.steps=2"', '"train.steps=30", "train.log_every=1", "checkpoint.every=0"'))
    first = start(study, workdir)
    deadline = time.time() + 180
    while not any(r["step"] >= 25 for r in read_metrics(workdir / "r0")):
        assert first.poll() is None and time.time() < deadline, first.communicate()
        time.sleep(0.01)
    first.send_signal(signal.SIGSTOP)
    time.sleep(pause)
    first.send_signal(signal.SIGCONT)
    first.send_signal(signal.SIGTERM)
    assert "study: r0" not in finish(first)  # stopped, not finished
    clock = time.perf_counter()
    out = finish(start(study, workdir))
    second = time.perf_counter() - clock
    assert trained(out) == {"r0"} and second < pause, second
    row = json.loads((workdir / "results.json").read_text())[0]
    assert row["steps"] == 30 and row["train_seconds"] >= pause, row
