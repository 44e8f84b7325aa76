"""README features run once through the command line at smoke size (issue 16, part 3).

Each test runs a command the way README.md shows it, at the smallest size that still exercises it, and
checks its exit code, a clean stderr and one fact about what it wrote or printed. A command runs in a
process of its own (``conftest.run_cli``, the ``jaxconv`` entry point) where the process is what is
tested (the shared training run, cluster environments, exit codes), otherwise in this process through
``jaxconv.cli.main`` (the same parsing, command and error handling, without another JAX start-up).

One training run is shared (``lenet``): the LeNet-5 smoke experiment for 6 steps in bfloat16, a metrics
record every step, validation and a checkpoint every 2 steps, ``checkpoint.keep_latest=1``, and a learning
rate (0.5) so high that validation accuracy is best at step 2 and falls after it (measured: 0.212, then
0.100 at steps 4 and 6, one class for every image). So the run ends with checkpoints 2 (the best, which
``keep_latest=1`` alone would have deleted) and 6 (the latest).
"""

import json
import os
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import REPO, run_cli
from jaxconv import cli, experiments

# What a clean process never writes: C++ aborts, tracebacks, swallowed exceptions, crashes.
UNCLEAN = ("Traceback", "terminate called", "Exception ignored", "Segmentation fault", "Fatal Python error")
SMOKE = ["--smoke", "--set", "parallel.num_devices=1"]
LENET = ["lenet_mnist", *SMOKE, *[arg for item in (
    "train.steps=6", "train.dtype=bfloat16", "train.log_every=1", "train.eval_every=2", "checkpoint.every=2",
    "checkpoint.keep_latest=1", "optim.learning_rate=0.5") for arg in ("--set", item)]]
BEST, LATEST = 2, 6


def assert_clean(stderr: str) -> None:
    found = [s for s in UNCLEAN if s in stderr]
    assert not found, stderr


def ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, done.stderr
    assert_clean(done.stderr)
    return done


def main(capfd, *argv) -> tuple[str, str]:
    """``jaxconv ARGV`` in this process: exit code 0 and a clean stderr; returns (stdout, stderr)."""
    capfd.readouterr()
    code = cli.main([str(a) for a in argv])
    out, err = capfd.readouterr()
    assert code == 0, err
    assert_clean(err)
    return out, err


def metrics_table(stdout: str) -> dict[str, float]:
    """The ``name value`` rows that ``jaxconv train`` and ``jaxconv eval`` print under their title line."""
    rows = [line.split() for line in stdout.splitlines() if line.startswith("  ")]
    return {row[0]: float(row[1]) for row in rows if len(row) == 2}


def records(workdir: Path, split: str) -> dict[int, dict]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r for r in map(json.loads, lines) if r["split"] == split}


def printed(value: float) -> float:
    return float(f"{value:.6g}")  # as the metrics tables print it


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    """The shared run (see the module docstring), trained by ``jaxconv train`` in a process of its own."""
    workdir = tmp_path_factory.mktemp("lenet") / "run"
    done = ok(run_cli("train", *LENET, "--workdir", str(workdir)))
    return workdir, done


# --- training -----------------------------------------------------------------------------------------------


def test_bfloat16_training_keeps_float32_parameters(lenet):
    """``--set train.dtype=bfloat16`` computes in bf16; parameters and optimiser state stay float32."""
    from jaxconv.train import loop

    workdir, done = lenet
    assert f"lenet_mnist: step {LATEST}, validation" in done.stdout
    assert json.loads((workdir / "config.json").read_text())["train"]["dtype"] == "bfloat16"
    _, step, state = loop.restore_workdir(workdir, "latest")
    leaves = [*jax.tree.leaves(state.params), *jax.tree.leaves(state.opt_state)]
    assert step == LATEST and {str(x.dtype) for x in leaves if x.ndim} == {"float32"}
    assert 0 < records(workdir, "val")[LATEST]["loss"] < 20  # finite: bf16 did not overflow


