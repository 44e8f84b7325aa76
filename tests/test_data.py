import dataclasses
import functools
import gzip

import flax.linen as nn
import numpy as np
import pytest

from jaxconv.config import DataConfig
from jaxconv.data.pipeline import batch_indices, eval_batches, train_batches
from jaxconv.data.sources import Split, load_split
from jaxconv.errors import DataError


class Echo(nn.Module):
    """A stand-in model that returns its input: what the model would see."""

    @nn.compact
    def __call__(self, x, train):
        return x


def test_embedded_mnist_split_is_fixed_and_balanced():
    train, val = load_split(DataConfig(), "train"), load_split(DataConfig(), "val")
    assert train.images.shape == (4000, 28, 28, 1) and val.images.shape == (1000, 28, 28, 1)
    assert train.images.dtype == np.uint8 and 0 < train.images.mean() < 255
    assert np.bincount(train.labels).tolist() == [400] * 10 and np.bincount(val.labels).tolist() == [100] * 10
    joined = np.concatenate([train.images, val.images]).reshape(5000, -1)
    assert len(np.unique(joined, axis=0)) > 4990  # the two splits are different images


def test_cv_folds_partition_the_train_split_by_quarters_of_each_class():
    train = load_split(DataConfig(), "train")
    rows = {row.tobytes(): i for i, row in enumerate(train.images.reshape(len(train), -1))}
    held_out = []
    for fold in range(4):
        fold_train = load_split(DataConfig(cv_fold=fold), "train")
        fold_val = load_split(DataConfig(cv_fold=fold), "val")
        assert np.bincount(fold_train.labels).tolist() == [300] * 10
        assert np.bincount(fold_val.labels).tolist() == [100] * 10
        train_rows = [rows[r.tobytes()] for r in fold_train.images.reshape(len(fold_train), -1)]
        val_rows = [rows[r.tobytes()] for r in fold_val.images.reshape(len(fold_val), -1)]
        assert train_rows == sorted(train_rows)  # the train split's order, its held-out quarter removed
        assert sorted(train_rows + val_rows) == list(range(4000))
        for digit in range(10):  # fold K holds out images 100K..100K+99 of each digit
            of_digit = np.flatnonzero(train.labels == digit)
            assert sorted(i for i in val_rows if train.labels[i] == digit) == of_digit[100 * fold:100 * fold + 100].tolist()
        held_out += val_rows
    assert sorted(held_out) == list(range(4000))  # each train image is held out exactly once


def test_cv_folds_need_every_class_in_every_fold():
    few = DataConfig(source="synthetic", num_examples=12, num_classes=5, cv_fold=0)  # about 2 images a class
    with pytest.raises(DataError, match=r"data.cv_fold: class \d has [0-3] train image\(s\), fewer than the 4 folds"):
        load_split(few, "train")


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
    # Values the casts to int32 / uint8 would wrap into range (4294967299 -> 3, 256 -> 0, 2^32 + 7 -> 7):
    # checked on the parsed values, and the message gives the true one.
    ([[0] * 784 + [d % 10] for d in range(20)] + [[0] * 784 + [4294967299]],
     r"label out of range \[0, 4294967299\] for 10 classes \(row 21: label 4294967299, expected 0..9\)$"),
    ([[0] * 784 + [-4294967293]] * 4, r"label out of range \[-4294967293, -4294967293\] for 10 classes"),
    ([[0] * 783 + [256, 1]] * 4, r"pixel values outside 0..255 \(row 1: 256\)$"),
    ([[0] * 784 + [1]] * 3 + [[2**32 + 7] * 784 + [1]], r"pixel values outside 0..255 \(row 4: 4294967303\)$"),
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


@pytest.mark.parametrize("batch_size, process_count", [(304, 1), (304, 2), (8, 4), (1000, 2), (1008, 8)])
def test_every_host_reads_its_slice_and_the_union_is_every_example_once(batch_size, process_count):
    data = Split(np.zeros((1000, 1, 1, 1), np.uint8), np.arange(1000, dtype=np.int32), 1000)
    seen = []
    for p in range(process_count):
        for b in eval_batches(data, batch_size, p, process_count):
            assert len(b["labels"]) == batch_size // process_count
            seen.append(b["labels"][b["mask"] > 0])
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(1000))


