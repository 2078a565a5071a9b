"""What the readers share: one uint8 array in memory, opening image files, and the wording of their errors."""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image
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


# What Pillow raises on a damaged or hostile file: its parsers fail in many ways, none of them a bug here
DECODING_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, KeyError, struct.error,
                   zlib.error, Image.DecompressionBombError)


@contextmanager
def open_image(path: Path) -> Iterator[Image.Image]:
    """Image.open for the readers: a file that cannot be decoded, on opening or inside the with block
    (where the pixels are decoded), is a one-line DatasetError naming it."""
    try:
        with Image.open(path) as image:
            yield image
    except DECODING_ERRORS as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise DatasetError(f"{path} is not a readable image ({reason}).") from error


class NotFound(DatasetError):
    """No file of the data set is where the user said: a cache of it may stand in for them."""


def not_found(title: str, data_dir: PathLike | None, expected: str, origin: str, unsupported: str = "") -> NotFound:
    """The one-sentence error for a data set that is not where the user said (or no place was said);
    `unsupported` names a release of the data set that is there but is not read."""
    if data_dir is None:
        return NotFound(f"{title} needs a data directory holding {expected} ({origin}).")
    if unsupported:
        return NotFound(f"{title} in {data_dir} is {unsupported}, which is not supported: get {expected} ({origin}).")
    return NotFound(f"{title} not found in {data_dir}: expected {expected} ({origin}).")
