"""Data sets, read from the official files of each; `load_split` is the one entry point.

Fixed data sets (CIFAR-10, ImageNet32/64, MNIST, Fashion-MNIST) return an ArrayDataset whose `array` holds
the whole split as uint8 (N, C, H, W). The `folder` data set turns any folder of photographs into random
multi-scale crops (train) and fixed tiles of held-out images (test). Every data set has `channels`,
`image_size`, `name` and `set_epoch(epoch)`, and yields uint8 tensors (C, H, W).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from snailcompress.data import cifar, folder, idx, imagenet
from snailcompress.data.base import ArrayDataset, PathLike
from snailcompress.data.cache import cached
from snailcompress.data.folder import RandomCrops
from snailcompress.errors import DatasetError

__all__ = ["DATASETS", "SPLITS", "ArrayDataset", "RandomCrops", "load_split"]

DATASETS = ("cifar10", "imagenet32", "imagenet64", "fashion-mnist", "mnist", "folder")
SPLITS = ("train", "test")

# Each fixed data set's reader (its images and the files they came from) and the files alone, found by name
_FIXED_READERS = {
    "cifar10": (cifar.read, cifar.source),
    "imagenet32": (partial(imagenet.read, side=32), partial(imagenet.source, side=32)),
    "imagenet64": (partial(imagenet.read, side=64), partial(imagenet.source, side=64)),
    "fashion-mnist": (idx.read_fashion_mnist, idx.source_fashion_mnist),
    "mnist": (idx.read_mnist, idx.source_mnist),
}


def _read_fixed(name: str, data_dir: PathLike | None, split: str,
                limit: int | None = None) -> tuple[np.ndarray, list[Path]]:
    """The official reader's images (the first `limit` only, None: all), refused here, before any cache
    is written, if there are none: an empty split would fail later, on its first item, far from its files."""
    images, source = _FIXED_READERS[name][0](data_dir, split, limit=limit)
    if not len(images):
        raise DatasetError(f"{', '.join(map(str, source))} holds no images, so the {split} split of {name} is empty.")
    return images, source


def load_split(
    name: str,
    data_dir: PathLike | None,
    split: str,
    *,
    crop: int = 32,
    scales: Sequence[float] = (1.0, 0.5, 0.25),
    samples_per_epoch: int | None = None,
    seed: int = 0,
    cache_dir: PathLike | None = None,
    channels: int | None = None,
    holdout: Sequence[str] = (),
    limit: int | None = None,
) -> Dataset:
    """One split ("train" or "test") of a data set in DATASETS.

    crop, scales, samples_per_epoch, seed, channels (3 by default, 1 for grayscale) and holdout shape the
    `folder` data set (see snailcompress.data.folder); fixed data sets come as published and ignore the first
    four, which callers may pass uniformly. cache_dir caches fixed data sets in HDF5 (see
    snailcompress.data.cache); `folder` decodes its images on use and ignores it. With data_dir None,
    fashion-mnist uses the copy installed by `apt-get install dataset-fashion-mnist`. `limit` (at least
    1): a fixed data set's first `limit` images only, and only those are read (eval and bench --limit:
    not the whole of a large split first); the folder data set ignores it (it reads nothing ahead).
    """
    if name not in DATASETS:
        raise DatasetError(f"Unknown data set {name!r}: the known data sets are {', '.join(DATASETS)}.")
    if split not in SPLITS:
        raise DatasetError(f"Unknown split {split!r}: the splits are {' and '.join(SPLITS)}.")
    if name == "folder":
        return folder.load(
            data_dir, split, crop=crop, scales=scales, samples_per_epoch=samples_per_epoch, seed=seed,
            channels=3 if channels is None else channels, holdout=holdout,
        )
    if channels is not None or holdout:
        raise DatasetError(f"channels and holdout (--channels, --holdout) apply to the folder data set only, not to "
                           f"{name}'s fixed splits.")
    images = cached(name, split, cache_dir, partial(_read_fixed, name, data_dir, split),
                    partial(_FIXED_READERS[name][1], data_dir, split), data_dir, limit)
    return ArrayDataset(name, images)
