"""ImageNet32/64: the official npz format -> `jaxconv data prepare` -> memory-mapped training data."""

import io
import json
import pickle
import shutil
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from conftest import REPO, run_cli
from jaxconv.config import DataConfig
from jaxconv.data import imagenet, prepared
from jaxconv.data.pipeline import eval_batches, train_batches
from jaxconv.data.sources import load_split
from jaxconv.errors import DataError, StorageError

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
        with zipfile.ZipFile(path) as z:
            data, labels = z.read("data.npy"), z.read("labels.npy")
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("data.npy", data[:-3072])
            z.writestr("labels.npy", labels)
    elif how == "huge shape":  # headers declaring 10^12 rows over a few real ones
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("data.npy", npy_header((10**12, 3072), "|u1") + bytes(2 * 3072))
            z.writestr("labels.npy", npy_header((10**12,), "<i8") + bytes(16))
    elif how == "huge labels":  # 'data' intact, 'labels' declaring 10^12 entries over 2 real ones
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("data.npy", npy_header((2, 3072), "|u1") + bytes(2 * 3072))
            z.writestr("labels.npy", npy_header((10**12,), "<i8") + bytes(16))
    elif how in ("compression 99", "encrypted"):  # e.g. WinZip AES: method 99 and the encryption flag
        np.savez(path, data=np.zeros((2, 3072), np.uint8), labels=np.array([1, 2]))
        raw = bytearray(path.read_bytes())
        # (signature, offset of the flags, offset of the method): local file headers and the central directory
        for signature, flags, method in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
            at = raw.find(signature)
            while at >= 0:
                if how == "encrypted":
                    raw[at + flags] |= 1
                else:
                    raw[at + method:at + method + 2] = struct.pack("<H", 99)
                at = raw.find(signature, at + 4)
        path.write_bytes(bytes(raw))
    elif how == "uint64 label":
        np.savez(path, data=np.zeros((2, 3072), np.uint8), labels=np.array([2**63 + 5, 3], np.uint64))


def npy_header(shape, descr):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": descr, "fortran_order": False, "shape": shape})
    return header.getvalue()


@pytest.mark.parametrize("how, message", [
    ("missing", r"lacks 1 of the 11 official imagenet32 npz files .*: train_data_batch_3.npz$"),
    ("truncated", "train_data_batch_3.npz is truncated or corrupt"),
    ("pickled", "train_data_batch_3.npz is a pickled Python file"),
    ("object array", "'data' holds pickled Python objects"),
    ("foreign", "has no 'data' array .keys: x, y.: not an ImageNet32 npz file"),
    ("garbage", "is not an npz archive"),
    ("bad labels", r"labels span \[0, 1000\], expected 1..1000"),
    ("short data", "'data' is truncated"),
    ("huge shape", r"'data' is truncated or corrupt: its header declares uint8 \(1000000000000, 3072\)"),
    ("huge labels", r"'labels' is truncated or corrupt: its header declares int64 \(1000000000000,\)"),
    ("compression 99", r"train_data_batch_3.npz: unsupported zip compression \(method 99 in member 'data.npy'\)"),
    ("encrypted", r"train_data_batch_3.npz: unsupported zip encryption \(member 'data.npy' is encrypted\)"),
    ("uint64 label", r"labels span \[3, 9223372036854775813\], expected 1..1000$"),  # the true value, not -2^63+5
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
    with pytest.raises(StorageError, match="already exists and is not empty"):
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


# ----------------------------------------------------------------------------------------------
# A prepared directory damaged after the fact: each key and array training reads is checked.


def _edit_manifest(edit):
    def damage(directory):
        manifest = json.loads((directory / "manifest.json").read_text())
        edit(manifest)
        (directory / "manifest.json").write_text(json.dumps(manifest))
    return damage


def _write_npy(name, header, body=bytes(92)):
    def damage(directory):
        (directory / name).write_bytes(header + body)
    return damage


@pytest.mark.parametrize("damage, message", [
    (_edit_manifest(lambda m: m["splits"]["train"].pop("count")), r"manifest.json has no 'splits.train.count'"),
    (_edit_manifest(lambda m: m.update(num_classes="many")),
     r"manifest.json: 'num_classes' is \"many\", expected a positive integer"),
    (_edit_manifest(lambda m: m.update(num_classes=True)), r"manifest.json: 'num_classes' is true"),
    (_edit_manifest(lambda m: m.pop("image_shape")), r"manifest.json has no 'image_shape'"),
    (_edit_manifest(lambda m: m.update(image_shape=[32, 32, "3"])),
     r"manifest.json: 'image_shape' is \[32, 32, \"3\"\]"),
    (_edit_manifest(lambda m: m.update(splits=[])), r"manifest.json: 'splits' is \[\]"),
    (_write_npy("train_labels.npy", npy_header((10**12, 3072), "<i4")),
     r"train_labels.npy is truncated or corrupt: its header declares int32 \(1000000000000, 3072\)"),
    (_write_npy("train_mean.npy", npy_header((10**12, 3072), "<f4")),
     r"train_mean.npy is truncated or corrupt: its header declares float32 \(1000000000000, 3072\)"),
    # int64 labels 2^32 + k would wrap to k in the cast to int32
    (lambda d: np.save(d / "train_labels.npy", np.arange(23, dtype=np.int64) + 2**32),
     r"train_labels.npy: labels span \[4294967296, 4294967318\], expected 0..999"),
], ids=["no count", "num_classes many", "num_classes bool", "no image_shape", "image_shape str", "splits list",
        "labels header 10^12", "mean header 10^12", "labels wrap int32"])
def test_damaged_prepared_directory_is_one_data_error(prepared32, tmp_path, damage, message):
    copy = tmp_path / "copy"
    shutil.copytree(prepared32, copy)
    damage(copy)
    with pytest.raises(DataError, match=message):
        load_split(DataConfig(source="imagenet32", path=str(copy)), "train")


# ----------------------------------------------------------------------------------------------
# Disk space, concurrent writers, interrupted writers: one line, nothing partial left anywhere.


def only_src_left(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir()) == ["src"]


@pytest.mark.parametrize("free", [0, 50_000])  # nothing free; room for val but not for train
def test_free_space_is_checked_before_anything_is_written(official, tmp_path, monkeypatch, free):
    (tmp_path / "src").symlink_to(official)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - free, free))
    with pytest.raises(StorageError, match=r"not enough free space for imagenet32 \(28 images\): .* needed, "
                                           r".* free on the file system of " + str(tmp_path)):
        imagenet.prepare("imagenet32", tmp_path / "src", tmp_path / "out", progress=False)
    assert only_src_left(tmp_path)
    with pytest.raises(StorageError, match=r"not enough free space for the data split \(5 images\)"):  # tfds' path
        prepared.write_split(tmp_path, "data", 5, (32, 32, 3), iter([]))
    assert only_src_left(tmp_path)


