"""Would coding an image turned or flipped make it smaller? The NLL of held-out images under the 8
rotations and flips, as the codec codes them (tile 32, `--context`), against the upright image.

    python benchmarks/orientation.py --images 2 --threads 2 --out results/experiments/orientation.md

A codec could code each image in its best orientation for 3 bits; this measures what that would gain.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from snailcompress.api import DEFAULT_CONTEXT, DEFAULT_TILE
from snailcompress.bench.heldout import heldout_files
from snailcompress.bench.scripts import publish, run, run_facts
from snailcompress.evaluate import tiled_nll_bits
from snailcompress.zoo import load_model

ORIENTATIONS = {
    "upright": lambda a: a,
    "flip left-right": lambda a: a[:, ::-1],
    "flip top-bottom": lambda a: a[::-1],
    "rotate 180": lambda a: a[::-1, ::-1],
    "transpose": lambda a: a.transpose(1, 0, 2),
    "rotate 90": lambda a: np.rot90(a, 1),
    "rotate 270": lambda a: np.rot90(a, 3),
    "anti-transpose": lambda a: a[::-1, ::-1].transpose(1, 0, 2),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="snail-rgb")
    parser.add_argument("--images", type=int, default=None, help="only the first N held-out images")
    parser.add_argument("--context", type=int, default=DEFAULT_CONTEXT)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model, channels=3)
    model = loaded.model.eval()
    rows = []
    with torch.no_grad():
        for path in heldout_files()[: args.images]:
            plane = np.asarray(Image.open(path).convert("RGB"))
            bits = {name: tiled_nll_bits(model, np.ascontiguousarray(turn(plane)), DEFAULT_TILE, args.context) / plane.size
                    for name, turn in ORIENTATIONS.items()}
            rows.append((path.stem, bits))
    lines = [
        f"# Orientation: {loaded.name} NLL of held-out images turned and flipped",
        "",
        f"Command: `python benchmarks/orientation.py {' '.join(sys.argv[1:])}`  ",
        f"{run_facts()}; model {loaded.name} (id {loaded.model_id}), tile {DEFAULT_TILE}, context {args.context}. "
        "Bits/subpixel of the pixels the codec codes; in brackets the change against the upright image.",
        "",
        "| image | " + " | ".join(ORIENTATIONS) + " | best |",
        "|---" * (len(ORIENTATIONS) + 2) + "|",
    ]
    for stem, bits in rows:
        up = bits["upright"]
        cells = [f"{b:.4f}" + ("" if name == "upright" else f" ({100 * (b / up - 1):+.2f}%)") for name, b in bits.items()]
        lines.append(f"| {stem} | " + " | ".join(cells) + f" | {min(bits, key=bits.get)} |")
    publish(lines, args.out)


if __name__ == "__main__":
    run(main)
