"""PixelCNN family: masks, causality and the blind spot, heads, and the two samplers.

Parameters come from ``eval_shape`` + numpy: compiling Flax ``init`` (threefry) of even a tiny
model takes many seconds on CPU, and every test here only needs random weights.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv import sampling
from jaxconv.errors import ConfigError
from jaxconv.models import causality
from jaxconv.models.masked import MaskedConv2D, masked_to_cropped, raster_mask
from jaxconv.models.heads import log_likelihoods, nll
from jaxconv.models.pixelcnn import PIXELCNN_PRESETS, GatedPixelCNNConfig, PixelCNNConfig, build

TINY = {
    "pixelcnn_bernoulli": PixelCNNConfig(channels=1, head="bernoulli", hidden=8, num_blocks=2, output_features=8),
    "pixelcnn_softmax": PixelCNNConfig(channels=3, head="softmax", hidden=12, num_blocks=2, output_features=12,
                                       dilations=(1, 2)),
    "pixelcnn_mixture": PixelCNNConfig(channels=3, head="logistic_mixture", mixtures=2, hidden=6, num_blocks=1,
                                       output_features=6),
    "gated_bernoulli": GatedPixelCNNConfig(channels=1, head="bernoulli", features=8, num_layers=3,
                                           dilations=(1, 2), output_features=8),
    "gated_softmax": GatedPixelCNNConfig(channels=3, head="softmax", features=12, num_layers=3, dilations=(1, 2),
                                         output_features=12),
    "gated_mixture_conditional": GatedPixelCNNConfig(channels=3, head="logistic_mixture", mixtures=2, features=6,
                                                     num_layers=3, dilations=(1, 2), output_features=6,
                                                     num_classes=3),
}
SIZE = 5  # 5x5 images: the gated stacks above see all of it, the 7x7 first layer leaves a blind spot


def random_params(module, x, seed=0, labels=None):
    extra = {} if labels is None else {"labels": labels}
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), x, **extra))["params"]
    rng = np.random.default_rng(seed)

    def fill(leaf):  # zero biases: a ReLU is then alive for about half of the random inputs
        if leaf.ndim == 1:
            return jnp.zeros(leaf.shape, jnp.float32)
        fan_in = int(np.prod(leaf.shape[:-1]))
        return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(fan_in), jnp.float32)

    return jax.tree.map(fill, shapes)


def tiny(name, form="masked"):
    config = TINY[name]
    if form == "cropped":
        config = PixelCNNConfig(**{**config.__dict__, "conv_form": "cropped"})
    model = build(config)
    labels = jnp.array([1]) if config.num_classes else None
    return model, random_params(model, jnp.zeros((1, SIZE, SIZE, config.channels)), labels=labels)


# --- masks ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("k, dilation, colours, mask_type", [
    (3, 1, 1, "A"), (3, 2, 3, "B"), (5, 1, 3, "A"), (7, 1, 1, "B"), (5, 2, 3, "B"), (1, 1, 3, "B")])
def test_both_forms_are_the_dense_conv_of_the_masked_kernel(k, dilation, colours, mask_type):
    x = jax.random.normal(jax.random.key(1), (2, 7, 6, 6))
    masked = MaskedConv2D(9, k, mask_type, colours, dilation)
    params = random_params(masked, x)
    mask = raster_mask(k, 6, 9, colours, mask_type)
    p = dilation * (k // 2)
    want = jax.lax.conv_general_dilated(x, params["kernel"] * mask, (1, 1), [(p, p), (p, p)],
                                        rhs_dilation=(dilation, dilation),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC")) + params["bias"]
    np.testing.assert_allclose(masked.apply({"params": params}, x), want, rtol=1e-5, atol=1e-5)
    cropped = MaskedConv2D(9, k, mask_type, colours, dilation, form="cropped")
    converted = masked_to_cropped(params)
    assert jax.tree.map(jnp.shape, converted) == jax.tree.map(jnp.shape, random_params(cropped, x))
    np.testing.assert_allclose(cropped.apply({"params": converted}, x), want, rtol=1e-5, atol=1e-5)
    # One position from its padded window (the cached sampler's call).
    window = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))[:, 4:4 + 2 * p + 1, 3:3 + 2 * p + 1]
    for layer, layer_params in ((masked, params), (cropped, converted)):
        np.testing.assert_allclose(layer.apply({"params": layer_params}, window, padded=True),
                                   want[:, 4:5, 3:4], rtol=1e-5, atol=1e-5)
    # The kernel's masked-out taps are ignored and get no gradient.
    noisy = {**params, "kernel": params["kernel"] + 100.0 * (1.0 - mask)}
    np.testing.assert_allclose(masked.apply({"params": noisy}, x), want, rtol=1e-5, atol=1e-5)
    grad = jax.grad(lambda q: jnp.sum(masked.apply({"params": q}, x) ** 2))(params)["kernel"]
    assert np.all(np.asarray(grad)[mask == 0] == 0) and np.any(np.asarray(grad)[mask == 1] != 0)


def test_raster_mask_centre_groups():
    mask = raster_mask(3, 3, 6, 3, "A")[1, 1]  # input R, G, B -> output groups (R R G G B B)
    np.testing.assert_array_equal(mask, [[0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(raster_mask(3, 3, 6, 3, "B")[1, 1] - mask,
                                  [[1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1]])
    assert raster_mask(3, 1, 1, 1, "A")[1, 1].sum() == 0 and raster_mask(3, 1, 1, 1, "B")[1, 1].sum() == 1
    np.testing.assert_array_equal(raster_mask(5, 1, 1, 1, "B")[..., 0, 0], [[1, 1, 1, 1, 1], [1, 1, 1, 1, 1],
                                                                            [1, 1, 1, 0, 0], [0, 0, 0, 0, 0],
                                                                            [0, 0, 0, 0, 0]])


def test_whole_pixelcnn_masked_and_cropped_agree():
    model, params = tiny("pixelcnn_softmax")
    cropped, _ = tiny("pixelcnn_softmax", "cropped")
    x = jax.random.uniform(jax.random.key(2), (2, SIZE, SIZE, 3), minval=-1, maxval=1)
    np.testing.assert_allclose(jax.jit(cropped.apply)({"params": masked_to_cropped(params)}, x),
                               jax.jit(model.apply)({"params": params}, x), rtol=1e-4, atol=1e-5)


# --- causality -----------------------------------------------------------------------------------


def reference_reach(size, first_kernel, blocks):
    """Pixel-level reachability through the masks alone (no gradients): bool [H, W, H, W]."""
    def offsets(k, d, centre):
        r = k // 2
        taps = [(di, dj) for di in range(-r, 1) for dj in range(-r, r + 1) if di < 0 or dj < 0]
        return [(d * di, d * dj) for di, dj in taps + ([(0, 0)] if centre else [])]

    def step(reach, taps):
        out = np.zeros_like(reach)
        for i in range(size):
            for j in range(size):
                for di, dj in taps:
                    if 0 <= i + di < size and 0 <= j + dj < size:
                        out[i, j] |= reach[i + di, j + dj]
        return out

    identity = np.eye(size * size, dtype=bool).reshape(size, size, size, size)
    reach = step(identity, offsets(first_kernel, 1, centre=False))
    for k, d in blocks:
        reach = reach | step(reach, offsets(k, d, centre=True))
    return reach


@pytest.mark.parametrize("name, form", [
    ("pixelcnn_bernoulli", "masked"), ("pixelcnn_bernoulli", "cropped"), ("pixelcnn_softmax", "cropped"),
    ("pixelcnn_mixture", "masked"), ("gated_bernoulli", "masked"), ("gated_softmax", "masked"),
    ("gated_mixture_conditional", "masked")])
def test_causality_exhaustive_and_blind_spot(name, form):
    model, params = tiny(name, form)
    config = model.config
    labels = jnp.array([2]) if config.num_classes else None
    deps = causality.dependency_maps(model, params, (SIZE, SIZE, config.channels), labels=labels)
    causality.check_causal(deps)  # every output variable, every channel
    blind = causality.blind_spot(deps)
    if name.startswith("gated"):
        assert not blind.any()
        # Within a pixel, channel c sees exactly the earlier channels.
        for c in range(config.channels):
            np.testing.assert_array_equal(deps[2, 3, c][2, 3], np.arange(config.channels) < c)
    else:
        reach = reference_reach(SIZE, config.first_kernel,
                                [(config.kernel, d) for d in config.dilations * config.num_blocks][:config.num_blocks])
        before = np.arange(SIZE * SIZE).reshape(SIZE, SIZE)
        expected = (before[:, :, None, None] > before[None, None]) & ~reach
        for c in range(config.channels):
            np.testing.assert_array_equal(blind[:, :, c], expected)
        # The classic blind spot: one row up and more than first_kernel // 2 columns right.
        assert blind[1, 0, 0, 0, 4] and blind[4, 0, 0, 3, 4] and expected.sum() > 0


def test_render_dependency_maps(tmp_path):
    maps = {}
    for name in ("pixelcnn_bernoulli", "gated_bernoulli"):
        model, params = tiny(name)
        maps[name] = causality.dependency_maps(model, params, (SIZE, SIZE, 1))
    path = causality.render_png(maps, (3, 1, 0), tmp_path / "deps.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- heads ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_logistic_mixture_sums_to_one_over_256_values(dtype):
    config = GatedPixelCNNConfig(channels=3, head="logistic_mixture", mixtures=4)
    rng = np.random.default_rng(0)
    k, h, w = 4, 3, 4
    raw = np.concatenate([rng.normal(size=(h, w, k)) * 3,
                          rng.uniform(-1.3, 1.3, size=(h, w, 3 * k)),  # means, some beyond the edges
                          rng.uniform(-9.0, 2.0, size=(h, w, 3 * k)),  # log-scales: very sharp to very flat
                          rng.normal(size=(h, w, 3 * k))], axis=-1)
    raw = jnp.asarray(raw[None], dtype)  # [1, H, W, P]
    fixed = rng.integers(0, 256, size=(h, w, 3))
    for c in range(3):
        images = np.broadcast_to(fixed, (256, h, w, 3)).copy()
        images[..., c] = np.arange(256)[:, None, None]
        ll = jax.jit(log_likelihoods, static_argnums=0)(config, jnp.broadcast_to(raw, (256, *raw.shape[1:])), jnp.asarray(images, jnp.uint8))
        assert ll.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(ll)))
        np.testing.assert_allclose(jnp.exp(ll[..., c]).sum(axis=0), 1.0, atol=2e-4)


@pytest.mark.parametrize("name, values", [("gated_softmax", 256), ("pixelcnn_bernoulli", 2)])
def test_nll_is_the_sum_of_per_variable_terms_and_log_v_per_variable_when_uniform(name, values):
    """Random weights: the NLL is the sum of the per-variable terms. A zeroed output layer (zero logits):
    every variable is uniform over its V values, so an image costs exactly H*W*C*log(V) nats (8
    bits/dim for 8-bit data, 1 for binary) whatever it shows."""
    model, params = tiny(name)
    config = model.config
    images = jax.random.randint(jax.random.key(3), (2, SIZE, SIZE, config.channels), 0, 256).astype(jnp.uint8)
    x = (images > 127 if values == 2 else images / 255.0 * 2 - 1).astype(jnp.float32)
    apply = jax.jit(model.apply)
    raw = apply({"params": params}, x)
    per_image = nll(config, raw, images)
    assert per_image.shape == (2,)
    np.testing.assert_allclose(per_image, -log_likelihoods(config, raw, images).sum(axis=(1, 2, 3)), rtol=1e-6)
    zeroed = {**params, "head": {**params["head"], "logits": jax.tree.map(jnp.zeros_like, params["head"]["logits"])}}
    raw = apply({"params": zeroed}, x)
    np.testing.assert_allclose(nll(config, raw, images), SIZE * SIZE * config.channels * np.log(values), rtol=1e-6)


# --- samplers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, known_rows, temperature", [
    ("pixelcnn_bernoulli", 0, 1.0), ("pixelcnn_softmax", 2, 0.8),
    ("gated_bernoulli", 2, 1.0), ("gated_softmax", 0, 1.0), ("gated_mixture_conditional", 1, 0.9)])
def test_naive_and_cached_samplers_agree(name, known_rows, temperature):
    model, params = tiny(name)
    config = model.config
    shape = (2, SIZE, SIZE, config.channels)
    labels = jnp.array([0, 2]) if config.num_classes else None
    given = jax.random.randint(jax.random.key(7), shape, 0, 256).astype(jnp.uint8) if known_rows else None
    kwargs = dict(labels=labels, images=given, known_rows=known_rows, temperature=temperature)
    naive = sampling.sample_naive(model, params, jax.random.key(5), shape, **kwargs)
    cached = sampling.sample_cached(model, params, jax.random.key(5), shape, **kwargs)
    np.testing.assert_array_equal(naive, cached)
    assert naive.dtype == np.uint8 and len(np.unique(np.asarray(naive))) > 1
    if known_rows:
        expected = np.asarray(given[:, :known_rows])
        if config.head == "bernoulli":
            expected = (expected > 127).astype(np.uint8) * 255
        np.testing.assert_array_equal(naive[:, :known_rows], expected)
        np.testing.assert_array_equal(cached[:, :known_rows], expected)
    other = sampling.sample_cached(model, params, jax.random.key(6), shape, **kwargs)
    assert not np.array_equal(other, cached)  # the key matters


# --- configs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, expected", [
    ("pixelcnn_mnist", 20_737),
    ("pixelcnn_cifar", 3_650_304),
    ("gated_pixelcnn_mnist", 111_137),
    ("gated_pixelcnn_cifar", 623_090),
    ("gated_pixelcnn_imagenet32", 122_170_624),
])
def test_preset_parameter_counts(name, expected):
    config = PIXELCNN_PRESETS[name]
    size = 28 if config.channels == 1 else 32
    shapes = jax.eval_shape(build(config).init, jax.random.key(0), jnp.zeros((1, size, size, config.channels)))
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)) == expected
    out = jax.eval_shape(build(config).apply, shapes, jnp.zeros((2, size, size, config.channels)))
    assert out.shape == (2, size, size, config.head_channels) and out.dtype == jnp.float32


@pytest.mark.parametrize("config", [
    PixelCNNConfig(channels=3, head="bernoulli"), PixelCNNConfig(kernel=4), PixelCNNConfig(channels=2),
    GatedPixelCNNConfig(channels=3, head="softmax", features=2), GatedPixelCNNConfig(dilations=()),
    GatedPixelCNNConfig(head="poisson")])
def test_invalid_configs_raise(config):
    with pytest.raises(ConfigError):
        config.validate()
