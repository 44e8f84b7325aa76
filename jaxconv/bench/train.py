"""``jaxconv bench train``: training throughput per preset, dtype and device count, vs PyTorch (LeNet, AlexNet-32).

Each row builds the real training run (``jaxconv.train.loop.build_run``: the jitted, data-parallel
train step of ``jaxconv train``) for a preset at a global batch size split over ``devices`` devices,
and times ``time_calls`` of single steps on one fixed batch (so input loading is not measured):
``compile_s`` is the first step (tracing, compilation, one step), ``images_per_s`` the median over the
repeats. Parameters come from ``jaxconv.bench.models.random_params`` (speed does not depend on them).

Data: the experiments' own (embedded MNIST) for ``lenet5`` (``lenet_mnist``), ``lenet5_modern``,
``pixelcnn_mnist`` and ``gated_pixelcnn_mnist``; synthetic uint8 images of the preset's size otherwise.
Devices: on CPU, fake XLA devices sharing the host's cores (``jaxconv bench`` sets
``--xla_force_host_platform_device_count`` when JAX has not started yet), so images/s across device
counts shows the cost of data parallelism, not a speed-up; on accelerators, real devices.
MFU = images/s * model FLOPs per image (3x the forward convs and matmuls) / the measured matmul peak
of the dtype (times the device count on accelerators).

PyTorch (optional): the modern LeNet-5 and AlexNet-32 (``alexnet32``) written plainly (the same
layers, Adam with the same gradient clipping, the same batch), one process, its default threads;
``vs_torch`` = jaxconv / PyTorch images/s.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv import experiments
from jaxconv.bench.models import forward_flops, preset_image, random_params
from jaxconv.bench.timing import time_calls
from jaxconv.config import (CheckpointConfig, Config, ConvConfig, DataConfig, OptimConfig, ParallelConfig,
                            apply_overrides)
from jaxconv.data.pipeline import train_batches
from jaxconv.data.sources import load_split
from jaxconv.errors import ConfigError
from jaxconv.models import PRESETS, build_run_model
from jaxconv.models.alexnet import IMAGENET_MEAN_RGB, scaled_width
from jaxconv.train.loop import build_run
from jaxconv.train.state import TrainState

EXPERIMENTS = {"lenet5": "lenet_mnist", "lenet5_modern": "lenet_modern_mnist", "pixelcnn_mnist": "pixelcnn_mnist",
               "gated_pixelcnn_mnist": "gated_pixelcnn_mnist"}
# Global batch sizes: (CPU, accelerator).
BATCHES = {"lenet5": ((64, 256), (256, 1024)), "lenet5_modern": ((64, 256), (256, 1024)),
           "pixelcnn_mnist": ((64,), (64, 256)), "gated_pixelcnn_mnist": ((64,), (64, 256)),
           "gated_pixelcnn_cifar": ((32,), (64,)), "pixelcnn_cifar": ((8,), (64,)),
           "gated_pixelcnn_imagenet32": ((8,), (64, 128)), "alexnet32": ((32,), (256,))}
TORCH_PRESETS = ("lenet5_modern", "alexnet32")  # written plainly in PyTorch too: vs_torch
QUICK_ALEXNET_WIDTH = 1 / 16  # --quick: alexnet32's layer widths
CPU_PRESETS = ("lenet5", "lenet5_modern", "alexnet32", "pixelcnn_mnist", "gated_pixelcnn_mnist", "gated_pixelcnn_cifar")
ACCELERATOR_PRESETS = CPU_PRESETS + ("pixelcnn_cifar", "gated_pixelcnn_imagenet32")
TARGET_MFU = 0.4  # Gated PixelCNN ImageNet32, bf16, accelerator


def run_config(name: str, batch: int, devices: int, dtype: str, quick: bool, conv: ConvConfig = ConvConfig()) -> Config:
    model = PRESETS[name]
    if quick and model.family == "alexnet":
        model = dataclasses.replace(model, width=QUICK_ALEXNET_WIDTH)
    elif quick and not name.startswith("lenet"):  # LeNet is tiny already
        model = dataclasses.replace(model, **({"hidden": 4, "num_blocks": 1} if hasattr(model, "hidden") else
                                              {"features": 4, "num_layers": 1}), output_features=8)
    if name in EXPERIMENTS:
        config = experiments.load(EXPERIMENTS[name])
        config = config.replace(model=model)
    else:
        image = preset_image(name, model)
        config = Config(name=f"bench_{name}", model=model,
                        data=DataConfig(source="synthetic", image_shape=image, num_examples=max(2 * batch, 64),
                                        num_classes=max(getattr(model, "num_classes", 0), 10)),
                        optim=OptimConfig(name="adam", learning_rate=1e-3, grad_clip_norm=1.0),
                        checkpoint=CheckpointConfig(keep_best=0))  # the bench saves nothing
    config = config.replace(train=dataclasses.replace(config.train, progress=False),
                            parallel=ParallelConfig(num_devices=devices), conv=conv)
    return apply_overrides(config, [f"data.batch_size={batch}", f"data.eval_batch_size={batch}",
                                    f"train.dtype={dtype}"])


def measure(name: str, batch: int, devices: int, dtype: str, *, quick: bool, timing: dict, peaks: dict,
            flops_per_image: float | None, conv: ConvConfig = ConvConfig()) -> dict:
    config = run_config(name, batch, devices, dtype, quick, conv)
    run = build_run(config)
    model = build_run_model(config)
    params = random_params(model, tuple(run.train_data.images.shape[1:]))
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=run.tx.init(params),
                       rng=jax.random.key_data(jax.random.key(0)))
    holder = {"state": run.par.place_state(state)}
    batch_data = run.par.put_batch(next(train_batches(run.train_data, batch, 0, 0)))

    def step():
        holder["state"], holder["metrics"] = run.train_step(holder["state"], batch_data)
        return run.par.settle(holder["metrics"])

    t = time_calls(step, **timing)
    accelerator = jax.default_backend() != "cpu"
    peak = peaks["matmul_flops_per_s"][dtype] * (devices if accelerator else 1)
    ips = batch / t["median_s"]
    loss = float(holder["metrics"]["loss"])
    return {"preset": name + (" (quick)" if quick else ""), "framework": "jax", "dtype": dtype, "devices": devices,
            "batch": batch, "images_per_s": ips, "step_s": t["median_s"], "compile_s": t["first_s"],
            "runs": [batch / r for r in t["runs_s"]], "flops_per_image": flops_per_image,
            "mfu": ips * flops_per_image / peak if flops_per_image else None,
            "final_loss": loss if np.isfinite(loss) else None, "vs_torch": None}


def _torch_net(name: str, nn, model):
    """The preset's network (``model``: its config, as the jax run uses it) written plainly in PyTorch, as a
    user would, and its input scaling."""
    if name == "lenet5_modern":
        net = nn.Sequential(
            nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
        return net, lambda x: nn.functional.pad(x, (2, 2, 2, 2))  # 28x28 -> LeNet's 32x32
    # alexnet32 (jaxconv.models.alexnet, variant cifar32): 'SAME' convs, overlapping 3x3/2 pools, dropout
    w = lambda c: scaled_width(c, model.width)
    c1, c2, c3, c4, c5, hidden = w(96), w(256), w(384), w(384), w(256), w(2048)
    pool = lambda: nn.MaxPool2d(3, 2)
    net = nn.Sequential(
        nn.Conv2d(3, c1, 5, padding=2), nn.ReLU(), pool(), nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(), pool(),
        nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(), nn.Conv2d(c3, c4, 3, padding=1), nn.ReLU(),
        nn.Conv2d(c4, c5, 3, padding=1), nn.ReLU(), pool(), nn.Flatten(),
        nn.Linear(9 * c5, hidden), nn.ReLU(), nn.Dropout(0.5), nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(hidden, model.num_classes))
    mean = IMAGENET_MEAN_RGB
    return net, lambda x: x - x.new_tensor(mean).view(1, 3, 1, 1) / 255.0


def measure_torch(name: str, model, batch: int, images: np.ndarray, labels: np.ndarray, timing: dict,
                  flops_per_image: float | None, peaks: dict, quick: bool) -> dict | None:
    """PyTorch's training images/s for the same network, optimiser (Adam, clipping as the jax run) and batch."""
    try:
        import torch
        from torch import nn
    except ImportError:
        return None
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    net, prepare = _torch_net(name, nn, model)
    net = net.to(dev).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = prepare(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0).to(dev)
    y = torch.from_numpy(labels.astype(np.int64)).to(dev)
    holder = {}

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        holder["loss"] = loss.detach()
        return loss

    def sync(_):
        if dev == "cuda":
            torch.cuda.synchronize()

    t = time_calls(step, sync=sync, **timing)
    ips = batch / t["median_s"]
    return {"preset": name + (" (quick)" if quick else ""), "framework": "torch", "dtype": "float32", "devices": 1,
            "batch": batch, "images_per_s": ips, "step_s": t["median_s"], "compile_s": t["first_s"],
            "runs": [batch / r for r in t["runs_s"]], "flops_per_image": flops_per_image,
            "mfu": ips * flops_per_image / peaks["matmul_flops_per_s"]["float32"] if flops_per_image else None,
            "final_loss": float(holder["loss"]), "vs_torch": None}


