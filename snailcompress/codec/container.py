r"""The .snail container: one losslessly coded image per file.

This module only moves bytes; it knows nothing about the model (it must not import torch) and can
be fuzzed on its own.  `read` raises `FormatError` for every invalid input and nothing else.

File format, version 1
======================

All integers are unsigned little-endian.  CRC32 is zlib's / PNG's CRC-32 (``zlib.crc32``).

====== ======== ==============================================================================
offset size     field
====== ======== ==============================================================================
0      8        magic ``89 53 4E 41 49 4C 0D 0A`` = ``b"\x89SNAIL\r\n"``.  The high-bit first byte
                and the CR LF catch 7-bit and text-mode transfers, like PNG's signature.
8      1        format version, u8 = 1
9      4        ``H``: header length in bytes, u32, 1 <= H <= 1 MiB (1048576)
13     H        header: UTF-8 JSON object (schema below)
13+H   4        CRC32 of the H header bytes, u32
17+H   ...      payload: for each plane of the header, in header order:
                  4 bytes   ``n``: number of 32-bit words of the coded stream, u32; must equal the
                            plane's ``n_words`` in the header
                  4*n bytes the words of the range coder's output, each a u32
end-4  4        CRC32 of all payload bytes (the length fields and the words), u32
====== ======== ==============================================================================

The file ends right after the payload CRC: the exact file length follows from the header
(``17 + H + sum(4 + 4*n_words) + 4``), so a short file is "truncated" and a long one has
"trailing data"; both are errors.

Header (writers emit compact JSON with sorted keys and ASCII only; readers accept any valid UTF-8
JSON but reject duplicate keys, NaN/Infinity, unknown fields, and strings containing control
characters or unpaired surrogates).  Integers must be JSON integers (not ``1.0``, not ``true``)::

    {
      "width":       int, 1..65535
      "height":      int, 1..65535, and width*height <= 2**28
      "mode":        Pillow mode of the original image: "L", "LA", "RGB", "RGBA", "P", "PA" or "1"
      "pixel_crc32": int, 0..2**32-1, CRC32 of the original pixels (images.pixel_checksum)
      "planes":      list of 1..4 objects, one per coded stream, in payload order:
        {
          "channels":   str, the image channels this stream codes, e.g. "RGB", "L", "A", "P"
          "model_id":   str, 1..64 lowercase hex digits identifying the exact weights
          "model_name": str, 1..100 characters, human-readable model name
          "tile":       [tile_h, tile_w], ints 1..65535
          "n_words":    int, 0..2**32-1, length of the coded stream in u32 words
        }
      "exactness":   object, at most 32 entries, str (1..200 chars) -> str (0..200 chars):
                     what bit-exact decoding depends on (format, dtype, threads, device, versions)
      "extras":      object, only these keys, each only where stated:
        "constant_alpha": int 0..255; modes LA, RGBA, PA, exactly when no plane codes "A"
        "palette":        str, lowercase hex of the raw palette bytes, 0..256 entries of
                          len(palette_mode) bytes; required for P and PA, forbidden otherwise
        "palette_mode":   "RGB" or "RGBA"; required for P and PA, forbidden otherwise
        "transparency":   P, PA: int 0..255 (the one transparent index) or str (lowercase hex of
                          1..256 per-index alpha bytes); L, 1: int 0..65535 (transparent grey);
                          RGB: [r, g, b], ints 0..65535; forbidden for other modes
    }

The planes' ``channels`` concatenated, in order, must spell the mode's channels: "L" for L and 1,
"LA", "RGB", "RGBA", "P", "PA" -- without the final "A" when the alpha is constant.  Examples:
RGBA = ["RGB", "A"] or ["RGB"] + constant_alpha; 1 (bilevel) = ["L"] holding 0/255.

Everything is checked before anything is allocated: a header promising 60000 x 60000 pixels or
4 G words is refused (or found truncated) without allocating more than the file itself.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from snailcompress.errors import FormatError

__all__ = [
    "MAGIC",
    "VERSION",
    "READABLE_VERSIONS",
    "MAX_HEADER_BYTES",
    "MAX_SIDE",
    "MAX_PIXELS",
    "MAX_PLANES",
    "MODES",
    "MODE_CHANNELS",
    "Plane",
    "SnailFile",
    "write",
    "read",
    "read_header",
    "describe",
    "file_size",
]

MAGIC = b"\x89SNAIL\r\n"
VERSION = 1
READABLE_VERSIONS = (1,)
MAX_HEADER_BYTES = 1 << 20
MAX_SIDE = 65535
MAX_PIXELS = 1 << 28
MAX_PLANES = 4
MAX_WORDS = (1 << 32) - 1
MAX_EXACTNESS_ENTRIES = 32
MAX_EXACTNESS_CHARS = 200
MAX_MODEL_NAME_CHARS = 100
MAX_MODEL_ID_CHARS = 64

#: Pillow mode -> the channels its planes must spell, in order (before dropping a constant alpha).
MODE_CHANNELS = {"L": "L", "1": "L", "LA": "LA", "RGB": "RGB", "RGBA": "RGBA", "P": "P", "PA": "PA"}
MODES = tuple(MODE_CHANNELS)

_FIXED = len(MAGIC) + 1 + 4  # magic, version, header length
_U32 = struct.Struct("<I")
_HEADER_KEYS = frozenset({"width", "height", "mode", "pixel_crc32", "planes", "exactness", "extras"})
_PLANE_KEYS = frozenset({"channels", "model_id", "model_name", "tile", "n_words"})
_EXTRA_KEYS = frozenset({"constant_alpha", "palette", "palette_mode", "transparency"})
_BAD_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_HEX = re.compile(r"(?:[0-9a-f]{2})*\Z")
_MODEL_ID = re.compile(r"[0-9a-f]{1,%d}\Z" % MAX_MODEL_ID_CHARS)


@dataclass(frozen=True, eq=False)
class Plane:
    """One coded stream: the pixels of some channels of the image, coded with one model."""

    channels: str  # which image channels, e.g. "RGB", "L", "A", "P" (palette indices)
    model_id: str  # hex digest identifying the exact weights (e.g. first 16 hex of sha256)
    model_name: str  # human-readable name (e.g. "snail-rgb-small"), for messages
    tile: tuple[int, int]  # (tile_h, tile_w) used for coding
    words: np.ndarray = field(repr=False)  # uint32 coded stream; may be empty

    def __post_init__(self) -> None:
        if isinstance(self.tile, list):
            object.__setattr__(self, "tile", tuple(self.tile))
        if not isinstance(self.words, np.ndarray):
            object.__setattr__(self, "words", np.asarray(self.words, dtype=np.uint32))

    @property
    def n_words(self) -> int:
        return int(self.words.size)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Plane):
            return NotImplemented
        return (
            self.channels == other.channels
            and self.model_id == other.model_id
            and self.model_name == other.model_name
            and tuple(self.tile) == tuple(other.tile)
            and self.words.shape == other.words.shape
            and bool(np.array_equal(self.words, other.words))
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Plane(channels={self.channels!r}, model_id={self.model_id!r}, model_name={self.model_name!r}, "
            f"tile={self.tile!r}, n_words={self.n_words})"
        )


@dataclass(frozen=True)
class SnailFile:
    """One .snail file: the image's shape and mode, its coded planes, and what decoding needs."""

    width: int
    height: int
    mode: str  # Pillow mode of the original image: "L", "LA", "RGB", "RGBA", "P", "PA", "1"
    planes: tuple[Plane, ...]
    pixel_crc32: int  # CRC32 of the original pixels (images.pixel_checksum)
    exactness: dict[str, str] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.planes, tuple):
            object.__setattr__(self, "planes", tuple(self.planes))

    __hash__ = None  # type: ignore[assignment]


