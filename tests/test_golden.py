"""Golden files: .snail files written by integer arithmetic version 1 with the shipped models.

Every test run decodes each of them and checks the pixels against its source PNG, and encodes each
source again and checks that the bytes are the same: a change of arithmetic, of the shipped weights
or of the format shows up here, on whatever machine the tests run. tests/golden/make.py wrote them.
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
    snail = api.encode_image(image, api.ModelChooser(), calibrate=False)
    if any(p.calibration for p in golden.planes):  # a calibration is fitted in floats: code with the stored one
        plane = golden.planes[0]
        model = api.ModelChooser().for_plane(plane, 3).model
        net = api.integer_network(model, Calibration(*plane.calibration))
        words, _ = coder.code_plane(net, image.planes["RGB"], plane.tile, plane.context, plane.band)
        np.testing.assert_array_equal(words, plane.words)
        return
    assert container.write(snail) == data
