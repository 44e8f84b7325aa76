"""Model families and their presets.

A family is a frozen config dataclass (variants are data) plus a Flax linen module built from it.
``PRESETS`` names ready-made configs; ``jaxconv list`` prints them.
"""

from __future__ import annotations

import jax.numpy as jnp
import flax.linen as nn

from jaxconv.errors import ConfigError
from jaxconv.models import pixelcnn
from jaxconv.models.alexnet import AlexNet, AlexNetConfig
from jaxconv.models.conv import DEFAULT_POLICY
from jaxconv.models.conv_policy import ConvPolicy
from jaxconv.models.lenet import LeNet5, LeNetConfig

MODEL_CONFIGS: dict[str, type] = {cls.family: cls for cls in (LeNetConfig, AlexNetConfig, *pixelcnn.AUTOREGRESSIVE_CONFIGS)}

PRESETS: dict[str, object] = {
    "lenet5": LeNetConfig(variant="faithful"),
    "lenet5_modern": LeNetConfig(variant="modern"),
    "alexnet": AlexNetConfig(variant="faithful"),  # 224x224, two towers, LRN; 60,965,224 params
    "alexnet_single": AlexNetConfig(variant="single"),  # one tower, no LRN; 62,378,344 params
    "alexnet32": AlexNetConfig(variant="cifar32"),  # 32x32, 1000 classes (ImageNet32); 14,685,544
    "alexnet32_cifar10": AlexNetConfig(variant="cifar32", num_classes=10),  # 12,657,034
    **pixelcnn.PIXELCNN_PRESETS,
}


def preset(name: str):
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def build_model(config, dtype: jnp.dtype = jnp.float32, policy: ConvPolicy = DEFAULT_POLICY) -> nn.Module:
    """The Flax module for a model config; ``dtype`` is the compute dtype (params stay float32);
    ``policy`` picks each conv layer's implementation."""
    if isinstance(config, LeNetConfig):
        return LeNet5(config, dtype=dtype, policy=policy)
    if isinstance(config, AlexNetConfig):
        return AlexNet(config, dtype=dtype, policy=policy)
    if isinstance(config, pixelcnn.AUTOREGRESSIVE_CONFIGS):
        return pixelcnn.build(config, dtype, policy)
    raise ConfigError(f"no model builder for {type(config).__name__}")


def build_run_model(config) -> nn.Module:
    """The model of a run's ``jaxconv.config.Config``: its model, compute dtype and conv policy."""
    return build_model(config.model, jnp.dtype(config.train.dtype), ConvPolicy.from_config(config.conv))
