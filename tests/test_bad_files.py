"""Damaged files in a work directory, and settings that type-check but cannot work (issue 11, items 5, 8, 9).

config.json that is not a config, metrics.jsonl lines that are not records, a metrics.jsonl or
tensorboard/ of the wrong kind, ``plot --out`` that names no writable file, and ``--set`` values
that are non-finite or out of range. Each is one ``jaxconv: error:`` line with its documented exit
code (no traceback), and every file already in the work directory is kept as it was; lines of
metrics.jsonl that are not records are skipped by readers and kept by a resume.

Most cases run ``jaxconv.cli.main`` in this process (file-descriptor capture); those marked
``subprocess`` run ``python -m jaxconv`` for real.
"""

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from conftest import run_cli
from jaxconv import cli
from jaxconv.errors import CheckpointError, ConfigError, StorageError
from jaxconv.train.metrics import MetricsWriter, read_metrics

TRAIN = ["train", "lenet_modern_mnist", "--smoke", "--set", "parallel.num_devices=1"]


def edit_config(**changes):
    """A setup that sets ``section.key`` values (given as section__key=value) in config.json."""

    def setup(workdir: Path, scratch: Path) -> None:
        raw = json.loads((workdir / "config.json").read_text())
        for name, value in changes.items():
            section, key = name.split("__")
            raw[section][key] = value
        (workdir / "config.json").write_text(json.dumps(raw))

    return setup


def write_config(content: bytes):
    return lambda workdir, scratch: (workdir / "config.json").write_bytes(content)


def without_name(workdir: Path, scratch: Path) -> None:
    raw = json.loads((workdir / "config.json").read_text())
    del raw["name"]
    (workdir / "config.json").write_text(json.dumps(raw))


def replace_by_directory(name: str):
    def setup(workdir: Path, scratch: Path) -> None:
        path = workdir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
        (path / "inside").mkdir(parents=True)

    return setup


def resumable(setup):
    """``setup``, on a run that resumes from checkpoint 10 (a finished run writes no metrics)."""
    def both(workdir: Path, scratch: Path) -> None:
        shutil.rmtree(workdir / "checkpoints" / "20")
        setup(workdir, scratch)

    return both


def tensorboard_file(workdir: Path, scratch: Path) -> None:
    shutil.rmtree(workdir / "tensorboard")
    (workdir / "tensorboard").write_text("not a directory")


def tensorboard_unwritable(workdir: Path, scratch: Path) -> None:
    """tensorboard/ a directory in which no file can be created, even by root (/proc/self)."""
    shutil.rmtree(workdir / "tensorboard")
    (workdir / "tensorboard").symlink_to("/proc/self")


def settings(*overrides: str) -> list[str]:
    return [*TRAIN, *(a for o in overrides for a in ("--set", o)), "--workdir", "{w}"]


UNREADABLE = "holds an unreadable config.json"

