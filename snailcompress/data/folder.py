"""Any folder of photographs: random multi-scale crops to train on, fixed tiles to test on, or its
images whole (`whole_images`: what `snailcompress bench --dataset folder DIR` measures by default).

Images are found recursively (hidden files and folders skipped) and sorted by path. Images named in
`holdout` (by file name or stem) form the test split; all others the train split. Neither split is augmented
(no flips), as in the paper. Each image is downsampled by every scale in `scales` with a box filter (the mean of the pixels
each output pixel covers), which also averages away sensor noise and JPEG artefacts at smaller scales; an
image smaller than the crop at some scale is skipped at that scale.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from snailcompress.codec.images import sample_problem
from snailcompress.data.base import ArrayDataset, PathLike, open_image
from snailcompress.errors import DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
MODE_OF = {3: "RGB", 1: "L"}  # Pillow mode of an image of this many channels
CACHE_BYTES = 1 << 30  # decoded images RandomCrops keeps in each process by default


def scaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """(width, height) after `downsample`: partial boxes at the right and bottom edges are dropped."""
    return int(size[0] * scale + 1e-9), int(size[1] * scale + 1e-9)


def downsample(image: Image.Image, scale: float) -> Image.Image:
    """Box filter: Image.reduce for integer factors 1/scale (exact, one rounding), else a BOX resize."""
    width, height = scaled_size(image.size, scale)
    factor = round(1 / scale)
    if abs(factor * scale - 1) < 1e-9:
        return image.reduce(factor, box=(0, 0, width * factor, height * factor))
    box = (0, 0, min(image.width, width / scale), min(image.height, height / scale))
    return image.resize((width, height), Image.Resampling.BOX, box=box)


# Pillow modes of 8-bit images, which convert exactly to 'RGB' (or 'L'); 16-bit, 32-bit and float images
# would be clipped, CMYK and other colour spaces approximated: refused, not silently changed
EXACT_MODES = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX")


def _check_mode(image: Image.Image, path: Path) -> None:
    """Before decoding: a 16-bit RGB PNG or PPM has an 8-bit mode, so the samples are checked too."""
    problem = sample_problem(image)
    if image.mode not in EXACT_MODES or problem:
        raise DatasetError(f"{path} has mode {image.mode}{problem}, which does not convert exactly to 8-bit RGB or "
                           "grayscale (16-bit, 32-bit, float or another colour space); convert it first.")


def load_image(path: Path, channels: int, scale: float) -> np.ndarray:
    """One image as uint8 (H, W, C) at a scale; colour images lose any alpha channel, grayscale uses Pillow's 'L'."""
    with open_image(path) as image:
        _check_mode(image, path)
        pixels = np.asarray(downsample(image.convert(MODE_OF[channels]), scale))
    return pixels.reshape(pixels.shape[0], pixels.shape[1], channels)


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header alone: sampling needs every size, decoding waits until a crop needs it."""
    with open_image(path) as image:
        _check_mode(image, path)
        return image.size


def _hidden(path: Path) -> bool:
    """A hidden file, or one in a hidden folder (.git, .thumbnails: copies, not photographs of the set)."""
    return any(part.startswith(".") for part in path.parts)


def find_images(data_dir: PathLike | None) -> list[Path]:
    """Image files under data_dir, sorted by path so every run and every rank numbers them alike."""
    if data_dir is None:
        raise DatasetError("The folder data set needs a directory of images (--data-dir DIR), for example the Kodak set.")
    if not Path(data_dir).is_dir():
        raise DatasetError(f"{data_dir} is {'not a directory' if Path(data_dir).exists() else 'not there'}: "
                           "the folder data set needs a directory of images.")
    root = Path(data_dir)
    files = sorted(
        p for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and not _hidden(p.relative_to(root)) and p.is_file()
    )
    if not files:
        raise DatasetError(
            f"No images found in {data_dir}: expected {', '.join(IMAGE_SUFFIXES)} files in it or its sub-folders "
            "(any folder of photographs will do, e.g. the Kodak set from https://r0k.us/graphics/kodak/)."
        )
    return files


def split_files(files: list[Path], holdout: Sequence[str], split: str) -> list[Path]:
    """The held-out images for "test", the others for "train"; a held-out name matching no image is an error.
    The messages name the command line's flag, --holdout (TrainOptions.holdout, load_split's holdout)."""
    wanted = set(holdout)
    held = [p for p in files if p.name in wanted or p.stem in wanted]
    unknown = wanted - {p.name for p in held} - {p.stem for p in held}
    if unknown:
        raise DatasetError(f"The folder data set has no image named {', '.join(sorted(unknown))} to hold out "
                           "(--holdout takes file names or stems, separated by commas).")
    if split == "test":
        if not held:
            raise DatasetError("The folder data set has no test split unless images are held out with "
                               "--holdout NAME[,NAME...].")
        return held
    held_set = set(held)
    chosen = [p for p in files if p not in held_set]
    if not chosen:
        raise DatasetError("--holdout names every image of the folder data set, so its train split is empty.")
    return chosen


class _Scale(NamedTuple):
    """The images large enough for a crop at one scale, and their crop positions laid end to end."""

    scale: float
    files: np.ndarray  # indices into RandomCrops.files
    widths: np.ndarray  # scaled widths, to turn a position number into (y, x)
    ends: np.ndarray  # cumulative number of crop positions: image k owns [ends[k-1], ends[k])


class RandomCrops(Dataset):
    """Train split: item i is a random crop x crop window, a pure function of (seed, epoch, i).

    A crop first draws a scale uniformly from `scales`, then a window uniformly among all crop positions of
    all images at that scale, so larger images are drawn in proportion to their number of positions (about
    their area) and every part of every photograph is equally likely. One epoch is `samples_per_epoch`
    crops; by default as many as there are non-overlapping tiles in all images at all scales, so an epoch
    sees about as many pixels as the data set holds. Decoded, downsampled images are cached in memory, each
    (image, scale) on first use, up to `cache_bytes` in each process (CACHE_BYTES, 1 GiB, by default; the
    least recently used go first, to be decoded again when drawn: the crops do not change); with DataLoader
    workers, use persistent_workers=True to keep their caches (the epoch lives in shared memory, so set_epoch
    reaches persistent workers too).
    """

    def __init__(
        self, files: list[Path], *, crop: int, scales: Sequence[float], samples_per_epoch: int | None,
        seed: int, channels: int, cache_bytes: int = CACHE_BYTES,
    ):
        self.name, self.channels, self.image_size = "folder", channels, (crop, crop)
        self.files, self.crop, self.seed, self.cache_bytes = files, crop, seed, cache_bytes
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        sizes = np.array([_image_size(p) for p in files])
        self._scales: list[_Scale] = []
        tile_count = 0
        for scale in scales:
            scaled = np.array([scaled_size(size, scale) for size in sizes])
            fits = (scaled >= crop).all(axis=1)
            if fits.any():
                widths, heights = scaled[fits].T
                positions = (widths - crop + 1) * (heights - crop + 1)
                self._scales.append(_Scale(scale, np.flatnonzero(fits), widths, np.cumsum(positions)))
                tile_count += int(((widths // crop) * (heights // crop)).sum())
        if not self._scales:
            raise DatasetError(f"Every training image is smaller than the {crop}x{crop} crop (--crop) at every scale "
                           f"(--scales {','.join(f'{s:g}' for s in scales)}).")
        self.samples_per_epoch = tile_count if samples_per_epoch is None else samples_per_epoch
        self._cache: OrderedDict[tuple[int, float], np.ndarray] = OrderedDict()  # least recently used first
        self._cached_bytes = 0

    def __len__(self) -> int:
        return self.samples_per_epoch

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Draw another set of crops: call before iterating over each epoch, on every rank."""
        self._epoch.fill_(epoch)

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < len(self):
            raise IndexError(f"crop {index} is outside the epoch of {len(self)} crops")
        rng = np.random.default_rng([self.seed, self.epoch, index])
        scale = self._scales[rng.integers(len(self._scales))]
        position = int(rng.integers(scale.ends[-1]))
        k = int(np.searchsorted(scale.ends, position, side="right"))
        y, x = divmod(position - (int(scale.ends[k - 1]) if k else 0), int(scale.widths[k]) - self.crop + 1)
        window = self._image(int(scale.files[k]), scale.scale)[y : y + self.crop, x : x + self.crop]
        return torch.from_numpy(window.transpose(2, 0, 1).copy())  # a copy: the cache stays untouched

    def _image(self, file: int, scale: float) -> np.ndarray:
        key = (file, scale)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        image = self._cache[key] = load_image(self.files[file], self.channels, scale)
        self._cached_bytes += image.nbytes
        while self._cached_bytes > self.cache_bytes and len(self._cache) > 1:  # the newest stays, however large
            self._cached_bytes -= self._cache.popitem(last=False)[1].nbytes
        return image


