"""The floor under coding time: the default model's work a pixel, this CPU's matrix throughput in the
codec's arithmetic, the least time that implies for a 768x512 image, and how close encode and decode come.

FLOPs are counted from the integer network's layers (2 x inputs x outputs per position for every
matrix, and the attention's two products over the positions before each one), per window position
and per coded pixel (windows overlap by their context). Throughput is measured on float64 matrix
products of the shapes the encoder runs (the codec's arithmetic: float64 holding integers). The
decoder also has a floor in memory: at every step each slot's attention reads its window's keys and
values so far (float32), together more than the caches hold; that traffic is counted from the plan
and divided by the read rate measured on an array the size of what the decoder's slots hold. Encode
and decode are timed in-process on kodim23 without calibration (the network's work only).

    python benchmarks/speed_floor.py --threads 1,2 --out results/speed_floor.md
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from snailcompress import api
from snailcompress.bench.scripts import publish, run, run_facts
from snailcompress.codec import coder
from snailcompress.codec.tiles import WindowPlan, default_band
from snailcompress.threads import set_threads
from snailcompress.zoo import load_model

IMAGE = Path(__file__).resolve().parents[2] / "shared" / "data" / "kodak" / "kodim23.png"


def flops_per_position(net, positions: int) -> float:
    """Multiply-adds x 2 of one window position, averaged over a window of `positions`."""
    matrices = sum(2 * linear.weight.shape[0] * linear.weight.shape[1] for linear in net.linears())
    cfg = net.config
    # kv_resnet/kv_proj run once a position like the rest; the attention reads (p - 1) / 2 earlier positions on average
    attention = len(net.blocks) * 2 * (positions - 1) / 2 * (cfg.key_channels + cfg.value_channels)
    return matrices + attention


def gemm_gflops(threads: int, rows: int = 4096, inner: int = 192, cols: int = 96, repeat: int = 40) -> float:
    set_threads(threads)
    a = torch.randint(-4096, 4096, (rows, inner)).double()
    b = torch.randint(-4096, 4096, (inner, cols)).double()
    torch.mm(a, b)
    start = time.perf_counter()
    for _ in range(repeat):
        torch.mm(a, b)
    return 2 * rows * inner * cols * repeat / (time.perf_counter() - start) / 1e9


def key_value_bytes(net) -> int:
    """The decoder's keys and values (float32) of one window position, over all blocks."""
    return len(net.blocks) * (net.config.key_channels + net.config.value_channels) * 4


def attention_bytes(net, plan: WindowPlan) -> int:
    """Keys and values the decoder's attention reads over the whole plane: at position p of a window,
    every block reads the p earlier positions' keys and values."""
    return plan.rows * plan.cols * plan.positions * (plan.positions - 1) // 2 * key_value_bytes(net)


def stream_gbytes(threads: int, nbytes: int, repeat: int = 20) -> float:
    """Read rate (GB/s) of summing a float32 array of `nbytes` on `threads` threads."""
    set_threads(threads)
    data = torch.ones(nbytes // 4, dtype=torch.float32)
    data.sum()
    start = time.perf_counter()
    for _ in range(repeat):
        data.sum()
    return nbytes * repeat / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not IMAGE.is_file():
        raise OSError(f"{IMAGE}: not found (the shared Kodak images)")
    plane = np.asarray(Image.open(IMAGE).convert("RGB"))
    height, width = plane.shape[:2]
    tile, context = (api.DEFAULT_TILE,) * 2, (api.DEFAULT_CONTEXT,) * 2
    band = default_band(height, width, tile, context)
    plan = WindowPlan.for_image(height, width, tile, context, band)
    loaded = load_model("snail-rgb")
    net = api.integer_network(loaded.model)
    windows = plan.rows * plan.cols
    per_position = flops_per_position(net, plan.positions)
    total = per_position * plan.positions * windows
    per_pixel = total / (height * width)
    traffic = attention_bytes(net, plan)
    resident = len(plan.slot_groups(coder.MAX_BATCH_SLOTS)[0]) * plan.positions * key_value_bytes(net)  # what its slots hold
    lines = [
        "# The floor under coding time: work a pixel, matrix throughput, and how close the codec comes",
        "",
        f"`python benchmarks/speed_floor.py --threads {args.threads}{' --out ' + str(args.out) if args.out else ''}`; {run_facts()}.",
        "",
        f"model snail-rgb (id {loaded.model_id}) as the integer network: {per_position / 1e6:.3f} MFLOP a window position "
        f"({plan.win_h}x{plan.win_w} windows, attention averaged over the window), {per_pixel / 1e6:.3f} MFLOP a "
        f"coded pixel (windows overlap by their context); kodim23 ({width}x{height}): {windows} windows, "
        f"{total / 1e9:.0f} GFLOP. The decoder's attention reads {traffic / 1e9:.0f} GB of keys and values "
        f"(its slots hold {resident / 1e6:.0f} MB of them).",
        "",
        "| threads | float64 matmul GFLOPS | least time s | encode s (no calibration) | of the least | read GB/s | "
        "decode's least s (matrix + reads) | decode s | of the least |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for threads in (int(t) for t in args.threads.split(",")):
        gflops = gemm_gflops(threads)
        least = total / (gflops * 1e9)
        rate = stream_gbytes(threads, resident)
        decode_least = least + traffic / (rate * 1e9)
        start = time.perf_counter()
        words, _ = coder.code_plane(net, plane, tile, context, band)
        encode = time.perf_counter() - start
        start = time.perf_counter()
        decoded = coder.decode_plane(net, words, height, width, 3, tile, context, band)
        decode = time.perf_counter() - start
        if not np.array_equal(decoded, plane):
            raise AssertionError("decoded pixels differ")
        lines.append(f"| {threads} | {gflops:.1f} | {least:.1f} | {encode:.1f} | {least / encode:.0%} | {rate:.1f} | "
                     f"{decode_least:.1f} | {decode:.1f} | {decode_least / decode:.0%} |")
        print(lines[-1], flush=True)
    lines += ["", "The least time is the matrix work alone at the measured throughput; the decoder's adds the time to",
              "read its attention's keys and values once a step at the measured read rate (the two could overlap, so",
              "this sum is not a strict floor; neither is it reachable, as every step also reads the weights and",
              "writes its activations). The rest of a step (requantising, table lookups, the search of each value in",
              "the range coder's stream, Python) is what separates the codec from it."]
    publish(lines, args.out)


if __name__ == "__main__":
    run(main)
