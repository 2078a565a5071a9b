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

Each batch slot has a position of its own (the codec starts a tile's window when its neighbours have
coded what it reads; see codec/tiles.py, WindowPlan). When all slots are at the same position the
computation is exactly the one of a shared position, so files coded before slots had positions of
their own decode unchanged.

The sampler uses it (sampling.py); the codec runs the integer twin of this stepper
(integer/network.py), whose results do not depend on the machine.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..mixture import to_unit
from .layers import GatedResnet, WeightNormConv2d
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
    """The last two rows of a conv input, flattened to (B * 2 * (W + 1), C); column 0 is the zero
    padding on the left. Where a slot reads and writes comes from the step's `_Where`."""

    def __init__(self, batch: int, width: int, channels: int, dtype: torch.dtype = torch.float32):
        self.rows = torch.zeros(batch, 2, width + 1, channels, dtype=dtype)
        self.flat = self.rows.view(-1, channels)

    def window(self, where: _Where, value: torch.Tensor) -> torch.Tensor:
        """Store value at each slot's (i, j) and return the 2x2 windows ending there, flattened (B, 4C)."""
        self.flat.index_copy_(0, where.row_write, value)
        return self.flat.index_select(0, where.row_read).view(value.shape[0], -1)


class _Where:
    """Flat indices of one step's reads and writes, shared by every buffer of the same width.

    Slot b is at row i[b], column j[b] of its own image: slots may be at different positions (the
    codec starts the tiles that wait for their left neighbour later than the others). `slots`: the
    slot number of each entry of `position`, where a step runs only some of the slots (default all,
    in order: 0..B-1). `copies`: of each position channel (PixelSNAILConfig.position_channels).
    """

    def __init__(self, position: torch.Tensor, height: int, width: int, slots: torch.Tensor | None = None,
                 dtype: torch.dtype = torch.float32, copies: int = 1):
        batch = position.shape[0]
        self.i, self.j = position // width, position % width
        slots = torch.arange(batch) if slots is None else slots
        # Row caches: (slot, row parity, column + 1); the row above row 0 is parity 1, zero until then.
        current = (slots * 2 + self.i % 2) * (width + 1)
        previous = (slots * 2 + (self.i + 1) % 2) * (width + 1)
        self.row_write = current + self.j + 1
        self.row_read = torch.stack([previous + self.j, previous + self.j + 1, current + self.j, current + self.j + 1], 1).view(-1)
        # Input pixels, padded by one row on top and one column on each side: (slot, row, column).
        base = slots * (height + 1) * (width + 2)
        above = base + self.i * (width + 2) + self.j  # padded row i = image row i-1, columns j-1..j+1
        self.pixels_above = torch.stack([above, above + 1, above + 2], 1).view(-1)
        left = base + self.i * (width + 2) + self.j  # padded rows i, i+1 = image rows i-1, i at column j-1
        self.pixels_left = torch.stack([left, left + width + 2], 1).view(-1)
        self.pixel_write = base + (self.i + 1) * (width + 2) + self.j + 1
        self.background = torch.stack(
            [((self.i.double() - height / 2) / height).to(dtype), ((self.j.double() - width / 2) / width).to(dtype)], 1
        ).repeat_interleave(copies, dim=1)


def _causal_input(pixels: torch.Tensor, where: _Where, above: _Linear, left: _Linear) -> torch.Tensor:
    """layers.causal_input at each slot's position (B, F), from the padded input pixels (B, H + 1, W + 2, C + 1)."""
    flat_pixels = pixels.view(-1, pixels.shape[-1])
    batch = where.i.shape[0]
    # down_shift(conv1x3): row i-1, columns j-1..j+1 (nothing on row 0)
    above_out = above(flat_pixels.index_select(0, where.pixels_above).view(batch, -1))
    ul = torch.zeros_like(above_out)
    ul = torch.where((where.i > 0).unsqueeze(1), ul + above_out, ul)
    # right_shift(conv2x1): rows i-1..i, column j-1 (nothing in column 0)
    left_out = left(flat_pixels.index_select(0, where.pixels_left).view(batch, -1))
    return torch.where((where.j > 0).unsqueeze(1), ul + left_out, ul)


class _StepResnet:
    """GatedResnet at one position; 2x2 convs read their row caches, 1x1 convs nothing."""

    def __init__(self, block: GatedResnet, batch: int, width: int, spatial: bool, dtype: torch.dtype = torch.float32):
        self.f = block.f
        self.conv_in, self.conv_out = _Linear(block.conv_in), _Linear(block.conv_out)
        self.aux_in = _Linear(block.aux_in) if block.aux_in is not None else None
        if spatial:  # each 2x2 conv's input rows, as wide as its input (concat_elu's twice the stream)
            self.caches = (_RowCache(batch, width, block.conv_in.v.shape[1], dtype),
                           _RowCache(batch, width, block.conv_out.v.shape[1], dtype))
        else:
            self.caches = None

    def __call__(self, x: torch.Tensor, where: _Where, aux: torch.Tensor | None = None) -> torch.Tensor:
        h = self.f(x)
        c1 = self.conv_in(self.caches[0].window(where, h) if self.caches else h)
        if aux is not None:
            c1 = c1 + self.aux_in(self.f(aux))
        h = self.f(c1)
        c2 = self.conv_out(self.caches[1].window(where, h) if self.caches else h)
        a, gate = c2.chunk(2, dim=1)
        return x + a * torch.sigmoid(gate)


