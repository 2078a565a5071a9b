r"""The .snail container: one losslessly coded image per file.

This module only moves bytes; it knows nothing about the model (it must not import torch) and can
be fuzzed on its own.  `read` raises `FormatError` for every invalid input and nothing else.

File format, version 5
======================

A compact binary header: a 28 x 28 image coded in a few hundred bytes must not carry a big one.
A typical one-plane file (model "snail-rgb" with a 16-hex-digit id, exactness ``env`` +
``threads``) has 64 to 66 bytes of overhead in all (magic, version, header and both checksums),
depending on the length of its stream, 3 more in version 2 (tiles coded with context), 10 more in
version 3 (a model that adapts to the image while coding it), 4 per network output more in
version 4 (a calibration of the model's outputs for the image: 403 bytes for the 100 outputs of
snail-rgb) and 2 per feature the network's output layer reads more in version 5 (a calibration of
those features too: 500 bytes in all for snail-rgb's 100 outputs and 48 features).

Fixed-size integers (u8, u32) are unsigned little-endian.  ``varint`` is unsigned LEB128: 7 bits a
byte, least significant group first, the high bit set on every byte but the last; at most 5 bytes
and minimal (no redundant final ``00`` group), so every number has exactly one encoding.  CRC32 is
zlib's / PNG's CRC-32 (``zlib.crc32``).

====== ====== ================================================================================
offset size   field
====== ====== ================================================================================
0      8      magic ``89 53 4E 41 49 4C 0D 0A`` = ``b"\x89SNAIL\r\n"``.  The high-bit first byte and
              the CR LF catch 7-bit and text-mode transfers, like PNG's signature.
8      1      format version, u8 = 1 to 5: writers use the oldest that holds the header (5 when
              some plane's calibration has feature gains, else 4 when some plane is calibrated, else
              3 when some plane adapts, else 2 when some plane has context, else 1)
9      v      ``H``: header length in bytes, varint, 1 <= H <= 65536 (``v`` = 1 to 3 bytes)
9+v    H      header fields (table below)
9+v+H  4      header CRC32, u32, over bytes 8 .. 9+v+H-1: the version byte, H and the header
13+v+H 4*N    payload: the coded words of plane 1, then of plane 2, ..., each word a u32; plane i
              has ``n_words`` words (from the header), N = the sum over the planes
end-4  4      payload CRC32, u32, over the 4*N payload bytes
====== ====== ================================================================================

The file ends right after the payload CRC: its exact length, ``9 + v + H + 4 + 4*N + 4``,
follows from the header, so a short file is "truncated" and a long one has "trailing data".

Header fields, in this order (``text`` is defined below):

================ ============= =====================================================================
field            encoding      meaning and range
================ ============= =====================================================================
width            varint        1..65535
height           varint        1..65535, and width * height <= 2**28
mode             u8            Pillow mode of the original image: 0 "L", 1 "1", 2 "LA", 3 "RGB",
                               4 "RGBA", 5 "P", 6 "PA"
pixel_crc32      u32           CRC32 of the original pixels (images.pixel_checksum)
plane count      u8            1..4, then for each plane, in payload order:
  channels       u8            image channels the stream codes: 0 "L", 1 "A", 2 "RGB", 3 "P"
  model_id       text          1..64 lowercase hex digits identifying the exact weights
  model_name     text          1..100 characters, human-readable model name
  tile_h         varint        1..65535
  tile_w         varint        1..65535
  context_above  varint        version 2 only (0 in version 1): 0..65535 rows above each tile that
                               its coding window also holds (codec/tiles.py, WindowPlan)
  context_left   varint        version 2 only (0 in version 1): 0..65535 columns to its left
  band           varint        version 2 only (1 in version 1): 1..65535 rows of windows coded one
                               after the other; 1 when context_above is 0
  adapt_windows  varint        versions 3 to 5 (0 before): 0..65535; 0: the model stays as it is;
                               otherwise it learns, every adapt_windows coded windows, from those
                               windows (codec/adaptation.py), and two more fields follow:
  adapt_steps    u8            1..255 Adam steps per update
  adapt_lr       f64           Adam's learning rate, IEEE 754 binary64, 0 < lr < 1
  calibrated     varint        versions 4 and 5 (0 before): 0..1024; 0: the model's outputs are
                               used as they are; otherwise the number K of the model's outputs,
                               each used as output * (1 + scale) + shift (codec/calibration.py):
  scale          K x f16       IEEE 754 binary16, finite, not -0
  shift          K x f16       the same
  features       varint        version 5 only, and only after K > 0: 0..1024; the number F of
                               features the output layer reads, each used as feature * (1 + gain)
                               (0: none)
  gain           F x f16       IEEE 754 binary16, finite, not -0
  n_words        varint        0..2**32-1, length of the coded stream in u32 words
exactness count  u8            0..32, then for each entry, in strictly increasing order of key
                               (by code points):
  key            u8 [text]     1 = "env", 2 = "threads" (well-known keys must use their code), or
                               0 followed by the key as text, 1..200 characters
  value          text          0..200 characters
extras count     u8            0..3, then for each field, in strictly increasing order of tag:
  tag            u8            which field, and its encoding:
  1              u8            constant_alpha, 0..255; modes LA, RGBA, PA, exactly when no plane
                               codes "A"
  2              u8 varint     palette (P and PA, required; forbidden otherwise): u8 bytes per
                 bytes         entry, 3 (palette_mode "RGB") or 4 ("RGBA"); varint entry count
                               0..256; the raw palette bytes
  3              varint(s)     transparency as numbers: P, PA: 1 varint, the transparent index
                               0..255; L, 1: 1 varint, the transparent grey 0..65535; RGB: 3
                               varints r, g, b, 0..65535; forbidden for other modes
  4              varint bytes  transparency as per-index alpha (P, PA only): varint length
                               1..256, then the alpha bytes
================ ============= =====================================================================

``text`` is a string: a varint ``n``, then, if n is even, n/2 bytes of UTF-8; if n is odd (n >= 3),
(n-1)/2 raw bytes standing for their lowercase hex digits (so a 16-hex-digit model id takes 9
bytes).  Writers use the hex form exactly for non-empty strings of an even number of lowercase hex
digits, and readers refuse the other choice.  No string may contain control characters (C0, DEL,
C1) or invalid UTF-8.  The header ends exactly after its last field.

In the Python API (`SnailFile.extras`) the extras keep the keys and value types of
images.DecomposedImage: "constant_alpha" int; "palette" lowercase hex str and "palette_mode"
"RGB"/"RGBA" (tag 2); "transparency" int (tag 3; a list [r, g, b] for RGB) or lowercase hex str
(tag 4).

The planes' channels concatenated, in order, must spell the mode's channels: "L" for L and 1,
"LA", "RGB", "RGBA", "P", "PA" -- without the final "A" when the alpha is constant.  So RGBA is
["RGB", "A"] or ["RGB"] + constant_alpha; 1 (bilevel) is ["L"] holding 0/255.

Every header has exactly one encoding (minimal varints, sorted keys and tags, canonical text), so
``write(read(data)) == data`` for every file ``read`` accepts.  Everything is checked before
anything is allocated: a header promising 60000 x 60000 pixels or 4 G words is refused (or found
truncated) without allocating more than the file itself.
"""

