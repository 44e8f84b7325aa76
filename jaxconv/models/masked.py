"""Causal (masked) convolutions for autoregressive image models.

Shapes: B batch, H/W height/width, Cin/Cout channels, k kernel size (odd), r = k // 2, d dilation,
p = d * r the padding each side. A "window" is a slice of an already padded input. Every layer takes
the input itself (its convolutions pad it, with no padded copy) or, with ``padded=True``, an input
padded already (VALID convolutions), so the same layer computes a whole image or, given the window
around one position, just that position.

Ordering: raster order over pixels, then R, G, B within a pixel. Channel grouping convention:
channel c of an n-channel tensor belongs to colour group ``c * colours // n`` (contiguous blocks:
for an RGB input channel 0 is R, 1 is G, 2 is B; for hidden layers the first third is R, and so on;
when n is not a multiple of 3 the blocks differ in size by one). ``colours`` is 3 for RGB data whose
channels are predicted autoregressively (softmax head) and 1 otherwise (grey or binary data, and the
logistic mixture, whose network is causal per pixel and whose R->G->B dependency is in the head).
At the centre tap, output group g sees input groups < g (mask "A") or <= g (mask "B"); with one
colour, mask A sees nothing at the centre and mask B sees all of it.

Both forms of the kxk masked convolution are one (r+1) x k conv over the rows up to the centre row:
the r rows above whole, the centre row up to the centre tap, which carries the channel mask, and its
r taps right of the centre zero. That spends r of (r+1) * k multiply-adds on zeros (1 of 6 for 3x3,
3 of 28 for 7x7) where a dense kxk conv of the masked kernel spends about half, and one conv costs
less than the exact two (r x k over the rows above, 1 x (r+1) over the centre row) and their sum
(docs/benchmarks.md, "Masked convs"). They differ in what they store:
- "masked": one kxk kernel, as the paper and PyTorch implementations do (the bench's twins count the
  same parameters); its masked-out taps never receive a gradient;
- "cropped": only the two live kernels. ``masked_to_cropped`` converts parameters from the first to
  the second.
"""

from __future__ import annotations

from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxconv.models.conv import DEFAULT_POLICY, conv
from jaxconv.models.conv_policy import ConvPolicy

MaskType = Literal["A", "B"]
KERNEL_INIT = nn.initializers.lecun_normal()


def group_ids(channels: int, colours: int, tiles: int = 1) -> np.ndarray:
    """Colour group of each of ``tiles`` concatenated blocks of ``channels // tiles`` channels."""
    block = channels // tiles
    return np.tile(np.arange(block) * colours // block, tiles)


def centre_mask(cin: int, cout: int, colours: int, mask_type: MaskType, out_tiles: int = 1) -> np.ndarray:
    """[Cin, Cout] 0/1: which input channels an output channel may see at its own position."""
    gin, gout = group_ids(cin, colours)[:, None], group_ids(cout, colours, out_tiles)[None, :]
    allowed = gin < gout if mask_type == "A" else gin <= gout
    return allowed.astype(np.float32)


def live_taps(k: int) -> int:
    """The taps of a kxk mask that can be non-zero: the r rows above and the centre row up to its centre."""
    return k // 2 * (k + 1) + 1


def raster_mask(k: int, cin: int, cout: int, colours: int, mask_type: MaskType,
                out_tiles: int = 1) -> np.ndarray:
    """[k, k, Cin, Cout] 0/1: rows above, the centre row left of centre, and the centre tap's groups."""
    r = k // 2
    mask = np.zeros((k, k, cin, cout), np.float32)
    mask[:r] = 1.0
    mask[r, :r] = 1.0
    mask[r, r] = centre_mask(cin, cout, colours, mask_type, out_tiles)
    return mask


def conv_valid(x: jax.Array, kernel: jax.Array, dilation: int, policy: ConvPolicy, bias: jax.Array | None = None,
               relu: bool = False) -> jax.Array:
    """VALID stride-1 convolution by the implementation ``policy`` picks (``jaxconv.models.conv``)."""
    return conv(x, kernel, 1, "VALID", dilation, policy=policy, bias=bias, relu=relu)


class MaskedConv2D(nn.Module):
    """kxk convolution that sees only earlier variables; "SAME" output size.

    ``padded=True``: ``x`` is already padded by p = dilation * (k // 2) on every side (for example a
    (2p+1) x (2p+1) window around one position), and the output is p smaller on every side. ``relu``: the
    output goes through a ReLU (inside the conv's call where its implementation can: ``jaxconv.models.conv``).
    """

    features: int
    kernel_size: int
    mask_type: MaskType = "B"
    colours: int = 1
    dilation: int = 1
    out_tiles: int = 1  # the output is this many concatenated blocks, each grouped (gated units)
    form: Literal["masked", "cropped"] = "masked"
    dtype: Any = jnp.float32
    policy: ConvPolicy = DEFAULT_POLICY  # which conv implementation each layer uses
    relu: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, *, padded: bool = False) -> jax.Array:
        k, d = self.kernel_size, self.dilation
        r, p = k // 2, self.dilation * (k // 2)
        x = x.astype(self.dtype)
        cin = x.shape[-1]
        mask = raster_mask(k, cin, self.features, self.colours, self.mask_type, self.out_tiles)[:r + 1]
        bias = self.param("bias", nn.initializers.zeros, (self.features,)).astype(self.dtype)
        if self.form == "masked":
            kernel = self.param("kernel", KERNEL_INIT, (k, k, cin, self.features))[:r + 1]
        else:
            row = self.param("kernel_row", KERNEL_INIT, (1, r + 1, cin, self.features))
            kernel = jnp.pad(row, ((0, 0), (0, r), (0, 0), (0, 0)))
            if r > 0:
                kernel = jnp.concatenate([self.param("kernel_above", KERNEL_INIT, (r, k, cin, self.features)), kernel])
        kernel = (kernel * mask).astype(self.dtype)
        if padded:  # output row i reads padded rows i .. i + p; the last p rows are below every output row
            return conv_valid(x[:, :x.shape[1] - p], kernel, d, self.policy, bias, self.relu)
        # The conv pads, so no padded copy of x is made (PixelCNN's train step took 3-6% longer with one).
        return conv(x, kernel, 1, ((p, 0), (p, p)), d, policy=self.policy, bias=bias, relu=self.relu)


