"""Incremental PixelCNN++: one pixel position at a time for a batch of images.

The cached generation of Ramachandran et al. 2017 ("Fast generation for convolutional autoregressive
models"), in the interface of the PixelSNAIL stepper (models/stepper.py), so that the same loops
drive both:

    params = stepper.predict()            # distribution of each slot's pixel, from its earlier pixels
    stepper.commit(pixel_values, advance) # the pixels are known; the slots in `advance` move on
    stepper.restart(slots)                # those slots begin a new image at position 0

A full forward pass of PixelCNN++ (models/pixelcnnpp.py) computes every layer at every position.
Stepping computes each layer's output once, at the first step where every input it reads is known,
and keeps what later outputs will read. What that means for each kind of layer:

    layer (stream)                       computed                         kept for later outputs
    -----------------------------------  -------------------------------  -----------------------------------
    2x3 down-shifted conv (u)            a whole row, when a slot begins  its input's row above (_TwoRows)
                                         that row: u at row i sees only
                                         rows above i
    2x2 down-right-shifted conv (ul)     one position a step              its input's last two rows (_RowCache)
    1x1 conv (aux inputs, head)          with the layer that reads it     nothing
    stride-2 2x3 conv, down (u)          a coarse row a, when fine row    the fine row above (_TwoRows)
                                         2a begins
    stride-2 2x2 conv, down (ul)         coarse (a, b) at fine (2a, 2b),  the fine ul's last two rows
                                         where its 2x2 window is complete (_RowCache)
    stride-2 2x3 transposed conv, up (u) fine rows 2a, 2a+1 from coarse   both fine rows, until read (_UpRows)
                                         row a, once a is computed
    stride-2 2x2 transposed conv, up     the 2x2 fine block below-right   the block, until its positions
    (ul)                                 of (2a, 2b) from coarse (a, b)   are reached (_UpBlocks)
    skip connections (down pass reads    the up pass at the same          u: the rows of every u-block of
    the up pass's stacks)                resolution and position           the current row; ul: within a step

So resolution r (0: H x W, 1: H/2 x W/2, 2: H/4 x W/4) computes its position (a, b) at the step of
full-resolution position (2^r a, 2^r b), and its u row a when full-resolution row 2^r a begins; a
step at (i, j) runs the up pass from resolution 0 down to the coarsest resolution due there (i and j
divisible by 2^r), then the down pass back up, like the full forward pass, reading cached values for
the resolutions that are not due. concat_elu widens what the convs read; the caches hold it widened.

Slots may be at different positions (as in the PixelSNAIL stepper): at each step only the slots due
at a resolution, or beginning a row, compute it; a slot that waits recomputes its position, which
rewrites its caches with the same values. Which slots step together can change a slot's results by
float rounding (a different batch shape), never otherwise; predictions equal the full forward pass
to float rounding (tests/test_pixelcnnpp_stepper.py), not bit for bit: convolutions over whole images
and matrix products over one position sum in different orders.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..mixture import to_unit
from .layers import GatedResnet, WeightNormConv2d
from .pixelcnnpp import PixelCNNpp, check_size
from .stepper import _causal_input, _Linear, _RowCache, _StepResnet, _Where

LEVELS = 3  # resolutions H, H/2, H/4


class _RowConv:
    """A folded conv of the u stream over whole rows: (B', C, kh, W + pad) -> (B', F, W'), no padding added."""

    def __init__(self, conv: WeightNormConv2d):
        self.weight, self.bias, self.stride = conv.weight().detach().clone(), conv.b.detach().clone(), conv.stride

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        return F.conv2d(rows, self.weight, self.bias, stride=self.stride).squeeze(2)


class _TwoRows:
    """The last two rows of a row-wise conv's input (B, 2, C, W + 2), by row parity, with one zero
    column of padding on each side; the row above row 0 is parity 1, zero until written."""

    def __init__(self, batch: int, channels: int, width: int, dtype: torch.dtype):
        self.rows = torch.zeros(batch, 2, channels, width + 2, dtype=dtype)

    def strip(self, slots: torch.Tensor, row: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """Store value (B', C, W) as row `row` (B',) of `slots`; return their rows row-1, row (B', C, 2, W + 2)."""
        self.rows[slots, row % 2, :, 1:-1] = value
        return torch.stack([self.rows[slots, (row - 1) % 2], self.rows[slots, row % 2]], dim=2)


class _RowResnet:
    """GatedResnet of the u stream (2x3 down-shifted convs) on whole rows (B', F, W): each conv
    reads its input's row above from a _TwoRows; the 1x1 aux conv reads nothing else."""

    def __init__(self, block: GatedResnet, batch: int, width: int, dtype: torch.dtype):
        self.f = block.f
        self.conv_in, self.conv_out = _RowConv(block.conv_in), _RowConv(block.conv_out)
        self.aux_in = _RowConv(block.aux_in) if block.aux_in is not None else None
        channels = block.conv_in.v.shape[1]  # f(x) is what the convs read: widened by concat_elu
        self.rows = (_TwoRows(batch, channels, width, dtype), _TwoRows(batch, channels, width, dtype))

    def __call__(self, x: torch.Tensor, slots: torch.Tensor, row: torch.Tensor, aux: torch.Tensor | None = None):
        c1 = self.conv_in(self.rows[0].strip(slots, row, self.f(x)))
        if aux is not None:
            c1 = c1 + self.aux_in(self.f(aux).unsqueeze(2))
        c2 = self.conv_out(self.rows[1].strip(slots, row, self.f(c1)))
        a, gate = c2.chunk(2, dim=1)
        return x + a * torch.sigmoid(gate)


class _UpRows:
    """The u stream's up-sampling (stride-2 2x3 transposed conv, cropped as DownShiftedDeconv2d):
    coarse row a makes fine rows 2a and 2a+1, kept by fine row parity (B, 2, F, W) until read."""

    def __init__(self, conv: WeightNormConv2d, batch: int, width: int, dtype: torch.dtype):
        self.weight, self.bias = conv.weight().detach().clone(), conv.b.detach().clone()
        self.kw = conv.kernel_size[1]
        self.rows = torch.zeros(batch, 2, self.weight.shape[1], width, dtype=dtype)

    def put(self, slots: torch.Tensor, coarse: torch.Tensor) -> None:
        """coarse (B', F, W / 2): one coarse row of each slot."""
        y = F.conv_transpose2d(coarse.unsqueeze(2), self.weight, self.bias, stride=2, output_padding=1)
        crop = (self.kw - 1) // 2
        self.rows[slots] = y[:, :, :2, crop : y.shape[3] - crop].transpose(1, 2)

    def get(self, slots: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
        return self.rows[slots, row % 2]


class _UpBlocks:
    """The ul stream's up-sampling (stride-2 2x2 transposed conv): coarse (a, b) alone makes the
    fine 2x2 block (2a..2a+1, 2b..2b+1), one kernel tap each, kept by fine row parity (B, 2, W, F)."""

    def __init__(self, conv: WeightNormConv2d, batch: int, width: int, dtype: torch.dtype):
        w = conv.weight().detach()  # (in, out, 2, 2)
        self.out = w.shape[1]
        self.weight = w.permute(0, 2, 3, 1).reshape(w.shape[0], -1).contiguous()  # (in, (tap row, tap col, out))
        self.bias = conv.b.detach().repeat(4)
        self.blocks = torch.zeros(batch, 2, width, self.out, dtype=dtype)

    def put(self, slots: torch.Tensor, b: torch.Tensor, coarse: torch.Tensor) -> None:
        """coarse (B', F) at column b of each slot's coarse row a: fine rows 2a, 2a+1 are parities 0, 1."""
        taps = torch.addmm(self.bias, coarse, self.weight).view(-1, 2, 2, self.out)
        columns = (2 * b).unsqueeze(1) + torch.arange(2)  # (B', 2)
        self.blocks[slots.view(-1, 1, 1), torch.arange(2).view(1, 2, 1), columns.unsqueeze(1)] = taps

    def get(self, slots: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        return self.blocks[slots, i % 2, j]


class _Resolution:
    """One resolution of the U-Net in stepping form: its blocks of both passes, the layers that
    bring the other resolutions' outputs in, and the rows of u that its ul stream reads as aux."""

    def __init__(self, model: PixelCNNpp, level: int, batch: int, height: int, width: int, dtype: torch.dtype):
        self.height, self.width = height >> level, width >> level
        w, f = self.width, model.config.filters
        up_pairs, down_pairs = model.up[level], model.down[LEVELS - 1 - level]  # model.down runs coarsest first
        self.u_up = [_RowResnet(u, batch, w, dtype) for u, _ in up_pairs]
        self.ul_up = [_StepResnet(ul, batch, w, spatial=True, dtype=dtype) for _, ul in up_pairs]
        self.u_down = [_RowResnet(u, batch, w, dtype) for u, _ in down_pairs]
        self.ul_down = [_StepResnet(ul, batch, w, spatial=True, dtype=dtype) for _, ul in down_pairs]
        # the u rows of the current row: the up pass's stack (entry 0 is the level's input) and the down pass's outputs
        self.u_stack = torch.zeros(batch, len(self.u_up) + 1, f, w, dtype=dtype)
        self.u_down_rows = torch.zeros(batch, len(self.u_down), f, w, dtype=dtype)
        self.finer_u_rows = self.finer_ul_rows = self.from_coarser_u = self.from_coarser_ul = None
        if level > 0:  # down-sampling from the finer resolution, and the caches of its inputs there
            to_u, to_ul = model.downsample[level - 1]
            self.from_finer_u, self.from_finer_ul = _RowConv(to_u), _Linear(to_ul)
            self.finer_u_rows = _TwoRows(batch, f, 2 * w, dtype)
            self.finer_ul_rows = _RowCache(batch, 2 * w, f, dtype)
        if level < LEVELS - 1:  # up-sampling from the coarser resolution's down pass
            to_u, to_ul = model.upsample[LEVELS - 2 - level]
            self.from_coarser_u = _UpRows(to_u, batch, w, dtype)
            self.from_coarser_ul = _UpBlocks(to_ul, batch, w, dtype)

    def caches(self) -> list[torch.Tensor]:
        """Every tensor that holds a slot's state (batch first)."""
        held = [self.u_stack, self.u_down_rows]
        for block in self.u_up + self.u_down:
            held += [rows.rows for rows in block.rows]
        for block in self.ul_up + self.ul_down:
            held += [cache.rows for cache in block.caches]
        if self.finer_u_rows is not None:
            held += [self.finer_u_rows.rows, self.finer_ul_rows.rows]
        if self.from_coarser_u is not None:
            held += [self.from_coarser_u.rows, self.from_coarser_ul.blocks]
        return held


def _due(slots: torch.Tensor, *coordinates: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """Who computes which resolution: entry r is (keep, slots, coordinates at resolution r) for the
    slots due there, those whose full-resolution coordinates (a row, or a row and a column) 2^r
    divides; `keep` picks them among the entry before. Finest first, while any slot is due."""
    due = [(torch.ones_like(slots, dtype=torch.bool), slots, *coordinates)]
    while len(due) < LEVELS:
        _, slots, *coordinates = due[-1]
        keep = torch.ones_like(slots, dtype=torch.bool)
        for x in coordinates:
            keep &= x % 2 == 0
        if not bool(keep.any()):
            break
        due.append((keep, slots[keep], *(x[keep] // 2 for x in coordinates)))
    return due


class PixelCNNppStepper:
    """Runs a (trained, eval-mode) PixelCNN++ one position at a time on a batch of H x W images
    (H and W divisible by 4, as the model needs). The buffers take the model's dtype."""

    def __init__(self, model: PixelCNNpp, batch: int, height: int, width: int):
        check_size(height, width)
        cfg = model.config
        self.cfg, self.batch, self.height, self.width = cfg, batch, height, width
        self.dtype = dtype = model.head.v.dtype
        self.position = torch.zeros(batch, dtype=torch.long)
        with torch.no_grad():
            self.input_u = _RowConv(model.input_u)
            self.input_above, self.input_left = _Linear(model.input_above), _Linear(model.input_left)
            self.levels = [_Resolution(model, level, batch, height, width, dtype) for level in range(LEVELS)]
            self.head = _Linear(model.head)
        # Input pixels with the ones channel, padded: one row on top, one column on each side.
        self.pixels = torch.zeros(batch, height + 1, width + 2, cfg.channels + 1, dtype=dtype)
        self._where: _Where | None = None

    def restart(self, slots: torch.Tensor) -> None:
        """Slots (bool (B,)) begin a new image at position 0."""
        self.position[slots] = 0
        for held in [self.pixels, *(t for level in self.levels for t in level.caches())]:
            held[slots] = 0.0

    @torch.no_grad()
    def predict(self) -> torch.Tensor:
        """Mixture parameters (B, K) of the pixel at each slot's position, from its earlier pixels only."""
        everyone = torch.arange(self.batch)
        i, j = self.position // self.width, self.position % self.width
        if bool((j == 0).any()):
            self._u_rows(everyone[j == 0], i[j == 0])
        self._where = _Where(self.position, self.height, self.width)
        return self.head(F.elu(self._ul(everyone, i, j)))

    def _u_rows(self, slots: torch.Tensor, row: torch.Tensor) -> None:
        """The u stream of the slots beginning full-resolution row `row`: a row of each resolution whose
        row begins there (resolution r's row row / 2^r when 2^r divides row), stored for the ul stream."""
        due = _due(slots, row)
        strip = None  # the finer level's rows for this level's down-sampling, kept by the level before
        # up pass: each resolution's input, then its u-blocks, every output pushed on its stack
        for level, (keep, s, a) in enumerate(due):
            res = self.levels[level]
            if level == 0:
                u = self._u_input(s, a)
            else:
                u = res.from_finer_u(strip[keep])  # the fine rows 2a-1, 2a
            res.u_stack[s, 0] = u
            for k, block in enumerate(res.u_up):
                u = block(u, s, a)
                res.u_stack[s, k + 1] = u
            if level < LEVELS - 1:  # every fine row is kept for the coarser down-sampling
                strip = self.levels[level + 1].finer_u_rows.strip(s, a, u)
        # down pass, coarsest first: the up pass's stack, popped, is the aux input of the u-blocks
        for level in reversed(range(len(due))):
            _, s, a = due[level]
            res = self.levels[level]
            u = res.u_stack[s, -1] if level == LEVELS - 1 else res.from_coarser_u.get(s, a)
            for k, block in enumerate(res.u_down):
                u = block(u, s, a, aux=res.u_stack[s, len(res.u_down) - 1 - k])
                res.u_down_rows[s, k] = u
            if level > 0:
                self.levels[level - 1].from_coarser_u.put(s, u)

    def _u_input(self, slots: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
        """down_shift(conv2x3(x)) on row `row`: image rows row-2 and row-1 (padded rows row-1, row); row 0 is 0."""
        rows = torch.stack([(row - 1).clamp(min=0), row], dim=1)
        u = self.input_u(self.pixels[slots.unsqueeze(1), rows].permute(0, 3, 1, 2))
        return torch.where((row > 0).view(-1, 1, 1), u, torch.zeros_like(u))

    def _ul(self, everyone: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """The ul stream at every slot's position (B, F): resolution r runs for the slots at a
        position (2^r a, 2^r b), at its (a, b); the others read what their last such step left."""
        due = _due(everyone, i, j)
        stacks, wheres = [], []
        window = None  # the finer level's 2x2 windows for this level's down-sampling, kept by the level before
        # up pass
        for level, (keep, s, a, b) in enumerate(due):
            res = self.levels[level]
            if level == 0:
                where = self._where
                ul = _causal_input(self.pixels, where, self.input_above, self.input_left)
            else:
                where = _Where(a * res.width + b, res.height, res.width, s)
                ul = res.from_finer_ul(window[keep])  # the fine 2x2 window ending at (2a, 2b)
            stack = [ul]
            for k, block in enumerate(res.ul_up):
                ul = block(ul, where, aux=res.u_stack[s, k + 1, :, b])
                stack.append(ul)
            if level < LEVELS - 1:  # every fine position is kept for the coarser down-sampling
                window = self.levels[level + 1].finer_ul_rows.window(where, ul)
            stacks.append(stack)
            wheres.append(where)
        # down pass, coarsest first
        for level in reversed(range(len(due))):
            _, s, a, b = due[level]
            res, stack = self.levels[level], stacks[level]
            ul = stack.pop() if level == LEVELS - 1 else res.from_coarser_ul.get(s, a, b)
            for k, block in enumerate(res.ul_down):
                ul = block(ul, wheres[level], aux=torch.cat([res.u_down_rows[s, k, :, b], stack.pop()], dim=1))
            if level > 0:
                self.levels[level - 1].from_coarser_ul.put(s, b, ul)
        return ul

    @torch.no_grad()
    def commit(self, values: torch.Tensor, advance: torch.Tensor | None = None) -> None:
        """Pixel values (B, C) in 0..255 at each slot's position; the slots in `advance` (bool (B,),
        default all) move to their next position, the others stay where they are."""
        if self._where is None:
            raise RuntimeError("commit() must follow predict() for the same position")
        x = torch.cat([to_unit(values, self.dtype), torch.ones(self.batch, 1, dtype=self.dtype)], dim=1)
        self.pixels.view(-1, self.cfg.channels + 1).index_copy_(0, self._where.pixel_write, x)
        self._where = None
        self.position += 1 if advance is None else advance.long()
