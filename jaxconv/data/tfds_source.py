"""TFDS datasets, read without TensorFlow through TFDS's array_record data sources.

``data.source="tfds:NAME"`` (NAME may name a config: ``tfds:imagenet_resized/32x32``), ``data.path`` =
the TFDS data_dir that holds the *prepared* dataset (empty: ``$TFDS_DATA_DIR``, else
``~/tensorflow_datasets``). The dataset is located from its files alone
(``DATA_DIR/NAME/VERSION/{dataset_info.json, features.json, *.array_record-*}``), newest version
first, so no dataset code is imported.

Split mapping (our split -> TFDS split spec):
- ``train`` -> ``train``;
- ``val`` -> ``validation`` if the dataset has it, else ``test`` (mnist, cifar10: ``test``;
  imagenet_resized, downsampled_imagenet: ``validation``).
Options follow a second colon, comma-separated: ``tfds:mnist:train=train[:90%],val=train[90%:]``
(any TFDS split spec), ``tfds:mnist:version=3.0.1``.

Images must have a fixed uint8 shape (mnist 28x28x1, cifar10 and the 32x32 ImageNets 32x32x3), unless
``data.image_size`` = N asks for every image to be resized, as datasets of varying image size need
(``imagenet2012``): the shorter side is scaled to N and the central N x N kept (:func:`resize_center_crop`,
the preprocessing of Krizhevsky et al. 2012, section 2, with N = 256). Resizing happens once, when a
split is decoded into the cache, in threads (Pillow releases the GIL), and only the channel count must
then be fixed. Mind the disk: at N = 256 the cache holds 196,608 bytes an image, 252 GB for
imagenet2012's 1,281,167 training images and 9.8 GB for its 50,000 validation images.
Labels are the dataset's ``ClassLabel`` (its supervised label when it declares one); an unlabelled
dataset (``downsampled_imagenet``) gets labels of 0 and ``num_classes=1``: fit for density models,
whose ``model.num_classes`` is 0.

The first use of a split decodes it once (PNG/JPEG -> uint8) into a memory-mappable cache in the
prepared format (``DATA_DIR/jaxconv_cache/NAME/VERSION/SPEC[-Npx]/``, rebuilt when the dataset's
``dataset_info.json`` changes); later runs start in seconds. Where the data_dir is not writable the
split is decoded into memory instead.

What needs TensorFlow is refused with a one-line ``DataError`` that says what to do: downloading and
preparing a dataset (``tfds build``), and datasets stored only as tfrecord.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from jaxconv.data import prepared
from jaxconv.errors import DataError

PREFIX = "tfds:"
OPTIONS = ("train", "val", "version")
CHUNK = 2048
_VERSION = re.compile(r"^\d+\.\d+\.\d+$")


def parse_source(source: str) -> tuple[str, dict[str, str]]:
    """``tfds:NAME[:key=value,...]`` -> (NAME, options)."""
    body = source[len(PREFIX):]
    name, _, rest = body.partition(":")
    if not name or name.startswith("/") or name.endswith("/") or ".." in name:
        raise DataError(f"bad TFDS source {source!r}; expected tfds:NAME or tfds:NAME/CONFIG, e.g. tfds:mnist")
    options: dict[str, str] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in OPTIONS or not value:
            raise DataError(f"bad option {item!r} in {source!r}; options: train=SPLIT, val=SPLIT, version=X.Y.Z "
                            f"(e.g. tfds:mnist:val=train[90%:])")
        options[key] = value
    return name, options


def default_data_dir() -> Path:
    return Path(os.environ.get("TFDS_DATA_DIR") or Path.home() / "tensorflow_datasets")


def find_dataset_dir(name: str, data_dir: Path, version: str | None = None) -> Path:
    """DATA_DIR/NAME/VERSION of the newest prepared version (or the one asked for)."""
    root = data_dir / name
    versions = sorted((p for p in root.iterdir() if _VERSION.match(p.name) and (p / "dataset_info.json").is_file())
                      if root.is_dir() else [], key=lambda p: tuple(int(x) for x in p.name.split(".")))
    if version is not None:
        versions = [p for p in versions if p.name == version]
    if not versions:
        what = f"{name} version {version}" if version else name
        raise DataError(f"tfds:{what} is not prepared in {data_dir} (no {name}/VERSION/dataset_info.json); "
                        f"downloading and preparing it needs TensorFlow: pip install tensorflow, then "
                        f"`tfds build {name} --data_dir {data_dir} --file_format array_record` (datasets that "
                        f"need a manual download, such as imagenet2012, also take --manual_dir DIR, the directory "
                        f"holding the downloaded files)")
    return versions[-1]


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise DataError(f"the tfds: source needs tensorflow-datasets: pip install tensorflow-datasets ({e})") from None
    return tfds


def open_builder(name: str, dataset_dir: Path):
    """A read-only TFDS builder from the dataset's files; refuses what would need TensorFlow."""
    tfds = _import_tfds()
    try:
        builder = tfds.builder_from_directory(dataset_dir)
    except Exception as e:  # noqa: BLE001 - TFDS raises many types for unreadable metadata
        raise DataError(f"{dataset_dir} is not a readable TFDS dataset ({type(e).__name__}: {e})") from None
    formats = [builder.info.file_format, *getattr(builder.info, "alternative_file_formats", [])]
    if tfds.core.FileFormat.ARRAY_RECORD not in formats:
        stored = ", ".join(str(getattr(f, "value", f)) for f in formats if f is not None) or "an unknown format"
        raise DataError(f"tfds:{name} in {dataset_dir.parent} is stored as {stored}, which needs TensorFlow to read: "
                        f"pip install tensorflow, or prepare the dataset in array_record format "
                        f"(`tfds build {name} --file_format array_record`)")
    try:
        import array_record.python.array_record_data_source  # noqa: F401
    except ImportError:
        raise DataError(f"reading tfds:{name} needs the array_record package: pip install array_record") from None
    return builder


