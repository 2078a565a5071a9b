"""Calibration: a correction of the network for one image, fitted by the encoder and sent.

A small model trained on a hundred photos is a little off on any given image: its mixtures a little
too wide here, its colour coefficients a little too weak there. Before coding a plane, the encoder
fits, for each of the network's K outputs (mixture logits, means, log-scales, coefficients), a gain
and an offset, and for each of the F features its 1x1 output layer reads, a gain:

    output -> output * (1 + scale) + shift,        feature -> feature * (1 + gain),

that minimise the NLL of a sample of the plane's pixels (MAX_SAMPLE_PIXELS, drawn from at most
MAX_SAMPLE_WINDOWS windows spread evenly over the image; LBFGS_ITERATIONS of L-BFGS), and stores the
2K + F numbers as IEEE binary16 in the plane's header (a tagged field of about 500 bytes for the RGB
model's K = 100, F = 48). Both sides fold them into the integer network's output layer
(integer/network.py), so decoding costs nothing extra. The features the fit reads are the integer
network's own, the ones the coder's output layer will read: the calibration changes only that layer,
so the sample windows' features are computed once, fitted on, and handed to the encoder's pass
(`Sample.windows`), which does not compute them again. What the calibration adds to encoding is thus
the L-BFGS iterations, each an evaluation of the sample's NLL and its gradient: compiled
(calibration_objective.py: calibrated_nll, tested against mixture.pixel_log_prob and torch's
autograd), so that no encode imports torch (most of a command's start-up) and the pixels are shared
among the coding threads. The encoder does not try where a typical saving would not repay the header
twice (a 256 x 256 crop saved 0.05% for twice the encode time), and keeps a calibration only where
the bits it saves on the sample, scaled to the whole plane, exceed what it costs in the header.

Why these settings: results/calibration.md (the 12 held-out images' NLL, header paid, by what is
fitted, on how large a sample, after how many iterations, and what the fit takes).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from .. import mixture
from ..integer.arithmetic import ONE
from ..integer.mixture import mixture_count
from ..integer.network import IntegerPixelSNAIL, effective_weight
from . import coder
from .container import BINARY16_MAX, MAX_CALIBRATION_FEATURES, MAX_CALIBRATION_OUTPUTS
from .tiles import WindowPlan

MAX_SAMPLE_WINDOWS = 128  # windows the network runs on for the fit: the larger the spread, the better the fit
#: pixels of those windows the fit scores (a fixed-seed draw) and L-BFGS iterations it takes: the fit is far
#: from converged at any affordable count, so time goes further in iterations than in pixels: 60 on 16,384
#: take more off the held-out images than 30 on 65,536, in less fitting time (fewer pixels begin to
#: overfit: results/calibration.md)
MAX_SAMPLE_PIXELS = 16384
LBFGS_ITERATIONS = 60
#: bits per subpixel a calibration typically saves, header paid: the median of the 12 held-out images
#: when it was set (0.007 to 0.078); with the feature gains 0.005 to 0.087, median 0.017 (snail-rgb
#: 0e414a9c), and 0.003 to 0.087, median 0.016, for snail-rgb ff7d3a5d (results/calibration.md); fitted
#: by 60 iterations on 16,384 pixels 0.010 to 0.095, median 0.021 (kept: too low errs towards not trying).
#: Planes too small to save twice the header at this rate are not tried.
TYPICAL_SAVING_BITS = 0.015


@dataclass(frozen=True)
class Calibration:
    """Per-output gain (1 + scale) and offset (shift), and per-feature gain (1 + feature_gain; none
    when only the outputs were fitted), each exactly a binary16 number."""

    scale: tuple[float, ...]
    shift: tuple[float, ...]
    feature_gain: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not 1 <= len(self.scale) == len(self.shift) <= MAX_CALIBRATION_OUTPUTS:
            raise ValueError(f"a calibration needs 1 to {MAX_CALIBRATION_OUTPUTS} (scale, shift) pairs")
        if len(self.feature_gain) > MAX_CALIBRATION_FEATURES:
            raise ValueError(f"a calibration has at most {MAX_CALIBRATION_FEATURES} feature gains")

    @property
    def outputs(self) -> int:
        return len(self.scale)

    @property
    def features(self) -> int:
        return len(self.feature_gain)

    @property
    def header_bits(self) -> int:
        return header_bits(self.outputs, self.features)

    def numbers(self) -> tuple[tuple[float, ...], ...]:
        """As the container's Plane.calibration holds it."""
        return self.scale, self.shift, self.feature_gain


def header_bits(outputs: int, features: int) -> int:
    """What a calibration adds to the header: one binary16 number per feature and two per output
    (the counts' varints aside)."""
    return 8 * 2 * (2 * outputs + features)


