"""Writes a class-balanced CIFAR-10 subset small enough to travel to a GPU machine.

The device machine has no network and takes at most 64 MiB of working tree, so
the full 170 MB tarball cannot go along. This writes the python-version folder
layout (``cifar-10-batches-py/data_batch_1..5``, ``test_batch``,
``batches.meta``) holding a class-balanced subset, which ``data.dir`` reads
like the real thing::

  python -m benchmarks.gpu_data --source ../shared/data/cifar10/cifar-10-python.tar.gz \
      --out .gpu --train 12500 --test 2000
"""

from __future__ import annotations

import argparse
import os
import pickle

import numpy as np

from wormjax.data import images


def write_subset(source: str, out: str, train: int, test: int) -> str:
    """Writes the subset folder under ``out``; returns its path."""
    if train % 5 or train < 5:
        raise ValueError(f"--train must be a positive multiple of 5, got {train}")
    folder = os.path.join(out, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    for split, count, names in (("train", train, [f"data_batch_{i}" for i in range(1, 6)]),
                                ("test", test, ["test_batch"])):
        ds = images.load_cifar10(split, data_dir=source, limit=count)
        # Back to the file layout: channel-planar rows of 3072 bytes.
        rows = ds.images.transpose(0, 3, 1, 2).reshape(len(ds), -1)
        labels = ds.labels
        for name, idx in zip(names, np.array_split(np.arange(len(ds)), len(names))):
            with open(os.path.join(folder, name), "wb") as f:
                pickle.dump({b"data": rows[idx].astype(np.uint8),
                             b"labels": [int(v) for v in labels[idx]],
                             b"filenames": [b"" for _ in idx]}, f, protocol=4)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({b"label_names": [b"airplane", b"automobile", b"bird", b"cat",
                                      b"deer", b"dog", b"frog", b"horse", b"ship",
                                      b"truck"]}, f, protocol=4)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", required=True)
    parser.add_argument("--out", default=".gpu")
    parser.add_argument("--train", type=int, default=12500)
    parser.add_argument("--test", type=int, default=2000)
    args = parser.parse_args()
    print(write_subset(args.source, args.out, args.train, args.test))


if __name__ == "__main__":
    main()
