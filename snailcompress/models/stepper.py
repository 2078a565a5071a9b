"""Incremental PixelSNAIL inference: one pixel position at a time for a batch of images.

Decoding an autoregressive model naively re-runs the whole network for every pixel (H*W forward
passes). PixelSNAIL needs far less: a 2x2 down-right-shifted conv at (i, j) reads only (i-1, j-1),
(i-1, j), (i, j-1) and (i, j) of its input, so each such conv keeps a rolling buffer of its input's
last two rows; the 1x1 convs of the attention blocks need nothing but the current position; and the
attention itself keeps the keys and values of all positions decoded so far. One step therefore costs
about what one position of a full forward pass costs, and a whole image about one forward pass.

A step has two halves, because the key and value of position p need the pixel at p itself:

    params = stepper.predict()      # distribution of pixel p, from pixels < p
    stepper.commit(pixel_values)    # pixel p is now known: update buffers, keys and values, p += 1

The encoder and the decoder of the codec both run this exact code on the same batch, which is what
keeps their probability tables bit-identical (see snailcompress.codec.coder).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..mixture import to_unit
from .layers import GatedResnet, WeightNormConv2d, concat_elu
from .pixelsnail import PixelSNAIL


def _matrix(conv: WeightNormConv2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Folded weight as (in_features, out_features) for x @ W, inputs ordered (kernel row, col, channel)."""
    w = conv.weight().detach()
    return w.permute(0, 2, 3, 1).reshape(w.shape[0], -1).t().contiguous(), conv.b.detach().clone()


class _Linear:
    """A folded conv applied to gathered inputs: one addmm per step."""

    def __init__(self, conv: WeightNormConv2d):
        self.weight, self.bias = _matrix(conv)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x, self.weight)


class _RowCache:
    """The last two rows of a conv input, (B, 2, W + 1, C); column 0 is the zero padding on the left."""

    def __init__(self, batch: int, width: int, channels: int):
        self.rows = torch.zeros(batch, 2, width + 1, channels)

    def window(self, i: int, j: int, value: torch.Tensor) -> torch.Tensor:
        """Store value at (i, j) and return the 2x2 window ending there, flattened (B, 4C)."""
        current, previous = i % 2, (i + 1) % 2  # row i-1 of the first row is the zero slot 1
        self.rows[:, current, j + 1] = value
        batch = value.shape[0]
        above, here = self.rows[:, previous, j : j + 2], self.rows[:, current, j : j + 2]
        return torch.cat([above.reshape(batch, -1), here.reshape(batch, -1)], dim=1)


class _StepResnet:
    """GatedResnet at one position; 2x2 convs read their row caches, 1x1 convs nothing."""

    def __init__(self, block: GatedResnet, batch: int, width: int, spatial: bool):
        self.f = block.f
        self.conv_in, self.conv_out = _Linear(block.conv_in), _Linear(block.conv_out)
        self.aux_in = _Linear(block.aux_in) if block.aux_in is not None else None
        if spatial:
            widen = 2 if block.f is concat_elu else 1
            channels = block.conv_in.v.shape[1] // widen
            self.caches = (_RowCache(batch, width, widen * channels), _RowCache(batch, width, widen * channels))
        else:
            self.caches = None

    def __call__(self, x: torch.Tensor, i: int, j: int, aux: torch.Tensor | None = None) -> torch.Tensor:
        h = self.f(x)
        c1 = self.conv_in(self.caches[0].window(i, j, h) if self.caches else h)
        if aux is not None:
            c1 = c1 + self.aux_in(self.f(aux))
        h = self.f(c1)
        c2 = self.conv_out(self.caches[1].window(i, j, h) if self.caches else h)
        a, gate = c2.chunk(2, dim=1)
        return x + a * torch.sigmoid(gate)


