"""Studies: several experiment variants trained on the same data, seed and budget, then compared.

``jaxconv train STUDY`` trains each variant into ``WORKDIR/VARIANT`` (resumable, like any run),
evaluates held-out NLL, draws samples, and writes ``WORKDIR/results.md`` (one table),
``WORKDIR/results.json``, ``WORKDIR/results.png`` (NLL vs parameters vs training time) and
``WORKDIR/samples.png`` (one row of samples per variant).

"Train time" is the time each run spent in its training loop (its steps, compiles, evaluations and
checkpoint saves), summed over every process that trained it (``jaxconv.train.metrics.training_seconds``),
as the machine gave it: compare variants trained on a machine to themselves, or time them back to back
with ``tools/study_speed.py``.

Runs whose configs share a ``Config.name`` are seeds of one variant: the table and figure give their mean
and range (``jaxconv.experiments.pixelcnn_variants`` trains its binary variants twice this way), and
``results.json`` keeps every run.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from jaxconv.config import Config
from jaxconv.errors import ConfigError, WorkdirBusy
from jaxconv.generate import sample_workdir
from jaxconv.stopping import StopRequest
from jaxconv.train import loop
from jaxconv.train import workdir as workdir_lib
from jaxconv.train.metrics import read_metrics, training_seconds

SAMPLES_PER_VARIANT = 8
STUDY_ROW = "study.json"  # a run's row, written when it has been trained, evaluated and sampled


def run_study(variants: dict[str, Config], workdir: Path, stop: StopRequest | None = None,
              log: Callable[[str], None] = lambda line: None) -> list[dict[str, Any]]:
    """The rows of the study's finished runs, in order (``variants`` maps each run's directory name to its
    config); the report is written once every run has finished.

    An interrupted study (``stop`` set) returns the rows finished so far (the same command resumes it).
    Several processes may run one study at once (the same command and workdir, e.g. one per core or per
    GPU): each claims a run before it trains it (a lock on ``WORKDIR/RUN.claim``, which the OS releases
    when the process ends) and skips the runs other processes have claimed; the process that finishes
    last finds every run done and writes the report.
    """
    workdir = Path(workdir)
    _check_seed_groups(variants)
    workdir_lib.create(workdir)
    for name, config in variants.items():
        if (workdir / name / STUDY_ROW).exists():
            continue
        try:
            with workdir_lib.held(workdir / f"{name}.claim", f"run {name} is claimed by another process ({{holder}})",
                                  workdir):
                # a process that claimed it before may have finished it meanwhile
                if not (workdir / name / STUDY_ROW).exists() and not _train_run(name, config, workdir, stop, log):
                    break  # stopped
        except WorkdirBusy:
            if jax.process_count() > 1:  # every process of a multi-host run trains the same run
                raise
            log(f"{name}: skipped, another process is training it")
    rows = [_row(name, config, workdir) for name, config in variants.items() if (workdir / name / STUDY_ROW).exists()]
    if len(rows) == len(variants) and jax.process_index() == 0:
        try:
            with workdir_lib.held(workdir / "report.claim", "", workdir):
                _write_report(rows, workdir)
        except WorkdirBusy:  # another process that finished at the same moment writes the same report
            pass
    return rows


def _row(name: str, config: Config, workdir: Path) -> dict[str, Any]:
    row = json.loads((workdir / name / STUDY_ROW).read_text())
    row.update(run=name, variant=variant_name(config), group=config.name)  # rows of older studies lack them
    # From the metrics: rows of older studies timed the last process's part of a resumed run only.
    seconds = training_seconds(read_metrics(workdir / name), config.data.batch_size)
    if seconds is not None:
        row["train_seconds"] = round(seconds, 1)
    row.setdefault("seed", config.train.seed)
    row.setdefault("data_seed", config.data.seed)
    return row


def _train_run(name: str, config: Config, workdir: Path, stop: StopRequest | None, log: Callable[[str], None]) -> bool:
    """Trains, evaluates and samples one run, then writes its row; False if ``stop`` ended it first."""
    run_dir = workdir / name
    result = loop.train(config, run_dir, stop)
    if result.get("terminated"):
        return False
    seconds = training_seconds(read_metrics(run_dir), config.data.batch_size)
    _, _, state = loop.restore_workdir(run_dir, "latest")
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    val = result["val"]
    row = {"run": name, "variant": variant_name(config), "group": config.name, "seed": config.train.seed,
           "data_seed": config.data.seed, "head": config.model.head, "family": config.model.family,
           "data": "binary" if config.model.head == "bernoulli" else "8-bit",
           "params": params, "steps": result["step"], "train_seconds": round(seconds or 0.0, 1),
           "nll_nats": val["nll_nats"], "bits_per_dim": val["bits_per_dim"], "val_images": int(val["count"])}
    sample_workdir(run_dir, run_dir / "samples.png", num=SAMPLES_PER_VARIANT, checkpoint="latest")
    _write_atomically(run_dir / STUDY_ROW, json.dumps(row, indent=1))
    log(f"{name}: trained ({seconds or 0:.0f} s in the training loop), evaluated and sampled")
    return True


def _write_atomically(path: Path, text: str) -> None:
    """Another process of the study may read the file at any moment: it sees the old one or the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def variant_name(config: Config) -> str:
    """The variant's name in the table: its ``Config.name`` after the study's prefix (``STUDY/``)."""
    return config.name.rpartition("/")[2]


