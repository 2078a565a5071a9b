"""Training throughput (images/s) of model presets on this machine's device.

Runs the real training step (forward, reference loss, backward, ReferenceAdam, EMA update) on random
32x32 images: data loading is excluded, so this is the model's ceiling. Writes a markdown table.

    python benchmarks/training_throughput.py --steps 10 --out results/training_throughput_h100_eager.md   # on the H100
    python benchmarks/training_throughput.py --presets pixelsnail-small:64 --steps 20 --compile \\
        --precisions fp32,bf16 --set filters=48 --set blocks=2 --set resnets_per_block=3 --set value_channels=24 \\
        --out results/training_throughput_cpu.md
        # CPU, snail-rgb's architecture; bf16 pays on a CPU only with AMX or AVX512-BF16
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

from snailcompress import mixture
from snailcompress.bench.harness import machine_facts
from snailcompress.bench.scripts import publish, run, run_facts
from snailcompress.cli import parse_overrides
from snailcompress.models.layers import count_flops, count_parameters, data_dependent_init
from snailcompress.models.presets import build
from snailcompress.train import PRECISIONS, ReferenceAdam, cpu_bf16_units, network_autocast

#: dense bf16 peak TFLOP/s by a part of the device's name: half the with-sparsity figures of NVIDIA's
#: data sheets (the longest matching part wins: "H200 NVL" before "H200")
BF16_PEAK_TFLOPS = {"H100 80GB HBM3": 989.4, "H100 PCIe": 756.5, "H100 NVL": 835.5, "H200": 989.4, "H200 NVL": 835.5}
DEFAULT = "pixelsnail-cifar10:8,pixelsnail-cifar10:32,pixelsnail-imagenet32:8,pixelcnnpp-cifar10:16,pixelcnnpp-cifar10:64"


def measure(preset: str, batch: int, steps: int, device: torch.device, precision: str, compile_: bool,
            overrides: dict) -> dict:
    torch.manual_seed(0)
    model = build(preset, **overrides).to(device)
    x = mixture.to_unit(torch.randint(0, 256, (batch, 3, 32, 32), device=device))
    data_dependent_init(model, x)
    flops = count_flops(model, x[:1])  # a training step's work on one image
    ema = [p.detach().clone() for p in model.parameters()]
    params = list(model.parameters())
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    forward = torch.compile(model) if compile_ else model
    optimizer = ReferenceAdam(params)
    autocast = network_autocast(precision, device)

    def step():
        with autocast:
            out = forward(x)
        loss = -mixture.log_prob(x, out.float()).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, params, 0.0005)

    warmup = 3 if not compile_ else 6
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    memory = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return {
        "preset": preset, "params_M": count_parameters(model) / 1e6, "batch": batch, "bf16": isinstance(autocast, torch.autocast),
        "compile": compile_, "images_per_s": batch * steps / seconds, "step_ms": 1000 * seconds / steps, "peak_GiB": memory,
        "gflop_per_image": flops / 1e9, "tflops": flops * batch * steps / seconds / 1e12,
    }


def bf16_peak(name: str) -> float | None:
    """The device's dense bf16 peak in TFLOP/s, where its name is one of BF16_PEAK_TFLOPS's."""
    matches = [key for key in BF16_PEAK_TFLOPS if key in name]
    return BF16_PEAK_TFLOPS[max(matches, key=len)] if matches else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default=DEFAULT, help="comma-separated PRESET:BATCH")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--precisions", default="auto", help=f"comma-separated, of {', '.join(PRECISIONS)}")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a model setting of every preset, as `snailcompress train --set`")
    parser.add_argument("--compile", action="store_true", help="also measure with torch.compile")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    overrides = parse_overrides(tuple(args.overrides))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for item in args.presets.split(","):
        preset, batch = item.split(":")
        for precision in args.precisions.split(","):
            for compile_ in [False, True] if args.compile else [False]:
                row = measure(preset, int(batch), args.steps, device, precision, compile_, overrides)
                rows.append(row)
                print(row, flush=True)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"{machine_facts()['cpu']} (bf16 units: {cpu_bf16_units()})"
    peak = bf16_peak(name) if device.type == "cuda" else None
    lines = [
        f"# Training throughput on {name}",
        "",
        f"Command: `python {' '.join(sys.argv)}`  ",
        f"{run_facts()}; random 32x32 RGB data (no data loading), "
        f"{args.steps} timed steps after warm-up."
        + (f" Every preset with {', '.join(args.overrides)}." if args.overrides else "")
        + " GFLOP/image: a training step's matrix products and convolutions on one image, forward and backward,"
        " as torch's FlopCounterMode counts them (elementwise work not counted); TFLOP/s: that work at the"
        " measured rate" + (f", against this GPU's dense bf16 peak of {peak:g} TFLOP/s (NVIDIA's data sheet; bf16 rows only)."
                            if peak else "."),
        "",
        "| preset | params | batch | bf16 | compile | images/s | ms/step | GFLOP/image | TFLOP/s | of bf16 peak "
        "| peak GPU memory | CIFAR-10 epochs/day |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        memory = "-" if math.isnan(r["peak_GiB"]) else f"{r['peak_GiB']:.1f} GiB"  # no GPU memory on the CPU
        share = f"{100 * r['tflops'] / peak:.1f}%" if peak and r["bf16"] else "-"  # an fp32 step is not bf16 work
        lines.append(
            f"| {r['preset']} | {r['params_M']:.2f}M | {r['batch']} | {r['bf16']} | {r['compile']} | {r['images_per_s']:.0f} "
            f"| {r['step_ms']:.1f} | {r['gflop_per_image']:.3g} | {r['tflops']:.3g} | {share} "
            f"| {memory} | {r['images_per_s'] * 86400 / 50000:.0f} |"
        )
    publish(lines, args.out)


if __name__ == "__main__":
    run(main)
