"""Same-minutes A/B of the cached sampler between checkouts: runs ``tools/profile_sampler.py --no-trace
--forward`` (this checkout's copy) with PYTHONPATH set to each tree in turn, ``--rounds`` times alternating,
and prints each tree's cached and forward-pass times (best and median over rounds) and their ratio.

    git worktree add /tmp/sampler_base <commit>
    python tools/sampler_ab.py /tmp/sampler_base . --preset gated_pixelcnn_mnist --batch 64 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).with_name("profile_sampler.py")


def run_once(tree: str, preset: str, batch: int, repeats: int, extra: list[str]) -> tuple[float, float]:
    env = {**os.environ, "PYTHONPATH": str(Path(tree).resolve())}
    out = subprocess.run([sys.executable, str(TOOL), preset, "--batch", str(batch), "--forward", "--no-trace",
                          "--repeats", str(repeats), *extra], env=env, capture_output=True, text=True, check=True).stdout
    cached = float(re.search(r"cached sample ([\d.]+) ms", out).group(1))
    forward = float(re.search(r"forward pass: ([\d.]+) ms", out).group(1))
    return cached, forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs="+", help="checkout roots (PYTHONPATH), e.g. a worktree of the old commit and .")
    parser.add_argument("--preset", default="gated_pixelcnn_mnist")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="timed samples per run (its best is taken)")
    parser.add_argument("--known-rows", type=int, default=0)
    args = parser.parse_args()
    extra = ["--known-rows", str(args.known_rows)] if args.known_rows else []
    times: dict[str, list[tuple[float, float]]] = {t: [] for t in args.trees}
    for k in range(args.rounds):
        for tree in args.trees:
            cached, forward = run_once(tree, args.preset, args.batch, args.repeats, extra)
            times[tree].append((cached, forward))
            print(f"round {k + 1} {tree}: cached {cached:.1f} ms ({args.batch / cached * 1e3:.4g} img/s), "
                  f"forward {forward:.2f} ms, cached / forward {cached / forward:.2f}", flush=True)
    print(f"{args.preset} batch {args.batch}" + (f" known_rows {args.known_rows}" if args.known_rows else "") +
          f", {args.rounds} alternating rounds:")
    for tree, ts in times.items():
        cached, forward = [c for c, _ in ts], [f for _, f in ts]
        ratio = [c / f for c, f in ts]
        print(f"  {tree}: cached best {min(cached):.1f} ms ({args.batch / min(cached) * 1e3:.4g} img/s), median "
              f"{statistics.median(cached):.1f} ms; forward best {min(forward):.2f} ms; cached / forward per round "
              f"median {statistics.median(ratio):.2f}, best-to-best {min(cached) / min(forward):.2f}")


if __name__ == "__main__":
    main()
