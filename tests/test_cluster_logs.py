"""Logs that suit a cluster (issue 14, items 3 and 4): plain lines when stderr is no terminal, an ETA
that leaves out the compile step, and an end-of-run summary with the commands to run next."""

import fcntl
import io
import os
import re
import struct
import termios
import threading
from pathlib import Path

import pytest
from conftest import run_cli

from jaxconv import cli, experiments
from jaxconv.train.metrics import read_metrics
from jaxconv.train.progress import Progress, SteadyRate, choose_form, format_eta

UNCLEAN = ("Traceback", "Exception ignored", "Fatal Python error", "terminate called", "Segmentation fault",
           "ERROR:asyncio", "warning")
LINE = re.compile(r"step (\d+)/20: loss \d+\.\d{4}, \d+ img/s, ETA (\d+:\d\d:\d\d|\?)")


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(scope="module")
def piped_run(tmp_path_factory):
    """A LeNet-5 smoke run through the CLI with the progress report on and stderr a pipe (not a TTY)."""
    workdir = tmp_path_factory.mktemp("piped") / "run"
    done = run_cli("train", "lenet_mnist", "--smoke", "--set", "train.progress=true", "--set", "train.log_every=2",
                   "--set", "parallel.num_devices=1", "--workdir", str(workdir))
    return workdir, done


def test_a_run_without_a_terminal_writes_one_plain_line_per_log_step(piped_run):
    _, done = piped_run
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr and not [s for s in UNCLEAN if s in done.stderr], done.stderr
    lines = done.stderr.splitlines()
    found = [LINE.fullmatch(line) for line in lines]
    assert all(found), lines  # nothing else on stderr
    assert [int(m[1]) for m in found] == list(range(2, 21, 2))
    assert found[-1][2] == "0:00:00" and all(m[2] != "?" for m in found)


def test_the_end_of_a_run_says_what_happened_and_what_to_run_next(piped_run):
    workdir, done = piped_run
    out = done.stdout
    assert re.search(r"^wall time: \d+:\d\d:\d\d \(\d+\.\d s\)$", out, re.M), out
    best = re.search(r"^best: step (\d+), val accuracy (\S+)$", out, re.M)
    assert best, out
    val = {r["step"]: r["accuracy"] for r in read_metrics(workdir) if r["split"] == "val"}
    assert val[int(best[1])] == max(val.values()) and float(best[2]) == pytest.approx(max(val.values()), rel=1e-5)
    assert f"checkpoints: {workdir / 'checkpoints'} (steps 10, 20)\n" in out
    assert f"workdir: {workdir}\n" in out
    commands = out.split("next:\n", 1)[1].splitlines()
    assert commands == [f"  jaxconv eval {workdir}", f"  jaxconv plot {workdir}", f"  tensorboard --logdir {workdir}"]


def test_a_finished_run_shows_its_best_checkpoint_again(piped_run):
    workdir, first = piped_run
    assert first.returncode == 0, first.stderr
    done = run_cli("train", "lenet_mnist", "--smoke", "--set", "parallel.num_devices=1", "--workdir", str(workdir))
    assert done.returncode == 0, done.stderr
    assert done.stderr == f"{workdir}: already finished at step 20; nothing to train\n"
    assert "wall time" not in done.stdout  # this call trained nothing
    best = re.search(r"^best: .*$", first.stdout, re.M)[0]
    assert f"{best}\n" in done.stdout and "next:\n  jaxconv eval" in done.stdout


def test_sample_is_suggested_for_pixelcnn_runs_only():
    pixelcnn = cli._train_summary(experiments.load("pixelcnn_mnist", smoke=True), Path("runs/p"), {"step": 20})
    lenet = cli._train_summary(experiments.load("lenet_mnist", smoke=True), Path("runs/l"), {"step": 20})
    assert "  jaxconv sample runs/p\n" in pixelcnn and "sample" not in lenet
    stopped = cli._train_summary(experiments.load("lenet_mnist", smoke=True), Path("runs/l"),
                                 {"step": 7, "terminated": True, "wall_s": 3.0})
    assert "next:" not in stopped and "wall time: 0:00:03 (3.0 s)" in stopped


def test_the_eta_leaves_out_the_first_step():
    clock = FakeClock()
    rate = SteadyRate(clock)
    clock.now = 7.0  # the first step compiles: 7 s
    rate.step()
    assert rate.per_second is None and rate.eta(10) is None and rate.eta(0) == 0.0
    for _ in range(4):  # then 0.5 s a step
        clock.now += 0.5
        rate.step()
    assert rate.per_second == pytest.approx(2.0) and rate.eta(10) == pytest.approx(5.0)
    assert (format_eta(None), format_eta(5.0), format_eta(3725.4)) == ("?", "0:00:05", "1:02:05")


def test_the_plain_line_and_the_bar_use_the_steady_eta():
    clock, err = FakeClock(), io.StringIO()
    lines = Progress(total=101, initial=0, form="lines", stream=err, clock=clock)
    clock.now = 30.0
    lines.step()
    lines.log(1, 2.5, 12.0)
    clock.now += 1.0
    lines.step()
    lines.log(2, 2.25, 640.0)
    lines.close()
    assert err.getvalue() == ("step 1/101: loss 2.5000, 12 img/s, ETA ?\n"
                              "step 2/101: loss 2.2500, 640 img/s, ETA 0:01:39\n")

    threads = set(threading.enumerate())
    clock, terminal = FakeClock(), Terminal()
    bar = Progress(total=101, initial=0, form="bar", stream=terminal, clock=clock)
    clock.now = 30.0
    bar.step()
    bar.bar.refresh()
    assert "?step/s" in terminal.getvalue().split("\r")[-1]  # not 1/30 step/s
    clock.now += 0.5
    bar.step()
    bar.log(2, 2.25, 640.0)
    bar.bar.refresh()
    shown = terminal.getvalue().split("\r")[-1]
    assert "<00:49" in shown and "2.00step/s" in shown and "loss 2.2500, 640 img/s" in shown, shown
    bar.close()
    assert set(threading.enumerate()) <= threads  # no tqdm monitor thread


def test_the_form_follows_where_stderr_goes(tmp_path):
    assert choose_form(True, io.StringIO()) == "lines"
    assert choose_form(True, Terminal()) == "bar"
    assert choose_form(False, Terminal()) == "off"
    with open(tmp_path / "slurm.log", "w") as log:
        assert choose_form(True, log) == "lines"
    leader, follower = os.openpty()
    with open(follower, "w") as tty:
        assert choose_form(True, tty) == "lines"  # a pty nobody sized: 0 columns, where a bar is empty
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
        assert choose_form(True, tty) == "bar"
    os.close(leader)

