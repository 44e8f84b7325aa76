"""The fast cached sampler (``jaxconv.sampling``): its parts draw exactly what ``sample_variable`` draws,
it agrees with the naive sampler where its pending buffers wrap or reach past the image, the gated one
draws each variable from the forward pass's distribution (to float tolerance), its compiled
program keeps its buffers in place, and ``jaxconv bench sample`` counts its FLOPs exactly.

Timings are not asserted (a shared CPU); the structure that made the sampler fast is.
"""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from jaxconv import sampling
from jaxconv.bench import results
from jaxconv.bench import sample as bench_sample
from jaxconv.bench.models import forward_flops_of
from jaxconv.models import PRESETS, build_model, cpu_gated_sampler, heads
from jaxconv.models.conv_policy import ConvPolicy
from jaxconv.models.pixelcnn import GatedPixelCNNConfig, PixelCNNConfig, build


def random_params(model, shape, labels=None, seed=0):
    extra = {} if labels is None else {"labels": labels}
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *shape)), **extra))["params"]
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:-1])) if s.ndim > 1
                                              else rng.normal(size=s.shape) * 0.1, jnp.float32), shapes)


# --- drawing ---------------------------------------------------------------------------------------


MIXTURE = GatedPixelCNNConfig(channels=3, head="logistic_mixture", mixtures=5)


@pytest.mark.parametrize("config, temperature, draw, method", [
    (GatedPixelCNNConfig(channels=1, head="bernoulli"), 0.7, "gumbel", "values"),
    (GatedPixelCNNConfig(channels=3, head="softmax"), 0.7, "gumbel", "values"),
    (MIXTURE, 0.7, "gumbel", "values"),
    (MIXTURE, 1.0, "gumbel", "component"),
    (MIXTURE, 1.0, "direct", "direct")], ids=["bernoulli", "softmax", "mixture-tempered", "mixture", "mixture-direct"])
def test_row_noise_draws_what_sample_variable_draws(config, temperature, draw, method):
    """A row's random numbers drawn at once + the cached sampler's draw: the same values as
    ``sample_variable`` with ``fold_in(key, n)``, variable by variable; the method each draw and
    temperature takes."""
    b, w, c, i = 16, 4, config.channels, 3
    key = jax.random.key(11)
    raw = jax.random.normal(jax.random.key(1), (w, b, config.head_channels)) * 3
    pixel = jax.random.uniform(jax.random.key(2), (b, c), minval=-1.0, maxval=1.0)
    assert heads.check_draw(config, draw, temperature) == method
    noise = sampling._row_noise(config, method, key, i, b, w, c)
    counts = {"direct": config.mixtures + 1, "component": config.mixtures + 2 * heads.BLOCK}
    assert noise.shape == (w, c, b, counts.get(method, config.num_values))
    t = jnp.float32(temperature)
    for j in range(w):
        for ch in range(c):
            n = (i * w + j) * c + ch
            expected = heads.sample_variable(config, raw[j], pixel, ch, jax.random.fold_in(key, n), t, method)
            got = sampling._draw_noise(config, method, raw[j], pixel, ch, noise[j, ch], t)
            np.testing.assert_array_equal(got, expected)


def test_direct_draws_are_for_a_mixture_at_temperature_one():
    for config, temperature, message in [(MIXTURE, 0.9, "temperature 1 only"),
                                         (GatedPixelCNNConfig(head="softmax"), 1.0, "not softmax")]:
        with pytest.raises(ValueError, match=message):
            heads.check_draw(config, "direct", temperature)
    with pytest.raises(ValueError, match="temperature 1 only"):  # a traced temperature could be anything
        jax.jit(lambda t: heads.check_draw(MIXTURE, "direct", t))(1.0)
    with pytest.raises(ValueError, match="draw must be one of gumbel, direct"):
        heads.check_draw(MIXTURE, "exact", 1.0)
    assert heads.check_draw(MIXTURE, "gumbel", 1.0) == "component"
    # a traced temperature could be 1 or not: Gumbel-max over all values
    assert jax.jit(lambda t: jnp.float32(heads.check_draw(MIXTURE, "gumbel", t) == "values"))(1.0) == 1


