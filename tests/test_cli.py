"""The command line: train, eval, sample, list and the module entry point (bad input: test_bad_inputs.py)."""

import os
import sys
import subprocess

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, ok, run_cli

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
    assert listed.returncode == 0 and listed.stderr == "", listed.stderr
    assert "lenet_mnist" in listed.stdout and "lenet5_modern" in listed.stdout
    done = subprocess.run([sys.executable, "-m", "jaxconv.experiments.lenet_mnist", *SMOKE, "--set", "train.steps=3",
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

    given = load_split(DataConfig(), "val").images[[0, 250, 500, 750], :20, :, 0] > 127  # spread over the split
    completed = np.stack([grid[1:21, 1 + k * 29:1 + k * 29 + 28] for k in range(4)])
    np.testing.assert_array_equal(completed == 255, given)  # the given top rows are kept (binarised)
    # Without a C++ compiler a position's stack runs as XLA's ops: one warning, the same images.
    env = {**os.environ, "JAXCONV_CACHE_DIR": str(tmp_path / "cache"), "CXX": str(tmp_path / "no-such-compiler")}
    done = ok(run_cli("sample", str(workdir), "--num", "4", "--complete", "20", "--out", str(tmp_path / "xla.png"),
                      env=env))
    warned = [line for line in done.stderr.splitlines() if "sampler kernels are unavailable" in line]
    assert len(warned) == 1, done.stderr
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "xla.png")), grid)


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


def test_sample_draws_a_logistic_mixture_directly_and_both_samplers_agree(tmp_path):
    """``--draw direct`` through the CLI on a logistic-mixture run: the cached and naive samplers give the
    same 8-bit images; at another temperature it is one error line."""
    workdir = tmp_path / "mixture"
    trained = run_cli("train", "gated_pixelcnn_mnist8", *SMOKE, "--set", "train.steps=4", "--set",
                      "model.head=logistic_mixture", "--workdir", str(workdir))
    assert trained.returncode == 0, trained.stderr
    grids = []
    for sampler in ("cached", "naive"):
        out = tmp_path / f"{sampler}.png"
        # the naive sampler runs a whole forward pass per variable: complete the bottom 4 rows only
        done = run_cli("sample", str(workdir), "--num", "2", "--complete", "24", "--draw", "direct", "--sampler",
                       sampler, "--out", str(out))
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        grids.append(np.asarray(Image.open(out)))
    np.testing.assert_array_equal(grids[0], grids[1])
    assert len(np.unique(grids[0][25:29, 1:29])) > 2  # drawn 8-bit values, not a binary or blank row
    done = run_cli("sample", str(workdir), "--draw", "direct", "--temperature", "0.5")
    assert done.returncode == 2
    assert done.stderr == "jaxconv: error: --draw direct: draw='direct' samples at temperature 1 only, got 0.5\n"
