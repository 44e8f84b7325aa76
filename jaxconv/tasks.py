"""What a model family is trained to do: its forward pass from a batch, and its metric sums.

A task turns (model, config) into the two pure functions the train/eval steps take.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxconv import losses
from jaxconv.config import Config
from jaxconv.data.pipeline import scale_pixels

# Metrics the eval table shows, in order, per task; "higher is better" for best-checkpoint choice.
CLASSIFICATION_METRICS = ("loss", "accuracy", "top5_accuracy")


def classification(model: nn.Module, config: Config):
    pixels, dtype = config.data.pixels, jnp.dtype(config.train.dtype)

    def forward(params: Any, batch: dict[str, jax.Array], rng: jax.Array, train: bool) -> jax.Array:
        x = scale_pixels(batch["images"], pixels, dtype)  # [B, H, W, C]
        return model.apply({"params": params}, x, train=train, rngs={"dropout": rng})  # [B, classes]

    def sums(logits: jax.Array, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        return losses.classification_sums(logits, batch["labels"], batch["mask"])

    return forward, sums
