"""``jaxconv bench sample``: naive vs cached PixelCNN sampling, images/s per batch size, and the cached
sampler's FLOPs, FLOP/s and cost in whole-image forward passes.

Presets: on CPU the MNIST-size ones (``pixelcnn_mnist``, ``gated_pixelcnn_mnist``, 28x28x1) and the
small 32x32x3 one (``gated_pixelcnn_cifar``); on an accelerator also the paper-size ``pixelcnn_cifar``
and ``gated_pixelcnn_imagenet32``. Parameters are a random initialisation (speed does not depend on
them: ``jaxconv.bench.models.random_params``). Batch sizes 1, 16, 64, 256 (on CPU, 1, 16, 64 for the
32x32x3 presets).

- cached: ``jaxconv.sampling.sample_cached`` draws whole images (all H*W*C variables); images/s =
  batch / median time of a full sample. ``flops_per_image``: the conv and matmul FLOPs (2 * multiply-adds)
  the cached sampler runs per image, counted exactly from its traced program (``cached_flops``: every
  ``dot_general`` and ``conv_general_dilated`` with its shapes, times the trip counts of the loops around
  it; of a conditional, its costlier branch). XLA's own ``cost_analysis()`` of the compiled sampler counts a
  loop's body once whatever its trip count, so it is not used. Elementwise work (gates, the heads'
  log-probabilities, the Gumbel noise) is not counted, as in training MFU. ``flops_per_s`` = FLOPs per
  image * images/s; ``frac_peak`` = that / the run's measured float32 peak (``jaxconv.bench.device``).
- forward: one whole-image forward pass (jitted ``model.apply``) at the same batch; images/s = batch /
  median time. The cached sample and the forward pass are timed alternately, nine turns each unless
  ``--repeats`` says otherwise (``jaxconv.timing.time_alternately``: a shared machine's load changes within
  seconds);
  ``cached.forward_passes`` = the median over those repeats of cached time / forward time, per image
  alike: the cached sampler's cost in forward passes (about 1 is the floor: it computes each layer at
  each position once).
- naive: one whole-image forward pass per variable, so every variable costs the same; the naive loop
  (``jaxconv.sampling``'s own step) is timed on a fixed number of variables (the last ones of the
  image, ``--naive-variables``) and extrapolated: images/s = batch / (time per variable * H*W*C)
  (``extrapolated: true`` in the result).
- agree: the naive sampler, given the cached sample, redraws those last variables with the same keys;
  it must return the cached sample unchanged.

Targets (reported, on CPU): cached >= 100x naive at batch 64 for the 28x28 presets; for
gated_pixelcnn_mnist at batch 64, cached FLOP/s >= 50% of the float32 peak and a cached image costing
<= 1.2 forward passes; gated_pixelcnn_cifar's cached images/s >= 10x from batch 1 to batch 64.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import time
import types
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv import sampling
from jaxconv.bench.models import forward_flops_of, jaxpr_flops, param_count, preset_image, random_params
from jaxconv.timing import time_alternately, time_calls
from jaxconv.errors import ConfigError
from jaxconv.models import PRESETS, build_model, heads, pixelcnn
from jaxconv.models.conv import DEFAULT_POLICY
from jaxconv.models.conv_policy import ConvPolicy

CPU_PRESETS = ("pixelcnn_mnist", "gated_pixelcnn_mnist", "gated_pixelcnn_cifar")
ACCELERATOR_PRESETS = CPU_PRESETS + ("pixelcnn_cifar", "gated_pixelcnn_imagenet32")
BATCH_SIZES = (1, 16, 64, 256)
# On CPU the 32x32x3 presets stop at 64: a cached batch of 256 takes minutes (--batch-sizes overrides).
CPU_BATCH_SIZES = {"gated_pixelcnn_cifar": (1, 16, 64), "pixelcnn_cifar": (1, 16, 64)}
TARGET_SPEEDUP = 100.0
TARGET_FRAC_PEAK = 0.5  # gated_pixelcnn_mnist, batch 64
TARGET_FORWARD_PASSES = 1.2  # gated_pixelcnn_mnist, batch 64
TARGET_BATCH_SCALING = 10.0  # gated_pixelcnn_cifar, images/s batch 64 / batch 1


def _quick_config(name: str):
    """A tiny version of a preset for --quick (few layers and channels)."""
    config = PRESETS[name]
    if isinstance(config, pixelcnn.PixelCNNConfig):
        return dataclasses.replace(config, hidden=max(4, config.colours), num_blocks=1, output_features=8)
    return dataclasses.replace(config, features=6, num_layers=1, output_features=8)


def _naive_variables(model, method: str, start: int, count: int, params, key, values, temperature):
    """Variables start .. start+count-1 by the naive sampler's own step, drawn by ``method`` (the cached
    run's: ``check_draw`` of its draw and temperature)."""
    step = lambda n, v: sampling._naive_step(model, method, params, key, v, None, temperature, n)
    return jax.lax.fori_loop(start, start + count, step, values)


