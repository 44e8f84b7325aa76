"""``jaxconv bench conv``: every conv layer shape of jaxconv's models, implementation by implementation.

Shapes (``shape_sets``): the layers of jaxconv's presets, found by tracing them
(``jaxconv.bench.models``; LeNet-5 faithful and modern, PixelCNN and Gated PixelCNN, MNIST, CIFAR and
ImageNet32 sizes, 1x1 layers included), the kxk masked layers of PixelCNN (compared in their masked and
cropped forms), AlexNet's layers as data (``ALEXNET_224``, ``ALEXNET_32``), and user shapes
(``--shape N,H,W,Cin,Cout,K,stride,dil[,groups]``, padded by dil*(K-1)//2 each side). Identical
shapes are measured once and list every layer that uses them.

For each shape, batch size, dtype (float32, bfloat16) and mode, the variants run on the same data.
Modes: ``forward``; ``forward_backward``: the output, then through ``jax.vjp`` / ``torch.autograd``
the kernel gradient and the input gradient, except for layers fed by the image (``input_grad=False``:
LeNet C1, AlexNet conv1, the PixelCNN first layers), whose input gradient training never computes;
opt-in (``--modes``), ``input_grad`` and ``kernel_grad``: one backward pass alone, for per-pass
autotuning. Variants:

- JAX, NHWC: ``xla`` (``lax.conv_general_dilated``), ``im2col``, ``taps``, ``fft`` (float32, kernels
  of 25 taps or more) from ``jaxconv.models.conv``; masked shapes: ``masked`` and ``cropped``, the
  ``MaskedConv2D`` layer in either form (its bias is zero), instead of ``xla``; plus the default path
  when a rule makes it something else (a "forward/input_grad/kernel_grad" triple, say);
- JAX, NCHW: ``xla`` with NCHW/OIHW dimension numbers;
- PyTorch (optional, ``pip install "jaxconv[bench]"``): ``torch.nn.functional.conv2d``, NCHW
  (contiguous) and NHWC (``channels_last``); oneDNN on CPU, cuDNN on GPU (``cudnn.benchmark`` on);
  the single-pass modes call ``aten.convolution_backward``, the kernel autograd runs.

Agreement first: every variant's outputs, back in NHWC/HWIO, are compared with XLA's conv in float32
at HIGHEST precision on the same (dtype-rounded) data; a variant whose max |error| / max |reference|
exceeds ``TOLERANCE[dtype]`` is a "mismatch": reported, not timed, never the winner. Then each
agreeing variant is timed (``jaxconv.bench.timing``); a PyTorch variant predicted (from PyTorch's
FLOP/s on a medium conv, measured at the start) to take over ``max_call_s`` per call is "skipped"
(PyTorch's bfloat16 conv on CPUs without bf16 units runs at well under 1 GFLOP/s).

The default path (what the conv policy picks, the layers' choice: ``jaxconv.models.conv_policy``) is
reported against PyTorch's best layout: ``default_vs_torch`` > 1 means jaxconv is faster.
``conv_table.json`` (the fastest ``jaxconv.models.conv_impls`` implementation per layer signature and
dtype: a per-pass triple when the single-pass modes were measured) is an autotune table:
``--set conv.table=benchmarks/results/<device>/conv_table.json`` (or ``JAXCONV_CONV_TABLE=...``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv.bench import device as device_lib
from jaxconv.bench.models import masked_layers, preset_image, traced_convs
from jaxconv.bench.timing import time_calls
from jaxconv.errors import ConfigError
from jaxconv.models import conv as conv_lib
from jaxconv.models import conv_impls
from jaxconv.models.conv import DEFAULT_POLICY
from jaxconv.models.conv_policy import ConvPolicy, signature
from jaxconv.models.masked import MaskedConv2D, masked_to_cropped, raster_mask

MODES = ("forward", "forward_backward")  # the default sweep
PASS_MODES = ("input_grad", "kernel_grad")  # opt-in: one backward pass alone (per-pass autotuning)
ALL_MODES = MODES + PASS_MODES
DTYPES = ("float32", "bfloat16")
TOLERANCE = {"float32": 5e-3, "bfloat16": 5e-2}  # max |err| / max |ref|; float32 allows TF32 on GPUs


@dataclasses.dataclass(frozen=True)
class ConvShape:
    """One conv layer (without its batch size); the input is NHWC [B, height, width, cin]."""

    name: str
    height: int
    width: int
    cin: int
    cout: int
    kh: int
    kw: int
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    padding: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))
    groups: int = 1
    mask: str | None = None  # "A"/"B": a MaskedConv2D (k x k, padding applied to the input already)
    colours: int = 1
    sources: tuple[str, ...] = ()
    input_grad: bool = True  # False for layers fed by the image: training never needs their input gradient

    @property
    def kind(self) -> str:
        return "masked" if self.mask else "conv"

    def out_hw(self) -> tuple[int, int]:
        return (conv_impls.out_size(self.height, self.kh, self.stride[0], self.dilation[0], self.padding[0]),
                conv_impls.out_size(self.width, self.kw, self.stride[1], self.dilation[1], self.padding[1]))

    def geometry(self) -> tuple:
        return (self.height, self.width, self.cin, self.cout, self.kh, self.kw, self.stride, self.dilation,
                self.padding, self.groups)

    def forward_flops(self, batch: int) -> float:
        ho, wo = self.out_hw()
        return 2.0 * batch * ho * wo * self.cout * (self.cin // self.groups) * self.kh * self.kw

    def outputs(self, mode: str) -> list[str]:
        """What a mode computes: "y" (output), "x" (input gradient), "w" (kernel gradient)."""
        return {"forward": ["y"], "forward_backward": ["x", "w"] if self.input_grad else ["w"],
                "input_grad": ["x"], "kernel_grad": ["w"]}[mode]

    def mode_flops(self, batch: int, mode: str) -> float:
        """Forward FLOPs once per pass computed (a gradient pass costs what the forward does)."""
        passes = {"forward_backward": 1 + len(self.outputs(mode))}.get(mode, 1)
        return passes * self.forward_flops(batch)

    def mode_bytes(self, batch: int, mode: str) -> float:
        """Minimum traffic in elements: each pass reads two of x, w, y (or dy) and writes the third."""
        nx, nw, ny = self.sizes(batch)
        passes = {"forward_backward": 1 + len(self.outputs(mode))}.get(mode, 1)
        return passes * (nx + nw + ny)

    def sizes(self, batch: int) -> tuple[int, int, int]:
        """Elements of x, w, y."""
        ho, wo = self.out_hw()
        return (batch * self.height * self.width * self.cin, self.kh * self.kw * (self.cin // self.groups) * self.cout,
                batch * ho * wo * self.cout)


def _same(k: int, d: int) -> tuple[int, int]:
    return (d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2)


def _alexnet(prefix: str, layers) -> list[ConvShape]:
    return [ConvShape(f"{prefix}:{name}", h, h, cin, cout, k, k, (s, s), (1, 1), ((p, p), (p, p)), g,
                      sources=(f"{prefix}:{name}",), input_grad=name != "conv1")
            for name, h, cin, cout, k, s, p, g in layers]


# Krizhevsky et al. 2012: 227x227 input (the 224 of the paper's text plus the padding its numbers imply);
# conv2, conv4, conv5 split over two GPUs = two feature groups.
ALEXNET_224 = _alexnet("alexnet224", [
    ("conv1", 227, 3, 96, 11, 4, 0, 1), ("conv2", 27, 96, 256, 5, 1, 2, 2), ("conv3", 13, 256, 384, 3, 1, 1, 1),
    ("conv4", 13, 384, 384, 3, 1, 1, 2), ("conv5", 13, 384, 256, 3, 1, 1, 2)])
# Ours, representative of a 32x32-input AlexNet (CIFAR-size): the paper's widths and groups, 5x5 then 3x3
# stride-1 "same" convs on 32, 16 and 8 pixel maps (2x2 pooling between). Update when
# jaxconv.models.alexnet lands (its presets will then be traced like the others).
ALEXNET_32 = _alexnet("alexnet32", [
    ("conv1", 32, 3, 96, 5, 1, 2, 1), ("conv2", 16, 96, 256, 5, 1, 2, 2), ("conv3", 8, 256, 384, 3, 1, 1, 1),
    ("conv4", 8, 384, 384, 3, 1, 1, 2), ("conv5", 8, 384, 256, 3, 1, 1, 2)])

# Shape sets: presets traced, or data; batch sizes (CPU, accelerator).
SETS: dict[str, dict] = {
    "lenet": {"presets": ("lenet5", "lenet5_modern"), "batches": ((64, 256), (256, 1024))},
    "alexnet224": {"shapes": ALEXNET_224, "batches": ((8,), (128,))},
    "alexnet32": {"shapes": ALEXNET_32, "batches": ((32,), (256,))},
    "pixelcnn_mnist": {"presets": ("pixelcnn_mnist", "gated_pixelcnn_mnist"), "batches": ((64,), (64, 256))},
    "pixelcnn_cifar": {"presets": ("gated_pixelcnn_cifar",), "batches": ((16,), (64,))},
    "pixelcnn_paper": {"presets": ("pixelcnn_cifar", "gated_pixelcnn_imagenet32"), "batches": ((2,), (64,))},
}

# --quick: tiny shapes covering every code path at the fewest compilations: (shape, batches, dtypes, modes).
QUICK_CASES = [
    (ConvShape("quick:strided-grouped", 9, 9, 4, 8, 3, 3, (2, 2), (1, 1), ((1, 1), (1, 1)), 2, sources=("quick",)),
     (2,), DTYPES, ("forward_backward",)),
    (ConvShape("quick:masked-B-rgb", 8, 8, 6, 6, 3, 3, mask="B", colours=3, sources=("quick",)), (2,), ("float32",), MODES),
    (ConvShape("quick:5x5-first", 12, 12, 1, 4, 5, 5, sources=("quick",), input_grad=False), (2,), ("float32",),
     ("forward_backward",)),
]


def parse_shape(text: str) -> ConvShape:
    """``N,H,W,Cin,Cout,K,stride,dil[,groups]`` -> (shape, batch). Padding: dil*(K-1)//2 each side."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in (8, 9) or min(values) < 1:
        raise ConfigError(f"--shape {text!r}: expected N,H,W,Cin,Cout,K,stride,dil[,groups] (positive ints)")
    n, h, w, cin, cout, k, s, d, *rest = values
    g = rest[0] if rest else 1
    if cin % g or cout % g:
        raise ConfigError(f"--shape {text!r}: groups={g} must divide Cin and Cout")
    pad = _same(k, d)
    shape = ConvShape(f"user:{text}", h, w, cin, cout, k, k, (s, s), (d, d), (pad, pad), g, sources=("user",))
    if min(shape.out_hw()) < 1:
        raise ConfigError(f"--shape {text!r}: the kernel does not fit the input")
    return dataclasses.replace(shape, name=f"user:{n},{h},{w},{cin},{cout},{k},{s},{d}" + (f",{g}" if g > 1 else "")), n


