"""parallel.cpu_devices: a CPU run uses one host device unless told to split each batch over more."""

import os

from conftest import ok
from jaxconv.train.parallel import host_device_count


def test_one_device_unless_told_otherwise():
    assert host_device_count(0) == 1
    assert host_device_count(3) == 3  # an explicit count is used as given


def _train(cli, tmp_path, name, *sets, xla_flags="", dry_run=False):
    env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {xla_flags}")  # conftest.py's, plus these
    args = [arg for item in ("train.steps=2", "train.eval_every=2", "checkpoint.every=2", *sets)
            for arg in ("--set", item)]
    return cli("train", "lenet_modern_mnist", "--smoke", "--workdir", str(tmp_path / name), *args,
               *(["--dry-run"] if dry_run else []), env=env)


def test_the_cli_creates_the_devices_it_is_asked_for(cli, tmp_path):
    assert "devices: 2 cpu (32 images each)" in ok(_train(cli, tmp_path, "two", "parallel.cpu_devices=2")).stdout
    # A dry run creates the devices training would, and says how the batch splits over them.
    assert "devices: 1 cpu (64 images each)" in ok(_train(cli, tmp_path, "default", dry_run=True)).stdout
    # A device count the user gave XLA wins over the config.
    assert "devices: 4 cpu (16 images each)" in ok(_train(
        cli, tmp_path, "flags", "parallel.cpu_devices=2", xla_flags="--xla_force_host_platform_device_count=4",
        dry_run=True)).stdout
    # A batch that does not divide over them is refused by the dry run as by training: one line, exit 2.
    for dry_run in (True, False):
        bad = _train(cli, tmp_path, "three", "parallel.cpu_devices=3", dry_run=dry_run)
        assert bad.returncode == 2 and bad.stderr == (
            "jaxconv: error: data.batch_size=64 does not divide over 3 devices; use a multiple of 3\n"), bad.stderr
    assert not (tmp_path / "default").exists() and not (tmp_path / "three").exists()
