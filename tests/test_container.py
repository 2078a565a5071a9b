"""The .snail container (snailcompress.codec.container) and atomic_write (snailcompress.fileio)."""

from __future__ import annotations

import json
import os
import re
import struct
import time
import tracemalloc
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from snailcompress.codec import container as C
from snailcompress.codec.container import MAGIC, Plane, SnailFile
from snailcompress.errors import FormatError, SnailError
from snailcompress.fileio import OutputExistsError, atomic_write

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------------------------
# strategies

_CHANNELS = {"L": "L", "1": "L", "LA": "LA", "RGB": "RGB", "RGBA": "RGBA", "P": "P", "PA": "PA"}
_safe_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\x7f"), min_size=1, max_size=30
)
_words = st.binary(max_size=160).map(lambda b: np.frombuffer(b[: len(b) // 4 * 4], "<u4").astype(np.uint32))


def _splits(s: str):
    """Strategy: s cut into 1..len(s) contiguous non-empty pieces."""
    if len(s) == 1:
        return st.just([s])
    return st.lists(st.booleans(), min_size=len(s) - 1, max_size=len(s) - 1).map(
        lambda cuts: _cut(s, cuts)
    )


def _cut(s: str, cuts: list[bool]) -> list[str]:
    out, cur = [], s[0]
    for ch, c in zip(s[1:], cuts):
        if c:
            out.append(cur)
            cur = ch
        else:
            cur += ch
    out.append(cur)
    return out


@st.composite
def snail_files(draw) -> SnailFile:
    mode = draw(st.sampled_from(C.MODES))
    extras: dict = {}
    spell = _CHANNELS[mode]
    if mode in ("LA", "RGBA", "PA") and draw(st.booleans()):
        extras["constant_alpha"] = draw(st.integers(0, 255))
        spell = spell[:-1]
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
    pieces = draw(_splits(spell))
    assume(len(pieces) <= C.MAX_PLANES)
    planes = tuple(
        Plane(
            channels=ch,
            model_id=draw(st.text(alphabet="0123456789abcdef", min_size=1, max_size=64)),
            model_name=draw(_safe_text),
            tile=(draw(st.integers(1, 65535)), draw(st.integers(1, 65535))),
            words=draw(_words),
        )
        for ch in pieces
    )
    width = draw(st.integers(1, 65535))
    height = draw(st.integers(1, min(65535, C.MAX_PIXELS // width)))
    exactness = draw(
        st.dictionaries(
            st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e), min_size=1, max_size=20),
            st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x2ff, blacklist_categories=("Cc",)), max_size=40),
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


VALID = C.write(small_file())


def forge(header_obj, payload_words=None, version: int = 1, raw_header: bytes | None = None) -> bytes:
    """A file with the given header (any JSON), correct checksums, and streams sized per n_words."""
    header = raw_header if raw_header is not None else json.dumps(header_obj).encode()
    if payload_words is None:
        counts = []
        if isinstance(header_obj, dict) and isinstance(header_obj.get("planes"), list):
            for p in header_obj["planes"]:
                n = p.get("n_words", 0) if isinstance(p, dict) else 0
                counts.append(n if isinstance(n, int) and 0 <= n < 1000 else 0)
        payload_words = [np.zeros(n, np.uint32) for n in counts]
    payload = b"".join(struct.pack("<I", len(w)) + w.astype("<u4").tobytes() for w in payload_words)
    return (
        MAGIC
        + bytes([version])
        + struct.pack("<I", len(header))
        + header
        + struct.pack("<I", zlib.crc32(header))
        + payload
        + struct.pack("<I", zlib.crc32(payload))
    )


def header_of(f: SnailFile) -> dict:
    data = C.write(f)
    (n,) = struct.unpack_from("<I", data, 9)
    return json.loads(data[13 : 13 + n])


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
    back = C.read(data)
    for p in back.planes:
        assert p.words.dtype == np.uint32 and p.words.ndim == 1


def test_byte_layout():
    f = small_file()
    data = C.write(f)
    assert data[:8] == b"\x89SNAIL\r\n" and data[8] == 1
    (hlen,) = struct.unpack_from("<I", data, 9)
    header = data[13 : 13 + hlen]
    assert struct.unpack_from("<I", data, 13 + hlen)[0] == zlib.crc32(header)
    obj = json.loads(header)
    assert obj["planes"][0]["n_words"] == 7 and obj["planes"][1]["tile"] == [8, 8]
    pos = 17 + hlen
    payload_start = pos
    for p in f.planes:
        (n,) = struct.unpack_from("<I", data, pos)
        assert n == p.n_words
        assert np.array_equal(np.frombuffer(data, "<u4", n, pos + 4), p.words)
        pos += 4 + 4 * n
    assert len(data) == pos + 4
    assert struct.unpack_from("<I", data, pos)[0] == zlib.crc32(data[payload_start:pos])


def test_equality_and_words_views():
    f = small_file()
    assert f == small_file()
    other = small_file(planes=(f.planes[0], Plane("A", "fedcba9876543210", "snail-gray-small", (8, 8), np.array([5, 7], np.uint32))))
    assert f != other
    h = C.read_header(VALID)
    assert not h.planes[0].words.flags.writeable  # a view, not loaded
    assert C.read(VALID).planes[0].words.flags.writeable  # a private copy


def test_numpy_scalars_and_lists_are_accepted_by_write():
    f = small_file(width=np.int64(3), pixel_crc32=np.uint32(0xDEADBEEF), extras={"constant_alpha": np.uint8(9)},
                   planes=(small_file().planes[0],))
    g = C.read(C.write(f))
    assert g.width == 3 and type(g.width) is int and g.extras == {"constant_alpha": 9}
    p = Plane("L", "ab", "m", [4, 5], [1, 2, 3])
    assert p.tile == (4, 5) and p.words.dtype == np.uint32


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
    (hlen,) = struct.unpack_from("<I", VALID, 9)
    i = 13 + hlen // 2
    bad = VALID[:i] + bytes([VALID[i] ^ 0x20]) + VALID[i + 1 :]
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


def test_header_too_large_is_refused_before_reading():
    data = MAGIC + b"\x01" + struct.pack("<I", (1 << 20) + 1) + b"{}"
    fails(data, "at most 1048576")
    fails(MAGIC + b"\x01" + struct.pack("<I", 0) + b"\0\0\0\0", "empty")


def test_stream_length_disagreeing_with_header():
    obj = header_of(small_file())
    data = forge(obj, payload_words=[np.zeros(7, np.uint32), np.zeros(1, np.uint32), np.zeros(0, np.uint32)])
    # total length happens to match (7+2 words + 2 prefixes == 7+1+0 words + 3 prefixes); lengths differ
    fails(data, "payload is corrupt|truncated|unexpected data")
    data = forge(obj, payload_words=[np.zeros(8, np.uint32), np.zeros(1, np.uint32)])
    assert "stream 1 has 8 words" in str(fails(data))
    with pytest.raises(FormatError, match="stream 1 has 8 words"):
        C.read_header(data)


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
    obj = header_of(small_file())
    obj["width"] = obj["height"] = 60000
    obj["planes"][0]["n_words"] = 2**32 - 1
    data = forge(obj, payload_words=[np.zeros(3, np.uint32)] * 2)
    _assert_cheap(lambda: fails(data, "60000 x 60000 pixels is more than"))


def test_huge_word_counts_are_truncation_without_allocation():
    obj = header_of(small_file())
    obj["planes"][0]["n_words"] = obj["planes"][1]["n_words"] = 2**32 - 1
    data = forge(obj, payload_words=[np.zeros(3, np.uint32)] * 2)
    _assert_cheap(lambda: fails(data, "^file is truncated$"))


def _mutated(**changes):
    obj = header_of(small_file())
    for path, value in changes.items():
        target = obj
        keys = path.split("__")
        for k in keys[:-1]:
            target = target[int(k)] if isinstance(target, list) else target[k]
        last = keys[-1]
        if isinstance(target, list):
            target[int(last)] = value
        elif value is _DELETE:
            del target[last]
        else:
            target[last] = value
    return forge(obj)


_DELETE = object()


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(width=0), "width = 0 is out of range"),
        (dict(width=65536), "out of range"),
        (dict(height=-1), "out of range"),
        (dict(width=True), "must be an integer, not a boolean"),
        (dict(width=3.0), "must be an integer, not a number"),
        (dict(width="3"), "must be an integer"),
        (dict(width=None), "must be an integer, not null"),
        (dict(width=10**30), "a huge number"),
        (dict(mode="CMYK"), "mode 'CMYK' is not one of"),
        (dict(mode=["L"]), "mode a list"),
        (dict(mode="L"), "do not spell the channels 'L'"),
        (dict(pixel_crc32=2**32), "out of range"),
        (dict(pixel_crc32=-1), "out of range"),
        (dict(planes=[]), "1 to 4 planes"),
        (dict(planes={}), "must be a list"),
        (dict(planes__0__channels="A"), "do not spell"),
        (dict(planes__0__channels=""), "channels must have 1 to 4"),
        (dict(planes__0__model_id="XYZ"), "hexadecimal"),
        (dict(planes__0__model_id="A0"), "hexadecimal"),
        (dict(planes__0__model_name="evil\x1b[2J"), "control characters"),
        (dict(planes__0__model_name=""), "1 to 100"),
        (dict(planes__0__tile=[0, 4]), "tile height = 0"),
        (dict(planes__0__tile=[4]), "tile must be a list"),
        (dict(planes__0__tile=4), "tile must be a list"),
        (dict(planes__0__n_words=-1), "out of range"),
        (dict(planes__0__n_words=2**32), "out of range"),
        (dict(planes__0__model_name=_DELETE), "lacks required field"),
        (dict(planes__0__bonus=1), "unknown field"),
        (dict(planes__1="A"), "plane 2 must be an object"),
        (dict(bonus=1), "unknown field"),
        (dict(width=_DELETE), "lacks required field.*width"),
        (dict(exactness=[]), "exactness must be an object"),
        (dict(exactness={"k": 1}), "must be a string"),
        (dict(exactness={"": "x"}), "1 to 200"),
        (dict(exactness={"k": "x" * 201}), "0 to 200"),
        (dict(exactness={f"k{i}": "v" for i in range(33)}), "at most 32"),
        (dict(extras=[]), "extras must be an object"),
        (dict(extras={"png_info": {}}), "unknown field"),
        (dict(extras={"constant_alpha": 256}), "out of range"),
        (dict(extras={"constant_alpha": 255}), "do not spell"),  # constant alpha but an A plane
        (dict(extras={"palette": "00", "palette_mode": "RGB"}), "not allowed for mode RGBA"),
        (dict(extras={"transparency": 3}), "not allowed for mode RGBA"),
    ],
)
def test_invalid_headers(changes, match):
    e = fails(_mutated(**changes))
    assert str(e).startswith("header is invalid: ")
    assert re.search(match, str(e)), str(e)


@pytest.mark.parametrize(
    "mode, extras, match",
    [
        ("P", {}, "needs extras.palette"),
        ("P", {"palette": "000000"}, "needs extras.palette_mode"),
        ("P", {"palette": "0000", "palette_mode": "RGB"}, "not a multiple of 3"),
        ("P", {"palette": "00" * 4 * 257, "palette_mode": "RGBA"}, "0 to 2048 characters"),
        ("P", {"palette": "ABCDEF", "palette_mode": "RGB"}, "lowercase hexadecimal"),
        ("P", {"palette": "abc", "palette_mode": "RGB"}, "even number"),
        ("P", {"palette": "000000", "palette_mode": "CMYK"}, "palette_mode must be"),
        ("P", {"palette": "000000", "palette_mode": "RGB", "transparency": 256}, "out of range"),
        ("P", {"palette": "000000", "palette_mode": "RGB", "transparency": ""}, "must not be empty"),
        ("P", {"palette": "000000", "palette_mode": "RGB", "transparency": [1]}, "must be an integer"),
        ("L", {"transparency": 65536}, "out of range"),
        ("L", {"constant_alpha": 1}, "not allowed for mode L"),
        ("RGB", {"transparency": [1, 2]}, "list \\[r, g, b\\]"),
        ("RGB", {"transparency": [1, 2, -3]}, "out of range"),
    ],
)
def test_invalid_extras(mode, extras, match):
    obj = header_of(small_file())
    obj["mode"] = mode
    obj["planes"] = [dict(obj["planes"][0], channels=C.MODE_CHANNELS[mode])]
    obj["extras"] = extras
    e = fails(forge(obj))
    assert re.search(match, str(e)), str(e)


@pytest.mark.parametrize(
    "raw, match",
    [
        (b"[1, 2]", "the header must be an object"),
        (b"\xff\xfe{}", "not valid UTF-8 JSON"),
        (b"{\"width\": NaN}", "NaN is not valid JSON"),
        (b"{\"width\": 1, \"width\": 2}", "duplicate field 'width'"),
        (b"{\"width\": " + b"9" * 5000 + b"}", "not valid UTF-8 JSON"),
        (b"[" * 100000 + b"]" * 100000, "not valid UTF-8 JSON|must be an object"),
        (b"{\"a\":" * 50000 + b"1" + b"}" * 50000, "not valid UTF-8 JSON|unknown field"),
        (b"{} trailing", "not valid UTF-8 JSON"),
        (b"\"\\ud800\"", "must be an object"),
    ],
)
def test_malformed_json(raw, match):
    e = fails(forge(None, payload_words=[], raw_header=raw))
    assert re.search(match, str(e)), str(e)


def test_lone_surrogate_in_string_is_refused():
    obj = header_of(small_file())
    raw = json.dumps(obj).replace('"snail-rgb-small"', '"snail\\ud800"').encode()
    fails(forge(obj, raw_header=raw), "control characters")


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
    with pytest.raises(TypeError):
        C.write({"width": 1})


def test_describe():
    f = small_file(mode="P", planes=(Plane("P", "ab12", "snail-p", (32, 32), np.zeros(10, np.uint32)),),
                   extras={"palette": "00" * 48, "palette_mode": "RGB", "transparency": 3})
    text = C.describe(C.read_header(C.write(f)))
    assert "3 x 2 pixels, mode P" in text
    assert "snail-p" in text and "ab12" in text and "32x32" in text and "40 bytes" in text
    assert "16 entries" in text and "index 3" in text
    assert "deadbeef" in text and "torch" in text and "2.13.0" in text
    assert f"{len(C.write(f))} bytes" in text
    text = C.describe(small_file(extras={"constant_alpha": 255}, planes=small_file().planes[:1]))
    assert "constant 255" in text


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


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=12,
)


@st.composite
def forged_headers(draw):
    """Valid header objects with one field replaced by arbitrary JSON (checksums correct)."""
    obj = header_of(draw(snail_files()))
    where = draw(st.sampled_from(["top", "plane", "extras", "exactness"]))
    if where == "top":
        key = draw(st.sampled_from(sorted(obj) + ["other"]))
        obj[key] = draw(_json)
    elif where == "plane":
        plane = obj["planes"][draw(st.integers(0, len(obj["planes"]) - 1))]
        plane[draw(st.sampled_from(sorted(plane) + ["other"]))] = draw(_json)
    elif where == "extras":
        obj["extras"][draw(st.sampled_from(["constant_alpha", "palette", "palette_mode", "transparency", "x"]))] = draw(_json)
    else:
        obj["exactness"][draw(st.text(max_size=5))] = draw(_json)
    return obj


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(forged_headers())
def test_forged_headers(obj):
    got = _read_or_formaterror(forge(obj))
    if got is not None:  # the replacement happened to be valid: it must then survive a round trip
        assert C.read(C.write(got)) == got


@settings(max_examples=100, deadline=None)
@given(_json)
def test_arbitrary_json_headers(obj):
    assert _read_or_formaterror(forge(obj)) is None


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
