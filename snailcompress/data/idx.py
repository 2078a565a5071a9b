"""MNIST and Fashion-MNIST, from their IDX image files, gzipped or not.

Only the image files are read: density estimation and compression need no labels.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from snailcompress.data.base import PathLike, not_found
from snailcompress.errors import DatasetError

IMAGE_FILES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
UBYTE_3D_MAGIC = 0x00000803  # two zero bytes, type 0x08 (unsigned byte), 3 dimensions
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian/Ubuntu package dataset-fashion-mnist


def read_idx_images(path: Path, limit: int | None = None) -> np.ndarray:
    """An IDX file of unsigned bytes, N x rows x cols, as (N, 1, rows, cols); its first `limit` images
    only (None: all, and the file must end where they do), the file read (decompressed) that far."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as file:
            header = file.read(16)
            if len(header) < 16 or struct.unpack(">I", header[:4])[0] != UBYTE_3D_MAGIC:
                raise DatasetError(f"{path} does not start with the IDX magic 0x00000803 of a 3-D unsigned-byte array.")
            count, rows, cols = struct.unpack(">3I", header[4:16])
            wanted = count if limit is None else min(limit, count)
            raw = file.read(wanted * rows * cols + (limit is None))  # a whole file: one byte more shows trailing data
    except (OSError, EOFError, zlib.error) as error:
        raise DatasetError(f"{path} cannot be read ({error}); download it again.") from error
    if len(raw) != wanted * rows * cols:
        raise DatasetError(
            f"{path} holds {'more' if len(raw) > wanted * rows * cols else 'fewer'} bytes of pixels than its header "
            f"promises ({count}x{rows}x{cols}), so it is truncated or damaged."
        )
    return np.frombuffer(raw, np.uint8).reshape(wanted, 1, rows, cols)


def _locate(data_dir: PathLike | None, split: str, title: str, origin: str) -> Path:
    name = IMAGE_FILES[split]
    candidates = [] if data_dir is None else [Path(data_dir) / name, Path(data_dir) / f"{name}.gz"]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise not_found(title, data_dir, f"{name} or {name}.gz", origin)
    return path


def _read(data_dir: PathLike | None, split: str, title: str, origin: str,
          limit: int | None = None) -> tuple[np.ndarray, list[Path]]:
    path = _locate(data_dir, split, title, origin)
    images = read_idx_images(path, limit)
    if images.shape[2:] != (28, 28):
        raise DatasetError(f"{path} holds {images.shape[2]}x{images.shape[3]} images where {title} has 28x28.")
    return images, [path]


_MNIST = ("MNIST", "download from http://yann.lecun.com/exdb/mnist/")
_FASHION_MNIST = ("Fashion-MNIST", "install with `apt-get install dataset-fashion-mnist` or download from "
                  "https://github.com/zalandoresearch/fashion-mnist")


def _fashion_mnist_dir(data_dir: PathLike | None) -> PathLike:
    return FASHION_MNIST_SYSTEM_DIR if data_dir is None else data_dir


def read_mnist(data_dir: PathLike | None, split: str, limit: int | None = None) -> tuple[np.ndarray, list[Path]]:
    """Images (N, 1, 28, 28) of a split (the first `limit`, None: all) and the file they came from."""
    return _read(data_dir, split, *_MNIST, limit)


def read_fashion_mnist(data_dir: PathLike | None, split: str,
                       limit: int | None = None) -> tuple[np.ndarray, list[Path]]:
    """Like read_mnist; with no data_dir, the system copy in /usr/share/datasets/fashion-mnist is used."""
    return _read(_fashion_mnist_dir(data_dir), split, *_FASHION_MNIST, limit)


def source_mnist(data_dir: PathLike | None, split: str) -> list[Path]:
    """The file read_mnist would read, found by name alone (nothing is decoded)."""
    return [_locate(data_dir, split, *_MNIST)]


def source_fashion_mnist(data_dir: PathLike | None, split: str) -> list[Path]:
    """The file read_fashion_mnist would read, found by name alone."""
    return [_locate(_fashion_mnist_dir(data_dir), split, *_FASHION_MNIST)]
