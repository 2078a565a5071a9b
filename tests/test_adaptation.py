"""Dynamic evaluation in the codec (codec/adaptation.py): the model learns the image while coding it.

What must hold: encoder and decoder make the same updates from the same windows, so the round trip
stays exact; the updates really change the coding (and help on an image that repeats itself); the
caller's model is left as it was; the header's settings are the ones decoding uses.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from snailcompress import api, zoo
from snailcompress.cli import main
from snailcompress.codec import container
from snailcompress.codec import coder
from snailcompress.codec.adaptation import Adaptation, AdaptingModelTables
from snailcompress.codec.images import DecomposedImage
from snailcompress.errors import FormatError
from snailcompress.models.stepper import PixelSNAILStepper
from test_codec import Recording

TINY = "pixelsnail-tiny"
FAST = Adaptation(windows=2, steps=1, lr=1e-3)  # big steps, so that a tiny image shows their effect


def _plane(height: int, width: int, channels: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.integers(0, 40, (height, width, channels)), axis=1).astype(np.uint8)


def _lessons(recording: Recording) -> list:
    """(windows, coded) of every learn() call the coder made."""
    return [call[1:] for call in recording.calls if call[0] == "learn"]


@pytest.mark.parametrize("model, channels, context, band", [(TINY, 3, (2, 2), 3), (TINY, 1, (1, 0), 3), ("pixelcnnpp-tiny", 3, (2, 2), 2)])
def test_encoder_and_decoder_learn_alike_and_the_round_trip_is_exact(model, channels, context, band):
    height, width, tile = 20, 23, (6, 6)  # 8 x 8 windows with context 2: PixelCNN++ needs sides divisible by 4
    plane = _plane(height, width, channels)
    net = zoo.load_model(model, channels=channels).model
    before = {k: v.clone() for k, v in net.state_dict().items()}
    enc, dec = Recording(AdaptingModelTables(net, FAST)), Recording(AdaptingModelTables(net, FAST))
    words, plan = coder.code_plane(enc, plane, tile, context, band)
    decoded = coder.decode_plane(dec, words, height, width, channels, tile, context, band)
    assert np.array_equal(decoded, plane)
    # the same lessons, in the same order; together they hold every pixel exactly once
    lessons = _lessons(enc)
    assert len(lessons) == len(_lessons(dec)) > 1
    for (w1, c1), (w2, c2) in zip(lessons, _lessons(dec)):
        assert np.array_equal(w1, w2) and np.array_equal(c1, c2)
    assert sum(int(c.sum()) for _, c in lessons) == height * width
    assert sum(len(w) for w, _ in lessons) == plan.rows * plan.cols
    assert len(enc.tables_seen) == len(dec.tables_seen) > 0
    assert all(a.tobytes() == b.tobytes() for a, b in zip(enc.tables_seen, dec.tables_seen))
    # the model learned (privately): another stream than the static one, the caller's weights untouched
    static, _ = coder.code_plane(coder.FloatModelTables(net), plane, tile, context, band)
    assert not np.array_equal(static, words)
    assert any(not torch.equal(before[k], v) for k, v in enc.inner.model.state_dict().items())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_learning_pays_on_an_image_that_repeats_itself():
    """Later windows repeat earlier ones: a model that learns from the coded windows codes them in fewer bits."""
    rng = np.random.default_rng(3)
    plane = np.tile(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), (3, 6, 1))  # 24 x 48, period 8
    net = zoo.load_model(TINY, channels=3).model
    static, _ = coder.code_plane(coder.FloatModelTables(net), plane, (8, 8), (0, 1))
    adapted, _ = coder.code_plane(AdaptingModelTables(net, Adaptation(windows=1, steps=10, lr=3e-3)), plane, (8, 8), (0, 1))
    assert len(adapted) < 0.95 * len(static)  # 0.92 when measured


def test_the_runner_uses_new_weights_after_reload():
    """After reload_weights, the incremental runner computes what a new one would (every folded layer is refolded)."""
    net = zoo.load_model(TINY, channels=3).model.eval()
    stepper = PixelSNAILStepper(net, 2, 6, 6)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    stale = stepper.predict()
    stepper.reload_weights()
    assert torch.equal(stepper.predict(), PixelSNAILStepper(net, 2, 6, 6).predict())
    assert not torch.equal(stale, stepper.predict())


def _image(height=20, width=23) -> DecomposedImage:
    return DecomposedImage("RGB", width, height, {"RGB": _plane(height, width, 3, seed=4)}, {})


def test_the_file_records_the_settings_and_decoding_uses_them():
    models = api.ModelChooser([TINY])
    image = _image()
    snail = api.encode_image(image, models, tile=8, context=2, adaptation=FAST, calibrate=False)
    plane = snail.planes[0]
    assert plane.adaptation == (2, 1, 1e-3) and plane.band >= 3  # one band: windows finish in raster order
    data = container.write(snail)
    assert data[8] == 3
    back = api.decode_image(container.read(data), models)
    assert np.array_equal(back.planes["RGB"], image.planes["RGB"])
    # other settings in the header: other tables, so the checksum (or the stream) refuses the result
    for other in [(2, 1, 2e-3), (3, 1, 1e-3), (2, 2, 1e-3)]:
        forged = dataclasses.replace(snail, planes=(dataclasses.replace(plane, adaptation=other),))
        with pytest.raises(FormatError):
            api.decode_image(container.read(container.write(forged)), models)


def test_adaptation_needs_context():
    """Without context every tile is coded at once: none would learn from another."""
    with pytest.raises(ValueError, match="context"):
        api.encode_image(_image(), api.ModelChooser([TINY]), tile=8, context=0, adaptation=FAST)
    r = CliRunner().invoke(main, ["encode", "nothing.png", "--adapt", "--context", "0"])
    assert r.exit_code != 0 and "--adapt needs --context" in r.output


def test_adaptation_settings_are_checked():
    for bad in [dict(windows=0), dict(steps=0), dict(lr=0.0), dict(lr=1.5), dict(windows=70000)]:
        with pytest.raises(ValueError, match="adaptation settings"):
            Adaptation(**bad)


def test_cli_encode_adapt(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Image.fromarray(_plane(20, 23, 3, seed=6)).save("a.png")
    runner = CliRunner()
    r = runner.invoke(main, ["encode", "a.png", "--model", TINY, "--tile", "8", "--adapt", "--no-calibrate", "-q"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["info", "a.snail"])
    assert "format version 3" in r.output and "adapting (Adam, 1 step(s) at lr 3e-05 every" in r.output
    r = runner.invoke(main, ["decode", "a.snail", "-o", "b.png", "-q"])
    assert r.exit_code == 0, r.output
    assert np.array_equal(np.asarray(Image.open("b.png")), np.asarray(Image.open("a.png")))
