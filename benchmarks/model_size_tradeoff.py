"""Choosing the default model's size: bits/subpixel against CPU decode time, for several sizes.

For each candidate (a training run or model file): its NLL at the codec's tile size on the held-out
Kodak images, and the wall time to encode and decode (real .snail, verified) a 256x256 held-out crop.
Writes a table and the plot that justified the choice of the shipped model.

    python benchmarks/model_size_tradeoff.py runs/gpu/rgb-s runs/gpu/rgb-m runs/gpu/rgb-l \\
        --out results/experiments/model_size_tradeoff
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from snailcompress.api import DEFAULT_TILE, ModelChooser, decode_file, encode_file  # noqa: E402
from snailcompress.bench.heldout import KODAK_HOLDOUT, SHARED  # noqa: E402
from snailcompress.bench.scripts import publish, run, run_facts  # noqa: E402
from snailcompress.evaluate import tiled_nll_bits  # noqa: E402
from snailcompress.models.layers import count_parameters  # noqa: E402
from snailcompress.zoo import load_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--images", type=int, default=len(KODAK_HOLDOUT), help="held-out Kodak images for the NLL")
    parser.add_argument("--out", type=Path, required=True, help="prefix: writes PREFIX.md, PREFIX.png")
    args = parser.parse_args()
    planes = [np.asarray(Image.open(SHARED / "kodak" / f"{n}.png").convert("RGB")) for n in KODAK_HOLDOUT[: args.images]]
    crop = Image.open(SHARED / "kodak" / "kodim23.png").convert("RGB").crop((256, 96, 512, 352))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        crop_path = Path(tmp) / "crop.png"
        crop.save(crop_path)
        for spec in args.models:
            loaded = load_model(spec)
            nll = sum(tiled_nll_bits(loaded.model, p, DEFAULT_TILE) for p in planes) / sum(p.size for p in planes)
            chooser = ModelChooser([spec])
            enc = encode_file(crop_path, Path(tmp) / "crop.snail", chooser, force=True)
            dec = decode_file(enc.target, Path(tmp) / "back.png", chooser, force=True)
            facts = loaded.metadata
            rows.append({
                "model": spec, "params": count_parameters(loaded.model), "config": loaded.model.config.to_dict(),
                "nll_bpsp": nll, "crop_bpsp": enc.bits_per_subpixel, "encode_s": enc.seconds, "decode_s": dec.seconds,
                "train_images": facts.get("images"), "id": loaded.model_id,
            })
            print(json.dumps(rows[-1], default=str), flush=True)
    lines = [
        "# Default model size: bits against CPU decode time",
        "",
        f"Command: `python {' '.join(sys.argv)}`  ",
        f"{run_facts()}. NLL at tile {DEFAULT_TILE} on the held-out "
        f"Kodak images {', '.join(KODAK_HOLDOUT[: args.images])}; times: real encode/decode (verified) of a "
        "256x256 crop of kodim23 (held out).",
        "",
        "| model | parameters | images trained on | held-out NLL bits/subpixel | crop .snail bits/subpixel | encode s | decode s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['params'] / 1e6:.2f}M | {r['train_images']} | {r['nll_bpsp']:.4f} | {r['crop_bpsp']:.4f} "
            f"| {r['encode_s']:.1f} | {r['decode_s']:.1f} |"
        )
    publish(lines, args.out.with_suffix(".md"))
    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=120)
    for r in rows:
        ax.scatter(r["decode_s"], r["nll_bpsp"], s=40 + r["params"] / 2e4)
        ax.annotate(f"{Path(r['model']).name}\n{r['params'] / 1e6:.2f}M", (r["decode_s"], r["nll_bpsp"]),
                    textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel("decode time of a 256x256 crop (s, CPU)")
    ax.set_ylabel("held-out Kodak NLL (bits/subpixel)")
    ax.set_title("model size: bits vs CPU decode time")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out.with_suffix(".png"))


if __name__ == "__main__":
    run(main)
