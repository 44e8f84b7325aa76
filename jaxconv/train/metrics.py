"""Metrics as JSON lines in ``WORKDIR/metrics.jsonl``, written by process 0 only."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax

from jaxconv.errors import StorageError


class MetricsWriter:
    def __init__(self, workdir: Path):
        self.path = workdir / "metrics.jsonl"
        self.enabled = jax.process_index() == 0

    def resume_at(self, step: int) -> None:
        """Drops records of steps after ``step``: a resumed run recomputes them identically."""
        if not self.enabled or not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and _complete(line) and json.loads(line)["step"] <= step]
        tmp = self.path.with_suffix(".tmp")
        try:
            tmp.write_text("".join(line + "\n" for line in kept))
            tmp.replace(self.path)  # atomic: a kill here leaves the old or the new file, both valid
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise StorageError(f"cannot write {self.path}: {e.strerror}") from None

    def write(self, step: int, split: str, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "split": split, **{k: _json_float(v) for k, v in values.items()}}
        try:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:
            raise StorageError(f"cannot write {self.path}: {e.strerror}") from None


def read_metrics(workdir: Path) -> list[dict]:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip() and _complete(line)]


def _complete(line: str) -> bool:
    """False for a line cut short by a kill mid-write."""
    try:
        json.loads(line)
        return True
    except json.JSONDecodeError:
        return False


def _json_float(v: float) -> float | str:
    v = float(v)
    return v if math.isfinite(v) else str(v)  # JSON has no NaN/Inf literals
