"""One 2-D convolution entry point for jaxconv's layers, several implementations, and the rule that picks one.

Shapes: B batch, H/W input height/width, Ho/Wo output height/width, G feature groups, T = kh * kw taps.
x [B, H, W, Cin] (NHWC), kernel [kh, kw, Cin / G, Cout] (HWIO), result [B, Ho, Wo, Cout]; ``padding``
is explicit ((top, bottom), (left, right)); ``strides`` and ``dilation`` are ints or pairs. The
semantics are ``lax.conv_general_dilated``'s (cross-correlation, ``feature_group_count=G``, output
channel o in group o // (Cout / G)).

Implementations (equal outputs and gradients up to float rounding; tests/test_bench.py checks both):
- ``xla``: ``lax.conv_general_dilated``, XLA's convolution (on CPU its own/XNNPACK kernels, on GPU cuDNN).
- ``im2col``: the T strided, dilated views of the padded input concatenated to a [B, Ho, Wo, T * Cin]
  patch matrix, then one matmul (per group).
- ``taps``: the sum over the T taps of (view) @ kernel[i, j]: T matmuls with K = Cin, no patch matrix
  (summed in float32 for bfloat16 inputs).
- ``fft``: float32 only; products of 2-D real FFTs of the padded input and the (dilated) kernel, summed
  over input channels; any stride (computed at stride 1, then subsampled), meant for large kernels.

An implementation name can also be a triple "forward/input_grad/kernel_grad", e.g. "taps/xla/fft":
the output by ``taps``, and in the backward pass the input gradient as ``xla``'s and the kernel
gradient as ``fft``'s (a ``jax.custom_vjp``); XLA's backward convs are the slow part on some shapes.

Choice (``choose``), first match wins:
1. ``JAXCONV_CONV_IMPL=name``: that implementation everywhere (benchmarks, debugging);
2. ``JAXCONV_CONV_TABLE=file.json``: an autotune table written by ``jaxconv bench conv`` (its
   ``conv_table.json``): the measured winner for this exact layer signature on this backend;
3. ``RULES`` (none with ``JAXCONV_CONV_RULES=none``, to compare with XLA everywhere), in order: a rule
   names an implementation for a backend, a dtype and ranges of Cin, Cout, T, stride, output pixels,
   feature groups and batch size;
4. ``xla``.
An implementation that cannot run a layer (``fft`` in bfloat16) falls back to ``xla``.

``RULES`` holds the CPU rules, each for a shape class where XLA:CPU's conv misses its fast path
(single-input-channel layers, grouped convs, one-pixel outputs, 1x1 convs, and the backward pass of
every stride-1 conv with 16+ input channels; README, Benchmarks); each ``note`` quotes the
measurement behind it. To adopt a measured winner for another shape class, add a ``Rule``.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Padding = tuple[tuple[int, int], tuple[int, int]]


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (int(v), int(v)) if np.ndim(v) == 0 else (int(v[0]), int(v[1]))


def out_size(size: int, kernel: int, stride: int, dilation: int, pad: tuple[int, int]) -> int:
    return (size + pad[0] + pad[1] - dilation * (kernel - 1) - 1) // stride + 1


# ----------------------------------------------------------------------------------------------
# Implementations: (x, kernel, strides, padding, dilation, groups) -> y, all NHWC / HWIO.


def conv_xla(x, kernel, strides, padding, dilation, groups):
    return lax.conv_general_dilated(x, kernel, strides, padding, rhs_dilation=dilation, feature_group_count=groups,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _views(x, kh: int, kw: int, strides, padding, dilation):
    """The T views x_pad[:, i*dh + s*a, j*dw + s*b, :] for a < Ho, b < Wo, taps in (i, j) raster order."""
    x = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    b, h, w, c = x.shape
    (sh, sw), (dh, dw) = strides, dilation
    ho, wo = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
    return [lax.slice(x, (0, i * dh, j * dw, 0), (b, i * dh + sh * (ho - 1) + 1, j * dw + sw * (wo - 1) + 1, c),
                      (1, sh, sw, 1)) for i in range(kh) for j in range(kw)]


def conv_im2col(x, kernel, strides, padding, dilation, groups):
    kh, kw, cg, cout = kernel.shape
    views = _views(x, kh, kw, strides, padding, dilation)
    b, ho, wo, _ = views[0].shape
    t = kh * kw
    if groups == 1:
        cols = jnp.concatenate(views, axis=-1)  # [B, Ho, Wo, T*Cin], tap-major like the HWIO kernel
        return jnp.dot(cols, kernel.reshape(t * cg, cout), preferred_element_type=x.dtype)
    cols = jnp.stack(views, axis=3).reshape(b, ho, wo, t, groups, cg)  # [B, Ho, Wo, T, G, Cg]
    k = kernel.reshape(t, cg, groups, cout // groups)  # [T, Cg, G, Og]
    y = jnp.einsum("bhwtgc,tcgo->bhwgo", cols, k, preferred_element_type=x.dtype)
    return y.reshape(b, ho, wo, cout)


def conv_taps(x, kernel, strides, padding, dilation, groups):
    kh, kw, cg, cout = kernel.shape
    views = _views(x, kh, kw, strides, padding, dilation)
    b, ho, wo, _ = views[0].shape
    acc = jnp.promote_types(x.dtype, jnp.float32)  # the sum over taps in float32 (bfloat16 inputs)
    y = None
    for t, view in enumerate(views):
        k = kernel[t // kw, t % kw]  # [Cg, Cout]
        if groups == 1:
            term = jnp.dot(view, k, preferred_element_type=acc)
        else:
            term = jnp.einsum("bhwgc,cgo->bhwgo", view.reshape(b, ho, wo, groups, cg),
                              k.reshape(cg, groups, cout // groups), preferred_element_type=acc)
            term = term.reshape(b, ho, wo, cout)
        y = term if y is None else y + term
    return y.astype(x.dtype)


def conv_fft(x, kernel, strides, padding, dilation, groups):
    kh, kw, cg, cout = kernel.shape
    (sh, sw), (dh, dw) = strides, dilation
    x = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    b, h, w, cin = x.shape
    ekh, ekw = dh * (kh - 1) + 1, dw * (kw - 1) + 1  # dilated kernel extent
    ho, wo = h - ekh + 1, w - ekw + 1  # stride-1 valid output
    k = jnp.zeros((ekh, ekw, cg, cout), kernel.dtype).at[::dh, ::dw].set(kernel)
    # Circular cross-correlation over [H, W]: outputs o < H - ekh + 1 never wrap, so they are the valid ones.
    xf = jnp.fft.rfft2(jnp.moveaxis(x, -1, 1), s=(h, w))  # [B, Cin, H, W//2+1]
    kf = jnp.fft.rfft2(jnp.transpose(k, (2, 3, 0, 1)), s=(h, w))  # [Cg, Cout, H, W//2+1]
    og = cout // groups
    yf = jnp.einsum("bgcuv,cgouv->bgouv", xf.reshape(b, groups, cg, *xf.shape[2:]),
                    jnp.conj(kf).reshape(cg, groups, og, *kf.shape[2:]))
    y = jnp.fft.irfft2(yf.reshape(b, cout, *yf.shape[3:]), s=(h, w))[:, :, :ho:sh, :wo:sw]
    return jnp.moveaxis(y, 1, -1).astype(x.dtype)


IMPLEMENTATIONS: dict[str, Callable] = {"xla": conv_xla, "im2col": conv_im2col, "taps": conv_taps, "fft": conv_fft}


def parse_impl(impl: str) -> tuple[str, str, str]:
    """"name" or "forward/input_grad/kernel_grad" (e.g. "taps/xla/fft") -> the three pass implementations."""
    parts = impl.split("/")
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3 or any(p not in IMPLEMENTATIONS for p in parts):
        raise ValueError(f"conv implementation {impl!r}: expected one of {', '.join(IMPLEMENTATIONS)} "
                         f"or three of them as forward/input_grad/kernel_grad")
    return tuple(parts)


def supports(impl: str, dtype: Any) -> bool:
    """Whether ``impl`` computes in ``dtype`` (fft: float32 only; jnp.fft has no bfloat16)."""
    return "fft" not in parse_impl(impl) or jnp.dtype(dtype) == jnp.float32


@functools.lru_cache(maxsize=None)
def _composite(fwd: str, dx: str, dw: str, strides, padding, dilation, groups):
    """A conv computing its output, input gradient and kernel gradient with three implementations.

    Each gradient is the VJP of its implementation with respect to one argument; under jit the
    unused parts (the primal of the VJPs, an input gradient nobody needs) are dead code.
    """
    args = (strides, padding, dilation, groups)

    @jax.custom_vjp
    def f(x, kernel):
        return IMPLEMENTATIONS[fwd](x, kernel, *args)

    def f_fwd(x, kernel):
        return f(x, kernel), (x, kernel)

    def f_bwd(res, g):
        x, kernel = res
        gx = jax.vjp(lambda v: IMPLEMENTATIONS[dx](v, kernel, *args), x)[1](g)[0]
        gk = jax.vjp(lambda k: IMPLEMENTATIONS[dw](x, k, *args), kernel)[1](g)[0]
        return gx, gk

    f.defvjp(f_fwd, f_bwd)
    return f


# ----------------------------------------------------------------------------------------------
# Choosing an implementation.


@dataclasses.dataclass(frozen=True)
class Signature:
    """What the choice may depend on: one layer's static description."""

    backend: str
    dtype: str
    batch: int
    height: int
    width: int
    cin: int
    cout: int
    kh: int
    kw: int
    stride: tuple[int, int]
    dilation: tuple[int, int]
    padding: Padding
    groups: int

    @property
    def taps(self) -> int:
        return self.kh * self.kw

    @property
    def out_pixels(self) -> int:
        return (out_size(self.height, self.kh, self.stride[0], self.dilation[0], self.padding[0])
                * out_size(self.width, self.kw, self.stride[1], self.dilation[1], self.padding[1]))

    def key(self) -> str:
        """The autotune table's key: every field but the batch size (tables are per shape class)."""
        p = self.padding
        return (f"{self.backend}/{self.dtype}/{self.height}x{self.width}x{self.cin}->{self.cout}/"
                f"k{self.kh}x{self.kw}/s{self.stride[0]}x{self.stride[1]}/d{self.dilation[0]}x{self.dilation[1]}/"
                f"p{p[0][0]},{p[0][1]},{p[1][0]},{p[1][1]}/g{self.groups}")