def _short_name(prefix: str, s: ConvShape) -> str:
    extra = "".join([f"/s{s.stride[0]}" if s.stride != (1, 1) else "", f"/d{s.dilation[0]}" if s.dilation != (1, 1) else "",
                     f"/g{s.groups}" if s.groups > 1 else "", f" mask {s.mask}" if s.mask else ""])
    return f"{prefix}:{s.height}x{s.width}x{s.cin}->{s.cout} {s.kh}x{s.kw}{extra}"


def _preset_shapes(prefix: str, presets) -> list[ConvShape]:
    """The presets' conv layers, one per geometry. A layer whose input channels are the image's is taken to
    be fed by the image (true of every jaxconv model): no input gradient unless another layer shares it."""
    merged: dict[tuple, ConvShape] = {}
    for preset in presets:
        channels = preset_image(preset)[2]
        for layer in masked_layers(preset):
            pad = ((0, 0), (0, 0))
            s = ConvShape("", layer["height"], layer["width"], layer["cin"], layer["cout"], layer["k"], layer["k"],
                          (1, 1), (layer["dilation"],) * 2, pad, 1, layer["mask"], layer["colours"],
                          input_grad=layer["mask"] != "A")
            key = s.geometry()
            old = merged.get(key)
            merged[key] = dataclasses.replace(s, sources=(old.sources if old else ()) + (layer["path"],),
                                              input_grad=s.input_grad or bool(old and old.input_grad))
        for path, c in traced_convs(preset):
            s = ConvShape("", c.height, c.width, c.cin, c.cout, c.kh, c.kw, c.stride, c.dilation, c.padding, c.groups,
                          input_grad=c.cin != channels)
            key = s.geometry()
            source = f"{preset}:{path.split('/', 1)[-1]}"
            old = merged.get(key, s)
            if source not in old.sources and not (old.mask and any(x.startswith(preset) for x in old.sources)):
                old = dataclasses.replace(old, sources=old.sources + (source,))
            if not old.mask:
                old = dataclasses.replace(old, input_grad=old.input_grad or s.input_grad)
            merged[key] = old
    return [dataclasses.replace(s, name=_short_name(prefix, s)) for s in merged.values()]


