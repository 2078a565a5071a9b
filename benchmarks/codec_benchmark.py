"""The codec on real images: coded size against the model's NLL, and encode/decode time.

For each image: the model's NLL of exactly the pixels the codec codes (one full forward pass per
batch of tiles, padding excluded), the real .snail file (payload and header), and the wall time of
`encode_file` and `decode_file` (which also verifies the pixel checksum), plus classical codecs.

    python benchmarks/codec_benchmark.py --sizes 32,256,full --threads 2 --out results/codec_speed.md
    python benchmarks/codec_benchmark.py --heldout --codecs png,webp,jpegxl-e9,jpeg2000 --out results/default_model.md

--adapt also codes each image with `snailcompress encode --adapt` (the model learns the image while
coding it, codec/adaptation.py) and adds its file size and times.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import publish  # noqa: E402
from default_models import SHARED, heldout_files  # noqa: E402
from tiling import tiled_nll_bits  # noqa: E402

from snailcompress.api import DEFAULT_CONTEXT, DEFAULT_TILE, ModelChooser, decode_file, encode_file  # noqa: E402
from snailcompress.bench.codecs import get_codecs  # noqa: E402
from snailcompress.codec import container  # noqa: E402
from snailcompress.codec.adaptation import Adaptation  # noqa: E402


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


def measure(path: Path, chooser: ModelChooser, tile: int, context: int, codecs, workdir: Path, adapt: bool) -> dict:
    pixels = np.asarray(Image.open(path).convert("RGB"))
    model = chooser.for_channels(3)
    nll_bits = tiled_nll_bits(model.model, pixels, tile, context)
    encoded = encode_file(path, workdir / f"{path.stem}.snail", chooser, tile, context, force=True)
    decoded = decode_file(encoded.target, workdir / f"{path.stem}.decoded.png", chooser, force=True)
    snail = container.read(encoded.target.read_bytes())
    payload_bytes = sum(4 * p.n_words for p in snail.planes)
    row = {
        "image": path.stem, "size": f"{pixels.shape[1]}x{pixels.shape[0]}", "subpixels": pixels.size,
        "nll_bpsp": nll_bits / pixels.size, "payload_bpsp": 8 * payload_bytes / pixels.size,
        "file_bpsp": encoded.bits_per_subpixel, "header_bytes": encoded.bytes - payload_bytes,
        "encode_s": encoded.seconds, "decode_s": decoded.seconds,
    }
    row["payload_over_nll_pct"] = 100 * (8 * payload_bytes / nll_bits - 1)
    if adapt:
        adapted = encode_file(path, workdir / f"{path.stem}.adapt.snail", chooser, tile, context, force=True,
                              adaptation=Adaptation())
        back = decode_file(adapted.target, workdir / f"{path.stem}.adapt.png", chooser, force=True)
        row.update(adapt_bpsp=adapted.bits_per_subpixel, adapt_encode_s=adapted.seconds, adapt_decode_s=back.seconds)
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
    parser.add_argument("--adapt", action="store_true", help="also code with --adapt (see the docstring)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    chooser = ModelChooser(args.model)
    codecs = get_codecs(args.codecs) if args.codecs else []
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        images = heldout_files() if args.heldout else crops_of(args.image, args.sizes.split(","), work)
        for path in images:
            rows.append(measure(path, chooser, args.tile, args.context, codecs, work, args.adapt))
            print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rows[-1].items()}, flush=True)
    model = chooser.for_channels(3)
    cpu = platform.processor() or platform.machine()
    lines = [
        f"# Codec: {model.name} on {'held-out images' if args.heldout else args.image.name + ' crops'}",
        "",
        f"Command: `python {' '.join(sys.argv)}`  ",
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {cpu}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}; model {model.name} (id {model.model_id}), tile {args.tile}, context {args.context}. "
        "Times are wall-clock for the whole command (read, code, write, verify). Bits per subpixel count "
        "every byte of the file; 'payload' leaves out the container header."
        + (f" '--adapt': `snailcompress encode --adapt` ({Adaptation()}), its file and times, and its "
           "file against the static .snail file." if args.adapt else ""),
        "",
    ]
    names = [c.name for c in codecs]
    adapt_header = ["--adapt file", "vs static", "--adapt encode s", "--adapt decode s"] if args.adapt else []
    header = ["image", "size", "model NLL", "payload", "payload/NLL", ".snail file", "header B", "encode s", "decode s"] + adapt_header + names
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["image"], r["size"], f"{r['nll_bpsp']:.4f}", f"{r['payload_bpsp']:.4f}",
                 f"{r['payload_over_nll_pct']:+.3f}%", f"{r['file_bpsp']:.4f}", str(r["header_bytes"]),
                 f"{r['encode_s']:.1f}", f"{r['decode_s']:.1f}"]
        if args.adapt:
            cells += [f"{r['adapt_bpsp']:.4f}", f"{100 * (r['adapt_bpsp'] / r['file_bpsp'] - 1):+.2f}%",
                      f"{r['adapt_encode_s']:.1f}", f"{r['adapt_decode_s']:.1f}"]
        cells += [f"{r[n]:.4f}" for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    total = sum(r["subpixels"] for r in rows)

    def pooled(key: str) -> float:
        return sum(r[key] * r["subpixels"] for r in rows) / total

    nll, payload, file_bpsp = pooled("nll_bpsp"), pooled("payload_bpsp"), pooled("file_bpsp")
    cells = ["**all**", "", f"**{nll:.4f}**", f"**{payload:.4f}**", f"{100 * (payload / nll - 1):+.3f}%",
             f"**{file_bpsp:.4f}**", "", f"{sum(r['encode_s'] for r in rows):.1f}", f"{sum(r['decode_s'] for r in rows):.1f}"]
    if args.adapt:
        adapted = pooled("adapt_bpsp")
        cells += [f"**{adapted:.4f}**", f"{100 * (adapted / file_bpsp - 1):+.2f}%",
                  f"{sum(r['adapt_encode_s'] for r in rows):.1f}", f"{sum(r['adapt_decode_s'] for r in rows):.1f}"]
    cells += [f"**{pooled(n):.4f}**" for n in names]
    lines.append("| " + " | ".join(cells) + " |")
    publish(lines, args.out)


if __name__ == "__main__":
    main()
