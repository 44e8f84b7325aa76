"""What a model family is trained to do: its forward pass from a batch, and its metric sums.

A task turns (model, config) into the two pure functions the train/eval steps take.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxconv import losses
from jaxconv.config import Config
from jaxconv.data import augment
from jaxconv.data.pipeline import scale_pixels
from jaxconv.errors import ConfigError
from jaxconv.models import pixelcnn

AUGMENT_STREAM = 1  # fold_in tag: the augmentation key is independent of the dropout key


def classification(model: nn.Module, config: Config, mean: np.ndarray | None = None):
    """``mean``: the train split's mean image [H, W, C] in pixel units, needed when data.subtract_mean."""
    data, dtype = config.data, jnp.dtype(config.train.dtype)
    augmenting = data.augment_crop_pad > 0 or data.augment_flip or data.crop_size > 0
    if data.subtract_mean and mean is None:
        raise ValueError("data.subtract_mean needs the train split's mean image")
    mean_x = jnp.asarray(np.asarray(mean, np.float32) / 255.0) if data.subtract_mean else None  # [H, W, C]

    def forward(params: Any, batch: dict[str, jax.Array], rng: jax.Array, train: bool) -> jax.Array:
        x = scale_pixels(batch["images"], data.pixels, dtype)  # [B, H, W, C]
        if mean_x is not None:
            x = augment.subtract_mean(x, mean_x)
        if train and augmenting:
            x = augment.augment(x, jax.random.fold_in(rng, AUGMENT_STREAM), crop_pad=data.augment_crop_pad,
                                flip=data.augment_flip, crop_size=data.crop_size)  # [B, S, S, C] with crop_size
        elif data.crop_size:
            x = augment.center_crop(x, data.crop_size)  # [B, S, S, C]
        return model.apply({"params": params}, x, train=train, rngs={"dropout": rng})  # [B, classes]

    def sums(logits: jax.Array, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        return losses.classification_sums(logits, batch["labels"], batch["mask"])

    return forward, sums


def density(model: nn.Module, config: Config):
    """Autoregressive likelihood: loss is the NLL in nats per dimension; logs nats/image and bits/dim."""
    mcfg, dtype = config.model, jnp.dtype(config.train.dtype)
    if config.data.augment_crop_pad or config.data.augment_flip or config.data.subtract_mean or config.data.crop_size:
        raise ConfigError("data.augment_crop_pad, data.augment_flip, data.subtract_mean and data.crop_size apply to "
                          "classification models only")

    def forward(params: Any, batch: dict[str, jax.Array], rng: jax.Array, train: bool) -> jax.Array:
        x = pixelcnn.scale_values(mcfg, pixelcnn.to_values(mcfg, batch["images"]), dtype)  # [B, H, W, C]
        labels = batch["labels"] if mcfg.num_classes else None
        return model.apply({"params": params}, x, labels=labels, train=train, rngs={"dropout": rng})  # [B, H, W, P]

    def sums(raw: jax.Array, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        nats = pixelcnn.nll(mcfg, raw, batch["images"])  # [B]
        dims = int(np.prod(batch["images"].shape[1:]))
        mask = batch["mask"]
        values = (jnp.sum(nats / dims * mask), jnp.sum(nats * mask), jnp.sum(losses.bits_per_dim(nats, dims) * mask))
        return {**dict(zip(losses.DENSITY_METRICS, values, strict=True)), "count": jnp.sum(mask)}

    return forward, sums


def for_model(model: nn.Module, config: Config, mean: np.ndarray | None = None):
    """(forward, sums) for the model family's task; ``mean``: the train mean image (data.subtract_mean)."""
    if isinstance(config.model, pixelcnn.AUTOREGRESSIVE_CONFIGS):
        return density(model, config)
    return classification(model, config, mean)
