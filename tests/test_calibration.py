"""Per-image calibration of the model's output layer (codec/calibration.py), fitted by the encoder and sent.

What must hold: the coder's calibrated network computes `head(features * (1 + feature_gain)) * (1 +
scale) + shift`; the sample is the pixels the codec codes, spread over the image and capped; the fit
lowers the NLL where the model is off and is sent only where it pays for its header; the decoder
uses the calibration the header holds (another one fails the checksum, one of the wrong size is a
clean error); the round trip stays exact.
"""

from __future__ import annotations

import dataclasses
import runpy
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from snailcompress import api, mixture, threads, zoo
from snailcompress.cli import main
from snailcompress.codec import calibration, coder, container
from snailcompress.codec.calibration import (Calibration, OutputLayer, calibration_for, fit, fit_calibration,
                                             head_nll, nll_bits, sample_pixels, sample_windows)
from snailcompress.codec.images import DecomposedImage
from snailcompress.codec.tiles import WindowPlan
from snailcompress.demo import DEMO_IMAGE
from snailcompress.errors import FormatError
from snailcompress.integer.network import IntegerPixelSNAIL

TINY = "pixelsnail-tiny"
pytestmark = pytest.mark.usefixtures("model_only")  # the model's coding: the untrained model codes every plane


@pytest.fixture
def small_images_calibrate(monkeypatch):
    """Let the encoder try a calibration on the tests' small images (it does not on real ones that
    small: see test_small_planes_are_not_tried)."""
    monkeypatch.setattr(calibration, "TYPICAL_SAVING_BITS", 100.0)


def _plane(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.integers(0, 40, (height, width, channels)), axis=1).astype(np.uint8)


def _calibration(outputs: int, features: int = 0, seed: int = 0) -> Calibration:
    rng = np.random.default_rng(seed)
    half = lambda a: tuple(float(v) for v in np.float16(a))  # noqa: E731
    return Calibration(half(rng.normal(0, 0.1, outputs)), half(rng.normal(0, 0.2, outputs)),
                       half(rng.normal(0, 0.3, features)))


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("with_features", [False, True])
def test_the_coders_output_layer_is_the_one_the_fit_scores(channels, with_features):
    """The integer network with a calibration folded in (what both sides code with) computes the
    fit's model, (features * (1 + gain)) @ W.T + b, scaled by 1 + scale and shifted, to within its
    integer weights' rounding; and it is not the uncalibrated layer."""
    loaded = zoo.load_model(TINY, channels=channels)
    layer = OutputLayer.from_weights(loaded.weights)
    calibration = _calibration(layer.outputs, layer.features if with_features else 0)
    rng = np.random.default_rng(1)
    features = rng.integers(-4096, 3 * 4096, (64, layer.features)).astype(np.float64)  # Q.12, ELU's range
    got = IntegerPixelSNAIL.from_weights(loaded.config, loaded.weights, calibration).outputs(features) / 4096
    scale, shift, gain = (np.array(a) for a in calibration.numbers())
    gain = gain if with_features else np.zeros(layer.features)
    expected = ((features / 4096 * (1 + gain)) @ layer.weight.T + layer.bias) * (1 + scale) + shift
    assert np.abs(got - expected).max() < 2e-3
    plain = IntegerPixelSNAIL.from_weights(loaded.config, loaded.weights).outputs(features) / 4096
    assert np.abs(plain - expected).max() > 0.1
    with pytest.raises(ValueError, match=f"for {layer.outputs + 1} outputs, the model has {layer.outputs}"):
        IntegerPixelSNAIL.from_weights(loaded.config, loaded.weights, _calibration(layer.outputs + 1))
    with pytest.raises(ValueError, match=f"for {layer.features + 1} features, the model's head reads {layer.features}"):
        IntegerPixelSNAIL.from_weights(loaded.config, loaded.weights, _calibration(layer.outputs, layer.features + 1))


def test_the_sample_is_spread_over_the_image_and_capped():
    plan = WindowPlan.for_image(300, 200, (8, 8), (2, 2), 4)
    rows, cols = sample_windows(plan)
    assert plan.rows * plan.cols > calibration.MAX_SAMPLE_WINDOWS == len(rows) == len(set(zip(rows, cols)))
    assert (rows[0], cols[0]) == (0, 0) and (rows[-1], cols[-1]) == (plan.rows - 1, plan.cols - 1)
    assert np.all(np.diff(rows * plan.cols + cols) > 0)  # raster order


