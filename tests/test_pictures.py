"""Plots, TensorBoard events and the viz pictures, from one smoke run."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from jaxconv import experiments, viz
from jaxconv.config import apply_overrides
from jaxconv.errors import ConfigError, DataError
from jaxconv.plots import plot_runs
from jaxconv.train import loop


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("lenet")
    loop.train(apply_overrides(experiments.load("lenet_mnist", smoke=True), ["parallel.num_devices=1"]), workdir)
    return workdir


# matplotlib's colours: the first two runs' lines (tab:blue, tab:orange), and the ends of the diverging
# map RdBu_r that signed tiles use (their range is symmetric, so a tile's largest |value| is an end).
TAB_BLUE, TAB_ORANGE = (31, 119, 180), (255, 127, 14)
RDBU_R_LOW, RDBU_R_HIGH = (5, 48, 97), (103, 0, 31)
DPI = 100  # jaxconv.plots and jaxconv.viz save at 100 dpi


def picture(path, size):
    """The picture as RGB [H, W, 3]; ``size`` = (width, height) in pixels, from the figure's size in inches."""
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape == (round(size[1]), round(size[0]), 3), (path, image.shape)
    return image


def has(image, colour):
    return bool(np.all(image == colour, axis=-1).any())


def grid_size(rows, columns):
    """jaxconv.viz's tile grids: 1.6 in per column + 1.2 in, 1.7 in per row."""
    return (1.6 * columns + 1.2) * DPI, 1.7 * rows * DPI


def test_plot_overlays_runs_as_png_and_svg(run, tmp_path):
    second = tmp_path / "second"  # another run: the same records under another name
    second.mkdir()
    shutil.copy(run / "metrics.jsonl", second)
    paths = plot_runs([run, second], tmp_path / "curves")
    assert [p.suffix for p in paths] == [".png", ".svg"]
    # four panels of 4.2 x 3.4 in: loss, accuracy, learning rate, throughput (no bits/dim for LeNet)
    image = picture(paths[0], (4 * 4.2 * DPI, 3.4 * DPI))
    assert has(image, TAB_BLUE) and has(image, TAB_ORANGE)  # both runs drawn
    assert "<svg" in paths[1].read_text()[:500]


def test_plot_cli_and_a_run_without_metrics(run, tmp_path):
    done = run_cli("plot", str(run), "--out", str(tmp_path / "c.png"))
    assert done.returncode == 0 and (tmp_path / "c.svg").exists(), done.stderr
    image = picture(tmp_path / "c.png", (4 * 4.2 * DPI, 3.4 * DPI))
    assert has(image, TAB_BLUE) and not has(image, TAB_ORANGE)  # one run, one colour
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
    # four rows (the digit, then three kernels) of up to four tiles (kernel, convolved, max and avg pool)
    image = picture(viz.hand_kernels_picture(tmp_path / "k.png", index=3), grid_size(4, 4))
    # the edge kernels hold -1 and +1: both ends of the diverging map
    assert has(image, RDBU_R_LOW) and has(image, RDBU_R_HIGH)


def test_first_layer_filters_and_feature_maps(run, tmp_path):
    # LeNet-5's C1: six 5x5 filters, one row of six tiles, each signed
    image = picture(viz.filters_picture(run, tmp_path / "f.png"), grid_size(1, 6))
    assert has(image, RDBU_R_LOW) or has(image, RDBU_R_HIGH)
    # the input, then C1 (6 maps) and S4 (16 maps, 8 shown): three rows, eight columns
    image = picture(viz.features_picture(run, tmp_path / "m.png", layers=("C1", "S4"), index=5), grid_size(3, 8))
    assert has(image, RDBU_R_LOW) or has(image, RDBU_R_HIGH)
    with pytest.raises(ConfigError, match="layers with feature maps: C1"):
        viz.features_picture(run, tmp_path / "m.png", layers=("conv9",))