@dataclasses.dataclass(frozen=True)
class Rule:
    """Use ``impl`` for layers matching every given condition (ranges are inclusive, None = any)."""

    impl: str
    backend: str | None = None  # "cpu", "gpu", "tpu"
    dtype: str | None = None  # "float32", "bfloat16"
    cin: tuple[int, int] | None = None
    cout: tuple[int, int] | None = None
    taps: tuple[int, int] | None = None  # kh * kw
    stride: tuple[int, int] | None = None
    out_pixels: tuple[int, int] | None = None  # Ho * Wo
    groups: tuple[int, int] | None = None
    batch: tuple[int, int] | None = None
    note: str = ""  # the measurement that justifies the rule

    def matches(self, sig: Signature) -> bool:
        inside = lambda value, span: span is None or span[0] <= value <= span[1]
        return ((self.backend is None or self.backend == sig.backend) and (self.dtype is None or self.dtype == sig.dtype)
                and inside(sig.cin, self.cin) and inside(sig.cout, self.cout) and inside(sig.taps, self.taps)
                and inside(max(sig.stride), self.stride) and inside(sig.out_pixels, self.out_pixels)
                and inside(sig.groups, self.groups) and inside(sig.batch, self.batch))


ANY = (1, 1 << 62)  # an open range's upper end