@pytest.mark.parametrize("method", ["direct", "component"])
def test_mixture_draws_at_temperature_one_follow_the_discretised_mixture(method):
    """The direct draw (a component, then the logistic's inverse CDF, rounded) and the component draw (a
    component, then a block of 16 values, then a value of it) against the 256 values' probabilities the
    likelihood uses: mixtures with mass in the middle, at both edge bins, narrower than the log-scale clamp,
    narrower than a bin centred at 0.3, 0.5 and -0.45 of a bin from a value (rounding, not flooring), and
    split by the edges between blocks (values 15 | 16, 127 | 128 and 239 | 240, next to the open-ended
    blocks). Every value's frequency within 5 standard errors of 100,000 draws (rounding off by a bin, or a
    block's mass computed from the wrong edges, moves whole bins of mass, far past 5 errors)."""
    config, n = dataclasses.replace(MIXTURE, mixtures=3), 100_000
    at = lambda bins: bins / 127.5 - 1.0  # value units (0..255, bin centres at integers) -> the model's [-1, 1]
    logits = [[0.0, 1.0, -1.0], [2.0, 0.0, 0.0], [0.0, 0.5, 1.0], [0.0, 0.0, 0.0]]
    # the third mixture's last component is narrower than the -7 clamp on log-scales: the clamp decides its bins
    means = [[-0.3, 0.2, 0.6], [-0.98, 0.99, at(100.3)], [at(100.3), at(150.5), at(200 - 0.45)],
             [at(15.5), at(127.5), at(239.5)]]
    log_scales = [[-2.0, -3.0, -1.5], [-4.0, -3.5, -9.0], [-6.5, -6.5, -6.5], [-5.0, -6.0, -6.5]]
    for row in range(len(means)):
        params = jnp.array([*logits[row], *means[row], *log_scales[row]], jnp.float32)[None]  # [1, 3K]
        p = np.exp(np.asarray(heads.variable_log_prob(config, params, jnp.arange(256)[None]), np.float64)[0])
        assert abs(p.sum() - 1) < 1e-4
        noise = heads.variable_noise(config, jax.random.key(row), n, method)
        values = np.asarray(jax.jit(heads.draw_variable, static_argnums=(0, 1))(
            config, method, jnp.broadcast_to(params, (n, 9)), noise, 1.0))
        freq = np.bincount(values, minlength=256) / n
        assert np.all(np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / n) + 1e-4), np.argmax(np.abs(freq - p))


def exact_mixture_log_probs(params):
    """log p(v) of the discretised logistic mixture for all 256 values, in float64 (scipy's log_expit)."""
    logits, means, log_scales = np.split(np.asarray(params, np.float64), 3, axis=-1)
    inv_scale = np.exp(-np.maximum(log_scales, -7.0))[..., None]
    centres = np.arange(256) / 255 * 2 - 1
    upper, lower = inv_scale * (centres + 1 / 255 - means[..., None]), inv_scale * (centres - 1 / 255 - means[..., None])
    log_bin = scipy.special.log_expit(upper) + np.log(-np.expm1(lower - upper)) + scipy.special.log_expit(-lower)
    log_bin[..., 0], log_bin[..., 255] = scipy.special.log_expit(upper[..., 0]), scipy.special.log_expit(-lower[..., 255])
    log_weights = logits - scipy.special.logsumexp(logits, axis=-1, keepdims=True)
    return scipy.special.logsumexp(log_weights[..., None] + log_bin, axis=1)


@pytest.mark.parametrize("spread, log_scale", [(0.5, 0.0), (0.5, -3.0), (2.0, -6.0), (1.5, -9.0), (0.3, 4.0)],
                         ids=["wide", "typical", "narrow-far", "below-clamp", "very-wide"])
