"""Two conv kernels for `jaxconv bench conv --impl examples/my_kernels.py:conv` (docs/benchmarks.md).

jaxconv calls fn(x, kernel, strides, padding, dilation, groups) -> y: x [B, H, W, Cin] (NHWC), kernel
[kh, kw, Cin / groups, Cout] (HWIO), padding ((top, bottom), (left, right)) (a negative side crops the
input: PixelCNN's causal convs have one), strides and dilation pairs;
y [B, Ho, Wo, Cout], lax.conv_general_dilated's cross-correlation, in x's dtype.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax


def conv(x, kernel, strides, padding, dilation, groups):
    """im2col: each kernel tap's strided view of the padded input, then one matmul per group."""
    kh, kw, cg, cout = kernel.shape
    (sh, sw), (dh, dw) = strides, dilation
    x = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (*padding[0], 0), (*padding[1], 0), (0, 0, 0)))
    b, h, w, _ = x.shape
    ho, wo = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
    cols = jnp.stack([x[:, i * dh:i * dh + sh * (ho - 1) + 1:sh, j * dw:j * dw + sw * (wo - 1) + 1:sw]
                      for i in range(kh) for j in range(kw)], axis=3)  # [B, Ho, Wo, kh * kw, Cin]
    cols = cols.reshape(b, ho, wo, kh * kw, groups, cg)
    y = jnp.einsum("bhwtgc,tcgo->bhwgo", cols, kernel.reshape(kh * kw, cg, groups, cout // groups),
                   preferred_element_type=jnp.float32)
    return y.reshape(b, ho, wo, cout).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def conv_xla_grads(x, kernel, strides, padding, dilation, groups):
    """The output by `conv`, both gradients by XLA's conv: a custom_vjp, whose rule the bench uses."""
    return conv(x, kernel, strides, padding, dilation, groups)


def _forward(x, kernel, strides, padding, dilation, groups):
    return conv(x, kernel, strides, padding, dilation, groups), (x, kernel)


def _backward(strides, padding, dilation, groups, saved, g):
    xla = lambda x, k: lax.conv_general_dilated(x, k, strides, padding, rhs_dilation=dilation,
                                                feature_group_count=groups,
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jax.vjp(xla, *saved)[1](g)  # (dx, dkernel)


conv_xla_grads.defvjp(_forward, _backward)
