"""Breaking things on purpose: several processes, SIGKILL at random points, SIGTERM, changing device
counts, NaN/Inf, and run-to-run determinism. docs/fault-tolerance.md states what these tests prove.

Every test runs one configuration, R: the LeNet-5 smoke experiment, batch 32, 40 steps, a metrics
record per step (so that no value is averaged away), no evaluation before the end. Sharing it keeps
the compiled programs shared too (the session's compilation cache holds one per device count).
"""

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import REPO, run_cli, start_cli
from jaxconv import experiments
from jaxconv.config import ParallelConfig, apply_overrides
from jaxconv.errors import NonFiniteError
from jaxconv.train import loop
from jaxconv.train.checkpoint import Checkpoints
from jaxconv.train.metrics import MetricsWriter, read_metrics

STEPS = 40
R = ["parallel.num_devices=1", "train.log_every=1", "data.batch_size=32", "train.eval_every=0", f"train.steps={STEPS}"]
R_CLI = ["--smoke", *[arg for item in R for arg in ("--set", item)]]


def smoke(*overrides: str):
    """R with ``overrides``."""
    return apply_overrides(experiments.load("lenet_modern_mnist", smoke=True), [*R, *overrides])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """R run once, uninterrupted, on one device, in this process (checkpoints 10, 20, 30, 40 kept)."""
    workdir = tmp_path_factory.mktemp("reference")
    loop.train(smoke("checkpoint.keep_latest=9"), workdir)
    return workdir


def saved_state(workdir: Path, step: int | None = None):
    """The single-copy state of a workdir's latest (or ``step``) checkpoint, restored in this process."""
    cfg = loop.config_lib.load(workdir / "config.json")
    cfg = cfg.replace(parallel=ParallelConfig(num_devices=1, distributed="off"))  # whatever wrote it
    run = loop.build_run(cfg)
    ckpt = Checkpoints(workdir / "checkpoints", cfg.checkpoint, read_only=True)
    step = ckpt.latest_step() if step is None else step
    return jax.device_get(ckpt.restore(step, run.init()))


def saved_steps(workdir: Path) -> list[int]:
    return Checkpoints(workdir / "checkpoints", loop.config_lib.load(workdir / "config.json").checkpoint,
                       read_only=True).manager.all_steps()


def untimed(records: list[dict]) -> list[dict]:
    """Metrics records without their one wall-clock field, ``images_per_sec``."""
    return [{k: v for k, v in r.items() if k != "images_per_sec"} for r in records]


def assert_close_runs(workdir: Path, reference: Path, rtol: float, atol: float) -> None:
    """Same records (steps, splits, keys) and, to float tolerance, the same values and final state."""
    assert_close_records(untimed(read_metrics(workdir)), untimed(read_metrics(reference)), rtol, atol)
    a, b = saved_state(workdir), saved_state(reference)
    assert int(a.step) == int(b.step)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


def assert_close_records(got: list[dict], want: list[dict], rtol: float, atol: float) -> None:
    assert [(r["step"], r["split"], sorted(r)) for r in got] == [(r["step"], r["split"], sorted(r)) for r in want]
    for g, w in zip(got, want):
        keys = sorted(set(g) - {"step", "split"})
        np.testing.assert_allclose([g[k] for k in keys], [w[k] for k in keys], rtol=rtol, atol=atol,
                                   err_msg=f"step {g['step']} {g['split']} {keys}")


def copy_at(reference: Path, workdir: Path, step: int) -> None:
    """``workdir`` as the reference run was after checkpoint ``step`` (as if it had stopped there)."""
    shutil.copytree(reference, workdir)
    for later in saved_steps(workdir):
        if later > step:
            shutil.rmtree(workdir / "checkpoints" / str(later))
    MetricsWriter(workdir).resume_at(step)


def last_logged_step(workdir: Path) -> int:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return 0
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]
    return lines[-1]["step"] if lines else 0


