"""``jaxconv bench train``: training throughput per preset, dtype and device count, vs PyTorch twins.

Each row builds the real training run (``jaxconv.train.loop.build_run``: the jitted, data-parallel
train step of ``jaxconv train``) for a preset at a global batch size split over ``devices`` devices,
and times ``time_calls`` of single steps on one fixed batch (so input loading is not measured):
``compile_s`` is the first step (tracing, compilation, one step), ``images_per_s`` the median over the
repeats. Parameters come from ``jaxconv.bench.models.random_params`` (speed does not depend on them).

Data: the experiments' own (embedded MNIST) for ``lenet5`` (``lenet_mnist``), ``lenet5_modern``,
``pixelcnn_mnist`` and ``gated_pixelcnn_mnist``, with the preset's network and without the experiment's
augmentation (LeNet-5 modern's affine distortions: the twins train on the batch as it is); synthetic
uint8 images of the preset's size otherwise.
Devices: on CPU, fake XLA devices sharing the host's cores (``jaxconv bench`` sets
``--xla_force_host_platform_device_count`` when JAX has not started yet), so images/s across device
counts shows the cost of data parallelism, not a speed-up; on accelerators, real devices.
MFU = images/s * model FLOPs per image (3x the forward convs and matmuls) / the measured peak
of the dtype (times the device count on accelerators).

PyTorch (optional): the twins of ``jaxconv.bench.twins`` (LeNet-5 faithful and modern, AlexNet-32,
PixelCNN and Gated PixelCNN MNIST), each the preset written plainly in PyTorch from the same model config
(``--quick``'s small configs included): the same layers, loss, optimizer, schedule, gradient clipping
and batch, float32, one process, its default threads. Each twin's parameter count is checked equal to
jaxconv's before it is timed (a mismatch raises ``TwinMismatchError``). ``vs_torch`` = jaxconv /
PyTorch images/s; on the default device count (the targets' row) the two are timed in turns
(``jaxconv.timing.time_alternately``) and ``vs_torch`` is the median of the turns' ratios, as a shared
machine's speed drifts within seconds.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv import experiments
from jaxconv.bench.models import forward_flops, param_count, preset_image, random_params
from jaxconv.config import (CheckpointConfig, Config, ConvConfig, DataConfig, OptimConfig, ParallelConfig,
                            apply_overrides)
from jaxconv.data.pipeline import train_batches
from jaxconv.data.sources import load_split
from jaxconv.errors import ConfigError
from jaxconv.models import PRESETS, build_run_model
from jaxconv.timing import time_alternately, time_calls
from jaxconv.train.loop import build_run
from jaxconv.train.parallel import host_device_count
from jaxconv.train.state import TrainState

EXPERIMENTS = {"lenet5": "lenet_mnist", "lenet5_modern": "lenet_modern_mnist", "pixelcnn_mnist": "pixelcnn_mnist",
               "gated_pixelcnn_mnist": "gated_pixelcnn_mnist"}
# Global batch sizes: (CPU, accelerator).
BATCHES = {"lenet5": ((64, 256), (256, 1024)), "lenet5_modern": ((64, 256), (256, 1024)),
           "pixelcnn_mnist": ((64,), (64, 256)), "gated_pixelcnn_mnist": ((64,), (64, 256)),
           "gated_pixelcnn_cifar": ((32,), (64,)), "pixelcnn_cifar": ((8,), (64,)),
           "gated_pixelcnn_imagenet32": ((8,), (64, 128)), "alexnet32": ((32, 128), (256,))}
# Written plainly in PyTorch too (jaxconv.bench.twins.TWINS): vs_torch.
TORCH_PRESETS = ("lenet5", "lenet5_modern", "alexnet32", "pixelcnn_mnist", "gated_pixelcnn_mnist")
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
        # The preset's network, and no augmentation: the PyTorch twins train on the batch as it is.
        plain = {f.name: f.default for f in dataclasses.fields(DataConfig) if f.name.startswith("augment_")}
        config = config.replace(model=model, data=dataclasses.replace(config.data, **plain))
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


def train_step_call(config: Config) -> tuple[Callable[[], Any], Callable[[], float]]:
    """The run's train step on one fixed batch from random parameters, as a call that returns when the step
    is done (for ``time_calls``), and the last step's loss."""
    run = build_run(config)
    model = build_run_model(config)
    params = random_params(model, tuple(run.train_data.images.shape[1:]))
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=run.tx.init(params),
                       rng=jax.random.key_data(jax.random.key(0)))
    holder = {"state": run.par.place_state(state)}
    batch_data = run.par.put_batch(next(train_batches(run.train_data, config.data.batch_size, 0, 0)))

    def step():
        holder["state"], holder["metrics"] = run.train_step(holder["state"], batch_data)
        return run.par.settle(holder["metrics"])

    return step, lambda: float(holder["metrics"]["loss"])