# id: (argv with {w} = the work directory copy and {t} = a scratch directory, error, texts in the error
#      line, setup(workdir, scratch), how to run it)
CASES = {
    # config.json of an existing run: train exits 4 (README), eval 2
    "config_json_a_list": ([*TRAIN, "--workdir", "{w}"], CheckpointError,
                           (UNREADABLE, "config.json: expected a JSON object of config sections, got list"),
                           write_config(b"[]"), "subprocess"),
    "config_json_without_name": ([*TRAIN, "--workdir", "{w}"], CheckpointError,
                                 (UNREADABLE, "config.json: missing key 'name'"), without_name, "inprocess"),
    "config_json_not_utf8": ([*TRAIN, "--workdir", "{w}"], CheckpointError, (UNREADABLE, "is not UTF-8 text"),
                             write_config(b'{"name": "caf\xe9"}'), "inprocess"),
    "config_json_a_directory": ([*TRAIN, "--workdir", "{w}"], CheckpointError,
                                (UNREADABLE, "config.json is a directory, not a config file"),
                                replace_by_directory("config.json"), "inprocess"),
    "config_json_steps_many": ([*TRAIN, "--workdir", "{w}"], CheckpointError,
                               (UNREADABLE, "config.json: train.steps: expected int, got 'many'"),
                               edit_config(train__steps="many"), "inprocess"),
    "config_json_num_classes_a_string": ([*TRAIN, "--workdir", "{w}"], CheckpointError,
                                         (UNREADABLE, "config.json: model.num_classes: expected int, got '10'"),
                                         edit_config(model__num_classes="10"), "inprocess"),
    "config_json_batch_size_a_float": ([*TRAIN, "--workdir", "{w}"], CheckpointError,
                                       (UNREADABLE, "config.json: data.batch_size: expected int, got 3.5"),
                                       edit_config(data__batch_size=3.5), "inprocess"),
    "config_json_nan": ([*TRAIN, "--workdir", "{w}"], CheckpointError,
                        (UNREADABLE, "optim.learning_rate must be a finite number, got nan"),
                        edit_config(optim__learning_rate=float("nan")), "inprocess"),
    "eval_config_json_num_classes_a_string": (["eval", "{w}"], ConfigError,
                                              ("config.json: model.num_classes: expected int, got '10'",),
                                              edit_config(model__num_classes="10"), "inprocess"),
    # --set values that type-check but cannot work: exit 2 before anything is written
    "set_learning_rate_nan": (settings("optim.learning_rate=nan"), ConfigError,
                              ("optim.learning_rate must be a finite number, got nan",), None, "inprocess"),
    "set_learning_rate_1e400": (settings("optim.learning_rate=1e400"), ConfigError,
                                ("optim.learning_rate must be a finite number, got inf",), None, "inprocess"),
    "set_grad_clip_norm_nan": (settings("optim.grad_clip_norm=nan"), ConfigError,
                               ("optim.grad_clip_norm must be a finite number, got nan",), None, "inprocess"),
    "set_eps_zero": (settings("optim.eps=0"), ConfigError, ("optim.eps must be > 0, got 0.0",), None, "inprocess"),
    "set_final_factor_nan": (settings("schedule.final_factor=nan"), ConfigError,
                             ("schedule.final_factor must be a finite number, got nan",), None, "inprocess"),
    "set_data_seed_negative": (settings("data.seed=-1"), ConfigError, ("data.seed must be in [0, 2**32), got -1",),
                               None, "inprocess"),
    "set_train_seed_2_64": (settings(f"train.seed={2**64}"), ConfigError,
                            (f"train.seed must be in [0, 2**32), got {2**64}",), None, "inprocess"),
    "set_best_metric_bogus": (settings("checkpoint.best_metric=bogus"), ConfigError,
                              ("checkpoint.best_metric='bogus' is not a validation metric of lenet5 models; "
                               "metrics: loss, accuracy, top5_accuracy",), None, "inprocess"),
    "set_eval_batch_size_huge": (settings("data.eval_batch_size=50000000"), ConfigError,
                                 ("data.eval_batch_size=50000000 is too large; at most 65,536",), None, "inprocess"),
    # metrics.jsonl and tensorboard/ of the wrong kind: exit 6
    "metrics_jsonl_a_directory_train": ([*TRAIN, "--workdir", "{w}"], StorageError,
                                        ("metrics.jsonl is not a file",),
                                        resumable(replace_by_directory("metrics.jsonl")), "inprocess"),
    "metrics_jsonl_a_directory_plot": (["plot", "{w}", "--out", "{t}/curves"], StorageError,
                                       ("metrics.jsonl is not a file",), replace_by_directory("metrics.jsonl"),
                                       "inprocess"),
    "tensorboard_a_file": ([*TRAIN, "--workdir", "{w}"], StorageError, ("tensorboard is not a directory",),
                           resumable(tensorboard_file), "subprocess"),
    "tensorboard_unwritable": ([*TRAIN, "--workdir", "{w}"], StorageError, ("cannot write", "tensorboard/events"),
                               resumable(tensorboard_unwritable), "inprocess"),
    # plot --out that names no writable file
    "plot_out_dot": (["plot", "{w}", "--out", "."], ConfigError, ("--out .: expected a file name",), None,
                     "inprocess"),
    "plot_out_root": (["plot", "{w}", "--out", "/"], ConfigError, ("--out /: expected a file name",), None,
                      "inprocess"),
    "plot_out_under_proc": (["plot", "{w}", "--out", "/proc/x/y"], StorageError, ("cannot write /proc/x:",), None,
                            "subprocess"),
}


def snapshot(workdir: Path) -> dict[str, bytes]:
    """Every file that holds results: checkpoints, metrics.jsonl, config.json."""
    if not workdir.is_dir():
        return {}
    files = [Path(root) / name for root, _, names in os.walk(workdir) for name in names]  # symlinks not followed
    files = [p for p in files if p.is_file() and not p.is_symlink()
             and (p.name in ("metrics.jsonl", "config.json") or "checkpoints" in p.parts)]
    return {str(p.relative_to(workdir)): p.read_bytes() for p in files}