# XLA:CPU's conv misses its fast path on these shape classes; each alternative is tested equal to XLA's
# conv (tests/test_bench.py). The notes quote `jaxconv bench all --dtypes float32` on the 2-core AMD EPYC
# (benchmarks/results/cpu-amd-epyc-2c, ms forward + backward, float32).
RULES: tuple[Rule, ...] = (
    Rule("im2col", backend="cpu", out_pixels=(1, 1),
         note="one output pixel (LeNet C5, the cached samplers' windows) is one matmul: LeNet C5 b256 1.9 vs "
              "XLA 11.9"),
    Rule("taps", backend="cpu", cin=(1, 1), taps=(2, 49), batch=(32, ANY[1]),
         note="single-input-channel layers: LeNet C1 b256 14.6 vs XLA 28.2, PixelCNN 7x7 mask A b64 10.2 vs 37.6; "
              "at batch 1 XLA is as fast"),
    Rule("taps", backend="cpu", groups=(2, ANY[1]),
         note="grouped convs: AlexNet conv2/conv4/conv5 b8 148/56/30 vs XLA 876/268/229 (im2col 204/72/43)"),
    Rule("im2col", backend="cpu", taps=(1, 1),
         note="1x1 convs (PixelCNN): the same contraction as one dot"),
    Rule("im2col", backend="cpu", cin=(2, 15), taps=(25, ANY[1]), stride=(1, 1),
         note="few input channels, big kernel: AlexNet-32 conv1 b32 20.9 vs XLA 72.7"),
    # XLA:CPU's forward conv is good, its backward convs are not (a generic loop): keep XLA's forward,
    # take both gradients from im2col's matmuls.
    Rule("xla/im2col/im2col", backend="cpu", cin=(16, ANY[1]), stride=(1, 1),
         note="Gated PixelCNN MNIST 2x3 32->64 b64: XLA forward 33 + im2col backward 55 vs XLA 520; "
              "LeNet C3 b256 ~17 vs 32; AlexNet-224 conv3 b8 ~52 vs 71"),
)


