"""The .snail container (snailcompress.codec.container) and atomic_write/atomic_path (snailcompress.fileio)."""

from __future__ import annotations

import dataclasses
import os
import re
import struct
import sys
import subprocess
import time
import tracemalloc
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from snailcompress.codec import container as C
from snailcompress.codec.container import Plane, SnailFile
from snailcompress.codec.tiles import default_band
from snailcompress.errors import FormatError, SnailError
from snailcompress.fileio import OutputExistsError, atomic_path, atomic_write, check_directory

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------------------------
# an independent writer of the byte layout in container's docstring, that also writes invalid files

MAGIC = b"\x89SNL"
OLD_MAGIC = b"\x89SNAIL\r\n"
TRUNCATED = "file is truncated"
PART_WORD = "file is truncated or has trailing data (its length leaves a part of a 4-byte word)"
CRC_MISMATCH = "file is corrupt, truncated or has trailing data (checksum mismatch)"


class Raw(bytes):
    """Bytes put into a forged header verbatim, in place of a field's encoding."""


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def f16s(values) -> bytes:
    return b"".join(struct.pack("<e", v) for v in values)


MODE_CODES = {"L": 0, "1": 1, "LA": 2, "RGB": 3, "RGBA": 4, "P": 5, "PA": 6}
METHOD_CODES = {"model": 0, "stored": 1, "deflate": 2, "bilevel": 3}  # bits 4-5 (plane 1), 6-7 (plane 2) of the mode byte
T_NAME, T_TILE, T_CONTEXT, T_BAND, T_CALIBRATION, T_ALPHA, T_PALETTE, T_TRANSPARENCY, T_ALPHA_TABLE = range(1, 10)
PLANE_FIELDS = {  # key in a plane dict -> (tag, encoder of the content after the plane index)
    "model_name": (T_NAME, lambda s: s.encode("utf-8", "surrogatepass")),
    "tile": (T_TILE, lambda t: varint(t[0]) + varint(t[1])),
    "context": (T_CONTEXT, lambda c: varint(c[0]) + varint(c[1])),
    "band": (T_BAND, varint),
    "calibration": (T_CALIBRATION, lambda c: varint(len(c[0])) + f16s(c[0]) + f16s(c[1]) + varint(len(c[2])) + f16s(c[2])),
}


def _field(value, encode):
    return value if isinstance(value, Raw) else encode(value)


def tagged(tag: int, content: bytes, plane: int | None = None) -> bytes:
    body = (b"" if plane is None else bytes([plane])) + content
    return bytes([tag]) + varint(len(body)) + body


