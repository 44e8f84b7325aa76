"""The AlexNet experiments (alexnet_imagenet32, alexnet_imagenet) and data.crop_size, which the 224 one needs.

The smoke runs use the rbg PRNG (``jax.default_prng_impl``): the same programs, with a generator that
XLA:CPU compiles in a fraction of threefry's time (AlexNet's init and dropout otherwise dominate).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv import config as config_lib
from jaxconv import experiments, tasks
from jaxconv.config import Config, DataConfig, ParallelConfig, TrainConfig
from jaxconv.errors import ConfigError
from jaxconv.models import PRESETS, build_model
from jaxconv.train import loop
from jaxconv.train.state import make_schedule


def smoke(name: str, *overrides: str) -> Config:
    return config_lib.apply_overrides(experiments.load(name, smoke=True), ["parallel.num_devices=1", *overrides])


class Identity(nn.Module):
    """A parameter-free 'model' that returns its input: shows what the classification task feeds a model."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        return x


def task_inputs(crop_size: int, seed: int, step: int, train: bool, images: np.ndarray, **data) -> np.ndarray:
    """The model's input for ``images`` at train step ``step``, back in pixel units."""
    cfg = Config(name="crop_test", model=PRESETS["alexnet32"],
                 data=DataConfig(source="synthetic", image_shape=images.shape[1:], crop_size=crop_size, **data))
    forward = tasks.Classification(Identity(), cfg).forward
    rng = jax.random.fold_in(jax.random.key(seed), step)  # as the train step derives it
    return np.rint(np.asarray(forward({}, {"images": images}, rng, train)) * 255).astype(int)


def test_crop_size_takes_random_windows_in_training_and_the_centre_in_evaluation():
    yx = 16 * np.arange(12)[:, None] + np.arange(12)[None, :]  # pixel (y, x) holds 16 y + x
    images = np.broadcast_to(yx[None, :, :, None], (64, 12, 12, 1)).astype(np.uint8)
    crops = task_inputs(8, seed=0, step=3, train=True, images=images)
    assert crops.shape == (64, 8, 8, 1)
    dy, dx = crops[:, 0, 0, 0] // 16, crops[:, 0, 0, 0] % 16  # each crop's top-left corner
    for crop, y, x in zip(crops, dy, dx):
        np.testing.assert_array_equal(crop[..., 0], yx[y:y + 8, x:x + 8])  # a true 8x8 window
    assert set(dy) == set(dx) == set(range(5))  # every offset 0..12-8 occurs over 64 images
    np.testing.assert_array_equal(task_inputs(8, seed=0, step=3, train=True, images=images), crops)  # (seed, step)
    assert (task_inputs(8, seed=0, step=4, train=True, images=images) != crops).any()  # the next step differs
    assert (task_inputs(8, seed=1, step=3, train=True, images=images) != crops).any()  # another seed differs
    centre = task_inputs(8, seed=0, step=3, train=False, images=images)
    np.testing.assert_array_equal(centre, np.broadcast_to(yx[2:10, 2:10, None], (64, 8, 8, 1)))
    flipped = task_inputs(8, seed=0, step=3, train=True, images=images, augment_flip=True)
    x_step = flipped[:, 0, 1, 0] - flipped[:, 0, 0, 0]  # +1 left to right, -1 when mirrored
    assert set(x_step) == {1, -1}
    assert (task_inputs(12, seed=0, step=3, train=False, images=images)[..., 0] == yx).all()  # full size: as is


