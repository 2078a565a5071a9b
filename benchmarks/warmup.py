"""Why going on from a trained model needs a warm-up: the training loss of its first steps.

snail-rgb trained further on its own training crops (full resolution, batch 64, data order of seed 0)
for a few steps with a fresh optimiser, three ways: lr ~0 (the model as it is, the reference), lr 4e-4
at once, and lr 4e-4 reached over a 200-step warm-up. One row per step: the batch's training bits/dim
(the loss that step, before its update).

    python benchmarks/default_models.py data --out runs/default-data
    python benchmarks/warmup.py --data-dir runs/default-data --out results/experiments/default_models/warmup.md
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

import torch

from snailcompress.bench.heldout import KODAK_HOLDOUT
from snailcompress.bench.scripts import publish, run
from snailcompress.train import TrainOptions, train

WAYS = {"lr ~0 (1e-9)": dict(lr=1e-9), "lr 4e-4 at once": dict(lr=4e-4), "lr 4e-4, warm-up 200": dict(lr=4e-4, warmup_steps=200)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--model", default="snail-rgb")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    losses = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k, (way, changes) in enumerate(WAYS.items()):
            options = TrainOptions(
                model=args.model, dataset="folder", data_dir=str(args.data_dir), out=f"{tmp}/{k}", holdout=KODAK_HOLDOUT,
                batch_size=64, scales=(1.0,), steps=args.steps, log_every=1, eval_every=0, eval_images=64, workers=1,
                device="cpu", **changes,
            )
            train(options, progress_bar=False)
            with open(f"{tmp}/{k}/log.csv", newline="") as f:
                losses[way] = [float(r["train_bpd"]) for r in csv.DictReader(f) if r["train_bpd"]]
    lines = [
        f"# Going on from {args.model} with a fresh optimiser: the first steps' training loss",
        "",
        f"Command: `python {' '.join(sys.argv)}`  ",
        f"torch {torch.__version__}, 1 thread. Training bits/dim of each step's batch (the same batches each way).",
        "",
        "| step | " + " | ".join(WAYS) + " |",
        "|---" * (len(WAYS) + 1) + "|",
    ]
    for step in range(args.steps):
        lines.append(f"| {step + 1} | " + " | ".join(f"{losses[way][step]:.4f}" for way in WAYS) + " |")
    publish(lines, args.out)


if __name__ == "__main__":
    run(main)
