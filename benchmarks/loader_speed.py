"""Data loader speed vs a training step's appetite, on ImageNet32-shaped memory-mapped data.

Writes a prepared ImageNet32-shaped directory (random pixels, the real 1,281,167 x 32x32x3 by default)
into a temp dir, opens it as training does (``data.source=imagenet32``: ``np.load(mmap_mode="r")``),
then measures, in the same process:

- ``loader``: ``train_batches`` alone (shuffled indices -> sorted fancy indexing on the memory map
  -> a uint8 batch in RAM), images/s;
- ``loader_to_device``: the same plus ``put_batch`` (host -> device), images/s;
- ``step``: the jitted train step of the experiment's model on one fixed device batch, images/s
  (median over repeats, after compilation and warm-up);
- ``pipeline``: the step fed by the real prefetching loader, images/s.

Target: ``loader / step >= 5``, so the loader never starves the step. The page cache is warm (the
file was just written); a cold first epoch reads from disk at the disk's random-read speed.

    python benchmarks/loader_speed.py [--quick] [--experiment lenet_modern_mnist] [--batch-size 256]
        [--num-images 1281167] [--set section.key=value ...] [--out FILE]

``--quick`` (20,000 images, few repeats) checks that the script works; its numbers are not results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import sys

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's jaxconv, not an installed one

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxconv import experiments  # noqa: E402
from jaxconv.config import apply_overrides  # noqa: E402
from jaxconv.data import prepared  # noqa: E402
from jaxconv.data.pipeline import Prefetcher, train_batches  # noqa: E402
from jaxconv.train.loop import build_run  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SHAPE = (32, 32, 3)


def device_name() -> str:
    device = jax.devices()[0]
    if device.platform == "cpu":
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor())
        return f"cpu: {model} ({len(jax.devices())} XLA device, {os.cpu_count()} cores)"
    return f"{device.platform}: {device.device_kind}"


def write_fake_imagenet32(out: Path, num_train: int, num_val: int) -> None:
    """A prepared imagenet32 directory of random pixels and labels (the format `jaxconv data prepare` writes)."""
    rng = np.random.default_rng(0)

    def chunks(count: int):
        for start in range(0, count, 65536):
            k = min(65536, count - start)
            yield rng.integers(0, 256, (k, *SHAPE), dtype=np.uint8), rng.integers(0, 1000, k)

    with prepared.atomic_dir(out) as tmp:
        splits = {split: prepared.write_split(tmp, split, count, SHAPE, chunks(count), progress=f"writing {split}")
                  for split, count in (("train", num_train), ("val", num_val))}
        prepared.write_manifest(tmp, {"dataset": "imagenet32", "image_shape": list(SHAPE), "num_classes": 1000,
                                      "splits": splits, "note": "random pixels for benchmarks/loader_speed.py"})


def rate(fn, images_per_call: int, calls: int, repeats: int) -> tuple[float, list[float]]:
    """Median images/s of ``calls`` calls of ``fn``, over ``repeats`` repeats."""
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        rates.append(calls * images_per_call / (time.perf_counter() - start))
    return statistics.median(rates), rates


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small, fast run that checks the script works")
    parser.add_argument("--experiment", default="lenet_modern_mnist", help="whose model and optimiser to step")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-images", type=int, default=1_281_167, help="training images to generate")
    parser.add_argument("--batches", type=int, default=100, help="loader batches per repeat")
    parser.add_argument("--steps", type=int, default=20, help="train steps per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/PLATFORM/loader_speed.json")
    args = parser.parse_args()
    if args.quick:
        args.num_images, args.batches, args.steps, args.repeats = 20_000, 10, 2, 2
    return args


def loader_config(args: argparse.Namespace, data_dir: Path):
    """The experiment's config reading ``data_dir`` (1,000 classes unless ``--set`` says otherwise)."""
    classes = [] if any(o.startswith("model.num_classes") for o in args.overrides) else ["model.num_classes=1000"]
    return apply_overrides(experiments.load(args.experiment), [
        "data.source=imagenet32", f"data.path={data_dir}", f"data.batch_size={args.batch_size}",
        "parallel.num_devices=1", *classes, *args.overrides])


