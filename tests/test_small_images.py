"""Never much larger than the pixels: whatever the image (1xN, Nx1, tiny, bilevel, flat, noise, a
photo), its file is at most SLACK bytes larger than the smaller of its raw pixels and a PNG of them,
and decodes to exactly the same image. The encoder keeps, per plane, the smallest of the model,
stored, deflate and bilevel codings (codec/methods.py)."""

from __future__ import annotations

import io
from importlib import resources

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from snailcompress import api
from snailcompress.codec import bilevel, container, methods
from snailcompress.codec.images import decompose, same_image
from snailcompress.errors import FormatError

#: Bytes a file may take beyond min(raw, PNG) (sides below 16384, planes below 2 MB, no transparency):
#: magic 4, version 1, header length 2, CRC 4; in the header width and height 2 each, mode 1, pixel
#: CRC 4, and a second plane's length 3 or (P) the palette field's tag, length, entry size and entry
#: count 6 beyond the palette itself, which "raw" counts.
SLACK = 4 + 1 + 2 + 4 + 2 + 2 + 1 + 4 + max(3, 6)
PHOTO = np.asarray(Image.open(resources.files("snailcompress") / "assets" / "kodim23-crop.png").convert("RGB"))
MODES = ("L", "LA", "RGB", "RGBA", "P", "1")
CHANNELS = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "P": 1, "1": 1}
SHIPPED = api.ModelChooser()
SOME = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def raw_bytes(image: Image.Image) -> int:
    """The pixels as bytes: one a subpixel; mode 1 one bit a pixel, rows padded to bytes; P with its palette."""
    width, height = image.size
    if image.mode == "1":
        return (width + 7) // 8 * height
    palette = len(image.getpalette("RGB") or ()) if image.mode == "P" else 0
    return width * height * CHANNELS[image.mode] + palette


def png_bytes(image: Image.Image) -> int:
    out = io.BytesIO()
    image.save(out, "PNG")
    return len(out.getvalue())


def check(image: Image.Image, models: api.ModelChooser) -> container.SnailFile:
    """Encode (without calibration: quicker), check the size bound and the exact round trip."""
    decomposed = decompose(image)
    data = api.encode_bytes(decomposed, models, calibrate=False)
    snail = container.read(data)
    assert len(data) <= min(raw_bytes(image), png_bytes(image)) + SLACK, (
        len(data), raw_bytes(image), png_bytes(image), [p.method for p in snail.planes])
    assert same_image(api.decode_image(snail, models), decomposed)
    return snail


# --------------------------------------------------------------------------------------------
# images of every shape and kind


