"""The codec end to end: api round trips, coder table agreement, tiles, tables, and the CLI's errors.

Everything runs the untrained `pixelsnail-tiny` preset (fixed-seed weights) on small tiles, so no
trained weights are needed and the whole file takes well under a minute on one thread. The model
codes every plane here: the encoder's other methods (codec/methods.py), which would beat the
untrained model, are tested in test_small_images.py.
"""

from __future__ import annotations

import dataclasses
import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import constriction
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from snailcompress import api, zoo
from snailcompress.cli import main
from snailcompress.codec import coder
from snailcompress.codec import container as C
from snailcompress.codec.images import DecomposedImage, compose, decompose, pixel_checksum, same_image
from snailcompress.codec.tiles import WindowPlan
from snailcompress.errors import FormatError, ModelError, UsageError
from snailcompress.integer.arithmetic import TABLE_TOTAL
from snailcompress.integer.mixture import IntegerConditionals
from snailcompress.threads import set_threads

TILE = 8
TINY = "pixelsnail-tiny"
ERROR = "snailcompress: error:"
BANDS = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "P": 1, "1": 1}
pytestmark = pytest.mark.usefixtures("model_only")


# --------------------------------------------------------------------------------------------
# 1. round trips through api.encode_image / container / api.decode_image


def make_image(mode: str, height: int, width: int, content: str, seed: int, extra: bool = False) -> Image.Image:
    """A PIL image of the mode with random, constant or smoothly graded pixels."""
    rng = np.random.default_rng(seed)
    bands = BANDS[mode]
    if content == "random":
        arr = rng.integers(0, 256, (height, width, bands))
    elif content == "constant":
        arr = np.broadcast_to(rng.integers(0, 256, bands), (height, width, bands))
    else:  # a smooth ramp in a random direction, per band
        yy, xx = np.mgrid[0:height, 0:width]
        slope = rng.uniform(-6, 6, (2, bands))
        arr = rng.integers(0, 256, bands) + yy[..., None] * slope[0] + xx[..., None] * slope[1]
        arr = np.clip(np.rint(arr), 0, 255)
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    if mode == "1":
        return Image.fromarray(arr[..., 0] >= 128)
    if mode == "P":
        entries = int(rng.integers(1, 257))
        im = Image.frombytes("P", (width, height), (arr[..., 0].astype(np.int64) % entries).astype(np.uint8).tobytes())
        im.putpalette(rng.integers(0, 256, 3 * entries, dtype=np.uint8).tobytes(), "RGB")
        if extra:
            im.info["transparency"] = int(rng.integers(0, entries)) if seed % 2 else bytes(rng.integers(0, 256, 5, dtype=np.uint8))
        return im
    if mode in ("LA", "RGBA") and extra:
        arr[..., -1] = arr.flat[0]  # a constant alpha: not coded, kept as an extra
    im = Image.frombytes(mode, (width, height), arr.tobytes())
    if extra and mode == "L":
        im.info["transparency"] = int(rng.integers(0, 256))
    elif extra and mode == "RGB":
        im.info["transparency"] = tuple(int(v) for v in rng.integers(0, 256, 3))
    return im


def round_trip(dec: DecomposedImage, models, tile=TILE) -> tuple[DecomposedImage, bytes]:
    snail = api.encode_image(dec, models, tile)
    data = C.write(snail)
    back = api.decode_image(C.read(data), models)
    return back, data


def assert_same(back: DecomposedImage, dec: DecomposedImage, im: Image.Image) -> None:
    assert same_image(back, dec)
    assert back.mode == dec.mode and back.extras == dec.extras
    assert pixel_checksum(back) == pixel_checksum(dec)
    again = compose(back)
    assert again.mode == im.mode and again.size == im.size and again.tobytes() == im.tobytes()
    if im.mode == "P":
        assert again.getpalette() == im.getpalette()


_sides = st.one_of(st.sampled_from([1, 2, 7, 8, 9, 16, 17]), st.integers(1, 20))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mode=st.sampled_from(sorted(BANDS)),
    height=_sides,
    width=_sides,
    content=st.sampled_from(["random", "constant", "gradient"]),
    seed=st.integers(0, 2**32 - 1),
    extra=st.booleans(),
    tile=st.sampled_from([3, 5, TILE]),
)
@example(mode="P", height=1, width=1, content="random", seed=92862, extra=False, tile=3)  # a full 256-entry palette
def test_round_trip(tiny_models, mode, height, width, content, seed, extra, tile):
    im = make_image(mode, height, width, content, seed, extra)
    dec = decompose(im)
    back, data = round_trip(dec, tiny_models, tile)
    assert_same(back, dec, im)
    assert C.read(data).pixel_crc32 == pixel_checksum(dec)


@pytest.mark.parametrize("height, width", [(1, 1), (1, 17), (17, 1), (8, 8), (9, 16), (3, 10)])
def test_round_trip_thin_and_odd_shapes(tiny_models, height, width):
    im = make_image("RGBA", height, width, "random", height * 100 + width)
    dec = decompose(im)
    back, _ = round_trip(dec, tiny_models)
    assert_same(back, dec, im)


def test_wrong_pixels_are_caught_by_the_pixel_checksum(tiny_models):
    dec = decompose(make_image("L", 5, 6, "gradient", 1))
    snail = api.encode_image(dec, tiny_models, TILE)
    bad = dataclasses.replace(snail, pixel_crc32=snail.pixel_crc32 ^ 1)
    with pytest.raises(FormatError, match="decoded pixels do not match the stored checksum"):
        api.decode_image(C.read(C.write(bad)), tiny_models)


# --------------------------------------------------------------------------------------------
# 2. the one-pass encoder and the step-by-step decoder


def _net(channels: int, preset: str = TINY):
    return api.integer_network(zoo.load_model(preset, channels=channels).model)


class RecordingEncoder:
    """Wraps a RangeEncoder: records every symbol and the table it was coded with."""

    def __init__(self):
        self.inner = constriction.stream.queue.RangeEncoder()
        self.symbols: list[np.ndarray] = []
        self.tables: list[np.ndarray] = []

    def encode(self, symbols, family, tables):
        self.symbols.append(np.array(symbols, copy=True))
        self.tables.append(np.array(tables, copy=True))
        return self.inner.encode(symbols, family, tables)

    def get_compressed(self):
        return self.inner.get_compressed()


class BitCounter(coder.CodingProgress):
    """A progress bar that stays hidden and keeps the bits it was told."""

    def __init__(self):
        super().__init__(0, "", enabled=False)


@pytest.mark.parametrize("channels, height, width, context", [(3, 11, 13, (0, 0)), (1, 9, 8, (0, 0)), (3, 19, 21, (2, 3))])
def test_the_decoder_gives_each_value_the_encoders_interval(channels, height, width, context, monkeypatch):
    """Step by step, the decoder finds each value in the interval that the encoder coded it with
    (from the counts its forward pass computed), in the same order (the encoder scheduling its steps
    in small chunks, so that windows are reused across chunks): the pixels come back, and the bits
    the decoder counts from its intervals are the encoder's, interval for interval (the tables are
    the torch code's: tests/test_kernels.py)."""
    monkeypatch.setattr(coder, "ENCODE_CHUNK_STEP_SLOTS", 7)
    rng = np.random.default_rng(channels)
    plane = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    net = _net(channels)
    recording = RecordingEncoder()
    words, plan = coder.code_plane(net, plane, (TILE, TILE), context, band=2, encoder=recording)
    counter = BitCounter()
    decoded = coder.decode_plane(net, words, height, width, channels, (TILE, TILE), context, band=2, progress=counter)
    assert np.array_equal(decoded, plane)
    coded = np.concatenate(recording.symbols)
    assert len(coded) == counter.subpixels == plane.size
    tables = np.concatenate(recording.tables)  # three entries a symbol: its interval is the coded entry's
    widths = tables[np.arange(len(coded)), coded] + 1
    assert counter.bits == pytest.approx(float((24 - np.log2(widths)).sum()), rel=1e-12)


def test_a_stream_to_go_on_reading_from_is_a_stream_decoder():
    """decode_plane goes on reading a StreamDecoder; constriction's own decoder, which the decoder
    used to read, is refused with a message naming what to pass."""
    plane = np.random.default_rng(6).integers(0, 256, (6, 6, 1), dtype=np.uint8)
    words, _ = coder.code_plane(_net(1), plane, (TILE, TILE))
    with pytest.raises(TypeError, match="StreamDecoder"):
        coder.decode_plane(_net(1), None, 6, 6, 1, (TILE, TILE), decoder=constriction.stream.queue.RangeDecoder(words))
    decoded = coder.decode_plane(_net(1), None, 6, 6, 1, (TILE, TILE), decoder=coder.StreamDecoder(words))
    assert np.array_equal(decoded, plane)


