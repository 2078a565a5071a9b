"""The codec end to end: api round trips, coder table agreement, tiles, tables, and the CLI's errors.

Everything runs the untrained `pixelsnail-tiny` preset (fixed-seed weights) on small tiles, so no
trained weights are needed and the whole file takes well under a minute on one thread.
"""

from __future__ import annotations

import dataclasses
import os
import struct
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
from snailcompress.codec.tables import TABLE_TOTAL, code_length_bits, quantize
from snailcompress.codec.tiles import WindowPlan
from snailcompress.errors import ExactnessError, FormatError, ModelError

TILE = 8
TINY = "pixelsnail-tiny"
ERROR = "snailcompress: error:"
BANDS = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "P": 1, "1": 1}


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
# 2. encoder and decoder see bit-identical tables


class Recording:
    """A TableProvider that records every call and every table of the provider it wraps."""

    def __init__(self, inner):
        self.inner = inner
        self.channels, self.learns = inner.channels, inner.learns
        self.calls: list = []
        self.tables_seen: list[np.ndarray] = []

    def reset(self, batch, height, width):
        self.calls.append(("reset", batch, height, width))
        self.inner.reset(batch, height, width)

    def begin_position(self):
        self.calls.append(("begin",))
        self.inner.begin_position()

    def tables(self, channel, known):
        table = self.inner.tables(channel, known)
        self.calls.append(("tables", channel, known.copy()))
        self.tables_seen.append(np.array(table, copy=True))
        return table

    def restart(self, slots):
        self.calls.append(("restart", slots.copy()))
        self.inner.restart(slots)

    def end_position(self, values, advance=None):
        self.calls.append(("end", values.copy(), None if advance is None else advance.copy()))
        self.inner.end_position(values, advance)

    def learn(self, windows, coded):
        self.calls.append(("learn", windows.copy(), coded.copy()))
        self.inner.learn(windows, coded)


def _model(channels: int):
    return zoo.load_model(TINY, channels=channels).model


@pytest.mark.parametrize("channels, height, width, context", [(3, 11, 13, (0, 0)), (1, 9, 8, (0, 0)), (3, 19, 21, (2, 3))])
def test_encoder_and_decoder_tables_are_bit_identical(channels, height, width, context):
    rng = np.random.default_rng(channels)
    plane = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    model = _model(channels)
    enc = Recording(coder.FloatModelTables(model))
    dec = Recording(coder.FloatModelTables(model))
    words, plan = coder.code_plane(enc, plane, (TILE, TILE), context, band=2)
    decoded = coder.decode_plane(dec, words, height, width, channels, (TILE, TILE), context, band=2)
    assert np.array_equal(decoded, plane)

    slots = sum(len(group) for group in plan.slot_groups(coder.MAX_BATCH_TILES))
    assert len(enc.tables_seen) == len(dec.tables_seen) == coder._plan_steps(plan, plan.slot_groups(coder.MAX_BATCH_TILES)) * channels
    for a, b in zip(enc.tables_seen, dec.tables_seen):
        assert a.dtype == b.dtype == np.float64 and a.shape == b.shape == (slots, 256)
        assert np.array_equal(a, b)
        assert a.tobytes() == b.tobytes()  # bit for bit, signed zeros included
    assert len(enc.calls) == len(dec.calls)
    for x, y in zip(enc.calls, dec.calls):
        assert x[0] == y[0] and all(np.array_equal(u, v) for u, v in zip(x[1:], y[1:]))
    # the recording is not vacuous: tables depend on the context
    assert any(not np.array_equal(enc.tables_seen[0], t) for t in enc.tables_seen[1:])


def test_decoding_with_other_tables_does_not_give_the_image():
    """The agreement above matters: a decoder with other weights gets other pixels (or an error)."""
    rng = np.random.default_rng(5)
    plane = rng.integers(0, 256, (8, 8, 1), dtype=np.uint8)
    words, _ = coder.code_plane(coder.FloatModelTables(_model(1)), plane, (TILE, TILE))
    other = zoo.load_model("pixelsnail-small", channels=1).model
    try:
        decoded = coder.decode_plane(coder.FloatModelTables(other), words, 8, 8, 1, (TILE, TILE))
    except FormatError:
        return
    assert not np.array_equal(decoded, plane)


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


