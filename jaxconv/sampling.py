"""Ancestral sampling from the PixelCNN family: a naive and a cached sampler that agree exactly.

Shapes: B batch, H/W/C image, V values per variable. Variable n = (i * W + j) * C + c (raster
order, then R, G, B) draws with ``fold_in(key, n)`` through Gumbel-max over its log-probabilities
(``jaxconv.models.heads.sample_variable``), so both samplers, given the same key and logits equal
to float tolerance, return the same images.

- ``sample_naive``: one whole-image forward pass per variable (H*W*C passes) in one jitted loop.
- ``sample_cached``: in the spirit of Ramachandran et al. 2017, computes only what a new variable
  changes. pixelcnn: each layer's output at the current position only, from per-block caches of
  the spatial convs' inputs (every other layer is 1x1). gated_pixelcnn: per row, the vertical stack
  once (it sees only rows above), from per-layer caches of its inputs; per variable, the horizontal
  stack and the output layers at the current position only, from per-layer caches of the current
  row. Either way the work per image is about C whole-image forward passes instead of H*W*C.

Completion: ``images`` [B,H,W,C] uint8 and ``known_rows``: rows < known_rows are kept as given.
``labels`` [B] int for a class-conditional model. ``temperature`` divides the log-probabilities.
Both return uint8 images [B,H,W,C] (bernoulli: 0 or 255).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxconv.models.heads import sample_variable, scale_values, to_images, to_values
from jaxconv.models.pixelcnn import GatedPixelCNN, PixelCNN, layer_dilations


def sample_naive(model: nn.Module, params: Any, key: jax.Array, shape: tuple[int, int, int, int], *,
                 labels: jax.Array | None = None, images: jax.Array | None = None, known_rows: int = 0,
                 temperature: float = 1.0, progress: bool = False) -> jax.Array:
    """One full forward pass per variable; ``shape`` = (B, H, W, C)."""
    _check_call(model.config, shape, labels, temperature)
    values = _initial_values(model.config, shape, images, known_rows)
    out = _naive(model, known_rows, progress, params, key, values, labels, jnp.float32(temperature))
    return to_images(model.config, out)


def sample_cached(model: nn.Module, params: Any, key: jax.Array, shape: tuple[int, int, int, int], *,
                  labels: jax.Array | None = None, images: jax.Array | None = None, known_rows: int = 0,
                  temperature: float = 1.0, progress: bool = False) -> jax.Array:
    """Only the positions a new variable changes; same arguments and result as ``sample_naive``."""
    _check_call(model.config, shape, labels, temperature)
    values = _initial_values(model.config, shape, images, known_rows)
    run = _cached_gated if isinstance(model, GatedPixelCNN) else _cached_pixelcnn
    if not isinstance(model, (GatedPixelCNN, PixelCNN)):
        raise TypeError(f"no cached sampler for {type(model).__name__}")
    out = run(model, known_rows, progress, params, key, values, labels, jnp.float32(temperature))
    return to_images(model.config, out)


def _check_call(config, shape, labels, temperature) -> None:
    """ValueError for labels that do not fit the model and a temperature that is not finite and > 0 in float32
    (NaN would silently draw value 0 everywhere: an all-black image)."""
    if not isinstance(temperature, jax.core.Tracer):
        t = np.asarray(temperature, np.float64)
        with np.errstate(over="ignore", under="ignore"):
            t32 = t.astype(np.float32)
        if t.shape or not (np.isfinite(t32) and t32 > 0):
            raise ValueError(f"temperature must be a finite number > 0 (in float32), got {temperature!r}")
    if not config.num_classes:
        if labels is not None:
            raise ValueError(f"{config.family} model without classes (num_classes=0): call it with labels=None")
        return
    if labels is None:
        raise ValueError(f"class-conditional model (num_classes={config.num_classes}): pass labels [B]")
    if tuple(jnp.shape(labels)) != (shape[0],):
        raise ValueError(f"labels have shape {tuple(jnp.shape(labels))}, expected ({shape[0]},)")
    if not isinstance(labels, jax.core.Tracer):
        values = np.asarray(labels)
        if not np.issubdtype(values.dtype, np.integer):
            raise ValueError(f"labels must be integers in 0..{config.num_classes - 1}, got dtype {values.dtype}")
        if values.size and (values.min() < 0 or values.max() >= config.num_classes):
            raise ValueError(f"labels must be integers in 0..{config.num_classes - 1}, got values from "
                             f"{values.min()} to {values.max()}")


def _initial_values(config, shape, images, known_rows: int) -> jax.Array:
    if images is None:
        if known_rows:
            raise ValueError("known_rows needs the images to complete")
        return jnp.zeros(shape, jnp.int32)
    if tuple(images.shape) != tuple(shape):
        raise ValueError(f"images have shape {tuple(images.shape)}, expected {tuple(shape)}")
    return to_values(config, images)


def _draw(model, key, temperature, values, raw_pos, i, j, c: int, known_rows: int) -> jax.Array:
    """Samples variable (i, j, c) into ``values`` unless its row is given."""
    _, _, w, channels = values.shape
    n = (i * w + j) * channels + c
    pixel = scale_values(model.config, values[:, i, j])  # [B, C]
    drawn = sample_variable(model.config, raw_pos, pixel, c, jax.random.fold_in(key, n), temperature)
    keep = i < known_rows
    return values.at[:, i, j, c].set(jnp.where(keep, values[:, i, j, c], drawn))


def _report(progress: bool, i: jax.Array, height: int) -> None:
    if progress:
        jax.debug.callback(lambda row: print(f"sampled row {int(row) + 1}/{height}", flush=True), i)


def _naive_step(model, params, key, values, labels, temperature, n):
    """Variable n of the naive sampler: one whole-image forward pass, then its draw."""
    _, _, w, channels = values.shape
    i, rest = jnp.divmod(n, w * channels)
    j, c = jnp.divmod(rest, channels)
    raw = model.apply({"params": params}, scale_values(model.config, values), labels=labels)
    raw_pos = jax.lax.dynamic_index_in_dim(jax.lax.dynamic_index_in_dim(raw, i, 1, False), j, 1, False)
    pixel = scale_values(model.config, jax.lax.dynamic_index_in_dim(
        jax.lax.dynamic_index_in_dim(values, i, 1, False), j, 1, False))
    drawn = sample_variable(model.config, raw_pos, pixel, c, jax.random.fold_in(key, n), temperature)
    return values.at[:, i, j, c].set(drawn)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _naive(model, known_rows, progress, params, key, values, labels, temperature):
    _, h, w, channels = values.shape

    def step(n, values):
        return _naive_step(model, params, key, values, labels, temperature, n)

    def row(i, values):
        values = jax.lax.fori_loop(i * w * channels, (i + 1) * w * channels, step, values)
        _report(progress, i, h)
        return values

    return jax.lax.fori_loop(known_rows, h, row, values)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _cached_pixelcnn(model, known_rows, progress, params, key, values, labels, temperature):
    if labels is not None:
        raise ValueError("pixelcnn is unconditional: call it with labels=None")
    config = model.config
    b, h, w, channels = values.shape
    p0 = config.first_kernel // 2
    caches = tuple(jnp.zeros((b, h + 2 * d * (config.kernel // 2), w + 2 * d * (config.kernel // 2), config.hidden),
                             model.dtype) for d in layer_dilations(config))
    pad = lambda v: jnp.pad(scale_values(config, v, model.dtype), ((0, 0), (p0, p0), (p0, p0), (0, 0)))

    def position(n, carry):
        values, caches = carry
        i, j = jnp.divmod(n, w)
        for c in range(channels):
            raw, caches = model.apply({"params": params}, pad(values), caches, i, j, method=PixelCNN.position)
            values = _draw(model, key, temperature, values, raw, i, j, c, known_rows)
        return values, caches

    def row(i, carry):
        carry = jax.lax.fori_loop(i * w, (i + 1) * w, position, carry)
        _report(progress, i, h)
        return carry

    return jax.lax.fori_loop(0, h, row, (values, caches))[0]


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _cached_gated(model, known_rows, progress, params, key, values, labels, temperature):
    config = model.config
    b, h, w, channels = values.shape
    r, f = config.kernel // 2, config.features
    dilations = layer_dilations(config)
    apply = functools.partial(model.apply, {"params": params})
    v_caches = tuple(jnp.zeros((b, h + d * r, w + 2 * d * r, f), model.dtype) for d in dilations)

    def column(j, carry):
        values, h_caches, links, i = carry
        for c in range(channels):
            x_row = scale_values(config, jax.lax.dynamic_slice_in_dim(values, i, 1, axis=1), model.dtype)
            x_row = jnp.pad(x_row, ((0, 0), (0, 0), (r, 0), (0, 0)))  # [B, 1, W+r, C]
            raw, h_caches = apply(x_row, h_caches, links, j, labels, method=GatedPixelCNN.horizontal_position)
            values = _draw(model, key, temperature, values, raw, i, j, c, known_rows)
        return values, h_caches, links, i

    def row(i, carry):
        values, v_caches = carry
        x_pad = jnp.pad(scale_values(config, values, model.dtype), ((0, 0), (r + 1, 0), (r, r), (0, 0)))
        v_caches, links = apply(x_pad, v_caches, i, labels, method=GatedPixelCNN.vertical_row)
        h_caches = tuple(jnp.zeros((b, 1, w + d * r, f), model.dtype) for d in dilations)
        # Given rows only feed the vertical stack of the rows below: skip their horizontal stack.
        values = jax.lax.cond(i < known_rows, lambda v: v,
                              lambda v: jax.lax.fori_loop(0, w, column, (v, h_caches, links, i))[0], values)
        _report(progress, i, h)
        return values, v_caches

    return jax.lax.fori_loop(0, h, row, (values, v_caches))[0]