def masked_to_cropped(params: dict) -> dict:
    """Masked-form parameters -> cropped-form ones (one layer's dict or a whole tree).

    Any dict with a 4-D square ``kernel`` is taken to be a ``MaskedConv2D``; the masked-out
    taps are dropped (the centre tap's channel mask is applied again at use time).
    """
    if "kernel" in params and np.ndim(params["kernel"]) == 4 and params["kernel"].shape[0] == params["kernel"].shape[1]:
        kernel = params["kernel"]
        r = kernel.shape[0] // 2
        out = {"bias": params["bias"], "kernel_row": kernel[r:r + 1, :r + 1]}
        if r > 0:
            out["kernel_above"] = kernel[:r]
        return out
    return {name: masked_to_cropped(sub) if isinstance(sub, dict) else sub for name, sub in params.items()}


class VerticalConv(nn.Module):
    """Gated PixelCNN vertical stack: a (r+1) x k kernel over the rows up to the output row.

    ``shifted`` (the first layer): the output is moved down one row, so row i sees input rows
    i-1-r .. i-1 only; later layers read a vertical stack that already sees only rows above.
    Padding: top r+1 (shifted, last input row dropped) or d*r; left and right d*r.
    """

    features: int
    kernel_size: int
    dilation: int = 1
    shifted: bool = False
    dtype: Any = jnp.float32
    policy: ConvPolicy = DEFAULT_POLICY  # which conv implementation each layer uses

    @nn.compact
    def __call__(self, x: jax.Array, *, padded: bool = False) -> jax.Array:
        k, d = self.kernel_size, self.dilation
        r = k // 2
        kernel = self.param("kernel", KERNEL_INIT, (r + 1, k, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        padding = ((0, 0), (0, 0))
        if not padded:  # the conv pads (no padded copy of x); shifted: the last input row is cropped
            padding = ((r + 1, -1) if self.shifted else (d * r, 0), (d * r, d * r))
        y = conv(x.astype(self.dtype), kernel.astype(self.dtype), 1, padding, d, policy=self.policy)
        return y + bias.astype(self.dtype)


class HorizontalConv(nn.Module):
    """Gated PixelCNN horizontal stack: 1 x (r+1) kernel over the row up to and including the pixel.

    The last (centre) column carries the channel mask (mask A in the first layer: the pixel's
    own value is not seen; mask B after). Padding: d*r on the left.
    """

    features: int
    kernel_size: int
    mask_type: MaskType = "B"
    colours: int = 1
    dilation: int = 1
    out_tiles: int = 1
    dtype: Any = jnp.float32
    policy: ConvPolicy = DEFAULT_POLICY  # which conv implementation each layer uses

    @nn.compact
    def __call__(self, x: jax.Array, *, padded: bool = False) -> jax.Array:
        r, d = self.kernel_size // 2, self.dilation
        padding = ((0, 0), (0, 0)) if padded else ((0, 0), (d * r, 0))  # the conv pads: no padded copy of x
        cin = x.shape[-1]
        mask = np.ones((1, r + 1, cin, self.features), np.float32)
        mask[0, r] = centre_mask(cin, self.features, self.colours, self.mask_type, self.out_tiles)
        kernel = self.param("kernel", KERNEL_INIT, (1, r + 1, cin, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        y = conv(x.astype(self.dtype), (kernel * mask).astype(self.dtype), 1, padding, d, policy=self.policy)
        return y + bias.astype(self.dtype)
