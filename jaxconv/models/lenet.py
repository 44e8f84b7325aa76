"""LeNet-5: the faithful 1998 network and a modern one.

Shapes: B batch, H/W height/width, C channels. Input [B, 28, 28, 1] (or 32x32) in [0, 1].

Faithful choices (LeCun et al. 1998, section II.B):
- input padded from 28x28 to 32x32 (the paper's 32x32 field with the digit centred in 28x28);
- C1 6@5x5 -> S2 subsampling: the 2x2 *sum* times a trainable coefficient plus a trainable bias
  per map, then the squashing function (12 parameters);
- C3 16@5x5 with the paper's Table I connection table: 60 of the 96 (input map, output map)
  pairs, so 60*25 + 16 = 1,516 parameters; only the connected kernels are stored and the full
  kernel is assembled at use time;
- S4 as S2 (32 parameters); C5 120@5x5 (48,120); F6 84 (10,164);
- squashing f(a) = 1.7159 tanh(2a/3) (the paper's Appendix A);
- output: the paper's Euclidean RBF units with fixed 7x12 bitmap codes and its MAP loss are
  replaced by a dense 84->10 layer trained with softmax cross-entropy (850 parameters): the
  bitmaps are not published in machine-readable form, and softmax is the standard substitute.
Total 60,000 (the paper's figure) + 850 = 60,850 trainable parameters.

Modern: the same layer sizes with ReLU, 2x2 max pooling, a full C3 and a dense head: 61,706. Optional
dropout (``LeNetConfig.dropout``, training only, the ``'dropout'`` rng the train step passes) on the
outputs of C5 and F6, the two hidden dense layers, where a modern small CNN has it (as AlexNet's fc6
and fc7); the faithful network refuses it (the 1998 network has none).

Call: ``model.apply({'params': p}, x, train=bool, rngs={'dropout': key})`` (the key is used only when
training with dropout > 0).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxconv.errors import ConfigError
from jaxconv.fields import key
from jaxconv.models.conv import DEFAULT_POLICY, Conv, conv
from jaxconv.models.conv_policy import ConvPolicy
from jaxconv.models.pooling import max_pool, sum_pool

# LeCun et al. 1998, Table I: which S2 maps (rows 0..5) feed each C3 map (columns 0..15).
C3_TABLE = (
    (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (0, 4, 5), (0, 1, 5),
    (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (0, 3, 4, 5), (0, 1, 4, 5), (0, 1, 2, 5),
    (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)


@dataclasses.dataclass(frozen=True)
class LeNetConfig:
    family: ClassVar[str] = "lenet5"
    variant: Literal["faithful", "modern"] = key("faithful", "faithful (LeCun et al. 1998: scaled tanh, trainable "
                                                 "subsampling, C3 table) or modern (ReLU, max pooling, full C3)")
    num_classes: int = key(10, "output classes (>= 2)")
    dropout: float = key(0.0, "modern only: dropout rate on the outputs of the hidden dense layers C5 and F6, "
                         "training only; in [0, 1); the faithful 1998 network has none (a config error)")

    def validate(self) -> None:
        if self.num_classes < 2:
            raise ConfigError(f"model.num_classes must be >= 2, got {self.num_classes}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.dropout and self.variant == "faithful":
            raise ConfigError(f"model.dropout={self.dropout} applies to variant modern only: the faithful LeNet-5 "
                              f"(1998) has no dropout")

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        """LeNet-5's sizes fit 32x32 inputs (28x28 are padded to 32x32); others fail deep in a layer."""
        if tuple(shape[:2]) not in ((28, 28), (32, 32)):
            raise ConfigError(f"lenet5 takes 28x28 or 32x32 images; the data has {'x'.join(map(str, shape))}")


def lecun_tanh(x: jnp.ndarray) -> jnp.ndarray:
    return 1.7159 * jnp.tanh(x * (2.0 / 3.0))


