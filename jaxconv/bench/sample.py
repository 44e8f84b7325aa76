"""``jaxconv bench sample``: naive vs cached PixelCNN sampling, images/s per batch size.

Presets: on CPU the MNIST-size ones (``pixelcnn_mnist``, ``gated_pixelcnn_mnist``, 28x28x1) and the
small 32x32x3 one (``gated_pixelcnn_cifar``); on an accelerator also the paper-size ``pixelcnn_cifar``
and ``gated_pixelcnn_imagenet32``. Parameters are a random initialisation (speed does not depend on
them: ``jaxconv.bench.models.random_params``). Batch sizes 1, 16, 64, 256 (on CPU, 1, 16, 64 for the
32x32x3 presets).

- cached: ``jaxconv.sampling.sample_cached`` draws whole images (all H*W*C variables); images/s =
  batch / median time of a full sample.
- naive: one whole-image forward pass per variable, so every variable costs the same; the naive loop
  (``jaxconv.sampling``'s own step) is timed on a fixed number of variables (the last ones of the
  image, ``--naive-variables``) and extrapolated: images/s = batch / (time per variable * H*W*C)
  (``extrapolated: true`` in the result).
- agree: the naive sampler, given the cached sample, redraws those last variables with the same keys;
  it must return the cached sample unchanged.

Target (reported): cached >= 100x naive at batch 64 on CPU for the 28x28 presets.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv import sampling
from jaxconv.bench.models import param_count, preset_image, random_params
from jaxconv.timing import time_calls
from jaxconv.errors import ConfigError
from jaxconv.models import PRESETS, build_model, heads, pixelcnn

CPU_PRESETS = ("pixelcnn_mnist", "gated_pixelcnn_mnist", "gated_pixelcnn_cifar")
ACCELERATOR_PRESETS = CPU_PRESETS + ("pixelcnn_cifar", "gated_pixelcnn_imagenet32")
BATCH_SIZES = (1, 16, 64, 256)
# On CPU the 32x32x3 presets stop at 64: a cached batch of 256 takes minutes (--batch-sizes overrides).
CPU_BATCH_SIZES = {"gated_pixelcnn_cifar": (1, 16, 64), "pixelcnn_cifar": (1, 16, 64)}
TARGET_SPEEDUP = 100.0


def _quick_config(name: str):
    """A tiny version of a preset for --quick (few layers and channels)."""
    config = PRESETS[name]
    if isinstance(config, pixelcnn.PixelCNNConfig):
        return dataclasses.replace(config, hidden=max(4, config.colours), num_blocks=1, output_features=8)
    return dataclasses.replace(config, features=6, num_layers=1, output_features=8)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _naive_variables(model, start: int, count: int, params, key, values, temperature):
    """Variables start .. start+count-1 by the naive sampler's own step."""
    step = lambda n, v: sampling._naive_step(model, params, key, v, None, temperature, n)
    return jax.lax.fori_loop(start, start + count, step, values)


