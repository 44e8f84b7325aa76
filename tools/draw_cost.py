"""What drawing the variables costs, apart from the network: one row's worth of variables (W * C draws from a
random raw output [B, P]) in a jitted loop, by ``heads.sample_variable`` (a threefry loop per draw) and by
the cached sampler's ``_draw_noise`` (the row's random numbers drawn at once, the same values), printed per
variable and per image (times H * W * C variables), by Gumbel-max or (``--draw direct``, a logistic mixture
at temperature 1) directly (``heads.check_draw``).

    python tools/draw_cost.py gated_pixelcnn_cifar --batches 1 16 64 [--temperature 0.9] [--draw direct]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from jaxconv.timing import time_calls
from jaxconv import sampling
from jaxconv.bench.models import preset_image
from jaxconv.models import PRESETS, heads


def best_of(fn, repeats: int = 5) -> float:
    return time_calls(fn, repeats=repeats, min_time=0.0, warmup=0)["min_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("preset")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--draw", choices=heads.DRAWS, default="gumbel")
    args = parser.parse_args()
    config = PRESETS[args.preset]
    h, w, c = preset_image(args.preset)
    per_row = w * c
    temperature = jnp.float32(args.temperature)
    method = heads.check_draw(config, args.draw, args.temperature)
    for b in args.batches:
        raw = jax.random.normal(jax.random.key(0), (per_row, b, config.head_channels))
        pixel = jax.random.uniform(jax.random.key(1), (b, c), minval=-1.0, maxval=1.0)
        key = jax.random.key(2)

        @jax.jit
        def old(raw):
            def body(n, acc):
                drawn = heads.sample_variable(config, raw[n], pixel, n % c, jax.random.fold_in(key, n), temperature,
                                               method)
                return acc + drawn
            return jax.lax.fori_loop(0, per_row, body, jnp.zeros((b,), jnp.int32))

        @jax.jit
        def new(raw):
            noise = sampling._row_noise(config, method, key, 0, b, w, c)  # [W, C, B, N]

            def body(j, acc):
                noise_j = sampling._read(noise, j)
                for ch in range(c):
                    acc = acc + sampling._draw_noise(config, method, raw[j * c + ch], pixel, ch, noise_j[ch],
                                                     temperature)
                return acc
            return jax.lax.fori_loop(0, w, body, jnp.zeros((b,), jnp.int32))

        same = bool(jnp.all(old(raw) == new(raw)))
        t_old, t_new = best_of(lambda: old(raw)), best_of(lambda: new(raw))
        images = h * w * c / b  # variables per image / batch: seconds per variable -> per image
        print(f"{args.preset} ({config.head}, method {method}) batch {b}: sample_variable {t_old / per_row * 1e6:.1f} us per variable "
              f"({t_old / per_row * images * 1e3:.1f} ms per image); cached sampler's draw "
              f"{t_new / per_row * 1e6:.1f} us per variable ({t_new / per_row * images * 1e3:.1f} ms per image); "
              f"same draws: {same}")


if __name__ == "__main__":
    main()
