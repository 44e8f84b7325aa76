"""Studies: several experiment variants trained on the same data, seed and budget, then compared.

``jaxconv train STUDY`` trains each variant into ``WORKDIR/VARIANT`` (resumable, like any run),
evaluates held-out NLL, draws samples, and writes ``WORKDIR/results.md`` (one table),
``WORKDIR/results.json``, ``WORKDIR/results.png`` (NLL vs parameters vs training time) and
``WORKDIR/samples.png`` (one row of samples per variant).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxconv.config import Config
from jaxconv.generate import sample_workdir
from jaxconv.train import loop

SAMPLES_PER_VARIANT = 8


def run_study(variants: dict[str, Config], workdir: Path) -> list[dict[str, Any]]:
    workdir = Path(workdir)
    rows = [_run_variant(name, config, workdir / name) for name, config in variants.items()]
    if jax.process_index() == 0:
        _write_report(rows, workdir)
    return rows


def _run_variant(name: str, config: Config, workdir: Path) -> dict[str, Any]:
    done = workdir / "study.json"
    if done.exists():  # finished earlier: a resumed study does not retrain it
        return json.loads(done.read_text())
    clock = time.perf_counter()
    result = loop.train(config, workdir)
    seconds = time.perf_counter() - clock
    run, _, state = loop.restore_workdir(workdir, "latest")
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    val = result["val"]
    row = {"variant": name, "head": config.model.head, "family": config.model.family,
           "data": "binary" if config.model.head == "bernoulli" else "8-bit",
           "params": params, "steps": result["step"], "train_seconds": round(seconds, 1),
           "nll_nats": val["nll_nats"], "bits_per_dim": val["bits_per_dim"], "val_images": int(val["count"])}
    sample_workdir(workdir, workdir / "samples.png", num=SAMPLES_PER_VARIANT, checkpoint="latest")
    done.write_text(json.dumps(row, indent=1))
    return row


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| variant | model | data, head | params | steps | train time | val NLL (nats/image) | bits/dim |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['family']} | {r['data']}, {r['head']} | {r['params']:,} | {r['steps']} | "
              f"{r['train_seconds']:.0f} s | {r['nll_nats']:.2f} | {r['bits_per_dim']:.4f} |" for r in rows]
    return "\n".join(lines) + "\n"


def _write_report(rows: list[dict[str, Any]], workdir: Path) -> None:
    (workdir / "results.json").write_text(json.dumps(rows, indent=1))
    (workdir / "results.md").write_text(markdown_table(rows))
    _figure(rows, workdir / "results.png")
    from PIL import Image

    grids = [np.asarray(Image.open(workdir / r["variant"] / "samples.png").convert("RGB")) for r in rows]
    width = max(g.shape[1] for g in grids)
    stacked = np.concatenate([np.pad(g, ((0, 4), (0, width - g.shape[1]), (0, 0)), constant_values=255) for g in grids])
    Image.fromarray(stacked).save(workdir / "samples.png")  # one row per variant, in table order


def _figure(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "params", "parameters"), (axes[1], "train_seconds", "training time (s)")):
        for r in rows:
            marker = "o" if r["data"] == "binary" else "s"
            ax.scatter(r[key], r["bits_per_dim"], marker=marker, s=40)
            ax.annotate(r["variant"], (r[key], r["bits_per_dim"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
        ax.set_xlabel(label)
        ax.set_ylabel("validation bits/dim (o binary, s 8-bit)")
        ax.grid(alpha=0.3)
    fig.suptitle("PixelCNN variants: same data, seed and budget", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
