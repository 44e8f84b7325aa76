"""One position of the Gated PixelCNN cached sampler's horizontal stack and head in C++ on the CPU
(``cpu_gated_position.cc``, XLA FFI handlers), float32: one call instead of some ten XLA ops per layer.

Built on first use (``jaxconv.native_build``). Where it cannot be built, ``reason()`` says why and the
sampler computes the stack with XLA's ops (one warning per process).
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


@functools.cache
def reason() -> str:
    """Empty when the handlers are built and registered with XLA; otherwise why they are not."""
    handlers = {WRITE: "JaxconvGatedPositionWrite", READ: "JaxconvGatedPositionRead"}
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
