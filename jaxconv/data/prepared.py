"""The prepared format: a directory of raw ``.npy`` arrays that training memory-maps.

Layout of a prepared directory (``jaxconv data prepare`` writes it; the TFDS source writes the
same format as its decode cache)::

    manifest.json           {"format": "jaxconv-prepared", "version": 1, "dataset": ..., "image_shape": [H, W, C],
                             "num_classes": K, "splits": {SPLIT: {"count": N, "label_min": .., "label_max": ..}}, ...}
    SPLIT_images.npy        uint8 [N, H, W, C]   opened with np.load(mmap_mode="r"): pages are read on demand
    SPLIT_labels.npy        int32 [N]            small (5 MB for 1.28M images), read into memory
    SPLIT_mean.npy          float32 [H, W, C]    the split's mean image, in pixel units (0..255)

A directory is written under a temporary sibling name (``.OUT.partial-PID-HEX``) and renamed into
place only once every array is complete, fsynced and verified, so an interrupted write never leaves
a half-valid dataset: any exception, Ctrl-C included, removes the temporary directory, and one left
by a killed process is removed by the next writer of the same ``OUT`` (it holds no lock). Writing
is safe on a full disk: free space is checked before anything is written, and arrays are written
with ordinary writes (a full disk is then ``OSError`` -> ``StorageError``), never through a writable
memory map (where it is SIGBUS). A second writer of the same ``OUT`` is refused (``exclusive``) or
loses the final rename; it never replaces or merges into the first one's output.

Reading checks every manifest key and every array header against the file's real size before
anything is allocated, so a damaged or hand-edited directory is one ``DataError``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import io
import json
import math
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from jaxconv.errors import DataError, StorageError

FORMAT = "jaxconv-prepared"
VERSION = 1
MANIFEST = "manifest.json"


class OutputExistsError(StorageError, FileExistsError):
    """The output directory exists already, or appeared while this process was writing it.

    Also a ``FileExistsError`` so that a caller for whom losing that race is fine (the tfds decode
    cache: another process wrote the same cache) can keep treating it as an ``OSError``.
    """


class OutputBusyError(StorageError):
    """Another live process is writing the same output directory."""


HELD = -1  # _lock's answer when another open file holds the lock


def _lock(path: Path, wait_s: float = 0.0) -> int | None:
    """An fd holding an exclusive advisory lock (flock) on the directory ``path``, waiting up to
    ``wait_s`` for another holder; ``HELD`` if it is still held elsewhere; None if the directory
    cannot be opened or its file system cannot lock directories (some network file systems)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return None
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                return HELD
            time.sleep(0.02)
        except OSError:
            os.close(fd)
            return None


@contextlib.contextmanager
def _claim(out: Path, exclusive: bool) -> Iterator[Path]:
    """Creates (and locks, for its whole life) the temporary directory ``.OUT.partial-PID-HEX``.

    Under a brief lock on the parent directory it looks at the other ``.OUT.partial-*`` directories:
    one whose lock is free belongs to a process that died (SIGKILL, power loss) and is removed; one
    still locked belongs to a live writer, which is an ``OutputBusyError`` when ``exclusive``. On a
    file system that cannot lock directories this is skipped (the final rename still refuses to
    overwrite another writer's output).
    """
    prefix = f".{out.name}.partial-"
    parent_fd = _lock(out.parent, wait_s=30.0)  # held by others only for a listing and a mkdir
    parent_fd = None if parent_fd == HELD else parent_fd
    tmp_fd = None
    try:
        if parent_fd is not None:
            for other in sorted(out.parent.glob(glob.escape(prefix) + "*")):
                fd = _lock(other) if other.is_dir() and not other.is_symlink() else None
                if fd is not None and fd != HELD:  # nobody holds it: left by a process that died
                    shutil.rmtree(other, ignore_errors=True)
                    os.close(fd)
                elif fd == HELD and exclusive:
                    pid = other.name[len(prefix):].split("-")[0]
                    raise OutputBusyError(f"another process (pid {pid}) is writing {out} now; wait for it to finish "
                                          f"or choose another output directory")
        try:
            tmp = out.parent / f"{prefix}{os.getpid()}-{secrets.token_hex(4)}"
            tmp.mkdir()
        except OSError as e:
            raise StorageError(f"cannot write to {out.parent}: {e.strerror}") from None
        tmp_fd = _lock(tmp)
        tmp_fd = None if tmp_fd == HELD else tmp_fd
    finally:
        if parent_fd is not None:
            os.close(parent_fd)
    try:
        yield tmp
    finally:
        if tmp_fd is not None:
            os.close(tmp_fd)