def measure(name: str, batch: int, *, quick: bool, naive_variables: int, repeats: int, seed: int = 0) -> dict:
    config = _quick_config(name) if quick else PRESETS[name]
    h, w, c = (6, 6, preset_image(name)[2]) if quick else preset_image(name)
    model = build_model(config)
    params = random_params(model, (h, w, c), seed)
    key = jax.random.key(seed + 1)
    shape = (batch, h, w, c)
    budget = 2.0 if quick else 60.0
    timing = dict(repeats=repeats, min_time=0.0, warmup=0, budget=budget)

    out = {}

    def cached_call():
        out["images"] = sampling.sample_cached(model, params, key, shape)
        return out["images"]

    cached = time_calls(cached_call, **timing)
    values = heads.to_values(config, out["images"])

    total = h * w * c
    count = min(naive_variables, total)
    start = total - count
    temperature = jnp.float32(1.0)
    def naive_call():
        out["redrawn"] = _naive_variables(model, start, count, params, key, values, temperature)
        return out["redrawn"]

    naive = time_calls(naive_call, **timing)
    agree = bool(np.array_equal(np.asarray(out["redrawn"]), np.asarray(values)))

    per_variable = naive["median_s"] / count
    naive_ips = batch / (per_variable * total)
    cached_ips = batch / cached["median_s"]
    first = lambda t: max(t["first_s"] - t["median_s"], 0.0)
    return {
        "preset": name + (" (quick: tiny)" if quick else ""), "image": [h, w, c],
        "params": param_count(name, config), "batch": batch,
        "naive": {"variables_timed": count, "variables_total": total, "time_per_variable_s": per_variable,
                  "images_per_s": naive_ips, "extrapolated": count < total, "compile_s": first(naive),
                  "runs_s": naive["runs_s"]},
        "cached": {"time_s": cached["median_s"], "images_per_s": cached_ips, "compile_s": first(cached),
                   "runs_s": cached["runs_s"]},
        "speedup": cached_ips / naive_ips, "agree": agree,
    }


def run(*, quick: bool = False, presets: list[str] | None = None, batch_sizes: list[int] | None = None,
        naive_variables: int | None = None, repeats: int | None = None, log: Callable[[str], None] = print) -> dict:
    accelerator = jax.default_backend() != "cpu"
    presets = presets or (["pixelcnn_mnist", "gated_pixelcnn_mnist"] if quick else
                          list(ACCELERATOR_PRESETS if accelerator else CPU_PRESETS))
    for name in presets:
        if not isinstance(PRESETS.get(name), pixelcnn.AUTOREGRESSIVE_CONFIGS):
            names = [n for n, p in PRESETS.items() if isinstance(p, pixelcnn.AUTOREGRESSIVE_CONFIGS)]
            raise ConfigError(f"sample benchmark: {name!r} is not a PixelCNN preset; presets: {', '.join(names)}")
    given = batch_sizes
    naive_variables = naive_variables or (2 if quick else 8)
    repeats = repeats or (1 if quick else 3)
    rows = []
    for name in presets:
        batch_sizes = given or ([2] if quick else list(BATCH_SIZES if accelerator else
                                                    CPU_BATCH_SIZES.get(name, BATCH_SIZES)))
        for batch in batch_sizes:
            start = time.perf_counter()
            row = measure(name, batch, quick=quick, naive_variables=naive_variables, repeats=repeats)
            rows.append(row)
            log(f"{name} batch {batch}: cached {row['cached']['images_per_s']:.3g} img/s, naive "
                f"{row['naive']['images_per_s']:.3g} img/s (extrapolated from {row['naive']['variables_timed']} "
                f"variables), speed-up {row['speedup']:.1f}x, agree {row['agree']} "
                f"({time.perf_counter() - start:.0f} s)")
    targets = []
    if not accelerator:
        for name in ("pixelcnn_mnist", "gated_pixelcnn_mnist"):
            hit = [r for r in rows if r["preset"] == name and r["batch"] == 64]
            value = hit[0]["speedup"] if hit else None
            targets.append({"name": f"{name}: cached / naive images/s at batch 64 (CPU, 28x28)", "value": value,
                            "goal": f">= {TARGET_SPEEDUP:g}", "met": None if value is None else value >= TARGET_SPEEDUP})
    notes = [f"naive images/s are extrapolated from the time of {naive_variables} variables (the image's last ones) "
             "of the naive loop; each costs one whole-image forward pass",
             "compile_s: first call minus a steady-state call", "parameters: random initialisation"]
    if quick:
        notes.append("--quick: tiny models on 6x6 images, one repeat; the timings mean nothing")
    settings = {"presets": presets, "batch_sizes": given or "default", "naive_variables": naive_variables,
                "repeats": repeats, "quick": quick}
    return {"rows": rows, "settings": settings, "targets": targets, "notes": notes}