def run(*, quick: bool = False, presets: list[str] | None = None, batch_sizes: list[int] | None = None,
        devices: list[int] | None = None, dtypes: list[str] | None = None, torch: bool = True,
        repeats: int | None = None, peaks: dict, log: Callable[[str], None] = print,
        conv: ConvConfig = ConvConfig()) -> dict:
    """Training throughput per preset, batch, dtype and device count; ``conv``: the layers' conv policy."""
    accelerator = jax.default_backend() != "cpu"
    available = len(jax.local_devices())
    presets = presets or (["lenet5_modern", "alexnet32", "gated_pixelcnn_mnist"] if quick else
                          list(ACCELERATOR_PRESETS if accelerator else CPU_PRESETS))
    for name in presets:
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    if devices is None:
        devices = [1, 2] if quick else ([1, 2, 4, 8] if not accelerator else
                                        [d for d in (1, 2, 4, 8, 16) if d <= available])
    dtypes = dtypes or (["float32"] if quick or not accelerator else ["float32", "bfloat16"])
    timing = ({"repeats": 1, "min_time": 0.0, "warmup": 1, "budget": 2.0} if quick else
              {"repeats": repeats or 5, "min_time": 0.5, "warmup": 3, "budget": 30.0})
    notes = []
    skipped = [d for d in devices if d > available]
    if skipped:
        notes.append(f"device counts {skipped} skipped: only {available} devices")
    rows = []
    for name in presets:
        model_config = run_config(name, 8, 1, "float32", quick).model
        flops = 3.0 * forward_flops(name, model_config)
        for batch in batch_sizes or ([8] if quick else BATCHES.get(name, ((32,), (64,)))[int(accelerator)]):
            for dtype in dtypes:
                # --quick: the first preset on every device count, the others on the first only
                counts = [d for d in devices if d <= available]
                for d in counts[:1] if quick and name != presets[0] else counts:
                    if batch % d:
                        notes.append(f"{name} batch {batch} skipped on {d} devices (does not divide)")
                        continue
                    start = time.perf_counter()
                    row = measure(name, batch, d, dtype, quick=quick, timing=timing, peaks=peaks, flops_per_image=flops,
                                  conv=conv)
                    rows.append(row)
                    log(f"{name} {dtype} batch {batch} on {d} device(s): {row['images_per_s']:.4g} img/s, "
                        f"first step {row['compile_s']:.2f} s, MFU {row['mfu'] or 0:.2%} "
                        f"({time.perf_counter() - start:.0f} s)")
                if name in TORCH_PRESETS and torch and "float32" in dtypes:
                    config = run_config(name, batch, 1, "float32", quick)
                    batch_np = next(train_batches(load_split(config.data, "train"), batch, 0, 0))
                    trow = measure_torch(name, config.model, batch, batch_np["images"], batch_np["labels"], timing,
                                         flops, peaks, quick)
                    if trow is None:
                        notes.append(f"PyTorch not installed: no {name} comparison (pip install 'jaxconv[bench]')")
                        continue
                    rows.append(trow)
                    for r in rows:
                        if (r["preset"] == trow["preset"] and r["framework"] == "jax" and r["batch"] == batch
                                and r["dtype"] == "float32"):
                            r["vs_torch"] = r["images_per_s"] / trow["images_per_s"]
                    log(f"torch {name} batch {batch}: {trow['images_per_s']:.4g} img/s")
    targets = []
    for name in TORCH_PRESETS:
        compared = [r for r in rows if r["preset"].split(" ")[0] == name and r["devices"] == 1 and r["vs_torch"]]
        if compared:
            worst = min(r["vs_torch"] for r in compared)
            targets.append({"name": f"{name} training, jaxconv / PyTorch images/s (1 device, worst batch)",
                            "value": worst, "goal": ">= 1.0", "met": worst >= 1.0})
    if accelerator:
        big = [r for r in rows if r["preset"] == "gated_pixelcnn_imagenet32" and r["dtype"] == "bfloat16"]
        best = max((r["mfu"] for r in big if r["mfu"] is not None), default=None)
        targets.append({"name": "gated_pixelcnn_imagenet32 training MFU, bfloat16 (best batch)", "value": best,
                        "goal": f">= {TARGET_MFU:g}", "met": None if best is None else best >= TARGET_MFU})
    notes += ["batch is the global batch, split over the devices",
              "MFU counts conv and matmul FLOPs only (3x forward); fake CPU devices share one host peak"]
    if quick:
        notes.append("--quick: smoke-size models, one repeat; the timings mean nothing")
    settings = {"presets": presets, "devices": devices, "dtypes": dtypes, "timing": timing, "quick": quick,
                "available_devices": available}
    return {"rows": rows, "settings": settings, "targets": targets, "notes": notes}
