import json
import random
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import experiments
from conftest import run_cli, start_cli
from jaxconv import cli
from jaxconv.config import CheckpointConfig, apply_overrides
from jaxconv.errors import NonFiniteError
from jaxconv.train import loop
from jaxconv.train.checkpoint import Checkpoints
from jaxconv.train.metrics import read_metrics

# One device: these tests are about the loop, and 8 fake devices on 2 cores only slow them down.
SMOKE = ["--smoke", "--set", "parallel.num_devices=1", "--set", "train.log_every=1", "--set", "data.batch_size=32", "--set", "train.eval_every=0"]


def smoke(*overrides: str):
    return apply_overrides(experiments.load("lenet_modern_mnist", smoke=True), ["parallel.num_devices=1", *overrides])


def final_params(workdir):
    cfg = loop.config_lib.load(workdir / "config.json")
    run = loop.build_run(cfg)
    ckpt = Checkpoints(workdir / "checkpoints", cfg.checkpoint, read_only=True)
    return jax.device_get(ckpt.restore(ckpt.latest_step(), run.init()))


def test_modern_lenet_reaches_95_percent_on_embedded_mnist(tmp_path):
    cfg = smoke("train.steps=400", "train.eval_every=0", "train.log_every=100", "data.batch_size=64",
                "optim.learning_rate=0.003", "schedule.warmup_steps=20", "checkpoint.every=0")
    result = loop.train(cfg, tmp_path)
    assert result["val"]["count"] == 1000
    assert result["val"]["accuracy"] >= 0.95, result["val"]


def test_no_recompilation_after_the_first_step(tmp_path, monkeypatch):
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, *_, **__: compiles.append(event) if event == "/jax/core/compile/backend_compile_duration" else None)
    run = loop.build_run(smoke())
    state = run.par.place_state(run.init())
    batches = loop.train_batches(run.train_data, 32, 0, 0)
    state, _ = run.train_step(state, run.par.put_batch(next(batches)))
    compiles.clear()
    for _ in range(5):
        state, metrics = run.train_step(state, run.par.put_batch(next(batches)))
    jax.block_until_ready(metrics)
    assert compiles == []


def test_nonfinite_gradients_stop_the_run_and_keep_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    real = loop.make_train_step

    def poisoned(*args, **kwargs):
        step = real(*args, **kwargs)

        def wrapped(state, batch):
            new, metrics = step(state, batch)
            bad = state.step >= 13
            metrics["grad_norm"] = jnp.where(bad, jnp.nan, metrics["grad_norm"])
            return new.replace(params=jax.tree.map(lambda p: jnp.where(bad, jnp.nan, p), new.params)), metrics

        return wrapped

    monkeypatch.setattr(loop, "make_train_step", poisoned)
    workdir = tmp_path / "run"
    code = cli.main(["train", "lenet_modern_mnist", "--smoke", "--workdir", str(workdir), "--set", "train.log_every=4",
                     "--set", "parallel.num_devices=1",
                     "--set", "checkpoint.every=5"])
    err = capsys.readouterr().err.strip()
    assert code == NonFiniteError.exit_code
    assert err == "jaxconv: error: non-finite grad_norm (nan) at step 14; stopped; last good checkpoint: step 10"
    params = final_params(workdir).params
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_skip_mode_skips_nonfinite_updates(tmp_path):
    cfg = smoke("train.nonfinite=skip", "optim.learning_rate=1e30", "optim.name=sgd", "train.steps=6",
                "train.eval_every=0", "checkpoint.every=0")
    result = loop.train(cfg, tmp_path)
    assert result["train"]["skipped"] > 0


