"""What the per-image calibration saves, by what it fits and on how large a sample.

The 12 held-out images (snailcompress.bench.heldout.HOLDOUT) as the codec codes them (tile 32,
context 2, the default bands): every coded pixel scored under the model's output layer, calibrated
by each variant, plus the calibration's header bits. A variant is written SAMPLE or SAMPLE+features:

    64, 128   outputs' gain and offset (format version 4), fitted on the pixels of that many windows
              spread over the image (at most MAX_SAMPLE_PIXELS of them, drawn with a fixed seed)
    +features the features' gains as well (format version 5)
    all       the sample drawn from every window: a forward pass over the whole image

`128+features` is what `snailcompress encode` does (codec/calibration.py); `64` is what it did before.
Bits only: what the fit costs the encoder is in the codec's tables (results/default_model_heldout.md, results/codec_speed.md).

    python benchmarks/calibration.py --variants 64,128,128+features,all+features --out results/calibration.md
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
from snailcompress.codec import calibration
from snailcompress.codec.tiles import WindowPlan, default_band
from snailcompress.zoo import load_model


def parse_variant(spec: str) -> tuple[int | None, bool]:
    """'128+features' -> (128 windows, with feature gains); 'all' -> (None: every window, without)."""
    sample, plus, what = spec.partition("+")
    if plus and what != "features" or not (sample == "all" or sample.isdigit() and int(sample) > 0):
        raise SystemExit(f"calibration.py: error: a variant is N, N+features, all or all+features, not {spec!r}")
    return (None if sample == "all" else int(sample)), bool(plus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="snail-rgb")
    parser.add_argument("--variants", default="64,128,128+features,all+features")
    parser.add_argument("--images", type=int, default=None, help="only the first N held-out images")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants = {spec: parse_variant(spec) for spec in args.variants.split(",")}
    loaded = load_model(args.model)
    model, head = loaded.model.eval(), loaded.model.head
    names = ["none", *variants]
    totals, rows, subpixels = dict.fromkeys(names, 0.0), [], 0
    for path in heldout_files()[: args.images]:
        plane = np.asarray(Image.open(path).convert("RGB"))
        height, width = plane.shape[:2]
        plan = WindowPlan.for_image(height, width, (DEFAULT_TILE,) * 2, (DEFAULT_CONTEXT,) * 2,
                                    default_band(height, width, (DEFAULT_TILE,) * 2, (DEFAULT_CONTEXT,) * 2))
        every = plan.rows * plan.cols
        features, values = calibration.sample_pixels(model, plan, plane, windows=every, pixels=None)
        bits = {"none": calibration.nll_bits(head, features, values, None)}
        for spec, (windows, feature_gains) in variants.items():
            sample = calibration.sample_pixels(model, plan, plane, windows=windows or every)
            fitted = calibration.fit(head, *sample, feature_gains=feature_gains)
            bits[spec] = calibration.nll_bits(head, features, values, fitted) + fitted.header_bits
        subpixels += plane.size
        for name in names:
            totals[name] += bits[name]
        rows.append((path.stem, {name: b / plane.size for name, b in bits.items()}))
        print(path.stem, " ".join(f"{name} {b / plane.size:.4f}" for name, b in bits.items()), flush=True)
    rows.append(("**all**", {name: totals[name] / subpixels for name in names}))

    lines = [
        f"# Calibration of {args.model} for each image: what is fitted, on how large a sample",
        "",
        f"Command: `python {' '.join(sys.argv)}`  ",
        f"{run_facts()}; model {args.model} (id {loaded.model_id}). Bits/subpixel of the held-out images as the codec codes"
        f" them (tile {DEFAULT_TILE}, context {DEFAULT_CONTEXT}): the model's NLL of every coded pixel under each"
        f" calibration, plus its header bits; at most {calibration.MAX_SAMPLE_PIXELS} pixels fitted,"
        f" {calibration.LBFGS_ITERATIONS} L-BFGS iterations. Variants: the number of windows sampled ('all': every"
        " window); '+features': with the features' gains.",
        "",
        "| image | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for label, values in rows:
        lines.append(f"| {label} | " + " | ".join(f"{values[name]:.4f}" for name in names) + " |")
    base = rows[-1][1]["none"]
    lines.append("| change | " + " | ".join(f"{100 * (rows[-1][1][name] / base - 1):+.2f}%" for name in names) + " |")
    publish(lines, args.out)


if __name__ == "__main__":
    run(main)