class PixelSNAILStepper:
    """Runs a (trained, eval-mode) PixelSNAIL one position at a time on a batch of H x W images."""

    def __init__(self, model: PixelSNAIL, batch: int, height: int, width: int):
        cfg = model.config
        self.cfg, self.batch, self.height, self.width = cfg, batch, height, width
        self.position = 0
        n = height * width
        with torch.no_grad():
            self.input_above, self.input_left = _Linear(model.input_above), _Linear(model.input_left)
            self.blocks = []
            for block in model.blocks:
                self.blocks.append(
                    {
                        "resnets": [_StepResnet(r, batch, width, spatial=True) for r in block.resnets],
                        "kv_resnet": _StepResnet(block.kv_resnet, batch, width, spatial=False),
                        "kv_proj": _Linear(block.kv_proj),
                        "q_resnet": _StepResnet(block.q_resnet, batch, width, spatial=False),
                        "q_proj": _Linear(block.q_proj),
                        "out_resnet": _StepResnet(block.out_resnet, batch, width, spatial=False),
                        "keys": torch.zeros(batch, cfg.key_channels, n),  # (B, dk, N): q @ K[:, :, :p] is one fast bmm
                        "values": torch.zeros(batch, n, cfg.value_channels),
                    }
                )
            self.head = _Linear(model.head)
        # Input pixels with the ones channel, padded: one row on top, one column on each side.
        self.pixels = torch.zeros(batch, height + 1, width + 2, cfg.channels + 1)
        self._features_at_p: list[torch.Tensor] = []

    def _background(self, i: int, j: int) -> torch.Tensor:
        pos = torch.tensor([(i - self.height / 2) / self.height, (j - self.width / 2) / self.width])
        return pos.expand(self.batch, 2)

    @torch.no_grad()
    def predict(self) -> torch.Tensor:
        """Mixture parameters (B, K) of the pixel at the current position, from earlier pixels only."""
        i, j = divmod(self.position, self.width)
        ul = torch.zeros(self.batch, self.cfg.filters)
        if i > 0:  # down_shift(conv1x3): row i-1, columns j-1..j+1
            ul = ul + self.input_above(self.pixels[:, i, j : j + 3].reshape(self.batch, -1))
        if j > 0:  # right_shift(conv2x1): rows i-1..i, column j-1
            ul = ul + self.input_left(self.pixels[:, i : i + 2, j].reshape(self.batch, -1))
        background = self._background(i, j)
        self._features_at_p = []
        for block in self.blocks:
            for resnet in block["resnets"]:
                ul = resnet(ul, i, j)
            self._features_at_p.append(ul)
            query = block["q_proj"](block["q_resnet"](torch.cat([ul, background], dim=1), i, j))
            attended = self._attend(query, block, self.position)
            ul = block["out_resnet"](ul, i, j, aux=attended)
        return self.head(F.elu(ul))

    def _attend(self, query: torch.Tensor, block: dict, p: int) -> torch.Tensor:
        if p == 0:
            return torch.zeros(self.batch, self.cfg.value_channels)
        scaled_query = query * self.cfg.key_channels**-0.5
        weights = torch.softmax(torch.bmm(scaled_query.unsqueeze(1), block["keys"][:, :, :p]), dim=2)
        return torch.bmm(weights, block["values"][:, :p]).squeeze(1)

    @torch.no_grad()
    def commit(self, values: torch.Tensor) -> None:
        """Pixel values (B, C) in 0..255 of the current position; advances to the next position."""
        if len(self._features_at_p) != len(self.blocks):
            raise RuntimeError("commit() must follow predict() for the same position")
        i, j = divmod(self.position, self.width)
        x = to_unit(values)
        self.pixels[:, i + 1, j + 1, :-1] = x
        self.pixels[:, i + 1, j + 1, -1] = 1.0
        background = self._background(i, j)
        for block, ul in zip(self.blocks, self._features_at_p):
            kv = block["kv_proj"](block["kv_resnet"](torch.cat([x, ul, background], dim=1), i, j))
            block["keys"][:, :, self.position] = kv[:, : self.cfg.key_channels]
            block["values"][:, self.position] = kv[:, self.cfg.key_channels :]
        self._features_at_p = []
        self.position += 1
