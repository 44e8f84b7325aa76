import dataclasses
import json

import pytest

from jaxconv import config as config_lib
from jaxconv import experiments
from jaxconv.errors import ConfigError


def test_overrides_are_parsed_with_the_field_type():
    cfg = config_lib.apply_overrides(experiments.load("lenet_mnist"), [
        "optim.learning_rate=0.5", "train.steps=7", "optim.nesterov=true", "optim.name=adamw",
        "schedule.boundaries=10,20", "model.variant=modern", "data.source=synthetic", "data.image_shape=8,8,3"])
    assert cfg.optim.learning_rate == 0.5 and cfg.train.steps == 7 and cfg.optim.nesterov is True
    assert cfg.optim.name == "adamw" and cfg.schedule.boundaries == (10, 20)
    assert cfg.model.variant == "modern" and cfg.data.image_shape == (8, 8, 3)


@pytest.mark.parametrize("override, message", [
    ("optim.lr=0.1", "unknown config key 'optim.lr'; keys of 'optim': name, learning_rate"),
    ("optimizer.name=sgd", "unknown config section"),
    ("optim.name=rmsprop", "allowed values: sgd, momentum, adam, adamw"),
    ("train.steps=ten", "bad value 'ten' for train.steps; expected int"),
    ("train.progress=maybe", "allowed values: true, false"),
    ("train.steps=0", "train.steps must be > 0"),
    ("data.batch_size=-4", "data.batch_size must be > 0"),
    ("model.variant=tiny", "allowed values: faithful, modern"),
    ("train.steps", "not of the form section.key=value"),
])
def test_bad_overrides_are_one_line_errors(override, message):
    with pytest.raises(ConfigError, match=None) as info:
        config_lib.apply_overrides(experiments.load("lenet_mnist"), [override])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_config_round_trips_through_json(tmp_path):
    cfg = config_lib.apply_overrides(experiments.load("lenet_modern_mnist", smoke=True), ["schedule.boundaries=3,4"])
    config_lib.save(cfg, tmp_path / "config.json")
    assert config_lib.load(tmp_path / "config.json") == cfg


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        experiments.load("lenet_mnist").train.steps = 3


def test_unknown_experiment():
    with pytest.raises(ConfigError, match="unknown experiment 'nope'; experiments: .*lenet_mnist"):
        experiments.load("nope")


# ----------------------------------------------------------------------------------------------
# Values that type-check but cannot work (issue 11, items 5 and 8): each a one-line ConfigError.

@pytest.mark.parametrize("override, message", [
    ("optim.learning_rate=nan", "optim.learning_rate must be a finite number, got nan"),
    ("optim.learning_rate=inf", "optim.learning_rate must be a finite number, got inf"),
    ("optim.learning_rate=-inf", "optim.learning_rate must be a finite number, got -inf"),
    ("optim.learning_rate=1e400", "optim.learning_rate must be a finite number, got inf"),  # parses to inf
    ("optim.grad_clip_norm=nan", "optim.grad_clip_norm must be a finite number, got nan"),
    ("optim.eps=0", "optim.eps must be > 0, got 0.0"),
    ("optim.eps=nan", "optim.eps must be a finite number, got nan"),
    ("optim.weight_decay=inf", "optim.weight_decay must be a finite number, got inf"),
    ("optim.b1=1", "optim.b1 must be in [0, 1), got 1.0"),
    ("optim.b2=-0.5", "optim.b2 must be in [0, 1), got -0.5"),
    ("optim.momentum=1.5", "optim.momentum must be in [0, 1), got 1.5"),
    ("optim.momentum=nan", "optim.momentum must be a finite number, got nan"),
    ("schedule.final_factor=nan", "schedule.final_factor must be a finite number, got nan"),
    ("schedule.final_factor=-0.1", "schedule.final_factor must be in [0, 1]"),
    ("schedule.final_factor=2", "schedule.final_factor must be in [0, 1]"),
    ("schedule.decay_factor=0", "schedule.decay_factor must be > 0, got 0.0"),
    ("schedule.decay_factor=inf", "schedule.decay_factor must be a finite number, got inf"),
    ("schedule.boundaries=5,-1", "schedule.boundaries must be steps >= 0"),
    ("data.seed=-1", "data.seed must be in [0, 2**32), got -1"),
    (f"data.seed={2**32}", f"data.seed must be in [0, 2**32), got {2**32}"),
    (f"train.seed={2**64}", f"train.seed must be in [0, 2**32), got {2**64}"),
    ("train.seed=-3", "train.seed must be in [0, 2**32), got -3"),
    (f"train.steps={2**31}", f"train.steps={2**31} is out of range; at most 2,147,483,647 (2**31-1)"),
    (f"checkpoint.every={2**40}", f"checkpoint.every={2**40} is out of range"),
    (f"schedule.boundaries=10,{2**31}", f"schedule.boundaries={2**31} is out of range"),
    ("data.batch_size=65537", "data.batch_size=65537 is too large; at most 65,536"),
    ("data.eval_batch_size=50000000", "data.eval_batch_size=50000000 is too large; at most 65,536"),
    ("data.prefetch=100000", "data.prefetch=100000 is too large; at most 64"),
    ("parallel.process_id=-2", "parallel.process_id must be >= 0, or -1 to detect it, got -2"),
    ("checkpoint.best_metric=bogus", "checkpoint.best_metric='bogus' is not a validation metric of lenet5 models; "
                                     "metrics: loss, accuracy, top5_accuracy"),
    ("checkpoint.best_metric=bits_per_dim", "metrics: loss, accuracy, top5_accuracy"),
    ("checkpoint.best_metric=count", "is not a validation metric"),
])
def test_values_that_cannot_work_are_config_errors(override, message):
    with pytest.raises(ConfigError) as info:
        config_lib.apply_overrides(experiments.load("lenet_modern_mnist", smoke=True), [override])
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)