class _CountingEncoder:
    """Stands in for the range encoder: counts the symbols it is given."""

    def __init__(self):
        self.symbols = 0

    def encode(self, symbols, family, tables):
        self.symbols += len(symbols)


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
    """Windows with context overlap, but each real pixel is coded by exactly one of them: the coder
    hands exactly H * W * C symbols to the range coder (the round trips below show they are the
    right ones)."""
    plan = WindowPlan.for_image(height, width, (tile, tile), (above, left), band)
    assert plan.win_h <= height and plan.win_w <= width and plan.band >= 1
    canvas = plan.canvas(np.zeros((height, width, 1), np.uint8))
    assert canvas.shape[0] >= height and canvas.shape[1] >= width
    counter = _CountingEncoder()

    class Uniform:  # tables only: no model needed to count symbols
        channels, learns = 1, False

        def reset(self, batch, height, width): pass
        def restart(self, slots): pass
        def begin_position(self): pass
        def tables(self, channel, known): return np.ones((len(known), 256))
        def end_position(self, values, advance=None): pass

    for slots in plan.slot_groups(4):
        coder._code_windows(Uniform(), plan, canvas, slots, counter, False)
    assert counter.symbols == height * width
    # the same ownership, pixel by pixel, in WindowPlan.windows (what NLL measurements score)
    plane = np.arange(height * width).reshape(height, width, 1)
    windows, coded = plan.windows(plane)
    assert windows.shape == (plan.rows * plan.cols, 1, plan.win_h, plan.win_w) and coded.sum() == height * width
    assert sorted(windows[:, 0][coded].tolist()) == list(range(height * width))


@pytest.mark.parametrize(
    "model, channels, height, width, tile, context, band",
    [
        (TINY, 3, 20, 23, 8, (2, 2), 2),
        (TINY, 3, 20, 23, 8, (0, 3), 1),
        (TINY, 1, 20, 23, 8, (3, 0), 3),
        (TINY, 3, 9, 40, 8, (4, 4), 2),  # one row of windows: no context above is used
        (TINY, 1, 17, 5, 4, (2, 1), 4),
        (TINY, 3, 13, 30, 6, (2, 5), 2),
        ("pixelcnnpp-tiny", 3, 12, 13, 4, (4, 4), 2),  # 8 x 8 windows; the full-forward stepper keeps slot positions too
    ],
)
def test_windows_with_context_round_trip(model, channels, height, width, tile, context, band):
    rng = np.random.default_rng(height * width)
    plane = np.cumsum(rng.integers(0, 40, (height, width, channels)), axis=1).astype(np.uint8)  # some structure
    net = zoo.load_model(model, channels=channels).model
    words, plan = coder.code_plane(coder.FloatModelTables(net), plane, (tile, tile), context, band)
    decoded = coder.decode_plane(coder.FloatModelTables(net), words, height, width, channels, (tile, tile), context, band)
    assert np.array_equal(decoded, plane)
    # the same plane without context is another stream: the context is really used
    plain, _ = coder.code_plane(coder.FloatModelTables(net), plane, (tile, tile))
    assert not np.array_equal(plain, words)


def test_progress_shows_the_running_code_length():
    """The bar's running bits/subpixel is the code length of what was coded: the same when decoding,
    and within a few words of the real stream."""
    rng = np.random.default_rng(3)
    plane = np.cumsum(rng.integers(0, 30, (20, 23, 3)), axis=1).astype(np.uint8)
    provider = coder.FloatModelTables(_model(3))
    total = coder.coding_steps(20, 23, (TILE, TILE), (2, 2), 2)
    with coder.CodingProgress(total, "encode", enabled=False) as encoding:
        words, _ = coder.code_plane(provider, plane, (TILE, TILE), (2, 2), 2, progress=encoding)
    with coder.CodingProgress(total, "decode", enabled=False) as decoding:
        coder.decode_plane(provider, words, 20, 23, 3, (TILE, TILE), (2, 2), 2, progress=decoding)
    assert encoding.subpixels == decoding.subpixels == plane.size
    assert encoding.steps == decoding.steps == total
    assert encoding.bits == decoding.bits
    assert 32 * (len(words) - 2) <= encoding.bits <= 32 * len(words)


