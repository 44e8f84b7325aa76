"""The conv implementations: the maths, each tested equal to XLA's convolution (tests/test_bench.py).

Shapes: B batch, H/W input height/width, Ho/Wo output height/width, G feature groups, T = kh * kw taps.
x [B, H, W, Cin] (NHWC), kernel [kh, kw, Cin / G, Cout] (HWIO), result [B, Ho, Wo, Cout]; ``padding``
is explicit ((top, bottom), (left, right)), a negative side crops the input; ``strides`` and
``dilation`` are pairs. The semantics are ``lax.conv_general_dilated``'s (cross-correlation,
``feature_group_count=G``, output channel o in group o // (Cout / G)).

- ``xla``: ``lax.conv_general_dilated``, XLA's convolution (on CPU Eigen's or YNNPACK's kernels, as the conv
  policy's ``xla_cpu`` says; on GPU cuDNN).
- ``im2col``: the T strided, dilated views of the padded input concatenated to a [B, Ho, Wo, T * Cin]
  patch matrix, then one matmul (per group).
- ``taps``: the sum over the T taps of (view) @ kernel[i, j]: T matmuls with K = Cin, no patch matrix
  (summed in float32 for bfloat16 inputs).
- ``split``: one ``xla`` conv per feature group, on the group's input channels with its slice of the
  kernel, concatenated (XLA:CPU's grouped conv is a slow generic loop); with one group, ``xla``.
- ``native``: ``xla``'s output; the kernel gradient, and the input gradient of stride-1 convs, by jaxconv's
  C++ kernels (``jaxconv.models.cpu_conv_grads``) for float32 convs with one group on the CPU, XLA's
  elsewhere: XLA:CPU's kernel gradient runs at 15-30 GFLOP/s on PixelCNN's layers, the C++ kernel at
  60-170; XLA's input gradient of LeNet C3 (6 input channels) at batch 256 took 10.6 ms, the C++ one 2.0.
- ``onednn``: float32 on the CPU, output and both gradients by oneDNN (``jaxconv.models.cpu_onednn``), the
  library PyTorch runs; XLA's elsewhere. AlexNet-32's train step on 2 cores: ~12% faster than with XLA's
  convs.
- ``fft``: float32 only; products of 2-D real FFTs of the padded input and the (dilated) kernel, summed
  over input channels; any stride (computed at stride 1, then subsampled), meant for large kernels.

An implementation name can also be a triple "forward/input_grad/kernel_grad", e.g. "taps/xla/fft":
the output by ``taps``, and in the backward pass the input gradient as ``xla``'s and the kernel
gradient as ``fft``'s (a ``jax.custom_vjp``); XLA's backward convs are the slow part on some shapes.
On CPU a conv whose kernel gradient is XLA's is a ``jax.custom_vjp`` too (``apply``), so that it can keep
its input for the backward pass in its own buffer.
Which implementation a layer uses is the conv policy's choice (``jaxconv.models.conv_policy``).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxconv.models import cpu_conv_grads, cpu_onednn
from jaxconv.models.materialize import materialize

Padding = tuple[tuple[int, int], tuple[int, int]]
# Two implementations agree when max |difference| / max |XLA's at HIGHEST precision| is at most this
# (the bench's agreement check and autotuning's); float32 allows TF32 on GPUs.
TOLERANCE = {"float32": 5e-3, "bfloat16": 5e-2}


def pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (int(v), int(v)) if np.ndim(v) == 0 else (int(v[0]), int(v[1]))


def out_size(size: int, kernel: int, stride: int, dilation: int, pad: tuple[int, int]) -> int:
    return (size + pad[0] + pad[1] - dilation * (kernel - 1) - 1) // stride + 1


# ----------------------------------------------------------------------------------------------
# Implementations: (x, kernel, strides, padding, dilation, groups) -> y, all NHWC / HWIO.


def conv_xla(x, kernel, strides, padding, dilation, groups):
    # A negative low side is a crop of the input's first rows (columns). XLA:CPU (jaxlib 0.10) computes a conv
    # padded (negative, positive) on an axis, and the convs of its kernel gradient, from memory outside the
    # input (docs/benchmarks.md), so the crop is a slice here and the padding is never negative on the low side.
    crop = tuple(max(0, -low) for low, _ in padding)
    if any(crop):
        x = x[:, crop[0]:, crop[1]:, :]
        padding = tuple((max(0, low), high) for low, high in padding)
    return lax.conv_general_dilated(x, kernel, strides, padding, rhs_dilation=dilation, feature_group_count=groups,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def conv_split(x, kernel, strides, padding, dilation, groups):
    cg, og = kernel.shape[2], kernel.shape[3] // groups
    return jnp.concatenate([conv_xla(x[..., g * cg:(g + 1) * cg], kernel[..., g * og:(g + 1) * og], strides, padding,
                                     dilation, 1) for g in range(groups)], axis=-1)


def _pad(x, padding):
    """x padded as ``padding`` says; ``lax.pad`` as it takes negative sides, as XLA's convolution does."""
    return lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (*padding[0], 0), (*padding[1], 0), (0, 0, 0)))


