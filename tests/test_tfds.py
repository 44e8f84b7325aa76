"""The tfds: source reads a TFDS dataset prepared on disk (array_record), without TensorFlow.

The test datasets are real TFDS datasets: a ``GeneratorBasedBuilder`` with ``file_format="array_record"``
runs ``download_and_prepare`` into a temp data_dir, which writes what ``tfds build`` writes
(``NAME/[CONFIG/]VERSION/{dataset_info.json, features.json, NAME-SPLIT.array_record-0000X-of-0000Y}``).
That needs no TensorFlow as long as the generator yields images already PNG-encoded (bytes): TFDS
only calls TensorFlow to encode numpy images. The source then locates the dataset from its files
alone, as it would for `tfds:mnist` in ~/tensorflow_datasets. A third dataset has images of varying
size, like imagenet2012, for the resize path (`data.image_size`).
"""

import dataclasses
import io
import json
import shutil
import tempfile
from unittest import mock

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from jaxconv import config as config_lib
from jaxconv.config import Config, DataConfig
from jaxconv.data import tfds_source
from jaxconv.data.sources import load_split
from jaxconv.errors import ConfigError, DataError
from jaxconv.models import PRESETS

TRAIN, TEST = 20, 7


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(buf, format="png")
    return buf.getvalue()


def image_of(i: int, shape) -> np.ndarray:
    """Image i: every pixel of channel c is (i + 50 c) % 256; its label is i % 5."""
    return np.broadcast_to((i + 50 * np.arange(shape[-1])) % 256, shape).astype(np.uint8)


# The varying-size dataset: (height, width, format) of image i (its label is i). A central square of four
# constant quadrants inside a magenta frame; see photo(). Resized to 8x8: 1x (0, 1, 5), 1/2x (2, 3), 2x (4),
# 1/6x through a JPEG draft (6), 0.8x (7, validation).
PHOTOS = [(8, 14, "png"), (14, 8, "png"), (16, 24, "png"), (20, 16, "png"), (4, 6, "png"), (8, 8, "grey"),
          (48, 64, "jpeg"), (10, 12, "png")]
FRAME = (255, 0, 255)


def quadrant_colours(i: int) -> np.ndarray:
    """[4, 3]: top-left, top-right, bottom-left, bottom-right colour of photo i's central square."""
    q = np.arange(4)[:, None]
    colours = np.concatenate([(20 * i + 60 * q) % 256, 200 - 40 * q, 30 + i + 0 * q], axis=1)
    return colours.astype(np.uint8)


