"""Golden files: .snail files written by integer arithmetic version 1 with the shipped models, and
a few whose planes are stored, deflated or bilevel (codec/methods.py).

Every test run decodes each of them and checks the pixels against its source PNG, and encodes each
source again and checks that the bytes are the same (a deflate plane's method only: zlib's output
is not part of the format): a change of arithmetic, of the shipped weights or of the format shows
up here, on whatever machine the tests run. tests/golden/make.py wrote them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from snailcompress import api
from snailcompress.codec import coder, container
from snailcompress.codec.calibration import Calibration
from snailcompress.codec.images import decompose, same_image

GOLDEN = Path(__file__).parent / "golden"
NAMES = sorted(p.stem for p in GOLDEN.glob("*.snail"))


def test_there_are_golden_files_of_every_kind():
    modes = {Image.open(GOLDEN / f"{name}.png").mode for name in NAMES}
    assert {"RGB", "L", "RGBA", "P"} <= modes
    files = [container.read((GOLDEN / f"{name}.snail").read_bytes()) for name in NAMES]
    assert any(p.calibration for f in files for p in f.planes)
    assert any(f.width > 32 and f.height > 32 for f in files)  # several windows with context
    assert {p.method for f in files for p in f.planes} == set(container.METHODS)
    assert any(len({p.method for p in f.planes}) == 2 for f in files)  # the model's plane and another


@pytest.mark.parametrize("name", NAMES)
def test_golden_file_decodes_to_its_source(name):
    snail = container.read((GOLDEN / f"{name}.snail").read_bytes())
    decoded = api.decode_image(snail, api.ModelChooser())  # checks the stored pixel checksum too
    source = Image.open(GOLDEN / f"{name}.png")
    assert same_image(decompose(source), decoded)


@pytest.mark.parametrize("name", NAMES)
def test_golden_source_encodes_to_the_same_bytes(name):
    data = (GOLDEN / f"{name}.snail").read_bytes()
    golden = container.read(data)
    image = decompose(Image.open(GOLDEN / f"{name}.png"))
    # a file of the model's planes alone is re-encoded so; one with other methods as the encoder chooses
    fallback = any(p.method != "model" for p in golden.planes)
    snail = api.encode_image(image, api.ModelChooser(), calibrate=False, fallback=fallback)
    if any(p.calibration for p in golden.planes):  # a calibration is fitted in floats: code with the stored one
        plane = golden.planes[0]
        model = api.ModelChooser().for_plane(plane, 3).model
        net = api.integer_network(model, Calibration(*plane.calibration))
        words, _ = coder.code_plane(net, image.planes["RGB"], plane.tile, plane.context, plane.band)
        np.testing.assert_array_equal(words, plane.words)
        return
    if any(p.method == "deflate" for p in golden.planes):  # zlib's output is not part of the format:
        assert [p.method for p in snail.planes] == [p.method for p in golden.planes]  # the same coding,
        assert all(a == b for a, b in zip(snail.planes, golden.planes) if a.method != "deflate")
        assert (snail.width, snail.height, snail.mode, snail.pixel_crc32, snail.extras) == \
            (golden.width, golden.height, golden.mode, golden.pixel_crc32, golden.extras)  # the same header,
        assert same_image(api.decode_image(container.read(container.write(snail)), api.ModelChooser()), image)  # exact
        return
    assert container.write(snail) == data
