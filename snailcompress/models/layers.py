"""Building blocks shared by PixelSNAIL and PixelCNN++ (reference: openai/pixel-cnn nn.py, neocxi/pixelsnail-public).

Causality comes from padding and shifting, never from masking weights:

* a *down-shifted* conv (kh x kw, kw odd) sees rows i-kh+1..i and columns j-(kw-1)/2..j+(kw-1)/2;
* a *down-right-shifted* conv (kh x kw) sees rows i-kh+1..i and columns j-kw+1..j;
* `down_shift` / `right_shift` move a map one row down / one column right.

Every conv is weight-normalised (W = g * V / ||V||, one norm per output channel) and supports the
data-dependent initialisation of Salimans & Kingma (2016): run one batch through the network in
`init_mode`, and every layer sets g and b so that its output has zero mean and variance init_scale^2
per channel on that batch.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F


class WeightNormConv2d(nn.Module):
    """Conv (or transposed conv) with weight normalisation and data-dependent init.

    Parameters are named as in the reference: `v` (direction), `g` (per-channel gain), `b` (bias).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int] = (1, 1),
        stride: int = 1,
        init_scale: float = 1.0,
        transposed: bool = False,
    ):
        super().__init__()
        kh, kw = kernel_size
        self.kernel_size = (kh, kw)
        self.stride = stride
        self.init_scale = init_scale
        self.transposed = transposed
        shape = (in_channels, out_channels, kh, kw) if transposed else (out_channels, in_channels, kh, kw)
        self.v = nn.Parameter(torch.randn(shape) * 0.05)
        self.g = nn.Parameter(torch.ones(out_channels))
        self.b = nn.Parameter(torch.zeros(out_channels))
        self.init_mode = False

    def weight(self) -> torch.Tensor:
        """The effective weight g * V / ||V|| (norm over every axis except the output channel)."""
        if self.transposed:
            norm = self.v.pow(2).sum(dim=(0, 2, 3), keepdim=True).sqrt()
            return self.v * (self.g.view(1, -1, 1, 1) / norm)
        norm = self.v.pow(2).sum(dim=(1, 2, 3), keepdim=True).sqrt()
        return self.v * (self.g.view(-1, 1, 1, 1) / norm)

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.transposed:
            return F.conv_transpose2d(x, weight, bias, stride=self.stride, output_padding=self.stride - 1)
        return F.conv2d(x, weight, bias, stride=self.stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.init_mode:
            return self._data_dependent_init(x)
        return self._conv(x, self.weight(), self.b)

    @torch.no_grad()
    def _data_dependent_init(self, x: torch.Tensor) -> torch.Tensor:
        """Set g, b so that this batch's outputs have zero mean and std init_scale per channel."""
        self.g.fill_(1.0)
        y = self._conv(x, self.weight(), None)
        mean = y.mean(dim=(0, 2, 3))
        std = y.var(dim=(0, 2, 3), unbiased=False).add(1e-10).sqrt()
        self.g.copy_(self.init_scale / std)
        self.b.copy_(-mean * self.g)
        return (y - mean.view(1, -1, 1, 1)) * self.g.view(1, -1, 1, 1)


@contextlib.contextmanager
def init_mode(model: nn.Module):
    """Within this context a forward pass performs data-dependent initialisation of every layer."""
    layers = [m for m in model.modules() if isinstance(m, WeightNormConv2d)]
    for layer in layers:
        layer.init_mode = True
    try:
        yield
    finally:
        for layer in layers:
            layer.init_mode = False


@torch.no_grad()
def data_dependent_init(model: nn.Module, x: torch.Tensor) -> None:
    """One forward pass on the init batch x, setting every layer's g and b (reference section 5)."""
    with init_mode(model):
        model(x)


# ---------------------------------------------------------------------------------------------
# Shifts and shifted convolutions


def down_shift(x: torch.Tensor) -> torch.Tensor:
    """Move the map one row down: row 0 becomes zero, the last row is dropped."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1, :]


def right_shift(x: torch.Tensor) -> torch.Tensor:
    """Move the map one column right: column 0 becomes zero, the last column is dropped."""
    return F.pad(x, (1, 0, 0, 0))[:, :, :, :-1]


class DownShiftedConv2d(WeightNormConv2d):
    """Sees the kh rows ending at row i, centred horizontally (kw odd)."""

    def __init__(self, in_channels, out_channels, kernel_size=(2, 3), stride=1, init_scale=1.0):
        super().__init__(in_channels, out_channels, kernel_size, stride, init_scale)
        kh, kw = kernel_size
        self.padding = ((kw - 1) // 2, (kw - 1) // 2, kh - 1, 0)

    def forward(self, x):
        return super().forward(F.pad(x, self.padding))


class DownRightShiftedConv2d(WeightNormConv2d):
    """Sees the kh x kw window whose bottom-right corner is (i, j): the up-left quadrant."""

    def __init__(self, in_channels, out_channels, kernel_size=(2, 2), stride=1, init_scale=1.0):
        super().__init__(in_channels, out_channels, kernel_size, stride, init_scale)
        kh, kw = kernel_size
        self.padding = (kw - 1, 0, kh - 1, 0)

    def forward(self, x):
        return super().forward(F.pad(x, self.padding))


class DownShiftedDeconv2d(WeightNormConv2d):
    """Stride-2 2x3 transposed conv of PixelCNN++'s up-sampling, cropped to stay causal (u stream;
    its incremental form, models/pixelcnnpp_stepper.py, is written for this kernel and stride)."""

    def __init__(self, in_channels, out_channels):
        super().__init__(in_channels, out_channels, (2, 3), 2, transposed=True)

    def forward(self, x):
        y = super().forward(x)
        kh, kw = self.kernel_size
        return y[:, :, : y.shape[2] - kh + 1, (kw - 1) // 2 : y.shape[3] - (kw - 1) // 2]


class DownRightShiftedDeconv2d(WeightNormConv2d):
    """Stride-2 2x2 transposed conv of PixelCNN++'s up-sampling, cropped to stay causal (ul stream;
    its incremental form, models/pixelcnnpp_stepper.py, is written for this kernel and stride)."""

    def __init__(self, in_channels, out_channels):
        super().__init__(in_channels, out_channels, (2, 2), 2, transposed=True)

    def forward(self, x):
        y = super().forward(x)
        kh, kw = self.kernel_size
        return y[:, :, : y.shape[2] - kh + 1, : y.shape[3] - kw + 1]


def nin(in_channels: int, out_channels: int, init_scale: float = 1.0) -> WeightNormConv2d:
    """The reference's "network in network" layer: a weight-normalised 1x1 conv."""
    return WeightNormConv2d(in_channels, out_channels, (1, 1), init_scale=init_scale)


