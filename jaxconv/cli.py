"""``jaxconv train|eval|sample|data|bench|list|plot|viz``: parsing only; each command calls one library function."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any

from jaxconv import hostmem, paths, stopping
from jaxconv.errors import ConfigError, JaxconvError


DEBUG_HELP = "show the traceback of an error (the exit code stays the documented one)"


def _add_debug_everywhere(parser: argparse.ArgumentParser) -> None:
    """``--debug`` also after the subcommand (``jaxconv train X --debug``), at every level; SUPPRESS keeps a
    subcommand from resetting the ``--debug`` given before it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in {id(p): p for p in action.choices.values()}.values():
                sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
                _add_debug_everywhere(sub)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxconv", description="Train, evaluate and sample convolutional models.")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train an experiment (resumes from --workdir)", epilog=_config_epilog(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_train_args(train, with_name=True)
    _add_dry_run(train)
    _add_config_parser(commands)

    evaluate = commands.add_parser("eval", help="evaluate a run's checkpoint and print its metrics")
    evaluate.add_argument("workdir", type=Path)
    evaluate.add_argument("--checkpoint", default="best", help="best, latest, or a step number")
    evaluate.add_argument("--split", default="val", choices=("val", "train"))

    _add_sample_parser(commands)
    _add_data_parser(commands)
    _add_bench_parser(commands)
    commands.add_parser("list", help="list experiments and model presets")

    plot = commands.add_parser("plot", help="training/validation curves of one or more runs (PNG and SVG)")
    plot.add_argument("workdirs", type=Path, nargs="+")
    plot.add_argument("--out", type=Path, default=Path("curves.png"), help="written with .png and .svg suffixes")

    _add_viz_parser(commands)
    _add_debug_everywhere(parser)
    return parser


def _add_sample_parser(commands) -> None:
    sample = commands.add_parser("sample", help="draw images from a PixelCNN run and write a PNG grid")
    sample.add_argument("workdir", type=Path)
    sample.add_argument("--num", type=int, default=16, help="images, 1..10,000 (default 16)")
    sample.add_argument("--seed", type=int, default=0, help="0 <= seed < 2**32 (default 0)")
    sample.add_argument("--temperature", type=float, default=1.0,
                        help="divides the log-probabilities; finite, in [1e-30, 1e30] (default 1)")
    sample.add_argument("--sampler", default="cached", help="cached (fast) or naive; same samples for a seed")
    sample.add_argument("--draw", default="gumbel",
                        help="gumbel (any head) or direct (a logistic mixture at temperature 1, by the inverse CDF: "
                             "15x less work per variable; naive and cached then differ more often, at float ties)")
    sample.add_argument("--complete", type=int, default=0, metavar="ROWS",
                        help="complete NUM validation images, spread evenly over the split, from their top ROWS rows")
    sample.add_argument("--label", type=int, help="class to condition on (default: image k is of class "
                        "k %% num_classes, a column per class; with --complete, each image's own class)")
    sample.add_argument("--checkpoint", default="best", help="best, latest, or a step number")
    sample.add_argument("--out", type=Path, help="default: WORKDIR/samples.png")


def _add_data_parser(commands) -> None:
    data = commands.add_parser("data", help="prepare datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    prepare = data_commands.add_parser(
        "prepare", help="convert the official ImageNet32/64 npz files into a memory-mappable directory")
    prepare.add_argument("dataset", choices=("imagenet32", "imagenet64"))
    prepare.add_argument("--src", type=Path, required=True,
                         help="directory with train_data_batch_1..10.npz and val_data.npz")
    prepare.add_argument("--out", type=Path, required=True, help="new directory to write (then: data.path=OUT)")


def _add_bench_parser(commands) -> None:
    from jaxconv.bench.results import BENCHMARKS

    bench = commands.add_parser(
        "bench", help="benchmarks: conv layers, sampling, training (results in bench-results/<device>/)",
        description="Benchmark suite. conv: every conv layer shape of jaxconv's models, implementation by "
                    "implementation, vs PyTorch; sample: naive vs cached PixelCNN sampling; train: training "
                    "throughput and MFU; all: the three; report DIR: rebuild a results directory's markdown and "
                    "plots and print the README table.")
    bench.add_argument("what", choices=(*BENCHMARKS, "all", "report"))
    bench.add_argument("dir", nargs="?", type=Path, help="report: the results directory")
    bench.add_argument("--quick", action="store_true", help="tiny sizes (tests, CI): checks everything runs")
    bench.add_argument("--out", type=Path, help="results directory (default: bench-results/<device> in the current "
                       "directory; --out benchmarks/results/<device> updates the committed results)")
    bench.add_argument("--shape", dest="shapes", action="append", default=[], metavar="N,H,W,Cin,Cout,K,stride,dil",
                       help="conv: a layer shape (optionally ,groups; padded dil*(K-1)//2); repeatable; "
                       "without --sets only these shapes run")
    bench.add_argument("--sets", type=_names, help="conv: shape sets, comma-separated, or 'none' "
                       "(lenet, alexnet224, alexnet32, pixelcnn_mnist, pixelcnn_cifar, pixelcnn_paper; default all)")
    bench.add_argument("--impls", type=_names, help="conv: only these variants (xla, masked, cropped, split, im2col, "
                       "taps, fft, native, onednn, torch)")
    bench.add_argument("--impl", dest="user_kernels", action="append", default=[], metavar="MODULE:FUNCTION",
                       help="conv: your own conv kernel in the sweep, checked against the reference before it is "
                       "timed: a module name or a .py file, then a function fn(x, kernel, strides, padding, "
                       "dilation, groups) -> y (NHWC/HWIO, like jaxconv.models.conv_impls); repeatable; "
                       "see docs/benchmarks.md")
    bench.add_argument("--dtypes", type=_names, help="float32,bfloat16 (default: both for conv; train: float32 "
                       "on CPU, both on accelerators)")
    bench.add_argument("--modes", type=_names, help="conv: forward, forward_backward, input_grad, kernel_grad (the "
                       "last two: one backward pass alone); comma-separated (default forward,forward_backward)")
    bench.add_argument("--layouts", type=_names, help="conv: NHWC,NCHW (default both)")
    bench.add_argument("--batch-sizes", type=_ints, help="override the batch sizes (conv, sample, train)")
    bench.add_argument("--presets", type=_names, help="sample/train: model presets (see `jaxconv list`)")
    bench.add_argument("--devices", type=_ints, help="train: device counts (default 1,2,4,8 fake devices on CPU)")
    bench.add_argument("--naive-variables", type=int, help="sample: variables timed of the naive sampler (default 8)")
    bench.add_argument("--repeats", type=int, help="timing repeats (median reported)")
    bench.add_argument("--no-torch", dest="torch", action="store_false", help="skip the PyTorch comparison")
    bench.add_argument("--no-plots", dest="plots", action="store_false", help="skip the PNG plots")
    bench.add_argument("--readme", type=Path, help="report: also write the table into this README's bench markers")


def _add_viz_parser(commands) -> None:
    viz = commands.add_parser("viz", help="pictures that explain the models").add_subparsers(dest="picture", required=True)
    deps = viz.add_parser("deps", help="which earlier pixels one output pixel sees (blind spot of PixelCNN)")
    deps.add_argument("--presets", default="pixelcnn_mnist,gated_pixelcnn_mnist", help="comma-separated presets")
    deps.add_argument("--size", type=int, default=12, help="image height and width")
    deps.add_argument("--position", help="ROW,COL of the output pixel (default: the centre)")
    deps.add_argument("--out", type=Path, default=Path("dependency_map.png"))
    kernels = viz.add_parser("kernels", help="hand-made edge and blur kernels on an MNIST digit, then pooling")
    kernels.add_argument("--index", type=int, default=0, help="validation image")
    kernels.add_argument("--out", type=Path, default=Path("kernels.png"))
    filters = viz.add_parser("filters", help="first-layer convolution filters of a trained run")
    filters.add_argument("workdir", type=Path)
    filters.add_argument("--checkpoint", default="best", help="best, latest, or a step number")
    filters.add_argument("--out", type=Path,
                          help="default: filters.png inside the run directory (WORKDIR/filters.png)")
    features = viz.add_parser("features", help="feature maps of a validation image through chosen layers")
    features.add_argument("workdir", type=Path)
    features.add_argument("--layers", default="", help="comma-separated layer names (default: every conv layer)")
    features.add_argument("--index", type=int, default=0, help="validation image")
    features.add_argument("--checkpoint", default="best", help="best, latest, or a step number")
    features.add_argument("--out", type=Path,
                          help="default: features.png inside the run directory (WORKDIR/features.png)")


def _names(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    return [] if names == ["none"] else names


def _ints(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _add_train_args(parser: argparse.ArgumentParser, with_name: bool, with_workdir: bool = True) -> None:
    if with_name:
        parser.add_argument("name", help="experiment name (see `jaxconv list`), or your own experiment: a file "
                            "(my_exp.py) or an importable module (myexp.my_exp) defining CONFIG and optionally SMOKE")
    if with_workdir:
        parser.add_argument("--workdir", type=Path, help="default: runs/NAME (runs/NAME-smoke with --smoke); for a "
                            "file or module experiment, runs/<its CONFIG.name> (-smoke)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value (repeatable), e.g. --set optim.learning_rate=0.01")
    parser.add_argument("--smoke", action="store_true", help="the experiment's tiny variant")


def _add_dry_run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true",
                        help="check the config and the data (load them, run the task's checks), then exit; "
                             "writes nothing")


# The conv policy's environment variables: --set overrides applied before the command line's own.
CONV_ENVIRONMENT = {"JAXCONV_CONV_IMPL": "conv.impl", "JAXCONV_CONV_TABLE": "conv.table",
                    "JAXCONV_CONV_RULES": "conv.rules", "JAXCONV_CONV_AUTOTUNE": "conv.autotune",
                    "JAXCONV_CONV_XLA_CPU": "conv.xla_cpu"}


def _conv_overrides() -> list[str]:
    return [f"{key}={os.environ[name]}" for name, key in CONV_ENVIRONMENT.items() if os.environ.get(name)]


def _effective_configs(args: argparse.Namespace) -> dict[str, Any]:
    """The experiment's config with the conv environment and ``--set`` applied, as {"": config}; for a
    study, {variant: config}."""
    from jaxconv import experiments
    from jaxconv.config import apply_overrides

    overrides = [*_conv_overrides(), *args.overrides]
    if experiments.is_study(args.name):
        return {key: apply_overrides(config, overrides)
                for key, config in experiments.load_study(args.name, args.smoke).items()}
    return {"": apply_overrides(experiments.load(args.name, args.smoke), overrides)}


def cmd_train(args: argparse.Namespace) -> int:
    from jaxconv import experiments

    # The command line is checked before jax is imported: a bad name or --set fails in a fraction of the
    # time (the experiment's module still imports the models, and with them jax and flax, for its presets).
    workdir = args.workdir or Path("runs") / experiments.run_name(args.name, args.smoke)
    configs = _effective_configs(args)
    if args.dry_run:
        return _dry_run(configs, workdir)
    if "" not in configs:
        return _train_study(args, workdir, configs)
    config = configs[""]
    from jaxconv.train.loop import train

    result = train(config, workdir, stop=args.stop)
    if "val" in result:
        print(_table(f"{args.name}: step {result['step']}, validation{_fold_note(config, 'val')}", result["val"]))
    print(_train_summary(config, workdir, result))
    if result.get("signal") == "SIGINT":
        print(f"jaxconv: interrupted (SIGINT): saved step {result['step']}; the same command resumes it",
              file=sys.stderr)
        return stopping.EXIT_CODES[signal.SIGINT]
    return 0


def _train_summary(config, workdir: Path, result: dict) -> str:
    """The end of a run: wall time, best checkpoint, where things are, and the commands to run next."""
    import shlex

    from jaxconv.models.pixelcnn import AUTOREGRESSIVE_CONFIGS

    lines = []
    if "wall_s" in result and not result.get("finished"):
        wall = round(result["wall_s"])
        lines.append(f"wall time: {wall // 3600}:{wall // 60 % 60:02d}:{wall % 60:02d} ({result['wall_s']:.1f} s)")
    if "devices" in result:
        lines.append(f"devices: {result['devices']}")
    if "best_step" in result:
        lines.append(f"best: step {result['best_step']}, val {result['best_metric']} {result['best_value']:.6g}")
    if "checkpoints" in result:
        steps = ", ".join(map(str, result.get("checkpoint_steps", [])))
        lines.append(f"checkpoints: {result['checkpoints']}" + (f" (steps {steps})" if steps else ""))
    lines.append(f"workdir: {workdir}")
    if not result.get("terminated"):
        run = shlex.quote(str(workdir))
        lines += ["next:", f"  jaxconv eval {run}"]
        if isinstance(config.model, AUTOREGRESSIVE_CONFIGS):
            lines.append(f"  jaxconv sample {run}")
        lines += [f"  jaxconv plot {run}", f"  tensorboard --logdir {run}"]
    return "\n".join(lines)


def _train_study(args: argparse.Namespace, workdir: Path, variants: dict[str, Any]) -> int:
    from jaxconv.study import markdown_table, run_study

    rows = run_study(variants, workdir, args.stop, log=lambda line: print(f"study: {line}", flush=True))
    if args.stop and args.stop.is_set():
        print(f"jaxconv: stopped after {len(rows)} of {len(variants)} runs; the same command resumes it",
              file=sys.stderr)
        return stopping.EXIT_CODES[signal.SIGINT] if args.stop.signal == signal.SIGINT else 0
    if len(rows) < len(variants):
        print(f"study: {len(rows)} of {len(variants)} runs finished; the others are training in other processes, "
              "and the last of them to finish writes the report (or run the same command again)", flush=True)
        return 0
    print(markdown_table(rows), end="")
    print(f"workdir: {workdir} (results.md, results.png, samples.png)")
    return 0


def _add_config_parser(commands) -> None:
    config = commands.add_parser(
        "config", help="print an experiment's effective config: every key, its value and its meaning",
        description="Prints the config that `jaxconv train NAME` (with the same --smoke and --set options) would "
                    "run, one `section.key = value  # meaning` line per key; values are written as --set takes them.")
    _add_train_args(config, with_name=True, with_workdir=False)


def _config_epilog() -> str:
    """train --help's list of config sections and keys, from the config dataclasses' field meanings."""
    import dataclasses
    import textwrap

    from jaxconv import config as config_lib

    lines = ["config keys (--set SECTION.KEY=VALUE; `jaxconv config NAME` prints an experiment's values):",
             "  model.KEY".ljust(28) + "the keys of the experiment's model family (variant, num_classes, ...)"]
    for section in dataclasses.fields(config_lib.Config):
        if section.name not in config_lib.SECTIONS or section.name == "model":
            continue
        name, cls = section.name, type(section.default)
        for field in dataclasses.fields(cls):
            lines.extend(textwrap.wrap(config_lib.meaning(cls, field.name), 118, initial_indent=f"  {name}.{field.name}"
                                       .ljust(27) + " ", subsequent_indent=" " * 28, break_on_hyphens=False))
    return "\n".join(lines)


def _set_text(value) -> str:
    """A config value as `--set` takes it."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(map(str, value)) if value else "()"
    if value is None:
        return "none"
    return '""' if value == "" else str(value)


def cmd_config(args: argparse.Namespace) -> int:
    from jaxconv.config import describe

    for key, config in _effective_configs(args).items():
        title = f"variant {key}" if key else ""
        rows = [(f"{key} = {_set_text(value)}", meaning) for key, value, meaning in describe(config)]
        width = max(len(left) for left, _ in rows)
        print(f"# {args.name}{' (smoke)' if args.smoke else ''}{': ' + title if title else ''}")
        for left, meaning in rows:
            print(f"{left.ljust(width)}  # {meaning}")
    return 0


def _dry_run(configs: dict[str, Any], workdir: Path) -> int:
    """train --dry-run: the config (and every study variant) checked, its data loaded and checked by the
    task, its batch split over the devices training would create, and a run already in the workdir checked
    to be continuable; nothing compiled or written."""
    from jaxconv.train import workdir as workdir_lib
    from jaxconv.train.loop import build_run, devices_text
    from jaxconv.train.parallel import create_host_devices

    for key, config in configs.items():
        path = workdir / key if key else workdir
        create_host_devices(config.parallel)  # as training does, before the backend starts
        run = build_run(config)  # loads the data and runs the task's checks; jit compiles lazily
        previous = workdir_lib.previous_config(path) if path.is_dir() else None
        if previous is not None:
            workdir_lib.check_restart(previous, config, path)
        shape = "x".join(map(str, run.train_data.images.shape[1:]))
        print(f"{config.name}: config and data are valid ({len(run.train_data):,} train, {len(run.val_data):,} "
              f"validation images of {shape}); {'resumes' if previous else 'would train'} in {path}; "
              f"devices: {devices_text(run)}")
    print("dry run: nothing written")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from jaxconv.train import workdir as workdir_lib
    from jaxconv.train.loop import evaluate_workdir

    step, metrics = evaluate_workdir(args.workdir, args.checkpoint, args.split)
    config = workdir_lib.previous_config(Path(args.workdir))
    print(_table(f"{args.workdir}: checkpoint {step} ({args.checkpoint}), split {args.split}"
                 f"{_fold_note(config, args.split)}", metrics))
    return 0


def _fold_note(config, split: str) -> str:
    """What a cross-validation run's split is: its metrics must not pass for the validation images'."""
    if config is None or config.data.cv_fold < 0:
        return ""
    part = "its held-out quarter" if split == "val" else "the other three quarters"
    return f" (data.cv_fold={config.data.cv_fold}: {part} of the train split)"


def cmd_sample(args: argparse.Namespace) -> int:
    from jaxconv.generate import sample_workdir

    out = args.out or args.workdir / "samples.png"
    sample_workdir(args.workdir, out, num=args.num, seed=args.seed, temperature=args.temperature,
                   sampler=args.sampler, complete_rows=args.complete, label=args.label, checkpoint=args.checkpoint,
                   draw=args.draw, progress=sys.stdout.isatty())  # at a terminal: see sample_workdir
    print(f"wrote {out}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from jaxconv.data.imagenet import prepare

    manifest = prepare(args.dataset, args.src, args.out)
    counts = ", ".join(f"{split} {entry['count']:,}" for split, entry in manifest["splits"].items())
    print(f"{args.dataset}: {counts} images of {'x'.join(map(str, manifest['image_shape']))} -> {args.out}")
    print(f"train with: --set data.source={args.dataset} --set data.path={args.out}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from jaxconv import bench
    from jaxconv.config import ConvConfig, section_overrides

    if args.what == "report":
        from jaxconv.bench import report

        if args.dir is None or not args.dir.is_dir():
            raise ConfigError(f"jaxconv bench report DIR: {args.dir} is not a results directory")
        for path in report.regenerate(args.dir, plots=args.plots):
            print(f"wrote {path}", file=sys.stderr)
        text = report.summary_markdown(args.dir)
        if args.readme:
            report.update_readme(args.readme, text)
            print(f"updated {args.readme}", file=sys.stderr)
        print(text)
        return 0
    if args.dir is not None:
        raise ConfigError(f"jaxconv bench {args.what} takes no directory (use --out)")
    options = bench.Options(
        what=args.what, quick=args.quick, out=args.out, shapes=args.shapes, sets=args.sets,
        batch_sizes=args.batch_sizes, dtypes=args.dtypes, modes=args.modes, layouts=args.layouts, impls=args.impls,
        user_kernels=args.user_kernels, presets=args.presets, devices=args.devices,
        naive_variables=args.naive_variables, repeats=args.repeats,
        torch=args.torch, plots=args.plots, command=bench.command_line(sys.argv[1:] if args.argv is None else args.argv),
        conv=section_overrides(ConvConfig(), "conv", _conv_overrides()))
    bench.run(options, log=lambda line: print(line, flush=True))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from jaxconv import experiments
    from jaxconv.models import PRESETS

    print("experiments:")
    for name in experiments.names():
        print(f"  {name:28s} {experiments.summary(name)}")
    print("model presets:")
    for name, preset in PRESETS.items():
        print(f"  {name:28s} {preset}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from jaxconv.plots import plot_runs

    for path in plot_runs(args.workdirs, args.out):
        print(f"wrote {path}")
    return 0


def cmd_viz(args: argparse.Namespace) -> int:
    from jaxconv import viz

    if args.picture == "deps":
        position = _int_tuple(args.position, 2, "--position") if args.position else None
        out = viz.dependency_picture(args.out, tuple(args.presets.split(",")), size=args.size, position=position)
    elif args.picture == "kernels":
        out = viz.hand_kernels_picture(args.out, args.index)
    elif args.picture == "filters":
        out = viz.filters_picture(args.workdir, args.out or args.workdir / "filters.png", args.checkpoint)
    else:
        layers = tuple(name for name in args.layers.split(",") if name)
        out = viz.features_picture(args.workdir, args.out or args.workdir / "features.png", layers, args.index,
                                   args.checkpoint)
    print(f"wrote {out}")
    return 0


def _int_tuple(text: str, count: int, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count:
        raise ConfigError(f"{flag} takes {count} comma-separated integers, got {text!r}")
    return values


def _table(title: str, metrics: dict[str, float]) -> str:
    rows = [f"  {k:16s} {v:>12.6g}" if isinstance(v, float) else f"  {k:16s} {v:>12}" for k, v in metrics.items()]
    return "\n".join([title, *rows])


COMMANDS = {"train": cmd_train, "config": cmd_config, "eval": cmd_eval, "sample": cmd_sample, "data": cmd_data,
            "bench": cmd_bench, "list": cmd_list, "plot": cmd_plot, "viz": cmd_viz}


def main(argv: list[str] | None = None, stop: stopping.StopRequest | None = None) -> int:
    """Runs one command; ``stop``: the signal flag of ``entry`` (None: training installs its own handlers)."""
    args = _parser().parse_args(argv)
    args.argv, args.stop = argv, stop
    try:
        with _quiet_absl():
            return COMMANDS[args.command](args)
    except JaxconvError as e:
        if args.debug:
            traceback.print_exc()
        print(f"jaxconv: error: {e}", file=sys.stderr)
        return e.exit_code


@contextlib.contextmanager
def _quiet_absl():
    """orbax logs through absl what a command reports itself in one line (a restore that failed) and
    warnings about its own options (a read-only manager); while a command runs, absl logs nothing."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _ignore_closed_event_loop(default_hook):
    """After a failed checkpoint write (disk full), orbax has closed its event loop while other
    tensorstore writes of the same save are still finishing; their callbacks then raise
    'Event loop is closed' as unraisable exceptions, one traceback each, after the one-line error.
    They say nothing new, so the process entry points drop exactly those."""

    def hook(unraisable):
        if isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed":
            return
        default_hook(unraisable)

    return hook


def run_experiment_module(name: str) -> None:
    """``python -m jaxconv.experiments.NAME [--workdir ...] [--set ...] [--smoke]`` == ``jaxconv train NAME ...``."""
    argv = sys.argv[1:]
    if "-h" in argv or "--help" in argv:  # train's options, without its positional NAME
        parser = argparse.ArgumentParser(prog=f"python -m jaxconv.experiments.{name}",
                                         description=f"Train the {name} experiment: the same as "
                                                     f"`jaxconv train {name} [options]`.",
                                         epilog=_config_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
        _add_train_args(parser, with_name=False)
        _add_dry_run(parser)
        parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
        parser.parse_args(argv)  # prints the help and exits 0
    entry(["train", name, *argv])


def use_compilation_cache(environ) -> None:
    """JAX's persistent compilation cache in ``cache_root()/jit`` (before JAX is imported, which reads these
    variables), unless the user names another (``JAX_COMPILATION_CACHE_DIR``) or turns it off
    (``JAX_ENABLE_COMPILATION_CACHE=false``): a restart, a resume or another run of the same model loads its
    programs instead of compiling them (README, "Compiled programs kept"). JAX keeps the programs that took
    1 s or more to compile. No size limit: JAX's eviction takes a file lock that writers without a limit (a
    Python session on the same directory) do not, and they raced (a missing "-atime" file, in the tests)."""
    environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(paths.cache_root() / "jit"))


def entry(argv: list[str] | None = None) -> None:
    """The process entry point: signals first (before any thread exists), then the command."""
    stop = stopping.watch_signals()
    hostmem.keep_freed_memory()  # before XLA's threads allocate (jaxconv.hostmem says why)
    use_compilation_cache(os.environ)
    sys.unraisablehook = _ignore_closed_event_loop(sys.unraisablehook)
    # A failed background checkpoint write leaves orbax's asyncio tasks holding the same OSError that
    # the one-line error already reports; asyncio would log each again as "never retrieved", and the
    # writes it never started as "coroutine ... was never awaited".
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    logging.getLogger("absl").setLevel(logging.CRITICAL)  # orbax's threads may log after the command returns
    warnings.filterwarnings("ignore", message=r"coroutine .* was never awaited", category=RuntimeWarning)
    sys.exit(main(argv, stop))
