"""Restoring a trained run from its work directory alone: config.json + run.json + a checkpoint.

Nothing here opens the training data. A run records what its model and preprocessing need from
the data when training starts (``_start_state`` in :mod:`jaxconv.train.loop`, process 0):

- ``run.json``: ``{"image_shape": [H, W, C], "input_shape": [h, w, C], "num_classes": N}``: the data's
  image shape (what eval batches hold and what ``sample`` draws), the model's input shape (the
  ``data.crop_size`` window, else the image shape) and the data's class count;
- ``train_mean.npy`` (``data.subtract_mean`` runs only): the train split's mean image [H, W, C],
  float32 pixel units, that the model's input is centred with.

The checkpoint's abstract target (shapes and dtypes of the whole train state: step, params,
optimizer state, rng) is built from the config and the recorded input shape by ``jax.eval_shape``:
nothing is compiled, no array is allocated. A run without ``run.json`` (written by an older jaxconv)
gets its shapes from its data (the validation split).
"""

from __future__ import annotations

import dataclasses
import json
import os
from functools import partial
from pathlib import Path

import jax
import numpy as np

from jaxconv import config as config_lib
from jaxconv.config import Config
from jaxconv.data.sources import Split, image_mean, load_split
from jaxconv.errors import CheckpointError, ConfigError, DataError, StorageError
from jaxconv.models import build_run_model
from jaxconv.train.checkpoint import READ_ATTEMPTS, Checkpoints
from jaxconv.train.state import TrainState, init_state, make_optimizer

RUN_FILE = "run.json"
MEAN_FILE = "train_mean.npy"


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """What a run's model needs to know about its data."""

    image_shape: tuple[int, int, int]  # [H, W, C] of the data's images
    input_shape: tuple[int, int, int]  # [h, w, C] the model sees: the data.crop_size window, else image_shape
    num_classes: int


def spec_of(config: Config, data: Split) -> RunSpec:
    image_shape = tuple(int(n) for n in data.images.shape[1:])
    input_shape = image_shape
    if config.data.crop_size:
        input_shape = (config.data.crop_size, config.data.crop_size, image_shape[-1])
    return RunSpec(image_shape, input_shape, int(data.num_classes))


def write_run_files(workdir: Path, spec: RunSpec, mean: np.ndarray | None) -> None:
    """Writes ``run.json`` and, for data.subtract_mean (``mean``: the train mean image [H, W, C] that
    training uses), ``train_mean.npy``, each atomically (process 0)."""
    text = json.dumps({"image_shape": list(spec.image_shape), "input_shape": list(spec.input_shape),
                       "num_classes": spec.num_classes}) + "\n"
    _atomic(workdir / RUN_FILE, lambda f: f.write(text.encode()))
    if mean is not None:
        _atomic(workdir / MEAN_FILE, lambda f: np.save(f, mean, allow_pickle=False))


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as f:
            write(f)
        os.replace(tmp, path)
    except OSError as e:
        raise StorageError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)


def load_config(workdir: Path) -> Config:
    """The run's config.json (ConfigError naming the file and key when it is missing or bad)."""
    return config_lib.load(Path(workdir) / "config.json")