@pytest.mark.parametrize("override", ["data.seed=4294967295", "train.seed=0", "optim.b2=0", "optim.momentum=0",
                                      "schedule.final_factor=1", "data.eval_batch_size=65536",
                                      "checkpoint.best_metric=top5_accuracy", "optim.learning_rate=10"])
def test_values_at_the_limits_are_accepted(override):
    """The other side of each limit above (this passed before those checks too: it keeps them from
    rejecting what works)."""
    config_lib.apply_overrides(experiments.load("lenet_modern_mnist", smoke=True), [override])


def test_best_metric_is_checked_against_the_models_task():
    pixelcnn = experiments.load("pixelcnn_mnist", smoke=True)
    for metric in ("loss", "nll_nats", "bits_per_dim"):
        config_lib.apply_overrides(pixelcnn, [f"checkpoint.best_metric={metric}"])
    with pytest.raises(ConfigError, match="'accuracy' is not a validation metric of pixelcnn models; "
                                          "metrics: loss, nll_nats, bits_per_dim"):
        config_lib.apply_overrides(pixelcnn, ["checkpoint.best_metric=accuracy"])
    # no best checkpoints kept: the metric ranks nothing, so any name will do
    config_lib.apply_overrides(pixelcnn, ["checkpoint.keep_best=0", "checkpoint.best_metric=accuracy"])


def test_metric_names_are_the_names_the_tasks_log():
    """The names validate() allows are the keys of each task's metric sums (besides "count")."""
    import jax.numpy as jnp

    from jaxconv import losses, tasks
    from jaxconv.models import build_model

    sums = losses.classification_sums(jnp.zeros((2, 10)), jnp.zeros(2, jnp.int32), jnp.ones(2))
    assert tuple(k for k in sums if k != "count") == losses.CLASSIFICATION_METRICS
    assert config_lib.validation_metrics(experiments.load("lenet_mnist").model) == losses.CLASSIFICATION_METRICS
    config = experiments.load("pixelcnn_mnist", smoke=True)
    density_sums = tasks.Density(build_model(config.model), config).sums
    images = jnp.zeros((2, 28, 28, 1), jnp.uint8)
    sums = density_sums(jnp.zeros((2, 28, 28, 1)), {"images": images, "mask": jnp.ones(2)})
    assert tuple(k for k in sums if k != "count") == losses.DENSITY_METRICS
    assert config_lib.validation_metrics(config.model) == losses.DENSITY_METRICS


# ----------------------------------------------------------------------------------------------
# config.json: every value type-checked against its field, one line naming the file and the key.

