"""The command line: each bad input is one line on stderr and a documented exit code; nothing saved is lost."""

import gzip
import shutil
import sys
import subprocess

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, run_cli
from jaxconv.errors import CheckpointError, ConfigError, DataError

SMOKE = ["--smoke", "--set", "parallel.num_devices=1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished smoke run, copied by tests that damage or reuse it."""
    workdir = tmp_path_factory.mktemp("trained")
    done = run_cli("train", "lenet_modern_mnist", *SMOKE, "--workdir", str(workdir))
    assert done.returncode == 0, done.stderr
    return workdir


def assert_one_line_error(done, code, text):
    lines = done.stderr.strip().splitlines()
    assert done.returncode == code, done.stderr
    assert len(lines) == 1 and lines[0].startswith("jaxconv: error: ") and text in lines[0], done.stderr


def _csv(tmp_path, rows, name="mnist.csv.gz"):
    path = tmp_path / name
    with gzip.open(path, "wt") as f:
        f.write("".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("args, code, text", [
    (["train", "no_such_experiment"], ConfigError.exit_code, "unknown experiment 'no_such_experiment'"),
    (["train", "lenet_mnist", "--set", "optim.lr=1"], ConfigError.exit_code, "unknown config key 'optim.lr'"),
    (["train", "lenet_mnist", "--set", "train.steps=many"], ConfigError.exit_code, "expected int"),
    (["train", "lenet_mnist", "--set", "optim.name=lbfgs"], ConfigError.exit_code, "allowed values: sgd, momentum"),
    (["train", "lenet_mnist", "--set", "data.batch_size=0"], ConfigError.exit_code, "data.batch_size must be > 0"),
    (["train", "lenet_mnist", "--set", "data.batch_size=12"], ConfigError.exit_code,
     "data.batch_size=12 does not divide over 8 devices"),
    (["train", "lenet_mnist", "--set", "data.source=imagenet"], DataError.exit_code, "unknown data source"),
    (["train", "lenet_mnist", "--set", "data.path=/nonexistent/mnist.csv.gz"], DataError.exit_code, "not found"),
    (["eval", "/nonexistent/run"], ConfigError.exit_code, "is this a jaxconv work directory?"),
])
def test_bad_input_is_one_line_and_an_exit_code(tmp_path, args, code, text):
    assert_one_line_error(run_cli(*args), code, text)


@pytest.mark.parametrize("rows, text", [
    ([[0] * 784 + [11]] * 8, "label out of range"),
    ([[1, 2, 3]] * 8, "expected rows of 784 pixels"),
])
def test_bad_data_files(tmp_path, rows, text):
    path = _csv(tmp_path, rows)
    assert_one_line_error(run_cli("train", "lenet_mnist", "--set", f"data.path={path}"), DataError.exit_code, text)


def test_truncated_data_file(tmp_path):
    path = _csv(tmp_path, [[7] * 784 + [1]] * 50)
    path.write_bytes(path.read_bytes()[:-20])
    assert_one_line_error(run_cli("train", "lenet_mnist", "--set", f"data.path={path}"), DataError.exit_code,
                          "not a readable MNIST csv.gz")


def test_workdir_of_another_model_is_refused_and_left_intact(trained, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(trained, workdir)
    before = sorted(p.relative_to(workdir) for p in workdir.rglob("*"))
    metrics = (workdir / "metrics.jsonl").read_text()
    done = run_cli("train", "lenet_mnist", "--smoke", "--workdir", str(workdir))
    assert_one_line_error(done, CheckpointError.exit_code, "holds a run of a different model")
    assert sorted(p.relative_to(workdir) for p in workdir.rglob("*")) == before
    assert (workdir / "metrics.jsonl").read_text() == metrics


def test_corrupt_checkpoint_is_a_clear_error(trained, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(trained, workdir)
    for f in (workdir / "checkpoints" / "20" / "default").rglob("*"):
        if f.is_file():  # every file of the saved state: metadata, manifests and array data
            f.write_bytes(b"\0garbage")
    assert_one_line_error(run_cli("eval", str(workdir), "--checkpoint", "latest"), CheckpointError.exit_code,
                          "checkpoint 20")
    assert_one_line_error(run_cli("train", "lenet_modern_mnist", *SMOKE, "--workdir", str(workdir)),
                          CheckpointError.exit_code, "does not fit this model or is corrupt")


def test_unwritable_workdir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert_one_line_error(run_cli("train", "lenet_mnist", "--workdir", str(blocker / "run")), ConfigError.exit_code,
                          "cannot write to work directory")


def test_eval_prints_the_metrics_of_the_best_checkpoint(trained):
    done = run_cli("eval", str(trained))
    assert done.returncode == 0, done.stderr
    assert "checkpoint 20 (best)" in done.stdout and "accuracy" in done.stdout and "count" in done.stdout


def test_list_and_module_entry_point(tmp_path):
    listed = run_cli("list")
    assert "lenet_mnist" in listed.stdout and "lenet5_modern" in listed.stdout
    done = subprocess.run([sys.executable, "-m", "experiments.lenet_mnist", *SMOKE, "--set", "train.steps=3",
                           "--workdir", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "lenet_mnist: step 3, validation" in done.stdout


def test_sample_writes_a_png_grid_and_completes_images(tmp_path):
    workdir = tmp_path / "gated"
    trained = run_cli("train", "gated_pixelcnn_mnist", *SMOKE, "--set", "train.steps=10", "--workdir", str(workdir))
    assert trained.returncode == 0, trained.stderr
    done = run_cli("sample", str(workdir), "--num", "4", "--complete", "20", "--out", str(tmp_path / "grid.png"))
    assert done.returncode == 0, done.stderr
    from PIL import Image
    import numpy as np

    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert grid.shape == (1 * 29 + 1, 8 * 29 + 1) and grid.std() > 0
    from jaxconv.config import DataConfig
    from jaxconv.data.sources import load_split

    given = load_split(DataConfig(), "val").images[:4, :20, :, 0] > 127
    completed = np.stack([grid[1:21, 1 + k * 29:1 + k * 29 + 28] for k in range(4)])
    np.testing.assert_array_equal(completed == 255, given)  # the given top rows are kept (binarised)


def test_sample_needs_a_pixelcnn_run(trained):
    assert_one_line_error(run_cli("sample", str(trained)), ConfigError.exit_code, "needs a PixelCNN-family model")


def test_viz_deps_draws_the_blind_spot(tmp_path):
    out = tmp_path / "deps.png"
    done = run_cli("viz", "deps", "--size", "6", "--position", "1,0", "--out", str(out))
    assert done.returncode == 0, done.stderr
    picture = np.asarray(Image.open(out).convert("RGB"))
    assert picture.shape[0] > 100 and picture.std() > 0
    # The blind spot is drawn in red: PixelCNN (left half) has one, Gated PixelCNN (right half) none.
    red = (picture[..., 0] > 180) & (picture[..., 1] < 90) & (picture[..., 2] < 90)
    half = picture.shape[1] // 2
    assert red[:, :half].sum() > 0 and red[:, half:].sum() == 0


def test_viz_deps_rejects_a_classifier_preset(tmp_path):
    done = run_cli("viz", "deps", "--presets", "lenet5", "--out", str(tmp_path / "x.png"))
    assert done.returncode == 2 and "not a PixelCNN-family preset" in done.stderr and "Traceback" not in done.stderr
