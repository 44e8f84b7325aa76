"""Pictures that explain the models (``jaxconv viz ...``)."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp

from jaxconv.errors import ConfigError
from jaxconv.models import build_model, causality, preset
from jaxconv.models.pixelcnn import AUTOREGRESSIVE_CONFIGS


def dependency_picture(out: Path, presets: tuple[str, ...] = ("pixelcnn_mnist", "gated_pixelcnn_mnist"),
                       size: int = 12, position: tuple[int, int] | None = None, seed: int = 0) -> Path:
    """Renders, side by side, which input pixels one output pixel of each preset depends on.

    Measured (gradients at random inputs, ``jaxconv.models.causality``) on freshly initialised
    models over ``size`` x ``size`` images: the receptive field, not a trained model's weights, makes
    the blind spot, so no training is needed. Default position: the centre pixel.
    """
    if size < 4:
        raise ConfigError(f"--size must be >= 4, got {size}")
    i, j = position if position is not None else (size // 2, size // 2)
    if not (0 <= i < size and 0 <= j < size):
        raise ConfigError(f"--position {i},{j} lies outside the {size}x{size} image")
    maps = {}
    for name in presets:
        config = preset(name)
        if not isinstance(config, AUTOREGRESSIVE_CONFIGS):
            raise ConfigError(f"{name} is not a PixelCNN-family preset")
        model = build_model(config)
        shape = (size, size, config.channels)
        params = model.init(jax.random.key(seed), jnp.zeros((1, *shape)),
                            labels=jnp.zeros((1,), jnp.int32) if config.num_classes else None)["params"]
        maps[name] = causality.dependency_maps(model, params, shape, seed=seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    return causality.render_png(maps, (i, j, 0), out)
