"""PixelSNAIL (Chen, Mishra, Rohaninejad, Abbeel, ICML 2018), layer for layer as the authors' code.

Reference: neocxi/pixelsnail-public, model function `h12_noup_smallkey` (= `_base_noup_smallkey_spec`
with 12 attention blocks), run with the flags of its README; see docs/pixelsnail-reference.md.

    x in [-1, 1] ──► causal input layer ──► 12 x [ 4 gated resnets (2x2 down-right convs)
                                                   ──► causal attention block ] ──► ELU ──► 1x1 head

The head gives, for every pixel, the parameters of a discretized logistic mixture (see
`snailcompress.mixture` for their layout); the output at (i, j) depends only on pixels strictly
before (i, j) in raster order.

Departures from the reference, all deliberate:
* The attention normalises with an exact softmax over the strictly previous positions and gives
  exactly zero to the first position. The reference divides by (row sum + 1e-6) to avoid 0/0 at
  that position; for every other position the difference is below 1e-6 relative.
* Any channel count: 3 (RGB, the paper) or 1 (grayscale); the raw pixels feeding the keys and the
  head size follow it.
* The position channels. The authors' code broadcasts the row and the column channel over the
  image's channels (`... + 0. * x`): an RGB model's attention reads each three times, and so do the
  paper presets (`positions_per_channel`). The copies carry nothing new, so the smaller presets and
  the shipped models read each once.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import mixture
from .configs import PixelSNAILConfig
from .layers import (
    DownRightShiftedConv2d,
    GatedResnet,
    causal_input,
    causal_input_layer,
    nin,
    with_ones_channel,
)


def positional_background(height: int, width: int, like: torch.Tensor, copies: int = 1) -> torch.Tensor:
    """The position channels of the reference, (i - H/2)/H and (j - W/2)/W, each `copies` times (rows
    first), shape (1, 2 copies, H, W)."""
    rows = (torch.arange(height, dtype=like.dtype, device=like.device) - height / 2) / height
    cols = (torch.arange(width, dtype=like.dtype, device=like.device) - width / 2) / width
    return torch.stack(
        [rows.view(height, 1).expand(height, width), cols.view(1, width).expand(height, width)]
    ).repeat_interleave(copies, dim=0).unsqueeze(0)


def strictly_causal_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Single-head attention of every position over the strictly previous positions (raster order).

    query, key: (B, dk, H, W); value: (B, dv, H, W). Returns (B, dv, H, W); position 0 has nothing
    to attend to and gets exactly 0. The mask lets position 0 see itself only to keep the fused
    kernel free of an all-masked row (which would give NaN), and that row is then zeroed.
    """
    batch, _, height, width = query.shape
    n = height * width
    q, k, v = (t.flatten(2).transpose(1, 2).unsqueeze(1) for t in (query, key, value))
    allowed = torch.ones(n, n, dtype=torch.bool, device=query.device).tril(-1)
    allowed[0, 0] = True
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)  # scale 1/sqrt(dk)
    not_first = torch.ones(n, 1, dtype=out.dtype, device=out.device)
    not_first[0] = 0
    out = out.squeeze(1) * not_first
    return out.transpose(1, 2).reshape(batch, -1, height, width)


class AttentionBlock(nn.Module):
    """One PixelSNAIL block: residual convs, then causal attention mixed back into the stream.

    Keys and values see [raw pixels, features, position] of each position; queries see
    [features, position]. The raw pixel of position j may enter key_j only because the mask is
    strictly causal.
    """

    def __init__(self, cfg: PixelSNAILConfig):
        super().__init__()
        f, c, act, p, at = cfg.filters, cfg.channels, cfg.nonlinearity, cfg.dropout, cfg.position_channels
        self.key_channels, self.value_channels = cfg.key_channels, cfg.value_channels
        self.resnets = nn.ModuleList(
            GatedResnet(f, DownRightShiftedConv2d, nonlinearity=act, dropout=p) for _ in range(cfg.resnets_per_block)
        )
        self.kv_resnet = GatedResnet(c + f + at, nonlinearity=act, dropout=p)
        self.kv_proj = nin(c + f + at, cfg.key_channels + cfg.value_channels)
        self.q_resnet = GatedResnet(f + at, nonlinearity=act, dropout=p)
        self.q_proj = nin(f + at, cfg.key_channels)
        self.out_resnet = GatedResnet(f, aux_channels=cfg.value_channels, nonlinearity=act, dropout=p)

    def forward(self, ul: torch.Tensor, x: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            ul = resnet(ul)
        keys_values = self.kv_proj(self.kv_resnet(torch.cat([x, ul, background], dim=1)))
        key, value = keys_values.split([self.key_channels, self.value_channels], dim=1)
        query = self.q_proj(self.q_resnet(torch.cat([ul, background], dim=1)))
        return self.out_resnet(ul, strictly_causal_attention(query, key, value))


class PixelSNAIL(nn.Module):
    """x: (B, C, H, W) scaled to [-1, 1] -> mixture parameters (B, (1 + 3C) M, H, W)."""

    def __init__(self, cfg: PixelSNAILConfig):
        super().__init__()
        self.config = cfg
        self.input_above, self.input_left = causal_input_layer(cfg.channels + 1, cfg.filters)
        self.blocks = nn.ModuleList(AttentionBlock(cfg) for _ in range(cfg.blocks))
        self.head = nin(cfg.filters, mixture.num_params(cfg.channels, cfg.mixtures))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What the 1x1 head reads at every position (B, filters, H, W): codec/calibration.py fits its
        per-image correction on these, computed once."""
        batch, _, height, width = x.shape
        copies = self.config.position_channels // 2
        background = positional_background(height, width, x, copies).expand(batch, -1, -1, -1)
        ul = causal_input(with_ones_channel(x), self.input_above, self.input_left)
        for block in self.blocks:
            ul = block(ul, x, background)
        return F.elu(ul)
