"""Tests for the image loaders and host batching (tiny fake CIFAR files, no network)."""

import io
import os
import pickle
import tarfile
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wormjax.data import images as images_lib
from wormjax.data import pipeline

from conftest import shared_data

REAL_CIFAR = shared_data("cifar10", "cifar-10-python.tar.gz") or "absent"
PER_BATCH = 3


def _fake_batches(seed=0):
    """Raw `(data, labels)` per batch name, in the python-version pickle layout."""
    rng = np.random.default_rng(seed)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    return {n: (rng.integers(0, 256, (PER_BATCH, 3072), dtype=np.uint8),
                [int(v) for v in rng.integers(0, 10, PER_BATCH)]) for n in names}


def _pickle_bytes(data, labels):
    # Protocol 2, like the official Python-2 era files.
    return pickle.dumps({b"batch_label": b"fake", b"data": data, b"labels": labels,
                         b"filenames": [b"x.png"] * len(labels)}, protocol=2)


def _write_tarball(path, batches, skip=()):
    with tarfile.open(path, "w:gz") as tar:
        # Shuffled member order, as in real tarballs, to check the loader reorders.
        for name in ["test_batch", "data_batch_4", "data_batch_2", "data_batch_5",
                     "data_batch_1", "data_batch_3"]:
            if name in skip:
                continue
            payload = _pickle_bytes(*batches[name])
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, fileobj=io.BytesIO(payload))
    return path


def _write_folder(folder, batches):
    os.makedirs(folder, exist_ok=True)
    for name, (data, labels) in batches.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(_pickle_bytes(data, labels))
    return folder


def _expected(batches, split):
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    data = np.concatenate([batches[n][0] for n in names])
    labels = np.concatenate([batches[n][1] for n in names]).astype(np.int32)
    return data, labels


def test_local_tarball_decodes_channel_planar_rows_to_nhwc(tmp_path):
    batches = _fake_batches()
    path = _write_tarball(tmp_path / "cifar-10-python.tar.gz", batches)
    ds = images_lib.load_cifar10("train", "local", str(path))
    data, labels = _expected(batches, "train")
    assert ds.images.shape == (5 * PER_BATCH, 32, 32, 3) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int32 and ds.num_classes == 10 and ds.name == "cifar10/train"
    np.testing.assert_array_equal(ds.labels, labels)
    # Pixel (y, x) of channel c sits at c * 1024 + y * 32 + x of its row.
    for n, y, x, c in [(0, 0, 0, 0), (4, 31, 0, 1), (14, 5, 17, 2), (7, 31, 31, 2)]:
        assert ds.images[n, y, x, c] == data[n, c * 1024 + y * 32 + x]
    reference = np.stack([data[:, c * 1024:(c + 1) * 1024] for c in range(3)], -1)
    np.testing.assert_array_equal(ds.images, reference.reshape(-1, 32, 32, 3))


@pytest.mark.parametrize("layout", ["tarball", "tarball_dir", "parent_of_batches", "batches"])
def test_local_layouts_all_read_the_same(tmp_path, layout):
    batches = _fake_batches(seed=1)
    if layout.startswith("tarball"):
        path = _write_tarball(tmp_path / "cifar-10-python.tar.gz", batches)
        data_dir = path if layout == "tarball" else tmp_path
    else:
        folder = _write_folder(tmp_path / "cifar-10-batches-py", batches)
        data_dir = folder if layout == "batches" else tmp_path
    ds = images_lib.load_cifar10("test", "local", data_dir)
    data, labels = _expected(batches, "test")
    np.testing.assert_array_equal(ds.labels, labels)
    np.testing.assert_array_equal(ds.images.transpose(0, 3, 1, 2).reshape(-1, 3072), data)