def test_all_values_log_probs_of_the_mixture(spread, log_scale):
    """The samplers' log p(v) for all 256 values of a mixture: within 1e-4 of the
    float64 value wherever p(v) > e^-20, finite in the far tails (mass at both edge bins: means up to 3
    units past [-1, 1]), normalised, and within float tolerance of the likelihood's own per-value formula."""
    config = GatedPixelCNNConfig(channels=3, head="logistic_mixture", mixtures=5)
    params = jax.random.normal(jax.random.key(0), (64, 15)) * jnp.array([2.0] * 5 + [spread] * 5 + [1.0] * 5)
    params = params + jnp.array([0.0] * 10 + [log_scale] * 5)
    got = np.asarray(jax.jit(lambda p: heads.values_log_prob(config, p))(params), np.float64)
    exact = exact_mixture_log_probs(params)
    likely = exact > -20
    assert np.abs(got - exact)[likely].max() < 1e-4
    assert np.all(np.isfinite(got)) and np.all(got <= 0)
    np.testing.assert_allclose(np.exp(got).sum(-1), 1.0, atol=1e-5)
    per_value = heads.variable_log_prob(config, params, jnp.broadcast_to(jnp.arange(256), (64, 256)))
    np.testing.assert_allclose(got[likely], np.asarray(per_value)[likely], atol=3e-4)


@pytest.mark.parametrize("log_scale", [84.0, 88.0, np.inf])
def test_a_flat_component_puts_half_its_mass_at_each_edge_bin(log_scale):
    """A log-scale so large that the bin width underflows (or the scale is infinite): the component's mass
    goes to values 0 and 255, 1/2 each, the limit, and no NaN (which would draw value 0 every time)."""
    config = GatedPixelCNNConfig(channels=1, head="logistic_mixture", mixtures=2)
    params = jnp.array([[5.0, 0.0, 0.3, 0.5, log_scale, -3.0]])  # the flat component has weight 0.993
    log_p = np.asarray(heads.values_log_prob(config, params), np.float64)[0]
    weight = 1 / (1 + np.exp(-5.0))
    assert np.all(np.isfinite(log_p) | (log_p == -np.inf)) and abs(np.exp(log_p).sum() - 1) < 1e-5
    assert abs(np.exp(log_p[0]) - weight / 2) < 1e-5 and abs(np.exp(log_p[255]) - weight / 2) < 1e-5
    noise = heads.variable_noise(config, jax.random.key(0), 4000, "component")
    drawn = np.asarray(heads.component_draw(jnp.broadcast_to(params, (4000, 6)), noise))
    assert 0.4 < np.mean(drawn == 255) < 0.6 and 0.4 < np.mean(drawn == 0) < 0.6


def test_argmax_is_jnp_argmax():
    x = jax.random.normal(jax.random.key(0), (50, 256))
    x = x.at[1, 7].set(jnp.nan).at[2].set(-jnp.inf).at[3, 5].set(jnp.inf).at[4, [3, 9]].set(10.0)
    x = x.at[5, [2, 8]].set(jnp.nan)
    np.testing.assert_array_equal(heads.first_argmax(x), jnp.argmax(x, axis=-1))


# --- agreement where the cached sampler's buffers wrap --------------------------------------------


@pytest.mark.parametrize("config, shape, known_rows", [
    # d * r >= W and >= H: every pending write lands past the row or below the image.
    (GatedPixelCNNConfig(channels=1, head="bernoulli", features=6, num_layers=3, dilations=(1, 4, 8),
                         output_features=6), (3, 4, 4, 1), 0),
    # RGB logistic mixture drawn directly (temperature 1), past a given row.
    (GatedPixelCNNConfig(channels=3, head="logistic_mixture", mixtures=2, features=6, num_layers=2,
                         output_features=6), (2, 3, 4, 3), 1),
    # 5x5 kernels (r = 2: two pending taps per conv), RGB softmax (recomputed per channel), classes.
    (GatedPixelCNNConfig(channels=3, head="softmax", features=6, num_layers=2, kernel=5, dilations=(1, 2),
                         output_features=6, num_classes=2), (2, 5, 4, 3), 1),
    # All rows given: only the vertical stack runs; the images come back unchanged.
    (GatedPixelCNNConfig(channels=3, head="logistic_mixture", mixtures=2, features=6, num_layers=2,
                         output_features=6), (2, 3, 3, 3), 3),
    # pixelcnn in the cropped form (its kernels assembled), RGB softmax, dilated blocks, a given row.
    (PixelCNNConfig(channels=3, head="softmax", hidden=6, num_blocks=2, output_features=6, dilations=(1, 2),
                    conv_form="cropped"), (2, 4, 4, 3), 1),
    (PixelCNNConfig(channels=1, head="bernoulli", hidden=4, num_blocks=1, output_features=4, first_kernel=5),
     (2, 3, 5, 1), 0),
], ids=["dilated-past-image", "mixture-direct", "k5-softmax-classes", "all-given", "pixelcnn-cropped-softmax",
        "pixelcnn-k5"])
