"""What each of the decoder's compiled CPU kernels (snailcompress/integer/kernels.py) buys: the
decoder's steps over real windows, decoding a real stream, with torch alone, with the network's step
compiled, with the step and the symbols' search compiled, a call each a step, and with a chunk of
steps in one compiled call (the decoder), each checked to decode every value.

The steps are those of decoding: the stepper predicts the position of every slot whose window is
running (the compiled step steps only those; torch's steps every slot), the running slots' three
channels are decoded one after the other (each given the channels before it), and the decoded
values are committed. Torch's symbols come from each step's full frequency tables read by
constriction's range decoder; the compiled decoder searches each pixel's cumulative counts at a
few edges in the same stream (codec/coder.py: StreamDecoder). The slots are `--slots` windows of
kodim23 (34x34: the codec's default 32x32 tiles with two rows and columns of context), scheduled as
the decoder schedules that 768x512 photo's 96 slots (24 columns, each a row of positions behind its
left neighbour); the stream is their values, coded as the encoder codes them.

    python benchmarks/decoder_kernels.py --threads 1 --out results/decoder_kernels.md
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext
from pathlib import Path

import constriction
import numpy as np
import torch
from PIL import Image

from snailcompress import api
from snailcompress.bench.heldout import SHARED
from snailcompress.bench.scripts import publish, run, run_facts
from snailcompress.codec import coder
from snailcompress.codec.tiles import WindowPlan, default_band
from snailcompress.integer import runtime
from snailcompress.integer.mixture import IntegerConditionals
from snailcompress.integer.network import IntegerStepper
from snailcompress.threads import set_threads
from snailcompress.zoo import load_model

VARIANTS = {  # name: (compiled step, compiled search, a chunk of steps a call)
    "torch only (full tables, constriction's decoder)": (False, False, False),
    "compiled step (full tables, constriction's decoder)": (True, False, False),
    "compiled step and search, a call each a step": (True, True, False),
    f"a chunk of {coder.DECODE_CHUNK_STEPS} steps a compiled call (the decoder's default)": (True, True, True),
}


class Schedule:
    """The decoder's schedule of `windows` (B, C, H, W): slot s starts (s mod columns) * W steps after
    the first, one row of positions behind its left neighbour."""

    def __init__(self, windows: np.ndarray, columns: int):
        self.windows = windows
        batch, self.channels, self.height, self.width = windows.shape
        self.positions = self.height * self.width
        self.start = (np.arange(batch) % columns) * self.width
        self.steps = self.positions + int(self.start.max())

    def at(self, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each slot's values (B, C) at its position, whether it runs, and whether it moves on."""
        position = np.clip(step - self.start, 0, self.positions - 1)
        values = self.windows[np.arange(len(position)), :, position // self.width, position % self.width].astype(np.int64)
        running = (step >= self.start) & (step - self.start < self.positions)
        return values, running, running & (step - self.start < self.positions - 1)

    def arrays(self) -> tuple[np.ndarray, ...]:
        """The whole schedule as IntegerStepper.decode reads it: (active, begins, advance, coded, rows,
        columns) (S, B), on a canvas of the windows one above the other (B * H, W)."""
        step = np.arange(self.steps)[:, None] - self.start
        position = np.clip(step, 0, self.positions - 1)
        active = (step >= 0) & (step < self.positions)
        rows = np.arange(len(self.start)) * self.height + position // self.width
        return active, np.zeros_like(active), active & (step < self.positions - 1), active, rows, position % self.width


def code(net, schedule: Schedule) -> np.ndarray:
    """The stream of the running slots' values, step by step, channel by channel (the encoder's order)."""
    stepper = IntegerStepper(net, len(schedule.windows), schedule.height, schedule.width)
    encoder = constriction.stream.queue.RangeEncoder()
    with runtime.take_threads():
        for step in range(schedule.steps):
            values, running, advance = schedule.at(step)
            params = stepper.predict(running)[running]
            start, count = IntegerConditionals(params, schedule.channels).symbol_bounds(values[running])
            for c in range(schedule.channels):
                coder._encode_symbols(encoder, values[running, c], start[:, c], count[:, c])
            stepper.commit(values, advance)
    return encoder.get_compressed()


def decode(net, schedule: Schedule, words: np.ndarray, compiled: bool, search: bool, loop: bool) -> tuple[float, bool]:
    """Seconds to decode `words` step by step, and whether every value came back."""
    stepper = IntegerStepper(net, len(schedule.windows), schedule.height, schedule.width, compiled=compiled)
    if loop:
        return decode_in_one_call(stepper, schedule, words)
    streams = coder._Streams([coder.StreamDecoder(words)]) if search else None
    reader = None if search else constriction.stream.queue.RangeDecoder(words)
    exact = True
    begin = time.perf_counter()
    with runtime.take_threads() if compiled or search else nullcontext():  # as the decoder does
        for step in range(schedule.steps):
            values, running, advance = schedule.at(step)
            params = np.asarray(stepper.predict(running))[running]  # a tensor from the torch stepper
            known = np.zeros((len(params), schedule.channels), np.int64)
            if search:
                streams.decode(params, known)
            else:
                conditionals = IntegerConditionals(torch.from_numpy(params), schedule.channels, compiled=False)
                for c in range(schedule.channels):
                    tables = conditionals.tables(c, known[:, :c]).numpy().astype(np.float64)
                    known[:, c] = reader.decode(coder._FAMILY, tables)
            exact &= bool(np.array_equal(known, values[running]))
            values[running] = known
            stepper.commit(values, advance)
    return time.perf_counter() - begin, exact


def decode_in_one_call(stepper: IntegerStepper, schedule: Schedule, words: np.ndarray) -> tuple[float, bool]:
    """decode(), a chunk of steps a compiled call (IntegerStepper.decode, chunks as the decoder's), the
    values written to a canvas."""
    batch, channels, height, width = schedule.windows.shape
    canvas = np.zeros((1, batch * height, width, channels), np.uint8)
    streams = coder._Streams([coder.StreamDecoder(words)])
    arrays, chunk = schedule.arrays(), coder.DECODE_CHUNK_STEPS
    begin = time.perf_counter()
    with runtime.take_threads():
        for first in range(0, schedule.steps, chunk):
            stepper.decode(tuple(a[first : first + chunk] for a in arrays), canvas, streams.arrays())
    seconds = time.perf_counter() - begin
    return seconds, bool(np.array_equal(canvas[0].reshape(batch, height, width, channels),
                                        schedule.windows.transpose(0, 2, 3, 1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--slots", type=int, default=96)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    set_threads(args.threads)
    image = SHARED / "kodak" / "kodim23.png"
    if not image.is_file():
        raise OSError(f"{image}: not found (the shared Kodak images)")
    plane = np.asarray(Image.open(image).convert("RGB"))
    tile, context = (api.DEFAULT_TILE,) * 2, (api.DEFAULT_CONTEXT,) * 2
    plan = WindowPlan.for_image(*plane.shape[:2], tile, context, default_band(*plane.shape[:2], tile, context))
    windows = plan.windows(plane)[0][: args.slots]
    loaded = load_model("snail-rgb")
    net = api.integer_network(loaded)
    warm = Schedule(windows[:2, :, :4, :4], plan.cols)
    for loop in (False, True):
        decode(net, warm, code(net, warm), True, True, loop)  # load the compiled kernels
    schedule = Schedule(windows, plan.cols)
    words = code(net, schedule)
    rows = []
    for name, (compiled, search, loop) in VARIANTS.items():
        seconds, exact = decode(net, schedule, words, compiled, search, loop)
        if not exact:
            raise SystemExit(f"decoder_kernels.py: {name} did not decode the values coded")
        rows.append((name, seconds))
        print(f"{name}: {seconds:.1f} s", flush=True)
    base, steps = rows[0][1], schedule.steps
    lines = [
        "# What the decoder's compiled CPU kernels buy",
        "",
        f"`python benchmarks/decoder_kernels.py --threads {args.threads} --slots {args.slots}"
        f"{' --out ' + str(args.out) if args.out else ''}`; {run_facts()}.",
        "",
        f"model snail-rgb (id {loaded.model_id}) as the integer network, no calibration; {len(windows)} windows of kodim23 "
        f"({plan.win_h}x{plan.win_w}) decoded together through all {plan.positions} positions, as the decoder schedules "
        f"them ({plan.cols} columns, each {plan.win_w} steps behind its left neighbour: {steps} steps), from a stream "
        f"of {4 * len(words):,} bytes of their values: predict, the running slots' three channels decoded one after "
        "the other, commit (the compiled step steps only the running slots, torch's every slot). Every variant "
        "decoded every value. Torch runs on one thread inside the decoder's loop (take_threads), so the variants "
        "compare fairly at --threads 1.",
        "",
        "| variant | seconds | ms a step | speed-up |",
        "|---|---|---|---|",
        *[f"| {name} | {seconds:.1f} | {1000 * seconds / steps:.2f} | {base / seconds:.2f}x |" for name, seconds in rows],
        "",
        "The compiled step runs the whole network at one position (a commit, then a predict) in one call, its",
        "matrix products through BLAS and everything between them in compiled loops; its attention reads float32",
        "keys and values (exact for these integers) only up to each slot's position, where torch's step reads",
        "every position, the later ones masked (the GPU's path: nothing in it may depend on a value, so that a",
        "CUDA graph can replay it). Constriction's range",
        "decoder needs each pixel's full table of 256 counts; the compiled decoder (codec/coder.py:",
        "StreamDecoder) reads the same stream and finds each value by searching the pixel's cumulative counts",
        "at a few edges, from a guess where its heaviest component puts the stream's quantile. The decoder runs",
        "a chunk of steps, network and search, in one compiled call (IntegerStepper.decode), whose threads, when",
        "there are more than one, meet inside it between a step's parts rather than be handed each part.",
        "All give torch's integers exactly (tests/test_kernels.py).",
    ]
    publish(lines, args.out)


if __name__ == "__main__":
    run(main)
