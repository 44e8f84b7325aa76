"""Sampling from a trained autoregressive run: fresh samples, completions, class-conditional grids."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxconv import sampling
from jaxconv.config import Config
from jaxconv.data.sources import Split, load_split
from jaxconv.errors import ConfigError, DataError, StorageError
from jaxconv.models.heads import DRAWS, check_draw
from jaxconv.models.pixelcnn import AUTOREGRESSIVE_CONFIGS
from jaxconv.train.restore import RunSpec, check_data, load_config, model_of, restore_workdir, run_spec

SAMPLERS = {"cached": sampling.sample_cached, "naive": sampling.sample_naive}


GRID_COLUMNS = 8
CLASS_COLUMNS = 16  # a conditional model's cycling classes get a column each up to this many classes


def image_grid(images: np.ndarray, columns: int = GRID_COLUMNS) -> Image.Image:
    """uint8 [N, H, W, C] -> one PIL image, ``columns`` wide, 1-pixel grey gutters."""
    n, h, w, c = images.shape
    rows = -(-n // columns)
    grid = np.full((rows * (h + 1) + 1, columns * (w + 1) + 1, c), 128, np.uint8)
    for k, image in enumerate(images):
        r, col = divmod(k, columns)
        grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + col * (w + 1):1 + col * (w + 1) + w] = image
    return Image.fromarray(grid[..., 0] if c == 1 else grid)


MAX_NUM = 10_000  # images per ``jaxconv sample`` call: the sampler holds all of them (and its caches) at once
SEED_LIMIT = 2**32  # seeds are 0 <= seed < 2**32: jax.random.key folds larger ones onto these silently
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-30, 1e30  # float32 keeps log p / T finite for every head in this range


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_sample_args(*, num, seed, temperature, sampler: str, complete_rows, label, checkpoint: str = "best",
                      out: Path | None = None, draw: str = "gumbel") -> None:
    """Validates what a ``jaxconv sample`` call asks for, before any checkpoint is read or anything compiled.

    ``num`` 1..MAX_NUM, ``seed`` 0..2**32-1, ``temperature`` a finite number in [1e-30, 1e30], ``complete_rows``
    an int >= 0 and ``label`` an int (their ranges depend on the run: checked in ``sample_workdir``),
    ``checkpoint`` best, latest or a step number, ``out`` a file name with an image suffix (.png).
    """
    if not isinstance(checkpoint, str) or not (checkpoint in ("best", "latest")
                                               or (checkpoint.isascii() and checkpoint.isdigit())):
        raise ConfigError(f"bad checkpoint {checkpoint!r}; allowed values: best, latest, a step number")
    if out is not None:
        out = Path(out)
        if Image.registered_extensions().get(out.suffix.lower()) not in Image.SAVE:
            raise ConfigError(f"--out {out}: name an image file, e.g. samples.png")
        if out.is_dir():
            raise StorageError(f"cannot write {out}: it is a directory")
    if sampler not in SAMPLERS:
        raise ConfigError(f"bad sampler {sampler!r}; allowed values: {', '.join(SAMPLERS)}")
    if draw not in DRAWS:
        raise ConfigError(f"bad draw {draw!r}; allowed values: {', '.join(DRAWS)}")
    if not _is_int(num) or not 1 <= num <= MAX_NUM:
        raise ConfigError(f"--num must be an integer in 1..{MAX_NUM:,}, got {num!r}")
    if not _is_int(seed) or not 0 <= seed < SEED_LIMIT:
        raise ConfigError(f"--seed must be an integer in 0..{SEED_LIMIT - 1} (0 <= seed < 2**32), got {seed!r}")
    if (not isinstance(temperature, (int, float, np.integer, np.floating)) or isinstance(temperature, bool)
            or not MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE):  # NaN fails every comparison
        raise ConfigError(f"--temperature must be finite and > 0 (between {MIN_TEMPERATURE:g} and "
                          f"{MAX_TEMPERATURE:g}), got {temperature!r}")
    if not _is_int(complete_rows) or complete_rows < 0:
        raise ConfigError(f"--complete must be a number of rows >= 0, got {complete_rows!r}")
    if label is not None and not _is_int(label):
        raise ConfigError(f"--label must be a class number, got {label!r}")


def sample_workdir(workdir: Path, out: Path, *, num: int = 16, seed: int = 0, temperature: float = 1.0,
                   sampler: str = "cached", complete_rows: int = 0, label: int | None = None,
                   checkpoint: str = "best", draw: str = "gumbel", progress: bool = False) -> np.ndarray:
    """Draws ``num`` images from a run's checkpoint, writes a PNG grid to ``out``, returns the images.

    ``progress``: a line per sampled row. The report is a host callback inside the compiled sampler, which
    JAX's persistent cache cannot keep, so with it the sampler is compiled in every process.

    A class-conditional run (model.num_classes > 0) draws every image of class ``label``; without it,
    image k is of class k % num_classes, one class per column of the grid (up to CLASS_COLUMNS classes),
    and completions (``complete_rows``: ``num`` validation images spread evenly over the split, from their
    top rows) keep their own image's class.
    Every argument is checked (ConfigError) before the checkpoint is restored: see ``check_sample_args``.
    Reads the work directory alone (config.json, run.json, the checkpoint); completions also read the
    run's validation split (the images they complete).
    """
    check_sample_args(num=num, seed=seed, temperature=temperature, sampler=sampler, complete_rows=complete_rows,
                      label=label, checkpoint=checkpoint, out=out, draw=draw)
    workdir, out = Path(workdir), Path(out)
    run_config = load_config(workdir)
    config = run_config.model
    if not isinstance(config, AUTOREGRESSIVE_CONFIGS):
        raise ConfigError(f"{workdir} holds a {config.family} run; sampling needs a PixelCNN-family model")
    try:
        check_draw(config, draw, float(temperature))
    except ValueError as e:
        raise ConfigError(f"--draw {draw}: {e}") from None
    if label is not None and not config.num_classes:
        raise ConfigError("--label needs a class-conditional model (model.num_classes > 0)")
    if label is not None and not 0 <= label < config.num_classes:
        raise ConfigError(f"--label must be in 0..{config.num_classes - 1} (model.num_classes={config.num_classes}), "
                          f"got {label}")
    spec = run_spec(workdir, run_config)
    shape = (num, *spec.image_shape)
    if not complete_rows < shape[1]:
        raise ConfigError(f"--complete must be in 0..{shape[1] - 1} rows, got {complete_rows}")
    val = _completed_split(run_config, spec, workdir) if complete_rows else None
    # images spread evenly over the split (a split stored class by class then gives every class)
    picked = (np.arange(num) * len(val)) // num if complete_rows else None
    images = jnp.asarray(val.images[picked]) if complete_rows else None
    labels, columns = None, GRID_COLUMNS
    if label is not None:
        labels = jnp.full((num,), label, jnp.int32)
    elif config.num_classes and complete_rows:
        labels = jnp.asarray(val.labels[picked], jnp.int32)  # the completed images' own classes
    elif config.num_classes:
        labels = jnp.arange(num, dtype=jnp.int32) % config.num_classes
        if config.num_classes <= CLASS_COLUMNS:
            columns = config.num_classes
    run_config, _, state = restore_workdir(workdir, checkpoint)
    model = model_of(run_config)
    params = jax.device_get(state.params)
    samples = np.asarray(SAMPLERS[sampler](model, params, jax.random.key(seed), shape, labels=labels, images=images,
                                           known_rows=complete_rows, temperature=float(temperature), draw=draw,
                                           progress=progress))
    write_image(image_grid(samples, columns), out)
    return samples


def _completed_split(config: Config, spec: RunSpec, workdir: Path) -> Split:
    """The run's validation split, whose images ``--complete`` completes."""
    try:
        val = load_split(config.data, "val")
    except DataError as e:
        raise DataError(f"--complete completes the validation images of {workdir}'s data, which cannot be read: "
                        f"{e} (sampling without --complete needs no data)") from None
    check_data(spec, val, f"{config.data.source}:val")
    return val


def write_image(image: Image.Image, out: Path) -> None:
    """Writes ``image`` atomically (a temporary file beside ``out``, then a rename): an interrupted
    write leaves the previous file or none, never half a PNG."""
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        image.save(tmp, format=Image.registered_extensions()[out.suffix.lower()])
        os.replace(tmp, out)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise StorageError(f"cannot write {out}: {e.strerror or e}") from None
