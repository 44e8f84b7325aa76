"""jaxconv's one 2-D convolution entry point (``conv``) and layer (``Conv``): the implementation
(``jaxconv.models.conv_impls``) that the conv policy (``jaxconv.models.conv_policy``) picks for the layer.

x [B, H, W, Cin] (NHWC), kernel [kh, kw, Cin / groups, Cout] (HWIO) -> [B, Ho, Wo, Cout].
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxconv.models import conv_impls
from jaxconv.models.conv_impls import Padding, pair
from jaxconv.models.conv_policy import ConvPolicy, signature

DEFAULT_POLICY = ConvPolicy()  # the rules, no table, nothing forced


def conv(x: jax.Array, kernel: jax.Array, strides: int | Sequence[int] = 1, padding: Padding | str = "VALID",
         dilation: int | Sequence[int] = 1, groups: int = 1, impl: str | None = None,
         policy: ConvPolicy = DEFAULT_POLICY, bias: jax.Array | None = None, relu: bool = False) -> jax.Array:
    """x [B, H, W, Cin], kernel [kh, kw, Cin/groups, Cout] -> [B, Ho, Wo, Cout].

    ``padding``: "VALID" or explicit ((top, bottom), (left, right)). ``impl``: this implementation (a
    name or "forward/input_grad/kernel_grad"); None: ``policy``'s choice for the layer. ``bias`` [Cout] is
    added to the output, which then goes through a ReLU if ``relu`` (``conv_impls.apply`` says where).
    """
    if isinstance(padding, str):
        if padding.upper() != "VALID":
            raise ValueError("padding must be 'VALID' or explicit ((top, bottom), (left, right))")
        padding = ((0, 0), (0, 0))
    padding = tuple(tuple(int(v) for v in p) for p in padding)
    strides, dilation = pair(strides), pair(dilation)
    if x.shape[-1] != kernel.shape[2] * groups or kernel.shape[3] % groups:
        raise ValueError(f"input channels {x.shape[-1]} / kernel {kernel.shape} do not fit groups={groups}")
    if impl is None:
        impl = policy.choose(signature(x.shape, kernel.shape, x.dtype, strides, padding, dilation, groups))
    return conv_impls.apply(impl, x, kernel, strides, padding, dilation, groups, bias, relu)


class Conv(nn.Module):
    """``flax.linen.Conv``'s parameters ("kernel" [kh, kw, Cin, Cout], "bias") computed by ``conv``:
    a drop-in for ``nn.Conv(features, kernel_size, padding="VALID" or explicit, dtype=...)``."""

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
    policy: ConvPolicy = DEFAULT_POLICY

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1] // self.groups, self.features))
        y = conv(x.astype(self.dtype), kernel.astype(self.dtype), self.strides, self.padding, self.dilation,
                 self.groups, policy=self.policy)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,)).astype(self.dtype)
        return y