def test_checkpoint_from_8_devices_restores_onto_1_and_continues(tmp_path):
    loop.train(smoke("train.steps=10", "parallel.num_devices=8", "data.batch_size=32"), tmp_path)
    result = loop.train(smoke("train.steps=20", "parallel.num_devices=1", "data.batch_size=32"), tmp_path)
    assert result["step"] == 20
    steps = [r["step"] for r in read_metrics(tmp_path) if r["split"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == 20
    pmap = loop.train(smoke("train.steps=25", "parallel.mode=pmap", "parallel.num_devices=4", "data.batch_size=32"),
                      tmp_path)
    assert pmap["step"] == 25


def _wait_for_step(workdir, step, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        path = workdir / "metrics.jsonl"
        if path.exists():
            lines = [json.loads(l) for l in path.read_text().splitlines() if l.endswith("}")]
            if lines and lines[-1]["step"] >= step:
                return
        time.sleep(0.005)
    raise TimeoutError(step)


def test_killed_runs_resume_bit_for_bit(tmp_path):
    args = ["train", "lenet_modern_mnist", *SMOKE, "--set", "train.steps=60", "--set", "checkpoint.every=7"]
    assert run_cli(*args, "--workdir", str(tmp_path / "ref")).returncode == 0
    rng = random.Random(0)
    for kill_at in sorted(rng.sample(range(5, 55), 3)):
        proc = start_cli(*args, "--workdir", str(tmp_path / "killed"))
        _wait_for_step(tmp_path / "killed", kill_at, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = run_cli(*args, "--workdir", str(tmp_path / "killed"))
    assert done.returncode == 0, done.stderr
    ref, resumed = final_params(tmp_path / "ref"), final_params(tmp_path / "killed")
    assert int(ref.step) == int(resumed.step) == 60
    jax.tree.map(np.testing.assert_array_equal, ref, resumed)
    untimed = lambda records: [{k: v for k, v in r.items() if k != "images_per_sec"} for r in records]
    assert untimed(read_metrics(tmp_path / "killed")) == untimed(read_metrics(tmp_path / "ref"))


def test_sigterm_saves_a_checkpoint_and_exits_0(tmp_path):
    proc = start_cli("train", "lenet_modern_mnist", *SMOKE, "--set", "train.steps=100000",
                     "--set", "checkpoint.every=0", "--workdir", str(tmp_path))
    _wait_for_step(tmp_path, 12, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    saved = Checkpoints(tmp_path / "checkpoints", CheckpointConfig(), read_only=True).latest_step()
    last_logged = max(r["step"] for r in read_metrics(tmp_path))
    assert saved is not None and saved >= 12 and saved >= last_logged


def test_bfloat16_compute_trains_with_float32_master_weights(tmp_path):
    result = loop.train(smoke("train.dtype=bfloat16", "train.steps=10", "checkpoint.every=0"), tmp_path)
    assert np.isfinite(result["train"]["loss"]) and result["val"]["accuracy"] > 0.2
    state = final_params(tmp_path)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))


def test_gated_pixelcnn_smoke_run_beats_the_uniform_baseline(tmp_path):
    """Binary pixels: a uniform model costs 1 bit/dim (0.69 nats/pixel); 40 steps get far below it."""
    cfg = apply_overrides(experiments.load("gated_pixelcnn_mnist", smoke=True),
                          ["parallel.num_devices=1", "train.steps=40", "optim.learning_rate=0.01", "train.eval_every=0", "checkpoint.every=0"])
    val = loop.train(cfg, tmp_path)["val"]
    assert val["count"] == 1000
    assert val["bits_per_dim"] < 0.3, val
    np.testing.assert_allclose(val["nll_nats"], val["bits_per_dim"] * 784 * np.log(2), rtol=1e-4)


def test_gated_pixelcnn_8bit_mnist_smoke_run_beats_the_uniform_baseline(tmp_path):
    """256-way softmax on raw pixels: a uniform model costs 8 bits/dim; 20 steps halve it."""
    cfg = apply_overrides(experiments.load("gated_pixelcnn_mnist8", smoke=True),
                          ["parallel.num_devices=1", "optim.learning_rate=0.01", "train.eval_every=0", "checkpoint.every=0"])
    val = loop.train(cfg, tmp_path)["val"]
    assert val["count"] == 1000 and val["bits_per_dim"] < 4.0, val


@pytest.mark.parametrize("name", ["gated_pixelcnn_cifar10", "gated_pixelcnn_imagenet32"])
def test_colour_pixelcnn_experiments_smoke_on_synthetic_images(tmp_path, name):
    """Uniform random pixels cannot be compressed: a sane model sits near 8 bits/dim."""
    val = loop.train(apply_overrides(experiments.load(name, smoke=True), ["parallel.num_devices=2"]), tmp_path)["val"]
    assert val["count"] == 64 and 7.5 < val["bits_per_dim"] < 9.5, val
