"""Max and sum pooling ('VALID', square windows) as elementwise maxima / sums of strided views.

Why not ``flax.linen.max_pool``: it is ``lax.reduce_window``, whose gradient on XLA:CPU is a
select-and-scatter loop that costs more than the convolutions around it (``python tools/pool_timing.py``).
The views form is k*k strided slices combined elementwise, which XLA fuses, and whose gradient is
elementwise too. The gradient follows ``reduce_window``'s exactly: where inputs of a window tie for
its maximum, the first in raster order takes the whole gradient.

Input and output are materialised (``jaxconv.models.materialize``): otherwise XLA fuses an elementwise
producer (a ReLU after a ``taps`` conv) into each of the k*k views, and the pool into each view of the
next conv, computing them k*k or T times.

x [B, H, W, C] -> [B, (H - k) // s + 1, (W - k) // s + 1, C].
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from jaxconv.models.materialize import materialize


def _views(x: jax.Array, window: int, stride: int) -> list[jax.Array]:
    b, h, w, c = x.shape
    ho, wo = (h - window) // stride + 1, (w - window) // stride + 1
    return [lax.slice(x, (0, i, j, 0), (b, i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, c),
                      (1, stride, stride, 1)) for i in range(window) for j in range(window)]


def _unview(part: jax.Array, index: int, shape: tuple[int, ...], window: int, stride: int) -> jax.Array:
    """The transpose of view ``index``: ``part`` put back at its input positions, zeros elsewhere."""
    i, j = divmod(index, window)
    _, h, w, _ = shape
    _, ho, wo, _ = part.shape
    config = ((0, 0, 0), (i, h - i - stride * (ho - 1) - 1, stride - 1),
              (j, w - j - stride * (wo - 1) - 1, stride - 1), (0, 0, 0))
    return lax.pad(part, jnp.zeros((), part.dtype), config)


def max_pool(x: jax.Array, window: int, stride: int) -> jax.Array:
    return _max_pool(materialize(x), window, stride)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_pool(x: jax.Array, window: int, stride: int) -> jax.Array:
    """``x``: materialised, so that the backward pass reads it instead of recomputing its producer."""
    return materialize(functools.reduce(jnp.maximum, _views(x, window, stride)))


def _max_pool_fwd(x, window, stride):
    out = _max_pool(x, window, stride)
    return out, (x, out)


def _max_pool_bwd(window, stride, residuals, g):
    x, out = residuals
    grad, taken = jnp.zeros_like(x), jnp.zeros(out.shape, bool)
    for index, view in enumerate(_views(x, window, stride)):
        first = (view == out) & ~taken  # this window's first maximum
        taken = taken | first
        grad = grad + _unview(jnp.where(first, g, 0), index, x.shape, window, stride)
    return (materialize(grad),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def sum_pool(x: jax.Array, window: int, stride: int) -> jax.Array:
    return materialize(functools.reduce(jnp.add, _views(materialize(x), window, stride)))
