"""The Gated PixelCNN cached sampler's inner steps in C++ on the CPU (``cpu_gated_sampler.cc``, XLA FFI
handlers), float32: a position's horizontal stack and head, one call instead of some ten XLA ops per layer;
a vertical layer's row (its dot, ring update, gate, the link into the horizontal stack's pending buffer,
the next dot's column taps), one call instead of a dot, some eight memory-bound ops, a small dot and the
pending buffer's transpose and pad.

Built on first use (``jaxconv.native_build``). Where it cannot be built, ``reason()`` says why and the
sampler computes the stacks with XLA's ops (one warning per process).
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv import native_build

SOURCE = Path(__file__).with_suffix(".cc")
WRITE = "jaxconv_gated_position_write"
READ = "jaxconv_gated_position_read"
VERTICAL = "jaxconv_gated_vertical_row"


@functools.cache
def reason() -> str:
    """Empty when the handlers are built and registered with XLA; otherwise why they are not."""
    handlers = {WRITE: "JaxconvGatedPositionWrite", READ: "JaxconvGatedPositionRead",
                VERTICAL: "JaxconvGatedVerticalRow"}
    return native_build.register(SOURCE, handlers, "the native Gated PixelCNN sampler kernels")


def position(j: jax.Array, x_row: jax.Array, pending: jax.Array, weights: dict, dilations: tuple[int, ...],
             write: bool) -> tuple[jax.Array, jax.Array]:
    """Position ``j``'s head output [B, P] float32 and the pending buffer, with this position's taps added
    into the later columns' slots when ``write`` (updated in place), else as given.

    ``x_row`` [W + r, B, C]: the row's scaled inputs, r zero columns on the left; ``pending`` [W + reach, L,
    B, 2F]; ``weights`` as ``stack_weights`` gives them. RuntimeError where the handlers cannot be built."""
    if reason():
        raise RuntimeError(f"the native Gated PixelCNN sampler kernels are unavailable: {reason()}")
    b, p = x_row.shape[1], weights["b2"].shape[0]
    args = (jnp.asarray(j, jnp.int32), x_row, pending, *(weights[k] for k in _ORDER))
    raw_shape = jax.ShapeDtypeStruct((b, p), jnp.float32)
    attrs = {"dilations": np.asarray(dilations, np.int64)}
    if not write:
        return jax.ffi.ffi_call(READ, raw_shape, vmap_method="sequential")(*args, **attrs), pending
    out = (raw_shape, jax.ShapeDtypeStruct(pending.shape, jnp.float32))
    return tuple(jax.ffi.ffi_call(WRITE, out, vmap_method="sequential", input_output_aliases={2: 1})(*args, **attrs))


def vertical_row(i: jax.Array, x: jax.Array, weights: jax.Array, ring: jax.Array, bias: jax.Array, cond: jax.Array,
                 link: jax.Array, row_bias: jax.Array, pending: jax.Array, layer: int, dilation: int,
                 next_dilation: int | None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Row ``i`` of vertical layer ``layer`` from its dot's input ``x`` [B, W, K] and ``weights`` [K, (r+1)*2F]
    -> (its ring [d*r+1, B, W, 2F], updated in place; the horizontal stack's pending buffer [W + reach, L, B,
    2F], updated in place with this layer's slots as the row starts: the link [2F, 2F] of the layer's output
    before its gate, plus ``row_bias`` [2F] and the class bias, zero past the row; the next layer's dot input
    [B, W, (2r+1)*F], the gated output at each of its column taps, or [B, W, 0] when ``next_dilation`` is
    None). ``cond`` [B, 2F]: the class bias. RuntimeError where the handlers cannot be built."""
    if reason():
        raise RuntimeError(f"the native Gated PixelCNN sampler kernels are unavailable: {reason()}")
    b, w, f2 = ring.shape[1:]
    taps = 0 if next_dilation is None else 2 * (weights.shape[1] // f2) - 1
    out = (jax.ShapeDtypeStruct(ring.shape, jnp.float32), jax.ShapeDtypeStruct(pending.shape, jnp.float32),
           jax.ShapeDtypeStruct((b, w, taps * f2 // 2), jnp.float32))
    call = jax.ffi.ffi_call(VERTICAL, out, vmap_method="sequential", input_output_aliases={3: 0, 8: 1})
    return tuple(call(jnp.asarray(i, jnp.int32), x, weights, ring, bias, cond, link, row_bias, pending,
                      layer=np.int64(layer), dilation=np.int64(dilation), shift=np.int64(next_dilation or 1)))


_ORDER = ("h_first", "h_first_bias", "h", "res_w", "res_b", "w1", "b1", "w2", "b2")


def stack_weights(wts: dict) -> dict:
    """The handlers' weights from the sampler's matrices (``sampling._gated_weights``), float32: the layers'
    horizontal and residual matrices stacked [L, ...]."""
    (w1, b1), (w2, b2) = wts["head"]
    layers = wts["layers"]
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    return {"h_first": f32(wts["h_first"]), "h_first_bias": f32(wts["h_first_bias"]),
            "h": f32(jnp.stack([lw["h"] for lw in layers])),
            "res_w": f32(jnp.stack([lw["residual"][0] for lw in layers])),
            "res_b": f32(jnp.stack([lw["residual"][1] for lw in layers])),
            "w1": f32(w1), "b1": f32(b1), "w2": f32(w2), "b2": f32(b2)}
