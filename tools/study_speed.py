"""A study's training speed per variant, measured one variant after another in one quiet process.

A study's own "train time" column is the time each run spent in its training loop, which other jobs on
the machine (or the study's other worker) inflate unevenly. This times each variant's real train step (the one
``jaxconv train`` runs: ``jaxconv.bench.train.time_train_step``) back to back, so the variants'
times compare like for like: images/s, and the time its full recipe would take at that speed.

    python tools/study_speed.py pixelcnn_variants [--cpu-devices 2] [--repeats 5] [--smoke] [--workdir W]

With ``--workdir`` of the finished study, it also writes the study's table and figure with each run's
train time replaced by its steps at the measured speed: ``W/results_timed.md`` and ``W/results_timed.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from jaxconv import experiments
from jaxconv.train.parallel import create_host_devices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study")
    parser.add_argument("--cpu-devices", type=int, default=0, help="CPU devices (0: one, as jaxconv train)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="the study's smoke sizes")
    parser.add_argument("--workdir", type=Path, help="the finished study: write results_timed.md and .png there")
    args = parser.parse_args()
    variants = experiments.load_study(args.study, smoke=args.smoke)
    first_of_each: dict = {}  # the seeds of a variant share its speed
    for config in variants.values():
        parallel = dataclasses.replace(config.parallel, cpu_devices=args.cpu_devices)
        first_of_each.setdefault(config.name, config.replace(parallel=parallel))
    configs = list(first_of_each.values())
    create_host_devices(configs[0].parallel)  # before JAX's backends start

    from jaxconv.bench.train import time_train_step  # imports JAX

    print("| variant | batch | img/s (median) | full recipe at that speed |")
    print("|---|---|---|---|")
    seconds_per_step = {}
    for config in configs:
        timings, _ = time_train_step(config, {"repeats": args.repeats, "min_time": 2.0, "warmup": 3, "budget": 60.0})
        seconds_per_step[config.name] = timings["median_s"]
        ips = config.data.batch_size / timings["median_s"]
        minutes = config.train.steps * timings["median_s"] / 60
        print(f"| {config.name.rpartition('/')[2]} | {config.data.batch_size} | {ips:.1f} | "
              f"{config.train.steps:,} steps: {minutes:.1f} min |", flush=True)
    if args.workdir:
        rewrite_report(args.workdir, seconds_per_step)


def rewrite_report(workdir: Path, seconds_per_step: dict[str, float]) -> None:
    """The study's table and figure, each run timed as its steps at its variant's measured step time."""
    from jaxconv.study import markdown_table, plot_results

    rows = json.loads((workdir / "results.json").read_text())
    for row in rows:
        row["train_seconds"] = row["steps"] * seconds_per_step[row["group"]]
    (workdir / "results_timed.md").write_text(markdown_table(rows))
    plot_results(rows, workdir / "results_timed.png", time_label="training time at the measured speed (s)")
    print(f"wrote {workdir / 'results_timed.md'} and {workdir / 'results_timed.png'}")


if __name__ == "__main__":
    main()
