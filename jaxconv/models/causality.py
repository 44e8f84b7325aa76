"""The lecture's causality test as a tool: which inputs each output variable depends on.

Shapes: H/W/C image; a dependency array ``deps`` is bool [H, W, C, H, W, C]: deps[i, j, c] is the
map of input variables (i', j', c') with a non-zero gradient of variable (i, j, c)'s distribution
parameters (``variable_params``: for the logistic mixture this includes the R->G->B coefficients
applied to the pixel's own values). Order: raster, then R, G, B; variable n = (i * W + j) * C + c.

The gradient is taken at a random input with a random cotangent over each variable's parameters,
so a dependency is missed only on a measure-zero set (or through ReLUs dead at that input).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxconv.models.heads import variable_params


def dependency_maps(model: nn.Module, params: Any, image_shape: tuple[int, int, int], *,
                    labels: jax.Array | None = None, seed: int = 0, num_inputs: int = 8) -> np.ndarray:
    """All output variables' dependency maps at once: bool [H, W, C, H, W, C].

    The union over ``num_inputs`` random inputs: one input can hide a path behind ReLUs that are
    dead there, which would look like a (false) blind spot.
    """
    h, w, c = image_shape
    n = h * w * c

    def outputs(x):
        raw = model.apply({"params": params}, x, labels=labels)
        return variable_params(model.config, raw, x)[0]  # [H, W, C, Q]

    @jax.jit
    def nonzero_grads(key):
        kx, kc = jax.random.split(key)
        x = jax.random.uniform(kx, (1, h, w, c), jnp.float32, -1.0, 1.0)
        out, vjp = jax.vjp(outputs, x)
        weights = jax.random.normal(kc, (n, out.shape[-1]))
        # Cotangent v is zero everywhere except on variable v's parameters.
        cotangents = jnp.eye(n).reshape(n, h, w, c, 1) * weights[:, None, None, None, :]
        return jax.vmap(lambda t: vjp(t)[0][0] != 0)(cotangents)  # [n, H, W, C]

    keys = jax.random.split(jax.random.key(seed), num_inputs)
    seen = np.any([np.asarray(nonzero_grads(k)) for k in keys], axis=0)
    return seen.reshape(h, w, c, h, w, c)


def dependency_map(deps: np.ndarray, i: int, j: int, c: int) -> np.ndarray:
    """Variable (i, j, c)'s map of inputs: bool [H, W, C]."""
    return deps[i, j, c]


def earlier(image_shape: tuple[int, int, int]) -> np.ndarray:
    """bool [H, W, C, H, W, C]: True where the input variable lies strictly before the output one."""
    order = np.arange(int(np.prod(image_shape))).reshape(image_shape)
    return order[:, :, :, None, None, None] > order[None, None, None]


def violations(deps: np.ndarray) -> np.ndarray:
    """[n, 6] indices (i, j, c, i', j', c') of every dependency on a variable not strictly before."""
    return np.argwhere(deps & ~earlier(deps.shape[:3]))


def check_causal(deps: np.ndarray) -> None:
    """Raises AssertionError naming the first violations if any output sees itself or a later input."""
    bad = violations(deps)
    if len(bad):
        raise AssertionError(f"{len(bad)} non-causal dependencies, e.g. output, input: {bad[:5].tolist()}")


def blind_spot(deps: np.ndarray) -> np.ndarray:
    """bool [H, W, C, H, W]: pixels strictly before (i, j) that variable (i, j, c) sees no channel of."""
    h, w, _ = deps.shape[:3]
    order = np.arange(h * w).reshape(h, w)
    before = order[:, :, None, None] > order[None, None]  # [H, W, H, W]
    return before[:, :, None] & ~deps.any(axis=-1)


def render_png(maps: dict[str, np.ndarray], position: tuple[int, int, int], path: str | Path) -> Path:
    """Draws each named model's dependency map of one variable side by side.

    maps: title -> deps [H,W,C,H,W,C]. Colours: seen (dark), blind spot (red), the position
    (yellow), later pixels (white).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    i, j, c = position
    fig, axes = plt.subplots(1, len(maps), figsize=(3.2 * len(maps), 3.4), squeeze=False)
    for ax, (title, deps) in zip(axes[0], maps.items()):
        h, w = deps.shape[:2]
        rgb = np.ones((h, w, 3))
        rgb[deps[i, j, c].any(axis=-1)] = (0.15, 0.25, 0.6)
        rgb[blind_spot(deps)[i, j, c]] = (0.85, 0.2, 0.2)
        rgb[i, j] = (1.0, 0.85, 0.1)
        ax.imshow(rgb, interpolation="nearest")
        ax.set_title(f"{title}\nblind spot: {int(blind_spot(deps)[i, j, c].sum())} px", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
