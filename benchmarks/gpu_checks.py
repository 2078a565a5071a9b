"""The checks that need a lent GPU, in one run sized for a short session: issue 35's item 4 (files
across devices, decode time, small images per second) and issue 37's item 5 (training throughput,
eager and compiled, against the bf16 peak). The report is rewritten after every row, and a part that
fails is written down and the next one run, so a run cut short by the session's limit, or broken in
one part, still brings back all it measured; the exit code is 1 if any part failed.

The GPU machine has its own torch and no registry, and neither constriction nor the `../shared`
beside this checkout: carry both. Here, once (`.whl/` and `.gpu/` are ignored by git):

    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux2014_x86_64 -d .whl constriction==0.5.0
    mkdir -p .gpu/kodak && cp ../shared/data/kodak/kodim{03,07,12,15,20,23}.png .gpu/kodak/

then on the machine (`carry`: .whl, .gpu), from the source tree:

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \\
        PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 python3 benchmarks/gpu_checks.py --kodak .gpu/kodak --out $OUT/gpu_checks.md

On a CPU the same script checks itself, the CPU standing in for the GPU (tests run it so):

    python benchmarks/gpu_checks.py --device cpu --steps 6 --crop 16 --tiles 2 --throughput pixelsnail-tiny:1 \\
        --no-compile --out /tmp/g.md

1. **The decoder's step**: its network's predict and commit on the device, launched one operation at
   a time and replayed as CUDA graphs, milliseconds a step, for a photo's slots and a bench batch's.
2. **Files across devices.** A photo (kodim23, 768x512, or its --crop) encoded on the CPU and on the
   device, without calibration (the two files must be byte-identical: the integer network gives the
   same tables everywhere) and with it (fitted in floats, it may differ by device; either file must
   decode everywhere). Every file decoded on both, compared with the source pixels; encode and decode
   timed in-process, after a warm-up encode and decode of a small crop on each device.
3. **Training throughput** of the paper configurations, eager and compiled (`training_throughput.py
   --compile`, on the GPU torch sees), with each step's counted FLOPs against the GPU's bf16 peak.
4. **Small images** (the longest part, so last). `snailcompress bench` on 32x32 tiles (ImageNet32's
   size) of the held-out Kodak images on the device: its per-file rows encode each tile as its own
   file and decode them together; images per second each way, from its summary.csv.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from snailcompress import api
from snailcompress.bench.heldout import KODAK_HOLDOUT, SHARED
from snailcompress.bench.scripts import publish, run, run_facts
from snailcompress.codec import container
from snailcompress.codec.images import DecomposedImage, decompose, same_image
from snailcompress.errors import SnailError
from snailcompress.integer.network import IntegerStepper
from snailcompress.zoo import load_model

ROOT = Path(__file__).resolve().parents[1]
PHOTO = "kodim23"
THROUGHPUT = "pixelsnail-cifar10:32,pixelcnnpp-cifar10:64"


def photo_at(path: Path, size: int | None) -> DecomposedImage:
    """The photo, or its top-left SIZE x SIZE."""
    with Image.open(path) as im:
        return decompose(im if size is None else im.crop((0, 0, size, size)))


def timed(device: torch.device, work):
    """work() and its seconds, the device's queued work included."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - start


def across_devices(image: DecomposedImage, warm: DecomposedImage, device: torch.device):
    """Part 2: each device's files, decoded on each device (rows, as measured)."""
    devices = [torch.device("cpu"), device]
    choosers = {d: api.ModelChooser(device=d) for d in devices}
    for d in devices:  # models loaded and converted, kernels compiled, the device started: outside the timings
        api.decode_image(container.read(api.encode_bytes(warm, choosers[d], calibrate=False)), choosers[d])
    yield "| written on | calibration | bytes | encode s | same bytes as the CPU's | decoded on | decode s | pixels |"
    yield "|---|---|---|---|---|---|---|---|"
    for calibrate in (False, True):
        files = []
        for writer in devices:
            data, seconds = timed(writer, lambda: api.encode_bytes(image, choosers[writer], calibrate=calibrate))
            files.append(data)
            same = "-" if len(files) == 1 else ("yes" if data == files[0] else "no")
            for reader in devices:
                try:
                    decoded, decode_s = timed(reader, lambda: api.decode_image(container.read(data), choosers[reader]))
                    pixels, decode_s = ("exact" if same_image(image, decoded) else "DIFFERENT"), f"{decode_s:.2f}"
                except SnailError as e:  # a checksum that does not match: what this part is here to catch
                    pixels, decode_s = f"FAILED: {e}", "-"
                yield (f"| {writer} | {'on' if calibrate else 'off'} | {len(data):,} | {seconds:.2f} | {same} "
                       f"| {reader} | {decode_s} | {pixels} |")


