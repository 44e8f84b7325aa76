"""Timing: warm-up, then the median of N repeats, each long enough to be measured.

``time_calls(fn)`` calls ``fn()`` once (compilation + one run: ``first_s``; skipped when the caller
passes ``estimate``, the time of a call it already made), ``warmup`` more times (none if that would
take more than a tenth of the budget), estimates one call's time, and picks ``number`` calls per repeat so
that a repeat lasts at least ``min_time`` seconds; ``sync(result)`` (``jax.block_until_ready`` by
default, a CUDA synchronise for PyTorch on a GPU) ends every repeat, so queued asynchronous work is counted. Per-call times of each
repeat are returned with their median and minimum. ``budget`` (seconds) caps a slow measurement:
the repeats are cut (never below one) so one measurement takes about that long at most.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, Callable

import jax


def time_calls(fn: Callable[[], Any], *, sync: Callable[[Any], Any] = jax.block_until_ready, warmup: int = 1,
               repeats: int = 5, min_time: float = 0.05, budget: float = 10.0, max_number: int = 10_000,
               estimate: float | None = None) -> dict:
    first = None
    if estimate is None:
        start = time.perf_counter()
        sync(fn())
        first = estimate = time.perf_counter() - start
    for _ in range(warmup if estimate * warmup < budget / 10 else 0):
        start = time.perf_counter()
        sync(fn())
        estimate = time.perf_counter() - start
    estimate = max(estimate, 1e-7)
    number = max(1, min(max_number, math.ceil(min_time / estimate)))
    repeats = max(1, min(repeats, int(budget / (estimate * number))))
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = None
        for _ in range(number):
            result = fn()
        sync(result)
        runs.append((time.perf_counter() - start) / number)
    return {"median_s": statistics.median(runs), "min_s": min(runs), "runs_s": runs, "number": number,
            "first_s": first}