def feature_keys(name: str, builder, image_size: int = 0) -> tuple[str, str | None, tuple[int, int, int], int]:
    """(image key, label key or None, image shape, num_classes) from the dataset's features.

    With ``image_size`` = N the shape is (N, N, C): only the channel count C must be fixed.
    """
    tfds = _import_tfds()
    features = builder.info.features
    supervised = builder.info.supervised_keys
    images = [k for k, f in features.items() if isinstance(f, tfds.features.Image)]
    if supervised and isinstance(supervised[0], str) and supervised[0] in images:
        image_key, label_key = supervised[0], supervised[1] if isinstance(supervised[1], str) else None
    elif "image" in images or len(images) == 1:
        image_key = "image" if "image" in images else images[0]
        label_key = "label" if "label" in features else None
    else:
        raise DataError(f"tfds:{name} has no single image feature (features: {', '.join(features)})")
    image = features[image_key]
    shape = tuple(image.shape)
    if image_size:
        if len(shape) != 3 or shape[-1] not in (1, 3) or np.dtype(image.np_dtype) != np.uint8:
            raise DataError(f"tfds:{name}: images are {image.np_dtype} of shape {shape}; resizing (data.image_size) "
                            f"needs uint8 images with a fixed 1 or 3 channels")
        shape = (image_size, image_size, shape[-1])
    elif len(shape) != 3 or None in shape or np.dtype(image.np_dtype) != np.uint8:
        raise DataError(f"tfds:{name}: images are {image.np_dtype} of shape {shape}; the tfds source needs one fixed "
                        f"uint8 shape [H, W, C] (e.g. imagenet_resized/32x32), or data.image_size=N to resize "
                        f"every image to N x N (e.g. 256 for imagenet2012)")
    if label_key is None:
        return image_key, None, shape, 1
    label = features[label_key]
    if not isinstance(label, tfds.features.ClassLabel):
        raise DataError(f"tfds:{name}: label feature {label_key!r} is {type(label).__name__}, not a ClassLabel")
    return image_key, label_key, shape, int(label.num_classes)


def resize_center_crop(encoded: bytes, size: int, channels: int = 3) -> np.ndarray:
    """An encoded image (PNG, JPEG, ...) -> its central square scaled to [size, size, channels] uint8.

    As Krizhevsky et al. 2012 (section 2): the image is rescaled so that its shorter side is ``size``
    and the central size x size patch is cropped, done here in one step: Pillow resamples the central
    square of the original (side = the shorter side, top-left corner ((H - S) // 2, (W - S) // 2)),
    bilinear with antialiasing, so an image whose shorter side is already ``size`` is cropped
    exactly. A JPEG is first decoded at 1/2, 1/4 or 1/8 scale, the smallest that keeps both sides at
    least ``size`` (``Image.draft``: the JPEG decoder's DCT scaling, several times faster).
    Greyscale, palette, CMYK and alpha images are converted to ``channels`` (RGB or L).
    """
    from PIL import Image

    mode = "RGB" if channels == 3 else "L"
    with Image.open(io.BytesIO(encoded)) as image:
        image.draft(mode, (size, size))  # JPEG only; a no-op for other formats
        image = image.convert(mode)
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    out = image.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side))
    array = np.asarray(out, np.uint8)
    return array[..., None] if channels == 1 else array  # [size, size, channels]


def _resize(name: str, size: int, channels: int, item: tuple[int, bytes]) -> np.ndarray:
    index, encoded = item
    try:
        return resize_center_crop(encoded, size, channels)
    except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for undecodable or truncated images
        raise DataError(f"tfds:{name}: record {index} is not a decodable image ({type(e).__name__}: {e})") from None


