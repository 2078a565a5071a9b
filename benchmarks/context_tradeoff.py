"""What context from neighbouring tiles buys, and what it costs: bits, encode and decode time per layout.

`snailcompress encode --context C` runs every 32x32 tile in a window that also holds the C
already-coded rows above it and columns to its left (codec/tiles.py, WindowPlan). Windows then wait
for their neighbours: a row of windows for the row above it (within a band of rows), a window for
the row of its left neighbour. This codes one image with each layout, reports the real coded size,
the encode time (one full pass over the windows: context adds positions, bands change nothing) and
the decode time (steps: a band's windows run one after another in one slot, so longer bands mean
fewer windows side by side and more steps), and checks the decoded pixels. `C/bN` forces bands of N
rows of windows instead of tiles.default_band's choice. The model is converted to the integer
network the codec runs (api.integer_network) once, before the timings; no calibration.

    python benchmarks/context_tradeoff.py --threads 2 --layouts 0,2,4,8,2/b2,2/b8,2/b16 --out results/context_tradeoff.md
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from snailcompress.api import DEFAULT_TILE, integer_network
from snailcompress.bench.heldout import SHARED
from snailcompress.bench.scripts import publish, run, run_facts
from snailcompress.codec.coder import code_plane, decode_plane
from snailcompress.codec.images import read_image
from snailcompress.codec.tiles import default_band
from snailcompress.zoo import load_model


def parse_layout(spec: str, height: int, width: int, tile: int) -> tuple[int, int]:
    """'4' -> (4, the band the codec picks, tiles.default_band); '4/b8' -> (4, 8)."""
    context, _, band = spec.partition("/b")
    context = int(context)
    return context, int(band) if band else default_band(height, width, (tile, tile), (context, context))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="snail-rgb")
    parser.add_argument("--image", type=Path, default=SHARED / "kodak" / "kodim23.png", help="held out from training")
    parser.add_argument("--layouts", default="0,2,4,8,2/b2,2/b8,2/b16")
    parser.add_argument("--tile", type=int, default=DEFAULT_TILE)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    net = integer_network(loaded.model)
    plane = read_image(args.image).planes["RGB"]
    height, width = plane.shape[:2]
    rows, baseline = [], None
    for spec in args.layouts.split(","):
        context, band = parse_layout(spec, height, width, args.tile)
        start = time.perf_counter()
        words, plan = code_plane(net, plane, (args.tile, args.tile), (context, context), band)
        encode = time.perf_counter() - start
        start = time.perf_counter()
        decoded = decode_plane(net, words, height, width, plane.shape[2], (args.tile, args.tile), (context, context), band)
        decode = time.perf_counter() - start
        if not (decoded == plane).all():
            raise AssertionError(f"layout {spec}: decoded pixels differ")
        bpsp = 32 * len(words) / plane.size
        baseline = baseline or (bpsp, encode, decode)
        rows.append(
            f"| {context} | {plan.band if plan.above else '-'} | {plan.rows}x{plan.cols} | {bpsp:.4f} | "
            f"{100 * (bpsp / baseline[0] - 1):+.2f}% | {encode:.1f} | {encode / baseline[1]:.2f}x | {decode:.1f} | "
            f"{decode / baseline[2]:.2f}x |"
        )
        print(rows[-1], flush=True)
    lines = [
        f"# Context from neighbouring tiles: {args.image.name} ({width}x{height}), {loaded.name}",
        "",
        f"Command: `python {' '.join(sys.argv)}`  ",
        f"{run_facts()}; model {loaded.name} (id {loaded.model_id}), tile {args.tile}. Bits: the coded "
        "stream (no container header); seconds: coding the plane in-process (no start-up, no calibration).",
        "",
        "| context | band (rows of windows) | windows | bits/subpixel | vs no context | encode s | vs no context | "
        "decode s | vs no context |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    publish(lines, args.out)


if __name__ == "__main__":
    run(main)