# ----------------------------------------------------------------------------------------------
# Evaluation over the full validation split, through the jitted/pmapped eval step on 8 devices.


@pytest.fixture(scope="module")
def eval_config():
    from jaxconv import experiments
    from jaxconv.config import apply_overrides

    return apply_overrides(experiments.load("lenet_modern_mnist", smoke=True), [
        "data.source=synthetic", "data.num_examples=4000", "data.image_shape=28,28,1", "data.batch_size=64"])


@pytest.mark.parametrize("eval_batch_size, mode", [(300, "jit"), (200, "jit"), (300, "pmap")])
def test_evaluation_counts_every_validation_example_once(eval_config, eval_batch_size, mode):
    """1,000 validation images on 8 devices: batch 300 (rounded up to 304, last batch 88 + padding) and 200."""
    import jax
    import jax.numpy as jnp

    from jaxconv import losses
    from jaxconv.models import build_model
    from jaxconv.train import loop

    config = eval_config.replace(data=dataclasses.replace(eval_config.data, eval_batch_size=eval_batch_size),
                                 parallel=dataclasses.replace(eval_config.parallel, mode=mode))
    run = loop.build_run(config)
    assert len(run.val_data) == 1000 and run.par.num_devices == 8
    assert run.par.eval_batch_size == -(-eval_batch_size // 8) * 8
    model = build_model(config.model)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
    rng = np.random.default_rng(0)  # random parameters without compiling an init
    params = jax.tree.map(lambda s: rng.normal(0, 0.1, s.shape).astype(s.dtype), shapes)
    result = loop.evaluate(run, run.par.place_state(params))
    # The same metrics computed directly over all 1,000 images at once.
    direct = jax.jit(lambda p, x, y: losses.classification_sums(
        model.apply({"params": p}, x / 255.0, train=False), y, jnp.ones(len(y))))
    sums = direct(params, run.val_data.images, run.val_data.labels)
    assert result["count"] == 1000
    for name in ("loss", "accuracy", "top5_accuracy"):
        np.testing.assert_allclose(result[name], float(sums[name]) / 1000, rtol=2e-5, err_msg=name)


# ----------------------------------------------------------------------------------------------
# Augmentation


@functools.cache
def _compiled(fn, static):
    import jax

    return jax.jit(functools.partial(fn, **dict(static)))


class _Compiled:
    """``compiled.NAME``: jaxconv.preprocess's NAME compiled as one program, its keyword arguments static
    (op by op, each of its small ops was compiled on its own: most of these tests' time on a CPU)."""

    def __getattr__(self, name):
        from jaxconv import preprocess

        return lambda *args, **static: _compiled(getattr(preprocess, name), tuple(sorted(static.items())))(*args)


compiled = _Compiled()


def _images(n=64, h=6, w=5, c=3, seed=0):
    return np.random.default_rng(seed).random((n, h, w, c)).astype(np.float32) + 1.0  # > 0: padding is visible


def test_flip_mirrors_about_half_of_the_images():
    import jax

    x = _images()
    y = np.asarray(compiled.augment(x, jax.random.key(3), flip=True))
    flipped = np.array([np.array_equal(b, a[:, ::-1]) for a, b in zip(x, y)])
    kept = np.array([np.array_equal(b, a) for a, b in zip(x, y)])
    assert (flipped ^ kept).all() and 10 < flipped.sum() < 54


def test_crop_shifts_the_content_and_pads_with_zeros():
    import jax

    x, pad = _images(), 2
    y = np.asarray(compiled.augment(x, jax.random.key(4), crop_pad=pad))
    assert y.shape == x.shape
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    shifts = []
    for a, b in zip(padded, y):
        matches = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                   if np.array_equal(a[dy:dy + 6, dx:dx + 5], b)]
        assert len(matches) == 1
        shifts.append(matches[0])
    assert len(set(shifts)) > 10  # per-image shifts, all 25 possible