def test_cached_agrees_with_naive_where_buffers_wrap(config, shape, known_rows):
    model = build(config)
    labels = jnp.arange(shape[0]) % config.num_classes if config.num_classes else None
    params = random_params(model, shape[1:], labels=None if labels is None else labels[:1])
    given = jax.random.randint(jax.random.key(7), shape, 0, 256).astype(jnp.uint8) if known_rows else None
    # the mixture cases at temperature 1 by both of its draws (directly, and a component then a value by
    # Gumbel-max); the others by Gumbel-max at 0.9
    mixture = config.head == "logistic_mixture"
    for draw in ("direct", "gumbel") if mixture else ("gumbel",):
        kwargs = dict(labels=labels, images=given, known_rows=known_rows, temperature=1.0 if mixture else 0.9,
                      draw=draw)
        naive = sampling.sample_naive(model, params, jax.random.key(5), shape, **kwargs)
        cached = sampling.sample_cached(model, params, jax.random.key(5), shape, **kwargs)
        np.testing.assert_array_equal(naive, cached)
        if known_rows == shape[1]:
            np.testing.assert_array_equal(cached, given)


@pytest.mark.parametrize("config, shape, known_rows", [
    # 5x5 (r = 2: several products into a column, some from left of the row start), dilation 3, RGB softmax
    # (three passes per pixel, the pending buffer written on the last), past two given rows.
    (GatedPixelCNNConfig(channels=3, head="softmax", kernel=5, dilations=(1, 3), features=6, num_layers=2,
                         output_features=6), (2, 7, 9, 3), 2),
    # Classes, dilations whose taps reach past the row's end and the image's bottom (d * r >= W, H).
    (GatedPixelCNNConfig(channels=1, head="softmax", kernel=5, dilations=(1, 5, 2), features=5, num_layers=3,
                         output_features=6, num_classes=3), (3, 5, 4, 1), 0),
    # One colour group (a pixel's channels share one pass), each channel's mixture conditioned on those before.
    (GatedPixelCNNConfig(channels=3, head="logistic_mixture", mixtures=2, dilations=(1, 2), features=6,
                         num_layers=3, output_features=6), (2, 4, 6, 3), 1),
], ids=["gated-k5-rgb-softmax", "gated-k5-classes-past-edges", "gated-mixture"])
@pytest.mark.parametrize("ops", ["default", "xla"])
def test_gated_cached_sampler_computes_each_variable_as_the_forward_pass(monkeypatch, config, shape, known_rows, ops):
    """The distribution each variable is drawn from inside the cached sampler equals a whole-image forward
    pass on the sample it returns (to float tolerance). Stronger than the samplers' agreement: a wrong pending
    sum moves the logits a little, which flips a draw only now and then (a review found such a bug that left
    every sample of one of these cases unchanged). Both ways of computing the stacks: the default (on the
    CPU in float32, the C++ calls of ``cpu_gated_sampler`` where they build) and XLA's ops."""
    seen = []
    draw = sampling._draw_noise

    def recording_draw(config, method, raw_pos, pixel_scaled, c, noise, temperature):
        params = heads.variable_params(config, raw_pos, pixel_scaled)[:, c]
        jax.debug.callback(lambda p: seen.append(np.asarray(p)), params, ordered=True)
        return draw(config, method, raw_pos, pixel_scaled, c, noise, temperature)

    monkeypatch.setattr(sampling, "_draw_noise", recording_draw)
    sampling._jit_with.cache_clear()  # traced anew, with the recording draw
    try:
        model = build(config)
        if ops == "xla":
            model = model.clone(policy=ConvPolicy(forced="xla"))
        assert sampling._native_stack(model) == (ops == "default" and not cpu_gated_sampler.reason())
        labels = jnp.arange(shape[0]) % config.num_classes if config.num_classes else None
        params = random_params(model, shape[1:], labels=None if labels is None else labels[:1])
        given = jax.random.randint(jax.random.key(7), shape, 0, 256).astype(jnp.uint8)
        images = sampling.sample_cached(model, params, jax.random.key(5), shape, labels=labels, images=given,
                                        known_rows=known_rows, temperature=0.9 if config.head == "softmax" else 1.0)
        jax.effects_barrier()
    finally:
        sampling._jit_with.cache_clear()
    x = heads.scale_values(config, heads.to_values(config, images))
    expected = heads.variable_params(config, model.apply({"params": params}, x, labels=labels), x)  # [B,H,W,C,Q]
    b, h, w, c = shape
    assert len(seen) == (h - known_rows) * w * c  # given rows are not drawn
    expected = np.asarray(expected[:, known_rows:]).transpose(1, 2, 3, 0, 4).reshape(len(seen), b, -1)
    np.testing.assert_allclose(np.stack(seen), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_bfloat16_model_samples():
    model = build(GatedPixelCNNConfig(channels=1, head="bernoulli", features=8, num_layers=2, output_features=8),
                  dtype=jnp.bfloat16)
    params = random_params(model, (6, 6, 1))
    images = np.asarray(sampling.sample_cached(model, params, jax.random.key(0), (2, 6, 6, 1)))
    assert images.dtype == np.uint8 and set(np.unique(images)) <= {0, 255}


# --- the compiled program ----------------------------------------------------------------------------


def loop_copies(hlo_text: str) -> set[str]:
    """Shapes of the copies in the while-loop bodies with no while loop of their own: the per-position steps
    (H*W runs), and the gated sampler's per-row step, whose position loop is in a conditional's branch."""
    bodies = set(re.findall(r"body=%([\w.\-]+)", hlo_text))
    lines: dict[str, list[str]] = {}
    computation = None
    for line in hlo_text.splitlines():
        if line and not line.startswith(" "):
            computation = line.split(" ")[0].lstrip("%")
        elif computation in bodies:
            lines.setdefault(computation, []).append(line)
    copies = set()
    for body in lines.values():
        if not any(re.search(r"\) while\(|\} while\(", line) for line in body):
            copies |= {m.group(1) for line in body if (m := re.search(r"= ([fs]32\[[\d,]+\])\S* copy\(", line))}
    return copies


@pytest.mark.parametrize("config, shape", [
    (PRESETS["gated_pixelcnn_mnist"], (8, 12, 12, 1)),
    (PRESETS["gated_pixelcnn_cifar"], (4, 10, 10, 3)),
    # 5x5 (two pending taps per conv, as gated_pixelcnn_imagenet32's), RGB softmax (three passes per pixel)
    (GatedPixelCNNConfig(channels=3, head="softmax", kernel=5, dilations=(1, 2), features=12, num_layers=3,
                         output_features=12), (4, 10, 10, 3)),
    (PRESETS["pixelcnn_mnist"], (256, 6, 6, 1))], ids=["gated-mnist", "gated-cifar", "gated-k5-rgb", "pixelcnn-mnist"])
def test_compiled_sampler_updates_its_buffers_in_place(config, shape):
    """No copy bigger than one pixel's values [B, C] in the per-position loop: XLA copies a loop-carried buffer
    when a read of it cannot be ordered before an in-place write. The first version of the gated sampler
    copied its five pending rows at every position, and its 5x5 vertical rings at every row; the pixelcnn
    sampler through the model's former
    ``PixelCNN.position`` method (its conv windows through ``materialize``'s conditional) copied every block
    cache at every position from batch 256 on, 20x slower.
    No scatter, and no argmax reduction (pairs of value and index, slow on CPU)."""
    model = build_model(config)
    text = sampling.cached_compiled(model, random_params(model, shape[1:]), jax.random.key(0), shape).as_text()
    size = lambda s: int(np.prod([int(n) for n in s[4:-1].split(",")]))
    assert not {s for s in loop_copies(text) if size(s) > shape[0] * shape[3]}
    assert not re.search(r"\bscatter\(", text)
    assert not re.search(r"= \(s32\[[\d,]*\]\S*, f32\[[\d,]*\]\S*\) reduce\(|= \(f32\[[\d,]*\]\S*, s32\[[\d,]*\]\S*\) "
                         r"reduce\(", text)


# --- FLOPs ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config, image, ratio", [
    (PRESETS["gated_pixelcnn_mnist"], (28, 28, 1), 1.0),
    (PRESETS["pixelcnn_mnist"], (28, 28, 1), 1.0),
    (GatedPixelCNNConfig(channels=3, head="logistic_mixture", features=12, num_layers=2, output_features=12),
     (8, 8, 3), 1.0),
    (GatedPixelCNNConfig(channels=3, head="softmax", features=12, num_layers=2, output_features=12), (8, 8, 3), None),
], ids=["gated-mnist", "pixelcnn-mnist", "gated-mixture", "gated-softmax"])
def test_cached_flops_are_the_forward_pass_flops(config, image, ratio):
    """One colour group: the cached sampler computes each layer at each position once, a forward pass's FLOPs
    exactly, and the first layer's centre tap, which mask A zeroes whole (the model's FLOPs leave it out,
    the sampler multiplies it). RGB softmax: the horizontal stack and head three times, the vertical stack once."""
    model = build_model(config)
    params = random_params(model, image)
    shape = (2, *image)
    cached = bench_sample.cached_flops(model, params, shape)
    forward = forward_flops_of(config, image)
    first_features = getattr(config, "features", 2 * getattr(config, "hidden", 0))
    centre_tap = 2 * image[0] * image[1] * image[2] * first_features
    if ratio is None:
        assert forward < cached < 3 * forward
    else:
        assert cached == pytest.approx(ratio * forward + centre_tap, rel=1e-12)