def test_the_fit_sees_the_integer_networks_features_of_coded_pixels_only_at_most_the_cap():
    """What the fit reads is what the coder's output layer reads: the integer network's features."""
    net = api.integer_network(zoo.load_model(TINY).model)
    plane = _plane(40, 36)
    plan = WindowPlan.for_image(40, 36, (8, 8), (2, 2), 2)
    windows, coded = plan.windows(plane)
    every = net.features(torch.from_numpy(windows), compiled=False)  # (N, H, W, F), Q.12
    sample = sample_pixels(net, plan, plane, keep=True)
    features, values = sample.features, sample.values
    mask = torch.from_numpy(coded)
    assert len(values) == 40 * 36 == int(coded.sum()) <= calibration.MAX_SAMPLE_PIXELS  # every window, each pixel once
    assert np.array_equal(values, mixture.to_unit(torch.from_numpy(windows), torch.float64).permute(0, 2, 3, 1)[mask])
    assert np.array_equal(features * 4096, every[mask])  # exactly, in the head's units
    assert np.abs(features).max() > 0.1  # not all zero
    assert sorted(sample.windows) == [(i, j) for i in range(plan.rows) for j in range(plan.cols)]
    for k, (i, j) in enumerate((i, j) for i in range(plan.rows) for j in range(plan.cols)):
        assert torch.equal(torch.from_numpy(sample.windows[i, j]).double(), every[k].flatten(0, 1))
    assert sample_pixels(net, plan, plane).windows == {}  # kept only when asked
    few = sample_pixels(net, plan, plane, pixels=100)
    assert len(few.values) == 100
    rows = [int(np.flatnonzero((values == v).all(1) & (features == f).all(1))[0]) for v, f in zip(few.values, few.features)]
    assert len(set(rows)) == 100  # drawn from the coded pixels, without repeats
    drawn = calibration.draw_pixels(features, values, 100)  # what the benchmark draws from a sample it keeps
    assert np.array_equal(drawn[0], few.features) and np.array_equal(drawn[1], few.values)


def test_the_encoder_takes_the_samples_features_instead_of_computing_them_again(monkeypatch):
    """code_plane's `kept`: the windows whose features the calibration computed are not computed
    again, and the stream is the one that computing them gives."""
    net = api.integer_network(zoo.load_model(TINY).model)
    plane = _plane(30, 37)
    plan = WindowPlan.for_image(30, 37, (8, 8), (2, 2), 2)
    reference, _ = coder.code_plane(net, plane, (8, 8), (2, 2), 2)
    kept = sample_pixels(net, plan, plane, windows=7, keep=True).windows
    assert len(kept) == 7 < plan.rows * plan.cols
    computed = []
    features = net.features
    monkeypatch.setattr(net, "features", lambda pixels, *a: computed.append(len(pixels)) or features(pixels, *a))
    words, _ = coder.code_plane(net, plane, (8, 8), (2, 2), 2, kept=kept)
    assert np.array_equal(words, reference)
    assert sum(computed) == plan.rows * plan.cols - 7 and kept == {}  # each taken once


def test_the_fit_stops_after_its_iterations(monkeypatch):
    """fit(iterations=N) runs at most N L-BFGS iterations, each an evaluation of the NLL and its gradient
    (it is given 5N/4 of them; the last line search may add one), and a longer fit is better on the
    sample (benchmarks/calibration.py measures what each costs)."""
    loaded = zoo.load_model(TINY)
    layer = OutputLayer.from_weights(loaded.weights)
    plane = _plane(48, 40)
    sample = sample_pixels(api.integer_network(loaded), WindowPlan.for_image(48, 40, (8, 8), (2, 2), 2), plane)
    features, values = sample.features, sample.values
    score, evaluations = calibration.head_nll, []

    def counted(*args, **kwargs):
        evaluations.append(1)
        return score(*args, **kwargs)

    monkeypatch.setattr(calibration, "head_nll", counted)
    short = fit(layer, features, values, iterations=2)
    assert 2 <= len(evaluations) <= 2 * 5 // 4 + 1
    evaluations.clear()
    long = fit(layer, features, values)
    assert 2 * 5 // 4 + 1 < len(evaluations) <= calibration.LBFGS_ITERATIONS * 5 // 4 + 1
    assert nll_bits(layer, features, values, long) < nll_bits(layer, features, values, short)


