"""bench/inprocess.py: a float model's images coded and decoded in one process (PixelCNN++'s coded row)."""

from __future__ import annotations

import math

import constriction
import numpy as np
import pytest
import torch

from snailcompress import mixture
from snailcompress.bench.inprocess import decode_images, encode_images, quantised_counts
from snailcompress.integer.arithmetic import TABLE_TOTAL
from snailcompress.models import presets
from snailcompress.models.layers import data_dependent_init


def test_quantised_counts_are_integers_summing_to_the_table_total():
    generator = torch.Generator().manual_seed(0)
    pmf = torch.rand(50, 256, generator=generator, dtype=torch.float64) ** 8
    cdf = (pmf / pmf.sum(1, keepdim=True)).cumsum(1)[:, :255]
    cdf[0] = 0.0  # all the mass in bin 255
    cdf[1] = 1.0  # all the mass in bin 0
    cdf[2, 100:] += 1e-12  # rounding past 1 and a step down, as float CDFs may have
    cdf[2, 50] -= 1e-9
    counts = quantised_counts(cdf)
    assert counts.dtype == np.float64 and counts.shape == (50, 256)
    assert (counts >= 0).all() and np.array_equal(counts, np.floor(counts))
    assert (counts.sum(1) == TABLE_TOTAL).all()
    assert counts[0, 255] == TABLE_TOTAL and counts[1, 0] == TABLE_TOTAL
    assert np.array_equal(counts, quantised_counts(cdf.clone()))  # the same CDF, the same integers


@pytest.mark.parametrize("channels", [3, 1])
def test_images_decode_exactly_at_their_nll(channels):
    torch.manual_seed(0)
    model = presets.build("pixelcnnpp-tiny", channels)
    generator = torch.Generator().manual_seed(1)
    data_dependent_init(model, mixture.to_unit(torch.randint(0, 256, (8, channels, 8, 8), generator=generator)))
    model.eval()
    images = torch.randint(0, 256, (5, channels, 8, 12), generator=generator).numpy().astype(np.uint8)
    encoder = constriction.stream.queue.RangeEncoder()
    encode_images(model, images[:3], encoder)
    encode_images(model, images[3:], encoder)  # two batches in one stream, as bench's chunks
    words = encoder.get_compressed()
    decoder = constriction.stream.queue.RangeDecoder(words)
    assert np.array_equal(decode_images(model, decoder, images[:3].shape), images[:3])
    assert np.array_equal(decode_images(model, decoder, images[3:].shape), images[3:])
    with torch.no_grad():
        x = mixture.to_unit(torch.from_numpy(images).long())
        nll_bits = float(-mixture.log_prob(x, model(x)).double().sum()) / math.log(2)
    # the cost of the model's own distributions, but for the stream's last words and the coder's floor
    # of about 2**-24 a symbol: this untrained model gives a few of these random values p < 1e-12, and
    # they cost less coded than their NLL (about 60 bits of 15,000 in RGB here)
    assert abs(32 * words.size - nll_bits) < 0.002 * nll_bits + 64