def split_spec(name: str, builder, split: str, options: dict[str, str]) -> str:
    if split in options:
        return options[split]
    available = list(builder.info.splits.keys())
    candidates = ("train",) if split == "train" else ("validation", "test")
    for candidate in candidates:
        if candidate in available:
            return candidate
    raise DataError(f"tfds:{name} has no {' or '.join(candidates)} split for our {split!r} split (splits: "
                    f"{', '.join(available)}); choose one, e.g. data.source=tfds:{name}:{split}=train[90%:]")


def _chunks(name: str, source, image_key: str, label_key: str | None, shape: tuple[int, ...], image_size: int = 0):
    """([k, H, W, C] uint8 images, [k] int64 labels) of CHUNK records at a time, in record order.

    With ``image_size`` the records hold the encoded images (SkipDecoding), resized in threads.
    """
    pool = ThreadPoolExecutor(thread_name_prefix="jaxconv-resize") if image_size else None
    resize = partial(_resize, name, image_size, shape[-1])
    try:
        for start in range(0, len(source), CHUNK):
            indices = list(range(start, min(start + CHUNK, len(source))))
            records = source.__getitems__(indices)
            if pool is not None:
                images = np.stack(list(pool.map(resize, zip(indices, (r[image_key] for r in records)))))
            else:
                images = np.stack([np.asarray(r[image_key]) for r in records])
            if images.shape[1:] != shape or images.dtype != np.uint8:
                raise DataError(f"tfds:{name}: decoded images are {images.dtype} {images.shape[1:]}, "
                                f"features say {shape}")
            labels = (np.array([r[label_key] for r in records], np.int64) if label_key
                      else np.zeros(len(records), np.int64))
            yield images, labels
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def load(source: str, data_path: str, split: str,
         image_size: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
    """(images [N, H, W, C] uint8 (memory-mapped when cached), labels [N] int32, mean or None, num_classes).

    ``image_size`` = N > 0: every image resized to N x N (:func:`resize_center_crop`); cached apart.
    """
    name, options = parse_source(source)
    data_dir = Path(data_path) if data_path else default_data_dir()
    dataset_dir = find_dataset_dir(name, data_dir, options.get("version"))
    builder = open_builder(name, dataset_dir)
    image_key, label_key, shape, num_classes = feature_keys(name, builder, image_size)
    spec = split_spec(name, builder, split, options)
    fingerprint = hashlib.sha256((dataset_dir / "dataset_info.json").read_bytes()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", spec) + "-" + hashlib.sha256(spec.encode()).hexdigest()[:8]
    slug += f"-{image_size}px" if image_size else ""
    cache = data_dir / "jaxconv_cache" / name / dataset_dir.name / slug
    manifest = _cached(cache, fingerprint)
    if manifest is None:
        decoders = {image_key: _import_tfds().decode.SkipDecoding()} if image_size else None
        try:
            source_data = builder.as_data_source(split=spec, file_format="array_record", decoders=decoders)
        except (ValueError, KeyError, AssertionError) as e:
            raise DataError(f"tfds:{name}: bad split {spec!r} ({e}); splits: "
                            f"{', '.join(builder.info.splits.keys())}") from None
        if len(source_data) == 0:
            raise DataError(f"tfds:{name} split {spec!r} is empty")
        chunks = _chunks(name, source_data, image_key, label_key, shape, image_size)
        info = {"dataset": f"tfds:{name}", "tfds_version": dataset_dir.name, "tfds_split": spec,
                "fingerprint": fingerprint, "image_shape": list(shape), "num_classes": num_classes, "splits": {}}
        if image_size:
            info["resized"] = f"shorter side to {image_size}, central {image_size}x{image_size} (Pillow bilinear)"
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            writable = os.access(cache.parent, os.W_OK)
        except OSError:
            writable = False
        if not writable:
            images, labels = (np.concatenate(parts) for parts in zip(*chunks))
            return images, labels.astype(np.int32), None, num_classes
        manifest = _write_cache(cache, info, len(source_data), shape, chunks, name, spec)
    images, labels, mean = prepared.open_split(cache, manifest, "data")
    return images, labels, mean, num_classes


def _cached(cache: Path, fingerprint: str) -> dict[str, Any] | None:
    if not (cache / prepared.MANIFEST).is_file():
        return None
    try:
        manifest = prepared.read_manifest(cache)
    except DataError:
        return None
    return manifest if manifest.get("fingerprint") == fingerprint else None


def _write_cache(cache: Path, info: dict[str, Any], count: int, shape, chunks, name: str, spec: str) -> dict[str, Any]:
    import shutil

    if cache.exists():  # stale: the dataset was prepared again
        shutil.rmtree(cache, ignore_errors=True)
    try:
        with prepared.atomic_dir(cache) as tmp:
            info["splits"]["data"] = prepared.write_split(tmp, "data", count, shape, chunks,
                                                          progress=f"decoding tfds:{name} {spec}")
            prepared.write_manifest(tmp, info)
    except (DataError, OSError):
        manifest = _cached(cache, info["fingerprint"])  # another process finished the same cache first
        if manifest is None:
            raise
        return manifest
    return prepared.read_manifest(cache)
