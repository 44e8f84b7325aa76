"""On-device augmentation: pure functions of (images, key), run inside the jitted train step.

The key comes from the train step (``fold_in(train rng, step)``), so the augmentation of every
example is a pure function of (train.seed, step, position in the global batch): a resumed run
augments exactly as an uninterrupted one. Shapes: [B, H, W, C], any float dtype.

Order in :func:`jaxconv.tasks.classification`: scale to [0, 1] -> subtract the mean image (train
and eval) -> crop and flip (train only). Cropping therefore pads with 0 *after* mean subtraction,
i.e. with the mean colour, the neutral input (no black frame that exists in no real image).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def random_crop(images: jax.Array, key: jax.Array, pad: int) -> jax.Array:
    """Pads each side by ``pad`` zeros and takes a random H x W window per image (shift of -pad..pad)."""
    if pad == 0:
        return images
    b, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))  # [B, H+2P, W+2P, C]
    key_y, key_x = jax.random.split(key)
    dy = jax.random.randint(key_y, (b,), 0, 2 * pad + 1)  # top-left corner in the padded image
    dx = jax.random.randint(key_x, (b,), 0, 2 * pad + 1)
    crop = lambda image, y, x: jax.lax.dynamic_slice(image, (y, x, 0), (h, w, c))  # noqa: E731
    return jax.vmap(crop)(padded, dy, dx)  # [B, H, W, C]


def random_flip(images: jax.Array, key: jax.Array) -> jax.Array:
    """Mirrors each image left-right with probability 1/2."""
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0],))  # [B]
    return jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


def augment(images: jax.Array, key: jax.Array, *, crop_pad: int = 0, flip: bool = False) -> jax.Array:
    """Random crop with padding, then random horizontal flip; the identity when both are off."""
    key_crop, key_flip = jax.random.split(key)
    images = random_crop(images, key_crop, crop_pad)
    return random_flip(images, key_flip) if flip else images


def subtract_mean(x: jax.Array, mean: jax.Array) -> jax.Array:
    """x [B, H, W, C] minus the mean image [H, W, C] (same scale as x)."""
    return x - mean.astype(x.dtype)