def test_decoding_with_other_tables_does_not_give_the_image():
    """The agreement above matters: a decoder with other weights gets other pixels (or an error)."""
    rng = np.random.default_rng(5)
    plane = rng.integers(0, 256, (8, 8, 1), dtype=np.uint8)
    words, _ = coder.code_plane(_net(1), plane, (TILE, TILE))
    try:
        decoded = coder.decode_plane(_net(1, "pixelsnail-small"), words, 8, 8, 1, (TILE, TILE))
    except FormatError:
        return
    assert not np.array_equal(decoded, plane)


def test_symbols_coded_through_three_entry_tables_give_the_full_tables_stream():
    """The encoder codes each symbol from its (start, count) with a three-entry table: the stream is
    the one that the symbol's full 256-entry table gives, including values
    0 and 255, zero counts and counts that take everything above their start."""
    rng = np.random.default_rng(3)
    n = 20_000
    counts = rng.integers(0, 1 << 12, (n, 256)).astype(np.float64) * (rng.random((n, 256)) < 0.3)
    counts[:200] = 0
    counts[np.arange(100), rng.integers(0, 256, 100)] = 1.0  # a single value holds everything
    counts[100:150, 0], counts[150:200, 255] = 1.0, 1.0
    counts = np.floor(counts * (TABLE_TOTAL / np.maximum(counts.sum(axis=1, keepdims=True), 1)))
    counts[:, 128] += TABLE_TOTAL - counts.sum(axis=1)  # every row sums to TABLE_TOTAL
    symbols = rng.integers(0, 256, n)
    symbols[:40], symbols[40:80] = 0, 255
    symbols[100:150], symbols[150:200] = 0, 255
    rows = np.arange(n)
    start = np.cumsum(counts, axis=1)[rows, symbols] - counts[rows, symbols]
    full = constriction.stream.queue.RangeEncoder()
    full.encode(symbols.astype(np.int32), coder._FAMILY, counts)
    three = constriction.stream.queue.RangeEncoder()
    coder._encode_symbols(three, symbols, start, counts[rows, symbols])
    assert np.array_equal(three.get_compressed(), full.get_compressed())


def test_encoding_does_not_depend_on_threads_or_chunking(monkeypatch):
    rng = np.random.default_rng(9)
    plane = np.cumsum(rng.integers(0, 30, (21, 30, 3)), axis=1).astype(np.uint8)
    net = _net(3)
    reference, _ = coder.code_plane(net, plane, (TILE, TILE), (2, 2), 2)
    try:
        for threads, positions, pixels in ((2, 10, 3), (4, 1, 1 << 20), (1, 1 << 20, 1)):
            set_threads(threads)  # the kernels' threads (and torch's), as --threads sets them
            monkeypatch.setattr(coder, "ENCODE_CHUNK_STEP_SLOTS", pixels)
            monkeypatch.setattr(coder, "ENCODE_CHUNK_POSITIONS", positions)
            words, _ = coder.code_plane(net, plane, (TILE, TILE), (2, 2), 2)
            assert np.array_equal(words, reference)
    finally:
        set_threads(1)
    decoded = coder.decode_plane(net, reference, 21, 30, 3, (TILE, TILE), (2, 2), 2)
    assert np.array_equal(decoded, plane)


