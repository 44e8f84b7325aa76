"""PixelCNN (van den Oord et al. 2016a) and Gated PixelCNN (van den Oord et al. 2016b), three heads.

Shapes: B batch, H/W height/width, C image channels (1 or 3), F hidden channels, P the head's raw
channels per pixel. The heads (values, scaling, likelihoods, drawing a variable) are
``jaxconv.models.heads``.

Call: ``model.apply({'params': p}, x_scaled [B,H,W,C], labels=None|[B] int, train=False)`` -> the
head's raw output [B, H, W, P] (float32).

The cached sampler (``jaxconv.sampling.sample_cached``) computes one position at a time from these
modules' parameters (their masks from ``jaxconv.models.masked``) and ``layer_dilations``: it relies on the
parameter names and shapes here, and its agreement with ``__call__`` is tested.

pixelcnn: a 7x7 mask-A layer (2h channels), residual blocks 2h -> ReLU -> 1x1 (h) -> ReLU -> 3x3
mask B (h) -> ReLU -> 1x1 (2h) -> +input (the paper's Figure 5), then ReLU -> 1x1 (output_features)
-> ReLU -> 1x1 (P), all mask B. It has the blind spot (``jaxconv.models.causality``).

gated_pixelcnn: a first layer of a shifted vertical conv (rows i-1-r .. i-1) and a horizontal conv
with mask A at the centre tap (F channels each), then ``num_layers`` gated layers: vertical
(r+1) x k conv -> 2F, gate tanh(a) * sigmoid(b); horizontal 1 x (r+1) conv (mask B) -> 2F, plus a
1x1 link from the vertical pre-activation (vertical -> horizontal only), gate, 1x1 (F), residual
on the horizontal stack. The 1x1 outputs of all layers are summed as skip connections and feed
ReLU -> 1x1 (output_features) -> ReLU -> 1x1 (P). Class conditioning: one learned [num_classes, 2F]
bias per layer added to both stacks' gate pre-activations. Dilation: layer l uses
``dilations[l % len(dilations)]``. No blind spot.

Presets (parameter counts checked by tests/test_pixelcnn.py):

| preset | data, head | size | params |
|---|---|---|---|
| pixelcnn_mnist | 28x28x1, bernoulli | h=16 (32 ch), 5 blocks, 7x7 first, 3x3, output 64 | 20,737 |
| pixelcnn_cifar | 32x32x3, softmax | h=128 (256 ch), 12 blocks (15 layers as the paper), output 1024 | 3,650,304 |
| gated_pixelcnn_mnist | 28x28x1, bernoulli | F=32, 5 gated layers, 3x3, dilations 1,2,1,4, output 64 | 111,137 |
| gated_pixelcnn_cifar | 32x32x3, logistic mixture K=5 | F=60, 8 gated layers, 3x3, dilations 1,2,4,8, output 120 | 623,090 |
| gated_pixelcnn_imagenet32 | 32x32x3, softmax | F=384, 20 gated layers, 5x5, no dilation, output 1024 | 122,170,624 |

The paper-size presets follow the papers' stated sizes (PixelRNN paper: 15-layer PixelCNN, h=128;
conditional PixelCNN paper: 20 layers, 384 channels, 5x5 for ImageNet32); the output widths (1024)
are our choice. The small presets are ours.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxconv.errors import ConfigError
from jaxconv.fields import key
from jaxconv.models.heads import HEADS, Head
from jaxconv.models.conv import DEFAULT_POLICY
from jaxconv.models.conv_policy import ConvPolicy
from jaxconv.models.masked import HorizontalConv, MaskedConv2D, VerticalConv



@dataclasses.dataclass(frozen=True)
class _AutoregressiveConfig:
    channels: int = key(1, "image channels C: 1 (grey or binary) or 3 (RGB, ordered R->G->B)")
    head: Head = key("bernoulli", "bernoulli (binary pixels), softmax (256-way per channel) or logistic_mixture "
                     "(PixelCNN++)")
    mixtures: int = key(5, "K, the logistic mixture's components (logistic_mixture only)")
    output_features: int = key(64, "channels of the hidden 1x1 layer before the head")
    num_classes: int = key(0, "> 0: class-conditional on labels 0..num_classes-1 (gated_pixelcnn only); 0: "
                           "unconditional")

    @property
    def colours(self) -> int:
        """Channel groups of the network's masks (see jaxconv.models.masked)."""
        return self.channels if self.head == "softmax" else 1

    @property
    def num_values(self) -> int:
        return 2 if self.head == "bernoulli" else 256

    @property
    def head_channels(self) -> int:
        if self.head == "bernoulli":
            return 1
        if self.head == "softmax":
            return 256 * self.channels
        coeffs = 3 if self.channels == 3 else 0
        return self.mixtures * (1 + 2 * self.channels + coeffs)

    def _validate_common(self, widths: dict[str, int], kernels: dict[str, int], dilations: tuple) -> None:
        if self.channels not in (1, 3):
            raise ConfigError(f"model.channels must be 1 or 3, got {self.channels}")
        if self.head not in HEADS:
            raise ConfigError(f"model.head must be one of {', '.join(HEADS)}, got {self.head!r}")
        if self.head == "bernoulli" and self.channels != 1:
            raise ConfigError("model.head=bernoulli needs model.channels=1 (binary images)")
        if self.mixtures < 1 or self.num_classes < 0:
            raise ConfigError("model.mixtures must be >= 1 and model.num_classes >= 0")
        for name, width in {**widths, "output_features": self.output_features}.items():
            if width < self.colours:
                raise ConfigError(f"model.{name} must be >= {self.colours} (one channel per colour group)")
        for name, k in kernels.items():
            if k < 3 or k % 2 == 0:
                raise ConfigError(f"model.{name} must be odd and >= 3, got {k}")
        if not dilations or any(d < 1 for d in dilations):
            raise ConfigError(f"model.dilations must be a non-empty tuple of positive ints, got {dilations}")


