"""Orbax checkpoints: async saves, latest-N plus best-N retention, restore onto any device count.

Saves hold the single-copy train state. Orbax writes each step to a temporary directory and
renames it when complete, so a run killed mid-save leaves the previous checkpoint as the latest;
leftover temporary directories are cleaned up on the next start.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from jaxconv.config import CheckpointConfig
from jaxconv.errors import CheckpointError, StorageError

# orbax warns for every save without metrics and logs restore failures that we report in one line
logging.getLogger("absl").setLevel(logging.CRITICAL)

# How the OS reports a full or unwritable disk (orbax/tensorstore wrap these in ValueError etc.)
_STORAGE_FAILURES = ("No space left on device", "File too large", "Disk quota exceeded", "Read-only file system",
                     "Permission denied")


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
            read_only=read_only,
            create=not read_only,
        )
        try:
            self.manager = ocp.CheckpointManager(directory.absolute(), options=options)
        except OSError as e:
            raise StorageError(f"cannot open checkpoints in {directory}: {e.strerror or e}") from None
        except ValueError as e:
            raise CheckpointError(f"cannot open checkpoints in {directory}: {e}") from None
        self._saving: int | None = None  # the step of a save that may still be running

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def save(self, step: int, state: Any, metrics: dict[str, float] | None = None, force: bool = False) -> None:
        """Starts saving ``step`` (in the background when async); raises if this or the previous save failed."""
        try:
            self.manager.save(step, args=ocp.args.StandardSave(state), metrics=metrics, force=force)
        except Exception as e:  # the previous async save's failure surfaces here, as any type
            raise self._save_error(self._saving if self._saving is not None else step, e) from None
        self._saving = step

    def restore(self, step: int, target: Any) -> Any:
        """Restores ``step`` with the shapes, dtypes and shardings of ``target`` (abstract or real)."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        try:
            return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as e:  # orbax/tensorstore raise many types for damaged or foreign files
            message = (str(e).splitlines() or [type(e).__name__])[0].split(" See full TensorStore")[0]
            raise CheckpointError(f"checkpoint {step} in {self.manager.directory} does not fit this model "
                                  f"or is corrupt: {message[:300]}") from None

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