@pytest.mark.parametrize("model, channels", [(TINY, 3), (TINY, 1)])
def test_the_fits_objective_is_the_mixtures_nll_and_its_gradient_torchs(model, channels, monkeypatch):
    """head_nll (compiled, so that encoding needs no torch) against mixture.pixel_log_prob and torch's
    autograd in float64: the NLL and its gradient with respect to every calibration number, with values
    0 and 255 (the tails), log-scales clamped and not, outputs large enough to saturate the mixture's
    weights and coefficients; the same numbers on 1 and 2 threads (blocks of pixels summed in order)."""
    loaded = zoo.load_model(model, channels=channels)
    layer = OutputLayer.from_weights(loaded.weights)
    outputs, features = layer.outputs, layer.features
    rng = np.random.default_rng(3)
    pixels = 700  # three blocks of pixels, the last one short
    feature_values = rng.normal(0, 3, (pixels, features))
    values = rng.integers(0, 256, (pixels, channels))
    values[:40], values[40:80] = 0, 255
    x = (values - 127.5) / 127.5
    scale, shift, gain = rng.normal(0, 0.3, outputs), rng.normal(0, 2, outputs), rng.normal(0, 0.3, features)
    shift[rng.random(outputs) < 0.2] -= 9  # some log-scales below the clamp
    numbers = [torch.tensor(a, requires_grad=True) for a in (scale, shift, gain)]
    weight, bias = torch.from_numpy(layer.weight), torch.from_numpy(layer.bias)
    params = torch.addmm(bias, torch.from_numpy(feature_values) * (1 + numbers[2]), weight.t()) * (1 + numbers[0]) + numbers[1]
    expected = -mixture.pixel_log_prob(torch.from_numpy(x), mixture.unpack(params, channels, pixel_last=True)).sum()
    expected.backward()
    monkeypatch.setattr(threads, "_count", 1)
    nats, gradients = head_nll(layer, feature_values, x, scale, shift, gain, gradient=True)
    assert nats == pytest.approx(float(expected.detach()), rel=1e-12)
    for got, tensor in zip(gradients, numbers):
        want = tensor.grad.numpy()
        assert np.abs(got - want).max() <= 1e-9 * np.abs(want).max()
    assert head_nll(layer, feature_values, x, scale, shift, gain)[0] == nats  # without the gradient: the same NLL
    monkeypatch.setattr(threads, "_count", 2)
    again, on_two = head_nll(layer, feature_values, x, scale, shift, gain, gradient=True)
    assert again == nats and all(np.array_equal(a, b) for a, b in zip(on_two, gradients))


def test_the_benchmark_spells_what_and_how_a_variant_fits():
    parse = runpy.run_path(str(Path(__file__).resolve().parents[1] / "benchmarks" / "calibration.py"))["parse_variant"]
    default = (calibration.LBFGS_ITERATIONS, calibration.MAX_SAMPLE_PIXELS)
    for spec, expected in (("64", (64, False, *default)), ("all+features", (None, True, *default)),
                           ("128+features/it10/px32768", (128, True, 10, 32768)),
                           ("128/px16384", (128, False, default[0], 16384))):
        assert dataclasses.astuple(parse(spec)) == expected
    for spec in ("0", "128+feature", "128/it0", "128/it5/it6", "128/xx5", "128/it", "128+features/"):
        with pytest.raises(SystemExit, match="not '"):
            parse(spec)


def test_the_fit_lowers_the_nll_and_pays_where_the_model_is_off(small_images_calibrate):
    """The tiny test model is untrained, so a calibration of its outputs saves a lot."""
    loaded = zoo.load_model(TINY)
    net, layer = loaded.model, OutputLayer.from_weights(loaded.weights)
    plane = _plane(48, 40)
    plan = WindowPlan.for_image(48, 40, (8, 8), (2, 2), 2)
    sample = sample_pixels(api.integer_network(net), plan, plane)
    calibration, net_bits = fit_calibration(layer, sample, 48 * 40)
    assert net_bits > 0 and calibration_for(loaded.config, loaded.weights, plan, plane)[0] == calibration
    whole = sample_pixels(api.integer_network(net), plan, plane, windows=plan.rows * plan.cols, pixels=None)
    before = nll_bits(layer, whole.features, whole.values, None)
    assert nll_bits(layer, whole.features, whole.values, calibration) < 0.9 * before
    features, values = sample.features, sample.values
    outputs_only = fit(layer, features, values, feature_gains=False)
    assert outputs_only.features == 0 and calibration.features == net.config.filters
    assert nll_bits(layer, features, values, calibration) < nll_bits(layer, features, values, outputs_only)


def test_a_small_image_is_not_worth_a_calibration():
    """The shipped model on a 16 x 16 image: 768 subpixels cannot repay 400 bytes of header."""
    loaded = zoo.load_model("snail-rgb")
    plane = np.asarray(Image.open(resources.files("snailcompress") / "assets" / DEMO_IMAGE).convert("RGB"))[:16, :16]
    plan = WindowPlan.for_image(16, 16, (32, 32), (2, 2), 1)
    sample = sample_pixels(api.integer_network(loaded), plan, plane)
    calibration, net_bits = fit_calibration(OutputLayer.from_weights(loaded.weights), sample, 16 * 16)
    assert calibration is not None and net_bits < 0
    assert calibration_for(loaded.config, loaded.weights, plan, plane) == (None, {})


