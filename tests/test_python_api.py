"""The Python API: ``import jaxconv`` is cheap, its top-level names are the library's own objects, and
README's "Use from Python" block runs as written."""

import math
import re
import subprocess
import sys

from conftest import REPO

BEGIN, END = "<!-- python-api:begin -->", "<!-- python-api:end -->"


def readme_python_block() -> str:
    text = (REPO / "README.md").read_text()
    assert text.count(BEGIN) == 1 and text.count(END) == 1, f"README needs one {BEGIN} ... {END} pair"
    between = text[text.index(BEGIN) + len(BEGIN):text.index(END)]
    blocks = re.findall(r"```python\n(.*?)```", between, re.S)
    assert len(blocks) == 1, "one ```python block between the markers"
    return blocks[0]


def _python(code: str, cwd, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_import_is_cheap_and_the_exports_are_the_library_objects(tmp_path):
    done = _python("""
import sys
import jaxconv
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"jax", "jaxlib", "flax", "optax", "orbax", "numpy",
                                                       "tensorflow_datasets"})
print("heavy", heavy)
assert jaxconv.__version__ and "preset" in dir(jaxconv) and "__version__" in jaxconv.__all__
try:
    jaxconv.no_such_name
except AttributeError as e:
    print("missing", e)
from jaxconv import config, errors, experiments, models, sampling
from jaxconv.train import loop, restore
expected = {"Config": config.Config, "apply_overrides": config.apply_overrides, "JaxconvError": errors.JaxconvError,
            "preset": models.preset, "build_model": models.build_model, "load_experiment": experiments.load,
            "train_and_evaluate": loop.train, "restore": loop.restore_workdir, "evaluate": loop.evaluate_workdir,
            "model_of": restore.model_of, "sample": sampling.sample_cached}
assert sorted(expected) == sorted(n for n in jaxconv.__all__ if n != "__version__"), jaxconv.__all__
print("same", all(getattr(jaxconv, name) is value for name, value in expected.items()))
""", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["heavy []", "missing module 'jaxconv' has no attribute 'no_such_name'",
                                        "same True"]


def test_the_readme_python_block_runs_as_written(tmp_path):
    """The block in a fresh process, in an empty directory, on one CPU device (as a user runs it)."""
    done = _python(readme_python_block(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert "logits (8, 10)" in lines
    nll = [float(line.split()[-1]) for line in lines if line.startswith("val nll_nats ")]
    assert len(nll) == 1 and 0 < nll[0] < 784 * math.log(2)  # below a coin flip per pixel (543.4 nats) after 10 steps
    assert "step 10 samples (4, 28, 28, 1) uint8" in lines
    workdir = tmp_path / "runs" / "pixelcnn_python"
    assert (workdir / "config.json").is_file() and (workdir / "checkpoints").is_dir()
