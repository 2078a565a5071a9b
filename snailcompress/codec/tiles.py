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

BAND_WINDOWS = 96  # windows coding side by side that the default band aims at (see default_band)


def default_band(height: int, width: int, tile: tuple[int, int], context: tuple[int, int]) -> int:
    """Rows of windows per band when the encoder is not told otherwise: as many as leave about
    BAND_WINDOWS windows coding side by side (few windows at a time make decoding slow: a step's
    fixed cost is paid per step, not per window), and at least 2 (a band of 1 has no context
    above); 1 where there is no context above. The container stores a band only where it differs."""
    (tile_h, tile_w), (above, _) = tile, context
    if not above or tile_h + above >= height:
        return 1
    windows = -(-height // tile_h) * -(-width // tile_w)
    return max(2, windows // BAND_WINDOWS)


@dataclass(frozen=True)
class WindowPlan:
    """Tiles coded with context: each tile is run through the model in a window that also holds
    `above` already-coded rows above it and `left` columns to its left.

    Windows are (win_h, win_w) = (tile_h + above, tile_w + left); they start every tile_w columns,
    and every tile_h rows within a band of `band` rows of windows, so they overlap by the context.
    The first window of a row of windows codes all its columns (it has nothing to its left), and the
    first row of windows of a band codes all its rows; every other window codes only its tile. All
    windows thus have one shape and run as one batch. Edges are padded by repetition (causal, never
    coded). With no context the windows are the tiles, coded independently.

    Order, in steps of one pixel position: a window needs its left neighbour's row r before it can
    read that row's context, so window (i, j) starts j * win_w steps after window (i, 0), one row of
    positions behind its neighbour. A row of windows needs the whole row above it, so within a band
    the windows of column j run one after the other in one batch slot. Bands are independent and
    run side by side: longer bands give more windows context above, shorter ones more slots to
    batch (few slots make coding slow: a step's fixed cost is paid per step, not per slot).
    """

    height: int
    width: int
    win_h: int
    win_w: int
    above: int  # context actually used: 0 where one window spans the image
    left: int
    band: int  # rows of windows per band; 1 where there is no context above

    @classmethod
    def for_image(cls, height: int, width: int, tile: tuple[int, int], context: tuple[int, int], band: int = 1) -> WindowPlan:
        (tile_h, tile_w), (above, left) = tile, context
        win_h, win_w = min(tile_h + above, height), min(tile_w + left, width)
        above, left = (above if win_h < height else 0), (left if win_w < width else 0)
        return cls(height, width, win_h, win_w, above, left, band if above else 1)

    @property
    def tile_h(self) -> int:
        return self.win_h - self.above

    @property
    def tile_w(self) -> int:
        return self.win_w - self.left

    def top(self, i: np.ndarray | int):
        """Image row of the top of window row i."""
        return (i // self.band) * (self.band * self.tile_h + self.above) + (i % self.band) * self.tile_h

    def place(self, i, j, r, c):
        """Image row and column of pixel (r, c) of window (i, j) (numbers or arrays)."""
        return self.top(i) + r, j * self.tile_w + c

    def owns(self, i, j, r, c):
        """Whether window (i, j) codes its pixel (r, c): a real pixel of its tile, or of its context
        rows (columns) where it is the first row of windows of a band (the first window of a row)."""
        y, x = self.place(i, j, r, c)
        return ((r >= self.above) | (i % self.band == 0)) & ((c >= self.left) | (j == 0)) & (y < self.height) & (x < self.width)

    @property
    def rows(self) -> int:
        rows = 1
        while self.top(rows - 1) + self.win_h < self.height:
            rows += 1
        return rows

    @property
    def cols(self) -> int:
        return -(-(self.width - self.win_w) // self.tile_w) + 1

    @property
    def positions(self) -> int:
        return self.win_h * self.win_w

    def canvas(self, plane: np.ndarray) -> np.ndarray:
        """(H, W, C) -> the plane padded by repetition to cover every window."""
        padded_h = self.top(self.rows - 1) + self.win_h
        padded_w = (self.cols - 1) * self.tile_w + self.win_w
        return np.pad(plane, ((0, padded_h - self.height), (0, padded_w - self.width), (0, 0)), mode="edge")

    def slot_groups(self, max_slots: int) -> list[np.ndarray]:
        """First window row and column (n, 2) of each batch slot, grouped into batches of at most
        `max_slots` slots (or one band) that depend on nothing outside themselves. A slot is one
        column of a band: its windows run one after the other."""
        bands = -(-self.rows // self.band)
        slots = np.stack([np.repeat(np.arange(bands) * self.band, self.cols), np.tile(np.arange(self.cols), bands)], 1)
        step = max_slots if not self.left else max(1, max_slots // self.cols) * self.cols  # left context links a band's slots
        return [slots[s : s + step] for s in range(0, len(slots), step)]

    def slot_schedule(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Step at which each slot starts, and how many windows it runs back to back."""
        start = slots[:, 1] * self.win_w if self.left else np.zeros(len(slots), int)
        return start, np.minimum(self.band, self.rows - slots[:, 0])

    def windows_at(self, canvas: np.ndarray, i: np.ndarray, j: np.ndarray, k: np.ndarray | None = None):
        """Windows (i, j) of a canvas (H', W', C), or of canvases (K, H', W', C), window n of canvas
        k[n], as (n, C, win_h, win_w), and which pixels each codes. Reads padding from the nearest
        real pixel (as the coder does), so a decoder's canvas, where only coded pixels are written,
        gives what the encoder's gives once those windows are coded."""
        r, c = np.mgrid[0 : self.win_h, 0 : self.win_w]
        rows = np.minimum(self.top(i)[:, None] + np.arange(self.win_h), self.height - 1)
        cols = np.minimum((j * self.tile_w)[:, None] + np.arange(self.win_w), self.width - 1)
        at = (rows[:, :, None], cols[:, None, :]) if k is None else (k[:, None, None], rows[:, :, None], cols[:, None, :])
        pixels = canvas[at].transpose(0, 3, 1, 2)
        return np.ascontiguousarray(pixels), self.owns(i[:, None, None], j[:, None, None], r, c)

    def windows(self, plane: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """All windows of an (H, W, C) plane as (N, C, win_h, win_w), in raster order of windows, and
        which of their pixels each codes, (N, win_h, win_w) bool: what the model sees and is scored on
        (the NLL the codec's stream matches), for one full forward pass instead of the coder's steps."""
        canvas = self.canvas(plane)
        out, coded = [], []
        r, c = np.mgrid[0 : self.win_h, 0 : self.win_w]
        for i in range(self.rows):
            top = int(self.top(i))
            for j in range(self.cols):
                x0 = j * self.tile_w
                out.append(canvas[top : top + self.win_h, x0 : x0 + self.win_w].transpose(2, 0, 1))
                coded.append(self.owns(i, j, r, c))
        return np.stack(out), np.stack(coded)
