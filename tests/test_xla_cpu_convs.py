"""conv.xla_cpu: which kernels run XLA's convs on CPU (Eigen by default, YNNPACK on request), carried
to every compiled program that runs the model as XLA compiler options."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv import experiments, sampling
from jaxconv.config import apply_overrides
from jaxconv.data.pipeline import train_batches
from jaxconv.models import build_model, preset
from jaxconv.models.conv_policy import ConvPolicy
from jaxconv.train.loop import build_run

YNN = ConvPolicy(xla_cpu="ynnpack")
EIGEN = ConvPolicy(xla_cpu="eigen")


def ynn_convs(compiled) -> int:
    """The convs a compiled program hands to YNNPACK (fusions of kind __ynn_fusion made from a conv)."""
    return sum("ynn_fusion" in line and " fusion(" in line and "conv_general_dilated" in line
               for line in compiled.as_text().splitlines())


def train_step_ynn_convs(xla_cpu: str, *overrides: str) -> int:
    cfg = apply_overrides(experiments.load("pixelcnn_mnist", smoke=True),
                          ["conv.impl=xla", f"conv.xla_cpu={xla_cpu}", "data.batch_size=16", "model.hidden=16",
                           *overrides])
    run = build_run(cfg)
    state = run.par.place_state(run.init())
    batch = run.par.put_batch(next(train_batches(run.train_data, 16, seed=0, start_step=0)))
    programs = getattr(run.train_step, "compiled", None)  # pmap with options compiles them itself
    if programs is None:
        return ynn_convs(run.train_step.lower(state, batch).compile())
    run.train_step(state, batch)
    return sum(ynn_convs(c) for c in programs.values())


def test_the_options_are_given_on_cpu_for_eigen_only():
    assert jax.default_backend() == "cpu"
    assert YNN.compiler_options() == {}
    assert ConvPolicy() == EIGEN
    options = EIGEN.compiler_options()
    assert list(options) == ["xla_cpu_experimental_ynn_fusion_type"]
    assert "CONVOLUTION" not in options["xla_cpu_experimental_ynn_fusion_type"]


@pytest.mark.parametrize("mode", ["jit", "pmap"])
def test_the_train_step_keeps_its_convs_from_ynnpack_unless_asked(mode):
    # 32-channel convs: YNNPACK takes them under XLA's defaults (jaxlib 0.10).
    parallel = [f"parallel.mode={mode}", "parallel.num_devices=2"]
    assert train_step_ynn_convs("ynnpack", *parallel) > 0
    assert train_step_ynn_convs("eigen", *parallel) == 0


def test_samplers_compile_with_the_models_options_and_agree():
    config = preset("gated_pixelcnn_mnist")  # 32-channel convs: YNNPACK takes them under XLA's defaults
    shape = (2, 6, 6, 1)
    outputs, ynn = [], {}
    for policy in (EIGEN, YNN):
        model = build_model(config, policy=policy)
        params = model.init(jax.random.key(0), jnp.zeros(shape))["params"]
        key, values = jax.random.key(1), jnp.zeros(shape, jnp.int32)
        naive = sampling._jitted(sampling._naive, model, params, key, values, None).lower(
            model, 0, False, False, params, key, values, None, jnp.float32(1.0)).compile()
        ynn[policy.xla_cpu] = ynn_convs(naive)  # the naive sampler runs the model's convs; the cached, matmuls
        outputs.append(np.asarray(sampling.sample_naive(model, params, key, shape)))
        outputs.append(np.asarray(sampling.sample_cached(model, params, key, shape)))
    assert ynn["ynnpack"] > 0 and ynn["eigen"] == 0
    assert all(np.array_equal(outputs[0], o) for o in outputs[1:])


def test_a_sampler_inside_the_callers_jit_compiles_with_the_callers_options():
    model = build_model(preset("pixelcnn_mnist"))
    shape = (2, 5, 5, 1)
    params = model.init(jax.random.key(0), jnp.zeros(shape))["params"]
    alone = sampling.sample_cached(model, params, jax.random.key(1), shape)
    inside = jax.jit(lambda p, k: sampling.sample_cached(model, p, k, shape))(params, jax.random.key(1))
    np.testing.assert_array_equal(np.asarray(alone), np.asarray(inside))
