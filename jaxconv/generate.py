"""Sampling from a trained autoregressive run: fresh samples, completions, class-conditional grids."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxconv import sampling
from jaxconv.errors import ConfigError
from jaxconv.models import build_model
from jaxconv.models.pixelcnn import AUTOREGRESSIVE_CONFIGS
from jaxconv.train.loop import restore_workdir

SAMPLERS = {"cached": sampling.sample_cached, "naive": sampling.sample_naive}


def image_grid(images: np.ndarray, columns: int = 8) -> Image.Image:
    """uint8 [N, H, W, C] -> one PIL image, ``columns`` wide, 1-pixel grey gutters."""
    n, h, w, c = images.shape
    rows = -(-n // columns)
    grid = np.full((rows * (h + 1) + 1, columns * (w + 1) + 1, c), 128, np.uint8)
    for k, image in enumerate(images):
        r, col = divmod(k, columns)
        grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + col * (w + 1):1 + col * (w + 1) + w] = image
    return Image.fromarray(grid[..., 0] if c == 1 else grid)


def sample_workdir(workdir: Path, out: Path, *, num: int = 16, seed: int = 0, temperature: float = 1.0,
                   sampler: str = "cached", complete_rows: int = 0, label: int | None = None,
                   checkpoint: str = "best") -> np.ndarray:
    """Draws ``num`` images from a run's checkpoint, writes a PNG grid to ``out``, returns the images."""
    if sampler not in SAMPLERS:
        raise ConfigError(f"bad sampler {sampler!r}; allowed values: {', '.join(SAMPLERS)}")
    run, _, state = restore_workdir(workdir, checkpoint)
    config = run.config.model
    if not isinstance(config, AUTOREGRESSIVE_CONFIGS):
        raise ConfigError(f"{workdir} holds a {config.family} run; sampling needs a PixelCNN-family model")
    if num <= 0 or temperature <= 0:
        raise ConfigError("--num and --temperature must be > 0")
    shape = (num, *run.val_data.images.shape[1:])
    if not 0 <= complete_rows < shape[1]:
        raise ConfigError(f"--complete must be in 0..{shape[1] - 1} rows")
    images = jnp.asarray(np.resize(run.val_data.images, shape)) if complete_rows else None
    labels = None
    if config.num_classes:
        labels = jnp.full((num,), label, jnp.int32) if label is not None else jnp.arange(num) % config.num_classes
    elif label is not None:
        raise ConfigError("--label needs a class-conditional model (model.num_classes > 0)")
    model = build_model(config, jnp.dtype(run.config.train.dtype))
    params = jax.device_get(state.params)
    samples = np.asarray(SAMPLERS[sampler](model, params, jax.random.key(seed), shape, labels=labels, images=images,
                                           known_rows=complete_rows, temperature=temperature, progress=True))
    out.parent.mkdir(parents=True, exist_ok=True)
    image_grid(samples).save(out)
    return samples