class Subsample(nn.Module):
    """S2/S4: 2x2 sum pooling, times a trainable per-map coefficient, plus a per-map bias."""

    dtype: jnp.dtype = jnp.float32
    policy: ConvPolicy = DEFAULT_POLICY  # which conv implementation each layer uses

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        channels = x.shape[-1]
        coef = self.param("coef", nn.initializers.ones, (channels,))
        bias = self.param("bias", nn.initializers.zeros, (channels,))
        pooled = sum_pool(x, 2, 2)  # [B, H/2, W/2, C]
        return pooled * coef.astype(self.dtype) + bias.astype(self.dtype)


class SparseC3(nn.Module):
    """C3: a 5x5 convolution whose (in, out) map pairs follow ``C3_TABLE``."""

    dtype: jnp.dtype = jnp.float32
    policy: ConvPolicy = DEFAULT_POLICY  # which conv implementation each layer uses

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        pairs = np.array([(i, o) for o, ins in enumerate(C3_TABLE) for i in ins])  # [60, 2]
        fan_in = np.array([len(C3_TABLE[o]) * 25 for _, o in pairs], np.float32)
        weights = self.param("kernel", _scaled_uniform(fan_in), (5, 5, len(pairs)))
        bias = self.param("bias", nn.initializers.zeros, (len(C3_TABLE),))
        kernel = jnp.zeros((5, 5, x.shape[-1], len(C3_TABLE)), weights.dtype)
        kernel = kernel.at[:, :, pairs[:, 0], pairs[:, 1]].set(weights)  # [5, 5, 6, 16]
        y = conv(x, kernel.astype(self.dtype), policy=self.policy)
        return y + bias.astype(self.dtype)


def _scaled_uniform(fan_in: np.ndarray):
    """LeCun 1998's init: uniform in +-2.4/fan_in, with a per-connection fan-in."""

    def init(key, shape, dtype=jnp.float32):
        limit = jnp.asarray(2.4 / fan_in, dtype)
        return jax.random.uniform(key, shape, dtype, -1.0, 1.0) * limit

    return init


class LeNet5(nn.Module):
    config: LeNetConfig
    dtype: jnp.dtype = jnp.float32  # compute dtype; parameters stay float32
    policy: ConvPolicy = DEFAULT_POLICY  # which conv implementation each layer uses

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
        x = x.astype(self.dtype)
        if x.shape[1] == 28:
            x = jnp.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))  # [B, 32, 32, C]
        conv = lambda n, name: Conv(n, (5, 5), padding="VALID", dtype=self.dtype, policy=self.policy, name=name)
        dense = lambda n, name: nn.Dense(n, dtype=self.dtype, name=name)
        if self.config.variant == "faithful":
            if self.config.dropout:  # validate() refuses it; a hand-built module must not train another network
                raise ConfigError("model.dropout applies to variant modern only")
            x = lecun_tanh(Subsample(self.dtype, name="S2")(conv(6, "C1")(x)))  # [B, 14, 14, 6]
            x = lecun_tanh(Subsample(self.dtype, name="S4")(SparseC3(self.dtype, self.policy, name="C3")(x)))  # [B, 5, 5, 16]
            x = lecun_tanh(conv(120, "C5")(x)).reshape(x.shape[0], -1)  # [B, 120]
            x = lecun_tanh(dense(84, "F6")(x))
        else:
            pool = lambda y: max_pool(y, 2, 2)
            x = pool(nn.relu(conv(6, "C1")(x)))  # [B, 14, 14, 6]
            x = pool(nn.relu(conv(16, "C3")(x)))  # [B, 5, 5, 16]
            drop = nn.Dropout(self.config.dropout, deterministic=not train or not self.config.dropout)
            x = drop(nn.relu(dense(120, "C5")(x.reshape(x.shape[0], -1))))  # [B, 120]
            x = drop(nn.relu(dense(84, "F6")(x)))  # [B, 84]
        return dense(self.config.num_classes, "output")(x).astype(jnp.float32)  # [B, classes]