def _views(x, kh: int, kw: int, strides, padding, dilation):
    """The T views x_pad[:, i*dh + s*a, j*dw + s*b, :] for a < Ho, b < Wo, taps in (i, j) raster order.
    The padded input is materialised once: every view reads it (``jaxconv.models.materialize``)."""
    x = materialize(_pad(x, padding))
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
    # With one input channel per group the sum is multiplies and adds, which XLA:CPU fuses into the
    # consumers: into the next layer's kernel gradient, a transposing copy, it ran 13x slower (PixelCNN
    # MNIST's first layer: 31.8 ms instead of 2.4 ms per step of batch 64). Computed once instead.
    return materialize(y.astype(x.dtype)) if cg == 1 else y.astype(x.dtype)


def conv_fft(x, kernel, strides, padding, dilation, groups):
    kh, kw, cg, cout = kernel.shape
    (sh, sw), (dh, dw) = strides, dilation
    x = _pad(x, padding)
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


def conv_native(x, kernel, strides, padding, dilation, groups):
    if (jax.default_backend() != "cpu" or x.dtype != jnp.float32 or kernel.dtype != jnp.float32 or groups != 1
            or cpu_conv_grads.reason()):
        return conv_xla(x, kernel, strides, padding, dilation, groups)
    return _native_grads(strides, padding, dilation)(x, kernel)


@functools.lru_cache(maxsize=None)
def _native_grads(strides, padding, dilation):
    args = (strides, padding, dilation, 1)

    @jax.custom_vjp
    def f(x, kernel):
        return conv_xla(x, kernel, *args)

    def f_fwd(x, kernel):
        return f(x, kernel), (x, kernel)

    def f_bwd(res, g):
        x, kernel = res
        image = x.shape[1:]

        def xla_input_grad(g, kernel):  # from the shapes alone: vmapped, it captures no batched value
            zeros = jnp.zeros((g.shape[0], *image), g.dtype)
            return jax.vjp(lambda v: conv_xla(v, kernel, *args), zeros)[1](g)[0]

        xla_kernel_grad = lambda x, g: jax.vjp(lambda k: conv_xla(x, k, *args), kernel)[1](g)[0]
        gx = (cpu_conv_grads.input_grad(g, kernel, image, padding, dilation, xla_input_grad) if strides == (1, 1)
              else xla_input_grad(g, kernel))
        return gx, cpu_conv_grads.kernel_grad(x, g, kernel.shape, strides, padding, dilation, xla_kernel_grad)

    f.defvjp(f_fwd, f_bwd)
    return f


def _cropped(x, padding):
    """x without the rows and columns a negative padding side removes, and the padding left (>= 0)."""
    (top, bottom), (left, right) = ((max(0, -lo), max(0, -hi)) for lo, hi in padding)
    x = x[:, top:x.shape[1] - bottom, left:x.shape[2] - right, :]
    return x, tuple((max(0, lo), max(0, hi)) for lo, hi in padding)


def _onednn_runs(x, kernel) -> bool:
    return (jax.default_backend() == "cpu" and x.dtype == jnp.float32 and kernel.dtype == jnp.float32
            and not cpu_onednn.reason())


def conv_onednn(x, kernel, strides, padding, dilation, groups):
    if not _onednn_runs(x, kernel):
        return conv_xla(x, kernel, strides, padding, dilation, groups)
    x, padding = _cropped(x, padding)
    return cpu_onednn.conv(x, kernel, tuple(strides), padding, tuple(dilation), groups, conv_xla)


IMPLEMENTATIONS: dict[str, Callable] = {"xla": conv_xla, "split": conv_split, "im2col": conv_im2col, "taps": conv_taps,
                                         "fft": conv_fft, "native": conv_native, "onednn": conv_onednn}


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


def built(impl: str) -> bool:
    """Whether every pass of ``impl`` runs its own code here: ``onednn`` without oneDNN is XLA's conv."""
    return "onednn" not in parse_impl(impl) or not cpu_onednn.reason()


