"""jaxconv's benchmark suite: ``jaxconv bench conv|sample|train|all|report``.

- ``conv``: every conv layer shape of jaxconv's models (and ``--shape``), implementation by
  implementation (XLA, split, im2col, taps, FFT, masked vs cropped, PyTorch, and the user's own kernels,
  ``--impl module:function``), agreement checked before timing (``jaxconv.bench.conv``);
- ``sample``: naive vs cached PixelCNN sampling (``jaxconv.bench.sample``);
- ``train``: training throughput and MFU per preset and device count, vs plain-PyTorch twins of LeNet-5,
  AlexNet-32 and the MNIST PixelCNNs (``jaxconv.bench.train``, ``jaxconv.bench.twins``);
- ``all``: the three, sharing one peak measurement;
- ``report DIR``: rebuild the markdown and plots of a results directory and print the README table.

Each run measures the device's peaks first (``jaxconv.bench.device``) and writes NAME.json (schema:
``jaxconv.bench.results``), NAME.md and plots to ``bench-results/<device>/`` in the current directory
(or ``--out``; ``--out benchmarks/results/<device>`` updates the committed results).
``--quick`` runs tiny sizes (tests, CI): it checks that everything runs, its timings mean nothing.
"""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path
from typing import Callable

from jaxconv.bench.results import BENCHMARKS
from jaxconv.config import ConvConfig


@dataclasses.dataclass
class Options:
    what: str  # conv | sample | train | all
    quick: bool = False
    out: Path | None = None
    shapes: list[str] = dataclasses.field(default_factory=list)
    sets: list[str] | None = None
    batch_sizes: list[int] | None = None
    dtypes: list[str] | None = None
    modes: list[str] | None = None
    layouts: list[str] | None = None
    impls: list[str] | None = None
    # conv: the user's kernels, "module:function" texts (``--impl``; a module name or a .py file) or
    # ``conv_runners.UserKernel``s; loaded before anything is measured
    user_kernels: list = dataclasses.field(default_factory=list)
    presets: list[str] | None = None
    devices: list[int] | None = None
    naive_variables: int | None = None
    repeats: int | None = None
    torch: bool = True
    plots: bool = True
    command: str = ""
    conv: ConvConfig = ConvConfig()  # the layers' conv policy (conv and train benchmarks)


def run(options: Options, log: Callable[[str], None] = print) -> list[Path]:
    """Runs the benchmark(s); returns the files written."""
    from jaxconv.errors import ConfigError

    if options.what not in (*BENCHMARKS, "all"):
        raise ConfigError(f"unknown benchmark {options.what!r}; choose conv, sample, train, all or report")
    if options.what in ("train", "all"):
        from jaxconv.train.parallel import request_host_devices

        request_host_devices(max(options.devices or [8]))
    from jaxconv.bench import conv_shapes

    for text in options.shapes:  # bad shapes fail before anything is measured
        conv_shapes.parse_shape(text)
    user_kernels = []
    if options.user_kernels:  # so do bad kernels
        from jaxconv.bench import conv_runners

        if options.what not in ("conv", "all"):
            raise ConfigError(f"--impl is for jaxconv bench conv (or all), not {options.what}")
        user_kernels = [k if isinstance(k, conv_runners.UserKernel) else conv_runners.load_kernel(k)
                        for k in options.user_kernels]
        conv_runners.check_kernel_names(user_kernels)

    import jax

    from jaxconv.bench import conv, conv_table, device, report, results, sample, train
    from jaxconv.models.conv_policy import ConvPolicy

    policy = ConvPolicy.from_config(options.conv)
    names = BENCHMARKS if options.what == "all" else (options.what,)
    env = {**device.environment(torch=options.torch), "conv": dataclasses.asdict(options.conv)}
    name = device.results_name(jax.device_count() if jax.default_backend() != "cpu" else None)
    out = Path(options.out) if options.out else Path("bench-results") / name
    command = options.command or "jaxconv bench " + options.what + (" --quick" if options.quick else "")
    log(f"device {name} ({env['device_kind']}, {env['device_count']} devices); results -> {out}")
    peaks = device.measure_peaks(quick=options.quick)
    mm = peaks["matmul_flops_per_s"]
    log(f"peaks: {mm['float32'] / 1e9:.1f} GFLOP/s float32, {mm['bfloat16'] / 1e9:.1f} GFLOP/s bfloat16 "
        f"(XLA's matmul, or oneDNN's conv where faster), "
        f"copy {peaks['memory_bytes_per_s'] / 1e9:.1f} GB/s")
    written = []
    for bench in names:
        log(f"== {bench}")
        if bench == "conv":
            result = conv.run(quick=options.quick, sets=options.sets, user_shapes=options.shapes,
                              dtypes=options.dtypes or conv_shapes.DTYPES, modes=options.modes or conv_shapes.MODES,
                              layouts=options.layouts or ("NHWC", "NCHW"), impls=options.impls,
                              batch_sizes=options.batch_sizes, torch=options.torch, repeats=options.repeats,
                              peaks=peaks, log=log, policy=policy, user_kernels=user_kernels)
        elif bench == "sample":
            result = sample.run(quick=options.quick, presets=options.presets if options.what == "sample" else None,
                                batch_sizes=options.batch_sizes if options.what == "sample" else None,
                                naive_variables=options.naive_variables, repeats=options.repeats, peaks=peaks, log=log,
                                policy=policy)
        else:
            result = train.run(quick=options.quick, presets=options.presets if options.what == "train" else None,
                               batch_sizes=options.batch_sizes if options.what == "train" else None,
                               devices=options.devices, dtypes=options.dtypes if options.what == "train" else None,
                               torch=options.torch, repeats=options.repeats, peaks=peaks, log=log, conv=options.conv)
        doc = results.document(bench, command=command, quick=options.quick, device=name, environment=env,
                               peaks=peaks, settings=result["settings"], rows=result["rows"],
                               targets=result["targets"], notes=result["notes"])
        path = results.write(doc, out)
        files = [path, *report.render(results.load(path), out, plots=options.plots)]
        if bench == "conv":
            files.append(conv_table.write_table(result["table"], out))
        for t in doc["targets"]:
            value = "-" if t["value"] is None else f"{t['value']:.3g}"
            log(f"target: {t['name']}: {value} (goal {t['goal']}, met: {t['met']})")
        written += files
    for path in written:
        log(f"wrote {path}")
    return written


def command_line(argv: list[str]) -> str:
    return "jaxconv " + " ".join(shlex.quote(a) for a in argv)
