"""Losses and metrics, as per-batch *sums* so that evaluation can add batches of any size.

Every function takes a ``mask`` [B] of 0/1 weights: padded examples (a last partial batch padded
to divide over the devices) contribute nothing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

# The metrics each task logs at every evaluation (its sums, divided by "count"): the names that
# checkpoint.best_metric may take (jaxconv.config.validate), in the order the sums list them.
# Classification: this module's classification_sums; density models (PixelCNN family):
# jaxconv.tasks.Density.
CLASSIFICATION_METRICS = ("loss", "accuracy", "top5_accuracy")
DENSITY_METRICS = ("loss", "nll_nats", "bits_per_dim")


def classification_sums(logits: jnp.ndarray, labels: jnp.ndarray, mask: jnp.ndarray) -> dict[str, jnp.ndarray]:
    """logits [B, K] float, labels [B] int, mask [B] -> summed loss, top-1/top-5 hits and count."""
    logits = logits.astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)  # [B]
    k = min(5, logits.shape[-1])
    _, top_k = jax.lax.top_k(logits, k)  # [B, k]
    hits = top_k == labels[:, None]
    values = (jnp.sum(loss * mask), jnp.sum(hits[:, 0] * mask), jnp.sum(jnp.any(hits, axis=-1) * mask))
    return {**dict(zip(CLASSIFICATION_METRICS, values, strict=True)), "count": jnp.sum(mask)}


def means(sums: dict[str, jnp.ndarray]) -> dict[str, jnp.ndarray]:
    """Divides every summed metric by the example count (and drops the count)."""
    count = jnp.maximum(sums["count"], 1.0)
    return {k: v / count for k, v in sums.items() if k != "count"}


def bits_per_dim(nll_nats: jnp.ndarray, num_dims: int) -> jnp.ndarray:
    """Per-image NLL in nats -> bits per dimension: nats / (H*W*C * ln 2)."""
    return nll_nats / (num_dims * jnp.log(2.0))
