"""Forward + backward time of jaxconv's pooling (strided views) vs ``lax.reduce_window``, on the pool
shapes of LeNet-5 modern (batch 256) and AlexNet-32 (batch 32): the numbers quoted in
``jaxconv/models/pooling.py``.

    python tools/pool_timing.py
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxconv.timing import time_calls
from jaxconv.models.pooling import max_pool

SHAPES = (("LeNet C1 pool", (256, 28, 28, 6), 2, 2), ("LeNet C3 pool", (256, 10, 10, 16), 2, 2),
          ("AlexNet-32 pool 1", (32, 32, 32, 96), 3, 2), ("AlexNet-32 pool 2", (32, 15, 15, 256), 3, 2),
          ("AlexNet-32 pool 3", (32, 7, 7, 256), 3, 2))


def reduce_window_pool(x, window, stride):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, window, window, 1), (1, stride, stride, 1), "VALID")


def main() -> None:
    rng = np.random.default_rng(0)
    for name, shape, window, stride in SHAPES:
        x = jnp.asarray(rng.standard_normal(shape, np.float32))
        times = {}
        for label, pool in (("reduce_window", reduce_window_pool), ("views", max_pool)):
            step = jax.jit(jax.grad(lambda y: jnp.sum(pool(jax.nn.relu(y), window, stride) ** 2)))
            times[label] = time_calls(lambda: step(x), repeats=7, min_time=0.1)["median_s"] * 1e3
        print(f"{name} {shape} {window}x{window}/{stride}: reduce_window {times['reduce_window']:.2f} ms, "
              f"views {times['views']:.2f} ms (forward + backward, median)")


if __name__ == "__main__":
    main()
