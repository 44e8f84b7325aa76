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
from jaxconv.data.pipeline import scale_pixels
from jaxconv.models import pixelcnn

def classification(model: nn.Module, config: Config):
    pixels, dtype = config.data.pixels, jnp.dtype(config.train.dtype)

    def forward(params: Any, batch: dict[str, jax.Array], rng: jax.Array, train: bool) -> jax.Array:
        x = scale_pixels(batch["images"], pixels, dtype)  # [B, H, W, C]
        return model.apply({"params": params}, x, train=train, rngs={"dropout": rng})  # [B, classes]

    def sums(logits: jax.Array, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        return losses.classification_sums(logits, batch["labels"], batch["mask"])

    return forward, sums


def density(model: nn.Module, config: Config):
    """Autoregressive likelihood: loss is the NLL in nats per dimension; logs nats/image and bits/dim."""
    mcfg, dtype = config.model, jnp.dtype(config.train.dtype)

    def forward(params: Any, batch: dict[str, jax.Array], rng: jax.Array, train: bool) -> jax.Array:
        x = pixelcnn.scale_values(mcfg, pixelcnn.to_values(mcfg, batch["images"]), dtype)  # [B, H, W, C]
        labels = batch["labels"] if mcfg.num_classes else None
        return model.apply({"params": params}, x, labels=labels, train=train, rngs={"dropout": rng})  # [B, H, W, P]

    def sums(raw: jax.Array, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        nats = pixelcnn.nll(mcfg, raw, batch["images"])  # [B]
        dims = int(np.prod(batch["images"].shape[1:]))
        mask = batch["mask"]
        return {
            "loss": jnp.sum(nats / dims * mask),
            "nll_nats": jnp.sum(nats * mask),
            "bits_per_dim": jnp.sum(losses.bits_per_dim(nats, dims) * mask),
            "count": jnp.sum(mask),
        }

    return forward, sums


def for_model(model: nn.Module, config: Config):
    """(forward, sums) for the model family's task."""
    if isinstance(config.model, pixelcnn.AUTOREGRESSIVE_CONFIGS):
        return density(model, config)
    return classification(model, config)
