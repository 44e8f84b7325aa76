"""Device-side preprocessing: uint8 batches -> model inputs, inside the jitted steps.

Batches stay uint8 until they reach the device (4x fewer bytes moved); the task of a model family
(``jaxconv.tasks``) turns them into its model's input with these pure functions.

Pixels: ``scale_pixels`` ("unit": x / 255; "binary": pixel > ``BINARY_THRESHOLD``; "uint8": the raw
integers). Augmentation: pure functions of (images, key); the key comes from the train step
(``fold_in(train rng, step)``), so the augmentation of every example is a pure function of
(train.seed, step, position in the global batch): a resumed run augments exactly as an uninterrupted
one. Shapes: [B, H, W, C], any float dtype.

Order in :class:`jaxconv.tasks.Classification`: scale to [0, 1] -> subtract the mean image (train
and eval) -> crop and flip (train only; evaluation takes the central ``crop_size`` window when
``data.crop_size`` is set). Cropping therefore pads with 0 *after* mean subtraction, i.e. with the
mean colour, the neutral input (no black frame that exists in no real image).

Two crops: ``crop_pad`` pads by P and crops back to H x W (shifts of -P..P, the CIFAR recipe);
``crop_size`` crops a smaller S x S window anywhere in the image (AlexNet's 224 x 224 patches of the
256 x 256 images, Krizhevsky et al. 2012, section 4.1). Both can be combined: pad, then crop S x S.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

BINARY_THRESHOLD = 127  # binarised MNIST: pixel > 127 -> 1 (a fixed threshold, not stochastic)


def binarise(images: jax.Array) -> jax.Array:
    """uint8 images -> booleans, pixel > BINARY_THRESHOLD."""
    return images > BINARY_THRESHOLD


def scale_pixels(images: jax.Array, mode: str, dtype: Any = jnp.float32) -> jax.Array:
    """uint8 images -> classifier inputs by ``data.pixels``: "unit", "binary" or "uint8"."""
    if mode == "unit":
        return images.astype(dtype) / 255.0
    if mode == "binary":
        return binarise(images).astype(dtype)
    if mode == "uint8":
        return images.astype(jnp.int32)
    raise ValueError(f"unknown pixel mode {mode!r}")


def random_crop(images: jax.Array, key: jax.Array, pad: int, size: int = 0) -> jax.Array:
    """Pads each side by ``pad`` zeros and takes a random window per image: H x W (a shift of -pad..pad)
    or, with ``size``, size x size anywhere in the padded image. [B, H, W, C] -> [B, S, S, C]."""
    b, h, w, c = images.shape
    out_h, out_w = (size, size) if size else (h, w)
    if pad == 0 and (out_h, out_w) == (h, w):
        return images
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))  # [B, H+2P, W+2P, C]
    key_y, key_x = jax.random.split(key)
    dy = jax.random.randint(key_y, (b,), 0, h + 2 * pad - out_h + 1)  # top-left corner in the padded image
    dx = jax.random.randint(key_x, (b,), 0, w + 2 * pad - out_w + 1)
    crop = lambda image, y, x: jax.lax.dynamic_slice(image, (y, x, 0), (out_h, out_w, c))  # noqa: E731
    return jax.vmap(crop)(padded, dy, dx)  # [B, out_h, out_w, C]


def center_crop(images: jax.Array, size: int) -> jax.Array:
    """The central size x size window of every image (top-left corner ((H-S)//2, (W-S)//2))."""
    _, h, w, _ = images.shape
    top, left = (h - size) // 2, (w - size) // 2
    return images[:, top:top + size, left:left + size, :]  # [B, S, S, C]


def random_flip(images: jax.Array, key: jax.Array) -> jax.Array:
    """Mirrors each image left-right with probability 1/2."""
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0],))  # [B]
    return jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


def augment(images: jax.Array, key: jax.Array, *, crop_pad: int = 0, flip: bool = False,
            crop_size: int = 0) -> jax.Array:
    """Random crop (padding ``crop_pad``, window ``crop_size`` or H x W), then random horizontal flip;
    the identity when all are off."""
    key_crop, key_flip = jax.random.split(key)
    images = random_crop(images, key_crop, crop_pad, crop_size)
    return random_flip(images, key_flip) if flip else images


def subtract_mean(x: jax.Array, mean: jax.Array) -> jax.Array:
    """x [B, H, W, C] minus the mean image [H, W, C] (same scale as x)."""
    return x - mean.astype(x.dtype)
