"""The .snail container (snailcompress.codec.container) and atomic_write/atomic_path (snailcompress.fileio)."""

from __future__ import annotations

import dataclasses

import os
import re
import struct
import time
import tracemalloc
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from snailcompress.codec import container as C
from snailcompress.codec.container import MAGIC, Plane, SnailFile
from snailcompress.errors import FormatError, SnailError
from snailcompress.fileio import OutputExistsError, atomic_path, atomic_write

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------------------------
# an independent writer of the byte layout in container's docstring, that also writes invalid files


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


def text(s) -> bytes:
    if isinstance(s, Raw):
        return s
    if s and re.fullmatch(r"(?:[0-9a-f]{2})+", s):
        return varint(len(s) + 1) + bytes.fromhex(s)  # n = 2 * (len(s) / 2) + 1
    raw = s.encode("utf-8", "surrogatepass")
    return varint(2 * len(raw)) + raw


MODE_CODES = {"L": 0, "1": 1, "LA": 2, "RGB": 3, "RGBA": 4, "P": 5, "PA": 6}
CHANNEL_CODES = {"L": 0, "A": 1, "RGB": 2, "P": 3}
KEY_CODES = {"env": 1, "threads": 2}


def _field(value, encode):
    return value if isinstance(value, Raw) else encode(value)


