"""The C++ conv handlers, the native CPU conv gradients (jaxconv.models.cpu_conv_grads) and oneDNN's convs
(jaxconv.models.cpu_onednn): that the default path really runs them, that a batch split over devices stays
split, that a Jacobian (vmap) gets XLA's, and that a machine without a compiler, or with a damaged cache,
still trains (XLA's convs, one warning each)."""

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from conftest import COMPILER_LOG, REPO, assert_compiler_log_only, assert_loaded_from_cache, run_cli
from jaxconv import native_build
from jaxconv.models import conv as conv_lib, cpu_conv_grads, cpu_onednn


def _grads(impl, x, k):
    loss = lambda x, k: jnp.sum(jnp.sin(conv_lib.conv(x, k, 1, ((1, 1), (0, 2)), (1, 2), 1, impl=impl)))
    return jax.jit(jax.grad(loss, argnums=(0, 1)))


@pytest.mark.parametrize("mesh_in_context", [False, True], ids=["custom_partitioning", "set_mesh"])
def test_batch_split_over_devices_keeps_both_native_gradients_per_device(mesh_in_context):
    """Each device computes its images' input gradient (kept) and kernel gradient (summed over devices)."""
    assert cpu_conv_grads.reason() == ""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((16, 10, 9, 18)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 2, 18, 20)) / 10, jnp.float32)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    split = jax.device_put(x, NamedSharding(mesh, P("data")))
    native = _grads("xla/native/native", split, k)
    with jax.set_mesh(mesh) if mesh_in_context else contextlib.nullcontext():
        lowered = native.lower(split, k)
        grads = native(split, k)
    # The mesh path holds no Python pointer, so JAX's persistent cache can keep the program.
    assert ("CustomSPMDPartitioning" in lowered.as_text("hlo")) != mesh_in_context
    program = lowered.compile().as_text()
    for target in (cpu_conv_grads.KERNEL_GRAD, cpu_conv_grads.INPUT_GRAD):
        assert program.count(f'custom_call_target="{target}"') == 1, target
    # each device its images, then one sum (the kernel gradient's); the input gradient stays split
    assert "all-gather" not in program and program.count("all-reduce(") == 1
    assert grads[0].sharding.spec[0] == "data"
    for a, b in zip(grads, _grads("xla", x, k)(x, k)):
        np.testing.assert_allclose(a, b, atol=1e-5 * float(jnp.max(jnp.abs(b))))


@pytest.mark.parametrize("impl, seed, x_shape, kernel_shape, padding, pixel", [
    ("native", 1, (2, 9, 7, 6), (5, 3, 6, 4), ((2, 2), (1, 1)), (0, 3, 2)),
    ("onednn", 4, (2, 7, 6, 4), (3, 3, 4, 5), ((1, 1), (1, 1)), (1, 2, 3))])
