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
    params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    assert count(params) == expected
    assert model.apply(params, jnp.zeros((3, 28, 28, 1))).shape == (3, 10)
    assert model.apply(params, jnp.zeros((3, 32, 32, 1))).shape == (3, 10)  # already padded input


def test_c3_follows_the_connection_table():
    """An S2 map influences a C3 map iff Table I connects them (gradient test)."""
    model = build_model(PRESETS["lenet5"])
    params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
    from jaxconv.models.lenet import SparseC3

    c3 = SparseC3()
    x = jax.random.normal(jax.random.key(1), (1, 14, 14, 6))
    connected = np.zeros((6, 16), bool)
    for out in range(16):
        g = jax.grad(lambda x: c3.apply({"params": params["C3"]}, x)[0, 5, 5, out])(x)
        connected[:, out] = np.abs(np.asarray(g)).sum(axis=(0, 1, 2)) > 0
    expected = np.zeros((6, 16), bool)
    for out, ins in enumerate(C3_TABLE):
        expected[list(ins), out] = True
    np.testing.assert_array_equal(connected, expected)


def test_bfloat16_compute_keeps_float32_params_and_logits():
    model = build_model(PRESETS["lenet5_modern"], dtype=jnp.bfloat16)
    params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    ref = build_model(PRESETS["lenet5_modern"]).apply(params, jnp.ones((2, 28, 28, 1)) * 0.5)
    out = model.apply(params, jnp.ones((2, 28, 28, 1)) * 0.5)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, ref, rtol=0.05, atol=0.05)
