"""Properties that plausible one-line bugs break (tools/mutate.py plants them): evaluation is the same
for every eval batch size (padding masked), best-N checkpoints keep the best and ``eval`` picks it,
and the sampling temperature divides the log-probabilities.

Models here are tiny and get numpy-filled parameters (``jax.eval_shape`` of the real init), so no
test compiles a model's init or trains.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv import cli, experiments, sampling
from jaxconv.config import CheckpointConfig, DataConfig, apply_overrides
from jaxconv.preprocess import scale_pixels
from jaxconv.data.sources import Split, load_split
from jaxconv.models import build_model
from jaxconv.models.heads import sample_variable, to_images, to_values, variable_log_prob, variable_params
from jaxconv.models.pixelcnn import GatedPixelCNNConfig, PixelCNNConfig, build
from jaxconv.train import loop
from jaxconv.train.checkpoint import Checkpoints

EVAL_BATCHES = (1000, 300, 7)  # 1000: one batch, no padding; 300: 200 padded copies; 7: one padded copy
# evaluation (float32 sums) against the per-example float64 reference: measured at most 1.7e-7 relative
EVAL_RTOL = 1e-6


def fake_state(run, seed=0):
    """A TrainState of ``run``'s shapes: weights ~ N(0, 1/fan_in), biases and optimiser state zero."""
    rng = np.random.default_rng(seed)

    def fill(leaf):
        if jnp.issubdtype(leaf.dtype, jnp.floating) and leaf.ndim >= 2:
            fan_in = int(np.prod(leaf.shape[:-1]))
            return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(fan_in), leaf.dtype)
        return jnp.zeros(leaf.shape, leaf.dtype)

    return jax.tree.map(fill, jax.eval_shape(run.init))


def lenet_config(*overrides):
    return apply_overrides(experiments.load("lenet_modern_mnist", smoke=True), ["parallel.num_devices=1", *overrides])


# --- evaluation: padding is masked out of every sum ----------------------------------------------------


def gaps_ok(sorted_logits, depth=8, gap=1e-3):
    """The top ``depth`` logits are apart by more than float rounding: ranks are the same in any batch."""
    return np.all(sorted_logits[:, :depth - 1] - sorted_logits[:, 1:depth] > gap, axis=1)


@pytest.fixture(scope="module")
def classification():
    """LeNet with random weights, and 1000 MNIST images labelled so that 501 are right at top-1 and
    751 at top-5: the last one, which the padding repeats, is right."""
    runs = {n: loop.build_run(lenet_config(f"data.eval_batch_size={n}")) for n in EVAL_BATCHES}
    run = runs[1000]
    params = fake_state(run, seed=1).params
    images = np.concatenate([run.val_data.images, run.train_data.images])
    model = build_model(run.config.model)
    logits = np.asarray(jax.jit(model.apply)({"params": params}, jnp.asarray(images, jnp.float32) / 255.0),
                        np.float64)  # [N, 10]
    order = np.argsort(-logits, axis=1)
    keep = gaps_ok(np.take_along_axis(logits, order, axis=1))
    images, logits, order = images[keep][:1000], logits[keep][:1000], order[keep][:1000]
    assert len(images) == 1000
    rank = np.array([0, 4, 0, 8])[np.arange(1000) % 4]  # right, 5th (top-5, not top-4), right, wrong
    rank[-1] = 0
    labels = order[np.arange(1000), rank].astype(np.int32)
    log_p = logits - logits.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    expected = {"loss": -log_p[np.arange(1000), labels].mean(), "accuracy": np.mean(rank == 0),
                "top5_accuracy": np.mean(rank < 5)}
    assert expected["accuracy"] == 0.501 and expected["top5_accuracy"] == 0.751
    return runs, params, Split(images, labels, 10), expected


