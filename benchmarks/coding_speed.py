"""How long `snailcompress encode` and `decode` take, and how much memory they hold, by image size,
beside JPEG-XL effort 7 and 9 measured in the same run.

Each size is coded by the commands a user types (a new Python each time, model loading included),
with `--threads T`; the time is the command's wall time, the memory its peak resident set (the
operating system's count for that process). JPEG-XL runs in this process (imagecodecs, libjxl),
timed around its encode and decode calls. The images: kodim23 (held out from training) whole
(768x512) and centre crops (32x32, 256x256); a hundred 32x32 crops of it coded by one command (the
model loaded once, the files encoded together and decoded together); and a 4000x3000 mosaic of the shared photos (the
largest photos here are 1500x1000; the smaller ones are scaled up to fill their square).

    python benchmarks/coding_speed.py --threads 2 --sizes 32,32x100,256,768,4000 --out results/coding_speed.md

Times are the median of --repeats runs (4000x3000: one): this machine's speed drifts by a tenth from
one run to the next.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from snailcompress.bench.codecs import get_codecs
from snailcompress.bench.heldout import SHARED
from snailcompress.bench.scripts import PartialRows, publish, run, run_facts
from snailcompress.zoo import load_model

SIZES = ("32", "32x100", "256", "768", "4000")


def _images(size: str, work: Path) -> list[Path]:
    """The PNG files of one row of the table."""
    kodim23 = Image.open(SHARED / "kodak" / "kodim23.png").convert("RGB")
    if size == "768":
        crops = [kodim23]
    elif size == "4000":
        crops = [_mosaic(4000, 3000)]
    elif size == "32x100":
        crops = [kodim23.crop((x, y, x + 32, y + 32)) for y in range(8, 488, 48) for x in range(16, 716, 70)]
    else:
        s = int(size)
        left, top = (kodim23.width - s) // 2, (kodim23.height - s) // 2
        crops = [kodim23.crop((left, top, left + s, top + s))]
    folder = work / size
    folder.mkdir()
    paths = []
    for k, crop in enumerate(crops):
        paths.append(folder / f"{k:03d}.png")
        crop.save(paths[-1])
    return paths


def _mosaic(width: int, height: int) -> Image.Image:
    """The first twelve shared photos side by side, row by row, each a centre crop of 1000 x 1000 (of
    the photo scaled, where it is smaller, so that it covers the square)."""
    photos = sorted((SHARED / "photos").glob("*.png"))
    canvas = Image.new("RGB", (width, height))
    k = 0
    for top in range(0, height, 1000):
        for left in range(0, width, 1000):
            with Image.open(photos[k % len(photos)]) as photo:
                photo = photo.convert("RGB")
                scale = max(1.0, 1000 / min(photo.size))
                if scale > 1:
                    photo = photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.LANCZOS)
                x, y = (photo.width - 1000) // 2, (photo.height - 1000) // 2
                canvas.paste(photo.crop((x, y, x + 1000, y + 1000)), (left, top))
            k += 1
    return canvas


#: Runs a command (its argv after this script's) and prints its wall seconds, peak resident KB and exit
#: status. A process's peak counts the memory of the process it was forked from (Linux keeps the
#: high-water mark across fork and exec), so each command is forked from this small Python rather
#: than from the benchmark, which holds torch and numpy: its peak is then the command's own.
_SPAWN = """
import os, sys, time
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
_, status, usage = os.wait4(pid, 0)
print(time.perf_counter() - start, usage.ru_maxrss, os.waitstatus_to_exitcode(status))
"""


def _command(args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak resident MB of one snailcompress command (a new process)."""
    done = subprocess.run([sys.executable, "-c", _SPAWN, "-m", "snailcompress.cli", *args], capture_output=True,
                          text=True)
    seconds, kilobytes, status = done.stdout.split()
    if done.returncode or int(status):
        raise RuntimeError(f"snailcompress {' '.join(args)} failed: {done.stderr.strip()}")
    return float(seconds), int(kilobytes) / 1024  # KB on Linux