def config_json(tmp_path, change) -> str:
    raw = config_lib.to_dict(experiments.load("lenet_modern_mnist", smoke=True))
    raw = change(raw)
    path = tmp_path / "config.json"
    path.write_bytes(raw if isinstance(raw, bytes) else json.dumps(raw).encode())
    with pytest.raises(ConfigError) as info:
        config_lib.load(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message, message
    return message


def setting(section, key, value):
    def change(raw):
        raw[section][key] = value
        return raw

    return change


def dropping(key):
    def change(raw):
        del raw[key]
        return raw

    return change


@pytest.mark.parametrize("change, message", [
    (lambda raw: [], "expected a JSON object of config sections, got list"),
    (lambda raw: "config", "expected a JSON object of config sections, got str"),
    (dropping("name"), "missing key 'name'"),
    (dropping("model"), "missing key 'model'"),
    (lambda raw: b'{"name": "caf\xe9"}', "is not UTF-8 text"),
    (lambda raw: b"[" * 100_000, "is not a readable config"),
    (lambda raw: {**raw, "name": 3}, "name: expected str, got 3"),
    (lambda raw: {**raw, "optimizer": {}}, "unknown config section 'optimizer'"),
    (lambda raw: {**raw, "optim": [1]}, "optim: expected a JSON object, got [1]"),
    (setting("train", "steps", "many"), "train.steps: expected int, got 'many'"),
    (setting("train", "steps", 1e3), "train.steps: expected int, got 1000.0"),
    (setting("model", "num_classes", "10"), "model.num_classes: expected int, got '10'"),
    (setting("data", "batch_size", 3.5), "data.batch_size: expected int, got 3.5"),
    (setting("data", "batch_size", True), "data.batch_size: expected int, got True"),
    (setting("data", "image_shape", "28,28,1"), "data.image_shape: expected a list of int, got '28,28,1'"),
    (setting("data", "image_shape", [28, "28", 1]), "data.image_shape: expected int, got '28'"),
    (setting("train", "progress", "yes"), "train.progress: expected true or false, got 'yes'"),
    (setting("optim", "name", "lbfgs"), "optim.name: allowed values: sgd, momentum, adam, adamw, got 'lbfgs'"),
    (setting("optim", "learning_rate", "0.1"), "optim.learning_rate: expected float, got '0.1'"),
    (setting("optim", "learning_rate", float("nan")), "optim.learning_rate must be a finite number, got nan"),
    (setting("optim", "learning_rate", float("inf")), "optim.learning_rate must be a finite number, got inf"),
    (setting("checkpoint", "best_metric", "bogus"), "checkpoint.best_metric='bogus' is not a validation metric"),
    (setting("data", "seed", -1), "data.seed must be in [0, 2**32), got -1"),
    (setting("model", "family", "resnet"), "unknown model family 'resnet'"),
    (setting("model", "family", ["lenet5"]), "unknown model family ['lenet5']"),
    (setting("model", "depth", 3), "unknown config key model.depth"),
])
def test_bad_config_json_is_one_line_naming_file_and_key(tmp_path, change, message):
    assert message in config_json(tmp_path, change)


def test_config_json_1e400_is_not_finite(tmp_path):
    raw = config_lib.to_dict(experiments.load("lenet_modern_mnist", smoke=True))
    raw["optim"]["learning_rate"] = "LR"
    (tmp_path / "config.json").write_text(json.dumps(raw).replace('"LR"', "1e400"))
    with pytest.raises(ConfigError, match="optim.learning_rate must be a finite number, got inf"):
        config_lib.load(tmp_path / "config.json")


def test_config_json_a_directory(tmp_path):
    (tmp_path / "config.json").mkdir()
    with pytest.raises(ConfigError, match="config.json is a directory, not a config file"):
        config_lib.load(tmp_path / "config.json")


def test_config_json_ints_are_floats_where_floats_belong(tmp_path):
    cfg = experiments.load("lenet_modern_mnist", smoke=True)
    raw = config_lib.to_dict(cfg)
    raw["optim"]["learning_rate"] = 1
    (tmp_path / "config.json").write_text(json.dumps(raw))
    loaded = config_lib.load(tmp_path / "config.json")
    assert loaded.optim.learning_rate == 1.0 and isinstance(loaded.optim.learning_rate, float)


def test_set_and_json_share_one_type_checker():
    """--set parses text, config.json takes decoded values; both go through config.convert."""
    assert config_lib.convert("3", int, "k", from_text=True) == 3
    with pytest.raises(ConfigError, match="k: expected int, got '3'"):
        config_lib.convert("3", int, "k")
    assert config_lib.convert([1, 2], tuple[int, ...], "k") == config_lib.convert("1,2", tuple[int, ...], "k",
                                                                                  from_text=True) == (1, 2)
