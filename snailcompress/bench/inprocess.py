"""Real coded bits for a float model without an integer twin (PixelCNN++), encoded and decoded in one process.

The codec's files decode on any machine because an integer network computes their tables
(integer/network.py, PixelSNAIL only). A float model's tables are exact only where the encoder and
the decoder run the very same float computation: shared/docs/coding-notes.md found a repeated call
bit-identical, but not another batch composition, thread count, dtype, library build or device, nor
the incremental step against the full forward pass. So both sides here run the same incremental
stepper (sampling.stepper_for: models/pixelcnnpp_stepper.py for PixelCNN++) over the same batch of
images, one image a slot, in the same process, with the same threads and dtype. The stream is real
(every bit counted, decoded and compared with the pixels) but it is not a portable file: another
machine, thread count or torch build may compute other tables and fail to decode it.

Each step, for each channel c (R, then G given R, then B given R and G):

    stepper params --mixture.PixelConditionals (float64)--> CDF at the 255 bin edges
        --quantised_counts--> 256 integer counts summing to 2**24 - 256 --constriction--> the stream

constriction's Categorical(perfect=False) uses exactly count + 1 of 2**24 for each symbol when given
integer counts summing to 2**24 - 256 as float64 (coding-notes.md), so every value stays codable and
both sides hold the same integers once they hold the same CDF.
"""

from __future__ import annotations

import copy

import constriction
import numpy as np
import torch
import torch.nn as nn

from ..codec.coder import CodingProgress, _bits
from ..integer.arithmetic import TABLE_TOTAL
from ..mixture import PixelConditionals
from ..sampling import stepper_for

_FAMILY = constriction.stream.model.Categorical(perfect=False)


def cpu_model(model: nn.Module) -> nn.Module:
    """The model, or a copy of it on the CPU, where the steppers run."""
    return model if next(model.parameters()).device.type == "cpu" else copy.deepcopy(model).cpu()


def quantised_counts(cdf: torch.Tensor) -> np.ndarray:
    """A CDF (N, 255) at the interior bin edges -> integer counts (N, 256) as float64 summing to
    TABLE_TOTAL: the cumulative count below edge v is floor(cdf_v * TABLE_TOTAL), made non-decreasing,
    and each count the difference of two. Exact float64 arithmetic: the same CDF gives the same counts."""
    below = np.floor(np.clip(cdf.double().cpu().numpy(), 0.0, 1.0) * TABLE_TOTAL)
    below = np.maximum.accumulate(below, axis=1)
    ends = np.zeros((len(below), 1))
    return np.diff(np.concatenate([ends, below, ends + TABLE_TOTAL], axis=1), axis=1)


@torch.no_grad()
def _run(model: nn.Module, shape: tuple[int, int, int, int], code_channel,
         progress: CodingProgress | None) -> np.ndarray:
    """Step through the positions of a batch of images of `shape` (N, C, H, W), one image a slot; at
    each position `code_channel(c, counts, i, j)` encodes or decodes channel c of every image from
    its tables and returns the values (N,). Returns the images' pixels (N, C, H, W) uint8."""
    n, channels, height, width = shape
    stepper = stepper_for(model, n, height, width)
    pixels = np.zeros(shape, np.uint8)
    for position in range(height * width):
        i, j = divmod(position, width)
        conditionals = PixelConditionals(stepper.predict(), channels, torch.float64)
        values = torch.zeros(n, channels, dtype=torch.long)
        bits = 0.0
        for c in range(channels):
            counts = quantised_counts(conditionals.cdf(c, values[:, :c]))
            decoded = code_channel(c, counts, i, j)
            values[:, c] = torch.from_numpy(decoded.astype(np.int64))
            if progress is not None:
                bits += _bits(counts[np.arange(n), decoded])
        stepper.commit(values)
        pixels[:, :, i, j] = values.numpy()
        if progress is not None:
            progress.step(bits, n * channels)
    return pixels


def encode_images(model: nn.Module, images: np.ndarray, encoder, progress: CodingProgress | None = None) -> None:
    """Append uint8 images (N, C, H, W) to a queue RangeEncoder: at each position, channel by channel,
    the N images' values in image order."""

    def encode(c: int, counts: np.ndarray, i: int, j: int) -> np.ndarray:
        symbols = np.ascontiguousarray(images[:, c, i, j], dtype=np.int32)
        encoder.encode(symbols, _FAMILY, counts)
        return symbols

    _run(model, images.shape, encode, progress)


def decode_images(model: nn.Module, decoder, shape: tuple[int, int, int, int],
                  progress: CodingProgress | None = None) -> np.ndarray:
    """Inverse of encode_images for images of `shape` (N, C, H, W), from a queue RangeDecoder."""
    return _run(model, shape, lambda c, counts, i, j: decoder.decode(_FAMILY, counts), progress)