def test_pixelcnn_variants_study_writes_table_figure_and_samples(tmp_path):
    from jaxconv.study import run_study

    full = experiments.load_study("pixelcnn_variants")
    binary = ["pixelcnn", "gated_no_dilation", "gated_dilated"]
    assert list(full) == [*[f"{name}{suffix}" for name in binary for suffix in ("", "-seed1")],
                          "gated_dilated_softmax", "gated_dilated_mixture"]
    budgets = {(c.train.steps, c.data.batch_size, c.optim) for c in full.values()}
    assert len(budgets) == 1  # same optimiser and budget for every run
    for name, config in full.items():  # seed 0 everywhere, and seed 1 (init and batch order) for the replicas
        seed = 1 if name.endswith("-seed1") else 0
        assert (config.train.seed, config.data.seed, config.name) == (seed, seed, f"pixelcnn_variants/{name[:-6] if seed else name}")
    # Two of the five smoke variants (both families, binary and 8-bit data), the binary one with its
    # second seed, keep the suite fast.
    smoke = experiments.load_study("pixelcnn_variants", smoke=True)
    variants = {name: apply_overrides(smoke[name], ["parallel.num_devices=1", "train.steps=4"])
                for name in ("pixelcnn", "pixelcnn-seed1", "gated_dilated_mixture")}
    rows = run_study(variants, tmp_path)
    assert [(r["run"], r["variant"], r["seed"]) for r in rows] == [
        ("pixelcnn", "pixelcnn", 0), ("pixelcnn-seed1", "pixelcnn", 1), ("gated_dilated_mixture", "gated_dilated_mixture", 0)]
    assert all(np.isfinite(r["bits_per_dim"]) and r["params"] > 0 and r["val_images"] == 1000 for r in rows)
    assert rows[0]["nll_nats"] != rows[1]["nll_nats"]  # the seeds differ
    table = (tmp_path / "results.md").read_text().splitlines()
    assert len(table) == 2 + 2 and "gated_dilated_mixture" in table[-1]  # one line per variant
    cells = [cell.strip() for cell in table[2].split("|")[1:-1]]
    nll = [r["nll_nats"] for r in rows[:2]]
    assert cells[0] == "pixelcnn" and cells[5] == "0, 1"
    assert cells[7] == f"{np.mean(nll):.2f} ({min(nll):.2f}-{max(nll):.2f})"  # mean (range over the seeds)
    picture(tmp_path / "results.png", (10 * DPI, 2 * 3.2 * DPI))  # binary and 8-bit rows, two panels each
    # the sheet: a 130-pixel label column, then per variant its grid of 8 samples (8 columns of 28 + 1
    # gutter, + 1) and a 4-pixel gap
    sheet = picture(tmp_path / "samples.png", (130 + 8 * 29 + 1, 2 * (29 + 1 + 4)))
    assert tuple(sheet[0, 130]) == (128, 128, 128)  # the grid's grey gutter
    binary = sheet[1:29, 131:131 + 8 * 29]  # the pixelcnn (bernoulli) row's samples, gutters included
    assert set(np.unique(binary)) <= {0, 128, 255} and {0, 255} <= set(np.unique(binary))
    assert run_study(variants, tmp_path) == rows  # finished variants are not retrained
    # a study.json written before runs had seeds (no run, group, seed keys) still resumes into the same rows
    old = tmp_path / "pixelcnn-seed1" / "study.json"
    old.write_text(json.dumps({k: v for k, v in rows[1].items() if k not in ("run", "group", "seed", "data_seed")}))
    assert run_study(variants, tmp_path) == rows
    # runs sharing a name average in the table, so they may differ in their seeds alone
    mixed = {**variants, "other": variants["gated_dilated_mixture"].replace(name=variants["pixelcnn"].name)}
    with pytest.raises(ConfigError, match="share the name 'pixelcnn_variants/pixelcnn' but differ"):
        run_study(mixed, tmp_path / "mixed")
    assert not (tmp_path / "mixed").exists()
