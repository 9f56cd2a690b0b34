"""Image data sets as in-memory uint8 arrays: CIFAR-10 (local tarball or TFDS) and digits."""

from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
import tarfile
import zlib
from typing import IO

import numpy as np

IMAGE_SHAPE = (32, 32, 3)
DATASET_NAMES = ("cifar10", "digits")
SOURCES = ("local", "tfds")
SPLITS = ("train", "test")
NUM_CLASSES = {"cifar10": 10, "digits": 10}  # known before any file is read

_CIFAR_TARBALL = "cifar-10-python.tar.gz"
_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_BATCHES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
_CIFAR_LAYOUTS = (
    f"a {_CIFAR_TARBALL} file, a folder holding {_CIFAR_TARBALL}, a folder holding "
    f"{_CIFAR_FOLDER}/, or the {_CIFAR_FOLDER}/ folder itself"
)
_TFDS_WAY = (
    "Or use data.source='tfds' with a TFDS data dir prepared on a machine with "
    "internet (`tfds build cifar10 --file_format=array_record`) as data.dir.")
_REDOWNLOAD = "The file may be truncated or corrupt: download it again."
# What pickle.load raises on a damaged stream (its documentation lists these).
_PICKLE_ERRORS = (pickle.UnpicklingError, EOFError, AttributeError, ImportError,
                  IndexError, KeyError, TypeError, ValueError)
# Fixed so that every run, on every machine, gets the same digits train/test split.
_DIGITS_SPLIT_SEED = 20240617
_DIGITS_TEST_FRACTION = 0.2


@dataclasses.dataclass(frozen=True, eq=False)
class ImageDataset:
    """A labelled image data set held in host memory.

    Attributes:
        images: uint8 `[N, 32, 32, 3]`, NHWC, 0..255.
        labels: int32 `[N]`, in `0..num_classes - 1`.
        num_classes: number of classes.
        name: data set and split, e.g. `"cifar10/train"`.
    """

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    name: str

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.shape[1:] != IMAGE_SHAPE:
            raise ValueError(
                f"{self.name}: images must be uint8 [N, 32, 32, 3], got "
                f"{self.images.dtype} {self.images.shape}")
        if self.labels.dtype != np.int32 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(
                f"{self.name}: labels must be int32 [{self.images.shape[0]}], got "
                f"{self.labels.dtype} {self.labels.shape}")
        if self.labels.size and not (
                0 <= self.labels.min() and self.labels.max() < self.num_classes):
            raise ValueError(f"{self.name}: labels outside 0..{self.num_classes - 1}")

    def __len__(self) -> int:
        return int(self.images.shape[0])


def _check_choice(what: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"Unknown {what} {value!r}; allowed: {', '.join(allowed)}")


def balanced_subset(labels: np.ndarray, limit: int | None) -> np.ndarray:
    """Indices of a deterministic class-balanced subset, in the original order.

    Examples are taken round-robin over classes, each class in its original order, so
    class counts differ by at most one wherever the classes have enough examples.

    Args:
        labels: int `[N]` labels.
        limit: number of examples to keep; `None` keeps all.

    Returns:
        Sorted int64 indices of length `min(limit, N)`.
    """
    n = labels.shape[0]
    if limit is not None and (isinstance(limit, bool)
                              or not isinstance(limit, (int, np.integer)) or limit <= 0):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    if limit is None or limit >= n:
        return np.arange(n)
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    class_start = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank_in_class = np.empty(n, np.int64)
    rank_in_class[order] = np.arange(n) - class_start
    # np.lexsort's last key is primary: rank within class, ties by original position.
    chosen = np.lexsort((np.arange(n), rank_in_class))[:limit]
    return np.sort(chosen)


def subset(ds: ImageDataset, limit: int | None) -> ImageDataset:
    """``ds`` cut to the deterministic class-balanced ``balanced_subset`` of ``limit``."""
    idx = balanced_subset(ds.labels, limit)
    if idx.shape[0] == len(ds):
        return ds
    return dataclasses.replace(ds, images=ds.images[idx], labels=ds.labels[idx])


