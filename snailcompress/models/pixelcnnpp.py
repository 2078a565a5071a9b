"""PixelCNN++ (Salimans, Karpathy, Chen, Kingma, ICLR 2017), the baseline of the PixelSNAIL paper.

Reference: openai/pixel-cnn `model_spec` with the defaults of its train.py (F=160, 5 gated resnets
per stage, concat_elu, dropout 0.5, M=10). Two streams: u sees the rows above, ul the rows above and
the pixels to the left. A U-Net of three resolutions (H, H/2, H/4): the up pass pushes every u and
ul onto stacks, the down pass pops them as auxiliary inputs.

    up:   [input] 5 x resnet  ↓2  5 x resnet  ↓2  5 x resnet
    down: 5 x resnet  ↑2  6 x resnet  ↑2  6 x resnet  ──► ELU ──► 1x1 head

Height and width must be divisible by 4.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import mixture
from ..errors import UsageError
from .configs import PixelCNNppConfig
from .layers import (
    DownRightShiftedConv2d,
    DownRightShiftedDeconv2d,
    DownShiftedConv2d,
    DownShiftedDeconv2d,
    GatedResnet,
    causal_input,
    causal_input_layer,
    down_shift,
    nin,
    with_ones_channel,
)


def check_size(height: int, width: int) -> None:
    """The two downsamplings halve the sides twice: a UsageError (one line) for any other size."""
    if height % 4 or width % 4:
        raise UsageError(f"PixelCNN++ needs a height and width divisible by 4, not {height}x{width}")


def _resnet_pair(cfg: PixelCNNppConfig, ul_aux: int) -> tuple[GatedResnet, GatedResnet]:
    """A u-block (2x3 down-shifted convs) and a ul-block (2x2 down-right convs) with aux inputs."""
    f, act, p = cfg.filters, cfg.nonlinearity, cfg.dropout
    return (
        GatedResnet(f, DownShiftedConv2d, aux_channels=f if ul_aux == 2 else 0, nonlinearity=act, dropout=p),
        GatedResnet(f, DownRightShiftedConv2d, aux_channels=ul_aux * f, nonlinearity=act, dropout=p),
    )


class PixelCNNpp(nn.Module):
    """x: (B, C, H, W) scaled to [-1, 1] -> mixture parameters (B, (1 + 3C) M, H, W)."""

    def __init__(self, cfg: PixelCNNppConfig):
        super().__init__()
        self.config = cfg
        f, n = cfg.filters, cfg.resnets_per_stage
        self.input_u = DownShiftedConv2d(cfg.channels + 1, f, (2, 3))
        self.input_above, self.input_left = causal_input_layer(cfg.channels + 1, f)
        # Up pass: u-blocks have no aux input, ul-blocks take the current u.
        self.up = nn.ModuleList(nn.ModuleList(nn.ModuleList(_resnet_pair(cfg, 1)) for _ in range(n)) for _ in range(3))
        self.downsample = nn.ModuleList(
            nn.ModuleList([DownShiftedConv2d(f, f, (2, 3), stride=2), DownRightShiftedConv2d(f, f, (2, 2), stride=2)])
            for _ in range(2)
        )
        # Down pass: u-blocks take a popped u, ul-blocks take [current u, popped ul].
        self.down = nn.ModuleList(
            nn.ModuleList(nn.ModuleList(_resnet_pair(cfg, 2)) for _ in range(n + int(stage > 0))) for stage in range(3)
        )
        self.upsample = nn.ModuleList(
            nn.ModuleList([DownShiftedDeconv2d(f, f), DownRightShiftedDeconv2d(f, f)]) for _ in range(2)
        )
        self.head = nin(f, mixture.num_params(cfg.channels, cfg.mixtures))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What the 1x1 head reads at every position (B, filters, H, W), as in PixelSNAIL."""
        check_size(x.shape[-2], x.shape[-1])
        x_pad = with_ones_channel(x)
        u_stack = [down_shift(self.input_u(x_pad))]
        ul_stack = [causal_input(x_pad, self.input_above, self.input_left)]
        for stage, pairs in enumerate(self.up):
            if stage > 0:
                to_u, to_ul = self.downsample[stage - 1]
                u_stack.append(to_u(u_stack[-1]))
                ul_stack.append(to_ul(ul_stack[-1]))
            for u_block, ul_block in pairs:
                u_stack.append(u_block(u_stack[-1]))
                ul_stack.append(ul_block(ul_stack[-1], u_stack[-1]))

        u, ul = u_stack.pop(), ul_stack.pop()
        for stage, pairs in enumerate(self.down):
            if stage > 0:
                to_u, to_ul = self.upsample[stage - 1]
                u, ul = to_u(u), to_ul(ul)
            for u_block, ul_block in pairs:
                u = u_block(u, u_stack.pop())
                ul = ul_block(ul, torch.cat([u, ul_stack.pop()], dim=1))
        assert not u_stack and not ul_stack
        return F.elu(ul)