def test_under_vmap_the_cpu_kernels_give_xlas_jacobian(impl, seed, x_shape, kernel_shape, padding, pixel):
    """A Jacobian row by row (``jax.vmap`` of the VJP) runs XLA's conv and gradients, batched, and equals XLA's."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
    k = jnp.asarray(rng.standard_normal(kernel_shape) / 10, jnp.float32)

    def jacobians(impl):
        f = lambda x, k: conv_lib.conv(x, k, 1, padding, 1, 1, impl=impl)[pixel]  # [Cout]
        return jax.jit(jax.jacrev(f, argnums=(0, 1)))(x, k)

    for a, b in zip(jacobians(impl), jacobians("xla")):
        np.testing.assert_allclose(a, b, atol=1e-5 * float(jnp.max(jnp.abs(b))))


CHECK = """
import jax, jax.numpy as jnp, numpy as np
from jaxconv.models import conv as conv_lib, cpu_conv_grads, cpu_onednn
x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 8, 8, 17)), jnp.float32)
k = jnp.asarray(np.random.default_rng(1).standard_normal((3, 3, 17, 16)), jnp.float32)
grad = lambda impl: jax.grad(lambda k: jnp.sum(jnp.cos(conv_lib.conv(x, k, 1, ((1, 1), (1, 1)), impl=impl))))(k)
np.testing.assert_allclose(grad("native"), grad("xla"), rtol=1e-4, atol=1e-4)
print("reason:", cpu_conv_grads.reason() or "none")
"""


def _check(tmp_path, **env):
    return subprocess.run([sys.executable, "-c", CHECK], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "JAXCONV_CACHE_DIR": str(tmp_path), **env})


def test_a_damaged_cached_library_is_built_again(tmp_path):
    assert cpu_conv_grads.reason() == ""  # built into the session's cache: copied, so one build below, not two
    shutil.copytree(Path(os.environ["JAXCONV_CACHE_DIR"]) / "native", tmp_path / "native")
    first = _check(tmp_path)
    assert first.returncode == 0, first.stderr
    assert "reason: none" in first.stdout
    (library,) = [p for p in (tmp_path / "native").glob("*.so") if p.name.startswith("cpu_conv_grads-")]
    library.write_bytes(b"not a shared library")
    again = _check(tmp_path)
    assert again.returncode == 0, again.stderr
    assert "reason: none" in again.stdout and "unavailable" not in again.stderr
    assert library.read_bytes()[:4] == b"\x7fELF"


LOAD = """
import sys
from pathlib import Path
from jaxconv import native_build
print(native_build.load(Path(sys.argv[1])).answer())
"""


def test_processes_starting_together_build_a_library_once(tmp_path):
    """Two processes needing the same missing library: one compiles it, the other waits and loads it."""
    source = tmp_path / "answer.cc"
    source.write_text('extern "C" int answer() { return 42; }\n')
    log = tmp_path / "compiler.log"
    compiler = tmp_path / "slow-g++"
    compiler.write_text(f'#!/bin/sh\necho "$$" >> {log}\nsleep 2\nexec g++ "$@"\n')
    compiler.chmod(0o755)
    env = {**os.environ, "JAXCONV_CACHE_DIR": str(tmp_path / "cache"), "CXX": str(compiler)}
    runs = [subprocess.Popen([sys.executable, "-c", LOAD, str(source)], cwd=REPO, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    for run in runs:
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0 and out == "42\n" and not err, (run.returncode, out, err)
    assert len(log.read_text().splitlines()) == 1
    assert len(list((tmp_path / "cache" / "native").glob("answer-*.so"))) == 1


def test_training_without_a_compiler_uses_xlas_convs(tmp_path):
    """LeNet-5 modern's rules use both the native gradients and oneDNN (C1, C3): one warning each."""
    run = run_cli("train", "lenet_modern_mnist", "--smoke", "--workdir", str(tmp_path / "run"), timeout=300,
                  env={**os.environ, "JAXCONV_CACHE_DIR": str(tmp_path), "CXX": str(tmp_path / "no-such-compiler")})
    assert run.returncode == 0, run.stderr
    for what in ("the native CPU conv gradients are unavailable", "oneDNN convs are unavailable"):
        assert len([line for line in run.stderr.splitlines() if what in line]) == 1, run.stderr
    assert not list((tmp_path / "native").glob("*.so"))


def test_a_second_run_reuses_the_first_runs_compiled_train_step(tmp_path):
    """The train step holds the native kernel gradient on every device (8 here: the gradient splits its work
    over the mesh the step is traced under); a later process (a resume, the next run) loads the step from
    JAX's persistent cache, which the CLI keeps in jaxconv's cache directory."""
    cache = tmp_path / "cache"
    assert cpu_conv_grads.reason() == ""  # built into the session's cache: copied, not built again
    shutil.copytree(Path(os.environ["JAXCONV_CACHE_DIR"]) / "native", cache / "native")
    env = {**os.environ, **COMPILER_LOG, "JAXCONV_CACHE_DIR": str(cache),
           "XLA_FLAGS": os.environ["XLA_FLAGS"] + " --xla_force_host_platform_device_count=8"}
    del env["JAX_COMPILATION_CACHE_DIR"]
    first, again = (run_cli("train", "lenet_modern_mnist", "--smoke", "--set", "train.steps=2", "--workdir",
                            str(tmp_path / f"run{k}"), env=env) for k in range(2))
    assert_compiler_log_only(first)
    assert len(list((cache / "jit").glob("jit_train_step-*-cache"))) == 1  # one program, found again
    assert_loaded_from_cache(again, "jit_train_step")