def _to_binary16(numbers: np.ndarray) -> np.ndarray:
    """Round to binary16 (finite, and +0 rather than -0: one encoding per value)."""
    return np.clip(numbers, -BINARY16_MAX, BINARY16_MAX).astype(np.float16).astype(np.float64) + 0.0


@dataclass(frozen=True)
class OutputLayer:
    """The float model's 1x1 output layer, as the fit reads it: weight (K, F) and bias (K,), float64."""

    weight: np.ndarray
    bias: np.ndarray

    @classmethod
    def from_weights(cls, weights: Mapping[str, np.ndarray]) -> OutputLayer:
        """From a model's parameters by name (zoo.LoadedModel.weights, network.module_weights): the
        head's weight-normalised g * v / |v| and its bias, without torch."""
        return cls(effective_weight(weights["head.v"], weights["head.g"]), np.asarray(weights["head.b"], np.float64))

    @property
    def outputs(self) -> int:
        return self.weight.shape[0]

    @property
    def features(self) -> int:
        return self.weight.shape[1]


def sample_windows(plan: WindowPlan, windows: int = MAX_SAMPLE_WINDOWS) -> tuple[np.ndarray, np.ndarray]:
    """Row and column numbers of at most `windows` of the plan's windows, evenly spread in raster order."""
    count = plan.rows * plan.cols
    pick = np.unique(np.linspace(0, count - 1, min(count, windows)).round().astype(np.int64))
    return pick // plan.cols, pick % plan.cols


@dataclass
class Sample:
    """Pixels to fit a calibration on: what the output layer reads there (P, F) in its units (the
    integer network's Q.12 features / 2**12, exact in float64) and their values as bin centres in
    [-1, 1] (P, C); and, where kept, every feature (H * W, F) of the windows they come from, by
    (window row, window column), in Q.12 (float32), for the encoder (coder.code_plane's `kept`)."""

    features: np.ndarray
    values: np.ndarray
    windows: dict = field(default_factory=dict)


def sample_pixels(net: IntegerPixelSNAIL, plan: WindowPlan, plane: np.ndarray, windows: int = MAX_SAMPLE_WINDOWS,
                  pixels: int | None = MAX_SAMPLE_PIXELS, keep: bool = False) -> Sample:
    """At most `pixels` pixels (None: all) drawn with a fixed seed from those that `windows` sample
    windows of `plane` (H, W, C) code, with what `net`'s output layer reads there; `keep`: keep the
    windows' features."""
    rows, cols = sample_windows(plan, windows)
    images, coded = plan.windows_at(plane, rows, cols)
    features, values, kept = [], [], {}
    for part in coder.chunk_windows(net, len(rows), plan.positions):
        computed = np.asarray(coder._numpy(net.features(images[part])), np.float64)  # (n, H, W, F), Q.12
        mask = coded[part]
        features.append(computed[mask] / ONE)
        values.append((images[part].transpose(0, 2, 3, 1)[mask] - 127.5) / 127.5)  # mixture.to_unit
        if keep:
            kept.update(((i, j), f.reshape(-1, f.shape[-1]).astype(np.float32))
                        for i, j, f in zip(rows[part].tolist(), cols[part].tolist(), computed))
    return Sample(*draw_pixels(np.concatenate(features), np.concatenate(values), pixels), kept)


def draw_pixels(features: np.ndarray, values: np.ndarray, pixels: int | None) -> tuple[np.ndarray, np.ndarray]:
    """At most `pixels` of these pixels (None: all), drawn with a fixed seed, in their order."""
    if pixels is not None and len(values) > pixels:
        pick = np.sort(np.random.default_rng(0).choice(len(values), pixels, replace=False))
        features, values = features[pick], values[pick]
    return np.ascontiguousarray(features), np.ascontiguousarray(values)


def head_nll(layer: OutputLayer, features: np.ndarray, values: np.ndarray, scale: np.ndarray, shift: np.ndarray,
             feature_gain: np.ndarray, gradient: bool = False) -> tuple[float, tuple[np.ndarray, ...] | None]:
    """NLL in nats of pixels whose output layer reads `features` (P, F), under a calibration given as
    arrays (zeros: none): the outputs z = (features * (1 + feature_gain)) @ weight.T + bias, scaled
    by (1 + scale) and shifted; with `gradient`, also its gradient with respect to scale, shift and
    feature_gain. Compiled (calibration_objective.py: calibrated_nll), so that encoding never imports
    torch; from the sum of G, the NLL's gradient with respect to the calibrated outputs, and C = G.T
    @ features: d shift = sum_i G_i, d scale_k = sum_i G_ik z_ik = sum_f weight_kf (1 +
    feature_gain_f) C_kf + bias_k d shift_k, and d feature_gain_f = sum_k (1 + scale_k) weight_kf C_kf."""
    from .calibration_objective import calibrated_nll  # numba: imported where first needed

    nll, d_shift, products = calibrated_nll(features, layer.weight, layer.bias, scale, shift, feature_gain, values,
                                            mixture_count(layer.outputs, values.shape[1]), gradient)
    if not gradient:
        return float(nll.sum()), None
    d_scale = (layer.weight * products) @ (1.0 + feature_gain) + layer.bias * d_shift
    d_gain = (1.0 + scale) @ (layer.weight * products)
    return float(nll.sum()), (d_scale, d_shift, d_gain)


