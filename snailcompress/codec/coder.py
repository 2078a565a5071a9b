"""The encode and decode loops: a batch of equal tiles, position by position, through a range coder.

The network stays behind a narrow interface, `TableProvider`: at each pixel position it gives, for
channel c, the integer frequency tables of every tile given the values of channels < c at that
position, and is then told the pixel values. The coder knows nothing else about the model; a
provider computing in integer arithmetic (portable across machines) can replace the float one
without touching this file.

Encoder and decoder run literally the same sequence of provider calls on the same batch; the only
difference is where the pixel values come from (the image, or the range decoder). That is what makes
their tables identical bit for bit on one machine, environment and thread count.

Stream layout: for each position in raster order, for each channel, the symbols of the tiles that
have a real pixel there (padding is never coded), in tile order. One stream per plane (queue order).
"""

from __future__ import annotations

from typing import Protocol

import constriction
import numpy as np
import torch
from tqdm.auto import tqdm

from .. import mixture
from ..errors import FormatError
from ..sampling import stepper_for
from .tables import quantize
from .tiles import TileGrid

_FAMILY = constriction.stream.model.Categorical(perfect=False)
MAX_BATCH_TILES = 1536  # part of the format: encoder and decoder must batch alike
Extent = tuple[np.ndarray, np.ndarray]


class TableProvider(Protocol):
    """Per-position integer frequency tables for a batch of tiles (see module docstring)."""

    channels: int

    def reset(self, batch: int, height: int, width: int) -> None: ...

    def begin_position(self) -> None: ...

    def tables(self, channel: int, known: np.ndarray) -> np.ndarray: ...

    def end_position(self, values: np.ndarray) -> None: ...