# --------------------------------------------------------------------------------------------
# validation of the header object (shared by write and read, so write never emits what read refuses)


def _bad(msg: str) -> FormatError:
    return FormatError(f"header is invalid: {msg}")


def _int(obj: Any, name: str, lo: int, hi: int) -> int:
    if type(obj) is not int:
        raise _bad(f"{name} must be an integer, not {_jtype(obj)}")
    if not lo <= obj <= hi:
        shown = str(obj) if abs(obj) < 10**15 else ("a huge number" if obj > 0 else "a huge negative number")
        raise _bad(f"{name} = {shown} is out of range ({lo}..{hi})")
    return obj


def _str(obj: Any, name: str, lo: int, hi: int) -> str:
    if type(obj) is not str:
        raise _bad(f"{name} must be a string, not {_jtype(obj)}")
    if not lo <= len(obj) <= hi:
        raise _bad(f"{name} must have {lo} to {hi} characters, not {len(obj)}")
    if _BAD_CHARS.search(obj):
        raise _bad(f"{name} contains control characters")
    return obj


def _hex(obj: Any, name: str, max_bytes: int) -> bytes:
    _str(obj, name, 0, 2 * max_bytes)
    if not _HEX.match(obj):
        raise _bad(f"{name} must be lowercase hexadecimal with an even number of digits")
    return bytes.fromhex(obj)


