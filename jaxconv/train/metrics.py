"""Metrics as JSON lines in ``WORKDIR/metrics.jsonl``, written by process 0 only.

A record is a JSON object with an int ``"step"``, a str ``"split"`` ("train" or "val") and the
metric values. Readers skip any other line (with one warning per file); a resume keeps such lines as
they are, since they are not records it could recompute.

The same scalars go to TensorBoard event files in ``WORKDIR/tensorboard/`` (``tensorboard --logdir
runs``), in TensorBoard's own record format, written synchronously in the caller's thread: no
background writer thread outlives the run, and a failed write is a StorageError where it happens.
A resumed run first writes a session-start event at its step, which makes TensorBoard drop the
points logged after it before the interruption (the run logs those steps again).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import socket
import sys
import time
from pathlib import Path

import jax
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from jaxconv.errors import StorageError

_EVENT_FILES = itertools.count()  # distinguishes event files of one process opened in the same second


class MetricsWriter:
    """Appends records to ``WORKDIR/metrics.jsonl`` and events to ``WORKDIR/tensorboard/``.

    Creating it checks both places (StorageError if they cannot be written); :meth:`close` is safe to
    call more than once. Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, workdir: Path):
        workdir = Path(workdir)
        self.path = workdir / "metrics.jsonl"
        self.enabled = jax.process_index() == 0
        self._events: RecordWriter | None = None
        self._events_path: Path | None = None
        if not self.enabled:
            return
        _check_file(self.path)
        logdir = workdir / "tensorboard"
        if logdir.exists() and not logdir.is_dir():
            raise StorageError(f"{logdir} is not a directory")
        try:
            logdir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot write {logdir}: {e.strerror or e}") from None
        # The name TensorBoard's loader looks for (as tensorboard's EventFileWriter names it).
        self._events_path = logdir / (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
                                      f"{os.getpid()}.{next(_EVENT_FILES)}")
        try:
            self._events = RecordWriter(self._events_path.open("xb"))
        except OSError as e:
            raise StorageError(f"cannot write {self._events_path}: {e.strerror or e}") from None
        self._add_event(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2",
                                        source_metadata=event_pb2.SourceMetadata(writer="jaxconv")))

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def resume_at(self, step: int) -> None:
        """Drops the records of steps after ``step``: a resumed run recomputes them identically.

        Every other line is kept byte for byte, lines that are not records included: nothing saved is
        deleted that the run does not write again. Only a last line cut short by a kill mid-write (no
        final newline, not a record) is dropped: it was never written whole."""
        if not self.enabled or not self.path.exists():
            return
        self._add_event(event_pb2.Event(step=step + 1, wall_time=time.time(),
                                        session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))
        try:
            content = self.path.read_bytes()
        except OSError as e:
            raise StorageError(f"cannot read {self.path}: {e.strerror or e}") from None
        lines = [line for line in content.splitlines() if line.strip()]
        if lines and not content.endswith(b"\n") and _record(lines[-1]) is None:
            lines.pop()  # cut short by a kill mid-write (every write ends with a newline): never saved whole
        kept = [line for line in lines if not _later(line, step)]
        if content == b"".join(line + b"\n" for line in kept):
            return  # nothing to drop: leave the file as it is
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_bytes(b"".join(line + b"\n" for line in kept))
            tmp.replace(self.path)  # atomic: a kill here leaves the old or the new file, both valid
        except OSError as e:
            raise StorageError(f"cannot write {self.path}: {e.strerror or e}") from None
        finally:
            tmp.unlink(missing_ok=True)

    def write(self, step: int, split: str, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "split": split, **{k: _json_float(v) for k, v in values.items()}}
        try:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:
            raise StorageError(f"cannot write {self.path}: {e.strerror or e}") from None
        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=f"{split}/{name}", simple_value=float(v))
                                             for name, v in values.items()])
        self._add_event(event_pb2.Event(step=step, wall_time=time.time(), summary=summary))

    def _add_event(self, event: event_pb2.Event) -> None:
        if self._events is None:
            raise StorageError(f"cannot write {self._events_path}: the metrics writer is closed")
        try:
            self._events.write(event.SerializeToString())
            self._events.flush()
        except OSError as e:
            self.close()
            raise StorageError(f"cannot write {self._events_path}: {e.strerror or e}") from None

    def close(self) -> None:
        """Closes the event file; safe to call again, and after a failed write."""
        events, self._events = self._events, None
        if events is not None:
            try:
                events.close()
            except OSError:  # everything was flushed after each event, or its write already raised
                pass


def read_metrics(workdir: Path) -> list[dict]:
    """The records of ``WORKDIR/metrics.jsonl`` in file order ([] if there is none).

    A line that is not a record (cut short by a kill mid-write, or edited by hand) is skipped, with
    one warning line on stderr naming the file and the first such line."""
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    _check_file(path)
    try:
        lines = path.read_bytes().splitlines()
    except OSError as e:
        raise StorageError(f"cannot read {path}: {e.strerror or e}") from None
    records, skipped = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        record = _record(line)
        if record is None:
            skipped.append(number)
        else:
            records.append(record)
    if skipped:
        print(f"jaxconv: warning: {path}: skipped {len(skipped)} line(s) that are not metrics records "
              f"(a JSON object with an int \"step\" and a str \"split\"), first line {skipped[0]}", file=sys.stderr)
    return records


def training_seconds(records: list[dict], batch_size: int) -> float | None:
    """The time a run spent in its training loop (steps, and the compiles, evaluations and checkpoint
    saves between them), summed over its train records, each of which covers the steps since the one
    before at its ``images_per_sec``; so every process that trained the run counts. None when no record
    has a speed."""
    seconds, last_step, timed = 0.0, 0, False
    for record in sorted((r for r in records if r["split"] == "train"), key=lambda r: r["step"]):
        speed = record.get("images_per_sec")
        if isinstance(speed, (int, float)) and math.isfinite(speed) and speed > 0 and record["step"] > last_step:
            seconds += (record["step"] - last_step) * batch_size / speed
            timed = True
        last_step = max(last_step, record["step"])
    return seconds if timed else None


def _record(line: bytes) -> dict | None:
    """The record a line holds, or None if it holds none."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):  # not JSON (or not UTF-8), a huge int, deep nesting
        return None
    if (isinstance(record, dict) and isinstance(record.get("step"), int) and not isinstance(record["step"], bool)
            and isinstance(record.get("split"), str)):
        return record
    return None


def _later(line: bytes, step: int) -> bool:
    """True for a record of a step after ``step``."""
    record = _record(line)
    return record is not None and record["step"] > step


def _check_file(path: Path) -> None:
    if path.exists() and not path.is_file():
        raise StorageError(f"{path} is not a file")


def _json_float(v: float) -> float | str:
    v = float(v)
    return v if math.isfinite(v) else str(v)  # JSON has no NaN/Inf literals