# ---------------------------------------------------------------------------------------------
# Nonlinearities and the gated residual block


def concat_elu(x: torch.Tensor) -> torch.Tensor:
    """ELU of [x, -x] along channels (PixelCNN++): doubles the channel count."""
    return F.elu(torch.cat([x, -x], dim=1))


NONLINEARITIES = {"elu": (F.elu, 1), "concat_elu": (concat_elu, 2)}


class GatedResnet(nn.Module):
    """x + A * sigmoid(B), where [A, B] = conv(dropout(f(conv(f(x)) + nin(f(aux))))) (reference 2.3).

    `conv` builds the block's convs (2x2 down-right-shifted, 2x3 down-shifted, or 1x1 nin); the
    second conv starts at 0.1 scale so each residual branch begins ~10x smaller than the stream.
    """

    def __init__(
        self,
        channels: int,
        conv: type[WeightNormConv2d] | None = None,
        aux_channels: int = 0,
        nonlinearity: str = "elu",
        dropout: float = 0.0,
    ):
        super().__init__()
        self.f, widen = NONLINEARITIES[nonlinearity]
        make = conv or (lambda i, o, init_scale=1.0: nin(i, o, init_scale))
        self.conv_in = make(widen * channels, channels)
        self.aux_in = nin(widen * aux_channels, channels) if aux_channels else None
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv_out = make(widen * channels, 2 * channels, init_scale=0.1)

    def forward(self, x: torch.Tensor, aux: torch.Tensor | None = None) -> torch.Tensor:
        c1 = self.conv_in(self.f(x))
        if aux is not None:
            c1 = c1 + self.aux_in(self.f(aux))
        c2 = self.conv_out(self.dropout(self.f(c1)))
        a, gate = c2.chunk(2, dim=1)
        return x + a * torch.sigmoid(gate)


def causal_input_layer(in_channels: int, filters: int) -> tuple[DownShiftedConv2d, DownRightShiftedConv2d]:
    """The two convs of the first, strictly causal layer (see `causal_input`)."""
    return DownShiftedConv2d(in_channels, filters, (1, 3)), DownRightShiftedConv2d(in_channels, filters, (2, 1))


def causal_input(x_pad: torch.Tensor, above: DownShiftedConv2d, left: DownRightShiftedConv2d) -> torch.Tensor:
    """ul0 = down_shift(conv1x3(x)) + right_shift(conv2x1(x)): position (i, j) sees only earlier pixels.

    The first term covers row i-1, columns j-1..j+1; the second (i-1, j-1) and (i, j-1).
    """
    return down_shift(above(x_pad)) + right_shift(left(x_pad))


def with_ones_channel(x: torch.Tensor) -> torch.Tensor:
    """Append a constant-1 channel so that zero padding differs from a real pixel of value 0."""
    return torch.cat([x, torch.ones_like(x[:, :1])], dim=1)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, images: torch.Tensor, backward: bool = True) -> int:
    """Floating-point operations of `model` on the batch `images`, forward and, with `backward`, the
    backward pass of a training step (the weights' gradients and the activations' below them), as
    torch's FlopCounterMode counts them: matrix products and convolutions, 2 per multiply-add;
    elementwise work is not counted. Comparing models at equal compute needs this: models of one
    size can differ severalfold in work per image. Divide by the batch for a per-image figure. The
    backward pass leaves the model's gradients cleared (None)."""
    from torch.utils.flop_counter import FlopCounterMode  # imported where first needed

    with FlopCounterMode(display=False) as counter:
        out = model(images)
        if backward:
            out.float().sum().backward()
    if backward:
        model.zero_grad(set_to_none=True)
    return counter.get_total_flops()