@functools.lru_cache(maxsize=None)
def composite(fwd: str, dx: str, dw: str, strides, padding, dilation, groups, keep_input: bool = False):
    """A conv computing its output, input gradient and kernel gradient with three implementations.

    Each gradient is the VJP of its implementation with respect to one argument; under jit the
    unused parts (the primal of the VJPs, an input gradient nobody needs) are dead code. ``keep_input``:
    when differentiated, the input is computed once into its own buffer (``materialize``) and the
    backward pass reads that buffer (see ``apply``); the output gradient does not go through it.
    """
    args = (strides, padding, dilation, groups)

    @jax.custom_vjp
    def f(x, kernel):
        return IMPLEMENTATIONS[fwd](x, kernel, *args)

    def f_fwd(x, kernel):
        x = materialize(x) if keep_input else x
        return f(x, kernel), (x, kernel)

    def f_bwd(res, g):
        return _gradients(dx, dw, *res, g, args)

    f.defvjp(f_fwd, f_bwd)
    return f


def _gradients(dx: str, dw: str, x, kernel, g, args):
    """The input gradient by ``dx`` and the kernel gradient by ``dw`` (each its implementation's VJP) of the
    conv of ``x`` whose output gradient is ``g``; ``args`` = (strides, padding, dilation, groups)."""
    gx = jax.vjp(lambda v: IMPLEMENTATIONS[dx](v, kernel, *args), x)[1](g)[0]
    gk = jax.vjp(lambda k: IMPLEMENTATIONS[dw](x, k, *args), kernel)[1](g)[0]
    return gx, gk


# oneDNN's ReLU post-op made PixelCNN MNIST's 1x1 32->64 head slower (2.9-3.1 against 1.6-2.1 ms alone at batch
# 64) and its 16-channel layers faster (docs/benchmarks.md).
FUSED_RELU_MAX_CHANNELS = 32


@functools.lru_cache(maxsize=None)
def onednn_bias_relu(dx: str, dw: str, strides, padding, dilation, groups, keep_input: bool):
    """relu(conv + bias), the output by oneDNN with the bias and ReLU in the same call (padding non-negative),
    the gradients by ``dx`` and ``dw``. ``keep_input``: as ``composite``'s."""
    args = (strides, padding, dilation, groups)

    @jax.custom_vjp
    def f(x, kernel, bias):
        return cpu_onednn.bias_relu(x, kernel, bias, *args, conv_xla)

    def f_fwd(x, kernel, bias):
        x = materialize(x) if keep_input else x
        y = f(x, kernel, bias)
        return y, (x, kernel, y)

    def f_bwd(res, g):
        x, kernel, y = res
        g = jnp.where(y > 0, g, jnp.zeros((), g.dtype))  # y > 0 exactly where the ReLU's input is
        return *_gradients(dx, dw, x, kernel, g, args), g.sum((0, 1, 2))

    f.defvjp(f_fwd, f_bwd)
    return f


def _bias_relu(y, bias, relu):
    y = y if bias is None else y + bias
    return jax.nn.relu(y) if relu else y


def apply(impl: str, x, kernel, strides, padding, dilation, groups, bias=None, relu=False):
    """``impl`` (a name or a "forward/input_grad/kernel_grad" triple) on one conv, plus ``bias`` [Cout] if given,
    through a ReLU if ``relu``.

    When oneDNN computes the output of at most ``FUSED_RELU_MAX_CHANNELS`` channels and a ReLU follows, the bias
    and the ReLU are applied as oneDNN writes the output (``onednn_bias_relu``), where XLA:CPU would read and
    write the whole output again; otherwise XLA adds them after the conv, fused into its consumers where it can
    (docs/benchmarks.md, "A ReLU in oneDNN's call").

    When XLA:CPU computes the kernel gradient (``xla``, ``split``), it reads the input through a transposed
    copy ([Cin, H, W, B]) into which it fuses the input's producers, read in transposed order (Gated
    PixelCNN's sum of five skip outputs took 22 ms there per step of batch 64): under differentiation the
    input is computed once (``composite``'s ``keep_input``)."""
    fwd, dx, dw = parse_impl(impl)
    keep_input = dw in ("xla", "split") and jax.default_backend() == "cpu"
    if (fwd == "onednn" and relu and bias is not None and kernel.shape[-1] <= FUSED_RELU_MAX_CHANNELS
            and _onednn_runs(x, kernel)):
        x, padding = _cropped(x, padding)
        return onednn_bias_relu(dx, dw, tuple(strides), padding, tuple(dilation), groups, keep_input)(x, kernel, bias)
    if fwd == dx == dw and not keep_input:
        return _bias_relu(IMPLEMENTATIONS[fwd](x, kernel, strides, padding, dilation, groups), bias, relu)
    return _bias_relu(composite(fwd, dx, dw, strides, padding, dilation, groups, keep_input)(x, kernel), bias, relu)