def tiles(files: list[Path], *, crop: int, scales: Sequence[float], channels: int) -> np.ndarray:
    """Test split: every non-overlapping crop x crop tile of every image at every scale in `scales`.

    Ordered image by image, then scale by scale (as given), then in raster order; partial tiles at the right
    and bottom edges are dropped. Pass scales=(1.0,) to test at full resolution only.
    """
    parts = []
    for path in files:
        for scale in scales:
            image = load_image(path, channels, scale)
            rows, cols = image.shape[0] // crop, image.shape[1] // crop
            grid = image[: rows * crop, : cols * crop].reshape(rows, crop, cols, crop, channels)
            parts.append(grid.transpose(0, 2, 4, 1, 3).reshape(rows * cols, channels, crop, crop))
    array = np.concatenate(parts)
    if not len(array):
        raise DatasetError(f"Every held-out image is smaller than the {crop}x{crop} crop (--crop) at every scale "
                           f"(--scales {','.join(f'{s:g}' for s in scales)}).")
    return array


def _check_channels(channels: int) -> None:
    if channels not in MODE_OF:
        raise DatasetError(f"The folder data set has 3 (RGB) or 1 (grayscale) channels (--channels), not {channels}.")


def whole_images(
    data_dir: PathLike | None, split: str = "test", *, channels: int = 3, holdout: Sequence[str] = (),
    limit: int | None = None,
) -> list[tuple[Path, np.ndarray]]:
    """Every image of the folder whole, at full size, uint8 (H, W, C), with its path, in path order
    (the first `limit` only: the others are not read). With `holdout`, only the held-out images
    ("test") or the others ("train"); without, all of them."""
    _check_channels(channels)
    files = find_images(data_dir)
    if holdout:
        files = split_files(files, holdout, split)
    return [(path, load_image(path, channels, 1.0)) for path in files[:limit]]


def load(
    data_dir: PathLike | None, split: str, *, crop: int, scales: Sequence[float], samples_per_epoch: int | None,
    seed: int, channels: int, holdout: Sequence[str],
) -> Dataset:
    """The train split as RandomCrops, the test split as an ArrayDataset of tiles."""
    if not (isinstance(crop, int) and crop >= 1):
        raise DatasetError(f"The crop size (--crop) must be a positive integer, not {crop!r}.")
    if not scales or not all(0 < s <= 1 for s in scales):
        raise DatasetError(f"The scales (--scales) must be numbers in (0, 1], not {','.join(map(str, scales)) or 'none'}.")
    if samples_per_epoch is not None and samples_per_epoch < 1:
        raise DatasetError(f"samples_per_epoch must be at least 1, not {samples_per_epoch}.")
    _check_channels(channels)
    files = split_files(find_images(data_dir), holdout, split)
    if split == "train":
        return RandomCrops(
            files, crop=crop, scales=scales, samples_per_epoch=samples_per_epoch, seed=seed, channels=channels
        )
    return ArrayDataset("folder", tiles(files, crop=crop, scales=scales, channels=channels))
