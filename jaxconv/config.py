"""Typed, frozen run configuration and type-checked ``section.key=value`` overrides.

A run is described by one :class:`Config`; every section is a frozen dataclass, so a config is
hashable, printable and can be written to (and read back from) ``WORKDIR/config.json``.
The model section is a family-specific dataclass (see ``jaxconv.models``); it is stored with its
``family`` name so that ``jaxconv eval WORKDIR`` can rebuild the same model.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal

from jaxconv.errors import ConfigError
from jaxconv.fields import key as _key


@dataclasses.dataclass(frozen=True)
class DataConfig:
    source: str = _key("mnist", "mnist (embedded 5k MNIST), synthetic (random images of image_shape), imagenet32 / "
                       "imagenet64 (a directory from `jaxconv data prepare`), tfds:NAME (a TFDS dataset prepared in "
                       "array_record format; see jaxconv.data.tfds_source for the split mapping and options)")
    path: str = _key("", "the source's file or directory; empty = its default (mnist: the embedded file; tfds: the "
                     "TFDS data_dir, $TFDS_DATA_DIR or ~/tensorflow_datasets); imagenet32/64: the prepared directory")
    pixels: Literal["unit", "binary", "uint8"] = _key(
        "unit", "how pixels reach a classifier (jaxconv.preprocess): unit = x/255 in [0,1]; binary = (x > 127) in "
        "{0,1}; uint8 = raw 0..255 integers. PixelCNN models take the values their head models (bernoulli: binary; "
        "softmax, logistic_mixture: uint8): pixels may name those, and unit leaves it to the head; anything else "
        "is a config error (jaxconv.tasks)")
    batch_size: int = _key(128, "global batch, divided over all devices of all hosts; at most MAX_BATCH (65,536)")
    eval_batch_size: int = _key(500, "evaluation batch, rounded up to a multiple of the device count; the last "
                                "batch is masked; at most MAX_BATCH (65,536)")
    seed: int = _key(0, "batch order is a pure function of (seed, step); 0 <= seed < 2**32")
    image_shape: tuple[int, ...] = _key((28, 28, 1), "H,W,C of the images; synthetic source only")
    num_examples: int = _key(1024, "images in the train split; synthetic source only")
    num_classes: int = _key(10, "label classes; synthetic source only")
    prefetch: int = _key(2, "batches staged on the devices ahead of the step; at most MAX_PREFETCH (64)")
    augment_crop_pad: int = _key(0, "augmentation (classification only, on the device in the train step, random "
                                 "from (train.seed, step), never in evaluation): pad each side by P pixels, then "
                                 "crop a random H x W window; 0 = off")
    augment_flip: bool = _key(False, "augmentation (classification only, as augment_crop_pad): random horizontal "
                              "flip, probability 1/2")
    augment_rotate: float = _key(0.0, "augmentation (classification only, as augment_crop_pad, before the crop): "
                                 "rotate each image by a random angle in [-D, D] degrees about its centre "
                                 "(bilinear); 0 = off; at most 180")
    augment_scale: float = _key(0.0, "augmentation (classification only, as augment_rotate, with it): zoom each "
                                "image by a random factor in [1-S, 1+S] about its centre; 0 = off; in [0, 1)")
    augment_elastic: float = _key(0.0, "augmentation (classification only, as augment_crop_pad, first): elastic "
                                  "distortion of strength alpha (Simard et al. 2003: a random displacement field, "
                                  "uniform in [-1, 1], smoothed by a Gaussian of 4 pixels, times alpha); 0 = off")
    subtract_mean: bool = _key(False, "subtract the train split's mean image (after scaling to [0, 1]) in training "
                               "and evaluation (normalisation, not augmentation); pixels=unit only")
    crop_size: int = _key(0, "classification: train on a random crop_size x crop_size window of every image (after "
                          "any augment_crop_pad padding) and evaluate on the central one, e.g. AlexNet's 224 of 256; "
                          "the model then sees crop_size x crop_size inputs; 0 = the whole image")
    cv_fold: int = _key(-1, "cross-validation without the validation images: K in 0..3 trains on three quarters of "
                        "the train split and validates on its K-th quarter (a quarter of each class, by order "
                        "within the class); -1 = the train and val splits as stored")
    image_size: int = _key(0, "tfds: sources only: scale each image's shorter side to N pixels and keep the central "
                           "N x N (Pillow, bilinear; once, when a split is decoded into the cache), e.g. 256 for "
                           "AlexNet; 0 = keep the stored images, whose shape must then be fixed (imagenet2012 "
                           "needs it)")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    name: Literal["sgd", "momentum", "adam", "adamw"] = _key("adam", "the optimizer: sgd, momentum, adam or adamw")
    learning_rate: float = _key(1e-3, "peak learning rate; the schedule scales it")
    momentum: float = _key(0.9, "momentum optimizer: the momentum coefficient, in [0, 1)")
    nesterov: bool = _key(False, "momentum optimizer: Nesterov momentum")
    b1: float = _key(0.9, "adam/adamw: decay of the first-moment average, in [0, 1)")
    b2: float = _key(0.999, "adam/adamw: decay of the second-moment average, in [0, 1)")
    eps: float = _key(1e-8, "adam/adamw: added to the root of the second moment")
    weight_decay: float = _key(0.0, "decoupled for adamw, L2 added to the gradient otherwise")
    grad_clip_norm: float = _key(0.0, "clip the gradient to this global norm; 0 = no clipping")


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    name: Literal["constant", "cosine", "step"] = _key("constant", "the learning-rate schedule after warm-up: "
                                                       "constant, cosine or step")
    warmup_steps: int = _key(0, "linear warm-up from 0 to the peak learning rate over this many steps")
    final_factor: float = _key(0.0, "cosine: final lr = peak * final_factor")
    boundaries: tuple[int, ...] = _key((), "step: multiply by decay_factor at each of these steps")
    decay_factor: float = _key(0.1, "step: the factor applied at each boundary")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = _key(1000, "optimizer steps of the whole run (a resumed run continues up to it)")
    seed: int = _key(0, "parameter init and per-step randomness (dropout, sampling); 0 <= seed < 2**32")
    log_every: int = _key(50, "log training metrics every N steps; they leave the device only this often")
    eval_every: int = _key(500, "evaluate on the validation split every N steps; 0 = only at the end")
    dtype: Literal["float32", "bfloat16"] = _key("float32", "compute dtype; params stay float32")
    nonfinite: Literal["stop", "skip"] = _key("stop", "on NaN/Inf: stop the run, or skip the update")
    progress: bool = _key(True, "show a progress bar on stderr")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every: int = _key(500, "save every N steps (and at the end, and on SIGTERM); 0 = only then")
    keep_latest: int = _key(2, "newest checkpoints kept")
    keep_best: int = _key(1, "best checkpoints (by best_metric) kept besides; 0 = keep no best-of checkpoints")
    best_metric: str = _key("accuracy", "a metric the model's task logs at validation (validation_metrics): "
                            "accuracy, loss, top5_accuracy for classification; loss, nll_nats, bits_per_dim for "
                            "PixelCNN models; unused (unchecked) when keep_best=0")
    best_mode: Literal["min", "max"] = _key("max", "whether a smaller (min) or larger (max) best_metric is better")
    async_save: bool = _key(True, "write checkpoints in the background while training continues")


@dataclasses.dataclass(frozen=True)
class ParallelConfig:
    mode: Literal["jit", "pmap"] = _key("jit", "jit + Mesh/NamedSharding, or jax.pmap + lax.pmean")
    num_devices: int = _key(0, "local devices to use; 0 = all")
    cpu_devices: int = _key(0, "CPU only: XLA host devices created before JAX starts, the batch split over them; "
                            "0 = one (its convs and matmuls use every core; docs/benchmarks.md); ignored when "
                            "XLA_FLAGS sets --xla_force_host_platform_device_count")
    distributed: Literal["auto", "off"] = _key(
        "auto", "auto: call jax.distributed.initialize() when a cluster environment (or coordinator_address, "
        "num_processes, process_id) says the run has several processes; off: never")
    coordinator_address: str = _key("", "e.g. 127.0.0.1:1234; empty = let JAX detect it")
    num_processes: int = _key(0, "processes of a multi-host run; 0 = detect")
    process_id: int = _key(-1, "this process's index in a multi-host run; -1 = detect")


@dataclasses.dataclass(frozen=True)
class ConvConfig:
    """How each conv layer is computed: ``jaxconv.models.conv_policy`` (the environment variables
    JAXCONV_CONV_IMPL, JAXCONV_CONV_TABLE, JAXCONV_CONV_RULES, JAXCONV_CONV_AUTOTUNE and
    JAXCONV_CONV_XLA_CPU set these at the command line)."""

    impl: str = _key("", "one implementation everywhere: xla, split, im2col, taps, fft, or a forward/input_grad/"
                     "kernel_grad triple such as xla/im2col/im2col; empty = the table, then the rules")
    table: str = _key("", "an autotune table from `jaxconv bench conv` (its conv_table.json); empty = none")
    rules: Literal["default", "none"] = _key("default", "none: XLA's conv wherever no table entry applies")
    autotune: bool = _key(False, "measure every conv layer's implementations on this machine on first use "
                          "(cached in ~/.cache/jaxconv), use the winners; the run records them in WORKDIR/conv_table.json")
    xla_cpu: Literal["eigen", "ynnpack"] = _key(
        "eigen", "on CPU, the kernels of the convs XLA computes (impl xla): eigen (XLA's own) or ynnpack (XLA's "
        "default, 1.2-4.4x slower forward + backward on all but one of the model layers measured; "
        "docs/benchmarks.md)")


@dataclasses.dataclass(frozen=True)
class Config:
    name: str = dataclasses.field(metadata={"help": "the run's name (a file experiment's workdir is runs/NAME)"})
    model: Any = dataclasses.field(metadata={"help": "a model family's frozen config dataclass "
                                             "(jaxconv.models.MODEL_CONFIGS)"})
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    train: TrainConfig = TrainConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    parallel: ParallelConfig = ParallelConfig()
    conv: ConvConfig = ConvConfig()

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


SECTIONS = ("model", "data", "optim", "schedule", "train", "checkpoint", "parallel", "conv")


def meaning(cls: type, key: str) -> str:
    """The meaning of field ``key`` of the config dataclass ``cls`` (its ``help`` metadata); a model
    field without one is named by its family's config class."""
    field = {f.name: f for f in dataclasses.fields(cls)}[key]
    return field.metadata.get("help") or f"a field of {cls.__name__} ({cls.__module__})"