def measure_loader(run, args: argparse.Namespace) -> dict:
    """``loader`` and ``loader_to_device``: (median images/s, images/s per repeat)."""
    batches = train_batches(run.train_data, args.batch_size, seed=0, start_step=0)
    next(batches)
    return {"loader": rate(lambda: next(batches), args.batch_size, args.batches, args.repeats),
            "loader_to_device": rate(lambda: jax.block_until_ready(run.par.put_batch(next(batches))),
                                     args.batch_size, args.batches, args.repeats)}


def measure_training(run, args: argparse.Namespace) -> dict:
    """``step`` (the jitted train step on one fixed device batch) and ``pipeline`` (the step fed by the
    prefetching loader): (median images/s, images/s per repeat); ``first_step_s`` (compilation and one
    step) and the last step's ``final_loss``."""
    batch, data = args.batch_size, run.train_data
    state = run.par.place_state(run.init())
    fixed = run.par.put_batch(next(train_batches(data, batch, seed=0, start_step=0)))
    start = time.perf_counter()
    state, metrics = run.train_step(state, fixed)
    jax.block_until_ready(metrics)
    first_step_s = time.perf_counter() - start

    def steps(next_batch) -> None:  # --steps steps, then wait for the last one
        nonlocal state, metrics
        for _ in range(args.steps):
            state, metrics = run.train_step(state, next_batch())
        jax.block_until_ready(state)

    steps(lambda: fixed)  # warm-up
    step = rate(lambda: steps(lambda: fixed), batch * args.steps, 1, args.repeats)
    fed = Prefetcher(train_batches(data, batch, seed=1, start_step=0), run.par.put_batch, run.config.data.prefetch)
    with fed:
        steps(lambda: next(fed))  # warm-up
        pipeline = rate(lambda: steps(lambda: next(fed)), batch * args.steps, 1, args.repeats)
    return {"step": step, "pipeline": pipeline, "first_step_s": first_step_s, "final_loss": float(metrics["loss"])}


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="jaxconv-loader-") as tmp:
        data_dir = Path(tmp) / "imagenet32"
        start = time.perf_counter()
        write_fake_imagenet32(data_dir, args.num_images, max(args.batch_size, args.num_images // 25))
        write_s = time.perf_counter() - start
        start = time.perf_counter()
        run = build_run(loader_config(args, data_dir))  # opens the memory map: how long a run waits for its data
        open_s = time.perf_counter() - start
        rates = {**measure_loader(run, args), **measure_training(run, args)}

    loader, step = rates["loader"][0], rates["step"][0]
    result = {
        "benchmark": "loader_speed",
        "quick": args.quick,
        "device": device_name(),
        "jax": jax.__version__,
        "experiment": args.experiment,
        "overrides": args.overrides,
        "batch_size": args.batch_size,
        "num_images": args.num_images,
        "image_shape": list(SHAPE),
        "write_s": round(write_s, 2),
        "open_s": round(open_s, 3),
        **{f"{name}_images_per_s": round(rates[name][0]) for name in ("loader", "loader_to_device", "step",
                                                                      "pipeline")},
        "first_step_s": round(rates["first_step_s"], 2),
        "loader_over_step": round(loader / step, 2),
        "loader_to_device_over_step": round(rates["loader_to_device"][0] / step, 2),
        "target": "loader_over_step >= 5",
        "meets_target": loader / step >= 5,
        "runs": {name: rates[name][1] for name in ("loader", "loader_to_device", "step", "pipeline")},
        "final_loss": rates["final_loss"],
    }
    out = args.out or RESULTS / jax.devices()[0].platform / "loader_speed.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    print(f"wrote {out}")

if __name__ == "__main__":
    main()
