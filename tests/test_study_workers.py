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


def test_training_seconds_sum_every_process_part():
    """Records of a run stopped at step 150 and resumed there by a second process (one at 60 img/s, the
    other at 30), with a speed-less record and a non-finite one: each interval counts once, at its speed."""
    from jaxconv.train.metrics import training_seconds

    records = [{"step": 100, "split": "train", "images_per_sec": 64.0},  # 100 steps of 64 images: 100 s
               {"step": 150, "split": "train", "images_per_sec": 32.0},  # first process stops: 100 s
               {"step": 150, "split": "val", "images_per_sec": 1.0},  # not a train record
               {"step": 200, "split": "train", "images_per_sec": 16.0},  # second process: 200 s
               {"step": 250, "split": "train"},  # no speed: the interval is not timed
               {"step": 300, "split": "train", "images_per_sec": "inf"}]  # written by _json_float
    assert training_seconds(records, 64) == 400.0
    assert training_seconds([{"step": 5, "split": "train"}], 64) is None and training_seconds([], 64) is None


def test_a_resumed_run_is_timed_whole(tmp_path):
    """A study run stopped (SIGTERM) and finished by a second process reports the training time of both
    parts, from the metrics, not the second process's clock."""
    import signal
    import time

    from jaxconv.train.metrics import read_metrics, training_seconds

    study, workdir = tmp_path / "one.py", tmp_path / "study"
    study.write_text(STUDY.replace("for k in range(3)", "for k in range(1)").replace(
        '"train.steps=2"', '"train.steps=150", "train.log_every=1", "checkpoint.every=0"'))
    first = start(study, workdir)
    deadline = time.time() + 180
    while not any(r["step"] >= 3 for r in read_metrics(workdir / "r0")):
        assert first.poll() is None and time.time() < deadline, first.communicate()
        time.sleep(0.01)
    first.send_signal(signal.SIGTERM)
    assert "study: r0" not in finish(first)  # stopped, not finished
    first_part = training_seconds(read_metrics(workdir / "r0"), 32)
    out = finish(start(study, workdir))
    assert trained(out) == {"r0"}
    row = json.loads((workdir / "results.json").read_text())[0]
    whole = training_seconds(read_metrics(workdir / "r0"), 32)
    assert row["steps"] == 150 and row["train_seconds"] == round(whole, 1) and whole > first_part > 0, row
