"""A run's work directory: one training process at a time, and what a restart may change.

Layout: ``config.json`` (the effective config), ``run.json`` and ``train_mean.npy`` (what restoring needs
from the data: ``jaxconv.train.restore``), ``metrics.jsonl``, ``tensorboard/``, ``checkpoints/STEP/``
(each with ``jaxconv-checksums.json``), ``corrupt-checkpoints/`` (damaged steps moved aside on resume),
``conv_table.json`` (with ``conv.autotune``: the conv implementations the run uses) and ``lock``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator

from jaxconv import config as config_lib
from jaxconv.config import Config
from jaxconv.errors import CheckpointError, ConfigError, StorageError, WorkdirBusy

LOCK = "lock"

# What a restart may change: where and how the run executes, how often it logs, evaluates and
# saves, and how many checkpoints it keeps. Everything else changes the training trajectory, so a
# run restarted with another value would be neither the old run nor a new one.
RESTART_MAY_CHANGE = {
    "parallel": None,  # the whole section
    "conv": None,  # another implementation rounds differently, but computes the same model
    "train": ("progress", "log_every", "eval_every"),
    "checkpoint": ("every", "keep_latest", "keep_best", "async_save"),
    "data": ("eval_batch_size", "prefetch", "path"),
}


def create(workdir: Path) -> None:
    """Creates ``workdir`` (and its parents); StorageError with the reason when it cannot."""
    try:
        if workdir.is_symlink() and not workdir.exists():
            raise StorageError(f"work directory {workdir} is a symbolic link to a missing {os.readlink(workdir)}")
        workdir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise StorageError(f"work directory {workdir} exists and is not a directory") from None
    except OSError as e:
        raise StorageError(f"cannot create work directory {_short(workdir)}: {_reason(e)}") from None


@contextlib.contextmanager
def locked(workdir: Path) -> Iterator[None]:
    """Holds an advisory lock on ``WORKDIR/lock`` for the life of a training run.

    The OS releases it when the process ends in any way (a SIGKILLed run leaves no stale lock). On a
    network file system it holds as far as the file system passes ``flock`` on (Linux NFS does, as a
    POSIX lock through lockd). Readers (``eval``, ``sample``, ``viz``) do not take it.
    """
    with held(workdir / LOCK, f"work directory {workdir} is in use by another training run ({{holder}}); "
                              "wait for it to end or use another --workdir", workdir):
        yield


@contextlib.contextmanager
def held(path: Path, busy: str, directory: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if need be), its holder written into it; WorkdirBusy(``busy``,
    ``{holder}`` filled in) at once if another process holds it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise StorageError(f"cannot write to work directory {_short(directory)}: {_reason(e)}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkdirBusy(busy.format(holder=_holder(path))) from None
        holder = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _holder(path: Path) -> str:
    try:
        holder = json.loads(path.read_text())
        return f"pid {holder['pid']} on host {holder['host']}, started {holder['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "its details are not written yet"


def previous_config(workdir: Path) -> Config | None:
    """The config of the run already in ``workdir``, or None for a new run."""
    path = workdir / "config.json"
    if not path.exists():
        return None
    try:
        return config_lib.load(path)
    except ConfigError as e:
        raise CheckpointError(f"{workdir} holds an unreadable config.json ({e}); use a new --workdir") from None


def check_restart(previous: Config, config: Config, workdir: Path) -> None:
    """CheckpointError unless ``config`` continues the run whose config was ``previous``."""
    if previous.model != config.model:
        raise CheckpointError(f"{workdir} holds a run of a different model ({previous.model}); use a new --workdir")
    old, new = config_lib.to_dict(previous), config_lib.to_dict(config)
    changes = [f"{section}.{key} {old[section].get(key)!r} -> {value!r}"
               for section, values in new.items() if isinstance(values, dict)
               for key, value in values.items()
               if old[section].get(key) != value and not _may_change(section, key)]
    if old["name"] != new["name"]:
        changes.insert(0, f"name {old['name']!r} -> {new['name']!r}")
    if changes:
        raise CheckpointError(f"{workdir} holds a run with other settings ({'; '.join(changes)}); a restart "
                              f"continues a run with its own settings: drop these --set options, or use a new "
                              f"--workdir")


def _may_change(section: str, key: str) -> bool:
    allowed = RESTART_MAY_CHANGE.get(section, ())
    return allowed is None or key in allowed


CONV_TABLE = "conv_table.json"  # conv.autotune's winners, as a conv table (``jaxconv.models.conv_policy``)


def write_conv_table(winners: dict[str, str], workdir: Path) -> None:
    """The conv implementations this run uses (``conv.autotune``): a resumed run reads them back."""
    path = workdir / CONV_TABLE
    table = {"description": "the conv implementations this run measured and uses (conv.autotune)",
             "winners": dict(sorted(winners.items()))}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(table, indent=1) + "\n")
    os.replace(tmp, path)


def write_config(config: Config, workdir: Path) -> None:
    """Writes the effective config (process 0; atomically)."""
    try:
        config_lib.save(config, workdir / "config.json")
    except OSError as e:
        raise StorageError(f"cannot write to work directory {_short(workdir)}: {_reason(e)}") from None


def _reason(error: OSError) -> str:
    if error.errno == errno.ENAMETOOLONG:
        return "a file name is longer than 255 bytes or the path longer than 4096"
    if error.errno == errno.ELOOP:
        return "too many levels of symbolic links (a symlink loop?)"
    return error.strerror or str(error)


def _short(path: Path) -> str:
    text = str(path)
    return text if len(text) <= 120 else f"{text[:60]}...{text[-40:]}"
