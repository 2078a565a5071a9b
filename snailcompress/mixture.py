"""The discretized logistic mixture likelihood, written once for the loss, the sampler and the coder.

A pixel with C channels (C = 3, RGB, or C = 1, grayscale) has M mixture components sharing ONE
component indicator. Within component k the channels are logistics whose means are linear in the
channels already known (Salimans et al. 2017, PixelCNN++):

    mu_R = m_R,k      mu_G = m_G,k + alpha_k r      mu_B = m_B,k + beta_k r + gamma_k g

with r, g the true values scaled to [-1, 1], alpha, beta, gamma = tanh(raw). A value v in 0..255 is
the bin [(v - 128)/127.5, (v - 127)/127.5] around its centre (v - 127.5)/127.5; bin 0 takes the
whole left tail and bin 255 the whole right tail.

Channel layout of the network output (N, K, ...) with K = (1 + 3C) M for C = 3 and 3M for C = 1,
read in pixel-last order exactly as the reference code reads its NHWC tensors:

    [0, M)              mixture logits
    [M + s*c, M + s*c + s), s = slot size, for channel c:
        means (M), log-scales (M, clamped below at -7), and for C = 3 raw coefficients (M):
        slot c=0 holds alpha (R->G), c=1 beta (R->B), c=2 gamma (G->B).

Departure from the reference: the probability of a bin is computed in closed form as
log(sigmoid(a) - sigmoid(b)) = logsigmoid(a) + logsigmoid(-b) + log(1 - exp(b - a)), which is exact
and stable everywhere; the reference switches to a mid-bin density approximation when the mass
falls below 1e-5. The two agree wherever the reference takes the exact branch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .lazy import F, torch  # imported when first used: the integer codec reads num_params only

LOG_SCALE_MIN = -7.0
BIN_HALF_WIDTH = 1.0 / 255.0  # half of the bin width 2/255 on the [-1, 1] scale


def num_params(channels: int, mixtures: int) -> int:
    """Number of network outputs per pixel: 10M for RGB (the reference), 3M for grayscale."""
    return mixtures * (1 + channels * _slot(channels))


def _slot(channels: int) -> int:
    if channels == 3:
        return 3
    if channels == 1:
        return 2
    raise ValueError(f"the mixture likelihood supports 1 or 3 channels, not {channels}")


@dataclass
class Mixture:
    """Unpacked parameters for any leading shape (...): pixels on the leading axes."""

    log_weights: torch.Tensor  # (..., M), log-softmax of the logits
    means: torch.Tensor  # (..., C, M), before the autoregressive shift
    log_scales: torch.Tensor  # (..., C, M), clamped below at -7
    coeffs: torch.Tensor | None  # (..., 3, M): alpha, beta, gamma (tanh applied); None for C = 1

    @property
    def channels(self) -> int:
        return self.means.shape[-2]

    def channel_means(self, c: int, known: torch.Tensor) -> torch.Tensor:
        """Means (..., M) of channel c given the true values `known` (..., >= c) of channels < c."""
        mean = self.means[..., c, :]
        if c == 1:
            mean = mean + self.coeffs[..., 0, :] * known[..., 0:1]
        elif c == 2:
            mean = mean + self.coeffs[..., 1, :] * known[..., 0:1] + self.coeffs[..., 2, :] * known[..., 1:2]
        return mean


def unpack(params: torch.Tensor, channels: int, pixel_last: bool = False) -> Mixture:
    """Split network outputs into mixture parameters.

    params: (B, K, H, W) as the networks return them, or (N, K) with `pixel_last=True`
    (one row per pixel, e.g. one decoding step of a batch).
    """
    if not pixel_last:
        params = params.permute(0, 2, 3, 1)
    slot = _slot(channels)
    m = params.shape[-1] // (1 + channels * slot)
    if params.shape[-1] != num_params(channels, m):
        raise ValueError(f"{params.shape[-1]} outputs do not fit a {channels}-channel mixture")
    per_channel = params[..., m:].reshape(*params.shape[:-1], channels, slot * m)
    return Mixture(
        log_weights=F.log_softmax(params[..., :m], dim=-1),
        means=per_channel[..., :m],
        log_scales=per_channel[..., m : 2 * m].clamp(min=LOG_SCALE_MIN),
        coeffs=torch.tanh(per_channel[..., 2 * m : 3 * m]) if channels == 3 else None,
    )


def to_unit(values: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Integer values 0..255 -> bin centres in [-1, 1] (the networks' input scaling), float32 by default."""
    return (values.to(dtype or torch.float32) - 127.5) / 127.5