def test_local_missing_batch_names_path_and_member(tmp_path):
    path = _write_tarball(tmp_path / "c.tar.gz", _fake_batches(), skip=("data_batch_3",))
    with pytest.raises(FileNotFoundError, match=r"c\.tar\.gz.*data_batch_3"):
        images_lib.load_cifar10("train", "local", path)
    folder = _write_folder(tmp_path / "x" / "cifar-10-batches-py",
                           {"data_batch_1": _fake_batches()["data_batch_1"]})
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py.*data_batch_2"):
        images_lib.load_cifar10("train", "local", folder)
    with pytest.raises(FileNotFoundError, match=r"nowhere.*cifar-10-python\.tar\.gz.*tfds"):
        images_lib.load_cifar10("test", "local", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="needs data.dir.*tfds"):
        images_lib.load_cifar10("test", "local", None)


def test_local_wrong_shape_names_file_and_expected_layout(tmp_path):
    batches = _fake_batches()
    batches["test_batch"] = (np.zeros((PER_BATCH, 100), np.uint8), [0] * PER_BATCH)
    path = _write_tarball(tmp_path / "c.tar.gz", batches)
    with pytest.raises(ValueError, match=r"test_batch.*uint8 \[n, 3072\]"):
        images_lib.load_cifar10("test", "local", path)


def test_bad_names_list_allowed_values():
    with pytest.raises(ValueError, match="'mnist'.*cifar10, digits"):
        images_lib.load_image_dataset("mnist", "train")
    with pytest.raises(ValueError, match="'val'.*train, test"):
        images_lib.load_image_dataset("cifar10", "val")
    with pytest.raises(ValueError, match="'gcs'.*local, tfds"):
        images_lib.load_cifar10("train", "gcs", "/x")


def test_tfds_source_with_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    # mock_data patches tfds.data_source itself, so this runs without TensorFlow.
    with tfds.testing.mock_data(num_examples=7):
        ds = images_lib.load_cifar10("test", "tfds", str(tmp_path))
        small = images_lib.load_image_dataset("cifar10", "train", "tfds", str(tmp_path), limit=3)
    assert ds.images.shape == (7, 32, 32, 3) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int32 and ds.labels.max() < 10
    assert len(small) == 3


def test_tfds_not_prepared_error_says_both_ways(tmp_path):
    with pytest.raises(RuntimeError) as info:
        images_lib.load_cifar10("train", "tfds", str(tmp_path / "empty"))
    text = str(info.value)
    assert "data.source='local'" in text and "cifar-10-python.tar.gz" in text
    assert "tfds build cifar10" in text and "download_and_prepare" in text


@pytest.mark.skipif(not os.path.exists(REAL_CIFAR), reason="real CIFAR-10 tarball absent")
def test_real_cifar10_test_split():
    ds = images_lib.load_cifar10("test", "local", REAL_CIFAR)
    assert ds.images.shape == (10000, 32, 32, 3)
    np.testing.assert_array_equal(np.bincount(ds.labels), [1000] * 10)
    # Canonical order of the CIFAR-10 test set: cat, ship, ship, airplane, frog, ...
    np.testing.assert_array_equal(ds.labels[:10], [3, 8, 8, 0, 6, 6, 1, 6, 3, 1])


def test_digits_shapes_split_and_determinism():
    train = images_lib.load_digits32("train")
    test = images_lib.load_image_dataset("digits", "test")
    assert train.images.shape == (len(train), 32, 32, 3) and train.images.dtype == np.uint8
    assert len(train) + len(test) == 1797 and 350 <= len(test) <= 370
    assert train.num_classes == test.num_classes == 10
    assert set(np.unique(test.labels)) == set(range(10))
    assert train.images.max() == 255 and train.images.min() == 0
    # Nearest-neighbour 4x upscaling of grey: 4x4 constant blocks, equal channels.
    blocks = train.images[:, :, :, 0].reshape(-1, 8, 4, 8, 4)
    assert (blocks == blocks[:, :, :1, :, :1]).all()
    assert (train.images == train.images[..., :1]).all()
    again = images_lib.load_digits32("train")
    np.testing.assert_array_equal(again.images, train.images)
    np.testing.assert_array_equal(again.labels, train.labels)


