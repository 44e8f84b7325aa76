"""Training curves from metrics files (``jaxconv plot WORKDIR...``), overlaid across runs."""

from __future__ import annotations

from pathlib import Path

from jaxconv.errors import ConfigError, DataError, StorageError
from jaxconv.train.metrics import read_metrics

# (panel title, metric, splits drawn: train solid, val dashed)
PANELS = (
    ("loss", "loss", ("train", "val")),
    ("accuracy", "accuracy", ("train", "val")),
    ("bits/dim", "bits_per_dim", ("train", "val")),
    ("learning rate", "learning_rate", ("train",)),
    ("throughput (images/s)", "images_per_sec", ("train",)),
)


def curves(records: list[dict], split: str, metric: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric, skipping records without it or with a non-finite value."""
    points = [(r["step"], r[metric]) for r in records
              if r["split"] == split and isinstance(r.get(metric), (int, float)) and not isinstance(r[metric], bool)]
    return [s for s, _ in points], [v for _, v in points]


def plot_runs(workdirs: list[Path], out: Path) -> list[Path]:
    """Draws every panel some run has data for; writes ``out`` with .png and .svg suffixes.

    ConfigError if ``out`` names no file (``.``, ``/``); StorageError if it cannot be written."""
    out = Path(out)
    try:
        if out.name in ("", ".", ".."):
            raise ValueError
        paths = [out.with_suffix(".png"), out.with_suffix(".svg")]
    except ValueError:
        raise ConfigError(f"--out {out}: expected a file name such as curves.png (written as .png and .svg)") from None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {}
    for workdir in workdirs:
        records = read_metrics(Path(workdir))
        if not records:
            raise DataError(f"{workdir} has no metrics.jsonl records to plot")
        runs[_label(Path(workdir), workdirs)] = records
    panels = [p for p in PANELS if any(curves(r, split, p[1])[0] for r in runs.values() for split in p[2])]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (title, metric, splits) in zip(axes[0], panels):
        for k, (name, records) in enumerate(runs.items()):
            for split in splits:
                steps, values = curves(records, split, metric)
                if steps:
                    ax.plot(steps, values, color=colours[k % len(colours)], linestyle="-" if split == "train" else "--",
                            marker="" if split == "train" else "o", markersize=3, label=f"{name} {split}")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    try:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot write {out.parent}: {e.strerror or e}") from None
        for path in paths:
            try:
                fig.savefig(path, dpi=100)
            except OSError as e:
                raise StorageError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        plt.close(fig)
    return paths


def _label(workdir: Path, workdirs) -> str:
    """A run's name in the legend: its directory name, or its whole path where two runs share the name."""
    name = workdir.name or str(workdir)
    return str(workdir) if sum((Path(w).name or str(w)) == name for w in workdirs) > 1 else name
