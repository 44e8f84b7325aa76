"""ImageNet32 / ImageNet64 (Chrabaszcz et al. 2017, image-net.org "downsampled" npz variant).

The official npz files: ``train_data_batch_1.npz`` .. ``train_data_batch_10.npz`` and ``val_data.npz``,
each with ``data`` (uint8 [N, 3*R*R], stored plane by plane: all R values, then G, then B, each plane
row-major R x R), ``labels`` (1..1000) and, in the train files, ``mean`` ([3*R*R] in pixel units).
``jaxconv data prepare imagenet32 --src DIR --out DIR`` converts them once into the prepared format
(:mod:`jaxconv.data.prepared`: NHWC uint8 ``.npy`` that training memory-maps, labels 0..999, the
train split's mean image); ``data.source=imagenet32`` with ``data.path=OUT`` then reads it.
Splits: ``train`` = the ten train batches in file order, ``val`` = ``val_data.npz``.

The older variant of these files is pickled Python dicts: it is refused, never unpickled.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from jaxconv.data import prepared
from jaxconv.errors import DataError

RESOLUTIONS = {"imagenet32": 32, "imagenet64": 64}
NUM_CLASSES = 1000
TRAIN_FILES = tuple(f"train_data_batch_{i}.npz" for i in range(1, 11))
VAL_FILES = ("val_data.npz",)
SPLIT_FILES = {"train": TRAIN_FILES, "val": VAL_FILES}
OFFICIAL_COUNTS = {"train": 1_281_167, "val": 50_000}
CHUNK = 8192  # rows converted at a time: bounded memory (100 MB at 64x64)


def planes_to_nhwc(rows: np.ndarray, resolution: int) -> np.ndarray:
    """[N, 3*R*R] plane-by-plane rows -> [N, R, R, 3] images."""
    return rows.reshape(-1, 3, resolution, resolution).transpose(0, 2, 3, 1)


# ----------------------------------------------------------------------------------------------
# Reading the npz files without unpickling anything and without loading a whole file at once.


SUPPORTED_COMPRESSION = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}  # what np.savez writes
MAX_DEFLATE_RATIO = 1100  # deflate never expands data more than 1032-fold: a larger claim is a lie
MAX_ROWS = 1 << 24  # per file; the official files hold ~128k (train) and 50k (val) rows


def _member_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype, bool, zipfile.ZipInfo, int]]:
    """key -> (shape, dtype, fortran_order, zip member, header length) for every array in an npz.

    Every array's declared shape is checked against the bytes its member really holds (and the
    member's declared size against what its compressed bytes can hold) before anything is read,
    so a lying header is a ``DataError``, never a huge allocation."""
    if not path.is_file():
        raise DataError(f"{path} is missing")
    with open(path, "rb") as f:
        head = f.read(8)
    if not zipfile.is_zipfile(path):
        if head[:1] == b"\x80" or head[:1] in (b"(", b"}"):
            raise DataError(f"{path} is a pickled Python file (the older ImageNet32 variant); jaxconv never "
                            f"unpickles downloaded files: download the npz variant")
        if head.startswith(b"PK"):
            raise DataError(f"{path} is truncated or corrupt (a zip archive without its directory)")
        raise DataError(f"{path} is not an npz archive (truncated or a foreign file)")
    headers = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                _check_member(path, info)
                with archive.open(info) as member:
                    shape, fortran, dtype = prepared.read_npy_header(member)
                    headers[info.filename[:-4]] = (shape, dtype, fortran, info, member.tell())
    except (zipfile.BadZipFile, zlib.error, ValueError, EOFError, OSError, NotImplementedError, RuntimeError) as e:
        # NotImplementedError / RuntimeError: zipfile's words for other compressions and encryption
        raise DataError(f"{path} is corrupt or not an npz of arrays ({e})") from None
    for key, (shape, dtype, _fortran, info, offset) in headers.items():
        if dtype.hasobject:
            raise DataError(f"{path}: array {key!r} holds pickled Python objects; jaxconv never unpickles "
                            f"downloaded files: download the official npz variant")
        nbytes = math.prod(shape) * dtype.itemsize
        if any(d < 0 for d in shape) or info.file_size != offset + nbytes:
            raise DataError(f"{path}: {key!r} is truncated or corrupt: its header declares {dtype} {shape} "
                            f"({nbytes:,} bytes), the archive holds {max(info.file_size - offset, 0):,}")
    return headers


def _check_member(path: Path, info: zipfile.ZipInfo) -> None:
    if info.flag_bits & 0x1:
        raise DataError(f"{path}: unsupported zip encryption (member {info.filename!r} is encrypted); the official "
                        f"files are not")
    if info.compress_type not in SUPPORTED_COMPRESSION:
        raise DataError(f"{path}: unsupported zip compression (method {info.compress_type} in member "
                        f"{info.filename!r}); numpy writes {' or '.join(SUPPORTED_COMPRESSION.values())}")
    limit = info.compress_size * (1 if info.compress_type == zipfile.ZIP_STORED else MAX_DEFLATE_RATIO) + 1024
    if info.file_size > limit:
        raise DataError(f"{path}: member {info.filename!r} claims {info.file_size:,} bytes from "
                        f"{info.compress_size:,} compressed: corrupt")


def inspect_file(path: Path, resolution: int, with_mean: bool) -> dict[str, Any]:
    """Checks one npz file's keys, dtypes and shapes from its headers; returns its row count and headers."""
    headers = _member_headers(path)
    for key in ("data", "labels"):
        if key not in headers:
            raise DataError(f"{path} has no {key!r} array (keys: {', '.join(sorted(headers)) or 'none'}): "
                            f"not an ImageNet{resolution} npz file")
    shape, dtype, fortran, info, offset = headers["data"]
    row = 3 * resolution * resolution
    if len(shape) != 2 or dtype != np.uint8:
        raise DataError(f"{path}: 'data' is {dtype} {shape}, expected uint8 [N, {row}]")
    if shape[1] != row:
        other = {3 * r * r: name for name, r in RESOLUTIONS.items()}.get(shape[1])
        hint = f" (this looks like {other})" if other else ""
        raise DataError(f"{path}: 'data' rows have {shape[1]} values, ImageNet{resolution} has {row}{hint}")
    if fortran:
        raise DataError(f"{path}: 'data' is stored in Fortran order; not an official ImageNet{resolution} file")
    if shape[0] > MAX_ROWS:
        raise DataError(f"{path}: 'data' declares {shape[0]:,} rows, more than the {MAX_ROWS:,} a file may hold")
    lshape, ldtype, *_ = headers["labels"]
    if lshape != (shape[0],) or ldtype.kind not in "iu":
        raise DataError(f"{path}: 'labels' is {ldtype} {lshape}, expected {shape[0]} integers")
    if with_mean and "mean" in headers:
        mshape, mdtype, *_ = headers["mean"]
        if mshape != (row,) or mdtype.kind not in "fiu":
            raise DataError(f"{path}: 'mean' is {mdtype} {mshape}, expected [{row}] numbers")
    return {"count": shape[0], "data_member": info, "data_offset": offset, "has_mean": "mean" in headers}