def _jtype(obj: Any) -> str:
    if obj is None:
        return "null"
    if isinstance(obj, bool):
        return "a boolean"
    if isinstance(obj, int):
        return "an integer"
    if isinstance(obj, float):
        return "a number"
    if isinstance(obj, str):
        return "a string"
    if isinstance(obj, (list, tuple)):
        return "a list"
    if isinstance(obj, dict):
        return "an object"
    return type(obj).__name__


def _keys(obj: Any, name: str, allowed: frozenset, required: frozenset) -> dict:
    if type(obj) is not dict:
        raise _bad(f"{name} must be an object, not {_jtype(obj)}")
    unknown = [k for k in obj if k not in allowed]
    if unknown:
        shown = ", ".join(repr(k)[:40] for k in sorted(unknown, key=str)[:5])
        raise _bad(f"unknown field(s) in {name}: {shown}")
    missing = sorted(required - obj.keys())
    if missing:
        raise _bad(f"{name} lacks required field(s): {', '.join(missing)}")
    return obj


def _check_header(obj: Any) -> None:
    """Check a parsed header object completely; raise FormatError('header is invalid: ...')."""
    h = _keys(obj, "the header", _HEADER_KEYS, _HEADER_KEYS)
    width = _int(h["width"], "width", 1, MAX_SIDE)
    height = _int(h["height"], "height", 1, MAX_SIDE)
    if width * height > MAX_PIXELS:
        raise _bad(f"{width} x {height} pixels is more than the {MAX_PIXELS} this format allows")
    mode = h["mode"]
    if type(mode) is not str or mode not in MODE_CHANNELS:
        shown = repr(mode)[:40] if type(mode) is str else _jtype(mode)
        raise _bad(f"mode {shown} is not one of {', '.join(MODES)}")
    _int(h["pixel_crc32"], "pixel_crc32", 0, 0xFFFFFFFF)

    planes = h["planes"]
    if type(planes) is not list:
        raise _bad(f"planes must be a list, not {_jtype(planes)}")
    if not 1 <= len(planes) <= MAX_PLANES:
        raise _bad(f"there must be 1 to {MAX_PLANES} planes, not {len(planes)}")
    for i, p in enumerate(planes):
        where = f"plane {i + 1}"
        _keys(p, where, _PLANE_KEYS, _PLANE_KEYS)
        _str(p["channels"], f"{where} channels", 1, 4)
        mid = _str(p["model_id"], f"{where} model_id", 1, MAX_MODEL_ID_CHARS)
        if not _MODEL_ID.match(mid):
            raise _bad(f"{where} model_id must be lowercase hexadecimal")
        _str(p["model_name"], f"{where} model_name", 1, MAX_MODEL_NAME_CHARS)
        tile = p["tile"]
        if type(tile) is not list or len(tile) != 2:
            raise _bad(f"{where} tile must be a list [tile_h, tile_w]")
        _int(tile[0], f"{where} tile height", 1, MAX_SIDE)
        _int(tile[1], f"{where} tile width", 1, MAX_SIDE)
        _int(p["n_words"], f"{where} n_words", 0, MAX_WORDS)

    ex = h["exactness"]
    if type(ex) is not dict:
        raise _bad(f"exactness must be an object, not {_jtype(ex)}")
    if len(ex) > MAX_EXACTNESS_ENTRIES:
        raise _bad(f"exactness has {len(ex)} entries, at most {MAX_EXACTNESS_ENTRIES} are allowed")
    for k, v in ex.items():
        _str(k, "an exactness key", 1, MAX_EXACTNESS_CHARS)
        _str(v, f"exactness[{k!r}]", 0, MAX_EXACTNESS_CHARS)

    extras = _keys(h["extras"], "extras", _EXTRA_KEYS, frozenset())
    _check_extras(mode, extras)

    expected = MODE_CHANNELS[mode]
    if "constant_alpha" in extras:
        expected = expected[:-1]
    spelled = "".join(p["channels"] for p in planes)
    if spelled != expected:
        listed = " + ".join(repr(p["channels"]) for p in planes)
        raise _bad(f"planes {listed} do not spell the channels {expected!r} of mode {mode}")