def test_windows_without_context_are_the_tiles_of_version_1():
    """code_plane with no context writes exactly the stream of format version 1, written out here from
    its definition: the plane's tiles (edges repeated) as one batch, position by position in raster
    order, for each channel the symbols of the tiles with a real pixel there, in tile order."""
    rng = np.random.default_rng(11)
    plane = rng.integers(0, 256, (19, 21, 3), dtype=np.uint8)
    provider = coder.FloatModelTables(_model(3))
    words, plan = coder.code_plane(provider, plane, (TILE, TILE))

    padded = np.pad(plane, ((0, 24 - 19), (0, 24 - 21), (0, 0)), mode="edge")
    tiles = padded.reshape(3, TILE, 3, TILE, 3).transpose(0, 2, 4, 1, 3).reshape(9, 3, TILE, TILE)
    real_h, real_w = np.repeat([8, 8, 3], 3), np.tile([8, 8, 5], 3)
    encoder = constriction.stream.queue.RangeEncoder()
    family = constriction.stream.model.Categorical(perfect=False)
    provider.reset(9, TILE, TILE)
    for i in range(TILE):
        for j in range(TILE):
            values = np.ascontiguousarray(tiles[:, :, i, j])
            real = (real_h > i) & (real_w > j)
            provider.begin_position()
            for c in range(3):
                table = provider.tables(c, np.ascontiguousarray(values[:, :c]))
                encoder.encode(values[real, c].astype(np.int32), family, np.ascontiguousarray(table[real]))
            provider.end_position(values)
    assert (plan.rows, plan.cols) == (3, 3)
    assert np.array_equal(words, encoder.get_compressed())


# --------------------------------------------------------------------------------------------
# 4. probability tables


def _distributions(rng, n: int) -> np.ndarray:
    kinds = [
        rng.dirichlet(np.full(256, 1.0), n),
        rng.dirichlet(np.full(256, 0.05), n),  # sparse, many tiny probabilities
        rng.dirichlet(np.full(256, 50.0), n),  # nearly uniform
        np.eye(256)[rng.integers(0, 256, n)],  # one-hot
        np.eye(256)[rng.integers(0, 256, n)] * (1 - 255e-12) + 1e-12,  # almost one-hot
        rng.random((n, 256)) * 1e-30,  # unnormalised, tiny
        rng.random((n, 256)) * 1e30,  # unnormalised, huge
        np.abs(rng.standard_cauchy((n, 256))).astype(np.float32),  # float32 input
    ]
    return np.concatenate([np.asarray(k, dtype=np.float64) for k in kinds])


def test_quantize_rows_are_exact_integer_tables():
    rng = np.random.default_rng(0)
    probs = _distributions(rng, 64)
    probs[0, :3] = [-1e-9, -0.0, 0.0]  # float noise below zero is clamped
    counts = quantize(probs)
    assert counts.dtype == np.float64 and counts.shape == probs.shape
    assert np.all(counts >= 0) and np.all(np.isfinite(counts))
    assert np.array_equal(counts, np.floor(counts))
    assert np.all(counts.sum(axis=1) == TABLE_TOTAL)
    assert TABLE_TOTAL == 2**24 - 256
    assert np.array_equal(quantize(probs.copy()), counts)  # deterministic
    assert quantize(probs).tobytes() == counts.tobytes()
    # row by row gives the same as a batch: no cross-row effects
    assert all(np.array_equal(quantize(probs[i : i + 1])[0], counts[i]) for i in range(0, len(probs), 37))
    f32 = probs[-64:].astype(np.float32)
    assert np.array_equal(quantize(f32), quantize(f32.astype(np.float64)))
    # the most probable value gets what flooring leaves over, the others floor(p * TOTAL)
    p = probs[:64] / probs[:64].sum(axis=1, keepdims=True)
    floor = np.floor(p * TABLE_TOTAL)
    rows = np.arange(64)
    top = counts[:64].argmax(axis=1)
    mask = np.ones_like(floor, bool)
    mask[rows, top] = False
    assert np.all(np.abs(counts[:64][mask] - floor[mask]) <= 1)