def photo(i: int) -> np.ndarray:
    """Photo i [H, W, 3]: the central S x S square (S = the shorter side, at ((H-S)//2, (W-S)//2)) has
    four constant quadrants, the rest is a magenta frame (grey photos: every channel the red one)."""
    h, w, kind = PHOTOS[i]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    image = np.empty((h, w, 3), np.uint8)
    image[:] = FRAME
    colours = quadrant_colours(i)
    for q, (y, x) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        image[top + y * s // 2:top + (y + 1) * s // 2, left + x * s // 2:left + (x + 1) * s // 2] = colours[q]
    return np.repeat(image[..., :1], 3, axis=-1) if kind == "grey" else image


def encoded_photo(i: int) -> bytes:
    kind = PHOTOS[i][2]
    buf = io.BytesIO()
    image = photo(i)
    Image.fromarray(image[..., 0] if kind == "grey" else image).save(buf, format="jpeg" if kind == "jpeg" else "png",
                                                                     **({"quality": 95} if kind == "jpeg" else {}))
    return buf.getvalue()


def build_datasets(data_dir):
    """Prepares two tiny TFDS datasets in ``data_dir`` (in-process, unregistered builder classes)."""
    import tensorflow_datasets as tfds

    with tfds.core.registered.skip_registration():
        class JaxconvTestDigits(tfds.core.GeneratorBasedBuilder):
            """Labelled, with a config (like imagenet_resized/32x32): train and test splits."""

            VERSION = tfds.core.Version("1.0.0")
            BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="8x6")]

            def _info(self):
                return tfds.core.DatasetInfo(builder=self, supervised_keys=("image", "label"), features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(8, 6, 3)), "label": tfds.features.ClassLabel(num_classes=5),
                    "id": tfds.features.Text()}))

            def _split_generators(self, dl_manager):
                return {"train": self._generate_examples(0, TRAIN), "test": self._generate_examples(100, TEST)}

            def _generate_examples(self, start, n):
                for i in range(start, start + n):
                    yield i, {"image": png(image_of(i, (8, 6, 3))), "label": i % 5, "id": f"img{i}"}

        class JaxconvTestUnlabelled(tfds.core.GeneratorBasedBuilder):
            """Unlabelled grey images (like downsampled_imagenet): train and validation splits."""

            VERSION = tfds.core.Version("2.0.0")

            def _info(self):
                return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(4, 4, 1))}))

            def _split_generators(self, dl_manager):
                return {"train": self._generate_examples(0, 6), "validation": self._generate_examples(6, 3)}

            def _generate_examples(self, start, n):
                for i in range(start, start + n):
                    yield i, {"image": png(image_of(i, (4, 4, 1)))}

        class JaxconvTestPhotos(tfds.core.GeneratorBasedBuilder):
            """Images of varying size (like imagenet2012): train and validation splits."""

            VERSION = tfds.core.Version("1.0.0")

            def _info(self):
                features = tfds.features.FeaturesDict({"image": tfds.features.Image(shape=(None, None, 3)),
                                                       "label": tfds.features.ClassLabel(num_classes=8)})
                return tfds.core.DatasetInfo(builder=self, supervised_keys=("image", "label"), features=features)

            def _split_generators(self, dl_manager):
                return {"train": self._generate_examples(range(7)), "validation": self._generate_examples([7])}

            def _generate_examples(self, indices):
                for i in indices:
                    yield i, {"image": encoded_photo(i), "label": i}

    # Each builder's DatasetInfo makes a temporary directory for metadata it would fetch from GCS and never
    # removes it (tfds's initialize_from_bucket): made in one removed here, not left in /tmp.
    with tempfile.TemporaryDirectory() as scratch, mock.patch.object(tempfile, "tempdir", scratch):
        for cls, kwargs in ((JaxconvTestDigits, {"config": "8x6"}), (JaxconvTestUnlabelled, {}),
                            (JaxconvTestPhotos, {})):
            cls(data_dir=str(data_dir), file_format="array_record", **kwargs).download_and_prepare(
                download_config=tfds.download.DownloadConfig(verify_ssl=False))
    return data_dir


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return build_datasets(tmp_path_factory.mktemp("tfds"))


def copy_dir(data_dir, tmp_path):
    shutil.copytree(data_dir, tmp_path / "tfds", ignore=shutil.ignore_patterns("jaxconv_cache"))
    return tmp_path / "tfds"


def check_digits(data, first, count):
    assert data.images.shape == (count, 8, 6, 3) and data.images.dtype == np.uint8 and data.num_classes == 5
    index = data.images[:, 0, 0, 0].astype(int)  # records are shuffled on disk: recover i from the pixels
    assert sorted(index) == [i % 256 for i in range(first, first + count)]
    for image, label, i in zip(data.images, data.labels, index):
        np.testing.assert_array_equal(image, image_of(i, (8, 6, 3)))
        assert label == i % 5


def test_reads_a_locally_built_dataset_without_tensorflow(data_dir):
    import sys

    assert "tensorflow" not in sys.modules
    files = sorted(p.name for p in (data_dir / "jaxconv_test_digits" / "8x6" / "1.0.0").iterdir())
    assert "dataset_info.json" in files and "features.json" in files
    assert any(".array_record-" in f for f in files)
    config = DataConfig(source="tfds:jaxconv_test_digits/8x6", path=str(data_dir))
    train, val = load_split(config, "train"), load_split(config, "val")  # val -> test (no validation split)
    check_digits(train, 0, TRAIN)
    check_digits(val, 100, TEST)
    assert train.labels.dtype == np.int32
    np.testing.assert_allclose(train.mean, train.images.mean(axis=0), atol=1e-4)
    assert "tensorflow" not in sys.modules
    # The decode cache: a second load memory-maps it.
    again = load_split(config, "train")
    assert isinstance(again.images, np.memmap)
    np.testing.assert_array_equal(again.images, train.images)


