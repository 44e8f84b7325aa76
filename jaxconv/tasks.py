"""What a model family is trained to do: one task object per family.

A task owns what "a batch" means to its models: the device-side preprocessing from the uint8 batch to
the model's input (``jaxconv.preprocess``), the forward pass, the metric sums and their names, and
``validate``, every check that needs the data, run once before anything is written or compiled
(the config's own checks are ``jaxconv.config.validate``).

- ``Classification`` (LeNet, AlexNet): cross-entropy, top-1 and top-5 accuracy.
- ``Density`` (the PixelCNN family): the loss is the NLL in nats per dimension; it also logs
  nats/image and bits/dim.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxconv import losses, preprocess
from jaxconv.errors import ConfigError
from jaxconv.models import heads, pixelcnn

if TYPE_CHECKING:  # the config imports this module (its checks ask the tasks): no import back at run time
    from jaxconv.config import Config, DataConfig

AUGMENT_STREAM = 1  # fold_in tag: the augmentation key is independent of the dropout key
AUGMENT_KEYS = ("augment_crop_pad", "augment_flip", "augment_rotate", "augment_scale", "augment_elastic")
TRAIN_INPUT_KEYS = (*AUGMENT_KEYS, "crop_size")  # DataConfig keys that preprocess.augment reads
CLASSIFICATION_DATA_KEYS = (*AUGMENT_KEYS, "subtract_mean", "crop_size")  # keys only a classifier may set


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """What a task checks the config against: the data as loaded."""

    image_shape: tuple[int, int, int]  # [H, W, C]
    num_classes: int
    train_examples: int


def check_crop_size(data: DataConfig, image_hw: tuple[int, ...]) -> None:
    """ConfigError unless the data.crop_size window fits in images of height and width ``image_hw``."""
    h, w = image_hw
    if data.crop_size > min(h, w):
        raise ConfigError(f"data.crop_size={data.crop_size} exceeds the {h}x{w} images of data.source="
                          f"{data.source}; use at most {min(h, w)}")


class Task:
    """(params, batch, rng, train) -> outputs, and (outputs, batch) -> metric sums (``losses``)."""

    metric_names: ClassVar[tuple[str, ...]]

    def __init__(self, model: nn.Module, config: Config):
        self.model, self.config = model, config

    def validate(self, data: DataSpec) -> None:
        """ConfigError when the config cannot run on ``data``."""
        cfg = self.config
        if data.train_examples < cfg.data.batch_size:
            raise ConfigError(f"data.batch_size={cfg.data.batch_size} exceeds the {data.train_examples} training "
                              f"examples")
        num_classes = getattr(cfg.model, "num_classes", None)
        if num_classes and num_classes != data.num_classes:
            raise ConfigError(f"model.num_classes={num_classes} but the data has {data.num_classes} classes")
        if cfg.data.source != "synthetic":  # describes synthetic data; for another source it must agree with it
            for key, found in (("image_shape", tuple(data.image_shape)), ("num_classes", data.num_classes)):
                value = getattr(cfg.data, key)
                if value != getattr(type(cfg.data)(), key) and value != found:
                    show = lambda v: ",".join(map(str, v)) if isinstance(v, tuple) else v  # noqa: E731
                    raise ConfigError(f"data.{key}={show(value)} applies to data.source=synthetic only; the "
                                      f"{cfg.data.source} data has {show(found)} (remove the setting)")
        channels = getattr(cfg.model, "channels", data.image_shape[-1])
        if channels != data.image_shape[-1]:
            raise ConfigError(f"model.channels={channels} but the data has {data.image_shape[-1]} channels")

    def inputs(self, images: jax.Array, rng: jax.Array, train: bool) -> jax.Array:
        """uint8 images [B, H, W, C] -> the model's input."""
        raise NotImplementedError

    def model_kwargs(self, batch: dict[str, jax.Array]) -> dict[str, Any]:
        """The model's arguments from ``batch`` besides its input images: none here."""
        return {}

    def forward(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array, train: bool) -> Any:
        raise NotImplementedError

    def sums(self, outputs: Any, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        raise NotImplementedError


class Classification(Task):
    metric_names = losses.CLASSIFICATION_METRICS

    def __init__(self, model: nn.Module, config: Config, mean: np.ndarray | None = None):
        """``mean``: the train split's mean image [H, W, C] in pixel units, needed when data.subtract_mean."""
        super().__init__(model, config)
        if config.data.subtract_mean and mean is None:
            raise ValueError("data.subtract_mean needs the train split's mean image")
        self.mean = jnp.asarray(np.asarray(mean, np.float32) / 255.0) if config.data.subtract_mean else None

    def validate(self, data: DataSpec) -> None:
        super().validate(data)
        check_input = getattr(self.config.model, "check_input_shape", None)
        if check_input is not None:
            check_input(data.image_shape)
        if self.config.data.crop_size:
            check_crop_size(self.config.data, data.image_shape[:2])

    def inputs(self, images: jax.Array, rng: jax.Array, train: bool) -> jax.Array:
        data = self.config.data
        x = preprocess.scale_pixels(images, data.pixels, jnp.dtype(self.config.train.dtype))  # [B, H, W, C]
        if self.mean is not None:
            x = preprocess.subtract_mean(x, self.mean)
        if train and any(getattr(data, key) for key in TRAIN_INPUT_KEYS):
            return preprocess.augment(x, jax.random.fold_in(rng, AUGMENT_STREAM), crop_pad=data.augment_crop_pad,
                                      flip=data.augment_flip, crop_size=data.crop_size, rotate=data.augment_rotate,
                                      scale=data.augment_scale, elastic=data.augment_elastic)  # crop_size: [B, S, S, C]
        if data.crop_size:
            return preprocess.center_crop(x, data.crop_size)  # [B, S, S, C]
        return x

    def forward(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array, train: bool) -> jax.Array:
        x = self.inputs(batch["images"], rng, train)
        return self.model.apply({"params": params}, x, train=train, rngs={"dropout": rng})  # [B, classes]

    def sums(self, logits: jax.Array, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        return losses.classification_sums(logits, batch["labels"], batch["mask"])


class Density(Task):
    """Autoregressive likelihood of the image's variables (``jaxconv.models.pixelcnn``)."""

    metric_names = losses.DENSITY_METRICS

    def validate(self, data: DataSpec) -> None:
        super().validate(data)
        cfg = self.config
        if any(getattr(cfg.data, key) for key in CLASSIFICATION_DATA_KEYS):
            *rest, last = (f"data.{key}" for key in CLASSIFICATION_DATA_KEYS)
            raise ConfigError(f"{', '.join(rest)} and {last} apply to classification models only")
        # The head decides the variables' values; data.pixels may say so, and must not say otherwise.
        values = "binary" if cfg.model.head == "bernoulli" else "uint8"
        if cfg.data.pixels not in ("unit", values):
            raise ConfigError(f"data.pixels={cfg.data.pixels} does not fit model.head={cfg.model.head}, whose "
                              f"variables are {values} pixels: use data.pixels={values}")

    def inputs(self, images: jax.Array, rng: jax.Array, train: bool) -> jax.Array:
        mcfg = self.config.model
        return heads.scale_values(mcfg, heads.to_values(mcfg, images), jnp.dtype(self.config.train.dtype))

    def model_kwargs(self, batch: dict[str, jax.Array]) -> dict[str, Any]:
        """The labels of a class-conditional model (None for one without classes)."""
        return {"labels": batch["labels"] if self.config.model.num_classes else None}

    def forward(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array, train: bool) -> jax.Array:
        return self.model.apply({"params": params}, self.inputs(batch["images"], rng, train),
                                **self.model_kwargs(batch), train=train, rngs={"dropout": rng})  # [B, H, W, P]

    def sums(self, raw: jax.Array, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        nats = heads.nll(self.config.model, raw, batch["images"])  # [B]
        dims = int(np.prod(batch["images"].shape[1:]))
        mask = batch["mask"]
        values = (jnp.sum(nats / dims * mask), jnp.sum(nats * mask), jnp.sum(losses.bits_per_dim(nats, dims) * mask))
        return {**dict(zip(self.metric_names, values, strict=True)), "count": jnp.sum(mask)}


def task_class(model_config: Any) -> type[Task]:
    """The task of a model family's config."""
    return Density if isinstance(model_config, pixelcnn.AUTOREGRESSIVE_CONFIGS) else Classification


def task_for(model: nn.Module, config: Config, mean: np.ndarray | None = None) -> Task:
    """The task of the run's model; ``mean``: the train mean image (data.subtract_mean)."""
    cls = task_class(config.model)
    return cls(model, config, mean) if cls is Classification else cls(model, config)
