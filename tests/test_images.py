"""Reading and writing images exactly (snailcompress.codec.images)."""

from __future__ import annotations

import io
import os
import struct
import tempfile
import time
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from snailcompress.codec import container
from snailcompress.codec.images import (
    SUPPORTED_MODES,
    DecomposedImage,
    compose,
    decompose,
    pixel_checksum,
    read_image,
    same_image,
    write_image,
)
from snailcompress.errors import ImageError
from snailcompress.fileio import OutputExistsError

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CHANNELS = {"1": 1, "L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "P": 1}
SUPPORTED_TEXT = "snailcompress codes 8-bit L, LA, RGB, RGBA, P and 1 images"


# --------------------------------------------------------------------------------------------
# helpers


def signature(im: Image.Image):
    """Everything that must survive: mode, size, pixels, palette, transparency."""
    return (
        im.mode,
        im.size,
        im.tobytes(),
        im.getpalette() if im.mode == "P" else None,
        im.palette.mode if im.mode == "P" else None,
        im.info.get("transparency"),
    )


def file_signature(path):
    with Image.open(path) as im:
        im.load()
        return signature(im)


def raw_png(w, h, depth, ctype, rows: bytes, chunks=()) -> bytes:
    """A PNG built by hand; rows must already carry their filter bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + b"".join(chunk(k, d) for k, d in chunks)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


sides = st.one_of(st.just(1), st.integers(1, 9))


@st.composite
def pil_images(draw, modes=SUPPORTED_MODES):
    """Small images in the supported modes, with palettes, transparency and constant alpha."""
    mode = draw(st.sampled_from(modes))
    w, h = draw(sides), draw(sides)
    n = w * h
    if mode == "1":
        bits = np.frombuffer(draw(st.binary(min_size=n, max_size=n)), np.uint8).reshape(h, w) & 1
        im = Image.frombytes("1", (w, h), np.packbits(bits, axis=1).tobytes())
        if draw(st.booleans()):
            im.info["transparency"] = draw(st.sampled_from([0, 255]))
        return im
    if mode == "P":
        entries = draw(st.integers(1, 256))
        palette = draw(st.binary(min_size=3 * entries, max_size=3 * entries))
        idx = np.frombuffer(draw(st.binary(min_size=n, max_size=n)), np.uint8).astype(np.int64) % entries
        im = Image.frombytes("P", (w, h), idx.astype(np.uint8).tobytes())
        im.putpalette(palette)
        t = draw(st.sampled_from(["none", "int", "bytes"]))
        if t == "int":
            im.info["transparency"] = draw(st.integers(0, entries - 1))
        elif t == "bytes":
            im.info["transparency"] = draw(st.binary(min_size=1, max_size=entries))
        return im
    c = CHANNELS[mode]
    arr = np.frombuffer(draw(st.binary(min_size=n * c, max_size=n * c)), np.uint8).reshape(h, w, c).copy()
    if mode in ("LA", "RGBA") and draw(st.booleans()):
        arr[..., -1] = draw(st.sampled_from([0, 255, draw(st.integers(0, 255))]))
    im = Image.frombytes(mode, (w, h), arr.tobytes())
    if mode == "L" and draw(st.booleans()):
        im.info["transparency"] = draw(st.integers(0, 255))
    if mode == "RGB" and draw(st.booleans()):
        im.info["transparency"] = tuple(draw(st.lists(st.integers(0, 255), min_size=3, max_size=3)))
    return im


# --------------------------------------------------------------------------------------------
# round trips


@FAST
@given(pil_images())
def test_png_file_round_trip(im):
    with tempfile.TemporaryDirectory() as d:
        src, out = os.path.join(d, "src.png"), os.path.join(d, "out.png")
        im.save(src)
        dec = read_image(src)
        assert dec.mode == im.mode and (dec.width, dec.height) == im.size
        assert sorted(dec.planes) == sorted(dec.expected_planes())
        for key, plane in dec.planes.items():
            assert plane.dtype == np.uint8 and plane.shape == (im.height, im.width, len(key))
        write_image(dec, out, overwrite=False)
        assert file_signature(out) == file_signature(src)
        again = read_image(out)
        assert same_image(again, dec)
        assert pixel_checksum(again) == pixel_checksum(dec)
        assert sorted(os.listdir(d)) == ["out.png", "src.png"]


@FAST
@given(pil_images())
def test_compose_inverts_decompose(im):
    dec = decompose(im)
    back = compose(dec)
    assert signature(back)[:5] == signature(im)[:5]
    t = im.info.get("transparency")
    assert back.info.get("transparency") == (tuple(t) if isinstance(t, list) else t)
    assert same_image(decompose(back), dec)


@FAST
@given(pil_images(), st.sampled_from([".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm"]))
def test_other_formats_are_exact_or_refused(im, suffix):
    with tempfile.TemporaryDirectory() as d:
        src, out = os.path.join(d, "src.png"), os.path.join(d, "out" + suffix)
        im.save(src)
        dec = read_image(src)
        try:
            write_image(dec, out)
        except ImageError as e:
            assert "use .png" in str(e)
            assert os.listdir(d) == ["src.png"]
            return
        assert file_signature(out) == file_signature(src)
        assert same_image(read_image(out), dec)


@pytest.mark.parametrize(
    "mode, suffixes",
    [
        ("1", [".png", ".bmp", ".tif", ".pbm"]),
        ("L", [".png", ".bmp", ".tif", ".pgm"]),
        ("LA", [".png", ".tif"]),
        ("RGB", [".png", ".bmp", ".tif", ".ppm"]),
        ("RGBA", [".png", ".tif"]),
        ("P", [".png", ".bmp"]),
        ("RGB", [""]),  # no suffix: PNG
    ],
)
def test_formats_that_fit(tmp_path, mode, suffixes):
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, (5, 7, CHANNELS[mode]), dtype=np.uint8)
    if mode == "1":
        im = Image.frombytes("1", (7, 5), np.packbits(arr[..., 0] > 127, axis=1).tobytes())
    else:
        im = Image.frombytes(mode, (7, 5), arr.tobytes())
    if mode == "P":
        im.putpalette(bytes(rng.integers(0, 256, 768, dtype=np.uint8)))
    dec = decompose(im)
    for suffix in suffixes:
        out = tmp_path / f"out{suffix}"
        write_image(dec, out)
        assert file_signature(out)[:5] == signature(im)[:5]
        if suffix == "":
            assert out.read_bytes().startswith(b"\x89PNG")


def test_writing_checks_an_image_larger_than_pillow_reads_by_default(tmp_path, monkeypatch):
    """A .snail file may hold up to 2**28 pixels, more than Pillow reads before calling an image a
    decompression bomb: the check that the written bytes read back exactly lifts Pillow's limit for
    those bytes alone (once refused as "cannot be stored exactly as PNG"), and puts it back."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # the 7x5 image is "too large" for Pillow (over twice it)
    dec = decompose(Image.new("RGB", (7, 5), (1, 2, 3)))
    write_image(dec, tmp_path / "out.png")
    assert Image.MAX_IMAGE_PIXELS == 10
    with pytest.raises(ImageError, match="too many pixels"):  # a file to be read, untrusted, is still refused
        read_image(tmp_path / "out.png")


@pytest.mark.parametrize("size", [(1, 1), (1, 17), (17, 1)])
@pytest.mark.parametrize("mode", SUPPORTED_MODES)
def test_thin_images(tmp_path, mode, size):
    im = Image.new(mode, size)
    if mode == "P":
        im.putpalette(b"\x01\x02\x03")
    im.save(tmp_path / "a.png")
    dec = read_image(tmp_path / "a.png")
    write_image(dec, tmp_path / "b.png")
    assert file_signature(tmp_path / "b.png") == file_signature(tmp_path / "a.png")


# --------------------------------------------------------------------------------------------
# decomposition details


def test_constant_alpha_is_not_a_plane():
    arr = np.random.default_rng(0).integers(0, 256, (4, 5, 4), dtype=np.uint8)
    arr[..., 3] = 200
    dec = decompose(Image.frombytes("RGBA", (5, 4), arr.tobytes()))
    assert sorted(dec.planes) == ["RGB"] and dec.extras == {"constant_alpha": 200}
    assert np.array_equal(np.asarray(compose(dec)), arr)
    arr[2, 3, 3] = 7
    dec = decompose(Image.frombytes("RGBA", (5, 4), arr.tobytes()))
    assert sorted(dec.planes) == ["A", "RGB"] and dec.extras == {}
    assert np.array_equal(dec.planes["A"][..., 0], arr[..., 3])
    la = decompose(Image.frombytes("LA", (5, 4), arr[..., 2:].tobytes()))
    assert sorted(la.planes) == ["A", "L"]


def test_bilevel_is_an_L_plane_of_0_and_255(tmp_path):
    bits = np.array([[1, 0, 1], [0, 0, 1]], np.uint8)
    im = Image.frombytes("1", (3, 2), np.packbits(bits, axis=1).tobytes())
    dec = decompose(im)
    assert list(dec.planes) == ["L"] and np.array_equal(dec.planes["L"][..., 0], bits * 255)
    assert compose(dec).mode == "1"
    write_image(dec, tmp_path / "b.png")
    with Image.open(tmp_path / "b.png") as back:
        assert back.mode == "1" and back.tobytes() == im.tobytes()


def test_palette_planes_and_extras():
    im = Image.frombytes("P", (3, 1), bytes([0, 1, 1]))
    im.putpalette(bytes([10, 20, 30, 40, 50, 60]))
    im.info["transparency"] = b"\x80\x00"
    dec = decompose(im)
    assert list(dec.planes) == ["P"] and dec.planes["P"].ravel().tolist() == [0, 1, 1]
    assert dec.extras == {"palette": "0a141e28323c", "palette_mode": "RGB", "transparency": "8000"}


def test_extras_are_valid_container_extras():
    """The extras go into the .snail header unchanged."""
    for im in [
        Image.new("RGBA", (2, 2), (1, 2, 3, 4)),
        Image.new("LA", (2, 2)),
        Image.new("P", (2, 2)),
        Image.new("L", (2, 2)),
    ]:
        if im.mode == "L":
            im.info["transparency"] = 3
        dec = decompose(im)
        planes = tuple(container.Plane(k, "00000000", np.zeros(1, np.uint32), "m", (8, 8)) for k in dec.expected_planes())
        f = container.SnailFile(dec.width, dec.height, dec.mode, planes, pixel_checksum(dec), 1, dec.extras)
        assert container.read(container.write(f)).extras == dec.extras


def test_checksum_sees_everything():
    rng = np.random.default_rng(3)
    idx = rng.integers(0, 4, (6, 5), dtype=np.uint8)
    base = Image.frombytes("P", (5, 6), idx.tobytes())
    base.putpalette(bytes(range(12)))
    ref = pixel_checksum(decompose(base))
    assert ref == pixel_checksum(decompose(base.copy()))
    assert 0 <= ref < 2**32

    changed = base.copy()
    changed.putpixel((2, 3), int(idx[3, 2] + 1) % 4)
    assert pixel_checksum(decompose(changed)) != ref

    other_palette = base.copy()
    other_palette.putpalette(bytes(range(1, 13)))
    assert pixel_checksum(decompose(other_palette)) != ref

    transparent = base.copy()
    transparent.info["transparency"] = 2
    assert pixel_checksum(decompose(transparent)) != ref

    same_bytes_as_l = Image.frombytes("L", (5, 6), idx.tobytes())
    assert pixel_checksum(decompose(same_bytes_as_l)) != ref
    assert pixel_checksum(decompose(Image.frombytes("L", (6, 5), idx.tobytes()))) != pixel_checksum(
        decompose(same_bytes_as_l)
    )

    # independent of how the image was split: constant alpha vs an explicit A plane
    rgba = decompose(Image.new("RGBA", (3, 2), (9, 8, 7, 255)))
    explicit = DecomposedImage("RGBA", 3, 2, {"RGB": rgba.planes["RGB"], "A": np.full((2, 3, 1), 255, np.uint8)}, {})
    assert pixel_checksum(explicit) == pixel_checksum(rgba)


def test_checksum_large_image_rows_in_chunks():
    """An image of several chunks of rows (the checksum reads a few MB at a time) gets the CRC32 of
    its header and all its pixels in one piece, written out here; a flip in any chunk changes it."""
    arr = np.random.default_rng(4).integers(0, 256, (700, 2000, 3), dtype=np.uint8)
    dec = DecomposedImage("RGB", 2000, 700, {"RGB": arr}, {})
    head = zlib.crc32(b"{}", zlib.crc32("snail-pixels-1\0RGB\x002000\x00700\0".encode("ascii")))
    assert pixel_checksum(dec) == zlib.crc32(arr.tobytes(), head)
    for row in (0, 523, 524, 699):  # the first chunk is rows 0..523 at this width
        flipped = arr.copy()
        flipped[row, -1, -1] ^= 1
        assert pixel_checksum(DecomposedImage("RGB", 2000, 700, {"RGB": flipped}, {})) != pixel_checksum(dec), row


def test_compose_rejects_inconsistent_input():
    good = decompose(Image.new("RGBA", (3, 2), (1, 2, 3, 4)))
    with pytest.raises(ValueError, match="needs planes"):
        compose(DecomposedImage("RGBA", 3, 2, {"RGB": good.planes["RGB"]}, {}))
    with pytest.raises(ValueError, match="uint8"):
        compose(DecomposedImage("RGBA", 3, 2, {"RGB": good.planes["RGB"].astype(np.int16)}, good.extras))
    with pytest.raises(ValueError, match="uint8"):
        compose(DecomposedImage("RGBA", 2, 3, good.planes, good.extras))
    with pytest.raises(ValueError, match="only 0 and 255"):
        compose(DecomposedImage("1", 2, 1, {"L": np.array([[[0], [7]]], np.uint8)}, {}))
    with pytest.raises(ValueError):
        compose(DecomposedImage("CMYK", 2, 1, {}, {}))


# --------------------------------------------------------------------------------------------
# what cannot be coded


UNSUPPORTED_IN_MEMORY = ["I", "I;16", "I;16B", "I;16L", "F", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "PA", "La", "RGBa"]


@pytest.mark.parametrize("mode", UNSUPPORTED_IN_MEMORY)
def test_unsupported_modes_in_memory(mode):
    with pytest.raises(ImageError) as ei:
        decompose(Image.new(mode, (2, 2)), "pic.png")
    msg = str(ei.value)
    assert msg.startswith(f"pic.png: mode {mode}") and SUPPORTED_TEXT in msg
    if mode.startswith("I;16"):
        assert "(16-bit)" in msg


def test_rgba_palette_is_refused():
    im = Image.new("P", (2, 2))
    im.putpalette(bytes(range(16)), "RGBA")
    with pytest.raises(ImageError, match="mode P with an RGBA palette"):
        decompose(im, "x.png")


def _save(im, path, **kw):
    im.save(path, **kw)
    return path


@pytest.mark.parametrize(
    "make, mode_text",
    [
        (lambda d: _save(Image.new("I;16", (3, 2), 1000), d / "g16.png"), "mode I;16 (16-bit)"),
        (lambda d: _save(Image.new("I", (3, 2), 70000), d / "i.tif"), "mode I (32-bit integer)"),
        (lambda d: _save(Image.new("F", (3, 2), 0.5), d / "f.tif"), "mode F (32-bit floating point)"),
        (lambda d: _save(Image.new("CMYK", (3, 2)), d / "c.tif"), "mode CMYK"),
        (lambda d: _save(Image.new("CMYK", (3, 2)), d / "c.jpg"), "mode CMYK"),
        (lambda d: _save(Image.new("LAB", (3, 2)), d / "lab.tif"), "mode LAB"),
        (lambda d: _write(d / "rgb16.png", raw_png(2, 1, 16, 2, b"\0" + bytes(range(12)))), "mode RGB (16-bit)"),
        (lambda d: _write(d / "rgba16.png", raw_png(2, 1, 16, 6, b"\0" + bytes(range(16)))), "mode RGBA (16-bit)"),
        (lambda d: _write(d / "la16.png", raw_png(2, 1, 16, 4, b"\0" + bytes(range(8)))), "(16-bit)"),
        (lambda d: _write(d / "rgb16.ppm", b"P6 2 1 65535\n" + bytes(range(12))), "mode RGB (16-bit)"),
        (lambda d: _write(d / "g16.pgm", b"P5 2 1 65535\n" + bytes(range(4))), "mode I"),
    ],
)
def test_unsupported_files(tmp_path, make, mode_text):
    path = make(tmp_path)
    with pytest.raises(ImageError) as ei:
        read_image(path)
    msg = str(ei.value)
    assert msg.startswith(f"{path}: ") and mode_text in msg and SUPPORTED_TEXT in msg, msg


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _frames(n, mode="P"):
    return [Image.new(mode, (4, 4), i) for i in range(n)]


@pytest.mark.parametrize(
    "name, kw",
    [("anim.gif", {}), ("anim.png", {}), ("pages.tif", {})],
)
def test_multi_frame_refused(tmp_path, name, kw):
    frames = _frames(3, "L" if name.endswith(".tif") else "RGB")
    frames[0].save(tmp_path / name, save_all=True, append_images=frames[1:], **kw)
    with pytest.raises(ImageError, match="has 3 frames"):
        read_image(tmp_path / name)


def test_single_frame_gif_with_transparency(tmp_path):
    im = Image.frombytes("P", (4, 3), bytes([0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]))
    im.putpalette(bytes(range(15)))
    im.save(tmp_path / "a.gif", transparency=2)
    dec = read_image(tmp_path / "a.gif")
    assert dec.extras["transparency"] == 2
    write_image(dec, tmp_path / "a.png")
    g, p = file_signature(tmp_path / "a.gif"), file_signature(tmp_path / "a.png")
    assert g[:4] == p[:4] and p[5] == 2


@pytest.mark.parametrize(
    "content, match",
    [
        (b"just some text\n", "is not an image file"),
        (b"", "is empty, not an image"),
        (bytes(range(256)) * 4, "is not an image file"),
    ],
)
def test_non_images(tmp_path, content, match):
    p = _write(tmp_path / "x.png", content)
    with pytest.raises(ImageError, match=match):
        read_image(p)


def test_missing_directory_and_truncated(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="is a directory"):
        read_image(tmp_path)
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    _write(tmp_path / "cut.png", data[: len(data) // 2])
    with pytest.raises(ImageError, match="damaged or truncated|cannot read"):
        read_image(tmp_path / "cut.png")


def test_decompression_bomb_and_oversize_refused_quickly(tmp_path):
    bomb = _write(tmp_path / "bomb.png", raw_png(70000, 70000, 8, 0, b"\0" * 10))
    t0 = time.perf_counter()
    with pytest.raises(ImageError, match="too many pixels|too large"):
        read_image(bomb)
    wide = _write(tmp_path / "wide.png", raw_png(65536, 1, 8, 0, b"\0" * 10))
    with pytest.raises(ImageError, match="65536 x 1 pixels is too large"):
        read_image(wide)
    assert time.perf_counter() - t0 < 2


def test_palette_index_beyond_palette(tmp_path):
    p = _write(tmp_path / "p.png", raw_png(3, 1, 8, 3, b"\0" + bytes([0, 1, 5]), [(b"PLTE", bytes(6))]))
    with pytest.raises(ImageError, match="palette index 5 but its palette has only 2 entries"):
        read_image(p)


def test_low_bit_grey_transparency_is_rescaled(tmp_path):
    # 2-bit greyscale, pixels 0 1 2 3, tRNS grey 1 (which Pillow shows as 85)
    p = _write(tmp_path / "g2.png", raw_png(4, 1, 2, 0, b"\0" + bytes([0b00011011]), [(b"tRNS", b"\0\x01")]))
    dec = read_image(p)
    assert dec.planes["L"].ravel().tolist() == [0, 85, 170, 255]
    assert dec.extras == {"transparency": 85}
    write_image(dec, tmp_path / "out.png")
    with Image.open(tmp_path / "out.png") as im:
        assert im.info["transparency"] == 85 and np.asarray(im).ravel().tolist() == [0, 85, 170, 255]


def test_colour_key_transparency_survives(tmp_path):
    for mode, t in [("L", 7), ("RGB", (1, 2, 3))]:
        im = Image.new(mode, (3, 3))
        im.save(tmp_path / f"{mode}.png", transparency=t)
        dec = read_image(tmp_path / f"{mode}.png")
        write_image(dec, tmp_path / f"{mode}-out.png")
        assert file_signature(tmp_path / f"{mode}-out.png") == file_signature(tmp_path / f"{mode}.png")
        assert file_signature(tmp_path / f"{mode}-out.png")[5] == t
        with pytest.raises(ImageError, match="with transparency cannot be stored exactly as (PPM|BMP); use .png"):
            write_image(dec, tmp_path / f"{mode}-out.bmp")


# --------------------------------------------------------------------------------------------
# write_image


def test_write_refuses_existing_and_overwrites_when_asked(tmp_path):
    dec = decompose(Image.new("L", (2, 2), 9))
    target = tmp_path / "o.png"
    target.write_bytes(b"precious")
    with pytest.raises(OutputExistsError, match="already exists"):
        write_image(dec, target)
    assert target.read_bytes() == b"precious"
    write_image(dec, target, overwrite=True)
    assert file_signature(target)[:3] == ("L", (2, 2), bytes([9] * 4))
    assert os.listdir(tmp_path) == ["o.png"]


def test_write_unknown_suffix_and_misfit(tmp_path):
    dec = decompose(Image.new("RGBA", (2, 2), (1, 2, 3, 4)))
    with pytest.raises(ImageError, match=r"\.jpg is not a format snailcompress writes exactly"):
        write_image(dec, tmp_path / "o.jpg")
    with pytest.raises(ImageError, match="mode RGBA image cannot be stored exactly as PPM; use .png"):
        write_image(dec, tmp_path / "o.pnm")
    for suffix, mode in ((".ppm", "L"), (".pgm", "RGB"), (".pbm", "L"), (".pgm", "LA")):  # each Netpbm name's own mode
        with pytest.raises(ImageError, match=rf"o\{suffix}: \{suffix} holds mode .* this one is mode {mode}; use .png or .pnm"):
            write_image(decompose(Image.new(mode, (2, 2))), tmp_path / f"o{suffix}")
    assert not list(tmp_path.iterdir())
    with pytest.raises(ImageError, match="as BMP"):
        write_image(dec, tmp_path / "o.bmp")
    p = Image.new("P", (2, 2))
    p.putpalette(bytes(range(30)))
    with pytest.raises(ImageError, match="mode P image with a 10-entry palette cannot be stored exactly as TIFF"):
        write_image(decompose(p), tmp_path / "o.tif")
    assert os.listdir(tmp_path) == []


def test_write_into_missing_directory(tmp_path):
    from snailcompress.errors import SnailError

    with pytest.raises(SnailError, match="does not exist"):
        write_image(decompose(Image.new("L", (1, 1))), tmp_path / "no" / "o.png")


def test_read_image_accepts_bytes_io_free_paths(tmp_path):
    # str, pathlib and bytes paths
    Image.new("RGB", (2, 1), (5, 6, 7)).save(tmp_path / "a.png")
    for p in (tmp_path / "a.png", str(tmp_path / "a.png"), os.fsencode(tmp_path / "a.png")):
        assert read_image(p).planes["RGB"].ravel().tolist() == [5, 6, 7] * 2


@settings(max_examples=40, deadline=None)
@given(st.binary(min_size=1, max_size=300))
@example(b"\x89PNG\r\n\x1a\n")
@example(b"GIF89a")
@example(b"P6 1 1 255\n")
def test_garbage_files_give_image_error_only(data):
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "g.png")
        with open(p, "wb") as fh:
            fh.write(data)
        try:
            read_image(p)
        except ImageError as e:
            assert str(e) and "\n" not in str(e)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_damaged_pngs_give_image_error_only(data):
    im = data.draw(pil_images())
    buf = io.BytesIO()
    im.save(buf, "PNG")
    raw = bytearray(buf.getvalue())
    i = data.draw(st.integers(8, len(raw) - 1))
    raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(raw)))
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "g.png")
        with open(p, "wb") as fh:
            fh.write(bytes(raw[:cut]))
        try:
            read_image(p)
        except ImageError:
            pass