def test_balanced_subset_by_hand():
    labels = np.array([0, 0, 0, 1, 1, 2])
    np.testing.assert_array_equal(images_lib.balanced_subset(labels, 4), [0, 1, 3, 5])
    np.testing.assert_array_equal(images_lib.balanced_subset(labels, None), np.arange(6))
    with pytest.raises(ValueError, match="positive"):
        images_lib.balanced_subset(labels, 0)
    small = images_lib.load_digits32("train", limit=25)
    # Round-robin over classes: every class gets 2 or 3 of the 25.
    np.testing.assert_array_equal(np.sort(np.bincount(small.labels)), [2] * 5 + [3] * 5)


def _indexed_dataset(n=15):
    """Pixel values and labels both equal the example index, to track batches."""
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 32, 32, 3))
    return images_lib.ImageDataset(images.copy(), np.arange(n, dtype=np.int32), n, "idx")


def _stack(batches, key="label"):
    return np.stack([b[key] for b in batches])


def test_train_batches_depend_on_seed_and_epoch_only():
    ds = _indexed_dataset()
    assert pipeline.steps_per_epoch(15, 4) == 3
    first = list(pipeline.train_batches(ds, 4, seed=3, epoch=0))
    assert len(first) == 3
    for b in first:
        assert b["image"].shape == (4, 32, 32, 3) and b["label"].dtype == np.int32
        np.testing.assert_array_equal(b["image"][:, 0, 0, 0], b["label"])
    seen = _stack(first).ravel()
    assert len(set(seen.tolist())) == 12  # No repeats; the remainder of 3 is dropped.
    np.testing.assert_array_equal(_stack(pipeline.train_batches(ds, 4, seed=3, epoch=0)),
                                  _stack(first))
    assert not np.array_equal(_stack(pipeline.train_batches(ds, 4, seed=3, epoch=1)),
                              _stack(first))
    assert not np.array_equal(_stack(pipeline.train_batches(ds, 4, seed=4, epoch=0)),
                              _stack(first))


def test_train_batches_start_step_is_tail_of_full_epoch():
    ds = _indexed_dataset()
    for augment in (False, True):
        full = list(pipeline.train_batches(ds, 2, seed=1, epoch=2, augment=augment))
        tail = list(pipeline.train_batches(ds, 2, seed=1, epoch=2, augment=augment,
                                           start_step=4))
        assert len(tail) == len(full) - 4
        np.testing.assert_array_equal(_stack(tail, "image"), _stack(full[4:], "image"))
        np.testing.assert_array_equal(_stack(tail), _stack(full[4:]))


def test_train_batches_validate_eagerly():
    ds = _indexed_dataset()
    with pytest.raises(ValueError, match="1..15"):
        pipeline.train_batches(ds, 16, seed=0, epoch=0)
    with pytest.raises(ValueError, match="batch_size"):
        pipeline.train_batches(ds, 0, seed=0, epoch=0)
    with pytest.raises(ValueError, match="start_step"):
        pipeline.train_batches(ds, 4, seed=0, epoch=0, start_step=4)


def test_random_crop_flip_matches_padded_slices():
    images = np.random.default_rng(0).integers(1, 256, (6, 32, 32, 3), dtype=np.uint8)
    out = pipeline.random_crop_flip(images, np.random.default_rng(7))
    rng = np.random.default_rng(7)  # Replays the offsets and flips in the same order.
    top, left, flip = rng.integers(0, 9, 6), rng.integers(0, 9, 6), rng.random(6) < 0.5
    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
    for i in range(6):
        crop = padded[i, top[i]:top[i] + 32, left[i]:left[i] + 32]
        np.testing.assert_array_equal(out[i], crop[:, ::-1] if flip[i] else crop)
    assert out.dtype == np.uint8 and out.shape == images.shape


