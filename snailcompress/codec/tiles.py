"""Cutting an image plane into equal tiles that are coded together as one batch.

Every tile has the same shape (th, tw) = (min(tile, H), min(tile, W)), so all tiles of an image run
through the network in one batch. Tiles at the right and bottom edges are padded by repeating the
last real column and row. That padding is causal: a padded value at (i, j) copies the pixel at
(min(i, h-1), min(j, w-1)), which comes before (i, j) in raster order, so the decoder can fill it in
as it goes and it never has to be coded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TileGrid:
    height: int
    width: int
    tile_h: int
    tile_w: int

    @classmethod
    def for_image(cls, height: int, width: int, tile: int | tuple[int, int]) -> TileGrid:
        th, tw = (tile, tile) if isinstance(tile, int) else tile
        return cls(height, width, min(th, height), min(tw, width))

    @property
    def rows(self) -> int:
        return -(-self.height // self.tile_h)

    @property
    def cols(self) -> int:
        return -(-self.width // self.tile_w)

    @property
    def count(self) -> int:
        return self.rows * self.cols

    def valid_extent(self) -> tuple[np.ndarray, np.ndarray]:
        """Real rows and columns (N,), (N,) of every tile in raster order of tiles."""
        rows = np.minimum(self.tile_h, self.height - np.arange(self.rows) * self.tile_h)
        cols = np.minimum(self.tile_w, self.width - np.arange(self.cols) * self.tile_w)
        return np.repeat(rows, self.cols), np.tile(cols, self.rows)

    def split(self, plane: np.ndarray) -> np.ndarray:
        """(H, W, C) uint8 -> (N, C, th, tw) tiles, edges padded by repetition."""
        padded_h, padded_w = self.rows * self.tile_h, self.cols * self.tile_w
        padded = np.pad(plane, ((0, padded_h - self.height), (0, padded_w - self.width), (0, 0)), mode="edge")
        tiles = padded.reshape(self.rows, self.tile_h, self.cols, self.tile_w, -1)
        return np.ascontiguousarray(tiles.transpose(0, 2, 4, 1, 3).reshape(self.count, -1, self.tile_h, self.tile_w))

    def merge(self, tiles: np.ndarray) -> np.ndarray:
        """Inverse of split: (N, C, th, tw) -> (H, W, C)."""
        channels = tiles.shape[1]
        grid = tiles.reshape(self.rows, self.cols, channels, self.tile_h, self.tile_w).transpose(0, 3, 1, 4, 2)
        return np.ascontiguousarray(grid.reshape(self.rows * self.tile_h, self.cols * self.tile_w, channels)[: self.height, : self.width])
