"""How ``jaxconv bench conv`` runs a conv: the variants, their JAX and PyTorch runners, and the reference
every variant must agree with.

A variant turns canonical NHWC/HWIO data into its layout and computes ``shape.outputs(mode)``: (y,),
(dx, dw), (dx,) or (dw,); the backward passes through ``jax.vjp`` / ``torch.autograd``, or, for
PyTorch's single-pass modes, ``aten.convolution_backward`` (the kernel autograd itself calls). Variants:

- JAX, NHWC: ``xla`` (``lax.conv_general_dilated``), ``im2col``, ``taps``, ``fft`` (float32, kernels
  of 25 taps or more) from ``jaxconv.models.conv_impls``; masked shapes: ``masked`` and ``cropped``, the
  ``MaskedConv2D`` layer in either form (its bias is zero), instead of ``xla``;
- JAX, NCHW: ``xla`` with NCHW/OIHW dimension numbers;
- PyTorch (optional, ``pip install "jaxconv[bench]"``): ``torch.nn.functional.conv2d``, NCHW
  (contiguous) and NHWC (``channels_last``); oneDNN on CPU, cuDNN on GPU (``cudnn.benchmark`` on).

The reference: XLA's conv in float32 at HIGHEST precision on the same (dtype-rounded) data. A variant's
outputs, back in NHWC/HWIO, agree when max |error| / max |reference| is at most ``TOLERANCE[dtype]``.
``calibrate_torch`` measures PyTorch's FLOP/s on a medium conv, to predict its slow cases.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv.bench.conv_shapes import ConvShape
from jaxconv.models import conv as conv_lib
from jaxconv.models import conv_impls
from jaxconv.models.masked import MaskedConv2D, masked_to_cropped, raster_mask

TOLERANCE = {"float32": 5e-3, "bfloat16": 5e-2}  # max |err| / max |ref|; float32 allows TF32 on GPUs


@dataclasses.dataclass
class Variant:
    impl: str
    framework: str  # "jax" | "torch"
    layout: str  # "NHWC" | "NCHW"
    applies: Callable[[ConvShape, str], bool] = lambda shape, dtype: True


def _jax_fn(impl: str, shape: ConvShape, layout: str) -> Callable:
    """(x, w) in ``layout`` (NCHW pairs with OIHW) -> y in ``layout``, the mask applied inside."""
    mask = jnp.asarray(raster_mask(shape.kh, shape.cin, shape.cout, shape.colours, shape.mask)) if shape.mask else None
    if impl in ("masked", "cropped"):
        layer = MaskedConv2D(shape.cout, shape.kh, shape.mask, shape.colours, shape.dilation[0], form=impl)
        bias = jnp.zeros((shape.cout,), jnp.float32)

        def fn(x, w):
            params = {"kernel": w, "bias": bias}
            if impl == "cropped":
                params = masked_to_cropped(params)
            return layer.clone(dtype=x.dtype).apply({"params": params}, x, padded=True)

        return fn
    if layout == "NCHW":
        def fn(x, w):
            if mask is not None:
                w = w * jnp.transpose(mask, (3, 2, 0, 1)).astype(w.dtype)
            return jax.lax.conv_general_dilated(x, w, shape.stride, shape.padding, rhs_dilation=shape.dilation,
                                                feature_group_count=shape.groups,
                                                dimension_numbers=("NCHW", "OIHW", "NCHW"))
        return fn
    def fn(x, w):  # any jaxconv.models.conv implementation, "forward/input_grad/kernel_grad" triples included
        if mask is not None:
            w = w * mask.astype(w.dtype)
        return conv_lib.conv(x, w, shape.stride, shape.padding, shape.dilation, shape.groups, impl=impl)

    return fn


def _plain(shape, dtype):
    return not shape.mask


def _fft_applies(shape, dtype):
    return conv_impls.supports("fft", dtype) and shape.kh * shape.kw >= 25


VARIANTS: list[Variant] = [
    Variant("xla", "jax", "NHWC", _plain),
    Variant("masked", "jax", "NHWC", lambda s, d: bool(s.mask)),
    Variant("cropped", "jax", "NHWC", lambda s, d: bool(s.mask)),
    Variant("xla", "jax", "NCHW"),
    Variant("im2col", "jax", "NHWC"),
    Variant("taps", "jax", "NHWC", lambda s, d: 1 < s.kh * s.kw <= 49),  # one tap: the same matmul as im2col
    Variant("fft", "jax", "NHWC", _fft_applies),
    Variant("torch", "torch", "NCHW"),
    Variant("torch", "torch", "NHWC"),
]
# Extra JAX implementations by name -> fn(shape, layout) -> (x, w) -> y; tests register wrong ones here.
EXTRA_JAX: dict[str, Callable[[ConvShape, str], Callable]] = {}


def _to_layout(x: np.ndarray, w: np.ndarray, layout: str) -> tuple[np.ndarray, np.ndarray]:
    return (x, w) if layout == "NHWC" else (x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1))


def _y_to_nhwc(y: np.ndarray, layout: str) -> np.ndarray:
    return y if layout == "NHWC" else y.transpose(0, 2, 3, 1)


def _w_to_hwio(w: np.ndarray, layout: str) -> np.ndarray:
    return w if layout == "NHWC" else w.transpose(2, 3, 1, 0)


def _outputs_to_canonical(outs: list[np.ndarray], kinds: list[str], layout: str) -> list[np.ndarray]:
    return [_w_to_hwio(o, layout) if k == "w" else _y_to_nhwc(o, layout) for o, k in zip(outs, kinds, strict=True)]


def _pass_fn(fn: Callable, shape: ConvShape, mode: str) -> Callable:
    """(x, w, g) -> the tuple ``shape.outputs(mode)`` of the conv ``fn(x, w)``."""
    kinds = shape.outputs(mode)

    def f(x, w, g):
        if mode == "forward":
            return (fn(x, w),)
        if kinds == ["x", "w"]:
            return jax.vjp(fn, x, w)[1](g)
        if kinds == ["x"]:
            return jax.vjp(lambda v: fn(v, w), x)[1](g)
        return jax.vjp(lambda k: fn(x, k), w)[1](g)

    return f


@dataclasses.dataclass
class Runner:
    """A variant ready to run on one case: ``call()`` computes ``shape.outputs(mode)`` in ``layout``,
    ``sync(result)`` waits for it (``jaxconv.bench.timing``)."""

    call: Callable[[], Any]
    sync: Callable[[Any], Any]
    compile_s: float  # JAX: lowering + compilation; PyTorch: the first call (cuDNN autotuning on GPUs)
    kinds: list[str]
    layout: str  # of the outputs: "NHWC" (NHWC/HWIO) or "NCHW" (NCHW/OIHW)
    first_outputs: list[np.ndarray] | None = None  # PyTorch: the outputs of the first call, made already

    def check_call(self) -> tuple[list[np.ndarray], float]:
        """One call: its outputs as float32 arrays in NHWC/HWIO, and its time (timing's first estimate)."""
        start = time.perf_counter()
        out = self.sync(self.call())
        elapsed = time.perf_counter() - start
        if self.first_outputs is not None:
            outs = self.first_outputs
        else:
            outs = [np.asarray(jnp.asarray(o, jnp.float32)) for o in jax.tree.leaves(out)]
        return _outputs_to_canonical(outs, self.kinds, self.layout), elapsed


def prepare(variant: Variant, shape: ConvShape, mode: str, dtype: str, x, w, g) -> Runner:
    """``variant`` compiled (JAX) or called once (PyTorch) on the canonical float32 NHWC/HWIO data x, w and
    the output gradient g, cast to ``dtype``."""
    if variant.framework == "torch":
        return _torch_runner(shape, mode, x, w, g, variant.layout, dtype)
    make = EXTRA_JAX.get(variant.impl)
    fn = make(shape, variant.layout) if make else _jax_fn(variant.impl, shape, variant.layout)
    xl, wl = _to_layout(x, w, variant.layout)
    gl = _to_layout(g, w, variant.layout)[0]
    cast = lambda a: jnp.asarray(a, jnp.dtype(dtype))
    return _jax_runner(fn, shape, mode, cast(xl), cast(wl), cast(gl), variant.layout)


def _jax_runner(fn: Callable, shape: ConvShape, mode: str, x, w, g, layout: str) -> Runner:
    f = jax.jit(_pass_fn(fn, shape, mode))
    args = (x, w, g)
    start = time.perf_counter()
    compiled = f.lower(*args).compile()
    compile_s = time.perf_counter() - start
    return Runner(lambda: compiled(*args), jax.block_until_ready, compile_s, shape.outputs(mode), layout)


def _torch_runner(shape: ConvShape, mode: str, x_np, w_np, g_np, layout: str, dtype: str) -> Runner:
    import torch

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    fmt = torch.channels_last if layout == "NHWC" else torch.contiguous_format
    # torch tensors are logically NCHW / OIHW; layout = memory format
    to = lambda a: torch.from_numpy(np.array(a, np.float32, copy=True, order="C")).to(dev, tdtype)
    x = to(x_np.transpose(0, 3, 1, 2)).contiguous(memory_format=fmt)
    w = to(w_np.transpose(3, 2, 0, 1)).contiguous(memory_format=fmt)
    g = to(g_np.transpose(0, 3, 1, 2)).contiguous(memory_format=fmt)
    mask = None
    if shape.mask:
        mask = to(raster_mask(shape.kh, shape.cin, shape.cout, shape.colours, shape.mask).transpose(3, 2, 0, 1))
        mask = mask.contiguous(memory_format=fmt)
    kwargs = dict(stride=shape.stride, dilation=shape.dilation, groups=shape.groups)
    (pt, pb), (pl, pr) = shape.padding
    symmetric = pt == pb and pl == pr
    kinds = shape.outputs(mode)

    def forward(x, w):
        if mask is not None:
            w = w * mask
        if not symmetric:
            x = torch.nn.functional.pad(x, (pl, pr, pt, pb))
        return torch.nn.functional.conv2d(x, w, padding=(pt, pl) if symmetric else 0, **kwargs)

    if mode == "forward":
        def call():
            with torch.no_grad():
                return (forward(x, w),)
    elif mode == "forward_backward" or not symmetric:  # autograd (asymmetric padding: a pad, then conv2d)
        xg, wg = x.detach().requires_grad_("x" in kinds), w.detach().requires_grad_()

        def call():
            y = forward(xg, wg)
            grads = torch.autograd.grad(y, [v for v, k in ((xg, "x"), (wg, "w")) if k in kinds], g)
            return grads
    else:  # one backward pass alone: the kernel autograd itself calls
        w_eff = w * mask if mask is not None else w
        output_mask = [mode == "input_grad", mode == "kernel_grad", False]

        def call():
            with torch.no_grad():
                gx, gw, _ = torch.ops.aten.convolution_backward(g, x, w_eff, None, list(shape.stride), [pt, pl],
                                                                list(shape.dilation), False, [0, 0], shape.groups,
                                                                output_mask)
            return (gx,) if mode == "input_grad" else (gw * mask if mask is not None else gw,)

    def sync(_):
        if dev == "cuda":
            torch.cuda.synchronize()

    start = time.perf_counter()
    outs = [o.detach().float().cpu().contiguous().numpy() for o in call()]
    compile_s = time.perf_counter() - start
    # torch tensors are NCHW / OIHW whatever their memory format
    return Runner(call, sync, compile_s, kinds, "NCHW", first_outputs=outs)


def reference(shape: ConvShape, mode: str, x, w, g) -> list[np.ndarray]:
    """XLA's conv in float32 at HIGHEST precision: ``shape.outputs(mode)``, NHWC/HWIO."""
    mask = raster_mask(shape.kh, shape.cin, shape.cout, shape.colours, shape.mask) if shape.mask else None

    def fn(x, w):
        if mask is not None:
            w = w * mask
        return jax.lax.conv_general_dilated(x, w, shape.stride, shape.padding, rhs_dilation=shape.dilation,
                                            feature_group_count=shape.groups, precision=jax.lax.Precision.HIGHEST,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    f32 = lambda a: jnp.asarray(a, jnp.float32)
    outs = jax.jit(_pass_fn(fn, shape, mode))(f32(x), f32(w), f32(g))
    return [np.asarray(a) for a in outs]


def calibrate_torch(dtypes) -> dict[str, float]:
    """PyTorch's forward FLOP/s per dtype on a medium conv (8x32x32x64 -> 64, 3x3: 0.6 GFLOP), best of 3."""
    import torch

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    rates = {}
    for dtype in dtypes:
        tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
        x = torch.randn(8, 64, 32, 32, device=dev).to(tdtype)
        w = torch.randn(64, 64, 3, 3, device=dev).to(tdtype)
        best = math.inf
        with torch.no_grad():
            for _ in range(3):
                start = time.perf_counter()
                torch.nn.functional.conv2d(x, w, padding=1)
                if dev == "cuda":
                    torch.cuda.synchronize()
                best = min(best, time.perf_counter() - start)
        rates[dtype] = 2.0 * 8 * 32 * 32 * 64 * 64 * 9 / best
    return rates


def relative_error(outs: list[np.ndarray], refs: list[np.ndarray]) -> float:
    """max over the arrays of max |out - ref| / max |ref| (inf on a shape mismatch or a non-finite value)."""
    worst = 0.0
    for out, ref in zip(outs, refs, strict=True):
        out = np.asarray(out, np.float32)
        if out.shape != ref.shape:
            return math.inf
        scale = max(float(np.max(np.abs(ref))), 1e-30)
        err = float(np.max(np.abs(out - ref))) / scale
        if not math.isfinite(err):
            return math.inf
        worst = max(worst, err)
    return worst


def use_torch(wanted: bool) -> bool:
    """Whether the PyTorch variants run: ``wanted`` and PyTorch installed; turns cuDNN's autotuner on."""
    if not wanted:
        return False
    try:
        import torch
    except ImportError:
        return False
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
    return True


def torch_settings() -> dict:
    import torch

    return {"threads": torch.get_num_threads(), "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32)}


