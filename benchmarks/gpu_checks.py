"""The checks that need a lent GPU, in one run sized for a short session: issue 35's item 4 (files
across devices, decode time, small images per second) and issue 37's item 5 (training throughput,
eager and compiled, against the bf16 peak). Each part's table is written to --out as soon as it is
measured, so a run cut short by the session's limit still brings back what it finished.

On the GPU machine, from the source tree (it has its own torch and no package registry):

    PYTHONPATH=. python benchmarks/gpu_checks.py --out $OUT/gpu_checks.md

On a CPU, the same script checks itself with the CPU standing in for the GPU (tests run this):

    python benchmarks/gpu_checks.py --device cpu --crop 64 --tiles 8 --throughput pixelsnail-tiny:2 --no-compile

1. **Files across devices.** A photo (kodim23, 768x512, or its --crop) encoded on the CPU and on the
   device, without calibration (the two files must be byte-identical: the integer network gives the
   same tables everywhere) and with it (fitted in floats, it may differ by device; either file must
   decode everywhere). Every file decoded on both, compared with the source pixels; the device's
   decode timed in-process after a warm-up decode of a small crop (no start-up counted).
2. **Training throughput** of the paper configurations, eager and compiled (`training_throughput.py
   --compile`), with each step's counted FLOPs against the GPU's bf16 peak.
3. **Small images** (the longest part, so last). `snailcompress bench` on 32x32 tiles (ImageNet32's
   size) of the held-out Kodak images on the device: its per-file rows encode each tile as its own
   file and decode them together; images per second each way, from its summary.csv.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from snailcompress import api
from snailcompress.bench.scripts import publish, run, run_facts
from snailcompress.codec import container
from snailcompress.codec.images import DecomposedImage, read_image, same_image

ROOT = Path(__file__).resolve().parents[1]
KODAK = ROOT.parent / "shared" / "data" / "kodak"
PHOTO = KODAK / "kodim23.png"
HELDOUT = "kodim03,kodim07,kodim12,kodim15,kodim20,kodim23"
THROUGHPUT = "pixelsnail-cifar10:32,pixelcnnpp-cifar10:64"


def crop(image: DecomposedImage, size: int | None) -> DecomposedImage:
    if size is None:
        return image
    planes = {name: pixels[:size, :size].copy() for name, pixels in image.planes.items()}
    first = next(iter(planes.values()))
    return DecomposedImage(image.mode, first.shape[1], first.shape[0], planes, dict(image.extras))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, work):
    synchronize(device)
    start = time.perf_counter()
    result = work()
    synchronize(device)
    return result, time.perf_counter() - start


def across_devices(image: DecomposedImage, device: torch.device) -> list[str]:
    """Part 1: each device's files, decoded on each device."""
    devices = [torch.device("cpu"), device]
    choosers = {d: api.ModelChooser(device=d) for d in devices}
    for d in devices:  # models loaded and converted, the device started: outside the timings
        api.decode_image(container.read(api.encode_bytes(crop(image, 32), choosers[d], calibrate=False)), choosers[d])
    lines = ["| written on | calibration | bytes | encode s | same bytes as the CPU's | decoded on | decode s | pixels |",
             "|---|---|---|---|---|---|---|---|"]
    for calibrate in (False, True):
        files = []
        for writer in devices:
            data, seconds = timed(writer, lambda: api.encode_bytes(image, choosers[writer], calibrate=calibrate))
            files.append(data)
            same = "-" if len(files) == 1 else ("yes" if data == files[0] else "no")
            for reader in devices:
                decoded, decode_s = timed(reader, lambda: api.decode_image(container.read(data), choosers[reader]))
                exact = "exact" if same_image(image, decoded) else "DIFFERENT"
                lines.append(f"| {writer} | {'on' if calibrate else 'off'} | {len(data):,} | {seconds:.2f} "
                             f"| {same} | {reader} | {decode_s:.2f} | {exact} |")
                print(lines[-1], flush=True)
    return lines


def training_throughput(presets: str, compile_: bool, out: Path) -> list[str]:
    """Part 2: benchmarks/training_throughput.py's table."""
    table = out.with_name(out.stem + "-training.md")
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "training_throughput.py"), "--presets", presets,
                    "--steps", "10", *(["--compile"] if compile_ else []), "--out", str(table)], check=True)
    return [line for line in table.read_text().splitlines() if line.startswith("|")]


def small_images(device: torch.device, tiles: int, out: Path) -> list[str]:
    """Part 3: `snailcompress bench` on 32x32 tiles of the held-out Kodak images, on the device."""
    report = out.with_name(out.stem + "-bench")
    subprocess.run([sys.executable, "-m", "snailcompress.cli", "bench", "--dataset", "folder", "--data-dir", str(KODAK),
                    "--holdout", HELDOUT, "--scales", "1", "--model", "snail-rgb", "--coded-limit", str(tiles),
                    "--limit", str(tiles), "--codecs", "png", "--device", str(device), "--out", str(report), "-q"],
                   check=True)
    summary = pd.read_csv(report / "summary.csv")
    coded = summary[summary["kind"] == "model-coded"]
    lines = ["| coding | images | bits/subpixel | encode images/s | decode images/s |", "|---|---|---|---|---|"]
    for _, row in coded.iterrows():
        lines.append(f"| {row['coding']} | {row['images']:,} | {row['bits_per_subpixel']:.4f} "
                     f"| {row['encode_images_per_s']:.0f} | {row['decode_images_per_s']:.0f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="the device checked against the CPU [%(default)s]")
    parser.add_argument("--crop", type=int, default=None, help="code the photo's top-left SIZE x SIZE only [whole]")
    parser.add_argument("--tiles", type=int, default=2304, help="32x32 tiles coded per file [%(default)s: all]")
    parser.add_argument("--throughput", default=THROUGHPUT, help="PRESET:BATCH,... trained [%(default)s]")
    parser.add_argument("--no-compile", action="store_true", help="eager training only")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_checks.py: error: torch sees no CUDA device here (--device cpu checks the script on a CPU)")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "the CPU standing in for a GPU"
    image = crop(read_image(PHOTO), args.crop)
    lines = [f"# GPU checks on {name}", "", f"Command: `python {' '.join(sys.argv)}`  ", f"{run_facts()}.", ""]
    parts = [
        (f"## Files across devices: {PHOTO.name} ({image.width}x{image.height})",
         "Encode and decode seconds in-process, the device's start-up excluded; `pixels`: the decoded image "
         "against the source.", lambda: across_devices(image, device)),
        ("## Training throughput", "`benchmarks/training_throughput.py`, 10 timed steps, "
         + ("eager." if args.no_compile else "eager and compiled."),
         lambda: training_throughput(args.throughput, not args.no_compile, args.out)),
        (f"## Small images: {args.tiles:,} 32x32 tiles, per file, on {device}",
         f"`snailcompress bench` (its report: `{args.out.stem}-bench/`); the per-file row encodes each tile as its "
         "own file and decodes them together.", lambda: small_images(device, args.tiles, args.out)),
    ]
    for title, note, measure in parts:
        lines += [title, "", note, "", *measure(), ""]
        publish(lines, args.out)


if __name__ == "__main__":
    run(main)
