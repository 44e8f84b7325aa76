"""parallel.cpu_devices: a CPU run uses one host device unless told to split each batch over more."""

import os
import re

from jaxconv.train.parallel import host_device_count


def test_one_device_unless_told_otherwise():
    assert host_device_count(0) == 1
    assert host_device_count(3) == 3  # an explicit count is used as given


def _train(cli, tmp_path, name, *sets, xla_flags=""):
    # The suite's XLA_FLAGS without its device count (conftest.py's compile options stay), plus xla_flags.
    env = dict(os.environ, XLA_FLAGS=re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                                            os.environ.get("XLA_FLAGS", "")) + " " + xla_flags)
    args = [arg for item in ("train.steps=2", "train.eval_every=2", "checkpoint.every=2", *sets)
            for arg in ("--set", item)]
    done = cli("train", "lenet_modern_mnist", "--smoke", "--workdir", str(tmp_path / name), *args, env=env)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return done.stdout


def test_the_cli_creates_the_devices_it_is_asked_for(cli, tmp_path):
    assert "devices: 1 cpu (64 images each)" in _train(cli, tmp_path, "default")
    assert "devices: 2 cpu (32 images each)" in _train(
        cli, tmp_path, "two", "parallel.cpu_devices=2")
    # A device count the user gave XLA wins over the config.
    assert "devices: 4 cpu (16 images each)" in _train(
        cli, tmp_path, "flags", "parallel.cpu_devices=2", xla_flags="--xla_force_host_platform_device_count=4")
