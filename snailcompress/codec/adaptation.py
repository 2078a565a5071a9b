"""Dynamic evaluation: the model goes on learning the image while it codes it.

Once a window is coded, encoder and decoder both know its pixels. An `AdaptingModelTables` collects
the windows coded so far and, every `windows` windows, takes `steps` Adam steps (learning rate `lr`)
on their NLL; the incremental runner then uses the new weights from its next step on (the buffers
and attention keys it computed before stay as they are). No side information is sent: the decoder
makes the same updates from the same pixels in the same order, so its tables stay bit-identical to
the encoder's (same environment and thread count, as for static coding; the pixel checksum checks it).

The windows must reach the model in a sensible order: api.encode_image codes the image as one band
of windows, so they finish in raster order. In the static codec's bands they finish one per band
at a time, and updates on windows from distant bands took a fifth as much off (and made some
images larger than no updates at all; results/adaptation_bands.md). The settings travel in the
file's header (format version 3), so a file decodes with the settings it was made with. What it
buys, and costs: results/default_model_heldout_variants.md.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from .. import mixture
from .coder import FloatModelTables
from .container import MAX_ADAPT_STEPS, MAX_ADAPT_WINDOWS


@dataclass(frozen=True)
class Adaptation:
    """When and how much the model learns while coding (stored in the .snail header)."""

    windows: int = 4  # coded windows per update
    steps: int = 1  # Adam steps per update
    lr: float = 3e-5

    def __post_init__(self) -> None:
        if not (1 <= self.windows <= MAX_ADAPT_WINDOWS and 1 <= self.steps <= MAX_ADAPT_STEPS and 0.0 < self.lr < 1.0):
            raise ValueError(f"adaptation settings out of range: {self}")


class AdaptingModelTables(FloatModelTables):
    """FloatModelTables whose model (a private copy) learns from the windows already coded."""

    learns = True

    def __init__(self, model: torch.nn.Module, adaptation: Adaptation):
        super().__init__(copy.deepcopy(model))
        self.adaptation = adaptation
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=adaptation.lr)
        self._windows: list[np.ndarray] = []
        self._coded: list[np.ndarray] = []

    def learn(self, windows: np.ndarray, coded: np.ndarray) -> None:
        self._windows.append(windows)
        self._coded.append(coded)
        if sum(len(w) for w in self._windows) >= self.adaptation.windows:
            self._update()

    def _update(self) -> None:
        x = mixture.to_unit(torch.from_numpy(np.concatenate(self._windows)))
        coded = torch.from_numpy(np.concatenate(self._coded))
        self._windows, self._coded = [], []
        subpixels = int(coded.sum()) * x.shape[1]
        with torch.enable_grad():
            for _ in range(self.adaptation.steps):
                loss = -mixture.log_prob(x, self.model(x))[coded].sum() / subpixels
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
        self._stepper.reload_weights()
