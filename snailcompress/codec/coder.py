"""The encode and decode loops: windows of a plane through the integer network and a range coder.

The network is seen through a narrow interface, `CodingNetwork` (integer/network.py is the one that
exists): a full forward pass over a batch of windows, and an incremental stepper over a batch of
window slots. Both give the same integers at every position, and integer/mixture.py turns them into
the same frequency tables on every machine, so

* the encoder runs the full forward pass once over all windows (in chunks bounded in memory) and
  codes every symbol from its two cumulative counts (`IntegerConditionals.symbol_bounds`);
* the decoder steps through the positions, one batch of window slots at a time, building each
  step's full tables (`IntegerConditionals.tables`) and feeding the decoded values back.

Planes are coded in windows (codec/tiles.py, WindowPlan): tiles, each with the already-coded rows
above and columns to its left that it may see. Stream layout (what the decoder's schedule reads):
for each batch of slots (`WindowPlan.slot_groups`), for each step, for each channel, the symbols of
the slots whose window codes a real pixel there (context and padding are never coded), in slot
order. One stream per plane (queue order), or several planes appended to one stream (the
benchmark's images, side by side in one row, see bench/harness.py).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Protocol

import constriction
import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import FormatError
from ..integer.arithmetic import PRECISION_BITS, TABLE_TOTAL
from ..integer.mixture import IntegerConditionals
from .tiles import WindowPlan

_FAMILY = constriction.stream.model.Categorical(perfect=False)
MAX_BATCH_TILES = 1536  # part of the format: encoder and decoder must batch alike
ENCODE_CHUNK_POSITIONS = 4096  # window positions per forward pass of the encoder: small chunks stay in cache
ENCODE_CHUNK_SYMBOLS = 1 << 15  # symbols per call of the range encoder (a (n, 256) table each)


class CodingNetwork(Protocol):
    """What the coder needs of a network (integer/network.py: IntegerPixelSNAIL)."""

    device: torch.device

    def forward(self, pixels: torch.Tensor) -> torch.Tensor: ...  # (B, C, H, W) 0..255 -> (B, H, W, K)

    def stepper(self, batch: int, height: int, width: int): ...  # predict() / commit() / restart()


# ---------------------------------------------------------------------------------------------
# Where each symbol goes in the stream


def stream_order(plan: WindowPlan, coded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The coded pixels in the order the decoder reads them, and the step of the decoder's schedule at
    which each is coded (a running count over all batches). Pixels are numbered in raster order of
    (window, position), as `coded[coded]` lists them.

    coded: (windows, win_h, win_w), which pixels each window codes (raster order of windows).
    Within a step the channels come one after the other (see `code_plane`)."""
    flat = coded.reshape(len(coded), -1)
    first_pixel = np.concatenate([[0], np.cumsum(flat.sum(axis=1))])
    pixels, steps, slot_of, positions = [], [], [], plan.positions
    step_offset = 0
    for slots in plan.slot_groups(MAX_BATCH_TILES):
        start, count = plan.slot_schedule(slots)
        for k, ((i0, j), first, n) in enumerate(zip(slots, start, count)):
            for w in range(n):
                window = (i0 + w) * plan.cols + j
                mine = np.flatnonzero(flat[window])
                pixels.append(first_pixel[window] + np.arange(len(mine)))
                steps.append(step_offset + first + w * positions + mine)
                slot_of.append(np.full(len(mine), k))
        step_offset += int((start + count * positions).max())
    pixel, step, slot = np.concatenate(pixels), np.concatenate(steps), np.concatenate(slot_of)
    order = np.lexsort((slot, step))  # by step, then slot
    return pixel[order], step[order]


def _plan_steps(plan: WindowPlan) -> int:
    """Steps of all batches of the decoder together (for progress bars)."""
    total = 0
    for slots in plan.slot_groups(MAX_BATCH_TILES):
        start, count = plan.slot_schedule(slots)
        total += int((start + count * plan.positions).max())
    return total


def coding_steps(height: int, width: int, tile: tuple[int, int], context: tuple[int, int] = (0, 0), band: int = 1) -> int:
    """Steps decode_plane takes for an (height, width) plane: the total of a progress bar."""
    return _plan_steps(WindowPlan.for_image(height, width, tile, context, band))