def test_coded_size_is_close_to_the_ideal():
    rng = np.random.default_rng(1)
    dists = rng.dirichlet(np.full(256, 0.3), 400)
    which = rng.integers(0, len(dists), 60_000)
    p = dists[which]
    symbols = (p.cumsum(axis=1) > rng.random((len(p), 1))).argmax(axis=1)
    ideal = -np.log2(p[np.arange(len(p)), symbols]).sum()
    counts = quantize(dists)[which]
    quantized_ideal = code_length_bits(counts, symbols).sum()

    encoder = constriction.stream.queue.RangeEncoder()
    for s in range(0, len(symbols), 10_000):
        encoder.encode(symbols[s : s + 10_000].astype(np.int32), coder._FAMILY, np.ascontiguousarray(counts[s : s + 10_000]))
    words = encoder.get_compressed()
    bits = 32 * len(words)
    assert abs(bits - ideal) / ideal < 1e-3, (bits, ideal)
    assert abs(bits - quantized_ideal) / quantized_ideal < 1e-3, (bits, quantized_ideal)

    decoder = constriction.stream.queue.RangeDecoder(words)
    back = np.concatenate(
        [decoder.decode(coder._FAMILY, np.ascontiguousarray(counts[s : s + 10_000])) for s in range(0, len(symbols), 10_000)]
    )
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


@pytest.fixture(scope="session")
def sample(tmp_path_factory):
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
    assert r.exit_code == 0
    assert f"model {TINY}" in r.output and "11 x 9 pixels, mode RGB" in r.output
    # the default --context 2: the 9-row image is one row of windows, so only the left context is used
    assert f"{len((work / 'a.snail').read_bytes())} bytes" in r.output
    assert "format version 2" in r.output and "tiles 9x8 with context 0 above, 2 left" in r.output
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
    assert "format version 2" in r.output and "tiles 8x8 with context 2 above, 2 left in bands of 2" in r.output
    r = cli("decode", "c.snail", "-o", "d.png", "-q")
    assert r.exit_code == 0, r.output
    assert pixels(work / "d.png") == pixels(work / "c.png")
    for bad in ("-1", "65"):
        one_line_error(cli("encode", "c.png", "--model", TINY, "--context", bad, "-q", "-f"), "--context must be between")


def _reframe(obj: dict, n_words: int = 0) -> bytes:
    """A .snail file around a header object, with correct checksums (C._encode_header does not check)."""
    header = C._encode_header(obj)
    checked = bytes([C._version(obj)]) + C._varint(len(header)) + header
    payload = bytes(4 * n_words)
    return C.MAGIC + checked + struct.pack("<I", zlib.crc32(checked)) + payload + struct.pack("<I", zlib.crc32(payload))


def _edit(data: bytes, **changes) -> bytes:
    f = C.read(data)
    return C.write(dataclasses.replace(f, **changes))


def _flip(data: bytes, i: int, bit: int = 0) -> bytes:
    b = bytearray(data)
    b[i] ^= 1 << bit
    return bytes(b)


def _header_middle(data: bytes) -> int:
    return 10 + data[9] // 2  # the header length fits one byte here


def _absurd(data: bytes) -> bytes:
    f = C.read(data)
    obj = C._header_obj(f)
    obj["width"] = obj["height"] = 60000
    obj["planes"][0]["n_words"] = 2**32 - 1
    return _reframe(obj, 10)


def _mode_pa(data: bytes) -> bytes:
    """A valid container for a mode this version never writes (PA, as P + constant alpha)."""
    f = C.read(data)
    obj = C._header_obj(f)
    obj.update(mode="PA", extras={"palette": "00" * 3, "palette_mode": "RGB", "constant_alpha": 255})
    obj["planes"][0]["channels"] = "P"
    return _reframe(obj, f.planes[0].n_words)