def run_spec(workdir: Path, config: Config, data: Split | None = None) -> RunSpec:
    """The run's recorded :class:`RunSpec`. A run without ``run.json`` (written by an older jaxconv) gets it
    from ``data`` when given, else from its validation split (DataError saying so when that is missing)."""
    path = Path(workdir) / RUN_FILE
    if not path.exists():
        if data is None:
            try:
                data = load_split(config.data, "val")
            except DataError as e:
                raise DataError(f"{workdir} has no {RUN_FILE} (a run started before jaxconv recorded its input "
                                f"shape), so the shape comes from its data, which cannot be read: {e}") from None
        return spec_of(config, data)
    try:
        raw = json.loads(path.read_text())
        spec = RunSpec(*(tuple(raw[k]) for k in ("image_shape", "input_shape")), raw["num_classes"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} is unreadable ({type(e).__name__}: {e})") from None
    shapes_ok = all(len(s) == 3 and all(type(n) is int and n > 0 for n in s)
                    for s in (spec.image_shape, spec.input_shape))
    if not shapes_ok or type(spec.num_classes) is not int or spec.num_classes < 1:
        raise CheckpointError(f"{path}: expected image_shape and input_shape [H, W, C] of positive integers and "
                              f"num_classes >= 1, got {raw}")
    return spec


def check_data(spec: RunSpec, data: Split, name: str) -> None:
    """DataError unless ``data`` has the images and classes the run was trained on."""
    shape = tuple(data.images.shape[1:])
    if shape != spec.image_shape or data.num_classes != spec.num_classes:
        raise DataError(f"{name}: images {list(shape)} of {data.num_classes} classes, but the run was trained on "
                        f"images {list(spec.image_shape)} of {spec.num_classes} classes")


def train_mean(workdir: Path, config: Config) -> np.ndarray:
    """The train split's mean image [H, W, C] (data.subtract_mean): recorded, else computed from the train split."""
    path = Path(workdir) / MEAN_FILE
    if path.exists():
        try:
            return np.load(path, allow_pickle=False).astype(np.float32, copy=False)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{path} is unreadable ({e})") from None
    try:
        return image_mean(load_split(config.data, "train"))
    except DataError as e:
        raise DataError(f"data.subtract_mean needs the train split's mean image: {workdir} has no {MEAN_FILE} (a run "
                        f"started before jaxconv recorded it), and the train split cannot be read: {e}") from None


def model_of(config: Config):
    """The run's Flax module (its model config, compute dtype and conv policy), as training built it."""
    return build_run_model(config)


def abstract_state(config: Config, spec: RunSpec, sharding: jax.sharding.Sharding) -> TrainState:
    """Shapes and dtypes of the run's train state (nothing computed), every leaf placed by ``sharding``."""
    tx, _ = make_optimizer(config.optim, config.schedule, config.train.steps)
    shapes = jax.eval_shape(partial(init_state, model_of(config), tx, (1, *spec.input_shape), config.train.seed))
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes)


def named_step(checkpoints: Checkpoints, name: str, workdir: Path) -> int:
    """The step that ``best``, ``latest`` or a step number names."""
    if name == "best":
        step = checkpoints.best_step()
    elif name == "latest":
        step = checkpoints.latest_step()
    elif name.isascii() and name.isdigit():
        step = int(name)
        if step not in checkpoints.all_steps():
            raise CheckpointError(f"no checkpoint {step} in {workdir}; steps: {checkpoints.all_steps()}")
    else:
        raise ConfigError(f"bad checkpoint {name!r}; allowed values: best, latest, a step number")
    if step is None:
        raise CheckpointError(f"{workdir} holds no checkpoint")
    return step


def restore_state(workdir: Path, config: Config, spec: RunSpec, checkpoint: str = "best",
                  sharding: jax.sharding.Sharding | None = None) -> tuple[int, TrainState]:
    """(step, train state) of the run's best/latest/numbered checkpoint, its arrays placed by ``sharding``
    (default: this host's first device); the checkpoint's files are checked against their checksums first."""
    workdir = Path(workdir)
    if not (workdir / "checkpoints").is_dir():
        raise CheckpointError(f"{workdir} has no checkpoints/ directory")
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    checkpoints = Checkpoints(workdir / "checkpoints", config.checkpoint, read_only=True)
    try:
        for attempt in range(READ_ATTEMPTS):
            step = named_step(checkpoints, checkpoint, workdir)
            try:
                return step, checkpoints.restore(step, abstract_state(config, spec, sharding))
            except CheckpointError:
                # "latest" or "best" of a live run: its writer can delete that step while this reads it
                # (it keeps the newest few); the name then means another step.
                gone = not (workdir / "checkpoints" / str(step)).exists()
                if checkpoint.isdigit() or not gone or attempt + 1 == READ_ATTEMPTS:
                    raise
                checkpoints.reload()
    finally:
        checkpoints.close()


def restore_workdir(workdir: Path, checkpoint: str = "best",
                    sharding: jax.sharding.Sharding | None = None) -> tuple[Config, int, TrainState]:
    """(config, step, train state) of a run's best/latest/numbered checkpoint, read from the work directory
    alone (config.json, run.json, the checkpoint): no data split is opened."""
    config = load_config(workdir)
    step, state = restore_state(workdir, config, run_spec(workdir, config), checkpoint, sharding)
    return config, step, state