def describe(config: Config) -> list[tuple[str, Any, str]]:
    """(section.key, value, meaning) of every key of every section, the model's too: what
    ``jaxconv config`` prints."""
    rows = [("name", config.name, meaning(Config, "name"))]
    for name in SECTIONS:
        section = getattr(config, name)
        for key in _field_types(type(section)):
            rows.append((f"{name}.{key}", getattr(section, key), meaning(type(section), key)))
    return rows


# ----------------------------------------------------------------------------------------------
# Overrides: `--set section.key=value`


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """Returns ``config`` with each ``section.key=value`` applied, type-checked against the field."""
    for item in overrides:
        section_name, key, value = _override(item, lambda name: getattr(config, name, None))
        section = getattr(config, section_name)
        config = dataclasses.replace(config, **{section_name: dataclasses.replace(section, **{key: value})})
    validate(config)
    return config


def section_overrides(section: Any, name: str, overrides: list[str]) -> Any:
    """One section (``name``) with ``name.key=value`` overrides applied, type-checked (e.g. the conv
    policy of a benchmark, which has no run config)."""
    for item in overrides:
        _, key, value = _override(item, lambda other: section if other == name else None)
        section = dataclasses.replace(section, **{key: value})
    return section


def _override(item: str, section_of) -> tuple[str, str, Any]:
    """``section.key=value`` -> (section, key, typed value), checked against ``section_of(section)``'s fields."""
    path, sep, text = item.partition("=")
    if not sep:
        raise ConfigError(f"override {item!r} is not of the form section.key=value")
    section_name, dot, key = path.strip().partition(".")
    section = section_of(section_name) if dot and section_name in SECTIONS else None
    if section is None:
        raise ConfigError(f"unknown config section in {path!r}; sections: {', '.join(SECTIONS)}")
    hints = _field_types(type(section))
    if key not in hints:
        raise ConfigError(f"unknown config key {path!r}; keys of {section_name!r}: {', '.join(hints)}")
    return section_name, key, parse_value(text.strip(), hints[key], path)


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init and f.name != "family"}


