"""The encode and decode loops: a batch of equal windows, step by step, through a range coder.

The network stays behind a narrow interface, `TableProvider`: at each step it gives, for channel c,
the integer frequency tables of every batch slot given the values of channels < c at the slot's
position, and is then told the pixel values and which slots move on; a provider that `learns` is
also handed each window once it is coded (codec/adaptation.py). The coder knows nothing else
about the model; a provider computing in integer arithmetic (portable across machines) can replace
the float one without touching this file.

Encoder and decoder run literally the same sequence of provider calls on the same batch; the only
difference is where the pixel values come from (the image, or the range decoder). That is what makes
their tables identical bit for bit on one machine, environment and thread count.

Planes are coded in windows (codec/tiles.py, WindowPlan): tiles, each with the already-coded rows
above and columns to its left that it may see. Stream layout: for each step, for each channel, the
symbols of the slots whose window codes a real pixel there (context and padding are never coded),
in slot order; batches of slots one after the other. One stream per plane (queue order), or several
planes appended to one stream (the benchmark's images, side by side in one row, see bench/harness.py).
Without context this is the layout of independent tiles, position by position in raster order, which
format version 1 uses.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Protocol

import constriction
import numpy as np
import torch
from tqdm.auto import tqdm

from .. import mixture
from ..errors import FormatError
from ..sampling import stepper_for
from .tables import code_length_bits, quantize
from .tiles import WindowPlan

_FAMILY = constriction.stream.model.Categorical(perfect=False)
MAX_BATCH_TILES = 1536  # part of the format: encoder and decoder must batch alike


class TableProvider(Protocol):
    """Per-position integer frequency tables for a batch of tiles (see module docstring)."""

    channels: int
    learns: bool  # whether it wants learn() calls (the coder skips gathering windows otherwise)

    def reset(self, batch: int, height: int, width: int) -> None: ...

    def restart(self, slots: np.ndarray) -> None: ...

    def begin_position(self) -> None: ...

    def tables(self, channel: int, known: np.ndarray) -> np.ndarray: ...

    def end_position(self, values: np.ndarray, advance: np.ndarray | None = None) -> None: ...

    def learn(self, windows: np.ndarray, coded: np.ndarray) -> None: ...


class FloatModelTables:
    """Tables from a float32 network run incrementally on the CPU (see models/stepper.py)."""

    learns = False

    def __init__(self, model: torch.nn.Module):
        self.model = model.eval()
        self.channels = model.config.channels
        self._stepper = None
        self._conditionals = None

    def reset(self, batch: int, height: int, width: int) -> None:
        self._stepper = stepper_for(self.model, batch, height, width)

    def restart(self, slots: np.ndarray) -> None:
        self._stepper.restart(torch.from_numpy(slots))

    def begin_position(self) -> None:
        params = self._stepper.predict()
        self._conditionals = mixture.PixelConditionals(params, self.channels, dtype=torch.float32)

    def tables(self, channel: int, known: np.ndarray) -> np.ndarray:
        probs = self._conditionals.pmf(channel, torch.from_numpy(known) if channel else None)
        return quantize(probs.numpy())

    def end_position(self, values: np.ndarray, advance: np.ndarray | None = None) -> None:
        self._stepper.commit(torch.from_numpy(values), None if advance is None else torch.from_numpy(advance))

    def learn(self, windows: np.ndarray, coded: np.ndarray) -> None:
        """A static model learns nothing."""


def _code_windows(provider: TableProvider, plan: WindowPlan, canvas: np.ndarray, slots: np.ndarray, coder, decoding: bool,
                  progress: CodingProgress | None = None) -> None:
    """Run one batch of window slots (see WindowPlan) step by step, coding the pixels each window owns.

    Encoding, `canvas` is the padded plane; decoding, it starts empty and fills in as pixels are
    decoded. Pixels a window does not code (its context, and the padding) come from the canvas,
    where they are already known: context from windows that ran earlier, padding from the window's
    own earlier pixels. Symbols go in step order, then channel, then slot.
    """
    start, count = plan.slot_schedule(slots)
    n, positions, channels = len(slots), plan.positions, canvas.shape[2]
    provider.reset(n, plan.win_h, plan.win_w)
    for step in range(_plan_steps(plan, [slots])):
        elapsed = step - start
        active = (elapsed >= 0) & (elapsed < count * positions)
        window, position = np.divmod(np.maximum(elapsed, 0), positions)
        window = np.minimum(window, count - 1)
        if step and (begins := active & (position == 0) & (window > 0)).any():
            provider.restart(begins)
        r, c = np.divmod(position, plan.win_w)
        i, j = slots[:, 0] + window, slots[:, 1]
        y, x = plan.place(i, j, r, c)
        coded = active & plan.owns(i, j, r, c)
        values = canvas[np.minimum(y, plan.height - 1), np.minimum(x, plan.width - 1)]  # what is known (n, C)
        values[~active] = 0  # idle slots (not started, or done) see the same values in encoder and decoder
        bits = 0.0
        provider.begin_position()
        for ch in range(channels):
            table = provider.tables(ch, np.ascontiguousarray(values[:, :ch]))
            if not coded.any():
                continue
            coded_table = np.ascontiguousarray(table[coded])
            if decoding:
                try:
                    values[coded, ch] = coder.decode(_FAMILY, coded_table)
                except Exception as e:  # constriction raises on a stream that ends too early
                    raise FormatError(f"coded stream is corrupt or truncated ({e})") from None
            else:
                coder.encode(values[coded, ch].astype(np.int32), _FAMILY, coded_table)
            if progress is not None:
                bits += float(code_length_bits(coded_table, values[coded, ch]).sum())
        if decoding:
            canvas[y[coded], x[coded]] = values[coded]
        provider.end_position(values, active & (position < positions - 1))
        if provider.learns and (done := active & (position == positions - 1)).any():
            provider.learn(*plan.windows_at(canvas, i[done], j[done]))  # both sides know these pixels now
        if progress is not None:
            progress.step(bits, int(coded.sum()) * channels)


def _plan_steps(plan: WindowPlan, groups: list[np.ndarray]) -> int:
    """Steps of all batches together (for progress bars)."""
    total = 0
    for slots in groups:
        start, count = plan.slot_schedule(slots)
        total += int((start + count * plan.positions).max())
    return total


def coding_steps(height: int, width: int, tile: tuple[int, int], context: tuple[int, int] = (0, 0), band: int = 1) -> int:
    """Steps code_plane takes for an (height, width) plane: the total of a progress bar."""
    plan = WindowPlan.for_image(height, width, tile, context, band)
    return _plan_steps(plan, plan.slot_groups(MAX_BATCH_TILES))


class CodingProgress:
    """A progress bar of coding steps showing the running bits per subpixel: the code length of the
    symbols coded so far under their tables (what the range coder's output approaches)."""

    def __init__(self, total: int, desc: str, enabled: bool = True):
        self.bar = tqdm(total=total, desc=desc, unit="step", disable=not enabled, leave=False)
        self.steps, self.bits, self.subpixels = 0, 0.0, 0

    def step(self, bits: float, subpixels: int) -> None:
        self.steps += 1
        self.bits += bits
        self.subpixels += subpixels
        self.bar.update(1)
        if self.steps % 64 == 0 and self.subpixels:
            self.bar.set_postfix(bpd=f"{self.bits / self.subpixels:.4f}", refresh=False)

    def __enter__(self) -> CodingProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()


def _progress(progress, plan: WindowPlan, groups: list[np.ndarray], desc: str):
    """`progress`: False (no bar), True (a bar of its own) or the caller's CodingProgress (kept open)."""
    if isinstance(progress, CodingProgress):
        return nullcontext(progress)
    return CodingProgress(_plan_steps(plan, groups), desc) if progress else nullcontext(None)


def code_plane(provider: TableProvider, plane: np.ndarray, tile: tuple[int, int], context: tuple[int, int] = (0, 0),
               band: int = 1, progress=False, encoder=None):
    """Encode an (H, W, C) plane in windows (WindowPlan); returns (words, plan).

    `encoder`: an existing queue RangeEncoder to append to, so that several planes make one stream;
    the words returned are then the whole stream so far. Decode it with one RangeDecoder passed to
    decode_plane for the same planes in the same order.
    """
    plan = WindowPlan.for_image(plane.shape[0], plane.shape[1], tile, context, band)
    canvas = plan.canvas(plane)
    encoder = encoder if encoder is not None else constriction.stream.queue.RangeEncoder()
    groups = plan.slot_groups(MAX_BATCH_TILES)
    with _progress(progress, plan, groups, "encode") as bar:
        for slots in groups:
            _code_windows(provider, plan, canvas, slots, encoder, False, bar)
    return encoder.get_compressed(), plan


def decode_plane(provider: TableProvider, words: np.ndarray | None, height: int, width: int, channels: int,
                 tile: tuple[int, int], context: tuple[int, int] = (0, 0), band: int = 1, progress=False,
                 decoder=None) -> np.ndarray:
    """Inverse of code_plane: the (H, W, C) plane. `decoder`: an existing queue RangeDecoder to go
    on reading from (`words` is then ignored and may be None)."""
    plan = WindowPlan.for_image(height, width, tile, context, band)
    if decoder is None:
        decoder = constriction.stream.queue.RangeDecoder(np.ascontiguousarray(words, dtype=np.uint32))
    canvas = plan.canvas(np.zeros((height, width, channels), np.uint8))
    groups = plan.slot_groups(MAX_BATCH_TILES)
    with _progress(progress, plan, groups, "decode") as bar:
        for slots in groups:
            _code_windows(provider, plan, canvas, slots, decoder, True, bar)
    return np.ascontiguousarray(canvas[:height, :width])