@dataclasses.dataclass(frozen=True)
class PixelCNNConfig(_AutoregressiveConfig):
    family: ClassVar[str] = "pixelcnn"
    hidden: int = key(16, "h: the residual blocks carry 2h channels, h inside")
    num_blocks: int = key(5, "residual blocks after the first (mask A) layer")
    first_kernel: int = key(7, "kernel size of the first (mask A) layer")
    kernel: int = key(3, "kernel size of the blocks' masked (mask B) convs")
    dilations: tuple[int, ...] = key((1,), "dilation of the blocks' kxk convs, cycled over the blocks")
    conv_form: Literal["masked", "cropped"] = key("masked", "masked (full kernels times masks) or cropped (only the "
                                                  "visible taps stored; same outputs)")

    def validate(self) -> None:
        self._validate_common({"hidden": self.hidden}, {"first_kernel": self.first_kernel, "kernel": self.kernel},
                              self.dilations)
        if self.num_blocks < 0 or self.num_classes:
            raise ConfigError("model.num_blocks must be >= 0; pixelcnn is unconditional (num_classes=0)")
        if self.conv_form not in ("masked", "cropped"):
            raise ConfigError(f"model.conv_form must be masked or cropped, got {self.conv_form!r}")


@dataclasses.dataclass(frozen=True)
class GatedPixelCNNConfig(_AutoregressiveConfig):
    family: ClassVar[str] = "gated_pixelcnn"
    features: int = key(32, "F: channels of the vertical and horizontal stacks")
    num_layers: int = key(5, "gated layers after the first layer")
    kernel: int = key(3, "kernel size k of the stacks' convs")
    dilations: tuple[int, ...] = key((1, 2, 1, 4), "layer l uses dilations[l % len(dilations)]; the first layer 1")

    def validate(self) -> None:
        self._validate_common({"features": self.features}, {"kernel": self.kernel}, self.dilations)
        if self.num_layers < 1:
            raise ConfigError(f"model.num_layers must be >= 1, got {self.num_layers}")


AUTOREGRESSIVE_CONFIGS = (PixelCNNConfig, GatedPixelCNNConfig)  # families trained by likelihood

