"""A run directory copied to a machine without its dataset: ``sample`` and ``viz filters`` work from the
work directory alone (config.json, run.json, a checkpoint); ``eval`` reads only the split it evaluates.

Both runs train on a copy of the embedded MNIST file (``data.path``) that is deleted once they finish.
"""

import dataclasses
import json
import math
import os
import pty
import shutil

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import COMPILER_LOG, assert_compiler_log_only, assert_loaded_from_cache, run_cli, start_cli
from jaxconv import cli, generate, viz
from jaxconv.data import sources
from jaxconv.errors import DataError
from jaxconv.train import loop, restore
from jaxconv.train.metrics import read_metrics

STEPS = 3
COMMON = ["--smoke", "--set", "parallel.num_devices=1", "--set", f"train.steps={STEPS}"]
DPI = 100  # jaxconv.viz saves at 100 dpi


def finished(process, *, progress: str | None = None) -> str:
    """Waits for a CLI process; asserts exit 0 and a clean stderr (only ``progress`` lines allowed); returns stdout."""
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    noise = [line for line in err.splitlines() if line and not (progress and line.startswith(progress))]
    assert not noise, err[-3000:]
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{"pixelcnn": workdir, "lenet": workdir, "data": the deleted data file}: a Gated PixelCNN and a
    data.subtract_mean LeNet-5, trained (concurrently) on a copy of the MNIST file, which is then deleted."""
    root = tmp_path_factory.mktemp("copied-runs")
    data = root / "mnist_5k.csv.gz"
    shutil.copy(sources.mnist_file(), data)
    workdirs = {"pixelcnn": root / "pixelcnn", "lenet": root / "lenet"}
    trains = [start_cli("train", "gated_pixelcnn_mnist", *COMMON, "--set", f"data.path={data}",
                        "--workdir", str(workdirs["pixelcnn"])),
              start_cli("train", "lenet_mnist", *COMMON, "--set", f"data.path={data}",
                        "--set", "data.subtract_mean=true", "--workdir", str(workdirs["lenet"]))]
    for process in trains:
        finished(process)
    data.unlink()
    return {**workdirs, "data": data}


def test_a_run_records_its_input_shape_and_train_mean(runs):
    for name in ("pixelcnn", "lenet"):
        assert json.loads((runs[name] / "run.json").read_text()) == {
            "image_shape": [28, 28, 1], "input_shape": [28, 28, 1], "num_classes": 10}
    assert not (runs["pixelcnn"] / restore.MEAN_FILE).exists()  # recorded for data.subtract_mean runs only
    mean = np.load(runs["lenet"] / restore.MEAN_FILE)
    assert mean.shape == (28, 28, 1) and mean.dtype == np.float32 and 20 < mean.mean() < 60  # MNIST: ~33


def _at_a_terminal(*args: str, stderr) -> tuple[int, str]:
    """Runs ``python -m jaxconv ARGS`` with its stdout on a pseudo-terminal, its stderr into the open file
    ``stderr``: (exit code, what it printed)."""
    leader, follower = pty.openpty()
    process = start_cli(*args, stdout=follower, stderr=stderr, text=False)
    os.close(follower)
    printed = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal is closed once the process has exited
            break
        if not chunk:
            break
        printed += chunk
    os.close(leader)
    return process.wait(timeout=300), printed.decode(errors="replace")


def test_sample_reports_rows_at_a_terminal_and_is_compiled_once_elsewhere(runs, tmp_path):
    """The per-row report is a host callback in the compiled sampler, which JAX's persistent cache cannot
    keep: at a terminal `jaxconv sample` reports each row; without one the second process loads the sampler."""
    first, again = (run_cli("sample", str(runs["pixelcnn"]), "--num", "4", "--out", str(tmp_path / f"{k}.png"),
                            env={**os.environ, **COMPILER_LOG}) for k in range(2))
    assert_compiler_log_only(first)
    assert_loaded_from_cache(again, "jit__cached_gated")
    assert "sampled row" not in first.stdout + again.stdout
    with open(tmp_path / "stderr.txt", "w+") as stderr:
        code, printed = _at_a_terminal("sample", str(runs["pixelcnn"]), "--num", "4", "--out",
                                       str(tmp_path / "t.png"), stderr=stderr)
        stderr.seek(0)
        assert (code, stderr.read()) == (0, ""), printed[-3000:]
    assert "sampled row 28/28" in printed and f"wrote {tmp_path / 't.png'}" in printed


def test_sample_and_viz_filters_work_without_the_data(runs, tmp_path):
    """Through the CLI, in processes of their own: exit 0, nothing on stderr but the sampler's progress."""
    samples, filters, lenet_filters = tmp_path / "s.png", tmp_path / "f.png", tmp_path / "lenet.png"
    processes = [start_cli("sample", str(runs["pixelcnn"]), "--num", "4", "--out", str(samples)),
                 start_cli("viz", "filters", str(runs["pixelcnn"]), "--out", str(filters)),
                 start_cli("viz", "filters", str(runs["lenet"]), "--out", str(lenet_filters))]
    assert f"wrote {samples}" in finished(processes[0])
    for process, out in zip(processes[1:], (filters, lenet_filters)):
        assert f"wrote {out}" in finished(process)
    assert not runs["data"].exists()
    with Image.open(samples) as image:  # generate.image_grid: 8 columns of 28x28 cells, 1-pixel gutters, one row
        assert image.size == (8 * 29 + 1, 30) and image.mode == "L"
    # jaxconv.viz's tile grids: 8 filters a row, 1.6 in a column + 1.2 in, 1.7 in a row
    _, _, state = loop.restore_workdir(runs["pixelcnn"], "latest")
    first = next(x for x in jax.tree.leaves(state.params) if x.ndim == 4)  # [kh, kw, Cin, Cout]
    rows, columns = math.ceil(first.shape[-1] / 8), min(8, first.shape[-1])
    for path, (rows, columns) in ((filters, (rows, columns)), (lenet_filters, (1, 6))):  # LeNet-5's C1: 6 filters
        with Image.open(path) as image:
            assert image.size == (round((1.6 * columns + 1.2) * DPI), round(1.7 * rows * DPI)), (path, image.size)


