"""Class-conditional Gated PixelCNN end to end through the command line (train, eval, sample --label,
the naive sampler), and ``jaxconv sample``'s bad input: one ``jaxconv: error:`` line, exit 2, nothing
restored or compiled first.

One class-conditional smoke run (4 steps) is shared by the whole module; the bad-input cases call
``jaxconv.cli.main`` in this process, except ``--temperature nan``, which runs for real.
"""

import json
import re

import numpy as np
import pytest
from PIL import Image

from conftest import ok, run_cli
from jaxconv import cli, generate

TRAIN = ["train", "gated_pixelcnn_mnist", "--smoke", "--set", "parallel.num_devices=1", "--set", "train.steps=4",
         "--set", "model.num_classes=10"]
NUM, SEED = 4, 1
# generate.image_grid: 28x28 cells, 1-pixel gutters; 8 columns, or one per class (10) when the classes
# cycle (no --label); one row for 4 images
GRID, CLASS_GRID = (8 * 29 + 1, 30), (10 * 29 + 1, 30)


def cells(path, size=GRID):
    """The images of a sample grid [N, 28, 28] (N = NUM), after checking the PNG's size and mode."""
    with Image.open(path) as image:
        assert image.size == size and image.mode == "L"
        grid = np.asarray(image)
    return np.stack([grid[1:29, 1 + k * 29:29 + k * 29] for k in range(NUM)])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished class-conditional smoke run (10 classes): (workdir, the train process)."""
    workdir = tmp_path_factory.mktemp("conditional")
    return workdir, ok(run_cli(*TRAIN, "--workdir", str(workdir)))


@pytest.fixture(scope="module")
def cycled(trained):
    """The cached sampler's grid without --label: image k is of class k."""
    workdir, _ = trained
    out = workdir / "cycled.png"
    done = ok(run_cli("sample", str(workdir), "--num", str(NUM), "--seed", str(SEED), "--out", str(out)))
    assert f"wrote {out}" in done.stdout
    return cells(out, CLASS_GRID)


def test_class_conditional_training_through_the_cli(trained):
    workdir, done = trained
    assert "gated_pixelcnn_mnist: step 4, validation" in done.stdout and "bits_per_dim" in done.stdout
    assert json.loads((workdir / "config.json").read_text())["model"]["num_classes"] == 10


def test_eval_of_a_class_conditional_run(trained):
    workdir, _ = trained
    done = ok(run_cli("eval", str(workdir)))
    assert "checkpoint 4 (best), split val" in done.stdout
    metrics = dict(re.findall(r"^\s+(\w+)\s+(\S+)$", done.stdout, re.M))
    assert set(metrics) == {"bits_per_dim", "loss", "nll_nats", "count"}
    assert 0.05 < float(metrics["bits_per_dim"]) < 2.0 and int(metrics["count"]) > 0


def test_viz_features_of_a_class_conditional_run(trained, tmp_path):
    """The feature maps of a validation digit, computed with that digit's own label (a conditional model
    cannot run without one)."""
    workdir, _ = trained
    out = tmp_path / "features.png"
    done = ok(run_cli("viz", "features", str(workdir), "--index", "3", "--out", str(out)))
    assert f"wrote {out}" in done.stdout and done.stderr == ""
    with Image.open(out) as picture:
        assert picture.size[0] > 100 and picture.size[1] > 100


def test_sample_with_a_label_is_conditioned_on_it(trained, cycled):
    """Same seed, so the same noise per image slot: --label 3 gives image 3 of the cycling grid (class 3
    there too) and changes images 0..2 (classes 0..2 there)."""
    workdir, _ = trained
    out = workdir / "label3.png"
    ok(run_cli("sample", str(workdir), "--label", "3", "--num", str(NUM), "--seed", str(SEED), "--out", str(out)))
    three = cells(out)
    np.testing.assert_array_equal(three[3], cycled[3])
    assert any(not np.array_equal(three[k], cycled[k]) for k in range(3))
    assert len(np.unique(three)) == 2  # bernoulli: black and white pixels, not a blank grid