def bin_log_prob(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(bin of x) under a logistic(mean, exp(log_scale)); x is a bin centre in [-1, 1]."""
    inv_scale = torch.exp(-log_scale)
    centered = x - mean
    plus = inv_scale * (centered + BIN_HALF_WIDTH)
    minus = inv_scale * (centered - BIN_HALF_WIDTH)
    width = (plus - minus).clamp(min=1e-30)  # = 2/255 / scale > 0
    interior = F.logsigmoid(plus) + F.logsigmoid(-minus) + torch.log(-torch.expm1(-width))
    left_tail = F.logsigmoid(plus)  # bin 0: P(X < -1 + 1/255)
    right_tail = F.logsigmoid(-minus)  # bin 255: P(X > 1 - 1/255)
    return torch.where(x < -0.999, left_tail, torch.where(x > 0.999, right_tail, interior))


def pixel_log_prob(x: torch.Tensor, mix: Mixture) -> torch.Tensor:
    """log p(pixel) in nats. x: (..., C) bin centres; mix: parameters with the same leading shape."""
    x = x.unsqueeze(-1)  # (..., C, 1) broadcasts over components
    per_component = mix.log_weights
    for c in range(mix.channels):
        mean = mix.channel_means(c, x[..., 0])
        per_component = per_component + bin_log_prob(x[..., c, :], mean, mix.log_scales[..., c, :])
    return torch.logsumexp(per_component, dim=-1)


def log_prob(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Per-pixel log-likelihood in nats, (B, H, W). x: (B, C, H, W) in [-1, 1]; params: network output."""
    mix = unpack(params, x.shape[1])
    return pixel_log_prob(x.permute(0, 2, 3, 1), mix)


def bits_per_dim(total_nll_nats: float | torch.Tensor, num_dims: int) -> float | torch.Tensor:
    """Total negative log-likelihood in nats -> bits per sub-pixel (dimension)."""
    return total_nll_nats / (num_dims * math.log(2.0))


# ---------------------------------------------------------------------------------------------
# Sequential per-channel distributions: the sampler and the coder


def bin_edges(dtype: torch.dtype | None = None, device=None) -> torch.Tensor:
    """The 255 interior edges between bins 0..255 on the [-1, 1] scale (float64 by default)."""
    v = torch.arange(1, 256, dtype=dtype or torch.float64, device=device)
    return (v - 128.0) / 127.5


class PixelConditionals:
    """The per-channel 256-bin distributions of N pixels: R, then G | R, then B | R, G.

    The joint is a mixture with one shared indicator, so after seeing r the component weights become
    the posterior w_k ∝ pi_k P_k(r) (reference section 6.2); the product of the conditionals equals
    the joint exactly, so the ideal code length equals the model's NLL.
    """

    def __init__(self, params: torch.Tensor, channels: int, dtype: torch.dtype | None = None):
        """params: (N, K) network outputs of N pixels (e.g. one decoding step for a batch); float64 by default."""
        dtype = dtype or torch.float64
        self.mix = unpack(params.to(dtype), channels, pixel_last=True)
        self.edges = bin_edges(dtype, params.device)

    def _posterior_log_weights(self, c: int, known: torch.Tensor) -> torch.Tensor:
        log_w = self.mix.log_weights
        for prev in range(c):
            mean = self.mix.channel_means(prev, known)
            log_w = log_w + bin_log_prob(known[:, prev : prev + 1], mean, self.mix.log_scales[:, prev])
        return log_w - torch.logsumexp(log_w, dim=-1, keepdim=True)

    def cdf(self, c: int, known_values: torch.Tensor | None = None) -> torch.Tensor:
        """The mixture's CDF (N, 255) of channel c at the 255 interior bin edges, given the true
        values (N, >= c) of channels < c: P(value < v) for v = 1..255."""
        known = to_unit(known_values, self.edges.dtype) if c > 0 else None
        weights = self._posterior_log_weights(c, known).exp()  # (N, M)
        mean = self.mix.channel_means(c, known) if c > 0 else self.mix.means[:, 0]
        inv_scale = torch.exp(-self.mix.log_scales[:, c])
        component_cdf = torch.sigmoid((self.edges.view(1, 1, -1) - mean.unsqueeze(-1)) * inv_scale.unsqueeze(-1))
        return torch.bmm(weights.unsqueeze(1), component_cdf).squeeze(1)

    def pmf(self, c: int, known_values: torch.Tensor | None = None) -> torch.Tensor:
        """Probabilities (N, 256) of channel c given the true values (N, >= c) of channels < c.

        Computed as differences of the mixture's CDF at the 255 interior bin edges, so bin 0 and
        bin 255 take the whole tails, exactly as in `bin_log_prob`.
        """
        cdf = self.cdf(c, known_values)
        return torch.diff(cdf, prepend=torch.zeros_like(cdf[:, :1]), append=torch.ones_like(cdf[:, :1]))

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Exact samples (N, C) uint8 from the discrete model, channel by channel."""
        n = self.mix.log_weights.shape[0]
        values = torch.zeros(n, self.mix.channels, dtype=torch.long, device=self.edges.device)
        for c in range(self.mix.channels):
            probs = self.pmf(c, values).clamp(min=0)
            values[:, c] = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        return values.to(torch.uint8)