PIXELCNN_PRESETS: dict[str, _AutoregressiveConfig] = {
    "pixelcnn_mnist": PixelCNNConfig(channels=1, head="bernoulli", hidden=16, num_blocks=5, output_features=64),
    "pixelcnn_cifar": PixelCNNConfig(channels=3, head="softmax", hidden=128, num_blocks=12, output_features=1024),
    "gated_pixelcnn_mnist": GatedPixelCNNConfig(channels=1, head="bernoulli", features=32, num_layers=5,
                                                dilations=(1, 2, 1, 4), output_features=64),
    "gated_pixelcnn_cifar": GatedPixelCNNConfig(channels=3, head="logistic_mixture", mixtures=5, features=60,
                                                num_layers=8, dilations=(1, 2, 4, 8), output_features=120),
    "gated_pixelcnn_imagenet32": GatedPixelCNNConfig(channels=3, head="softmax", features=384, num_layers=20,
                                                     kernel=5, dilations=(1,), output_features=1024),
}


# ----------------------------------------------------------------------------------------------
# Modules. Each keeps a whole-image ``__call__`` and the per-row / per-position methods the cached
# sampler uses (jaxconv.sampling); both run the same submodules.


class OutputHead(nn.Module):
    features: int
    out_channels: int
    colours: int
    form: str = "masked"
    dtype: Any = jnp.float32
    policy: ConvPolicy = DEFAULT_POLICY  # which conv implementation each layer uses

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = lambda n, name, relu=False: MaskedConv2D(n, 1, "B", self.colours, form=self.form, dtype=self.dtype,
                                                        policy=self.policy, relu=relu, name=name)
        x = conv(self.features, "hidden", relu=True)(nn.relu(x))
        return conv(self.out_channels, "logits")(x).astype(jnp.float32)


class ResidualBlock(nn.Module):
    """PixelRNN paper Fig. 5: 2h -> ReLU -> 1x1 h -> ReLU -> kxk mask B h -> ReLU -> 1x1 2h, + input."""

    hidden: int
    kernel: int
    dilation: int
    colours: int
    form: str = "masked"
    dtype: Any = jnp.float32
    policy: ConvPolicy = DEFAULT_POLICY  # which conv implementation each layer uses

    def setup(self):
        conv = lambda n, k, d=1, relu=False: MaskedConv2D(n, k, "B", self.colours, d, form=self.form,
                                                          dtype=self.dtype, policy=self.policy, relu=relu)
        self.reduce = conv(self.hidden, 1, relu=True)
        self.spatial = conv(self.hidden, self.kernel, self.dilation, relu=True)
        self.expand = conv(2 * self.hidden, 1)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.finish(x, self.start(x), padded=False)

    def start(self, x: jax.Array) -> jax.Array:
        """The spatial conv's input (computable position by position)."""
        return self.reduce(nn.relu(x))

    def finish(self, x: jax.Array, spatial_in: jax.Array, padded: bool) -> jax.Array:
        return x + self.expand(self.spatial(spatial_in, padded=padded))


class PixelCNN(nn.Module):
    config: PixelCNNConfig
    dtype: Any = jnp.float32
    policy: ConvPolicy = DEFAULT_POLICY  # which conv implementation each layer uses

    def setup(self):
        c = self.config
        self.first = MaskedConv2D(2 * c.hidden, c.first_kernel, "A", c.colours, form=c.conv_form, dtype=self.dtype,
                                  policy=self.policy)
        self.blocks = [ResidualBlock(c.hidden, c.kernel, d, c.colours, c.conv_form, self.dtype, self.policy)
                       for d in _cycle(c.dilations, c.num_blocks)]
        self.head = OutputHead(c.output_features, c.head_channels, c.colours, c.conv_form, self.dtype, self.policy)

    def __call__(self, x: jax.Array, labels: jax.Array | None = None, train: bool = False) -> jax.Array:
        del train  # no dropout or batch statistics
        if labels is not None:
            raise ValueError("pixelcnn is unconditional: call it with labels=None")
        h = self.first(x)  # [B, H, W, 2h]
        for block in self.blocks:
            h = block(h)
        return self.head(h)  # [B, H, W, P]


