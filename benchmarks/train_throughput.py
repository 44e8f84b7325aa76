"""LeNet-5 training throughput: jaxconv's jitted step vs the same network written plainly in PyTorch.

Both train the modern LeNet-5 (ReLU, max pooling, 61,706 params) with Adam on the same embedded-MNIST
batch in the same process; the faithful 1998 network is timed for jaxconv alone. Reported: first-step
time (tracing + compilation + one step), the median images/s over repeats of a fixed number of steps
after warm-up, and the jaxconv/PyTorch ratio.

    python benchmarks/train_throughput.py [--batch-sizes 64,256] [--steps 50] [--repeats 7] [--out FILE]

PyTorch is optional (`pip install -e ".[torch]"`); without it only jaxconv is timed.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import jax
import numpy as np

import experiments
from jaxconv.config import apply_overrides
from jaxconv.data.pipeline import train_batches
from jaxconv.train.loop import build_run

RESULTS = Path(__file__).parent / "results"


def device_name() -> str:
    device = jax.devices()[0]
    if device.platform == "cpu":
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor())
        return f"cpu: {model} ({len(jax.devices())} XLA device, {__import__('os').cpu_count()} cores)"
    return f"{device.platform}: {device.device_kind}"


def time_jaxconv(experiment: str, batch_size: int, steps: int, repeats: int) -> dict:
    cfg = apply_overrides(experiments.load(experiment), [f"data.batch_size={batch_size}", "parallel.num_devices=1"])
    run = build_run(cfg)
    state = run.par.place_state(run.init())
    batch = run.par.put_batch(next(train_batches(run.train_data, batch_size, 0, 0)))
    start = time.perf_counter()
    state, metrics = run.train_step(state, batch)
    jax.block_until_ready(metrics)
    first_step = time.perf_counter() - start
    for _ in range(steps):  # warm-up
        state, metrics = run.train_step(state, batch)
    jax.block_until_ready(state)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = run.train_step(state, batch)
        jax.block_until_ready(state)
        rates.append(steps * batch_size / (time.perf_counter() - start))
    return {"first_step_s": first_step, "images_per_s": statistics.median(rates), "runs": rates,
            "final_loss": float(metrics["loss"])}


def time_torch(batch_size: int, steps: int, repeats: int, images: np.ndarray, labels: np.ndarray) -> dict | None:
    try:
        import torch
        from torch import nn
    except ImportError:
        return None
    torch.manual_seed(0)
    model = nn.Sequential(  # the modern LeNet-5, as a user would write it
        nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    x = torch.nn.functional.pad(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0, (2, 2, 2, 2))
    y = torch.from_numpy(labels).long()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    start = time.perf_counter()
    step()
    first_step = time.perf_counter() - start
    for _ in range(steps):
        step()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            loss = step()
        rates.append(steps * batch_size / (time.perf_counter() - start))
    return {"first_step_s": first_step, "images_per_s": statistics.median(rates), "runs": rates,
            "final_loss": float(loss), "torch": torch.__version__, "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="64,256")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS / jax.default_backend() / "train_throughput.json")
    args = parser.parse_args()
    rows = []
    for batch_size in map(int, args.batch_sizes.split(",")):
        batch = next(train_batches(build_run(experiments.load("lenet_modern_mnist")).train_data, batch_size, 0, 0))
        modern = time_jaxconv("lenet_modern_mnist", batch_size, args.steps, args.repeats)
        faithful = time_jaxconv("lenet_mnist", batch_size, args.steps, args.repeats)
        torch_result = time_torch(batch_size, args.steps, args.repeats, batch["images"], batch["labels"])
        row = {"batch_size": batch_size, "jaxconv_modern": modern, "jaxconv_faithful": faithful, "torch_modern": torch_result}
        if torch_result:
            row["ratio_modern_jaxconv_over_torch"] = modern["images_per_s"] / torch_result["images_per_s"]
        rows.append(row)
        print(f"batch {batch_size}: jaxconv modern {modern['images_per_s']:.0f} img/s "
              f"(first step {modern['first_step_s']:.2f} s), faithful {faithful['images_per_s']:.0f} img/s"
              + (f"; torch {torch_result['images_per_s']:.0f} img/s; ratio {row['ratio_modern_jaxconv_over_torch']:.2f}x"
                 if torch_result else "; torch not installed"))
    result = {"benchmark": "train_throughput", "device": device_name(), "jax": jax.__version__,
              "steps_per_repeat": args.steps, "repeats": args.repeats, "rows": rows,
              "command": "python benchmarks/train_throughput.py"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
