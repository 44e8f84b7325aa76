"""Where the cached sampler's time goes: one preset's ``sample_cached`` (random parameters, as ``jaxconv
bench sample``) traced with ``jax.profiler``, time per compiled op (XLA thunk) summed over the whole
sample, with the source each op came from; and, with ``--forward``, the time of one whole-image forward
pass at the same batch (the floor a cached image is compared with). Memory as the command line sets it
(``jaxconv.hostmem``), so the times are ``jaxconv bench sample``'s.

    python tools/profile_sampler.py gated_pixelcnn_mnist --batch 64 [--top 30] [--forward] [--no-trace]
    python tools/profile_sampler.py gated_pixelcnn_cifar --batch 1 --draw direct --no-trace
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxconv.timing import time_calls
from jaxconv import hostmem, sampling
from jaxconv.bench.models import preset_image, random_params
from jaxconv.models import PRESETS, build_model


CONTAINERS = ("while", "conditional", "call")  # their thunks' time includes the ops they run


def op_sources(hlo_text: str) -> tuple[dict[str, str], set[str]]:
    """Compiled op name -> the jaxpr op_name XLA recorded for it (the model layer and primitive), else its
    result shape (ops XLA made itself, such as a conv's kernel-gradient layout copies, record none); and
    the names of control-flow ops (while loops, conditionals, calls), whose time includes their bodies'."""
    sources, containers = {}, set()
    for line in hlo_text.splitlines():
        match = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (\(.*?\)|\S+) ([\w\-]+)\(", line)
        if not match:
            continue
        name, shape, opcode = match.groups()
        meta = re.search(r'metadata=\{op_name="([^"]+)"', line)
        sources.setdefault(name, meta.group(1) if meta else f"{shape} (no source recorded)")
        if opcode in CONTAINERS:
            containers.add(name)
    return sources, containers


def best_of(fn, repeats: int) -> float:
    return time_calls(fn, repeats=repeats, min_time=0.0, warmup=0)["min_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("preset")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--forward", action="store_true", help="also time one whole-image forward pass")
    parser.add_argument("--no-trace", action="store_true", help="only the timings")
    parser.add_argument("--draw", default="gumbel", choices=("gumbel", "direct"),
                        help="how variables are drawn (jaxconv.models.heads.check_draw; direct: logistic mixtures)")
    parser.add_argument("--known-rows", type=int, default=0,
                        help="complete blank images below this many given rows (= H: the vertical stack alone)")
    args = parser.parse_args()
    hostmem.keep_freed_memory()  # as jaxconv.cli does, before XLA's threads allocate
    config = PRESETS[args.preset]
    h, w, c = preset_image(args.preset)
    model = build_model(config)
    params = random_params(model, (h, w, c))
    key = jax.random.key(1)
    shape = (args.batch, h, w, c)
    labels = jnp.zeros((args.batch,), jnp.int32) if config.num_classes else None
    given = dict(images=jnp.zeros(shape, jnp.uint8), known_rows=args.known_rows) if args.known_rows else {}
    given["draw"] = args.draw
    call = lambda: sampling.sample_cached(model, params, key, shape, labels=labels, **given)
    t = best_of(call, args.repeats)
    print(f"{args.preset} batch {args.batch}{f' known_rows {args.known_rows}' if args.known_rows else ''}, draw "
          f"{args.draw}: cached sample {t * 1e3:.1f} ms, {args.batch / t:.4g} img/s (best of {args.repeats})")
    if args.forward:
        x = jnp.zeros(shape, jnp.float32)
        fwd = jax.jit(lambda p, x: model.apply({"params": p}, x, labels=labels),
                      compiler_options=model.policy.compiler_options())  # as the sampler's
        tf = best_of(lambda: fwd(params, x), max(args.repeats, 5))
        print(f"forward pass: {tf * 1e3:.2f} ms, {args.batch / tf:.4g} img/s; cached = {t / tf:.2f} forward passes "
              "per image")
    if args.no_trace:
        return
    if hasattr(sampling, "cached_compiled"):
        compiled = sampling.cached_compiled(model, params, key, shape, labels=labels, **given)
    else:  # older sampler (A/B against a worktree of an earlier commit)
        run = sampling._cached_gated if config.family == "gated_pixelcnn" else sampling._cached_pixelcnn
        compiled = run.lower(model, args.known_rows, False, params, key, jnp.zeros(shape, jnp.int32), labels,
                             jnp.float32(1.0)).compile()
    sources, containers = op_sources(compiled.as_text())
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
        jax.block_until_ready(call())
        jax.profiler.stop_trace()
        trace = next(Path(trace_dir).rglob("*.trace.json.gz"))
        events = json.load(gzip.open(trace))["traceEvents"]
    totals, counts = collections.Counter(), collections.Counter()
    for event in events:
        if event.get("ph") == "X" and event["name"] in sources and event["name"] not in containers:
            totals[event["name"]] += event.get("dur", 0) / 1e3
            counts[event["name"]] += 1
    print(f"{sum(totals.values()):.1f} ms in compiled ops ({sum(counts.values())} op runs; loops and conditionals not counted, their bodies are); by how often an op ran:")
    by_count, ops = collections.Counter(), collections.Counter()
    for name, ms in totals.items():
        by_count[counts[name]] += ms
        ops[counts[name]] += 1
    for count, ms in sorted(by_count.items(), key=lambda kv: -kv[1]):
        print(f"  ran {count:6d}x: {ops[count]:4d} ops, {ms:8.2f} ms ({ms / count * 1e3:.1f} us per run of all of them)")
    for name, ms in totals.most_common(args.top):
        print(f"{ms:8.2f} ms {counts[name]:7d}x  {name:28s} {sources[name][:100]}")


if __name__ == "__main__":
    main()
