"""Training itself: accuracy, compilation, mixed precision, PixelCNN. Kills, preemption, device-count
changes, NaN/Inf and determinism: test_reliability.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import experiments
from jaxconv.config import apply_overrides
from jaxconv.train import loop
from jaxconv.train.checkpoint import Checkpoints


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
