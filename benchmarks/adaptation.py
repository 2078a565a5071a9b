"""What adapting the model to each image saves: dynamic evaluation, simulated with full forward passes.

Encoder and decoder both fine-tune the model on the windows already coded (the decoder has them
too) and code the next ones with the adapted weights: no side information, the same result on both
sides in one environment (`snailcompress encode --adapt`, codec/adaptation.py). This measures the
model's NLL of the held-out images coded that way: the windows, in the order the codec finishes
them, are cut into K chunks; chunk k is scored with the weights adapted on chunks < k, then the
model takes S Adam steps (lr) on chunk k. `static` is the model as shipped.

--context 0 gives independent tiles (in raster order); with context, --bands default cuts the image
into the bands the static codec uses (api.context_band), whose windows finish interleaved (one per
band at a time), and --bands one makes one band, whose windows finish in raster order (what --adapt
codes).

    python benchmarks/adaptation.py --model snail-rgb --images 6 --configs static,16x1@3e-5,16x3@3e-5 \\
        --out results/adaptation.md
    python benchmarks/adaptation.py --images 6 --context 2 --bands default,one --configs static,96x1@3e-5 \\
        --out results/adaptation_bands.md
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import publish, run, run_facts  # noqa: E402
from default_models import heldout_files  # noqa: E402

from snailcompress import mixture  # noqa: E402
from snailcompress.api import adaptive_band, context_band  # noqa: E402
from snailcompress.codec.images import read_image  # noqa: E402
from snailcompress.codec.tiles import WindowPlan  # noqa: E402
from snailcompress.zoo import load_model  # noqa: E402

TILE = 32


def parse_config(spec: str) -> tuple[int, int, float] | None:
    """'static' -> None; '16x3@3e-5' -> 16 chunks, 3 steps per chunk, lr 3e-5."""
    if spec == "static":
        return None
    shape, _, lr = spec.partition("@")
    chunks, _, steps = shape.partition("x")
    return int(chunks), int(steps), float(lr)


def windows_of(plane: np.ndarray, context: int = 0, bands: str = "default") -> tuple[torch.Tensor, torch.Tensor]:
    """The codec's windows (N, C, h, w) in [-1, 1], in the order the coder finishes them, and the mask
    of the pixels each codes (N, h, w)."""
    height, width = plane.shape[:2]
    band = adaptive_band(height, TILE) if bands == "one" else context_band(height, width, TILE)
    plan = WindowPlan.for_image(height, width, (TILE, TILE), (context, context), band)
    windows, coded = plan.windows(plane)  # raster order of windows
    i, j = np.divmod(np.arange(len(windows)), plan.cols)
    start, _ = plan.slot_schedule(np.stack([i - i % plan.band, j], 1))
    finished = start + (i % plan.band + 1) * plan.positions  # steps (coder.py): slots run side by side
    order = np.lexsort((j, i // plan.band, finished))  # ties: slot order, as the coder hands them over
    return mixture.to_unit(torch.from_numpy(windows[order])), torch.from_numpy(coded[order])


def nll_nats(model, x: torch.Tensor, real: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Sum of -log p over the real pixels (differentiable when grad is enabled)."""
    parts = [-mixture.log_prob(x[i : i + batch], model(x[i : i + batch]))[real[i : i + batch]].sum()
             for i in range(0, len(x), batch)]
    return torch.stack(parts).sum()


def adapted_nll_bits(model, x: torch.Tensor, real: torch.Tensor, config) -> float:
    """Total -log2 p of the real pixels, scoring each chunk before adapting on it (see module docstring)."""
    if config is None:
        with torch.no_grad():
            return float(nll_nats(model.eval(), x, real)) / math.log(2)
    chunks, steps, lr = config
    model = copy.deepcopy(model).eval()  # dropout is 0 in the shipped models; eval keeps it off anyway
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    total = 0.0
    for index in torch.arange(len(x)).chunk(chunks):
        with torch.no_grad():  # a separate pass, as in a codec, whose decoder scores incrementally
            total += float(nll_nats(model, x[index], real[index]))
        for _ in range(steps):
            loss = nll_nats(model, x[index], real[index]) / (real[index].sum() * x.shape[1])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return total / math.log(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="snail-rgb")
    parser.add_argument("--configs", default="static,16x1@3e-5,16x3@3e-5", help="static, or CHUNKSxSTEPS@LR")
    parser.add_argument("--images", type=int, default=None, help="only the first N held-out images")
    parser.add_argument("--context", type=int, default=0, help="context of each window (0: independent tiles)")
    parser.add_argument("--bands", default="default", help="default, one, or both as 'default,one' (see the docstring)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    loaded = load_model(args.model)
    bands = args.bands.split(",")
    if not set(bands) <= {"default", "one"}:
        parser.error("--bands takes default, one or default,one")
    columns = [(b, spec, parse_config(spec)) for b in bands for spec in args.configs.split(",")]
    specs = [spec if len(bands) == 1 else f"{b} bands: {spec}" for b, spec, _ in columns]
    files = heldout_files()[: args.images]
    bits = {s: 0.0 for s in specs}
    seconds = {s: 0.0 for s in specs}
    dims = 0
    rows = []
    for path in files:
        plane = read_image(path).planes["RGB"]
        windows = {b: windows_of(plane, args.context, b) for b in bands}
        row = {"image": path.stem}
        for spec, (b, _, config) in zip(specs, columns):
            started = time.perf_counter()
            image_bits = adapted_nll_bits(loaded.model, *windows[b], config)
            seconds[spec] += time.perf_counter() - started
            bits[spec] += image_bits
            row[spec] = image_bits / plane.size
        dims += plane.size
        rows.append(row)
        print(path.stem, " ".join(f"{s} {row[s]:.4f}" for s in specs), flush=True)

    base = bits[specs[0]]
    lines = [
        f"# Adapting {loaded.name} to each image (dynamic evaluation), {TILE}x{TILE} tiles"
        + (f" with context {args.context}" if args.context else ""),
        "",
        f"Command: `python {' '.join(sys.argv)}`",
        "",
        f"{run_facts()}; model {loaded.name} (id {loaded.model_id}). Bits per subpixel of the model's NLL "
        "(what the codec's payload matches within 0.01%); `CxS@lr`: C chunks of tiles in coding order, "
        "S Adam steps on each chunk after scoring it, in the order the codec finishes the windows. "
        "Seconds: the whole measurement (forward passes, and the adaptation steps).",
        "",
        "| image | " + " | ".join(specs) + " |",
        "|---|" + "---|" * len(specs),
    ]
    lines += [f"| {r['image']} | " + " | ".join(f"{r[s]:.4f}" for s in specs) + " |" for r in rows]
    lines.append("| **all** | " + " | ".join(f"**{bits[s] / dims:.4f}**" for s in specs) + " |")
    lines.append(f"| vs {specs[0]} | " + " | ".join(f"{100 * (bits[s] / base - 1):+.2f}%" for s in specs) + " |")
    lines.append("| seconds | " + " | ".join(f"{seconds[s]:.0f}" for s in specs) + " |")
    publish(lines, args.out)


if __name__ == "__main__":
    run(main)
