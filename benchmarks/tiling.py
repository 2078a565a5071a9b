"""What tiling costs: a model's bits/subpixel on the same pixels, coded in tiles of several sizes.

The codec codes large images as a batch of equal tiles (edges padded by repetition, never coded).
A tile's first rows and columns see no context, so small tiles cost bits; large tiles cost time
(attention over T*T positions per tile). This measures the model's NLL of exactly the pixels the
codec codes, per tile size, on held-out images, with one full forward pass per batch of tiles.

    python benchmarks/tiling.py --model snail-rgb --tiles 16,24,32,48,64 --out results/tiling.md
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from default_models import heldout_files  # noqa: E402

from snailcompress import mixture  # noqa: E402
from snailcompress.codec.images import read_image  # noqa: E402
from snailcompress.codec.tiles import TileGrid  # noqa: E402
from snailcompress.zoo import load_model  # noqa: E402


@torch.no_grad()
def tiled_nll_bits(model, plane: np.ndarray, tile: int, batch: int = 64) -> float:
    """Total -log2 p of the real (non-padding) pixels of `plane` (H, W, C) coded in tiles."""
    grid = TileGrid.for_image(plane.shape[0], plane.shape[1], tile)
    tiles = grid.split(plane)
    valid_h, valid_w = grid.valid_extent()
    rows = np.arange(grid.tile_h)[None, :, None] < valid_h[:, None, None]
    cols = np.arange(grid.tile_w)[None, None, :] < valid_w[:, None, None]
    real = torch.from_numpy(rows & cols)
    total = 0.0
    for start in range(0, len(tiles), batch):
        x = mixture.to_unit(torch.from_numpy(tiles[start : start + batch]))
        log_p = mixture.log_prob(x, model(x))  # (B, th, tw) nats per pixel
        total -= float(log_p[real[start : start + batch]].sum())
    return total / math.log(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="snail-rgb")
    parser.add_argument("--tiles", default="16,24,32,48,64")
    parser.add_argument("--images", type=int, default=None, help="only the first N held-out images")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    loaded = load_model(args.model)
    tiles = [int(t) for t in args.tiles.split(",")]
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
            bits = tiled_nll_bits(loaded.model, plane, t)
            seconds[t] += time.perf_counter() - start
            totals[t] += bits
            row.append(f"{bits / plane.size:.4f}")
        rows.append(row)
        print(" ".join(row), flush=True)
    lines = [
        f"# Tiling cost: {loaded.name} NLL bits/subpixel by tile size",
        "",
        f"Command: `python {' '.join(sys.argv)}`  ",
        f"Model {loaded.name} (id {loaded.model_id}); {len(files)} held-out images at full resolution; "
        "the NLL of exactly the pixels the codec codes (padding excluded). Forward-pass seconds are for "
        "the full-forward measurement here, not the codec.",
        "",
        "| image | " + " | ".join(f"tile {t}" for t in tiles) + " |",
        "|---|" + "---|" * len(tiles),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines.append("| **all** | " + " | ".join(f"**{totals[t] / subpixels:.4f}**" for t in tiles) + " |")
    lines.append("| forward s | " + " | ".join(f"{seconds[t]:.1f}" for t in tiles) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