def _check_extras(mode: str, extras: dict) -> None:
    has_alpha = mode in ("LA", "RGBA", "PA")
    paletted = mode in ("P", "PA")
    if "constant_alpha" in extras:
        if not has_alpha:
            raise _bad(f"constant_alpha is not allowed for mode {mode}")
        _int(extras["constant_alpha"], "constant_alpha", 0, 255)
    if paletted:
        for key in ("palette", "palette_mode"):
            if key not in extras:
                raise _bad(f"mode {mode} needs extras.{key}")
        pmode = extras["palette_mode"]
        if type(pmode) is not str or pmode not in ("RGB", "RGBA"):
            raise _bad("palette_mode must be 'RGB' or 'RGBA'")
        pal = _hex(extras["palette"], "palette", 256 * len(pmode))
        if len(pal) % len(pmode):
            raise _bad(f"palette length {len(pal)} is not a multiple of {len(pmode)} ({pmode})")
    else:
        for key in ("palette", "palette_mode"):
            if key in extras:
                raise _bad(f"{key} is not allowed for mode {mode}")
    if "transparency" in extras:
        t = extras["transparency"]
        if paletted:
            if type(t) is str:
                if not t:
                    raise _bad("transparency must not be empty")
                _hex(t, "transparency", 256)
            else:
                _int(t, "transparency", 0, 255)
        elif mode in ("L", "1"):
            _int(t, "transparency", 0, 65535)
        elif mode == "RGB":
            if type(t) is not list or len(t) != 3:
                raise _bad("transparency for RGB must be a list [r, g, b]")
            for c, v in zip("rgb", t):
                _int(v, f"transparency {c}", 0, 65535)
        else:
            raise _bad(f"transparency is not allowed for mode {mode}")


# --------------------------------------------------------------------------------------------
# writing


def _plain(x: Any) -> Any:
    """numpy scalars and tuples -> JSON-able Python values (anything else is left for the check)."""
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    return x


def _header_obj(f: SnailFile) -> dict:
    """The JSON header for f, checked (ValueError if f is not a valid SnailFile)."""
    if not isinstance(f, SnailFile):
        raise TypeError(f"write() needs a SnailFile, not {type(f).__name__}")
    planes = []
    for i, p in enumerate(f.planes):
        if not isinstance(p, Plane):
            raise ValueError(f"invalid SnailFile: plane {i + 1} is a {type(p).__name__}, not a Plane")
        w = p.words
        if not isinstance(w, np.ndarray) or w.ndim != 1 or w.dtype != np.uint32:
            raise ValueError(f"invalid SnailFile: plane {i + 1} words must be a 1-D numpy uint32 array")
        planes.append(
            {
                "channels": p.channels,
                "model_id": p.model_id,
                "model_name": p.model_name,
                "tile": _plain(p.tile),
                "n_words": int(w.size),
            }
        )
    obj = {
        "width": _plain(f.width),
        "height": _plain(f.height),
        "mode": f.mode,
        "pixel_crc32": _plain(f.pixel_crc32),
        "planes": planes,
        "exactness": dict(f.exactness) if isinstance(f.exactness, dict) else f.exactness,
        "extras": _plain(f.extras),
    }
    try:
        _check_header(obj)
    except FormatError as e:
        raise ValueError(f"invalid SnailFile: {str(e).removeprefix('header is invalid: ')}") from None
    return obj