def test_planes_decoded_together_are_each_decoded_alone(monkeypatch):
    """decode_planes steps many planes of one shape as one batch (here in batches of two): each gets
    its own pixels, and a stream cut short fails alone (an error, or other pixels that the file's
    checksum catches), the others unharmed."""
    monkeypatch.setattr(coder, "MAX_BATCH_SLOTS", 4)
    rng = np.random.default_rng(4)
    net = _net(3)
    planes = [np.cumsum(rng.integers(0, 40, (13, 17, 3)), axis=1).astype(np.uint8) for _ in range(5)]
    plan = WindowPlan.for_image(13, 17, (TILE, TILE), (2, 2), 2)
    assert max(len(slots) for slots in plan.slot_groups(4)) == 2  # so two planes a batch
    streams = [coder.code_plane(net, plane, (TILE, TILE), (2, 2), 2)[0] for plane in planes]
    streams[2] = streams[2][: len(streams[2]) // 3]
    results = coder.decode_planes(net, streams, 13, 17, 3, (TILE, TILE), (2, 2), 2)
    for k, (plane, result) in enumerate(zip(planes, results)):
        if k == 2:
            assert isinstance(result, FormatError) or not np.array_equal(result, plane)
        else:
            assert np.array_equal(result, plane)


def test_files_decoded_together_give_each_its_image_or_its_error(tiny_models):
    """api.decode_images: files of different modes and shapes, some alike (decoded as one batch), give
    what each gives alone; a file whose model is not here fails alone."""
    images = [decompose(make_image(mode, h, w, "smooth", seed))
              for seed, (mode, h, w) in enumerate([("RGB", 9, 11), ("RGB", 9, 11), ("L", 9, 11), ("RGBA", 7, 5),
                                                   ("RGB", 9, 11)])]
    snails = [api.encode_image(image, tiny_models, tile=TILE, calibrate=False, fallback=False) for image in images]
    assert all(plane.method == "model" for snail in snails for plane in snail.planes)
    missing = dataclasses.replace(snails[4].planes[0], model_id="00000000")
    snails[4] = dataclasses.replace(snails[4], planes=(missing,))
    results = api.decode_images(snails, tiny_models)
    for image, result in zip(images[:4], results):
        assert same_image(result, image)
    assert isinstance(results[4], ModelError)


@pytest.mark.parametrize("calibrate", [False, True])
def test_images_encoded_together_give_each_the_file_it_gets_alone(tiny_models, calibrate, monkeypatch):
    """api.encode_images: images of different modes and shapes, some alike (their planes coded in the
    same network passes, coder.code_planes, across two batches of planes), each get the file they get
    alone; calibrated planes (each with a network of its own) among them; an image whose model
    cannot be had fails alone."""
    monkeypatch.setattr(coder, "MAX_BATCH_SLOTS", 6)  # 9x11 in tiles of 8 has 2 slots: 3 planes a batch
    images = [decompose(make_image(mode, h, w, "smooth", seed))
              for seed, (mode, h, w) in enumerate([("RGB", 9, 11), ("RGB", 9, 11), ("L", 9, 11), ("RGBA", 9, 11),
                                                   ("RGB", 9, 11), ("LA", 7, 5), ("RGB", 7, 5)])]
    if calibrate:  # a correction for each gray plane: each then has a network of its own
        from snailcompress.codec.calibration import Calibration
        from snailcompress.mixture import num_params

        outputs = num_params(1, zoo.load_model(TINY, channels=1).config.mixtures)
        fixed = Calibration((0.0625,) * outputs, (0.0,) * outputs)
        monkeypatch.setattr(api, "worth_trying", lambda config, pixels: pixels.shape[2] == 1)
        monkeypatch.setattr(api, "calibration_for", lambda config, weights, plan, plane, net: (fixed, {}))
    alone = [api.encode_image(image, tiny_models, tile=TILE, calibrate=calibrate, fallback=False) for image in images]
    assert all(plane.method == "model" for snail in alone for plane in snail.planes)
    assert any(plane.calibration for snail in alone for plane in snail.planes) == calibrate
    together = api.encode_images(images, tiny_models, tile=TILE, calibrate=calibrate, fallback=False)
    assert [C.write(snail) for snail in together] == [C.write(snail) for snail in alone]
    unavailable = api.ModelChooser([TINY + "-no-such-model"])
    failed = api.encode_images(images[:3], unavailable, tile=TILE, calibrate=False, fallback=False)
    assert all(isinstance(result, ModelError) for result in failed)


def test_windows_beyond_the_exact_attention_are_refused_before_coding(tiny_models):
    """A tile and context whose windows would have 2**16 positions or more on an image (the attention's
    sums would no longer be exact, and no decoder would run them): that image fails in one line before
    any coding; a smaller image of the same call, whose windows are the image, is coded."""
    large, small = (decompose(make_image("RGB", side, side, "smooth", 0)) for side in (256, 12))
    refused, coded = api.encode_images([large, small], tiny_models, tile=254, context=2)
    assert isinstance(refused, UsageError) and "256x256 windows of 65,536 pixels" in str(refused)
    assert same_image(api.decode_image(coded, tiny_models), small)


def test_a_network_that_cannot_be_made_fails_the_images_it_codes_alone(tiny_models, monkeypatch):
    """api.encode_images: where the network of a batch of planes cannot be made (a model without an
    integer twin), each image with such a plane gets that error; the other images are coded."""
    images = [decompose(make_image(mode, 9, 11, "smooth", seed)) for seed, mode in enumerate(["RGB", "L", "RGB"])]
    network = tiny_models.network

    def no_rgb(loaded, calibration=None):
        if loaded.channels == 3:
            raise ModelError("no integer network for this model")
        return network(loaded, calibration)

    monkeypatch.setattr(tiny_models, "network", no_rgb)
    results = api.encode_images(images, tiny_models, tile=TILE, calibrate=False, fallback=False)
    assert isinstance(results[0], ModelError) and isinstance(results[2], ModelError)
    assert isinstance(results[1], C.SnailFile)


def test_many_files_load_each_model_once_and_fail_each_once(monkeypatch):
    """Decoding tries the shipped models in turn for every plane: each (model, channel count) is
    loaded, or found not to fit, once per chooser, not once per file."""
    images = [decompose(make_image("RGB", 6, 7, "smooth", seed)) for seed in range(4)]
    snails = [api.encode_image(image, api.ModelChooser(), tile=TILE, calibrate=False, fallback=False) for image in images]
    loads = []
    load_model = api.load_model
    monkeypatch.setattr(api, "load_model", lambda spec, channels: loads.append((spec, channels)) or load_model(spec, channels=channels))
    chooser = api.ModelChooser()  # the files name no model: the shipped ones are tried in turn, snail-gray first
    results = api.decode_images(snails, chooser)
    assert all(same_image(result, image) for result, image in zip(results, images))
    assert sorted(loads) == [("snail-gray", 3), ("snail-rgb", 3)]
    with pytest.raises(ModelError, match="1-channel"):
        chooser._load("snail-gray", 3)  # the failure is kept, and said again
    assert loads.count(("snail-gray", 3)) == 1


def test_coding_on_the_cpu_does_not_import_torch(tmp_path):
    """Encoding an image, its calibration's fit included, and decoding it on the CPU run in numpy and
    the compiled kernels, without importing torch (most of a command's start-up), in a fresh process;
    a torch imported while a decoder holds the threads runs on one, and on coding's count after.
    Where no GPU driver is present, --device auto decides on the CPU without torch too."""
    from importlib import resources

    crop = Image.open(resources.files("snailcompress") / "assets" / "kodim23-crop.png").convert("RGB")
    pixels = np.asarray(crop)[100:120, 60:84]
    Image.fromarray(pixels).save(tmp_path / "small.png")
    script = """
import sys
from snailcompress import api
from snailcompress.cli import main
from snailcompress.codec import calibration
calibration.TYPICAL_SAVING_BITS = 100.0  # a calibration is fitted even for this small image
fitted, fit = [], calibration.fit
calibration.fit = lambda *args, **kwargs: fitted.append(1) or fit(*args, **kwargs)
device = "auto" if not api._gpu_driver_present() else "cpu"
for argv in (["encode", "small.png", "-q", "--device", device, "--threads", "1"],
             ["decode", "small.snail", "-o", "back.png", "-q", "--device", device, "--threads", "1"]):
    try:
        main(argv)
    except SystemExit as e:
        assert not e.code, e.code
assert fitted, "no calibration was fitted"
assert "torch" not in sys.modules, "coding imported torch"
from snailcompress.integer import runtime
from snailcompress.threads import set_threads
set_threads(2)
with runtime.take_threads():  # torch imported while a decoder holds the threads: one thread, then coding's
    import torch
    assert torch.get_num_threads() == 1, torch.get_num_threads()
assert torch.get_num_threads() == 2, torch.get_num_threads()
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "back.png")), pixels)
    assert C.read((tmp_path / "small.snail").read_bytes()).planes[0].method == "model"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without a GPU")
def test_devices_that_are_not_here_are_refused():
    assert api.resolve_device("auto") == api.resolve_device("cpu") == api.resolve_device("cpu:0") == "cpu"
    assert _net(1).to("cpu:0").device == "cpu"  # the compiled path, as for "cpu"
    for name in ("cuda", "cuda:1", "tpu", "nonsense"):
        with pytest.raises(api.UsageError, match="--device"):
            api.resolve_device(name)


# --------------------------------------------------------------------------------------------
# 3. tiles


@settings(max_examples=200, deadline=None)
@given(
    height=st.integers(1, 40),
    width=st.integers(1, 40),
    channels=st.sampled_from([1, 2, 3]),
    tile=st.one_of(st.integers(1, 17), st.tuples(st.integers(1, 17), st.integers(1, 17))),
    seed=st.integers(0, 2**32 - 1),
)
def test_windows_without_context_are_padded_tiles(height, width, channels, tile, seed):
    plane = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    th, tw = (tile, tile) if isinstance(tile, int) else tile
    plan = WindowPlan.for_image(height, width, (th, tw), (0, 0))
    assert (plan.tile_h, plan.tile_w) == (plan.win_h, plan.win_w) == (min(th, height), min(tw, width))
    assert (plan.rows, plan.cols) == (-(-height // plan.tile_h), -(-width // plan.tile_w))
    tiles, coded = plan.windows(plane)
    assert tiles.shape == (plan.rows * plan.cols, channels, plan.tile_h, plan.tile_w) and tiles.dtype == np.uint8
    for n in range(len(tiles)):
        r, c = divmod(n, plan.cols)
        vh, vw = min(plan.tile_h, height - r * plan.tile_h), min(plan.tile_w, width - c * plan.tile_w)
        assert 1 <= vh and 1 <= vw
        real = plane[r * plan.tile_h : r * plan.tile_h + vh, c * plan.tile_w : c * plan.tile_w + vw].transpose(2, 0, 1)
        t = tiles[n]
        assert np.array_equal(t[:, :vh, :vw], real)
        assert coded[n, :vh, :vw].all() and coded[n].sum() == vh * vw  # only the real pixels are coded
        # padding repeats the last real row, then the last real column
        for i in range(plan.tile_h):
            for j in range(plan.tile_w):
                assert np.array_equal(t[:, i, j], t[:, min(i, vh - 1), min(j, vw - 1)])


def test_tile_padding_example():
    plane = np.arange(15, dtype=np.uint8).reshape(3, 5, 1)
    tiles, coded = WindowPlan.for_image(3, 5, (2, 2), (0, 0)).windows(plane)
    assert len(tiles) == 6
    assert tiles[2, 0].tolist() == [[4, 4], [9, 9]]  # top right: column 4 repeated
    assert tiles[3, 0].tolist() == [[10, 11], [10, 11]]  # bottom left: row 2 repeated
    assert tiles[5, 0].tolist() == [[14, 14], [14, 14]]  # the corner
    assert coded[5].tolist() == [[True, False], [False, False]]


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(1, 30),
    width=st.integers(1, 30),
    tile=st.integers(1, 12),
    above=st.integers(0, 6),
    left=st.integers(0, 6),
    band=st.integers(1, 5),
)
def test_window_plans_cover_every_pixel_once(height, width, tile, above, left, band):
    """Windows with context overlap, but each real pixel is coded by exactly one of them, once, in
    the stream's order, at a step of its window's slot (the round trips below show the order is the
    decoder's)."""
    plan = WindowPlan.for_image(height, width, (tile, tile), (above, left), band)
    assert plan.win_h <= height and plan.win_w <= width and plan.band >= 1
    canvas = plan.canvas(np.zeros((height, width, 1), np.uint8))
    assert canvas.shape[0] >= height and canvas.shape[1] >= width
    plane = np.arange(height * width).reshape(height, width, 1)
    windows, coded = plan.windows(plane)
    assert windows.shape == (plan.rows * plan.cols, 1, plan.win_h, plan.win_w) and coded.sum() == height * width
    assert sorted(windows[:, 0][coded].tolist()) == list(range(height * width))
    pixels = []
    for slots in plan.slot_groups(coder.MAX_BATCH_SLOTS):
        start, count = plan.slot_schedule(slots)
        _, window, position, coded = coder.schedule(plan, slots, start, count,
                                                    np.arange(coder.batch_steps(plan, start, count)))
        step, slot = np.nonzero(coded)
        r, c = np.divmod(position[step, slot], plan.win_w)
        y, x = plan.place(slots[slot, 0] + window[step, slot], slots[slot, 1], r, c)
        pixels.append(y * width + x)
    assert sorted(np.concatenate(pixels).tolist()) == list(range(height * width))


@pytest.mark.parametrize(
    "model, channels, height, width, tile, context, band",
    [
        (TINY, 3, 20, 23, 8, (2, 2), 2),
        (TINY, 3, 20, 23, 8, (0, 3), 1),
        (TINY, 1, 20, 23, 8, (3, 0), 3),
        (TINY, 3, 9, 40, 8, (4, 4), 2),  # one row of windows: no context above is used
        (TINY, 1, 17, 5, 4, (2, 1), 4),
        (TINY, 3, 13, 30, 6, (2, 5), 2),
    ],
)
def test_windows_with_context_round_trip(model, channels, height, width, tile, context, band):
    rng = np.random.default_rng(height * width)
    plane = np.cumsum(rng.integers(0, 40, (height, width, channels)), axis=1).astype(np.uint8)  # some structure
    net = _net(channels, model)
    words, plan = coder.code_plane(net, plane, (tile, tile), context, band)
    decoded = coder.decode_plane(net, words, height, width, channels, (tile, tile), context, band)
    assert np.array_equal(decoded, plane)
    # the same plane without context is another stream: the context is really used
    plain, _ = coder.code_plane(net, plane, (tile, tile))
    assert not np.array_equal(plain, words)


def test_progress_shows_the_running_code_length():
    """The bar's running bits/subpixel is the code length of what was coded: the same when decoding,
    and within a few words of the real stream."""
    rng = np.random.default_rng(3)
    plane = np.cumsum(rng.integers(0, 30, (20, 23, 3)), axis=1).astype(np.uint8)
    net = _net(3)
    total = coder.coding_steps(20, 23, (TILE, TILE), (2, 2), 2)
    with coder.CodingProgress(12, "encode", enabled=False) as encoding:
        words, _ = coder.code_plane(net, plane, (TILE, TILE), (2, 2), 2, progress=encoding)
    with coder.CodingProgress(total, "decode", enabled=False) as decoding:
        coder.decode_plane(net, words, 20, 23, 3, (TILE, TILE), (2, 2), 2, progress=decoding)
    assert encoding.subpixels == decoding.subpixels == plane.size
    assert decoding.steps == decoding.done == total
    assert encoding.done == len(WindowPlan.for_image(20, 23, (TILE, TILE), (2, 2), 2).windows(plane)[0])  # windows
    assert encoding.bits == decoding.bits
    assert 32 * (len(words) - 2) <= encoding.bits <= 32 * len(words)


def test_windows_without_context_are_independent_tiles_in_raster_order():
    """code_plane with no context writes exactly this stream, written out here from its definition
    with the full tables of the incremental network: the plane's tiles (edges repeated) as one
    batch, position by position in raster order, for each channel the symbols of the tiles with a
    real pixel there, in tile order."""
    rng = np.random.default_rng(11)
    plane = rng.integers(0, 256, (19, 21, 3), dtype=np.uint8)
    net = _net(3)
    words, plan = coder.code_plane(net, plane, (TILE, TILE))

    padded = np.pad(plane, ((0, 24 - 19), (0, 24 - 21), (0, 0)), mode="edge")
    tiles = padded.reshape(3, TILE, 3, TILE, 3).transpose(0, 2, 4, 1, 3).reshape(9, 3, TILE, TILE)
    real_h, real_w = np.repeat([8, 8, 3], 3), np.tile([8, 8, 5], 3)
    encoder = constriction.stream.queue.RangeEncoder()
    family = constriction.stream.model.Categorical(perfect=False)
    stepper = net.stepper(9, TILE, TILE)
    for i in range(TILE):
        for j in range(TILE):
            values = np.ascontiguousarray(tiles[:, :, i, j]).astype(np.int64)
            real = (real_h > i) & (real_w > j)
            conditionals = IntegerConditionals(stepper.predict(), 3)
            for c in range(3):
                table = conditionals.tables(c, values[:, :c]).astype(np.float64)
                encoder.encode(values[real, c].astype(np.int32), family, np.ascontiguousarray(table[real]))
            stepper.commit(values)
    assert (plan.rows, plan.cols) == (3, 3)
    assert np.array_equal(words, encoder.get_compressed())


# --------------------------------------------------------------------------------------------
# 4. the range coder with integer tables


def test_coded_size_is_close_to_the_ideal():
    """The range coder's stream is within 0.1% of the ideal code length of its integer tables."""
    rng = np.random.default_rng(1)
    counts = np.floor(rng.dirichlet(np.full(256, 0.3), 400) * TABLE_TOTAL)
    counts[:, 0] += TABLE_TOTAL - counts.sum(axis=1)
    which = rng.integers(0, len(counts), 60_000)
    p = (counts[which] + 1) / 2**24
    symbols = (p.cumsum(axis=1) > rng.random((len(p), 1))).argmax(axis=1)
    ideal = -np.log2(p[np.arange(len(p)), symbols]).sum()
    encoder = constriction.stream.queue.RangeEncoder()
    for s in range(0, len(symbols), 10_000):
        encoder.encode(symbols[s : s + 10_000].astype(np.int32), coder._FAMILY, np.ascontiguousarray(counts[which][s : s + 10_000]))
    words = encoder.get_compressed()
    assert abs(32 * len(words) - ideal) / ideal < 1e-3, (32 * len(words), ideal)
    decoder = constriction.stream.queue.RangeDecoder(words)
    back = np.concatenate([decoder.decode(coder._FAMILY, np.ascontiguousarray(counts[which][s : s + 10_000]))
                           for s in range(0, len(symbols), 10_000)])
    assert np.array_equal(back, symbols)


# --------------------------------------------------------------------------------------------
# 5. the command line: one line per error, no traceback, no file left behind


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, *needles: str) -> str:
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not a crash
    assert "Traceback" not in result.output
    lines = result.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith(ERROR), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def listing(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


@pytest.fixture(scope="module")
def sample(tmp_path_factory, model_only):
    """A small RGB PNG and its .snail (made once)."""
    d = tmp_path_factory.mktemp("sample")
    make_image("RGB", 9, 11, "gradient", 7).save(d / "a.png")
    result = cli("encode", d / "a.png", "--model", TINY, "--tile", TILE, "-q")
    assert result.exit_code == 0, result.output
    return (d / "a.png").read_bytes(), (d / "a.snail").read_bytes()


@pytest.fixture
def work(tmp_path, monkeypatch, sample):
    """A directory holding a.png and a.snail, made the current directory."""
    (tmp_path / "a.png").write_bytes(sample[0])
    (tmp_path / "a.snail").write_bytes(sample[1])
    monkeypatch.chdir(tmp_path)
    return tmp_path


def pixels(path) -> tuple:
    with Image.open(path) as im:
        return im.mode, im.size, im.tobytes()


def test_cli_encode_info_decode(work):
    r = cli("info", "a.snail")
    assert r.exit_code == 0 and len(r.output.splitlines()) > 3
    f = C.read((work / "a.snail").read_bytes())
    assert (f.width, f.height, f.mode, f.planes[0].model_name, f.planes[0].tile) == (11, 9, "RGB", TINY, (TILE, TILE))
    r = cli("decode", "a.snail", "-o", "b.png", "-q")
    assert r.exit_code == 0, r.output
    assert pixels(work / "b.png") == pixels(work / "a.png")
    assert listing(work) == ["a.png", "a.snail", "b.png"]


def test_cli_encode_with_context(work):
    """--context: tiles see their coded neighbours; the file says so, and decodes exactly."""
    make_image("RGB", 21, 26, "gradient", 3).save(work / "c.png")
    r = cli("encode", "c.png", "--model", TINY, "--tile", TILE, "--context", 2, "--no-calibrate", "-q")
    assert r.exit_code == 0, r.output
    r = cli("info", "c.snail")
    assert r.exit_code == 0
    plane = C.read((work / "c.snail").read_bytes()).planes[0]
    assert (plane.tile, plane.context, plane.band) == ((TILE, TILE), (2, 2), 2)
    r = cli("decode", "c.snail", "-o", "d.png", "-q")
    assert r.exit_code == 0, r.output
    assert pixels(work / "d.png") == pixels(work / "c.png")
    for bad in ("-1", "65"):
        one_line_error(cli("encode", "c.png", "--model", TINY, "--context", bad, "-q", "-f"), "--context must be between")


def _reframe(obj: dict, n_words: int = 0) -> bytes:
    """A .snail file around a header object, with a correct checksum (C._encode_header does not check)."""
    header = C._encode_header(obj)
    body = bytes([C.VERSION]) + C._varint(len(header)) + header + bytes(4 * n_words)
    return C.MAGIC + body + struct.pack("<I", zlib.crc32(body))


def _edit(data: bytes, **changes) -> bytes:
    f = C.read(data)
    return C.write(dataclasses.replace(f, **changes))


def _flip(data: bytes, i: int, bit: int = 0) -> bytes:
    b = bytearray(data)
    b[i] ^= 1 << bit
    return bytes(b)


def _header_middle(data: bytes) -> int:
    return 6 + data[5] // 2  # the header length fits one byte here


def _absurd(data: bytes) -> bytes:
    f = C.read(data)
    obj = C._header_obj(f)
    obj["width"] = obj["height"] = 60000
    return _reframe(obj, 10)


def _mode_pa(data: bytes) -> bytes:
    """A valid container for a mode this version never writes (PA, as P + constant alpha)."""
    f = C.read(data)
    obj = C._header_obj(f)
    obj.update(mode="PA", extras={"palette": "00" * 3, "palette_mode": "RGB", "constant_alpha": 255})
    obj["planes"][0]["channels"] = "P"
    return _reframe(obj, f.planes[0].n_words)


def _old_version(data: bytes) -> bytes:
    """The first bytes of a file of snailcompress 0.1 (format version 5)."""
    return b"\x89SNAIL\r\n\x05" + data[5:]


BAD_FILES = {
    "empty": (lambda d: b"", "the file is empty"),
    "random bytes": (lambda d: bytes(np.random.default_rng(3).integers(0, 256, 300, dtype=np.uint8)), "not a .snail file"),
    "text": (lambda d: b"hello, I am not a .snail file\n", "not a .snail file"),
    "truncated": (lambda d: d[: len(d) // 2], "truncated"),
    "truncated by one byte": (lambda d: d[:-1], "truncated"),
    "trailing garbage": (lambda d: d + b"\0\0", "trailing data"),
    "header bit flip": (lambda d: _flip(d, _header_middle(d), 3), "checksum mismatch"),
    "header length bit flip": (lambda d: _flip(d, 5, 0), "corrupt|truncated|trailing data"),
    "payload bit flip": (lambda d: _flip(d, len(d) - 20, 5), "checksum mismatch"),
    "checksum flip": (lambda d: _flip(d, len(d) - 1, 7), "checksum mismatch"),
    "wrong magic": (lambda d: b"\x89SNX" + d[4:], "not a .snail file"),
    "unknown version": (lambda d: d[:4] + b"\x09" + d[5:], "format version 9, written by a newer snailcompress"),
    "older version": (_old_version, "written by snailcompress 0.1"),
    "absurd dimensions": (_absurd, "60000 x 60000 pixels is more than"),
    "unsupported mode": (_mode_pa, "mode PA image, which this version of snailcompress cannot decode"),
    "another model": (
        lambda d: _edit(d, planes=(dataclasses.replace(C.read(d).planes[0], model_id="01234567", band=None),)),
        "coded with model 'pixelsnail-tiny' (id 01234567), which is not available here",
    ),
    "another arithmetic": (lambda d: _edit(d, arithmetic=2), "integer arithmetic version 2"),
    "windows too large": (  # 256x256 windows: beyond the exact attention
        lambda d: _edit(d, height=300, width=300, planes=(dataclasses.replace(C.read(d).planes[0], tile=(254, 254), band=None),)),
        "windows of 65,536 pixels are larger than the model's exact arithmetic allows",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_cli_decode_bad_files(work, case):
    make, message = BAD_FILES[case]
    (work / "bad.snail").write_bytes(make((work / "a.snail").read_bytes()))
    before = listing(work)
    line = one_line_error(cli("decode", "bad.snail", "--model", TINY, "-q"))
    assert any(m in line for m in message.split("|")), line
    assert listing(work) == before  # no bad.png, no temporary file


@pytest.mark.parametrize("case", ["empty", "truncated", "header bit flip", "wrong magic", "unknown version", "older version",
                                  "absurd dimensions"])
def test_cli_info_bad_files(work, case):
    make, message = BAD_FILES[case]
    (work / "bad.snail").write_bytes(make((work / "a.snail").read_bytes()))
    line = one_line_error(cli("info", "bad.snail"))
    assert any(m in line for m in message.split("|")), line


def test_cli_info_goes_on_past_bad_files(work):
    (work / "bad.snail").write_bytes(b"junk")
    r = cli("info", "bad.snail", "a.snail", "missing.snail")
    assert r.exit_code == 1 and "a.snail:" in r.stdout and "Traceback" not in r.output
    errors = r.stderr.splitlines()
    assert len(errors) == 2 and "bad.snail" in errors[0] and "missing.snail" in errors[1]


def test_api_errors_are_typed(work, tiny_models):
    data = (work / "a.snail").read_bytes()
    with pytest.raises(FormatError, match="arithmetic"):
        api.decode_image(C.read(BAD_FILES["another arithmetic"][0](data)), tiny_models)
    with pytest.raises(ModelError):
        api.decode_image(C.read(BAD_FILES["another model"][0](data)), tiny_models)


def test_payload_changes_never_give_a_wrong_image(work):
    """Flip payload bits and repair the file's CRC: decoding fails loudly or gives the exact image."""
    data = (work / "a.snail").read_bytes()
    n_words = C.read(data).planes[0].n_words
    start = len(data) - 4 - 4 * n_words
    outcomes = set()
    for k, (word, bit) in enumerate([(0, 31), (0, 0), (n_words // 2, 7), (n_words - 2, 12), (n_words - 1, 0)]):
        b = bytearray(data[:-4])
        b[start + 4 * word + bit // 8] ^= 1 << (bit % 8)
        b += struct.pack("<I", zlib.crc32(bytes(b[len(C.MAGIC):])))
        (work / f"bad{k}.snail").write_bytes(bytes(b))
        r = cli("decode", f"bad{k}.snail", "--model", TINY, "-q")
        if r.exit_code == 0:
            assert pixels(work / f"bad{k}.png") == pixels(work / "a.png")
            outcomes.add("same image")
        else:
            line = one_line_error(r)
            assert "decoded pixels do not match" in line or "coded stream is corrupt" in line, line
            assert not (work / f"bad{k}.png").exists()
            outcomes.add("error")
    assert "error" in outcomes


def test_cli_model_file_that_changed_or_vanished(work):
    model = zoo.load_model(TINY, channels=3).model
    path = work / "mine.safetensors"
    zoo.save_model(model, path)
    r = cli("encode", "a.png", "-o", "mine.snail", "--model", path, "--tile", TILE, "-q")
    assert r.exit_code == 0, r.output
    r = cli("decode", "mine.snail", "-o", "ok.png", "-q")  # finds the model named in the file
    assert r.exit_code == 0, r.output
    assert pixels(work / "ok.png") == pixels(work / "a.png")

    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    zoo.save_model(model, path)  # retrained in place: same name, other weights
    before = listing(work)
    line = one_line_error(cli("decode", "mine.snail", "-o", "x.png", "-q"), f"coded with model '{path}'", "pass it with --model")
    assert "not available here with those exact weights" in line
    path.unlink()
    one_line_error(cli("decode", "mine.snail", "-o", "x.png", "-q"), "not available here")
    assert listing(work) == sorted(set(before) - {"mine.safetensors"})


def test_cli_encode_model_that_cannot_be_loaded_is_an_error_not_the_default(work):
    """A --model typo or a damaged file must not silently code with the shipped default instead."""
    (work / "damaged.safetensors").write_bytes(b"not weights")
    (work / "empty-run").mkdir()
    (work / "young-run" / "checkpoints" / "last").mkdir(parents=True)
    for spec, message in [("no-such-run", "no model 'no-such-run'"), ("empty-run", "no model 'empty-run'"),
                          ("young-run", "without a checkpoint yet"), ("damaged.safetensors", "damaged.safetensors")]:
        before = listing(work)
        one_line_error(cli("encode", "a.png", "-o", "x.snail", "--model", spec, "-q"), message)
        assert listing(work) == before


def test_cli_encode_skips_a_model_for_the_other_channel_count(work):
    """--model may name a grayscale and an RGB model: each plane takes the first that codes its channels."""
    zoo.save_model(zoo.load_model(TINY, channels=1).model, work / "gray.safetensors")
    r = cli("encode", "a.png", "-o", "two.snail", "--model", "gray.safetensors", "--model", TINY, "--tile", TILE, "-q")
    assert r.exit_code == 0, r.output
    assert C.read((work / "two.snail").read_bytes()).planes[0].model_name == TINY


def test_cli_long_model_path_is_stored_shortened(work):
    deep = work / ("d" * 120)
    deep.mkdir()
    zoo.save_model(zoo.load_model(TINY, channels=3).model, deep / "m.safetensors")
    r = cli("encode", "a.png", "-o", "deep.snail", "--model", deep / "m.safetensors", "--tile", TILE, "-q")
    assert r.exit_code == 0, r.output
    name = C.read((work / "deep.snail").read_bytes()).planes[0].model_name
    assert len(name) == C.MAX_MODEL_NAME_CHARS and name.startswith("...") and name.endswith("/m.safetensors")
    r = cli("decode", "deep.snail", "-o", "deep.png", "--model", deep / "m.safetensors", "-q")
    assert r.exit_code == 0, r.output


def test_cli_encode_no_name_records_the_id_alone(work):
    """-n: a model that is not shipped is recorded by its id only, so no local path is in the file and
    the file is that much smaller; decoding then needs --model, and says so in one line."""
    zoo.save_model(zoo.load_model(TINY, channels=3).model, work / "mine.safetensors")
    for flags, name in [((), "mine.safetensors"), (("-n",), None)]:
        r = cli("encode", "a.png", "-o", f"{len(flags)}.snail", "--model", "mine.safetensors", "--tile", TILE, *flags, "-q")
        assert r.exit_code == 0, r.output
        assert C.read((work / f"{len(flags)}.snail").read_bytes()).planes[0].model_name == name
    named, unnamed = (work / "0.snail").read_bytes(), (work / "1.snail").read_bytes()
    assert len(named) - len(unnamed) == 3 + len("mine.safetensors")  # tag, length, plane index and the name
    assert C.read(named) == dataclasses.replace(C.read(unnamed), planes=(dataclasses.replace(
        C.read(unnamed).planes[0], model_name="mine.safetensors"),))
    assert cli("decode", "0.snail", "-o", "0.png", "-q").exit_code == 0  # found by its name
    one_line_error(cli("decode", "1.snail", "-o", "1.png", "-q"), C.read(unnamed).planes[0].model_id, "--model")
    assert not (work / "1.png").exists()
    assert cli("decode", "1.snail", "-o", "1.png", "--model", "mine.safetensors", "-q").exit_code == 0
    assert pixels(work / "1.png") == pixels(work / "0.png") == pixels(work / "a.png")


def test_cli_models_given_twice_for_one_channel_count_or_unloadable_are_errors(work):
    """Two --model for RGB: which one codes is no guess to leave (the first won, silently). decode's
    --model that cannot be loaded (a typo) is an error, as encode's is (it was passed over)."""
    zoo.save_model(zoo.load_model(TINY, channels=3).model, work / "mine.safetensors")
    zoo.save_model(zoo.load_model(TINY, channels=3).model, work / "also-mine.safetensors")
    zoo.save_model(zoo.load_model(TINY, channels=1).model, work / "gray.safetensors")
    one_line_error(cli("encode", "a.png", "-o", "x.snail", "--model", "mine.safetensors", "--model", "gray.safetensors",
                       "--model", "also-mine.safetensors", "-q"), "both code 3-channel planes")
    one_line_error(cli("encode", "a.png", "-o", "x.snail", "--model", TINY, "--model", "pixelsnail-small", "-q"),
                   "both code 3-channel planes")
    assert cli("encode", "a.png", "-o", "x.snail", "--model", "mine.safetensors", "--model", "mine.safetensors",
               "--model", TINY, "--tile", TILE, "-q").exit_code == 0  # the same file twice, and a preset: the file
    assert C.read((work / "x.snail").read_bytes()).planes[0].model_name == "mine.safetensors"
    # a preset (any channel count) with a gray model file: the file codes the gray plane, the preset RGB
    make_image("RGBA", 9, 7, "gradient", 3).save(work / "rgba.png")
    r = cli("encode", "rgba.png", "--model", "gray.safetensors", "--model", TINY, "--tile", TILE, "--no-calibrate", "-q")
    assert r.exit_code == 0, r.output
    planes = C.read((work / "rgba.snail").read_bytes()).planes
    assert [p.model_name for p in planes] == ["pixelsnail-tiny", "gray.safetensors"]
    one_line_error(cli("decode", "a.snail", "-o", "x.png", "--model", "no-such-model", "-q"), "no-such-model")
    assert not (work / "x.png").exists()


def test_cli_decode_refuses_an_output_format_before_decoding_and_info_reads_standard_input(work, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("decoded although the output cannot be written")

    monkeypatch.setattr(api, "decode_planes", never)
    one_line_error(cli("decode", "a.snail", "-o", "x.jpg", "-q"), "x.jpg", "not a format snailcompress writes exactly")
    monkeypatch.undo()
    assert listing(work) == ["a.png", "a.snail"]
    r = CliRunner().invoke(main, ["info", "-"], input=(work / "a.snail").read_bytes())
    assert r.exit_code == 0 and "format version" in r.output


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("command, source", [("encode", "a.png"), ("decode", "a.snail")])
def test_cli_standard_output_on_a_full_device_is_one_line(work, command, source):
    with open("/dev/full", "wb") as full:
        done = subprocess.run([sys.executable, "-m", "snailcompress.cli", command, source, "-c", "--model", TINY, "-q"],
                              stdout=full, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"snailcompress: error: {source}: cannot write to standard output: ")


def test_cli_decode_falls_back_to_the_model_named_in_the_file(work):
    r = cli("decode", "a.snail", "-o", "b.png", "--model", "pixelsnail-small", "-q")
    assert r.exit_code == 0, r.output
    assert pixels(work / "b.png") == pixels(work / "a.png")


def _png(width: int, height: int, depth: int, color_type: int, rows: bytes) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def _bad_inputs(d: Path) -> dict:
    Image.new("CMYK", (5, 4), (1, 2, 3, 4)).save(d / "cmyk.tif")
    Image.new("CMYK", (5, 4), (1, 2, 3, 4)).save(d / "cmyk.jpg")
    (d / "grey16.png").write_bytes(_png(3, 2, 16, 0, b"\0" + bytes(range(6)) + b"\0" + bytes(range(6, 12))))
    (d / "rgb16.png").write_bytes(_png(2, 2, 16, 2, (b"\0" + bytes(range(12))) * 2))
    (d / "text.png").write_text("not an image at all")
    (d / "empty.png").write_bytes(b"")
    (d / "adir.png").mkdir()
    return {
        "cmyk.tif": "mode CMYK",
        "cmyk.jpg": "mode CMYK",
        "grey16.png": "16-bit",
        "rgb16.png": "mode RGB (16-bit)",
        "text.png": "not an image file",
        "empty.png": "is empty, not an image",
        "adir.png": "is a directory",
        "missing.png": "missing.png: no such file",
    }


def test_cli_encode_bad_inputs(work):
    for name, message in _bad_inputs(work).items():
        before = listing(work)
        line = one_line_error(cli("encode", name, "--model", TINY, "--tile", TILE, "-q"), message)
        assert ("cannot be coded exactly" in line) == name.startswith(("cmyk", "grey16", "rgb16")), line  # why, for a mode
        assert listing(work) == before, name


def test_cli_missing_input_for_decode_and_info(work):
    one_line_error(cli("decode", "missing.snail", "--model", TINY, "-q"), "missing.snail: cannot read")
    one_line_error(cli("info", "missing.snail"), "missing.snail: cannot read")
    # an input that is not there is said to be missing, not blamed on its output's directory (foo/...snail)
    one_line_error(cli("encode", "foo/..", "--model", TINY, "-q"), "foo/..: no such file")
    one_line_error(cli("decode", "foo/a.snail", "--model", TINY, "-q"), "foo/a.snail: cannot read")
    assert listing(work) == ["a.png", "a.snail"]


OUTPUTS = [("encode", "a.png", "x.snail"), ("decode", "a.snail", "x.png")]


@pytest.mark.parametrize("command, source, name", OUTPUTS)
def test_cli_output_under_a_regular_file(work, command, source, name):
    target = work / "a.png" / name  # its "directory" a.png is a regular file
    one_line_error(cli(command, source, "-o", target, "--model", TINY, "-q"), "cannot write", "a.png is a file, not a directory")
    assert listing(work) == ["a.png", "a.snail"]
    one_line_error(cli(command, source, "-o", work / "no" / name, "--model", TINY, "-q"), "cannot write", "does not exist")
    one_line_error(cli(command, source, "-o", f"/etc/passwd/{name}", "--model", TINY, "-q"), "cannot write")


@pytest.mark.parametrize("command, source, name", OUTPUTS)
def test_cli_unwritable_output_directory(work, monkeypatch, command, source, name):
    """chmod does not stop root: simulate the operating system's refusal instead."""
    out = work / "readonly"
    out.mkdir()
    real_open = os.open

    def deny(path, *a, **k):
        if str(path).startswith(str(out)):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, *a, **k)

    monkeypatch.setattr(os, "open", deny)
    coded = []  # refused before any coding, not after it
    for step in ("encode_images", "decode_images"):
        monkeypatch.setattr(api, step, lambda items, *a, real=getattr(api, step), **k: coded.extend(items) or real(items, *a, **k))
    one_line_error(cli(command, source, "-o", out / name, "--model", TINY, "-q"), "cannot write into", "Permission denied")
    assert os.listdir(out) == [] and coded == []


def test_cli_existing_output_needs_force(work):
    (work / "b.snail").write_bytes(b"precious")
    one_line_error(cli("encode", "a.png", "-o", "b.snail", "--model", TINY, "-q"), "b.snail already exists (use -f")
    assert (work / "b.snail").read_bytes() == b"precious"
    one_line_error(cli("decode", "a.snail", "--model", TINY, "-q"), "a.png already exists (use -f")
    r = cli("encode", "a.png", "-o", "b.snail", "--model", TINY, "--tile", TILE, "-f", "-q")
    assert r.exit_code == 0, r.output
    assert (work / "b.snail").read_bytes() == (work / "a.snail").read_bytes()
    (work / "c.png").write_bytes(b"precious")
    r = cli("decode", "b.snail", "-o", "c.png", "--model", TINY, "-f", "-q")
    assert r.exit_code == 0, r.output
    assert pixels(work / "c.png") == pixels(work / "a.png")
    assert listing(work) == ["a.png", "a.snail", "b.snail", "c.png"]


def test_cli_several_inputs(work):
    make_image("L", 4, 6, "random", 2).save(work / "g.png")
    (work / "one.snail").write_bytes(b"x")
    one_line_error(cli("encode", "a.png", "g.png", "-o", "one.snail", "--model", TINY, "-q"), "this is a file")
    # several inputs and a name that is not there: a directory only where the name says so (as cp)
    one_line_error(cli("encode", "a.png", "g.png", "-o", "two.snail", "--model", TINY, "-q"), "end it with /")
    assert not (work / "two.snail").exists()
    (work / "out").mkdir()
    (work / "out" / "g.snail").write_bytes(b"x")
    r = cli("encode", "a.png", "g.png", "-o", "out", "--model", TINY, "--tile", TILE, "-q")
    assert r.exit_code == 1 and r.stdout == ""
    assert r.stderr.strip() == "snailcompress: error: g.png: out/g.snail already exists (use -f to overwrite)"
    assert listing(work / "out") == ["a.snail", "g.snail"]  # a.png coded, g.snail untouched
    assert (work / "out" / "g.snail").read_bytes() == b"x"
    (work / "out" / "g.snail").unlink()

    r = cli("encode", "a.png", "g.png", "-o", "out", "--model", TINY, "--tile", TILE, "-f")
    assert r.exit_code == 0, r.output
    assert len(r.stdout.splitlines()) == 2  # one summary line per file
    assert listing(work / "out") == ["a.snail", "g.snail"]
    r = cli("decode", "out/a.snail", "out/g.snail", "-o", "back/", "--model", TINY, "-q")  # the directory is made
    assert r.exit_code == 0 and r.output == "", r.output
    assert pixels(work / "back" / "a.png") == pixels(work / "a.png")
    assert pixels(work / "back" / "g.png") == pixels(work / "g.png")
    # -o DIR/ is made at the first file written into it: none when no file could be, nor its parents
    (work / "junk.png").write_bytes(b"junk")
    r = cli("encode", "junk.png", "-o", "new/deeper/", "--model", TINY, "-q")
    assert r.exit_code == 1 and "junk.png" in r.stderr and not (work / "new").exists()
    one_line_error(cli("encode", "a.png", "-o", "new/", "--model", TINY, "--device", "nowhere", "-q"), "nowhere")
    assert not (work / "new").exists()
    r = cli("encode", "junk.png", "a.png", "-o", "new/deeper/", "--model", TINY, "--tile", TILE, "-q")
    assert r.exit_code == 1 and listing(work / "new" / "deeper") == ["a.snail"]
    (work / "junk.png").unlink()

    r = cli("encode", "g.png", "-o", "g2.snail", "--model", TINY, "--tile", TILE, "-q")
    assert r.exit_code == 0
    one_line_error(cli("encode", "g.png", "g.png", "--model", TINY, "-q", "-f"), "would be written twice")
    one_line_error(cli("encode", "a.png", "--tile", "0", "--model", TINY, "-q"), "--tile must be between")

    # an input is never written over, even with -f, by its own name or through a link
    before = {name: (work / name).read_bytes() for name in ("a.png", "a.snail")}
    (work / "link.png").symlink_to("a.png")
    one_line_error(cli("encode", "a.png", "-o", "a.png", "--model", TINY, "-q", "-f"), "its output a.png is itself")
    one_line_error(cli("encode", "a.png", "-o", "link.png", "--model", TINY, "-q", "-f"), "is the input a.png")
    one_line_error(cli("decode", "a.snail", "-o", "a.snail", "--model", TINY, "-q", "-f"), "never written over")
    assert {name: (work / name).read_bytes() for name in before} == before


def test_cli_encodes_many_files_together_as_each_alone(work, monkeypatch):
    """Several files are encoded together (api.encode_files: batches of about ENCODE_BATCH_PIXELS, the
    planes of one shape and model in the same network passes): each file gets the bytes it gets when
    encoded alone, in one batch or several, on one thread or two; reports come in input order, and a
    bad file is named in its place."""
    for k in range(6):
        make_image("L" if k % 3 == 0 else "RGB", 7 + k % 2, 9, "random", k).save(work / f"m{k}.png")
    (work / "m2.png").write_bytes(b"not an image")
    names = [f"m{k}.png" for k in range(6)]
    good = [k for k in range(6) if k != 2]
    (work / "alone").mkdir()
    for k in good:
        assert cli("encode", f"m{k}.png", "-o", f"alone/m{k}.snail", "--model", TINY, "--tile", TILE, "-q").exit_code == 0
    runs = {}
    for batch_pixels, threads in [(api.ENCODE_BATCH_PIXELS, 1), (api.ENCODE_BATCH_PIXELS, 2), (150, 1)]:
        monkeypatch.setattr(api, "ENCODE_BATCH_PIXELS", batch_pixels)
        out = f"out-{batch_pixels}-{threads}"
        runs[out] = r = cli("encode", *names, "-o", f"{out}/", "--model", TINY, "--tile", TILE, "--threads", threads)
        assert r.exit_code == 1 and "m2.png" in r.stderr
        assert [line.split()[0] for line in r.stdout.splitlines()] == [f"m{k}.png" for k in good]
        assert listing(work / out) == [f"m{k}.snail" for k in good]
        for k in good:
            assert (work / out / f"m{k}.snail").read_bytes() == (work / "alone" / f"m{k}.snail").read_bytes(), (out, k)
    torch.set_num_threads(1)


def test_cli_batch_goes_on_past_bad_files_and_names_them(work):
    """As gzip: every file is tried, each failure is one line naming its file, and the status is 1."""
    (work / "trunc.snail").write_bytes((work / "a.snail").read_bytes()[:30])
    (work / "junk.snail").write_bytes(b"not a snail file at all")
    r = cli("decode", "trunc.snail", "a.snail", "junk.snail", "-o", "out/", "--model", TINY, "-q")
    assert r.exit_code == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("snailcompress: error: trunc.snail: ")
    assert lines[1].startswith("snailcompress: error: junk.snail: ") and "not a .snail file" in lines[1]
    assert listing(work / "out") == ["a.png"] and pixels(work / "out" / "a.png") == pixels(work / "a.png")
    r = cli("encode", "missing.png", "a.png", "-o", "enc/", "--model", TINY, "--tile", TILE, "-q")
    assert r.exit_code == 1 and "missing.png" in r.stderr and listing(work / "enc") == ["a.snail"]


def test_cli_decode_test_checks_every_file_and_writes_nothing(work):
    """decode -t, as gzip -t: each file (or standard input) decoded and checked against its checksum,
    an OK line for a good one (none with -q), one error line for a bad one, status 1 if any failed; no
    file written, even where an output exists; -o or -c refused."""
    good = (work / "a.snail").read_bytes()
    (work / "copy.snail").write_bytes(good)
    (work / "flipped.snail").write_bytes(_flip(good, len(good) - 3))
    original = (work / "a.png").read_bytes()  # a.snail's default output exists: no reason to refuse, nothing is written
    r = cli("decode", "-t", "a.snail", "copy.snail", "--model", TINY)
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert [line.split(": ")[0] for line in lines] == ["a.snail", "copy.snail"]
    assert all(line.split(": ")[1].startswith(f"OK 11x9 RGB, {len(good)} bytes") for line in lines), lines
    r = cli("decode", "-t", "-q", "a.snail", "flipped.snail", "--model", TINY)
    assert r.exit_code == 1 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("snailcompress: error: flipped.snail: ")
    assert listing(work) == ["a.png", "a.snail", "copy.snail", "flipped.snail"] and (work / "a.png").read_bytes() == original
    r = CliRunner().invoke(main, ["decode", "-t", "-", "--model", TINY], input=good)  # standard input
    assert r.exit_code == 0 and r.stdout.startswith("-: OK 11x9 RGB"), r.output
    one_line_error(cli("decode", "-t", "a.snail", "-o", "b.png"), "-t writes nothing")
    one_line_error(cli("decode", "-t", "a.snail", "-c"), "-t writes nothing")


@pytest.mark.parametrize("context, batches", [(0, 5), (2, 3)])
def test_large_planes_are_coded_in_bounded_batches_of_one_stream(monkeypatch, context, batches):
    """More tiles than MAX_BATCH_SLOTS: several batches, one stream, exact round trip. Without
    context: 5 x 3 = 15 tiles in batches of 3; with it, each of the 3 bands of (at most) 2 x 3 windows
    (api.context_band) is a batch of its own, as left context links a band's windows."""
    monkeypatch.setattr(coder, "MAX_BATCH_SLOTS", 3)
    rng = np.random.default_rng(7)
    image = DecomposedImage("RGB", 21, 40, {"RGB": rng.integers(0, 256, (40, 21, 3), dtype=np.uint8)}, {})
    models = api.ModelChooser(["pixelsnail-tiny"])
    snail = api.encode_image(image, models, tile=8, context=context)
    plane = snail.planes[0]
    plan = WindowPlan.for_image(40, 21, plane.tile, plane.context, plane.band)
    assert len(plan.slot_groups(3)) == batches
    decoded = api.decode_image(C.read(C.write(snail)), models)
    assert np.array_equal(decoded.planes["RGB"], image.planes["RGB"])


def test_cli_pipes_standard_input_to_standard_output(work):
    """`encode - -c | decode - -c` gives back the same pixels; -q prints nothing; -c refuses two inputs."""
    runner = CliRunner()
    png = (work / "a.png").read_bytes()
    r = runner.invoke(main, ["encode", "-", "-c", "--model", TINY, "--tile", str(TILE), "-q"], input=png)
    assert r.exit_code == 0 and r.stderr == ""
    snail = r.stdout_bytes
    assert C.read(snail).width == Image.open(work / "a.png").width
    r = runner.invoke(main, ["decode", "-", "-c", "--model", TINY], input=snail)
    assert r.exit_code == 0 and "-> -" in r.stderr  # the summary goes to standard error
    back = Image.open(io.BytesIO(r.stdout_bytes))
    assert np.array_equal(np.asarray(back), np.asarray(Image.open(work / "a.png")))
    one_line_error(cli("encode", "a.png", "a.png", "-c", "-q"), "-c writes one input")
    r = runner.invoke(main, ["encode", "a.png", "-o", "-", "--model", TINY, "--tile", str(TILE), "-q"])  # -o - is -c
    assert r.exit_code == 0 and r.stdout_bytes == snail and not (work / "-").exists(), r.output
    r = runner.invoke(main, ["decode", "a.snail", "-o", "-", "--model", TINY, "-q"])
    assert r.exit_code == 0 and Image.open(io.BytesIO(r.stdout_bytes)).size == back.size and not (work / "-").exists()
    one_line_error(cli("encode", "-", "-q"), "standard input has no name")


def test_cli_usage_mistakes_are_one_line_errors(work):
    """click's own usage errors (a missing argument, an unknown option or command, a bad value) are
    one line naming the command and where its help is, exit status 2, as every other error is one line."""
    for args, needle in [(["encode"], "encode --help"), (["demo", "-q"], "demo --help"),
                         (["encode", "--threads", "x", "a.png"], "--threads"), (["frob"], "frob"), (["--bogus"], "--bogus"),
                         (["bench"], "Choose from: cifar10, imagenet32,")]:  # click lists the choices a line each
        line = one_line_error(cli(*args), needle)
        assert cli(*args).exit_code == 2, line
    assert cli("encode", "--help").exit_code == 0 and cli("--version").exit_code == 0
    bare = cli()  # the program alone: its help, as click gives it
    assert bare.exit_code == 2 and "Commands:" in bare.output and ERROR not in bare.output
    # a name the system refuses, which no check foresaw: one line, not a traceback
    one_line_error(cli("encode", "a.png", "-o", "x" * 300 + ".snail", "--model", TINY, "-q"), "File name too long")


@pytest.mark.parametrize("command, source", [("encode", "a.png"), ("decode", "a.snail")])
def test_cli_stdout_refuses_a_terminal_unless_forced(work, command, source):
    """-c on a terminal would print a binary stream there (gzip refuses too); -f writes it anyway. The
    commands run with a pseudo-terminal as their standard output."""
    import pty

    def run(*extra):
        controller, terminal = pty.openpty()
        try:
            done = subprocess.run([sys.executable, "-m", "snailcompress.cli", command, source, "-c", "--model", TINY,
                                   "-q", *extra], stdout=terminal, stderr=subprocess.PIPE, text=True, timeout=300)
            os.close(terminal)
            received = b""
            while True:
                try:
                    chunk = os.read(controller, 1 << 16)
                except OSError:  # the terminal's other side closed: all is read
                    break
                if not chunk:
                    break
                received += chunk
        finally:
            os.close(controller)
        return done, received

    refused, nothing = run()
    assert refused.returncode != 0 and nothing == b"" and "terminal" in refused.stderr, refused.stderr
    forced, written = run("-f")
    assert forced.returncode == 0 and len(written) > 8, forced.stderr


@pytest.mark.parametrize("args", [("encode", "a.png", "-c", "-f", "--model", TINY),
                                  ("decode", "a.snail", "-c", "-f", "--model", TINY), ("info", "a.snail")])
def test_cli_closed_standard_output_is_one_line(work, args):
    """A command started with standard output closed (`>&-`) whose output goes there says so in one
    line, not a traceback, and does not succeed with its output lost."""
    done = subprocess.run([sys.executable, "-m", "snailcompress.cli", *args], stdin=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, timeout=300, preexec_fn=lambda: os.close(1))
    assert done.returncode != 0 and done.stderr.splitlines() == [f"{ERROR} standard output is closed"], done.stderr


def test_cli_closed_standard_input_is_one_line(work):
    done = subprocess.run([sys.executable, "-m", "snailcompress.cli", "encode", "-", "-o", "x.snail", "--model", TINY,
                           "-q"], stderr=subprocess.PIPE, text=True, timeout=300, preexec_fn=lambda: os.close(0))
    assert done.returncode != 0 and done.stderr.splitlines() == [f"{ERROR} -: standard input is closed"], done.stderr


def test_cli_writes_into_a_fifo_given_with_force_rather_than_replace_it(work):
    """-o /dev/null -f, say: a device or FIFO is written into (as cp and zstd do), not replaced by a file
    renamed over it. A FIFO stands in for the device here (mknod needs root)."""
    import stat
    import threading

    fifo = work / "pipe.snail"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    r = cli("encode", "a.png", "-o", fifo, "--model", TINY, "--tile", TILE, "-f", "-q")
    reader.join(timeout=60)
    assert r.exit_code == 0, r.output
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and received == [(work / "a.snail").read_bytes()]
    one_line_error(cli("encode", "a.png", "-o", fifo, "--model", TINY, "-q"), "already exists (use -f")


def test_cli_codec_commands_print_no_library_warnings(work):
    """A library's warning (Pillow's about a damaged TIFF tag, numpy's about a non-finite weight) would
    put lines of source locations around the one line a file gets. In a new Python, which prints
    warnings (pytest records them instead), reading the image warns as Pillow would."""
    script = f"""
import sys, warnings
from snailcompress import api
from snailcompress.cli import main
real = api.read_image
def read_image(path):
    warnings.warn("Tag data larger than file", UserWarning)
    return real(path)
api.read_image = read_image
sys.argv = ["snailcompress", "encode", "a.png", "-o", "b.snail", "--model", "{TINY}", "--tile", "{TILE}"]
main()
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.startswith("a.png -> b.snail") and len(done.stdout.splitlines()) == 1, done.stdout


def test_cli_directories_and_standard_input_without_a_name_are_one_line_errors(work):
    """`.` and `/` have no name to give an output (a traceback once); standard input none to write into a
    directory under."""
    for name in (".", "./", "/"):
        one_line_error(cli("encode", name, "--model", TINY, "-q"), "is a directory, not an image")
    (work / "out").mkdir()
    one_line_error(CliRunner().invoke(main, ["encode", "-", "-o", "out/", "--model", TINY, "-q"],
                                      input=(work / "a.png").read_bytes()), "standard input has no name")
    assert listing(work) == ["a.png", "a.snail", "out"]


def test_cli_summary_counts_every_channel_and_says_when_a_time_is_shared(work):
    """bits/subpixel divides by every channel of every pixel, a constant alpha's included; files coded
    together share one time, said as such."""
    image = make_image("L", 12, 10, "random", 5)
    image.putalpha(255)  # LA with a constant alpha: one plane coded
    image.save(work / "la.png")
    make_image("RGB", 8, 9, "random", 6).save(work / "rgb.png")
    r = cli("encode", "la.png", "rgb.png", "-o", "out/", "--model", TINY, "--tile", TILE)
    assert r.exit_code == 0, r.output
    for line, name, channels in zip(r.stdout.splitlines(), ["la", "rgb"], [2, 3]):
        size = (work / "out" / f"{name}.snail").stat().st_size
        width, height = Image.open(work / f"{name}.png").size
        assert f"{8 * size / (width * height * channels):.3f} bits/subpixel" in line, line
        assert "average of 2 files coded together" in line, line
    alone = cli("decode", "out/la.snail", "-o", "la-back.png", "--model", TINY).stdout
    assert "coded together" not in alone
    # info's figure for the whole file is the summary's
    size = (work / "out" / "la.snail").stat().st_size
    assert f"{8 * size / (12 * 10 * 2):.4f} bits per subpixel" in cli("info", "out/la.snail").stdout
    # an input that could not be read is no file coded together
    (work / "junk.png").write_bytes(b"junk")
    r = cli("encode", "rgb.png", "junk.png", "-o", "again/", "--model", TINY, "--tile", TILE)
    assert r.exit_code == 1 and "coded together" not in r.stdout and "rgb.png" in r.stdout, r.output


def test_cli_info_names_a_shipped_model(work):
    """A file coded by a shipped model holds only its id; info names the model it belongs to."""
    make_image("RGB", 8, 9, "random", 7).save(work / "s.png")
    assert cli("encode", "s.png", "-q").exit_code == 0
    assert "(shipped snail-rgb)" in cli("info", "s.snail").stdout
    assert "(shipped" not in cli("info", "a.snail").stdout  # a preset's: no shipped name