def refuse_existing(out: Path) -> None:
    """``OutputExistsError`` unless ``out`` is absent or an empty directory."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise OutputExistsError(f"{out} already exists and is not a directory; remove it or choose another "
                                f"output directory")
    if out.is_dir() and any(out.iterdir()):
        raise OutputExistsError(f"{out} already exists and is not empty; remove it or choose another output directory")


@contextlib.contextmanager
def atomic_dir(out: Path, exclusive: bool = False) -> Iterator[Path]:
    """Yields a fresh temporary directory next to ``out``; renames it to ``out`` on success.

    ``out`` must not exist (or be an empty directory): else ``OutputExistsError``, also when another
    process renamed its own output into place first (the rename never replaces a non-empty
    directory, so the first writer's output stays intact). ``exclusive``: refuse at once
    (``OutputBusyError``) while another live process is writing ``out``. On any exception,
    including Ctrl-C, the temporary directory is removed and ``out`` is left as it was. Errors
    writing inside it (``StorageError``) name ``out``, not the temporary directory.
    """
    out = Path(out)
    refuse_existing(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(f"cannot create {out.parent}: {e.strerror}") from None
    with _claim(out, exclusive) as tmp:
        try:
            try:
                yield tmp
            except StorageError as e:
                if type(e) is StorageError and str(tmp) in str(e):
                    raise StorageError(str(e).replace(str(tmp), str(out))) from None
                raise
            try:
                os.rename(tmp, out)  # atomic; replaces an empty directory, never a non-empty one
            except OSError as e:
                if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                    raise OutputExistsError(f"{out} already exists: another process wrote it while this one "
                                            f"was writing; it is left as that process wrote it") from None
                raise StorageError(f"cannot rename {tmp} to {out}: {e.strerror}") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def split_bytes(count: int, image_shape: tuple[int, ...]) -> int:
    """Bytes that :func:`write_split` writes for ``count`` images (images, labels, mean, headers)."""
    return count * math.prod(image_shape) + 4 * count + 4 * math.prod(image_shape) + 3 * 128


def check_free_space(directory: Path, nbytes: int, what: str) -> None:
    """``StorageError`` unless the file system of ``directory`` (or its nearest existing ancestor)
    has room for ``nbytes`` more (plus 1 MiB): checked before writing, because a full disk should
    be one clear error before anything is written, not a failure half-way."""
    directory = Path(directory).absolute()
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return  # unknown: the writes themselves still report a full disk
    need = nbytes + (1 << 20)
    if free < need:
        raise StorageError(f"not enough free space for {what}: {_size(need)} needed, {_size(free)} free on "
                           f"the file system of {directory}")


def _size(nbytes: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:,} {unit}" if unit == "bytes" else f"{nbytes:,.1f} {unit}"
        nbytes /= 1024
    raise AssertionError


@contextlib.contextmanager
def _writer(path: Path) -> Iterator[Callable[[Any], None]]:
    """A ``write(bytes-like)`` for a new file ``path`` through ordinary writes (never a writable memory
    map, which a full disk answers with SIGBUS); every ``OSError`` (ENOSPC, EFBIG, EDQUOT, EIO) is a
    one-line ``StorageError``. The file is fsynced before it counts as written."""
    try:
        f = open(path, "wb")
    except OSError as e:
        raise _storage_error(path, e) from None

    def write(data: Any) -> None:
        try:
            f.write(data)
        except OSError as e:
            raise _storage_error(path, e) from None

    try:
        yield write
    except BaseException:
        with contextlib.suppress(OSError):
            f.close()
        raise
    try:
        f.flush()
        os.fsync(f.fileno())
        f.close()
    except OSError as e:
        with contextlib.suppress(OSError):
            f.close()
        raise _storage_error(path, e) from None


def _storage_error(path: Path, e: OSError) -> StorageError:
    return StorageError(f"cannot write {path}: {e.strerror or e}")


def _npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                  "fortran_order": False, "shape": tuple(shape)})
    return header.getvalue()


def _save(path: Path, array: np.ndarray) -> None:
    array = np.ascontiguousarray(array)
    with _writer(path) as write:
        write(_npy_header(array.shape, array.dtype))
        write(memoryview(array).cast("B"))


def write_split(directory: Path, split: str, count: int, image_shape: tuple[int, int, int],
                chunks: Iterable[tuple[np.ndarray, np.ndarray]], progress: str | None = None) -> dict[str, Any]:
    """Writes ``count`` images/labels from ``chunks`` of ([k, H, W, C] uint8, [k] int) as SPLIT_*.npy.

    Returns the split's manifest entry (count, label range). The mean image is accumulated on the
    way. Fewer or more images than ``count``, or chunks of another shape, are a ``DataError``; too
    little free space (checked first) or a failed write a ``StorageError``.
    """
    directory, image_shape = Path(directory), tuple(image_shape)
    check_free_space(directory, split_bytes(count, image_shape), f"the {split} split ({count:,} images)")
    labels = np.zeros(count, np.int32)
    total = np.zeros(image_shape, np.float64)
    done = 0
    # disable=None: a bar on terminals only, so logs and captured stderr stay clean.
    with (_writer(directory / f"{split}_images.npy") as write,
          tqdm(total=count, desc=progress, unit="img", disable=None if progress else True, leave=False) as bar):
        write(_npy_header((count, *image_shape), np.uint8))
        for chunk_images, chunk_labels in chunks:
            chunk_images = np.asarray(chunk_images)
            k = len(chunk_images)
            if chunk_images.dtype != np.uint8 or chunk_images.shape[1:] != image_shape or len(chunk_labels) != k:
                raise DataError(f"{split}: a chunk of {chunk_images.dtype} {chunk_images.shape} with "
                                f"{len(chunk_labels)} labels, expected uint8 [k, {', '.join(map(str, image_shape))}]")
            if done + k > count:
                raise DataError(f"{split}: more than the {count} expected images")
            chunk_labels = np.asarray(chunk_labels)
            if k and (chunk_labels.dtype.kind not in "iu" or int(chunk_labels.min()) < 0
                      or int(chunk_labels.max()) > np.iinfo(np.int32).max):
                raise DataError(f"{split}: labels must be integers in 0..2^31-1, got {chunk_labels.dtype} "
                                f"[{chunk_labels.min()}, {chunk_labels.max()}]")
            write(memoryview(np.ascontiguousarray(chunk_images)).cast("B"))
            labels[done:done + k] = chunk_labels
            total += chunk_images.sum(axis=0, dtype=np.float64)
            done += k
            bar.update(k)
        if done != count:
            raise DataError(f"{split}: {done} images written, {count} expected")
    _save(directory / f"{split}_labels.npy", labels)
    _save(directory / f"{split}_mean.npy", (total / max(count, 1)).astype(np.float32))
    low, high = (int(labels.min()), int(labels.max())) if count else (0, 0)
    return {"count": count, "label_min": low, "label_max": high}


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    manifest = {"format": FORMAT, "version": VERSION, **manifest}
    with _writer(Path(directory) / MANIFEST) as write:
        write((json.dumps(manifest, indent=2) + "\n").encode())


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
    _check_manifest(path, manifest)
    return manifest


def _is_int(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _check_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Every key training reads, with its type and range: a damaged or hand-edited manifest is one
    ``DataError`` naming the file and the key, not a KeyError or ValueError later."""

    def need(key: str, value: Any, ok: bool, expected: str) -> None:
        if value is _MISSING:
            raise DataError(f"{path} has no {key!r}; prepare the dataset again")
        if not ok:
            raise DataError(f"{path}: {key!r} is {json.dumps(value)[:60]}, expected {expected}; prepare the "
                            f"dataset again")

    dataset = manifest.get("dataset", _MISSING)
    need("dataset", dataset, isinstance(dataset, str), "a dataset name")
    shape = manifest.get("image_shape", _MISSING)
    need("image_shape", shape, isinstance(shape, list) and len(shape) == 3 and all(_is_int(d, 1) for d in shape),
         "[height, width, channels] of positive integers")
    num_classes = manifest.get("num_classes", _MISSING)
    need("num_classes", num_classes, _is_int(num_classes, 1), "a positive integer")
    splits = manifest.get("splits", _MISSING)
    need("splits", splits, isinstance(splits, dict) and all(isinstance(v, dict) for v in splits.values()),
         "an object of splits")
    for split, entry in splits.items():
        count = entry.get("count", _MISSING)
        need(f"splits.{split}.count", count, _is_int(count), "a number of images >= 0")
        for key in ("label_min", "label_max"):
            if key in entry:
                need(f"splits.{split}.{key}", entry[key], _is_int(entry[key]), "an integer >= 0")


_MISSING = object()


def verify(directory: Path, manifest: dict[str, Any]) -> None:
    """Re-opens every split as training will and checks counts and shapes against the manifest."""
    for split in manifest["splits"]:
        open_split(directory, manifest, split)


def open_split(directory: Path, manifest: dict[str, Any], split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images memmap [N, H, W, C] uint8, labels [N] int32, mean [H, W, C] float32) of a prepared split.

    ``manifest`` as :func:`read_manifest` returns it (checked)."""
    directory = Path(directory)
    if split not in manifest["splits"]:
        raise DataError(f"{directory} has no split {split!r}; splits: {', '.join(manifest['splits'])}")
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
    if count:  # the true values, before any cast could wrap them into range
        low, high, num_classes = int(labels.min()), int(labels.max()), manifest["num_classes"]
        if low < 0 or high >= num_classes:
            raise DataError(f"{directory}/{split}_labels.npy: labels span [{low}, {high}], expected "
                            f"0..{num_classes - 1}; prepare the dataset again")
    if mean.shape != shape:
        raise DataError(f"{directory}/{split}_mean.npy has shape {mean.shape}, expected {shape}")
    return images, labels.astype(np.int32, copy=False), mean.astype(np.float32, copy=False)


MAX_IN_MEMORY = 1 << 31  # bytes: labels and mean images are far smaller (5 MB for ImageNet's 1.28M labels)


def read_npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran order, dtype) of the ``.npy`` stream ``f``, left at the start of its data;
    ValueError for a format numpy does not write."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    raise ValueError(f"unsupported .npy format version {version}")


def _load(path: Path, mmap: bool = False) -> np.ndarray:
    """A prepared ``.npy`` array (memory-mapped when ``mmap``), its header checked against the file's
    real size first, so that a damaged header never makes numpy allocate what it declares."""
    try:
        with open(path, "rb") as f:
            shape, _fortran, dtype = read_npy_header(f)
            offset, size = f.tell(), os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        raise DataError(f"{path} is missing; prepare the dataset again") from None
    except (OSError, ValueError, EOFError) as e:  # truncated headers, foreign files, directories
        raise DataError(f"{path} is truncated or not a valid .npy array ({e}); prepare the dataset again") from None
    if dtype.hasobject:
        raise DataError(f"{path} holds pickled Python objects, which jaxconv never loads; prepare the dataset again")
    nbytes = math.prod(shape) * dtype.itemsize
    if any(d < 0 for d in shape) or offset + nbytes != size:
        raise DataError(f"{path} is truncated or corrupt: its header declares {dtype} {shape} ({_size(nbytes)}), "
                        f"the file holds {_size(max(size - offset, 0))}; prepare the dataset again")
    if not mmap and nbytes > MAX_IN_MEMORY:
        raise DataError(f"{path} declares {dtype} {shape} ({_size(nbytes)}): too large for an array read into "
                        f"memory; prepare the dataset again")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path} is truncated or not a valid .npy array ({e}); prepare the dataset again") from None
