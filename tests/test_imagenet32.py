"""ImageNet32/64: the official npz format -> `jaxconv data prepare` -> memory-mapped training data."""

import json
import pickle

import numpy as np
import pytest

from conftest import run_cli
from jaxconv.config import DataConfig
from jaxconv.data import imagenet, prepared
from jaxconv.data.pipeline import eval_batches, train_batches
from jaxconv.data.sources import load_split
from jaxconv.errors import DataError

TRAIN_COUNTS = (3, 2, 4, 1, 3, 2, 2, 3, 1, 2)  # images in train_data_batch_1..10 (23 in all)
VAL_COUNT = 5


def expected_images(first: int, count: int, resolution: int) -> np.ndarray:
    """Images [count, R, R, 3] whose every value is known: image i has R = i + 3y, G = 2i + 5x + 1, B = 7 + x + y."""
    i = np.arange(first, first + count)[:, None, None]
    y = np.arange(resolution)[None, :, None]
    x = np.arange(resolution)[None, None, :]
    r, g, b = np.broadcast_arrays(i + 3 * y, 2 * i + 5 * x + 1, 7 + x + y + 0 * i)
    return (np.stack([r, g, b], axis=-1) % 256).astype(np.uint8)


def expected_labels(first: int, count: int) -> np.ndarray:
    return (np.arange(first, first + count) * 37 + 11) % 1000  # 0..999


