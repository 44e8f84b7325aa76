"""The PixelCNN family's output heads: values, scaling, per-variable distributions, likelihood and
drawing one variable. Pure functions of a model config (``jaxconv.models.pixelcnn``: its ``head``,
``channels``, ``colours``, ``mixtures``, ``num_values``) and arrays.

Shapes: B batch, H/W height/width, C image channels (1 or 3), K mixture components, P the head's raw
channels per pixel (``head_channels``), Q per-variable distribution parameters, V values a variable
can take (2 for "bernoulli", 256 otherwise).

Variables and values: the image's H*W*C variables are ordered raster-wise, then R, G, B. A variable's
*value* is 0/1 for "bernoulli" (``jaxconv.preprocess.binarise``) and 0..255 otherwise; ``to_images``
maps values back to uint8 pixels (bernoulli: 0 or 255). Model input (``scale_values``): the values as
floats in {0, 1} for "bernoulli", v / 255 * 2 - 1 in [-1, 1] for "softmax" and "logistic_mixture".

The raw output [B, H, W, P] (float32) of each head:
- "bernoulli": P = 1, the logit of the pixel being 1 (C must be 1);
- "softmax": P = C * 256, 256 logits per channel, channel c in block c (the network's colour
  grouping makes channel c's logits depend on the pixel's channels < c);
- "logistic_mixture" (PixelCNN++, Salimans et al. 2017): P = K mixture logits, C*K means, C*K
  log-scales and, for RGB, 3*K coefficients (tanh) of the linear R->G->B dependency of the means;
  the network is causal per pixel (it never sees the current pixel) and the head adds
  coeff * (earlier channels of the pixel) to the means.
``variable_params`` turns the raw output into per-variable parameters [B,H,W,C,Q]: each variable's
conditional distribution given all earlier ones. Likelihoods are computed in float32.
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv.preprocess import binarise

HEADS = ("bernoulli", "softmax", "logistic_mixture")
Head = Literal["bernoulli", "softmax", "logistic_mixture"]
AutoregressiveConfig = Any  # jaxconv.models.pixelcnn's PixelCNNConfig or GatedPixelCNNConfig


def to_values(config: AutoregressiveConfig, images: jax.Array) -> jax.Array:
    """uint8 images [..., C] -> int32 variable values (bernoulli: ``preprocess.binarise``)."""
    images = jnp.asarray(images)
    return (binarise(images) if config.head == "bernoulli" else images).astype(jnp.int32)


def to_images(config: AutoregressiveConfig, values: jax.Array) -> jax.Array:
    return (values * (255 if config.head == "bernoulli" else 1)).astype(jnp.uint8)


def scale_values(config: AutoregressiveConfig, values: jax.Array, dtype: Any = jnp.float32) -> jax.Array:
    """Variable values -> model input ({0,1} for bernoulli, [-1, 1] otherwise)."""
    values = values.astype(jnp.float32)
    return (values if config.head == "bernoulli" else values / 255.0 * 2.0 - 1.0).astype(dtype)


def variable_params(config: AutoregressiveConfig, raw: jax.Array, x_scaled: jax.Array) -> jax.Array:
    """raw [..., P], model input [..., C] -> per-variable parameters [..., C, Q] (float32)."""
    raw = raw.astype(jnp.float32)
    if config.head == "bernoulli":
        return raw[..., None, :]
    if config.head == "softmax":
        return raw.reshape(*raw.shape[:-1], config.channels, 256)
    return _mixture_params(config, raw, x_scaled.astype(jnp.float32))


def _mixture_params(config: AutoregressiveConfig, raw: jax.Array, x: jax.Array) -> jax.Array:
    k, c = config.mixtures, config.channels
    lead = raw.shape[:-1]
    logits = raw[..., :k]
    means = raw[..., k:k + c * k].reshape(*lead, c, k)
    log_scales = raw[..., k + c * k:k + 2 * c * k].reshape(*lead, c, k)
    if c == 3:  # PixelCNN++: mean_G += a * R, mean_B += b * R + g * G, with the pixel's actual values
        a, b, g = jnp.split(jnp.tanh(raw[..., k + 2 * c * k:]), 3, axis=-1)  # [..., K] each
        r_val, g_val = x[..., 0:1], x[..., 1:2]
        means = jnp.stack([means[..., 0, :], means[..., 1, :] + a * r_val,
                           means[..., 2, :] + b * r_val + g * g_val], axis=-2)
    logits = jnp.broadcast_to(logits[..., None, :], (*lead, c, k))
    return jnp.concatenate([logits, means, log_scales], axis=-1)  # [..., C, 3K]


def variable_log_prob(config: AutoregressiveConfig, params: jax.Array, values: jax.Array) -> jax.Array:
    """params [..., Q], values [..., n] int -> log p(value) [..., n] in float32."""
    params = params.astype(jnp.float32)
    if config.head == "bernoulli":
        return jax.nn.log_sigmoid(jnp.where(values == 1, params, -params))
    if config.head == "softmax":
        return jnp.take_along_axis(jax.nn.log_softmax(params, axis=-1), values, axis=-1)
    return _mixture_log_prob(params, values)


def _mixture_log_prob(params: jax.Array, values: jax.Array) -> jax.Array:
    logits, means, log_scales = jnp.split(params, 3, axis=-1)  # [..., K]
    inv_scale = jnp.exp(-jnp.maximum(log_scales, -7.0))[..., None, :]
    centred = (values.astype(jnp.float32) / 255.0 * 2.0 - 1.0)[..., None] - means[..., None, :]  # [..., n, K]
    upper, lower = inv_scale * (centred + 1.0 / 255.0), inv_scale * (centred - 1.0 / 255.0)
    v = values[..., None]
    # The bins at 0 and 255 extend to -inf and +inf: the edges are one-sided CDFs.
    log_bin = jnp.where(v == 0, jax.nn.log_sigmoid(upper),
                        jnp.where(v == 255, jax.nn.log_sigmoid(-lower), _log_sigmoid_difference(upper, lower)))
    log_weights = jax.nn.log_softmax(logits, axis=-1)[..., None, :]
    return jax.nn.logsumexp(log_weights + log_bin, axis=-1)


def _log_sigmoid_difference(a: jax.Array, b: jax.Array) -> jax.Array:
    """log(sigmoid(a) - sigmoid(b)) for a > b, accurate in float32 in both tails and for a ~ b."""
    # sigmoid(a) - sigmoid(b) = sigmoid(-b) - sigmoid(-a): use the side where both lie in the lower
    # tail, so the log-sigmoids are not rounded to 0.
    flip = a + b > 0
    hi, lo = jnp.where(flip, -b, a), jnp.where(flip, -a, b)
    width = a - b
    narrow = width < 1e-2  # midpoint rule: relative error ~ width^2 / 24
    log_hi = jax.nn.log_sigmoid(hi)
    delta = jnp.where(narrow, -1.0, jax.nn.log_sigmoid(lo) - log_hi)  # keeps the unused branch finite
    exact = log_hi + jnp.log(-jnp.expm1(delta))
    mid = 0.5 * (a + b)
    approx = jnp.log(jnp.maximum(width, 1e-30)) + jax.nn.log_sigmoid(mid) + jax.nn.log_sigmoid(-mid)
    return jnp.where(narrow, approx, exact)


def log_likelihoods(config: AutoregressiveConfig, raw: jax.Array, images: jax.Array) -> jax.Array:
    """raw [B,H,W,P], uint8 images [B,H,W,C] -> log p of each variable given the earlier ones [B,H,W,C]."""
    values = to_values(config, images)
    params = variable_params(config, raw, scale_values(config, values))
    return variable_log_prob(config, params, values[..., None])[..., 0]


def nll(config: AutoregressiveConfig, raw: jax.Array, images: jax.Array) -> jax.Array:
    """Per-example negative log-likelihood in nats [B] (bits/dim: jaxconv.losses.bits_per_dim)."""
    return -jnp.sum(log_likelihoods(config, raw, images), axis=(1, 2, 3))


def first_argmax(x: jax.Array) -> jax.Array:
    """``jnp.argmax(x, axis=-1)`` (the first maximum, or the first NaN) as a max and a min: XLA:CPU's argmax (a
    reduction of (value, index) pairs) took 124 us for [64, 256], these two 14 us."""
    top = jnp.max(x, axis=-1, keepdims=True)
    first = jnp.where((x == top) | jnp.isnan(x), jnp.arange(x.shape[-1]), x.shape[-1])
    return jnp.min(first, axis=-1).astype(jnp.int32)


DRAWS = ("gumbel", "direct")


def check_draw(config: AutoregressiveConfig, draw: str, temperature: float | jax.Array) -> str:
    """How each variable is drawn (``draw_variable``'s ``method``); ValueError where ``draw`` is not possible.

    "gumbel" (the default, every head, any temperature): Gumbel-max, as method "values" (over log p(v) /
    temperature for all V values) or, for a logistic mixture at temperature 1 (a concrete value; a traced
    temperature takes "values", whose random numbers differ, so the same key then gives other images),
    method "component": a component by Gumbel-max over its K logits, then a value of that logistic by
    ``logistic_draw`` (the same distribution; 32 log-probabilities and Gumbels instead of 256 and no
    logsumexp over components). Both decide by comparing perturbed scores, which float differences between two
    computations of the same logits rarely flip. "direct" (the logistic mixture at temperature 1): a
    component by Gumbel-max, then a value of that logistic by its inverse CDF, rounded to its bin
    (``mixture_draw``): K + 1 random numbers and a few transcendentals per variable, but its rounding of a
    continuous value flips under those float differences more often: the naive and cached samplers then
    give different images more often, so it is opt-in."""
    if draw not in DRAWS:
        raise ValueError(f"draw must be one of {', '.join(DRAWS)}, got {draw!r}")
    at_one = not isinstance(temperature, jax.core.Tracer) and float(temperature) == 1.0
    if draw == "gumbel":
        return "component" if config.head == "logistic_mixture" and at_one else "values"
    if config.head != "logistic_mixture":
        raise ValueError(f"draw='direct' samples a logistic mixture head, not {config.head}")
    if not at_one:
        raise ValueError(f"draw='direct' samples at temperature 1 only, got {temperature!r}")
    return "direct"


def variable_noise(config: AutoregressiveConfig, key: jax.Array, batch: int, method: str) -> jax.Array:
    """The random numbers one variable's draw uses [B, N]: K + 1 uniforms for method "direct", K + 32 Gumbels
    for "component" (the component, then ``logistic_draw``'s block and value), else V Gumbels."""
    if method == "direct":
        return jax.random.uniform(key, (batch, config.mixtures + 1), jnp.float32,
                                  minval=jnp.finfo(jnp.float32).tiny, maxval=1.0)
    count = config.mixtures + 2 * BLOCK if method == "component" else config.num_values
    return jax.random.gumbel(key, (batch, count), jnp.float32)


def mixture_draw(params: jax.Array, uniforms: jax.Array) -> jax.Array:
    """A logistic mixture's value [B] from its parameters [B, 3K] and K + 1 uniforms in (0, 1) [B, K+1]."""
    k = params.shape[-1] // 3
    mean, log_scale = _chosen_component(params, -jnp.log(-jnp.log(uniforms[:, :k])))  # Gumbels from uniforms
    scale = jnp.exp(jnp.maximum(log_scale[:, 0], -7.0))
    u = uniforms[:, k]
    x = mean[:, 0] + scale * (jnp.log(u) - jnp.log1p(-u))  # the logistic's inverse CDF
    # value v's bin is (v - 1/2, v + 1/2] on the scale (x + 1) * 255 / 2; below 0 and above 255 the edge bins
    return jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255).astype(jnp.int32)


def component_draw(params: jax.Array, gumbels: jax.Array) -> jax.Array:
    """A logistic mixture's value [B] at temperature 1 from its parameters [B, 3K] and K + 32 Gumbels
    [B, K+32]: a component by Gumbel-max over the K logits, then a value of that logistic by
    ``logistic_draw`` (``check_draw``'s method "component")."""
    k = params.shape[-1] // 3
    mean, log_scale = _chosen_component(params, gumbels[:, :k])
    return logistic_draw(mean, log_scale, gumbels[:, k:])


BLOCK = 16  # values per block of ``logistic_draw``: 256 = 16 blocks of 16


def logistic_draw(mean: jax.Array, log_scale: jax.Array, gumbels: jax.Array) -> jax.Array:
    """A discretised logistic's value [B] from its mean and log-scale [B, 1] and 32 Gumbels [B, 32]: a block of
    16 values by Gumbel-max over the 16 blocks' log-masses (each block one wide bin of the same formula), then
    a value by Gumbel-max over the chosen block's 16 log-probabilities. p(block) p(v | block) = p(v): the
    same distribution as Gumbel-max over all 256 values, from an eighth of the log-probabilities and random
    numbers, and still a comparison of perturbed scores at each step (float differences between two
    computations of the same logits rarely flip it). The block's bins are the 256-bin table's own edges, so
    a block's mass and its values' are computed from the same float32 numbers."""
    blocks = _bins_log_prob(mean, log_scale, _VALUES[::BLOCK], BLOCK)  # [B, 16]
    block = first_argmax(blocks + gumbels[:, :BLOCK])[:, None]  # [B, 1]
    in_block = _bins_log_prob(mean, log_scale, block * BLOCK + jnp.arange(BLOCK), 1)  # [B, 16]
    return block[:, 0] * BLOCK + first_argmax(in_block + gumbels[:, BLOCK:])


def _chosen_component(params: jax.Array, gumbels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """A mixture's component by Gumbel-max over its logits: params [B, 3K], Gumbels [B, K] -> the component's
    mean and log-scale [B, 1] (float32)."""
    logits, means, log_scales = jnp.split(params.astype(jnp.float32), 3, axis=-1)  # [B, K]
    component = first_argmax(logits + gumbels)[:, None]
    return jnp.take_along_axis(means, component, axis=-1), jnp.take_along_axis(log_scales, component, axis=-1)


def values_log_prob(config: AutoregressiveConfig, params: jax.Array) -> jax.Array:
    """log p(v) for every value v of one variable: params [B, Q] -> [B, V] in float32, what both samplers'
    Gumbel-max draws perturb (``variable_log_prob`` at all V candidates, for the mixture more cheaply)."""
    params = params.astype(jnp.float32)
    if config.head == "logistic_mixture":
        return _mixture_values_log_prob(params)
    candidates = jnp.broadcast_to(jnp.arange(config.num_values), (params.shape[0], config.num_values))
    return variable_log_prob(config, params, candidates)


def _mixture_values_log_prob(params: jax.Array) -> jax.Array:
    """The logistic mixture's log p(v) for all 256 values: params [B, 3K] -> [B, 256]."""
    logits, means, log_scales = jnp.split(params, 3, axis=-1)  # [B, K]
    log_bin = _bins_log_prob(means[..., None], log_scales[..., None], _VALUES, 1)  # [B, K, 256]
    return jax.nn.logsumexp(jax.nn.log_softmax(logits, axis=-1)[..., None] + log_bin, axis=1)


def _bins_log_prob(means: jax.Array, log_scales: jax.Array, first_values: Any, values_per_bin: int) -> jax.Array:
    """Logistics' log-probabilities of bins of ``values_per_bin`` consecutive values: means, log-scales [..., 1]
    and each bin's first value [..., n], broadcast -> [..., n]. A bin's edges are its first value's lower edge
    and its last value's upper edge in the 256-value table (a constant where the first values are: no gather
    at run time). The bin holding value 0 reaches to -inf, the one holding 255 to +inf.

    Every inner bin of a logistic has the same width w on its scale, and the exact identity
    sigmoid(b) - sigmoid(a) = sigmoid(b) sigmoid(-a) (1 - exp(-w)) (w = b - a) makes a bin's log-probability
    two log-sigmoids and one per-logistic log(-expm1(-w)): no cancellation in either tail or for narrow
    bins, 4 transcendentals per bin where ``_mixture_log_prob``'s per-bin formula takes 11. The edge bins
    take no outer log-sigmoid and no width term (selected, not multiplied by a mask: a log-scale above ~83
    makes the width's log -inf, and -inf * 0 is NaN; there the bins are 1/2 at 0 and 255, the limit). The
    bin axis is minor, where XLA:CPU vectorises; sharing each edge's log-sigmoids between its two bins
    (shifted slices) was 2.5x slower than computing them twice."""
    inv_scale = jnp.exp(-jnp.maximum(log_scales, -7.0))
    last_values = first_values + (values_per_bin - 1)
    lower, upper = jnp.take(_LOWER_EDGES, first_values), jnp.take(_UPPER_EDGES, last_values)
    first, last = first_values == 0, last_values == 255
    log_width = jnp.log(-jnp.expm1(-inv_scale * (2.0 * values_per_bin / 255.0)))
    below_upper = jnp.where(last, 0.0, jax.nn.log_sigmoid(inv_scale * (upper - means)))
    above_lower = jnp.where(first, 0.0, jax.nn.log_sigmoid(inv_scale * (means - lower)))
    return below_upper + above_lower + jnp.where(first | last, 0.0, log_width)


# Value v's bin on the model's [-1, 1] scale, each edge rounded once to float32 (computing them in float32
# at run time rounds twice, and a narrow component's bins then sum to 1 - 2e-5 instead of 1 - 2e-7); the
# edge bins' outer edges (infinite) as a finite placeholder, unused.
_VALUES = np.arange(256)
_UPPER_EDGES = np.float32(np.where(_VALUES == 255, 0, (2 * _VALUES - 254) / 255))
_LOWER_EDGES = np.float32(np.where(_VALUES == 0, 0, (2 * _VALUES - 256) / 255))


def sample_variable(config: AutoregressiveConfig, raw_pos: jax.Array, pixel_scaled: jax.Array, channel: int | jax.Array,
                    key: jax.Array, temperature: float | jax.Array = 1.0, method: str = "values") -> jax.Array:
    """Draws one variable: raw output at its position [B,P], its pixel's model input [B,C] -> value [B].

    ``method`` (``check_draw``): "values", Gumbel-max over log p(v) / temperature for all V values, exact
    for every head (the logistic mixture is sampled from its discretised form), and two samplers with
    the same key and near-equal logits draw the same value; "component" or "direct" for a logistic
    mixture at temperature 1.
    """
    params = variable_params(config, raw_pos, pixel_scaled)  # [B, C, Q]
    params = jnp.take(params, channel, axis=1)  # [B, Q]
    noise = variable_noise(config, key, params.shape[0], method)
    return draw_variable(config, method, params, noise, temperature)


def draw_variable(config: AutoregressiveConfig, method: str, params: jax.Array, noise: jax.Array,
                  temperature: float | jax.Array) -> jax.Array:
    """A variable's value [B] from its parameters [B, Q] and its random numbers [B, N] (``variable_noise``)."""
    if method == "direct":
        return mixture_draw(params, noise)
    if method == "component":
        return component_draw(params, noise)
    return first_argmax(values_log_prob(config, params) / temperature + noise)