def _loop_flops(jaxpr) -> float:
    """2 * multiply-adds of a jaxpr's convolutions and matmuls, each times the trip count of the loops around
    it (a scan's ``length``; a conditional counts its costlier branch). ValueError for a while loop, whose
    trip count the program does not state."""
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in ("dot_general", "conv_general_dilated"):
            total += jaxpr_flops(types.SimpleNamespace(eqns=[eqn]))
        elif name == "scan":
            total += eqn.params["length"] * _loop_flops(eqn.params["jaxpr"].jaxpr)
        elif name == "cond":
            total += max(_loop_flops(branch.jaxpr) for branch in eqn.params["branches"])
        elif name == "while":
            raise ValueError("a while loop (trip count unknown) in the sampler: FLOPs cannot be counted")
        else:
            for value in eqn.params.values():
                for sub in value if isinstance(value, (list, tuple)) else (value,):
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns"):
                        total += _loop_flops(inner)
    return total


def cached_flops(model, params, shape: tuple[int, int, int, int]) -> float:
    """Conv and matmul FLOPs per image of ``sampling.sample_cached`` drawing ``shape`` = (B, H, W, C) images,
    counted in the program it traces with XLA's ops everywhere: the C++ call that computes a Gated PixelCNN
    position on the CPU (``jaxconv.models.cpu_gated_sampler``) does the same dots, which a jaxpr does not show."""
    model = model.clone(policy=dataclasses.replace(model.policy, forced="xla"))
    jaxpr = jax.make_jaxpr(lambda p, k: sampling.sample_cached(model, p, k, shape))(params, jax.random.key(0))
    return _loop_flops(jaxpr.jaxpr) / shape[0]


def measure(name: str, batch: int, *, quick: bool, naive_variables: int, repeats: int, turns: int | None = None,
            seed: int = 0, peaks: dict | None = None, policy: ConvPolicy = DEFAULT_POLICY) -> dict:
    """``repeats``: the naive loop's timed repeats; ``turns``: the cached sample's and the forward pass's
    alternating turns (``repeats`` when None, at least 3)."""
    config = _quick_config(name) if quick else PRESETS[name]
    h, w, c = (6, 6, preset_image(name)[2]) if quick else preset_image(name)
    model = build_model(config, policy=policy)
    params = random_params(model, (h, w, c), seed)
    key = jax.random.key(seed + 1)
    shape = (batch, h, w, c)
    budget = 2.0 if quick else 60.0
    timing = dict(repeats=repeats, min_time=0.0, warmup=0, budget=budget)

    out = {}

    def cached_call():
        out["images"] = sampling.sample_cached(model, params, key, shape)
        return out["images"]

    x = jnp.zeros(shape, jnp.float32)
    options = model.policy.compiler_options()  # as the samplers' (jaxconv.sampling)
    apply = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
    forward_fn = jax.jit(apply, compiler_options=options)
    cached, forward, ratios = time_alternately(cached_call, lambda: forward_fn(params, x),
                                               repeats=max(turns or repeats, 3), budget=budget)
    values = heads.to_values(config, out["images"])

    total = h * w * c
    count = min(naive_variables, total)
    start = total - count
    temperature = 1.0  # sample_cached's default, as cached_call draws
    method = heads.check_draw(config, "gumbel", temperature)
    naive_fn = jax.jit(functools.partial(_naive_variables, model, method, start, count), compiler_options=options)

    def naive_call():
        out["redrawn"] = naive_fn(params, key, values, jnp.float32(temperature))
        return out["redrawn"]

    naive = time_calls(naive_call, **timing)
    agree = bool(np.array_equal(np.asarray(out["redrawn"]), np.asarray(values)))

    flops = cached_flops(model, params, shape)
    peak = peaks["matmul_flops_per_s"][str(jnp.dtype(model.dtype))] if peaks else None

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
                   "runs_s": cached["runs_s"], "flops_per_s": flops * cached_ips,
                   "frac_peak": flops * cached_ips / peak if peak else None,
                   "forward_passes": statistics.median(ratios)},
        "forward": {"time_s": forward["median_s"], "images_per_s": batch / forward["median_s"],
                    "flops_per_image": forward_flops_of(config, (h, w, c)),
                    "runs_s": forward["runs_s"]},
        "flops_per_image": flops,
        "speedup": cached_ips / naive_ips, "agree": agree,
    }


