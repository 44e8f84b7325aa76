"""The Gated PixelCNN cached sampler's C++ position and vertical row (jaxconv/models/cpu_gated_sampler.cc)
against the same maths in NumPy (float64), and the sampler with them against the sampler with XLA's ops and
the naive one."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv import sampling
from jaxconv.models import PRESETS, build_model, cpu_gated_sampler
from jaxconv.models.conv_policy import ConvPolicy

pytestmark = pytest.mark.skipif(bool(cpu_gated_sampler.reason()), reason="needs a C++ compiler")


def reference(j, x_row, pending, w, dilations, write):
    """Position j as jaxconv/sampling.py's XLA path computes it, in float64."""
    x_row, pending = np.asarray(x_row, np.float64), np.array(pending, np.float64)
    w = {k: np.asarray(v, np.float64) for k, v in w.items()}
    b, f2 = x_row.shape[1], pending.shape[3]
    f, taps = f2 // 2, w["h"].shape[2] // f2
    hs = x_row[j:j + taps].transpose(1, 0, 2).reshape(b, -1) @ w["h_first"] + w["h_first_bias"]
    skip = np.zeros_like(hs)
    for l, d in enumerate(dilations):
        z = hs @ w["h"][l]
        if write:
            for t in range(1, taps):
                pending[j + d * t, l] += z[:, t * f2:(t + 1) * f2]
        pre = pending[j, l] + z[:, :f2]
        gate = np.tanh(pre[:, :f]) / (1 + np.exp(-pre[:, f:]))
        out = gate @ w["res_w"][l] + w["res_b"][l]
        hs, skip = hs + out, skip + out
    hidden = np.maximum(np.maximum(skip, 0) @ w["w1"] + w["b1"], 0)
    return hidden @ w["w2"] + w["b2"], pending


# (batch, F, colours, taps, dilations, hidden, outputs, write): the MNIST preset's sizes; row and column
# counts off the register tiles (odd batch, F and outputs below a vector); a colour group's read-only
# call; a batch split over threads unevenly with the furthest dilation reaching the buffer's end.
CASES = [(64, 32, 1, 2, (1, 2, 1, 4, 1), 64, 1, True),
         (5, 5, 3, 3, (1, 2), 9, 7, True),
         (3, 8, 3, 3, (1,), 16, 30, False),
         (17, 16, 1, 2, (1, 8), 24, 256, True)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"b{c[0]}-f{c[1]}-c{c[2]}-taps{c[3]}-{'rw' if c[7] else 'r'}")
def test_position_matches_the_same_maths_in_numpy(case):
    b, f, colours, taps, dilations, hidden, outputs, write = case
    width, layers, reach = 9, len(dilations), max(dilations) * (taps - 1)
    rng = np.random.default_rng(0)
    normal = lambda *shape, scale=0.3: (scale * rng.standard_normal(shape)).astype(np.float32)
    w = {"h_first": normal(taps * colours, f), "h_first_bias": normal(f), "h": normal(layers, f, taps * 2 * f),
         "res_w": normal(layers, f, f), "res_b": normal(layers, f), "w1": normal(f, hidden), "b1": normal(hidden),
         "w2": normal(hidden, outputs), "b2": normal(outputs)}
    x_row = normal(width + taps - 1, b, colours, scale=1.0)
    # Some slots far into the gates' flat ends, where exp under- and overflows.
    pending = normal(width + reach, layers, b, 2 * f, scale=1.0)
    pending[:, :, 0] *= 60
    for j in (0, 4, width - 1):
        run = jax.jit(lambda j, x, p: cpu_gated_sampler.position(j, x, p, w, dilations, write))
        raw, new_pending = run(j, x_row, pending)
        want_raw, want_pending = reference(j, x_row, pending, w, dilations, write)
        assert np.all(np.isfinite(raw))
        np.testing.assert_allclose(raw, want_raw, rtol=2e-4, atol=2e-4)
        np.testing.assert_allclose(new_pending, want_pending, rtol=1e-5, atol=1e-5)
        if not write:
            np.testing.assert_array_equal(new_pending, pending)


