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


def _unviews(parts: list[jax.Array], shape: tuple[int, ...], window: int, stride: int) -> jax.Array:
    """The transpose of ``_views``: the sum of the views' parts, each put back at its input positions.

    Why grouped by phase: input row s*a + r is read by the windows' rows i = r, r + s, ... (at output row
    a - i // s), so each of the s*s phases (r, q) is a sum of a few parts shifted by whole rows and
    columns, and the phases are interleaved at the end. A part padded back to the whole input (zeros
    between its strided positions) costs a whole-input pass each: 9 for AlexNet's 3x3/2 pool instead
    of 2.25 here."""
    b, h, w, c = shape
    _, ho, wo, _ = parts[0].shape
    hp, wp = -(-h // stride), -(-w // stride)  # a phase's rows and columns
    phase_rows = []
    for r in range(stride):
        phases = []
        for q in range(stride):
            total = jnp.zeros((b, hp, wp, c), parts[0].dtype)
            for i in range(r, window, stride):
                for j in range(q, window, stride):
                    di, dj = i // stride, j // stride
                    total = total + lax.pad(parts[i * window + j], jnp.zeros((), total.dtype),
                                            ((0, 0, 0), (di, hp - di - ho, 0), (dj, wp - dj - wo, 0), (0, 0, 0)))
            phases.append(total)
        phase_rows.append(jnp.stack(phases, axis=3))  # [B, hp, wp, q, C]
    grid = jnp.stack(phase_rows, axis=2)  # [B, hp, r, wp, q, C]: input row a*s + r, column b*s + q
    return grid.reshape(b, hp * stride, wp * stride, c)[:, :h, :w]


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
    parts, taken = [], jnp.zeros(out.shape, bool)
    for view in _views(x, window, stride):
        first = (view == out) & ~taken  # this window's first maximum
        taken = taken | first
        parts.append(jnp.where(first, g, 0))
    return (materialize(_unviews(parts, x.shape, window, stride)),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def sum_pool(x: jax.Array, window: int, stride: int) -> jax.Array:
    return materialize(functools.reduce(jnp.add, _views(materialize(x), window, stride)))