from __future__ import annotations

import math
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
    "MAX_ADAPT_WINDOWS",
    "MAX_ADAPT_STEPS",
    "MAX_CALIBRATION_OUTPUTS",
    "MAX_CALIBRATION_FEATURES",
    "BINARY16_MAX",
    "MODES",
    "MODE_CHANNELS",
    "PLANE_CHANNELS",
    "Plane",
    "SnailFile",
    "write",
    "read",
    "read_header",
    "describe",
    "file_size",
    "overhead",
]

MAGIC = b"\x89SNAIL\r\n"
VERSION = 5  # the newest; writers use the oldest version that holds the header
READABLE_VERSIONS = (1, 2, 3, 4, 5)
MAX_HEADER_BYTES = 1 << 16
MAX_SIDE = 65535
MAX_PIXELS = 1 << 28
MAX_PLANES = 4
MAX_ADAPT_WINDOWS = 65535
MAX_ADAPT_STEPS = 255
MAX_CALIBRATION_OUTPUTS = 1024
MAX_CALIBRATION_FEATURES = 1024
BINARY16_MAX = 65504.0  # the largest finite IEEE binary16 number
MAX_WORDS = (1 << 32) - 1
MAX_EXACTNESS_ENTRIES = 32
MAX_EXACTNESS_CHARS = 200
MAX_MODEL_NAME_CHARS = 100
MAX_MODEL_ID_CHARS = 64
MAX_PALETTE_ENTRIES = 256

#: Pillow mode -> the channels its planes must spell, in order (before dropping a constant alpha).
MODE_CHANNELS = {"L": "L", "1": "L", "LA": "LA", "RGB": "RGB", "RGBA": "RGBA", "P": "P", "PA": "PA"}
MODES = tuple(MODE_CHANNELS)  # index = the mode's code in the header
#: What one plane may code; index = the channels' code in the header.
PLANE_CHANNELS = ("L", "A", "RGB", "P")
#: Exactness keys stored as a one-byte code (index + 1) instead of as text.
KNOWN_EXACTNESS_KEYS = ("env", "threads")

