"""jaxconv's C++ gradients of float32 convs on the CPU (``cpu_conv_grads.cc``, XLA FFI handlers): the kernel
gradient, and the input gradient of stride-1 convs.

Built on first use (``jaxconv.native_build``). Where they cannot be built, ``reason()`` says why and the
``native`` conv implementation uses XLA's gradients (one warning per process).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxconv import native_build

SOURCE = Path(__file__).with_suffix(".cc")
KERNEL_GRAD = "jaxconv_cpu_conv_kernel_grad"
INPUT_GRAD = "jaxconv_cpu_conv_input_grad"


@functools.cache
def reason() -> str:
    """Empty when the kernels are built and registered with XLA; otherwise why they are not."""
    handlers = {KERNEL_GRAD: "JaxconvConvKernelGrad", INPUT_GRAD: "JaxconvConvInputGrad"}
    return native_build.register(SOURCE, handlers, "the native CPU conv gradients")


def kernel_grad(x, g, kernel_shape, strides, padding, dilation, batched_fallback):
    """The kernel gradient [kh, kw, Cin, Cout] of the conv of ``x`` [B, H, W, Cin] (float32, one group)
    whose output gradient is ``g`` [B, Ho, Wo, Cout]. Call only when ``reason()`` is empty.

    Under a jit whose inputs are split over devices by the batch, each device computes its images' part
    and the parts are summed (``psum``), as for XLA's conv; without that XLA would gather the whole batch
    on every device. Under ``jax.vmap`` (e.g. a Jacobian row by row), ``batched_fallback(x, g)``, XLA's
    kernel gradient, is vmapped instead: one batched XLA conv rather than one native call per row."""
    static = (tuple(kernel_shape), strides, padding, dilation)
    return unless_vmapped(lambda x, g: split_by_batch(_kernel_call, _kernel_partitioned, (x, g), static, True),
                           batched_fallback)(x, g)


def input_grad(g, kernel, image_shape, padding, dilation, batched_fallback):
    """The input gradient [B, *image_shape] of a stride-1 conv (float32, one group) with ``kernel`` [kh, kw,
    Cin, Cout] whose output gradient is ``g`` [B, Ho, Wo, Cout]; ``image_shape`` = (H, W, Cin). Call only
    when ``reason()`` is empty. Split over devices by the batch as ``kernel_grad`` (each device its images,
    nothing to sum); under ``jax.vmap``, ``batched_fallback(g, kernel)``, XLA's input gradient."""
    static = (tuple(image_shape), padding, dilation)
    return unless_vmapped(lambda g, k: split_by_batch(_input_call, _input_partitioned, (g, k), static, False),
                           batched_fallback)(g, kernel)


def unless_vmapped(f, batched_fallback):
    f = jax.custom_batching.custom_vmap(f)

    @f.def_vmap
    def f_vmap(axis_size, in_batched, *args):
        axes = tuple(0 if batched else None for batched in in_batched)
        return jax.vmap(batched_fallback, in_axes=axes)(*args), True

    return f


def _kernel_call(x, g, kernel_shape, strides, padding, dilation):
    (sh, sw), ((pt, _), (pl, _)), (dh, dw) = strides, padding, dilation
    out = jax.ShapeDtypeStruct(kernel_shape, jnp.float32)
    return jax.ffi.ffi_call(KERNEL_GRAD, out, vmap_method="sequential")(
        x, g, sh=np.int64(sh), sw=np.int64(sw), pt=np.int64(pt), pl=np.int64(pl), dh=np.int64(dh), dw=np.int64(dw))


def _input_call(g, kernel, image_shape, padding, dilation):
    ((pt, _), (pl, _)), (dh, dw) = padding, dilation
    out = jax.ShapeDtypeStruct((g.shape[0], *image_shape), jnp.float32)
    return jax.ffi.ffi_call(INPUT_GRAD, out, vmap_method="sequential")(
        g, kernel, pt=np.int64(pt), pl=np.int64(pl), dh=np.int64(dh), dw=np.int64(dw))


def split_by_batch(call, partitioned, args, static, summed: bool):
    """``call(*args, *static)``, each device on its images when the batch (the first argument's first axis)
    is split over a mesh; ``summed``: the parts are added (``psum``), otherwise each device keeps its images'
    part. For the kernel gradient every argument is split by the batch; otherwise only the first (the input
    gradient's kernel, a forward pass's kernel and bias are whole on every device).

    With a mesh in context (``jax.set_mesh``; jaxconv's train step is traced under its mesh): a
    ``shard_map`` over the mesh's axes not already split by hand (none inside ``pmap``). Without one, the
    split is unknown while tracing, so ``custom_partitioning`` (``partitioned``) states it for XLA's
    partitioner; its program cannot be kept in JAX's persistent compilation cache (it holds a Python
    pointer), which is why the mesh path exists: a train step compiled once is reused by every later process.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return partitioned(*args, *static)
    axes = tuple(a for a in mesh.axis_names if a not in mesh.manual_axes)
    devices = math.prod(mesh.shape[a] for a in axes)
    if devices == 1 or args[0].shape[0] % devices:  # nothing to split, or XLA replicates the call
        return call(*args, *static)

    def local(*args):
        part = call(*args, *static)
        return jax.lax.psum(part, axes) if summed else part

    in_specs = (P(axes), *(P(axes) if summed else P() for _ in args[1:]))
    return jax.shard_map(local, in_specs=in_specs, out_specs=P() if summed else P(axes), axis_names=set(axes))(*args)


def _batch_spec(arg_shapes):
    spec = arg_shapes[0].sharding.spec
    return P(spec[0] if len(spec) else None, None, None, None)


def _kernel_partition(kernel_shape, strides, padding, dilation, mesh, arg_shapes, result_shape):
    batch = _batch_spec(arg_shapes)

    def local(x, g):
        dw = _kernel_call(x, g, kernel_shape, strides, padding, dilation)
        return jax.lax.psum(dw, batch[0]) if batch[0] is not None else dw

    return mesh, local, NamedSharding(mesh, P()), (NamedSharding(mesh, batch), NamedSharding(mesh, batch))


_kernel_partitioned = custom_partitioning(_kernel_call, static_argnums=(2, 3, 4, 5))
_kernel_partitioned.def_partition(
    partition=_kernel_partition,
    infer_sharding_from_operands=lambda *args: NamedSharding(args[4], P()),
    sharding_rule="b h w c, b y x o -> i j c o", reduction_factors=("b",),
    need_replication_factors=("h", "w", "c", "y", "x", "o"))


def _input_partition(image_shape, padding, dilation, mesh, arg_shapes, result_shape):
    batch = NamedSharding(mesh, _batch_spec(arg_shapes))

    def local(g, kernel):
        return _input_call(g, kernel, image_shape, padding, dilation)

    return mesh, local, batch, (batch, NamedSharding(mesh, P()))


_input_partitioned = custom_partitioning(_input_call, static_argnums=(2, 3, 4))
_input_partitioned.def_partition(
    partition=_input_partition,
    infer_sharding_from_operands=lambda *args: NamedSharding(args[3], _batch_spec(args[4])),
    sharding_rule="b y x o, i j c o -> b h w c",
    need_replication_factors=("y", "x", "o", "i", "j", "c", "h", "w"))
