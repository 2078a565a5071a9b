"""Grayscale models side by side: held-out NLL bits/subpixel at tile 32, no context.

The 12 held-out images (default_models.HOLDOUT) converted to grayscale with PIL's convert("L"),
one row per image and one column per model, then the total. Used to decide whether a new
grayscale run is worth shipping (results/default_models/cooldown_scales.md).

    python benchmarks/compare_gray_models.py snail-gray runs/cpu/gray-m-cool1
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from default_models import heldout_files  # noqa: E402
from tiling import tiled_nll_bits  # noqa: E402

from snailcompress.zoo import load_model  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    models = {name: load_model(name) for name in sys.argv[1:]}
    totals = {name: 0.0 for name in models}
    subpixels = 0
    for path in heldout_files():
        plane = np.asarray(Image.open(path).convert("L"))[..., None]
        subpixels += plane.size
        row = [path.stem[:20]]
        for name, loaded in models.items():
            bits = tiled_nll_bits(loaded.model, plane, 32)
            totals[name] += bits
            row.append(f"{bits / plane.size:.4f}")
        print(" ".join(row), flush=True)
    print("all", " ".join(f"{name}={totals[name] / subpixels:.4f}" for name in models),
          {name: loaded.model_id for name, loaded in models.items()})


if __name__ == "__main__":
    main()