def encode_fields(h: dict) -> bytes:
    """The tagged fields of a header dict, sorted by (tag, plane) as the docstring says."""
    if "fields" in h:
        return h["fields"]
    fields = []
    planes = h["planes"] if isinstance(h["planes"], list) else []
    for i, p in enumerate(planes):
        for key, (tag, encode) in PLANE_FIELDS.items():
            if key in p:
                fields.append((tag, i, tagged(tag, _field(p[key], encode), i)))
    extras = h["extras"]
    if isinstance(extras, Raw):
        fields.append((T_ALPHA, 0, extras))
    else:
        if "constant_alpha" in extras:
            fields.append((T_ALPHA, 0, tagged(T_ALPHA, bytes([extras["constant_alpha"]]))))
        if "palette" in extras:
            pal = bytes.fromhex(extras["palette"])
            bpe = len(extras["palette_mode"])
            fields.append((T_PALETTE, 0, tagged(T_PALETTE, bytes([bpe]) + varint(len(pal) // bpe) + pal)))
        if "transparency" in extras:
            t = extras["transparency"]
            if isinstance(t, str):
                fields.append((T_ALPHA_TABLE, 0, tagged(T_ALPHA_TABLE, varint(len(t) // 2) + bytes.fromhex(t))))
            else:
                values = t if isinstance(t, list) else [t]
                fields.append((T_TRANSPARENCY, 0, tagged(T_TRANSPARENCY, b"".join(varint(v) for v in values))))
    return b"".join(chunk for *_, chunk in sorted(fields, key=lambda x: x[:2]))


def encode_header(h: dict) -> bytes:
    """Header bytes for a header dict (values as in the API; any value may be a Raw override)."""
    out = _field(h["width"], varint) + _field(h["height"], varint)
    constant = h.get("constant", isinstance(h["extras"], dict) and "constant_alpha" in h["extras"])
    planes = h["planes"]
    methods = [p.get("method", "model") for p in planes] if isinstance(planes, list) else ["model"]
    code = sum(METHOD_CODES[m] << (4 + 2 * i) for i, m in enumerate(methods))
    out += _field(h["mode"], lambda m: bytes([MODE_CODES[m] + 8 * constant + code]))
    out += _field(h["pixel_crc32"], lambda c: struct.pack("<I", c))
    if h.get("arithmetic", 1) is not None:  # None where no plane is the model's: no field
        out += _field(h.get("arithmetic", 1), lambda a: bytes([a]))
    if isinstance(planes, Raw):
        out += planes
    else:
        for i, p in enumerate(planes):
            if p.get("method", "model") == "model":
                out += _field(p["model_id"], bytes.fromhex)
            if i < len(planes) - 1:  # the last plane's length is implied by the file's length
                out += _field(p["n_words"], varint)
    return out + encode_fields(h) + h.get("tail", b"")


def header_dict(f: SnailFile) -> dict:
    """The header of f as encode_header takes it: only the tagged fields that differ from their defaults."""
    planes = []
    for p in f.planes:
        if p.method != "model":
            planes.append({"channels": p.channels, "method": p.method, "n_words": len(p.data)})
            continue
        d = {"channels": p.channels, "model_id": p.model_id, "n_words": p.n_words}
        if p.model_name is not None:
            d["model_name"] = p.model_name
        if tuple(p.tile) != (32, 32):
            d["tile"] = tuple(p.tile)
        if tuple(p.context) != (2, 2):
            d["context"] = tuple(p.context)
        if p.band != default_band(f.height, f.width, tuple(p.tile), tuple(p.context)):
            d["band"] = p.band
        if p.calibration is not None:
            d["calibration"] = p.calibration
        planes.append(d)
    return {
        "width": f.width,
        "height": f.height,
        "mode": f.mode,
        "pixel_crc32": f.pixel_crc32,
        "arithmetic": f.arithmetic,
        "planes": planes,
        "extras": dict(f.extras),
    }


def frame(header: bytes, payload: bytes, version: int = 6) -> bytes:
    checked = bytes([version]) + varint(len(header)) + header + payload
    return MAGIC + checked + struct.pack("<I", zlib.crc32(checked))


def forge(header: dict | bytes, n_words: int | None = None, version: int = 6) -> bytes:
    """A file with this header (a dict or raw bytes), a correct checksum and n_words zero words in all
    (by default the planes' lengths: words of a model plane, bytes of another)."""
    raw = header if isinstance(header, bytes) else encode_header(header)
    if n_words is not None:
        return frame(raw, bytes(4 * n_words), version)
    size = 0
    if isinstance(header, dict) and isinstance(header["planes"], list):
        for p in header["planes"]:
            if isinstance(p["n_words"], int) and 0 <= p["n_words"] < 10_000:
                size += p["n_words"] * (4 if p.get("method", "model") == "model" else 1)
    return frame(raw, bytes(size), version)


def header_span(data: bytes) -> tuple[int, int]:
    """(start, end) of the header fields in a file."""
    pos, hlen, shift = 5, 0, 0
    while True:
        b = data[pos]
        pos += 1
        hlen |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return pos, pos + hlen


# --------------------------------------------------------------------------------------------
# strategies

_PIECES = {"L": ["L"], "1": ["L"], "LA": ["L", "A"], "RGB": ["RGB"], "RGBA": ["RGB", "A"], "P": ["P"], "PA": ["P", "A"]}
_safe_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\x7f"), min_size=1, max_size=30
)
_words = st.binary(max_size=160).map(lambda b: np.frombuffer(b[: len(b) // 4 * 4], "<u4").astype(np.uint32))
_binary16 = (
    st.integers(0, 0xFFFF)
    .filter(lambda bits: bits != 0x8000 and bits & 0x7C00 != 0x7C00)  # not -0, not inf or NaN
    .map(lambda bits: struct.unpack("<e", struct.pack("<H", bits))[0])
)


@st.composite
def calibrations(draw):
    k = draw(st.integers(1, 6))
    gain = draw(st.lists(_binary16, max_size=5))
    return (tuple(draw(st.lists(_binary16, min_size=k, max_size=k))), tuple(draw(st.lists(_binary16, min_size=k, max_size=k))),
            tuple(gain))


@st.composite
def planes_for(draw, channels: str, mode: str = "RGB", width: int = 1, height: int = 1) -> Plane:
    method = draw(st.sampled_from(C.METHODS if len(channels) == 1 else C.METHODS[:3]))
    if method == "stored" and C.stored_size(width, height, mode, channels) > 3000:
        method = "deflate"
    if method == "stored":
        return Plane.coded(channels, method, draw(st.binary(min_size=C.stored_size(width, height, mode, channels),
                                                            max_size=C.stored_size(width, height, mode, channels))))
    if method == "deflate":
        return Plane.coded(channels, method, draw(st.binary(min_size=1, max_size=40)))
    if method == "bilevel":
        return Plane.coded(channels, method, draw(_words).tobytes())

    def pairs(lo, small):
        any_pair = st.tuples(st.integers(lo, 65535), st.integers(lo, 65535))
        return st.one_of(any_pair, st.tuples(st.integers(lo, small), st.integers(lo, small)))

    tile = draw(st.one_of(st.just((32, 32)), pairs(1, 40)))
    context = draw(st.one_of(st.just((2, 2)), pairs(0, 4)))
    band = draw(st.one_of(st.none(), st.integers(1, 65535) if context[0] else st.just(1)))
    return Plane(
        channels=channels,
        model_id=draw(st.text(alphabet="0123456789abcdef", min_size=8, max_size=8)),
        words=draw(_words),
        model_name=draw(st.one_of(st.none(), _safe_text, st.text(alphabet="0123456789abcdef", min_size=1, max_size=8))),
        tile=tile,
        context=context,
        band=band,
        calibration=draw(st.one_of(st.none(), calibrations())),
    )


@st.composite
def snail_files(draw) -> SnailFile:
    mode = draw(st.sampled_from(C.MODES))
    extras: dict = {}
    pieces = list(_PIECES[mode])
    if mode in ("LA", "RGBA", "PA") and draw(st.booleans()):
        extras["constant_alpha"] = draw(st.integers(0, 255))
        pieces = pieces[:-1]
    if mode in ("P", "PA"):
        pmode = draw(st.sampled_from(["RGB", "RGBA"]))
        n = draw(st.integers(0, 256))
        extras["palette_mode"] = pmode
        extras["palette"] = draw(st.binary(min_size=n * len(pmode), max_size=n * len(pmode))).hex()
        t = draw(st.one_of(st.none(), st.integers(0, 255), st.binary(min_size=1, max_size=256).map(bytes.hex)))
        if t is not None:
            extras["transparency"] = t
    elif mode in ("L", "1") and draw(st.booleans()):
        extras["transparency"] = draw(st.integers(0, 65535))
    elif mode == "RGB" and draw(st.booleans()):
        extras["transparency"] = draw(st.lists(st.integers(0, 65535), min_size=3, max_size=3))
    width = draw(st.one_of(st.integers(1, 65535), st.integers(1, 300)))
    height = draw(st.one_of(st.integers(1, min(65535, C.MAX_PIXELS // width)), st.integers(1, min(300, C.MAX_PIXELS // width))))
    planes = tuple(draw(planes_for(ch, mode, width, height)) for ch in pieces)
    if mode in ("LA", "RGBA") and len(planes) == 2 and planes[0].method == "deflate" and draw(st.booleans()):
        planes = (planes[0], Plane.coded("A", "deflate", b""))  # both planes in plane 1's stream
    return SnailFile(
        width=width,
        height=height,
        mode=mode,
        planes=planes,
        pixel_crc32=draw(st.integers(0, 2**32 - 1)),
        arithmetic=draw(st.one_of(st.just(1), st.integers(1, 255))) if any(p.method == "model" for p in planes) else None,
        extras=extras,
    )


def small_file(**over) -> SnailFile:
    kw = dict(
        width=3,
        height=2,
        mode="RGBA",
        planes=(
            Plane("RGB", "01234567", np.arange(7, dtype=np.uint32) * 0x01010101, "snail-rgb-small", (16, 16)),
            Plane("A", "fedcba98", np.array([5, 2**32 - 1], dtype=np.uint32), "snail-gray-small", (8, 8)),
        ),
        pixel_crc32=0xDEADBEEF,
        extras={},
    )
    kw.update(over)
    return SnailFile(**kw)


def common_file(width: int = 768, height: int = 512, n_words: int = 72) -> SnailFile:
    """What `snailcompress encode` writes for an RGB image with the defaults: no field is stored."""
    plane = Plane("RGB", "ff7d3a5d", np.arange(n_words, dtype=np.uint32))
    return SnailFile(width=width, height=height, mode="RGB", planes=(plane,), pixel_crc32=0x12345678)


VALID = C.write(small_file())
SMALL_HEADER = header_dict(small_file())


def fails(data: bytes, match: str | None = None) -> FormatError:
    with pytest.raises(FormatError, match=match) as ei:
        C.read(data)
    assert "\n" not in str(ei.value)
    return ei.value


# --------------------------------------------------------------------------------------------
# round trips and layout


@FAST
@given(snail_files())
def test_round_trip(f):
    data = C.write(f)
    assert C.read(data) == f
    assert C.read_header(data) == f
    assert C.write(C.read(data)) == data  # canonical
    assert C.file_size(f) == len(data)
    assert C.overhead(f) == len(data) - sum(p.payload_bytes for p in f.planes)
    start, end = header_span(data)
    assert data[start:end] == encode_header(header_dict(f))  # the documented layout, written independently
    payload = b"".join(p.words.astype("<u4").tobytes() if p.method == "model" else p.data for p in f.planes)
    assert data == frame(encode_header(header_dict(f)), payload)
    back = C.read(data)
    for p, q in zip(back.planes, f.planes):
        assert p.words.dtype == np.uint32 and p.words.ndim == 1
        assert type(p.band) is int and p.band == q.band and len(p.calibration or (0, 0, 0)) == 3


def test_byte_layout():
    f = SnailFile(
        width=300,
        height=2,
        mode="LA",
        planes=(
            Plane("L", "ab12cd34", np.array([1, 2], np.uint32), model_name="m", tile=(8, 8), context=(0, 0)),
            Plane("A", "00ff00ff", np.array([3], np.uint32), band=5, calibration=((0.5,), (-2.0,), ())),
        ),
        pixel_crc32=0x01020304,
        arithmetic=2,
    )
    header = bytes.fromhex(
        "ac 02 02 02"  # width 300, height 2, mode LA (2)
        "04 03 02 01"  # pixel_crc32
        "02"  # arithmetic 2
        "ab 12 cd 34 02"  # plane 1: model id, 2 words
        "00 ff 00 ff"  # plane 2: model id (its word count is implied)
        "01 02 00 6d"  # model_name of plane 1 = "m"
        "02 03 00 08 08"  # tile of plane 1 = 8 x 8
        "03 03 00 00 00"  # context of plane 1 = (0, 0) (so its band is 1, the default)
        "04 02 01 05"  # band of plane 2 = 5 (the default is 1: one 34-row window spans the image)
        "05 07 01 01 00 38 00 c0 00"  # calibration of plane 2: 1 output, scale 0.5, shift -2, no feature gain
    )
    checked = b"\x06" + bytes([len(header)]) + header + bytes.fromhex("01000000 02000000 03000000")
    expected = b"\x89SNL" + checked + struct.pack("<I", zlib.crc32(checked))
    data = C.write(f)
    assert data == expected, data.hex(" ")
    back = C.read(data)
    assert back == f and back.planes[0].band == 1 and back.planes[1].tile == (32, 32) and back.planes[1].model_name is None
    assert C.overhead(f) == len(data) - 12


def test_byte_layout_of_the_image_fields():
    f = SnailFile(1, 1, "PA", (Plane("P", "00000000", np.zeros(0, np.uint32)),), 0,
                  extras={"constant_alpha": 255, "palette": "aabbcc", "palette_mode": "RGB", "transparency": "00"})
    header = bytes.fromhex(
        "01 01 0e"  # 1 x 1, mode PA (6) + 8: the alpha is constant, and the only plane is P
        "00 00 00 00 01"  # pixel_crc32, arithmetic 1
        "00 00 00 00"  # the plane's model id
        "06 01 ff"  # constant_alpha 255
        "07 05 03 01 aa bb cc"  # palette: 3 bytes per entry, 1 entry
        "09 02 01 00"  # transparency as per-index alpha: 1 entry, 0
    )
    assert C.write(f) == frame(header, b"")
    assert C.read(frame(header, b"")) == f


@pytest.mark.parametrize("width, height, size", [(768, 512, 24), (32, 32, 22), (65535, 4096, 25)])
def test_the_common_file_has_at_most_24_bytes_of_overhead(width, height, size):
    """An RGB image coded with the defaults: magic 4, version 1, header length 1, header (width,
    height, mode 1, pixel CRC 4, arithmetic 1, model id 4), CRC 4."""
    for n_words in (0, 72, 110_000):
        f = common_file(width, height, n_words)
        data = C.write(f)
        assert len(data) - 4 * n_words == C.overhead(f) == size
        if width <= 768:
            assert C.overhead(f) <= 24
        assert C.read(data) == f
    header = varint(width) + varint(height) + b"\x03" + struct.pack("<I", 0x12345678) + b"\x01" + bytes.fromhex("ff7d3a5d")
    assert C.write(common_file(width, height, 3)) == frame(header, bytes.fromhex("00000000 01000000 02000000"))


def test_largest_header_fits():
    big = "\U0001f40c" * 100  # 4 UTF-8 bytes each
    calibration = (tuple([65504.0] * 1024), tuple([-65504.0] * 1024), tuple([0.5] * 1024))
    f = SnailFile(
        width=1,
        height=65535,
        mode="PA",
        planes=(
            Plane("P", "ffffffff", np.zeros(1, np.uint32), big, (65535, 65535), (65535, 65535), 65535, calibration),
            Plane("A", "eeeeeeee", np.zeros(0, np.uint32), big, (65535, 65535), (65535, 65535), 65535, calibration),
        ),
        pixel_crc32=2**32 - 1,
        arithmetic=255,
        extras={"palette_mode": "RGBA", "palette": "ab" * 1024, "transparency": "cd" * 256},
    )
    data = C.write(f)
    assert C.read(data) == f
    start, end = header_span(data)
    assert 13_000 < end - start < C.MAX_HEADER_BYTES


# --------------------------------------------------------------------------------------------
# coding methods: planes stored, deflated or bilevel


def stored_file(width: int = 64, height: int = 64, mode: str = "L") -> SnailFile:
    data = bytes(range(256)) * (C.stored_size(width, height, mode, "L") // 256) + bytes(C.stored_size(width, height, mode, "L") % 256)
    return SnailFile(width, height, mode, (Plane.coded("L", "stored", data),), 0x01020304, arithmetic=None)


def test_a_stored_file_is_17_bytes_over_its_pixels():
    """Magic 4, version 1, header length 1, header 7 (width, height, mode, pixel CRC 4), CRC 4: no
    arithmetic, no model id, no length (the last plane's is the file's)."""
    f = stored_file()
    data = C.write(f)
    header = bytes.fromhex("40 40 10 04 03 02 01")  # 64 x 64, mode L (0) + stored (1) << 4, pixel CRC
    assert data == frame(header, f.planes[0].data)
    assert len(data) - 64 * 64 == C.overhead(f) == 17
    assert C.read(data) == f and C.read(data).arithmetic is None
    for width, height in [(1, 300), (300, 1), (8, 8)]:  # a side of 128 or more takes a second varint byte
        assert C.overhead(stored_file(width, height)) == 17 + (max(width, height) >= 128)
    bits = stored_file(64, 64, "1")  # one bit a pixel
    assert bits.planes[0].payload_bytes == 512 and C.file_size(bits) == 512 + 17


def test_byte_layout_of_mixed_methods():
    """RGBA: the model's RGB and a bilevel alpha; the lengths of the planes before the last."""
    f = SnailFile(3, 2, "RGBA", (Plane("RGB", "01234567", np.array([7, 8], np.uint32), tile=(16, 16)),
                                Plane.coded("A", "bilevel", bytes(range(8)))), 5)
    header = bytes.fromhex(
        "03 02 c4"  # 3 x 2, mode RGBA (4), plane 1 the model's (0 << 4), plane 2 bilevel (3 << 6)
        "05 00 00 00 01"  # pixel_crc32, arithmetic 1 (plane 1 is the model's)
        "01 23 45 67 02"  # plane 1: model id, 2 words
        "02 03 00 10 10"  # tile of plane 1 = 16 x 16; plane 2 has no model id and no fields
    )
    payload = bytes.fromhex("07000000 08000000") + bytes(range(8))
    assert C.write(f) == frame(header, payload) and C.read(frame(header, payload)) == f
    g = SnailFile(3, 2, "RGBA", (Plane.coded("RGB", "deflate", b"xyz"), Plane.coded("A", "stored", bytes(6))), 5,
                  arithmetic=None)
    header = bytes.fromhex("03 02 64 05 00 00 00 03")  # deflate (2 << 4), stored (1 << 6); plane 1: 3 bytes
    assert C.write(g) == frame(header, b"xyz" + bytes(6)) and C.read(C.write(g)) == g
    assert "plane 1:      RGB, deflate" in C.describe(g) and "arithmetic" not in C.describe(g)
    assert "plane 2:      A, bilevel" in C.describe(f) and "arithmetic:   integer arithmetic version 1" in C.describe(f)


def _methods(*planes: dict, mode: str = "L", width: int = 4, height: int = 2, **over) -> bytes:
    h = {"width": width, "height": height, "mode": mode, "pixel_crc32": 0, "arithmetic": None, "planes": list(planes),
         "extras": {}}
    h.update(over)
    return forge(h)


@pytest.mark.parametrize(
    "data, match",
    [
        (_methods({"method": "stored", "n_words": 7}), "plane 1 is stored in 7 bytes; a 4 x 2 L image's L pixels take 8"),
        (_methods({"method": "stored", "n_words": 9}), "stored in 9 bytes"),
        (_methods({"method": "stored", "n_words": 8}, mode="1"), "stored in 8 bytes; a 4 x 2 1 image's L pixels take 2"),
        (_methods({"channels": "RGB", "method": "stored", "n_words": 24},
                  {"channels": "A", "method": "stored", "n_words": 7}, mode="RGBA"), "plane 2 is stored in 7 bytes"),
        (_methods({"channels": "RGB", "method": "stored", "n_words": 23},
                  {"channels": "A", "method": "deflate", "n_words": 3}, mode="RGBA"), "plane 1 is stored in 23 bytes"),
        (_methods({"method": "bilevel", "n_words": 6}), "plane 1 is bilevel in 6 bytes, not a whole number of 4-byte words"),
        (_methods({"method": "bilevel", "n_words": 8}, mode="RGB"), "plane 1 is RGB: bilevel codes a plane of one channel"),
        (_methods({"method": "stored", "n_words": 8}, mode=Raw(b"\x50")), "mode byte 80 gives a coding method for plane 2"),
        (_methods({"method": "stored", "n_words": 8}, fields=tagged(T_TILE, b"\x10\x10", 0)),
         "the tile field is for plane 1, which is coded stored, not by the model"),
        (_methods({"channels": "L", "method": "deflate", "n_words": 3}, {"channels": "A", "model_id": "01234567", "n_words": 0},
                  mode="LA", arithmetic=1, fields=tagged(T_NAME, b"m", 0)), "the model_name field is for plane 1, which is coded deflate"),
        (_methods({"method": "deflate", "n_words": 3}, arithmetic=Raw(b"\x01")), "middle of the length of the model_name field"),  # no arithmetic: a tag
        (_methods({"channels": "L", "method": "deflate", "n_words": 3}, {"channels": "A", "model_id": "01234567", "n_words": 0},
                  mode="LA"), "it ends in the middle of plane 2 model_id"),  # the arithmetic byte is missing
        (_methods({"method": "deflate", "n_words": 0}), "plane 1 is deflated in 0 bytes: only the alpha of an LA or RGBA"),
        (_methods({"channels": "L", "method": "stored", "n_words": 8}, {"channels": "A", "method": "deflate", "n_words": 0},
                  mode="LA"), "plane 2 is deflated in 0 bytes"),
        (_methods({"channels": "L", "method": "deflate", "n_words": 0}, {"channels": "A", "method": "deflate", "n_words": 0},
                  mode="LA"), "plane 1 is deflated in 0 bytes"),
        (_methods({"channels": "P", "method": "deflate", "n_words": 5}, {"channels": "A", "method": "deflate", "n_words": 0},
                  mode="PA", extras={"palette": "", "palette_mode": "RGB"}), "plane 2 is deflated in 0 bytes"),
    ],
)
def test_invalid_methods(data, match):
    e = str(fails(data))
    assert e.startswith("header is invalid: ") and re.search(match, e), e


def test_lengths_of_planes_not_coded_by_the_model():
    """Bytes, not words: the last plane's is whatever the file leaves, a model plane's a whole number of words."""
    for n in range(1, 9):
        data = _methods({"method": "deflate", "n_words": n})
        assert C.read(data).planes[0].data == bytes(n)
    data = _methods({"channels": "L", "method": "deflate", "n_words": 5}, {"channels": "A", "model_id": "01234567", "n_words": 2},
                    mode="LA", arithmetic=1)
    f = C.read(data)
    assert f.planes[0].data == bytes(5) and f.planes[1].n_words == 2
    fails(frame(header_span_bytes(data), bytes(5 + 7)), "^file is truncated or has trailing data \\(its length leaves a part")
    fails(frame(header_span_bytes(data), bytes(4)), "^file is truncated$")


def header_span_bytes(data: bytes) -> bytes:
    start, end = header_span(data)
    return data[start:end]


def test_write_refuses_planes_of_other_methods_with_a_models_fields():
    plane = Plane.coded("L", "stored", bytes(8))
    f = SnailFile(4, 2, "L", (plane,), 0, arithmetic=None)
    assert C.read(C.write(f)) == f
    for change, match in [
        (dict(model_id="01234567"), "plane 1 is coded stored, not by the model, so it has no model_id"),
        (dict(model_name="m"), "so it has no model_name"),
        (dict(tile=(8, 8)), "so it has no tile"),
        (dict(context=(0, 0)), "so it has no context"),
        (dict(band=3), "so it has no band"),
        (dict(calibration=((0.5,), (0.5,), ())), "so it has no calibration"),
        (dict(method="jpeg"), "plane 1 method 'jpeg' is not one of model, stored, deflate, bilevel"),
        (dict(words=np.zeros(1, np.uint32)), "bytes data .* or words .*, not both"),
        (dict(data=bytearray(8)), "bytes data"),
        (dict(data=bytes(9)), "plane 1 is stored in 9 bytes"),
    ]:
        with pytest.raises(ValueError, match=match):
            C.write(dataclasses.replace(f, planes=(dataclasses.replace(plane, **change),)))
    with pytest.raises(ValueError, match="arithmetic must be None where no plane is coded by the model, not 1"):
        C.write(dataclasses.replace(f, arithmetic=1))
    with pytest.raises(ValueError, match="arithmetic must be an integer"):
        C.write(dataclasses.replace(common_file(), arithmetic=None))
    with pytest.raises(ValueError, match="not both"):
        C.write(dataclasses.replace(common_file(), planes=(dataclasses.replace(common_file().planes[0], data=b"x"),)))


def test_equality_and_words_views():
    f = small_file()
    assert f == small_file()
    other = small_file(planes=(f.planes[0], dataclasses.replace(f.planes[1], words=np.array([5, 7], np.uint32))))
    assert f != other
    assert f != small_file(arithmetic=2)
    assert f.planes[0] != dataclasses.replace(f.planes[0], model_name=None)
    h = C.read_header(VALID)
    assert h == f and not h.planes[0].words.flags.writeable  # a view, not loaded
    assert C.read(VALID).planes[0].words.flags.writeable  # a private copy
    assert C.read(VALID).planes[1].words.flags.aligned


def test_numpy_scalars_and_lists_are_accepted_by_write():
    f = small_file(width=np.int64(3), pixel_crc32=np.uint32(0xDEADBEEF), arithmetic=np.uint8(3),
                   extras={"constant_alpha": np.uint8(9)}, planes=(small_file().planes[0],))
    g = C.read(C.write(f))
    assert g.width == 3 and type(g.width) is int and g.extras == {"constant_alpha": 9} and g.arithmetic == 3
    p = Plane("L", "000000ab", [1, 2, 3], "m", [4, 5], [1, 0], calibration=[[0.5], [0.0]])
    assert p.tile == (4, 5) and p.context == (1, 0) and p.words.dtype == np.uint32
    assert p.calibration == ((0.5,), (0.0,), ())  # (scale, shift): no feature gain
    rgb = small_file(mode="RGB", planes=(small_file().planes[0],), extras={"transparency": (1, np.uint16(2), 3)})
    assert C.read(C.write(rgb)).extras == {"transparency": [1, 2, 3]}


@pytest.mark.parametrize("counts", [(0, 0), (0, 3), (3, 0)])
def test_empty_streams_are_allowed(counts):
    f = small_file(planes=tuple(dataclasses.replace(p, words=np.arange(n, dtype=np.uint32))
                                for p, n in zip(small_file().planes, counts)))
    data = C.write(f)
    assert C.read(data) == f and [p.n_words for p in C.read(data).planes] == list(counts)


def test_the_module_does_not_import_torch():
    code = "import sys, snailcompress.codec.container; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------------------------
# the last plane's word count: implied by the file's length


def test_the_last_planes_word_count_is_implied_by_the_length():
    h = SMALL_HEADER  # plane 1 has 7 words (stored), plane 2 2 (implied)
    for total, last in ((7, 0), (9, 2), (12, 5)):
        f = C.read(forge(h, n_words=total))
        assert [p.n_words for p in f.planes] == [7, last]
    assert str(fails(forge(h, n_words=6))) == TRUNCATED  # fewer words than plane 1 alone has
    one_plane = header_dict(common_file())
    assert C.read(forge(one_plane, n_words=0)).planes[0].n_words == 0
    assert C.read(forge(one_plane, n_words=1000)).planes[0].n_words == 1000


def test_a_last_plane_longer_than_a_word_count_can_be_is_refused(monkeypatch):
    """2**32 words (16 GiB) are more than a plane may have: shown with a smaller limit."""
    data = forge(SMALL_HEADER, n_words=12)
    monkeypatch.setattr(C, "MAX_WORDS", 5)
    assert str(fails(data)).startswith("header is invalid: plane 1 length = 7 is out of range (0..5)")
    monkeypatch.setattr(C, "MAX_WORDS", 7)
    assert C.read(forge(SMALL_HEADER, n_words=14)).planes[1].n_words == 7
    message = "file is too long: its last plane would have 8 words, at most 7 are allowed"
    assert str(fails(forge(SMALL_HEADER, n_words=15))) == message


def test_a_length_that_leaves_part_of_a_word_is_refused():
    data = forge(SMALL_HEADER, n_words=9)
    for extra in (b"\0", b"\0\0", b"\0\0\0"):  # with a valid checksum: only the length is wrong
        start, end = header_span(data)
        bad = frame(data[start:end], bytes(36) + extra)
        assert str(fails(bad)) == PART_WORD
    assert str(fails(data + b"\0")) == PART_WORD  # the checksum does not match either: the length says why


def test_a_written_file_ends_exactly_after_its_checksum():
    f = small_file()
    start, end = header_span(VALID)
    assert len(VALID) == end + 4 * 9 + 4
    assert VALID[end : end + 4 * 7] == f.planes[0].words.astype("<u4").tobytes()
    assert VALID[-4:] == struct.pack("<I", zlib.crc32(VALID[4:-4]))


# --------------------------------------------------------------------------------------------
# specific errors


def test_empty_and_foreign_files():
    assert "empty" in str(fails(b""))
    fails(b"hello world, this is text", "^not a .snail file$")
    fails(b"\x89PNG\r\n\x1a\n" + b"\0" * 30, "^not a .snail file$")
    fails(b"\x09SNL" + VALID[4:], "first bytes were altered")  # the high bit lost in a 7-bit channel
    fails(b"\x89SNAIL\n\x05" + b"\0" * 30, "first bytes were altered")  # an old file copied in text mode


@pytest.mark.parametrize("version", [1, 2, 3, 4, 5])
def test_files_of_snailcompress_0_1_name_the_release_that_reads_them(version):
    for rest in (b"", b"\x40" + bytes(80), VALID[5:]):
        assert str(fails(OLD_MAGIC + bytes([version]) + rest)) == (
            f"this is a .snail file of format version {version}, written by snailcompress 0.1; this release reads "
            "version 6 only: decode it with snailcompress 0.1 (pip install 'snailcompress<0.2')"
        )


def test_old_layout_with_an_unknown_version():
    fails(OLD_MAGIC + b"\x06" + bytes(20), "layout with an unknown format version 6")
    fails(OLD_MAGIC + b"\x00" + bytes(20), "unknown format version 0")
    assert str(fails(OLD_MAGIC)) == TRUNCATED


@pytest.mark.parametrize("version", [7, 8, 255])
def test_newer_versions_say_so(version):
    e = str(fails(VALID[:4] + bytes([version]) + VALID[5:]))
    assert f"format version {version}, written by a newer snailcompress" in e and "version 6 only" in e


@pytest.mark.parametrize("version", [0, 1, 5])
def test_versions_that_never_had_this_layout(version):
    message = f"^unsupported .snail format version {version}; this release reads version 6 only$"
    fails(VALID[:4] + bytes([version]) + VALID[5:], message)


@pytest.mark.parametrize("n", range(1, len(VALID)))
def test_every_truncation(n):
    message = str(fails(VALID[:n]))
    assert "truncated" in message
    start, end = header_span(VALID)
    if n < end + 4 * 7 + 4:  # the header, plane 1's words (stored) and the checksum cannot be there
        assert message == TRUNCATED
    else:  # plane 2's words are implied by the length: a cut shows as a part word, or as a checksum mismatch
        assert message == (PART_WORD if (len(VALID) - n) % 4 else CRC_MISMATCH)


def test_trailing_garbage():
    assert str(fails(VALID + b"\0")) == PART_WORD
    assert str(fails(VALID + b"\0" * 4)) == CRC_MISMATCH
    assert str(fails(VALID + VALID)) == (CRC_MISMATCH if len(VALID) % 4 == 0 else PART_WORD)
    assert str(fails(VALID + VALID[-4:])) == CRC_MISMATCH


def test_one_checksum_covers_everything_after_the_magic():
    start, end = header_span(VALID)
    n_words_byte = start + 3 + 4 + 1 + 4  # width, height, mode, pixel_crc32, arithmetic, plane 1's model id
    assert VALID[n_words_byte] == 7
    for i in range(6, len(VALID)):  # header, payload and the checksum itself (4: the version, 5: the header length)
        for bit in (0, 7):
            bad = VALID[:i] + bytes([VALID[i] ^ (1 << bit)]) + VALID[i + 1 :]
            message = str(fails(bad))
            if i == n_words_byte:  # a flipped word count makes the length look wrong
                assert message in (CRC_MISMATCH, TRUNCATED)
            else:
                assert message == CRC_MISMATCH
            with pytest.raises(FormatError):
                C.read_header(bad)  # `info` shows no header that may be corrupt


def test_read_header_checks_the_checksum_too_and_returns_views():
    bad = bytearray(VALID)
    bad[-6] ^= 1  # inside the last stream
    assert str(fails(bytes(bad))) == CRC_MISMATCH
    with pytest.raises(FormatError, match="checksum mismatch"):
        C.read_header(bytes(bad))
    h = C.read_header(VALID)
    assert h == small_file() and not h.planes[1].words.flags.writeable
    assert C.read(bytearray(VALID)) == C.read(memoryview(VALID)) == small_file()


def test_header_length_field():
    fails(MAGIC + b"\x06" + varint(C.MAX_HEADER_BYTES + 1) + b"\0" * 40, "at most 65536")
    fails(MAGIC + b"\x06" + b"\x80\x80\x80\x01" + b"\0" * 40, "claims more than 65536")
    fails(MAGIC + b"\x06" + b"\x85\x00" + b"\0" * 40, "not minimally encoded")
    fails(MAGIC + b"\x06" + b"\x00" + b"\0\0\0\0", "empty")
    assert str(fails(MAGIC + b"\x06" + b"\x85")) == TRUNCATED
    assert str(fails(MAGIC + b"\x06" + b"\x20" + bytes(35))) == TRUNCATED  # 32 header bytes and a checksum: 36


def _assert_cheap(fn):
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 0.5
    assert peak < 1 << 20, peak


def test_huge_dimensions_refused_quickly_without_allocation():
    h = header_dict(small_file())
    h["width"] = h["height"] = 60000
    h["planes"][0]["n_words"] = 2**32 - 1
    data = forge(h, n_words=6)
    _assert_cheap(lambda: fails(data, "60000 x 60000 pixels is more than"))


def test_huge_word_counts_are_truncation_without_allocation():
    h = header_dict(small_file())
    h["planes"][0]["n_words"] = 2**32 - 1
    data = forge(h, n_words=6)
    _assert_cheap(lambda: fails(data, "^file is truncated$"))
    _assert_cheap(lambda: pytest.raises(FormatError, C.read_header, data))
    bad = bytearray(data)
    bad[-1] ^= 1  # with a checksum mismatch too, the length says it is truncated
    _assert_cheap(lambda: fails(bytes(bad), "^file is truncated$"))


def _mutated(**changes) -> bytes:
    h = header_dict(small_file())
    for path, value in changes.items():
        target = h
        keys = path.split("__")
        for k in keys[:-1]:
            target = target[int(k)] if isinstance(target, list) else target[k]
        target[keys[-1]] = value
    return forge(h)


def raw_fields(*chunks: bytes) -> Raw:
    return Raw(b"".join(chunks))


_NAME1 = tagged(T_NAME, b"snail-rgb-small", 0)
_TILE1 = tagged(T_TILE, b"\x10\x10", 0)


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(width=0), "width = 0 is out of range"),
        (dict(width=65536), "width = 65536 is out of range"),
        (dict(width=Raw(b"\x83\x00")), "width is not minimally encoded"),
        (dict(width=Raw(b"\xff\xff\xff\xff\x7f")), "width = 34359738367 is out of range"),
        (dict(width=Raw(b"\xff" * 6)), "width is longer than 5 bytes"),
        (dict(height=100000), "height = 100000 is out of range"),
        (dict(mode=Raw(b"\x07")), "mode code 7 is not one of 0..6"),
        (dict(mode=Raw(b"\xff")), "mode code 15 is not one of"),  # bits 4-7 are the planes' methods
        (dict(mode=Raw(b"\x08")), "mode code 8 is not one of"),  # L has no alpha to be constant
        (dict(mode=Raw(b"\x0b")), "mode code 11"),  # nor RGB
        (dict(mode=Raw(b"\x0f")), "mode code 15"),
        (dict(mode="PA"), "needs extras.palette"),
        (dict(arithmetic=Raw(b"\x00")), "arithmetic = 0 is out of range \\(1..255\\)"),
        (dict(planes=Raw(bytes.fromhex("01234567"))), "it ends in the middle of plane 1 length"),
        (dict(planes=Raw(bytes.fromhex("0123"))), "it ends in the middle of plane 1 model_id"),
        (dict(planes__0__n_words=2**32), "plane 1 length = 4294967296 is out of range"),
        (dict(planes__0__n_words=Raw(b"\x87\x00")), "plane 1 length is not minimally encoded"),
        (dict(planes__0__model_name="evil\x1b[2J"), "model_name contains control characters"),
        (dict(planes__0__model_name=Raw(b"\xc2\x85")), "control characters"),  # U+0085, a C1 control
        (dict(planes__0__model_name=""), "plane 1 model_name must have 1 to 100 characters, not 0"),
        (dict(planes__0__model_name="x" * 101), "1 to 100"),
        (dict(planes__1__model_name=Raw(b"\xff\xfe")), "plane 2 model_name is not valid UTF-8"),
        (dict(planes__0__model_name=Raw(b"\xed\xa0\x80")), "not valid UTF-8"),  # a surrogate
        (dict(planes__0__model_name=Raw(b"\xc0\xaf")), "not valid UTF-8"),  # an overlong "/"
        (dict(planes__0__tile=(0, 4)), "plane 1 tile height = 0 is out of range"),
        (dict(planes__1__tile=(4, 65536)), "plane 2 tile width = 65536"),
        (dict(planes__0__tile=Raw(b"\x10")), "the tile field of plane 1 ends in the middle of plane 1 tile width"),
        (dict(planes__0__tile=Raw(b"\x10\x10\x00")), "the tile field of plane 1 has 1 unexpected byte at its end"),
        (dict(planes__0__tile=Raw(b"\x10\x90\x00")), "plane 1 tile width is not minimally encoded"),
        (dict(planes__0__context=(70000, 0)), "plane 1 context above = 70000 is out of range"),
        (dict(planes__0__context=(0, 70000)), "context left = 70000"),
        (dict(planes__0__band=0), "plane 1 band = 0 is out of range"),
        (dict(planes__0__band=70000), "plane 1 band = 70000 is out of range"),
        (dict(planes__0__context=(0, 3), planes__0__band=2), "plane 1 band must be 1 where there is no context above"),
        (dict(planes__0__calibration=((float("nan"),), (0.0,), ())), "binary16"),
        (dict(planes__0__calibration=((float("inf"),), (0.0,), ())), "binary16"),
        (dict(planes__0__calibration=((0.0,), (-0.0,), ())), "binary16"),  # -0 and +0: two encodings of one value
        (dict(planes__0__calibration=((0.0,), (0.0,), (-0.0,))), "feature gain values must be finite binary16"),
        (dict(planes__0__calibration=Raw(b"\x00\x00")), "plane 1 calibration has 0 outputs, not 1..1024"),
        (dict(planes__0__calibration=Raw(varint(1025))), "plane 1 calibration has 1025 outputs, not 1..1024"),
        (dict(planes__0__calibration=Raw(b"\x01\x00\x38\x00\x38" + varint(1025))), "1025 features, not 0..1024"),
        (dict(planes__0__calibration=Raw(b"\x01\x00\x38\x00\x38")), "ends in the middle of plane 1 calibration feature count"),
        (dict(planes__0__calibration=Raw(b"\x02\x00\x38\x00\x38\x00")), "ends in the middle of plane 1 calibration scales"),
        (dict(planes__0__calibration=Raw(b"\x01\x00\x38\x00\x38\x01\x00")), "middle of plane 1 calibration feature gains"),
        (dict(extras={"constant_alpha": 7}, constant=False), "constant_alpha field is given but mode code 4 \\(RGBA\\) codes"),
        (dict(extras={"palette": "00" * 3, "palette_mode": "RGB"}), "palette is not allowed for mode RGBA"),
        (dict(extras={"transparency": 3}), "transparency is not allowed for mode RGBA"),
        (dict(fields=raw_fields(_NAME1, _NAME1)), "the model_name field of plane 1 appears twice"),
        (dict(fields=raw_fields(_TILE1, _NAME1)), "the model_name field of plane 1 is out of order"),
        (dict(fields=raw_fields(tagged(T_TILE, b"\x10\x10", 1), _TILE1)), "the tile field of plane 1 is out of order"),
        (dict(fields=raw_fields(tagged(T_PALETTE, b"\x03\x00"), _TILE1)), "the tile field of plane 1 is out of order"),
        (dict(fields=raw_fields(tagged(T_TILE, b"\x10\x10", 2))), "the tile field is for plane 3, and there are only 2"),
        (dict(fields=raw_fields(bytes([T_TILE, 0]))), "the tile field ends in the middle of its plane index"),
        (dict(fields=raw_fields(bytes([T_TILE, 9, 0]))), "it ends in the middle of the tile field"),
        (dict(fields=raw_fields(bytes([T_TILE]))), "it ends in the middle of the length of the tile field"),
        (dict(fields=raw_fields(bytes([T_TILE, 0x83, 0]))), "the length of the tile field is not minimally encoded"),
    ],
)
def test_invalid_headers(changes, match):
    e = fails(_mutated(**changes))
    assert str(e).startswith("header is invalid: ")
    assert re.search(match, str(e)), str(e)


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(planes__0__tile=(32, 32)), "plane 1 tile \\(32, 32\\) is the default, so its field must be left out"),
        (dict(planes__1__context=(2, 2)), "plane 2 context \\(2, 2\\) is the default"),
        (dict(planes__0__context=(0, 0), planes__0__band=1), "plane 1 band 1 is the default"),  # no context above
        (dict(planes__0__band=1), "plane 1 band 1 is the default"),  # 16 + 2 rows span the 2-row image
        (dict(planes__0__calibration=Raw(b"")), "the calibration field of plane 1 ends in the middle"),  # no "none" value
    ],
)
def test_fields_holding_their_default_are_refused(changes, match):
    e = str(fails(_mutated(**changes)))
    assert e.startswith("header is invalid: ") and re.search(match, e), e


@pytest.mark.parametrize("tag", [0, 10, 11, 128, 255])
@pytest.mark.parametrize("where", ["alone", "after", "before"])
def test_unknown_fields_are_from_a_newer_release(tag, where):
    unknown = bytes([tag]) + varint(2) + b"\x00\x01"
    chunks = {"alone": [unknown], "after": [_NAME1, _TILE1, unknown], "before": [unknown, _NAME1]}[where]
    e = str(fails(_mutated(fields=raw_fields(*chunks))))
    assert e == f"this file was written by a newer snailcompress (unknown header field {tag}): upgrade snailcompress to decode it"


def test_constant_alpha_and_the_mode_flag_go_together():
    h = header_dict(small_file(planes=small_file().planes[:1], extras={"constant_alpha": 200}))
    data = forge(h)
    assert data[header_span(data)[0] + 2] == 4 + 8 and C.read(data).extras == {"constant_alpha": 200}
    del h["extras"]["constant_alpha"]
    fails(forge(dict(h, constant=True)), "mode code 12 \\(RGBA with a constant alpha\\) needs the constant_alpha field")


def test_band_default_rule():
    f = common_file()
    band = default_band(512, 768, (32, 32), (2, 2))
    assert band == 4 and f.planes[0].band == band  # a SnailFile resolves band=None
    assert C.read(C.write(f)).planes[0].band == band
    explicit = dataclasses.replace(f, planes=(dataclasses.replace(f.planes[0], band=band),))
    assert C.write(explicit) == C.write(f)  # the default is not written
    other = dataclasses.replace(f, planes=(dataclasses.replace(f.planes[0], band=7),))
    data = C.write(other)
    assert len(data) == len(C.write(f)) + 4 and C.read(data).planes[0].band == 7
    assert encode_header(header_dict(other)).endswith(bytes([T_BAND, 2, 0, 7]))
    # the default depends on the image's size, the tile and the context
    small = SnailFile(40, 40, "L", (Plane("L", "00000000", [], tile=(16, 16), context=(4, 0)),), 0)
    assert small.planes[0].band == default_band(40, 40, (16, 16), (4, 0)) == 2
    none = SnailFile(40, 40, "L", (Plane("L", "00000000", [], context=(0, 5)),), 0)
    assert none.planes[0].band == 1
    with pytest.raises(ValueError, match="band must be 1 where there is no context above"):
        C.write(SnailFile(40, 40, "L", (Plane("L", "00000000", [], context=(0, 5), band=2),), 0))
    huge = SnailFile(4000, 4000, "L", (Plane("L", "00000000", [], tile=(1, 1)),), 0)  # 16 M windows / 96 per band
    assert huge.planes[0].band == default_band(4000, 4000, (1, 1), (2, 2)) > 65535
    plain = SnailFile(4000, 4000, "L", (Plane("L", "00000000", []),), 0)
    assert C.read(C.write(huge)) == huge and C.overhead(huge) == C.overhead(plain) + 5  # the tile field only
    with pytest.raises(ValueError, match="band = 65536 is out of range"):
        C.write(SnailFile(4000, 4000, "L", (Plane("L", "00000000", [], tile=(1, 1), band=65536),), 0))
    tall = SnailFile(40, 40, "L", (Plane("L", "00000000", [], band=9),), 0)  # the default: 2
    assert default_band(40, 40, (32, 32), (2, 2)) == 2
    assert C.read(C.write(tall)).planes[0].band == 9


def test_calibration_round_trip_and_size():
    calibration = ((0.5, -0.25, 0.0), (1.0, 0.0009765625, -65504.0), (0.125, -0.5))
    f = small_file(planes=(dataclasses.replace(small_file().planes[0], calibration=calibration), small_file().planes[1]))
    data = C.write(f)
    assert C.read(data) == f and C.read(data).planes[0].calibration == calibration
    assert len(data) - len(VALID) == 1 + 1 + 1 + 1 + 2 * 3 * 2 + 1 + 2 * 2  # tag, length, plane, K, numbers, F, gains
    no_gain = dataclasses.replace(f.planes[0], calibration=calibration[:2])
    assert no_gain.calibration == (*calibration[:2], ())
    assert no_gain == dataclasses.replace(f.planes[0], calibration=(*calibration[:2], ()))
    assert f.planes[0] != no_gain


def test_writing_an_invalid_calibration_is_refused():
    for bad in [((0.1,), (0.0,), ()), ((0.5,), (0.0, 0.0), ()), ((), (), ()), ((1,), (0.0,), ()), ((0.5, 0.5),),
                ((70000.0,), (0.0,), ()), (tuple([0.0] * 1025), tuple([0.0] * 1025), ()), ((0.5,), (0.5,), (0.1,)),
                ((0.5,), (0.5,), tuple([0.0] * 1025)), ((0.5,), (0.5,), (float("inf"),))]:
        with pytest.raises(ValueError, match="calibration"):
            C.write(small_file(planes=(dataclasses.replace(small_file().planes[0], calibration=bad), small_file().planes[1])))


_PAL = tagged(T_PALETTE, b"\x03\x01\xaa\xbb\xcc")  # one RGB entry


@pytest.mark.parametrize(
    "mode, extras, match",
    [
        ("P", {}, "needs extras.palette"),
        ("P", Raw(tagged(T_PALETTE, b"\x05\x00")), "palette entry size 5 is not 3"),
        ("P", Raw(tagged(T_PALETTE, b"\x03" + varint(257) + bytes(771))), "palette has 257 entries"),
        ("P", Raw(tagged(T_PALETTE, b"\x03\x02\0\0\0")), "the palette field ends in the middle of the palette"),
        ("P", Raw(tagged(T_PALETTE, b"\x03\x01\0\0\0\0")), "the palette field has 1 unexpected byte at its end"),
        ("P", {"palette": "000000", "palette_mode": "RGB", "transparency": 256}, "transparency = 256 is out of range"),
        ("P", {"palette": "000000", "palette_mode": "RGB", "transparency": ""}, "must not be empty"),
        ("P", Raw(_PAL + tagged(T_ALPHA_TABLE, varint(257) + bytes(257))), "transparency has 257 entries"),
        ("P", Raw(_PAL + tagged(T_TRANSPARENCY, b"\x00") + tagged(T_ALPHA_TABLE, b"\x01\x00")), "transparency is given twice"),
        ("P", Raw(_PAL + tagged(T_TRANSPARENCY, b"\x00\x00")), "the transparency field has 1 unexpected byte"),
        ("L", {"transparency": 65536}, "out of range"),
        ("L", {"transparency": "00"}, "per-index alpha is not allowed for mode L"),
        ("L", Raw(tagged(T_ALPHA, b"\x01")), "constant_alpha field is given but mode code 0 \\(L\\) codes its alpha"),
        ("L", Raw(_PAL), "palette is not allowed for mode L"),
        ("RGB", {"transparency": [1, 2, 70000]}, "transparency b = 70000 is out of range"),
        ("RGB", Raw(tagged(T_TRANSPARENCY, b"\x01\x02")), "ends in the middle of transparency b"),
        ("LA", {"transparency": 1}, "transparency is not allowed for mode LA"),
    ],
)
def test_invalid_extras(mode, extras, match):
    h = header_dict(small_file())
    h["mode"] = mode
    h["planes"] = [dict(h["planes"][0], channels=_PIECES[mode][0])] + ([dict(h["planes"][1])] if len(_PIECES[mode]) > 1 else [])
    h["extras"] = extras
    e = fails(forge(h))
    assert re.search(match, str(e)), str(e)


def test_valid_extras_of_every_kind():
    base = header_dict(small_file())
    for mode, extras in [
        ("P", {"palette": "aabbcc", "palette_mode": "RGB", "transparency": "00ff"}),
        ("P", {"palette": "", "palette_mode": "RGBA", "transparency": 0}),
        ("PA", {"palette": "aabbccdd", "palette_mode": "RGBA", "constant_alpha": 7, "transparency": 255}),
        ("1", {"transparency": 255}),
        ("L", {"transparency": 65535}),
        ("RGB", {"transparency": [0, 65535, 300]}),
        ("LA", {"constant_alpha": 0}),
    ]:
        h = dict(base, mode=mode, extras=extras)
        h["planes"] = [dict(base["planes"][0], channels=_PIECES[mode][0])]
        data = forge(h)
        f = C.read(data)
        assert f.extras == extras and C.write(f) == data and [p.channels for p in f.planes] == _PIECES[mode][:1]


def test_write_refuses_invalid_files():
    rgb, alpha = small_file().planes
    with pytest.raises(ValueError, match="planes 'RGB' \\+ 'A' are not those of mode RGB: 'RGB'"):
        C.write(small_file(mode="RGB"))
    with pytest.raises(ValueError, match="are not those of mode RGBA, its alpha constant: 'RGB'"):
        C.write(small_file(extras={"constant_alpha": 255}))
    with pytest.raises(ValueError, match="are not those of mode RGBA"):
        C.write(small_file(planes=(alpha, rgb)))
    with pytest.raises(ValueError, match="uint32"):
        C.write(small_file(planes=(dataclasses.replace(rgb, words=np.zeros(3, np.int64)), alpha)))
    with pytest.raises(ValueError, match="uint32"):
        C.write(small_file(planes=(dataclasses.replace(rgb, words=np.zeros((2, 2), np.uint32)), alpha)))
    with pytest.raises(ValueError, match="out of range"):
        C.write(small_file(width=70000))
    with pytest.raises(ValueError, match="not a Plane"):
        C.write(small_file(planes=("RGB",)))
    with pytest.raises(ValueError, match="channels 'RG' is not one of L, A, RGB, P"):
        C.write(small_file(planes=(dataclasses.replace(rgb, channels="RG"), alpha)))
    with pytest.raises(ValueError, match="must be an integer, not a boolean"):
        C.write(small_file(width=True))
    with pytest.raises(ValueError, match="unknown field"):
        C.write(small_file(extras={"png_info": {}}))
    with pytest.raises(ValueError, match="arithmetic = 0 is out of range"):
        C.write(small_file(arithmetic=0))
    with pytest.raises(ValueError, match="arithmetic = 256 is out of range"):
        C.write(small_file(arithmetic=256))
    for model_id in ("0123456", "0123456789", "0123456G", "ABCDEF01", 12345678):
        with pytest.raises(ValueError, match="model_id"):
            C.write(small_file(planes=(dataclasses.replace(rgb, model_id=model_id), alpha)))
    with pytest.raises(ValueError, match="model_name must be a string"):
        C.write(small_file(planes=(dataclasses.replace(rgb, model_name=3), alpha)))
    with pytest.raises(ValueError, match="1 or 2 planes, not 0"):
        C.write(small_file(planes=()))
    with pytest.raises(TypeError):
        C.write({"width": 1})


def test_describe():
    f = small_file(mode="P", planes=(Plane("P", "ab12cd34", np.zeros(10, np.uint32), "snail-p", (16, 8)),),
                   extras={"palette": "00" * 48, "palette_mode": "RGB", "transparency": 3}, arithmetic=3)
    data = C.write(f)
    text_ = C.describe(C.read_header(data))
    assert "format version 6" in text_ and "3 x 2 pixels, mode P" in text_
    assert "ab12cd34 (snail-p)" in text_ and "tiles 16x8, context 2 above, 2 left, bands of 1 rows of windows" in text_
    assert "integer arithmetic version 3" in text_
    assert "16 entries" in text_ and "index 3" in text_ and "deadbeef" in text_
    overhead = len(data) - 40
    assert (f"size:         {len(data)} bytes, {8 * len(data) / 6:.4f} bits per subpixel "
            f"({8 * 40 / 6:.4f} in the coded streams, {overhead} bytes of header and checksum)") in text_
    assert f"stream: {32 * 10 / 6:.4f} bits per subpixel" in text_ and "not calibrated" in text_
    assert "env" not in text_ and "threads" not in text_
    rgb_only = small_file(extras={"constant_alpha": 255}, planes=small_file().planes[:1])
    text_ = C.describe(rgb_only)
    assert "alpha constant 255 (not coded)" in text_
    # the file over 3 x 2 pixels of 4 channels (the summary line's figure), its stream over the 3 it codes
    assert f"{8 * C.file_size(rgb_only) / 24:.4f} bits per subpixel" in text_
    assert f"stream: {32 * rgb_only.planes[0].n_words / 18:.4f} bits per subpixel" in text_
    text_ = C.describe(small_file(mode="RGB", planes=small_file().planes[:1], extras={"transparency": [1, 2, 3]}))
    assert "colour (1, 2, 3)" in text_
    calibrated = dataclasses.replace(common_file().planes[0], calibration=((0.5,) * 3, (0.5,) * 3, (0.5,) * 2),
                                     context=(4, 1), band=None)
    text_ = C.describe(dataclasses.replace(common_file(), planes=(calibrated,)))
    assert "calibrated (3 outputs, 2 features)" in text_ and "context 4 above, 1 left" in text_
    assert f"bands of {default_band(512, 768, (32, 32), (4, 1))} rows of windows" in text_
    assert "model ff7d3a5d\n" in C.describe(common_file())  # no name stored
    # a model's name is asked for only where the file stores none
    asked = []
    assert "model ff7d3a5d (shipped m)\n" in C.describe(common_file(), lambda i: asked.append(i) or "m")
    assert asked == ["ff7d3a5d"]
    C.describe(f, asked.append)  # its plane names its model
    C.describe(SnailFile(3, 2, "RGB", (Plane.coded("RGB", "deflate", bytes(9)),), 5, arithmetic=None), asked.append)
    assert asked == ["ff7d3a5d"]
    assert len(C.describe(common_file()).splitlines()) >= 6
    shared = SnailFile(3, 2, "RGBA", (Plane.coded("RGB", "deflate", bytes(12)), Plane.coded("A", "deflate", b"")), 5,
                       arithmetic=None)
    assert shared.shared_deflate and not small_file().shared_deflate
    text_ = C.describe(shared)  # one stream of 4 channels: 96 bits over 24 subpixels, none for plane 2 alone
    assert "plane 1:      RGB and plane 2's A (one stream), deflate" in text_ and "stream: 4.0000 bits" in text_
    assert "plane 2:      A, in plane 1's deflate stream" in text_ and text_.count("stream: ") == 1


# --------------------------------------------------------------------------------------------
# fuzzing: never anything but FormatError, never a wrong SnailFile


def _read_or_formaterror(data: bytes):
    try:
        return C.read(data)
    except FormatError as e:
        assert str(e) and "\n" not in str(e)
        return None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
@example(b"")
@example(MAGIC)
@example(MAGIC + b"\x06")
@example(OLD_MAGIC + b"\x05")
def test_random_bytes(data):
    assert _read_or_formaterror(data) is None
    assert _read_or_formaterror(MAGIC + b"\x06" + data) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=120), st.integers(0, 8))
def test_random_headers_with_valid_checksums(header, n_words):
    """Arbitrary header bytes that pass the CRC: refused, or accepted only if canonical."""
    data = forge(header, n_words=n_words)
    got = _read_or_formaterror(data)
    if got is not None:
        assert C.write(got) == data


@st.composite
def mutations(draw):
    f = draw(snail_files())
    data = bytearray(C.write(f))
    kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "append", "several"]))
    n = len(data)
    if kind == "flip":
        i = draw(st.integers(0, n - 1))
        data[i] ^= 1 << draw(st.integers(0, 7))
    elif kind == "set":
        i = draw(st.integers(0, n - 1))
        data[i] = draw(st.integers(0, 255).filter(lambda b: b != data[i]))
    elif kind == "insert":
        i = draw(st.integers(0, n))
        data[i:i] = draw(st.binary(min_size=1, max_size=8))
    elif kind == "delete":
        i = draw(st.integers(0, n - 1))
        data[i : i + draw(st.integers(1, 8))] = b""
    elif kind == "truncate":
        del data[draw(st.integers(0, n - 1)) :]
    elif kind == "append":
        data += draw(st.binary(min_size=1, max_size=8))
    else:
        for _ in range(draw(st.integers(2, 6))):
            i = draw(st.integers(0, n - 1))
            data[i] = draw(st.integers(0, 255))
    return f, bytes(data)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations())
def test_mutated_files(case):
    f, data = case
    got = _read_or_formaterror(data)
    if data == C.write(f):
        assert got == f
    else:
        assert got is None  # the CRC catches every change of up to 32 bits, and all but 2**-32 of the others
    try:
        h = C.read_header(data)
    except FormatError:
        return
    assert isinstance(h, SnailFile)


_FIELD_KEYS = ["width", "height", "mode", "pixel_crc32", "arithmetic", "planes", "extras", "tail"]
_PLANE_KEYS = ["model_id", "n_words", "model_name", "tile", "context", "band", "calibration"]


@st.composite
def forged_headers(draw):
    """Valid headers with one field's encoding replaced by arbitrary bytes (checksum correct)."""
    h = header_dict(draw(snail_files()))
    raw = Raw(draw(st.one_of(st.binary(max_size=12), st.sampled_from([b"\x00", b"\x01", b"\x80\x00", b"\xff" * 5]))))
    if draw(st.booleans()):
        plane = h["planes"][draw(st.integers(0, len(h["planes"]) - 1))]
        plane[draw(st.sampled_from(_PLANE_KEYS))] = raw
    else:
        h[draw(st.sampled_from(_FIELD_KEYS))] = raw
    return h


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(forged_headers(), st.integers(0, 40))
def test_forged_headers(h, n_words):
    data = forge(h, n_words=n_words)
    got = _read_or_formaterror(data)
    if got is not None:  # the replacement happened to be valid: it must then be the canonical encoding
        assert C.write(got) == data


# --------------------------------------------------------------------------------------------
# atomic_write


def _entries(d):
    return sorted(os.listdir(d))


def test_atomic_write_creates_and_refuses_overwrite(tmp_path):
    target = tmp_path / "out.snail"
    atomic_write(target, b"first", overwrite=False)
    assert target.read_bytes() == b"first"
    with pytest.raises(OutputExistsError, match=r"out\.snail already exists \(use -f to overwrite\)"):
        atomic_write(target, b"second", overwrite=False)
    assert target.read_bytes() == b"first"
    assert isinstance(OutputExistsError("x"), (SnailError, FileExistsError))
    atomic_write(str(target), b"second", overwrite=True)
    assert target.read_bytes() == b"second"
    assert _entries(tmp_path) == ["out.snail"]


def test_atomic_write_missing_directory(tmp_path):
    with pytest.raises(SnailError, match="does not exist"):
        atomic_write(tmp_path / "nope" / "x.snail", b"data", overwrite=False)
    with pytest.raises(SnailError, match="is a directory"):
        atomic_write(tmp_path, b"data", overwrite=True)
    assert not (tmp_path / "nope").exists()
    atomic_write(tmp_path / "nope" / "deeper" / "x.snail", b"data", make_directories=True)  # encode -o DIR/
    assert (tmp_path / "nope" / "deeper" / "x.snail").read_bytes() == b"data"
    assert _entries(tmp_path / "nope" / "deeper") == ["x.snail"]
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(SnailError, match="file"):
        atomic_write(tmp_path / "file" / "x.snail", b"data", make_directories=True)


def test_atomic_write_unwritable_directory(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    try:
        if os.access(d, os.W_OK):
            pytest.skip("running as root: chmod does not make a directory unwritable")
        with pytest.raises(SnailError, match="permission denied") as ei:
            atomic_write(d / "x.snail", b"data", overwrite=False)
        assert "\n" not in str(ei.value)
        assert _entries(d) == []
    finally:
        d.chmod(0o755)


def test_atomic_write_permission_error_simulated(tmp_path, monkeypatch):
    real_open = os.open

    def deny(path, *a, **k):
        if str(path).startswith(str(tmp_path)):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, *a, **k)

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(SnailError, match="permission denied"):
        atomic_write(tmp_path / "x.snail", b"data", overwrite=False)
    assert _entries(tmp_path) == []


def test_an_output_directory_that_cannot_be_made_or_written_is_refused_and_nothing_stays(tmp_path, monkeypatch):
    """check_directory (train's and bench's --out, before their work): a directory that can be made and
    written is left as it was (what it made, removed); one under a file, one whose parent cannot be
    made, or one where no file can be written is one sentence."""
    check_directory(tmp_path / "new" / "deeper")
    check_directory(tmp_path)
    assert _entries(tmp_path) == []
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(SnailError, match="is a file"):
        check_directory(tmp_path / "f" / "out")
    with pytest.raises(SnailError, match="cannot write into /proc/nowhere/out"):
        check_directory("/proc/nowhere/out")
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, *a, **k: (_ for _ in ()).throw(PermissionError(13, "Permission denied"))
                        if str(path).startswith(str(tmp_path)) else real_open(path, *a, **k))
    with pytest.raises(SnailError, match="cannot write into .*: Permission denied"):
        check_directory(tmp_path / "out")
    assert _entries(tmp_path) == ["f"]


def test_a_new_output_directory_probed_by_two_processes_at_once_passes_both(tmp_path, monkeypatch):
    """torchrun's ranks (bench's --out) and commands run side by side each probe the same new directory:
    one that another process removes between making it and probing it is made again, not refused."""
    from snailcompress import fileio

    real = fileio._new_temporary
    removed = []

    def another_process_removes_it_first(directory, name):
        if not removed:
            removed.append(directory)
            os.rmdir(directory)  # the other process's clean-up, just after this one's mkdir
        return real(directory, name)

    monkeypatch.setattr(fileio, "_new_temporary", another_process_removes_it_first)
    check_directory(tmp_path / "out")
    assert removed == [str(tmp_path / "out")] and _entries(tmp_path) == []


@pytest.mark.parametrize("overwrite", [False, True])
def test_atomic_write_failure_leaves_no_temp_file(tmp_path, monkeypatch, overwrite):
    (tmp_path / "keep.snail").write_bytes(b"old")

    def broken(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken)
    target = tmp_path / ("keep.snail" if overwrite else "new.snail")
    with pytest.raises(SnailError, match="no space left"):
        atomic_write(target, b"x" * 100000, overwrite=overwrite)
    assert _entries(tmp_path) == ["keep.snail"]
    assert (tmp_path / "keep.snail").read_bytes() == b"old"


def test_atomic_write_without_hard_links(tmp_path, monkeypatch):
    def no_link(*a, **k):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    atomic_write(tmp_path / "a", b"1", overwrite=False)
    assert (tmp_path / "a").read_bytes() == b"1"
    with pytest.raises(OutputExistsError):
        atomic_write(tmp_path / "a", b"2", overwrite=False)
    assert _entries(tmp_path) == ["a"]


def test_atomic_write_race_is_not_clobbered(tmp_path, monkeypatch):
    """The target appears between the early check and the final move: still not overwritten."""
    target = tmp_path / "race.snail"
    real_fsync = os.fsync

    def fsync_then_race(fd):
        real_fsync(fd)
        target.write_bytes(b"theirs")

    monkeypatch.setattr(os, "fsync", fsync_then_race)
    with pytest.raises(OutputExistsError):
        atomic_write(target, b"ours", overwrite=False)
    assert target.read_bytes() == b"theirs"
    assert _entries(tmp_path) == ["race.snail"]


def test_atomic_path_writes_whole_files_others_may_read(tmp_path):
    """For writers that want a name (figures, reports, caches, model files): the extension stays last
    (matplotlib picks the format from it), the file is made like any new file (0o666 less the umask,
    not mkstemp's private 0o600), the directory is created, and an existing file is replaced."""
    target = tmp_path / "new" / "curve.png"
    old_umask = os.umask(0o022)
    try:
        with atomic_path(target) as tmp:
            assert tmp.parent == target.parent and tmp.name.startswith(".curve.") and tmp.suffix == ".png"
            assert not target.exists()
            tmp.write_bytes(b"first")
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b"first" and target.stat().st_mode & 0o777 == 0o644
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"second")
    assert target.read_bytes() == b"second" and _entries(target.parent) == ["curve.png"]


def test_atomic_path_leaves_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "summary.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="writer failed"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer failed")
    assert target.read_text() == "old" and _entries(tmp_path) == ["summary.csv"]


