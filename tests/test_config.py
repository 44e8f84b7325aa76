import dataclasses

import pytest

import experiments
from jaxconv import config as config_lib
from jaxconv.errors import ConfigError


def test_overrides_are_parsed_with_the_field_type():
    cfg = config_lib.apply_overrides(experiments.load("lenet_mnist"), [
        "optim.learning_rate=0.5", "train.steps=7", "optim.nesterov=true", "optim.name=adamw",
        "schedule.boundaries=10,20", "model.variant=modern", "data.image_shape=8,8,3"])
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