def _check_seed_groups(variants: dict[str, Config]) -> None:
    """Runs that share a ``Config.name`` must differ in their seeds alone: the table averages them."""
    unseeded: dict[str, tuple[str, Config]] = {}
    for run, config in variants.items():
        plain = config.replace(train=dataclasses.replace(config.train, seed=0),
                               data=dataclasses.replace(config.data, seed=0))
        first = unseeded.setdefault(config.name, (run, plain))
        if first[1] != plain:
            raise ConfigError(f"study runs {first[0]!r} and {run!r} share the name {config.name!r} but differ in "
                              "more than train.seed and data.seed; give different variants different names")


def by_variant(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The runs grouped by variant (``Config.name``), in the order each variant first appears."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row)
    return list(groups.values())


def _spread(runs: list[dict[str, Any]], key: str, digits: int) -> str:
    """The mean; with several seeds, followed by their range."""
    values = [r[key] for r in runs]
    mean = f"{np.mean(values):.{digits}f}"
    return mean if len(values) == 1 else f"{mean} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| variant | model | data, head | params | steps | seeds | train time | val NLL (nats/image) | bits/dim |",
             "|---|---|---|---|---|---|---|---|---|"]
    for runs in by_variant(rows):
        r = runs[0]
        lines.append(f"| {r['variant']} | {r['family']} | {r['data']}, {r['head']} | {r['params']:,} | {r['steps']} | "
                     f"{', '.join(str(run['seed']) for run in runs)} | "
                     f"{np.mean([run['train_seconds'] for run in runs]):.0f} s | {_spread(runs, 'nll_nats', 2)} | "
                     f"{_spread(runs, 'bits_per_dim', 4)} |")
    return "\n".join(lines) + "\n"


def _write_report(rows: list[dict[str, Any]], workdir: Path) -> None:
    (workdir / "results.json").write_text(json.dumps(rows, indent=1))
    (workdir / "results.md").write_text(markdown_table(rows))
    plot_results(rows, workdir / "results.png")
    _samples_sheet(rows, workdir)


def _samples_sheet(rows: list[dict[str, Any]], workdir: Path) -> None:
    """Every variant's sample grid, one per row in table order, its name on the left."""
    from PIL import Image, ImageDraw

    rows = [runs[0] for runs in by_variant(rows)]  # one row of samples per variant: its first seed's
    grids = [Image.open(workdir / r["run"] / "samples.png").convert("RGB") for r in rows]
    label_w, gap = 130, 4
    sheet = Image.new("RGB", (label_w + max(g.width for g in grids), sum(g.height + gap for g in grids)), "white")
    draw, y = ImageDraw.Draw(sheet), 0
    for r, grid in zip(rows, grids):
        sheet.paste(grid, (label_w, y))
        draw.text((4, y + grid.height // 2 - 6), r["variant"], fill="black")
        y += grid.height + gap
    sheet.save(workdir / "samples.png")


def plot_results(rows: list[dict[str, Any]], path: Path, time_label: str = "training time (s)") -> None:
    """bits/dim against parameters and training time, one point per variant (the mean, with a bar over
    its seeds' range); binary and 8-bit data in separate rows (their scales differ)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = by_variant(rows)
    panels = [(data, [runs for runs in variants if runs[0]["data"] == data])
              for data in dict.fromkeys(r["data"] for r in rows)]
    fig, axes = plt.subplots(len(panels), 2, figsize=(10, 3.2 * len(panels)), squeeze=False)
    for (data, sel), row_axes in zip(panels, axes):
        for ax, key, label in ((row_axes[0], "params", "parameters"), (row_axes[1], "train_seconds", time_label)):
            for k, runs in enumerate(sel):
                x, y = (np.mean([r[name] for r in runs]) for name in (key, "bits_per_dim"))
                low, high = (y - min(r["bits_per_dim"] for r in runs), max(r["bits_per_dim"] for r in runs) - y)
                ax.errorbar(x, y, yerr=[[low], [high]], fmt="o", markersize=6, capsize=3,
                            color=f"C{variants.index(runs)}")
                # staggered offsets keep the names of variants with equal numbers apart
                ax.annotate(runs[0]["variant"], (x, y), fontsize=7, xytext=(5, 4 - 10 * (k % 2)),
                            textcoords="offset points")
            if key == "params":
                ax.xaxis.set_major_formatter(lambda v, _: f"{v / 1e3:.0f}k")
            ax.set_xlabel(label)
            ax.set_ylabel(f"val bits/dim ({data})")
            ax.margins(x=0.25, y=0.25)
            ax.grid(alpha=0.3)
    fig.suptitle("PixelCNN variants: same data and budget (bars: range over seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