def test_augmentation_is_a_pure_function_of_the_key_and_off_in_eval():
    import jax

    from jaxconv import experiments, tasks
    from jaxconv.config import apply_overrides

    config = apply_overrides(experiments.load("lenet_modern_mnist"), [
        "data.augment_crop_pad=1", "data.augment_flip=true", "data.subtract_mean=true", "data.augment_rotate=0",
        "data.augment_scale=0", "data.augment_elastic=0"])
    images = (np.arange(8 * 4 * 4 * 3) % 256).astype(np.uint8).reshape(8, 4, 4, 3)
    mean = images.mean(axis=0)
    forward = tasks.Classification(Echo(), config, mean).forward
    forward = jax.jit(forward, static_argnums=3)
    batch, key = {"images": images}, jax.random.key(0)
    centred = images / 255.0 - mean / 255.0
    np.testing.assert_allclose(forward({}, batch, key, False), centred, atol=1e-6)  # eval: the mean only
    train = np.asarray(forward({}, batch, key, True))
    np.testing.assert_array_equal(train, forward({}, batch, key, True))  # same key, same augmentation
    expected = compiled.augment(centred.astype(np.float32), jax.random.fold_in(key, tasks.AUGMENT_STREAM),
                                crop_pad=1, flip=True)
    np.testing.assert_allclose(train, expected, atol=1e-6)
    steps = [np.asarray(forward({}, batch, jax.random.fold_in(key, s), True)) for s in range(3)]
    assert not np.array_equal(steps[0], steps[1]) and not np.array_equal(steps[1], steps[2])


def test_augmentation_config_is_checked():
    from jaxconv import experiments
    from jaxconv.config import apply_overrides
    from jaxconv.errors import ConfigError

    with pytest.raises(ConfigError, match="data.augment_crop_pad must be >= 0"):
        apply_overrides(experiments.load("lenet_modern_mnist"), ["data.augment_crop_pad=-1"])
    with pytest.raises(ConfigError, match="data.subtract_mean needs data.pixels=unit"):
        apply_overrides(experiments.load("lenet_modern_mnist"), ["data.subtract_mean=true", "data.pixels=binary"])
    from jaxconv import tasks
    from jaxconv.models import build_model

    config = apply_overrides(experiments.load("pixelcnn_mnist"), ["data.augment_flip=true"])
    mnist = tasks.DataSpec((28, 28, 1), num_classes=10, train_examples=4000)
    with pytest.raises(ConfigError, match="apply to classification models only"):
        tasks.task_for(build_model(config.model), config).validate(mnist)
    # data.pixels for a density model may name the head's values, and nothing else
    config = apply_overrides(experiments.load("pixelcnn_mnist"), ["data.pixels=uint8"])
    with pytest.raises(ConfigError, match="data.pixels=uint8 does not fit model.head=bernoulli"):
        tasks.task_for(build_model(config.model), config).validate(mnist)
    config = apply_overrides(experiments.load("pixelcnn_mnist"), ["data.pixels=binary"])
    tasks.task_for(build_model(config.model), config).validate(mnist)


# ----------------------------------------------------------------------------------------------
# Rotation and scale (data.augment_rotate, data.augment_scale)


def test_rotate_scale_is_exact_at_right_angles_and_at_rest():
    x = _images(n=3, h=6, w=6)
    ones, zeros = np.ones(3), np.zeros(3)
    np.testing.assert_array_equal(compiled.rotate_scale(x, zeros, ones), x)  # angle 0, factor 1
    # counter-clockwise as displayed, about the centre: numpy's rot90 of the (rows, columns) axes
    np.testing.assert_allclose(compiled.rotate_scale(x, np.full(3, 90.0), ones), np.rot90(x, 1, axes=(1, 2)),
                               atol=1e-5)
    np.testing.assert_allclose(compiled.rotate_scale(x, np.full(3, -90.0), ones), np.rot90(x, -1, axes=(1, 2)),
                               atol=1e-5)
    odd = _images(n=3, h=7, w=5)  # about the centre of a non-square image too
    np.testing.assert_allclose(compiled.rotate_scale(odd, np.full(3, 180.0), ones), odd[:, ::-1, ::-1], atol=1e-5)
    # per image: the first turned, the second zoomed out by 2 (corners outside -> 0; centre kept), the third left
    y = np.asarray(compiled.rotate_scale(odd, np.array([180.0, 0.0, 0.0]), np.array([1.0, 0.5, 1.0])))
    np.testing.assert_allclose(y[0], odd[0, ::-1, ::-1], atol=1e-5)
    np.testing.assert_allclose(y[1, 3, 2], odd[1, 3, 2], atol=1e-6)
    np.testing.assert_array_equal(y[1, 0, 0], 0)
    np.testing.assert_array_equal(y[2], odd[2])


