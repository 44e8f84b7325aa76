"""The prepared format: a directory of raw ``.npy`` arrays that training memory-maps.

Layout of a prepared directory (``jaxconv data prepare`` writes it; the TFDS source writes the
same format as its decode cache)::

    manifest.json           {"format": "jaxconv-prepared", "version": 1, "dataset": ..., "image_shape": [H, W, C],
                             "num_classes": K, "splits": {SPLIT: {"count": N, "label_min": .., "label_max": ..}}, ...}
    SPLIT_images.npy        uint8 [N, H, W, C]   opened with np.load(mmap_mode="r"): pages are read on demand
    SPLIT_labels.npy        int32 [N]            small (5 MB for 1.28M images), read into memory
    SPLIT_mean.npy          float32 [H, W, C]    the split's mean image, in pixel units (0..255)

A directory is written under a temporary sibling name and renamed into place only once every
array is complete and verified, so an interrupted write never leaves a half-valid dataset.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from jaxconv.errors import DataError

FORMAT = "jaxconv-prepared"
VERSION = 1
MANIFEST = "manifest.json"


@contextlib.contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """Yields a fresh temporary directory next to ``out``; renames it to ``out`` on success.

    ``out`` must not exist (or be an empty directory). On any exception, including Ctrl-C, the
    temporary directory is removed and ``out`` is left as it was.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} already exists and is not empty; remove it or choose another output directory")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir()
    except OSError as e:
        raise DataError(f"cannot write to {out.parent}: {e.strerror}") from None
    try:
        yield tmp
        if out.is_dir():
            out.rmdir()  # empty (checked above)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_split(directory: Path, split: str, count: int, image_shape: tuple[int, int, int],
                chunks: Iterable[tuple[np.ndarray, np.ndarray]], progress: str | None = None) -> dict[str, Any]:
    """Writes ``count`` images/labels from ``chunks`` of ([k, H, W, C] uint8, [k] int) as SPLIT_*.npy.

    Returns the split's manifest entry (count, label range). The mean image is accumulated on the
    way. Fewer or more images than ``count`` is a ``DataError``.
    """
    images = np.lib.format.open_memmap(directory / f"{split}_images.npy", mode="w+", dtype=np.uint8,
                                       shape=(count, *image_shape))
    labels = np.zeros(count, np.int32)
    total = np.zeros(image_shape, np.float64)
    done = 0
    # disable=None: a bar on terminals only, so logs and captured stderr stay clean.
    with tqdm(total=count, desc=progress, unit="img", disable=None if progress else True, leave=False) as bar:
        for chunk_images, chunk_labels in chunks:
            k = len(chunk_images)
            if done + k > count:
                raise DataError(f"{split}: more than the {count} expected images")
            images[done:done + k] = chunk_images
            labels[done:done + k] = chunk_labels
            total += chunk_images.sum(axis=0, dtype=np.float64)
            done += k
            bar.update(k)
    if done != count:
        raise DataError(f"{split}: {done} images written, {count} expected")
    images.flush()
    del images
    np.save(directory / f"{split}_labels.npy", labels)
    np.save(directory / f"{split}_mean.npy", (total / max(count, 1)).astype(np.float32))
    low, high = (int(labels.min()), int(labels.max())) if count else (0, 0)
    return {"count": count, "label_min": low, "label_max": high}


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    manifest = {"format": FORMAT, "version": VERSION, **manifest}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def read_manifest(directory: Path, hint: str = "") -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not Path(directory).is_dir():
        raise DataError(f"prepared dataset directory not found: {directory}{hint}")
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{directory} is not a prepared dataset (no {MANIFEST}){hint}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is unreadable ({e}); prepare the dataset again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path} is not a jaxconv prepared-dataset manifest")
    if manifest.get("version") != VERSION:
        raise DataError(f"{path} has format version {manifest.get('version')}, this jaxconv reads version "
                        f"{VERSION}; prepare the dataset again")
    return manifest


def verify(directory: Path, manifest: dict[str, Any]) -> None:
    """Re-opens every split as training will and checks counts and shapes against the manifest."""
    for split in manifest["splits"]:
        open_split(directory, manifest, split)


def open_split(directory: Path, manifest: dict[str, Any], split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images memmap [N, H, W, C] uint8, labels [N] int32, mean [H, W, C] float32) of a prepared split."""
    directory = Path(directory)
    if split not in manifest.get("splits", {}):
        raise DataError(f"{directory} has no split {split!r}; splits: {', '.join(manifest.get('splits', {}))}")
    count = manifest["splits"][split]["count"]
    shape = tuple(manifest["image_shape"])
    images = _load(directory / f"{split}_images.npy", mmap=True)
    labels = _load(directory / f"{split}_labels.npy")
    mean = _load(directory / f"{split}_mean.npy")
    if images.dtype != np.uint8 or images.shape != (count, *shape):
        raise DataError(f"{directory}/{split}_images.npy holds {images.dtype} {images.shape}, the manifest says "
                        f"uint8 {(count, *shape)}; prepare the dataset again")
    if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{directory}/{split}_labels.npy holds {labels.dtype} {labels.shape}, expected {count} "
                        f"integer labels; prepare the dataset again")
    if mean.shape != shape:
        raise DataError(f"{directory}/{split}_mean.npy has shape {mean.shape}, expected {shape}")
    return images, labels.astype(np.int32, copy=False), mean.astype(np.float32, copy=False)


def _load(path: Path, mmap: bool = False) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path} is missing; prepare the dataset again") from None
    except (OSError, ValueError, EOFError) as e:  # truncated arrays, foreign files, object arrays
        raise DataError(f"{path} is truncated or not a valid .npy array ({e}); prepare the dataset again") from None