@pytest.mark.parametrize("argv, says", [
    (["eval", "{pixelcnn}"], "jaxconv: error: MNIST file not found: {data}"),
    (["eval", "{lenet}", "--split", "train"], "jaxconv: error: MNIST file not found: {data}"),
    (["sample", "{pixelcnn}", "--complete", "5", "--out", "{tmp}/c.png"],
     "jaxconv: error: --complete completes the validation images of {pixelcnn}'s data, which cannot be read: "
     "MNIST file not found: {data} (sampling without --complete needs no data)"),
    (["viz", "features", "{lenet}", "--out", "{tmp}/m.png"],
     "jaxconv: error: viz features shows a validation image of {lenet}'s data, which cannot be read: "
     "MNIST file not found: {data} (viz filters needs no data)"),
], ids=["eval", "eval-train", "sample-complete", "viz-features"])
def test_commands_that_read_data_say_which_file_is_missing(runs, tmp_path, capfd, argv, says):
    names = {**{k: str(v) for k, v in runs.items()}, "tmp": str(tmp_path)}
    code = cli.main([a.format(**names) for a in argv])
    captured = capfd.readouterr()
    assert code == DataError.exit_code, captured.err
    assert captured.err == says.format(**names) + "\n" and captured.out == ""
    assert not list(tmp_path.iterdir())  # no picture written


@pytest.fixture
def val_only(monkeypatch):
    """load_split, wherever restoring and evaluating call it, serving the val split of the embedded MNIST
    file (the runs' deleted copy held the same bytes) and failing the test if the train split is asked for."""
    calls = []

    def load_split(config, split):
        calls.append(split)
        assert split != "train", "read the train split"
        return sources.load_split(dataclasses.replace(config, path=None), split)

    for module in (loop, restore, generate, viz):
        monkeypatch.setattr(module, "load_split", load_split)
    return calls


def test_restore_reads_no_data_and_eval_only_its_split(runs, val_only):
    config, step, state = loop.restore_workdir(runs["pixelcnn"])
    assert step == STEPS and int(state.step) == STEPS and config.name == "gated_pixelcnn_mnist"
    assert val_only == []
    # data.subtract_mean: the inputs are centred with the recorded train mean, as in training
    step, metrics = loop.evaluate_workdir(runs["lenet"], split="val")
    assert val_only == ["val"]
    logged = next(r for r in read_metrics(runs["lenet"]) if r["split"] == "val" and r["step"] == STEPS)
    assert step == STEPS and metrics["count"] == logged["count"] == 1000
    for key in ("loss", "accuracy"):
        np.testing.assert_allclose(metrics[key], logged[key], rtol=1e-5)


def test_a_run_without_run_json_gets_its_shapes_from_its_data(runs, tmp_path, monkeypatch):
    """Runs trained before run.json existed: restore reads the val split for the input shape, and eval of a
    data.subtract_mean run the train split for the mean; each says so when it cannot."""
    old = tmp_path / "old"
    shutil.copytree(runs["lenet"], old)
    (old / "run.json").unlink()
    (old / restore.MEAN_FILE).unlink()
    with pytest.raises(DataError, match=f"{old} has no run.json .*: MNIST file not found: {runs['data']}$"):
        loop.restore_workdir(old)
    config = restore.load_config(old)
    with pytest.raises(DataError, match="data.subtract_mean needs the train split's mean image: .* has no "
                                        f"train_mean.npy .*: MNIST file not found: {runs['data']}$"):
        restore.train_mean(old, config)
    monkeypatch.setattr(restore, "load_split", lambda c, split: sources.load_split(dataclasses.replace(c, path=None),
                                                                                   split))
    assert loop.restore_workdir(old)[1] == STEPS
    np.testing.assert_array_equal(restore.train_mean(old, config), np.load(runs["lenet"] / restore.MEAN_FILE))