def test_split_options_and_unlabelled_datasets(data_dir):
    config = DataConfig(source="tfds:jaxconv_test_digits/8x6:train=train[:75%],val=train[75%:]", path=str(data_dir))
    train, val = load_split(config, "train"), load_split(config, "val")
    assert len(train) == 15 and len(val) == 5
    assert sorted(np.concatenate([train.images, val.images])[:, 0, 0, 0]) == list(range(TRAIN))
    config = DataConfig(source="tfds:jaxconv_test_unlabelled", path=str(data_dir))
    train, val = load_split(config, "train"), load_split(config, "val")  # val -> validation
    assert train.images.shape == (6, 4, 4, 1) and val.images.shape == (3, 4, 4, 1)
    assert train.num_classes == 1 and not train.labels.any() and sorted(val.images[:, 0, 0, 0]) == [6, 7, 8]


def test_changed_dataset_rebuilds_the_cache(data_dir, tmp_path):
    data_dir = copy_dir(data_dir, tmp_path)
    config = DataConfig(source="tfds:jaxconv_test_unlabelled", path=str(data_dir))
    assert len(load_split(config, "train")) == 6
    info = data_dir / "jaxconv_test_unlabelled" / "2.0.0" / "dataset_info.json"
    caches = list((data_dir / "jaxconv_cache" / "jaxconv_test_unlabelled" / "2.0.0").iterdir())
    before = json.loads((caches[0] / "manifest.json").read_text())["fingerprint"]
    info.write_text(info.read_text().replace('"name": "jaxconv_test_unlabelled"', '"name": "jaxconv_test_unlabelled" '))
    assert len(load_split(config, "train")) == 6
    assert list((data_dir / "jaxconv_cache" / "jaxconv_test_unlabelled" / "2.0.0").iterdir()) == caches
    assert json.loads((caches[0] / "manifest.json").read_text())["fingerprint"] != before


@pytest.mark.parametrize("source, message", [
    ("tfds:no_such_dataset", "tfds:no_such_dataset is not prepared in .*needs TensorFlow: pip install tensorflow, "
                             "then `tfds build no_such_dataset"),
    ("tfds:jaxconv_test_digits/8x6:version=9.9.9", "version 9.9.9 is not prepared"),
    ("tfds:jaxconv_test_digits/8x6:val=nosuch", "bad split 'nosuch'"),
    ("tfds:jaxconv_test_digits/8x6:shuffle=1", "bad option 'shuffle=1'"),
    ("tfds:", "bad TFDS source"),
])
def test_bad_sources_are_clear_errors(data_dir, source, message):
    with pytest.raises(DataError, match=message):
        load_split(DataConfig(source=source, path=str(data_dir)), "val")


def test_tfrecord_datasets_need_tensorflow(data_dir, tmp_path):
    """A dataset prepared as tfrecord (what `tfds build` writes by default) is refused with what to do."""
    data_dir = copy_dir(data_dir, tmp_path)
    version_dir = data_dir / "jaxconv_test_unlabelled" / "2.0.0"
    info = json.loads((version_dir / "dataset_info.json").read_text())
    info["fileFormat"] = "tfrecord"
    (version_dir / "dataset_info.json").write_text(json.dumps(info))
    for f in version_dir.glob("*.array_record-*"):
        f.rename(f.with_name(f.name.replace(".array_record-", ".tfrecord-")))
    with pytest.raises(DataError, match="stored as tfrecord, which needs TensorFlow to read: pip install tensorflow, "
                                        "or prepare the dataset in array_record format"):
        load_split(DataConfig(source="tfds:jaxconv_test_unlabelled", path=str(data_dir)), "train")
    done = run_cli("train", "pixelcnn_mnist", "--smoke", "--set", "data.source=tfds:jaxconv_test_unlabelled",
                   "--set", f"data.path={data_dir}", "--workdir", str(tmp_path / "run"))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == DataError.exit_code and len(lines) == 1, done.stderr
    assert lines[0].startswith("jaxconv: error: tfds:jaxconv_test_unlabelled in ") and "needs TensorFlow" in lines[0]