def _header_bytes(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def write(f: SnailFile) -> bytes:
    """Serialize f.  Raises ValueError (TypeError) if f would not be readable back."""
    header = _header_bytes(_header_obj(f))
    if len(header) > MAX_HEADER_BYTES:
        raise ValueError(f"invalid SnailFile: header of {len(header)} bytes exceeds {MAX_HEADER_BYTES}")
    payload = bytearray()
    for p in f.planes:
        payload += _U32.pack(p.words.size)
        payload += p.words.astype("<u4", copy=False).tobytes()
    return b"".join(
        (
            MAGIC,
            bytes((VERSION,)),
            _U32.pack(len(header)),
            header,
            _U32.pack(zlib.crc32(header)),
            payload,
            _U32.pack(zlib.crc32(payload)),
        )
    )


def file_size(f: SnailFile) -> int:
    """The length in bytes of write(f), without building it."""
    header = _header_bytes(_header_obj(f))
    return _FIXED + len(header) + 4 + sum(4 + 4 * p.n_words for p in f.planes) + 4


# --------------------------------------------------------------------------------------------
# reading


def _pairs(pairs: list) -> dict:
    d: dict = {}
    for k, v in pairs:
        if k in d:
            raise _bad(f"duplicate field {k!r}"[:200])
        d[k] = v
    return d


def _no_constant(name: str) -> Any:
    raise _bad(f"{name} is not valid JSON here")


def _truncated() -> FormatError:
    return FormatError("file is truncated")


def _parse(data: bytes | bytearray | memoryview, verify_payload: bool) -> SnailFile:
    view = memoryview(data).cast("B") if not isinstance(data, bytes) else memoryview(data)
    size = len(view)
    if size == 0:
        raise FormatError("not a .snail file (the file is empty)")
    head = bytes(view[: len(MAGIC)])
    if head != MAGIC:
        if size < len(MAGIC) and MAGIC.startswith(head):
            raise _truncated()
        if b"SNAIL" in bytes(view[:12]):
            raise FormatError(
                "not a .snail file: its first bytes were altered "
                "(was it copied in text mode or opened in an editor?)"
            )
        raise FormatError("not a .snail file")
    if size < len(MAGIC) + 1:
        raise _truncated()
    version = view[len(MAGIC)]
    if version not in READABLE_VERSIONS:
        readable = ", ".join(str(v) for v in READABLE_VERSIONS)
        raise FormatError(
            f"unsupported .snail format version {version}; this build of snailcompress reads version {readable}"
        )
    if size < _FIXED:
        raise _truncated()
    (hlen,) = _U32.unpack_from(view, len(MAGIC) + 1)
    if hlen > MAX_HEADER_BYTES:
        raise FormatError(f"header is corrupt (it claims {hlen} bytes; at most {MAX_HEADER_BYTES} are allowed)")
    if hlen == 0:
        raise FormatError("header is corrupt (it is empty)")
    if size < _FIXED + hlen + 4:
        raise _truncated()
    header = bytes(view[_FIXED : _FIXED + hlen])
    (hcrc,) = _U32.unpack_from(view, _FIXED + hlen)
    if zlib.crc32(header) != hcrc:
        raise FormatError("header is corrupt (checksum mismatch)")

    try:
        text = header.decode("utf-8")
        obj = json.loads(text, object_pairs_hook=_pairs, parse_constant=_no_constant)
    except FormatError:
        raise
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, huge int literals
        raise FormatError("header is invalid: it is not valid UTF-8 JSON") from e
    _check_header(obj)

    counts = [p["n_words"] for p in obj["planes"]]
    start = _FIXED + hlen + 4
    expected = start + sum(4 + 4 * n for n in counts) + 4
    if size < expected:
        raise _truncated()
    if size > expected:
        extra = size - expected
        raise FormatError(
            f"file has {extra} byte{'s' if extra != 1 else ''} of unexpected data after its end (trailing garbage)"
        )
    payload = view[start : expected - 4]
    if verify_payload:
        (pcrc,) = _U32.unpack_from(view, expected - 4)
        if zlib.crc32(payload) != pcrc:
            raise FormatError("payload is corrupt (checksum mismatch)")

    planes = []
    pos = start
    for i, (p, n) in enumerate(zip(obj["planes"], counts)):
        (m,) = _U32.unpack_from(view, pos)
        if m != n:
            raise FormatError(
                f"payload is corrupt (stream {i + 1} has {m} words, the header says {n})"
            )
        pos += 4
        words = np.frombuffer(view, dtype="<u4", count=n, offset=pos)
        if verify_payload or words.dtype != np.uint32:
            words = words.astype(np.uint32)  # a private, native-endian copy
        pos += 4 * n
        planes.append(
            Plane(
                channels=p["channels"],
                model_id=p["model_id"],
                model_name=p["model_name"],
                tile=(p["tile"][0], p["tile"][1]),
                words=words,
            )
        )
    extras = dict(obj["extras"])
    return SnailFile(
        width=obj["width"],
        height=obj["height"],
        mode=obj["mode"],
        planes=tuple(planes),
        pixel_crc32=obj["pixel_crc32"],
        exactness=dict(obj["exactness"]),
        extras=extras,
    )


def read(data: bytes) -> SnailFile:
    """Parse and fully verify a .snail file.  Raises FormatError, and only FormatError, if invalid."""
    return _parse(data, verify_payload=True)


def read_header(data: bytes) -> SnailFile:
    """Like read, but does not verify the payload checksum; the words are read-only views of data.

    Meant for `snailcompress info`: everything in the header is checked, and so are the file length
    and the stream lengths, but a payload bit flip goes unnoticed.
    """
    return _parse(data, verify_payload=False)


# --------------------------------------------------------------------------------------------
# describing


def _fmt_bytes(n: int) -> str:
    if n < 10_000:
        return f"{n:,} bytes"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n:,} bytes ({n / scale:.1f} {unit})"
    return f"{n:,} bytes"  # pragma: no cover


