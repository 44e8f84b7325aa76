"""The autotune table ``jaxconv bench conv`` writes (``conv_table.json``): the fastest
``jaxconv.models.conv_impls`` implementation per layer signature (``Signature.key()``) and dtype, read
back by the conv policy (``jaxconv.models.conv_policy``):
``--set conv.table=benchmarks/results/<device>/conv_table.json`` (or ``JAXCONV_CONV_TABLE=...``).
"""

from __future__ import annotations

import json
from pathlib import Path

from jaxconv.bench.conv_shapes import row_layer
from jaxconv.models import conv_impls
from jaxconv.models.conv_policy import Signature


def autotune_table(rows: list[dict], backend: str) -> dict:
    """The fastest ``jaxconv.models.conv_impls`` implementation (NHWC) per layer signature and dtype.

    With the per-pass modes measured (forward, input_grad, kernel_grad), a "forward/input_grad/kernel_grad"
    triple of each pass's winner; otherwise the forward_backward winner. The largest batch measured decides.
    """
    best: dict[tuple, dict[str, str]] = {}
    for row in sorted(rows, key=lambda r: r["batch"]):
        if row["kind"] != "conv":
            continue
        cands = [r for r in row["results"] if r["status"] == "ok" and r["framework"] == "jax"
                 and r["layout"] == "NHWC" and r["impl"] in conv_impls.IMPLEMENTATIONS]
        if not cands:
            continue
        sig = Signature.of(row_layer(row), row["batch"], row["dtype"], backend)
        best.setdefault((sig.key(), row["input_grad"]), {})[row["mode"]] = min(cands, key=lambda r: r["time_s"])["impl"]
    winners = {}
    for (key, input_grad), modes in best.items():
        if "forward" in modes and "kernel_grad" in modes and ("input_grad" in modes or not input_grad):
            triple = (modes["forward"], modes.get("input_grad", modes["forward"]), modes["kernel_grad"])
            winners[key] = triple[0] if len(set(triple)) == 1 else "/".join(triple)
        elif "forward_backward" in modes:
            winners[key] = modes["forward_backward"]
    return {"description": "jaxconv.models.conv_policy autotune table: --set conv.table=this file", "winners": winners}


def write_table(table: dict, out_dir: Path) -> Path:
    path = Path(out_dir) / "conv_table.json"
    path.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    return path