_TAG_CONSTANT_ALPHA, _TAG_PALETTE, _TAG_TRANSPARENCY, _TAG_ALPHA_TABLE = 1, 2, 3, 4
_MAX_EXTRAS = 3  # constant_alpha, palette and one transparency at most
_VARINT_MAX_BYTES = 5
_U32 = struct.Struct("<I")
_F64 = struct.Struct("<d")
_F16 = struct.Struct("<e")
_EXTRA_KEYS = frozenset({"constant_alpha", "palette", "palette_mode", "transparency"})
_BAD_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_HEX = re.compile(r"(?:[0-9a-f]{2})*\Z")
_MODEL_ID = re.compile(r"[0-9a-f]{1,%d}\Z" % MAX_MODEL_ID_CHARS)


@dataclass(frozen=True, eq=False)
class Plane:
    """One coded stream: the pixels of some channels of the image, coded with one model."""

    channels: str  # which image channels: "RGB", "L", "A" or "P" (palette indices)
    model_id: str  # hex digest identifying the exact weights (e.g. first 16 hex of sha256)
    model_name: str  # human-readable name (e.g. "snail-rgb-small"), for messages
    tile: tuple[int, int]  # (tile_h, tile_w) used for coding
    words: np.ndarray = field(repr=False)  # uint32 coded stream; may be empty
    context: tuple[int, int] = (0, 0)  # (rows above, columns left) each tile's window also holds
    band: int = 1  # rows of windows per band (see codec/tiles.py, WindowPlan)
    adaptation: tuple[int, int, float] | None = None  # (windows, steps, lr) of codec/adaptation.py
    #: (scale, shift) or (scale, shift, feature gain) of codec/calibration.py; an empty feature gain is dropped
    calibration: tuple[tuple[float, ...], ...] | None = None

    def __post_init__(self) -> None:
        for name in ("tile", "context", "adaptation"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if isinstance(self.calibration, (list, tuple)):
            calibration = tuple(tuple(v) if isinstance(v, (list, tuple)) else v for v in self.calibration)
            object.__setattr__(self, "calibration", calibration[:2] if calibration[2:] == ((),) else calibration)
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
            and tuple(self.context) == tuple(other.context)
            and self.band == other.band
            and self.adaptation == other.adaptation
            and self.calibration == other.calibration
            and self.words.shape == other.words.shape
            and bool(np.array_equal(self.words, other.words))
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Plane(channels={self.channels!r}, model_id={self.model_id!r}, model_name={self.model_name!r}, "
            f"tile={self.tile!r}, context={self.context!r}, band={self.band!r}, adaptation={self.adaptation!r}, "
            f"calibration={'None' if self.calibration is None else f'<{_calibration_size(self.calibration)}>'}, "
            f"n_words={self.n_words})"
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
# validation of the header's values (shared by write and read, so write never emits what read refuses)


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
        return "None"
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
        return "a dict"
    return type(obj).__name__


def _check_header(obj: dict) -> None:
    """Check the header's values completely; raise FormatError('header is invalid: ...').

    ``obj`` has the keys width, height, mode, pixel_crc32, planes (a list of dicts with channels,
    model_id, model_name, tile, context, band, adaptation, calibration, n_words), exactness and extras, with the API's value types.
    """
    width = _int(obj["width"], "width", 1, MAX_SIDE)
    height = _int(obj["height"], "height", 1, MAX_SIDE)
    if width * height > MAX_PIXELS:
        raise _bad(f"{width} x {height} pixels is more than the {MAX_PIXELS} this format allows")
    mode = obj["mode"]
    if type(mode) is not str or mode not in MODE_CHANNELS:
        shown = repr(mode)[:40] if type(mode) is str else _jtype(mode)
        raise _bad(f"mode {shown} is not one of {', '.join(MODES)}")
    _int(obj["pixel_crc32"], "pixel_crc32", 0, 0xFFFFFFFF)

    planes = obj["planes"]
    if not 1 <= len(planes) <= MAX_PLANES:
        raise _bad(f"there must be 1 to {MAX_PLANES} planes, not {len(planes)}")
    for i, p in enumerate(planes):
        where = f"plane {i + 1}"
        ch = p["channels"]
        if type(ch) is not str or ch not in PLANE_CHANNELS:
            shown = repr(ch)[:40] if type(ch) is str else _jtype(ch)
            raise _bad(f"{where} channels {shown} is not one of {', '.join(PLANE_CHANNELS)}")
        mid = _str(p["model_id"], f"{where} model_id", 1, MAX_MODEL_ID_CHARS)
        if not _MODEL_ID.match(mid):
            raise _bad(f"{where} model_id must be lowercase hexadecimal")
        _str(p["model_name"], f"{where} model_name", 1, MAX_MODEL_NAME_CHARS)
        tile = p["tile"]
        if type(tile) not in (list, tuple) or len(tile) != 2:
            raise _bad(f"{where} tile must be a pair (tile_h, tile_w)")
        _int(tile[0], f"{where} tile height", 1, MAX_SIDE)
        _int(tile[1], f"{where} tile width", 1, MAX_SIDE)
        context = p["context"]
        if type(context) not in (list, tuple) or len(context) != 2:
            raise _bad(f"{where} context must be a pair (above, left)")
        _int(context[0], f"{where} context above", 0, MAX_SIDE)
        _int(context[1], f"{where} context left", 0, MAX_SIDE)
        _int(p["band"], f"{where} band", 1, MAX_SIDE if context[0] else 1)
        _check_adaptation(p["adaptation"], where)
        _check_calibration(p["calibration"], where)
        _int(p["n_words"], f"{where} n_words", 0, MAX_WORDS)

    ex = obj["exactness"]
    if type(ex) is not dict:
        raise _bad(f"exactness must be a dict, not {_jtype(ex)}")
    if len(ex) > MAX_EXACTNESS_ENTRIES:
        raise _bad(f"exactness has {len(ex)} entries, at most {MAX_EXACTNESS_ENTRIES} are allowed")
    for k, v in ex.items():
        _str(k, "an exactness key", 1, MAX_EXACTNESS_CHARS)
        _str(v, f"exactness[{k!r}]", 0, MAX_EXACTNESS_CHARS)

    extras = obj["extras"]
    if type(extras) is not dict:
        raise _bad(f"extras must be a dict, not {_jtype(extras)}")
    unknown = [k for k in extras if k not in _EXTRA_KEYS]
    if unknown:
        shown = ", ".join(repr(k)[:40] for k in sorted(unknown, key=str)[:5])
        raise _bad(f"unknown field(s) in extras: {shown}")
    _check_extras(mode, extras)

    expected = MODE_CHANNELS[mode]
    if "constant_alpha" in extras:
        expected = expected[:-1]
    spelled = "".join(p["channels"] for p in planes)
    if spelled != expected:
        listed = " + ".join(repr(p["channels"]) for p in planes)
        raise _bad(f"planes {listed} do not spell the channels {expected!r} of mode {mode}")


def _check_adaptation(adaptation: Any, where: str) -> None:
    if adaptation is None:
        return
    if type(adaptation) not in (list, tuple) or len(adaptation) != 3:
        raise _bad(f"{where} adaptation must be None or (windows, steps, lr)")
    windows, steps, lr = adaptation
    _int(windows, f"{where} adapt_windows", 1, MAX_ADAPT_WINDOWS)
    _int(steps, f"{where} adapt_steps", 1, MAX_ADAPT_STEPS)
    if type(lr) is not float or not 0.0 < lr < 1.0:  # also refuses NaN
        raise _bad(f"{where} adapt_lr must be a number between 0 and 1 (exclusive)")


def _calibration_size(calibration: tuple) -> str:
    """'100 outputs', or '100 outputs, 48 features' (for messages)."""
    features = f", {len(calibration[2])} features" if len(calibration) > 2 else ""
    return f"{len(calibration[0])} outputs{features}"


def _check_calibration(calibration: Any, where: str) -> None:
    if calibration is None:
        return
    if type(calibration) not in (list, tuple) or len(calibration) not in (2, 3):
        raise _bad(f"{where} calibration must be None, (scale, shift) or (scale, shift, feature gain)")
    scale, shift, *gain = calibration
    if type(scale) not in (list, tuple) or type(shift) not in (list, tuple) or len(scale) != len(shift):
        raise _bad(f"{where} calibration scale and shift must be lists of the same length")
    if not 1 <= len(scale) <= MAX_CALIBRATION_OUTPUTS:
        raise _bad(f"{where} calibration has {len(scale)} outputs, not 1..{MAX_CALIBRATION_OUTPUTS}")
    if gain and (type(gain[0]) not in (list, tuple) or not 1 <= len(gain[0]) <= MAX_CALIBRATION_FEATURES):
        raise _bad(f"{where} calibration feature gain must be a list of 1..{MAX_CALIBRATION_FEATURES} numbers")
    for name, values in (("scale", scale), ("shift", shift), ("feature gain", gain[0] if gain else ())):
        for v in values:
            if type(v) is not float or not _is_binary16(v):
                raise _bad(f"{where} calibration {name} values must be finite binary16 numbers (not -0)")


def _is_binary16(v: float) -> bool:
    """Whether v is exactly a finite IEEE binary16 number other than -0 (one encoding per value)."""
    if not math.isfinite(v) or abs(v) > BINARY16_MAX or math.copysign(1.0, v) < 0 and v == 0.0:
        return False
    return _F16.unpack(_F16.pack(v))[0] == v


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
        pal = _hex(extras["palette"], "palette", MAX_PALETTE_ENTRIES * len(pmode))
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
    """numpy scalars -> int, tuples -> lists (anything else is left for the check)."""
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    return x


def _header_obj(f: SnailFile) -> dict:
    """The header values of f, checked (ValueError if f is not a valid SnailFile)."""
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
                "context": _plain(p.context),
                "band": _plain(p.band),
                "adaptation": _plain(p.adaptation),
                "calibration": _plain(p.calibration),
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
        "extras": _plain(dict(f.extras)) if isinstance(f.extras, dict) else f.extras,
    }
    try:
        _check_header(obj)
    except FormatError as e:
        raise ValueError(f"invalid SnailFile: {str(e).removeprefix('header is invalid: ')}") from None
    return obj


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _text(s: str) -> bytes:
    if s and _HEX.match(s):
        raw = bytes.fromhex(s)
        return _varint(2 * len(raw) + 1) + raw
    raw = s.encode("utf-8")
    return _varint(2 * len(raw)) + raw


def _version(obj: dict) -> int:
    """The oldest format version that holds the header: 5 if some plane's calibration has feature gains,
    else 4 if some plane is calibrated, else 3 if some plane adapts, else 2 if some plane has context,
    else 1."""
    if any(p["calibration"] is not None and len(p["calibration"]) > 2 for p in obj["planes"]):
        return 5
    if any(p["calibration"] is not None for p in obj["planes"]):
        return 4
    if any(p["adaptation"] is not None for p in obj["planes"]):
        return 3
    return 2 if any(tuple(p["context"]) != (0, 0) for p in obj["planes"]) else 1


def _encode_header(obj: dict) -> bytes:
    """The header bytes of a checked header object (see the module docstring)."""
    out = bytearray()
    out += _varint(obj["width"])
    out += _varint(obj["height"])
    out.append(MODES.index(obj["mode"]))
    out += _U32.pack(obj["pixel_crc32"])
    out.append(len(obj["planes"]))
    version = _version(obj)
    for p in obj["planes"]:
        out.append(PLANE_CHANNELS.index(p["channels"]))
        out += _text(p["model_id"])
        out += _text(p["model_name"])
        out += _varint(p["tile"][0])
        out += _varint(p["tile"][1])
        if version >= 2:
            out += _varint(p["context"][0])
            out += _varint(p["context"][1])
            out += _varint(p["band"])
        if version >= 3:
            if p["adaptation"] is None:
                out += _varint(0)
            else:
                windows, steps, lr = p["adaptation"]
                out += _varint(windows) + bytes((steps,)) + _F64.pack(lr)
        if version >= 4:
            if p["calibration"] is None:
                out += _varint(0)
            else:
                scale, shift, *gain = p["calibration"]
                out += _varint(len(scale)) + b"".join(_F16.pack(v) for v in (*scale, *shift))
                if version >= 5:
                    gain = gain[0] if gain else ()
                    out += _varint(len(gain)) + b"".join(_F16.pack(v) for v in gain)
        out += _varint(p["n_words"])
    ex = obj["exactness"]
    out.append(len(ex))
    for key in sorted(ex):
        if key in KNOWN_EXACTNESS_KEYS:
            out.append(KNOWN_EXACTNESS_KEYS.index(key) + 1)
        else:
            out.append(0)
            out += _text(key)
        out += _text(ex[key])
    extras = obj["extras"]
    fields = []
    if "constant_alpha" in extras:
        fields.append(bytes((_TAG_CONSTANT_ALPHA, extras["constant_alpha"])))
    if "palette" in extras:
        pal = bytes.fromhex(extras["palette"])
        bpe = len(extras["palette_mode"])
        fields.append(bytes((_TAG_PALETTE, bpe)) + _varint(len(pal) // bpe) + pal)
    if "transparency" in extras:
        t = extras["transparency"]
        if isinstance(t, str):
            alpha = bytes.fromhex(t)
            fields.append(bytes((_TAG_ALPHA_TABLE,)) + _varint(len(alpha)) + alpha)
        else:
            values = t if isinstance(t, list) else [t]
            fields.append(bytes((_TAG_TRANSPARENCY,)) + b"".join(_varint(v) for v in values))
    out.append(len(fields))
    for chunk in fields:
        out += chunk
    return bytes(out)


def _header_bytes(f: SnailFile) -> tuple[int, bytes]:
    """The format version and the header bytes of f."""
    obj = _header_obj(f)
    header = _encode_header(obj)
    if len(header) > MAX_HEADER_BYTES:  # pragma: no cover - the field limits keep headers far smaller
        raise ValueError(f"invalid SnailFile: header of {len(header)} bytes exceeds {MAX_HEADER_BYTES}")
    return _version(obj), header


def write(f: SnailFile) -> bytes:
    """Serialize f.  Raises ValueError (TypeError) if f would not be readable back."""
    version, header = _header_bytes(f)
    checked = bytes((version,)) + _varint(len(header)) + header
    payload = b"".join(p.words.astype("<u4", copy=False).tobytes() for p in f.planes)
    return b"".join((MAGIC, checked, _U32.pack(zlib.crc32(checked)), payload, _U32.pack(zlib.crc32(payload))))


def overhead(f: SnailFile) -> int:
    """Bytes of write(f) that are not coded words: magic, version, header and both checksums."""
    _, header = _header_bytes(f)
    return len(MAGIC) + 1 + len(_varint(len(header))) + len(header) + 4 + 4


def file_size(f: SnailFile) -> int:
    """The length in bytes of write(f), without building it."""
    return overhead(f) + sum(4 * p.n_words for p in f.planes)


# --------------------------------------------------------------------------------------------
# reading


def _truncated() -> FormatError:
    return FormatError("file is truncated")


class _Fields:
    """Reads the header's fields from bytes whose length and checksum were already verified."""

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def take(self, n: int, name: str) -> bytes:
        if n > len(self.data) - self.pos:
            raise _bad(f"it ends in the middle of {name}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self, name: str) -> int:
        return self.take(1, name)[0]

    def u32(self, name: str) -> int:
        return _U32.unpack(self.take(4, name))[0]

    def f64(self, name: str) -> float:
        return _F64.unpack(self.take(8, name))[0]

    def adaptation(self, where: str) -> tuple[int, int, float] | None:
        windows = self.varint(f"{where} adapt_windows")
        if not windows:
            return None
        return windows, self.u8(f"{where} adapt_steps"), self.f64(f"{where} adapt_lr")

    def calibration(self, where: str, version: int) -> tuple[tuple[float, ...], ...] | None:
        outputs = self.varint(f"{where} calibration count")
        if not outputs:
            return None
        if outputs > MAX_CALIBRATION_OUTPUTS:
            raise _bad(f"{where} calibration has {outputs} outputs, not 1..{MAX_CALIBRATION_OUTPUTS}")
        numbers = self.binary16s(2 * outputs, f"{where} calibration")
        scale_shift = numbers[:outputs], numbers[outputs:]
        features = self.varint(f"{where} calibration feature count") if version >= 5 else 0
        if features > MAX_CALIBRATION_FEATURES:
            raise _bad(f"{where} calibration has {features} features, not 0..{MAX_CALIBRATION_FEATURES}")
        return (*scale_shift, self.binary16s(features, f"{where} calibration feature gain")) if features else scale_shift

    def binary16s(self, count: int, name: str) -> tuple[float, ...]:
        return tuple(v for (v,) in _F16.iter_unpack(self.take(_F16.size * count, name)))

    def varint(self, name: str) -> int:
        value = 0
        for i in range(_VARINT_MAX_BYTES):
            b = self.u8(name)
            value |= (b & 0x7F) << (7 * i)
            if not b & 0x80:
                if b == 0 and i:
                    raise _bad(f"{name} is not minimally encoded")
                return value
        raise _bad(f"{name} is longer than {_VARINT_MAX_BYTES} bytes")

    def text(self, name: str) -> str:
        n = self.varint(f"the length of {name}")
        size = n >> 1
        raw = self.take(size, name)
        if n & 1:
            if not size:
                raise _bad(f"{name} has an invalid length code (1)")
            return raw.hex()
        try:
            s = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _bad(f"{name} is not valid UTF-8") from None
        if s and _HEX.match(s):
            raise _bad(f"{name} is stored as text but must be stored as packed hex digits (not canonical)")
        return s

    def known_code(self, name: str, table: tuple[str, ...]) -> str:
        code = self.u8(name)
        if code >= len(table):
            raise _bad(f"{name} code {code} is not one of 0..{len(table) - 1} ({', '.join(table)})")
        return table[code]


def _decode_header(data: bytes, version: int) -> dict:
    """Parse the header's fields (FormatError for anything malformed); values checked separately."""
    r = _Fields(data)
    obj: dict[str, Any] = {}
    obj["width"] = r.varint("width")
    obj["height"] = r.varint("height")
    mode = obj["mode"] = r.known_code("mode", MODES)
    obj["pixel_crc32"] = r.u32("pixel_crc32")
    count = r.u8("the plane count")
    if not 1 <= count <= MAX_PLANES:
        raise _bad(f"there must be 1 to {MAX_PLANES} planes, not {count}")
    planes = []
    for i in range(count):
        where = f"plane {i + 1}"
        planes.append(
            {
                "channels": r.known_code(f"{where} channels", PLANE_CHANNELS),
                "model_id": r.text(f"{where} model_id"),
                "model_name": r.text(f"{where} model_name"),
                "tile": (r.varint(f"{where} tile height"), r.varint(f"{where} tile width")),
                "context": (r.varint(f"{where} context above"), r.varint(f"{where} context left")) if version >= 2 else (0, 0),
                "band": r.varint(f"{where} band") if version >= 2 else 1,
                "adaptation": r.adaptation(where) if version >= 3 else None,
                "calibration": r.calibration(where, version) if version >= 4 else None,
                "n_words": r.varint(f"{where} n_words"),
            }
        )
    oldest = _version({"planes": planes})
    if oldest != version:  # one encoding per header: the rule writers follow
        raise _bad(f"the file must be version {oldest}, not {version}: the oldest version that holds its header")
    obj["planes"] = planes

    count = r.u8("the exactness count")
    if count > MAX_EXACTNESS_ENTRIES:
        raise _bad(f"exactness has {count} entries, at most {MAX_EXACTNESS_ENTRIES} are allowed")
    exactness: dict[str, str] = {}
    previous = None
    for i in range(count):
        code = r.u8(f"exactness key {i + 1}")
        if code == 0:
            key = r.text(f"exactness key {i + 1}")
            if key in KNOWN_EXACTNESS_KEYS:
                code = KNOWN_EXACTNESS_KEYS.index(key) + 1
                raise _bad(f"exactness key {key!r} must be stored as its code {code} (not canonical)")
        elif code <= len(KNOWN_EXACTNESS_KEYS):
            key = KNOWN_EXACTNESS_KEYS[code - 1]
        else:
            raise _bad(f"exactness key code {code} is unknown (0..{len(KNOWN_EXACTNESS_KEYS)} are defined)")
        if previous is not None and key <= previous:
            if key == previous:
                raise _bad(f"exactness key {key!r:.60} appears twice")
            raise _bad("exactness keys are not in increasing order")
        previous = key
        exactness[key] = r.text(f"exactness[{key!r:.60}]")
    obj["exactness"] = exactness

    count = r.u8("the extras count")
    if count > _MAX_EXTRAS:
        raise _bad(f"extras has {count} fields, at most {_MAX_EXTRAS} are allowed")
    extras: dict[str, Any] = {}
    last = 0
    for _ in range(count):
        tag = r.u8("an extras tag")
        if not _TAG_CONSTANT_ALPHA <= tag <= _TAG_ALPHA_TABLE:
            raise _bad(f"unknown extras field (tag {tag})")
        if tag <= last:
            raise _bad(f"extras field tag {tag} " + ("appears twice" if tag == last else "is out of order"))
        last = tag
        if tag == _TAG_CONSTANT_ALPHA:
            extras["constant_alpha"] = r.u8("constant_alpha")
        elif tag == _TAG_PALETTE:
            bpe = r.u8("the palette entry size")
            if bpe not in (3, 4):
                raise _bad(f"palette entry size {bpe} is not 3 (RGB) or 4 (RGBA)")
            entries = r.varint("the palette entry count")
            if entries > MAX_PALETTE_ENTRIES:
                raise _bad(f"palette has {entries} entries, at most {MAX_PALETTE_ENTRIES} are allowed")
            extras["palette"] = r.take(entries * bpe, "the palette").hex()
            extras["palette_mode"] = "RGB" if bpe == 3 else "RGBA"
        elif tag == _TAG_TRANSPARENCY:
            if mode == "RGB":
                extras["transparency"] = [r.varint(f"transparency {c}") for c in "rgb"]
            elif mode in ("L", "1", "P", "PA"):
                extras["transparency"] = r.varint("transparency")
            else:
                raise _bad(f"transparency is not allowed for mode {mode}")
        else:
            if "transparency" in extras:
                raise _bad("transparency is given twice")
            if mode not in ("P", "PA"):
                raise _bad(f"transparency as per-index alpha is not allowed for mode {mode}")
            n = r.varint("the transparency length")
            if n > 256:
                raise _bad(f"transparency has {n} entries, at most 256 are allowed")
            extras["transparency"] = r.take(n, "transparency").hex()
    obj["extras"] = extras

    left = len(data) - r.pos
    if left:
        raise _bad(f"{left} unexpected byte{'s' if left != 1 else ''} after its last field")
    return obj


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
    pos = len(MAGIC)
    if size <= pos:
        raise _truncated()
    version = view[pos]
    if version not in READABLE_VERSIONS:
        readable = ", ".join(str(v) for v in READABLE_VERSIONS)
        raise FormatError(
            f"unsupported .snail format version {version}; this build of snailcompress reads version {readable}"
        )
    pos += 1
    hlen = 0
    for i in range(3):  # the header length: a varint of at most 3 bytes (MAX_HEADER_BYTES < 2**21)
        if pos >= size:
            raise _truncated()
        b = view[pos]
        pos += 1
        hlen |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            if b == 0 and i:
                raise FormatError("header is corrupt (its length is not minimally encoded)")
            break
    else:
        raise FormatError(f"header is corrupt (it claims more than {MAX_HEADER_BYTES} bytes)")
    if hlen > MAX_HEADER_BYTES:
        raise FormatError(f"header is corrupt (it claims {hlen} bytes; at most {MAX_HEADER_BYTES} are allowed)")
    if hlen == 0:
        raise FormatError("header is corrupt (it is empty)")
    if size < pos + hlen + 4:
        raise _truncated()
    checked = bytes(view[len(MAGIC) : pos + hlen])
    (hcrc,) = _U32.unpack_from(view, pos + hlen)
    if zlib.crc32(checked) != hcrc:
        raise FormatError("header is corrupt (checksum mismatch)")

    obj = _decode_header(checked[pos - len(MAGIC) :], version)
    _check_header(obj)

    counts = [p["n_words"] for p in obj["planes"]]
    start = pos + hlen + 4
    expected = start + 4 * sum(counts) + 4
    if size < expected:
        raise _truncated()
    if size > expected:
        extra = size - expected
        raise FormatError(
            f"file has {extra} byte{'s' if extra != 1 else ''} of unexpected data after its end (trailing garbage)"
        )
    if verify_payload:
        (pcrc,) = _U32.unpack_from(view, expected - 4)
        if zlib.crc32(view[start : expected - 4]) != pcrc:
            raise FormatError("payload is corrupt (checksum mismatch)")

    planes = []
    pos = start
    for p, n in zip(obj["planes"], counts):
        words = np.frombuffer(view, dtype="<u4", count=n, offset=pos)
        if verify_payload or words.dtype != np.uint32:
            words = words.astype(np.uint32)  # a private, aligned, native-endian copy
        pos += 4 * n
        planes.append(
            Plane(channels=p["channels"], model_id=p["model_id"], model_name=p["model_name"], tile=p["tile"],
                  words=words, context=p["context"], band=p["band"], adaptation=p["adaptation"],
                  calibration=p["calibration"])
        )
    return SnailFile(
        width=obj["width"],
        height=obj["height"],
        mode=obj["mode"],
        planes=tuple(planes),
        pixel_crc32=obj["pixel_crc32"],
        exactness=obj["exactness"],
        extras=obj["extras"],
    )


def read(data: bytes) -> SnailFile:
    """Parse and fully verify a .snail file.  Raises FormatError, and only FormatError, if invalid."""
    return _parse(data, verify_payload=True)


def read_header(data: bytes) -> SnailFile:
    """Like read, but does not verify the payload checksum; the words are read-only views of data.

    Meant for `snailcompress info`: everything in the header is checked, and so is the file length,
    but a payload bit flip goes unnoticed.
    """
    return _parse(data, verify_payload=False)


# --------------------------------------------------------------------------------------------
# describing


def _fmt_bytes(n: int) -> str:
    if n < 10_000:
        return f"{n:,} byte{'s' if n != 1 else ''}"
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
        f".snail file, format version {_version(_header_obj(f))}, {_fmt_bytes(total)}",
        f"image:        {f.width} x {f.height} pixels, mode {f.mode}",
        f"size:         {8 * total / pixels:.4f} bits per pixel in all, {8 * payload / pixels:.4f} in the coded streams",
        f"container:    {_fmt_bytes(total - payload)} of header and checksums",
        f"pixel CRC32:  {f.pixel_crc32:08x}",
        f"planes:       {len(f.planes)}",
    ]
    for i, p in enumerate(f.planes, 1):
        bpv = 32 * p.n_words / (pixels * len(p.channels))
        lines.append(
            f"  {i}. {p.channels:<4} model {p.model_name} (id {p.model_id}), tiles {p.tile[0]}x{p.tile[1]}"
            + (f" with context {p.context[0]} above, {p.context[1]} left" if any(p.context) else "")
            + (f" in bands of {p.band}" if p.band > 1 else "")
            + (f", adapting (Adam, {p.adaptation[1]} step(s) at lr {p.adaptation[2]:g} every {p.adaptation[0]} windows)"
               if p.adaptation else "")
            + (f", calibrated ({_calibration_size(p.calibration)})" if p.calibration else "") + ", "
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