class GatedLayer(nn.Module):
    features: int
    kernel: int
    dilation: int
    colours: int
    num_classes: int = 0
    dtype: Any = jnp.float32
    policy: ConvPolicy = DEFAULT_POLICY  # which conv implementation each layer uses

    def setup(self):
        f = self.features
        self.vertical_conv = VerticalConv(2 * f, self.kernel, self.dilation, dtype=self.dtype, policy=self.policy)
        self.horizontal_conv = HorizontalConv(2 * f, self.kernel, "B", self.colours, self.dilation, out_tiles=2,
                                              dtype=self.dtype, policy=self.policy)
        # The vertical stack sees only rows above, so the link needs no channel mask.
        self.link = MaskedConv2D(2 * f, 1, "B", colours=1, dtype=self.dtype, policy=self.policy)
        self.residual = MaskedConv2D(f, 1, "B", self.colours, dtype=self.dtype, policy=self.policy)
        if self.num_classes:
            self.class_bias = nn.Embed(self.num_classes, 2 * f)

    def condition(self, labels: jax.Array | None) -> jax.Array | float:
        if not self.num_classes:
            if labels is not None:
                raise ValueError("this model is unconditional: call it with labels=None")
            return 0.0
        if labels is None:
            raise ValueError("this model is class-conditional: pass labels [B]")
        return self.class_bias(labels).astype(self.dtype)[:, None, None, :]  # [B, 1, 1, 2F]

    def vertical(self, v: jax.Array, cond: Any, padded: bool = False) -> tuple[jax.Array, jax.Array]:
        pre = self.vertical_conv(v, padded=padded)
        return _gate(pre + cond), self.link(pre)

    def horizontal(self, h: jax.Array, link: jax.Array, cond: Any, padded: bool = False) -> tuple[jax.Array, jax.Array]:
        """-> (new horizontal stack, residual branch = skip contribution)."""
        out = self.residual(_gate(self.horizontal_conv(h, padded=padded) + link + cond))
        centre = h[:, :, -1:] if padded else h  # a window's last column is the output position
        return centre + out, out


class GatedPixelCNN(nn.Module):
    config: GatedPixelCNNConfig
    dtype: Any = jnp.float32
    policy: ConvPolicy = DEFAULT_POLICY  # which conv implementation each layer uses

    def setup(self):
        c = self.config
        self.vertical_first = VerticalConv(c.features, c.kernel, 1, shifted=True, dtype=self.dtype, policy=self.policy)
        self.horizontal_first = HorizontalConv(c.features, c.kernel, "A", c.colours, 1, dtype=self.dtype,
                                               policy=self.policy)
        self.layers = [GatedLayer(c.features, c.kernel, d, c.colours, c.num_classes, self.dtype, self.policy)
                       for d in _cycle(c.dilations, c.num_layers)]
        self.head = OutputHead(c.output_features, c.head_channels, c.colours, dtype=self.dtype, policy=self.policy)

    def __call__(self, x: jax.Array, labels: jax.Array | None = None, train: bool = False) -> jax.Array:
        del train
        v, h = self.vertical_first(x), self.horizontal_first(x)  # [B, H, W, F] each
        skip = 0.0
        for layer in self.layers:
            cond = layer.condition(labels)
            v, link = layer.vertical(v, cond)
            h, out = layer.horizontal(h, link, cond)
            skip = skip + out
        return self.head(skip)  # [B, H, W, P]


def _gate(x: jax.Array) -> jax.Array:
    a, b = jnp.split(x, 2, axis=-1)
    return jnp.tanh(a) * jax.nn.sigmoid(b)


def _cycle(values: tuple[int, ...], n: int) -> list[int]:
    return [values[i % len(values)] for i in range(n)]


def layer_dilations(config: PixelCNNConfig | GatedPixelCNNConfig) -> list[int]:
    """Dilation of each block (pixelcnn) or gated layer (gated_pixelcnn), in order."""
    count = config.num_blocks if isinstance(config, PixelCNNConfig) else config.num_layers
    return _cycle(config.dilations, count)


def build(config: PixelCNNConfig | GatedPixelCNNConfig, dtype: Any = jnp.float32,
          policy: ConvPolicy = DEFAULT_POLICY) -> nn.Module:
    """The module for a config; ``dtype`` is the compute dtype (params stay float32)."""
    family = PixelCNN if isinstance(config, PixelCNNConfig) else GatedPixelCNN
    return family(config, dtype, policy)
