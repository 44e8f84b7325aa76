"""jaxconv's C++ kernel gradient of float32 convs on the CPU (``cpu_kernel_grad.cc``, an XLA FFI handler).

Built on first use (``jaxconv.native_build``). Where it cannot be built, ``reason()`` says why and the
``native`` conv implementation uses XLA's kernel gradient (one warning per process).
"""

from __future__ import annotations

import functools
import math
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxconv import native_build

SOURCE = Path(__file__).with_suffix(".cc")
TARGET = "jaxconv_cpu_conv_kernel_grad"


@functools.cache
def reason() -> str:
    """Empty when the kernel is built and registered with XLA; otherwise why it is not."""
    try:
        library = native_build.load(SOURCE)
        jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(library.JaxconvConvKernelGrad), platform="cpu")
    except (OSError, AttributeError) as e:
        warnings.warn(f"jaxconv: the native CPU kernel gradient is unavailable ({e}); using XLA's", stacklevel=2)
        return str(e)
    return ""


def kernel_grad(x, g, kernel_shape, strides, padding, dilation, batched_fallback):
    """The kernel gradient [kh, kw, Cin, Cout] of the conv of ``x`` [B, H, W, Cin] (float32, one group)
    whose output gradient is ``g`` [B, Ho, Wo, Cout]. Call only when ``reason()`` is empty.

    Under a jit whose inputs are split over devices by the batch, each device computes its images' part
    and the parts are summed (``psum``), as for XLA's conv; without that XLA would gather the whole batch
    on every device. Under ``jax.vmap`` (e.g. a Jacobian row by row), ``batched_fallback(x, g)``, XLA's
    kernel gradient, is vmapped instead: one batched XLA conv rather than one native call per row."""
    kernel_shape = tuple(kernel_shape)

    @jax.custom_batching.custom_vmap
    def f(x, g):
        return _split_by_batch(x, g, kernel_shape, strides, padding, dilation)

    @f.def_vmap
    def f_vmap(axis_size, in_batched, x, g):
        axes = tuple(0 if batched else None for batched in in_batched)
        return jax.vmap(batched_fallback, in_axes=axes)(x, g), True

    return f(x, g)


def _call(x, g, kernel_shape, strides, padding, dilation):
    (sh, sw), ((pt, _), (pl, _)), (dh, dw) = strides, padding, dilation
    out = jax.ShapeDtypeStruct(kernel_shape, jnp.float32)
    return jax.ffi.ffi_call(TARGET, out, vmap_method="sequential")(
        x, g, sh=np.int64(sh), sw=np.int64(sw), pt=np.int64(pt), pl=np.int64(pl), dh=np.int64(dh), dw=np.int64(dw))


def _split_by_batch(x, g, kernel_shape, strides, padding, dilation):
    """The call, each device on its images when the batch is split over a mesh.

    With a mesh in context (``jax.set_mesh``; jaxconv's train step is traced under its mesh): a
    ``shard_map`` over the mesh's axes not already split by hand (none inside ``pmap``). Without one, the
    split is unknown while tracing, so ``custom_partitioning`` states it for XLA's partitioner; its
    program cannot be kept in JAX's persistent compilation cache (it holds a Python pointer), which
    is why the mesh path exists: a train step compiled once is reused by every later process.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return _partitioned(x, g, kernel_shape, strides, padding, dilation)
    axes = tuple(a for a in mesh.axis_names if a not in mesh.manual_axes)
    devices = math.prod(mesh.shape[a] for a in axes)
    if devices == 1 or x.shape[0] % devices:  # nothing to split, or XLA replicates the call
        return _call(x, g, kernel_shape, strides, padding, dilation)

    def local(x, g):
        return jax.lax.psum(_call(x, g, kernel_shape, strides, padding, dilation), axes)

    return jax.shard_map(local, in_specs=(P(axes), P(axes)), out_specs=P(), axis_names=set(axes))(x, g)


_partitioned = custom_partitioning(_call, static_argnums=(2, 3, 4, 5))


def _batch_spec(arg_shapes):
    spec = arg_shapes[0].sharding.spec
    return P(spec[0] if len(spec) else None, None, None, None)


def _partition(kernel_shape, strides, padding, dilation, mesh, arg_shapes, result_shape):
    batch = _batch_spec(arg_shapes)

    def local(x, g):
        dw = _call(x, g, kernel_shape, strides, padding, dilation)
        return jax.lax.psum(dw, batch[0]) if batch[0] is not None else dw

    return mesh, local, NamedSharding(mesh, P()), (NamedSharding(mesh, batch), NamedSharding(mesh, batch))


_partitioned.def_partition(
    partition=_partition,
    infer_sharding_from_operands=lambda *args: NamedSharding(args[4], P()),
    sharding_rule="b h w c, b y x o -> i j c o", reduction_factors=("b",),
    need_replication_factors=("h", "w", "c", "y", "x", "o"))
