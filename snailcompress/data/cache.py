"""An HDF5 cache of a fixed data set, so slow sources (1.28M PNGs, compressed npz) are decoded once.

`cache_dir/{name}-{split}.h5` holds one dataset `images`: uint8 (N, C, H, W), chunked one image per chunk,
with attributes name, split, data_dir (the --data-dir it was read from, resolved; "" for the data set's
default place), source_paths (the files it was read from, resolved) and source (the same, joined). It is
written to a temporary file and renamed into place, so a crash never leaves a half-written cache that
later loads would trust. A cached split is read into memory, whole or its first images (--limit)
(chunked data cannot be memory-mapped, and training touches all of it anyway); a read of the first
images alone writes no cache. The source files are then not read, only found by name: a cache read
from one --data-dir, or from other files than the reader would read now (PNG folders added beside the
npz batches, say), is refused rather than served in their place (delete it to rebuild it), while a
cache whose files are all gone, or some of them, stands in for them (but not where they are all there
and the reader refuses them: another release added beside them, say). Changed file contents are not
noticed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import h5py
import numpy as np

from snailcompress.data.base import NotFound, PathLike
from snailcompress.errors import DatasetError, SnailError
from snailcompress.fileio import atomic_path


def _data_dir_key(data_dir: PathLike | None) -> str:
    return "" if data_dir is None else str(Path(data_dir).expanduser().resolve())


def _place(key: str) -> str:
    return key or "the data set's default place (no --data-dir)"


def _resolved(source: Sequence[PathLike]) -> list[str]:
    """A source's paths made absolute, so that `--data-dir data` and `--data-dir ./data` compare alike."""
    return [str(Path(part).expanduser().resolve()) for part in source]


def _recorded(stored: h5py.Dataset) -> list[str]:
    """The files a cache was read from: `source_paths`, or in a cache written before that was kept,
    `source` split where it joined them (as that version compared them: a path holding ", " was cut)."""
    if "source_paths" in stored.attrs:
        return [str(part) for part in stored.attrs["source_paths"]]
    return str(stored.attrs.get("source", "")).split(", ")


def read_cache(path: Path, name: str, split: str, data_dir: PathLike | None = None,
               source: Sequence[PathLike] | None = None, limit: int | None = None) -> np.ndarray:
    """The cached images (the first `limit` only, None: all); `source`, the files the reader would read now
    (None: not known), must be the ones the cache was read from."""
    try:
        with h5py.File(path, "r") as file:
            stored = file["images"]
            if (stored.attrs.get("name"), stored.attrs.get("split")) != (name, split) or stored.dtype != np.uint8 \
                    or stored.ndim != 4:
                raise DatasetError(f"{path} is not a cache of {name} {split}; delete it to rebuild it.")
            made_from = stored.attrs.get("data_dir")  # absent in caches written before it was recorded
            if made_from is not None and made_from != _data_dir_key(data_dir):
                raise DatasetError(f"{path} caches {name} {split} as read from {_place(made_from)}, not from "
                                   f"{_place(_data_dir_key(data_dir))}; delete it to rebuild it.")
            read_from = str(stored.attrs.get("source", ""))  # the paths joined: as every version wrote it
            if source is not None and read_from != ", ".join(_resolved(source)):
                raise DatasetError(f"{path} caches {name} {split} as read from {read_from}, but "
                                   f"{', '.join(_resolved(source))} would be read now; delete it to rebuild it.")
            count = len(stored) if limit is None else min(limit, len(stored))
            images = np.empty((count, *stored.shape[1:]), np.uint8)
            stored.read_direct(images, np.s_[:count])
    except (OSError, KeyError) as error:
        raise DatasetError(f"{path} is not a readable cache ({error}); delete it to rebuild it.") from error
    return images


def write_cache(path: Path, images: np.ndarray, *, name: str, split: str, source: Sequence[PathLike],
                data_dir: PathLike | None = None) -> None:
    """`source`: the files (or folder) the images were read from."""
    paths = _resolved(source)
    try:
        with atomic_path(path) as temporary, h5py.File(temporary, "w") as file:
            stored = file.create_dataset("images", data=images, chunks=(1, *images.shape[1:]))
            stored.attrs.update(name=name, split=split, source=", ".join(paths), source_paths=paths,
                                data_dir=_data_dir_key(data_dir))
    except SnailError as error:  # atomic_path's: the operating system's failure in one sentence
        raise DatasetError(f"Cannot write the cache {path} ({error}).") from error


def _some_recorded_file_gone(path: Path) -> bool:
    """Whether a file the cache at `path` was read from is gone (or the cache says none, or cannot be read:
    read_cache then says so)."""
    try:
        with h5py.File(path, "r") as file:
            recorded = _recorded(file["images"])
    except (OSError, KeyError):
        return True
    return not all(part and Path(part).exists() for part in recorded)


def _found(path: Path, source: Callable[[], list[Path]]) -> list[Path] | None:
    """The files the reader would read now; None where it finds none of the data set's files (NotFound),
    or refuses because some of the files the cache was read from are gone: the cache stands in for
    them. Another refusal, with those files all still there (another release added beside them, say),
    is not the cache's to answer: it is raised."""
    try:
        return source()
    except NotFound:
        return None
    except DatasetError:
        if _some_recorded_file_gone(path):
            return None
        raise


def cached(
    name: str, split: str, cache_dir: PathLike | None, read: Callable[..., tuple[np.ndarray, list[Path]]],
    source: Callable[[], list[Path]], data_dir: PathLike | None = None, limit: int | None = None,
) -> np.ndarray:
    """The images (the first `limit` only, None: all) from the cache if it exists (and was read from
    `data_dir`, and from the files `source()` finds there now, when they are there), else from
    `read(limit=limit)`, writing the cache on the way where that read the whole split (a cache holds a
    whole split: the first images alone are not cached)."""
    if cache_dir is None:
        return read(limit=limit)[0]
    path = Path(cache_dir) / f"{name}-{split}.h5"
    if path.exists():
        return read_cache(path, name, split, data_dir, _found(path, source), limit)
    images, read_from = read(limit=limit)
    if limit is None:
        write_cache(path, images, name=name, split=split, source=read_from, data_dir=data_dir)
    return images