def records_in(text: bytes) -> list[bytes]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_file(case, trained_smoke, tmp_path, capfd):
    argv, error, texts, setup, how = CASES[case]
    workdir, scratch = tmp_path / "run", tmp_path / "scratch"
    shutil.copytree(trained_smoke, workdir, symlinks=True)
    scratch.mkdir()
    if setup is not None:
        setup(workdir, scratch)
    argv = [a.format(w=workdir, t=scratch) for a in argv]
    before = snapshot(workdir)
    threads = set(threading.enumerate())
    if how == "inprocess":
        capfd.readouterr()
        code, err = cli.main(argv), capfd.readouterr().err
        # orbax's own helper threads end a moment after its manager closes; a leaked thread stays.
        deadline = time.monotonic() + 10
        while not set(threading.enumerate()) <= threads and time.monotonic() < deadline:
            time.sleep(0.05)
        assert set(threading.enumerate()) <= threads, "a thread was left running"
    else:
        done = run_cli(*argv)
        code, err = done.returncode, done.stderr
    lines = err.strip().splitlines()
    assert code == error.exit_code, err
    assert len(lines) == 1 and lines[0].startswith("jaxconv: error: "), err
    assert all(text in lines[0] for text in texts), err
    assert snapshot(workdir) == before
    assert not list(scratch.iterdir())  # plot wrote nothing


def test_resume_keeps_lines_that_are_not_records(trained_smoke, tmp_path):
    """A run stopped at step 10 whose metrics.jsonl holds lines that are not records among the records:
    the resume drops the records after its step (it writes them again) and keeps the other lines."""
    workdir = tmp_path / "run"
    shutil.copytree(trained_smoke, workdir, symlinks=True)
    shutil.rmtree(workdir / "checkpoints" / "20")
    lines = records_in((workdir / "metrics.jsonl").read_bytes())
    strangers = [b'{"note": 1}', b"[1, 2]", b'{"step": "late", "split": "val"}', b"\xff\xfe not utf-8"]
    (workdir / "metrics.jsonl").write_bytes(b"".join(line + b"\n" for line in [*lines[:1], *strangers, *lines[1:]]))
    assert cli.main([*TRAIN, "--workdir", str(workdir)]) == 0
    after = records_in((workdir / "metrics.jsonl").read_bytes())
    assert [line for line in after if line in strangers] == strangers, after  # kept, byte for byte, in order
    assert sorted({r["step"] for r in read_metrics(workdir)}) == sorted({json.loads(line)["step"] for line in lines})


def test_resume_at_drops_later_records_and_a_torn_last_line_only(tmp_path):
    lines = [b'{"step": 5, "split": "train", "loss": 1.0}', b'{"note": 1}', b'{"step": 10, "split": "val"}',
             b"[1, 2]", b'{"step": 15, "split": "train", "loss": 0.5}', b"\xff garbage", b'{"step": 20, "spl']
    (tmp_path / "metrics.jsonl").write_bytes(b"\n".join(lines))  # the last line was cut short by a kill
    with MetricsWriter(tmp_path) as writer:
        writer.resume_at(10)
        writer.write(11, "train", {"loss": 0.7})
    assert (tmp_path / "metrics.jsonl").read_bytes().splitlines() == [
        *lines[:4], b"\xff garbage", b'{"step": 11, "split": "train", "loss": 0.7}']


def test_readers_skip_lines_that_are_not_records(tmp_path, capfd):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "split": "train", "loss": 2.0}\n{"note": 1}\n[1, 2]\n'
                                            '{"step": 2, "loss": 1.0}\n{"step": true, "split": "val"}\n')
    assert read_metrics(tmp_path) == [{"step": 1, "split": "train", "loss": 2.0}]
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "skipped 4 line(s)" in err and "first line 2" in err, err


def test_plot_skips_records_without_a_split(trained_smoke, tmp_path, capfd):
    workdir = tmp_path / "run"
    shutil.copytree(trained_smoke, workdir, symlinks=True)
    with (workdir / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "loss": 1.0}\n[1, 2]\n')
    capfd.readouterr()
    assert cli.main(["plot", str(workdir), "--out", str(tmp_path / "c")]) == 0
    err = capfd.readouterr().err
    assert err.startswith("jaxconv: warning: ") and err.count("\n") == 1, err
    assert (tmp_path / "c.png").stat().st_size and (tmp_path / "c.svg").stat().st_size


def test_metrics_writer_closes_cleanly(tmp_path):
    threads = set(threading.enumerate())
    writer = MetricsWriter(tmp_path)
    writer.write(1, "train", {"loss": 1.0})
    writer.close()
    writer.close()  # twice is fine
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "tensorboard").write_text("")
    with pytest.raises(StorageError, match="tensorboard is not a directory"):
        MetricsWriter(tmp_path / "bad")
    assert set(threading.enumerate()) <= threads
    assert len(os.listdir(tmp_path / "tensorboard")) == 1