def _active_rules() -> tuple[Rule, ...]:
    which = os.environ.get("JAXCONV_CONV_RULES", "")
    if which not in ("", "default", "none"):
        raise ValueError(f"JAXCONV_CONV_RULES={which!r}: expected default or none")
    return () if which == "none" else RULES


@functools.lru_cache(maxsize=8)
def _load_table(path: str) -> dict[str, str]:
    data = json.loads(Path(path).read_text())
    table = {}
    for key, impl in data.get("winners", {}).items():
        try:
            parse_impl(impl)
        except ValueError:
            continue
        table[key] = impl
    return table


_FORCED: contextvars.ContextVar[str] = contextvars.ContextVar("jaxconv_conv_impl", default="")


@contextlib.contextmanager
def forced_impl(impl: str):
    """Convs traced inside the block use ``impl``, as with ``JAXCONV_CONV_IMPL`` (e.g. "xla", to see a
    model's convs as conv ops whatever the rules pick)."""
    token = _FORCED.set(impl)
    try:
        yield
    finally:
        _FORCED.reset(token)


def choose(sig: Signature, rules: Sequence[Rule] | None = None) -> str:
    """The implementation for one layer (see the module docstring for the order)."""
    forced = _FORCED.get() or os.environ.get("JAXCONV_CONV_IMPL", "")
    if forced:
        try:
            parse_impl(forced)
        except ValueError as e:
            raise ValueError(f"JAXCONV_CONV_IMPL: {e}") from None
        impl = forced
    else:
        impl = "xla"
        table = os.environ.get("JAXCONV_CONV_TABLE", "")
        found = _load_table(table).get(sig.key()) if table else None
        if found:
            impl = found
        else:
            for rule in _active_rules() if rules is None else rules:
                if rule.matches(sig):
                    impl = rule.impl
                    break
    return impl if supports(impl, sig.dtype) else "xla"


def signature(x_shape, kernel_shape, dtype, strides=1, padding: Padding = ((0, 0), (0, 0)), dilation=1,
              groups: int = 1, backend: str | None = None) -> Signature:
    kh, kw, _, cout = kernel_shape
    return Signature(backend or jax.default_backend(), jnp.dtype(dtype).name, int(x_shape[0]), int(x_shape[1]),
                     int(x_shape[2]), int(x_shape[3]), int(cout), int(kh), int(kw), _pair(strides), _pair(dilation),
                     tuple(tuple(int(v) for v in p) for p in padding), int(groups))


def conv(x: jax.Array, kernel: jax.Array, strides: int | Sequence[int] = 1, padding: Padding | str = "VALID",
         dilation: int | Sequence[int] = 1, groups: int = 1, impl: str | None = None) -> jax.Array:
    """x [B, H, W, Cin], kernel [kh, kw, Cin/groups, Cout] -> [B, Ho, Wo, Cout] by the chosen implementation.

    ``padding``: "VALID" or explicit ((top, bottom), (left, right)). ``impl``: force an implementation,
    a name or "forward/input_grad/kernel_grad".
    """
    if isinstance(padding, str):
        if padding.upper() != "VALID":
            raise ValueError("padding must be 'VALID' or explicit ((top, bottom), (left, right))")
        padding = ((0, 0), (0, 0))
    padding = tuple(tuple(int(v) for v in p) for p in padding)
    strides, dilation = _pair(strides), _pair(dilation)
    if x.shape[-1] != kernel.shape[2] * groups or kernel.shape[3] % groups:
        raise ValueError(f"input channels {x.shape[-1]} / kernel {kernel.shape} do not fit groups={groups}")
    if impl is None:
        impl = choose(signature(x.shape, kernel.shape, x.dtype, strides, padding, dilation, groups))
    fwd, dx, dw = parse_impl(impl)
    if fwd == dx == dw:
        return IMPLEMENTATIONS[fwd](x, kernel, strides, padding, dilation, groups)
    return _composite(fwd, dx, dw, strides, padding, dilation, groups)(x, kernel)


class Conv(nn.Module):
    """``flax.linen.Conv``'s parameters ("kernel" [kh, kw, Cin, Cout], "bias") computed by ``conv``.

    A drop-in for the ``nn.Conv(features, kernel_size, padding="VALID" or explicit, dtype=...)``
    that jaxconv's models used: checkpoints are unchanged.
    """

    features: int
    kernel_size: tuple[int, int]
    strides: int | tuple[int, int] = 1
    padding: Padding | str = "VALID"
    dilation: int | tuple[int, int] = 1
    groups: int = 1
    use_bias: bool = True
    dtype: Any = jnp.float32
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros
    impl: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1] // self.groups, self.features))
        y = conv(x.astype(self.dtype), kernel.astype(self.dtype), self.strides, self.padding, self.dilation,
                 self.groups, self.impl)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,)).astype(self.dtype)
        return y
