"""Shared fixtures.  Every test session runs torch on one thread: the codec's float tables are only
reproducible for a fixed thread count, and on a busy machine one thread is also the fastest."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    import torch  # imported here, so that collecting torch-free tests stays fast

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_models():
    """The untrained `pixelsnail-tiny` preset (fixed-seed weights) for every plane: no trained weights needed."""
    from snailcompress.api import ModelChooser

    return ModelChooser(["pixelsnail-tiny"])
