"""Random conv geometries, each implementation's value and gradients against a reference that XLA's conv
padding cannot get wrong: the input padded by ``lax.pad`` (negative sides crop), then a VALID conv, its
gradients in forward mode. Prints every disagreement and a count; exit 1 if any.

Each case draws the kernel size (1-5), dilation (1-3), padding per side (-2..3), stride (1-2), channels
(1-19), groups (1-2) and batch (1-4); the loss is sum(sin(conv)). Slower than the suite's fixed cases
(``tests/test_bench.py``), so run by hand after changing an implementation or jaxlib:

    python tools/grad_sweep.py --impls native,xla --cases 60 --seed 11
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv.models import conv as conv_lib
from jaxconv.models.conv_impls import IMPLEMENTATIONS, out_size

DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def reference(x, k, strides, padding, dilation, groups):
    pads = ((0, 0, 0), (*padding[0], 0), (*padding[1], 0), (0, 0, 0))
    return jax.lax.conv_general_dilated(jax.lax.pad(x, 0.0, pads), k, strides, "VALID", rhs_dilation=dilation,
                                        feature_group_count=groups, dimension_numbers=DIMENSIONS)


def draw_case(rng):
    """A geometry whose padded input and output are not empty, or None."""
    kh, kw, dh, dw, sh, sw = (int(v) for v in (*rng.integers(1, 6, 2), *rng.integers(1, 4, 2), *rng.integers(1, 3, 2)))
    h, w, batch = int(rng.integers(1, 20)), int(rng.integers(1, 20)), int(rng.integers(1, 5))
    groups = int(rng.integers(1, 3))
    cin, cout = groups * int(rng.integers(1, 10)), groups * int(rng.integers(1, 10))
    padding = tuple((int(rng.integers(-2, 4)), int(rng.integers(-2, 4))) for _ in range(2))
    if min(h + sum(padding[0]), w + sum(padding[1])) < 1:
        return None
    if min(out_size(h, kh, sh, dh, padding[0]), out_size(w, kw, sw, dw, padding[1])) < 1:
        return None
    return (batch, h, w, cin), (kh, kw, cin // groups, cout), (sh, sw), padding, (dh, dw), groups


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--impls", default=",".join(IMPLEMENTATIONS), help="comma-separated (default: all)")
    parser.add_argument("--cases", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    checked = bad = 0
    while checked < args.cases:
        case = draw_case(rng)
        if case is None:
            continue
        checked += 1
        x_shape, k_shape, strides, padding, dilation, groups = case
        x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
        k = jnp.asarray(rng.standard_normal(k_shape) / np.sqrt(np.prod(k_shape[:3])), jnp.float32)
        want_loss = lambda x, k: jnp.sum(jnp.sin(reference(x, k, strides, padding, dilation, groups)))  # noqa: E731
        want = jax.jacfwd(want_loss, argnums=(0, 1))(x, k)
        for impl in args.impls.split(","):
            loss = lambda x, k: jnp.sum(jnp.sin(conv_lib.conv(x, k, strides, padding, dilation, groups, impl=impl)))
            got = (loss(x, k), *jax.jit(jax.grad(loss, argnums=(0, 1)))(x, k))
            for name, a, b in zip(("value", "input grad", "kernel grad"), got, (want_loss(x, k), *want)):
                error = float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))
                if not error <= 1e-4:
                    bad += 1
                    print(f"DISAGREE {impl} {name}: x {x_shape} kernel {k_shape} strides {strides} padding {padding} "
                          f"dilation {dilation} groups {groups}: relative error {error:.3g}", flush=True)
    print(f"{checked} geometries x {len(args.impls.split(','))} implementations: {bad} disagreements")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