def test_the_users_own_compilation_cache_directory_wins(tmp_path, monkeypatch):
    from jaxconv import cli

    monkeypatch.setenv("JAXCONV_CACHE_DIR", str(tmp_path))
    defaults, own = {}, {"JAX_COMPILATION_CACHE_DIR": "/elsewhere"}
    cli.use_compilation_cache(defaults)
    cli.use_compilation_cache(own)
    assert defaults == {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jit")}
    assert own == {"JAX_COMPILATION_CACHE_DIR": "/elsewhere"}


def test_onednn_convs_run_their_three_handlers_and_keep_a_split_batch_split():
    """``onednn`` computes the output and both gradients by oneDNN; with the batch split over a mesh each
    device computes its images (one all-reduce: the kernel gradient's), and all equals XLA's."""
    assert cpu_onednn.reason() == ""
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((16, 9, 8, 12)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, 6, 10)) / 10, jnp.float32)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    split = jax.device_put(x, NamedSharding(mesh, P("data")))

    def value_and_grads(impl):
        f = lambda x, k: conv_lib.conv(x, k, (2, 1), ((1, -1), (2, 0)), (1, 2), 2, impl=impl)
        return jax.jit(lambda x, k: (f(x, k), *jax.grad(lambda x, k: jnp.sum(jnp.sin(f(x, k))), (0, 1))(x, k)))

    with jax.set_mesh(mesh):
        program = value_and_grads("onednn").lower(split, k).compile().as_text()
        got = value_and_grads("onednn")(split, k)
    for target in (cpu_onednn.FORWARD, cpu_onednn.INPUT_GRAD, cpu_onednn.KERNEL_GRAD):
        assert program.count(f'custom_call_target="{target}"') == 1, target
    assert "all-gather" not in program and program.count("all-reduce(") == 1
    assert got[0].sharding.spec[0] == "data" and got[1].sharding.spec[0] == "data"
    for a, b in zip(got, value_and_grads("xla")(x, k)):
        np.testing.assert_allclose(a, b, atol=1e-5 * float(jnp.max(jnp.abs(b))))


@pytest.mark.parametrize("impl", ["onednn", "onednn/onednn/native"])
def test_a_bias_and_relu_after_a_onednn_conv_are_applied_in_its_call(impl):
    """relu(conv + bias) (PixelCNN's masked convs): one oneDNN call writes it, no separate forward call nor an
    XLA pass for the ReLU; the value and the three gradients equal XLA's, a split batch stays split, and a
    Jacobian (vmap) is XLA's."""
    assert cpu_onednn.reason() == ""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((16, 9, 8, 12)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((2, 3, 12, 10)) / 10, jnp.float32)
    b = jnp.asarray(rng.standard_normal(10) / 2, jnp.float32)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    split = jax.device_put(x, NamedSharding(mesh, P("data")))
    f = lambda impl: lambda x, k, b: conv_lib.conv(x, k, 1, ((-1, 1), (2, 0)), 1, impl=impl, bias=b, relu=True)

    def value_and_grads(impl):
        loss = lambda x, k, b: jnp.sum(jnp.sin(f(impl)(x, k, b)))
        return jax.jit(lambda x, k, b: (f(impl)(x, k, b), *jax.grad(loss, (0, 1, 2))(x, k, b)))

    with jax.set_mesh(mesh):
        program = value_and_grads(impl).lower(split, k, b).compile().as_text()
        got = value_and_grads(impl)(split, k, b)
    assert program.count(f'custom_call_target="{cpu_onednn.BIAS_RELU}"') == 1
    assert f'custom_call_target="{cpu_onednn.FORWARD}"' not in program and "maximum" not in program
    assert "all-gather" not in program
    assert got[0].sharding.spec[0] == "data" and got[1].sharding.spec[0] == "data"
    want = value_and_grads("xla")(x, k, b)
    assert float(jnp.mean(want[0] == 0)) > 0.2  # the ReLU cuts
    for a, w in zip(got, want):
        np.testing.assert_allclose(a, w, atol=1e-5 * float(jnp.max(jnp.abs(w))))
    jacobian = lambda impl: jax.jit(jax.jacrev(lambda x, k, b: f(impl)(x, k, b)[1, 2, 3], (0, 1, 2)))(x, k, b)
    for a, w in zip(jacobian(impl), jacobian("xla")):
        np.testing.assert_allclose(a, w, atol=1e-5 * float(jnp.max(jnp.abs(w))))


def test_pixelcnn_trains_through_the_cli_with_its_relus_in_onednn(tmp_path):
    """At 16 hidden channels the rules give PixelCNN's masked 2x3 layers to oneDNN, their ReLUs in its call
    (the test above checks that call against XLA's maths): the CLI trains it below the uniform baseline."""
    run = run_cli("train", "pixelcnn_mnist", "--smoke", "--set", "model.hidden=16", "--workdir", str(tmp_path / "run"))
    assert run.returncode == 0 and run.stderr == "", run.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["nll_nats"] for r in records if "nll_nats" in r][-1] < 28 * 28 * np.log(2)


def test_a_changed_header_beside_the_source_builds_a_new_library(tmp_path):
    source, header = tmp_path / "kernel.cc", tmp_path / "shared.h"
    source.write_text('#include "shared.h"\n')
    header.write_text("inline int one() { return 1; }\n")
    before = native_build.library_path(source)
    header.write_text("inline int one() { return 2; }\n")
    assert native_build.library_path(source) != before