def _decode_cifar_batch(fileobj: IO[bytes], where: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads one python-version CIFAR pickle into NHWC images and labels."""
    # The official batches are Python-2 pickles; bytes keys read both them and protocol 4.
    try:
        batch = pickle.load(fileobj, encoding="bytes")
    except _PICKLE_ERRORS as err:
        raise ValueError(
            f"{where}: cannot unpickle it ({type(err).__name__}: {err}); expected a "
            f"python-version CIFAR-10 batch (a pickled dict with b'data' and b'labels'). "
            f"{_REDOWNLOAD}") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{where}: expected a pickled dict with b'data' and b'labels'")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(
            f"{where}: expected b'data' uint8 [n, 3072] (channel-planar 3x32x32), got "
            f"{data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],):
        raise ValueError(
            f"{where}: expected {data.shape[0]} labels to match b'data', "
            f"got shape {labels.shape}")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels.astype(np.int32)


def _read_cifar_tarball(path: str, names: tuple[str, ...]) -> dict[str, tuple]:
    found = {}
    # One sequential pass: the members are not in numeric order, and seeking back in a
    # gzip stream means decompressing it again.
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                parts = member.name.removeprefix("./").split("/")
                wanted = len(parts) == 2 and parts[0] == _CIFAR_FOLDER and parts[1] in names
                if wanted and member.isfile():
                    with tar.extractfile(member) as f:
                        found[parts[1]] = _decode_cifar_batch(f, f"{path}:{member.name}")
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise ValueError(
            f"{path}: not a readable gzip tarball ({type(err).__name__}: {err}); expected "
            f"the CIFAR-10 python-version tarball {_CIFAR_TARBALL}. {_REDOWNLOAD}") from None
    missing = [n for n in names if n not in found]
    if missing:
        raise FileNotFoundError(
            f"{path}: tarball lacks "
            f"{', '.join(f'{_CIFAR_FOLDER}/{n}' for n in missing)}; "
            "expected the CIFAR-10 python-version tarball")
    return found


def _read_cifar_folder(folder: str, names: tuple[str, ...]) -> dict[str, tuple]:
    missing = [n for n in names if not os.path.isfile(os.path.join(folder, n))]
    if missing:
        raise FileNotFoundError(
            f"{folder}: missing {', '.join(missing)}; expected the extracted "
            f"{_CIFAR_FOLDER}/ batches")
    found = {}
    for n in names:
        path = os.path.join(folder, n)
        with open(path, "rb") as f:
            found[n] = _decode_cifar_batch(f, path)
    return found


def _load_cifar10_local(split: str, data_dir) -> tuple[np.ndarray, np.ndarray]:
    if data_dir is None:
        raise ValueError(f"CIFAR-10 source 'local' needs data.dir: {_CIFAR_LAYOUTS}. "
                         f"{_TFDS_WAY}")
    path = os.path.expanduser(os.fspath(data_dir))
    names = _CIFAR_BATCHES[split]
    all_names = _CIFAR_BATCHES["train"] + _CIFAR_BATCHES["test"]
    if os.path.isfile(path):
        found = _read_cifar_tarball(path, names)
    elif os.path.isdir(os.path.join(path, _CIFAR_FOLDER)):
        found = _read_cifar_folder(os.path.join(path, _CIFAR_FOLDER), names)
    elif os.path.isdir(path) and any(os.path.isfile(os.path.join(path, n)) for n in all_names):
        found = _read_cifar_folder(path, names)
    elif os.path.isfile(os.path.join(path, _CIFAR_TARBALL)):
        found = _read_cifar_tarball(os.path.join(path, _CIFAR_TARBALL), names)
    else:
        raise FileNotFoundError(f"No CIFAR-10 data at {path}; expected {_CIFAR_LAYOUTS} "
                                "(the python-version tarball, e.g. downloaded from the "
                                f"CIFAR-10 page). {_TFDS_WAY}")
    images = np.concatenate([found[n][0] for n in names])
    labels = np.concatenate([found[n][1] for n in names])
    return images, labels


def _load_cifar10_tfds(split: str, data_dir, download: bool) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow_datasets as tfds  # Imported here: the import takes a while.

    try:
        source = tfds.data_source("cifar10", split=split, data_dir=data_dir, download=download)
    except Exception as err:  # TFDS raises many types for "not prepared" and "offline".
        raise RuntimeError(
            f"Could not open TFDS cifar10/{split} (data_dir={data_dir!r}, "
            f"download={download}): {err}\n"
            "To get the data either (1) set data.source='local' and data.dir to the "
            f"CIFAR-10 python-version tarball ({_CIFAR_TARBALL}) or its folder, or "
            "(2) prepare a TFDS data dir on a machine with internet (`tfds build cifar10 "
            "--file_format=array_record`, or `tfds.builder('cifar10', data_dir=...)"
            ".download_and_prepare(file_format='array_record')`) and point data.dir at it."
        ) from err
    n = len(source)
    images = np.empty((n,) + IMAGE_SHAPE, np.uint8)
    labels = np.empty((n,), np.int32)
    # One record at a time: `tfds.testing.mock_data` in TFDS 4.9.10 breaks `__getitems__`,
    # and the per-record image decode costs more than the lookup anyway.
    for i in range(n):
        record = source[i]
        images[i] = record["image"]
        labels[i] = record["label"]
    return images, labels


def load_cifar10(
    split: str,
    source: str = "local",
    data_dir: str | os.PathLike | None = None,
    *,
    limit: int | None = None,
    download: bool = False,
) -> ImageDataset:
    """Loads a CIFAR-10 split into memory.

    Args:
        split: `"train"` (50,000 images) or `"test"` (10,000).
        source: `"local"` reads the python-version pickles (without extracting them) from
            `data_dir`: the tarball, a folder holding it, a folder holding
            `cifar-10-batches-py/`, or that folder itself. `"tfds"` reads a prepared
            array_record TFDS data dir through `tfds.data_source` (no TensorFlow).
        data_dir: where the data is; for `"tfds"`, `None` means the TFDS default.
        limit: keep a deterministic class-balanced subset of this many examples.
        download: for `"tfds"`, let TFDS download and prepare the data (needs internet).

    Returns:
        The split as an `ImageDataset` named `"cifar10/<split>"`.
    """
    _check_choice("split", split, SPLITS)
    _check_choice("source", source, SOURCES)
    if source == "local":
        images, labels = _load_cifar10_local(split, data_dir)
    else:
        images, labels = _load_cifar10_tfds(split, data_dir, download)
    ds = ImageDataset(np.ascontiguousarray(images), labels, NUM_CLASSES["cifar10"],
                      f"cifar10/{split}")
    return subset(ds, limit)


def load_digits32(split: str, *, limit: int | None = None) -> ImageDataset:
    """Loads scikit-learn's bundled UCI digits as 32x32 RGB images (no download).

    Args:
        split: `"train"` (80%) or `"test"` (20%), stratified by class, fixed seed.
        limit: keep a deterministic class-balanced subset of this many examples.

    Returns:
        The split as an `ImageDataset` named `"digits/<split>"`: grey levels 0..16 scaled
        to 0..255, 8x8 upscaled 4x by nearest neighbour, repeated to 3 channels.
    """
    _check_choice("split", split, SPLITS)
    from sklearn.datasets import load_digits  # Imported here: only the demo needs it.

    digits = load_digits()
    grey = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    big = grey.repeat(4, axis=1).repeat(4, axis=2)
    images = np.ascontiguousarray(np.broadcast_to(big[..., None], big.shape + (3,)))
    labels = digits.target.astype(np.int32)
    rng = np.random.Generator(np.random.PCG64(_DIGITS_SPLIT_SEED))
    is_test = np.zeros(labels.shape[0], bool)
    for c in range(10):
        members = rng.permutation(np.flatnonzero(labels == c))
        is_test[members[:int(round(_DIGITS_TEST_FRACTION * members.size))]] = True
    keep = is_test if split == "test" else ~is_test
    ds = ImageDataset(images[keep], labels[keep], NUM_CLASSES["digits"], f"digits/{split}")
    return subset(ds, limit)


def load_image_dataset(
    name: str,
    split: str,
    source: str = "local",
    data_dir: str | os.PathLike | None = None,
    *,
    limit: int | None = None,
) -> ImageDataset:
    """Loads an image data set by name.

    Args:
        name: `"cifar10"` or `"digits"` (bundled; ignores `source` and `data_dir`).
        split: `"train"` or `"test"`.
        source: `"local"` or `"tfds"` (see `load_cifar10`).
        data_dir: where the data is (see `load_cifar10`).
        limit: keep a deterministic class-balanced subset of this many examples.

    Returns:
        The requested `ImageDataset`.
    """
    _check_choice("data set name", name, DATASET_NAMES)
    _check_choice("split", split, SPLITS)
    _check_choice("source", source, SOURCES)
    if name == "digits":
        return load_digits32(split, limit=limit)
    return load_cifar10(split, source, data_dir, limit=limit)