def test_bench_row_reports_flops_and_forward_passes():
    peaks = {"matmul_flops_per_s": {"float32": 1e11, "bfloat16": 1e11}, "memory_bytes_per_s": 1e10, "measurements": []}
    row = bench_sample.measure("gated_pixelcnn_mnist", 2, quick=True, naive_variables=2, repeats=1, peaks=peaks)
    errors = []
    results._check(results._clean(row), results.SAMPLE_ROW, "$", errors)
    assert not errors, errors
    assert row["agree"] is True
    centre_tap = 2 * 6 * 6 * 6  # 6x6x1 images, 6 features: the first layer's tap mask A zeroes; the sampler multiplies it
    assert row["flops_per_image"] == pytest.approx(row["forward"]["flops_per_image"] + centre_tap, rel=1e-12)
    cached = row["cached"]
    assert cached["flops_per_s"] == pytest.approx(row["flops_per_image"] * cached["images_per_s"])
    assert cached["frac_peak"] == pytest.approx(cached["flops_per_s"] / 1e11)
    # Timed alternately: the median of each repeat's cached / forward ratio.
    ratios = [a / b for a, b in zip(cached["runs_s"], row["forward"]["runs_s"])]
    assert len(ratios) >= 3 and cached["forward_passes"] == pytest.approx(float(np.median(ratios)))


def test_full_runs_take_nine_alternating_turns_unless_repeats_are_given(monkeypatch):
    row = bench_sample.measure("gated_pixelcnn_mnist", 2, quick=True, naive_variables=2, repeats=1, turns=9)
    assert len(row["cached"]["runs_s"]) == len(row["forward"]["runs_s"]) == 9
    assert len(row["naive"]["runs_s"]) == 1
    seen = []
    monkeypatch.setattr(bench_sample, "measure", lambda *a, **k: seen.append((k["repeats"], k["turns"])) or row)
    for given, want in ((None, (3, 9)), (1, (1, 1))):  # benchmarks/gpu.sh passes --repeats 1 (its step's limit)
        seen.clear()
        out = bench_sample.run(presets=["gated_pixelcnn_mnist"], batch_sizes=[2], repeats=given, log=lambda _: None)
        assert seen == [want] and out["settings"]["turns"] == want[1]