def test_random_rotate_scale_is_a_pure_shape_preserving_function_of_the_key():
    import jax
    import jax.numpy as jnp

    from jaxconv import preprocess

    x = _images(n=16, h=8, w=8)
    y = np.asarray(compiled.random_rotate_scale(x, jax.random.key(0), degrees=15.0, scale=0.1))
    assert y.shape == x.shape and y.dtype == x.dtype
    np.testing.assert_array_equal(y, compiled.random_rotate_scale(x, jax.random.key(0), degrees=15.0, scale=0.1))
    assert not np.array_equal(y, compiled.random_rotate_scale(x, jax.random.key(1), degrees=15.0, scale=0.1))
    assert not any(np.allclose(a, b) for a, b in zip(x, y))  # every image moved
    # a different transform per image: the same image 16 times comes out 16 ways
    same = np.repeat(x[:1], 16, axis=0)
    z = np.asarray(compiled.random_rotate_scale(same, jax.random.key(2), degrees=15.0, scale=0.1))
    assert len({row.tobytes() for row in z}) == 16
    # zero strength: the images themselves, for either knob off alone too
    for knobs in ({}, {"degrees": 0.0, "scale": 0.0}):
        np.testing.assert_array_equal(compiled.random_rotate_scale(x, jax.random.key(0), **knobs), x)
    np.testing.assert_array_equal(compiled.augment(x, jax.random.key(0)), x)
    rotated = np.asarray(compiled.random_rotate_scale(x, jax.random.key(0), degrees=15.0))
    zoomed = np.asarray(compiled.random_rotate_scale(x, jax.random.key(0), scale=0.1))
    assert not np.array_equal(rotated, x) and not np.array_equal(zoomed, x)
    # traced (as in the jitted train step) and in bfloat16: the same shape and dtype
    half = jax.jit(preprocess.random_rotate_scale, static_argnums=(2, 3))(jnp.asarray(x, jnp.bfloat16),
                                                                          jax.random.key(0), 15.0, 0.1)
    assert half.shape == x.shape and half.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(half, np.float32), y, atol=0.02)


def test_small_rotations_keep_a_digit_recognisable():
    """A 10-degree turn of a real digit moves little ink: most stays on, none appears far away."""
    import jax

    digits = load_split(DataConfig(source="mnist"), "train").images[:32].astype(np.float32) / 255.0
    turned = np.asarray(compiled.rotate_scale(digits, np.full(32, 10.0), np.ones(32)))
    ink = digits.sum(axis=(1, 2, 3))
    np.testing.assert_allclose(turned.sum(axis=(1, 2, 3)), ink, rtol=0.05)  # bilinear keeps the mass, ~
    overlap = (np.minimum(turned, digits).sum(axis=(1, 2, 3)) / ink)
    assert overlap.min() > 0.4, overlap.min()
    again = np.asarray(compiled.random_rotate_scale(digits, jax.random.key(0), degrees=10.0, scale=0.1))
    assert np.all(np.abs(again.sum(axis=(1, 2, 3)) / ink - 1) < 0.3)  # zoom changes the ink by (1 +- 0.1)^2