class FloatModelTables:
    """Tables from a float32 network run incrementally on the CPU (see models/stepper.py)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model.eval()
        self.channels = model.config.channels
        self._stepper = None
        self._conditionals = None

    def reset(self, batch: int, height: int, width: int) -> None:
        self._stepper = stepper_for(self.model, batch, height, width)

    def begin_position(self) -> None:
        params = self._stepper.predict()
        self._conditionals = mixture.PixelConditionals(params, self.channels, dtype=torch.float32)

    def tables(self, channel: int, known: np.ndarray) -> np.ndarray:
        probs = self._conditionals.pmf(channel, torch.from_numpy(known) if channel else None)
        return quantize(probs.numpy())

    def end_position(self, values: np.ndarray) -> None:
        self._stepper.commit(torch.from_numpy(values))


def _coded(valid_h: np.ndarray, valid_w: np.ndarray, i: int, j: int) -> np.ndarray:
    return (valid_h > i) & (valid_w > j)


def encode_tiles(
    provider: TableProvider, tiles: np.ndarray, extent: Extent | None = None, progress=None, encoder=None
) -> np.ndarray:
    """Code (N, C, th, tw) uint8 tiles; `extent` (real rows, real columns of each tile, see
    TileGrid.valid_extent) marks the padding, which is not coded. Returns uint32 words.

    `encoder`: an existing queue RangeEncoder to append to, so that several calls (batches) make one
    stream; the words returned are then the whole stream so far. Decode such a stream with one
    RangeDecoder passed to decode_tiles for the same batches in the same order.
    """
    n, channels, th, tw = tiles.shape
    valid_h, valid_w = extent if extent is not None else (np.full(n, th), np.full(n, tw))
    if encoder is None:
        encoder = constriction.stream.queue.RangeEncoder()
    provider.reset(n, th, tw)
    for position in range(th * tw):
        i, j = divmod(position, tw)
        values = np.ascontiguousarray(tiles[:, :, i, j])
        coded = _coded(valid_h, valid_w, i, j)
        provider.begin_position()
        for c in range(channels):
            table = provider.tables(c, np.ascontiguousarray(values[:, :c]))
            if coded.any():
                encoder.encode(values[coded, c].astype(np.int32), _FAMILY, np.ascontiguousarray(table[coded]))
        provider.end_position(values)
        if progress is not None:
            progress.update(1)
    return encoder.get_compressed()


def decode_tiles(
    provider: TableProvider, words: np.ndarray | None, shape: tuple[int, int, int, int], extent: Extent | None = None,
    progress=None, decoder=None,
) -> np.ndarray:
    """Inverse of encode_tiles: (N, C, th, tw) uint8 tiles from the words.

    `decoder`: an existing queue RangeDecoder to continue reading from (then `words` is ignored and
    may be None): the inverse of passing one encoder to several encode_tiles calls.
    """
    n, channels, th, tw = shape
    valid_h, valid_w = extent if extent is not None else (np.full(n, th), np.full(n, tw))
    if decoder is None:
        decoder = constriction.stream.queue.RangeDecoder(np.ascontiguousarray(words, dtype=np.uint32))
    tiles = np.zeros(shape, np.uint8)
    provider.reset(n, th, tw)
    rows = np.arange(n)
    for position in range(th * tw):
        i, j = divmod(position, tw)
        coded = _coded(valid_h, valid_w, i, j)
        padding = ~coded
        values = np.zeros((n, channels), np.uint8)
        if padding.any():  # repeat the last real pixel of the row / column, decoded earlier
            src_i = np.minimum(i, valid_h[padding] - 1)
            src_j = np.minimum(j, valid_w[padding] - 1)
            values[padding] = tiles[rows[padding], :, src_i, src_j]
        provider.begin_position()
        for c in range(channels):
            table = provider.tables(c, np.ascontiguousarray(values[:, :c]))
            if coded.any():
                try:
                    symbols = decoder.decode(_FAMILY, np.ascontiguousarray(table[coded]))
                except Exception as e:  # constriction raises on a stream that ends too early
                    raise FormatError(f"coded stream is corrupt or truncated ({e})") from None
                values[coded, c] = symbols
        provider.end_position(values)
        tiles[:, :, i, j] = values
        if progress is not None:
            progress.update(1)
    return tiles


def _batches(count: int) -> list[slice]:
    """Tiles are coded in batches of at most MAX_BATCH_TILES, one after the other in the same stream:
    this bounds memory (keys and values of every position of every tile in a batch) for any image."""
    return [slice(start, min(count, start + MAX_BATCH_TILES)) for start in range(0, count, MAX_BATCH_TILES)]


def code_plane(provider: TableProvider, plane: np.ndarray, tile: int | tuple[int, int], show_progress: bool = False):
    """Encode an (H, W, C) plane in tiles; returns (words, grid)."""
    grid = TileGrid.for_image(plane.shape[0], plane.shape[1], tile)
    tiles, (valid_h, valid_w) = grid.split(plane), grid.valid_extent()
    encoder = constriction.stream.queue.RangeEncoder()
    batches = _batches(grid.count)
    total = len(batches) * grid.tile_h * grid.tile_w
    with tqdm(total=total, desc="encode", unit="px", disable=not show_progress, leave=False) as bar:
        for part in batches:
            encode_tiles(provider, tiles[part], (valid_h[part], valid_w[part]), bar, encoder)
    return encoder.get_compressed(), grid


def decode_plane(provider: TableProvider, words: np.ndarray, height: int, width: int, channels: int, tile, show_progress=False):
    """Inverse of code_plane: the (H, W, C) plane."""
    grid = TileGrid.for_image(height, width, tile)
    valid_h, valid_w = grid.valid_extent()
    decoder = constriction.stream.queue.RangeDecoder(np.ascontiguousarray(words, dtype=np.uint32))
    tiles = np.zeros((grid.count, channels, grid.tile_h, grid.tile_w), np.uint8)
    batches = _batches(grid.count)
    total = len(batches) * grid.tile_h * grid.tile_w
    with tqdm(total=total, desc="decode", unit="px", disable=not show_progress, leave=False) as bar:
        for part in batches:
            shape = (part.stop - part.start, channels, grid.tile_h, grid.tile_w)
            tiles[part] = decode_tiles(provider, None, shape, (valid_h[part], valid_w[part]), bar, decoder)
    return grid.merge(tiles)
