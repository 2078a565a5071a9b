"""Receptive fields, as in the PixelSNAIL paper's figure comparing PixelCNN++ and PixelSNAIL.

For one output position (i, j), the gradient of the sum of the network's mixture parameters there
with respect to every input pixel, its magnitude summed over channels. The parameters at (i, j) are
what the model predicts pixel (i, j) from, so they may depend only on the pixels strictly before
(i, j) in raster order (the "causal context"); the figure shows how much of that context the
network really sees. (The NLL of pixel (i, j) would also depend on pixel (i, j) itself, through the
value being scored, which is not part of the receptive field.)

The receptive field is a property of the architecture, so untrained presets are fine: they get a
data-dependent initialisation on random images first, as training would, so that activations have a
sane scale. Everything runs in float64 so that a small but real dependence is not rounded to zero;
positions outside the receptive field get an exact zero, however the weights are set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from . import mixture
from .errors import UsageError
from .models.layers import data_dependent_init
from .models.pixelcnnpp import PixelCNNpp, check_size
from .models.presets import PRESETS
from .zoo import LoadedModel, load_model

__all__ = ["ReceptiveField", "receptive_field", "model_for_receptive_field", "plot_receptive_fields"]


@dataclass
class ReceptiveField:
    name: str
    gradient: np.ndarray  # (H, W): |d sum(params at target) / d x| summed over input channels
    target: tuple[int, int]  # (row, column) of the output position

    @property
    def causal(self) -> np.ndarray:
        """(H, W) bool: the positions strictly before the target in raster order."""
        h, w = self.gradient.shape
        order = np.arange(h * w).reshape(h, w)
        return order < self.target[0] * w + self.target[1]

    @property
    def context(self) -> int:
        return int(self.causal.sum())

    @property
    def seen(self) -> int:
        """Causal positions with a non-zero gradient."""
        return int(((self.gradient > 0) & self.causal).sum())

    @property
    def fraction(self) -> float:
        """Fraction of the causal context with a non-zero gradient (NaN at the first position)."""
        return self.seen / self.context if self.context else float("nan")

    def fraction_above(self, relative: float = 1e-3) -> float:
        """Fraction of the causal context whose gradient is at least `relative` times the largest one."""
        if not self.context:
            return float("nan")
        strong = self.gradient >= relative * self.gradient[self.causal].max()
        return int((strong & self.causal & (self.gradient > 0)).sum()) / self.context

    @property
    def leaks(self) -> int:
        """Non-causal positions (the target and after) with a non-zero gradient: 0 for a correct model."""
        return int(((self.gradient > 0) & ~self.causal).sum())


def model_for_receptive_field(
    spec: str, height: int, width: int, channels: int | None = None, seed: int = 0
) -> LoadedModel:
    """Load a model in float64, eval mode; a preset gets data-dependent init on random images."""
    loaded = load_model(spec, channels=channels)
    model = loaded.model.double().eval()
    if isinstance(model, PixelCNNpp):
        try:
            check_size(height, width)  # before its init, naming which of the --model
        except UsageError as e:
            raise UsageError(f"{spec}: {e}") from None
    if str(spec) in PRESETS:
        generator = torch.Generator().manual_seed(seed + 1)
        init = torch.randint(0, 256, (2, model.config.channels, height, width), generator=generator)
        data_dependent_init(model, mixture.to_unit(init, torch.float64))
    return loaded


def receptive_field(
    model: nn.Module, height: int, width: int, target: tuple[int, int] | None = None, seed: int = 0, name: str = ""
) -> ReceptiveField:
    """The gradient map of one output position (default the centre) on a random input image."""
    i, j = target if target is not None else (height // 2, width // 2)
    if not (0 <= i < height and 0 <= j < width):
        raise UsageError(f"position ({i}, {j}) is outside the {height}x{width} image")
    was_training = model.training
    model.eval()
    dtype = next(model.parameters()).dtype
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (1, model.config.channels, height, width), generator=generator)
    x = mixture.to_unit(pixels, dtype).requires_grad_(True)
    try:
        params = model(x)
        (grad,) = torch.autograd.grad(params[0, :, i, j].sum(), x)
    finally:
        model.train(was_training)
    gradient = grad[0].abs().sum(0).detach().cpu().numpy().astype(np.float64)
    return ReceptiveField(name or type(model).__name__, gradient, (int(i), int(j)))


def plot_receptive_fields(fields: Sequence[ReceptiveField], out_png: Path) -> Path:
    """Panels side by side on one colour scale: log10 of the gradient magnitude relative to each panel's
    largest, zeros grey, the target pixel outlined in red."""
    from .figures import _save_atomic, plt  # figures selects the Agg backend before pyplot loads
    from matplotlib.patches import Rectangle

    maps = []
    for field in fields:
        g = field.gradient
        logs = np.full(g.shape, np.nan)
        if (g > 0).any():
            logs[g > 0] = np.log10(g[g > 0] / g.max())
        maps.append(logs)
    finite = np.concatenate([m[np.isfinite(m)] for m in maps])
    vmin = float(np.percentile(finite, 0.5)) if finite.size else -1.0
    cmap = plt.get_cmap("viridis").with_extremes(bad="#d9d9d9", under=plt.get_cmap("viridis")(0.0))

    n = len(fields)
    fig, axes = plt.subplots(1, n, figsize=(4.4 * n + 1.0, 5.0), dpi=120, squeeze=False, layout="constrained")
    for ax, field, logs in zip(axes[0], fields, maps):
        image = ax.imshow(np.ma.masked_invalid(logs), cmap=cmap, vmin=vmin, vmax=0.0, interpolation="nearest")
        i, j = field.target
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
        title = (
            f"{field.name}\nnon-zero gradient on {field.fraction:.1%} of the\n"
            f"causal context ({field.seen}/{field.context}); "
            f"{field.fraction_above(1e-3):.1%} at >= 1e-3 of max"
        )
        if field.leaks:
            title += f"\nWARNING: {field.leaks} non-causal positions"
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    bar = fig.colorbar(image, ax=list(axes[0]), shrink=0.85, extend="min")
    bar.set_label("log10 (|gradient| / largest |gradient|)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    h, w = fields[0].gradient.shape
    fig.suptitle(
        f"Receptive field of output pixel {fields[0].target} (red) on a {h}x{w} input\n"
        "gradient of the sum of its mixture parameters; grey: exactly zero",
        fontsize=10,
    )
    return _save_atomic(fig, Path(out_png), dpi=120, bbox_inches="tight")