def parse_value(text: str, annotation: Any, path: str) -> Any:
    """Parses ``text`` (a ``--set`` value) as ``annotation``; ConfigError if it is not one."""
    return convert(text, annotation, path, from_text=True)


def convert(value: Any, annotation: Any, path: str, *, from_text: bool = False) -> Any:
    """``value`` as a field of type ``annotation`` (bool/int/float/str/Literal/tuple[X, ...]/Optional[X]).

    The one type checker of config values: ``from_text`` parses a command-line string ("3" is an int
    there); otherwise ``value`` is a decoded JSON value and must already have the type (a JSON "10" is
    not an int; an int is accepted for a float). ConfigError, naming ``path``, if it does not fit.
    """

    def bad(expected: str) -> ConfigError:
        if from_text:
            return ConfigError(f"bad value {value!r} for {path}; {expected}")
        return ConfigError(f"{path}: {expected}, got {_short_repr(value)}")

    origin = typing.get_origin(annotation)
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if not isinstance(value, str) or value not in allowed:
            raise bad(f"allowed values: {', '.join(map(str, allowed))}")
        return value
    if origin is tuple:
        (item_type, _) = typing.get_args(annotation)
        if from_text:
            items = [p.strip() for p in value.strip("()[] ").split(",") if p.strip()]
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            raise bad(f"expected a list of {item_type.__name__}")
        return tuple(convert(item, item_type, path, from_text=from_text) for item in items)
    if origin in (typing.Union, types.UnionType):  # Optional[X]
        if value is None or (from_text and value.lower() in ("none", "null", "")):
            return None
        (inner,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        return convert(value, inner, path, from_text=from_text)
    if annotation is bool:
        if not from_text:
            if not isinstance(value, bool):
                raise bad("expected true or false")
            return value
        if value.lower() in ("true", "1", "yes"):
            return True
        if value.lower() in ("false", "0", "no"):
            return False
        raise bad("allowed values: true, false")
    if annotation in (int, float):
        if not from_text:
            # bool is an int to Python, not to a config; an int is a float's value, not the reverse
            if isinstance(value, bool) or not isinstance(value, (int, float) if annotation is float else int):
                raise bad(f"expected {annotation.__name__}")
            return annotation(value)
        try:
            return annotation(value)
        except ValueError:
            raise bad(f"expected {annotation.__name__}") from None
    if annotation is str:
        if not isinstance(value, str):
            raise bad("expected str")
        return value
    raise ConfigError(f"{path} cannot be set from the command line")  # pragma: no cover


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ----------------------------------------------------------------------------------------------
# Validation: values that type-check but cannot work.

# Largest global batch (data.batch_size, data.eval_batch_size): checked before anything is allocated,
# so that a typo (an extra zero or three) is a config error, not an out-of-memory at the first step or
# evaluation. 65,536 images is far beyond what the models here train with (AlexNet used 128).
MAX_BATCH = 65_536
MAX_PREFETCH = 64  # data.prefetch: batches staged on the devices ahead of the step
CV_FOLDS = 4  # data.cv_fold: the train split's quarters
CV_SOURCES = ("mnist", "synthetic")  # data.cv_fold: the sources whose train split is held in memory
INT32_MAX = 2**31 - 1  # steps, intervals and sizes become int32 on the device (TrainState.step is int32)
SEED_LIMIT = 2**32  # seeds are 32-bit: JAX keys keep the low 32 bits (2**32 would silently be seed 0)
_SEEDS = ("data.seed", "train.seed")

_POSITIVE = {
    "data": ("batch_size", "eval_batch_size", "num_examples", "num_classes", "prefetch"),
    "train": ("steps", "log_every"),
    "checkpoint": ("keep_latest",),
    "optim": ("learning_rate", "eps"),
    "schedule": ("decay_factor",),
}
_NON_NEGATIVE = {
    "data": ("augment_crop_pad", "crop_size", "image_size", "augment_rotate", "augment_elastic"),
    "train": ("eval_every",),
    "checkpoint": ("every", "keep_best"),
    "schedule": ("warmup_steps",),
    "parallel": ("num_devices", "cpu_devices", "num_processes"),
    "optim": ("weight_decay", "grad_clip_norm"),
}
_FRACTIONS = {  # [0, 1)
    "optim": ("momentum", "b1", "b2"),
    "data": ("augment_scale",),
}
_AT_MOST = {
    "data.batch_size": MAX_BATCH,
    "data.eval_batch_size": MAX_BATCH,
    "data.prefetch": MAX_PREFETCH,
}


def validate(config: Config) -> None:
    """ConfigError for any value that type-checks but cannot work; call it before anything is written,
    allocated or compiled. What only the data can tell (its size, classes, image shape) is checked
    once it is loaded (``jaxconv.train.loop.build_run``)."""
    for path, value in _numbers(config):  # every number of every section, the model's too
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{path} must be a finite number, got {value}")
        if isinstance(value, int) and path in _SEEDS:
            if not 0 <= value < SEED_LIMIT:
                raise ConfigError(f"{path} must be in [0, 2**32), got {value}")
        elif isinstance(value, int) and not -INT32_MAX <= value <= INT32_MAX:
            raise ConfigError(f"{path}={value} is out of range; at most {INT32_MAX:,} (2**31-1)")
    for section, keys in _POSITIVE.items():
        for key in keys:
            if getattr(getattr(config, section), key) <= 0:
                raise ConfigError(f"{section}.{key} must be > 0, got {getattr(getattr(config, section), key)}")
    for section, keys in _NON_NEGATIVE.items():
        for key in keys:
            if getattr(getattr(config, section), key) < 0:
                raise ConfigError(f"{section}.{key} must be >= 0, got {getattr(getattr(config, section), key)}")
    for section, keys in _FRACTIONS.items():
        for key in keys:
            if not 0 <= getattr(getattr(config, section), key) < 1:
                raise ConfigError(f"{section}.{key} must be in [0, 1), got {getattr(getattr(config, section), key)}")
    for path, limit in _AT_MOST.items():
        section, key = path.split(".")
        if getattr(getattr(config, section), key) > limit:
            raise ConfigError(f"{path}={getattr(getattr(config, section), key)} is too large; at most {limit:,}")
    if not 0 <= config.schedule.final_factor <= 1:
        raise ConfigError(f"schedule.final_factor must be in [0, 1] (a fraction of the peak learning rate), "
                          f"got {config.schedule.final_factor}")
    if config.data.augment_rotate > 180:
        raise ConfigError(f"data.augment_rotate must be at most 180 (degrees), got {config.data.augment_rotate}")
    if any(b < 0 for b in config.schedule.boundaries):
        raise ConfigError(f"schedule.boundaries must be steps >= 0, got {config.schedule.boundaries}")
    if config.parallel.process_id < -1:
        raise ConfigError(f"parallel.process_id must be >= 0, or -1 to detect it, got {config.parallel.process_id}")
    if config.checkpoint.keep_best:  # the metric ranks checkpoints only when best ones are kept
        allowed = validation_metrics(config.model)
        if config.checkpoint.best_metric not in allowed:
            raise ConfigError(f"checkpoint.best_metric={config.checkpoint.best_metric!r} is not a validation metric "
                              f"of {config.model.family} models; metrics: {', '.join(allowed)}")
    if not -1 <= config.data.cv_fold < CV_FOLDS:
        raise ConfigError(f"data.cv_fold must be -1 (off) or a fold in 0..{CV_FOLDS - 1}, got {config.data.cv_fold}")
    if config.data.cv_fold >= 0 and config.data.source not in CV_SOURCES:
        # The other sources' train splits are memory-mapped caches: a fold would copy most of one into memory.
        raise ConfigError(f"data.cv_fold applies to data.source {' or '.join(CV_SOURCES)} (train splits held in "
                          f"memory), not {config.data.source}")
    if config.data.subtract_mean and config.data.pixels != "unit":
        raise ConfigError(f"data.subtract_mean needs data.pixels=unit, got {config.data.pixels!r}")
    if any(s <= 0 for s in config.data.image_shape) or len(config.data.image_shape) != 3:
        raise ConfigError(f"data.image_shape must be three positive sizes H,W,C, got {config.data.image_shape}")
    if config.data.image_size and not config.data.source.startswith("tfds:"):
        raise ConfigError(f"data.image_size applies to tfds: sources only, got data.source={config.data.source!r}")
    if config.data.crop_size:  # what is known before the data is opened; the task checks the rest
        from jaxconv.tasks import check_crop_size  # tasks import the models: import late

        if config.data.image_size:
            check_crop_size(config.data, (config.data.image_size, config.data.image_size))
        elif config.data.source == "synthetic":
            check_crop_size(config.data, config.data.image_shape[:2])
    if config.conv.impl:
        from jaxconv.models.conv_impls import parse_impl  # the models import config: import late

        try:
            parse_impl(config.conv.impl)
        except ValueError as e:
            raise ConfigError(f"conv.impl: {e}") from None
    validate_model = getattr(config.model, "validate", None)
    if validate_model is not None:
        validate_model()


def validation_metrics(model: Any) -> tuple[str, ...]:
    """The metric names a model family's task logs at each evaluation (besides "count"): what
    checkpoint.best_metric may name."""
    from jaxconv.tasks import task_class  # tasks import config; import late to avoid a cycle

    return task_class(model).metric_names


def _numbers(config: Config):
    """(section.key, value) of every int and float in the config, tuple items included (not bools)."""
    for name in SECTIONS:
        section = getattr(config, name)
        for field in dataclasses.fields(section):
            value = getattr(section, field.name)
            for item in value if isinstance(value, tuple) else (value,):
                if isinstance(item, (int, float)) and not isinstance(item, bool):
                    yield f"{name}.{field.name}", item


# ----------------------------------------------------------------------------------------------
# JSON round trip (WORKDIR/config.json)


def to_dict(config: Config) -> dict[str, Any]:
    out = dataclasses.asdict(config)
    out["model"] = {"family": config.model.family, **dataclasses.asdict(config.model)}
    return out


_SECTION_CLASSES = (("data", DataConfig), ("optim", OptimConfig), ("schedule", ScheduleConfig), ("train", TrainConfig),
                    ("checkpoint", CheckpointConfig), ("parallel", ParallelConfig), ("conv", ConvConfig))


def from_dict(raw: Any) -> Config:
    """The config of a decoded ``config.json``; every value type-checked against its field (ConfigError
    naming the key), then :func:`validate`-d."""
    from jaxconv.models import MODEL_CONFIGS  # models import config; import late to avoid a cycle

    if not isinstance(raw, dict):
        raise ConfigError(f"expected a JSON object of config sections, got {type(raw).__name__}")
    unknown = set(raw) - {"name", *SECTIONS}
    if unknown:
        raise ConfigError(f"unknown config section {sorted(unknown)[0]!r}; sections: {', '.join(SECTIONS)}")
    for key in ("name", "model"):
        if key not in raw:
            raise ConfigError(f"missing key {key!r}")
    name = convert(raw["name"], str, "name")
    model_raw = _section(raw, "model")
    family = model_raw.pop("family", None)
    if not isinstance(family, str) or family not in MODEL_CONFIGS:
        raise ConfigError(f"unknown model family {family!r} in model.family; families: {', '.join(MODEL_CONFIGS)}")
    sections = {"model": _build(MODEL_CONFIGS[family], model_raw, "model")}
    for section, cls in _SECTION_CLASSES:
        sections[section] = _build(cls, _section(raw, section), section)
    config = Config(name=name, **sections)
    validate(config)
    return config


def _section(raw: dict[str, Any], name: str) -> dict[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{name}: expected a JSON object, got {_short_repr(value)}")
    return dict(value)


def _build(cls: type, raw: dict[str, Any], section: str) -> Any:
    hints = _field_types(cls)
    unknown = set(raw) - set(hints)
    if unknown:
        raise ConfigError(f"unknown config key {section}.{sorted(unknown)[0]}; keys: {', '.join(hints)}")
    return cls(**{key: convert(value, hints[key], f"{section}.{key}") for key, value in raw.items()})


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
    """The config in ``path`` (a run's config.json); ConfigError, naming the file and the key, if it is
    missing, unreadable, not JSON, or holds a value of the wrong type or range."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path} not found: is this a jaxconv work directory?") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory, not a config file") from None
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text (byte {e.start})") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    except (ValueError, RecursionError) as e:  # an int of over 4300 digits; nesting too deep
        raise ConfigError(f"{path} is not a readable config ({str(e).splitlines()[0][:100]})") from None
    try:
        return from_dict(raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