@pytest.mark.parametrize("eval_batch", EVAL_BATCHES)
def test_classification_eval_is_the_per_example_mean_for_any_batch_size(classification, eval_batch):
    runs, params, data, expected = classification
    assert runs[eval_batch].par.eval_batch_size == eval_batch
    got = loop.evaluate(runs[eval_batch], params, data)
    assert got["count"] == 1000
    assert got["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-6)  # one example moves it 1e-3
    assert got["top5_accuracy"] == pytest.approx(expected["top5_accuracy"], abs=1e-6)
    assert got["loss"] == pytest.approx(expected["loss"], rel=EVAL_RTOL)


@pytest.fixture(scope="module")
def density():
    """A tiny PixelCNN (bernoulli) with random weights and biases, its runs for each eval batch size,
    and each validation image's NLL from one whole-split forward pass and numpy."""
    runs = {n: loop.build_run(apply_overrides(experiments.load("pixelcnn_mnist", smoke=True), [
        "parallel.num_devices=1", "model.hidden=4", "model.num_blocks=1", "model.output_features=4",
        f"data.eval_batch_size={n}"])) for n in EVAL_BATCHES}
    run = runs[1000]
    rng = np.random.default_rng(2)
    params = jax.tree.map(lambda p: p + jnp.asarray(rng.normal(size=p.shape) * 0.3, p.dtype) if p.ndim == 1 else p,
                          fake_state(run, seed=2).params)
    data = run.val_data
    x = jnp.asarray(data.images > 127, jnp.float32)
    logit = np.asarray(jax.jit(build_model(run.config.model).apply)({"params": params}, x), np.float64)[..., 0]
    sign = np.where(data.images[..., 0] > 127, 1.0, -1.0)
    nats = np.logaddexp(0.0, -sign * logit).sum(axis=(1, 2))  # -log sigmoid(+-logit), [N]
    return runs, params, data, nats


@pytest.mark.parametrize("eval_batch", EVAL_BATCHES)
def test_density_eval_is_the_per_example_mean_for_any_batch_size(density, eval_batch):
    runs, params, data, nats = density
    got = loop.evaluate(runs[eval_batch], params, data)
    dims = 28 * 28
    assert got["count"] == 1000
    assert abs(nats[-1] - nats.mean()) > 1.0  # padding with the last image would move the mean
    assert got["nll_nats"] == pytest.approx(nats.mean(), rel=EVAL_RTOL)
    assert got["loss"] == pytest.approx(nats.mean() / dims, rel=EVAL_RTOL)
    assert got["bits_per_dim"] == pytest.approx(nats.mean() / (dims * math.log(2)), rel=EVAL_RTOL)


def test_binarisation_is_pixel_above_127_in_the_pipeline_and_the_density_heads():
    pixels = np.arange(256, dtype=np.uint8)
    above = pixels > 127
    np.testing.assert_array_equal(scale_pixels(jnp.asarray(pixels), "binary"), above)
    bernoulli = PixelCNNConfig(head="bernoulli")
    np.testing.assert_array_equal(to_values(bernoulli, pixels), above)
    np.testing.assert_array_equal(to_images(bernoulli, to_values(bernoulli, pixels)), above * 255)
    softmax = PixelCNNConfig(head="softmax")
    np.testing.assert_array_equal(to_images(softmax, to_values(softmax, pixels)), pixels)


def test_synthetic_splits_share_no_image_and_are_fixed_by_the_seed():
    config = DataConfig(source="synthetic", image_shape=(4, 4, 1), num_examples=64)
    train, val = load_split(config, "train"), load_split(config, "val")
    assert len(train) == 64 and len(val) == 16
    flat = lambda split: {bytes(image) for image in split.images.reshape(len(split), -1)}
    assert not flat(train) & flat(val)  # no validation image is a training image
    np.testing.assert_array_equal(load_split(config, "val").images, val.images)
    assert not np.array_equal(load_split(dataclasses.replace(config, seed=1), "val").images, val.images)


# --- checkpoints: best-N keeps the best, eval picks it ----------------------------------------------------

# step -> validation metric; the best (step 20) is neither the first, the last nor the latest
HISTORY = {"max": {10: 0.5, 20: 0.9, 30: 0.3, 40: 0.4}, "min": {10: 5.0, 20: 1.0, 30: 7.0, 40: 6.0}}


@pytest.mark.parametrize("mode", ["max", "min"])
def test_best_checkpoint_that_is_not_the_latest_survives_keep_latest_1(tmp_path, mode):
    metric = "accuracy" if mode == "max" else "nll_nats"
    config = CheckpointConfig(keep_latest=1, keep_best=1, best_metric=metric, best_mode=mode)
    ckpt = Checkpoints(tmp_path, config)
    for step, value in HISTORY[mode].items():
        ckpt.save(step, {"w": np.full(3, step, np.float32)}, {metric: value, "other": -value})
        ckpt.wait()
    assert ckpt.manager.all_steps() == [20, 40]
    assert ckpt.best_step() == 20 and ckpt.latest_step() == 40
    ckpt.close()
    again = Checkpoints(tmp_path, config, read_only=True)  # as `jaxconv eval` opens it
    assert again.best_step() == 20
    np.testing.assert_array_equal(again.restore(20, {"w": np.zeros(3, np.float32)})["w"], 20)
    again.close()


def test_eval_restores_the_best_checkpoint_by_default(tmp_path, classification, capsys):
    """A workdir whose steps 10..40 hold different weights: ``evaluate_workdir`` and ``jaxconv eval``
    without --checkpoint evaluate step 20 (the best), ``latest`` step 40."""
    runs, _, _, _ = classification
    config = lenet_config("data.eval_batch_size=1000", "checkpoint.keep_latest=1")
    loop.config_lib.save(config, tmp_path / "config.json")
    ckpt = Checkpoints(tmp_path / "checkpoints", config.checkpoint)
    states = {step: fake_state(runs[1000], seed=step) for step in HISTORY["max"]}
    for step in (10, 30, 40):  # larger weights: other losses than step 20's
        states[step] = states[step].replace(params=jax.tree.map(lambda p: 2 * p, states[step].params))
    for step, accuracy in HISTORY["max"].items():
        ckpt.save(step, states[step].replace(step=jnp.int32(step)), {"accuracy": accuracy, "loss": 1.0})
    ckpt.wait()
    ckpt.close()
    step, metrics = loop.evaluate_workdir(tmp_path)
    assert step == 20
    assert metrics == loop.evaluate(runs[1000], states[20].params)
    assert loop.evaluate_workdir(tmp_path, "latest")[0] == 40
    assert cli.main(["eval", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "checkpoint 20 (best)" in out and f"{metrics['loss']:.6g}" in out, out
    assert loop.evaluate(runs[1000], states[40].params)["loss"] != pytest.approx(metrics["loss"], rel=1e-4)


# --- sampling temperature ---------------------------------------------------------------------------------

DRAWS = 20_000


def five_sigma(counts, p, n):
    """Every value's count within 5 binomial standard deviations (+1 for rare values) of n * p."""
    bound = 5 * np.sqrt(n * p * (1 - p)) + 1
    assert np.all(np.abs(counts - n * p) <= bound), np.stack([counts, n * p, bound])


def tempered(log_p, temperature):
    z = np.asarray(log_p, np.float64) / temperature
    z = np.exp(z - z.max())
    return z / z.sum()


draw = jax.jit(sample_variable, static_argnums=(0, 3, 6))  # (config, raw, pixel, channel, key, temperature, method)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_sample_variable_draws_from_p_to_the_power_1_over_t(temperature):
    """The draw every sampler shares, for the three heads: frequencies of many draws from fixed
    parameters match softmax(log p / T)."""
    key = jax.random.key(11)
    # softmax: a 256-way distribution with five likely values and a tail
    log_p = np.full(256, -9.0)
    log_p[[0, 7, 100, 200, 255]] = np.log([0.4, 0.25, 0.15, 0.1, 0.05])
    softmax = PixelCNNConfig(channels=1, head="softmax")
    raw = jnp.broadcast_to(jnp.asarray(log_p, jnp.float32), (DRAWS, 256))
    drawn = draw(softmax, raw, jnp.zeros((DRAWS, 1)), 0, key, temperature)
    five_sigma(np.bincount(np.asarray(drawn), minlength=256), tempered(log_p, temperature), DRAWS)
    # bernoulli: logit 1.5, p(1) = sigmoid(1.5)
    bernoulli = PixelCNNConfig(channels=1, head="bernoulli")
    drawn = draw(bernoulli, jnp.full((DRAWS, 1), 1.5), jnp.zeros((DRAWS, 1)), 0, key, temperature)
    log_p = -np.logaddexp(0.0, [1.5, -1.5])  # log(1 - sigmoid(1.5)), log sigmoid(1.5)
    five_sigma(np.bincount(np.asarray(drawn), minlength=2), tempered(log_p, temperature), DRAWS)
    # logistic mixture, green channel of RGB (its means depend on the pixel's red value): log p from the
    # head's own likelihood, which tests/test_pixelcnn.py checks sums to one
    mixture = GatedPixelCNNConfig(channels=3, head="logistic_mixture", mixtures=2)
    raw = jnp.asarray(np.r_[[0.3, -0.2], [-0.5, 0.6, 0.1, -0.3, 0.8, 0.0], [-3.0, -2.5, -3.5, -2.0, -4.0, -3.0],
                            [0.5, -0.4, 0.2, 0.1, 0.3, -0.6]], jnp.float32)
    pixel = jnp.asarray([0.2, 0.0, 0.0])
    drawn = draw(mixture, jnp.broadcast_to(raw, (DRAWS, raw.size)), jnp.broadcast_to(pixel, (DRAWS, 3)), 1, key,
                 temperature)
    params = variable_params(mixture, raw[None], pixel[None])[0, 1]  # [Q] of the green channel
    log_p = np.asarray(variable_log_prob(mixture, params, jnp.arange(256)), np.float64)
    five_sigma(np.bincount(np.asarray(drawn), minlength=256), tempered(log_p, temperature), DRAWS)
    if temperature == 1.0:  # the mixture's own method there: a component, then a value of it
        drawn = draw(mixture, jnp.broadcast_to(raw, (DRAWS, raw.size)), jnp.broadcast_to(pixel, (DRAWS, 3)), 1, key,
                     temperature, "component")
        five_sigma(np.bincount(np.asarray(drawn), minlength=256), tempered(log_p, temperature), DRAWS)


def test_cached_sampler_first_pixel_follows_the_tempered_bias():
    """With zero biases except the output layer's, a PixelCNN's first pixel sees nothing (mask A,
    zero padding) and its logits are exactly that bias: the cached sampler's first pixels, over many
    images, are distributed as softmax(bias / T)."""
    config = PixelCNNConfig(channels=1, head="softmax", hidden=4, num_blocks=1, output_features=4)
    model = build(config)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 3, 3, 1))))["params"]
    rng = np.random.default_rng(3)
    params = jax.tree.map(lambda s: jnp.zeros(s.shape) if s.ndim == 1 else
                          jnp.asarray(rng.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:-1])), jnp.float32), shapes)
    bias = np.full(256, -6.0)
    bias[[3, 128, 250]] = [0.0, -0.5, -1.5]
    params["head"]["logits"]["bias"] = jnp.asarray(bias, jnp.float32)
    n = 4000
    for temperature in (0.5, 1.0, 2.0):
        images = sampling.sample_cached(model, params, jax.random.key(4), (n, 2, 2, 1), temperature=temperature)
        first = np.asarray(images[:, 0, 0, 0])
        five_sigma(np.bincount(first, minlength=256), tempered(bias, temperature), n)
