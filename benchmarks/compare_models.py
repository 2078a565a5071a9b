"""Candidate default models side by side: held-out NLL bits/subpixel, as the codec would code.

The 12 held-out images (snailcompress.bench.heldout.HOLDOUT) at full size, in RGB or converted to
grayscale with PIL's convert("L") (`--gray`), cut into tiles of 32 with `--context` rows and columns
of context (snailcompress.evaluate.tiled_nll_bits: exactly the pixels the codec codes, each once).
One row per image, one column per model, the change of each model against the first. Used to
decide whether a new run is worth shipping (results/experiments/default_models/).

    python benchmarks/compare_models.py snail-rgb runs/cpu/rgb-s-cool2k --context 2
    python benchmarks/compare_models.py --gray --context 0 snail-gray runs/cpu/gray-m-cool1
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="shipped names, model files or run directories; the first is the baseline")
    parser.add_argument("--gray", action="store_true", help="the images in grayscale (for grayscale models)")
    parser.add_argument("--context", type=int, default=DEFAULT_CONTEXT)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = {name: load_model(name) for name in args.models}
    totals = {name: 0.0 for name in models}
    rows, subpixels = [], 0
    for path in heldout_files():
        plane = np.asarray(Image.open(path).convert("L" if args.gray else "RGB"))
        plane = plane[..., None] if args.gray else plane
        subpixels += plane.size
        bits = {name: tiled_nll_bits(loaded.model, plane, DEFAULT_TILE, args.context) for name, loaded in models.items()}
        for name in models:
            totals[name] += bits[name]
        rows.append((path.stem, {name: b / plane.size for name, b in bits.items()}))
        print(path.stem, " ".join(f"{b / plane.size:.4f}" for b in bits.values()), flush=True)
    rows.append(("**all**", {name: totals[name] / subpixels for name in models}))

    base = args.models[0]
    names = list(models)
    lines = [
        f"# Held-out NLL of {', '.join(names)}",
        "",
        f"Command: `python {' '.join(sys.argv)}`  ",
        f"{run_facts()}. Bits/subpixel of the 12 held-out images"
        f" ({'grayscale' if args.gray else 'RGB'}), tile {DEFAULT_TILE}, context {args.context}; the change is"
        f" against {base}. Model ids: " + ", ".join(f"{name} {loaded.model_id}" for name, loaded in models.items()) + ".",
        "",
        "| image | " + " | ".join(names) + " | " + " | ".join(f"change ({name})" for name in names[1:]) + " |",
        "|---|" + "---|" * (2 * len(names) - 1),
    ]
    for label, values in rows:
        cells = [f"{values[name]:.4f}" for name in names]
        cells += [f"{100 * (values[name] / values[base] - 1):+.2f}%" for name in names[1:]]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    publish(lines, args.out)


if __name__ == "__main__":
    run(main)