BAD_FILES = {
    "empty": (lambda d: b"", "the file is empty"),
    "random bytes": (lambda d: bytes(np.random.default_rng(3).integers(0, 256, 300, dtype=np.uint8)), "not a .snail file"),
    "text": (lambda d: b"hello, I am not a .snail file\n", "not a .snail file"),
    "truncated": (lambda d: d[: len(d) // 2], "file is truncated"),
    "truncated by one byte": (lambda d: d[:-1], "file is truncated"),
    "trailing garbage": (lambda d: d + b"\0\0", "trailing garbage"),
    "header bit flip": (lambda d: _flip(d, _header_middle(d), 3), "header is corrupt (checksum mismatch)"),
    "header length bit flip": (lambda d: _flip(d, 9, 0), "header is corrupt|truncated|unexpected data"),
    "payload bit flip": (lambda d: _flip(d, len(d) - 20, 5), "payload is corrupt (checksum mismatch)"),
    "payload checksum flip": (lambda d: _flip(d, len(d) - 1, 7), "payload is corrupt (checksum mismatch)"),
    "wrong magic": (lambda d: b"\x89SNAIX" + d[6:], "not a .snail file"),
    "text-mode copy": (lambda d: d.replace(b"\r\n", b"\n", 1), "first bytes were altered"),
    "unknown version": (lambda d: d[:8] + b"\x09" + d[9:], "unsupported .snail format version 9"),
    "absurd dimensions": (_absurd, "60000 x 60000 pixels is more than"),
    "unsupported mode": (_mode_pa, "mode PA image, which this version of snailcompress cannot decode"),
    "another model": (
        lambda d: _edit(d, planes=(dataclasses.replace(C.read(d).planes[0], model_id="0123456789abcdef"),)),
        "coded with model 'pixelsnail-tiny' (id 0123456789abcdef), which is not available here",
    ),
    "another environment": (
        lambda d: _edit(d, exactness={**C.read(d).exactness, "env": "0123456789abcdef"}),
        "encoded in another environment (digest 0123456789abcdef",
    ),
    "another thread count": (lambda d: _edit(d, exactness={**C.read(d).exactness, "threads": "0"}), "thread count"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_cli_decode_bad_files(work, case):
    make, message = BAD_FILES[case]
    (work / "bad.snail").write_bytes(make((work / "a.snail").read_bytes()))
    before = listing(work)
    line = one_line_error(cli("decode", "bad.snail", "--model", TINY, "-q"))
    assert any(m in line for m in message.split("|")), line
    assert listing(work) == before  # no bad.png, no temporary file


@pytest.mark.parametrize("case", ["empty", "truncated", "header bit flip", "wrong magic", "unknown version", "absurd dimensions"])
def test_cli_info_bad_files(work, case):
    make, message = BAD_FILES[case]
    (work / "bad.snail").write_bytes(make((work / "a.snail").read_bytes()))
    line = one_line_error(cli("info", "bad.snail"))
    assert any(m in line for m in message.split("|")), line


def test_api_errors_are_typed(work, tiny_models):
    data = (work / "a.snail").read_bytes()
    with pytest.raises(ExactnessError):
        api.decode_image(C.read(BAD_FILES["another environment"][0](data)), tiny_models)
    with pytest.raises(ModelError):
        api.decode_image(C.read(BAD_FILES["another model"][0](data)), tiny_models)


def test_payload_changes_never_give_a_wrong_image(work):
    """Flip payload bits and repair the payload CRC: decoding fails loudly or gives the exact image."""
    data = (work / "a.snail").read_bytes()
    n_words = C.read(data).planes[0].n_words
    start = len(data) - 4 - 4 * n_words
    outcomes = set()
    for k, (word, bit) in enumerate([(0, 31), (0, 0), (n_words // 2, 7), (n_words - 2, 12), (n_words - 1, 0)]):
        b = bytearray(data[:-4])
        b[start + 4 * word + bit // 8] ^= 1 << (bit % 8)
        b += struct.pack("<I", zlib.crc32(bytes(b[start:])))
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
    for spec, message in [("no-such-run", "no model 'no-such-run'"), ("empty-run", "no model 'empty-run'"),
                          ("damaged.safetensors", "damaged.safetensors")]:
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
        assert "cannot be coded exactly" in line or message in line
        assert listing(work) == before, name


def test_cli_missing_input_for_decode_and_info(work):
    one_line_error(cli("decode", "missing.snail", "--model", TINY, "-q"), "missing.snail: cannot read")
    one_line_error(cli("info", "missing.snail"), "missing.snail: cannot read")
    assert listing(work) == ["a.png", "a.snail"]


OUTPUTS = [("encode", "a.png", "x.snail"), ("decode", "a.snail", "x.png")]


@pytest.mark.parametrize("command, source, name", OUTPUTS)
def test_cli_output_under_a_regular_file(work, command, source, name):
    target = work / "a.png" / name  # its "directory" a.png is a regular file
    one_line_error(cli(command, source, "-o", target, "--model", TINY, "-q"), "cannot write", "does not exist")
    assert listing(work) == ["a.png", "a.snail"]
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
    one_line_error(cli(command, source, "-o", out / name, "--model", TINY, "-q"), "permission denied")
    assert os.listdir(out) == []


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
    r = cli("encode", "a.png", "g.png", "-o", "one.snail", "--model", TINY, "-q")
    one_line_error(r, "-o must be an existing directory")
    (work / "out").mkdir()
    (work / "out" / "g.snail").write_bytes(b"x")
    one_line_error(cli("encode", "a.png", "g.png", "-o", "out", "--model", TINY, "-q"), "g.snail already exists")
    assert listing(work / "out") == ["g.snail"]  # refused before any work
    (work / "out" / "g.snail").unlink()

    r = cli("encode", "a.png", "g.png", "-o", "out", "--model", TINY, "--tile", TILE, "-q")
    assert r.exit_code == 0, r.output
    assert len(r.output.splitlines()) == 2
    assert listing(work / "out") == ["a.snail", "g.snail"]
    (work / "back").mkdir()
    r = cli("decode", "out/a.snail", "out/g.snail", "-o", "back", "--model", TINY, "-q")
    assert r.exit_code == 0, r.output
    assert pixels(work / "back" / "a.png") == pixels(work / "a.png")
    assert pixels(work / "back" / "g.png") == pixels(work / "g.png")

    r = cli("encode", "g.png", "-o", "g2.snail", "--model", TINY, "--tile", TILE, "-q")
    assert r.exit_code == 0
    one_line_error(cli("encode", "g.png", "g.png", "--model", TINY, "-q"), "several inputs would write the same output")
    one_line_error(cli("encode", "a.png", "--tile", "0", "--model", TINY, "-q"), "--tile must be between")


@pytest.mark.parametrize("context, batches", [(0, 5), (2, 3)])
def test_large_planes_are_coded_in_bounded_batches_of_one_stream(monkeypatch, context, batches):
    """More tiles than MAX_BATCH_TILES: several batches, one stream, exact round trip. Without
    context: 5 x 3 = 15 tiles in batches of 3; with it, each of the 3 bands of (at most) 2 x 3 windows
    (api.context_band) is a batch of its own, as left context links a band's windows."""
    monkeypatch.setattr(coder, "MAX_BATCH_TILES", 3)
    rng = np.random.default_rng(7)
    image = DecomposedImage("RGB", 21, 40, {"RGB": rng.integers(0, 256, (40, 21, 3), dtype=np.uint8)}, {})
    models = api.ModelChooser(["pixelsnail-tiny"])
    snail = api.encode_image(image, models, tile=8, context=context)
    plane = snail.planes[0]
    plan = WindowPlan.for_image(40, 21, plane.tile, plane.context, plane.band)
    assert len(plan.slot_groups(3)) == batches
    decoded = api.decode_image(C.read(C.write(snail)), models)
    assert np.array_equal(decoded.planes["RGB"], image.planes["RGB"])
