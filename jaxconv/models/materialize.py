"""``materialize``: a value computed once into its own buffer, a fusion boundary for XLA:CPU.

Why: XLA:CPU fuses a cheap elementwise producer (a bias add and ReLU, a pooling's maxima, a ``taps``
conv of one input channel, which is multiplies and adds) into every consumer that reads it, even
when the consumer reads each element many times. The views of an im2col or taps conv read every
input element T = kh * kw times and a pool's windows k * k times, so the producer ran T or k * k
times: LeNet-5 modern's C1 + pool, fused into C3's 25 im2col views, cost 25 recomputations, 146 ms
instead of 5 ms per batch of 256 (``python tools/profile_step.py lenet5_modern --batch 256`` shows
the fused ops). ``lax.optimization_barrier`` does not stop this on CPU (it is expanded before
fusion); a conditional is never fused into, so the value goes through a ``lax.cond`` whose branches
both return it. Its predicate reads the middle element, which XLA cannot fold to a constant (a
corner could be padding, a known zero, and then the conditional would be folded away), and its two
branches must differ in form (``v`` and ``v + 0``), or XLA merges them and drops the conditional.

Only on the CPU backend: a GPU conditional reads its predicate on the host, and GPU fusion does
not duplicate this way. Small values (under ``MIN_ELEMENTS``) are left alone: recomputing them costs
less than the conditional.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

MIN_ELEMENTS = 1 << 14


def materialize(x: jax.Array) -> jax.Array:
    if jax.default_backend() != "cpu" or x.size < MIN_ELEMENTS:
        return x
    middle = x.reshape(-1)[x.size // 2]
    # False only when the middle element is NaN; then v + 0 is x too (but for the sign of a zero).
    return lax.cond(middle == middle, lambda v: v, lambda v: v + jnp.zeros((), v.dtype), x)