def _arrays(layer: OutputLayer, calibration: Calibration | None) -> list[np.ndarray]:
    zeros = [np.zeros(layer.outputs), np.zeros(layer.outputs), np.zeros(layer.features)]
    if calibration is None:
        return zeros
    return [np.array(calibration.scale), np.array(calibration.shift),
            np.array(calibration.feature_gain) if calibration.features else zeros[2]]


def nll_bits(layer: OutputLayer, features: np.ndarray, values: np.ndarray, calibration: Calibration | None) -> float:
    """Bits of the pixels whose output layer reads `features` (P, F), under `calibration` (None: the model as it is)."""
    return head_nll(layer, features, values, *_arrays(layer, calibration))[0] / math.log(2)


def fit(layer: OutputLayer, features: np.ndarray, values: np.ndarray,
        feature_gains: bool = True, iterations: int = LBFGS_ITERATIONS) -> Calibration | None:
    """The calibration (rounded to binary16) that minimises the NLL of these pixels (None where the
    fit failed) in at most `iterations` iterations of SciPy's L-BFGS-B (keeping 100 past steps);
    `feature_gains=False` fits the outputs' gains and offsets only (benchmarks/calibration.py)."""
    from scipy.optimize import minimize  # imported where first needed

    zeros = _arrays(layer, None)
    sizes = [len(n) for n in (zeros if feature_gains else zeros[:2])]
    scored = max(values.size, 1)

    def loss_and_gradient(flat: np.ndarray) -> tuple[float, np.ndarray]:
        numbers = [*np.split(flat, np.cumsum(sizes)[:-1]), *zeros[len(sizes):]]
        nats, gradients = head_nll(layer, features, values, *numbers, gradient=True)
        return nats / scored, np.concatenate(gradients[: len(sizes)]) / scored

    result = minimize(loss_and_gradient, np.zeros(sum(sizes)), jac=True, method="L-BFGS-B",
                      options={"maxiter": iterations, "maxfun": iterations * 5 // 4, "maxcor": 100})
    numbers = [_to_binary16(n) for n in np.split(result.x, np.cumsum(sizes)[:-1])]
    if not all(np.isfinite(n).all() for n in numbers):
        return None
    return Calibration(*(tuple(n.tolist()) for n in numbers))


def fit_calibration(layer: OutputLayer, sample: Sample, plane_pixels: int) -> tuple[Calibration | None, float]:
    """Fit a calibration of the float model's output layer on a sample of a plane's pixels; returns
    it with the bits it is estimated to save on the whole plane (`plane_pixels` pixels), net of its
    header cost (None, -inf where the fit failed)."""
    features, values = sample.features, sample.values
    calibration = fit(layer, features, values)
    if calibration is None:
        return None, -math.inf
    saved = nll_bits(layer, features, values, None) - nll_bits(layer, features, values, calibration)
    if not math.isfinite(saved):
        return None, -math.inf
    return calibration, saved * (plane_pixels / max(len(values), 1)) - calibration.header_bits


def worth_trying(config, plane: np.ndarray) -> bool:
    """Whether the plane is large enough for a typical calibration to repay its header twice, for a
    PixelSNAIL of this config (its head reads `filters` features)."""
    return plane.size * TYPICAL_SAVING_BITS >= 2 * header_bits(mixture.num_params(config.channels, config.mixtures),
                                                               config.filters)


def calibration_for(config, weights: Mapping[str, np.ndarray], plan: WindowPlan, plane: np.ndarray,
                    net: IntegerPixelSNAIL | None = None) -> tuple[Calibration | None, dict]:
    """The calibration the encoder sends for this plane (None where it would not pay), and the sample
    windows' features, which the encoder takes instead of computing them again (code_plane's `kept`),
    for the PixelSNAIL of this config and parameters (by name, as a model file holds them). `net`:
    that model as the integer network (made here if not given)."""
    if not worth_trying(config, plane):
        return None, {}
    net = net if net is not None else IntegerPixelSNAIL.from_weights(config, weights)
    sample = sample_pixels(net, plan, plane, keep=True)
    calibration, net_bits = fit_calibration(OutputLayer.from_weights(weights), sample, plane.shape[0] * plane.shape[1])
    return (calibration if net_bits > 0 else None), sample.windows