def vertical_reference(i, x, weights, ring, bias, cond, link, row_bias, pending, layer, d, next_d):
    """Row i of vertical layer ``layer``, as jaxconv/sampling.py's XLA path computes it, in float64."""
    z = np.asarray(x, np.float64) @ weights
    ring, cond = np.array(ring, np.float64), np.asarray(cond, np.float64)
    pending = np.array(pending, np.float64)
    f2, slots = ring.shape[3], ring.shape[0]
    r, f, width = z.shape[2] // f2 - 1, f2 // 2, ring.shape[2]
    for s in range(1, r + 1):
        q = (i + d * s) % slots
        ring[q] = (bias if s == r else ring[q]) + z[..., s * f2:(s + 1) * f2]
    pre = ring[i % slots] + z[..., :f2]
    pending[:width, layer] = (pre @ link + row_bias + cond[:, None]).transpose(1, 0, 2)
    pending[width:, layer] = 0
    gated = np.tanh(pre[..., :f] + cond[:, None, :f]) / (1 + np.exp(-pre[..., f:] - cond[:, None, f:]))
    cols = []
    for t in range(2 * r + 1 if next_d else 0):
        shifted = np.zeros_like(gated)
        for x in range(width):
            if 0 <= x + (t - r) * next_d < width:
                shifted[:, x] = gated[:, x + (t - r) * next_d]
        cols.append(shifted)
    return ring, pending, np.concatenate(cols, axis=-1) if cols else np.zeros(gated.shape[:2] + (0,))


# (batch, F, taps r+1, dilation, the next layer's dilation, width, layer of 3): the MNIST preset's sizes;
# r = 2 (a slot added to before it is read) with F below a vector and an uneven split over threads; the last
# layer (no next dot); a next dilation whose outer taps lie wholly past the row's edges.
VERTICAL_CASES = [(64, 32, 2, 2, 4, 28, 1), (17, 5, 3, 2, 1, 9, 0), (3, 8, 2, 1, None, 6, 2), (9, 16, 3, 4, 8, 7, 2)]


@pytest.mark.parametrize("case", VERTICAL_CASES, ids=lambda c: f"b{c[0]}-f{c[1]}-taps{c[2]}-d{c[3]}-next{c[4]}")
def test_vertical_row_matches_the_same_maths_in_numpy(case):
    b, f, taps, d, next_d, width, layer = case
    rng = np.random.default_rng(1)
    normal = lambda *shape, scale=1.0: (scale * rng.standard_normal(shape)).astype(np.float32)
    slots, reach = d * (taps - 1) + 1, 3
    ring, bias, cond = normal(slots, b, width, 2 * f), normal(2 * f), normal(b, 2 * f)
    link, row_bias = normal(2 * f, 2 * f, scale=0.3), normal(2 * f)
    weights = normal(3 * f, taps * 2 * f, scale=0.3)  # the dot's input: 3 column taps of the layer below
    cond[0] *= 60  # one image's gates far into their flat ends, where exp under- and overflows
    run = jax.jit(lambda i, x, ring, pending: cpu_gated_sampler.vertical_row(
        i, x, weights, ring, bias, cond, link, row_bias, pending, layer, d, next_d))
    pending = normal(width + reach, 3, b, 2 * f)  # the other layers' slots and the reach columns as left
    for i in (0, 1, 2 * slots + 1):
        x = normal(b, width, 3 * f)
        got = run(i, x, ring, pending)
        want = vertical_reference(i, x, weights, ring, bias, cond, link, row_bias, pending, layer, d, next_d)
        for name, g, wnt in zip(("ring", "pending", "cols"), got, want):
            assert g.shape == wnt.shape, name
            np.testing.assert_allclose(g, wnt, rtol=1e-5, atol=1e-5, err_msg=name)
        ring, pending = np.asarray(got[0]), np.asarray(got[1])


def _model(preset, **changes):
    config = dataclasses.replace(PRESETS[preset], **changes)
    model = build_model(config)
    return model, model.clone(policy=ConvPolicy(forced="xla"))


