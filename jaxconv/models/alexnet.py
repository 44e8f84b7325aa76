"""AlexNet (Krizhevsky, Sutskever & Hinton 2012): the two-tower original, one tower, and a 32x32 net.

Shapes: B batch, H/W height/width, C channels, G towers (groups), K classes.
Input [B, H, W, 3] in [0, 1]; output logits [B, K] in float32.
Call: ``model.apply({'params': p}, x, train=bool, rngs={'dropout': key})`` (the key only when training).

faithful (the paper's section 3 and Figure 2)
- input: 224x224 is padded to 227x227 by conv1, 2 rows/columns of zeros (after centring: the mean
  colour) before and 1 after, the field the layer arithmetic needs: (227 - 11) / 4 + 1 = 55. This
  is torchvision's ``padding=2`` on 224, whose last padded row/column no window reaches. A 227x227
  input is used as is. Pixels are first put back on the paper's scale: x * 255 minus the ImageNet
  mean RGB (123.68, 116.78, 103.94).
  The paper trained on "centred raw RGB values" (it subtracted the per-pixel mean image; the
  per-channel mean is the usual stand-in), and its N(0, 0.01) init and the LRN constants k, alpha
  were chosen for activations on that scale: on [0, 1] inputs LRN would be a constant 1/2^0.75;
- two towers (the two GPUs), G = 2: conv1 is one 96-kernel layer on the full input (each GPU's 48
  kernels see all three colours); conv2, conv4 and conv5 only see their own tower's maps
  (``feature_group_count=2``); conv3 and the dense layers see both towers;
- ReLU after every conv and hidden dense layer; local response normalisation (k=2, n=5,
  alpha=1e-4, beta=0.75, within each tower: crossing towers would need the GPUs to communicate)
  after the ReLUs of conv1 and conv2; overlapping 3x3 stride-2 max pooling after both LRNs and
  after conv5; dropout 0.5 on the outputs of fc6 and fc7 (training only);
- init as the paper: weights N(0, 0.01); biases 1 in conv2, conv4, conv5, fc6, fc7, 0 elsewhere.

    layer  kernel / shape                output        parameters (weights + biases)
    conv1  11x11x3 -> 96, stride 4       55x55x96      11*11*3*96 + 96     =     34,944
    pool   3x3/2 (after LRN)             27x27x96
    conv2  5x5x48 -> 256, pad 2, G=2     27x27x256     5*5*48*256 + 256    =    307,456
    pool   3x3/2 (after LRN)             13x13x256
    conv3  3x3x256 -> 384, pad 1         13x13x384     3*3*256*384 + 384   =    885,120
    conv4  3x3x192 -> 384, pad 1, G=2    13x13x384     3*3*192*384 + 384   =    663,936
    conv5  3x3x192 -> 256, pad 1, G=2    13x13x256     3*3*192*256 + 256   =    442,624
    pool   3x3/2                         6x6x256 = 9216
    fc6    9216 -> 4096                                9216*4096 + 4096    = 37,752,832
    fc7    4096 -> 4096                                4096*4096 + 4096    = 16,781,312
    fc8    4096 -> 1000                                4096*1000 + 1000    =  4,097,000
    total                                                                   60,965,224

  i.e. the paper's "60 million parameters". (A grouped conv's kernel is [kh, kw, C_in / G, C_out]:
  each of the 256 conv2 kernels spans 48 maps, as each GPU's 128 kernels see only that GPU's 48.)

single: one tower with the paper's channels: no groups, no LRN, He-normal init (fan-in, for the
ReLU layers; LeCun-normal for the linear fc8) with zero biases, pixels centred on the [0, 1] scale
(x - mean / 255: the paper's mean subtraction, with a scale that suits this init); otherwise as
faithful. Only the grouped layers' counts change: conv2 5*5*96*256 + 256 = 614,656, conv4
3*3*384*384 + 384 = 1,327,488, conv5 3*3*384*256 + 256 = 884,992, so the total is
60,965,224 + 307,200 + 663,552 + 442,368 = 62,378,344.
(Cross-check of the method: the same sums for torchvision's one-tower 64/192/384/256/256 layout,
23,296 + 307,392 + 663,936 + 884,992 + 590,080 + 37,752,832 + 16,781,312 + 4,097,000, give its
published 61,100,840.)

cifar32: the same recipe for 32x32 images (ImageNet32 with 1000 classes, CIFAR with 10); our
choices: conv1 5x5 stride 1 (a 32x32 image is a 224 one downsampled 7x, and an 11x11 stride-4
conv would leave 8x8 maps), the paper's channels 96/256/384/384/256 in one tower, 'SAME'
padding in every conv, the paper's overlapping 3x3/2 pooling ('VALID') after conv1, conv2 and
conv5 (32 -> 15 -> 7 -> 3), no LRN, two hidden dense layers of 2048 (the 3x3x256 = 2304 features
do not warrant 4096) with ReLU and dropout; init and pixel centring as single.

    conv1  5x5x3 -> 96        32x32x96    5*5*3*96 + 96       =     7,296
    conv2  5x5x96 -> 256      15x15x256   5*5*96*256 + 256    =   614,656
    conv3  3x3x256 -> 384     7x7x384     3*3*256*384 + 384   =   885,120
    conv4  3x3x384 -> 384     7x7x384     3*3*384*384 + 384   = 1,327,488
    conv5  3x3x384 -> 256     7x7x256     3*3*384*256 + 256   =   884,992
    fc6    2304 -> 2048                   2304*2048 + 2048    = 4,720,640
    fc7    2048 -> 2048                   2048*2048 + 2048    = 4,196,352
    fc8    2048 -> K                      2048*K + K          = 2,049,000 (K=1000) / 20,490 (K=10)
    total                                 14,685,544 (K=1000) / 12,657,034 (K=10)

``width`` multiplies every conv and hidden dense width (rounded, to a multiple of G for grouped
layers); 1.0 is the architecture above, the tests use small widths to stay fast on a CPU.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxconv.errors import ConfigError
from jaxconv.fields import key
from jaxconv.models.conv import DEFAULT_POLICY, Conv
from jaxconv.models.conv_policy import ConvPolicy
from jaxconv.models.pooling import max_pool

VARIANTS = ("faithful", "single", "cifar32")
IMAGENET_MEAN_RGB = (123.68, 116.78, 103.94)  # per-channel mean of ImageNet training pixels, 0..255
LRN_PAPER = dict(k=2.0, n=5, alpha=1e-4, beta=0.75)  # the paper's section 3.3


@dataclasses.dataclass(frozen=True)
class AlexNetConfig:
    family: ClassVar[str] = "alexnet"
    variant: Literal["faithful", "single", "cifar32"] = key("faithful", "faithful (2012, two towers, LRN, 224x224), "
                                                            "single (one tower, no LRN) or cifar32 (32x32 inputs)")
    num_classes: int = key(1000, "output classes (>= 2)")
    dropout: float = key(0.5, "dropout rate on the outputs of fc6 and fc7, training only")
    width: float = key(1.0, "multiplies the conv and hidden dense widths; 1.0 = the published sizes")

    def validate(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"model.variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if self.num_classes < 2:
            raise ConfigError(f"model.num_classes must be >= 2, got {self.num_classes}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if not self.width > 0:
            raise ConfigError(f"model.width must be > 0, got {self.width}")


def local_response_norm(x: jnp.ndarray, *, k: float = 2.0, n: int = 5, alpha: float = 1e-4,
                        beta: float = 0.75, groups: int = 1) -> jnp.ndarray:
    """b_i = a_i / (k + alpha * sum_{j=i-n//2}^{i+n//2} a_j^2)^beta over channels (the paper's eq.).

    The sum is clipped at the ends of each of ``groups`` equal channel blocks (the towers).
    No library we use provides it: flax (linen and nnx) and jax.nn have Batch/Layer/Group/RMS/
    Instance norms only, as LRN fell out of use once VGG (2014) found it did not help and batch
    norm replaced it. Beware that PyTorch's ``LocalResponseNorm``, Caffe's and MXNet's LRN divide
    alpha by n (TF's ``local_response_normalization`` does not); this follows the paper.
    """
    b, h, w, c = x.shape
    sq = jnp.square(x.astype(jnp.float32)).reshape(b, h, w, groups, c // groups)  # [B, H, W, G, C/G]
    window = jax.lax.reduce_window(sq, 0.0, jax.lax.add, (1, 1, 1, 1, n), (1, 1, 1, 1, 1),
                                   ((0, 0), (0, 0), (0, 0), (0, 0), (n // 2, (n - 1) // 2)))
    scale = (k + alpha * window.reshape(b, h, w, c)) ** -beta  # [B, H, W, C]
    return x * scale.astype(x.dtype)


def overlapping_pool(x: jnp.ndarray) -> jnp.ndarray:
    """3x3 windows every 2 pixels ('VALID'): [B, H, W, C] -> [B, (H-3)//2+1, (W-3)//2+1, C]."""
    return max_pool(x, 3, 2)


def scaled_width(channels: int, width: float, multiple: int = 1) -> int:
    """A layer's width for ``AlexNetConfig.width`` (rounded to a multiple of the groups)."""
    return max(multiple, multiple * round(channels * width / multiple))


class AlexNet(nn.Module):
    config: AlexNetConfig
    dtype: jnp.dtype = jnp.float32  # compute dtype; parameters stay float32
    policy: ConvPolicy = DEFAULT_POLICY  # which conv implementation each layer uses

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
        cfg = self.config
        faithful = cfg.variant == "faithful"
        groups = 2 if faithful else 1
        ch = lambda c, g=1: scaled_width(c, cfg.width, g)
        if faithful:  # the paper's init, on the paper's pixel scale
            kernel_init = nn.initializers.normal(0.01)
            bias = lambda one: nn.initializers.ones if one else nn.initializers.zeros
        else:
            kernel_init = nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")
            bias = lambda one: nn.initializers.zeros

        def conv(features, kernel, name, *, strides=1, padding=None, groups=1, bias_one=False):
            same = ((kernel // 2, kernel // 2),) * 2  # 'SAME' for the odd kernels at stride 1
            return Conv(features, (kernel, kernel), strides=strides, padding=same if padding is None else padding,
                        groups=groups, dtype=self.dtype, policy=self.policy, kernel_init=kernel_init,
                        bias_init=bias(bias_one), name=name)

        def dense(features, name, bias_one=False, init=kernel_init):
            return nn.Dense(features, dtype=self.dtype, kernel_init=init, bias_init=bias(bias_one), name=name)

        x = x.astype(self.dtype)  # [B, H, W, 3]
        mean = jnp.asarray(IMAGENET_MEAN_RGB, self.dtype)
        x = x * 255.0 - mean if faithful else x - mean / 255.0  # centred; faithful on the 0..255 scale
        if cfg.variant == "cifar32":
            x = overlapping_pool(nn.relu(conv(ch(96), 5, "conv1")(x)))  # [B, 15, 15, 96]
            x = overlapping_pool(nn.relu(conv(ch(256), 5, "conv2")(x)))  # [B, 7, 7, 256]
            hidden = ch(2048)
        else:
            pad = ((2, 1), (2, 1)) if x.shape[1:3] == (224, 224) else "VALID"  # 224 -> 227 field
            norm = (lambda y: local_response_norm(y, **LRN_PAPER, groups=groups)) if faithful else (lambda y: y)
            x = nn.relu(conv(ch(96, groups), 11, "conv1", strides=4, padding=pad)(x))  # [B, 55, 55, 96]
            x = overlapping_pool(norm(x))  # [B, 27, 27, 96]
            x = nn.relu(conv(ch(256, groups), 5, "conv2", groups=groups, bias_one=True)(x))  # [B, 27, 27, 256]
            x = overlapping_pool(norm(x))  # [B, 13, 13, 256]
            hidden = ch(4096)
        x = nn.relu(conv(ch(384, groups), 3, "conv3")(x))  # [B, 13, 13, 384] (cifar32: 7x7)
        x = nn.relu(conv(ch(384, groups), 3, "conv4", groups=groups, bias_one=True)(x))  # [B, 13, 13, 384]
        x = nn.relu(conv(ch(256, groups), 3, "conv5", groups=groups, bias_one=True)(x))  # [B, 13, 13, 256]
        x = overlapping_pool(x)  # [B, 6, 6, 256] (cifar32: 3x3)
        x = x.reshape(x.shape[0], -1)  # [B, 9216] (cifar32: 2304)
        drop = nn.Dropout(cfg.dropout, deterministic=not train)
        x = drop(nn.relu(dense(hidden, "fc6", bias_one=True)(x)))  # [B, 4096] (cifar32: 2048)
        x = drop(nn.relu(dense(hidden, "fc7", bias_one=True)(x)))  # [B, 4096]
        # He init keeps the variance through a ReLU; the linear classifier gets LeCun's 1/fan_in.
        fc8_init = kernel_init if faithful else nn.initializers.lecun_normal()
        return dense(cfg.num_classes, "fc8", init=fc8_init)(x).astype(jnp.float32)  # [B, K]
