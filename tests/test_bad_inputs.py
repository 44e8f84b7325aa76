"""Bad input, one case per test: one ``jaxconv: error:`` line on stderr and nothing else, the documented
exit code (jaxconv/errors.py, README "Errors and exit codes"), no traceback unless ``--debug``, and
every checkpoint file, metrics record and config.json already in the work directory kept as it was.

Most cases call ``jaxconv.cli.main`` in this process with file-descriptor capture (so C++ and
warnings output counts too); the ones marked ``subprocess`` run ``python -m jaxconv`` for real,
which the disk-full case needs (an ``RLIMIT_FSIZE`` set in the child only).
"""

import gzip
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from jaxconv import cli
from jaxconv.errors import CheckpointError, ConfigError, DataError, StorageError
from jaxconv.train.metrics import MetricsWriter

SMOKE = ["--smoke", "--set", "parallel.num_devices=1"]
MNIST_ROW = [0] * 784 + [3]


def csv_gz(path: Path, rows) -> Path:
    with gzip.open(path, "wt") as f:
        f.write("".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def truncated(path: Path) -> Path:
    csv_gz(path, [MNIST_ROW] * 50)
    path.write_bytes(path.read_bytes()[:-20])
    return path


class Trap:
    """Unpickling this creates ``marker``: the case checks that a pickled data file is never loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def pickled(path: Path) -> Path:
    with gzip.open(path, "wb") as f:
        pickle.dump({"images": [0] * 784, "labels": [1], "trap": Trap(path.parent / "UNPICKLED")}, f)
    return path


def corrupt_checkpoint(workdir: Path, step: int = 20) -> None:
    for f in (workdir / "checkpoints" / str(step) / "default").rglob("*"):
        if f.is_file():  # every file of the saved state: metadata, manifests and array data
            f.write_bytes(b"\0garbage")


def stopped_at_10(workdir: Path) -> None:
    """As if the run had been stopped after step 10: the disk-full case then saves step 20."""
    shutil.rmtree(workdir / "checkpoints" / "20")
    MetricsWriter(workdir).resume_at(10)


TRAIN = ["train", "lenet_modern_mnist", *SMOKE]

# id: (argv with {w} = the work directory copy and {t} = a scratch directory, exit code, text in the
#      error line, setup(workdir, scratch) run before the snapshot, how to run it)
CASES = {
    # configuration: exit 2
    "unknown_experiment": (["train", "no_such_experiment", "--workdir", "{w}"], ConfigError,
                           "unknown experiment 'no_such_experiment'", None, "subprocess"),
    "unknown_key": ([*TRAIN, "--set", "optim.lr=1", "--workdir", "{w}"], ConfigError,
                    "unknown config key 'optim.lr'", None, "inprocess"),
    "unknown_section": ([*TRAIN, "--set", "solver.lr=1", "--workdir", "{w}"], ConfigError,
                        "unknown config section in 'solver.lr'", None, "inprocess"),
    "override_without_value": ([*TRAIN, "--set", "train.steps", "--workdir", "{w}"], ConfigError,
                               "'train.steps' is not of the form section.key=value", None, "inprocess"),
    "ill_typed_int": ([*TRAIN, "--set", "train.steps=many", "--workdir", "{w}"], ConfigError,
                      "bad value 'many' for train.steps; expected int", None, "inprocess"),
    "ill_typed_float": ([*TRAIN, "--set", "optim.learning_rate=fast", "--workdir", "{w}"], ConfigError,
                        "bad value 'fast' for optim.learning_rate; expected float", None, "inprocess"),
    "unknown_choice": ([*TRAIN, "--set", "optim.name=lbfgs", "--workdir", "{w}"], ConfigError,
                       "allowed values: sgd, momentum, adam, adamw", None, "inprocess"),
    "ill_typed_bool": ([*TRAIN, "--set", "train.progress=maybe", "--workdir", "{w}"], ConfigError,
                       "allowed values: true, false", None, "inprocess"),
    "zero_batch": ([*TRAIN, "--set", "data.batch_size=0", "--workdir", "{w}"], ConfigError,
                   "data.batch_size must be > 0, got 0", None, "inprocess"),
    "negative_steps": ([*TRAIN, "--set", "train.steps=-5", "--workdir", "{w}"], ConfigError,
                       "train.steps must be > 0, got -5", None, "inprocess"),
    "negative_checkpoint_every": ([*TRAIN, "--set", "checkpoint.every=-1", "--workdir", "{w}"], ConfigError,
                                  "checkpoint.every must be >= 0, got -1", None, "inprocess"),
    "zero_learning_rate": ([*TRAIN, "--set", "optim.learning_rate=0", "--workdir", "{w}"], ConfigError,
                           "optim.learning_rate must be > 0", None, "inprocess"),
    "cv_fold_out_of_range": ([*TRAIN, "--set", "data.cv_fold=4", "--workdir", "{w}"], ConfigError,
                             "data.cv_fold must be -1 (off) or a fold in 0..3, got 4", None, "inprocess"),
    "cv_fold_of_a_cached_source": ([*TRAIN, "--set", "data.source=imagenet32", "--set", "data.cv_fold=0",
                                    "--workdir", "{w}"], ConfigError,
                                   "data.cv_fold applies to data.source mnist or synthetic (train splits held in "
                                   "memory), not imagenet32", None, "inprocess"),
    "two_sized_image_shape": ([*TRAIN, "--set", "data.image_shape=28,28", "--workdir", "{w}"], ConfigError,
                              "data.image_shape must be three positive sizes H,W,C", None, "inprocess"),
    "batch_not_divisible_by_devices": (["train", "lenet_modern_mnist", "--smoke", "--set", "data.batch_size=12",
                                        "--workdir", "{w}"], ConfigError,
                                       "data.batch_size=12 does not divide over 8 devices; use a multiple of 8",
                                       None, "inprocess"),
    "more_devices_than_exist": ([*TRAIN, "--set", "parallel.num_devices=16", "--workdir", "{w}"], ConfigError,
                                "parallel.num_devices=16 but only 8 devices exist", None, "inprocess"),
    "batch_larger_than_the_data": ([*TRAIN, "--set", "data.batch_size=8000", "--workdir", "{w}"], ConfigError,
                                   "data.batch_size=8000 exceeds the 4000 training examples", None, "inprocess"),
    "image_shape_the_model_cannot_take": ([*TRAIN, "--set", "data.source=synthetic", "--set",
                                           "data.image_shape=16,16,1", "--workdir", "{w}"], ConfigError,
                                          "lenet5 takes 28x28 or 32x32 images; the data has 16x16x1", None,
                                          "inprocess"),
    "classes_differ_from_the_model": ([*TRAIN, "--set", "data.source=synthetic", "--set", "data.num_classes=5",
                                       "--workdir", "{w}"], ConfigError,
                                      "model.num_classes=10 but the data has 5 classes", None, "inprocess"),
    "sample_from_a_classifier": (["sample", "{w}"], ConfigError, "sampling needs a PixelCNN-family model", None,
                                 "inprocess"),
    "eval_bad_checkpoint_name": (["eval", "{w}", "--checkpoint", "newest"], ConfigError,
                                 "bad checkpoint 'newest'; allowed values: best, latest, a step number", None,
                                 "inprocess"),
    "eval_not_a_workdir": (["eval", "{t}/nothing_here"], ConfigError, "is this a jaxconv work directory?", None,
                           "inprocess"),
    # data: exit 3
    "unknown_data_source": ([*TRAIN, "--set", "data.source=imagenet", "--workdir", "{w}"], DataError,
                            "unknown data source 'imagenet'; sources: mnist, synthetic", None, "inprocess"),
    "missing_data_file": ([*TRAIN, "--set", "data.path={t}/absent.csv.gz", "--workdir", "{w}"], DataError,
                          "MNIST file not found", None, "inprocess"),
    "data_file_not_gzip": ([*TRAIN, "--set", "data.path={t}/noise.csv.gz", "--workdir", "{w}"], DataError,
                           "is not a readable MNIST csv.gz file",
                           lambda w, t: (t / "noise.csv.gz").write_bytes(os.urandom(5000)), "inprocess"),
    "truncated_data_file": ([*TRAIN, "--set", "data.path={t}/cut.csv.gz", "--workdir", "{w}"], DataError,
                            "is not a readable MNIST csv.gz file", lambda w, t: truncated(t / "cut.csv.gz"),
                            "inprocess"),
    "pickled_data_file": ([*TRAIN, "--set", "data.path={t}/data.csv.gz", "--workdir", "{w}"], DataError,
                          "is not a readable MNIST csv.gz file", lambda w, t: pickled(t / "data.csv.gz"),
                          "inprocess"),
    "empty_data_file": ([*TRAIN, "--set", "data.path={t}/empty.csv.gz", "--workdir", "{w}"], DataError,
                        "holds no rows", lambda w, t: csv_gz(t / "empty.csv.gz", []), "inprocess"),
    "rows_of_the_wrong_length": ([*TRAIN, "--set", "data.path={t}/short.csv.gz", "--workdir", "{w}"], DataError,
                                 "expected rows of 784 pixels + label, got shape (8, 3)",
                                 lambda w, t: csv_gz(t / "short.csv.gz", [[1, 2, 3]] * 8), "inprocess"),
    "label_out_of_range": ([*TRAIN, "--set", "data.path={t}/labels.csv.gz", "--workdir", "{w}"], DataError,
                           "label out of range [0, 11] for 10 classes",
                           lambda w, t: csv_gz(t / "labels.csv.gz", [[0] * 784 + [d] for d in range(12)] * 50),
                           "inprocess"),
    "pixel_out_of_range": ([*TRAIN, "--set", "data.path={t}/pixels.csv.gz", "--workdir", "{w}"], DataError,
                           "pixel values outside 0..255",
                           lambda w, t: csv_gz(t / "pixels.csv.gz", [[300] * 784 + [1]] * 8), "inprocess"),
    "empty_validation_split": ([*TRAIN, "--set", "data.path={t}/small.csv.gz", "--workdir", "{w}"], DataError,
                               "mnist:val is empty",  # 40 rows per digit: all of them go to train
                               lambda w, t: csv_gz(t / "small.csv.gz", [[0] * 784 + [d] for d in range(10)] * 40),
                               "inprocess"),
    # the work directory and its checkpoints: exit 4 (checkpoint) and 6 (storage)
    "workdir_of_another_model": (["train", "lenet_mnist", *SMOKE, "--workdir", "{w}"], CheckpointError,
                                 "holds a run of a different model", None, "inprocess"),
    "unreadable_config_json": ([*TRAIN, "--workdir", "{w}"], CheckpointError, "holds an unreadable config.json",
                               lambda w, t: (w / "config.json").write_text("{not json"), "inprocess"),
    # (train on a corrupt latest checkpoint resumes from an earlier one: tests/test_edges.py)
    "corrupt_checkpoint_eval": (["eval", "{w}", "--checkpoint", "latest"], CheckpointError,
                                "does not match its checksum", lambda w, t: corrupt_checkpoint(w), "inprocess"),
    "eval_missing_step": (["eval", "{w}", "--checkpoint", "999"], CheckpointError,
                          "no checkpoint 999 in", None, "inprocess"),
    "workdir_under_a_file": ([*TRAIN, "--workdir", "{t}/file/run"], StorageError,
                             "cannot create work directory", lambda w, t: (t / "file").write_text(""),
                             "inprocess"),
    "workdir_is_a_file": ([*TRAIN, "--workdir", "{t}/file"], StorageError, "exists and is not a directory",
                          lambda w, t: (t / "file").write_text(""), "inprocess"),
    "disk_full_on_save": ([*TRAIN, "--workdir", "{w}"], StorageError,
                          "cannot write checkpoint 20 in", lambda w, t: stopped_at_10(w), "disk_full"),
}


def snapshot(workdir: Path) -> dict[str, bytes]:
    """Every file that holds results: checkpoints, metrics.jsonl, config.json."""
    if not workdir.is_dir():
        return {}
    files = [p for p in workdir.rglob("*") if p.is_file() and (p.name in ("metrics.jsonl", "config.json")
                                                                  or "checkpoints" in p.parts)]
    return {str(p.relative_to(workdir)): p.read_bytes() for p in files}


def assert_nothing_lost(before: dict[str, bytes], after: dict[str, bytes]) -> None:
    for name, content in before.items():
        assert name in after, f"{name} was deleted"
        if name == "metrics.jsonl":  # new records may follow (disk-full case), old ones stay
            assert after[name].startswith(content), "metrics records were lost"
        else:
            assert after[name] == content, f"{name} changed"


# Disk full, simulated without root (no tiny tmpfs): the child lowers its own RLIMIT_FSIZE to 64 KiB
# before it imports anything, so writing a larger file fails with EFBIG ("File too large") as a full
# disk fails with ENOSPC; SIGXFSZ, which would kill it instead, is ignored. A checkpoint's array file
# (~600 KB) hits the limit; metrics lines and config.json stay far below it.
DISK_FULL = """
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
sys.argv[0] = "jaxconv"
runpy.run_module("jaxconv", run_name="__main__", alter_sys=True)
"""


def run_subprocess(argv: list[str], disk_full: bool = False) -> tuple[int, str]:
    env, command = dict(os.environ), ["-m", "jaxconv"]
    if disk_full:  # read the session's compilation cache but write nothing to it (it would be cut at 64 KiB)
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "1e9"
        command = ["-c", DISK_FULL]
    done = subprocess.run([sys.executable, *command, *argv], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    return done.returncode, done.stderr


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, trained_smoke, tmp_path, capfd):
    argv, error, text, setup, how = CASES[case]
    workdir, scratch = tmp_path / "run", tmp_path / "scratch"
    shutil.copytree(trained_smoke, workdir)
    scratch.mkdir()
    if setup is not None:
        setup(workdir, scratch)
    argv = [a.format(w=workdir, t=scratch) for a in argv]
    before = snapshot(workdir)
    if how == "inprocess":
        capfd.readouterr()
        code, err = cli.main(argv), capfd.readouterr().err
    else:
        code, err = run_subprocess(argv, disk_full=how == "disk_full")
    lines = err.strip().splitlines()
    assert code == error.exit_code, err
    assert len(lines) == 1 and lines[0].startswith("jaxconv: error: ") and text in lines[0], err
    assert_nothing_lost(before, snapshot(workdir))
    assert not (scratch / "UNPICKLED").exists()


def test_at_least_twenty_cases_and_documented_codes():
    assert len(CASES) >= 20
    readme = (REPO / "README.md").read_text()
    for error in (ConfigError, DataError, CheckpointError, StorageError):
        assert f"| {error.exit_code} | `{error.__name__}` |" in readme, error


def test_debug_shows_the_traceback(tmp_path):
    code, err = run_subprocess(["--debug", "train", "no_such_experiment", "--workdir", str(tmp_path)])
    assert code == ConfigError.exit_code and "Traceback (most recent call last)" in err
    assert "ConfigError: unknown experiment" in err
