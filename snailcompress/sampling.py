"""Drawing images from a model, one pixel position at a time.

Every position's distribution comes from `snailcompress.mixture.PixelConditionals`, the same code the
coder uses, so samples are exact draws from the discrete model (rounded to the 8-bit grid).
PixelSNAIL and PixelCNN++ run incrementally (models/stepper.py, models/pixelcnnpp_stepper.py).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from .progress import progress_bar

from . import mixture
from .models.pixelcnnpp import PixelCNNpp
from .models.pixelcnnpp_stepper import PixelCNNppStepper
from .models.pixelsnail import PixelSNAIL
from .models.stepper import PixelSNAILStepper


def stepper_for(model: nn.Module, batch: int, height: int, width: int):
    """The model's exact one-position-at-a-time runner (its incremental stepper)."""
    if isinstance(model, PixelSNAIL):
        return PixelSNAILStepper(model, batch, height, width)
    if isinstance(model, PixelCNNpp):
        return PixelCNNppStepper(model, batch, height, width)
    raise TypeError(f"no incremental stepper for {type(model).__name__}")


@torch.no_grad()
def sample_images(model: nn.Module, count: int, height: int, width: int, seed: int = 0, progress: bool = True) -> np.ndarray:
    """uint8 samples (count, C, H, W)."""
    model = model.eval().cpu()
    generator = torch.Generator().manual_seed(seed)
    stepper = stepper_for(model, count, height, width)
    channels = model.config.channels
    out = np.zeros((count, channels, height, width), np.uint8)
    for position in progress_bar(range(height * width), desc="sampling", unit="px", enabled=progress):
        conditionals = mixture.PixelConditionals(stepper.predict(), channels)
        values = conditionals.sample(generator)
        stepper.commit(values)
        i, j = divmod(position, width)
        out[:, :, i, j] = values.numpy()
    return out
