"""CIFAR-10, from the official "python version" (https://www.cs.toronto.edu/~kriz/cifar.html).

The batches are Python 2 pickles. Unpickling can run arbitrary code, so they go through an unpickler
that knows only the few callables a pickled numpy array needs and refuses everything else.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from pathlib import Path
from typing import IO

import numpy as np

from snailcompress.data.base import PathLike, not_found, planes_to_images
from snailcompress.errors import DatasetError

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct

ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
BINARY = ("cifar-10-batches-bin", "cifar-10-binary.tar.gz", "data_batch_1.bin")  # the binary version: not read
BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def _latin1_encode(text: str, encoding: str) -> bytes:
    """Python 3 writes bytes into a protocol-2 pickle as `_codecs.encode(text, 'latin1')`; allow only that."""
    if encoding != "latin1":
        raise DatasetError(f"A CIFAR-10 batch asks for the {encoding!r} codec, which a batch never needs.")
    return text.encode("latin1")


# What the official files reference (numpy 1 spelling), numpy 2's spelling of the same, and re-saved files' bytes.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _BatchUnpickler(pickle.Unpickler):
    """Resolves only the globals in `_ALLOWED`, so a hostile batch cannot name os.system or the like."""

    def __init__(self, file: IO[bytes], source: str):
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[module, name]
        except KeyError:
            raise DatasetError(
                f"{self.source} refers to {module}.{name}, which no CIFAR-10 batch contains, so it was not loaded."
            ) from None


def _read_batch(file: IO[bytes], source: str) -> np.ndarray:
    """The images of one batch as (10000, 3, 32, 32)."""
    try:
        batch = _BatchUnpickler(file, source).load()
    except DatasetError:
        raise
    except Exception as error:  # a damaged pickle can fail in any way; none of them is a bug here
        raise DatasetError(f"{source} is not a readable CIFAR-10 batch ({type(error).__name__}: {error}).") from error
    if not isinstance(batch, dict) or not isinstance(batch.get(b"data"), np.ndarray):
        raise DatasetError(f"{source} is not a CIFAR-10 batch: it has no b'data' array.")
    return planes_to_images(batch[b"data"], 32, source)


def _first(batches: list[np.ndarray], limit: int | None) -> np.ndarray:
    return np.concatenate(batches)[:limit]


def _enough(batches: list[np.ndarray], limit: int | None) -> bool:
    return limit is not None and sum(map(len, batches)) >= limit


def _read_folder(folder: Path, names: list[str], limit: int | None) -> np.ndarray:
    """The batches' images in order, the first `limit` (None: all): the batches after those unread."""
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise DatasetError(f"CIFAR-10 in {folder} is incomplete: {', '.join(missing)} missing.")
    batches: list[np.ndarray] = []
    for name in names:
        if _enough(batches, limit):
            break
        with open(folder / name, "rb") as file:
            batches.append(_read_batch(file, str(folder / name)))
    return _first(batches, limit)


def _read_archive(archive: Path, names: list[str], limit: int | None) -> np.ndarray:
    """Reads the batches straight out of the tar.gz in one pass, never extracting to disk (the first
    `limit` images: the batches after those are not unpickled)."""
    wanted = {f"{FOLDER}/{name}": name for name in names}
    raw = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                if member.name in wanted and member.isfile():
                    raw[wanted[member.name]] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise DatasetError(f"{archive} is not a readable tar.gz ({error}); download it again.") from error
    missing = [f"{FOLDER}/{name}" for name in names if name not in raw]
    if missing:
        raise DatasetError(f"{archive} lacks {', '.join(missing)}, so it is not the official CIFAR-10 archive.")
    batches: list[np.ndarray] = []
    for name in names:
        if _enough(batches, limit):
            break
        batches.append(_read_batch(io.BytesIO(raw[name]), f"{archive}:{FOLDER}/{name}"))
    return _first(batches, limit)


def _locate(data_dir: PathLike | None) -> Path:
    """The extracted DIR/cifar-10-batches-py/ (or DIR being that folder), else DIR/cifar-10-python.tar.gz."""
    if data_dir is not None:
        root = Path(data_dir)
        all_batches = BATCHES["train"] + BATCHES["test"]
        for folder in (root / FOLDER, root):
            if any((folder / name).is_file() for name in all_batches):
                return folder
        if (root / ARCHIVE).is_file():
            return root / ARCHIVE
    binary = data_dir is not None and any((Path(data_dir) / name).exists() for name in BINARY)
    raise not_found(
        "CIFAR-10", data_dir, f"{ARCHIVE} or {FOLDER}/", "the python version: download from "
        "https://www.cs.toronto.edu/~kriz/cifar.html", f"the binary version ({BINARY[0]}/)" if binary else "",
    )


def source(data_dir: PathLike | None, split: str) -> list[Path]:
    """The folder or archive `read` would read, found by name alone (nothing is decoded)."""
    return [_locate(data_dir)]


def read(data_dir: PathLike | None, split: str, limit: int | None = None) -> tuple[np.ndarray, list[Path]]:
    """Images (N, 3, 32, 32) of a split (the first `limit`, None: all) and the folder or archive they came from."""
    place = _locate(data_dir)
    reader = _read_folder if place.is_dir() else _read_archive
    images = reader(place, BATCHES[split], limit)
    return images, [place]
