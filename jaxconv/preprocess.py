"""Device-side preprocessing: uint8 batches -> model inputs, inside the jitted steps.

Batches stay uint8 until they reach the device (4x fewer bytes moved); the task of a model family
(``jaxconv.tasks``) turns them into its model's input with these pure functions.

Pixels: ``scale_pixels`` ("unit": x / 255; "binary": pixel > ``BINARY_THRESHOLD``; "uint8": the raw
integers). Augmentation: pure functions of (images, key); the key comes from the train step
(``fold_in(train rng, step)``), so the augmentation of every example is a pure function of
(train.seed, step, position in the global batch): a resumed run augments exactly as an uninterrupted
one. Shapes: [B, H, W, C], any float dtype.

Order in :class:`jaxconv.tasks.Classification`: scale to [0, 1] -> subtract the mean image (train
and eval) -> elastic distortion, rotation and scale, crop, flip (train only; evaluation takes the
central ``crop_size`` window when ``data.crop_size`` is set). Warping and cropping therefore fill with 0
*after* mean subtraction, i.e. with the mean colour, the neutral input (no black frame that exists in
no real image).

Distortions of handwriting (Simard et al. 2003, "Best practices for convolutional neural networks
applied to visual document analysis"), both bilinear: ``random_rotate_scale`` turns each image by a
random angle in [-D, D] degrees and zooms it by a random factor in [1 - S, 1 + S] about its centre (an
affine distortion); ``random_elastic`` moves every pixel along a smooth random displacement field (the
paper's elastic distortion: uniform noise in [-1, 1] smoothed by a Gaussian of sigma pixels, times alpha).

Two crops: ``crop_pad`` pads by P and crops back to H x W (shifts of -P..P, the CIFAR recipe);
``crop_size`` crops a smaller S x S window anywhere in the image (AlexNet's 224 x 224 patches of the
256 x 256 images, Krizhevsky et al. 2012, section 4.1). Both can be combined: pad, then crop S x S.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

BINARY_THRESHOLD = 127  # binarised MNIST: pixel > 127 -> 1 (a fixed threshold, not stochastic)
ELASTIC_SIGMA = 4.0  # the smoothing of elastic distortions, in pixels (Simard et al. 2003, for 29x29 digits)


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


def rotate_scale(images: jax.Array, degrees: jax.Array, factors: jax.Array) -> jax.Array:
    """Turns image i by ``degrees[i]`` (counter-clockwise as displayed, rows downwards) and zooms it by
    ``factors[i]`` (> 1 enlarges) about its centre ((H-1)/2, (W-1)/2); bilinear, 0 outside the image.
    [B, H, W, C], [B], [B] -> [B, H, W, C]; angle 0 and factor 1 give the images back exactly."""
    _, h, w, _ = images.shape
    centre_y, centre_x = (h - 1) / 2.0, (w - 1) / 2.0
    ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) - centre_y, jnp.arange(w, dtype=jnp.float32) - centre_x,
                          indexing="ij")  # [H, W] output offsets from the centre

    def warp(image: jax.Array, angle: jax.Array, factor: jax.Array) -> jax.Array:
        # Each output pixel reads the input at the inverse map: rotate back by -angle, divide by the zoom.
        cos, sin = jnp.cos(angle) / factor, jnp.sin(angle) / factor
        src_y = centre_y + cos * ys + sin * xs  # [H, W]
        src_x = centre_x - sin * ys + cos * xs
        return _bilinear(image, src_y, src_x)

    radians = jnp.asarray(degrees, jnp.float32) * (jnp.pi / 180.0)
    out = jax.vmap(warp)(images.astype(jnp.float32), radians, jnp.asarray(factors, jnp.float32))
    return out.astype(images.dtype)  # [B, H, W, C]


def _bilinear(image: jax.Array, y: jax.Array, x: jax.Array) -> jax.Array:
    """image [H, W, C] read at the real coordinates y, x [H', W'] -> [H', W', C]; 0 outside."""
    h, w, _ = image.shape
    y0, x0 = jnp.floor(y), jnp.floor(x)
    out = jnp.zeros((*y.shape, image.shape[-1]), image.dtype)
    for yi in (y0, y0 + 1):
        for xi in (x0, x0 + 1):
            weight = (1.0 - jnp.abs(y - yi)) * (1.0 - jnp.abs(x - xi))  # [H', W']
            inside = (yi >= 0) & (yi <= h - 1) & (xi >= 0) & (xi <= w - 1)
            pixel = image[jnp.clip(yi, 0, h - 1).astype(jnp.int32), jnp.clip(xi, 0, w - 1).astype(jnp.int32)]
            out = out + jnp.where(inside, weight, 0.0)[..., None] * pixel  # [H', W', C]
    return out


def random_rotate_scale(images: jax.Array, key: jax.Array, degrees: float = 0.0, scale: float = 0.0) -> jax.Array:
    """Turns each image by a random angle, uniform in [-degrees, degrees], and zooms it by a random
    factor, uniform in [1 - scale, 1 + scale] (``rotate_scale``); the identity when both are 0."""
    if degrees == 0 and scale == 0:
        return images
    key_angle, key_scale = jax.random.split(key)
    b = images.shape[0]
    angles = jax.random.uniform(key_angle, (b,), jnp.float32, -degrees, degrees)  # [B]
    factors = jax.random.uniform(key_scale, (b,), jnp.float32, 1.0 - scale, 1.0 + scale)  # [B]
    return rotate_scale(images, angles, factors)


def gaussian_blur(field: jax.Array, sigma: float) -> jax.Array:
    """Each channel of [B, H, W, C] convolved with a Gaussian of ``sigma`` pixels (separable; 0 outside;
    the kernel sums to 1 over the whole plane, so a constant field keeps its value away from the edges)."""
    _, h, w, _ = field.shape

    def matrix(n: int) -> jax.Array:  # [n, n]: row i holds the kernel centred on i
        offsets = jnp.arange(n, dtype=jnp.float32)[:, None] - jnp.arange(n, dtype=jnp.float32)[None, :]
        return jnp.exp(-0.5 * (offsets / sigma) ** 2) / (sigma * jnp.sqrt(2.0 * jnp.pi))

    return jnp.einsum("ij,bjkc,lk->bilc", matrix(h), field, matrix(w))


def random_elastic(images: jax.Array, key: jax.Array, alpha: float = 0.0, sigma: float = ELASTIC_SIGMA) -> jax.Array:
    """Simard et al. 2003's elastic distortion: a displacement field, uniform in [-1, 1] per pixel and
    direction, smoothed by a Gaussian of ``sigma`` pixels and scaled by ``alpha``; each output pixel
    reads the image at its displaced position (bilinear, 0 outside). The identity when alpha is 0."""
    if alpha == 0:
        return images
    b, h, w, _ = images.shape
    noise = jax.random.uniform(key, (b, h, w, 2), jnp.float32, -1.0, 1.0)  # [B, H, W, (dy, dx)]
    field = alpha * gaussian_blur(noise, sigma)
    ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
    out = jax.vmap(_bilinear)(images.astype(jnp.float32), ys + field[..., 0], xs + field[..., 1])
    return out.astype(images.dtype)  # [B, H, W, C]


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
            crop_size: int = 0, rotate: float = 0.0, scale: float = 0.0, elastic: float = 0.0) -> jax.Array:
    """Elastic distortion of strength ``elastic`` (``random_elastic``), then random rotation by up to
    ``rotate`` degrees and zoom by up to ``scale`` (``random_rotate_scale``), then random crop (padding
    ``crop_pad``, window ``crop_size`` or H x W), then random horizontal flip; the identity when all are
    off. Each has a key of its own: turning one on leaves the others' draws as they were."""
    key_crop, key_flip = jax.random.split(key)
    if elastic:
        images = random_elastic(images, jax.random.fold_in(key, 3), elastic)
    if rotate or scale:
        images = random_rotate_scale(images, jax.random.fold_in(key, 2), rotate, scale)
    images = random_crop(images, key_crop, crop_pad, crop_size)
    return random_flip(images, key_flip) if flip else images


def subtract_mean(x: jax.Array, mean: jax.Array) -> jax.Array:
    """x [B, H, W, C] minus the mean image [H, W, C] (same scale as x)."""
    return x - mean.astype(x.dtype)