def run(*, quick: bool = False, presets: list[str] | None = None, batch_sizes: list[int] | None = None,
        naive_variables: int | None = None, repeats: int | None = None, peaks: dict | None = None,
        log: Callable[[str], None] = print, policy: ConvPolicy = DEFAULT_POLICY) -> dict:
    """``peaks``: the run's ``device.measure_peaks()`` (without them ``frac_peak`` is null); ``policy``: the
    models' conv policy."""
    accelerator = jax.default_backend() != "cpu"
    presets = presets or (["pixelcnn_mnist", "gated_pixelcnn_mnist"] if quick else
                          list(ACCELERATOR_PRESETS if accelerator else CPU_PRESETS))
    for name in presets:
        if not isinstance(PRESETS.get(name), pixelcnn.AUTOREGRESSIVE_CONFIGS):
            names = [n for n, p in PRESETS.items() if isinstance(p, pixelcnn.AUTOREGRESSIVE_CONFIGS)]
            raise ConfigError(f"sample benchmark: {name!r} is not a PixelCNN preset; presets: {', '.join(names)}")
    given = batch_sizes
    naive_variables = naive_variables or (2 if quick else 8)
    # The cached sample and the forward pass take nine turns by default (a run's median of three read a
    # neighbour's burst of load as the sampler's speed: docs/benchmarks.md, 2026-12-02); the naive loop, each
    # of whose repeats costs 8 whole forward passes, three.
    turns = repeats or (1 if quick else 9)
    repeats = repeats or (1 if quick else 3)
    rows = []
    for name in presets:
        batch_sizes = given or ([2] if quick else list(BATCH_SIZES if accelerator else
                                                    CPU_BATCH_SIZES.get(name, BATCH_SIZES)))
        for batch in batch_sizes:
            start = time.perf_counter()
            row = measure(name, batch, quick=quick, naive_variables=naive_variables, repeats=repeats, turns=turns,
                          peaks=peaks, policy=policy)
            rows.append(row)
            cached = row["cached"]
            frac = "" if cached["frac_peak"] is None else f" ({cached['frac_peak']:.0%} of the float32 peak)"
            log(f"{name} batch {batch}: cached {cached['images_per_s']:.3g} img/s, naive "
                f"{row['naive']['images_per_s']:.3g} img/s (extrapolated from {row['naive']['variables_timed']} "
                f"variables), speed-up {row['speedup']:.1f}x, agree {row['agree']}; cached "
                f"{row['flops_per_image'] / 1e6:.3g} MFLOP/image, {cached['flops_per_s'] / 1e9:.3g} GFLOP/s{frac}, "
                f"{cached['forward_passes']:.2f} forward passes per image (forward pass "
                f"{row['forward']['images_per_s']:.3g} img/s) ({time.perf_counter() - start:.0f} s)")
    targets = []
    if not accelerator:
        def at(name, batch):
            return next((r for r in rows if r["preset"] == name and r["batch"] == batch), None)

        def target(name, value, goal, met):
            targets.append({"name": name, "value": value, "goal": goal, "met": None if value is None else met(value)})

        for name in ("pixelcnn_mnist", "gated_pixelcnn_mnist"):
            row = at(name, 64)
            target(f"{name}: cached / naive images/s at batch 64 (CPU, 28x28)", row and row["speedup"],
                   f">= {TARGET_SPEEDUP:g}", lambda v: v >= TARGET_SPEEDUP)
        row = at("gated_pixelcnn_mnist", 64)
        frac = row and row["cached"]["frac_peak"]
        target("gated_pixelcnn_mnist: cached FLOP/s, % of the float32 peak, batch 64 (CPU)",
               None if frac is None else 100 * frac, f">= {100 * TARGET_FRAC_PEAK:g}",
               lambda v: v >= 100 * TARGET_FRAC_PEAK)
        target("gated_pixelcnn_mnist: cached cost in whole-image forward passes per image, batch 64 (CPU)",
               row and row["cached"]["forward_passes"], f"<= {TARGET_FORWARD_PASSES:g}",
               lambda v: v <= TARGET_FORWARD_PASSES)
        one, many = at("gated_pixelcnn_cifar", 1), at("gated_pixelcnn_cifar", 64)
        target("gated_pixelcnn_cifar: cached images/s at batch 64 / at batch 1 (CPU)",
               one and many and many["cached"]["images_per_s"] / one["cached"]["images_per_s"],
               f">= {TARGET_BATCH_SCALING:g}", lambda v: v >= TARGET_BATCH_SCALING)
    notes = [f"naive images/s are extrapolated from the time of {naive_variables} variables (the image's last ones) "
             "of the naive loop; each costs one whole-image forward pass",
             "compile_s: first call minus a steady-state call", "parameters: random initialisation",
             "cached FLOPs: the convs and matmuls the cached sampler runs per image, counted from its traced program "
             "with the loops' trip counts (elementwise work, e.g. the heads' log-probabilities, not counted); "
             "% of peak: against the run's measured float32 peak",
             "forward passes: time per cached image / time per image of one whole-image forward pass at the same "
             "batch, the two timed alternately (median of the repeats' ratios)"]
    if quick:
        notes.append("--quick: tiny models on 6x6 images, one repeat; the timings mean nothing")
    settings = {"presets": presets, "batch_sizes": given or "default", "naive_variables": naive_variables,
                "repeats": repeats, "turns": turns, "quick": quick}
    return {"rows": rows, "settings": settings, "targets": targets, "notes": notes}
