"""``materialize`` keeps its value and stays a fusion boundary after XLA:CPU compiles it."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv.models.materialize import MIN_ELEMENTS, materialize
from jaxconv.models.pooling import max_pool


def compiled(fn, x) -> str:
    return jax.jit(fn).lower(x).compile().as_text()


def test_materialize_returns_its_input_exactly_even_with_a_nan_in_the_middle():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 64, 64, 2), np.float32))
    np.testing.assert_array_equal(jax.jit(materialize)(x), x)
    with_nan = x.reshape(-1).at[x.size // 2].set(jnp.nan).reshape(x.shape)
    np.testing.assert_array_equal(jax.jit(materialize)(with_nan), with_nan)  # the other branch
    assert jax.jit(materialize)(x > 0).dtype == jnp.bool_


def test_the_boundary_survives_compilation_on_cpu():
    big = jnp.ones((8, 64, 64, 4))  # 131,072 elements
    assert big.size >= MIN_ELEMENTS
    assert "conditional(" in compiled(lambda v: materialize(jax.nn.relu(v)) * 2, big)
    # A pool materialises its input and output: a ReLU before it and a conv after it are computed once.
    assert compiled(lambda v: max_pool(jax.nn.relu(v), 2, 2), big).count("conditional(") == 2
    small = jnp.ones((2, 8, 8, 4))
    assert "conditional(" not in compiled(lambda v: materialize(jax.nn.relu(v)) * 2, small)


def test_a_one_channel_taps_conv_is_not_recomputed_inside_the_next_layers_kernel_gradient():
    """PixelCNN MNIST's first layer (7x7 taps, one input channel) feeds a 1x1 conv whose kernel gradient
    reads it through a transposing copy; fused into that copy, its 49 multiply-adds ran 13x slower."""
    from jaxconv.models.conv_impls import conv_taps, conv_xla

    def loss(k1, k2, x):
        h = jax.nn.relu(conv_taps(x, k1, (1, 1), ((3, 3), (3, 3)), (1, 1), 1))
        return conv_xla(h, k2, (1, 1), ((0, 0), (0, 0)), (1, 1), 1).sum()

    x = jnp.ones((16, 28, 28, 1))
    text = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(jnp.ones((7, 7, 1, 32)), jnp.ones((1, 1, 32, 16)),
                                                          x).compile().as_text()
    fusions = text.split("\n}\n")
    transposing = [f for f in fusions if " transpose(" in f]
    assert transposing  # the kernel gradient's copy is there to recompute into
    assert all(f.count(" multiply(") < 49 for f in transposing)


def test_the_input_of_a_conv_with_xlas_kernel_gradient_is_computed_once():
    """Gated PixelCNN's head reads the sum of the layers' skip outputs; XLA:CPU fused the sum into the
    transposing copy its kernel gradient reads, 5x slower than the copy alone."""
    from jaxconv.models.conv import conv

    def loss(kernel, parts):
        return conv(jax.nn.relu(sum(parts)), kernel, impl="xla").sum()

    parts = [jnp.full((16, 28, 28, 32), float(i)) for i in range(5)]
    text = jax.jit(jax.grad(loss)).lower(jnp.ones((1, 1, 32, 16)), parts).compile().as_text()
    transposing = [f for f in text.split("\n}\n") if " transpose(" in f and "f32[16,28,28,32]" in f]
    assert transposing  # the kernel gradient's copy of the conv's input
    assert all(f.count(" add(") == 0 for f in transposing)
    # Only under differentiation: inference runs the conv on the fused sum, no conditional.
    forward = jax.jit(lambda k, parts: conv(jax.nn.relu(sum(parts)), k, impl="xla"))
    assert "conditional(" not in forward.lower(jnp.ones((1, 1, 32, 16)), parts).compile().as_text()