def test_failed_writes_are_storage_errors_naming_the_output(official, tmp_path, monkeypatch):
    """A write that fails half-way (ENOSPC after the check: another process filled the disk) is one
    StorageError naming the final output, and the partial directory is removed."""
    import builtins

    real_open = builtins.open

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(28, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

    def full_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return FullDisk(f) if str(path).endswith("train_images.npy") and "w" in mode else f

    monkeypatch.setattr(builtins, "open", full_open)
    out = tmp_path / "out"
    with pytest.raises(StorageError) as caught:
        imagenet.prepare("imagenet32", official, out, progress=False)
    assert str(caught.value) == f"cannot write {out}/train_images.npy: No space left on device"
    assert list(tmp_path.iterdir()) == []


def test_interrupt_while_writing_images_leaves_nothing(official, tmp_path, monkeypatch):
    real = imagenet.iter_rows

    def interrupted(path, *args):
        yield from real(path, *args)
        if path.name == "train_data_batch_4.npz":
            raise KeyboardInterrupt

    monkeypatch.setattr(imagenet, "iter_rows", interrupted)
    with pytest.raises(KeyboardInterrupt):
        imagenet.prepare("imagenet32", official, tmp_path / "out", progress=False)
    assert list(tmp_path.iterdir()) == []


def _during_write(monkeypatch, action):
    """Runs ``action()`` once, while prepare's first writer has its partial directory (before its manifest)."""
    real, calls = prepared.write_manifest, []

    def hooked(directory, manifest):
        if not calls:
            calls.append(action())
        return real(directory, manifest)

    monkeypatch.setattr(prepared, "write_manifest", hooked)
    return calls


def test_second_prepare_while_the_first_is_writing_is_refused(official, prepared32, tmp_path, monkeypatch):
    out = tmp_path / "out"

    def second():
        assert len(list(tmp_path.glob(".out.partial-*"))) == 1  # the first writer's
        with pytest.raises(StorageError, match=rf"another process \(pid \d+\) is writing {out} now"):
            imagenet.prepare("imagenet32", official, out, progress=False)
        assert len(list(tmp_path.glob(".out.partial-*"))) == 1 and not out.exists()  # the second left nothing
        return True

    calls = _during_write(monkeypatch, second)
    imagenet.prepare("imagenet32", official, out, progress=False)
    assert calls == [True] and [p.name for p in tmp_path.iterdir()] == ["out"]
    assert (out / "manifest.json").read_text() == (prepared32 / "manifest.json").read_text()


def test_output_written_meanwhile_by_another_process_is_kept(official, prepared32, tmp_path, monkeypatch):
    """Another writer (one that does not lock, e.g. on a network file system) renames its output into
    place first: this one's rename must fail, not replace or merge, and leave the other's output intact."""
    out = tmp_path / "out"
    _during_write(monkeypatch, lambda: shutil.copytree(prepared32, out))
    with pytest.raises(StorageError, match=f"{out} already exists: another process wrote it while this one was "
                                           f"writing; it is left as that process wrote it"):
        imagenet.prepare("imagenet32", official, out, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in prepared32.iterdir())
    load_split(DataConfig(source="imagenet32", path=str(out)), "train")


def test_partial_directory_of_a_killed_prepare_is_removed(official, tmp_path):
    stale = tmp_path / ".out.partial-4194305-0badc0de"  # what a SIGKILLed prepare leaves (nobody holds its lock)
    stale.mkdir()
    (stale / "train_images.npy").write_bytes(bytes(1000))
    imagenet.prepare("imagenet32", official, tmp_path / "out", progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def assert_one_line_error(done, error):
    lines = done.stderr.splitlines()
    assert done.returncode == error.exit_code, done.stderr
    assert len(lines) == 1 and lines[0].startswith("jaxconv: error: ") and "Traceback" not in done.stderr, done.stderr
    return lines[0]


# `python -m jaxconv ARGS` with 64 KiB per file, and EFBIG instead of SIGXFSZ (an ignored signal and the limit
# survive exec). Set by a launcher rather than a preexec_fn: forking the test process, which runs JAX's
# threads, is what Python warns about (a possible deadlock).
FILE_SIZE_LIMITED = ("import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
                     "resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024)); "
                     "os.execv(sys.executable, [sys.executable, '-m', 'jaxconv', *sys.argv[1:]])")


def test_cli_disk_full_is_one_line_and_leaves_nothing(official, tmp_path):
    """A real failing write (file-size limit: EFBIG, as a full disk gives ENOSPC) through the CLI:
    exit 6, one line, no partial directory. (With the writable memory map this was a traceback, or
    on a really full disk SIGBUS with nothing on stderr.) The 23 train images are 70 KiB."""
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-c", FILE_SIZE_LIMITED, "data", "prepare", "imagenet32", "--src",
                           str(official), "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    line = assert_one_line_error(done, StorageError)
    assert line == f"jaxconv: error: cannot write {out}/train_images.npy: File too large"
    assert list(tmp_path.iterdir()) == []


def test_cli_two_prepares_to_one_out(official, tmp_path):
    """Started together: one writes OUT, the other exits 6 with one line ("another process is writing
    OUT" or "OUT already exists", depending on timing), leaving nothing; OUT is complete."""
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "jaxconv", "data", "prepare", "imagenet32", "--src", str(official), "--out", str(out)]
    procs = [subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    results = sorted((subprocess.CompletedProcess(argv, p.returncode, *o) for p, o in zip(procs, outputs)),
                     key=lambda done: done.returncode)
    assert results[0].returncode == 0 and results[0].stderr == "", results[0].stderr
    line = assert_one_line_error(results[1], StorageError)
    assert "another process (pid " in line or f"{out} already exists" in line, line
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    np.testing.assert_array_equal(load_split(DataConfig(source="imagenet32", path=str(out)), "train").images,
                                  expected_images(0, 23, 32))


def test_cli_unsupported_zip_is_one_line(tmp_path):
    src = write_official(tmp_path / "src")
    _damage(src, "compression 99")
    done = run_cli("data", "prepare", "imagenet32", "--src", str(src), "--out", str(tmp_path / "out"))
    line = assert_one_line_error(done, DataError)
    assert line.endswith("train_data_batch_3.npz: unsupported zip compression (method 99 in member 'data.npy'); "
                         "numpy writes stored or deflate")
    assert only_src_left(tmp_path)


def test_train_step_and_evaluation_on_prepared_imagenet32_with_augmentation(prepared32):
    """The memory-mapped split through prefetch, the augmenting train step and a masked evaluation."""
    import jax
    import jax.numpy as jnp

    from jaxconv import experiments
    from jaxconv.config import apply_overrides
    from jaxconv.data.pipeline import Prefetcher
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
    with Prefetcher(train_batches(run.train_data, 8, 0, 0), run.par.put_batch) as batches:
        for _ in range(2):
            state, metrics = run.train_step(state, next(batches))
    assert int(state.step) == 2 and np.isfinite(float(metrics["loss"]))
    result = loop.evaluate(run, state.params)
    assert result["count"] == 5 and np.isfinite(result["loss"])
