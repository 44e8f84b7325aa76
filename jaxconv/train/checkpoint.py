"""Orbax checkpoints: async saves, latest-N plus best-N retention, restore onto any device count.

Saves hold the single-copy train state. Orbax writes each step to a temporary directory and
renames it when complete, so a run killed mid-save leaves the previous checkpoint as the latest;
leftover temporary directories are cleaned up on the next start.

Verified restores: once a step's save is complete, the SHA-256 of every file in it goes into
``STEP/jaxconv-checksums.json``, and every restore checks them first. Orbax and TensorStore have no
such check for OCDBT files (a flipped byte in an array file loads as a wrong number), so it is done
here, with hashlib. A step without that file was cut off before it was sealed and counts as damaged.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from jaxconv.config import CheckpointConfig
from jaxconv.errors import CheckpointError, StorageError

# How the OS reports a full or unwritable disk (orbax/tensorstore wrap these in ValueError etc.)
_STORAGE_FAILURES = ("No space left on device", "File too large", "Disk quota exceeded", "Read-only file system",
                     "Permission denied")
SEAL = "jaxconv-checksums.json"
READ_ATTEMPTS = 20  # listings of a live run's checkpoints before a missing file is an error (50 ms apart)


def file_digests(step_dir: Path) -> dict[str, str]:
    """SHA-256 of every file of the step's items (``default/``: the train state; ``metrics/``), by
    path relative to ``step_dir``. The step's own top-level files are orbax's bookkeeping, written
    when it commits (after the seal): timestamps and a commit marker, no array data."""
    digests = {}
    for path in sorted(step_dir.glob("*/**/*")):
        if path.is_file():
            with path.open("rb") as f:
                digests[str(path.relative_to(step_dir))] = hashlib.file_digest(f, "sha256").hexdigest()
    return digests


def seal(step_dir: Path) -> None:
    """Writes the checksums of a complete step (atomically: a partial seal never exists)."""
    tmp = step_dir / f".{SEAL}.tmp"
    tmp.write_text(json.dumps({"sha256": file_digests(step_dir)}, indent=1))
    os.replace(tmp, step_dir / SEAL)


def damage(step_dir: Path) -> str | None:
    """Why the files of a step do not match its seal, or None when they all do."""
    if not step_dir.is_dir():
        return "it no longer exists (deleted while being read: a running training keeps only the latest ones)"
    try:
        recorded = json.loads((step_dir / SEAL).read_text())["sha256"]
    except FileNotFoundError:
        return "it is incomplete (no checksum file: its save was cut off)"
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return "its checksum file is damaged"
    found = file_digests(step_dir)
    if missing := sorted(set(recorded) - set(found)):
        return f"file {missing[0]} is missing"
    if changed := [name for name in recorded if recorded[name] != found[name]]:
        return f"file {changed[0]} does not match its checksum{f' (and {len(changed) - 1} more)' if len(changed) > 1 else ''}"
    if extra := sorted(set(found) - set(recorded)):
        return f"file {extra[0]} was not part of it"
    return None


def _one_copy(state: Any) -> Any:
    """In a one-process run, each replicated array as its first device's copy (no data is copied).

    Orbax otherwise splits a replicated array over its replicas to write the parts in parallel, one
    eager slice per array and device: 0.4 s of a LeNet-5 save on 8 CPU devices, for arrays of a few
    kB. Several processes keep the global arrays: each writes its own part."""
    if jax.process_count() > 1:
        return state
    return jax.tree.map(lambda x: x.addressable_data(0) if isinstance(x, jax.Array) and x.is_fully_replicated
                        else x, state)


class Checkpoints:
    def __init__(self, directory: Path, config: CheckpointConfig, read_only: bool = False):
        self.config = config
        metric = config.best_metric
        keep = [policies.LatestN(config.keep_latest)]
        if config.keep_best:
            keep.append(policies.BestN(get_metric_fn=lambda m: m[metric], reverse=config.best_mode == "min",
                                       n=config.keep_best, keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy(keep),
            best_fn=(lambda m: m[metric]) if config.keep_best else None,
            best_mode=config.best_mode,
            cleanup_tmp_directories=not read_only,
            enable_async_checkpointing=config.async_save,
            # Sealed in the temporary directory, just before orbax renames it: a step is never
            # visible without its checksums.
            async_options=ocp.AsyncOptions(post_finalization_callback=self._seal_saved)
            if config.async_save and not read_only else None,
            read_only=read_only,
            create=not read_only,
        )
        attempts = READ_ATTEMPTS if read_only else 1
        for attempt in range(attempts):
            try:
                self.manager = ocp.CheckpointManager(directory.absolute(), options=options)
                break
            except OSError as e:
                # A reader of a live run (jaxconv eval beside jaxconv train) can list a step that the
                # writer renames or deletes before orbax reads it: list again. Orbax reports it as a missing
                # file, or, when the step goes between its exists() and is_dir(), as "not a directory".
                vanished = isinstance(e, (FileNotFoundError, NotADirectoryError))
                if vanished and directory.is_dir() and attempt + 1 < attempts:
                    time.sleep(0.05)
                    continue
                raise StorageError(f"cannot open checkpoints in {directory}: {e.strerror or e}") from None
            except ValueError as e:
                raise CheckpointError(f"cannot open checkpoints in {directory}: {e}") from None
        self._saving: int | None = None  # the step of a save that may still be running
        self._sealed: int | None = None

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def reload(self) -> None:
        """Lists the steps again (a reader of a live run)."""
        self.manager.reload()

    def save(self, step: int, state: Any, metrics: dict[str, float] | None = None, force: bool = False) -> None:
        """Starts saving ``step`` (in the background when async); raises if this or the previous save failed."""
        try:
            self.manager.wait_until_finished()  # the previous save is complete, and sealed by its callback
            self._saving = step  # before this save starts: its sealing callback may run as soon as it is complete
            self.manager.save(step, args=ocp.args.StandardSave(_one_copy(state)), metrics=metrics, force=force)
        except Exception as e:  # the previous async save's failure surfaces here, as any type
            raise self._save_error(self._saving if self._saving is not None else step, e) from None
        if not self.config.async_save:
            self._seal_saved()

    def _seal_saved(self) -> None:
        """Seals the step just saved, once its files are complete (process 0 only): an async save's
        temporary directory (orbax calls this before renaming it), a synchronous save's final one."""
        step = self._saving
        if step is None or step == self._sealed or jax.process_index() != 0:
            return
        directory = Path(self.manager.directory)
        unfinished = sorted(directory.glob(f"{step}.orbax-checkpoint-tmp*"))
        step_dir = unfinished[-1] if unfinished else directory / str(step)
        if step_dir.is_dir():
            seal(step_dir)
            self._sealed = step

    def damage(self, step: int) -> str | None:
        return damage(Path(self.manager.directory) / str(step))

    def restore(self, step: int, target: Any) -> Any:
        """Restores ``step`` with the shapes, dtypes and shardings of ``target`` (abstract or real),
        after checking its files against their checksums."""
        where = f"checkpoint {step} in {self.manager.directory}"
        if problem := self.damage(step):
            raise CheckpointError(f"{where} cannot be used: {problem}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        try:
            return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as e:  # orbax/tensorstore raise many types for foreign files
            if vanished := self.damage(step):  # deleted by a running training while this read it
                raise CheckpointError(f"{where} cannot be used: {vanished}") from None
            message = (str(e).splitlines() or [type(e).__name__])[0].split(" See full TensorStore")[0]
            raise CheckpointError(f"{where} does not fit this model and optimizer (was config.json edited?): "
                                  f"{message[:300]}") from None

    def newest_intact(self, quarantine: Path, log) -> int | None:
        """The newest step whose files match their checksums, or None. Damaged newer steps move to
        ``quarantine`` (kept, not deleted; orbax no longer sees them), each reported through ``log``."""
        for step in sorted(self.all_steps(), reverse=True):
            problem = self.damage(step)
            if problem is None:
                return step
            if jax.process_index() == 0:  # every process skips the same steps; one moves them
                moved = _free_name(quarantine / str(step))
                moved.parent.mkdir(parents=True, exist_ok=True)
                os.replace(Path(self.manager.directory) / str(step), moved)
                log(f"jaxconv: warning: checkpoint {step} cannot be used: {problem}; moved it to {moved}")
            self.reload()
        return None

    def wait(self) -> None:
        """Waits for a background save; raises StorageError/CheckpointError if it failed."""
        try:
            self.manager.wait_until_finished()
            self.manager.check_for_errors()
        except Exception as e:
            raise self._save_error(self._saving, e) from None
        finally:
            self._saving = None

    def _save_error(self, step: int | None, error: Exception) -> Exception:
        """A one-line error for a failed save; the partial write stays in a temporary directory that
        the next start removes, and earlier checkpoints are untouched."""
        text = str(error) or type(error).__name__
        if found := re.search(r"/(\d+)\.orbax-checkpoint-tmp", text):  # the step whose write failed
            step = int(found.group(1))
        os_error = isinstance(error, OSError) or "os_error_code" in text or any(s in text for s in _STORAGE_FAILURES)
        reason = next((s for s in _STORAGE_FAILURES if s in text), text.splitlines()[0][:300] if text else "")
        where = f"checkpoint {step} in {self.manager.directory}"
        if os_error:
            return StorageError(f"cannot write {where}: {reason}; earlier checkpoints are intact")
        return CheckpointError(f"saving {where} failed: {reason}")

    def close(self) -> None:
        self.manager.close()


def _free_name(path: Path) -> Path:
    """``path``, or ``path.1``, ``path.2``, ... whichever does not exist yet."""
    candidate, suffix = path, 1
    while candidate.exists():
        candidate, suffix = path.with_name(f"{path.name}.{suffix}"), suffix + 1
    return candidate