def test_naive_sampler_agrees_with_cached_on_a_conditional_run(trained, cycled):
    workdir, _ = trained
    out = workdir / "naive.png"
    ok(run_cli("sample", str(workdir), "--sampler", "naive", "--num", str(NUM), "--seed", str(SEED),
               "--out", str(out)))
    np.testing.assert_array_equal(cells(out, CLASS_GRID), cycled)


def test_temperature_nan_is_a_config_error_in_a_real_process(trained):
    workdir, _ = trained
    done = run_cli("sample", str(workdir), "--temperature", "nan", "--num", "2")
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.startswith("jaxconv: error: --temperature") and len(done.stderr.splitlines()) == 1
    assert "Traceback" not in done.stderr and not (workdir / "samples.png").exists()


@pytest.fixture(scope="module")
def unconditional(trained, tmp_path_factory):
    """A work directory whose config.json is the same model without classes (sample reads it first)."""
    workdir = tmp_path_factory.mktemp("unconditional")
    config = json.loads((trained[0] / "config.json").read_text())
    config["model"]["num_classes"] = 0
    (workdir / "config.json").write_text(json.dumps(config))
    return workdir


@pytest.mark.parametrize("args, message", [
    (["--temperature", "nan"], "--temperature must be finite and > 0"),
    (["--temperature", "inf"], "--temperature must be finite and > 0"),
    (["--temperature", "0"], "--temperature must be finite and > 0"),
    (["--temperature", "-1"], "--temperature must be finite and > 0"),
    (["--seed", str(10**23)], "--seed must be an integer in 0..4294967295"),
    (["--seed", "-1"], "--seed must be an integer in 0..4294967295"),
    (["--num", "0"], "--num must be an integer in 1..10,000"),
    (["--num", str(10**8)], "--num must be an integer in 1..10,000"),
    (["--label", "10"], "--label must be in 0..9"),
    (["--label", "-1"], "--label must be in 0..9"),
    (["--complete", "-1"], "--complete must be a number of rows >= 0"),
    (["--checkpoint", "²"], "bad checkpoint"),
    (["--out", "grid.bogus"], "name an image file"),
    (["--label", "3", "unconditional"], "--label needs a class-conditional model"),
    (["--draw", "exact"], "bad draw 'exact'; allowed values: gumbel, direct"),
    (["--draw", "direct"], "--draw direct: draw='direct' samples a logistic mixture head, not bernoulli"),
])
def test_bad_sample_input_is_one_line_and_exit_2_before_any_restore(trained, unconditional, monkeypatch, capfd,
                                                                     tmp_path, args, message):
    def no_restore(*_, **__):
        raise AssertionError("restored a checkpoint before checking the arguments")

    monkeypatch.setattr(generate, "restore_workdir", no_restore)
    workdir = trained[0]
    if args[-1] == "unconditional":
        args, workdir = args[:-1], unconditional
    if "--out" in args:
        args = [*args[:-1], str(tmp_path / args[-1])]
    before = sorted(p.name for p in workdir.iterdir())
    code = cli.main(["sample", str(workdir), *args])
    captured = capfd.readouterr()
    assert code == 2, captured.err
    assert captured.err.startswith("jaxconv: error: ") and message in captured.err, captured.err
    assert len(captured.err.splitlines()) == 1 and captured.out == ""
    assert sorted(p.name for p in workdir.iterdir()) == before


def test_sampling_library_refuses_nan_temperature_and_labels_out_of_range():
    """The samplers themselves (not only the CLI): NaN would draw value 0 everywhere, a label out of range
    would read NaN class biases."""
    import jax
    import jax.numpy as jnp

    from jaxconv import sampling
    from jaxconv.models.pixelcnn import GatedPixelCNNConfig, build

    model = build(GatedPixelCNNConfig(features=2, num_layers=1, output_features=2, num_classes=3))
    key = jax.random.key(0)
    for kwargs, text in [(dict(labels=jnp.array([0, 1]), temperature=float("nan")), "temperature"),
                         (dict(labels=jnp.array([0, 3]), temperature=1.0), "labels must be integers in 0..2"),
                         (dict(labels=None, temperature=1.0), "pass labels")]:
        for sample in (sampling.sample_naive, sampling.sample_cached):
            with pytest.raises(ValueError, match=text):
                sample(model, None, key, (2, 3, 3, 1), **kwargs)
