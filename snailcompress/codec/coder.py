"""The encode and decode loops: windows of a plane through the integer network and a range coder.

The network is seen through a narrow interface, `CodingNetwork` (integer/network.py is the one that
exists): a full forward pass over a batch of windows (its features, then its output layer, which
a per-image calibration changes: codec/calibration.py), and an incremental stepper over a batch of
window slots. Both give the same integers at every position, and integer/mixture.py turns them into
the same frequency tables on every machine, so

* the encoder runs the full forward pass once over all windows (in chunks bounded in memory) and
  codes every symbol from its two cumulative counts (`IntegerConditionals.symbol_bounds`);
* the decoder steps through the positions, one batch of window slots at a time, decoding each
  step's values from their pixels' cumulative counts (a search over a few edges each, in a compiled
  range decoder, integer/kernels.py: decode_pixels, reading each plane's stream from where its
  `StreamDecoder` stands) and feeding them back.

Planes are coded in windows (codec/tiles.py, WindowPlan): tiles, each with the already-coded rows
above and columns to its left that it may see. Stream layout (what the decoder's schedule reads):
for each batch of slots (`WindowPlan.slot_groups`), for each step, for each channel, the symbols of
the slots whose window codes a real pixel there (context and padding are never coded), in slot
order. One stream per plane (queue order), or several planes appended to one stream (the
benchmark's images, side by side in one row, see bench/harness.py). Planes of one shape, each with
its own stream, are encoded (`code_planes`) and decoded (`decode_planes`) together: every one has
the same schedule, so the network runs on all of them at once.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Protocol

import constriction
import numpy as np
from ..progress import progress_bar

from ..errors import FormatError
from ..integer.arithmetic import PRECISION_BITS
from ..integer.mixture import IntegerConditionals, mixture_count
from ..lazy import torch
from .tiles import WindowPlan

_FAMILY = constriction.stream.model.Categorical(perfect=False)
MAX_BATCH_SLOTS = 1536  # window slots a batch steps together; part of the format: encoder and decoder must batch alike
ENCODE_CHUNK_POSITIONS = 1 << 14  # window positions per forward pass of the encoder (the CPU runs it a window at a time)
GPU_CHUNK_POSITIONS = 1 << 18  # on a GPU: large passes keep it busy
ENCODE_CHUNK_STEP_SLOTS = 1 << 16  # (plane, step, slot) triples the encoder schedules at once: bounds its memory
DECODE_CHUNK_STEPS = 64  # steps whose schedule the decoder works out at once


class CodingNetwork(Protocol):
    """What the coder needs of a network (integer/network.py: IntegerPixelSNAIL). On the CPU its
    arrays are numpy arrays; on another device (a torch device's name), its outputs are tensors
    there."""

    device: str

    def features(self, pixels: np.ndarray): ...  # (B, C, H, W) 0..255 -> (B, H, W, F)

    def outputs(self, features): ...  # the output layer: (..., F) -> (..., K)

    def stepper(self, batch: int, height: int, width: int): ...  # predict() / commit() / restart(); compiled: decode()


# ---------------------------------------------------------------------------------------------
# Where each symbol goes in the stream


def schedule(plan: WindowPlan, slots: np.ndarray, start: np.ndarray, count: np.ndarray, steps: np.ndarray):
    """What each slot of a batch does at each of `steps` (S,): arrays (S, n) of whether it is running
    (`active`), the number of the window it runs (from 0, its first), the position in that window, and
    whether it codes the pixel there (`coded`). `start`, `count`: the slots' WindowPlan.slot_schedule.
    The decoder asks one step at a time, the encoder a range of steps at once."""
    positions = plan.positions
    elapsed = steps[:, None] - start[None, :]
    active = (elapsed >= 0) & (elapsed < count * positions)
    window, position = np.divmod(np.maximum(elapsed, 0), positions)
    window = np.minimum(window, count - 1)
    r, c = np.divmod(position, plan.win_w)
    coded = active & plan.owns(slots[:, 0] + window, slots[:, 1], r, c)
    return active, window, position, coded


def batch_steps(plan: WindowPlan, start: np.ndarray, count: np.ndarray) -> int:
    """Steps that a batch of slots takes, all its windows back to back."""
    return int((start + count * plan.positions).max())


def _plan_steps(plan: WindowPlan) -> int:
    """Steps of all batches of the decoder together (for progress bars)."""
    return sum(batch_steps(plan, *plan.slot_schedule(slots)) for slots in plan.slot_groups(MAX_BATCH_SLOTS))


def coding_steps(height: int, width: int, tile: tuple[int, int], context: tuple[int, int] = (0, 0), band: int = 1) -> int:
    """Steps decode_plane takes for an (height, width) plane: the total of a progress bar."""
    return _plan_steps(WindowPlan.for_image(height, width, tile, context, band))


class CodingProgress:
    """A progress bar (steps decoded, or window positions encoded) with the running bits per subpixel."""

    def __init__(self, total: int, desc: str, enabled: bool = True, unit: str = "step"):
        self.bar = progress_bar(total=total, desc=desc, unit=unit, enabled=enabled, leave=False)
        self.steps, self.bits, self.subpixels, self.done = 0, 0.0, 0, 0

    def step(self, bits: float, subpixels: int, amount: int = 1) -> None:
        self.steps += 1
        self.done += amount
        self.bits += bits
        self.subpixels += subpixels
        self.bar.update(amount)
        if self.steps % 64 == 0 and self.subpixels:
            self.bar.set_postfix_str(f"{self.bits / self.subpixels:.4f} bits/subpixel", refresh=False)

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


def chunk_windows(net, windows: int, positions: int):
    """Slices of `windows` windows of `positions` positions each that one full forward pass takes."""
    per_chunk = max(1, (ENCODE_CHUNK_POSITIONS if net.device == "cpu" else GPU_CHUNK_POSITIONS) // positions)
    return [slice(s, s + per_chunk) for s in range(0, windows, per_chunk)]


def _numpy(array) -> np.ndarray:
    return array if isinstance(array, np.ndarray) else array.cpu().numpy()


def window_features(net, windows: np.ndarray, kept: list | None = None):
    """The network's features (what its output layer reads) of windows (n, C, H, W) -> (n, H, W, F):
    computed, except those given in `kept` (aligned with `windows`; None: compute it)."""
    if kept is None or all(k is None for k in kept):
        return net.features(windows)
    todo = [i for i, k in enumerate(kept) if k is None]
    computed = iter(_numpy(net.features(windows[todo])) if todo else ())
    shape = windows.shape[2:]
    stacked = np.stack([next(computed) if k is None else k.astype(np.float64).reshape(*shape, -1) for k in kept])
    return stacked if net.device == "cpu" else torch.from_numpy(stacked).to(net.device)


def symbol_bounds(net, windows: np.ndarray, coded: np.ndarray, progress=None, kept: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(start, count) of every coded subpixel, (P, C) each, in raster order of (window, position):
    the full forward pass over chunks of windows, then the symbols' two cumulative counts. `kept`:
    the features of some of the windows, computed before (window_features)."""
    channels = windows.shape[1]
    starts, counts = [], []
    for part in chunk_windows(net, len(windows), windows.shape[2] * windows.shape[3]):
        features = window_features(net, windows[part], None if kept is None else kept[part])
        mask = coded[part] if isinstance(features, np.ndarray) else torch.from_numpy(coded[part]).to(features.device)
        values = windows[part].transpose(0, 2, 3, 1)[coded[part]]  # (P, C)
        start, count = IntegerConditionals(net.outputs(features[mask]), channels).symbol_bounds(values)
        starts.append(start)
        counts.append(count)
        if progress is not None:
            progress.step(_bits(count), count.size, len(features))
    return np.concatenate(starts), np.concatenate(counts)


def _encode_symbols(encoder, symbols: np.ndarray, start: np.ndarray, count: np.ndarray) -> None:
    """Code symbols whose table entries are (start, count). The range coder reads a symbol's table
    only through the interval it gives the symbol: each of the 256 values takes its count + 1
    (integer/arithmetic.py), so value s takes [start + s, start + s + count + 1) out of 2**24. A
    three-entry table whose counts sum to 2**24 - 3 gives one of its entries that same interval:
    the middle one, [start + s - 1, count, the rest], or the first where the interval begins at 0,
    or the last where it ends at 2**24. Constriction reads three entries far faster than 256."""
    whole, total = float(1 << PRECISION_BITS), float((1 << PRECISION_BITS) - 3)
    below = start + symbols.astype(np.float64)  # where the symbol's interval begins (exact: below 2**24)
    count = count.astype(np.float64)
    entry = np.where(below == 0, 0, np.where(below + count + 1 == whole, 2, 1))
    rows = np.arange(len(symbols))
    table = np.zeros((len(symbols), 3))
    table[:, 0] = np.maximum(below - 1 - (entry == 2), 0)  # the entries before the symbol's: its interval's start
    table[rows, entry] = count
    table[rows, np.where(entry == 1, 2, 1)] += total - table.sum(axis=1)  # the rest (0 where the interval ends at 2**24)
    encoder.encode(entry.astype(np.int32), _FAMILY, table)


class _WindowRing:
    """The (value, start, count) of every subpixel of the windows a batch of slots is coding, in
    each of K planes: the windows of one chunk of steps and those still running from the last,
    `depth` per slot, each computed once by the full forward pass and overwritten when its slot has
    moved on. Arrays (K, slots, depth, positions, C)."""

    def __init__(self, planes: int, slots: int, depth: int, positions: int, channels: int):
        self.depth = depth
        self.held = np.full((slots, depth), -1)  # which window number each place holds (the same in every plane)
        shape = (planes, slots, depth, positions, channels)
        self.values = np.zeros(shape, np.uint8)
        self.start = np.zeros(shape, np.int32)  # counts are below 2**24
        self.count = np.zeros(shape, np.int32)

    def fill(self, net, plan: WindowPlan, canvases: np.ndarray, slots: np.ndarray, slot: np.ndarray,
             window: np.ndarray, progress=None, kept: dict | None = None) -> None:
        """Compute the windows (slot, window number) not held yet, in every plane, in one forward pass;
        those whose features are in `kept` (one plane: by window row and column) are taken from it."""
        place = window % self.depth
        missing = self.held[slot, place] != window
        slot, window, place = slot[missing], window[missing], place[missing]
        if not len(slot):
            return
        planes = len(canvases)
        rows, cols = np.tile(slots[slot, 0] + window, planes), np.tile(slots[slot, 1], planes)
        pixels, coded = plan.windows_at(canvases, rows, cols, np.repeat(np.arange(planes), len(slot)))
        taken = [kept.pop((i, j), None) for i, j in zip(rows.tolist(), cols.tolist())] if kept else None
        start, count = symbol_bounds(net, pixels, coded, progress, taken)
        flat = coded.reshape(len(coded), -1)
        for array, known in ((self.values, pixels.reshape(*pixels.shape[:2], -1).transpose(0, 2, 1)[flat]),
                             (self.start, start), (self.count, count)):
            dense = np.zeros((len(coded), flat.shape[1], array.shape[-1]), array.dtype)
            dense[flat] = known
            array[:, slot, place] = dense.reshape(planes, len(slot), *dense.shape[1:])
        self.held[slot, place] = window


class _PlaneStreams:
    """Each plane's symbols in its stream's order, gathered chunk by chunk and range-coded into its
    encoder in as few calls as memory allows: once for each of a batch of small planes, every
    PLANE_SYMBOLS for a large one."""

    PLANE_SYMBOLS = 1 << 18  # a plane's symbols coded in one call at most (its tables' temporaries: some 12 MB)

    def __init__(self, encoders: list):
        self.encoders = encoders
        self.pieces: list[tuple[np.ndarray, ...]] = []  # (K, m) values, start, count
        self.gathered = 0  # symbols of each plane in `pieces`

    def add(self, values: np.ndarray, start: np.ndarray, count: np.ndarray) -> None:
        self.pieces.append((values, start, count))
        self.gathered += values.shape[1]
        if self.gathered >= self.PLANE_SYMBOLS:
            self.flush()

    def flush(self) -> None:
        if self.pieces:
            values, start, count = (np.concatenate(arrays, axis=1) for arrays in zip(*self.pieces))
            for k, encoder in enumerate(self.encoders):
                _encode_symbols(encoder, values[k], start[k], count[k])
        self.pieces, self.gathered = [], 0


def _encode_batch(net, plan: WindowPlan, canvases: np.ndarray, slots: np.ndarray, encoders: list, progress=None,
                  kept: dict | None = None) -> None:
    """Encode one batch of window slots of K planes of one shape (canvases (K, H', W', C)), each into
    its own encoder, in the decoder's order, a chunk of steps at a time: per step, per channel, the
    symbols of the slots that code a pixel there, in slot order. Every plane has the same schedule,
    so the network runs on all of them at once and one ordering serves them all."""
    start, count = plan.slot_schedule(slots)
    planes, total, channels = len(canvases), batch_steps(plan, start, count), canvases.shape[3]
    chunk = max(1, ENCODE_CHUNK_STEP_SLOTS // (planes * len(slots)))  # steps per chunk
    ring = _WindowRing(planes, len(slots), (chunk - 1) // plan.positions + 2, plan.positions, channels)
    streams = _PlaneStreams(encoders)
    for first in range(0, total, chunk):
        active, window, position, coded = schedule(plan, slots, start, count, np.arange(first, min(first + chunk, total)))
        running = np.nonzero(active.any(axis=0))[0]
        # every window a running slot has in this chunk: from its first to its last step here
        lowest = np.where(active, window, window.max() + 1).min(axis=0)[running]
        highest = np.where(active, window, -1).max(axis=0)[running]
        spans = highest - lowest + 1
        slot = np.repeat(running, spans)
        number = np.repeat(lowest, spans) + np.arange(spans.sum()) - np.repeat(np.cumsum(spans) - spans, spans)
        ring.fill(net, plan, canvases, slots, slot, number, progress, kept)
        step, slot = np.nonzero(coded)  # by step, then slot: the stream's order of pixels
        where = (slice(None), slot, window[step, slot] % ring.depth, position[step, slot])
        # within a step the channels come one after the other: order by (step, channel, slot)
        order = np.argsort(np.repeat(step, channels) * channels + np.tile(np.arange(channels), len(step)), kind="stable")
        streams.add(*(array[where].reshape(planes, -1)[:, order] for array in (ring.values, ring.start, ring.count)))
    streams.flush()


def _planes_per_batch(groups: list[np.ndarray]) -> int:
    """Planes of one shape that run through the network together (code_planes, decode_planes): as
    many as fill MAX_BATCH_SLOTS slots with their largest batch of slots (WindowPlan.slot_groups)."""
    return max(1, MAX_BATCH_SLOTS // max(len(slots) for slots in groups))


def code_plane(net, plane: np.ndarray, tile: tuple[int, int], context: tuple[int, int] = (0, 0), band: int = 1,
               progress=False, encoder=None, kept: dict | None = None):
    """Encode an (H, W, C) plane in windows (WindowPlan); returns (words, plan). Memory stays bounded
    whatever the plane's size: windows are computed a chunk of steps at a time.

    `encoder`: an existing queue RangeEncoder to append to, so that several planes make one stream;
    the words returned are then the whole stream so far. Decode it with one StreamDecoder passed to
    decode_plane for the same planes in the same order.

    `kept`: the features (H * W, F) of some windows, by (window row, window column), that the
    calibration computed (codec/calibration.py): not computed again; taken out of the dict as used.
    """
    words, plan = code_planes(net, [plane], tile, context, band, progress, [encoder] if encoder is not None else None, kept)
    return words[0], plan


def code_planes(net, planes: list[np.ndarray], tile: tuple[int, int], context: tuple[int, int] = (0, 0),
                band: int = 1, progress=False, encoders: list | None = None, kept: dict | None = None):
    """Encode planes of one shape, each into its own stream (code_plane's, for each), the network's
    work for all of them at once: as many planes a batch as decode_planes steps together (many small
    images encode many times faster than one by one, on a GPU most of all). Returns (the words of
    each, plan). `encoders`, `kept` (one plane only): see code_plane."""
    if kept and len(planes) != 1:
        raise ValueError("kept features are one plane's")
    plan = WindowPlan.for_image(planes[0].shape[0], planes[0].shape[1], tile, context, band)
    encoders = encoders or [constriction.stream.queue.RangeEncoder() for _ in planes]
    groups = plan.slot_groups(MAX_BATCH_SLOTS)
    per_batch = _planes_per_batch(groups)
    with _progress(progress, plan.rows * plan.cols * len(planes), "encode", "window") as bar:
        for first in range(0, len(planes), per_batch):
            canvases = np.stack([plan.canvas(plane) for plane in planes[first : first + per_batch]])
            for slots in groups:
                _encode_batch(net, plan, canvases, slots, encoders[first : first + per_batch], bar, kept)
    return [encoder.get_compressed() for encoder in encoders], plan


# ---------------------------------------------------------------------------------------------
# Decoding: step by step


class StreamDecoder:
    """A reader of one range-coder stream as the encoder's constriction.stream.queue.RangeEncoder
    wrote it (u32 words), that goes on where its last symbol ended, so that one stream may hold
    several planes (bench/harness.py). Its symbols are decoded by the compiled step
    (integer/kernels.py: decode_pixels), which finds each value by searching its pixel's cumulative
    counts at a few edges: constriction's own decoder needs all 256 of every pixel's table, which
    took longer to build than the network's step. It follows constriction's decoder exactly (same
    state, same words read, same error), and tests decode constriction's streams with it."""

    def __init__(self, words):
        self.words = np.ascontiguousarray(words, dtype=np.uint32).ravel()
        first = [int(word) for word in self.words[:2]] + [0, 0]  # missing words read as zeros
        #: lower end and width of the range (width 2**64 - 1 to start), the point the words spell, next word
        self.state = np.array([0, (1 << 64) - 1, (first[0] << 32) | first[1], min(2, len(self.words))], np.uint64)
        self.failed = False


class _Streams:
    """The StreamDecoders of planes decoded together, as the compiled decoding reads them: their words
    one after the other, each one's state, and whether it has failed. `close` hands the states back."""

    def __init__(self, decoders: list[StreamDecoder]):
        self.decoders = decoders
        offsets = np.cumsum([0] + [len(d.words) for d in decoders])
        self.offsets, self.ends = offsets[:-1].astype(np.uint64), offsets[1:].astype(np.int64)
        self.words = np.concatenate([d.words for d in decoders])
        self.coders = np.stack([d.state for d in decoders])
        self.coders[:, 3] += self.offsets
        self.failed = np.array([d.failed for d in decoders], np.bool_)

    def decode(self, params: np.ndarray, known: np.ndarray) -> float:
        """One step's pixels into known (N, C), from their mixture parameters (N, K), rows plane by
        plane; the bits they took."""
        from ..integer import kernels  # numba: imported where first needed

        channels = known.shape[1]
        return kernels.decode_pixels(params, known, mixture_count(params.shape[1], channels), channels, self.coders,
                                     self.words, self.ends, self.failed)

    def arrays(self) -> tuple[np.ndarray, ...]:
        """What the compiled decoding reads and changes: the coders' states, the words, each one's end, failed."""
        return self.coders, self.words, self.ends, self.failed

    def close(self) -> None:
        for k, decoder in enumerate(self.decoders):
            decoder.state = self.coders[k].copy()
            decoder.state[3] -= self.offsets[k]
            decoder.failed = bool(self.failed[k])


def _decode_batch(net, plan: WindowPlan, canvases: np.ndarray, slots: np.ndarray, streams: _Streams,
                  progress: CodingProgress | None = None) -> None:
    """Run one batch of window slots (see WindowPlan) of K planes of one shape, step by step, decoding
    the pixels each window owns; plane k's symbols come from stream k.

    `canvases` (K, H', W', C) start empty and fill in as pixels are decoded. Pixels a window does not
    code (its context, and the padding) come from its canvas, where they are already known: context
    from windows that ran earlier, padding from the window's own earlier pixels. The stepper runs the
    K planes' slots as one batch (plane by plane, so each plane's coded slots are one run of rows, in
    its slot order); slots never mix, so a plane whose stream fails stops reading and cannot change
    another plane's pixels. Stops early once every plane has failed.
    """
    start, count = plan.slot_schedule(slots)
    planes, n, positions, channels = len(canvases), len(slots), plan.positions, canvases.shape[3]
    plane = np.repeat(np.arange(planes), n)
    first_rows, columns = np.tile(slots[:, 0], planes), np.tile(slots[:, 1], planes)
    stepper = net.stepper(planes * n, plan.win_h, plan.win_w)
    total = batch_steps(plan, start, count)
    for first in range(0, total, DECODE_CHUNK_STEPS):  # the schedule of a chunk of steps at once
        steps = np.arange(first, min(first + DECODE_CHUNK_STEPS, total))
        active, window, position, coded = (np.tile(a, (1, planes)) for a in schedule(plan, slots, start, count, steps))
        begins = active & (position == 0) & (window > 0)
        advance = active & (position < positions - 1)
        r, c = np.divmod(position, plan.win_w)
        y, x = plan.place(first_rows + window, columns, r, c)
        y, x = np.minimum(y, plan.height - 1), np.minimum(x, plan.width - 1)
        if getattr(stepper, "compiled", False):  # the steps below in one compiled call (IntegerStepper.decode)
            bits = stepper.decode((active, begins, advance, coded, y, x), canvases, streams.arrays())
            if streams.failed.all():  # it stopped at the step where the last stream failed
                return
            if progress is not None:
                for s in range(len(steps)):
                    progress.step(float(bits[s].sum()), int(coded[s].sum()) * channels)
            continue
        for s, step in enumerate(steps):
            if streams.failed.all():
                return
            if step and begins[s].any():
                stepper.restart(begins[s])
            values = canvases[plane, y[s], x[s]]  # what is known (K * n, C)
            values[~active[s]] = 0  # idle slots (not started, or done) see the same values in every decoder
            params = stepper.predict(active[s])  # the running slots, coding or not (their context feeds later steps)
            rows, bits = np.flatnonzero(coded[s]), 0.0
            if len(rows):
                known = values[rows].astype(np.int64)
                bits = streams.decode(_numpy(params)[rows], known)  # all rows copied: one copy from a device
                values[rows] = known
                canvases[plane[rows], y[s, rows], x[s, rows]] = values[rows]
            stepper.commit(values, advance[s])
            if progress is not None:
                progress.step(bits, len(rows) * channels)


def _kernel_threads(net):
    """On the CPU the decoder's steps run in compiled kernels, which take the threads (see
    integer/runtime.py: take_threads); elsewhere torch keeps them."""
    if net.device != "cpu":
        return nullcontext()
    from ..integer import runtime

    return runtime.take_threads()


def decode_planes(net, streams: list, height: int, width: int, channels: int, tile: tuple[int, int],
                  context: tuple[int, int] = (0, 0), band: int = 1, progress=False) -> list:
    """Decode planes of one shape and coding, each from its own stream (its words, or a StreamDecoder
    to go on reading from), together: the steps of one plane decode many. Returns, for each, its
    (H, W, C) plane or the FormatError its stream gave."""
    plan = WindowPlan.for_image(height, width, tile, context, band)
    if any(hasattr(stream, "decode") for stream in streams):
        raise TypeError("a stream to go on reading from is a codec.coder.StreamDecoder")
    decoders = [stream if isinstance(stream, StreamDecoder) else StreamDecoder(stream) for stream in streams]
    errors: dict[int, FormatError] = {}
    canvases = np.stack([plan.canvas(np.zeros((height, width, channels), np.uint8))] * len(streams))
    groups = plan.slot_groups(MAX_BATCH_SLOTS)
    per_batch = _planes_per_batch(groups)
    with _progress(progress, _plan_steps(plan) * -(-len(streams) // per_batch), "decode", "step") as bar, \
            _kernel_threads(net):
        for first in range(0, len(streams), per_batch):
            batch = _Streams(decoders[first : first + per_batch])
            for slots in groups:
                _decode_batch(net, plan, canvases[first : first + per_batch], slots, batch, bar)
            batch.close()
            errors.update({first + int(k): FormatError("coded stream is corrupt or truncated")
                           for k in np.flatnonzero(batch.failed)})
    return [errors.get(k) or np.ascontiguousarray(canvas[:height, :width]) for k, canvas in enumerate(canvases)]


def decode_plane(net, words: np.ndarray | None, height: int, width: int, channels: int,
                 tile: tuple[int, int], context: tuple[int, int] = (0, 0), band: int = 1, progress=False,
                 decoder=None) -> np.ndarray:
    """Inverse of code_plane: the (H, W, C) plane. `decoder`: a StreamDecoder to go on reading from
    (`words` is then ignored and may be None)."""
    result = decode_planes(net, [decoder if decoder is not None else words], height, width, channels, tile, context,
                           band, progress)[0]
    if isinstance(result, FormatError):
        raise result
    return result