def encode_extras(mode: str, extras) -> bytes:
    if isinstance(extras, Raw):
        return extras
    fields = []
    if "constant_alpha" in extras:
        fields.append(bytes([1, extras["constant_alpha"]]))
    if "palette" in extras:
        pal = bytes.fromhex(extras["palette"])
        bpe = len(extras["palette_mode"])
        fields.append(bytes([2, bpe]) + varint(len(pal) // bpe) + pal)
    if "transparency" in extras:
        t = extras["transparency"]
        if isinstance(t, str):
            fields.append(bytes([4]) + varint(len(t) // 2) + bytes.fromhex(t))
        else:
            fields.append(bytes([3]) + b"".join(varint(v) for v in (t if isinstance(t, list) else [t])))
    return bytes([len(fields)]) + b"".join(fields)


def encode_header(h: dict) -> bytes:
    """Header bytes for a header dict (values as in the API; any value may be a Raw override)."""
    out = _field(h["width"], varint) + _field(h["height"], varint)
    out += _field(h["mode"], lambda m: bytes([MODE_CODES[m]]))
    out += _field(h["pixel_crc32"], lambda c: struct.pack("<I", c))
    planes = h["planes"]
    if isinstance(planes, Raw):
        out += planes
    else:
        out += bytes([len(planes)])
        for p in planes:
            out += _field(p["channels"], lambda c: bytes([CHANNEL_CODES[c]]))
            out += text(p["model_id"]) + text(p["model_name"])
            out += _field(p["tile"], lambda t: varint(t[0]) + varint(t[1]))
            if "context" in p:  # version 2
                out += _field(p["context"], lambda c: varint(c[0]) + varint(c[1])) + _field(p["band"], varint)
            if "adaptation" in p:  # version 3
                out += _field(p["adaptation"], lambda a: varint(0) if a is None else varint(a[0]) + bytes([a[1]]) + struct.pack("<d", a[2]))
            if "calibration" in p:  # version 4 (and 5: "features" in p)
                out += _field(p["calibration"], lambda c: varint(0) if c is None else
                              varint(len(c[0])) + b"".join(struct.pack("<e", v) for v in (*c[0], *c[1])))
            if p.get("calibration") is not None and "features" in p:  # version 5
                out += _field(p["features"], lambda g: varint(len(g)) + b"".join(struct.pack("<e", v) for v in g))
            out += _field(p["n_words"], varint)
    ex = h["exactness"]
    if isinstance(ex, Raw):
        out += ex
    else:
        out += bytes([len(ex)])
        for k, v in ex.items():  # in the dict's order: sort it to be valid
            out += bytes([KEY_CODES[k]]) if k in KEY_CODES else b"\0" + text(k)
            out += text(v)
    out += encode_extras(h["mode"] if isinstance(h["mode"], str) else "", h["extras"])
    return out + h.get("tail", b"")


def header_dict(f: SnailFile) -> dict:
    return {
        "width": f.width,
        "height": f.height,
        "mode": f.mode,
        "pixel_crc32": f.pixel_crc32,
        "planes": [
            {"channels": p.channels, "model_id": p.model_id, "model_name": p.model_name, "tile": p.tile, "n_words": p.n_words}
            for p in f.planes
        ],
        "exactness": dict(sorted(f.exactness.items())),
        "extras": dict(f.extras),
    }


def forge(header: dict | bytes, n_words: int | None = None, version: int = 1) -> bytes:
    """A file with this header (a dict or raw bytes), correct checksums and n_words zero words."""
    raw = header if isinstance(header, bytes) else encode_header(header)
    if n_words is None:
        n_words = 0
        if isinstance(header, dict) and isinstance(header["planes"], list):
            counts = [p["n_words"] for p in header["planes"]]
            n_words = sum(n for n in counts if isinstance(n, int) and 0 <= n < 1000)
    checked = bytes([version]) + varint(len(raw)) + raw
    payload = bytes(4 * n_words)
    return MAGIC + checked + struct.pack("<I", zlib.crc32(checked)) + payload + struct.pack("<I", zlib.crc32(payload))


def header_span(data: bytes) -> tuple[int, int]:
    """(start, end) of the header fields in a file."""
    pos, hlen, shift = 9, 0, 0
    while True:
        b = data[pos]
        pos += 1
        hlen |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return pos, pos + hlen


# --------------------------------------------------------------------------------------------
# strategies

_PIECES = {
    "L": [["L"]],
    "1": [["L"]],
    "LA": [["L", "A"]],
    "RGB": [["RGB"]],
    "RGBA": [["RGB", "A"]],
    "P": [["P"]],
    "PA": [["P", "A"]],
}
_safe_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\x7f"), min_size=1, max_size=30
)
_hexish = st.text(alphabet="0123456789abcdef", min_size=1, max_size=20)
_words = st.binary(max_size=160).map(lambda b: np.frombuffer(b[: len(b) // 4 * 4], "<u4").astype(np.uint32))


@st.composite
def snail_files(draw) -> SnailFile:
    mode = draw(st.sampled_from(C.MODES))
    extras: dict = {}
    pieces = list(_PIECES[mode][0])
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
    planes = tuple(
        Plane(
            channels=ch,
            model_id=draw(st.text(alphabet="0123456789abcdef", min_size=1, max_size=64)),
            model_name=draw(st.one_of(_safe_text, _hexish)),
            tile=(draw(st.integers(1, 65535)), draw(st.integers(1, 65535))),
            words=draw(_words),
        )
        for ch in pieces
    )
    width = draw(st.integers(1, 65535))
    height = draw(st.integers(1, min(65535, C.MAX_PIXELS // width)))
    exactness = draw(
        st.dictionaries(
            st.one_of(
                st.sampled_from(["env", "threads", "torch", "device"]),
                st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=20),
            ),
            st.one_of(
                _hexish,
                st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x2FF, blacklist_categories=("Cc",)), max_size=40),
            ),
            max_size=8,
        )
    )
    return SnailFile(
        width=width,
        height=height,
        mode=mode,
        planes=planes,
        pixel_crc32=draw(st.integers(0, 2**32 - 1)),
        exactness=exactness,
        extras=extras,
    )


def small_file(**over) -> SnailFile:
    kw = dict(
        width=3,
        height=2,
        mode="RGBA",
        planes=(
            Plane("RGB", "0123456789abcdef", "snail-rgb-small", (16, 16), np.arange(7, dtype=np.uint32) * 0x01010101),
            Plane("A", "fedcba9876543210", "snail-gray-small", (8, 8), np.array([5, 2**32 - 1], dtype=np.uint32)),
        ),
        pixel_crc32=0xDEADBEEF,
        exactness={"format": "1", "torch": "2.13.0", "device": "cpu"},
        extras={},
    )
    kw.update(over)
    return SnailFile(**kw)


def typical_file(n_words: int = 72) -> SnailFile:
    """What `snailcompress encode` writes for a 28 x 28 RGB image."""
    return SnailFile(
        width=28,
        height=28,
        mode="RGB",
        planes=(Plane("RGB", "0123456789abcdef", "snail-rgb", (28, 28), np.arange(n_words, dtype=np.uint32)),),
        pixel_crc32=0x12345678,
        exactness={"env": "0123456789abcdef", "threads": "2"},
        extras={},
    )


VALID = C.write(small_file())


def fails(data: bytes, match: str | None = None) -> FormatError:
    with pytest.raises(FormatError, match=match) as ei:
        C.read(data)
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
    assert C.overhead(f) == len(data) - 4 * sum(p.n_words for p in f.planes)
    start, end = header_span(data)
    assert data[start:end] == encode_header(header_dict(f))  # the documented layout, written independently
    back = C.read(data)
    for p in back.planes:
        assert p.words.dtype == np.uint32 and p.words.ndim == 1


def test_byte_layout():
    f = SnailFile(
        width=3,
        height=2,
        mode="L",
        planes=(Plane("L", "ab12", "m", (8, 8), np.array([1, 2], np.uint32)),),
        pixel_crc32=0x01020304,
        exactness={"zz": "\u00e9", "threads": "1", "env": "00ff"},
        extras={"transparency": 300},
    )
    header = bytes.fromhex(
        "03 02 00"  # width 3, height 2, mode L
        "04 03 02 01"  # pixel_crc32
        "01"  # one plane
        "00 05 ab 12 02 6d 08 08 02"  # channels L, model_id ab12 (packed hex), model_name "m", tile 8x8, 2 words
        "03"  # three exactness entries, in key order:
        "01 05 00 ff"  # env (code 1) = "00ff" (packed hex)
        "02 02 31"  # threads (code 2) = "1" (UTF-8: odd number of digits)
        "00 04 7a 7a 04 c3 a9"  # "zz" = "é" (UTF-8)
        "01 03 ac 02"  # one extra: transparency (tag 3) = 300
    )
    checked = b"\x01" + bytes([len(header)]) + header
    payload = bytes.fromhex("01000000 02000000")
    expected = MAGIC + checked + struct.pack("<I", zlib.crc32(checked)) + payload + struct.pack("<I", zlib.crc32(payload))
    data = C.write(f)
    assert data == expected, data.hex(" ")
    assert C.read(data) == f and list(C.read(data).exactness) == ["env", "threads", "zz"]
    assert C.overhead(f) == len(data) - 8


def test_typical_header_overhead():
    """The whole container costs well under 80 bytes for a typical one-plane file."""
    for n_words, size in ((72, 64), (700, 65), (20000, 66)):
        f = typical_file(n_words)
        data = C.write(f)
        overhead = len(data) - 4 * n_words
        print(f"\ntypical one-plane RGB file, {n_words} words: {overhead} bytes of container overhead")
        assert overhead == C.overhead(f) == size
        assert overhead < 80
    assert C.read(C.write(typical_file())) == typical_file()


def test_largest_header_fits():
    big = "\U0001f40c" * 100  # 4 UTF-8 bytes each
    f = SnailFile(
        width=1,
        height=65535,
        mode="PA",
        planes=(
            Plane("P", "f" * 64, big, (65535, 65535), np.zeros(1, np.uint32)),
            Plane("A", "e" * 63, big, (65535, 65535), np.zeros(0, np.uint32)),
        ),
        pixel_crc32=2**32 - 1,
        exactness={f"{i:02d}" + "\u00e9" * 198: "\U0001f40c" * 200 for i in range(C.MAX_EXACTNESS_ENTRIES)},
        extras={"palette_mode": "RGBA", "palette": "ab" * 1024, "transparency": "cd" * 256},
    )
    data = C.write(f)
    assert C.read(data) == f
    start, end = header_span(data)
    assert end - start < C.MAX_HEADER_BYTES


def test_equality_and_words_views():
    f = small_file()
    assert f == small_file()
    other = small_file(planes=(f.planes[0], Plane("A", "fedcba9876543210", "snail-gray-small", (8, 8), np.array([5, 7], np.uint32))))
    assert f != other
    h = C.read_header(VALID)
    assert not h.planes[0].words.flags.writeable  # a view, not loaded
    assert C.read(VALID).planes[0].words.flags.writeable  # a private copy
    assert C.read(VALID).planes[1].words.flags.aligned


def test_numpy_scalars_and_lists_are_accepted_by_write():
    f = small_file(width=np.int64(3), pixel_crc32=np.uint32(0xDEADBEEF), extras={"constant_alpha": np.uint8(9)},
                   planes=(small_file().planes[0],))
    g = C.read(C.write(f))
    assert g.width == 3 and type(g.width) is int and g.extras == {"constant_alpha": 9}
    p = Plane("L", "ab", "m", [4, 5], [1, 2, 3])
    assert p.tile == (4, 5) and p.words.dtype == np.uint32
    rgb = small_file(mode="RGB", planes=(small_file().planes[0],), extras={"transparency": (1, np.uint16(2), 3)})
    assert C.read(C.write(rgb)).extras == {"transparency": [1, 2, 3]}


def test_empty_streams_are_allowed():
    f = small_file(mode="L", planes=(Plane("L", "00", "gray", (1, 1), np.zeros(0, np.uint32)),), extras={})
    assert C.read(C.write(f)) == f


# --------------------------------------------------------------------------------------------
# specific errors


def test_empty_and_foreign_files():
    assert "empty" in str(fails(b""))
    fails(b"hello world, this is text", "not a .snail file")
    fails(b"\x89PNG\r\n\x1a\n" + b"\0" * 30, "not a .snail file")
    fails(VALID.replace(b"\r\n", b"\n", 1), "first bytes were altered")


def test_unknown_version_names_both():
    e = fails(VALID[:8] + b"\x07" + VALID[9:])
    assert "version 7" in str(e) and "version 1" in str(e)


@pytest.mark.parametrize("n", range(1, len(VALID)))
def test_every_truncation(n):
    assert str(fails(VALID[:n])) == "file is truncated"


def test_trailing_garbage():
    fails(VALID + b"\0", "1 byte of unexpected data")
    fails(VALID + VALID, "trailing garbage")


def test_header_checksum():
    start, end = header_span(VALID)
    for i in (8, start, (start + end) // 2, end - 1, end):  # version .. header CRC: all covered
        if i == 8:
            continue  # a changed version byte is an unknown version
        for bit in (0, 7):
            bad = VALID[:i] + bytes([VALID[i] ^ (1 << bit)]) + VALID[i + 1 :]
            assert str(fails(bad)) == "header is corrupt (checksum mismatch)"


def test_payload_checksum_and_read_header_skips_it():
    bad = bytearray(VALID)
    bad[-6] ^= 1  # inside the last stream
    assert str(fails(bytes(bad))) == "payload is corrupt (checksum mismatch)"
    h = C.read_header(bytes(bad))  # info still works
    assert h.width == 3 and h.planes[1].n_words == 2
    bad2 = bytearray(VALID)
    bad2[-1] ^= 0x80  # the checksum itself
    fails(bytes(bad2), "payload is corrupt")


def test_header_length_field():
    fails(MAGIC + b"\x01" + varint(C.MAX_HEADER_BYTES + 1) + b"\0" * 40, "at most 65536")
    fails(MAGIC + b"\x01" + b"\x80\x80\x80\x01" + b"\0" * 40, "claims more than 65536")
    fails(MAGIC + b"\x01" + b"\x85\x00" + b"\0" * 40, "not minimally encoded")
    fails(MAGIC + b"\x01" + b"\x00" + b"\0\0\0\0", "empty")
    assert str(fails(MAGIC + b"\x01" + b"\x85")) == "file is truncated"


def test_word_counts_decide_the_file_length():
    h = header_dict(small_file())
    assert str(fails(forge(h, n_words=10))) == "file has 4 bytes of unexpected data after its end (trailing garbage)"
    assert str(fails(forge(h, n_words=8))) == "file is truncated"
    assert C.read(forge(h, n_words=9)).planes[1].n_words == 2


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
    h["planes"][0]["n_words"] = h["planes"][1]["n_words"] = 2**32 - 1
    data = forge(h, n_words=6)
    _assert_cheap(lambda: fails(data, "^file is truncated$"))
    _assert_cheap(lambda: pytest.raises(FormatError, C.read_header, data))


def _mutated(**changes) -> bytes:
    h = header_dict(small_file())
    for path, value in changes.items():
        target = h
        keys = path.split("__")
        for k in keys[:-1]:
            target = target[int(k)] if isinstance(target, list) else target[k]
        target[keys[-1]] = value
    return forge(h)


def _entries(*pairs) -> Raw:
    return Raw(bytes([len(pairs)]) + b"".join(pairs))


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
        (dict(mode=Raw(b"\xff")), "mode code 255"),
        (dict(mode="L"), "do not spell the channels 'L'"),
        (dict(mode="PA"), "needs extras.palette"),
        (dict(planes=Raw(b"\x00")), "1 to 4 planes, not 0"),
        (dict(planes=Raw(b"\x05")), "1 to 4 planes, not 5"),
        (dict(planes__0__channels=Raw(b"\x04")), "plane 1 channels code 4 is not one of 0..3"),
        (dict(planes__0__channels="A"), "do not spell"),
        (dict(planes__1__channels="RGB"), "do not spell"),
        (dict(planes__0__model_id=""), "model_id must have 1 to 64 characters, not 0"),
        (dict(planes__0__model_id="XYZ"), "model_id must be lowercase hexadecimal"),
        (dict(planes__0__model_id="A0"), "model_id must be lowercase hexadecimal"),
        (dict(planes__0__model_id="0" * 66), "1 to 64 characters"),
        (dict(planes__0__model_id=Raw(varint(8) + b"abcd")), "must be stored as packed hex digits"),
        (dict(planes__0__model_id=Raw(b"\x01")), "invalid length code"),
        (dict(planes__0__model_name="evil\x1b[2J"), "model_name contains control characters"),
        (dict(planes__0__model_name=Raw(b"\x04\xc2\x85")), "control characters"),  # U+0085, a C1 control
        (dict(planes__0__model_name=""), "1 to 100"),
        (dict(planes__0__model_name="x" * 101), "1 to 100"),
        (dict(planes__0__model_name=Raw(b"\x04\xff\xfe")), "model_name is not valid UTF-8"),
        (dict(planes__0__model_name=Raw(b"\x06\xed\xa0\x80")), "not valid UTF-8"),  # a surrogate
        (dict(planes__0__model_name=Raw(varint(2000))), "ends in the middle of plane 1 model_name"),
        (dict(planes__0__tile=(0, 4)), "plane 1 tile height = 0 is out of range"),
        (dict(planes__1__tile=(4, 65536)), "plane 2 tile width = 65536"),
        (dict(planes__0__n_words=2**32), "n_words = 4294967296 is out of range"),
        (dict(exactness={"k" * 201: "x"}), "an exactness key must have 1 to 200"),
        (dict(exactness={"": "x"}), "1 to 200"),
        (dict(exactness={"k": "x" * 201}), "0 to 200"),
        (dict(exactness={"k": "a\nb"}), "control characters"),
        (dict(exactness={"b": "1", "a": "2"}), "not in increasing order"),
        (dict(exactness={"threads": "1", "env": "2"}), "not in increasing order"),
        (dict(exactness=_entries(b"\0" + text("a") + text("1"), b"\0" + text("a") + text("2"))), "'a' appears twice"),
        (dict(exactness=_entries(b"\0" + text("env") + text("x"))), "'env' must be stored as its code 1"),
        (dict(exactness=_entries(b"\x03" + text("x"))), "key code 3 is unknown"),
        (dict(exactness=Raw(b"\x21")), "exactness has 33 entries, at most 32"),
        (dict(exactness=_entries(b"\x01\x09")), "ends in the middle of exactness\\['env'\\]"),
        (dict(extras=_entries(b"\x05")), "unknown extras field \\(tag 5\\)"),
        (dict(extras=_entries(b"\x00")), "unknown extras field \\(tag 0\\)"),
        (dict(extras=Raw(b"\x04")), "extras has 4 fields, at most 3"),
        (dict(extras=_entries(b"\x01\x07", b"\x01\x07")), "tag 1 appears twice"),
        (dict(extras=_entries(b"\x02\x03\x00", b"\x01\x07")), "tag 1 is out of order"),
        (dict(extras={"constant_alpha": 255}), "do not spell"),  # constant alpha but an A plane
        (dict(extras={"palette": "00" * 3, "palette_mode": "RGB"}), "palette is not allowed for mode RGBA"),
        (dict(extras={"transparency": 3}), "transparency is not allowed for mode RGBA"),
        (dict(extras=Raw(b"")), "ends in the middle of the extras count"),
        (dict(tail=b"\0"), "1 unexpected byte after its last field"),
        (dict(tail=b"\0\0\0"), "3 unexpected bytes"),
    ],
)
def test_invalid_headers(changes, match):
    e = fails(_mutated(**changes))
    assert str(e).startswith("header is invalid: ")
    assert re.search(match, str(e)), str(e)


_PAL = b"\x02\x03\x01\xaa\xbb\xcc"  # tag 2: one RGB entry


@pytest.mark.parametrize(
    "mode, extras, match",
    [
        ("P", {}, "needs extras.palette"),
        ("P", _entries(b"\x02\x05\x00"), "palette entry size 5 is not 3"),
        ("P", _entries(b"\x02\x03" + varint(257) + bytes(771)), "palette has 257 entries"),
        ("P", _entries(b"\x02\x03\x02\0\0\0"), "ends in the middle of the palette"),
        ("P", {"palette": "000000", "palette_mode": "RGB", "transparency": 256}, "transparency = 256 is out of range"),
        ("P", {"palette": "000000", "palette_mode": "RGB", "transparency": ""}, "must not be empty"),
        ("P", _entries(_PAL, b"\x04" + varint(257) + bytes(257)), "transparency has 257 entries"),
        ("P", _entries(_PAL, b"\x03\x00", b"\x04\x01\x00"), "transparency is given twice"),
        ("L", {"transparency": 65536}, "out of range"),
        ("L", {"transparency": "00"}, "per-index alpha is not allowed for mode L"),
        ("L", {"constant_alpha": 1}, "constant_alpha is not allowed for mode L"),
        ("L", _entries(_PAL), "palette is not allowed for mode L"),
        ("RGB", {"transparency": [1, 2, 70000]}, "transparency b = 70000 is out of range"),
        ("RGB", _entries(b"\x03\x01\x02"), "ends in the middle of transparency b"),
    ],
)
def test_invalid_extras(mode, extras, match):
    h = header_dict(small_file())
    h["mode"] = mode
    h["planes"] = [dict(h["planes"][0], channels=C.MODE_CHANNELS[mode])]
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
        ("RGB", {"transparency": [0, 65535, 300]}),
    ]:
        h = dict(base, mode=mode, extras=extras)
        h["planes"] = [dict(base["planes"][0], channels=C.MODE_CHANNELS[mode][:1] if mode != "RGB" else "RGB")]
        data = forge(h)
        f = C.read(data)
        assert f.extras == extras and C.write(f) == data


def test_write_refuses_invalid_files():
    with pytest.raises(ValueError, match="spell"):
        C.write(small_file(mode="RGB"))
    with pytest.raises(ValueError, match="uint32"):
        C.write(small_file(planes=(Plane("RGB", "00", "m", (1, 1), np.zeros(3, np.int64)), small_file().planes[1])))
    with pytest.raises(ValueError, match="uint32"):
        C.write(small_file(planes=(Plane("RGB", "00", "m", (1, 1), np.zeros((2, 2), np.uint32)), small_file().planes[1])))
    with pytest.raises(ValueError, match="out of range"):
        C.write(small_file(width=70000))
    with pytest.raises(ValueError, match="not a Plane"):
        C.write(small_file(planes=("RGB",)))
    with pytest.raises(ValueError, match="channels 'RG' is not one of L, A, RGB, P"):
        C.write(small_file(planes=(Plane("RG", "00", "m", (1, 1), np.zeros(1, np.uint32)), Plane("BA", "00", "m", (1, 1), np.zeros(1, np.uint32)))))
    with pytest.raises(ValueError, match="must be an integer, not a boolean"):
        C.write(small_file(width=True))
    with pytest.raises(ValueError, match="exactness must be a dict"):
        C.write(small_file(exactness=[("a", "b")]))
    with pytest.raises(ValueError, match="unknown field"):
        C.write(small_file(extras={"png_info": {}}))
    with pytest.raises(ValueError, match="must be a string"):
        C.write(small_file(exactness={"threads": 2}))
    with pytest.raises(TypeError):
        C.write({"width": 1})


def test_describe():
    f = small_file(mode="P", planes=(Plane("P", "ab12", "snail-p", (32, 32), np.zeros(10, np.uint32)),),
                   extras={"palette": "00" * 48, "palette_mode": "RGB", "transparency": 3})
    data = C.write(f)
    text_ = C.describe(C.read_header(data))
    assert "3 x 2 pixels, mode P" in text_
    assert "snail-p" in text_ and "ab12" in text_ and "32x32" in text_ and "40 bytes" in text_
    assert "16 entries" in text_ and "index 3" in text_
    assert "deadbeef" in text_ and "torch" in text_ and "2.13.0" in text_
    assert f"{len(data)} bytes" in text_
    assert f"container:    {len(data) - 40} bytes of header and checksums" in text_
    text_ = C.describe(small_file(extras={"constant_alpha": 255}, planes=small_file().planes[:1]))
    assert "constant 255" in text_
    text_ = C.describe(small_file(mode="RGB", planes=small_file().planes[:1], extras={"transparency": [1, 2, 3]}))
    assert "colour (1, 2, 3)" in text_


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
@example(MAGIC + b"\x01")
def test_random_bytes(data):
    assert _read_or_formaterror(data) is None
    assert _read_or_formaterror(MAGIC + b"\x01" + data) is None


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
        assert got is None  # CRC32 catches every change of up to 32 bits; lengths catch the rest
    try:
        h = C.read_header(data)
    except FormatError:
        return
    assert isinstance(h, SnailFile)


_FIELDS = ["width", "height", "mode", "pixel_crc32", "planes", "exactness", "extras", "tail"]
_PLANE_FIELDS = ["channels", "model_id", "model_name", "tile", "n_words"]


@st.composite
def forged_headers(draw):
    """Valid headers with one field's encoding replaced by arbitrary bytes (checksums correct)."""
    h = header_dict(draw(snail_files()))
    raw = Raw(draw(st.one_of(st.binary(max_size=12), st.sampled_from([b"\x00", b"\x01", b"\x80\x00", b"\xff" * 5]))))
    if draw(st.booleans()):
        plane = h["planes"][draw(st.integers(0, len(h["planes"]) - 1))]
        plane[draw(st.sampled_from(_PLANE_FIELDS))] = raw
    else:
        h[draw(st.sampled_from(_FIELDS))] = raw
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


# --------------------------------------------------------------------------------------------
# version 2: tiles coded with context from their neighbours


def _context_file(context=(4, 4), band=3) -> SnailFile:
    plane = Plane("RGB", "0123456789abcdef", "snail-rgb", (32, 32), np.zeros(5, np.uint32), context, band)
    return SnailFile(width=100, height=80, mode="RGB", planes=(plane,), pixel_crc32=7, exactness={"threads": "1"}, extras={})


def _v2_header(context, band) -> dict:
    h = header_dict(_context_file())
    h["planes"][0].update(context=context, band=band)
    return h


def test_context_is_written_as_version_2_and_reads_back():
    f = _context_file()
    data = C.write(f)
    assert data[8] == 2
    back = C.read(data)
    assert back == f and back.planes[0].context == (4, 4) and back.planes[0].band == 3
    assert C.write(back) == data
    assert data == forge(_v2_header((4, 4), 3), version=2)  # the layout the docstring gives
    assert "context 4 above, 4 left in bands of 3" in C.describe(back)


def test_files_without_context_stay_version_1():
    f = _context_file((0, 0), 1)
    data = C.write(f)
    assert data[8] == 1 and C.read(data).planes[0].context == (0, 0)
    assert data == forge(header_dict(f))


@pytest.mark.parametrize(
    "context, band, message",
    [
        ((0, 0), 1, "must be version 1"),  # one encoding per header
        ((0, 3), 2, "band"),  # a band only means something with context above
        ((4, 0), 0, "band"),
        ((70000, 0), 2, "context above"),
    ],
)
def test_version_2_fields_are_checked(context, band, message):
    fails(forge(_v2_header(context, band), version=2), message)


def test_version_1_readers_see_no_context_fields():
    """A version-1 header with the version-2 fields inside is not a valid file."""
    fails(forge(_v2_header((4, 4), 3), version=1))



# --------------------------------------------------------------------------------------------
# version 3: a model that adapts to the image while coding it


def _adapting_file(adaptation=(4, 1, 3e-5), context=(2, 2)) -> SnailFile:
    plane = Plane("RGB", "0123456789abcdef", "snail-rgb", (32, 32), np.zeros(5, np.uint32), context, 3 if context[0] else 1,
                  adaptation)
    return SnailFile(width=100, height=80, mode="RGB", planes=(plane,), pixel_crc32=7, exactness={"threads": "1"}, extras={})


def _v3_header(adaptation, context=(2, 2)) -> dict:
    h = header_dict(_adapting_file(context=context))
    h["planes"][0].update(context=context, band=3 if context[0] else 1, adaptation=adaptation)
    return h


@pytest.mark.parametrize("context", [(2, 2), (0, 0)])
def test_adaptation_is_written_as_version_3_and_reads_back(context):
    f = _adapting_file(context=context)
    data = C.write(f)
    assert data[8] == 3
    back = C.read(data)
    assert back == f and back.planes[0].adaptation == (4, 1, 3e-5)
    assert C.write(back) == data
    assert data == forge(_v3_header((4, 1, 3e-5), context), version=3)  # the layout the docstring gives
    assert "adapting (Adam, 1 step(s) at lr 3e-05 every 4 windows)" in C.describe(back)
    assert len(data) - len(C.write(_context_file(context, 3 if context[0] else 1))) == 10 + (0 if context[0] else 3)


def test_a_different_adaptation_is_a_different_file():
    assert _adapting_file((4, 1, 3e-5)).planes[0] != _adapting_file((4, 1, 3.0000000000000004e-05)).planes[0]
    assert C.read(C.write(_adapting_file((4, 1, 3.0000000000000004e-05)))).planes[0].adaptation[2] == 3.0000000000000004e-05


@pytest.mark.parametrize(
    "adaptation, message",
    [
        (None, "must be version 2"),  # one encoding per header
        ((4, 0, 3e-5), "adapt_steps"),
        ((70000, 1, 3e-5), "adapt_windows"),
        ((4, 1, 0.0), "adapt_lr"),
        ((4, 1, 1.0), "adapt_lr"),
        ((4, 1, float("nan")), "adapt_lr"),
        ((4, 1, float("inf")), "adapt_lr"),
        ((4, 1, -3e-5), "adapt_lr"),
    ],
)
def test_version_3_fields_are_checked(adaptation, message):
    fails(forge(_v3_header(adaptation), version=3), message)


def test_version_3_without_adaptation_or_context_must_be_version_1():
    fails(forge(_v3_header(None, (0, 0)), version=3), "must be version 1")


def test_writing_an_invalid_adaptation_is_refused():
    for bad in [(4, 1, 2.0), (0, 1, 3e-5), (4, 1), (4, 1, 1)]:
        with pytest.raises(ValueError, match="adapt"):
            C.write(_adapting_file(bad))


@pytest.mark.parametrize("n", range(1, 11))
def test_a_header_cut_inside_the_adaptation_fields_is_refused(n):
    h = encode_header(_v3_header((4, 1, 3e-5)))
    plane_end = h.index(struct.pack("<d", 3e-5)) + 8
    fails(forge(h[: plane_end - n], version=3), "header is invalid")


# --------------------------------------------------------------------------------------------
# version 4: a calibration of the model's outputs for the image

CALIBRATION = ((0.5, -0.25, 0.0), (1.0, 0.0009765625, -65504.0))  # binary16 numbers, 3 outputs


def _calibrated_file(calibration=CALIBRATION, adaptation=None, context=(2, 2)) -> SnailFile:
    plane = Plane("RGB", "0123456789abcdef", "snail-rgb", (32, 32), np.zeros(5, np.uint32), context,
                  3 if context[0] else 1, adaptation, calibration)
    return SnailFile(width=100, height=80, mode="RGB", planes=(plane,), pixel_crc32=7, exactness={"threads": "1"}, extras={})


def _v4_header(calibration, adaptation=None, context=(2, 2)) -> dict:
    h = _v3_header(adaptation, context)
    h["planes"][0]["calibration"] = calibration
    return h


@pytest.mark.parametrize("adaptation, context", [(None, (2, 2)), ((4, 1, 3e-5), (2, 2)), (None, (0, 0))])
def test_calibration_is_written_as_version_4_and_reads_back(adaptation, context):
    f = _calibrated_file(adaptation=adaptation, context=context)
    data = C.write(f)
    assert data[8] == 4
    back = C.read(data)
    assert back == f and back.planes[0].calibration == CALIBRATION and back.planes[0].adaptation == adaptation
    assert C.write(back) == data
    assert data == forge(_v4_header(CALIBRATION, adaptation, context), version=4)  # the layout the docstring gives
    assert "calibrated (3 outputs)" in C.describe(back)
    uncalibrated = C.write(dataclasses.replace(f, planes=(dataclasses.replace(f.planes[0], calibration=None),)))
    assert len(data) - len(uncalibrated) == 1 + 4 * 3 + (0 if adaptation else 1 + (0 if context[0] else 3))


def test_a_different_calibration_is_a_different_plane():
    other = ((0.5, -0.25, 0.0), (1.0, 0.0009765625, -65472.0))
    assert _calibrated_file().planes[0] != _calibrated_file(other).planes[0]
    assert C.read(C.write(_calibrated_file(other))).planes[0].calibration == other


@pytest.mark.parametrize(
    "calibration, message",
    [
        (None, "must be version 2"),  # one encoding per header
        (((float("nan"),), (0.0,)), "binary16"),
        (((float("inf"),), (0.0,)), "binary16"),
        (((0.0,), (-0.0,)), "binary16"),  # -0 and +0 would be two encodings of one calibration
    ],
)
def test_version_4_fields_are_checked(calibration, message):
    fails(forge(_v4_header(calibration), version=4), message)


def test_version_4_refuses_more_outputs_than_allowed():
    fails(forge(_v4_header(Raw(varint(1025))), version=4), "1025 outputs")


@pytest.mark.parametrize("n", range(1, 13))
def test_a_header_cut_inside_the_calibration_is_refused(n):
    h = encode_header(_v4_header(CALIBRATION))
    plane_end = h.index(struct.pack("<e", -65504.0)) + 2
    fails(forge(h[: plane_end - n], version=4), "header is invalid")


def test_writing_an_invalid_calibration_is_refused():
    for bad in [((0.1,), (0.0,)), ((0.5,), (0.0, 0.0)), ((), ()), ((1,), (0.0,)), ((0.5, 0.5),), ((70000.0,), (0.0,)),
                (tuple([0.0] * 1025), tuple([0.0] * 1025))]:
        with pytest.raises(ValueError, match="calibration"):
            C.write(_calibrated_file(bad))


# --------------------------------------------------------------------------------------------
# version 5: the calibration also gains the features the output layer reads

FEATURE_GAIN = (0.125, -0.5)  # binary16 numbers, 2 features


def _v5_header(calibration=CALIBRATION, features=FEATURE_GAIN, adaptation=None, context=(2, 2)) -> dict:
    h = _v4_header(calibration, adaptation, context)
    h["planes"][0]["features"] = features
    return h


@pytest.mark.parametrize("adaptation, context", [(None, (2, 2)), ((4, 1, 3e-5), (2, 2)), (None, (0, 0))])
def test_feature_gains_are_written_as_version_5_and_read_back(adaptation, context):
    f = _calibrated_file((*CALIBRATION, FEATURE_GAIN), adaptation, context)
    data = C.write(f)
    assert data[8] == 5
    back = C.read(data)
    assert back == f and back.planes[0].calibration == (*CALIBRATION, FEATURE_GAIN)
    assert C.write(back) == data
    assert data == forge(_v5_header(adaptation=adaptation, context=context), version=5)  # the docstring's layout
    assert "calibrated (3 outputs, 2 features)" in C.describe(back)
    outputs_only = C.write(_calibrated_file(CALIBRATION, adaptation, context))
    assert outputs_only[8] == 4 and len(data) - len(outputs_only) == 1 + 2 * 2


def test_an_empty_feature_gain_is_a_version_4_calibration():
    plane = _calibrated_file((*CALIBRATION, ())).planes[0]
    assert plane.calibration == CALIBRATION and plane == _calibrated_file().planes[0]
    assert C.write(_calibrated_file((*CALIBRATION, ())))[8] == 4


def test_version_5_holds_planes_calibrated_with_and_without_feature_gains():
    f = _calibrated_file((*CALIBRATION, FEATURE_GAIN))
    plain = dataclasses.replace(f.planes[0], channels="A", calibration=CALIBRATION)
    f = dataclasses.replace(f, mode="RGBA", planes=(f.planes[0], plain))
    back = C.read(C.write(f))
    assert back == f and back.planes[1].calibration == CALIBRATION


@pytest.mark.parametrize(
    "features, message",
    [
        ((), "must be version 4"),  # one encoding per header: no feature gains is version 4
        ((float("nan"),), "binary16"),
        ((-0.0,), "binary16"),
        (Raw(varint(1025)), "1025 features"),
    ],
)
def test_version_5_fields_are_checked(features, message):
    fails(forge(_v5_header(features=features), version=5), message)


def test_version_5_has_no_feature_field_on_an_uncalibrated_plane():
    """An uncalibrated plane ends its calibration at the count 0, in version 5 too."""
    f = _calibrated_file((*CALIBRATION, FEATURE_GAIN))
    plain = dataclasses.replace(f.planes[0], channels="A", calibration=None)
    f = dataclasses.replace(f, mode="RGBA", planes=(f.planes[0], plain))
    h = _v5_header()
    h["mode"] = "RGBA"
    h["planes"].append(dict(h["planes"][0], channels="A", calibration=None, features=None))
    assert C.write(f) == forge(h, version=5)


@pytest.mark.parametrize("n", range(1, 6))
def test_a_header_cut_inside_the_feature_gains_is_refused(n):
    h = encode_header(_v5_header())
    plane_end = h.index(struct.pack("<e", -0.5), h.index(struct.pack("<e", -65504.0))) + 2
    fails(forge(h[: plane_end - n], version=5), "header is invalid")


def test_writing_an_invalid_feature_gain_is_refused():
    for bad in [(0.1,), (1,), tuple([0.0] * 1025), (float("inf"),)]:
        with pytest.raises(ValueError, match="calibration"):
            C.write(_calibrated_file((*CALIBRATION, bad)))
