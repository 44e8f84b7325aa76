#!/usr/bin/env python
"""Mutation check, run by hand (not in CI): does the test suite notice plausible one-line bugs?

Each mutant replaces one snippet of a core module (masks, samplers, heads, losses, evaluation,
checkpoint policy, data split) with a plausible wrong version. The script copies the repository to
a temporary directory once (the working tree as git sees it: tracked and untracked, not ignored,
files; or ``--head``: the last commit), checks that the chosen tests pass there unmutated, then
for each mutant in turn edits the copy, runs that mutant's fast subset of tests (stopping at the
first failure) and restores the file. The repository itself is never modified.

    python tools/mutate.py                 # every mutant
    python tools/mutate.py --list          # names, files and tests
    python tools/mutate.py eval-            # only mutants whose name starts with "eval-"
    python tools/mutate.py --head --keep   # the last commit; keep the copy for a look

It prints killed / SURVIVED per mutant (and the test that killed it) and exits 1 if any survived.
A mutant marked ``equivalent`` behaves exactly like the original (the entry says why); its survival
is expected and reported as such. ``error`` means the tests could not run (e.g. the mutant broke an
import): it counts as neither.
The runs share one JAX compilation cache, so programs a mutant does not change compile once.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROPS = "tests/test_properties.py"
PIXELCNN = "tests/test_pixelcnn.py"
DATA = "tests/test_data.py"
CAUSAL = [PIXELCNN, "-k", "raster_mask or causality or dense_conv_of_the_masked_kernel"]
SAMPLERS = [PIXELCNN, "-k", "samplers_agree"]
GATED_LOGITS = ["tests/test_sampler_speed.py", "-k", "each_variable"]
EVAL = [PROPS, "-k", "eval_is"]


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    original: str  # must occur exactly once in the file
    mutated: str
    tests: tuple[str, ...]  # pytest arguments: the fast subset expected to kill it
    equivalent: str = ""  # why no test can kill it (same behaviour): its survival is expected


def m(name, file, original, mutated, tests, equivalent=""):
    return Mutant(name, file, original, mutated, tuple(tests), equivalent)


MUTANTS = [
    # --- masks (jaxconv/models/masked.py) ---------------------------------------------------------
    m("mask-A-sees-own-group", "jaxconv/models/masked.py",
      'allowed = gin < gout if mask_type == "A" else gin <= gout',
      'allowed = gin <= gout if mask_type == "A" else gin <= gout', CAUSAL),
    m("mask-centre-row-includes-centre", "jaxconv/models/masked.py",
      "mask[r, :r] = 1.0", "mask[r, :r + 1] = 1.0", CAUSAL,
      equivalent="the next line sets the centre tap mask[r, r] again, from the colour groups"),
    m("mask-centre-ignores-colours", "jaxconv/models/masked.py",
      "mask[r, r] = centre_mask(cin, cout, colours, mask_type, out_tiles)",
      "mask[r, r] = centre_mask(cin, cout, 1, mask_type, out_tiles)", CAUSAL),
    m("mask-whole-centre-row", "jaxconv/models/masked.py",
      "mask[:r] = 1.0", "mask[:r + 1] = 1.0", CAUSAL),
    m("mask-interleaved-colour-groups", "jaxconv/models/masked.py",
      "np.tile(np.arange(block) * colours // block, tiles)", "np.tile(np.arange(block) % colours, tiles)", CAUSAL),
    m("horizontal-first-layer-mask-B", "jaxconv/models/masked.py",
      "mask[0, r] = centre_mask(cin, self.features, self.colours, self.mask_type, self.out_tiles)",
      'mask[0, r] = centre_mask(cin, self.features, self.colours, "B", self.out_tiles)', CAUSAL),
    m("vertical-first-layer-not-shifted", "jaxconv/models/masked.py",
      "padding = ((r + 1, -1) if self.shifted else (d * r, 0), (d * r, d * r))",
      "padding = ((r, 0) if self.shifted else (d * r, 0), (d * r, d * r))", CAUSAL),
    m("masked-form-reads-rows-below", "jaxconv/models/masked.py",
      'kernel = self.param("kernel", KERNEL_INIT, (k, k, cin, self.features))[:r + 1]',
      'kernel = self.param("kernel", KERNEL_INIT, (k, k, cin, self.features))[k - r - 1:]',
      CAUSAL),
    m("masked-window-a-row-low", "jaxconv/models/masked.py",
      "return conv_valid(x[:, :x.shape[1] - p], kernel, d, self.policy, bias, self.relu)",
      "return conv_valid(x[:, 1:x.shape[1] - p + 1], kernel, d, self.policy, bias, self.relu)", CAUSAL),
    m("flops-masks-not-followed-into-calls", "jaxconv/bench/models.py",
      "total += _flops(sub, {**consts, **sub_consts}, inner)", "total += _flops(sub, {**consts, **sub_consts}, {})",
      ["tests/test_bench.py", "-k", "traced_shapes_and_flops"]),
    m("flops-count-masked-zeros", "jaxconv/bench/models.py",
      "mask = masks.get(eqn.invars[1]) if _var_in(eqn.invars[1], masks) else None", "mask = None",
      ["tests/test_bench.py", "-k", "traced_shapes_and_flops"]),
    m("live-taps-without-centre", "jaxconv/models/masked.py",
      "return k // 2 * (k + 1) + 1", "return k // 2 * (k + 1)", SAMPLERS),
    # --- samplers (jaxconv/sampling.py) -----------------------------------------------------------
    m("cached-key-ignores-channel", "jaxconv/sampling.py",
      "* channels + jnp.arange(channels)[None, :]", "* channels + 0 * jnp.arange(channels)[None, :]", SAMPLERS),
    m("cached-overwrites-last-given-row", "jaxconv/sampling.py",
      "jnp.where(i < known_rows, pixel[:, c], drawn)", "jnp.where(i <= known_rows, pixel[:, c], drawn)", SAMPLERS),
    m("naive-resamples-given-rows", "jaxconv/sampling.py",
      "return jax.lax.fori_loop(known_rows, h, row, values)", "return jax.lax.fori_loop(0, h, row, values)",
      SAMPLERS),
    m("gated-cached-skips-first-free-row", "jaxconv/sampling.py",
      "jax.lax.fori_loop(known_rows, h, functools.partial(step, known=False)",
      "jax.lax.fori_loop(known_rows + 1, h, functools.partial(step, known=False)", SAMPLERS),
    m("naive-reads-position-transposed", "jaxconv/sampling.py",
      "dynamic_index_in_dim(raw, i, 1, False), j, 1, False)", "dynamic_index_in_dim(raw, j, 1, False), i, 1, False)",
      SAMPLERS),
    m("cached-ignores-temperature", "jaxconv/sampling.py",
      "out = _jitted(run, model, params, key, values, labels)(model, known_rows, progress, method, params, key,\n"
      "                                                           values, labels, jnp.float32(temperature))",
      "out = _jitted(run, model, params, key, values, labels)(model, known_rows, progress, method, params, key,\n"
      "                                                           values, labels, jnp.float32(1.0))",
      [PROPS, "-k", "cached_sampler"]),
    m("gated-pending-tap-a-column-short", "jaxconv/sampling.py",
      "slot + z[:, 2 * f * s:2 * f * (s + 1)],\n                                                           (j + d * s, l,",
      "slot + z[:, 2 * f * s:2 * f * (s + 1)],\n                                                           (j + d * s - 1, l,",
      GATED_LOGITS),
    m("gated-pending-read-of-layer-0-for-all", "jaxconv/sampling.py",
      "_gate(at_j[l] + z[:, :2 * f])", "_gate(at_j[0] + z[:, :2 * f])", GATED_LOGITS),
    m("gated-pending-tap-overwrites", "jaxconv/sampling.py",
      "pending = jax.lax.dynamic_update_slice(pending, slot + z[", "pending = jax.lax.dynamic_update_slice(pending, 0 * slot + z[",
      GATED_LOGITS),
    m("gated-ring-reads-the-next-rows-slot", "jaxconv/sampling.py",
      "return ring, _read(ring, i % (d * r + 1))", "return ring, _read(ring, (i + 1) % (d * r + 1))", GATED_LOGITS),
    m("gated-vertical-column-taps-mirrored", "jaxconv/sampling.py",
      "_shift_columns(v, (t - r) * d)", "_shift_columns(v, (r - t) * d)", GATED_LOGITS),
    # --- heads (jaxconv/models/heads.py) ----------------------------------------------------------
    m("temperature-multiplies", "jaxconv/models/heads.py",
      "values_log_prob(config, params) / temperature + noise", "values_log_prob(config, params) * temperature + noise",
      [PROPS, "-k", "sample_variable or cached_sampler"]),
    m("mixture-direct-floors", "jaxconv/models/heads.py",
      "jnp.round((x + 1.0) * 127.5)", "jnp.floor((x + 1.0) * 127.5)",
      ["tests/test_sampler_speed.py", "-k", "direct"]),
    m("mixture-direct-scale-unclamped", "jaxconv/models/heads.py",
      "jnp.exp(jnp.maximum(log_scale[:, 0], -7.0))", "jnp.exp(log_scale[:, 0])",
      ["tests/test_sampler_speed.py", "-k", "direct"]),
    m("mixture-component-gumbel-negated", "jaxconv/models/heads.py",
      "first_argmax(logits + gumbels)", "first_argmax(logits - gumbels)",
      ["tests/test_sampler_speed.py", "-k", "temperature_one"]),
    m("mixture-block-upper-edge-of-its-first-value", "jaxconv/models/heads.py",
      "jnp.take(_UPPER_EDGES, last_values)", "jnp.take(_UPPER_EDGES, first_values)",
      ["tests/test_sampler_speed.py", "-k", "temperature_one"]),
    m("mixture-block-width-of-one-value", "jaxconv/models/heads.py",
      "(2.0 * values_per_bin / 255.0)", "(2.0 / 255.0)", ["tests/test_sampler_speed.py", "-k", "temperature_one"]),
    m("mixture-block-gumbels-reused-for-the-value", "jaxconv/models/heads.py",
      "first_argmax(in_block + gumbels[:, BLOCK:])", "first_argmax(in_block + gumbels[:, :BLOCK])",
      ["tests/test_sampler_speed.py", "-k", "temperature_one"]),
    m("bernoulli-sign-swapped", "jaxconv/models/heads.py",
      "jnp.where(values == 1, params, -params)", "jnp.where(values == 0, params, -params)",
      [PROPS, "-k", "sample_variable"]),
    m("softmax-logits-interleaved", "jaxconv/models/heads.py",
      "raw.reshape(*raw.shape[:-1], config.channels, 256)",
      "raw.reshape(*raw.shape[:-1], 256, config.channels).swapaxes(-1, -2)", CAUSAL),
    m("mixture-green-mean-from-green", "jaxconv/models/heads.py",
      "means[..., 1, :] + a * r_val", "means[..., 1, :] + a * g_val",
      [PIXELCNN, "-k", "logistic_mixture or causality"]),
    m("mixture-lower-edge-bin", "jaxconv/models/heads.py",
      "jnp.where(v == 0, jax.nn.log_sigmoid(upper)", "jnp.where(v == 0, jax.nn.log_sigmoid(lower)",
      [PIXELCNN, "-k", "logistic_mixture"]),
    m("mixture-bin-half-width", "jaxconv/models/heads.py",
      "upper, lower = inv_scale * (centred + 1.0 / 255.0), inv_scale * (centred - 1.0 / 255.0)",
      "upper, lower = inv_scale * (centred + 0.5 / 255.0), inv_scale * (centred - 0.5 / 255.0)",
      [PIXELCNN, "-k", "logistic_mixture"]),
    m("nll-mean-not-sum", "jaxconv/models/heads.py",
      "return -jnp.sum(log_likelihoods(config, raw, images), axis=(1, 2, 3))",
      "return -jnp.mean(log_likelihoods(config, raw, images), axis=(1, 2, 3))", [PIXELCNN, "-k", "nll"]),
    m("binarise-at-127-inclusive", "jaxconv/preprocess.py",
      "return images > BINARY_THRESHOLD", "return images >= BINARY_THRESHOLD", [PROPS, "-k", "binarisation"]),
    m("head-values-not-binarised", "jaxconv/models/heads.py",
      "return (binarise(images) if config.head", "return (images if config.head", [PROPS, "-k", "binarisation"]),
    m("scale-binary-as-unit", "jaxconv/preprocess.py",
      "return binarise(images).astype(dtype)", "return images.astype(dtype) / 255.0", [PROPS, "-k", "binarisation"]),
    # --- losses (jaxconv/losses.py) and density sums (jaxconv/tasks.py) ---------------------------
    m("top1-ignores-mask", "jaxconv/losses.py",
      "jnp.sum(hits[:, 0] * mask)", "jnp.sum(hits[:, 0])", EVAL),
    m("top5-ignores-mask", "jaxconv/losses.py",
      "jnp.sum(jnp.any(hits, axis=-1) * mask)", "jnp.sum(jnp.any(hits, axis=-1))", EVAL),
    m("ce-loss-ignores-mask", "jaxconv/losses.py",
      "jnp.sum(loss * mask)", "jnp.sum(loss)", EVAL),
    m("top5-is-top4", "jaxconv/losses.py", "k = min(5, logits.shape[-1])", "k = min(4, logits.shape[-1])", EVAL),
    m("top1-is-last-of-top5", "jaxconv/losses.py", "jnp.sum(hits[:, 0] * mask)", "jnp.sum(hits[:, -1] * mask)", EVAL),
    m("bits-per-dim-in-nats", "jaxconv/losses.py",
      "return nll_nats / (num_dims * jnp.log(2.0))", "return nll_nats / num_dims", EVAL),
    m("density-loss-ignores-mask", "jaxconv/tasks.py",
      "jnp.sum(nats / dims * mask)", "jnp.sum(nats / dims)", EVAL),
    m("density-nll-ignores-mask", "jaxconv/tasks.py",
      "jnp.sum(nats * mask)", "jnp.sum(nats)", EVAL),
    m("density-bits-ignores-mask", "jaxconv/tasks.py",
      "jnp.sum(losses.bits_per_dim(nats, dims) * mask)", "jnp.sum(losses.bits_per_dim(nats, dims))", EVAL),
    m("density-dims-without-channels", "jaxconv/tasks.py",
      'dims = int(np.prod(batch["images"].shape[1:]))', 'dims = int(np.prod(batch["images"].shape[1:3]))',
      ["tests/test_train.py", "-k", "colour and cifar10"]),
    # --- evaluation (jaxconv/train/loop.py, jaxconv/data/pipeline.py) -----------------------------
    m("eval-keeps-last-batch-only", "jaxconv/train/loop.py",
      "total = sums if total is None else jax.tree.map(jnp.add, total, sums)", "total = sums", EVAL),
    m("eval-defaults-to-train-split", "jaxconv/train/loop.py",
      "data = run.val_data if data is None else data", "data = run.train_data if data is None else data",
      [PROPS, "-k", "best_checkpoint_by_default"]),
    m("eval-batches-mask-nothing", "jaxconv/data/pipeline.py", "mask[:len(idx)] = 1.0", "mask[:] = 1.0", EVAL),
    m("eval-batches-drop-remainder", "jaxconv/data/pipeline.py",
      "for start in range(0, len(data), batch_size):", "for start in range(0, len(data) - batch_size + 1, batch_size):",
      EVAL),
    m("eval-batches-pad-by-wrapping", "jaxconv/data/pipeline.py", 'mode="edge")[sl]', 'mode="wrap")[sl]', EVAL,
      equivalent="padding is masked out of every sum, so which examples pad the last batch cannot matter"),
    m("eval-batches-every-host-first-slice", "jaxconv/data/pipeline.py",
      "sl = slice(process_index * local, (process_index + 1) * local)", "sl = slice(0, local)",
      [DATA, "-k", "every_host"]),
    # --- checkpoint policy (jaxconv/train/checkpoint.py, jaxconv/train/loop.py) -------------------
    m("best-n-keeps-the-worst", "jaxconv/train/checkpoint.py",
      'reverse=config.best_mode == "min"', 'reverse=config.best_mode == "max"', [PROPS, "-k", "checkpoint"]),
    m("best-step-always-max", "jaxconv/train/checkpoint.py",
      "best_mode=config.best_mode,", 'best_mode="max",', [PROPS, "-k", "checkpoint"]),
    m("latest-n-keeps-one-more", "jaxconv/train/checkpoint.py",
      "policies.LatestN(config.keep_latest)", "policies.LatestN(config.keep_latest + 1)", [PROPS, "-k", "checkpoint"]),
    m("best-n-keeps-one-more", "jaxconv/train/checkpoint.py",
      "n=config.keep_best,", "n=config.keep_best + 1,", [PROPS, "-k", "checkpoint"]),
    m("eval-best-means-latest", "jaxconv/train/restore.py",
      'if name == "best":\n        step = checkpoints.best_step()',
      'if name == "best":\n        step = checkpoints.latest_step()', [PROPS, "-k", "checkpoint"]),
    # --- data split (jaxconv/data/sources.py) ----------------------------------------------------
    m("mnist-401-train-per-digit", "jaxconv/data/sources.py",
      "keep = rank_within_class(labels) < MNIST_TRAIN_PER_DIGIT",
      "keep = rank_within_class(labels) <= MNIST_TRAIN_PER_DIGIT",
      [DATA, "-k", "embedded_mnist"]),
    m("mnist-val-is-train", "jaxconv/data/sources.py",
      'if split == "val":\n        keep = ~keep', 'if split == "val":\n        keep = keep',
      [DATA, "-k", "embedded_mnist"]),
    m("synthetic-val-is-train-prefix", "jaxconv/data/sources.py",
      "np.random.default_rng([config.seed, SPLITS.index(split)])", "np.random.default_rng([config.seed, 0])",
      [PROPS, "-k", "synthetic"]),
    m("cv-fold-holds-out-the-first-fold", "jaxconv/data/sources.py",
      "held_out = rank_within_class(data.labels) * CV_FOLDS // size_of_class[data.labels] == config.cv_fold",
      "held_out = rank_within_class(data.labels) * CV_FOLDS // size_of_class[data.labels] == 0",
      [DATA, "-k", "cv_folds"]),
    m("cv-fold-trains-on-everything", "jaxconv/data/sources.py",
      'keep = held_out if split == "val" else ~held_out', 'keep = held_out if split == "val" else held_out | True',
      [DATA, "-k", "cv_folds"]),
    # --- studies (jaxconv/study.py, jaxconv/train/metrics.py) -------------------------------------
    m("study-time-of-the-last-interval-only", "jaxconv/train/metrics.py",
      "seconds += (record[\"step\"] - last_step) * batch_size / speed",
      "seconds = (record[\"step\"] - last_step) * batch_size / speed",
      ["tests/test_study_workers.py", "-k", "training_seconds or timed_whole"]),
    # --- how the convs run on CPU (conv policy, devices) ------------------------------------------
    m("ynnpack-convs-kept", "jaxconv/models/conv_policy.py",
      'if self.xla_cpu != "eigen" or jax.default_backend() != "cpu":', "if True:",
      ["tests/test_xla_cpu_convs.py", "-k", "options_are_given"]),
    m("pmap-drops-compiler-options", "jaxconv/train/parallel.py",
      "return _CompiledWith(mapped, compiler_options) if compiler_options else mapped", "return mapped",
      ["tests/test_xla_cpu_convs.py", "-k", "pmap"]),
    m("native-kernel-grad-parts-not-summed", "jaxconv/models/cpu_conv_grads.py",
      "return jax.lax.psum(part, axes) if summed else part", "return part",
      ["tests/test_native_kernel.py", "-k", "batch_split"]),
    # The kernel gradient's tile differs by ISA (16 x 16 with AVX-512, 12 x 8 with AVX2): these two
    # touch code that both tiles run.
    m("native-kernel-grad-tail-channel-dropped", "jaxconv/models/cpu_conv_grads.cc",
      "tail * sizeof(float));", "(tail - 1) * sizeof(float));",
      ["tests/test_bench.py", "-k", "implementations_match_xla"]),
    m("native-kernel-grad-tile-reads-one-channel", "jaxconv/models/cpu_conv_grads.cc",
      "a[c] += xp[c] * gv;", "a[c] += xp[0] * gv;",
      ["tests/test_bench.py", "-k", "implementations_match_xla"]),
    # The Gated PixelCNN sampler's C++ position and vertical row (jaxconv/models/cpu_gated_sampler.cc).
    m("native-sampler-tap-writes-one-column-short", "jaxconv/models/cpu_gated_sampler.cc",
      "pending + (j + d * t) * slot_col", "pending + (j + d * t - 1) * slot_col",
      ["tests/test_native_sampler.py"]),
    m("native-sampler-gate-sign-dropped", "jaxconv/models/cpu_gated_sampler.cc",
      "Bits<IVec>(Splat(1.f) - e) | sign)", "Bits<IVec>(Splat(1.f) - e))",
      ["tests/test_native_sampler.py"]),
    m("native-sampler-tile-tail-column-skipped", "jaxconv/models/cpu_gated_sampler.cc",
      "full + q * kV + tail, out", "full + q * kV + tail - 1, out",
      ["tests/test_native_sampler.py"]),
    m("native-sampler-exp-scale-halved", "jaxconv/models/cpu_gated_sampler.cc",
      "(Bits<IVec>(shifted) + 127) << 23", "(Bits<IVec>(shifted) + 126) << 23",
      ["tests/test_native_sampler.py"]),
    m("native-sampler-exp-unclamped-below", "jaxconv/models/cpu_gated_sampler.cc",
      "Min(Splat(88.f), Max(Splat(-87.f), x))", "Min(Splat(88.f), x)",
      ["tests/test_native_sampler.py"]),
    m("native-sampler-scratch-skip-not-zeroed", "jaxconv/models/cpu_gated_sampler.cc",
      "std::fill(skip, skip + m * f, 0.f);", "", ["tests/test_native_sampler.py"]),
    m("bench-sample-three-turns", "jaxconv/bench/sample.py", "turns = repeats or (1 if quick else 9)",
      "turns = repeats or (1 if quick else 3)", ["tests/test_sampler_speed.py", "-k", "nine_alternating"]),
    m("native-matmul-five-row-tiles-read-a-row-early", "jaxconv/models/cpu_gated_sampler.cc",
      "Rows<5>(x + r * ldx", "Rows<5>(x + (r - 1) * ldx", ["tests/test_native_sampler.py"]),
    m("native-vertical-nearer-slot-set-not-added", "jaxconv/models/cpu_gated_sampler.cc",
      "for (int64_t e = 0; e < f2; ++e) slot[e] += zs[e];", "for (int64_t e = 0; e < f2; ++e) slot[e] = zs[e];",
      ["tests/test_native_sampler.py"]),
    m("native-vertical-column-taps-mirrored", "jaxconv/models/cpu_gated_sampler.cc",
      "x + (t - c) * v.shift", "x + (c - t) * v.shift",
      ["tests/test_native_sampler.py"]),
    m("native-vertical-first-images-class-bias-for-all", "jaxconv/models/cpu_gated_sampler.cc",
      "const float* cb = cond + b * f2;", "const float* cb = cond + b0 * f2;",
      ["tests/test_native_sampler.py"]),
    m("native-vertical-dot-reads-the-first-images-input", "jaxconv/models/cpu_gated_sampler.cc",
      "Matmul(in + b * w * v.inputs,", "Matmul(in + b0 * w * v.inputs,",
      ["tests/test_native_sampler.py"]),
    m("native-vertical-link-into-layer-0", "jaxconv/models/cpu_gated_sampler.cc",
      "pending + (v.layer * v.batch + b) * f2;", "pending + b * f2;",
      ["tests/test_native_sampler.py"]),
    m("native-vertical-link-slots-without-class-bias", "jaxconv/models/cpu_gated_sampler.cc",
      "+= row_bias[e] + cb[e];", "+= row_bias[e];",
      ["tests/test_native_sampler.py"]),
    m("native-vertical-reach-columns-kept", "jaxconv/models/cpu_gated_sampler.cc",
      "for (int64_t x = w; x < v.columns; ++x)", "for (int64_t x = v.columns; x < v.columns; ++x)",
      ["tests/test_native_sampler.py"]),
    m("native-sampler-sigmoid-half-drops-its-addend", "jaxconv/models/cpu_gated_sampler.cc",
      "Load(u + f + e) + Load(v + f + e)", "Load(u + f + e)",
      ["tests/test_native_sampler.py"]),
    m("native-input-grad-columns-mirrored", "jaxconv/models/cpu_conv_grads.cc",
      "(q0 + s.pl - j * s.dw - s.xmin)", "(q0 + s.pl - (s.kw - 1 - j) * s.dw - s.xmin)",
      ["tests/test_bench.py", "-k", "implementations_match_xla"]),
    m("native-input-grad-last-row-block-skipped", "jaxconv/models/cpu_conv_grads.cc",
      "for (; p < s.h; ++p) row(", "for (; p < s.h - 1; ++p) row(",
      ["tests/test_bench.py", "-k", "implementations_match_xla"]),
    m("onednn-padding-sides-swapped", "jaxconv/models/cpu_onednn.py",
      "(*strides, *padding[0], *padding[1], *dilation, groups)",
      "(*strides, *padding[0][::-1], *padding[1], *dilation, groups)",
      ["tests/test_bench.py", "-k", "implementations_match_xla"]),
    m("onednn-dilation-off-by-one", "jaxconv/models/cpu_onednn.cc",
      "dilation{g.dh - 1, g.dw - 1}", "dilation{g.dh - 1, 0}",
      ["tests/test_bench.py", "-k", "implementations_match_xla"]),
    m("onednn-relu-gradient-passes-negatives", "jaxconv/models/conv_impls.py",
      "g = jnp.where(y > 0, g, jnp.zeros((), g.dtype))", "g = jnp.where(y >= 0, g, jnp.zeros((), g.dtype))",
      ["tests/test_native_kernel.py", "-k", "bias_and_relu"]),
    m("onednn-relu-post-op-dropped", "jaxconv/models/cpu_onednn.cc",
      "if (relu) {", "if (false) {", ["tests/test_native_kernel.py", "-k", "bias_and_relu"]),
    m("onednn-rules-kept-without-onednn", "jaxconv/models/conv_policy.py",
      "if rule.matches(sig) and built(rule.impl)", "if rule.matches(sig)",
      ["tests/test_bench.py", "-k", "give_way"]),
    m("rules-ignore-dilation", "jaxconv/models/conv_policy.py",
      "and inside(max(sig.dilation), self.dilation))", "and True)",
      ["tests/test_bench.py", "-k", "choice_rules"]),
    m("gradient-clip-bound-as-a-floor", "jaxconv/train/state.py",
      "max_norm / jnp.maximum(norm, max_norm)", "max_norm / jnp.minimum(norm, max_norm)",
      ["tests/test_train.py", "-k", "clipping"]),
    m("train-step-traced-without-its-mesh", "jaxconv/train/parallel.py",
      "        with jax.set_mesh(self.mesh):\n            return self.jitted(*args)", "        return self.jitted(*args)",
      ["tests/test_native_kernel.py", "-k", "second_run"]),
    m("split-reuses-the-first-groups-kernel", "jaxconv/models/conv_impls.py",
      "kernel[..., g * og:(g + 1) * og]", "kernel[..., :og]",
      ["tests/test_bench.py", "-k", "implementations_match_xla"]),
    m("one-channel-taps-fused-into-consumers", "jaxconv/models/conv_impls.py",
      "return materialize(y.astype(x.dtype)) if cg == 1 else", "return (y.astype(x.dtype)) if cg == 1 else",
      ["tests/test_materialize.py"]),
    m("xla-kernel-gradient-input-recomputed", "jaxconv/models/conv_impls.py",
      'keep_input = dw in ("xla", "split")', "keep_input = False",
      ["tests/test_materialize.py"]),
    m("pool-phase-shifts-swapped", "jaxconv/models/pooling.py",
      "di, dj = i // stride, j // stride", "di, dj = j // stride, i // stride",
      ["tests/test_pooling.py"]),
    m("sparse-c3-default-policy", "jaxconv/models/lenet.py",
      'SparseC3(self.dtype, self.policy, name="C3")', 'SparseC3(self.dtype, name="C3")',
      ["tests/test_bench.py", "-k", "layers_use_the_chosen"]),
    m("reader-gives-up-on-a-vanished-step", "jaxconv/train/checkpoint.py",
      "if vanished and directory.is_dir() and attempt + 1 < attempts:", "if False:",
      ["tests/test_edges.py", "-k", "vanishes"]),
    m("hostmem-thread-arenas", "jaxconv/hostmem.py", "((_M_ARENA_MAX, 1),", "((_M_ARENA_MAX, 8),",
      ["tests/test_hostmem.py"]),
    m("hostmem-env-ignored", "jaxconv/hostmem.py",
      "or any(os.environ.get(name) for name in USER_SETTINGS)", "or False", ["tests/test_hostmem.py"]),
    m("dry-run-without-the-devices", "jaxconv/cli.py",
      "        create_host_devices(config.parallel)  # as training does", "        pass  # as training does",
      ["tests/test_host_devices.py", "-k", "creates_the_devices"]),
    m("native-build-unlocked", "jaxconv/native_build.py",
      "fcntl.flock(lock, fcntl.LOCK_EX)", "pass",
      ["tests/test_native_kernel.py", "-k", "build_a_library_once"]),
    m("cpu-default-device-per-core", "jaxconv/train/parallel.py",
      "return cpu_devices or 1", "return cpu_devices or (os.cpu_count() or 1)",
      ["tests/test_host_devices.py", "-k", "unless_told"]),
]


def copy_repository(dest: Path, head: bool) -> None:
    if head:
        archive = subprocess.run(["git", "archive", "HEAD"], cwd=REPO, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        return
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():  # a tracked file deleted in the working tree is skipped
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def pytest_args(tests: tuple[str, ...]) -> list[list[str]]:
    """A mutant's tests as one or more pytest invocations: each ``-k`` applies to the files before it."""
    runs, current = [], []
    for arg in tests:
        current.append(arg)
        if current[-2:-1] == ["-k"]:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs


