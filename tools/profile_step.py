"""Where a training step's time goes on this machine: one preset's jitted train step (the one
``jaxconv train`` runs), traced with ``jax.profiler``, time per compiled op (XLA thunk), with the
source layer each op came from; first, the step's wall, user and system time and page faults
(``getrusage``), with the memory setting of the command line (``jaxconv.hostmem``; glibc's default
with ``GLIBC_TUNABLES=glibc.malloc.perturb=0``).

    python tools/profile_step.py lenet5_modern --batch 256 [--set conv.impl=xla] [--top 25]
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import resource
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxconv import hostmem
from jaxconv.bench.models import random_params
from jaxconv.bench.train import run_config
from jaxconv.config import apply_overrides
from jaxconv.data.pipeline import train_batches
from jaxconv.models import build_run_model
from jaxconv.train.loop import build_run
from jaxconv.train.state import TrainState
from profile_sampler import op_sources  # tools/, beside this script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("preset")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    kept = hostmem.keep_freed_memory()  # as jaxconv.cli does, before XLA's threads allocate
    config = apply_overrides(run_config(args.preset, args.batch, 1, "float32", quick=False), args.set)
    run = build_run(config)
    params = random_params(build_run_model(config), tuple(run.train_data.images.shape[1:]))
    state = run.par.place_state(TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                           opt_state=run.tx.init(params), rng=jax.random.key_data(jax.random.key(0))))
    batch = run.par.put_batch(next(train_batches(run.train_data, args.batch, 0, 0)))
    step = run.train_step
    sources, containers = op_sources(step.lower(state, batch).compile().as_text())
    # Ten, not three: the heap still grew in steps 4-13 of half the runs, 2,200-8,900 page faults and 12-27 ms
    # of system time per step of pixelcnn_mnist at batch 64; none after ten.
    for _ in range(10):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(args.steps):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    after, per_step = resource.getrusage(resource.RUSAGE_SELF), lambda x: x / args.steps
    print(f"{args.preset} batch {args.batch}: {per_step(time.perf_counter() - start) * 1e3:.1f} ms per step (wall), "
          f"user {per_step(after.ru_utime - before.ru_utime) * 1e3:.1f} ms, system "
          f"{per_step(after.ru_stime - before.ru_stime) * 1e3:.1f} ms, "
          f"{per_step(after.ru_minflt - before.ru_minflt):.0f} page faults; freed memory kept: {kept}")
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
        for _ in range(args.steps):
            state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        jax.profiler.stop_trace()
        trace = next(Path(trace_dir).rglob("*.trace.json.gz"))
        events = json.load(gzip.open(trace))["traceEvents"]
    totals = collections.Counter()
    for event in events:
        if event.get("ph") == "X" and event["name"] in sources and event["name"] not in containers:
            totals[event["name"]] += event.get("dur", 0) / args.steps / 1e3
    print(f"{args.preset} batch {args.batch}: {sum(totals.values()):.2f} ms per step in compiled ops")
    for name, ms in totals.most_common(args.top):
        print(f"{ms:8.3f} ms  {name:32s} {sources[name][:110]}")


if __name__ == "__main__":
    main()