def decoder_steps(device: torch.device, steps: int):
    """Part 1: the decoder's network step on the device (a predict, its parameters copied to the CPU
    for the search, a commit), its operations launched one by one and replayed as CUDA graphs, for
    the slots of a 768x512 photo's decode (96 windows of 34x34) and of a bench batch of 32x32 images."""
    net = api.integer_network(load_model("snail-rgb")).to(device)
    rng = np.random.default_rng(0)
    yield "| slots | window | launched one by one, ms a step | CUDA graphs, ms a step | faster |"
    yield "|---|---|---|---|---|"
    for batch, side in ((96, 34), (1536, 32)):
        values, advance = rng.integers(0, 256, (steps, batch, 3)), np.ones(batch, bool)
        per_step = {}
        for graphs in (False, True) if device.type == "cuda" else (False,):
            stepper = IntegerStepper(net, batch, side, side, compiled=False, cuda_graphs=graphs)

            def run(count: int) -> None:
                for s in range(count):
                    stepper.predict().cpu()
                    stepper.commit(values[s], advance)

            run(5)  # warm (positions 0..4)
            per_step[graphs] = timed(device, lambda: run(steps - 5))[1] / (steps - 5) * 1e3
        graphed = f"{per_step[True]:.3f}" if True in per_step else "-"
        faster = f"{per_step[False] / per_step[True]:.1f}x" if True in per_step else "-"
        yield f"| {batch} | {side}x{side} | {per_step[False]:.3f} | {graphed} | {faster} |"


def training_throughput(presets: str, compile_: bool, out: Path):
    """Part 3: benchmarks/training_throughput.py's report, but for its title."""
    table = out.with_name(out.stem + "-training.md")
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "training_throughput.py"), "--presets", presets,
                    "--steps", "10", *(["--compile"] if compile_ else []), "--out", str(table)], check=True)
    yield from table.read_text().splitlines()[2:]


def small_images(device: torch.device, kodak: Path, tiles: int, out: Path):
    """Part 4: `snailcompress bench` on 32x32 tiles of the held-out Kodak images, on the device."""
    report = out.with_name(out.stem + "-bench")
    subprocess.run([sys.executable, "-m", "snailcompress.cli", "bench", "--dataset", "folder", "--data-dir", str(kodak),
                    "--holdout", ",".join(KODAK_HOLDOUT), "--crop", "32", "--scales", "1", "--model", "snail-rgb",
                    "--coded-limit", str(tiles), "--limit", str(tiles), "--codecs", "png", "--device", str(device),
                    "--out", str(report), "-q", "-f"], check=True)  # as this script rewrites its own report
    summary = pd.read_csv(report / "summary.csv")
    yield "| coding | images | bits/subpixel | encode images/s | decode images/s |"
    yield "|---|---|---|---|---|"
    for _, row in summary[summary["kind"] == "model-coded"].iterrows():
        yield (f"| {row['coding']} | {row['images']:,} | {row['bits_per_subpixel']:.4f} "
               f"| {row['encode_images_per_s']:.0f} | {row['decode_images_per_s']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="the device checked against the CPU [%(default)s]")
    parser.add_argument("--kodak", type=Path, default=SHARED / "kodak",
                        help=f"a folder with {PHOTO}.png and the held-out Kodak images [%(default)s]")
    parser.add_argument("--steps", type=int, default=200, help="decoder steps timed in part 1, 5 of them warm-up [%(default)s]")
    parser.add_argument("--crop", type=int, default=None, help=f"code {PHOTO}'s top-left SIZE x SIZE only [whole]")
    parser.add_argument("--tiles", type=int, default=2304, help="32x32 tiles coded per file [%(default)s: all]")
    parser.add_argument("--throughput", default=THROUGHPUT, help="PRESET:BATCH,... trained [%(default)s]")
    parser.add_argument("--no-compile", action="store_true", help="eager training only")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_checks.py: error: torch sees no CUDA device here (--device cpu checks the script on a CPU)")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "the CPU standing in for a GPU"
    photo = args.kodak / f"{PHOTO}.png"
    image, warm = photo_at(photo, args.crop), photo_at(photo, 32)
    lines = [f"# GPU checks on {name}", "", f"Command: `python {' '.join(sys.argv)}`  ", f"{run_facts()}.", ""]
    parts = [
        ("## The decoder's step", "A predict, its parameters copied to the CPU and a commit, on "
         f"{device}, after 5 warm-up steps (the search, on the CPU, not included).",
         lambda: decoder_steps(device, args.steps)),
        (f"## Files across devices: {PHOTO} ({image.width}x{image.height})",
         "Encode and decode seconds in-process, after a warm-up on each device; `pixels`: the decoded image "
         "against the source.", lambda: across_devices(image, warm, device)),
        ("## Training throughput", "`benchmarks/training_throughput.py`, 10 timed steps, "
         + ("eager." if args.no_compile else "eager and compiled."),
         lambda: training_throughput(args.throughput, not args.no_compile, args.out)),
        (f"## Small images: {args.tiles:,} 32x32 tiles, per file, on {device}",
         f"`snailcompress bench` (its report: `{args.out.stem}-bench/`); the per-file row encodes each tile as its "
         "own file and decodes them together.", lambda: small_images(device, args.kodak, args.tiles, args.out)),
    ]
    failed = False
    for title, note, measure in parts:
        lines += [title, "", note, ""]
        try:
            for line in measure():
                print(line, flush=True)
                lines.append(line)
                publish(lines, args.out, show=False)
                failed |= "FAILED" in line
        except Exception as e:  # noqa: BLE001 (written down, and the next part runs)
            lines.append(f"**FAILED**: {type(e).__name__}: {e}")
            failed = True
        lines.append("")
        publish(lines, args.out, show=False)
    publish(lines, args.out)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    run(main)
