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


def _code_with_the_model_only(patch: pytest.MonkeyPatch) -> None:
    """api.encode_images and encode_image, and so the CLI and bench, with every plane coded by the
    model (fallback=False unless a test says otherwise): for the tests of the model's coding, where
    the other methods (codec/methods.py) would beat an untrained model."""
    import functools

    from snailcompress import api

    for name in ("encode_images", "encode_image"):
        patch.setattr(api, name, functools.partial(getattr(api, name), fallback=False))


@pytest.fixture(scope="module")
def model_only():
    """The model codes every plane for a whole module (_code_with_the_model_only)."""
    with pytest.MonkeyPatch.context() as patch:
        _code_with_the_model_only(patch)
        yield


@pytest.fixture(scope="session")
def code_with_the_model_only():
    """_code_with_the_model_only, for a module-scoped fixture to apply within a block of its own."""
    return _code_with_the_model_only


@pytest.fixture(scope="session")
def tiny_models():
    """The untrained `pixelsnail-tiny` preset (fixed-seed weights) for every plane: no trained weights needed."""
    from snailcompress.api import ModelChooser

    return ModelChooser(["pixelsnail-tiny"])


def job_failure(stderr: str) -> str:
    """What a failed torchrun job says: each rank's one-line error (the first to fail is often not the
    last to write), then the end of its output."""
    errors = [line for line in stderr.splitlines() if "snailcompress: error:" in line]
    return "\n".join([*errors, "...", stderr[-4000:]])
