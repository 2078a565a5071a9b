"""torch, imported where first used. The CPU's coding path (numpy and the compiled kernels of
integer/) never touches it, and importing torch is most of a coding command's start-up; the torch
code beside it (the integer network's reference and GPU path, the float model folded with a
calibration) imports it on its first call.

    from ..lazy import torch   # then torch.cat(...), torch.float64, ... as usual
"""

from __future__ import annotations

import importlib


class LazyModule:
    """A module imported on the first attribute read; each attribute is kept once read."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attribute: str):
        value = getattr(importlib.import_module(self._name), attribute)
        setattr(self, attribute, value)
        return value


torch = LazyModule("torch")
F = LazyModule("torch.nn.functional")
