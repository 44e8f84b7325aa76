"""The command line: train, eval, sample, list and the module entry point (bad input: test_bad_inputs.py)."""

import sys
import subprocess

import pytest

from conftest import REPO, run_cli

SMOKE = ["--smoke", "--set", "parallel.num_devices=1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished smoke run, copied by tests that damage or reuse it."""
    workdir = tmp_path_factory.mktemp("trained")
    done = run_cli("train", "lenet_modern_mnist", *SMOKE, "--workdir", str(workdir))
    assert done.returncode == 0, done.stderr
    return workdir


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

