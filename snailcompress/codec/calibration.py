"""Calibration: a correction of the network's outputs for one image, fitted by the encoder and sent.

A small model trained on a hundred photos is a little off on any given image: its mixtures a little
too wide here, its colour coefficients a little too weak there. Before coding a plane, the encoder
fits, for each of the network's K outputs (mixture logits, means, log-scales, coefficients), a gain
and an offset,

    output -> output * (1 + scale) + shift,

that minimise the NLL of a sample of the plane's windows (at most MAX_SAMPLE_WINDOWS, spread evenly
over the image), and stores the 2K numbers as IEEE binary16 in the plane's header (format version 4:
400 bytes for the RGB model's K = 100). Both sides fold them into the model's 1x1 output layer
(`calibrated`), so decoding costs nothing extra and encoding one forward pass over the sample and a
few seconds of L-BFGS. The encoder does not try where a typical saving would not repay the header
twice (a 256 x 256 crop saved 0.05% for twice the encode time), and keeps a calibration only where
the bits it saves on the sample, scaled to the whole plane, exceed what it costs in the header.
What it buys, and costs: results/default_model_heldout_variants.md, results/codec_speed.md.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch

from .. import mixture
from .container import BINARY16_MAX, MAX_CALIBRATION_OUTPUTS
from .tiles import WindowPlan

MAX_SAMPLE_WINDOWS = 64  # windows the fit sees; 200 numbers need far fewer than 64 x 32 x 32 pixels
LBFGS_ITERATIONS = 30
#: bits per subpixel a calibration typically saves, header paid: the median of the 12 held-out images
#: when it was set (0.007 to 0.078; with today's snail-rgb 0.005 to 0.080, median 0.014,
#: results/default_model_heldout_variants.md); planes too small to save twice the
#: header at this rate are not tried.
TYPICAL_SAVING_BITS = 0.015


@dataclass(frozen=True)
class Calibration:
    """Per-output gain (1 + scale) and offset (shift), each exactly a binary16 number."""

    scale: tuple[float, ...]
    shift: tuple[float, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.scale) == len(self.shift) <= MAX_CALIBRATION_OUTPUTS:
            raise ValueError(f"a calibration needs 1 to {MAX_CALIBRATION_OUTPUTS} (scale, shift) pairs")

    @property
    def outputs(self) -> int:
        return len(self.scale)

    @property
    def header_bits(self) -> int:
        return header_bits(self.outputs)


def header_bits(outputs: int) -> int:
    """What a calibration of `outputs` outputs adds to the header: two binary16 numbers per output
    (the count's varint aside)."""
    return 8 * 2 * 2 * outputs


def calibrated(model: torch.nn.Module, calibration: Calibration) -> torch.nn.Module:
    """A copy of `model` whose outputs are `output * (1 + scale) + shift`, folded into its head (a
    weight-normalised 1x1 conv: gain g and bias b scale, b shifts), so it runs as fast as `model`."""
    head = model.head
    if head.b.numel() != calibration.outputs:
        raise ValueError(f"the calibration is for {calibration.outputs} outputs, the model has {head.b.numel()}")
    gain = 1.0 + torch.tensor(calibration.scale, dtype=torch.float64)
    shift = torch.tensor(calibration.shift, dtype=torch.float64)
    out = copy.deepcopy(model)
    with torch.no_grad():
        out.head.g.copy_(head.g.double() * gain)
        out.head.b.copy_(head.b.double() * gain + shift)
    return out


def _to_binary16(t: torch.Tensor) -> torch.Tensor:
    """Round to binary16 (finite, and +0 rather than -0: one encoding per value)."""
    return t.detach().clamp(-BINARY16_MAX, BINARY16_MAX).half().float() + 0.0


def sample_windows(plan: WindowPlan, plane: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At most MAX_SAMPLE_WINDOWS of the plan's windows of `plane` (H, W, C), evenly spread in raster
    order, and which pixels each codes (WindowPlan.windows_at)."""
    count = plan.rows * plan.cols
    pick = np.unique(np.linspace(0, count - 1, min(count, MAX_SAMPLE_WINDOWS)).round().astype(np.int64))
    return plan.windows_at(plane, pick // plan.cols, pick % plan.cols)


def fit_calibration(model: torch.nn.Module, plan: WindowPlan, plane: np.ndarray) -> tuple[Calibration | None, float]:
    """Fit a calibration on a sample of the plan's windows of `plane` (H, W, C); returns it with the
    bits it is estimated to save on the whole plane, net of its header cost (None, -inf where the
    fit failed)."""
    windows, coded = sample_windows(plan, plane)
    x = mixture.to_unit(torch.from_numpy(windows))
    mask = torch.from_numpy(coded)
    with torch.no_grad():
        raw = model.eval()(x)
    outputs = raw.shape[1]

    def nll_nats(scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        params = raw * (1.0 + scale)[None, :, None, None] + shift[None, :, None, None]
        return -mixture.log_prob(x, params)[mask].sum()

    scale = torch.zeros(outputs, requires_grad=True)
    shift = torch.zeros(outputs, requires_grad=True)
    scored = max(int(mask.sum()) * x.shape[1], 1)
    optimizer = torch.optim.LBFGS([scale, shift], max_iter=LBFGS_ITERATIONS, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nll_nats(scale, shift) / scored
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    scale, shift = _to_binary16(scale), _to_binary16(shift)
    with torch.no_grad():
        zero = torch.zeros(outputs)
        saved_nats = float(nll_nats(zero, zero) - nll_nats(scale, shift))
    if not (math.isfinite(saved_nats) and scale.isfinite().all() and shift.isfinite().all()):
        return None, -math.inf
    calibration = Calibration(tuple(scale.tolist()), tuple(shift.tolist()))
    saved_bits = saved_nats / math.log(2) * (plane.shape[0] * plane.shape[1] / max(int(mask.sum()), 1))
    return calibration, saved_bits - calibration.header_bits


def worth_trying(model: torch.nn.Module, plane: np.ndarray) -> bool:
    """Whether the plane is large enough for a typical calibration to repay its header twice."""
    return plane.size * TYPICAL_SAVING_BITS >= 2 * header_bits(model.head.b.numel())


def calibration_for(model: torch.nn.Module, plan: WindowPlan, plane: np.ndarray) -> Calibration | None:
    """The calibration the encoder sends for this plane, or None where it would not pay."""
    if not worth_trying(model, plane):
        return None
    calibration, net_bits = fit_calibration(model, plan, plane)
    return calibration if net_bits > 0 else None