def describe(f: SnailFile) -> str:
    """The header in words, several lines, for `snailcompress info`."""
    pixels = f.width * f.height
    total = file_size(f)
    payload = sum(4 * p.n_words for p in f.planes)
    lines = [
        f".snail file, format version {VERSION}, {_fmt_bytes(total)}",
        f"image:        {f.width} x {f.height} pixels, mode {f.mode}",
        f"size:         {8 * total / pixels:.4f} bits per pixel in all, {8 * payload / pixels:.4f} in the coded streams",
        f"pixel CRC32:  {f.pixel_crc32:08x}",
        f"planes:       {len(f.planes)}",
    ]
    for i, p in enumerate(f.planes, 1):
        bpv = 32 * p.n_words / (pixels * len(p.channels))
        lines.append(
            f"  {i}. {p.channels:<4} model {p.model_name} (id {p.model_id}), tiles {p.tile[0]}x{p.tile[1]}, "
            f"{_fmt_bytes(4 * p.n_words)}, {bpv:.4f} bits per value"
        )
    ex = f.extras
    if "constant_alpha" in ex:
        lines.append(f"alpha:        constant {ex['constant_alpha']} (not coded)")
    if "palette" in ex:
        pm = ex.get("palette_mode", "RGB")
        n = len(ex["palette"]) // (2 * len(pm))
        lines.append(f"palette:      {n} entries, {pm}")
    if "transparency" in ex:
        t = ex["transparency"]
        if f.mode in ("P", "PA"):
            shown = f"index {t}" if isinstance(t, int) else f"alpha for {len(t) // 2} palette entries"
        elif isinstance(t, list):
            shown = "colour (" + ", ".join(str(v) for v in t) + ")"
        else:
            shown = f"grey value {t}"
        lines.append(f"transparency: {shown}")
    if f.exactness:
        lines.append("decoding must reproduce:")
        width = max(len(k) for k in f.exactness)
        for k in sorted(f.exactness):
            lines.append(f"  {k:<{width}}  {f.exactness[k]}")
    return "\n".join(lines)
