"""jaxconv's view-based pooling equals flax's reduce_window pooling, forward and backward."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv.models.pooling import max_pool, sum_pool


@pytest.mark.parametrize("shape,window,stride", [((2, 28, 28, 3), 2, 2), ((2, 10, 11, 4), 2, 2),
                                                 ((3, 15, 15, 5), 3, 2), ((1, 7, 9, 2), 3, 2), ((2, 6, 6, 1), 3, 1),
                                                 ((1, 8, 7, 2), 2, 3), ((1, 11, 10, 2), 4, 3)])
def test_pools_equal_flax_forward_and_backward(shape, window, stride):
    x = jnp.asarray(np.random.default_rng(0).standard_normal(shape, np.float32))
    pairs = {"max": (lambda y: max_pool(y, window, stride),
                     lambda y: nn.max_pool(y, (window, window), strides=(stride, stride))),
             "sum": (lambda y: sum_pool(y, window, stride),
                     lambda y: nn.avg_pool(y, (window, window), strides=(stride, stride)) * window ** 2)}

    def value_and_weighted_grad(pool, x):  # the gradient of sum(pool(x) * weights), weights 0, 1, 2, ...
        y, pullback = jax.vjp(pool, x)
        return y, pullback(jnp.arange(y.size, dtype=jnp.float32).reshape(y.shape))[0]

    # One program per case: op by op, each small op was compiled on its own (3x the time).
    results = jax.jit(lambda x: {kind: [value_and_weighted_grad(pool, x) for pool in pair]
                                 for kind, pair in pairs.items()})(x)
    for kind, ((ours, our_grad), (theirs, their_grad)) in results.items():
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6, err_msg=kind)
        np.testing.assert_allclose(our_grad, their_grad, rtol=1e-6, atol=1e-5, err_msg=kind)


@pytest.mark.parametrize("window,stride", [(2, 2), (3, 2)])
def test_max_pool_gives_a_tie_to_its_first_input_as_flax_does(window, stride):
    x = jnp.asarray(np.random.default_rng(1).integers(0, 3, (2, 9, 9, 2)).astype(np.float32))  # many ties
    weights = jnp.arange(2 * 16 * 2, dtype=jnp.float32)[: 2 * ((9 - window) // stride + 1) ** 2 * 2]
    pool_sum = lambda pool: lambda y: jnp.sum(pool(y).reshape(-1) * weights)
    ours = jax.grad(pool_sum(lambda y: max_pool(y, window, stride)))(x)
    theirs = jax.grad(pool_sum(lambda y: nn.max_pool(y, (window, window), strides=(stride, stride))))(x)
    np.testing.assert_array_equal(ours, theirs)
