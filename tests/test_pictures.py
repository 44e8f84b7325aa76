"""Plots, TensorBoard events and the viz pictures, from one smoke run."""

import json

import numpy as np
import pytest
from PIL import Image

import experiments
from conftest import run_cli
from jaxconv import viz
from jaxconv.config import apply_overrides
from jaxconv.errors import ConfigError, DataError
from jaxconv.plots import plot_runs
from jaxconv.train import loop


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("lenet")
    loop.train(apply_overrides(experiments.load("lenet_mnist", smoke=True), ["parallel.num_devices=1"]), workdir)
    return workdir


def picture(path, min_width=200):
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape[1] >= min_width and image.std() > 10, (path, image.shape)
    return image


def test_plot_overlays_runs_as_png_and_svg(run, tmp_path):
    paths = plot_runs([run, run], tmp_path / "curves")
    assert [p.suffix for p in paths] == [".png", ".svg"]
    picture(paths[0], min_width=1000)  # five panels: loss, accuracy, lr, throughput (+ none for bits/dim)
    assert "<svg" in paths[1].read_text()[:500]


def test_plot_cli_and_a_run_without_metrics(run, tmp_path):
    done = run_cli("plot", str(run), "--out", str(tmp_path / "c.png"))
    assert done.returncode == 0 and (tmp_path / "c.png").exists() and (tmp_path / "c.svg").exists(), done.stderr
    with pytest.raises(DataError, match="no metrics.jsonl"):
        plot_runs([tmp_path], tmp_path / "x")


def test_tensorboard_events_hold_the_metrics(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for split in ("train", "val"):
        expected = [(r["step"], r["loss"]) for r in records if r["split"] == split]
        logged = [(e.step, e.value) for e in events.Scalars(f"{split}/loss")]
        assert len(expected) > 0 and [s for s, _ in logged] == [s for s, _ in expected]
        np.testing.assert_allclose([v for _, v in logged], [v for _, v in expected], rtol=1e-6)


def test_hand_made_kernels_and_pooling(tmp_path):
    image = picture(viz.hand_kernels_picture(tmp_path / "k.png", index=3))
    assert image.shape[0] > 400  # four rows: the digit and three kernels


def test_first_layer_filters_and_feature_maps(run, tmp_path):
    picture(viz.filters_picture(run, tmp_path / "f.png"))
    picture(viz.features_picture(run, tmp_path / "m.png", layers=("C1", "S4"), index=5))
    with pytest.raises(ConfigError, match="layers with feature maps: C1"):
        viz.features_picture(run, tmp_path / "m.png", layers=("conv9",))


def test_pixelcnn_variants_study_writes_table_figure_and_samples(tmp_path):
    from jaxconv.study import run_study

    full = experiments.load_study("pixelcnn_variants")
    assert list(full) == ["pixelcnn", "gated_no_dilation", "gated_dilated", "gated_dilated_softmax",
                          "gated_dilated_mixture"]
    budgets = {(c.train.steps, c.data.batch_size, c.train.seed, c.data.seed, c.optim) for c in full.values()}
    assert len(budgets) == 1  # same seed, data order, optimiser and budget for every variant
    # Two of the five smoke variants (both families, binary and 8-bit data) keep the suite fast.
    smoke = experiments.load_study("pixelcnn_variants", smoke=True)
    variants = {name: apply_overrides(smoke[name], ["parallel.num_devices=1", "train.steps=4"])
                for name in ("pixelcnn", "gated_dilated_mixture")}
    rows = run_study(variants, tmp_path)
    assert [r["variant"] for r in rows] == list(variants)
    assert all(np.isfinite(r["bits_per_dim"]) and r["params"] > 0 and r["val_images"] == 1000 for r in rows)
    table = (tmp_path / "results.md").read_text().splitlines()
    assert len(table) == 2 + len(variants) and "gated_dilated_mixture" in table[-1]
    picture(tmp_path / "results.png")
    assert np.asarray(Image.open(tmp_path / "samples.png")).shape[0] > 2 * 28
    assert run_study(variants, tmp_path) == rows  # finished variants are not retrained
