"""Pictures that explain the models (``jaxconv viz ...``)."""

from __future__ import annotations

from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxconv import tasks
from jaxconv.config import DataConfig
from jaxconv.data.sources import load_split
from jaxconv.errors import ConfigError, DataError
from jaxconv.models import build_model, causality, preset
from jaxconv.models.pixelcnn import AUTOREGRESSIVE_CONFIGS
from jaxconv.train.restore import check_data, load_config, model_of, restore_workdir, run_spec, train_mean


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


# Classic hand-made 3x3 kernels from the CNN-basics lecture thread (Prewitt edges and a box blur).
HAND_KERNELS = {
    "vertical edge": np.array([[1, 0, -1], [1, 0, -1], [1, 0, -1]], np.float32),
    "horizontal edge": np.array([[1, 1, 1], [0, 0, 0], [-1, -1, -1]], np.float32),
    "box blur": np.full((3, 3), 1 / 9, np.float32),
}


def hand_kernels_picture(out: Path, index: int = 0) -> Path:
    """An embedded-MNIST validation digit through each hand-made kernel, then 2x2 max and average pooling."""
    digits = load_split(DataConfig(source="mnist"), "val").images
    if not 0 <= index < len(digits):
        raise ConfigError(f"--index must be in 0..{len(digits) - 1}, got {index}")
    x = jnp.asarray(digits[index:index + 1], jnp.float32) / 255.0  # [1, 28, 28, 1]
    rows = [("digit", [("input", digits[index, ..., 0])])]
    for name, kernel in HAND_KERNELS.items():
        y = jax.lax.conv_general_dilated(x, jnp.asarray(kernel)[:, :, None, None], (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))  # [1, 28, 28, 1]
        rows.append((name, [("kernel", kernel), ("convolved", y[0, ..., 0]),
                            ("max pool 2x2", nn.max_pool(y, (2, 2), strides=(2, 2))[0, ..., 0]),
                            ("avg pool 2x2", nn.avg_pool(y, (2, 2), strides=(2, 2))[0, ..., 0])]))
    return _grid_figure(rows, out)


def filters_picture(workdir: Path, out: Path, checkpoint: str = "best") -> Path:
    """The first convolution's kernels of a trained run, one tile per output channel (reads the work
    directory alone: no data)."""
    config, step, state = restore_workdir(workdir, checkpoint)
    kernels = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(jax.device_get(state.params))
               if getattr(path[-1], "key", None) == "kernel" and np.ndim(leaf) == 4]
    if not kernels:
        raise ConfigError(f"{workdir}: the model has no 2-D convolution kernel")
    kernel = np.asarray(kernels[0], np.float32)  # [kh, kw, Cin, Cout]
    tiles = [(f"{k}", kernel[..., k] if kernel.shape[2] == 3 else kernel[..., 0, k]) for k in range(kernel.shape[-1])]
    columns = 8
    rows = [(f"filters {r * columns}..", tiles[r * columns:(r + 1) * columns]) for r in range(-(-len(tiles) // columns))]
    return _grid_figure(rows, out, title=f"{config.name}: first conv {kernel.shape}, step {step}")


def features_picture(workdir: Path, out: Path, layers: tuple[str, ...] = (), index: int = 0,
                     checkpoint: str = "best", max_channels: int = 8) -> Path:
    """A validation image and its feature maps after the chosen layers (default: every layer with
    spatial output, captured through Flax's ``capture_intermediates``). Reads the run's validation split
    (the image shown) besides its work directory."""
    config = load_config(workdir)
    try:
        val = load_split(config.data, "val")
    except DataError as e:
        raise DataError(f"viz features shows a validation image of {workdir}'s data, which cannot be read: {e} "
                        f"(viz filters needs no data)") from None
    check_data(run_spec(workdir, config, val), val, f"{config.data.source}:val")
    images = val.images
    if not 0 <= index < len(images):
        raise ConfigError(f"--index must be in 0..{len(images) - 1}, got {index}")
    _, step, state = restore_workdir(workdir, checkpoint)
    model = model_of(config)
    mean = train_mean(workdir, config) if config.data.subtract_mean else None
    task = tasks.task_for(model, config, mean)

    @jax.jit  # one program: op by op, each of the model's ops was compiled on its own (seconds on a CPU)
    def feature_maps(params, batch):
        # What the model sees in evaluation: the task's preprocessing (scaling, mean, central crop), and
        # a class-conditional model the image's own label.
        x = task.inputs(batch["images"], jax.random.key(0), False)
        return model.apply({"params": params}, x, **task.model_kwargs(batch), train=False,
                           capture_intermediates=True, mutable=["intermediates"])[1]

    captured = feature_maps(jax.device_get(state.params), {"images": jnp.asarray(images[index:index + 1]),
                                                          "labels": jnp.asarray(val.labels[index:index + 1])})
    maps = {name: value["__call__"][0] for name, value in captured["intermediates"].items()
            if isinstance(value, dict) and "__call__" in value and value["__call__"][0].ndim == 4
            and min(value["__call__"][0].shape[1:3]) > 1}  # 1x1 maps (C5) show nothing
    unknown = [name for name in layers if name not in maps]
    if unknown or not maps:
        raise ConfigError(f"unknown layer {unknown[0] if unknown else ''!r}; layers with feature maps: {', '.join(maps)}")
    image = images[index]
    rows = [("input", [(f"val {index}", image[..., 0] if image.shape[-1] == 1 else image)])]
    for name in layers or tuple(maps):
        fmap = np.asarray(maps[name][0], np.float32)  # [H, W, C]
        shown = min(max_channels, fmap.shape[-1])
        cut = f"\n(first {shown} of {fmap.shape[-1]} maps)" if shown < fmap.shape[-1] else ""
        rows.append((f"{name} {fmap.shape}{cut}", [(str(c), fmap[..., c]) for c in range(shown)]))
    return _grid_figure(rows, out, title=f"{config.name}: feature maps, step {step}")


def _grid_figure(rows: list[tuple[str, list[tuple[str, np.ndarray]]]], out: Path, title: str = "") -> Path:
    """One row of titled tiles per entry; 2-D tiles in grey (symmetric range if signed), 3-D as RGB."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = max(len(tiles) for _, tiles in rows)
    fig, axes = plt.subplots(len(rows), columns, figsize=(1.6 * columns + 1.2, 1.7 * len(rows)), squeeze=False)
    for r, (label, tiles) in enumerate(rows):
        axes[r][0].set_ylabel(label, fontsize=8)
        for c in range(columns):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(tiles):
                ax.axis("off")
                continue
            name, tile = tiles[c]
            tile = np.asarray(tile, np.float32)
            if tile.ndim == 3:  # RGB: stretch to [0, 1]
                ax.imshow((tile - tile.min()) / max(np.ptp(tile), 1e-12))
            elif tile.min() < 0:
                bound = max(np.abs(tile).max(), 1e-12)
                ax.imshow(tile, cmap="RdBu_r", vmin=-bound, vmax=bound)
            else:
                ax.imshow(tile, cmap="gray", vmin=0)
            ax.set_title(name, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