def _small_array(path: Path, key: str) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return archive[key]
    except (zipfile.BadZipFile, zlib.error, ValueError, EOFError, OSError, KeyError, NotImplementedError,
            RuntimeError) as e:
        raise DataError(f"{path}: cannot read {key!r} ({e})") from None


def read_labels(path: Path) -> np.ndarray:
    """The file's labels shifted from 1..1000 to 0..999."""
    labels = _small_array(path, "labels")
    if labels.dtype.kind not in "iu":
        raise DataError(f"{path}: 'labels' is {labels.dtype}, expected integers")
    if len(labels):  # the true values, in the file's own integer type: no cast may wrap them into range
        low, high = int(labels.min()), int(labels.max())
        if low < 1 or high > NUM_CLASSES:
            raise DataError(f"{path}: labels span [{low}, {high}], expected 1..{NUM_CLASSES}")
    return (labels.astype(np.int64) - 1).astype(np.int32)


def iter_rows(path: Path, meta: dict[str, Any], resolution: int) -> Iterator[np.ndarray]:
    """The file's images as [k, R, R, 3] uint8 chunks, streamed from the zip member (never all at once)."""
    row = 3 * resolution * resolution
    remaining = meta["count"]
    try:
        with zipfile.ZipFile(path) as archive, archive.open(meta["data_member"]) as member:
            member.read(meta["data_offset"])  # skip the .npy header
            while remaining:
                k = min(CHUNK, remaining)
                buf = member.read(k * row)
                if len(buf) != k * row:
                    raise DataError(f"{path}: 'data' ends early (truncated file)")
                yield planes_to_nhwc(np.frombuffer(buf, np.uint8), resolution)
                remaining -= k
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as e:
        raise DataError(f"{path} is corrupt ({e})") from None


