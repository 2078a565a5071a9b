"""The codec on real images: coded size against the model's NLL, and encode/decode time.

For each image: the model's NLL of exactly the pixels the codec codes (one full forward pass per
batch of tiles, padding excluded), the real .snail file (payload and header), and the wall time of
`encode_file` and `decode_file` (which also verifies the pixel checksum), plus classical codecs.

    python benchmarks/codec_benchmark.py --heldout --threads 1 --codecs png,webp,jpegxl-e7,jpegxl-e9,jpeg2000,jpegls \\
        --out results/default_model_heldout.md
    python benchmarks/codec_benchmark.py --sizes 32,256,full --threads 2 --variants static,default --codecs png,jpegxl-e9

--variants codes each image in several ways, each with its file size and times, the first the
reference of the others (VARIANTS: `default` is plain `snailcompress encode`; `static`, the shipped
model as it is, `--no-calibrate`, whose payload should match the model NLL):

    python benchmarks/codec_benchmark.py --heldout --threads 2 --variants static,default --codecs jpegxl-e9
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from snailcompress.api import DEFAULT_CONTEXT, DEFAULT_TILE, ModelChooser, decode_file, encode_file
from snailcompress.bench.codecs import get_codecs
from snailcompress.bench.heldout import SHARED, heldout_files
from snailcompress.bench.scripts import PartialRows, publish, run, run_facts
from snailcompress.codec import container
from snailcompress.evaluate import tiled_nll_bits


def crops_of(path: Path, sizes: list[str], workdir: Path) -> list[Path]:
    """Centre crops of one image at each size ('full' keeps it whole)."""
    image = Image.open(path).convert("RGB")
    out = []
    for size in sizes:
        if size == "full":
            crop = image
        else:
            s = int(size)
            left, top = (image.width - s) // 2, (image.height - s) // 2
            crop = image.crop((left, top, left + s, top + s))
        target = workdir / f"{path.stem}-{crop.width}x{crop.height}.png"
        crop.save(target)
        out.append(target)
    return out


#: name -> (encode_file options, what it is in words)
VARIANTS = {
    "default": ({}, "`snailcompress encode`"),
    "static": ({"calibrate": False}, "`snailcompress encode --no-calibrate` (the shipped model as it is)"),
}


def measure(path: Path, chooser: ModelChooser, tile: int, context: int, codecs, workdir: Path, variants: list[str]) -> dict:
    pixels = np.asarray(Image.open(path).convert("RGB"))
    model = chooser.for_channels(3)
    nll_bits = tiled_nll_bits(model.model, pixels, tile, context)
    row = {"image": path.stem, "size": f"{pixels.shape[1]}x{pixels.shape[0]}", "subpixels": pixels.size,
           "nll_bpsp": nll_bits / pixels.size}
    for name in variants:
        encoded = encode_file(path, workdir / f"{path.stem}.{name}.snail", chooser, tile, context, force=True,
                              **VARIANTS[name][0])
        decoded = decode_file(encoded.target, workdir / f"{path.stem}.{name}.png", chooser, force=True)
        payload_bytes = sum(4 * p.n_words for p in container.read(encoded.target.read_bytes()).planes)
        row[name] = {"payload_bpsp": 8 * payload_bytes / pixels.size, "file_bpsp": encoded.bits_per_subpixel,
                     "header_bytes": encoded.bytes - payload_bytes, "encode_s": encoded.seconds,
                     "decode_s": decoded.seconds, "payload_over_nll_pct": 100 * (8 * payload_bytes / nll_bits - 1)}
    for codec in codecs:
        row[codec.name] = 8 * len(codec.encode(pixels)) / pixels.size
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=[], help="model(s); default: the shipped ones")
    parser.add_argument("--image", type=Path, default=SHARED / "kodak" / "kodim23.png", help="held out from training")
    parser.add_argument("--sizes", default="32,256,full", help="centre crops of --image")
    parser.add_argument("--heldout", action="store_true", help="all held-out images at full size instead")
    parser.add_argument("--tile", type=int, default=DEFAULT_TILE)
    parser.add_argument("--context", type=int, default=DEFAULT_CONTEXT)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--codecs", default="png,jpegxl-e9")
    parser.add_argument("--variants", default="default", help=f"ways to encode, first the reference: {', '.join(VARIANTS)}")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    chooser = ModelChooser(args.model)
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    codecs = get_codecs(args.codecs) if args.codecs else []
    model = chooser.for_channels(3)
    kept = PartialRows(args.out, {"argv": sys.argv[1:], "model": model.model_id})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        images = heldout_files() if args.heldout else crops_of(args.image, args.sizes.split(","), work)
        for path in images:
            row = kept.get(path.name)
            if row is None:
                row = measure(path, chooser, args.tile, args.context, codecs, work, variants)
                kept.add(path.name, row)
            rows.append(row)
            print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    lines = [
        f"# Codec: {model.name} on {'held-out images' if args.heldout else args.image.name + ' crops'}",
        "",
        f"Command: `python {' '.join(sys.argv)}`  ",
        f"{run_facts()}; model {model.name} (id {model.model_id}), tile {args.tile}, context {args.context}. "
        "Times are wall-clock for the whole command (read, code, write, verify). Bits per subpixel count "
        "every byte of the file; 'payload' leaves out the container header. Ways of encoding: "
        + "; ".join(f"**{v}**, {VARIANTS[v][1]}" for v in variants) + f"; each against **{variants[0]}** ('vs')."
        + " Model NLL: the shipped model's, as it is." + kept.note(),
        "",
    ]
    names = [c.name for c in codecs]
    first, others = variants[0], variants[1:]
    header = ["image", "size", "model NLL", f"{first} payload", "payload/NLL", f"{first} file", "header B", "encode s",
              "decode s"]
    for v in others:
        header += [f"{v} file", "vs", f"{v} encode s", f"{v} decode s"]
    header += names
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    total = sum(r["subpixels"] for r in rows)

    def pooled(get) -> float:
        return sum(get(r) * r["subpixels"] for r in rows) / total

    def cells_of(r: dict, get, bold=lambda text: text) -> list[str]:
        """One row of the table; `get(r, variant, key)` reads a number (pooled or one image's)."""
        ref = get(r, first, "file_bpsp")
        cells = [bold(f"{get(r, first, 'payload_bpsp'):.4f}"), f"{get(r, first, 'payload_over_nll_pct'):+.3f}%",
                 bold(f"{ref:.4f}"), "" if r is None else str(r[first]["header_bytes"]),
                 f"{get(r, first, 'encode_s'):.1f}", f"{get(r, first, 'decode_s'):.1f}"]
        for v in others:
            mine = get(r, v, "file_bpsp")
            cells += [bold(f"{mine:.4f}"), f"{100 * (mine / ref - 1):+.2f}%", f"{get(r, v, 'encode_s'):.1f}",
                      f"{get(r, v, 'decode_s'):.1f}"]
        return cells

    for r in rows:
        lines.append("| " + " | ".join([r["image"], r["size"], f"{r['nll_bpsp']:.4f}",
                                         *cells_of(r, lambda r, v, k: r[v][k]), *[f"{r[n]:.4f}" for n in names]]) + " |")

    def summed(_, v, k):
        if k.endswith("_s"):
            return sum(r[v][k] for r in rows)
        if k == "payload_over_nll_pct":
            return 100 * (pooled(lambda r: r[v]["payload_bpsp"]) / pooled(lambda r: r["nll_bpsp"]) - 1)
        return pooled(lambda r: r[v][k])

    lines.append("| " + " | ".join(["**all**", "", f"**{pooled(lambda r: r['nll_bpsp']):.4f}**",
                                     *cells_of(None, summed, lambda t: f"**{t}**"),
                                     *[f"**{pooled(lambda r, n=n: r[n]):.4f}**" for n in names]]) + " |")
    publish(lines, args.out)
    kept.done()


if __name__ == "__main__":
    run(main)