def official_rows(images: np.ndarray) -> np.ndarray:
    """[N, R, R, 3] -> the official layout: [N, 3*R*R], all R values, then G, then B, each row-major."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def write_official(src, resolution=32, train_counts=TRAIN_COUNTS, val_count=VAL_COUNT):
    """The official npz files (labels 1..1000, the train mean in every train file)."""
    src.mkdir(parents=True, exist_ok=True)
    total = sum(train_counts)
    mean = official_rows(expected_images(0, total, resolution)).mean(axis=0)  # plane layout, pixel units
    first = 0
    for k, count in enumerate(train_counts, start=1):
        np.savez(src / f"train_data_batch_{k}.npz", data=official_rows(expected_images(first, count, resolution)),
                 labels=expected_labels(first, count) + 1, mean=mean)
        first += count
    np.savez(src / "val_data.npz", data=official_rows(expected_images(10_000, val_count, resolution)),
             labels=expected_labels(10_000, val_count) + 1)
    return src


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    return write_official(tmp_path_factory.mktemp("imagenet32-npz"))


@pytest.fixture(scope="module")
def prepared32(official, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "imagenet32"
    imagenet.prepare("imagenet32", official, out, progress=False)
    return out


def test_official_layout_is_planes_then_rows():
    images = expected_images(4, 2, 32)
    rows = official_rows(images)
    assert rows[0, 0] == images[0, 0, 0, 0] and rows[0, 1024] == images[0, 0, 0, 1] and rows[0, 2048] == images[0, 0, 0, 2]
    assert rows[1, 1] == images[1, 0, 1, 0] and rows[1, 32] == images[1, 1, 0, 0]  # row-major within a plane
    np.testing.assert_array_equal(imagenet.planes_to_nhwc(rows, 32), images)


def test_load_npz_reads_pixels_and_shifts_labels(official):
    images, labels = imagenet.load_npz(official / "train_data_batch_2.npz", 32)
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
    assert tuple(images[0, 0, 0]) == (3, 7, 7) and tuple(images[1, 0, 0]) == (4, 9, 7)  # image 3 and 4: (i, 2i+1, 7)
    np.testing.assert_array_equal(images, expected_images(3, 2, 32))
    np.testing.assert_array_equal(labels, expected_labels(3, 2))


def test_prepare_round_trip(official, prepared32):
    manifest = json.loads((prepared32 / "manifest.json").read_text())
    assert manifest["splits"]["train"]["count"] == 23 and manifest["splits"]["val"]["count"] == 5
    assert manifest["image_shape"] == [32, 32, 3] and manifest["num_classes"] == 1000
    assert manifest["file_mean_max_abs_diff"] < 1e-3
    labels = expected_labels(0, 23)
    assert (manifest["splits"]["train"]["label_min"], manifest["splits"]["train"]["label_max"]) == (labels.min(), labels.max())
    assert not list(prepared32.parent.glob(".*partial*"))
    train = load_split(DataConfig(source="imagenet32", path=str(prepared32)), "train")
    val = load_split(DataConfig(source="imagenet32", path=str(prepared32)), "val")
    assert isinstance(train.images, np.memmap) and train.num_classes == 1000
    np.testing.assert_array_equal(train.images, expected_images(0, 23, 32))
    np.testing.assert_array_equal(val.images, expected_images(10_000, 5, 32))
    for i in (0, 7, 22):  # pixel (0, 0) of image i is (R, G, B) = (i, 2i + 1, 7)
        assert tuple(train.images[i, 0, 0]) == (i, 2 * i + 1, 7)
    np.testing.assert_array_equal(train.labels, expected_labels(0, 23))
    np.testing.assert_array_equal(val.labels, expected_labels(10_000, 5))
    assert train.labels.dtype == np.int32 and train.labels.min() >= 0
    np.testing.assert_allclose(train.mean, expected_images(0, 23, 32).mean(axis=0), atol=1e-4)
    file_mean = np.load(official / "train_data_batch_1.npz")["mean"]
    np.testing.assert_allclose(train.mean, imagenet.planes_to_nhwc(file_mean, 32)[0], atol=1e-4)


def test_memmapped_batches_are_plain_arrays_of_the_right_rows(prepared32):
    data = load_split(DataConfig(source="imagenet32", path=str(prepared32)), "train")
    batch = next(train_batches(data, 8, seed=0, start_step=2))
    assert type(batch["images"]) is np.ndarray and batch["images"].shape == (8, 32, 32, 3)
    for image, label in zip(batch["images"], batch["labels"]):
        i = int(image[0, 0, 0])  # R at (0, 0) is the image index
        np.testing.assert_array_equal(image, expected_images(i, 1, 32)[0])
        assert label == expected_labels(i, 1)[0]
    seen = np.concatenate([b["images"][b["mask"] > 0][:, 0, 0, 0] for b in eval_batches(data, 8)])
    np.testing.assert_array_equal(np.sort(seen), np.arange(23))


def test_imagenet64_prepare(tmp_path):
    src = write_official(tmp_path / "src", resolution=64, train_counts=(1,) * 10, val_count=2)
    imagenet.prepare("imagenet64", src, tmp_path / "out", progress=False)
    train = load_split(DataConfig(source="imagenet64", path=str(tmp_path / "out")), "train")
    np.testing.assert_array_equal(train.images, expected_images(0, 10, 64))
    with pytest.raises(DataError, match="holds 'imagenet64', not 'imagenet32'"):
        load_split(DataConfig(source="imagenet32", path=str(tmp_path / "out")), "train")
    with pytest.raises(DataError, match="12288 values, ImageNet32 has 3072 .this looks like imagenet64"):
        imagenet.prepare("imagenet32", src, tmp_path / "out32", progress=False)


def _damage(src, how):
    path = src / "train_data_batch_3.npz"
    if how == "missing":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:3000])
    elif how == "pickled":  # the older variant: a pickled dict
        path.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [1, 2]}, protocol=2))
    elif how == "object array":
        np.savez(path, data=np.array([b"x", None], dtype=object), labels=np.array([1, 2]))
    elif how == "foreign":
        np.savez(path, x=np.zeros(3), y=np.ones(3))
    elif how == "garbage":
        path.write_bytes(b"\x00" * 5000)
    elif how == "bad labels":
        np.savez(path, data=np.zeros((2, 3072), np.uint8), labels=np.array([0, 1000]))
    elif how == "short data":  # a member shorter than its header says: cut out of an intact archive
        np.savez(path, data=np.zeros((4, 3072), np.uint8), labels=np.array([1, 2, 3, 4]))
        import zipfile
        with zipfile.ZipFile(path) as z:
            data, labels = z.read("data.npy"), z.read("labels.npy")
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("data.npy", data[:-3072])
            z.writestr("labels.npy", labels)


@pytest.mark.parametrize("how, message", [
    ("missing", r"lacks 1 of the 11 official imagenet32 npz files .*: train_data_batch_3.npz$"),
    ("truncated", "train_data_batch_3.npz is truncated or corrupt"),
    ("pickled", "train_data_batch_3.npz is a pickled Python file"),
    ("object array", "'data' holds pickled Python objects"),
    ("foreign", "has no 'data' array .keys: x, y.: not an ImageNet32 npz file"),
    ("garbage", "is not an npz archive"),
    ("bad labels", r"labels span \[0, 1000\], expected 1..1000"),
    ("short data", "'data' is truncated"),
])
def test_bad_files_are_clear_errors_and_leave_nothing(tmp_path, how, message):
    src = write_official(tmp_path / "src")
    _damage(src, how)
    with pytest.raises(DataError, match=message):
        imagenet.prepare("imagenet32", src, tmp_path / "out", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no output, no partial directory


def test_interrupted_prepare_leaves_no_dataset(official, tmp_path, monkeypatch):
    real = prepared.write_split

    def interrupted(directory, split, *args, **kwargs):
        if split == "val":
            raise KeyboardInterrupt
        return real(directory, split, *args, **kwargs)

    monkeypatch.setattr(prepared, "write_split", interrupted)
    with pytest.raises(KeyboardInterrupt):
        imagenet.prepare("imagenet32", official, tmp_path / "out", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_damaged_prepared_directory_is_a_clear_error(prepared32, tmp_path):
    import shutil

    with pytest.raises(DataError, match="needs data.path"):
        load_split(DataConfig(source="imagenet32"), "train")
    with pytest.raises(DataError, match="not a prepared dataset .no manifest.json.; run `jaxconv data prepare"):
        load_split(DataConfig(source="imagenet32", path=str(tmp_path)), "train")
    copy = tmp_path / "copy"
    shutil.copytree(prepared32, copy)
    images = copy / "train_images.npy"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(DataError, match="train_images.npy is truncated"):
        load_split(DataConfig(source="imagenet32", path=str(copy)), "train")
    with pytest.raises(DataError, match="already exists and is not empty"):
        imagenet.prepare("imagenet32", tmp_path, copy, progress=False)


def test_cli_prepare_end_to_end_and_one_line_errors(official, tmp_path):
    out = tmp_path / "imagenet32"
    done = run_cli("data", "prepare", "imagenet32", "--src", str(official), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "train 23, val 5 images of 32x32x3" in done.stdout and done.stderr == ""
    assert load_split(DataConfig(source="imagenet32", path=str(out)), "val").images.shape == (5, 32, 32, 3)

    src = write_official(tmp_path / "bad")
    _damage(src, "pickled")
    done = run_cli("data", "prepare", "imagenet32", "--src", str(src), "--out", str(tmp_path / "out2"))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == DataError.exit_code and len(lines) == 1, done.stderr
    assert lines[0].startswith("jaxconv: error: ") and "pickled Python file" in lines[0]
    assert not (tmp_path / "out2").exists()


def test_train_step_and_evaluation_on_prepared_imagenet32_with_augmentation(prepared32):
    """The memory-mapped split through prefetch, the augmenting train step and a masked evaluation."""
    import jax
    import jax.numpy as jnp

    import experiments
    from jaxconv.config import apply_overrides
    from jaxconv.data.pipeline import prefetch
    from jaxconv.models import build_model
    from jaxconv.train import loop
    from jaxconv.train.state import TrainState

    config = apply_overrides(experiments.load("lenet_modern_mnist", smoke=True), [
        "data.source=imagenet32", f"data.path={prepared32}", "model.num_classes=1000", "parallel.num_devices=1",
        "data.batch_size=8", "data.eval_batch_size=3", "data.augment_crop_pad=4", "data.augment_flip=true",
        "data.subtract_mean=true"])
    run = loop.build_run(config)
    # Random parameters from shapes alone: compiling LeNet's init costs more than this whole test.
    shapes = jax.eval_shape(build_model(config.model).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.05, s.shape), s.dtype), shapes)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=run.tx.init(params),
                       rng=jax.random.key_data(jax.random.key(0)))
    state = run.par.place_state(state)
    batches = prefetch(train_batches(run.train_data, 8, 0, 0), run.par.put_batch)
    for _ in range(2):
        state, metrics = run.train_step(state, next(batches))
    assert int(state.step) == 2 and np.isfinite(float(metrics["loss"]))
    result = loop.evaluate(run, state.params)
    assert result["count"] == 5 and np.isfinite(result["loss"])
