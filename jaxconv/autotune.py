"""Conv autotuning on the user's machine (config ``conv.autotune=true``).

The conv policy's rules (``jaxconv.models.conv_policy.RULES``) were measured on one CPU. With
autotuning, a run measures, for every conv layer of its model at its per-device batch size and
compute dtype, each implementation of ``jaxconv.models.conv_impls`` on each pass (forward, input
gradient, kernel gradient), keeps the fastest that agrees with XLA's conv, and uses the
"forward/input_grad/kernel_grad" winners as the policy's table. Results are cached per
(device kind, jax version, layer signature, batch size) in ``cache_path()``
(``$JAXCONV_CACHE_DIR``, else ``$XDG_CACHE_HOME/jaxconv``, else ``~/.cache/jaxconv``), so a model is
measured once per machine; the run records the winners it used in ``WORKDIR/conv_table.json``, which
a resumed run reads instead of the cache (the same implementations as before the interruption).

Why by hand: XLA's own autotuner covers GPU kernels, not the choice between formulations of a conv
(split, im2col, taps, fft) that jaxconv makes above XLA.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxconv.paths import cache_root
from jaxconv.timing import time_calls
from jaxconv.models import build_model
from jaxconv.models.conv_impls import IMPLEMENTATIONS, TOLERANCE, supports
from jaxconv.models.conv_policy import ConvPolicy, Signature
from jaxconv.train.state import init_state

PASSES = ("forward", "input_grad", "kernel_grad")
TIMING = {"repeats": 3, "min_time": 0.02, "warmup": 1, "budget": 2.0}


def cache_path() -> Path:
    return cache_root() / "conv_autotune.json"


@dataclasses.dataclass(frozen=True)
class _Recorder(ConvPolicy):
    """A policy that records every layer signature it is asked about (and answers as the rules do)."""

    seen: list = dataclasses.field(default_factory=list, compare=False, hash=False)

    def choose(self, sig: Signature) -> str:
        self.seen.append(sig)
        return super().choose(sig)


def layer_signatures(model_config: Any, dtype: str, input_shape: tuple[int, ...], batch: int) -> list[Signature]:
    """The distinct conv layer signatures of a model at ``batch`` (traced abstractly: nothing runs)."""
    recorder = _Recorder()
    model = build_model(model_config, jnp.dtype(dtype), recorder)
    jax.eval_shape(lambda: init_state(model, optax.identity(), (batch, *input_shape), seed=0))
    return list(dict.fromkeys(recorder.seen))


def _pass_fn(impl: str, sig: Signature, which: str, options: dict[str, str] | None) -> Callable:
    args = (sig.stride, sig.padding, sig.dilation, sig.groups)
    conv = IMPLEMENTATIONS[impl]
    if which == "forward":
        fn = lambda x, w, g: conv(x, w, *args)
    elif which == "input_grad":
        fn = lambda x, w, g: jax.vjp(lambda v: conv(v, w, *args), x)[1](g)[0]
    else:
        fn = lambda x, w, g: jax.vjp(lambda k: conv(x, k, *args), w)[1](g)[0]
    return jax.jit(fn, compiler_options=options)


def measure(sig: Signature, log: Callable[[str], None] = lambda _: None,
            compiler_options: dict[str, str] | None = None) -> str:
    """The fastest agreeing implementation of each pass of one layer: "fwd/dx/dw" (or one name), each
    compiled with XLA's ``compiler_options`` (the conv policy's)."""
    rng = np.random.default_rng(0)
    ho, wo = sig.out_hw()
    dtype = jnp.dtype(sig.dtype)
    x = jnp.asarray(rng.standard_normal((sig.batch, sig.height, sig.width, sig.cin), np.float32), dtype)
    w = jnp.asarray(rng.standard_normal((sig.kh, sig.kw, sig.cin // sig.groups, sig.cout), np.float32), dtype)
    g = jnp.asarray(rng.standard_normal((sig.batch, ho, wo, sig.cout), np.float32), dtype)
    winners = []
    for which in PASSES:
        reference = np.asarray(_pass_fn("xla", sig, which, compiler_options)(x, w, g), np.float32)
        scale = max(float(np.abs(reference).max()), 1e-30)
        times = {}
        for impl in IMPLEMENTATIONS:
            if not supports(impl, dtype) or (impl == "split" and sig.groups == 1):  # split is xla then
                continue
            fn = _pass_fn(impl, sig, which, compiler_options)
            error = float(np.abs(np.asarray(fn(x, w, g), np.float32) - reference).max()) / scale
            if error <= TOLERANCE.get(sig.dtype, 5e-2):
                times[impl] = time_calls(lambda: fn(x, w, g), **TIMING)["median_s"]
        winners.append(min(times, key=times.get))
        log(f"  {which}: " + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in sorted(times.items(), key=lambda kv: kv[1])))
    return winners[0] if len(set(winners)) == 1 else "/".join(winners)


def cache_key(sig: Signature, compiler_options: dict[str, str] | None = None) -> str:
    """The cache's key: device kind, jax version, layer, batch size and the XLA options it was timed with."""
    options = "".join(f"|{k}={v}" for k, v in sorted((compiler_options or {}).items()))
    return f"{jax.devices()[0].device_kind}|jax {jax.__version__}|{sig.key()}|b{sig.batch}{options}"


@contextlib.contextmanager
def _locked_cache():
    """The cache's entries, read under an exclusive lock and written back atomically on exit: two runs
    tuning at once merge their entries. An unreadable cache is measured again, never trusted."""
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            entries = json.loads(path.read_text()) if path.exists() else {}
            if not isinstance(entries, dict) or not all(isinstance(v, str) for v in entries.values()):
                raise ValueError("not a table of implementations")
        except (OSError, ValueError):
            entries = {}
        before = dict(entries)
        yield entries
        if entries != before:
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(entries, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, path)


def tuned_table(signatures: list[Signature], log: Callable[[str], None] = lambda _: None,
                compiler_options: dict[str, str] | None = None) -> dict[str, str]:
    """Signature.key() -> winning implementation for each layer, measuring those not in the cache
    (compiled with XLA's ``compiler_options``, the conv policy's)."""
    table = {}
    with _locked_cache() as cache:
        for sig in signatures:
            key = cache_key(sig, compiler_options)
            if key not in cache:
                log(f"autotuning conv {sig.key()} at batch {sig.batch}")
                cache[key] = measure(sig, log, compiler_options)
            table[sig.key()] = cache[key]
    return table


def policy_with(policy: ConvPolicy, table: dict[str, str]) -> ConvPolicy:
    """``policy`` with ``table``'s winners ahead of its own table and rules."""
    return dataclasses.replace(policy, table=tuple(sorted({**dict(policy.table), **table}.items())))