def time_train_step(config: Config, timing: dict) -> tuple[dict, float]:
    """``time_calls``' timings of the run's train step (``train_step_call``) and the last step's loss."""
    step, loss = train_step_call(config)
    timings = time_calls(step, **timing)
    return timings, loss()


def measure(name: str, batch: int, devices: int, dtype: str, *, quick: bool, timing: dict, peaks: dict,
            flops_per_image: float | None, conv: ConvConfig = ConvConfig()) -> dict:
    t, loss = time_train_step(run_config(name, batch, devices, dtype, quick, conv), timing)
    return _row(name, "jax", dtype, devices, batch, t, flops_per_image, peaks, loss, quick)


def _row(name: str, framework: str, dtype: str, devices: int, batch: int, t: dict, flops_per_image: float | None,
         peaks: dict, loss: float, quick: bool) -> dict:
    accelerator = framework == "jax" and jax.default_backend() != "cpu"
    peak = peaks["matmul_flops_per_s"][dtype] * (devices if accelerator else 1) if flops_per_image else None
    ips = batch / t["median_s"]
    return {"preset": name + (" (quick)" if quick else ""), "framework": framework, "dtype": dtype, "devices": devices,
            "batch": batch, "images_per_s": ips, "step_s": t["median_s"], "compile_s": t["first_s"],
            "runs": [batch / r for r in t["runs_s"]], "flops_per_image": flops_per_image,
            "mfu": ips * flops_per_image / peak if flops_per_image else None,
            "final_loss": loss if np.isfinite(loss) else None, "vs_torch": None}


def torch_step_call(name: str, config: Config, images: np.ndarray, labels: np.ndarray):
    """The preset's PyTorch twin (``jaxconv.bench.twins``) built from the run's config, as ``train_step_call``:
    (step, sync for ``time_calls``, last loss); the same network (its parameter count checked equal to
    jaxconv's first: ``TwinMismatchError`` otherwise), loss, optimizer, schedule, gradient clipping and
    batch. None without PyTorch."""
    try:
        import torch

        from jaxconv.bench import twins
    except ImportError:
        return None
    twins.check_param_count(name, config.model)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    twin = twins.build(name, config.model)
    net = twin.net.to(dev).train()
    opt, schedule = twins.optimizer(net.parameters(), config.optim, config.schedule, config.train.steps)
    clip = config.optim.grad_clip_norm
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous().to(dev)  # uint8 NCHW
    y = torch.from_numpy(labels.astype(np.int64)).to(dev)
    holder = {}

    def step():
        opt.zero_grad(set_to_none=True)
        loss = twin.loss(x, y)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        opt.step()
        if schedule is not None:
            schedule.step()
        holder["loss"] = loss.detach()
        return loss

    def sync(_):
        if dev == "cuda":
            torch.cuda.synchronize()

    return step, sync, lambda: float(holder["loss"])


def measure_torch(name: str, config: Config, batch: int, images: np.ndarray, labels: np.ndarray, timing: dict,
                  flops_per_image: float | None, peaks: dict, quick: bool) -> dict | None:
    """PyTorch's training images/s for the preset's twin (``torch_step_call``). None without PyTorch."""
    call = torch_step_call(name, config, images, labels)
    if call is None:
        return None
    step, sync, loss = call
    t = time_calls(step, sync=sync, **timing)
    return _row(name, "torch", "float32", 1, batch, t, flops_per_image, peaks, loss(), quick)


def _twin_inputs(name: str, batch: int, quick: bool) -> tuple[Config, np.ndarray, np.ndarray]:
    """A twin's config (one device, float32) and the first train batch's images and labels."""
    config = run_config(name, batch, 1, "float32", quick)
    batch_np = next(train_batches(load_split(config.data, "train"), batch, 0, 0))
    return config, batch_np["images"], batch_np["labels"]


