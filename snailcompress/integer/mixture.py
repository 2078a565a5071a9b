"""The discretized logistic mixture in integers: frequency tables for the range coder.

The integer twin of snailcompress.mixture's `PixelConditionals`: the same model (one component
indicator shared by the channels; the G mean shifted by alpha r, the B mean by beta r + gamma g; bin 0
and bin 255 take the tails), the same sequential conditionals (R; G given R; B given R and G, with
the component weights updated to their posterior after each known channel), computed from the
network's Q.12 outputs with integer arithmetic only (arithmetic.py):

* component weights: exp(logit - max) from the Q.16 exp table, normalised to sum to at most 2**16
  (floor division); a posterior multiplies them by each component's Q.20 probability of the known
  value and normalises again (the prior's weights where every component gives that value 0);
* the logistic CDF of component k at the edge between values v - 1 and v, in pixel units where the
  edges are the half-integers v - 1/2: z = (v - 1/2 - mean) / scale with the mean on the 0..255
  scale (Q.13, exact from the Q.12 mean) and 1/scale from a table of the log-scale (Q.26); the CDF
  (Q.20) from a table of the sigmoid at z floored to a multiple of 1/8192;
* the mixture's cumulative count below v: floor(sum_k w_k cdf_k * TOTAL / (sum_k w_k * 2**20)),
  0 below value 0 and TOTAL = 2**24 - 256 above 255, so every table sums to TOTAL exactly and the
  range coder (which adds 1 to each count) gives every value a non-zero probability.

`symbol_bounds` computes, for known values, only the two cumulative counts that bound each value:
exactly the entries of the full table (`tables`), at 2/255 of the cost. The encoder needs no more,
and the decoder finds each value by searching those counts at a few edges (integer/kernels.py).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from ..lazy import torch
from ..mixture import num_params
from . import arithmetic as ar
from .arithmetic import ONE

EDGE_ONE = 2 * ONE  # the CDF's arguments are Q.13 on the 0..255 scale
_Z_FRACTION = ar.INVERSE_SCALE_BITS + ar.ACTIVATION_BITS + 1  # z = (edge - mean) * inverse scale, Q.39
TABLE_CENTRE = ar.CDF_Z_LIMIT << ar.CDF_TABLE_STEP_BITS  # index of z = 0 in the CDF table
CDF_ONE = 1 << ar.CDF_BITS
WEIGHT_ONE = 1 << ar.ATTENTION_WEIGHT_BITS
INVERSE_TO_GRID = math.ldexp(1.0, ar.CDF_TABLE_STEP_BITS - _Z_FRACTION)  # 1/scale in Q.26 -> steps of the CDF table


def _normalise(weights: torch.Tensor) -> torch.Tensor:
    """(N, M) non-negative integers -> floor(w * 2**16 / sum w) (int64, exact); a zero row stays zero."""
    w = weights.to(torch.int64)
    total = w.sum(dim=1, keepdim=True)
    return torch.div(w * WEIGHT_ONE, total.clamp(min=1), rounding_mode="floor")


@dataclass
class _TorchParts:
    t: dict[str, torch.Tensor]  # the arithmetic's tables on the parameters' device
    means: torch.Tensor  # (N, C, M) Q.12, before the autoregressive shift
    inverse_scales: torch.Tensor  # (N, C, M): 1/scale on the CDF table's grid
    coeffs: torch.Tensor | None  # (N, 3, M) Q.12: alpha, beta, gamma (RGB)
    posteriors: list[torch.Tensor]  # the component weights (N, M) int64 of channels 0, 1, ...: the prior first


def mixture_count(outputs: int, channels: int) -> int:
    """The components of a mixture that `outputs` network outputs parameterise for `channels`."""
    m = outputs // (1 + channels * (3 if channels == 3 else 2))
    if num_params(channels, m) != outputs:
        raise ValueError(f"{outputs} outputs do not fit a {channels}-channel mixture")
    return m


class IntegerConditionals:
    """Per-channel integer frequency tables of N pixels, from their Q.12 mixture parameters (N, K)."""

    def __init__(self, params, channels: int, compiled: bool | None = None):
        """`params`: a numpy array or a tensor. `compiled`: compute `symbol_bounds` with
        integer/kernels.py (the default for an array or a CPU tensor) instead of torch; the same
        integers either way (`tables` is the torch code's)."""
        self.channels = channels
        self.compiled = (isinstance(params, np.ndarray) or params.device.type == "cpu") if compiled is None else compiled
        # what each way reads: float64 numpy for the kernels, a tensor for torch
        self.params = np.ascontiguousarray(params, np.float64) if self.compiled else torch.as_tensor(params)
        self.mixtures = mixture_count(params.shape[1], channels)

    @functools.cached_property
    def _parts(self) -> _TorchParts:
        """What the torch code reads, made on first use (the compiled counts read the parameters)."""
        t = ar.on(str(self.params.device))  # the torch code's: self.params is a tensor
        n, m, channels = len(self.params), self.mixtures, self.channels
        logits = self.params[:, :m]
        per_channel = self.params[:, m:].reshape(n, channels, -1)
        distance = (logits.amax(dim=1, keepdim=True) - logits).clamp_(0, ar.EXP_INPUT_LIMIT)
        log_scales = per_channel[..., m : 2 * m].clamp(-ar.LOG_SCALE_LIMIT, ar.LOG_SCALE_LIMIT)
        # 1/scale in Q.26, times 2**-(39 - 13): (edge - mean) * this is z on the CDF table's grid, exactly
        inverse_scales = t["inverse_scale"][(log_scales + ar.LOG_SCALE_LIMIT).long()].mul_(INVERSE_TO_GRID)
        coeffs = None
        if channels == 3:
            raw = per_channel[..., 2 * m :].clamp(-ar.TANH_INPUT_LIMIT, ar.TANH_INPUT_LIMIT)
            coeffs = t["tanh"][(raw + ar.TANH_INPUT_LIMIT).long()]
        prior = _normalise(t["exp16"][distance.long()])
        return _TorchParts(t, per_channel[..., :m], inverse_scales, coeffs, [prior])

    def _mean(self, c: int, known: torch.Tensor | None) -> torch.Tensor:
        """Channel c's component means (N, M) on the 0..255 scale, Q.13, given values of channels < c."""
        parts = self._parts
        mean = parts.means[:, c]
        if c:
            x = parts.t["pixels"][known.long()]  # (N, >= c) Q.12
            if c == 1:
                shift = parts.coeffs[:, 0] * x[:, 0:1]
            else:
                shift = parts.coeffs[:, 1] * x[:, 0:1] + parts.coeffs[:, 2] * x[:, 1:2]
            mean = mean + shift.add_(ONE // 2).mul_(1.0 / ONE).floor_()  # Q.24 -> Q.12, half up
        return (mean.clamp(-ar.MEAN_LIMIT, ar.MEAN_LIMIT) + ONE) * 255  # (mean + 1) * 127.5 in Q.13

    def _cdf(self, c: int, known: torch.Tensor | None, edges: torch.Tensor) -> torch.Tensor:
        """Component CDFs (N, M, E), Q.20, at edges given as values v (the edge v - 1/2), 1 <= v <= 255;
        edges: (E,) for every pixel or (N, E)."""
        position = edges.to(torch.float64) * EDGE_ONE - ONE  # Q.13
        position = position.view(1, 1, -1) if edges.dim() == 1 else position.unsqueeze(1)
        inverse = self._parts.inverse_scales[:, c].unsqueeze(-1)
        # z + centre = position * inverse + (centre - mean * inverse), in one pass: every product and sum
        # is exact (multiples of 2**-26 below 2**51), so this is exactly (position - mean) * inverse + centre
        offset = torch.addcmul(torch.full_like(inverse, TABLE_CENTRE), self._mean(c, known).unsqueeze(-1), inverse, value=-1)
        shifted = torch.addcmul(offset, position, inverse)
        index = shifted.clamp_(0, 2 * TABLE_CENTRE).to(torch.int32)  # >= 0: truncation floors
        return self._parts.t["cdf"].index_select(0, index.view(-1)).view(index.shape)

    def _weights(self, c: int, known: torch.Tensor | None) -> torch.Tensor:
        """Component weights (N, M) int64 for channel c: the prior, updated by each known channel.
        Kept per channel: an object's known values are those of its pixels, the same in every call."""
        posteriors = self._parts.posteriors
        while len(posteriors) <= c:
            prev = len(posteriors) - 1
            weights = posteriors[prev]
            probability = self._bin_probability(prev, known, known[:, prev].long())
            posterior = _normalise(weights * probability)
            posteriors.append(torch.where(posterior.sum(dim=1, keepdim=True) > 0, posterior, weights))
        return posteriors[c]

    def _bin_probability(self, c: int, known: torch.Tensor | None, value: torch.Tensor) -> torch.Tensor:
        """Each component's Q.20 probability (N, M) int64 of value (N,) in channel c."""
        low, high = _ends(value, self._cdf(c, known, _edges(value)).to(torch.int64), CDF_ONE)
        return high - low

    def _cumulative(self, c: int, known: torch.Tensor | None, edges: torch.Tensor) -> torch.Tensor:
        """The mixture's cumulative counts (N, E) int64 below the edges (v - 1/2 for v in `edges`,
        (E,) or (N, E)): floor(sum_k w_k cdf_k * TOTAL / (sum_k w_k * 2**20))."""
        weights = self._weights(c, known)
        mixed = torch.bmm(weights.to(torch.float64).unsqueeze(1), self._cdf(c, known, edges)).squeeze(1)
        total = weights.sum(dim=1, keepdim=True) * CDF_ONE
        return torch.div(mixed.to(torch.int64) * ar.TABLE_TOTAL, total, rounding_mode="floor")

    def tables(self, c: int, known=None):
        """Counts (N, 256) int64 of channel c given the values (N, >= c) of channels < c; every row
        sums to TABLE_TOTAL. From the torch code (a numpy array where the parameters were, else a
        tensor): the reference for the coder, which reads only each value's two cumulative counts
        (`symbol_bounds`, and the decoder's search in integer/kernels.py)."""
        if self.compiled:
            reference = IntegerConditionals(torch.from_numpy(self.params), self.channels, compiled=False)
            return reference.tables(c, None if known is None else np.asarray(known)).numpy()
        known = None if known is None else torch.as_tensor(known).to(self.params.device)
        cumulative = self._cumulative(c, known, torch.arange(1, 256, device=self.params.device))
        zero = torch.zeros(cumulative.shape[0], 1, dtype=torch.int64, device=cumulative.device)
        return torch.cat([zero, cumulative, torch.full_like(zero, ar.TABLE_TOTAL)], dim=1).diff(dim=1)

    def symbol_bounds(self, values) -> tuple[np.ndarray, np.ndarray]:
        """(start, count) int64 numpy arrays (N, C) of every channel's value in values (N, C): the
        cumulative count below it and its count in `tables(c, values[:, :c])`, computed at its two
        edges only (compiled: all channels in one kernel call)."""
        if self.compiled:
            from . import kernels  # numba: imported where first needed

            values = np.ascontiguousarray(values, np.int64)
            return kernels.symbol_bounds(self.params, values, self.mixtures, self.channels)
        values = torch.as_tensor(np.asarray(values)).to(self.params.device).long()
        lows, counts = [], []
        for c in range(self.channels):
            low, high = _ends(values[:, c], self._cumulative(c, values, _edges(values[:, c])), ar.TABLE_TOTAL)
            lows.append(low)
            counts.append(high - low)
        return torch.stack(lows, dim=1).cpu().numpy(), torch.stack(counts, dim=1).cpu().numpy()


def _edges(value: torch.Tensor) -> torch.Tensor:
    """The two edges (N, 2) around each value (N,): v and v + 1, clamped to the interior edges 1..255."""
    return torch.stack([value, value + 1], dim=1).clamp(1, 255)


def _ends(value: torch.Tensor, at_edges: torch.Tensor, top: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A CDF below and above each value from its values at `_edges(value)` (..., 2): 0 below value 0
    and `top` above value 255, where those edges are the tails."""
    value = value.view(-1, *[1] * (at_edges.dim() - 2))
    return torch.where(value == 0, 0, at_edges[..., 0]), torch.where(value == 255, top, at_edges[..., 1])