def test_keep_best_eval_restores_the_best_checkpoint_not_the_latest(lenet, capfd):
    """``jaxconv eval RUN`` evaluates the best checkpoint by default, here one ``keep_latest=1`` would drop."""
    workdir, _ = lenet
    val = records(workdir, "val")
    assert max(val, key=lambda s: val[s]["accuracy"]) == BEST and val[BEST]["accuracy"] > val[LATEST]["accuracy"]
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [BEST, LATEST]
    out, _ = main(capfd, "eval", workdir)
    assert f"checkpoint {BEST} (best), split val" in out
    assert metrics_table(out)["accuracy"] == printed(val[BEST]["accuracy"])  # the same weights as at step 2


# --- cluster environments: eval in a single-task job -------------------------------------------------------

# A cluster's job id sets the coordinator's port, in 61440..65535 (65535 - 2**12 + 1 up).
PORTS = range(65536 - 4096, 65536)


def free_port() -> int:
    for port in random.sample(PORTS, 64):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port on 127.0.0.1 in 61440..65535")


def cluster_env(port: int, **variables: str) -> dict[str, str]:
    """This environment without any launcher's variables, plus ``variables``; the coordinator listens on
    127.0.0.1 only, and JAX logs where it connects."""
    launchers = ("SLURM_", "OMPI_", "PMIX_", "PMI_", "TPU_", "MEGASCALE_", "JAX_COORDINATOR", "JAX_NUM_PROCESSES",
                 "JAX_PROCESS_ID", "JAX_LOCAL_DEVICE_IDS", "JAX_CPU_COLLECTIVES", "MPITRAMPOLINE_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(launchers)}
    env.update(JAX_LOGGING_LEVEL="INFO", JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}", **variables)
    return env


def slurm_env(port: int) -> dict[str, str]:
    """What ``srun`` sets for a one-task job step on this host (job id -> port: JAX's SlurmCluster)."""
    return cluster_env(port, SLURM_JOB_ID=str(7 * 4096 + port - PORTS.start), SLURM_STEP_NODELIST="127.0.0.1",
                       SLURM_NTASKS="1", SLURM_PROCID="0", SLURM_LOCALID="0")


def test_eval_latest_checkpoint_in_a_slurm_job_step(lenet):
    """``eval --checkpoint latest`` under srun: jaxconv starts jax.distributed from Slurm's variables."""
    workdir, _ = lenet
    port = free_port()
    done = ok(run_cli("eval", str(workdir), "--checkpoint", "latest", env=slurm_env(port)))
    assert f"Connecting to JAX distributed service on 127.0.0.1:{port}" in done.stderr  # detected, one process
    assert f"checkpoint {LATEST} (latest), split val" in done.stdout
    assert metrics_table(done.stdout)["accuracy"] == printed(records(workdir, "val")[LATEST]["accuracy"])


def test_eval_numbered_checkpoint_on_the_train_split_under_open_mpi(lenet):
    """``eval --checkpoint STEP --split train`` under mpirun -np 1 (Open MPI's variables)."""
    workdir, _ = lenet
    port = free_port()
    job = (port - PORTS.start + 4096) * 4096  # Open MPI job ids are multiples of 2**12
    env = cluster_env(port, OMPI_MCA_orte_hnp_uri=f"{job}.0;tcp://127.0.0.1:34911", OMPI_COMM_WORLD_SIZE="1",
                      OMPI_COMM_WORLD_RANK="0", OMPI_COMM_WORLD_LOCAL_RANK="0")
    done = ok(run_cli("eval", str(workdir), "--checkpoint", str(BEST), "--split", "train", env=env))
    assert f"Connecting to JAX distributed service on 127.0.0.1:{port}" in done.stderr
    assert f"checkpoint {BEST} ({BEST}), split train" in done.stdout
    table = metrics_table(done.stdout)
    assert table["count"] == 4000 and 0 <= table["accuracy"] <= 1  # the train split: 400 images per digit


@pytest.mark.parametrize("variable, value", [("SLURM_NTASKS", "1"), ("OMPI_COMM_WORLD_SIZE", "1"),
                                             ("JAX_COORDINATOR_ADDRESS", "127.0.0.1:61999")])
def test_a_partial_cluster_environment_is_one_line_exit_2(lenet, variable, value):
    """One launcher variable without the rest JAX needs (a shell inside salloc, Open MPI 5's mpirun)."""
    workdir, _ = lenet
    done = run_cli("eval", str(workdir), env=cluster_env(free_port(), **{variable: value}))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith(f"jaxconv: error: cannot start a multi-process run ({variable} set)")
    assert "parallel.distributed=off" in lines[-1] and "Traceback" not in done.stderr


def test_bench_report_readme_without_markers_is_one_line_exit_2(tmp_path, capfd):
    (tmp_path / "results").mkdir()
    readme = tmp_path / "README.md"
    readme.write_text("# no markers here\n")
    capfd.readouterr()
    assert cli.main(["bench", "report", str(tmp_path / "results"), "--readme", str(readme), "--no-plots"]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "has no <!-- bench:begin -->" in err
    assert readme.read_text() == "# no markers here\n"


def test_mpi_collectives_override_is_honoured(lenet):
    """``JAX_CPU_COLLECTIVES_IMPLEMENTATION=mpi`` wins over jaxconv's gloo: here, without an MPI library,
    MPItrampoline's own one-line error (with gloo the same job runs: the Slurm test above)."""
    workdir, _ = lenet
    env = slurm_env(free_port())
    env.update(JAX_CPU_COLLECTIVES_IMPLEMENTATION="mpi")
    del env["JAX_LOGGING_LEVEL"]
    done = run_cli("eval", str(workdir), env=env)
    assert done.returncode == 1 and "MPITRAMPOLINE_LIB is not set" in done.stderr, done.stderr
    assert_clean(done.stderr)


# --- exit codes --------------------------------------------------------------------------------------------

INJECTED = """
import sys
from jaxconv import cli, viz

def dependency_picture(*args, **kwargs):
    raise RuntimeError("an injected bug in jaxconv.viz.dependency_picture")

viz.dependency_picture = dependency_picture
cli.entry(sys.argv[1:])
"""


def test_an_internal_error_exits_1_with_its_traceback(tmp_path):
    """README: exit 1 is "an unexpected error (a bug: the traceback is shown)". ``jaxconv viz deps`` with a
    bug put into the library function it calls, run by the real entry point."""
    done = subprocess.run([sys.executable, "-c", INJECTED, "viz", "deps", "--out", str(tmp_path / "deps.png")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert "Traceback (most recent call last)" in done.stderr
    assert done.stderr.rstrip().endswith("RuntimeError: an injected bug in jaxconv.viz.dependency_picture")
    assert_clean(done.stderr.replace("Traceback (most recent call last)", ""))
    assert not (tmp_path / "deps.png").exists()


# --- TensorBoard: a resumed run's relogged points appear once -----------------------------------------------


def test_tensorboard_drops_the_points_a_resumed_run_logs_again(lenet, tmp_path, capfd):
    """A run killed after logging steps 3..6 but before checkpoint 6 was complete resumes from checkpoint 2
    and logs steps 3..6 again into a second event file; TensorBoard shows each step once."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    workdir = tmp_path / "run"
    shutil.copytree(lenet[0], workdir)
    shutil.rmtree(workdir / "checkpoints" / str(LATEST))  # what such a kill leaves: checkpoint 6 never written
    out, err = main(capfd, "train", *LENET, "--workdir", workdir)
    assert f"resuming from checkpoint {BEST}" in out and "dropped them" in err
    files = sorted((workdir / "tensorboard").iterdir())
    logged = [[e.step for e in EventFileLoader(str(f)).Load() if any(v.tag == "train/loss" for v in e.summary.value)]
              for f in files]
    assert logged == [list(range(1, LATEST + 1)), list(range(BEST + 1, LATEST + 1))]  # steps 3..6 twice on disk
    events = EventAccumulator(str(workdir / "tensorboard"))
    events.Reload()
    for split, tag in (("train", "train/loss"), ("val", "val/accuracy")):
        expected = records(workdir, split)  # metrics.jsonl: each step once, the resumed run's values
        shown = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [step for step, _ in shown] == sorted(expected)
        np.testing.assert_allclose([v for _, v in shown], [expected[s][tag.split("/")[1]] for s, _ in shown],
                                   rtol=1e-6)


# --- viz ---------------------------------------------------------------------------------------------------


def picture_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels."""
    return Image.open(path).size


def grid_size(rows: int, columns: int) -> tuple[int, int]:
    """jaxconv.viz's tile grids at 100 dpi: 1.6 in per column + 1.2 in wide, 1.7 in per row."""
    return round((1.6 * columns + 1.2) * 100), round(1.7 * rows * 100)


def test_viz_kernels(tmp_path, capfd):
    out = tmp_path / "kernels.png"
    printed_out, _ = main(capfd, "viz", "kernels", "--index", "3", "--out", out)
    assert printed_out.strip() == f"wrote {out}"
    # the digit, then three kernels, each with its convolution, max and average pooling: 4 x 4 tiles
    assert picture_size(out) == grid_size(4, 4)


def test_viz_filters_and_features_of_a_run(lenet, tmp_path, capfd):
    workdir, _ = lenet
    main(capfd, "viz", "filters", workdir)
    assert picture_size(workdir / "filters.png") == grid_size(1, 6)  # C1's six 5x5 kernels, one row
    out = tmp_path / "features.png"
    main(capfd, "viz", "features", workdir, "--layers", "C1,S2", "--index", "3", "--out", out)
    assert picture_size(out) == grid_size(3, 6)  # the digit, C1's 6 maps, S2's 6 maps


# --- the PixelCNN study, then sampling with a temperature ------------------------------------------------------


def test_pixelcnn_variants_study_then_sample_with_temperature(tmp_path, capfd, monkeypatch):
    """``jaxconv train pixelcnn_variants`` with one of its five variants (the whole smoke study costs 45 s of
    CPU; tests/test_pictures.py runs two through the library), then ``jaxconv sample`` of that variant's
    run at temperature 0.5."""
    smoke = experiments.load_study("pixelcnn_variants", smoke=True)
    monkeypatch.setattr(experiments, "load_study", lambda name, smoke_=False: {"pixelcnn": smoke["pixelcnn"]})
    workdir = tmp_path / "study"
    out, _ = main(capfd, "train", "pixelcnn_variants", *SMOKE, "--workdir", workdir)
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert len(table) == 3 and table[2].startswith("| pixelcnn | pixelcnn | binary, bernoulli |")
    assert (workdir / "results.md").read_text().splitlines() == table
    nll_nats, bits_per_dim = (float(cell) for cell in table[2].split("|")[-3:-1])
    assert 0 < bits_per_dim < 1  # below a fair coin per binary pixel: it learned something in 10 steps
    assert bits_per_dim == pytest.approx(nll_nats / (28 * 28 * np.log(2)), rel=2e-4)  # nats/image -> bits/dim
    assert picture_size(workdir / "results.png")[0] > 0
    assert picture_size(workdir / "samples.png") == (130 + 8 * 29 + 1, 29 + 1 + 4)  # label column, one grid

    run = workdir / "pixelcnn"
    cold = tmp_path / "cold.png"
    printed_out, _ = main(capfd, "sample", run, "--num", "8", "--temperature", "0.5", "--out", cold)
    assert printed_out.strip().endswith(f"wrote {cold}")
    cold_grid = np.asarray(Image.open(cold))
    warm_grid = np.asarray(Image.open(run / "samples.png"))  # the study's own: 8 samples, seed 0, temperature 1
    assert cold_grid.shape == warm_grid.shape == (29 + 1, 8 * 29 + 1)
    assert set(np.unique(cold_grid)) == {0, 128, 255}  # binary pixels and grey gutters
    # the same seed and weights: only the temperature differs, and it sharpens p < 1/2 towards 0
    cold_on, warm_on = (np.mean(g[1:29, 1:] == 255) for g in (cold_grid, warm_grid))
    assert cold_on < warm_on, (cold_on, warm_on)


# --- data sources: TFDS and ImageNet32 ---------------------------------------------------------------------------


def test_train_from_a_tfds_dataset(tmp_path, capfd):
    """README "TFDS": ``--set data.source=tfds:NAME --set data.path=DATA_DIR`` reads a dataset prepared in
    array_record format (here a real one, built by TFDS into DATA_DIR: tests/test_tfds.py) without
    TensorFlow; ``val`` is its ``test`` split when it has no ``validation`` split."""
    from test_tfds import TEST, build_datasets

    data_dir = build_datasets(tmp_path / "tfds")
    out, _ = main(capfd, "train", "lenet_modern_mnist", *SMOKE, "--set", "data.source=tfds:jaxconv_test_digits/8x6",
                  "--set", f"data.path={data_dir}", "--set", "data.image_size=32", "--set", "model.num_classes=5",
                  "--set", "data.batch_size=4", "--set", "train.steps=2", "--workdir", tmp_path / "run")
    table = metrics_table(out)
    assert table["count"] == TEST and 0 <= table["accuracy"] <= 1  # all 7 test images, once
    assert any((data_dir / "jaxconv_cache").rglob("manifest.json"))  # decoded once into DATA_DIR/jaxconv_cache/


def test_train_from_prepared_imagenet32(tmp_path, capfd):
    """README "ImageNet32/64": the official npz files (tests/test_imagenet32.py writes them in the real
    format) prepared once (``jaxconv data prepare``: tests/test_imagenet32.py runs it through the command
    line), then ``jaxconv train alexnet_imagenet32`` from the prepared directory."""
    from jaxconv.data import imagenet
    from test_imagenet32 import VAL_COUNT, write_official

    data = tmp_path / "imagenet32"
    imagenet.prepare("imagenet32", write_official(tmp_path / "Imagenet32_npz"), data, progress=False)
    out, _ = main(capfd, "train", "alexnet_imagenet32", *SMOKE, "--set", "data.source=imagenet32",
                  "--set", f"data.path={data}", "--set", "train.steps=2", "--workdir", tmp_path / "run")
    table = metrics_table(out)
    assert table["count"] == VAL_COUNT  # the 5 images of val_data.npz
    assert abs(table["loss"] - np.log(1000)) < 1  # 1000 classes, 2 steps from random weights
    assert 0 <= table["accuracy"] <= table["top5_accuracy"] <= 1


# --- benchmarks ------------------------------------------------------------------------------------------------


def test_bench_sample_and_train_then_report_into_a_readme(tmp_path, capfd):
    """``jaxconv bench sample`` and ``bench train`` at --quick sizes with one preset each (tests/test_bench.py
    runs ``bench conv`` through the command line and ``bench all --quick`` through the library), then
    ``jaxconv bench report DIR --readme FILE`` on what they wrote."""
    results = tmp_path / "results"
    main(capfd, "bench", "sample", "--quick", "--presets", "pixelcnn_mnist", "--batch-sizes", "1", "--no-plots",
         "--out", results)
    (row,) = json.loads((results / "sample.json").read_text())["rows"]
    assert row["preset"].startswith("pixelcnn_mnist") and row["batch"] == 1 and row["agree"] is True
    main(capfd, "bench", "train", "--quick", "--presets", "lenet5_modern", "--devices", "1", "--no-torch",
         "--no-plots", "--out", results)
    (row,) = json.loads((results / "train.json").read_text())["rows"]
    assert row["preset"].startswith("lenet5_modern") and row["devices"] == 1
    assert abs(row["final_loss"] - np.log(10)) < 0.5  # 10 classes, a few steps from random weights

    readme = tmp_path / "README.md"
    readme.write_text("# title\n\n<!-- bench:begin -->\nOLD TABLE\n<!-- bench:end -->\n\nafter\n")
    out, err = main(capfd, "bench", "report", results, "--readme", readme, "--no-plots")
    assert f"updated {readme}" in err
    content = readme.read_text()
    assert content == f"# title\n\n<!-- bench:begin -->\n{out.strip()}\n<!-- bench:end -->\n\nafter\n"
    assert "Sampling, cached vs naive" in out and "Training (" in out and "OLD TABLE" not in content