def _image(height=20, width=23) -> DecomposedImage:
    return DecomposedImage("RGB", width, height, {"RGB": _plane(height, width, seed=4)}, {})


def test_small_planes_are_not_tried(monkeypatch):
    """A plane whose typical saving would not repay the header twice is coded as it is, unfitted."""
    monkeypatch.setattr(calibration, "fit_calibration", lambda *a: pytest.fail("fitted a plane too small to pay"))
    config = zoo.load_model("snail-rgb").config
    for side, worth in ((419, False), (420, True)):  # 2 x 3,968 header bits / 0.015 bits: 529,067 subpixels
        assert calibration.worth_trying(config, np.zeros((side, side, 3), np.uint8)) == worth
    snail = api.encode_image(_image(), api.ModelChooser([TINY]), tile=8, context=2)
    assert snail.planes[0].calibration is None


def test_calibrated_files_decode_exactly_and_are_smaller(small_images_calibrate):
    models = api.ModelChooser([TINY])
    image = _image(24, 27)
    snail = api.encode_image(image, models, tile=8, context=2)
    plain = api.encode_image(image, models, tile=8, context=2, calibrate=False)
    assert snail.planes[0].calibration is not None and plain.planes[0].calibration is None
    assert container.file_size(snail) < container.file_size(plain)
    data = container.write(snail)
    assert len(snail.planes[0].calibration[2]) > 0  # with feature gains
    back = api.decode_image(container.read(data), models)
    assert np.array_equal(back.planes["RGB"], image.planes["RGB"])


def test_a_calibrated_file_is_the_same_at_any_thread_count(small_images_calibrate, monkeypatch):
    """The fit is in floats, but its sums run in a fixed order: one and two threads write one file."""
    models, image = api.ModelChooser([TINY]), _image(24, 27)
    files = []
    for count in (1, 2):
        monkeypatch.setattr(threads, "_count", count)
        files.append(container.write(api.encode_image(image, models, tile=8, context=2)))
    assert container.read(files[0]).planes[0].calibration is not None and files[0] == files[1]


def test_decoding_uses_the_calibration_the_header_holds(small_images_calibrate):
    models = api.ModelChooser([TINY])
    snail = api.encode_image(_image(), models, tile=8, context=2)
    plane = snail.planes[0]
    scale, shift, gain = plane.calibration
    nudge = lambda values: (float(np.float16(values[0] + 0.5)),) + values[1:]  # noqa: E731
    for numbers in ((scale, nudge(shift), gain), (scale, shift, nudge(gain))):
        forged = dataclasses.replace(snail, planes=(dataclasses.replace(plane, calibration=numbers),))
        with pytest.raises(FormatError, match="checksum"):
            api.decode_image(container.read(container.write(forged)), models)
    for numbers, message in (((scale[:-1], shift[:-1], gain), f"calibration is for {len(scale) - 1} outputs"),
                             ((scale, shift, gain[:-1]), f"calibration is for {len(gain) - 1} features")):
        short = dataclasses.replace(snail, planes=(dataclasses.replace(plane, calibration=numbers),))
        with pytest.raises(FormatError, match=message):
            api.decode_image(container.read(container.write(short)), models)


def test_cli_calibrates_by_default_and_not_when_told(tmp_path, monkeypatch, small_images_calibrate):
    monkeypatch.chdir(tmp_path)
    Image.fromarray(_plane(20, 23, seed=6)).save("a.png")
    runner = CliRunner()
    sizes = {}
    for name, flags in (("on", []), ("off", ["--no-calibrate"])):
        r = runner.invoke(main, ["encode", "a.png", "-o", f"{name}.snail", "--model", TINY, "--tile", "8", "-q", *flags])
        assert r.exit_code == 0, r.output
        r = runner.invoke(main, ["info", f"{name}.snail"])
        assert ("calibrated (50 outputs, 32 features)" in r.output) == (name == "on"), r.output
        r = runner.invoke(main, ["decode", f"{name}.snail", "-o", f"{name}.png", "-q", "--model", TINY])
        assert r.exit_code == 0, r.output
        assert np.array_equal(np.asarray(Image.open(f"{name}.png")), np.asarray(Image.open("a.png")))
        sizes[name] = (tmp_path / f"{name}.snail").stat().st_size
    assert sizes["on"] < sizes["off"]