def shape_sets(names: list[str] | None = None, accelerator: bool = False) -> list[tuple[ConvShape, tuple[int, ...]]]:
    """(shape, batch sizes) for the named sets (default: all), model order."""
    names = list(SETS) if names is None else names
    out = []
    for name in names:
        if name not in SETS:
            raise ConfigError(f"unknown shape set {name!r}; sets: {', '.join(SETS)}")
        spec = SETS[name]
        shapes = spec["shapes"] if "shapes" in spec else _preset_shapes(name, spec["presets"])
        batches = spec["batches"][1 if accelerator else 0]
        out += [(s, batches) for s in shapes]
    return out


# ----------------------------------------------------------------------------------------------
# Variants: a variant turns canonical NHWC/HWIO data into its layout and computes (y,) or (dx, dw).


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


def _jax_runner(fn: Callable, shape: ConvShape, mode: str, x, w, g):
    """A compiled zero-argument call computing ``shape.outputs(mode)``; its compile time."""
    f = jax.jit(_pass_fn(fn, shape, mode))
    args = (x, w, g)
    start = time.perf_counter()
    compiled = f.lower(*args).compile()
    compile_s = time.perf_counter() - start
    return (lambda: compiled(*args)), compile_s


def _torch_runner(shape: ConvShape, mode: str, x_np, w_np, g_np, layout: str, dtype: str):
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

    def to_numpy(out):
        return [o.detach().float().cpu().contiguous().numpy() for o in out]

    return call, sync, to_numpy