@st.composite
def pixels(draw, height: int, width: int, channels: int, levels: int = 256) -> np.ndarray:
    kind = draw(st.sampled_from(["flat", "noise", "bilevel", "photo", "blocks"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "flat":
        return np.broadcast_to(rng.integers(0, levels, channels, dtype=np.uint8), (height, width, channels)).copy()
    if kind == "noise":
        return rng.integers(0, levels, (height, width, channels), dtype=np.uint8)
    if kind == "bilevel":
        on = rng.random((height, width, 1)) < draw(st.sampled_from([0.02, 0.5, 0.9]))
        return np.where(on, np.uint8(levels - 1), np.uint8(0)).repeat(channels, axis=2)
    if kind == "blocks":  # a few flat rectangles, as in line art or a screenshot
        out = np.zeros((height, width, channels), np.uint8)
        for _ in range(4):
            y, x = rng.integers(0, height), rng.integers(0, width)
            out[y : y + rng.integers(1, 9), x : x + rng.integers(1, 9)] = rng.integers(0, levels, channels)
        return out
    y, x = rng.integers(0, PHOTO.shape[0] - height + 1), rng.integers(0, PHOTO.shape[1] - width + 1)
    photo = PHOTO[y : y + height, x : x + width]
    photo = np.concatenate([photo, photo[..., ::-1]], axis=2)[..., :channels]  # RGBA: a photo-like alpha
    return (photo.astype(np.uint16) * levels // 256).astype(np.uint8)


@st.composite
def images(draw) -> Image.Image:
    mode = draw(st.sampled_from(MODES))
    shape = draw(st.sampled_from(["row", "column", "tiny", "small"]))
    long = draw(st.integers(1, 256))
    height, width = {"row": (1, long), "column": (long, 1), "tiny": (draw(st.integers(1, 8)), draw(st.integers(1, 8))),
                     "small": (draw(st.integers(8, 20)), draw(st.integers(8, 20)))}[shape]
    if mode == "1":
        bits = draw(pixels(height, width, 1, 2))
        return Image.frombytes("1", (width, height), np.packbits(bits[..., 0], axis=1).tobytes())
    if mode == "P":
        entries = draw(st.sampled_from([1, 2, 3, 4, 12, 16, 17, 256]))
        image = Image.frombytes("P", (width, height), draw(pixels(height, width, 1, entries)).tobytes())
        image.putpalette(np.random.default_rng(entries).integers(0, 256, 3 * entries, dtype=np.uint8).tobytes())
        return image
    return Image.frombytes(mode, (width, height), draw(pixels(height, width, CHANNELS[mode])).tobytes())


@SOME
@given(images())
def test_never_much_larger_than_the_pixels(tiny_models, image):
    """With the untrained tiny model, which rarely wins: the bound must hold whatever the model does."""
    snail = check(image, tiny_models)
    event(f"{image.mode}: " + " + ".join(p.method for p in snail.planes))


def photo_image(mode: str, height: int, width: int) -> Image.Image:
    """A crop of the photo in a mode: row 100 for a 1-row image; its alpha the red channel."""
    photo = PHOTO[100 : 100 + height, :width]
    if mode == "1":
        return Image.fromarray(photo).convert("1")  # dithered
    if mode == "P":
        return Image.fromarray(photo).quantize(colors=16)
    channels = {"L": [1], "LA": [1, 0], "RGB": [0, 1, 2], "RGBA": [0, 1, 2, 0]}[mode]
    return Image.frombytes(mode, (width, height), np.ascontiguousarray(photo[..., channels]).tobytes())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("height, width", [(1, 256), (150, 1), (1, 1), (3, 5)])
def test_rows_columns_and_tiny_images_with_the_shipped_models(mode, height, width):
    check(photo_image(mode, height, width), SHIPPED)


def test_the_worst_case_is_a_palette_image_stored(tiny_models):
    """Noise indices into a full palette, sides of 128 or more: the header is as large as it gets."""
    image = Image.frombytes("P", (128, 130), np.random.default_rng(3).bytes(128 * 130))
    image.putpalette(np.random.default_rng(4).bytes(768))
    snail = check(image, tiny_models)
    assert [p.method for p in snail.planes] == ["stored"]
    assert container.file_size(snail) == raw_bytes(image) + SLACK


def test_both_planes_in_one_deflate_stream():
    """A column of LA pixels: one stream filters each row once, as its PNG does; two would twice."""
    column = np.stack([np.arange(177) // 20 * 20, 255 - np.arange(177) // 30 * 30], axis=1).astype(np.uint8)
    snail = check(Image.frombytes("LA", (1, 177), column.tobytes()), SHIPPED)
    assert [(p.method, len(p.data) > 0) for p in snail.planes] == [("deflate", True), ("deflate", False)]
    rgba = np.dstack([PHOTO[:6, :5], np.full((6, 5), 9, np.uint8)])
    rgba[0, 0, 3] = 10  # not a constant alpha
    decomposed = decompose(Image.frombytes("RGBA", (5, 6), rgba.tobytes()))
    both = methods.smallest(decomposed, [None, None], 1)
    joint = methods._both_planes(decomposed)[0]
    snail = methods.smallest(decomposed, [joint[0], joint[1]], 1, fallback=False)
    assert same_image(api.decode_image(container.read(container.write(snail)), SHIPPED), decomposed)
    assert container.file_size(both) <= container.file_size(snail)


# --------------------------------------------------------------------------------------------
# bilevel images


def text_image(width: int = 64, height: int = 64) -> Image.Image:
    image = Image.new("1", (width, height), 1)
    ImageDraw.Draw(image).text((2, 2), "snail\ncompress\nbilevel\ntext", fill=0)
    return image


def test_bilevel_text_is_far_smaller_than_its_bits_and_png(monkeypatch):
    image = text_image()
    for coding in ("code_plane", "code_planes"):  # the calibrated path and the batched one
        monkeypatch.setattr(api, coding, lambda *a, **k: pytest.fail("the model ran on a bilevel plane"))
    snail = check(image, SHIPPED)
    assert [p.method for p in snail.planes] == ["bilevel"] and snail.arithmetic is None
    size = container.file_size(snail)
    assert size < 0.5 * min(raw_bytes(image), png_bytes(image)), (size, raw_bytes(image), png_bytes(image))


def test_a_black_and_white_alpha_is_bilevel_beside_the_models_colour():
    rgb = PHOTO[:24, :24]
    yy, xx = np.mgrid[:24, :24]
    alpha = np.where((yy - 12) ** 2 + (xx - 12) ** 2 < 80, 255, 0).astype(np.uint8)
    snail = check(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), SHIPPED)
    assert [p.method for p in snail.planes] == ["model", "bilevel"]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.floats(0, 1), st.integers(0, 2**32 - 1))
def test_bilevel_round_trip(height, width, p, seed):
    bits = (np.random.default_rng(seed).random((height, width)) < p).astype(np.uint8)
    data = bilevel.encode(bits)
    assert len(data) % 4 == 0
    assert np.array_equal(bilevel.decode(data, height, width), bits)


def test_bilevel_stream_errors_are_format_errors():
    data = bilevel.encode(np.asarray(text_image()).astype(np.uint8))
    with pytest.raises(FormatError, match="not a whole number of 4-byte words"):
        bilevel.decode(data[:-1], 64, 64)
    for cut in (data[:4], b""):
        try:
            out = bilevel.decode(cut, 64, 64)
        except FormatError:
            continue
        assert not np.array_equal(out, np.asarray(text_image()))  # a cut stream decodes to other pixels, if at all


# --------------------------------------------------------------------------------------------
# each method's data, corrupted: a FormatError, never other pixels passed off as the image


@pytest.mark.parametrize("image", [text_image(24, 16), Image.fromarray(PHOTO[:6, :7]), Image.fromarray(PHOTO[:5, :9, 0]),
                                   Image.fromarray(PHOTO[:8, :8]).quantize(colors=4)], ids=["1", "RGB", "L", "P"])
def test_corrupt_data_of_every_method_is_refused(image):
    decomposed = decompose(image)
    for plane in methods.alternatives(decomposed, decomposed.expected_planes()[0]):
        snail = methods.smallest(decomposed, [plane], 1, fallback=False)
        assert same_image(api.decode_image(container.read(container.write(snail)), SHIPPED), decomposed)
        data = plane.data
        refused = 0
        for changed in (data[:-1], data + b"\0", bytes(len(data)), data[:1] + bytes([data[1] ^ 0x40]) + data[2:]):
            bad = container.Plane.coded(plane.channels, plane.method, changed)
            try:
                written = container.write(container.SnailFile(snail.width, snail.height, snail.mode, (bad,),
                                                              snail.pixel_crc32, None, snail.extras))
            except ValueError:
                assert plane.method in ("stored", "bilevel") and len(changed) != len(data)  # lengths the format fixes
                continue
            try:
                back = api.decode_image(container.read(written), SHIPPED)
            except FormatError:
                refused += 1
                continue
            assert same_image(back, decomposed)  # a deflate stream without its Adler-32 still holds the pixels
        assert refused >= 2, plane.method


def test_stored_bits_with_padding_set_are_refused():
    image = text_image(12, 3)  # 12 bits a row: 4 bits of padding
    decomposed = decompose(image)
    stored = [p for p in methods.alternatives(decomposed, "L") if p.method == "stored"][0]
    data = bytearray(stored.data)
    data[1] |= 1
    snail = methods.smallest(decomposed, [container.Plane.coded("L", "stored", bytes(data))], 1, fallback=False)
    with pytest.raises(FormatError, match="padding bits"):
        api.decode_image(snail, SHIPPED)


def test_the_model_alone_when_asked():
    decomposed = decompose(Image.frombytes("L", (5, 4), np.random.default_rng(0).bytes(20)))  # noise: stored wins
    assert api.encode_image(decomposed, SHIPPED, calibrate=False).planes[0].method != "model"
    assert api.encode_image(decomposed, SHIPPED, calibrate=False, fallback=False).planes[0].method == "model"


def test_pillows_smallest_deflate_is_not_written_where_it_cannot_win(monkeypatch):
    """Where Pillow's default deflate stream is over HOPELESS times the model's plane, its smallest (a
    second save) is not written; the file is the one that writing it too gives. Otherwise both are."""
    decomposed = decompose(Image.fromarray(PHOTO[:64, :64]))
    snail = api.encode_image(decomposed, SHIPPED, calibrate=False, fallback=False)
    saves = []
    save = Image.Image.save
    monkeypatch.setattr(Image.Image, "save", lambda image, *args, **kwargs: saves.append(kwargs) or save(image, *args, **kwargs))
    chosen = container.write(methods.smallest(decomposed, list(snail.planes), snail.arithmetic))
    assert saves == [{}]  # the photo's model plane is far smaller than a PNG of it
    monkeypatch.setattr(methods, "HOPELESS", 1000)  # a deflate stream within 1000 times the model's is tried
    assert container.write(methods.smallest(decomposed, list(snail.planes), snail.arithmetic)) == chosen
    assert saves[1:] == [{}, {"optimize": True}]
    deflate = [plane for plane in methods.alternatives(decomposed, "RGB", beat=10**9) if plane.method == "deflate"]
    assert len(saves) == 5 and len(deflate) == 1  # a model plane that large: both written
