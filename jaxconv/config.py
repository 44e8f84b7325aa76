"""Typed, frozen run configuration and type-checked ``section.key=value`` overrides.

A run is described by one :class:`Config`; every section is a frozen dataclass, so a config is
hashable, printable and can be written to (and read back from) ``WORKDIR/config.json``.
The model section is a family-specific dataclass (see ``jaxconv.models``); it is stored with its
``family`` name so that ``jaxconv eval WORKDIR`` can rebuild the same model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal

from jaxconv.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class DataConfig:
    # "mnist" (embedded 5k MNIST), "synthetic" (random images of `image_shape`), "imagenet32" /
    # "imagenet64" (a directory from `jaxconv data prepare`), "tfds:NAME" (a TFDS dataset prepared in
    # array_record format; see jaxconv.data.tfds_source for the split mapping and options).
    source: str = "mnist"
    # The source's file or directory; empty = its default (mnist: the embedded file; tfds: the TFDS
    # data_dir, $TFDS_DATA_DIR or ~/tensorflow_datasets). imagenet32/64: the prepared directory.
    path: str = ""
    # How pixels reach the model: "unit" = x/255 in [0,1]; "binary" = (x > 127) in {0,1} (fixed
    # threshold, see jaxconv.data.sources); "uint8" = raw 0..255 integers (8-bit density models).
    pixels: Literal["unit", "binary", "uint8"] = "unit"
    batch_size: int = 128  # global batch, divided over all devices of all hosts
    eval_batch_size: int = 500  # rounded up to a multiple of the device count; the last batch is masked
    seed: int = 0  # batch order is a pure function of (seed, step)
    image_shape: tuple[int, ...] = (28, 28, 1)  # synthetic source only
    num_examples: int = 1024  # synthetic source only
    num_classes: int = 10  # synthetic source only
    prefetch: int = 2  # batches staged on the devices ahead of the step
    # Augmentation (classification only): on the device inside the jitted train step, random from
    # (train.seed, step); evaluation never augments. See jaxconv.data.augment.
    augment_crop_pad: int = 0  # pad each side by P pixels, then crop a random H x W window; 0 = off
    augment_flip: bool = False  # random horizontal flip, probability 1/2
    # Subtract the train split's mean image (after scaling to [0, 1]); in training *and* evaluation,
    # since it is normalisation, not augmentation. pixels="unit" only.
    subtract_mean: bool = False
    # Classification: train on a random crop_size x crop_size window of every image (after any
    # augment_crop_pad padding) and evaluate on the central one, e.g. AlexNet's 224 of 256; 0 = the
    # whole image. The model then sees crop_size x crop_size inputs.
    crop_size: int = 0
    # tfds: sources only: scale each image's shorter side to N pixels and keep the central N x N
    # (Pillow, bilinear; once, when a split is decoded into the cache), e.g. 256 for AlexNet; 0 = keep
    # the stored images, whose shape must then be fixed. Datasets of varying image size (imagenet2012)
    # need it.
    image_size: int = 0


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    name: Literal["sgd", "momentum", "adam", "adamw"] = "adam"
    learning_rate: float = 1e-3  # peak learning rate; the schedule scales it
    momentum: float = 0.9
    nesterov: bool = False
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0  # decoupled for adamw, L2 added to the gradient otherwise
    grad_clip_norm: float = 0.0  # 0 = no clipping


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    name: Literal["constant", "cosine", "step"] = "constant"
    warmup_steps: int = 0
    final_factor: float = 0.0  # cosine: final lr = peak * final_factor
    boundaries: tuple[int, ...] = ()  # step: multiply by `decay_factor` at each boundary
    decay_factor: float = 0.1


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    seed: int = 0  # parameter init and per-step randomness (dropout, sampling)
    log_every: int = 50  # metrics leave the device only this often
    eval_every: int = 500  # 0 = only at the end
    dtype: Literal["float32", "bfloat16"] = "float32"  # compute dtype; params stay float32
    nonfinite: Literal["stop", "skip"] = "stop"  # on NaN/Inf: stop the run, or skip the update
    progress: bool = True


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every: int = 500  # save every N steps (and at the end, and on SIGTERM); 0 = only then
    keep_latest: int = 2
    keep_best: int = 1  # 0 = keep no best-of checkpoints
    best_metric: str = "accuracy"  # a validation metric name
    best_mode: Literal["min", "max"] = "max"
    async_save: bool = True


@dataclasses.dataclass(frozen=True)
class ParallelConfig:
    mode: Literal["jit", "pmap"] = "jit"  # jit + Mesh/NamedSharding, or jax.pmap + lax.pmean
    num_devices: int = 0  # local devices to use; 0 = all
    # "auto": call jax.distributed.initialize() when a cluster environment (or the fields below)
    # says the run has several processes; "off": never.
    distributed: Literal["auto", "off"] = "auto"
    coordinator_address: str = ""  # e.g. "127.0.0.1:1234"; empty = let JAX detect it
    num_processes: int = 0  # 0 = detect
    process_id: int = -1  # -1 = detect


@dataclasses.dataclass(frozen=True)
class Config:
    name: str
    model: Any  # a model family's frozen config dataclass (jaxconv.models.MODEL_CONFIGS)
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    train: TrainConfig = TrainConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    parallel: ParallelConfig = ParallelConfig()

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


SECTIONS = ("model", "data", "optim", "schedule", "train", "checkpoint", "parallel")


# ----------------------------------------------------------------------------------------------
# Overrides: `--set section.key=value`


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """Returns ``config`` with each ``section.key=value`` applied, type-checked against the field."""
    for item in overrides:
        path, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        section_name, dot, key = path.strip().partition(".")
        if not dot or section_name not in SECTIONS:
            raise ConfigError(f"unknown config section in {path!r}; sections: {', '.join(SECTIONS)}")
        section = getattr(config, section_name)
        hints = _field_types(type(section))
        if key not in hints:
            raise ConfigError(f"unknown config key {path!r}; keys of {section_name!r}: {', '.join(hints)}")
        value = parse_value(text.strip(), hints[key], path)
        config = dataclasses.replace(config, **{section_name: dataclasses.replace(section, **{key: value})})
    validate(config)
    return config


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init and f.name != "family"}


def parse_value(text: str, annotation: Any, path: str) -> Any:
    """Parses ``text`` as ``annotation`` (bool/int/float/str/Literal/tuple); ConfigError if it is not."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if text not in allowed:
            raise ConfigError(f"bad value {text!r} for {path}; allowed values: {', '.join(map(str, allowed))}")
        return text
    if origin is tuple:
        (item_type, _) = typing.get_args(annotation)
        parts = [p for p in text.strip("()[] ").split(",") if p.strip()]
        return tuple(parse_value(p.strip(), item_type, path) for p in parts)
    if origin in (typing.Union, types.UnionType):  # Optional[X]
        if text.lower() in ("none", "null", ""):
            return None
        (inner,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        return parse_value(text, inner, path)
    if annotation is bool:
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"bad value {text!r} for {path}; allowed values: true, false")
    if annotation in (int, float):
        try:
            return annotation(text)
        except ValueError:
            raise ConfigError(f"bad value {text!r} for {path}; expected {annotation.__name__}") from None
    if annotation is str:
        return text
    raise ConfigError(f"{path} cannot be set from the command line")  # pragma: no cover