class PixelSNAILStepper:
    """Runs a (trained, eval-mode) PixelSNAIL one position at a time on a batch of H x W images.

    Each batch slot has its own position (`position`, (B,)): `commit(values, advance)` moves on only
    the slots marked in `advance`, and `restart(slots)` begins a new image in those slots. Slots that
    wait do the work of their current position again and throw it away; that keeps one step one
    batched pass, and a slot's result never depends on what the other slots hold.
    """

    def __init__(self, model: PixelSNAIL, batch: int, height: int, width: int):
        cfg = model.config
        self.cfg, self.batch, self.height, self.width = cfg, batch, height, width
        self.dtype = dtype = model.head.v.dtype  # the buffers take the model's dtype
        self.position = torch.zeros(batch, dtype=torch.long)
        n = height * width
        with torch.no_grad():
            self.input_above, self.input_left = _Linear(model.input_above), _Linear(model.input_left)
            self.blocks = []
            for block in model.blocks:
                self.blocks.append(
                    {
                        "resnets": [_StepResnet(r, batch, width, spatial=True, dtype=dtype) for r in block.resnets],
                        "kv_resnet": _StepResnet(block.kv_resnet, batch, width, spatial=False),
                        "kv_proj": _Linear(block.kv_proj),
                        "q_resnet": _StepResnet(block.q_resnet, batch, width, spatial=False),
                        "q_proj": _Linear(block.q_proj),
                        "out_resnet": _StepResnet(block.out_resnet, batch, width, spatial=False),
                        "keys": torch.zeros(batch, cfg.key_channels, n, dtype=dtype),  # (B, dk, N): one fast bmm
                        "values": torch.zeros(batch, n, cfg.value_channels, dtype=dtype),
                    }
                )
            self.head = _Linear(model.head)
        # Input pixels with the ones channel, padded: one row on top, one column on each side.
        self.pixels = torch.zeros(batch, height + 1, width + 2, cfg.channels + 1, dtype=dtype)
        self._features_at_p: list[torch.Tensor] = []
        self._where: _Where | None = None

    def restart(self, slots: torch.Tensor) -> None:
        """Slots (bool (B,)) begin a new image at position 0."""
        self.position[slots] = 0
        self.pixels[slots] = 0.0
        for block in self.blocks:
            for resnet in block["resnets"]:
                for cache in resnet.caches:
                    cache.rows[slots] = 0.0

    @torch.no_grad()
    def predict(self) -> torch.Tensor:
        """Mixture parameters (B, K) of the pixel at each slot's position, from its earlier pixels only."""
        where = self._where = _Where(self.position, self.height, self.width, dtype=self.dtype,
                                     copies=self.cfg.position_channels // 2)
        ul = _causal_input(self.pixels, where, self.input_above, self.input_left)
        self._features_at_p = []
        for block in self.blocks:
            for resnet in block["resnets"]:
                ul = resnet(ul, where)
            self._features_at_p.append(ul)
            query = block["q_proj"](block["q_resnet"](torch.cat([ul, where.background], dim=1), where))
            attended = self._attend(query, block)
            ul = block["out_resnet"](ul, where, aux=attended)
        return self.head(F.elu(ul))

    def _attend(self, query: torch.Tensor, block: dict) -> torch.Tensor:
        """Attention of each slot over its own positions < p (masked where slots differ)."""
        longest = int(self.position.max())
        if longest == 0:
            return torch.zeros(self.batch, self.cfg.value_channels, dtype=self.dtype)
        scaled_query = query * self.cfg.key_channels**-0.5
        logits = torch.bmm(scaled_query.unsqueeze(1), block["keys"][:, :, :longest])
        if bool((self.position < longest).any()):
            later = torch.arange(longest) >= self.position.unsqueeze(1)  # (B, longest)
            logits = logits.masked_fill(later.unsqueeze(1), float("-inf"))
            weights = torch.softmax(logits, dim=2).nan_to_num(0.0)  # a slot at position 0 attends to nothing
        else:
            weights = torch.softmax(logits, dim=2)
        return torch.bmm(weights, block["values"][:, :longest]).squeeze(1)

    @torch.no_grad()
    def commit(self, values: torch.Tensor, advance: torch.Tensor | None = None) -> None:
        """Pixel values (B, C) in 0..255 at each slot's position; the slots in `advance` (bool (B,),
        default all) move to their next position, the others stay where they are."""
        if len(self._features_at_p) != len(self.blocks):
            raise RuntimeError("commit() must follow predict() for the same position")
        where = self._where
        x = to_unit(values, self.dtype)
        self.pixels.view(-1, self.cfg.channels + 1).index_copy_(0, where.pixel_write, torch.cat([x, torch.ones(self.batch, 1, dtype=x.dtype)], 1))
        slots = torch.arange(self.batch)
        for block, ul in zip(self.blocks, self._features_at_p):
            kv = block["kv_proj"](block["kv_resnet"](torch.cat([x, ul, where.background], dim=1), where))
            block["keys"][slots, :, self.position] = kv[:, : self.cfg.key_channels]
            block["values"][slots, self.position] = kv[:, self.cfg.key_channels :]
        self._features_at_p = []
        self.position += 1 if advance is None else advance.long()
