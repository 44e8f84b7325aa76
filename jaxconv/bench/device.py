"""The device under test: a description, a results-directory name, and its measured peaks.

``environment()`` describes the machine and software (recorded in every result). ``results_name()``
names the results directory: ``cpu-<model>-<vector ISA>-<cores>c`` on CPU (``cpu-amd-epyc-avx2-2c``: VMs sold
under one model name differ in their ISA, and so do their results), the GPU model on
a GPU (``h100``, ``a100``; ``-x8`` when several are used), ``tpu-v5e`` on a TPU.

``measure_peaks()`` measures, at the start of every run:
- compute peak (``matmul_flops_per_s``, a name kept for the results' schema): the best FLOP/s of
  jitted square matmuls (2 n^3 FLOPs each) over a few sizes, in float32 (default precision: TF32
  where the backend uses it for float32, as it does for the convs measured against it) and bfloat16
  (on CPUs without bf16 units XLA emulates it; it is still the bfloat16 peak the convs can be
  compared with). On a CPU with oneDNN built, the float32 peak is the
  better of that and oneDNN's 3x3 conv (256 -> 256 channels, 14x14, batch 64), which jaxconv runs and
  which beats XLA's matmul there (the 2-core Xeon: 309 against 234 GFLOP/s; AlexNet-32 trained at 113%
  of XLA's matmul peak);
- memory bandwidth: the bytes/s of ``x = x + 1`` in place on a large float32 array (reads and writes
  it: 2 * size bytes; donated, so no allocation is timed), the roofline's slope.
A conv of arithmetic intensity I (FLOPs per byte of its minimum traffic) can reach at most
``min(peak, I * bandwidth)`` FLOP/s: ``roofline()``.
"""

from __future__ import annotations

import functools
import os
import platform
import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv.models import conv_impls
from jaxconv.timing import time_calls


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_vector_isa() -> str:
    """The widest x86 vector extension the CPU has ("AVX-512", "AVX2", else ""): machines sold under one
    model name differ in it (the 2-core EPYC VMs: Zen 3 with AVX2, Zen 4 with AVX-512), and so do the
    native kernels' tiles and oneDNN's kernels."""
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        return ""
    words = set(flags.split())
    return "AVX-512" if "avx512f" in words else "AVX2" if "avx2" in words else ""


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def results_name(devices: int | None = None) -> str:
    """The results directory's name for the default backend (see the module docstring)."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        model = _slug(re.sub(r"\(R\)|\(TM\)|CPU|Processor|@.*", "", cpu_model())) or "unknown"
        isa = _slug(cpu_vector_isa()).replace("-", "")
        return f"cpu-{model}-{isa + '-' if isa else ''}{os.cpu_count()}c"
    kind = device.device_kind or device.platform
    if device.platform == "gpu" or "nvidia" in kind.lower() or "amd" in kind.lower():
        words = _slug(kind).replace("nvidia-", "").replace("amd-", "").split("-")
        name = next((w for w in words if re.fullmatch(r"[a-z]+\d+[a-z]*", w)), "-".join(words[:2]))
    else:
        name = _slug(kind)
    count = devices if devices is not None else 1
    return name + (f"-x{count}" if count > 1 else "")


def environment(torch: bool = True) -> dict:
    """Machine and software, for every result file (``torch=False``: PyTorch is not imported)."""
    device = jax.devices()[0]
    try:
        if not torch:
            raise ImportError
        import torch

        torch_info = {"version": torch.__version__, "threads": torch.get_num_threads(),
                      "cuda": torch.cuda.is_available(),
                      "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None}
    except ImportError:
        torch_info = None
    import flax

    return {
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "cpu_model": cpu_model(),
        "cpu_vector_isa": cpu_vector_isa(),
        "cpu_cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "jax": jax.__version__,
        "jaxlib": getattr(__import__("jaxlib"), "__version__", ""),
        "flax": flax.__version__,
        "numpy": np.__version__,
        "torch": torch_info,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "platform": platform.platform(),
    }


def _matmul_sizes(quick: bool, dtype) -> list[int]:
    if quick:
        return [256]
    if jax.default_backend() == "cpu":
        return [512, 1024] if dtype == jnp.bfloat16 else [1024, 2048]
    return [4096, 8192]


def _onednn_conv_rate(rng, batch: int, timing: dict) -> tuple[float, dict]:
    """FLOP/s of oneDNN's 3x3 conv, 256 -> 256 channels on 14x14 ("same" padding), and its measurement."""
    x = jnp.asarray(rng.standard_normal((batch, 14, 14, 256), np.float32))
    kernel = jnp.asarray(rng.standard_normal((3, 3, 256, 256), np.float32))
    f = jax.jit(functools.partial(conv_impls.conv_onednn, strides=(1, 1), padding=((1, 1), (1, 1)), dilation=(1, 1),
                                  groups=1))
    t = time_calls(lambda: f(x, kernel), **timing)
    rate = 2.0 * batch * 14 * 14 * 256 * 256 * 9 / t["median_s"]
    return rate, {"op": "onednn 3x3 conv", "dtype": "float32", "shape": [batch, 14, 14, 256, 256, 3],
                  "median_s": t["median_s"], "flops_per_s": rate}