# ----------------------------------------------------------------------------------------------
# Validation: values that type-check but cannot work.

_POSITIVE = {
    "data": ("batch_size", "eval_batch_size", "num_examples", "num_classes", "prefetch"),
    "train": ("steps", "log_every"),
    "checkpoint": ("keep_latest",),
}
_NON_NEGATIVE = {
    "data": ("augment_crop_pad", "crop_size", "image_size"),
    "train": ("eval_every",),
    "checkpoint": ("every", "keep_best"),
    "schedule": ("warmup_steps",),
    "parallel": ("num_devices", "num_processes"),
    "optim": ("weight_decay", "grad_clip_norm"),
}


def validate(config: Config) -> None:
    for section, keys in _POSITIVE.items():
        for key in keys:
            if getattr(getattr(config, section), key) <= 0:
                raise ConfigError(f"{section}.{key} must be > 0, got {getattr(getattr(config, section), key)}")
    for section, keys in _NON_NEGATIVE.items():
        for key in keys:
            if getattr(getattr(config, section), key) < 0:
                raise ConfigError(f"{section}.{key} must be >= 0, got {getattr(getattr(config, section), key)}")
    if config.optim.learning_rate <= 0:
        raise ConfigError(f"optim.learning_rate must be > 0, got {config.optim.learning_rate}")
    if config.data.subtract_mean and config.data.pixels != "unit":
        raise ConfigError(f"data.subtract_mean needs data.pixels=unit, got {config.data.pixels!r}")
    if any(s <= 0 for s in config.data.image_shape) or len(config.data.image_shape) != 3:
        raise ConfigError(f"data.image_shape must be three positive sizes H,W,C, got {config.data.image_shape}")
    if config.data.image_size and not config.data.source.startswith("tfds:"):
        raise ConfigError(f"data.image_size applies to tfds: sources only, got data.source={config.data.source!r}")
    if config.data.crop_size:  # what is known before the data is opened; build_run checks the rest
        if config.data.image_size:
            check_crop_size(config.data, (config.data.image_size, config.data.image_size))
        elif config.data.source == "synthetic":
            check_crop_size(config.data, config.data.image_shape[:2])
    validate_model = getattr(config.model, "validate", None)
    if validate_model is not None:
        validate_model()


