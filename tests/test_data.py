import gzip

import numpy as np
import pytest

from jaxconv.config import DataConfig
from jaxconv.data.pipeline import batch_indices, eval_batches, train_batches
from jaxconv.data.sources import Split, load_split
from jaxconv.errors import DataError


def test_embedded_mnist_split_is_fixed_and_balanced():
    train, val = load_split(DataConfig(), "train"), load_split(DataConfig(), "val")
    assert train.images.shape == (4000, 28, 28, 1) and val.images.shape == (1000, 28, 28, 1)
    assert train.images.dtype == np.uint8 and 0 < train.images.mean() < 255
    assert np.bincount(train.labels).tolist() == [400] * 10 and np.bincount(val.labels).tolist() == [100] * 10
    joined = np.concatenate([train.images, val.images]).reshape(5000, -1)
    assert len(np.unique(joined, axis=0)) > 4990  # the two splits are different images


def test_batch_order_is_a_pure_function_of_seed_and_step():
    a = [batch_indices(100, 32, seed=3, step=s) for s in range(6)]
    b = [batch_indices(100, 32, seed=3, step=s) for s in range(6)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(batch_indices(100, 32, 4, 0), a[0])
    epoch0 = np.concatenate(a[:3])  # 3 full batches per epoch; remainder dropped
    assert len(np.unique(epoch0)) == 96
    assert not np.array_equal(a[0], a[3])  # a new shuffle each epoch


def test_resuming_the_iterator_gives_the_same_batches():
    data = Split(np.arange(50, dtype=np.uint8).reshape(50, 1, 1, 1), np.zeros(50, np.int32), 10)
    full = train_batches(data, 8, seed=1, start_step=0)
    batches = [next(full)["images"] for _ in range(10)]
    resumed = train_batches(data, 8, seed=1, start_step=7)
    for s in range(7, 10):
        np.testing.assert_array_equal(next(resumed)["images"], batches[s])


def test_hosts_take_disjoint_slices_of_each_global_batch():
    data = Split(np.arange(64, dtype=np.uint8).reshape(64, 1, 1, 1), np.zeros(64, np.int32), 10)
    slices = [next(train_batches(data, 16, 0, 5, process_index=p, process_count=4))["images"] for p in range(4)]
    union = np.sort(np.concatenate(slices).ravel())
    np.testing.assert_array_equal(union, np.sort(data.images[batch_indices(64, 16, 0, 5)].ravel()))


@pytest.mark.parametrize("batch_size", [10, 7, 64, 100])
def test_eval_batches_cover_every_example_exactly_once(batch_size):
    data = Split(np.arange(50, dtype=np.uint8).reshape(50, 1, 1, 1), np.zeros(50, np.int32), 10)
    seen = np.concatenate([b["images"].ravel()[b["mask"] > 0] for b in eval_batches(data, batch_size)])
    np.testing.assert_array_equal(np.sort(seen), np.arange(50))


def _write_csv(path, rows):
    with gzip.open(path, "wt") as f:
        f.write("\n".join(",".join(map(str, r)) for r in rows) + "\n")


@pytest.mark.parametrize("content, message", [
    (None, "not found"),
    (b"\x1f\x8b\x08garbage", "not a readable MNIST csv.gz"),
    ([[0] * 10 + [3]] * 4, "expected rows of 784 pixels"),
    ([[0] * 784 + [12]] * 4, "label out of range"),
    ([[300] * 784 + [1]] * 4, "pixel values outside 0..255"),
])
def test_bad_mnist_files_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "mnist.csv.gz"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        _write_csv(path, content)
    with pytest.raises(DataError, match=message):
        load_split(DataConfig(path=str(path)), "train")


def test_synthetic_source_has_the_requested_shape():
    data = load_split(DataConfig(source="synthetic", image_shape=(8, 6, 3), num_examples=40, num_classes=7), "train")
    assert data.images.shape == (40, 8, 6, 3) and data.labels.max() < 7
