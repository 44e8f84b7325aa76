"""``jaxconv bench conv``: every conv layer shape of jaxconv's models, implementation by implementation.

The sweep (``run``): for each shape (``jaxconv.bench.conv_shapes``: the layers of jaxconv's presets,
AlexNet's, ``--shape``), batch size, dtype (float32, bfloat16) and mode, the variants
(``jaxconv.bench.conv_runners``: XLA, split, im2col, taps, FFT, masked vs cropped, PyTorch NCHW and NHWC, and
the user's kernels, ``user_kernels``: ``jaxconv bench conv --impl module:function``) run on the same data,
plus the default path when a rule makes it something else (a "forward/input_grad/kernel_grad" triple,
say). One case is one row (``measure_case``):

1. agreement first: every variant's outputs are compared with XLA's conv in float32 at HIGHEST
   precision on the same (dtype-rounded) data; a variant whose max |error| / max |reference| exceeds
   ``TOLERANCE[dtype]`` is a "mismatch": reported, not timed, never the winner;
2. then each agreeing variant is timed (``jaxconv.timing``); a PyTorch variant predicted (from
   PyTorch's FLOP/s on a medium conv, measured at the start) to take over ``max_call_s`` per call is
   "skipped" (PyTorch's bfloat16 conv on CPUs without bf16 units runs at well under 1 GFLOP/s);
3. the default path (what the conv policy picks, the layers' choice: ``jaxconv.models.conv_policy``) is
   reported against PyTorch's best layout: ``default_vs_torch`` > 1 means jaxconv is faster.

The sweep also writes ``conv_table.json``, an autotune table (``jaxconv.bench.conv_table``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv.bench import device as device_lib
from jaxconv.bench.conv_runners import (BUILTIN_IMPLS, TOLERANCE, VARIANTS, UserKernel, Variant, calibrate_torch,
                                        check_kernel_names, prepare, reference, relative_error, shape_mismatch,
                                        torch_settings, use_torch)
from jaxconv.bench.conv_shapes import (ALL_MODES, DTYPES, MODES, QUICK_CASES, SETS, ConvShape, layer_fields,
                                       parse_shape, shape_sets)
from jaxconv.bench.conv_table import autotune_table
from jaxconv.timing import time_calls
from jaxconv.errors import ConfigError
from jaxconv.models.conv import DEFAULT_POLICY
from jaxconv.models.conv_policy import ConvPolicy, Signature

Case = tuple[ConvShape, tuple[int, ...], tuple[str, ...], tuple[str, ...]]  # shape, batches, dtypes, modes


def measure_case(shape: ConvShape, batch: int, dtype: str, mode: str, peaks: dict, *, variants: list[Variant],
                 timing: dict, torch_rates: dict | None = None, max_call_s: float | None = None, seed: int = 0,
                 policy: ConvPolicy = DEFAULT_POLICY) -> dict:
    """One row: agreement check of every variant, then timing of the agreeing ones.

    ``torch_rates``: PyTorch's FLOP/s per dtype on a medium conv (``calibrate_torch``); a PyTorch variant
    predicted to take more than ``max_call_s`` per call at that rate is skipped (its bfloat16 conv on
    CPUs without bf16 units runs at well under 1 GFLOP/s).
    """
    data = case_data(shape, batch, dtype, seed)
    refs = reference(shape, mode, *data)
    cost = case_cost(shape, batch, dtype, mode, peaks)
    default_impl = "masked" if shape.mask else policy.choose(Signature.of(shape, batch, dtype))
    if not any((v.impl, v.layout) == (default_impl, "NHWC") for v in variants):  # a rule's triple, say
        variants = [Variant(default_impl, "jax", "NHWC"), *variants]
    options = policy.compiler_options()
    results = [measure_variant(v, shape, mode, dtype, data, refs, cost, timing=timing, torch_rates=torch_rates,
                               max_call_s=max_call_s, compiler_options=options)
               for v in variants if v.applies(shape, dtype)]
    return {"shape": shape.name, "kind": shape.kind, "sources": list(shape.sources), "batch": batch,
            **layer_fields(shape), "mask": shape.mask, "input_grad": shape.input_grad, "dtype": dtype, "mode": mode,
            **cost, "default_impl": default_impl, "results": results, **_comparison(results, default_impl)}


def case_data(shape: ConvShape, batch: int, dtype: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Canonical float32 x (NHWC), w (HWIO, N(0, 1/fan_in)) and output gradient g, rounded to ``dtype`` once
    so every variant and the reference see the same numbers."""
    rng = np.random.default_rng(seed)
    ho, wo = shape.out_hw()
    fan_in = (shape.cin // shape.groups) * shape.kh * shape.kw
    rounded = lambda a: np.asarray(jnp.asarray(a, jnp.dtype(dtype)).astype(jnp.float32))
    x = rounded(rng.standard_normal((batch, shape.height, shape.width, shape.cin), np.float32))
    w = rounded(rng.standard_normal((shape.kh, shape.kw, shape.cin // shape.groups, shape.cout), np.float32)
                / math.sqrt(fan_in))
    g = rounded(rng.standard_normal((batch, ho, wo, shape.cout), np.float32))
    return x, w, g


def case_cost(shape: ConvShape, batch: int, dtype: str, mode: str, peaks: dict) -> dict:
    """The case's FLOPs, minimum bytes, their ratio, and the device's peak and roofline at that intensity."""
    flops = shape.mode_flops(batch, mode)
    bytes_ = jnp.dtype(dtype).itemsize * shape.mode_bytes(batch, mode)
    intensity = flops / bytes_
    return {"flops": flops, "bytes": float(bytes_), "intensity": intensity,
            "peak_flops_per_s": peaks["matmul_flops_per_s"][dtype],
            "roofline_flops_per_s": device_lib.roofline(peaks, dtype, intensity)}


def measure_variant(variant: Variant, shape: ConvShape, mode: str, dtype: str, data: tuple, refs: list[np.ndarray],
                    cost: dict, *, timing: dict, torch_rates: dict | None, max_call_s: float | None,
                    compiler_options: dict[str, str] | None = None) -> dict:
    """One variant's result: "skipped" (predicted too slow), "error" (it failed to run), "mismatch" (it
    disagrees with the reference) or "ok" with its timing; JAX variants compiled with XLA's
    ``compiler_options`` (the conv policy's)."""
    res = {"impl": variant.impl, "framework": variant.framework, "layout": variant.layout, "status": "skipped",
           "error": None, "message": None, "time_s": None, "min_time_s": None, "runs_s": [], "compile_s": None,
           "flops_per_s": None, "frac_peak": None, "frac_roofline": None, "vs_torch": None}
    flops = cost["flops"]
    rate = (torch_rates or {}).get(dtype) if variant.framework == "torch" else None
    if rate and max_call_s and flops / rate > max_call_s:
        res["message"] = (f"predicted {flops / rate:.0f} s per call at PyTorch's {rate / 1e9:.3g} GFLOP/s "
                          f"on a medium {dtype} conv > {max_call_s:g} s")
        return res
    try:
        runner = prepare(variant, shape, mode, dtype, *data, compiler_options=compiler_options)
        res["compile_s"] = runner.compile_s
        outs, estimate = runner.check_call()
        res["error"] = relative_error(outs, refs)
        if not res["error"] <= TOLERANCE[dtype]:
            res["status"] = "mismatch"
            res["message"] = (shape_mismatch(outs, refs)
                              or f"error {res['error']:.3g} > tolerance {TOLERANCE[dtype]:g}")
        else:
            t = time_calls(runner.call, sync=runner.sync, estimate=estimate, **timing)
            rate = flops / t["median_s"]
            res.update(status="ok", time_s=t["median_s"], min_time_s=t["min_s"], runs_s=t["runs_s"], flops_per_s=rate,
                       frac_peak=rate / cost["peak_flops_per_s"], frac_roofline=rate / cost["roofline_flops_per_s"])
    except Exception as e:  # one variant failing (unsupported, out of memory) must not stop the sweep
        res["status"] = "error"
        res["message"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
    return res


def _comparison(results: list[dict], default_impl: str) -> dict:
    """The winners of a row and the comparisons with PyTorch's best (each result's ``vs_torch`` set here)."""
    ok = [r for r in results if r["status"] == "ok"]
    torch_best = min((r["time_s"] for r in ok if r["framework"] == "torch"), default=None)
    for r in ok:
        r["vs_torch"] = torch_best / r["time_s"] if torch_best else None
    ref_of = lambda r: {"impl": r["impl"], "framework": r["framework"], "layout": r["layout"]} if r else None
    winner = min(ok, key=lambda r: r["time_s"], default=None)
    best_jax = min((r for r in ok if r["framework"] == "jax"), key=lambda r: r["time_s"], default=None)
    default = next((r for r in ok if (r["impl"], r["layout"]) == (default_impl, "NHWC")), None)
    return {"winner": ref_of(winner), "best_jax": ref_of(best_jax), "torch_best_s": torch_best,
            "default_vs_torch": torch_best / default["time_s"] if (default and torch_best) else None}


def run(*, quick: bool = False, sets: list[str] | None = None, user_shapes: list[str] = (), dtypes=DTYPES,
        modes=MODES, layouts=("NHWC", "NCHW"), impls: list[str] | None = None, batch_sizes: list[int] | None = None,
        torch: bool = True, repeats: int | None = None, peaks: dict, log: Callable[[str], None] = print,
        policy: ConvPolicy = DEFAULT_POLICY, user_kernels: Sequence[UserKernel] = ()) -> dict:
    """The sweep; returns {"rows", "settings", "targets", "notes", "table"}. ``policy``: the layers'
    choice, reported as the default path. ``user_shapes`` without ``sets``: only those shapes.
    ``user_kernels``: the user's implementations (``conv_runners.load_kernel``), NHWC, on every shape
    whatever ``impls`` and ``layouts`` select; checked and timed like the built-ins (never in the
    autotune table: the layers cannot call them)."""
    accelerator = jax.default_backend() != "cpu"
    if sets is None and user_shapes:
        sets = []
    cases = _cases(quick, sets, user_shapes, dtypes, modes, batch_sizes, accelerator)
    have_torch = use_torch(torch)
    variants = _variants(impls, layouts, have_torch, user_kernels)
    timing = ({"repeats": 1, "min_time": 0.0, "warmup": 0, "budget": 1.0} if quick else
              {"repeats": repeats or (5 if accelerator else 3), "min_time": 0.05 if accelerator else 0.1, "warmup": 1,
               "budget": 5.0})
    max_call_s = None if quick else 5.0
    torch_rates = calibrate_torch(dtypes) if have_torch and not quick else None
    runs = [(shape, batch, dtype, mode) for shape, batches, case_dtypes, case_modes in cases for batch in batches
            for dtype in case_dtypes for mode in case_modes if mode != "input_grad" or shape.input_grad]
    rows = []
    for done, (shape, batch, dtype, mode) in enumerate(runs, 1):
        rows.append(measure_case(shape, batch, dtype, mode, peaks, variants=variants, timing=timing,
                                 torch_rates=torch_rates, max_call_s=max_call_s, policy=policy))
        log(_progress_line(done, len(runs), rows[-1]))
    settings = {"quick": quick, "sets": sets if sets is not None else ("quick" if quick else list(SETS)),
                "user_shapes": list(user_shapes), "dtypes": list(dtypes), "modes": list(modes), "layouts": list(layouts),
                "variants": [f"{v.impl}/{v.layout}" for v in variants],
                "user_kernels": {k.name: k.source or repr(k.fn) for k in user_kernels}, "timing": timing,
                "tolerance": TOLERANCE,
                "max_call_s": max_call_s, "torch_calibration_flops_per_s": torch_rates,
                "torch": have_torch, "conv_rules": [dataclasses.asdict(r) for r in policy.rules],
                "conv_forced": policy.forced, "conv_table_entries": len(policy.table)}
    if have_torch:
        settings["torch_settings"] = torch_settings()
    settings["jax_default_matmul_precision"] = str(jax.config.jax_default_matmul_precision)
    return {"rows": rows, "settings": settings, "targets": _targets(rows, accelerator),
            "notes": _notes(have_torch, quick), "table": autotune_table(rows, jax.default_backend())}


def _cases(quick: bool, sets: list[str] | None, user_shapes, dtypes, modes, batch_sizes: list[int] | None,
           accelerator: bool) -> list[Case]:
    """What to measure: the quick cases or the sets, and the user shapes; ConfigError on a bad name."""
    if sets is None and quick:
        cases = [(s, b, [d for d in ds if d in dtypes], [m for m in ms if m in modes]) for s, b, ds, ms in QUICK_CASES]
    else:
        cases = [(s, b, dtypes, modes) for s, b in shape_sets(sets, accelerator)]
    cases += [(s, (n,), dtypes, modes) for s, n in map(parse_shape, user_shapes)]
    if bad := set(modes) - set(ALL_MODES):
        raise ConfigError(f"unknown mode(s) {', '.join(sorted(bad))}; modes: {', '.join(ALL_MODES)}")
    if bad := set(dtypes) - set(DTYPES):
        raise ConfigError(f"unknown dtype(s) {', '.join(sorted(bad))}; dtypes: {', '.join(DTYPES)}")
    if batch_sizes:
        cases = [(s, tuple(batch_sizes), ds, ms) for s, _, ds, ms in cases]
    return cases


def _variants(impls: list[str] | None, layouts, have_torch: bool, user_kernels: Sequence[UserKernel] = ()
              ) -> list[Variant]:
    """The variants ``--impls`` and ``--layouts`` select (PyTorch's when it runs), then the user's kernels;
    ConfigError on a bad name or two kernels of one name."""
    if impls is not None and (bad := set(impls) - set(BUILTIN_IMPLS)):
        raise ConfigError(f"unknown implementation(s) {', '.join(sorted(bad))}; known: "
                          f"{', '.join(sorted(BUILTIN_IMPLS))} (your own kernel: --impl module:function)")
    variants = [v for v in VARIANTS if v.layout in layouts and (impls is None or v.impl in impls)
                and (v.framework == "jax" or have_torch)]
    check_kernel_names(user_kernels)
    return variants + [k.variant() for k in user_kernels]


def _progress_line(done: int, total: int, row: dict) -> str:
    parts = []
    for r in row["results"]:
        tag = f"{r['impl']}/{r['layout']}"
        parts.append(f"{tag} {r['time_s'] * 1e3:.2f}ms" if r["status"] == "ok" else f"{tag} {r['status'].upper()}")
    ratio = f" default/torch {row['default_vs_torch']:.2f}x" if row["default_vs_torch"] else ""
    return f"[{done}/{total}] {row['shape']} b{row['batch']} {row['dtype']} {row['mode']}:{ratio} | " + ", ".join(parts)


def _targets(rows: list[dict], accelerator: bool) -> list[dict]:
    """Issue 13's conv targets: per shape set the default path's geo-mean speed vs PyTorch >= 1.0 (the lowest
    set reported), and its worst shape >= 0.7 (float32, forward + backward, the model layers)."""
    model = [r for r in rows if not r["shape"].startswith("user:")]
    fb32 = [r for r in model if r["mode"] == "forward_backward" and r["dtype"] == "float32"
            and r["default_vs_torch"] is not None]
    by_set: dict[str, list[float]] = {}
    for r in fb32:
        by_set.setdefault(r["shape"].split(":")[0], []).append(r["default_vs_torch"])
    geo = {s: math.exp(sum(math.log(v) for v in vals) / len(vals)) for s, vals in by_set.items()}
    lowest = min(geo, key=geo.get) if geo else None
    worst = min((r["default_vs_torch"] for r in fb32), default=None)
    targets = [{"name": "default conv path / PyTorch, geo-mean over a shape set's layers, lowest set"
                        + (f" ({lowest})" if lowest else "") + " (float32, forward_backward)",
                "value": geo[lowest] if lowest else None, "goal": ">= 1.0 in every set",
                "met": (geo[lowest] >= 1.0) if lowest else None},
               {"name": "default conv path / PyTorch, worst model layer shape (float32, forward_backward)",
                "value": worst, "goal": ">= 0.7", "met": (worst >= 0.7) if worst is not None else None}]
    if accelerator:
        bf = [r["default_vs_torch"] for r in model if r["mode"] == "forward_backward" and r["dtype"] == "bfloat16"
              and r["default_vs_torch"] is not None]
        targets.append({"name": "default conv path / PyTorch (cuDNN), worst model layer shape (bfloat16, "
                                "forward_backward)", "value": min(bf) if bf else None, "goal": ">= 1.0 on every shape",
                        "met": (min(bf) >= 1.0) if bf else None})
        big = [r for r in model if r["dtype"] == "bfloat16" and r["mode"] == "forward_backward"
               and any(s.startswith(("alexnet224", "gated_pixelcnn_imagenet32")) for s in r["sources"])]
        fracs = [max((x["frac_peak"] for x in r["results"] if x["status"] == "ok" and x["framework"] == "jax"
                      and (x["impl"], x["layout"]) == (r["default_impl"], "NHWC")), default=0.0) for r in big]
        low = min(fracs) if fracs else None
        targets.append({"name": "bf16 fraction of peak, large AlexNet-224 and paper-size Gated PixelCNN layers (worst)",
                        "value": low, "goal": ">= 0.6", "met": (low >= 0.6) if low is not None else None})
    return targets


def _notes(have_torch: bool, quick: bool) -> list[str]:
    notes = ["flops count the dense kernel (masked kernels included); forward_backward = 3x forward",
             "vs_torch and default_vs_torch compare with PyTorch's faster layout; > 1 means faster than PyTorch"]
    if not have_torch:
        notes.append("PyTorch not installed: no comparison (pip install 'jaxconv[bench]')")
    if quick:
        notes.append("--quick: tiny shapes and one repeat; the timings mean nothing")
    return notes
