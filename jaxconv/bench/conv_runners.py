"""How ``jaxconv bench conv`` runs a conv: the variants, their JAX and PyTorch runners, and the reference
every variant must agree with.

A variant turns canonical NHWC/HWIO data into its layout and computes ``shape.outputs(mode)``: (y,),
(dx, dw), (dx,) or (dw,); the backward passes through ``jax.vjp`` / ``torch.autograd``, or, for
PyTorch's single-pass modes, ``aten.convolution_backward`` (the kernel autograd itself calls). Variants:

- JAX, NHWC: ``xla`` (``lax.conv_general_dilated``), ``im2col``, ``taps``, ``fft`` (float32, kernels
  of 25 taps or more), ``native`` (float32, one group) from ``jaxconv.models.conv_impls``, on a masked
  shape the dense kxk conv of the masked kernel; masked shapes also: ``masked`` and ``cropped``, the
  ``MaskedConv2D`` layer in either form (its bias is zero; both run one (r+1) x k conv, the rows up to
  the centre);
- JAX, NCHW: ``xla`` with NCHW/OIHW dimension numbers;
- PyTorch (optional, ``pip install "jaxconv[bench]"``): ``torch.nn.functional.conv2d``, NCHW
  (contiguous) and NHWC (``channels_last``); oneDNN on CPU, cuDNN on GPU (``cudnn.benchmark`` on);
- a user's kernels, NHWC (``UserKernel``; ``jaxconv bench conv --impl module:function``, ``load_kernel``):
  any ``fn(x, kernel, strides, padding, dilation, groups) -> y`` with the signature and semantics of
  ``jaxconv.models.conv_impls``'s implementations, named ``module:function`` (``stem:function`` for a
  .py file); on masked shapes it gets the masked kernel, as ``im2col`` and ``taps`` do.

The reference: XLA's conv in float32 at HIGHEST precision on the same (dtype-rounded) data. A variant's
outputs, back in NHWC/HWIO, agree when max |error| / max |reference| is at most ``TOLERANCE[dtype]``.
``calibrate_torch`` measures PyTorch's FLOP/s on a medium conv, to predict its slow cases.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv.bench.conv_shapes import ConvShape
from jaxconv.errors import ConfigError
from jaxconv.models import conv as conv_lib
from jaxconv.models import conv_impls
from jaxconv.models.masked import MaskedConv2D, masked_to_cropped, raster_mask

TOLERANCE = conv_impls.TOLERANCE


@dataclasses.dataclass
class Variant:
    impl: str
    framework: str  # "jax" | "torch"
    layout: str  # "NHWC" | "NCHW"
    applies: Callable[[ConvShape, str], bool] = lambda shape, dtype: True
    fn: Callable | None = None  # a user's kernel (``UserKernel``), NHWC; None: ``impl`` names a built-in


def _jax_fn(impl: str, shape: ConvShape, layout: str, user_fn: Callable | None = None) -> Callable:
    """(x, w) in ``layout`` (NCHW pairs with OIHW) -> y in ``layout``, the mask applied inside;
    ``user_fn``: a user's kernel (NHWC) instead of ``impl``."""
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
        if user_fn is not None:
            return user_fn(x, w, shape.stride, shape.padding, shape.dilation, shape.groups)
        return conv_lib.conv(x, w, shape.stride, shape.padding, shape.dilation, shape.groups, impl=impl)

    return fn


def _fft_applies(shape, dtype):
    return conv_impls.supports("fft", dtype) and shape.kh * shape.kw >= 25


VARIANTS: list[Variant] = [
    Variant("xla", "jax", "NHWC"),
    Variant("masked", "jax", "NHWC", lambda s, d: bool(s.mask)),
    Variant("cropped", "jax", "NHWC", lambda s, d: bool(s.mask)),
    Variant("xla", "jax", "NCHW"),
    Variant("split", "jax", "NHWC", lambda s, d: s.groups > 1),  # one group: the same program as xla
    Variant("im2col", "jax", "NHWC"),
    Variant("taps", "jax", "NHWC", lambda s, d: 1 < s.kh * s.kw <= 49),  # one tap: the same matmul as im2col
    Variant("fft", "jax", "NHWC", _fft_applies),
    Variant("native", "jax", "NHWC", lambda s, d: d == "float32" and s.groups == 1),  # else the same as xla
    Variant("onednn", "jax", "NHWC", lambda s, d: d == "float32"),  # else the same as xla
    Variant("torch", "torch", "NCHW"),
    Variant("torch", "torch", "NHWC"),
]
BUILTIN_IMPLS = tuple(dict.fromkeys(v.impl for v in VARIANTS))


@dataclasses.dataclass(frozen=True)
class UserKernel:
    """A user's conv implementation in the sweep: ``fn(x, kernel, strides, padding, dilation, groups) -> y``,
    x NHWC, kernel HWIO, ``padding`` explicit ((top, bottom), (left, right); a negative side crops),
    ``strides`` and ``dilation`` pairs, as ``jaxconv.models.conv_impls``'s implementations; it runs under
    ``jax.jit``, its gradients through ``jax.vjp`` (a ``jax.custom_vjp``'s rule when it has one). ``name``: its
    ``impl`` in the results."""

    name: str
    fn: Callable
    source: str = ""  # what --impl said

    def variant(self) -> Variant:
        return Variant(self.name, "jax", "NHWC", fn=self.fn)


KERNEL_SIGNATURE = "fn(x, kernel, strides, padding, dilation, groups)"