def measure_pair(name: str, batch: int, devices: int, *, quick: bool, timing: dict, peaks: dict,
                 flops_per_image: float | None, conv: ConvConfig = ConvConfig()) -> tuple[dict, dict | None]:
    """jaxconv's float32 row and its PyTorch twin's, timed alternately (``time_alternately``): the jax row's
    ``vs_torch`` is the median of the turns' ratios. (jax row, None) without PyTorch."""
    config = run_config(name, batch, devices, "float32", quick, conv)
    call = torch_step_call(name, *_twin_inputs(name, batch, quick))
    if call is None:
        return measure(name, batch, devices, "float32", quick=quick, timing=timing, peaks=peaks,
                       flops_per_image=flops_per_image, conv=conv), None
    torch_step, torch_sync, torch_loss = call
    jax_step, jax_loss = train_step_call(config)
    turns = timing["repeats"] if quick else max(timing["repeats"], 9)  # more, shorter turns: a median of ratios
    tj, tt, ratios = time_alternately(jax_step, torch_step, sync_second=torch_sync, repeats=turns,
                                      budget=2 * timing["budget"], min_time=timing["min_time"] / 2,
                                      warmup=timing["warmup"])
    row = _row(name, "jax", "float32", devices, batch, tj, flops_per_image, peaks, jax_loss(), quick)
    row["vs_torch"] = statistics.median(1.0 / r for r in ratios)  # torch time / jax time = jax / torch img/s
    return row, _row(name, "torch", "float32", 1, batch, tt, flops_per_image, peaks, torch_loss(), quick)


# The devices the targets compare: jaxconv train's CPU default, and one accelerator (the single-device row).
DEFAULT_DEVICES = host_device_count(0)


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
                # --quick: the first preset on every device count, the others on the default count only
                counts = [d for d in devices if d <= available]
                compare = name in TORCH_PRESETS and torch and dtype == "float32"
                trow = None
                for d in [DEFAULT_DEVICES] if quick and name != presets[0] else counts:
                    if batch % d:
                        notes.append(f"{name} batch {batch} skipped on {d} devices (does not divide)")
                        continue
                    start = time.perf_counter()
                    if compare and d == DEFAULT_DEVICES:  # the target's ratio: timed in turns with the twin
                        row, trow = measure_pair(name, batch, d, quick=quick, timing=timing, peaks=peaks,
                                                 flops_per_image=flops, conv=conv)
                        note = (f"vs PyTorch on {d} device(s): jaxconv and the twin timed in turns, the median of "
                                "the turns' ratios; on other device counts: against the twin's median")
                        if trow is not None and note not in notes:
                            notes.append(note)
                    else:
                        row = measure(name, batch, d, dtype, quick=quick, timing=timing, peaks=peaks,
                                      flops_per_image=flops, conv=conv)
                    rows.append(row)
                    log(f"{name} {dtype} batch {batch} on {d} device(s): {row['images_per_s']:.4g} img/s, "
                        f"first step {row['compile_s']:.2f} s, MFU {row['mfu'] or 0:.2%} "
                        f"({time.perf_counter() - start:.0f} s)")
                if compare and trow is None:  # no default-device row (or no PyTorch): the twin alone
                    config, images, labels = _twin_inputs(name, batch, quick)
                    trow = measure_torch(name, config, batch, images, labels, timing, flops, peaks, quick)
                if compare and trow is None:
                    note = f"PyTorch not installed: no {name} comparison (pip install 'jaxconv[bench]')"
                    if note not in notes:
                        notes.append(note)
                elif compare:
                    rows.append(trow)
                    note = f"PyTorch twin of {name}: {param_count(name, model_config):,} parameters, as jaxconv's"
                    if note not in notes:
                        notes.append(note)
                    for r in rows:
                        if (r["preset"] == trow["preset"] and r["framework"] == "jax" and r["batch"] == batch
                                and r["dtype"] == "float32" and r["vs_torch"] is None):
                            r["vs_torch"] = r["images_per_s"] / trow["images_per_s"]
                    log(f"torch {name} batch {batch}: {trow['images_per_s']:.4g} img/s")
    targets = []
    for name in TORCH_PRESETS:
        compared = [r for r in rows if r["preset"].split(" ")[0] == name and r["vs_torch"]
                    and r["devices"] == DEFAULT_DEVICES]
        if compared:
            worst = min(r["vs_torch"] for r in compared)
            targets.append({"name": f"{name} training, jaxconv / PyTorch images/s (default devices, worst batch)",
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
