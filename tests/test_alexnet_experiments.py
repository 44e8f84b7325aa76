"""data.crop_size, which AlexNet at 224 needs: random windows in training, the central one in evaluation."""

import flax.linen as nn
import jax
import numpy as np
import pytest

import experiments
from jaxconv import config as config_lib
from jaxconv import tasks
from jaxconv.config import Config, DataConfig, ParallelConfig, TrainConfig
from jaxconv.errors import ConfigError
from jaxconv.models import PRESETS
from jaxconv.train import loop


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
    forward, _ = tasks.classification(Identity(), cfg)
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