def check_crop_size(data: DataConfig, image_hw: tuple[int, ...]) -> None:
    """ConfigError unless the data.crop_size window fits in images of height and width ``image_hw``."""
    h, w = image_hw
    if data.crop_size > min(h, w):
        raise ConfigError(f"data.crop_size={data.crop_size} exceeds the {h}x{w} images of data.source="
                          f"{data.source}; use at most {min(h, w)}")


# ----------------------------------------------------------------------------------------------
# JSON round trip (WORKDIR/config.json)


def to_dict(config: Config) -> dict[str, Any]:
    out = dataclasses.asdict(config)
    out["model"] = {"family": config.model.family, **dataclasses.asdict(config.model)}
    return out


def from_dict(raw: dict[str, Any]) -> Config:
    from jaxconv.models import MODEL_CONFIGS  # models import config; import late to avoid a cycle

    raw = dict(raw)
    model_raw = dict(raw.pop("model"))
    family = model_raw.pop("family", None)
    if family not in MODEL_CONFIGS:
        raise ConfigError(f"unknown model family {family!r}; families: {', '.join(MODEL_CONFIGS)}")
    sections = {"model": _build(MODEL_CONFIGS[family], model_raw, "model")}
    for name, cls in (("data", DataConfig), ("optim", OptimConfig), ("schedule", ScheduleConfig),
                      ("train", TrainConfig), ("checkpoint", CheckpointConfig), ("parallel", ParallelConfig)):
        sections[name] = _build(cls, raw.pop(name, {}), name)
    return Config(name=raw.pop("name"), **sections)


def _build(cls: type, raw: dict[str, Any], section: str) -> Any:
    hints = _field_types(cls)
    unknown = set(raw) - set(hints)
    if unknown:
        raise ConfigError(f"unknown config key {section}.{sorted(unknown)[0]}; keys: {', '.join(hints)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    return cls(**values)


def save(config: Config, path: Path) -> None:
    """Writes atomically (temporary file, then rename): a run killed mid-write, or a second process
    reading it meanwhile, never sees a half-written config.json."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(to_dict(config), indent=2) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load(path: Path) -> Config:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} not found: is this a jaxconv work directory?") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    return from_dict(raw)