def test_distortions_reach_the_model_in_training_only_and_are_checked():
    import jax

    from jaxconv import experiments, tasks
    from jaxconv.config import apply_overrides
    from jaxconv.errors import ConfigError
    from jaxconv.models import build_model

    config = apply_overrides(experiments.load("lenet_modern_mnist"), [
        "data.augment_crop_pad=1", "data.augment_rotate=10", "data.augment_scale=0.1", "data.augment_elastic=20"])
    images = (np.arange(8 * 6 * 6) % 256).astype(np.uint8).reshape(8, 6, 6, 1)
    forward = jax.jit(tasks.Classification(Echo(), config).forward, static_argnums=3)
    batch, key = {"images": images}, jax.random.key(0)
    unit = images / 255.0
    np.testing.assert_allclose(forward({}, batch, key, False), unit, atol=1e-6)  # evaluation: none
    expected = compiled.augment(unit.astype(np.float32), jax.random.fold_in(key, tasks.AUGMENT_STREAM),
                                crop_pad=1, rotate=10.0, scale=0.1, elastic=20.0)
    np.testing.assert_allclose(forward({}, batch, key, True), expected, atol=1e-6)
    # turning a distortion on leaves the crop's randomness as it was: the same shifts of the distorted images
    crop_only = compiled.augment(unit.astype(np.float32), jax.random.key(1), crop_pad=1)
    for knob in ({"rotate": 1e-9}, {"elastic": 1e-9}):
        distorted = compiled.augment(unit.astype(np.float32), jax.random.key(1), crop_pad=1, **knob)
        np.testing.assert_allclose(distorted, crop_only, atol=1e-5)

    load = lambda *o: apply_overrides(experiments.load("lenet_modern_mnist"), list(o))  # noqa: E731
    with pytest.raises(ConfigError, match="data.augment_rotate must be >= 0"):
        load("data.augment_rotate=-1")
    with pytest.raises(ConfigError, match="data.augment_rotate must be at most 180"):
        load("data.augment_rotate=181")
    with pytest.raises(ConfigError, match=r"data.augment_scale must be in \[0, 1\)"):
        load("data.augment_scale=1")
    with pytest.raises(ConfigError, match="data.augment_elastic must be >= 0"):
        load("data.augment_elastic=-1")
    mnist = tasks.DataSpec((28, 28, 1), num_classes=10, train_examples=4000)
    for override in ("data.augment_rotate=5", "data.augment_scale=0.1", "data.augment_elastic=34"):
        config = apply_overrides(experiments.load("pixelcnn_mnist"), [override])
        with pytest.raises(ConfigError, match="apply to classification models only"):
            tasks.task_for(build_model(config.model), config).validate(mnist)


def test_random_elastic_is_a_pure_shape_preserving_function_of_the_key():
    import jax
    import jax.numpy as jnp

    from jaxconv import preprocess

    x = _images(n=8, h=12, w=10)
    y = np.asarray(compiled.random_elastic(x, jax.random.key(0), alpha=34.0))
    assert y.shape == x.shape and y.dtype == x.dtype
    np.testing.assert_array_equal(y, compiled.random_elastic(x, jax.random.key(0), alpha=34.0))
    assert not np.array_equal(y, compiled.random_elastic(x, jax.random.key(1), alpha=34.0))
    assert not any(np.allclose(a, b) for a, b in zip(x, y))
    np.testing.assert_array_equal(compiled.random_elastic(x, jax.random.key(0), alpha=0.0), x)  # off
    np.testing.assert_array_equal(compiled.augment(x, jax.random.key(0), elastic=0.0), x)
    # a tiny strength moves every pixel by a tiny amount: the image, nearly
    np.testing.assert_allclose(compiled.random_elastic(x, jax.random.key(0), alpha=1e-3), x, atol=1e-3)
    half = jax.jit(preprocess.random_elastic, static_argnums=2)(jnp.asarray(x, jnp.bfloat16), jax.random.key(0), 34.0)
    assert half.shape == x.shape and half.dtype == jnp.bfloat16


def test_the_elastic_field_is_smooth_and_small():
    """The Gaussian keeps a constant field constant away from the edges and shrinks white noise to a few
    hundredths: alpha 34 moves pixels by about 1.3 pixels (Simard et al. 2003's sigma 4, alpha 34)."""
    import jax
    import jax.numpy as jnp

    ones = jnp.ones((1, 40, 40, 2))
    np.testing.assert_allclose(compiled.gaussian_blur(ones, sigma=4.0)[0, 14:26, 14:26], 1.0, rtol=1e-3)  # 3.5 sigma
    noise = jax.random.uniform(jax.random.key(0), (64, 28, 28, 2), minval=-1.0, maxval=1.0)
    smooth = np.asarray(compiled.gaussian_blur(noise, sigma=4.0))[:, 8:20, 8:20]
    assert 0.03 < smooth.std() < 0.05  # uniform noise's std 0.577 / (2 sqrt(pi) sigma) = 0.041
    neighbours = np.corrcoef(smooth[:, :-1].ravel(), smooth[:, 1:].ravel())[0, 1]
    assert neighbours > 0.95, neighbours  # adjacent pixels move together (white noise: 0)
