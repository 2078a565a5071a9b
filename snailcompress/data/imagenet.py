"""Downsampled ImageNet, 32x32 or 64x64, from either of its two official releases.

- van den Oord et al. (2016): PNG folders train_32x32/ and valid_32x32/ (train_64x64/, valid_64x64/).
  PixelCNN, PixelSNAIL and most density-estimation papers report bits/dim on this version.
- Chrabaszcz et al. (2017): npz batches train_data_batch_1..10.npz and val_data.npz, rows in CIFAR's plane
  order. Its images were resized differently, so its bits/dim do not compare with the papers'.

One release serves both splits of a data directory: the PNG folders when either is there (so results
compare with the paper), else the npz batches; a directory with only one of the PNG folders is refused for
the other split rather than read from the other release. Files are looked for in DIR and in its immediate
sub-folders (as the downloads unpack: Imagenet32_train_npz/, Imagenet32_val_npz/, ...), skipping sub-folders
named for the other resolution. The test split is the validation set. The older pickled batches (val_data,
train_data_batch_1, ... without .npz) are not read.
"""

from __future__ import annotations

import re
import zipfile
import zlib
from pathlib import Path

import numpy as np

from snailcompress.codec.images import sample_problem
from snailcompress.data.base import PathLike, not_found, open_image, planes_to_images
from snailcompress.errors import DatasetError

_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
_NPZ_ERRORS = (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error)


def _unreadable(path: Path, error: Exception) -> DatasetError:
    return DatasetError(f"{path} is not a readable ImageNet npz batch ({type(error).__name__}: {error}).")


def _search_dirs(root: Path, side: int) -> list[Path]:
    """DIR, then its sub-folders by name, except those named for another resolution (Imagenet64_* for 32)."""
    def other_resolution(name: str) -> bool:
        match = re.match(r"imagenet(\d+)", name, re.IGNORECASE)
        return match is not None and int(match.group(1)) != side

    return [root, *sorted(p for p in root.iterdir() if p.is_dir() and not other_resolution(p.name))]


def _check_header(path: Path, side: int, shape: tuple, fortran_order: bool, dtype: np.dtype) -> None:
    if dtype != np.uint8 or len(shape) != 2 or shape[1] != 3 * side * side:
        raise DatasetError(
            f"{path} holds {dtype} data of shape {shape} where uint8 rows of {3 * side * side} values "
            f"(ImageNet{side}) were expected."
        )


