import jax
import numpy as np
import pytest

from jaxconv import experiments
from jaxconv.config import apply_overrides
from jaxconv.data.pipeline import train_batches
from jaxconv.errors import ConfigError
from jaxconv.train.loop import build_run


def one_step_params(*overrides: str):
    cfg = apply_overrides(experiments.load("lenet_modern_mnist", smoke=True),
                          ["optim.name=momentum", "optim.learning_rate=0.1", "data.batch_size=64", *overrides])
    run = build_run(cfg)
    state = run.par.place_state(run.init())
    batch = next(train_batches(run.train_data, 64, seed=0, start_step=0))
    state, metrics = run.train_step(state, run.par.put_batch(batch))
    return jax.device_get(run.par.single_copy(state).params), jax.device_get(run.par.single_copy(metrics))


def test_one_step_is_the_same_on_1_device_8_devices_and_pmap():
    assert jax.device_count() == 8
    ref_params, ref_metrics = one_step_params("parallel.num_devices=1")
    for overrides in (["parallel.num_devices=8"], ["parallel.num_devices=8", "parallel.mode=pmap"]):
        params, metrics = one_step_params(*overrides)
        # The only difference is the order in which float32 gradient sums over the batch are
        # reduced (8 partial sums + all-reduce vs one sum): reassociation error of a few ulps of
        # the gradient, times lr 0.1, on parameters of size ~0.1: 1e-6 absolute is ~10 ulps.
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), params, ref_params)
        np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-6)
        np.testing.assert_allclose(metrics["accuracy"], ref_metrics["accuracy"])


@pytest.mark.parametrize("mode", ["jit", "pmap"])
def test_a_batch_that_does_not_divide_over_the_devices_is_an_error(mode):
    cfg = apply_overrides(experiments.load("lenet_modern_mnist", smoke=True),
                          ["data.batch_size=36", f"parallel.mode={mode}"])
    with pytest.raises(ConfigError, match="data.batch_size=36 does not divide over 8 devices; use a multiple of 8"):
        build_run(cfg)


def test_multi_process_runs_initialize_jax_distributed(monkeypatch):
    from jaxconv.config import ParallelConfig
    from jaxconv.train import parallel

    calls = []
    monkeypatch.setattr(parallel.jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(parallel.jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(parallel.jax.config, "update", lambda *a: calls.append(a))
    parallel.maybe_initialize_distributed(ParallelConfig())  # single process, no cluster: nothing
    assert calls == []
    parallel.maybe_initialize_distributed(
        ParallelConfig(coordinator_address="127.0.0.1:12345", num_processes=2, process_id=1))
    assert calls == [("jax_cpu_collectives_implementation", "gloo"),
                     {"coordinator_address": "127.0.0.1:12345", "num_processes": 2, "process_id": 1}]