def measure_peaks(quick: bool = False, repeats: int = 5) -> dict:
    """Peak FLOP/s per dtype and copy bandwidth (bytes/s), measured now on the default device."""
    rng = np.random.default_rng(0)
    matmul, details = {}, []
    timing = dict(repeats=3 if quick else repeats, min_time=0.01 if quick else 0.2, budget=2.0 if quick else 20.0)
    for dtype in (jnp.float32, jnp.bfloat16):
        best = 0.0
        for n in _matmul_sizes(quick, dtype):
            a = jnp.asarray(rng.standard_normal((n, n), np.float32), dtype)
            b = jnp.asarray(rng.standard_normal((n, n), np.float32), dtype)
            f = jax.jit(jnp.matmul)
            t = time_calls(lambda: f(a, b), **timing)
            rate = 2.0 * n ** 3 / t["median_s"]
            details.append({"op": "matmul", "dtype": jnp.dtype(dtype).name, "n": n, "median_s": t["median_s"],
                            "flops_per_s": rate})
            best = max(best, rate)
        if dtype == jnp.float32 and jax.default_backend() == "cpu" and conv_impls.built("onednn"):
            rate, detail = _onednn_conv_rate(rng, 4 if quick else 64, timing)
            details.append(detail)
            best = max(best, rate)
        matmul[jnp.dtype(dtype).name] = best
    words = 1 << (20 if quick else (26 if jax.default_backend() == "cpu" else 28))  # 4 MiB / 256 MiB / 1 GiB
    # In place (the input donated, the output fed back): no fresh allocation, so no page faults, are timed.
    f = jax.jit(lambda v: v + 1.0, donate_argnums=0)
    holder = {"x": jnp.zeros((words,), jnp.float32)}

    def add_one():
        holder["x"] = f(holder["x"])
        return holder["x"]

    t = time_calls(add_one, repeats=1 if quick else repeats, min_time=0.0 if quick else 0.2,
                   budget=2.0 if quick else 20.0)
    bandwidth = 2.0 * 4 * words / t["median_s"]
    details.append({"op": "add_in_place", "dtype": "float32", "bytes": 2 * 4 * words, "median_s": t["median_s"],
                    "bytes_per_s": bandwidth})
    return {"matmul_flops_per_s": matmul, "memory_bytes_per_s": bandwidth, "measurements": details}


def roofline(peaks: dict, dtype: str, intensity: float) -> float:
    """The attainable FLOP/s at ``intensity`` FLOPs/byte: min(compute peak, intensity * bandwidth)."""
    return min(peaks["matmul_flops_per_s"][dtype], intensity * peaks["memory_bytes_per_s"])