def measure(size: str, threads: int, codecs, work: Path, repeats: int) -> dict:
    """One row: each command and codec run `repeats` times, the median time and the largest peak kept
    (this machine's speed drifts from one minute to the next)."""
    paths = _images(size, work)
    pixels = [np.asarray(Image.open(p)) for p in paths]
    encodes, decodes = [], []
    for k in range(repeats):
        out, back = work / f"{size}-snail-{k}", work / f"{size}-decoded-{k}"
        encodes.append(_command(["encode", *map(str, paths), "-o", f"{out}/", "-q", "--threads", str(threads)]))
        snails = sorted(out.glob("*.snail"))
        decodes.append(_command(["decode", *map(str, snails), "-o", f"{back}/", "-q", "--threads", str(threads)]))
        for path, original in zip(sorted(back.glob("*.png")), pixels):
            if not np.array_equal(np.asarray(Image.open(path)), original):
                raise RuntimeError(f"{path.name} did not decode exactly")
    subpixels = sum(p.size for p in pixels)
    row = {"size": size, "images": len(paths), "shape": f"{pixels[0].shape[1]}x{pixels[0].shape[0]}",
           "snail_bpsp": 8 * sum(p.stat().st_size for p in snails) / subpixels, "runs": repeats,
           "encode_s": float(np.median([s for s, _ in encodes])), "decode_s": float(np.median([s for s, _ in decodes])),
           "encode_mb": max(mb for _, mb in encodes), "decode_mb": max(mb for _, mb in decodes)}
    for codec in codecs:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            files = [codec.encode(p) for p in pixels]
            middle = time.perf_counter()
            for data, original in zip(files, pixels):
                if not np.array_equal(codec.decode(data, original.shape), original):
                    raise RuntimeError(f"{codec.name} did not decode exactly")
            times.append((middle - start, time.perf_counter() - middle))
        row[codec.name] = {"bpsp": 8 * sum(map(len, files)) / subpixels,
                           "encode_s": float(np.median([e for e, _ in times])),
                           "decode_s": float(np.median([d for _, d in times]))}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="--threads of the commands")
    parser.add_argument("--sizes", default=",".join(SIZES), help=f"rows, from {', '.join(SIZES)}")
    parser.add_argument("--codecs", default="jpegxl-e7,jpegxl-e9")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each command and codec, the median kept (4000x3000: one, it takes minutes)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    sizes = args.sizes.split(",")
    if unknown := [s for s in sizes if s not in SIZES]:
        parser.error(f"unknown size(s) {', '.join(unknown)}; choose from {', '.join(SIZES)}")
    codecs = get_codecs(args.codecs)
    kept = PartialRows(args.out, {"argv": sys.argv[1:], "repeats": args.repeats})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            row = kept.get(size)
            if row is None:
                row = measure(size, args.threads, codecs, Path(tmp), 1 if size == "4000" else args.repeats)
                kept.add(size, row)
            rows.append(row)
            print(row, flush=True)
    names = [codec.name for codec in codecs]
    lines = [
        "# Encode and decode time by image size, beside JPEG-XL",
        "",
        f"Command: `python {' '.join(sys.argv)}`  ",
        f"{run_facts()}; the commands ran with --threads {args.threads} and the shipped model snail-rgb "
        f"(id {load_model('snail-rgb').model_id}), default options (calibration on). snailcompress times are whole commands (a new Python, model loading, reading, coding, "
        "writing; decode also checks each file's checksum); its memory is the command's peak resident set. JPEG-XL "
        "(imagecodecs) is timed in-process, so it pays no start-up. Bits per subpixel count every byte of the files. "
        "32x32 x100: one command for a hundred 32x32 files (the model loaded once, the files encoded together and decoded together); its "
        "rate is images per second. 4000x3000: a mosaic of twelve shared photos (1000x1000 centre crops). Times are "
        f"the median of {args.repeats} runs of each command and codec, peaks the largest (4000x3000: one run)."
        + kept.note(),
        "",
        "| image | snailcompress bits/subpixel | encode s | decode s | encode peak MB | decode peak MB | "
        + " | ".join(f"{n} bits/subpixel | {n} encode s | {n} decode s" for n in names) + " |",
        "|" + "---|" * (6 + 3 * len(names)),
    ]
    for r in rows:
        label = f"{r['shape']} x{r['images']}" if r["images"] > 1 else r["shape"]
        rate = (f" ({r['images'] / r['encode_s']:.1f} images/s)", f" ({r['images'] / r['decode_s']:.1f} images/s)") \
            if r["images"] > 1 else ("", "")
        cells = [label, f"{r['snail_bpsp']:.4f}", f"{r['encode_s']:.1f}{rate[0]}", f"{r['decode_s']:.1f}{rate[1]}",
                 f"{r['encode_mb']:.0f}", f"{r['decode_mb']:.0f}"]
        for n in names:
            cells += [f"{r[n]['bpsp']:.4f}", f"{r[n]['encode_s']:.2f}", f"{r[n]['decode_s']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    publish(lines, args.out)
    if args.out is not None:
        _plot(rows, names, args.out.with_suffix(".png"))
    kept.done()


def _plot(rows: list[dict], names: list[str], path: Path) -> None:
    """Encode and decode seconds per image against pixels per image, log-log, snailcompress and JPEG-XL."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    pixels = [int(r["shape"].split("x")[0]) * int(r["shape"].split("x")[1]) for r in rows]
    for ax, what in zip(axes, ("encode", "decode")):
        ax.loglog(pixels, [r[f"{what}_s"] / r["images"] for r in rows], "o-", label="snailcompress (whole command)")
        for n in names:
            ax.loglog(pixels, [r[n][f"{what}_s"] / r["images"] for r in rows], "s--", label=n)
        ax.set_title(f"{what}: seconds per image")
        ax.set_xlabel("pixels per image")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}")


if __name__ == "__main__":
    run(main)