@pytest.mark.parametrize("preset, changes, batch", [
    ("gated_pixelcnn_mnist", dict(features=8, num_layers=3), 3),
    ("gated_pixelcnn_imagenet32", dict(features=4, num_layers=2, output_features=8), 2),  # colour groups
    ("gated_pixelcnn_mnist", dict(features=8, num_layers=2, num_classes=3), 2)])
def test_the_native_stack_samples_what_xla_and_the_naive_sampler_do(preset, changes, batch):
    model, xla_model = _model(preset, **changes)
    assert sampling._native_stack(model) and not sampling._native_stack(xla_model)
    h, w, c = {"gated_pixelcnn_mnist": (12, 12, 1), "gated_pixelcnn_imagenet32": (8, 8, 3)}[preset]
    shape = (batch, h, w, c)
    labels = jnp.arange(batch) % model.config.num_classes if model.config.num_classes else None
    params = model.init(jax.random.key(0), jnp.zeros(shape), labels=labels)["params"]
    key = jax.random.key(5)
    native = sampling.sample_cached(model, params, key, shape, labels=labels)
    xla = sampling.sample_cached(xla_model, params, key, shape, labels=labels)
    naive = sampling.sample_naive(xla_model, params, key, shape, labels=labels)
    np.testing.assert_array_equal(native, xla)
    np.testing.assert_array_equal(native, naive)
    assert len(np.unique(np.asarray(native))) > 1  # not a constant image


def test_bfloat16_and_forced_xla_models_use_xlas_ops():
    model, xla_model = _model("gated_pixelcnn_mnist", features=8, num_layers=2)
    assert not sampling._native_stack(xla_model)
    assert not sampling._native_stack(model.clone(dtype=jnp.bfloat16))
    assert sampling._native_stack(model.clone(policy=ConvPolicy(forced="native")))


def test_weights_that_do_not_fit_are_refused_not_read_past():
    f, layers, b = 8, 2, 3
    ones = lambda *shape: np.ones(shape, np.float32)
    w = {"h_first": ones(2, f), "h_first_bias": ones(f), "h": ones(layers, f, 4 * f), "res_w": ones(layers, f, f),
         "res_b": ones(layers, f), "w1": ones(f, 4), "b1": ones(4), "w2": ones(4, 1), "b2": ones(1)}
    x_row, pending = ones(10, b, 1), ones(10, layers, b, 2 * f)
    cpu_gated_sampler.position(0, x_row, pending, w, (1, 1), True)[0].block_until_ready()  # fits
    for name, shape in (("res_w", (layers, f, f - 1)), ("w2", (3, 1)), ("h_first", (3, f))):
        with pytest.raises(Exception, match="shapes do not fit"):
            misfit = {**w, name: ones(*shape)}
            cpu_gated_sampler.position(0, x_row, pending, misfit, (1, 1), True)[0].block_until_ready()
    x, weights, ring = ones(b, 5, 3 * f), ones(3 * f, 4 * f), ones(3, b, 5, 2 * f)
    bias, cond, link, pending = ones(2 * f), ones(b, 2 * f), ones(2 * f, 2 * f), ones(7, layers, b, 2 * f)
    fits = dict(x=x, weights=weights, ring=ring, bias=bias, cond=cond, link=link, row_bias=bias, pending=pending,
                layer=1, dilation=2, next_dilation=1)
    cpu_gated_sampler.vertical_row(0, **fits)[2].block_until_ready()
    for name, value in (("x", x[..., :2 * f]), ("x", x[:, :4]), ("weights", weights[:, :3 * f]),
                        ("weights", weights[:2 * f]), ("ring", ring[:2]), ("bias", bias[:f]), ("cond", cond[:1]),
                        ("dilation", 1), ("link", link[:f]), ("row_bias", bias[:f]), ("pending", pending[:4]),
                        ("pending", pending[:, :, :2]), ("layer", 2), ("layer", -1)):
        with pytest.raises(Exception, match="shapes do not fit"):
            cpu_gated_sampler.vertical_row(0, **{**fits, name: value})[2].block_until_ready()