def run_tests(copy: Path, tests: tuple[str, ...], env: dict, timeout: float) -> tuple[str, str, float]:
    """('passed' | 'failed' | 'error', the first failing test or error line, seconds)."""
    start = time.perf_counter()
    for args in pytest_args(tests):
        command = [sys.executable, "-m", "pytest", "-x", "-q", "-n", "0", "-p", "no:cacheprovider", "-rf", *args]
        try:
            done = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return "failed", f"timeout after {timeout:.0f} s", time.perf_counter() - start
        output = done.stdout + done.stderr
        if done.returncode == 1:
            failed = re.search(r"^FAILED (\S+)", output, re.M)
            return "failed", failed.group(1) if failed else "a test failed", time.perf_counter() - start
        if done.returncode != 0:
            lines = [line for line in output.splitlines() if line.strip()]
            return "error", f"pytest exit {done.returncode}: {lines[-1] if lines else ''}", time.perf_counter() - start
    return "passed", "", time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prefixes", nargs="*", help="run only mutants whose name starts with one of these")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--head", action="store_true", help="mutate the last commit, not the working tree")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per pytest run (a timeout kills)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of the tests")
    args = parser.parse_args()
    mutants = [x for x in MUTANTS if not args.prefixes or x.name.startswith(tuple(args.prefixes))]
    if args.list:
        for x in mutants:
            print(f"{x.name:40s} {x.file:30s} {' '.join(x.tests)}")
        return 0
    if not mutants:
        parser.error("no mutant matches")
    copy = Path(tempfile.mkdtemp(prefix="jaxconv-mutants-"))
    try:
        copy_repository(copy, args.head)
        for x in mutants:  # every snippet occurs once: a stale entry is an error, not a silent survivor
            found = (copy / x.file).read_text().count(x.original)
            if found != 1:
                raise SystemExit(f"mutant {x.name}: its original snippet occurs {found} times in {x.file}")
        env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1",
               "JAX_COMPILATION_CACHE_DIR": str(copy / ".jax-cache")}
        print(f"copy of {'HEAD' if args.head else 'the working tree'} in {copy}; {len(mutants)} mutants", flush=True)
        if not args.no_baseline:
            union = []
            for x in mutants:
                for group in pytest_args(x.tests):
                    if group not in union:
                        union.append(group)
            for group in union:
                status, detail, seconds = run_tests(copy, tuple(group), env, args.timeout)
                if status != "passed":
                    raise SystemExit(f"unmutated copy: {' '.join(group)} {status}: {detail}")
            print(f"baseline: {len(union)} test selections pass unmutated", flush=True)
        results = []
        for x in mutants:
            path = copy / x.file
            original = path.read_text()
            path.write_text(original.replace(x.original, x.mutated))
            try:
                status, detail, seconds = run_tests(copy, x.tests, env, args.timeout)
            finally:
                path.write_text(original)
            verdict = {"failed": "killed", "passed": "SURVIVED", "error": "error"}[status]
            if verdict == "SURVIVED" and x.equivalent:
                verdict, detail = "equivalent", x.equivalent
            results.append((x, verdict))
            print(f"{verdict:10s} {x.name:40s} {seconds:6.1f} s  {detail}", flush=True)
        counts = {v: sum(r == v for _, r in results) for v in ("killed", "SURVIVED", "equivalent", "error")}
        print(f"\n{len(results)} mutants: {counts['killed']} killed, {counts['SURVIVED']} survived, "
              f"{counts['equivalent']} equivalent (expected to survive), {counts['error']} errors")
        for x, verdict in results:
            if verdict != "killed":
                print(f"  {verdict}: {x.name} ({x.file}): {x.original!r} -> {x.mutated!r}")
        return 1 if counts["SURVIVED"] else 0
    finally:
        if args.keep:
            print(f"kept {copy}")
        else:
            shutil.rmtree(copy, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