def load_kernel(spec: str) -> UserKernel:
    """``--impl MODULE:FUNCTION``: MODULE an importable module (``import MODULE``) or a path to a .py file,
    FUNCTION a callable in it (``a.b`` for an attribute's attribute). ConfigError (one line) when the text,
    the module or file, the function or its signature is wrong, or importing the module fails."""
    module, colon, attr = spec.rpartition(":")
    if not colon or not module or not attr or not all(p.isidentifier() for p in attr.split(".")):
        raise ConfigError(f"--impl {spec!r}: expected MODULE:FUNCTION (a module name or a .py file, then a "
                          f"function {KERNEL_SIGNATURE} -> y), e.g. my_kernels.py:conv")
    is_file = module.endswith(".py") or "/" in module or "\\" in module
    if is_file:
        path = Path(module).expanduser()
        if not path.is_file():
            raise ConfigError(f"--impl {spec!r}: no file {module}")
        mod = _import_file(spec, path)
        prefix = path.stem
    else:
        if not all(p.isidentifier() for p in module.split(".")):
            raise ConfigError(f"--impl {spec!r}: {module!r} is neither a module name nor a .py file")
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and (module == e.name or module.startswith(e.name + ".")):
                raise ConfigError(f"--impl {spec!r}: no module named {e.name!r} on the Python path "
                                  f"(a file: give its path, {module.replace('.', '/')}.py:{attr})") from None
            raise ConfigError(f"--impl {spec!r}: importing {module} failed: {_one_line(e)}") from None
        except Exception as e:
            raise ConfigError(f"--impl {spec!r}: importing {module} failed: {_one_line(e)}") from None
        prefix = module
    fn = mod
    for part in attr.split("."):
        if not hasattr(fn, part):
            public = sorted(n for n, v in vars(mod).items() if callable(v) and not n.startswith("_")
                            and not isinstance(v, type) and getattr(v, "__module__", None) == mod.__name__)
            defined = f" (its functions: {', '.join(public[:12])})" if public else ""
            raise ConfigError(f"--impl {spec!r}: {module} has no {attr!r}{defined}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise ConfigError(f"--impl {spec!r}: {attr} is not callable ({type(fn).__name__} {fn!r:.40}); expected a "
                          f"function {KERNEL_SIGNATURE}")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # some callables have none: the first call will tell
        sig = None
    if sig is not None:
        try:
            sig.bind(*range(6))
        except TypeError:
            raise ConfigError(f"--impl {spec!r}: {attr}{sig} cannot be called as {KERNEL_SIGNATURE}") from None
    return UserKernel(f"{prefix}:{attr}", fn, spec)


def check_kernel_names(kernels) -> None:
    """ConfigError when a user kernel has a built-in's name or another kernel's (two files of one stem)."""
    seen: dict[str, UserKernel] = {}
    for kernel in kernels:
        what = f"--impl {kernel.source!r}" if kernel.source else f"user kernel {kernel.name!r}"
        if kernel.name in BUILTIN_IMPLS:
            raise ConfigError(f"{what}: {kernel.name!r} is a built-in implementation's name")
        if kernel.name in seen:
            other = seen[kernel.name].source or kernel.name
            raise ConfigError(f"{what}: named {kernel.name!r} like --impl {other!r} (rename one file or function)")
        seen[kernel.name] = kernel


def _import_file(spec: str, path: Path):
    """The module of a .py file, executed once per file (``sys.modules``, under a name of its path)."""
    resolved = path.resolve()
    name = f"jaxconv_user_kernels_{resolved.stem}_{hashlib.sha1(str(resolved).encode()).hexdigest()[:10]}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, resolved)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"--impl {spec!r}: {path} cannot be imported as a Python module")
    mod = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = mod  # dataclasses and pickling look a module up by name while it runs
    try:
        module_spec.loader.exec_module(mod)
    except BaseException as e:
        del sys.modules[name]
        if not isinstance(e, Exception):
            raise
        raise ConfigError(f"--impl {spec!r}: importing {path} failed: {_one_line(e)}") from None
    return mod


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300]}" if text else type(e).__name__


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
    ``sync(result)`` waits for it (``jaxconv.timing``)."""

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


def prepare(variant: Variant, shape: ConvShape, mode: str, dtype: str, x, w, g,
            compiler_options: dict[str, str] | None = None) -> Runner:
    """``variant`` compiled (JAX, with XLA's ``compiler_options``: the conv policy's) or called once
    (PyTorch) on the canonical float32 NHWC/HWIO data x, w and the output gradient g, cast to ``dtype``."""
    if variant.framework == "torch":
        return _torch_runner(shape, mode, x, w, g, variant.layout, dtype)
    fn = _jax_fn(variant.impl, shape, variant.layout, variant.fn)
    xl, wl = _to_layout(x, w, variant.layout)
    gl = _to_layout(g, w, variant.layout)[0]
    cast = lambda a: jnp.asarray(a, jnp.dtype(dtype))
    return _jax_runner(fn, shape, mode, cast(xl), cast(wl), cast(gl), variant.layout, compiler_options)


def _jax_runner(fn: Callable, shape: ConvShape, mode: str, x, w, g, layout: str,
                compiler_options: dict[str, str] | None) -> Runner:
    f = jax.jit(_pass_fn(fn, shape, mode))
    args = (x, w, g)
    start = time.perf_counter()
    compiled = f.lower(*args).compile(compiler_options=compiler_options)
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


def shape_mismatch(outs: list[np.ndarray], refs: list[np.ndarray]) -> str | None:
    """"output shape (...) != reference (...)" for the first output of the wrong shape, else None."""
    for out, ref in zip(outs, refs, strict=True):
        if np.shape(out) != ref.shape:
            return f"output shape {tuple(np.shape(out))} != reference {ref.shape}"
    return None


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


