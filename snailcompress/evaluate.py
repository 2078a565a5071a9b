"""Test bits/dim over a whole split: the number the paper's Table 1 reports.

Bits/dim = (total negative log-likelihood in nats over every image) / (number of sub-pixels * ln 2):
one division by the exact number of dimensions, never an average of per-batch means (which weighs a
short last batch wrongly, one of the porting bugs listed in the reference notes).

And the NLL of an image as the codec codes it, each pixel scored in the window that codes it
(`tiled_nll_bits`, `windowed_nll_bits`): what the benchmarks compare models and tile sizes by.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset
from .progress import progress_bar

from . import distributed, mixture
from .codec.tiles import WindowPlan, default_band
from .errors import ModelError, UsageError


class EvaluationStopped(Exception):
    """An evaluation ended early by its `stop` (a training run's stop signal)."""


@dataclass
class Evaluation:
    bits_per_dim: float
    total_nats: float
    dims: int
    images: int
    per_image_nats: np.ndarray | None = None  # -log p of each image (float64), in the split's order


def iterate_batches(dataset: Dataset, batch_size: int, limit: int | None = None, start: int = 0):
    """uint8 batches (B, C, H, W) of images start, start + 1, ... up to the first `limit`, in order."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    array = getattr(dataset, "array", None)
    if array is not None:
        for first in range(start, n, batch_size):
            yield torch.from_numpy(array[first : min(n, first + batch_size)].copy())
        return
    indices = list(range(start, n))
    loader = DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size, shuffle=False)
    yield from loader


def scored_log_prob(x: torch.Tensor, params: torch.Tensor, context: int = 0) -> torch.Tensor:
    """log p of each pixel that counts, (B, H - context, W - context): those below the first `context`
    rows and right of the first `context` columns, which the model only sees there, as `encode
    --context N` codes a window. The one definition the training loss and `evaluate` share."""
    return mixture.log_prob(x, params)[:, context:, context:]


def image_log_probs(model: nn.Module, batch: torch.Tensor, context: int = 0) -> torch.Tensor:
    """log p(image) in nats for each image of a uint8 batch (B, C, H, W), counting the pixels
    `scored_log_prob` counts, summed in float64."""
    device = next(model.parameters()).device
    x = mixture.to_unit(batch.to(device))
    return scored_log_prob(x, model(x).float(), context).double().flatten(1).sum(1)


def window_batches(windows: np.ndarray, coded: np.ndarray, batch: int, device: torch.device | str = "cpu"):
    """Windows (N, C, h, w) uint8 as the model reads them, `batch` at a time, on `device`: x in [-1, 1]
    (B, C, h, w) with which of their pixels each codes (B, h, w) bool (WindowPlan.windows, windows_at)."""
    coded = torch.from_numpy(coded)
    for start in range(0, len(windows), batch):
        x = mixture.to_unit(torch.from_numpy(np.ascontiguousarray(windows[start : start + batch])).to(device))
        yield x, coded[start : start + batch].to(device)


@torch.no_grad()
def windowed_nll_bits(model: nn.Module, windows: np.ndarray, coded: np.ndarray, batch: int = 64) -> float:
    """Total -log2 p of the pixels `coded` marks in `windows`, each pixel scored in the window that
    codes it, seeing the rest of that window (its context, its padding) as the codec's model does."""
    total = 0.0
    for x, mask in window_batches(windows, coded, batch, next(model.parameters()).device):
        total -= float(mixture.log_prob(x, model(x).float())[mask].sum())  # (B, h, w) nats per pixel, coded ones
    return total / math.log(2)


def tiled_nll_bits(model: nn.Module, plane: np.ndarray, tile: int, context: int = 0, batch: int = 64) -> float:
    """Total -log2 p of the pixels of `plane` (H, W, C) as the codec codes them: in tiles, each seen
    through a window with `context` already-coded rows above and columns to the left (WindowPlan,
    in the bands tiles.default_band picks), counting every pixel once, in the window that codes it.
    One full forward pass per batch of windows: the NLL the coded stream matches, without coding."""
    band = default_band(plane.shape[0], plane.shape[1], (tile, tile), (context, context))
    plan = WindowPlan.for_image(plane.shape[0], plane.shape[1], (tile, tile), (context, context), band)
    return windowed_nll_bits(model, *plan.windows(plane), batch)


def check_context(context: int, image_shape: tuple[int, ...]) -> None:
    """Refuse a --context that scores nothing (or counts from the wrong end) in images of this shape."""
    if context < 0:
        raise UsageError(f"--context must be 0 or more, got {context}")
    if context >= min(image_shape[-2:]):
        raise UsageError(f"--context {context} leaves nothing to score in {image_shape[-2]}x{image_shape[-1]} images")


def check_counts(limit: int | None, batch_size: int) -> None:
    """Refuse an evaluation of no image, or in batches of none (eval's and bench's options)."""
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be at least 1, got {limit}")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 32,
    limit: int | None = None,
    progress: bool = True,
    log_prob_fn=image_log_probs,
    context: int = 0,
    sharded: bool = False,
    stop: Callable[[], bool] | None = None,
) -> Evaluation:
    """Bits/dim of `model` (eval mode: dropout off) over the first `limit` images of `dataset`.

    `context` > 0 scores each image as the codec scores a window: the first `context` rows and
    columns are only seen, the pixels below and right of them are counted (train --context).

    The total is math.fsum of the per-image float64 NLLs: exactly rounded, whatever their order.
    `sharded` splits the images among the processes of an initialised process group (torchrun;
    distributed.start): each scores a contiguous run of whole batches, the same batches one process
    scores (distributed.batch_share), and every rank gets every image's NLL in order, so the result
    is the same, to the last bit, for any number of processes. Only rank 0 shows a progress bar.
    `stop`, asked before each batch: where it says so, the evaluation ends there (EvaluationStopped).
    """
    check_counts(limit, batch_size)
    rank, world = distributed.rank_world() if sharded else (0, 1)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    mine = distributed.batch_share(n, batch_size, rank, world)
    was_training = model.training
    model.eval()
    nats: list[np.ndarray] = []
    total, dims = 0.0, 0
    bar = progress_bar(total=len(mine), desc="eval", unit="img", enabled=progress and rank == 0, leave=False)
    try:
        for batch in iterate_batches(dataset, batch_size, mine.stop, mine.start):
            if stop is not None and stop():
                raise EvaluationStopped
            nats.append(-log_prob_fn(model, batch, context).double().cpu().numpy())
            total += float(nats[-1].sum())
            dims += batch[0, :, context:, context:].numel() * len(batch)
            bar.update(len(batch))
            bar.set_postfix(bpd=f"{total / (dims * math.log(2)):.4f}")
    finally:
        bar.close()
        model.train(was_training)
    per_image = np.concatenate(nats) if nats else np.zeros(0)
    if world > 1:  # not otherwise: train evaluates on rank 0 alone, inside its process group
        per_image = distributed.gather(per_image)
    shape = dataset[0].shape
    dims = n * shape[-3] * (shape[-2] - context) * (shape[-1] - context)
    total = math.fsum(per_image)
    if not math.isfinite(total):
        raise ModelError(f"the model's likelihood of {np.count_nonzero(~np.isfinite(per_image))} of the {n} images is not "
                         "finite (weights that are not finite numbers?)")
    return Evaluation(mixture.bits_per_dim(total, dims), total, dims, n, per_image)