def load_npz(path: Path, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """One official npz file -> ([N, R, R, 3] uint8 images, [N] int32 labels 0..999)."""
    meta = inspect_file(Path(path), resolution, with_mean=True)
    images = np.concatenate(list(iter_rows(Path(path), meta, resolution)) or
                            [np.zeros((0, resolution, resolution, 3), np.uint8)])
    return images, read_labels(Path(path))


# ----------------------------------------------------------------------------------------------
# Prepare: npz files -> prepared directory.


def prepare(dataset: str, src: Path, out: Path, progress: bool = True) -> dict[str, Any]:
    """Converts the official npz files in ``src`` into a prepared directory ``out``; returns its manifest."""
    if dataset not in RESOLUTIONS:
        raise DataError(f"unknown dataset {dataset!r}; datasets: {', '.join(RESOLUTIONS)}")
    resolution = RESOLUTIONS[dataset]
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise DataError(f"source directory not found: {src}")
    prepared.refuse_existing(out)
    missing = [name for names in SPLIT_FILES.values() for name in names if not (src / name).is_file()]
    if missing:
        listed = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise DataError(f"{src} lacks {len(missing)} of the 11 official {dataset} npz files "
                        f"(train_data_batch_1..10.npz, val_data.npz): {listed}")
    # Every header is checked before anything is written: a foreign or truncated file fails fast.
    files = {split: [(src / name, inspect_file(src / name, resolution, with_mean=split == "train"))
                     for name in names] for split, names in SPLIT_FILES.items()}
    shape = (resolution, resolution, 3)
    counts = {split: sum(meta["count"] for _, meta in entries) for split, entries in files.items()}
    # Room for everything before anything is read or written: a full disk is one line, not a failure half-way.
    prepared.check_free_space(out.parent, sum(prepared.split_bytes(n, shape) for n in counts.values()) + 65536,
                              f"{dataset} ({sum(counts.values()):,} images)")
    labels = {split: [read_labels(path) for path, _ in entries] for split, entries in files.items()}
    file_mean = next((_small_array(path, "mean") for path, meta in files["train"] if meta["has_mean"]), None)
    manifest: dict[str, Any] = {"dataset": dataset, "image_shape": list(shape), "num_classes": NUM_CLASSES,
                                "splits": {}, "sources": {}}
    with prepared.atomic_dir(out, exclusive=True) as tmp:
        for split, entries in files.items():
            count = counts[split]

            def chunks(entries=entries, split=split):
                for (path, meta), file_labels in zip(entries, labels[split]):
                    start = 0
                    for images in iter_rows(path, meta, resolution):
                        yield images, file_labels[start:start + len(images)]
                        start += len(images)

            manifest["splits"][split] = prepared.write_split(tmp, split, count, shape, chunks(),
                                                             progress=f"{dataset} {split}" if progress else None)
            manifest["sources"][split] = [path.name for path, _ in entries]
        if file_mean is not None:  # the files' own mean (plane layout) next to the one computed here
            ours = np.load(tmp / "train_mean.npy")
            theirs = planes_to_nhwc(np.asarray(file_mean, np.float64), resolution)[0]
            manifest["file_mean_max_abs_diff"] = round(float(np.abs(ours - theirs).max()), 4)
        prepared.write_manifest(tmp, manifest)
        prepared.verify(tmp, prepared.read_manifest(tmp))
    return manifest


def open_prepared(dataset: str, path: str, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(images memmap, labels, the split's mean image, num_classes) of a prepared ImageNet32/64 directory."""
    hint = f"; run `jaxconv data prepare {dataset} --src DOWNLOAD_DIR --out DIR` and set data.path=DIR"
    if not path:
        raise DataError(f"data.source={dataset} needs data.path: the prepared directory{hint}")
    manifest = prepared.read_manifest(Path(path), hint)
    if manifest.get("dataset") != dataset:
        raise DataError(f"{path} holds {manifest.get('dataset')!r}, not {dataset!r}; set data.source accordingly")
    images, labels, mean = prepared.open_split(Path(path), manifest, split)
    return images, labels, mean, int(manifest["num_classes"])
