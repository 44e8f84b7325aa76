"""pytest's processes run on 8 fake CPU devices (set before JAX is imported anywhere); the jaxconv processes
the tests start run as a user's do, on one CPU device, unless a test asks for more."""

import os

# LLVM's optimisation level 0 unless XLA_FLAGS sets one: the tests check behaviour, not speed, and most
# of their time is XLA compiling many small programs (tests/test_pooling.py + test_sampler_speed.py: 76 s
# instead of 106; level 1 saves nothing).
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# In pytest's own processes only: 8 devices (a CLI process on them took 5.2-5.4 s of CPU for a warm `train
# lenet_modern_mnist --smoke --set parallel.num_devices=1`, 4.9 s on one; tests/test_edges.py, test_reliability
# and test_cli ran 221 -> 200 s), and XLA's older fusion emitters: the new ones set up an MLIR context per
# program, and the tests here compile thousands of small ones (tests/test_sampler_speed.py, test_pixelcnn,
# test_properties and test_xla_cpu_convs in one process: 153 s of CPU instead of 219). The programs they
# emit run up to 3x slower, so the training runs the tests start as subprocesses keep the new emitters
# (with the old ones everywhere, the suite took longer); the two kinds of process never load each other's
# programs from the compilation cache (its keys include the compile options). XLA reads XLA_FLAGS once,
# when JAX starts its first backend.
_SUBPROCESS_XLA_FLAGS = os.environ["XLA_FLAGS"]
os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8 --xla_cpu_use_fusion_emitters=false"
__import__("jax").devices()
os.environ["XLA_FLAGS"] = _SUBPROCESS_XLA_FLAGS
# One compilation cache for the session: the many short subprocess runs (kill/resume, SIGTERM,
# CLI errors) then compile each program once instead of once per process.
# The process that makes these directories (pytest's controller; xdist workers inherit them) removes them.
_OWN_TEMP_DIRS = []
for _var, _prefix in (("JAX_COMPILATION_CACHE_DIR", "jaxconv-jit-cache-"),
                      # conv.autotune's cache of measured winners: the tests never touch the user's ~/.cache
                      ("JAXCONV_CACHE_DIR", "jaxconv-autotune-")):
    if _var not in os.environ:
        os.environ[_var] = __import__("tempfile").mkdtemp(prefix=_prefix)
        _OWN_TEMP_DIRS.append(os.environ[_var])
# Every program, however quick to compile: a warm `train lenet_modern_mnist --smoke` process took 4.8-5.1 s
# instead of 5.0-6.2 with the 0.2 s threshold.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


# The longest files first, longest first (seconds of test time per file on a 2-core Xeon, `CI=true pytest -q
# tests --durations=0`, 2026-12-02; files under 5 s follow in collection order). With `--dist loadfile` each
# of the two workers takes whole files in collection order; alphabetically several of the longest came last,
# and the worker that started one of them ran on alone after the other had finished.
LONGEST_FILES = ("test_edges.py", "test_reliability.py", "test_cli.py", "test_sampler_speed.py", "test_readme_cli.py",
                 "test_train.py", "test_bench.py", "test_gpu_script.py", "test_study_workers.py", "test_pixelcnn.py",
                 "test_native_kernel.py", "test_autotune.py", "test_quickstart.py", "test_conditional.py",
                 "test_restore.py", "test_pictures.py", "test_properties.py", "test_user_experiments.py",
                 "test_host_devices.py", "test_recipe.py", "test_bad_inputs.py", "test_xla_cpu_convs.py",
                 "test_imagenet32.py", "test_python_api.py", "test_user_kernels.py", "test_bad_files.py",
                 "test_alexnet_experiments.py", "test_data.py", "test_cluster_logs.py", "test_alexnet.py",
                 "test_bench_twins.py", "test_parallel.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


def pytest_unconfigure(config):
    import shutil

    for path in _OWN_TEMP_DIRS:
        shutil.rmtree(path, ignore_errors=True)


def run_cli(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Runs ``python -m jaxconv ARGS`` in a fresh process (on one CPU device unless the args or env say more)."""
    return subprocess.run([sys.executable, "-m", "jaxconv", *args], cwd=kwargs.pop("cwd", REPO),
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def start_cli(*args: str, **kwargs) -> subprocess.Popen:
    """Starts ``python -m jaxconv ARGS``; its stdout and stderr are text pipes unless ``kwargs`` say otherwise."""
    return subprocess.Popen([sys.executable, "-m", "jaxconv", *args], cwd=REPO,
                            **{"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **kwargs})


def ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """The process exited 0 and stderr holds no traceback or C++ abort."""
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "terminate called" not in done.stderr, done.stderr[-3000:]
    return done


# A CLI process's environment that makes JAX log each program's persistent-cache hit or miss on stderr.
COMPILER_LOG = {"JAX_DEBUG_LOG_MODULES": "jax._src.compiler"}


def assert_compiler_log_only(run: subprocess.CompletedProcess) -> None:
    """``run`` (started with ``COMPILER_LOG``) exited 0 with nothing on stderr but JAX's debug log (whose
    messages go on over lines indented by two spaces)."""
    assert run.returncode == 0, run.stderr[-3000:]
    other = [line for line in run.stderr.splitlines() if line and not line.startswith(("DEBUG:", "  "))]
    assert not other, other[:5]


def assert_loaded_from_cache(run: subprocess.CompletedProcess, program: str) -> None:
    assert_compiler_log_only(run)
    assert f"cache hit for '{program}'" in run.stderr and f"MISS for '{program}'" not in run.stderr


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="session")
def trained_smoke(tmp_path_factory):
    """A finished LeNet-5 modern smoke run on one device (checkpoints 10 and 20, metrics, config.json),
    trained in this process (an xdist worker) once for all the modules it runs; cases copy it before they
    damage it."""
    from jaxconv import experiments
    from jaxconv.config import apply_overrides
    from jaxconv.train import loop

    workdir = tmp_path_factory.mktemp("trained")
    loop.train(apply_overrides(experiments.load("lenet_modern_mnist", smoke=True), ["parallel.num_devices=1"]),
               workdir)
    return workdir
