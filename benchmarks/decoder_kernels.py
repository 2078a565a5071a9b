"""What each of the decoder's compiled CPU kernels (snailcompress/integer/kernels.py) buys: the
decoder's steps over real windows, with torch alone, with the network's step compiled, with the
tables compiled, and with both, each checked to give the same tables.

The steps are those of decoding: the stepper predicts the position of every slot whose window is
running (the compiled step steps only those; torch's steps every slot), the running slots' three
channels' full frequency tables are built one after the other (each given the channels before it),
and the true values are committed. The slots are `--slots` windows of kodim23 (34x34: the codec's default
32x32 tiles with two rows and columns of context), scheduled as the decoder schedules that 768x512
photo's 96 slots (24 columns, each a row of positions behind its left neighbour). Times exclude the
range coder (the same in every variant).

    python benchmarks/decoder_kernels.py --threads 1 --out results/decoder_kernels.md
"""

from __future__ import annotations

import argparse
import hashlib
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from snailcompress import api
from snailcompress.bench.heldout import SHARED
from snailcompress.bench.scripts import publish, run, run_facts
from snailcompress.codec.tiles import WindowPlan, default_band
from snailcompress.integer import kernels
from snailcompress.integer.mixture import IntegerConditionals
from snailcompress.integer.network import IntegerStepper
from snailcompress.threads import set_threads
from snailcompress.zoo import load_model

VARIANTS = {  # name: (compiled step, compiled tables)
    "torch only": (False, False),
    "compiled step": (True, False),
    "compiled tables": (False, True),
    "both (the decoder's default)": (True, True),
}


def step_through(net, windows: torch.Tensor, columns: int, compiled: bool, tables: bool) -> tuple[float, int, str]:
    """Seconds and steps to step `windows` (B, C, H, W) through every position, as the decoder
    schedules them (slot s starts (s mod columns) * W steps after the first, one row of positions
    behind its left neighbour), and a digest of every table."""
    batch, channels, height, width = windows.shape
    positions = height * width
    start = (torch.arange(batch) % columns) * width
    steps = positions + int(start.max())
    stepper = IntegerStepper(net, batch, height, width, compiled=compiled)
    digest = hashlib.sha256()
    begin = time.perf_counter()
    with kernels.take_threads() if compiled or tables else nullcontext():  # as the decoder does
        _steps(stepper, windows, start, steps, tables, digest)
    return time.perf_counter() - begin, steps, digest.hexdigest()


def _steps(stepper, windows, start, steps, tables, digest) -> None:
    batch, channels, height, width = windows.shape
    positions = height * width
    for step in range(steps):
        position = (step - start).clamp(0, positions - 1)
        values = windows[torch.arange(batch), :, position // width, position % width].long().numpy()
        running = ((step >= start) & (step - start < positions)).numpy()
        params = np.asarray(stepper.predict(running))[running]  # a tensor from the torch stepper
        conditionals = IntegerConditionals(params, channels, compiled=tables)
        for c in range(channels):
            digest.update(np.asarray(conditionals.tables(c, values[running, :c])).tobytes())
        stepper.commit(values, running & (step - start < positions - 1).numpy())


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
    windows = torch.from_numpy(plan.windows(plane)[0][: args.slots])
    loaded = load_model("snail-rgb")
    net = api.integer_network(loaded)
    step_through(net, windows[:2, :, :4, :4], plan.cols, True, True)  # load the compiled kernels
    rows, reference = [], None
    for name, (compiled, tables) in VARIANTS.items():
        seconds, steps, digest = step_through(net, windows, plan.cols, compiled, tables)
        reference = reference or digest
        if digest != reference:
            raise SystemExit(f"decoder_kernels.py: {name} gave other tables than torch alone")
        rows.append((name, seconds))
        print(f"{name}: {seconds:.1f} s", flush=True)
    base = rows[0][1]
    lines = [
        "# What the decoder's compiled CPU kernels buy",
        "",
        f"`python benchmarks/decoder_kernels.py --threads {args.threads} --slots {args.slots}"
        f"{' --out ' + str(args.out) if args.out else ''}`; {run_facts()}.",
        "",
        f"snail-rgb (model id {loaded.model_id}; integer network, no calibration), {len(windows)} windows of kodim23 "
        f"({plan.win_h}x{plan.win_w}) stepped together through all {plan.positions} positions, as the decoder schedules "
        f"them ({plan.cols} columns, each {plan.win_w} steps behind its left neighbour: {steps} steps): predict, the "
        "running slots' three channels' full tables, commit (the range coder not included; the compiled step steps "
        "only the running slots, torch's every slot). "
        "Every variant gave the same tables (one SHA-256 over all of them).",
        "",
        "| variant | seconds | ms a step | speed-up |",
        "|---|---|---|---|",
        *[f"| {name} | {seconds:.1f} | {1000 * seconds / steps:.2f} | {base / seconds:.2f}x |" for name, seconds in rows],
        "",
        "The compiled step runs the whole network at one position (a commit, then a predict) in one call, its",
        "matrix products through BLAS and everything between them in compiled loops; its attention reads float32",
        "keys and values (exact for these integers) only up to each slot's position, the next slot's already",
        "loading into the cache. The compiled tables go from",
        "the network's outputs to the frequency tables in one call, skipping components of zero weight and each",
        "component's saturated edges. Both give torch's integers exactly (tests/test_kernels.py).",
    ]
    publish(lines, args.out)


if __name__ == "__main__":
    run(main)
