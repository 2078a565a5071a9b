"""What tiling costs: a model's bits/subpixel on the same pixels, coded in tiles of several sizes.

The codec codes large images as a batch of equal tiles (edges padded by repetition, never coded).
A tile's first rows and columns see no context, so small tiles cost bits; large tiles cost time
(attention over T*T positions per tile). This measures the model's NLL of exactly the pixels the
codec codes, per tile size, on held-out images, with one full forward pass per batch of tiles.

A layout written `T+C` is `snailcompress encode --tile T --context C`: each T x T tile is run in a
window that also holds the C already-coded rows above it and C columns to its left (see
codec/tiles.py, WindowPlan), and every pixel is counted once, in the window that codes it
(snailcompress.evaluate.tiled_nll_bits, which the other benchmarks' NLL columns use too).

    python benchmarks/tiling.py --model snail-rgb --tiles 32,32+2,48+2,64+2,64+4 --images 6 --out results/tiling_with_context.md
    python benchmarks/tiling.py --model snail-rgb --tiles 16,24,32,48,64 --out results/experiments/tiling.md
    python benchmarks/tiling.py --model snail-rgb --tiles 32,32+2,32+4 --images 6
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from snailcompress.bench.heldout import heldout_files
from snailcompress.bench.scripts import publish, run, run_facts
from snailcompress.codec.images import read_image
from snailcompress.evaluate import tiled_nll_bits
from snailcompress.zoo import load_model


def parse_layout(spec: str) -> tuple[int, int]:
    """'32' -> (32, 0); '32+4' -> tile 32 with 4 pixels of context above and to the left."""
    tile, _, context = spec.partition("+")
    return int(tile), int(context or 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="snail-rgb")
    parser.add_argument("--tiles", default="16,24,32,48,64", help="tile sizes; T+C adds C pixels of context (--context)")
    parser.add_argument("--images", type=int, default=None, help="only the first N held-out images")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    loaded = load_model(args.model)
    tiles = args.tiles.split(",")
    files = heldout_files()[: args.images]
    rows, totals = [], {t: 0.0 for t in tiles}
    subpixels = 0
    seconds = {t: 0.0 for t in tiles}
    for path in files:
        plane = read_image(path).planes["RGB"]
        subpixels += plane.size
        row = [path.stem]
        for t in tiles:
            start = time.perf_counter()
            bits = tiled_nll_bits(loaded.model, plane, *parse_layout(t))
            seconds[t] += time.perf_counter() - start
            totals[t] += bits
            row.append(f"{bits / plane.size:.4f}")
        rows.append(row)
        print(" ".join(row), flush=True)
    lines = [
        f"# Tiling cost: {loaded.name} NLL bits/subpixel by tile size",
        "",
        f"Command: `python {' '.join(sys.argv)}`  ",
        f"{run_facts()}; model {loaded.name} (id {loaded.model_id}); {len(files)} held-out images at full resolution; "
        "the NLL of exactly the pixels the codec codes (padding excluded). Forward-pass seconds are for "
        "the full-forward measurement here, not the codec.",
        "",
        "| image | " + " | ".join(f"tile {t}" for t in tiles) + " |",
        "|---|" + "---|" * len(tiles),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines.append("| **all** | " + " | ".join(f"**{totals[t] / subpixels:.4f}**" for t in tiles) + " |")
    lines.append("| forward s | " + " | ".join(f"{seconds[t]:.1f}" for t in tiles) + " |")
    publish(lines, args.out)


if __name__ == "__main__":
    run(main)