def _reference(shape: ConvShape, mode: str, x, w, g) -> list[np.ndarray]:
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


def _torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def measure_case(shape: ConvShape, batch: int, dtype: str, mode: str, peaks: dict, *, variants: list[Variant],
                 timing: dict, torch_rates: dict | None = None, max_call_s: float | None = None, seed: int = 0,
                 policy: ConvPolicy = DEFAULT_POLICY) -> dict:
    """One row: agreement check of every variant, then timing of the agreeing ones.

    ``torch_rates``: PyTorch's FLOP/s per dtype on a medium conv (``calibrate_torch``); a PyTorch variant
    predicted to take more than ``max_call_s`` per call at that rate is skipped (its bfloat16 conv on
    CPUs without bf16 units runs at well under 1 GFLOP/s).
    """
    rng = np.random.default_rng(seed)
    ho, wo = shape.out_hw()
    fan_in = (shape.cin // shape.groups) * shape.kh * shape.kw
    np_dtype = jnp.dtype(dtype)
    # Round the canonical data to the dtype once, so every variant and the reference see the same numbers.
    rounded = lambda a: np.asarray(jnp.asarray(a, np_dtype).astype(jnp.float32))
    x = rounded(rng.standard_normal((batch, shape.height, shape.width, shape.cin), np.float32))
    w = rounded(rng.standard_normal((shape.kh, shape.kw, shape.cin // shape.groups, shape.cout), np.float32)
                / math.sqrt(fan_in))
    g = rounded(rng.standard_normal((batch, ho, wo, shape.cout), np.float32))
    refs = _reference(shape, mode, x, w, g)

    flops = shape.mode_flops(batch, mode)
    bytes_ = np_dtype.itemsize * shape.mode_bytes(batch, mode)
    kinds = shape.outputs(mode)
    intensity = flops / bytes_
    peak = peaks["matmul_flops_per_s"][dtype]
    roof = device_lib.roofline(peaks, dtype, intensity)
    sig = signature((batch, shape.height, shape.width, shape.cin), (shape.kh, shape.kw, 0, shape.cout), dtype,
                             shape.stride, shape.padding, shape.dilation, shape.groups)
    default_impl = "masked" if shape.mask else policy.choose(sig)
    default_key = (default_impl, "NHWC")
    if not any((v.impl, v.layout) == default_key for v in variants):  # a rule's triple, say
        variants = [Variant(default_impl, "jax", "NHWC"), *variants]

    results = []
    for variant in variants:
        res = {"impl": variant.impl, "framework": variant.framework, "layout": variant.layout, "status": "skipped",
               "error": None, "message": None, "time_s": None, "min_time_s": None, "runs_s": [], "compile_s": None,
               "flops_per_s": None, "frac_peak": None, "frac_roofline": None, "vs_torch": None}
        if not variant.applies(shape, dtype):
            continue
        rate = (torch_rates or {}).get(dtype) if variant.framework == "torch" else None
        if rate and max_call_s and flops / rate > max_call_s:
            res["message"] = (f"predicted {flops / rate:.0f} s per call at PyTorch's {rate / 1e9:.3g} GFLOP/s "
                              f"on a medium {dtype} conv > {max_call_s:g} s")
            results.append(res)
            continue
        try:
            if variant.framework == "torch":
                call, sync, to_numpy = _torch_runner(shape, mode, x, w, g, variant.layout, dtype)
                start = time.perf_counter()
                outs = to_numpy(call())
                res["compile_s"] = time.perf_counter() - start  # first call (cuDNN autotuning on GPUs)
                start = time.perf_counter()
                sync(call())
                estimate = time.perf_counter() - start
                # torch tensors are NCHW / OIHW whatever their memory format
                outs = _outputs_to_canonical(outs, kinds, "NCHW")
            else:
                make = EXTRA_JAX.get(variant.impl)
                fn = make(shape, variant.layout) if make else _jax_fn(variant.impl, shape, variant.layout)
                xl, wl = _to_layout(x, w, variant.layout)
                gl = _to_layout(g, w, variant.layout)[0]
                cast = lambda a: jnp.asarray(a, np_dtype)
                call, res["compile_s"] = _jax_runner(fn, shape, mode, cast(xl), cast(wl), cast(gl))
                sync = jax.block_until_ready
                start = time.perf_counter()
                out = sync(call())
                estimate = time.perf_counter() - start
                raw = [np.asarray(jnp.asarray(o, jnp.float32)) for o in jax.tree.leaves(out)]
                outs = _outputs_to_canonical(raw, kinds, variant.layout)
            res["error"] = relative_error(outs, refs)
            if not res["error"] <= TOLERANCE[dtype]:
                res["status"] = "mismatch"
                res["message"] = f"error {res['error']:.3g} > tolerance {TOLERANCE[dtype]:g}"
            else:
                t = time_calls(call, sync=sync, estimate=estimate, **timing)
                time_s = t["median_s"]
                res.update(status="ok", time_s=time_s, min_time_s=t["min_s"], runs_s=t["runs_s"],
                           flops_per_s=flops / time_s, frac_peak=flops / time_s / peak,
                           frac_roofline=flops / time_s / roof)
        except Exception as e:  # one variant failing (unsupported, out of memory) must not stop the sweep
            res["status"] = "error"
            res["message"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        results.append(res)

    ok = [r for r in results if r["status"] == "ok"]
    torch_ok = [r for r in ok if r["framework"] == "torch"]
    torch_best = min((r["time_s"] for r in torch_ok), default=None)
    for r in ok:
        r["vs_torch"] = torch_best / r["time_s"] if torch_best else None
    ref_of = lambda r: {"impl": r["impl"], "framework": r["framework"], "layout": r["layout"]} if r else None
    winner = min(ok, key=lambda r: r["time_s"], default=None)
    best_jax = min((r for r in ok if r["framework"] == "jax"), key=lambda r: r["time_s"], default=None)
    default = next((r for r in ok if (r["impl"], r["layout"]) == default_key), None)
    return {
        "shape": shape.name, "kind": shape.kind, "sources": list(shape.sources), "batch": batch,
        "height": shape.height, "width": shape.width, "cin": shape.cin, "cout": shape.cout, "kh": shape.kh,
        "kw": shape.kw, "stride": list(shape.stride), "dilation": list(shape.dilation),
        "padding": [list(p) for p in shape.padding], "groups": shape.groups, "mask": shape.mask,
        "input_grad": shape.input_grad, "dtype": dtype,
        "mode": mode, "flops": flops, "bytes": float(bytes_), "intensity": intensity, "peak_flops_per_s": peak,
        "roofline_flops_per_s": roof, "default_impl": default_impl, "results": results, "winner": ref_of(winner),
        "best_jax": ref_of(best_jax), "torch_best_s": torch_best,
        "default_vs_torch": torch_best / default["time_s"] if (default and torch_best) else None,
    }


def autotune_table(rows: list[dict], backend: str) -> dict:
    """The fastest ``jaxconv.models.conv`` implementation (NHWC) per layer signature and dtype.

    With the per-pass modes measured (forward, input_grad, kernel_grad), a "forward/input_grad/kernel_grad"
    triple of each pass's winner; otherwise the forward_backward winner. The largest batch measured decides.
    """
    best: dict[tuple, dict[str, str]] = {}
    for row in sorted(rows, key=lambda r: r["batch"]):
        if row["kind"] != "conv":
            continue
        cands = [r for r in row["results"] if r["status"] == "ok" and r["framework"] == "jax"
                 and r["layout"] == "NHWC" and r["impl"] in conv_impls.IMPLEMENTATIONS]
        if not cands:
            continue
        sig = signature((row["batch"], row["height"], row["width"], row["cin"]),
                                 (row["kh"], row["kw"], 0, row["cout"]), row["dtype"], tuple(row["stride"]),
                                 tuple(tuple(p) for p in row["padding"]), tuple(row["dilation"]), row["groups"], backend)
        best.setdefault((sig.key(), row["input_grad"]), {})[row["mode"]] = min(cands, key=lambda r: r["time_s"])["impl"]
    winners = {}
    for (key, input_grad), modes in best.items():
        if "forward" in modes and "kernel_grad" in modes and ("input_grad" in modes or not input_grad):
            triple = (modes["forward"], modes.get("input_grad", modes["forward"]), modes["kernel_grad"])
            winners[key] = triple[0] if len(set(triple)) == 1 else "/".join(triple)
        elif "forward_backward" in modes:
            winners[key] = modes["forward_backward"]
    return {"description": "jaxconv.models.conv_policy autotune table: --set conv.table=this file", "winners": winners}


def run(*, quick: bool = False, sets: list[str] | None = None, user_shapes: list[str] = (), dtypes=DTYPES,
        modes=MODES, layouts=("NHWC", "NCHW"), impls: list[str] | None = None, batch_sizes: list[int] | None = None,
        torch: bool = True, repeats: int | None = None, peaks: dict, log: Callable[[str], None] = print,
        policy: ConvPolicy = DEFAULT_POLICY) -> dict:
    """The sweep; returns {"rows", "settings", "targets", "notes", "table"}. ``policy``: the layers'
    choice, reported as the default path."""
    accelerator = jax.default_backend() != "cpu"
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
    have_torch = torch and _torch_available()
    if have_torch:
        import torch as torch_mod

        if torch_mod.cuda.is_available():
            torch_mod.backends.cudnn.benchmark = True
    known = {v.impl for v in VARIANTS} | set(EXTRA_JAX)
    if impls is not None and (bad := set(impls) - known):
        raise ConfigError(f"unknown implementation(s) {', '.join(sorted(bad))}; known: {', '.join(sorted(known))}")
    variants = [v for v in VARIANTS if v.layout in layouts and (impls is None or v.impl in impls)
                and (v.framework == "jax" or have_torch)]
    variants += [Variant(name, "jax", "NHWC") for name in EXTRA_JAX if impls is None or name in impls]
    timing = ({"repeats": 1, "min_time": 0.0, "warmup": 0, "budget": 1.0} if quick else
              {"repeats": repeats or (5 if accelerator else 3), "min_time": 0.05 if accelerator else 0.1, "warmup": 1,
               "budget": 5.0})
    max_call_s = None if quick else 5.0
    torch_rates = calibrate_torch(dtypes) if have_torch and not quick else None
    rows = []
    total = sum(len(b) * len(ds) * len([m for m in ms if m != "input_grad" or sh.input_grad])
                for sh, b, ds, ms in cases)
    done = 0
    for shape, batches, case_dtypes, case_modes in cases:
        for batch in batches:
            for dtype in case_dtypes:
                for mode in [m for m in case_modes if m != "input_grad" or shape.input_grad]:
                    done += 1
                    row = measure_case(shape, batch, dtype, mode, peaks, variants=variants, timing=timing,
                                       torch_rates=torch_rates, max_call_s=max_call_s, policy=policy)
                    rows.append(row)
                    log(_progress_line(done, total, row))
    settings = {"quick": quick, "sets": sets if sets is not None else ("quick" if quick else list(SETS)),
                "user_shapes": list(user_shapes), "dtypes": list(dtypes), "modes": list(modes), "layouts": list(layouts),
                "variants": [f"{v.impl}/{v.layout}" for v in variants], "timing": timing, "tolerance": TOLERANCE,
                "max_call_s": max_call_s, "torch_calibration_flops_per_s": torch_rates,
                "torch": have_torch, "conv_rules": [dataclasses.asdict(r) for r in policy.rules],
                "conv_forced": policy.forced, "conv_table_entries": len(policy.table)}
    if have_torch:
        import torch as torch_mod

        settings["torch_settings"] = {"threads": torch_mod.get_num_threads(),
                                      "cudnn_benchmark": bool(torch_mod.backends.cudnn.benchmark),
                                      "cudnn_allow_tf32": bool(torch_mod.backends.cudnn.allow_tf32)}
    settings["jax_default_matmul_precision"] = str(jax.config.jax_default_matmul_precision)
    return {"rows": rows, "settings": settings, "targets": _targets(rows, accelerator),
            "notes": _notes(have_torch, quick), "table": autotune_table(rows, jax.default_backend())}


def _progress_line(done: int, total: int, row: dict) -> str:
    parts = []
    for r in row["results"]:
        tag = f"{r['impl']}/{r['layout']}"
        parts.append(f"{tag} {r['time_s'] * 1e3:.2f}ms" if r["status"] == "ok" else f"{tag} {r['status'].upper()}")
    ratio = f" default/torch {row['default_vs_torch']:.2f}x" if row["default_vs_torch"] else ""
    return f"[{done}/{total}] {row['shape']} b{row['batch']} {row['dtype']} {row['mode']}:{ratio} | " + ", ".join(parts)


def _targets(rows: list[dict], accelerator: bool) -> list[dict]:
    model = [r for r in rows if not r["shape"].startswith("user:")]
    fb32 = [r for r in model if r["mode"] == "forward_backward" and r["dtype"] == "float32"]
    ratios = [r["default_vs_torch"] for r in fb32 if r["default_vs_torch"] is not None]
    worst = min(ratios) if ratios else None
    targets = [{"name": "default conv path / PyTorch, worst model layer shape (float32, forward_backward)",
                "value": worst, "goal": ">= 1.0 on every shape",
                "met": (worst >= 1.0) if worst is not None else None}]
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


def write_table(table: dict, out_dir: Path) -> Path:
    path = Path(out_dir) / "conv_table.json"
    path.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    return path