def test_augmentation_is_deterministic_per_step():
    ds = images_lib.ImageDataset(
        np.random.default_rng(0).integers(1, 256, (8, 32, 32, 3), dtype=np.uint8),
        np.zeros(8, np.int32), 10, "rand")
    run = lambda seed: _stack(pipeline.train_batches(ds, 8, seed=seed, epoch=0, augment=True),
                              "image")
    np.testing.assert_array_equal(run(5), run(5))
    plain = _stack(pipeline.train_batches(ds, 8, seed=5, epoch=0), "image")
    assert not np.array_equal(run(5), plain)


def test_eval_batches_cover_each_example_once_with_mask():
    ds = _indexed_dataset(10)
    batches = list(pipeline.eval_batches(ds, 4))
    assert [b["image"].shape for b in batches] == [(4, 32, 32, 3)] * 3
    mask = _stack(batches, "mask").ravel()
    labels = _stack(batches).ravel()
    assert mask.dtype == np.float32 and mask.sum() == 10
    np.testing.assert_array_equal(labels[mask == 1], np.arange(10))
    np.testing.assert_array_equal(mask, [1] * 10 + [0] * 2)
    assert (batches[-1]["image"][2:] == 0).all()


def test_normalize_schemes():
    pixels = jnp.array([[0, 51, 255]], jnp.uint8).reshape(1, 1, 1, 3)
    np.testing.assert_allclose(pipeline.normalize(pixels, "half")[0, 0, 0], [-1.0, -0.6, 1.0],
                               atol=1e-6)
    expected = (np.array([0, 51, 255]) / 255 - np.array(pipeline.CIFAR_MEAN)) / np.array(
        pipeline.CIFAR_STD)
    cifar = jax.jit(pipeline.normalize, static_argnums=(1, 2))(pixels, "cifar", jnp.float32)
    np.testing.assert_allclose(cifar[0, 0, 0], expected, rtol=1e-5)
    assert cifar.dtype == jnp.float32
    assert pipeline.normalize(pixels, "half", jnp.bfloat16).dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="'imagenet'.*half, cifar"):
        pipeline.normalize(pixels, "imagenet")


def test_prefetch_yields_same_batches_in_order():
    ds = _indexed_dataset()
    host = list(pipeline.train_batches(ds, 4, seed=0, epoch=0))
    with pipeline.prefetch_to_device(pipeline.train_batches(ds, 4, seed=0, epoch=0)) as it:
        device = list(it)
    assert len(device) == len(host)
    for h, d in zip(host, device):
        assert isinstance(d["image"], jax.Array)
        np.testing.assert_array_equal(np.asarray(d["label"]), h["label"])
    assert not it._thread.is_alive()


def test_prefetch_propagates_producer_error():
    def source():
        yield {"x": np.zeros(2)}
        yield {"x": np.ones(2)}
        raise KeyError("broken shard")

    it = pipeline.prefetch_to_device(source(), size=1)
    assert next(it)["x"].shape == (2,)
    next(it)
    with pytest.raises(KeyError, match="broken shard"):
        next(it)
    with pytest.raises(StopIteration):
        next(it)


def test_prefetch_stops_when_consumer_stops_early():
    closed = threading.Event()

    def endless():
        try:
            i = 0
            while True:
                yield np.full(2, i)
                i += 1
        finally:
            closed.set()

    it = pipeline.prefetch_to_device(endless(), size=2)
    assert [int(next(it)[0]) for _ in range(3)] == [0, 1, 2]
    it.close()
    assert not it._thread.is_alive() and closed.is_set()
    with pytest.raises(StopIteration):
        next(it)


def test_measure_pipeline_rate_is_positive():
    rate = pipeline.measure_pipeline_rate(_indexed_dataset(), 4, 7, augment=True)
    assert rate > 0