class CodingProgress:
    """A progress bar (steps decoded, or window positions encoded) with the running bits per subpixel."""

    def __init__(self, total: int, desc: str, enabled: bool = True, unit: str = "step"):
        self.bar = tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=False)
        self.steps, self.bits, self.subpixels, self.done = 0, 0.0, 0, 0

    def step(self, bits: float, subpixels: int, amount: int = 1) -> None:
        self.steps += 1
        self.done += amount
        self.bits += bits
        self.subpixels += subpixels
        self.bar.update(amount)
        if self.steps % 64 == 0 and self.subpixels:
            self.bar.set_postfix(bpd=f"{self.bits / self.subpixels:.4f}", refresh=False)

    def __enter__(self) -> CodingProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()


def _progress(progress, total: int, desc: str, unit: str):
    """`progress`: False (no bar), True (a bar of its own) or the caller's CodingProgress (kept open)."""
    if isinstance(progress, CodingProgress):
        return nullcontext(progress)
    return CodingProgress(total, desc, unit=unit) if progress else nullcontext(None)


def _bits(counts: np.ndarray) -> float:
    return float((PRECISION_BITS - np.log2(counts + 1.0)).sum())


# ---------------------------------------------------------------------------------------------
# Encoding: one forward pass


def symbol_bounds(net, windows: np.ndarray, coded: np.ndarray, progress=None) -> tuple[np.ndarray, np.ndarray]:
    """(start, count) of every coded subpixel, (P, C) each, in raster order of (window, position):
    the full forward pass over chunks of windows, then the symbols' two cumulative counts."""
    channels = windows.shape[1]
    per_chunk = max(1, ENCODE_CHUNK_POSITIONS // (windows.shape[2] * windows.shape[3]))
    starts, counts = [], []
    for s in range(0, len(windows), per_chunk):
        chunk = torch.from_numpy(windows[s : s + per_chunk])
        params = net.forward(chunk)
        mask = torch.from_numpy(coded[s : s + per_chunk]).to(params.device)
        values = chunk.permute(0, 2, 3, 1).to(params.device)[mask].long()  # (P, C)
        conditionals = IntegerConditionals(params[mask], channels)
        start = torch.zeros_like(values)
        count = torch.zeros_like(values)
        for c in range(channels):
            start[:, c], count[:, c] = conditionals.symbol_bounds(c, values[:, :c], values[:, c])
        starts.append(start.cpu().numpy())
        counts.append(count.cpu().numpy())
        if progress is not None:
            progress.step(_bits(counts[-1]), counts[-1].size, len(chunk))
    return np.concatenate(starts), np.concatenate(counts)


def _encode_symbols(encoder, symbols: np.ndarray, start: np.ndarray, count: np.ndarray) -> None:
    """Code symbols whose table entries are (start, count): the range coder reads a symbol's table
    only through its cumulative count and its count, so a table holding the mass below the symbol in
    value 0, the symbol's count, and the mass above it in value 255 codes exactly as the full one."""
    for s in range(0, len(symbols), ENCODE_CHUNK_SYMBOLS):
        sym, lo, n = symbols[s : s + ENCODE_CHUNK_SYMBOLS], start[s : s + ENCODE_CHUNK_SYMBOLS], count[s : s + ENCODE_CHUNK_SYMBOLS]
        table = np.zeros((len(sym), 256))
        rows = np.arange(len(sym))
        table[:, 0] = lo
        table[:, 255] += TABLE_TOTAL - lo - n
        table[rows, sym] += n
        encoder.encode(sym.astype(np.int32), _FAMILY, table)


def code_plane(net, plane: np.ndarray, tile: tuple[int, int], context: tuple[int, int] = (0, 0), band: int = 1,
               progress=False, encoder=None):
    """Encode an (H, W, C) plane in windows (WindowPlan); returns (words, plan).

    `encoder`: an existing queue RangeEncoder to append to, so that several planes make one stream;
    the words returned are then the whole stream so far. Decode it with one RangeDecoder passed to
    decode_plane for the same planes in the same order.
    """
    plan = WindowPlan.for_image(plane.shape[0], plane.shape[1], tile, context, band)
    windows, coded = plan.windows(plane)
    with _progress(progress, len(windows), "encode", "window") as bar:
        start, count = symbol_bounds(net, windows, coded, bar)
    pixel_values = windows.transpose(0, 2, 3, 1)[coded]  # (P, C), the same raster order
    pixel, step = stream_order(plan, coded)
    # Within a step: every slot's channel 0, then channel 1, ...: sort (step, channel, stream order).
    channels = plane.shape[2]
    order = np.argsort(np.repeat(step, channels) * channels + np.tile(np.arange(channels), len(step)), kind="stable")
    flat_pixel = np.repeat(pixel, channels)[order]
    flat_channel = np.tile(np.arange(channels), len(step))[order]
    encoder = encoder if encoder is not None else constriction.stream.queue.RangeEncoder()
    _encode_symbols(encoder, pixel_values[flat_pixel, flat_channel].astype(np.int64),
                    start[flat_pixel, flat_channel], count[flat_pixel, flat_channel])
    return encoder.get_compressed(), plan


# ---------------------------------------------------------------------------------------------
# Decoding: step by step


def _decode_windows(net, plan: WindowPlan, canvas: np.ndarray, slots: np.ndarray, decoder,
                    progress: CodingProgress | None = None) -> None:
    """Run one batch of window slots (see WindowPlan) step by step, decoding the pixels each window owns.

    `canvas` starts empty and fills in as pixels are decoded. Pixels a window does not code (its
    context, and the padding) come from the canvas, where they are already known: context from
    windows that ran earlier, padding from the window's own earlier pixels.
    """
    start, count = plan.slot_schedule(slots)
    n, positions, channels = len(slots), plan.positions, canvas.shape[2]
    stepper = net.stepper(n, plan.win_h, plan.win_w)
    for step in range(int((start + count * positions).max())):
        elapsed = step - start
        active = (elapsed >= 0) & (elapsed < count * positions)
        window, position = np.divmod(np.maximum(elapsed, 0), positions)
        window = np.minimum(window, count - 1)
        if step and (begins := active & (position == 0) & (window > 0)).any():
            stepper.restart(torch.from_numpy(begins))
        r, c = np.divmod(position, plan.win_w)
        i, j = slots[:, 0] + window, slots[:, 1]
        y, x = plan.place(i, j, r, c)
        coded = active & plan.owns(i, j, r, c)
        values = canvas[np.minimum(y, plan.height - 1), np.minimum(x, plan.width - 1)]  # what is known (n, C)
        values[~active] = 0  # idle slots (not started, or done) see the same values in every decoder
        bits = 0.0
        params = stepper.predict()  # every slot steps, coding or not: that keeps one step one batched pass
        if coded.any():
            mine = params if coded.all() else params[torch.from_numpy(coded).to(net.device)]
            conditionals = IntegerConditionals(mine, channels)
            known = torch.from_numpy(values[coded]).to(net.device)
            for ch in range(channels):
                table = conditionals.tables(ch, known[:, :ch]).cpu().numpy().astype(np.float64)
                try:
                    decoded = decoder.decode(_FAMILY, table)
                except Exception as e:  # constriction raises on a stream that ends too early
                    raise FormatError(f"coded stream is corrupt or truncated ({e})") from None
                values[coded, ch] = decoded
                known[:, ch] = torch.from_numpy(decoded.astype(np.uint8)).to(net.device)
                if progress is not None:
                    bits += _bits(table[np.arange(len(decoded)), decoded])
            canvas[y[coded], x[coded]] = values[coded]
        stepper.commit(torch.from_numpy(values), torch.from_numpy(active & (position < positions - 1)))
        if progress is not None:
            progress.step(bits, int(coded.sum()) * channels)


def decode_plane(net, words: np.ndarray | None, height: int, width: int, channels: int,
                 tile: tuple[int, int], context: tuple[int, int] = (0, 0), band: int = 1, progress=False,
                 decoder=None) -> np.ndarray:
    """Inverse of code_plane: the (H, W, C) plane. `decoder`: an existing queue RangeDecoder to go
    on reading from (`words` is then ignored and may be None)."""
    plan = WindowPlan.for_image(height, width, tile, context, band)
    if decoder is None:
        decoder = constriction.stream.queue.RangeDecoder(np.ascontiguousarray(words, dtype=np.uint32))
    canvas = plan.canvas(np.zeros((height, width, channels), np.uint8))
    with _progress(progress, _plan_steps(plan), "decode", "step") as bar, torch.no_grad():
        for slots in plan.slot_groups(MAX_BATCH_TILES):
            _decode_windows(net, plan, canvas, slots, decoder, bar)
    return np.ascontiguousarray(canvas[:height, :width])
