"""float32 convs on the CPU by oneDNN (``cpu_onednn.cc``, XLA FFI handlers): the ``onednn`` conv
implementation, its output (also with a bias and a ReLU in the same call) and both gradients.

oneDNN is the ``onednn-cpu-gomp`` wheel (Linux x86-64; headers from ``onednn-devel-cpu-gomp``); the
handlers are built against it on first use (``jaxconv.native_build``). Where that cannot be done,
``reason()`` says why and ``onednn`` computes with XLA's conv (one warning per process).
"""

from __future__ import annotations

import functools
import importlib.metadata
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv import native_build
from jaxconv.models.cpu_conv_grads import split_by_batch, unless_vmapped

SOURCE = Path(__file__).with_suffix(".cc")
FORWARD, INPUT_GRAD, KERNEL_GRAD = "jaxconv_onednn_forward", "jaxconv_onednn_input_grad", "jaxconv_onednn_kernel_grad"
BIAS_RELU = "jaxconv_onednn_bias_relu"
_WHEELS = {"/libdnnl.so.3": "onednn-cpu-gomp", "/oneapi/dnnl/dnnl.hpp": "onednn-devel-cpu-gomp"}


def _installed(suffix: str, distribution: str) -> Path:
    try:
        files = importlib.metadata.distribution(distribution).files or []
    except importlib.metadata.PackageNotFoundError:
        raise OSError(f"{distribution} is not installed") from None
    found = next((f for f in files if f"/{f}".endswith(suffix)), None)
    if found is None:
        raise OSError(f"{distribution} has no {suffix}")
    return Path(found.locate()).resolve()


def _build_flags() -> tuple[str, ...]:
    library, header = (_installed(suffix, wheel) for suffix, wheel in _WHEELS.items())
    return (f"-I{header.parents[2]}", str(library), f"-Wl,-rpath,{library.parent}")


@functools.cache
def reason() -> str:
    """Empty when the handlers are built and registered with XLA; otherwise why they are not."""
    handlers = {FORWARD: "JaxconvOnednnForward", INPUT_GRAD: "JaxconvOnednnInputGrad",
                KERNEL_GRAD: "JaxconvOnednnKernelGrad", BIAS_RELU: "JaxconvOnednnBiasRelu"}
    return native_build.register(SOURCE, handlers, "oneDNN convs", _build_flags)


def conv(x, kernel, strides, padding, dilation, groups, xla_conv):
    """The conv of ``x`` [B, H, W, Cin] with ``kernel`` [kh, kw, Cin / groups, Cout], float32, padding
    non-negative, by oneDNN; its VJP by oneDNN too. Call only when ``reason()`` is empty. Split over devices
    by the batch like the native gradients (``split_by_batch``); under ``jax.vmap``, ``xla_conv`` (same
    arguments) instead."""
    return _differentiable(_Calls.of(tuple(x.shape), tuple(kernel.shape), strides, padding, dilation, groups,
                                     xla_conv))(x, kernel)


def bias_relu(x, kernel, bias, strides, padding, dilation, groups, xla_conv):
    """relu(``conv(...)`` + ``bias`` [Cout]) in one oneDNN call (a post-op); not differentiable: the forward
    pass of a ``jax.custom_vjp`` (``jaxconv.models.conv_impls.onednn_bias_relu``)."""
    return _Calls.of(tuple(x.shape), tuple(kernel.shape), strides, padding, dilation, groups, xla_conv).bias_relu(
        x, kernel, bias)


class _Calls:
    """One conv geometry's oneDNN calls, each split over devices and replaced by XLA's maths under vmap."""

    @classmethod
    @functools.lru_cache(maxsize=None)
    def of(cls, *geometry) -> "_Calls":
        return cls(*geometry)

    def __init__(self, image, kernel_shape, strides, padding, dilation, groups, xla_conv):
        geometry = dict(zip(("sh", "sw", "pt", "pb", "pl", "pr", "dh", "dw", "groups"),
                            (np.int64(v) for v in (*strides, *padding[0], *padding[1], *dilation, groups))))
        xla = lambda x, k: xla_conv(x, k, strides, padding, dilation, groups)
        output = jax.eval_shape(xla, jax.ShapeDtypeStruct(image, jnp.float32),
                                jax.ShapeDtypeStruct(kernel_shape, jnp.float32)).shape

        def per_device(target, shape, summed, *args):
            """Without a mesh in context, no ``custom_partitioning``: XLA runs the call on the whole batch."""
            def local(*args):
                out = jax.ShapeDtypeStruct(shape if summed else (args[0].shape[0], *shape[1:]), jnp.float32)
                return jax.ffi.ffi_call(target, out)(*args, **geometry)
            return split_by_batch(local, local, args, (), summed)

        xla_input_grad = lambda g, k: jax.vjp(lambda v: xla(v, k), jnp.zeros((g.shape[0], *image[1:])))[1](g)[0]
        xla_kernel_grad = lambda x, g: jax.vjp(lambda k: xla(x, k), jnp.zeros(kernel_shape))[1](g)[0]
        self.forward = unless_vmapped(lambda x, k: per_device(FORWARD, output, False, x, k), xla)
        self.input_grad = unless_vmapped(lambda g, k: per_device(INPUT_GRAD, image, False, g, k), xla_input_grad)
        self.kernel_grad = unless_vmapped(lambda x, g: per_device(KERNEL_GRAD, kernel_shape, True, x, g),
                                          xla_kernel_grad)
        self.bias_relu = unless_vmapped(lambda x, k, b: per_device(BIAS_RELU, output, False, x, k, b),
                                        lambda x, k, b: jax.nn.relu(xla(x, k) + b))


@functools.lru_cache(maxsize=None)
def _differentiable(calls: _Calls):
    @jax.custom_vjp
    def f(x, k):
        return calls.forward(x, k)

    def f_fwd(x, k):
        return calls.forward(x, k), (x, k)

    def f_bwd(res, g):
        x, k = res
        return calls.input_grad(g, k), calls.kernel_grad(x, g)

    f.defvjp(f_fwd, f_bwd)
    return f
