"""Drawing images from a model, one pixel position at a time.

Every position's distribution comes from `snailcompress.mixture.PixelConditionals`, the same code the
coder uses, so samples are exact draws from the discrete model (rounded to the 8-bit grid).
PixelSNAIL and PixelCNN++ run incrementally (models/stepper.py, models/pixelcnnpp_stepper.py); other
models re-run the network per position.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from . import mixture
from .models.pixelcnnpp import PixelCNNpp
from .models.pixelcnnpp_stepper import PixelCNNppStepper
from .models.pixelsnail import PixelSNAIL
from .models.stepper import PixelSNAILStepper


class FullForwardStepper:
    """The stepper interface for any causal model: re-runs the whole network at every position.
    Slots keep positions of their own, as in models/stepper.py."""

    def __init__(self, model: nn.Module, batch: int, height: int, width: int):
        self.model, self.width = model, width
        self.images = torch.zeros(batch, model.config.channels, height, width)
        self.position = torch.zeros(batch, dtype=torch.long)
        self._slots = torch.arange(batch)

    def restart(self, slots: torch.Tensor) -> None:
        self.position[slots] = 0
        self.images[slots] = 0.0

    @torch.no_grad()
    def predict(self) -> torch.Tensor:
        i, j = self.position // self.width, self.position % self.width
        return self.model(self.images)[self._slots, :, i, j]

    def commit(self, values: torch.Tensor, advance: torch.Tensor | None = None) -> None:
        i, j = self.position // self.width, self.position % self.width
        self.images[self._slots, :, i, j] = mixture.to_unit(values)
        self.position += 1 if advance is None else advance.long()


def stepper_for(model: nn.Module, batch: int, height: int, width: int):
    """The fastest exact one-position-at-a-time runner for this model."""
    if isinstance(model, PixelSNAIL):
        return PixelSNAILStepper(model, batch, height, width)
    if isinstance(model, PixelCNNpp):
        return PixelCNNppStepper(model, batch, height, width)
    return FullForwardStepper(model, batch, height, width)


@torch.no_grad()
def sample_images(model: nn.Module, count: int, height: int, width: int, seed: int = 0, progress: bool = True) -> np.ndarray:
    """uint8 samples (count, C, H, W)."""
    model = model.eval().cpu()
    generator = torch.Generator().manual_seed(seed)
    stepper = stepper_for(model, count, height, width)
    channels = model.config.channels
    out = np.zeros((count, channels, height, width), np.uint8)
    for position in tqdm(range(height * width), desc="sampling", unit="px", disable=not progress):
        conditionals = mixture.PixelConditionals(stepper.predict(), channels)
        values = conditionals.sample(generator)
        stepper.commit(values)
        i, j = divmod(position, width)
        out[:, :, i, j] = values.numpy()
    return out