def test_read_only_data_dir_decodes_into_memory(data_dir, tmp_path, monkeypatch):
    data_dir = copy_dir(data_dir, tmp_path)
    monkeypatch.setattr(tfds_source.os, "access", lambda *args: False)
    data = load_split(DataConfig(source="tfds:jaxconv_test_digits/8x6", path=str(data_dir)), "val")
    check_digits(data, 100, TEST)
    assert type(data.images) is np.ndarray and data.mean is None
    assert not any((data_dir / "jaxconv_cache").rglob("manifest.json"))


def test_image_size_resizes_the_shorter_side_and_keeps_the_centre(data_dir):
    """data.image_size=8: every photo becomes its central square scaled to 8x8, the frame cut off."""
    config = DataConfig(source="tfds:jaxconv_test_photos", path=str(data_dir), image_size=8)
    train, val = load_split(config, "train"), load_split(config, "val")
    assert train.images.shape == (7, 8, 8, 3) and val.images.shape == (1, 8, 8, 3) and train.num_classes == 8
    assert sorted(train.labels) == list(range(7)) and list(val.labels) == [7]
    for image, i in zip([*train.images, *val.images], [*train.labels, *val.labels]):
        h, w, kind = PHOTOS[i]
        if min(h, w) == 8:  # already 8 on the shorter side: exactly the central crop
            top, left = (h - 8) // 2, (w - 8) // 2
            np.testing.assert_array_equal(image, photo(i)[top:top + 8, left:left + 8], err_msg=f"photo {i}")
        # Each quadrant is 4x4; its central 2x2 is out of reach of the resampling filter's neighbours.
        colours = quadrant_colours(i) if kind != "grey" else np.repeat(quadrant_colours(i)[:, :1], 3, axis=1)
        for q, (y, x) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
            inner = image[4 * y + 1:4 * y + 3, 4 * x + 1:4 * x + 3].astype(int)
            tolerance = 3 if kind == "jpeg" else 0
            assert np.abs(inner - colours[q]).max() <= tolerance, (i, q, inner[0, 0], colours[q])
        assert not np.all(image == FRAME, axis=-1).any(), f"photo {i}: frame pixels left"
    np.testing.assert_allclose(train.mean, train.images.mean(axis=0), atol=1e-4)
    again = load_split(config, "train")  # from the cache, apart from other sizes
    assert isinstance(again.images, np.memmap)
    np.testing.assert_array_equal(again.images, train.images)
    assert load_split(dataclasses.replace(config, image_size=4), "val").images.shape == (1, 4, 4, 3)
    caches = sorted(p.name for p in (data_dir / "jaxconv_cache" / "jaxconv_test_photos" / "1.0.0").iterdir())
    assert [(c.split("-")[0], c.split("-")[-1]) for c in caches] == [
        ("train", "8px"), ("validation", "4px"), ("validation", "8px")]


def test_varying_image_sizes_need_image_size(data_dir):
    with pytest.raises(DataError, match=r"images are uint8 of shape \(None, None, 3\); .*or data.image_size=N"):
        load_split(DataConfig(source="tfds:jaxconv_test_photos", path=str(data_dir)), "val")
    with pytest.raises(ConfigError, match="data.image_size applies to tfds: sources only"):
        config_lib.apply_overrides(Config(name="t", model=PRESETS["alexnet"]), ["data.image_size=256"])
