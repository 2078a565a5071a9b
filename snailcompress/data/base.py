"""What every fixed data set shares: one uint8 array in memory, and the wording of its errors."""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import Dataset

from snailcompress.errors import DatasetError

PathLike = str | os.PathLike


class ArrayDataset(Dataset):
    """A fixed data set held as one uint8 array (N, C, H, W).

    The array is exposed as `array` so evaluation and benchmarks can slice it directly; it is made
    read-only, and items are copies, so no caller can change the data set for everyone else.
    """

    def __init__(self, name: str, array: np.ndarray):
        array.flags.writeable = False
        self.name = name
        self.array = array
        self.channels = array.shape[1]
        self.image_size = tuple(array.shape[2:])

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(self.array[index].copy())

    def set_epoch(self, epoch: int) -> None:
        """Fixed data: every epoch sees the same images, so there is nothing to change."""


def planes_to_images(rows: np.ndarray, side: int, source: str) -> np.ndarray:
    """Views CIFAR/ImageNet rows (R plane, G plane, B plane, each side x side, row-major) as (N, 3, side, side)."""
    if rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != 3 * side * side:
        raise DatasetError(
            f"{source} holds {rows.dtype} data of shape {rows.shape} where uint8 rows of "
            f"{3 * side * side} values (3 planes of {side}x{side}) were expected."
        )
    return rows.reshape(len(rows), 3, side, side)


def not_found(title: str, data_dir: PathLike | None, expected: str, origin: str) -> DatasetError:
    """The one-sentence error for a data set that is not where the user said (or no place was said)."""
    if data_dir is None:
        return DatasetError(f"{title} needs a data directory holding {expected} ({origin}).")
    return DatasetError(f"{title} not found in {data_dir}: expected {expected} ({origin}).")
