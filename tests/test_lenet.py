import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv.models import PRESETS, build_model
from jaxconv.models.lenet import C3_TABLE


def count(params) -> int:
    return sum(x.size for x in jax.tree.leaves(params))


@pytest.mark.parametrize("name, expected", [
    # 156 (C1) + 12 (S2) + 1,516 (C3, Table I) + 32 (S4) + 48,120 (C5) + 10,164 (F6) = 60,000 (the paper),
    # + 850 for the dense 84->10 softmax output.
    ("lenet5", 60_850),
    # 156 + 2,416 (full C3) + 48,120 + 10,164 + 850
    ("lenet5_modern", 61_706),
])
def test_parameter_counts(name, expected):
    model = build_model(PRESETS[name])
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))  # shapes suffice
    assert count(params) == expected
    assert jax.eval_shape(model.apply, params, jnp.zeros((3, 28, 28, 1))).shape == (3, 10)
    assert jax.eval_shape(model.apply, params, jnp.zeros((3, 32, 32, 1))).shape == (3, 10)  # already padded input


def test_c3_follows_the_connection_table():
    """An S2 map influences a C3 map iff Table I connects them (gradient test)."""
    from jaxconv.models.lenet import SparseC3

    c3 = SparseC3()
    x = jax.random.normal(jax.random.key(1), (1, 14, 14, 6))
    params = jax.jit(c3.init)(jax.random.key(0), x)
    assert count(params) == 1_516  # Table I's 60 kernels of 5x5 and 16 biases
    jacobian = jax.jit(jax.jacrev(lambda x: c3.apply(params, x)[0, 5, 5]))(x)  # [16, 1, 14, 14, 6]
    connected = (np.abs(np.asarray(jacobian)).sum(axis=(1, 2, 3)) > 0).T  # [6 in, 16 out]
    expected = np.zeros((6, 16), bool)
    for out, ins in enumerate(C3_TABLE):
        expected[list(ins), out] = True
    np.testing.assert_array_equal(connected, expected)


def test_bfloat16_compute_keeps_float32_params_and_logits():
    model = build_model(PRESETS["lenet5_modern"], dtype=jnp.bfloat16)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    x = jnp.concatenate([jnp.ones((1, 28, 28, 1)) * 0.5, jax.random.uniform(jax.random.key(1), (7, 28, 28, 1))])
    ref = np.asarray(jax.jit(build_model(PRESETS["lenet5_modern"]).apply)(params, x))
    out = jax.jit(model.apply)(params, x)
    assert out.dtype == jnp.float32
    error = np.abs(np.asarray(out) - ref).max()
    # bfloat16 keeps 8 significant bits: measured max error 0.0074 (constant input) and 0.0058 (random
    # inputs) of the largest |logit|; 0.03 of it is a 4x margin. Computing in float32 instead gives 0.
    assert 0 < error < 0.03 * np.abs(ref).max(), (error, np.abs(ref).max())


# ----------------------------------------------------------------------------------------------
# Dropout (modern only): LeNetConfig.dropout on the outputs of C5 and F6, training only


def _modern(dropout):
    import dataclasses

    return build_model(dataclasses.replace(PRESETS["lenet5_modern"], dropout=dropout))


def test_dropout_is_active_only_in_training_and_a_pure_function_of_the_rng():
    x = jax.random.uniform(jax.random.key(1), (16, 28, 28, 1))
    model = _modern(0.5)
    params = jax.jit(model.init)(jax.random.key(0), x)
    assert count(params) == 61_706  # dropout adds no parameters
    apply = jax.jit(model.apply, static_argnames="train")
    plain = np.asarray(jax.jit(_modern(0.0).apply)(params, x))
    # evaluation: no dropout, no rng needed, the same network as without the option
    np.testing.assert_array_equal(apply(params, x, train=False), plain)
    np.testing.assert_array_equal(apply(params, x, train=False, rngs={"dropout": jax.random.key(5)}), plain)
    # training: random from the 'dropout' rng alone
    a = np.asarray(apply(params, x, train=True, rngs={"dropout": jax.random.key(5)}))
    np.testing.assert_array_equal(a, apply(params, x, train=True, rngs={"dropout": jax.random.key(5)}))
    b = np.asarray(apply(params, x, train=True, rngs={"dropout": jax.random.key(6)}))
    assert not np.array_equal(a, plain) and not np.array_equal(a, b)
    # rate 0: training is evaluation (and takes no rng)
    np.testing.assert_array_equal(jax.jit(_modern(0.0).apply, static_argnames="train")(params, x, train=True), plain)


def test_dropout_drops_the_hidden_units_of_c5_and_f6_at_the_rate():
    """In training, each of C5's and F6's ReLU outputs reaches the next layer as 0 (rate 0.5) or doubled."""
    from flax import linen as nn

    model = _modern(0.5)
    x = jax.random.uniform(jax.random.key(1), (64, 28, 28, 1))
    params = jax.jit(model.init)(jax.random.key(0), x)
    seen = {}

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        seen[context.module.name, "in"], seen[context.module.name, "out"] = np.asarray(args[0]), np.asarray(out)
        return out

    for train in (False, True):
        with nn.intercept_methods(record):
            model.apply(params, x, train=train, rngs={"dropout": jax.random.key(3)})
        for layer, following in (("C5", "F6"), ("F6", "output")):
            fired = np.maximum(seen[layer, "out"], 0)  # [64, units] the layer's ReLU output
            given = seen[following, "in"]  # what the next layer receives
            if not train:
                np.testing.assert_array_equal(given, fired)
                continue
            dropped = (given == 0) & (fired > 0)
            np.testing.assert_allclose(given[~dropped], 2 * fired[~dropped], rtol=1e-6)  # kept / (1 - rate)
            assert 0.45 < dropped.sum() / (fired > 0).sum() < 0.55, layer


def test_the_faithful_lenet_refuses_dropout():
    import dataclasses

    from jaxconv import experiments
    from jaxconv.config import apply_overrides
    from jaxconv.errors import ConfigError

    with pytest.raises(ConfigError, match="model.dropout=0.5 applies to variant modern only"):
        apply_overrides(experiments.load("lenet_mnist"), ["model.dropout=0.5"])
    with pytest.raises(ConfigError, match=r"model.dropout must be in \[0, 1\)"):
        apply_overrides(experiments.load("lenet_modern_mnist"), ["model.dropout=1.0"])
    assert experiments.load("lenet_mnist").model.dropout == 0.0  # the 1998 recipe is unchanged
    model = build_model(dataclasses.replace(PRESETS["lenet5"], dropout=0.5))  # built by hand, past validate()
    with pytest.raises(ConfigError, match="variant modern only"):
        model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
