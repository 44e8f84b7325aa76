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