@pytest.mark.parametrize("data, overrides, message", [
    (DataConfig(source="synthetic", image_shape=(32, 32, 3)), ["data.crop_size=33"],
     "data.crop_size=33 exceeds the 32x32 images of data.source=synthetic; use at most 32"),
    (DataConfig(source="tfds:imagenet2012"), ["data.crop_size=224", "data.image_size=200"],
     "data.crop_size=224 exceeds the 200x200 images of data.source=tfds:imagenet2012; use at most 200"),
    (DataConfig(), ["data.crop_size=-1"], "data.crop_size must be >= 0, got -1"),
])
def test_bad_crop_sizes_are_config_errors(data, overrides, message):
    with pytest.raises(ConfigError) as info:
        config_lib.apply_overrides(Config(name="crop_test", model=PRESETS["alexnet"], data=data), overrides)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_crop_size_larger_than_the_stored_images_fails_at_build_time():
    """Prepared and tfds data have their size on disk: build_run checks it before compiling anything."""
    cfg = Config(name="crop_test", model=PRESETS["lenet5_modern"], data=DataConfig(source="mnist", crop_size=29),
                 train=TrainConfig(progress=False), parallel=ParallelConfig(num_devices=1))
    config_lib.validate(cfg)
    with pytest.raises(ConfigError, match="data.crop_size=29 exceeds the 28x28 images of data.source=mnist; use at "):
        loop.build_run(cfg)
    with pytest.raises(ConfigError, match="data.crop_size apply to classification models only"):
        loop.build_run(smoke("pixelcnn_mnist", "data.crop_size=20"))


# ----------------------------------------------------------------------------------------------
# The experiments


@pytest.mark.parametrize("name", ["alexnet_imagenet32", "alexnet_imagenet"])
def test_smoke_runs_train_and_evaluate_with_top1_and_top5(name, tmp_path):
    cfg = smoke(name)
    with jax.default_prng_impl("rbg"):
        result = loop.train(cfg, tmp_path)
        best_step, evaluated = loop.evaluate_workdir(tmp_path, "best")  # what `jaxconv eval WORKDIR` prints
    assert result["step"] == best_step == cfg.train.steps  # one evaluation, at the end: the best checkpoint
    assert result["val"]["count"] == evaluated["count"] == cfg.data.num_examples // 4
    for metrics in (result["train"], result["val"], evaluated):
        assert all(np.isfinite(v) for v in metrics.values()), metrics
        assert 0.0 <= metrics["accuracy"] <= metrics["top5_accuracy"] <= 1.0, metrics
    assert evaluated["loss"] == pytest.approx(result["val"]["loss"], rel=1e-5)


@pytest.mark.parametrize("name, size, steps, boundaries, factor", [
    # 40 epochs of the flip-doubled set (80 passes of 10,009 steps), x0.2 after epochs 10, 20, 30
    ("alexnet_imagenet32", 32, 800_720, (200_180, 400_360, 600_540), 0.2),
    # 90 epochs, /10 at epochs 30, 60 and 80
    ("alexnet_imagenet", 256, 900_810, (300_270, 600_540, 800_720), 0.1),
])
def test_full_configs_follow_the_recipes(name, size, steps, boundaries, factor):
    cfg = experiments.load(name)
    config_lib.validate(cfg)
    assert cfg.model.num_classes == 1000 and cfg.data.batch_size == 128 and cfg.train.steps == steps
    assert (cfg.optim.name, cfg.optim.learning_rate, cfg.optim.momentum, cfg.optim.weight_decay) == (
        "momentum", 0.01, 0.9, 5e-4)
    assert cfg.checkpoint.best_metric == "accuracy" and cfg.checkpoint.best_mode == "max" and cfg.checkpoint.keep_best
    lr = make_schedule(cfg.schedule, cfg.optim.learning_rate, cfg.train.steps)
    rates = [float(lr(s)) for b in boundaries for s in (b - 1, b)]
    np.testing.assert_allclose(rates, [0.01, 0.01 * factor, 0.01 * factor, 0.01 * factor ** 2,
                                       0.01 * factor ** 2, 0.01 * factor ** 3], rtol=1e-5)
    # The full-size forward pass on a batch of stored images, as shapes only (never compiled).
    model = build_model(cfg.model)
    forward = tasks.task_for(model, cfg).forward
    crop = cfg.data.crop_size or size
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, crop, crop, 3))))["params"]
    batch = {"images": jax.ShapeDtypeStruct((2, size, size, 3), jnp.uint8)}
    for train in (True, False):
        logits = jax.eval_shape(lambda p, b: forward(p, b, jax.random.key(0), train), params, batch)
        assert logits.shape == (2, 1000)