def _npz_rows(path: Path, side: int) -> int:
    """Number of images in an npz batch, checked from the `data` header alone, before anything is decompressed."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open("data.npy") as member:
            version = np.lib.format.read_magic(member)
            header = _NPY_HEADER_READERS[version](member)
    except _NPZ_ERRORS as error:
        raise _unreadable(path, error) from error
    _check_header(path, side, *header)
    return header[0][0]


def _npz_data(path: Path, side: int, count: int | None = None) -> np.ndarray:
    """An npz batch's `data` rows, or its first `count` (decompressed that far and no further, where
    they are stored row after row, as the official batches are)."""
    size = 3 * side * side
    try:
        if count is not None:
            with zipfile.ZipFile(path) as archive, archive.open("data.npy") as member:
                header = _NPY_HEADER_READERS[np.lib.format.read_magic(member)](member)
                _check_header(path, side, *header)
                if not header[1]:  # C order
                    raw = member.read(count * size)
                    if len(raw) != count * size:
                        raise DatasetError(f"{path} ends before the {count} rows its header promises: it is truncated.")
                    return np.frombuffer(raw, np.uint8).reshape(count, size)
        with np.load(path, allow_pickle=False) as npz:
            return npz["data"][:count]
    except _NPZ_ERRORS as error:
        raise _unreadable(path, error) from error


def _read_npz(paths: list[Path], side: int, limit: int | None) -> np.ndarray:
    """Fills one preallocated array batch by batch, so memory peaks at the data set plus one batch; the
    first `limit` images only (None: all), the batches after them not read."""
    counts = [_npz_rows(path, side) for path in paths]
    total = sum(counts) if limit is None else min(limit, sum(counts))
    images = np.empty((total, 3, side, side), np.uint8)
    start = 0
    for path, count in zip(paths, counts):
        if start >= total:
            break
        rows = _npz_data(path, side, total - start if start + count > total else None)
        images[start : start + len(rows)] = planes_to_images(rows, side, str(path))
        start += len(rows)
    return images


def _read_pngs(folder: Path, side: int, limit: int | None) -> np.ndarray:
    """Every PNG in the folder (the first `limit`, None: all), sorted by name. Slow for the 1.28M
    training images: use a cache_dir."""
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png")[:limit]
    if not paths:
        raise DatasetError(f"{folder} holds no PNG files, so it is not an ImageNet{side} folder.")
    images = np.empty((len(paths), 3, side, side), np.uint8)
    for i, path in enumerate(paths):
        with open_image(path) as image:  # checked from the header, before anything is decoded
            if image.size != (side, side):
                raise DatasetError(f"{path} is {image.width}x{image.height} where ImageNet{side} images are "
                                   f"{side}x{side}.")
            problem = sample_problem(image)
            if image.mode != "RGB" or problem:  # convert("RGB") would clip 16 bits and replicate gray
                raise DatasetError(f"{path} has mode {image.mode}{problem} where ImageNet{side} PNGs are 8-bit RGB.")
            images[i] = np.asarray(image).transpose(2, 0, 1)
    return images


def _png_folder(split: str, side: int) -> str:
    return f"{'train' if split == 'train' else 'valid'}_{side}x{side}"


def _npz_names(split: str) -> list[str]:
    return [f"train_data_batch_{i}.npz" for i in range(1, 11)] if split == "train" else ["val_data.npz"]


def _locate(data_dir: PathLike | None, split: str, side: int) -> list[Path]:
    """The split's PNG folder, or its npz batches, found by name alone: one release for both splits."""
    png_folder, npz_names = _png_folder(split, side), _npz_names(split)
    dirs = _search_dirs(Path(data_dir), side) if data_dir is not None and Path(data_dir).is_dir() else []

    def first(name: str, exists) -> Path | None:
        return next((d / name for d in dirs if exists(d / name)), None)

    folders = {s: first(_png_folder(s, side), Path.is_dir) for s in ("train", "test")}
    if folders[split] is not None:
        return [folders[split]]
    other = folders["test" if split == "train" else "train"]
    if other is not None:
        raise DatasetError(f"ImageNet{side} in {data_dir} holds {other.name}/ of the PNG release but not "
                           f"{png_folder}/: add it, as the npz release's images are resized differently.")
    found = {name: first(name, Path.is_file) for name in npz_names}
    paths = [path for path in found.values() if path is not None]
    if paths:
        missing = [name for name, path in found.items() if path is None]
        if missing:
            raise DatasetError(f"ImageNet{side} in {data_dir} is incomplete: {', '.join(missing)} missing.")
        return paths
    pickled = any(first(Path(name).stem, Path.is_file) for name in _npz_names("train") + _npz_names("test"))
    raise not_found(
        f"ImageNet{side}",
        data_dir,
        f"{png_folder}/ (van den Oord et al., as in the paper) or "
        f"{npz_names[0] if len(npz_names) == 1 else f'{npz_names[0]} to {npz_names[-1]}'} (Chrabaszcz et al.), "
        "in it or one sub-folder below",
        "download Downsampled ImageNet from https://image-net.org/download-images",
        "the older pickled release (val_data, train_data_batch_1, ... without .npz)" if pickled else "",
    )


def source(data_dir: PathLike | None, split: str, side: int) -> list[Path]:
    """The files (or the folder) `read` would read, found by name alone (nothing is decoded)."""
    return _locate(data_dir, split, side)


def read(data_dir: PathLike | None, split: str, side: int, limit: int | None = None) -> tuple[np.ndarray, list[Path]]:
    """Images (N, 3, side, side) of a split (the first `limit`, None: all) and the files (or folder) they came from."""
    paths = _locate(data_dir, split, side)
    images = _read_pngs(paths[0], side, limit) if paths[0].is_dir() else _read_npz(paths, side, limit)
    return images, paths