def wait_for_step(workdir: Path, step: int, procs, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for proc in procs:
            assert proc.poll() is None, proc.communicate()
        if last_logged_step(workdir) >= step:
            return
        time.sleep(0.005)
    raise TimeoutError(step)


# ----------------------------------------------------------------------------------------------
# 1. Several processes: 2 processes x 2 CPU devices == 1 process x 4 devices


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_processes(args: list[str], num: int, devices_each: int) -> list[subprocess.Popen]:
    port = free_port()  # loopback only; the coordinator (process 0) binds it
    env = dict(os.environ, XLA_FLAGS=f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count={devices_each}")
    return [subprocess.Popen([sys.executable, "-m", "jaxconv", *args,
                              "--set", f"parallel.coordinator_address=127.0.0.1:{port}",
                              "--set", f"parallel.num_processes={num}", "--set", f"parallel.process_id={i}"],
                             cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(num)]


def finish(procs, timeout: float = 300) -> list[tuple[int, str]]:
    outs = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        outs.append((proc.returncode, out + err))
    return outs


def test_two_processes_train_like_one_process_and_agree_on_sigterm(reference, tmp_path):
    """2 processes x 2 devices (jax.distributed on 127.0.0.1, gloo collectives) == 1 process x 4 devices.

    Both runs start from the 1-device reference's checkpoint 10 (so both processes read a checkpoint).
    SIGTERM reaches process 1 only, yet both save the same step S (they agree at the next log step)
    and exit 0; one process then resumes from S (reading what two wrote) and ends where 1 x 4 does."""
    ref, mp = tmp_path / "ref", tmp_path / "mp"
    copy_at(reference, ref, 10)
    loop.train(smoke("parallel.num_devices=4", "checkpoint.keep_latest=9"), ref)
    copy_at(reference, mp, 10)
    procs = start_processes(["train", "lenet_modern_mnist", *R_CLI, "--set", "parallel.num_devices=0",
                             "--set", "checkpoint.keep_latest=9", "--workdir", str(mp)], num=2, devices_each=2)
    wait_for_step(mp, 12, procs)
    procs[1].send_signal(signal.SIGTERM)
    outs = finish(procs)
    assert [code for code, _ in outs] == [0, 0], outs
    assert "resuming from checkpoint 10" in outs[0][1]
    saved = [re.findall(r"SIGTERM: saved step (\d+)", out) for _, out in outs]
    assert saved[0] == saved[1] and len(saved[0]) == 1, outs  # the same step on both
    stop = int(saved[0][0])
    assert 12 <= stop < STEPS and saved_steps(mp)[-1] == stop == last_logged_step(mp)
    assert not [p.name for p in (mp / "checkpoints").iterdir() if "tmp" in p.name]
    # Process 0 alone writes metrics: one record per step (a second writer would duplicate them).
    # Cross-process (gloo) and in-process all-reduces add in different orders: a few ulps per step.
    got, want = untimed(read_metrics(mp)), untimed(read_metrics(ref))
    assert [r["step"] for r in got] == list(range(1, stop + 1))
    assert_close_records(got, want[:stop], rtol=1e-5, atol=1e-6)

    loop.train(smoke("parallel.num_devices=4", "checkpoint.keep_latest=9"), mp)  # from the 2-process checkpoint
    assert_close_runs(mp, ref, rtol=1e-5, atol=2e-6)


# ----------------------------------------------------------------------------------------------
# 2. SIGKILL at random points, in and out of checkpoint writes

# Kills per run of the test: JAXCONV_FUZZ_KILLS=N sets it (20 for the full run), 10 by default, 3 with CI=true.
FUZZ_KILLS = int(os.environ.get("JAXCONV_FUZZ_KILLS") or (3 if os.environ.get("CI") == "true" else 10))


def complete_steps(workdir: Path) -> list[int]:
    """Finished checkpoints: orbax writes a step into a temporary directory and renames it when done."""
    directory = workdir / "checkpoints"
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []


def partial_checkpoints(workdir: Path, since: float = 0.0) -> list[str]:
    """Temporary (unfinished) checkpoint directories, those created after ``since`` only."""
    directory = workdir / "checkpoints"
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        try:
            if "tmp" in p.name and p.stat().st_ctime > since:
                found.append(p.name)
        except FileNotFoundError:  # renamed or removed meanwhile
            pass
    return sorted(found)


def logged_since(workdir: Path, since: float) -> int:
    """The last step logged by a run started at ``since`` (0 if none yet). A restart first rewrites
    metrics.jsonl without the records after its checkpoint; until then the file is the old run's."""
    try:
        if (workdir / "metrics.jsonl").stat().st_mtime <= since:
            return 0
    except FileNotFoundError:
        return 0
    return last_logged_step(workdir)


# Restarts are the fuzz's cost, and imports (jax, flax, orbax) half of a restart: a "zygote" imports
# them once, then forks one child per run, which runs `jaxconv ARGS` (jaxconv.cli.main) with its output
# in a file. Nothing has touched a JAX backend before the fork. A SIGKILLed child dies as a process
# started from the shell would; the run that finishes is a fresh `python -m jaxconv` process.
ZYGOTE = """
import json, os, sys
import jaxconv.experiments.lenet_modern_mnist, jaxconv.cli, jaxconv.train.loop
for line in sys.stdin:
    argv, out = json.loads(line)
    pid = os.fork()
    if pid == 0:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1), os.dup2(fd, 2)
        code = 1
        try:
            code = jaxconv.cli.main(argv)
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os._exit(code)
    print(pid, flush=True)
    print(os.waitpid(pid, 0)[1], flush=True)
"""


class Zygote:
    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], cwd=REPO, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def start(self, argv: list[str], out: Path) -> "Child":
        self.proc.stdin.write(json.dumps([argv, str(out)]) + "\n")
        self.proc.stdin.flush()
        return Child(self, int(self.proc.stdout.readline()), out)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


class Child:
    def __init__(self, zygote: Zygote, pid: int, out: Path):
        self.zygote, self.pid, self.out, self.status = zygote, pid, out, None

    def running(self) -> bool:
        return self.status is None and os.path.exists(f"/proc/{self.pid}") and \
            Path(f"/proc/{self.pid}/stat").read_text().split(") ")[1][0] != "Z"

    def kill(self) -> str:
        os.kill(self.pid, signal.SIGKILL)
        self.status = int(self.zygote.proc.stdout.readline())  # the zygote reaped it
        return self.out.read_text()


def wait_until(predicate, proc, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert proc.running(), f"the run ended before it was killed: {proc.out.read_text()}"
        assert time.time() < deadline, "timed out"
        time.sleep(0.002)


def test_sigkill_at_random_points_then_resume_bit_for_bit(reference, tmp_path):
    """Seeded SIGKILLs: during startup, after a step, and right after a checkpoint write begins (the
    write is async). Each restart resumes from the last complete checkpoint; partial checkpoint
    directories are left behind and cleaned up; the finished run equals the uninterrupted one bit for bit."""
    workdir = tmp_path / "run"
    args = ["train", "lenet_modern_mnist", *R_CLI, "--set", "checkpoint.every=1", "--workdir", str(workdir)]
    rng = random.Random(0)
    log = []
    zygote = Zygote()
    for i in range(FUZZ_KILLS):
        complete = complete_steps(workdir)
        resumed = complete[-1] if complete else 0
        start = time.time()
        proc = zygote.start(args, tmp_path / f"out{i}.txt")
        mode = rng.choice(["startup", "step", "save", "save"])
        if mode == "startup":  # anywhere from imports to the first steps
            deadline = start + rng.uniform(0.0, 3.0)
            wait_until(lambda: time.time() > deadline or logged_since(workdir, start) > resumed, proc)
        elif mode == "step":  # just after the metrics of the 1st, 2nd or 3rd new step are written
            k = rng.randint(1, 3)
            wait_until(lambda: logged_since(workdir, start) >= resumed + k, proc)
            time.sleep(rng.uniform(0.0, 0.02))
        else:  # just after the write of the 1st or 2nd new checkpoint begins (a new save waits for the last)
            k = rng.randint(1, 2)
            wait_until(lambda: any(int(name.split(".")[0]) >= resumed + k
                                   for name in partial_checkpoints(workdir, since=start)), proc)
            time.sleep(rng.uniform(0.0, 0.01))
        out = proc.kill()
        started_from = re.findall(r"resuming from checkpoint (\d+)", out)
        if started_from:  # the line is printed once the checkpoint is restored
            assert started_from == [str(resumed)], (complete, out)
        log.append({"mode": mode, "resumed": resumed, "verified": bool(started_from),
                    "in_save": bool(partial_checkpoints(workdir, since=start)), "reached": logged_since(workdir, start)})
        assert last_logged_step(workdir) < STEPS, "the run finished before it was killed"
    zygote.close()
    last = complete_steps(workdir)[-1]
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    assert f"resuming from checkpoint {last}\n" in done.stdout
    assert not partial_checkpoints(workdir)
    ref, resumed = saved_state(reference), saved_state(workdir)
    assert int(ref.step) == int(resumed.step) == STEPS
    jax.tree.map(np.testing.assert_array_equal, ref, resumed)
    assert untimed(read_metrics(workdir)) == untimed(read_metrics(reference))
    hits = sum(k["in_save"] for k in log)
    print(f"\n{len(log)} kills: {hits} during a checkpoint write, "
          f"{sum(k['verified'] for k in log)} restarts checked to resume from the last complete checkpoint; "
          f"{log}")
    assert hits >= 1 and len(log) == FUZZ_KILLS


# ----------------------------------------------------------------------------------------------
# 3. SIGTERM (preemption)


def test_sigterm_saves_the_step_it_reached_and_exits_0(reference, tmp_path):
    proc = start_cli("train", "lenet_modern_mnist", *R_CLI, "--set", "checkpoint.every=0", "--workdir", str(tmp_path))
    wait_for_step(tmp_path, 3, [proc])
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    reached = last_logged_step(tmp_path)  # the loop flushes the step that saw the signal, then saves it
    assert re.findall(r"SIGTERM: saved step (\d+), exiting", out) == [str(reached)] and 3 <= reached < STEPS
    assert complete_steps(tmp_path) == [reached] and not partial_checkpoints(tmp_path)  # complete before exit
    state = saved_state(tmp_path, reached)
    assert int(state.step) == reached
    assert untimed(read_metrics(tmp_path)) == untimed(read_metrics(reference))[:reached]  # the same trajectory


# ----------------------------------------------------------------------------------------------
# 4. Elastic restore: the device count (and engine) may change at every restart


class PreemptAt(MetricsWriter):
    """A MetricsWriter that sends this process SIGTERM while writing step ``at``: the loop then
    stops, as on a real preemption, after the next step, which it saves."""

    at = 0

    def write(self, step, split, values):
        super().write(step, split, values)
        if step == self.at:
            os.kill(os.getpid(), signal.SIGTERM)


def test_restore_on_8_1_2_4_and_back_to_8_devices_with_either_engine_continues_the_run(reference, tmp_path,
                                                                                      monkeypatch):
    """One run preempted 4 times, restarted each time on another device count or engine: the
    reference's checkpoint 10 (1 device) -> jit x 8 -> jit x 1 -> pmap x 2 -> jit x 4 -> jit x 8 (to the
    end). jit saves a replicated array, pmap a single-device copy; every restore lays it out anew."""
    workdir = tmp_path / "run"
    copy_at(reference, workdir, 10)
    monkeypatch.setattr(loop, "MetricsWriter", PreemptAt)
    segments = [("jit", 8, 15), ("jit", 1, 21), ("pmap", 2, 27), ("jit", 4, 33), ("jit", 8, 0)]
    stops = []
    for mode, devices, at in segments:
        PreemptAt.at = at
        result = loop.train(smoke(f"parallel.mode={mode}", f"parallel.num_devices={devices}",
                                  "checkpoint.keep_latest=9"), workdir)
        stops.append(result["step"])
        assert result.get("terminated", False) == bool(at)
    assert stops == [16, 22, 28, 34, STEPS]
    assert set(saved_steps(workdir)) >= set(stops)
    # Batch gradients are summed over 8, 1, 2 or 4 devices, in a different order each time: the
    # run agrees with the 1-device one to float32 rounding, amplified a little by Adam over 30 steps.
    # A lost or repeated step, optimizer state or batch would be off by ~1e-3 (the learning rate).
    assert_close_runs(workdir, reference, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# 5. NaN/Inf


def poison_steps(monkeypatch, steps: set[int]) -> None:
    """Batches of these (1-based) steps get a NaN mask: loss, gradients and grad norm become NaN."""
    real = loop.train_batches

    def batches(data, batch_size, seed, start_step, *args, **kwargs):
        for step, batch in enumerate(real(data, batch_size, seed, start_step, *args, **kwargs), start_step + 1):
            yield {**batch, "mask": np.full_like(batch["mask"], np.nan)} if step in steps else batch

    monkeypatch.setattr(loop, "train_batches", batches)


@pytest.mark.parametrize("mode, devices", [("jit", 1), ("pmap", 2)])
def test_nonfinite_loss_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(
        reference, tmp_path, monkeypatch, capfd, mode, devices):
    """Resumed from the reference's checkpoint 10, the run logs steps 11-12, then meets NaN at step 14,
    the 2nd of the window 13-15: every step of a window is checked, not only its first."""
    from jaxconv import cli

    workdir = tmp_path / "run"
    copy_at(reference, workdir, 10)
    before = {p: p.read_bytes() for p in (workdir / "checkpoints").rglob("*") if p.is_file()}
    poison_steps(monkeypatch, {14})
    capfd.readouterr()
    code = cli.main(["train", "lenet_modern_mnist", *R_CLI, "--set", f"parallel.mode={mode}",
                     "--set", f"parallel.num_devices={devices}", "--set", "train.log_every=4",
                     "--set", "checkpoint.every=5", "--workdir", str(workdir)])
    err = capfd.readouterr().err.strip()
    assert code == NonFiniteError.exit_code
    assert err == "jaxconv: error: non-finite loss (nan) at step 14; stopped; last good checkpoint: step 10"
    assert complete_steps(workdir) == [10] and not partial_checkpoints(workdir)  # step 15 was never saved
    assert {p: p.read_bytes() for p in (workdir / "checkpoints").rglob("*") if p.is_file()} == before
    assert max(r["step"] for r in read_metrics(workdir)) == 12  # nothing logged from the bad window on


def test_skip_mode_skips_nonfinite_updates_and_says_which(reference, tmp_path, monkeypatch, capfd):
    poison_steps(monkeypatch, {14, 15})
    result = loop.train(smoke("train.nonfinite=skip", "train.log_every=4", "checkpoint.every=5",
                              "checkpoint.keep_latest=9"), tmp_path)
    err = capfd.readouterr().err.strip()
    assert err == "jaxconv: warning: non-finite loss (nan) at step 14; skipped the update of step(s) 14, 15"
    assert result["step"] == STEPS
    window = next(r for r in read_metrics(tmp_path) if r["step"] == 15 and r["split"] == "train")  # steps 13-15
    assert window["skipped"] == pytest.approx(2 / 3)
    for step in complete_steps(tmp_path):
        assert all(np.isfinite(x).all() for x in jax.tree.leaves(saved_state(tmp_path, step)))
    # Steps 1-13 are the uninterrupted run's: checkpoint 10 equals the reference's to float32 rounding.
    # Not bit for bit: the skip select makes it another XLA program, and on CPU the matmul-based convs
    # (jaxconv.models.conv.RULES) may then be fused and rounded differently (seen: 2e-7 absolute after 10
    # Adam steps).
    same = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)  # an update moves params ~1e-3
    jax.tree.map(same, saved_state(tmp_path, 10), saved_state(reference, 10))


# ----------------------------------------------------------------------------------------------
# 7. Determinism


def test_the_same_config_and_seed_give_the_same_metrics_file_bit_for_bit(reference, tmp_path):
    """Twice R: in this process (the reference) and as a command. Only ``images_per_sec`` (wall clock)
    may differ; every other byte of metrics.jsonl, and every parameter bit, is the same."""
    done = run_cli("train", "lenet_modern_mnist", *R_CLI, "--set", "checkpoint.keep_latest=9",
                   "--workdir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    wall_clock = re.compile(r', "images_per_sec": [0-9.e+-]+')
    ours, theirs = (wall_clock.sub("", (w / "metrics.jsonl").read_text()) for w in (tmp_path, reference))
    assert ours == theirs and ours.count("\n") == STEPS + 1
    jax.tree.map(np.testing.assert_array_equal, saved_state(tmp_path), saved_state(reference))
