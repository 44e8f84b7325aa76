"""Ancestral sampling from the PixelCNN family: a naive and a cached sampler that agree exactly.

Shapes: B batch, H/W/C image, V values per variable. Variable n = (i * W + j) * C + c (raster
order, then R, G, B) draws with ``fold_in(key, n)`` through Gumbel-max over its log-probabilities
(``jaxconv.models.heads.sample_variable``), so both samplers, given the same key and logits equal
to float tolerance, return the same images (a logistic mixture at temperature 1: a component, then a value of
it, each by Gumbel-max). ``draw="direct"`` draws a logistic mixture at temperature 1 by the inverse CDF
instead, less work per variable, with more float ties (``heads.check_draw``).

- ``sample_naive``: one whole-image forward pass per variable (H*W*C passes) in one jitted loop.
- ``sample_cached``: in the spirit of Ramachandran et al. 2017, computes only what a new variable
  changes. pixelcnn: each layer's output at the current position only, from per-block caches of
  the spatial convs' inputs (every other layer is 1x1), each layer one matmul of its window.
  gated_pixelcnn: per row, the vertical stack once (it sees only rows above), one matmul per layer;
  per position, the horizontal stack and the output layers, two small matmuls per layer; each conv's
  taps are added into "pending" rows and positions ahead (below, ``_cached_gated``). With one colour
  group (bernoulli, logistic mixture) the stacks never see the pixel itself, so a pixel's C variables
  share one pass; with three (softmax RGB) each channel recomputes the horizontal stack. The work per
  image is one whole-image forward pass (C for the horizontal stack of softmax RGB) instead of H*W*C.
  Each row's random numbers are drawn at once (the same values as per variable). In float32 on the CPU a
  position's horizontal stack and head are one C++ call (``jaxconv.models.cpu_gated_sampler``) instead of
  some ten XLA ops per layer, and a vertical layer's row (its dot, gate and link into the horizontal
  stack's pending buffer) one more instead of a dot, some eight small ops and a link dot, unless the
  model's conv policy forces another implementation (``conv.impl``).

``cached_compiled`` returns the compiled program ``sample_cached`` runs (its HLO op names: profiles,
``tools/profile_sampler.py``).

Completion: ``images`` [B,H,W,C] uint8 and ``known_rows``: rows < known_rows are kept as given.
``labels`` [B] int for a class-conditional model. ``temperature`` divides the log-probabilities (a
logistic mixture at a concrete temperature 1 takes ``check_draw``'s method "component", at a traced one
"values": the same key then gives other images).
``draw``: "gumbel" or "direct" (``heads.check_draw``).
Both return uint8 images [B,H,W,C] (bernoulli: 0 or 255).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxconv.models import cpu_gated_sampler
from jaxconv.models.heads import (check_draw, draw_variable, sample_variable, scale_values, to_images, to_values,
                                  variable_noise, variable_params)
from jaxconv.models.masked import centre_mask, live_taps, masked_to_cropped, raster_mask
from jaxconv.models.materialize import materialize
from jaxconv.models.pixelcnn import GatedPixelCNN, PixelCNN, layer_dilations


def sample_naive(model: nn.Module, params: Any, key: jax.Array, shape: tuple[int, int, int, int], *,
                 labels: jax.Array | None = None, images: jax.Array | None = None, known_rows: int = 0,
                 temperature: float = 1.0, draw: str = "gumbel", progress: bool = False) -> jax.Array:
    """One full forward pass per variable; ``shape`` = (B, H, W, C)."""
    _check_call(model.config, shape, labels, temperature)
    method = check_draw(model.config, draw, temperature)
    values = _initial_values(model.config, shape, images, known_rows)
    out = _jitted(_naive, model, params, key, values, labels)(model, known_rows, progress, method, params, key,
                                                              values, labels, jnp.float32(temperature))
    return to_images(model.config, out)


def sample_cached(model: nn.Module, params: Any, key: jax.Array, shape: tuple[int, int, int, int], *,
                  labels: jax.Array | None = None, images: jax.Array | None = None, known_rows: int = 0,
                  temperature: float = 1.0, draw: str = "gumbel", progress: bool = False) -> jax.Array:
    """Only the positions a new variable changes; same arguments and result as ``sample_naive``."""
    _check_call(model.config, shape, labels, temperature)
    values = _initial_values(model.config, shape, images, known_rows)
    run = _cached_gated if isinstance(model, GatedPixelCNN) else _cached_pixelcnn
    if not isinstance(model, (GatedPixelCNN, PixelCNN)):
        raise TypeError(f"no cached sampler for {type(model).__name__}")
    method = check_draw(model.config, draw, temperature)
    out = _jitted(run, model, params, key, values, labels)(model, known_rows, progress, method, params, key,
                                                           values, labels, jnp.float32(temperature))
    return to_images(model.config, out)


def _check_call(config, shape, labels, temperature) -> None:
    """ValueError for labels that do not fit the model and a temperature that is not finite and > 0 in float32
    (NaN would silently draw value 0 everywhere: an all-black image)."""
    if not isinstance(temperature, jax.core.Tracer):
        t = np.asarray(temperature, np.float64)
        with np.errstate(over="ignore", under="ignore"):
            t32 = t.astype(np.float32)
        if t.shape or not (np.isfinite(t32) and t32 > 0):
            raise ValueError(f"temperature must be a finite number > 0 (in float32), got {temperature!r}")
    if not config.num_classes:
        if labels is not None:
            raise ValueError(f"{config.family} model without classes (num_classes=0): call it with labels=None")
        return
    if labels is None:
        raise ValueError(f"class-conditional model (num_classes={config.num_classes}): pass labels [B]")
    if tuple(jnp.shape(labels)) != (shape[0],):
        raise ValueError(f"labels have shape {tuple(jnp.shape(labels))}, expected ({shape[0]},)")
    if not isinstance(labels, jax.core.Tracer):
        values = np.asarray(labels)
        if not np.issubdtype(values.dtype, np.integer):
            raise ValueError(f"labels must be integers in 0..{config.num_classes - 1}, got dtype {values.dtype}")
        if values.size and (values.min() < 0 or values.max() >= config.num_classes):
            raise ValueError(f"labels must be integers in 0..{config.num_classes - 1}, got values from "
                             f"{values.min()} to {values.max()}")


def _initial_values(config, shape, images, known_rows: int) -> jax.Array:
    if images is None:
        if known_rows:
            raise ValueError("known_rows needs the images to complete")
        return jnp.zeros(shape, jnp.int32)
    if tuple(images.shape) != tuple(shape):
        raise ValueError(f"images have shape {tuple(images.shape)}, expected {tuple(shape)}")
    return to_values(config, images)


def cached_compiled(model: nn.Module, params: Any, key: jax.Array, shape: tuple[int, int, int, int], *,
                    labels: jax.Array | None = None, images: jax.Array | None = None, known_rows: int = 0,
                    temperature: float = 1.0, draw: str = "gumbel"):
    """The compiled computation ``sample_cached`` runs for these arguments (for profiles: its HLO op names)."""
    values = _initial_values(model.config, shape, images, known_rows)
    run = _cached_gated if isinstance(model, GatedPixelCNN) else _cached_pixelcnn
    method = check_draw(model.config, draw, temperature)
    return _jitted(run, model, params, key, values, labels).lower(model, known_rows, False, method, params, key, values,
                                                                  labels, jnp.float32(temperature)).compile()


def _jitted(sampler, model: nn.Module, *args):
    """``sampler(model, known_rows, progress, method, ...)`` jitted with the XLA options of the model's conv
    policy (``ConvPolicy.compiler_options``); called inside the caller's own jit or transformation
    (``args`` holding tracers), without: JAX takes options only on the program it compiles."""
    traced = any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(args))
    options = () if traced else tuple(sorted(model.policy.compiler_options().items()))
    return _jit_with(sampler, options)


@functools.cache
def _jit_with(sampler, options: tuple[tuple[str, str], ...]):
    return jax.jit(sampler, static_argnums=(0, 1, 2, 3), compiler_options=dict(options))


def _report(progress: bool, i: jax.Array, height: int) -> None:
    if progress:
        jax.debug.callback(lambda row: print(f"sampled row {int(row) + 1}/{height}", flush=True), i)


def _naive_step(model, method, params, key, values, labels, temperature, n):
    """Variable n of the naive sampler: one whole-image forward pass, then its draw."""
    _, _, w, channels = values.shape
    i, rest = jnp.divmod(n, w * channels)
    j, c = jnp.divmod(rest, channels)
    raw = model.apply({"params": params}, scale_values(model.config, values), labels=labels)
    raw_pos = jax.lax.dynamic_index_in_dim(jax.lax.dynamic_index_in_dim(raw, i, 1, False), j, 1, False)
    pixel = scale_values(model.config, jax.lax.dynamic_index_in_dim(
        jax.lax.dynamic_index_in_dim(values, i, 1, False), j, 1, False))
    drawn = sample_variable(model.config, raw_pos, pixel, c, jax.random.fold_in(key, n), temperature, method)
    return values.at[:, i, j, c].set(drawn)


def _naive(model, known_rows, progress, method, params, key, values, labels, temperature):
    _, h, w, channels = values.shape

    def step(n, values):
        return _naive_step(model, method, params, key, values, labels, temperature, n)

    def row(i, values):
        values = jax.lax.fori_loop(i * w * channels, (i + 1) * w * channels, step, values)
        _report(progress, i, h)
        return values

    return jax.lax.fori_loop(known_rows, h, row, values)


# ----------------------------------------------------------------------------------------------
# Drawing a variable, as ``sample_variable`` draws it, at a fraction of its cost.


def _row_noise(config, method: str, key: jax.Array, i: jax.Array, b: int, w: int, channels: int) -> jax.Array:
    """Row i's random numbers [W, C, B, N]: variable n's are exactly those ``sample_variable`` draws with
    ``fold_in(key, n)``, in one vectorised draw per row instead of one threefry loop per variable."""
    n = (i * w + jnp.arange(w)[:, None]) * channels + jnp.arange(channels)[None, :]
    draw = lambda m: variable_noise(config, jax.random.fold_in(key, m), b, method)
    return jax.vmap(jax.vmap(draw))(n)


def _draw_noise(config, method: str, raw_pos: jax.Array, pixel_scaled: jax.Array, c: int, noise: jax.Array,
                temperature: jax.Array) -> jax.Array:
    """``sample_variable`` with its random numbers given [B, N]: the same draw."""
    return draw_variable(config, method, variable_params(config, raw_pos, pixel_scaled)[:, c], noise, temperature)


def _read(x: jax.Array, index: jax.Array) -> jax.Array:
    """x[index] along the first axis, into its own buffer. XLA:CPU fuses a dynamic slice into its elementwise
    consumer, and such a fusion with transcendentals (the gates, a head's log-probabilities) ran 2x slower
    than the slice and the fusion apart (a conditional is never fused into; ``jaxconv.models.materialize``,
    here for any size)."""
    v = jax.lax.dynamic_index_in_dim(x, index, 0, False)
    if jax.default_backend() != "cpu":
        return v
    first = v.reshape(-1)[0]
    return jax.lax.cond(first == first, lambda u: u, lambda u: u + jnp.zeros((), u.dtype), v)


# ----------------------------------------------------------------------------------------------
# PixelCNN: per position, each layer as one matmul of its window (read from the padded image or from a
# block's cache of its spatial conv's input).


def _pixelcnn_weights(model: PixelCNN, params: Any) -> dict:
    """The model's kernels, masked as ``MaskedConv2D`` masks them (either form), as [taps*Cin, Cout] matrices
    over the taps a mask lets through (raster order: the rows above, then the centre row up to the centre)."""
    config, dtype = model.config, model.dtype
    cast = lambda a: jnp.asarray(a).astype(dtype)

    def matrix(p, k, mask_type):
        p, r = masked_to_cropped(p), k // 2  # the live taps either way: the rows above, the centre row's
        row = p["kernel_row"]
        cout = row.shape[3]
        row = row * raster_mask(k, row.shape[2], cout, config.colours, mask_type)[r:r + 1, :r + 1]
        taps = [p["kernel_above"], row] if r else [row]
        return cast(jnp.concatenate([t.reshape(-1, cout) for t in taps])), cast(p["bias"])

    blocks = [params[f"blocks_{n}"] for n in range(config.num_blocks)]
    return {"first": matrix(params["first"], config.first_kernel, "A"),
            "blocks": [{"reduce": matrix(b["reduce"], 1, "B"), "spatial": matrix(b["spatial"], config.kernel, "B"),
                        "expand": matrix(b["expand"], 1, "B")} for b in blocks],
            "head": [matrix(params["head"][name], 1, "B") for name in ("hidden", "logits")]}


def _cached_pixelcnn(model, known_rows, progress, method, params, key, values, labels, temperature):
    if labels is not None:
        raise ValueError("pixelcnn is unconditional: call it with labels=None")
    config, dtype = model.config, model.dtype
    b, h, w, channels = values.shape
    k0, k = config.first_kernel, config.kernel
    p0, r = k0 // 2, k // 2
    dilations = layer_dilations(config)
    # Activations are [features, B] (the batch minor): a window [rows, columns, features, B] is then one
    # contiguous block, a [taps * features, B] matrix without a transpose; each layer is W^T @ window.
    wts = jax.tree.map(lambda a: a.T if a.ndim == 2 else a[:, None], _pixelcnn_weights(model, params))
    scale = lambda v: scale_values(config, v, dtype)
    dense = lambda x, wb: _dot(wb[0], x) + wb[1]
    x_pad = jnp.pad(scale(values.transpose(1, 2, 3, 0)), ((p0, p0), (p0, p0), (0, 0), (0, 0)))  # [H+2p0, W+2p0, C, B]
    caches = tuple(jnp.zeros((h + 2 * d * r, w + 2 * d * r, config.hidden, b), dtype) for d in dilations)

    def window(x, i, j, size, step):
        """The masked taps of the size x size block at (i, j) of a [rows, columns, features, B] array, every
        step-th row and column, as ``_pixelcnn_weights`` orders them -> [taps * features, B]."""
        kernel = (size - 1) // step + 1
        rows = kernel // 2 * step + 1  # up to the centre row
        block = jax.lax.dynamic_slice(x, (i, j, 0, 0), (rows, size, *x.shape[2:]))[::step, ::step]
        return block.reshape(-1, x.shape[3])[:live_taps(kernel) * x.shape[2]]

    def stack(i, j, x_pad, caches):
        """Position (i, j): the raw output [B, P] and the caches with this position's spatial-conv inputs."""
        hs = dense(window(x_pad, i, j, k0, 1), wts["first"])  # [2h, B]
        new_caches = []
        for bw, cache, d in zip(wts["blocks"], caches, dilations):
            p = d * r
            start = jax.nn.relu(dense(jax.nn.relu(hs), bw["reduce"]))  # [h, B]
            # Write, then read the window (the write is in it): every read follows the write (in place).
            cache = jax.lax.dynamic_update_slice(cache, start[None, None], (i + p, j + p, 0, 0))
            hs = hs + dense(jax.nn.relu(dense(window(cache, i, j, 2 * p + 1, d), bw["spatial"])), bw["expand"])
            new_caches.append(cache)
        hidden = jax.nn.relu(dense(jax.nn.relu(hs), wts["head"][0]))
        return dense(hidden, wts["head"][1]).astype(jnp.float32).T, tuple(new_caches)

    def row(i, carry):
        values_t, x_pad, caches = carry  # values_t [H, W, B, C]
        noise = _row_noise(config, method, key, i, b, w, channels)  # [W, C, B, N]

        def position(j, carry):
            row_values, x_pad, caches = carry
            noise_j = _read(noise, j)
            # The pixel's given (or initial) values from the row as it came in: the carried row is only
            # written, so XLA updates it in place (its fusions re-read a slice wherever they use it).
            pixel = jax.lax.dynamic_index_in_dim(given, j, 0, False)  # [B, C]
            raw = None
            for c in range(channels):
                # One colour group: the network never sees the pixel itself, one pass for its channels.
                if raw is None or config.colours > 1:
                    raw, new_caches = stack(i, j, x_pad, caches)
                drawn = _draw_noise(config, method, raw, scale(pixel), c, noise_j[c], temperature)
                pixel = pixel.at[:, c].set(jnp.where(i < known_rows, pixel[:, c], drawn))
                x_pad = jax.lax.dynamic_update_slice(x_pad, scale(pixel).T[None, None], (i + p0, j + p0, 0, 0))
            row_values = jax.lax.dynamic_update_index_in_dim(row_values, pixel, j, 0)
            return row_values, x_pad, new_caches

        given = jax.lax.dynamic_index_in_dim(values_t, i, 0, False)  # [W, B, C]
        row_values, x_pad, caches = jax.lax.fori_loop(0, w, position, (given, x_pad, caches))  # a scan
        _report(progress, i, h)
        return jax.lax.dynamic_update_index_in_dim(values_t, row_values, i, 0), x_pad, caches

    values_t = jax.lax.fori_loop(0, h, row, (values.transpose(1, 2, 0, 3), x_pad, caches))[0]
    return values_t.transpose(2, 0, 1, 3)


# ----------------------------------------------------------------------------------------------
# Gated PixelCNN: per row, the vertical stack with one matmul per layer; per position, the horizontal
# stack with two small matmuls per layer; no caches of whole images, no per-variable gather, scatter or
# random-number loop.
#
# Kernels are read from ``params`` with the masks the modules apply (``jaxconv.models.masked``), as
# matrices. A kxk (or 1x(r+1)) conv is split by the row (or column) it reads: a new row (position) of a
# layer's input is multiplied once by all its taps (one matmul, N = (r+1) * 2F), and each tap's product
# is added into a "pending" buffer at the output row (position) it feeds: d*s rows (columns) further
# for tap r - s. The output row (position) is then the current tap's product plus its pending sum. A
# layer's vertical pending rows live in a ring of d*r + 1 rows. The horizontal ones are one buffer for
# the row and all layers, [W + reach, L, B, 2F] (reach = the largest d*r), which starts as each layer's
# row bias (link + class bias + horizontal bias); a position reads its column's slots once for all
# layers, and XLA fuses each slot's read, add and write into one op: a loop step's ops, not its FLOPs,
# are most of what a position costs.
#
# Layouts put the index a step moves along first (rows [rows, B, W, .], row positions [W, B, .]), so a
# step reads and writes contiguous blocks with dynamic_slice / dynamic_update_slice.


def _shift_columns(v: jax.Array, s: int) -> jax.Array:
    """v [B, W, F] read s columns to the right: column x holds v's column x + s, zero past either edge. Each
    tap pads its own slice (one pad per consumer, which XLA fuses into the concatenation that reads it)."""
    w = v.shape[1]
    if abs(s) >= w:  # a dilated tap wholly past the image's edge
        return jnp.zeros_like(v)
    return jnp.pad(v[:, max(s, 0):w + min(s, 0)], ((0, 0), (max(-s, 0), max(s, 0)), (0, 0)))


def _gate(x: jax.Array) -> jax.Array:
    a, b = jnp.split(x, 2, axis=-1)
    return jnp.tanh(a) * jax.nn.sigmoid(b)


def _dot(x: jax.Array, w: jax.Array) -> jax.Array:
    return jnp.dot(x, w, preferred_element_type=x.dtype)


def _gated_weights(model: GatedPixelCNN, params: Any) -> dict:
    """The model's kernels, masked as its modules mask them, as matrices in the compute dtype."""
    config, dtype = model.config, model.dtype
    r, colours, f = config.kernel // 2, config.colours, config.features
    cast = lambda a: jnp.asarray(a).astype(dtype)

    def taps_last_masked(p, mask_type, out_tiles):
        """[1, r+1, Cin, Cout] horizontal kernel -> [Cin, (r+1) * Cout]: block s is tap r - s (block 0: the
        centre tap, with its channel mask)."""
        kernel = p["kernel"]
        centre = kernel[0, r] * centre_mask(kernel.shape[2], kernel.shape[3], colours, mask_type, out_tiles)
        return jnp.concatenate([centre] + [kernel[0, r - s] for s in range(1, r + 1)], axis=1)

    def one_by_one(p, groups):
        kernel = p["kernel"][0, 0]
        return cast(kernel * centre_mask(kernel.shape[0], kernel.shape[1], groups, "B")), cast(p["bias"])

    first = params["horizontal_first"]["kernel"]
    first = first.at[0, r].multiply(centre_mask(first.shape[2], first.shape[3], colours, "A"))
    weights = {
        "v_first": cast(params["vertical_first"]["kernel"].reshape(-1, f)),  # [(r+1)*k*C, F], (row, column) taps
        "v_first_bias": cast(params["vertical_first"]["bias"]),
        "h_first": cast(first.reshape(-1, f)),  # [(r+1)*C, F], columns j-r .. j
        "h_first_bias": cast(params["horizontal_first"]["bias"]),
        "head": [one_by_one(params["head"][name], colours) for name in ("hidden", "logits")],
        "layers": []}
    for l in range(config.num_layers):
        p = params[f"layers_{l}"]
        vertical = p["vertical_conv"]["kernel"]  # [r+1, k, F, 2F]
        weights["layers"].append({
            # [k*F, (r+1)*2F]: block s is kernel row r - s (the input row feeds the output row d*s below).
            "v": cast(jnp.concatenate([vertical[r - s].reshape(-1, 2 * f) for s in range(r + 1)], axis=1)),
            "v_bias": cast(p["vertical_conv"]["bias"]),
            "link": one_by_one(p["link"], 1),
            "h": cast(taps_last_masked(p["horizontal_conv"], "B", 2)),  # [F, (r+1)*2F]
            "h_bias": cast(p["horizontal_conv"]["bias"]),
            "residual": one_by_one(p["residual"], colours),
            "classes": cast(p["class_bias"]["embedding"]) if config.num_classes else None})
    return weights


def _native_stack(model: GatedPixelCNN) -> bool:
    """Whether the horizontal stack runs as one C++ call per position and each vertical layer's ring update
    and gate as one per row (``cpu_gated_sampler``): float32 on the CPU where it is built, unless the model's
    conv policy forces another implementation everywhere (``conv.impl=xla``: XLA's ops, as every conv)."""
    return (jnp.dtype(model.dtype) == jnp.float32 and jax.default_backend() == "cpu"
            and model.policy.forced in ("", "native") and not cpu_gated_sampler.reason())


def _cached_gated(model, known_rows, progress, method, params, key, values, labels, temperature):
    config, dtype = model.config, model.dtype
    b, h, w, channels = values.shape
    r, k, f = config.kernel // 2, config.kernel, config.features
    dilations = layer_dilations(config)
    reach = max(dilations) * r  # the furthest column a horizontal tap writes past its own
    wts = _gated_weights(model, params)
    conds = [0.0 if lw["classes"] is None else lw["classes"][labels] for lw in wts["layers"]]  # [B, 2F]
    scale = lambda v: scale_values(config, v, dtype)
    # The image, scaled, rows first, padded as the first vertical layer reads it: r+1 rows on top, r columns
    # each side (row i of the image is row i + r + 1).
    x_rows = jnp.pad(scale(values.transpose(1, 0, 2, 3)), ((r + 1, 0), (0, 0), (r, r), (0, 0)))
    out_rows = values.transpose(1, 0, 2, 3)  # [H, B, W, C]
    # Rows above the image feed nothing: their rows' slots start as the bias.
    rings = tuple(jnp.broadcast_to(lw["v_bias"], (d * r + 1, b, w, 2 * f)) for lw, d in zip(wts["layers"], dilations))

    native = _native_stack(model)
    if native:
        native_wts = cpu_gated_sampler.stack_weights(wts)
        cond_rows = [jnp.broadcast_to(jnp.asarray(cond, dtype), (b, 2 * f)) for cond in conds]  # [B, 2F] each
        row_biases = [lw["link"][1] + lw["h_bias"] for lw in wts["layers"]]
    # The horizontal stack's pending buffer, carried from row to row: the C++ vertical rows set its slots in
    # place as each row starts (XLA's path builds it anew per row).
    pending = jnp.zeros((w + reach, len(dilations), b, 2 * f), dtype)

    def column_taps(v, d):
        """v [B, W, F] at each column tap of a vertical layer of dilation d -> its dot input [B, W, k*F]."""
        v = materialize(v)
        return jnp.concatenate([_shift_columns(v, (t - r) * d) for t in range(k)], axis=-1)

    def ring_row(i, z, ring, bias, d):
        """Row i of a vertical layer after its dot z, with XLA's ops -> (its ring, its output before the gate)."""
        # The nearer rows' slots are added to, then row i + d*r's first contribution (tap 0) sets its slot
        # (bias + it), and row i's slot is read after the writes: every read of the old ring feeds its own
        # write, so XLA updates the ring in place (a read it cannot order before a write costs a copy of the
        # ring; with the set first, XLA fused the next slot's read into it, before it).
        for s in range(1, r + 1):
            q = (i + d * s) % (d * r + 1)
            ahead = (bias if s == r else jax.lax.dynamic_index_in_dim(ring, q, 0, False)) + \
                z[..., 2 * f * s:2 * f * (s + 1)]
            ring = jax.lax.dynamic_update_index_in_dim(ring, ahead, q, 0)
        return ring, _read(ring, i % (d * r + 1)) + z[..., :2 * f]

    def vertical(i, x_rows, rings, pending):
        """Row i's vertical stack -> (updated rings, the row's horizontal pending buffer as it starts)."""
        window = jax.lax.dynamic_slice_in_dim(x_rows, i, r + 1, axis=0)  # image rows i-r-1 .. i-1
        cols = jnp.concatenate([window[a, :, t:t + w] for a in range(r + 1) for t in range(k)], axis=-1)
        cols = column_taps(_dot(cols, wts["v_first"]) + wts["v_first_bias"], dilations[0])
        new_rings, slots = [], []
        for l, (lw, ring, d, cond) in enumerate(zip(wts["layers"], rings, dilations, conds)):
            cond_v = cond if isinstance(cond, float) else cond[:, None]
            next_d = dilations[l + 1] if l + 1 < len(dilations) else None
            if native:
                ring, pending, cols = cpu_gated_sampler.vertical_row(
                    i, cols, lw["v"], ring, lw["v_bias"], cond_rows[l], lw["link"][0], row_biases[l], pending, l, d,
                    next_d)
            else:
                ring, pre = ring_row(i, _dot(cols, lw["v"]), ring, lw["v_bias"], d)  # its dot: [B, W, (r+1)*2F]
                if next_d is not None:
                    cols = column_taps(_gate(pre + cond_v), next_d)
                link_w, link_b = lw["link"]
                slots.append(_dot(pre, link_w) + link_b + cond_v + lw["h_bias"])  # [B, W, 2F]
            new_rings.append(ring)
        if not native:
            pending = jnp.pad(jnp.stack(slots).transpose(2, 0, 1, 3), ((0, reach), (0, 0), (0, 0), (0, 0)))
        return tuple(new_rings), pending

    def head(skip):
        (w1, b1), (w2, b2) = wts["head"]
        return (_dot(jax.nn.relu(_dot(jax.nn.relu(skip), w1) + b1), w2) + b2).astype(jnp.float32)

    def horizontal(j, x_row, pending, write: bool):
        """Position j's raw output [B, P] from the row's inputs x_row [W+r, B, C] (scaled, r zero columns
        on the left) and pending buffer; ``write``: also add this position's taps into it for the later ones."""
        if native:
            return cpu_gated_sampler.position(j, x_row, pending, native_wts, dilations, write)
        window = jax.lax.dynamic_slice_in_dim(x_row, j, r + 1, axis=0)  # columns j-r .. j
        hs = _dot(window.transpose(1, 0, 2).reshape(b, -1), wts["h_first"]) + wts["h_first_bias"]  # [B, F]
        skip = 0.0
        for l, (lw, d) in enumerate(zip(wts["layers"], dilations)):
            z = _dot(hs, lw["h"])  # [B, (r+1)*2F]
            if write:
                for s in range(1, r + 1):
                    slot = jax.lax.dynamic_slice(pending, (j + d * s, l, 0, 0), (1, 1, b, 2 * f))
                    pending = jax.lax.dynamic_update_slice(pending, slot + z[:, 2 * f * s:2 * f * (s + 1)],
                                                           (j + d * s, l, 0, 0))
            if l == 0:
                # Column j's slots, once for all layers, read after the first layer's writes: every later
                # write depends on this read, so XLA writes the buffer in place (a read it could not order
                # before a write would cost a copy of the buffer at every position).
                at_j = _read(pending, j)  # [L, B, 2F]
            res_w, res_b = lw["residual"]
            out = _dot(_gate(at_j[l] + z[:, :2 * f]), res_w) + res_b
            hs, skip = hs + out, skip + out
        return head(skip), pending

    def columns(i, out_rows, pending):
        """Samples row i, position by position -> (its values [B, W, C], the pending buffer); ``pending``: the
        row's horizontal pending buffer as it starts."""
        noise = _row_noise(config, method, key, i, b, w, channels)  # [W, C, B, N]
        given = jax.lax.dynamic_index_in_dim(out_rows, i, 0, False).transpose(1, 0, 2)  # [W, B, C] (initial values)
        x_row = jnp.pad(scale(given), ((r, 0), (0, 0), (0, 0)))

        def position(j, carry):
            row, x_row, pending = carry
            pixel = jax.lax.dynamic_index_in_dim(given, j, 0, False)  # [B, C], from the row as it came in
            noise_j = _read(noise, j)  # [C, B, V]
            raw = None
            for c in range(channels):
                # With one colour group the stack never sees the pixel itself: once for all its channels.
                # Otherwise channel c's groups see the channels drawn before it: recompute, and add into
                # the later positions only with the whole pixel's (last channel's) values.
                if raw is None or config.colours > 1:
                    raw, new_pending = horizontal(j, x_row, pending, write=c == channels - 1 or config.colours == 1)
                drawn = _draw_noise(config, method, raw, scale(pixel), c, noise_j[c], temperature)
                pixel = pixel.at[:, c].set(drawn)
                x_row = jax.lax.dynamic_update_index_in_dim(x_row, scale(pixel), j + r, 0)
            row = jax.lax.dynamic_update_index_in_dim(row, pixel, j, 0)
            return row, x_row, new_pending

        row, _, pending = jax.lax.fori_loop(0, w, position, (given, x_row, pending))
        return row.transpose(1, 0, 2), pending

    def step(i, carry, known: bool):
        x_rows, out_rows, rings, pending = carry
        rings, pending = vertical(i, x_rows, rings, pending)
        if not known:
            row, pending = columns(i, out_rows, pending)
            out_rows = jax.lax.dynamic_update_index_in_dim(out_rows, row, i, 0)
            x_rows = jax.lax.dynamic_update_slice(x_rows, scale(row)[None], (i + r + 1, 0, r, 0))
        _report(progress, i, h)
        return x_rows, out_rows, rings, pending

    # Given rows (already in x_rows) only feed the vertical stack of the rows below: no horizontal stack.
    # Two loops, not a conditional in one: XLA copies the pending buffer into and out of a conditional.
    carry = (x_rows, out_rows, rings, pending)
    if known_rows:
        carry = jax.lax.fori_loop(0, min(known_rows, h), functools.partial(step, known=True), carry)
    _, out_rows, _, _ = jax.lax.fori_loop(known_rows, h, functools.partial(step, known=False), carry)
    return out_rows.transpose(1, 0, 2, 3)
