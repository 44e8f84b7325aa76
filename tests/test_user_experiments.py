"""A user's own experiment (a file or an importable module outside the package) runs like a built-in
one; `jaxconv config` prints the effective config; `train --dry-run` checks it and writes nothing."""

import dataclasses
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import run_cli

from jaxconv import config as config_lib
from jaxconv.experiments import lenet_modern_mnist

SOURCE = lenet_modern_mnist.__file__
LINE = re.compile(r"^(\S+) = (.*?)\s+# (\S.*)$")  # section.key = value  # meaning


@pytest.fixture
def user_dir(tmp_path):
    """tmp_path/myexp/my_exp.py: lenet_modern_mnist's CONFIG and SMOKE under the name my_lenet."""
    (tmp_path / "myexp").mkdir()
    text = open(SOURCE).read().replace('name="lenet_modern_mnist"', 'name="my_lenet"')
    assert 'name="my_lenet"' in text
    (tmp_path / "myexp" / "my_exp.py").write_text(text)
    return tmp_path


def error_line(result, code=2):
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxconv: error: "), result.stderr
    return lines[0]


SMOKE_ARGS = ("--smoke", "--set", "parallel.num_devices=1", "--set", "train.steps=3")


def test_file_experiment_trains_resumes_and_evaluates(user_dir):
    result = run_cli("train", "myexp/my_exp.py", *SMOKE_ARGS, cwd=user_dir)
    assert result.returncode == 0, result.stderr
    workdir = user_dir / "runs" / "my_lenet-smoke"  # runs/<CONFIG.name>, -smoke for the smoke variant
    assert "workdir: runs/my_lenet-smoke" in result.stdout
    assert (workdir / "config.json").is_file() and '"name": "my_lenet"' in (workdir / "config.json").read_text()

    again = run_cli("train", "myexp/my_exp.py", *SMOKE_ARGS, cwd=user_dir)  # resume: the same command
    assert again.returncode == 0, again.stderr
    assert "already finished at step 3" in again.stderr

    evaluated = run_cli("eval", "runs/my_lenet-smoke", cwd=user_dir)
    assert evaluated.returncode == 0, evaluated.stderr
    assert "checkpoint 3 (best)" in evaluated.stdout and "accuracy" in evaluated.stdout


def test_module_experiment_and_dry_run(user_dir):
    result = run_cli("train", "myexp.my_exp", *SMOKE_ARGS, "--dry-run", cwd=user_dir)
    assert result.returncode == 0, result.stderr
    assert "my_lenet: config and data are valid (4,000 train, 1,000 validation images of 28x28x1)" in result.stdout
    assert "would train in runs/my_lenet-smoke" in result.stdout
    assert not (user_dir / "runs").exists()  # a dry run writes nothing

    printed = run_cli("config", "myexp.my_exp", "--smoke", cwd=user_dir.parent,
                      env={**os.environ, "PYTHONPATH": str(user_dir)})
    assert printed.returncode == 0, printed.stderr
    assert "name = my_lenet " in printed.stdout and "train.steps = 20 " in printed.stdout

    bad = run_cli("train", "myexp/my_exp.py", *SMOKE_ARGS, "--set", "model.num_classes=5", "--dry-run", cwd=user_dir)
    assert "model.num_classes=5 but the data has 10 classes" in error_line(bad)
    bad = run_cli("train", "lenet_modern_mnist", "--set", "data.batch_size=0", "--dry-run", cwd=user_dir)
    assert "data.batch_size must be > 0" in error_line(bad)
    assert not (user_dir / "runs").exists()


def test_bad_experiment_files_are_one_line_errors(tmp_path):
    (tmp_path / "syntax.py").write_text("CONFIG = (\n")
    (tmp_path / "empty.py").write_text("X = 1\n")
    (tmp_path / "wrong.py").write_text("CONFIG = {'name': 'x'}\n")
    (tmp_path / "raises.py").write_text("import os\n\nraise ValueError('boom')\n")
    cases = {("train", "missing.py", "--dry-run"): "experiment file missing.py not found",
             ("train", "syntax.py"): "experiment file syntax.py: syntax error at line 1",
             ("config", "empty.py"): "experiment file empty.py defines no CONFIG",
             ("config", "wrong.py"): "experiment file wrong.py: CONFIG is of type dict, not a jaxconv.config.Config",
             ("config", "raises.py"): "experiment file raises.py: line 3: ValueError: boom",
             ("config", "nosuch.module"): "unknown experiment 'nosuch.module'",
             ("config", "nosuch"): "unknown experiment 'nosuch'"}
    for args, message in cases.items():
        assert message in error_line(run_cli(*args, cwd=tmp_path)), args
    assert not (tmp_path / "runs").exists()


def test_config_prints_every_key_with_value_and_meaning():
    result = run_cli("config", "lenet_modern_mnist", "--set", "optim.learning_rate=0.01")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = [line for line in result.stdout.splitlines() if not line.startswith("#")]
    rows = {}
    for line in lines:
        match = LINE.match(line)
        assert match, line
        rows[match.group(1)] = match.group(2)
    config = lenet_modern_mnist.CONFIG
    expected = ["name"] + [f"{section}.{field.name}" for section in config_lib.SECTIONS
                           for field in dataclasses.fields(getattr(config, section))]
    assert list(rows) == expected
    assert rows["optim.learning_rate"] == "0.01"
    assert rows["model.variant"] == "modern" and rows["data.batch_size"] == "64" and rows["data.path"] == '""'
    assert rows["data.image_shape"] == "28,28,1" and rows["checkpoint.async_save"] == "true"

    bad = run_cli("config", "lenet_modern_mnist", "--set", "optim.learning_rate=fast")
    assert "bad value 'fast' for optim.learning_rate" in error_line(bad)


def test_every_config_field_has_a_meaning_listed_in_train_help():
    result = run_cli("train", "--help")
    assert result.returncode == 0, result.stderr
    for section in config_lib.SECTIONS[1:]:
        cls = type(getattr(config_lib.Config(name="x", model=None), section))
        for field in dataclasses.fields(cls):
            assert field.metadata.get("help"), f"{section}.{field.name} has no meaning"
            assert re.search(rf"^  {section}\.{field.name} ", result.stdout, re.M), f"{section}.{field.name}"
    assert "model.KEY" in result.stdout and "--dry-run" in result.stdout


def test_python_file_runs_itself(user_dir):
    """An experiment file's `run_experiment_module(__file__)` block makes `python my_exp.py` the CLI."""
    path = user_dir / "myexp" / "my_exp.py"
    path.write_text(path.read_text().replace('run_experiment_module("lenet_modern_mnist")',
                                             "run_experiment_module(__file__)"))
    result = subprocess.run([sys.executable, str(path), "--smoke", "--dry-run"], cwd=user_dir, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "would train in runs/my_lenet-smoke" in result.stdout and not (user_dir / "runs").exists()
    shutil.rmtree(user_dir / "myexp")
