"""Timing: warm-up, then the median of N repeats, each long enough to be measured.

``time_calls(fn)`` calls ``fn()`` once (compilation + one run: ``first_s``; skipped when the caller
passes ``estimate``, the time of a call it already made), ``warmup`` more times (none if that would
take more than a tenth of the budget), estimates one call's time, and picks ``number`` calls per repeat so
that a repeat lasts at least ``min_time`` seconds; ``sync(result)`` (``jax.block_until_ready`` by
default, a CUDA synchronise for PyTorch on a GPU) ends every repeat, so queued asynchronous work is counted. Per-call times of each
repeat are returned with their median and minimum. ``budget`` (seconds) caps a slow measurement:
the repeats are cut (never below one) so one measurement takes about that long at most.

``time_alternately(first, second)`` times two calls in turns, in the same minutes: a shared machine's
load changes within seconds, so a ratio of two separate measurements can be off by more than the
difference it measures; the median of the per-turn ratios is not.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, Callable

import jax


def _call_time(fn: Callable[[], Any], sync: Callable[[Any], Any], number: int = 1) -> float:
    """Seconds per call of ``number`` calls of ``fn``, the last one's result synced."""
    start = time.perf_counter()
    result = None
    for _ in range(number):
        result = fn()
    sync(result)
    return (time.perf_counter() - start) / number


def time_calls(fn: Callable[[], Any], *, sync: Callable[[Any], Any] = jax.block_until_ready, warmup: int = 1,
               repeats: int = 5, min_time: float = 0.05, budget: float = 10.0, max_number: int = 10_000,
               estimate: float | None = None) -> dict:
    first = None
    if estimate is None:
        first = estimate = _call_time(fn, sync)
    for _ in range(warmup if estimate * warmup < budget / 10 else 0):
        estimate = _call_time(fn, sync)
    estimate = max(estimate, 1e-7)
    number = max(1, min(max_number, math.ceil(min_time / estimate)))
    repeats = max(1, min(repeats, int(budget / (estimate * number))))
    runs = [_call_time(fn, sync, number) for _ in range(repeats)]
    return {"median_s": statistics.median(runs), "min_s": min(runs), "runs_s": runs, "number": number,
            "first_s": first}


def time_alternately(first_fn: Callable[[], Any], second_fn: Callable[[], Any], *, repeats: int, budget: float,
                     min_time: float = 0.05, warmup: int = 1, sync_first: Callable[[Any], Any] = jax.block_until_ready,
                     sync_second: Callable[[Any], Any] = jax.block_until_ready) -> tuple[dict, dict, list[float]]:
    """Times two calls alternately: each repeat times enough calls of the first, then of the second, to last
    ``min_time``. Returns each one's timing (as ``time_calls``: median_s, min_s, runs_s, number, first_s)
    and the per-repeat time ratios first / second. ``warmup``: calls of each after the first (compiling)
    one, the last of them the estimate."""
    timings = []
    for fn, sync in ((first_fn, sync_first), (second_fn, sync_second)):
        first = _call_time(fn, sync)  # compiles
        estimate = max([_call_time(fn, sync) for _ in range(max(1, warmup))][-1], 1e-7)
        timings.append({"first_s": first, "number": max(1, math.ceil(min_time / estimate)), "estimate": estimate,
                        "runs_s": []})
    per_repeat = sum(t["estimate"] * t["number"] for t in timings)
    for _ in range(max(1, min(repeats, int(budget / per_repeat)))):
        for fn, sync, t in zip((first_fn, second_fn), (sync_first, sync_second), timings):
            t["runs_s"].append(_call_time(fn, sync, t["number"]))
    ratios = [a / b for a, b in zip(timings[0]["runs_s"], timings[1]["runs_s"])]
    for t in timings:
        del t["estimate"]
        t.update(median_s=statistics.median(t["runs_s"]), min_s=min(t["runs_s"]))
    return timings[0], timings[1], ratios
