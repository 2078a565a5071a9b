r"""The .snail container: one losslessly coded image per file.

This module only moves bytes; it knows nothing about the model (it must not import torch) and can
be fuzzed on its own.  `read` raises `FormatError` for every invalid input and nothing else.

File format, version 6
======================

A small fixed header and optional tagged fields, each written only where it differs from its
default.  A 768 x 512 RGB image coded with the defaults (one plane, tiles, context and band as the
encoder picks them unless told otherwise, no calibration, no model name) carries 24 bytes besides
its coded words: 4 of magic, 1 of version, 1 of header length, 14 of header (width 2, height 2,
mode 1, pixel CRC32 4, arithmetic 1, model id 4) and 4 of checksum; a 32 x 32 one 22.  A plane
need not be coded by the model (see "Coding methods" below): a 64 x 64 L image stored raw carries
17 bytes besides its 4096 pixel bytes (no arithmetic, no model id).

Fixed-size integers (u8, u32) are unsigned little-endian.  ``varint`` is unsigned LEB128: 7 bits a
byte, least significant group first, the high bit set on every byte but the last; at most 5 bytes
and minimal (no redundant final ``00`` group), so every number has exactly one encoding.  CRC32 is
zlib's / PNG's CRC-32 (``zlib.crc32``).  ``f16`` is an IEEE 754 binary16 number, finite and not -0
(so every value has one encoding).

====== ====== ================================================================================
offset size   field
====== ====== ================================================================================
0      4      magic ``89 53 4E 4C`` = ``b"\x89SNL"``; the high-bit first byte catches 7-bit
              transfers
4      1      format version, u8 = 6
5      v      ``H``: header length in bytes, varint, 1 <= H <= 65536 (``v`` = 1 to 3 bytes)
5+v    H      header: the fixed fields, then the tagged fields (tables below)
5+v+H  P      payload: the data of plane 1, then of plane 2: a plane coded by the model is
              words, each a u32; a plane coded otherwise is bytes
end-4  4      CRC32, u32, over bytes 4 .. end-5: the version byte, H, the header and the payload
====== ====== ================================================================================

The header gives the length of every plane but the last (in words for the model, in bytes
otherwise); the last plane has what is left, ``length - 5 - v - H - 4`` bytes less the others',
which for a model plane must be a whole number of words (0..2**32-1 of either).  So a file shorter
than ``5 + v + H + (the other planes' bytes) + 4`` bytes is "truncated", and one whose length
leaves a part of a word is truncated or has trailing data; any other truncation or extension, like
any corruption, is caught by the CRC (which the reader checks before it reads the header).

Fixed header fields, in this order:

================ ========= =========================================================================
field            encoding  meaning and range
================ ========= =========================================================================
width            varint    1..65535
height           varint    1..65535, and width * height <= 2**28
mode             u8        bits 0-3, the mode code: the Pillow mode of the original image, 0 "L",
                           1 "1", 2 "LA", 3 "RGB", 4 "RGBA", 5 "P", 6 "PA"; plus 8 (so 10, 12 or
                           14) for LA, RGBA and PA images whose alpha is one constant value, not
                           coded (the constant_alpha field holds it).  Bits 4-5: the coding method
                           of plane 1, bits 6-7: that of plane 2 (0 where there is one plane):
                           0 model, 1 stored, 2 deflate, 3 bilevel (see below).  A file whose
                           planes are all coded by the model has the mode code alone
pixel_crc32      u32       CRC32 of the original pixels (images.pixel_checksum)
arithmetic       u8        1..255: the version of the integer arithmetic that coded the model's
                           planes (the container checks only the range; a decoder refuses a
                           version it does not implement).  Present only where a plane is coded
                           by the model
then for each plane, in payload order:
  model_id       4 bytes   the first 32 bits of the id of the model that coded it (in the API, 8
                           lowercase hex digits); only for a plane coded by the model
  n_words        varint    0..2**32-1, the plane's length: its coded words for a model plane, its
                           bytes for any other; every plane but the last
================ ========= =========================================================================

The planes, their number and their channels follow from the mode code: "L" for L and 1 (1 holds
0/255), ["L", "A"] for LA, "RGB", ["RGB", "A"] for RGBA, "P", ["P", "A"] for PA -- without the
final "A" when the alpha is constant.  A plane coded by the model is coded over tiles with
context (codec/tiles.py, WindowPlan).

Coding methods (codec/methods.py, codec/bilevel.py; the encoder keeps the smallest per plane):

=========== ====================================================================================
method      the plane's data
=========== ====================================================================================
0 model     the range coder's words, coded with the model's integer tables (codec/coder.py)
1 stored    the pixels, raw: height rows of width pixels of the plane's channels, interleaved,
            one byte each; for mode "1" (a plane of 0 and 255) one bit a pixel (1 for 255), most
            significant bit first, each row padded with 0 bits to a whole byte.  Exactly that
            many bytes
2 deflate   a zlib stream of PNG-filtered rows (the data of a PNG's IDAT chunks), as PNG reads
            it for a non-interlaced image of the plane's width and height, of colour type and
            bit depth: RGB truecolour 8; mode "1" greyscale 1 (a sample 1 is 255); P indexed,
            1, 2 or 4 where the palette field has at most 2, 4 or 16 entries, else 8; L and A
            greyscale 8.  The A plane of an LA or RGBA image may be deflated in 0 bytes
            where plane 1 is deflated: plane 1's stream then holds both, the image's
            channels interleaved, as in a PNG of the image (greyscale with alpha, or
            truecolour with alpha, 8).  zlib's output is not part of the format: any stream
            that decodes so is a valid plane (the pixel checksum still checks the pixels)
3 bilevel   a plane of one channel (L, A or P) holding only 0 and 255: the range coder's
            words (a whole number of them, so a multiple of 4 bytes) of an adaptive binary
            context model (codec/bilevel.py, part of this format)
=========== ====================================================================================

The per-plane tagged fields (tags 1 to 5) belong to a model plane: a plane coded otherwise has none.

Then tagged fields, until the header ends.  Each is ``tag`` u8, ``length`` varint (the bytes of its
content), then its content, which must be exactly that long.  The content of a per-plane field
starts with the plane's index, u8 (0 = the first plane).  Fields come in strictly increasing order
of (tag, plane index), so each appears at most once (per plane).  A field is written only where its
value differs from its default, and a reader refuses one that holds its default: one encoding per
file.  A tag not in this table is refused as "written by a newer snailcompress".

=== ================== ===== ======================================================= =========
tag field              plane content after the plane index (per-plane fields)        default
=== ================== ===== ======================================================= =========
1   model_name         yes   the model's name, for messages: UTF-8 text (the rest    none
                             of the field), 1..100 characters, no control characters
                             (C0, DEL, C1)
2   tile               yes   tile_h varint, tile_w varint, 1..65535 each             (32, 32)
3   context            yes   above varint, left varint, 0..65535 each: the rows      (2, 2)
                             above and the columns left of each tile that its coding
                             window also holds
4   band               yes   varint 1..65535: rows of windows per band; 1 where      see below
                             context above is 0 (the default may be larger)
5   calibration        yes   K varint 1..1024, then K f16 scales and K f16 shifts:   none
                             the model's K outputs are used as output * (1 + scale)
                             + shift; then F varint 0..1024 and F f16 feature gains:
                             the F features its output layer reads are used as
                             feature * (1 + gain) (codec/calibration.py)
6   constant_alpha     no    u8 0..255; present exactly when the mode code has 8     --
                             added
7   palette            no    u8 bytes per entry, 3 (palette_mode "RGB") or 4         --
                             ("RGBA"); varint entry count 0..256; the entries.
                             Required for P and PA, forbidden otherwise
8   transparency       no    as numbers: P, PA: 1 varint, the transparent index      none
                             0..255; L, 1: 1 varint, the transparent grey 0..65535;
                             RGB: 3 varints r, g, b, 0..65535; forbidden otherwise
9   transparency alpha no    per-index alpha (P, PA only; not with tag 8): varint    none
                             length 1..256, then the alpha bytes
=== ================== ===== ======================================================= =========

The default band is ``codec.tiles.default_band(height, width, tile, context)`` with the plane's
tile and context: that function is part of this format (changing it changes what files mean).

In the Python API, `Plane` holds the per-plane fields (``band`` is the actual number once a
`SnailFile` holds the plane: None, the default, is resolved there) and its coding ``method``; a
plane not coded by the model (`Plane.coded`) has its bytes in ``data``, no words and no model id.
`SnailFile.arithmetic` is None exactly where no plane is the model's.  `SnailFile.extras` keeps
the keys and value types of images.DecomposedImage: "constant_alpha" int; "palette" lowercase hex
str and "palette_mode" "RGB"/"RGBA" (tag 7); "transparency" int (tag 8; a list [r, g, b] for RGB)
or lowercase hex str (tag 9).

Every file has exactly one encoding (minimal varints, fields in order and only where not default),
so ``write(read(data)) == data`` for every file ``read`` accepts.  (The container checks a plane's
data only for its length; the method's decoder reads the rest, and the pixel checksum is checked
after every decode.)  Everything is checked before
anything is allocated: a header promising 60000 x 60000 pixels or 4 G words is refused (or found
truncated) without allocating more than the file itself.

Files of snailcompress 0.1 (magic ``b"\x89SNAIL\r\n"``, format versions 1 to 5) are recognised
and refused with a message that names the release that reads them.
"""

from __future__ import annotations

import dataclasses
import math
import re
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from snailcompress.codec.tiles import default_band
from snailcompress.errors import FormatError

__all__ = [
    "MAGIC",
    "VERSION",
    "MAX_HEADER_BYTES",
    "MAX_SIDE",
    "MAX_PIXELS",
    "MAX_WORDS",
    "MAX_CALIBRATION_OUTPUTS",
    "MAX_CALIBRATION_FEATURES",
    "MAX_MODEL_NAME_CHARS",
    "BINARY16_MAX",
    "DEFAULT_TILE",
    "DEFAULT_CONTEXT",
    "MODES",
    "MODE_CHANNELS",
    "PLANE_CHANNELS",
    "METHODS",
    "Plane",
    "SnailFile",
    "plane_channels",
    "palette_entries",
    "stored_size",
    "write",
    "read",
    "read_header",
    "describe",
    "file_size",
    "overhead",
]

MAGIC = b"\x89SNL"
VERSION = 6
OLD_MAGIC = b"\x89SNAIL\r\n"  # snailcompress 0.1, format versions 1 to 5
OLD_VERSIONS = range(1, 6)
MAX_HEADER_BYTES = 1 << 16
MAX_SIDE = 65535
MAX_PIXELS = 1 << 28
MAX_WORDS = (1 << 32) - 1
MAX_CALIBRATION_OUTPUTS = 1024
MAX_CALIBRATION_FEATURES = 1024
BINARY16_MAX = 65504.0  # the largest finite IEEE binary16 number
MAX_MODEL_NAME_CHARS = 100
MAX_ARITHMETIC = 255
MAX_PALETTE_ENTRIES = 256
DEFAULT_TILE = (32, 32)
DEFAULT_CONTEXT = (2, 2)
MODEL_ID_BYTES = 4

#: Pillow mode -> the channels its planes must spell, in order (before dropping a constant alpha).
MODE_CHANNELS = {"L": "L", "1": "L", "LA": "LA", "RGB": "RGB", "RGBA": "RGBA", "P": "P", "PA": "PA"}
MODES = tuple(MODE_CHANNELS)  # index = the mode's code in the header
#: What one plane may code.
PLANE_CHANNELS = ("L", "A", "RGB", "P")
#: How a plane may be coded; index = the method's code in the mode byte (see the docstring).
METHODS = ("model", "stored", "deflate", "bilevel")
_ALPHA_MODES = ("LA", "RGBA", "PA")
_CONSTANT_ALPHA_FLAG = 8
_MODE_CODE_BITS = 4  # the mode byte: the mode code in bits 0-3, then 2 bits of method per plane
_METHOD_BITS = 2

_TAG_MODEL_NAME, _TAG_TILE, _TAG_CONTEXT, _TAG_BAND, _TAG_CALIBRATION = 1, 2, 3, 4, 5
_TAG_CONSTANT_ALPHA, _TAG_PALETTE, _TAG_TRANSPARENCY, _TAG_ALPHA_TABLE = 6, 7, 8, 9
#: tag -> (name, whether it belongs to a plane)
_FIELDS = {
    _TAG_MODEL_NAME: ("model_name", True),
    _TAG_TILE: ("tile", True),
    _TAG_CONTEXT: ("context", True),
    _TAG_BAND: ("band", True),
    _TAG_CALIBRATION: ("calibration", True),
    _TAG_CONSTANT_ALPHA: ("constant_alpha", False),
    _TAG_PALETTE: ("palette", False),
    _TAG_TRANSPARENCY: ("transparency", False),
    _TAG_ALPHA_TABLE: ("transparency alpha", False),
}
_VARINT_MAX_BYTES = 5
_U32 = struct.Struct("<I")
_F16 = struct.Struct("<e")
_EXTRA_KEYS = frozenset({"constant_alpha", "palette", "palette_mode", "transparency"})
_BAD_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_HEX = re.compile(r"(?:[0-9a-f]{2})*\Z")
_MODEL_ID = re.compile(r"[0-9a-f]{%d}\Z" % (2 * MODEL_ID_BYTES))


def plane_channels(mode: str, constant_alpha: bool) -> list[str]:
    """The channels of the planes of a mode, in payload order: ["RGB", "A"] for RGBA, ["RGB"] for
    RGBA whose alpha is constant, ["L"] for L and 1."""
    pieces = [MODE_CHANNELS[mode]] if mode not in _ALPHA_MODES else [MODE_CHANNELS[mode][:-1], "A"]
    return pieces[:-1] if constant_alpha else pieces


def palette_entries(extras: dict) -> int:
    """The entries of an image's palette (extras "palette": hex, "palette_mode": RGB or RGBA); 0 without one."""
    return len(extras.get("palette", "")) // (2 * len(extras.get("palette_mode", "RGB")))


def stored_size(width: int, height: int, mode: str, channels: str) -> int:
    """The bytes of a stored plane: one a subpixel, or for mode "1" one bit a pixel, rows padded to bytes."""
    if mode == "1":
        return (width + 7) // 8 * height
    return width * height * len(channels)


@dataclass(frozen=True, eq=False)
class Plane:
    """One coded stream: the pixels of some channels of the image, coded with one model, or by one of
    the other methods (`method`, see the module docstring; `Plane.coded` makes such a plane)."""

    channels: str  # which image channels: "RGB", "L", "A" or "P" (palette indices)
    #: 8 lowercase hex digits: the first 32 bits of the id of the model's exact weights (None: not the model's)
    model_id: str | None
    words: np.ndarray = field(repr=False)  # uint32 coded stream; may be empty (and is, for other methods)
    model_name: str | None = None  # human-readable name (e.g. "snail-rgb"), for messages; None: not stored
    tile: tuple[int, int] = DEFAULT_TILE  # (tile_h, tile_w)
    context: tuple[int, int] = DEFAULT_CONTEXT  # (rows above, columns left) each tile's window also holds
    #: rows of windows per band (codec/tiles.py, WindowPlan); None: the default, which a SnailFile resolves
    band: int | None = None
    #: (scale, shift, feature gain) of codec/calibration.py; the feature gain may be empty
    calibration: tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]] | None = None
    method: str = "model"  # one of METHODS
    data: bytes = field(default=b"", repr=False)  # the coded bytes of a plane not coded by the model

    @classmethod
    def coded(cls, channels: str, method: str, data: bytes) -> Plane:
        """A plane coded otherwise than by the model ("stored", "deflate", "bilevel")."""
        return cls(channels, None, np.zeros(0, np.uint32), method=method, data=bytes(data))

    def __post_init__(self) -> None:
        for name in ("tile", "context"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if isinstance(self.calibration, (list, tuple)):
            calibration = tuple(tuple(v) if isinstance(v, (list, tuple)) else v for v in self.calibration)
            object.__setattr__(self, "calibration", calibration + ((),) if len(calibration) == 2 else calibration)
        if not isinstance(self.words, np.ndarray):
            object.__setattr__(self, "words", np.asarray(self.words, dtype=np.uint32))

    @property
    def n_words(self) -> int:
        return int(self.words.size)

    @property
    def payload_bytes(self) -> int:
        """The plane's bytes in the file: its words, or its data."""
        return 4 * self.n_words if self.method == "model" else len(self.data)

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
            and self.calibration == other.calibration
            and self.method == other.method
            and self.data == other.data
            and self.words.shape == other.words.shape
            and bool(np.array_equal(self.words, other.words))
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        if self.method != "model":
            return f"Plane(channels={self.channels!r}, method={self.method!r}, {len(self.data)} bytes)"
        return (
            f"Plane(channels={self.channels!r}, model_id={self.model_id!r}, model_name={self.model_name!r}, "
            f"tile={self.tile!r}, context={self.context!r}, band={self.band!r}, "
            f"calibration={'None' if self.calibration is None else f'<{_calibration_size(self.calibration)}>'}, "
            f"n_words={self.n_words})"
        )


@dataclass(frozen=True)
class SnailFile:
    """One .snail file: the image's shape and mode, its coded planes, and what decoding needs.

    A plane whose band is None gets the default band of its tile and context in this image."""

    width: int
    height: int
    mode: str  # Pillow mode of the original image: "L", "LA", "RGB", "RGBA", "P", "PA", "1"
    planes: tuple[Plane, ...]
    pixel_crc32: int  # CRC32 of the original pixels (images.pixel_checksum)
    #: version of the integer arithmetic that coded the model's planes; None exactly where no plane is the model's
    arithmetic: int | None = 1
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        planes = tuple(self.planes) if isinstance(self.planes, (list, tuple)) else self.planes
        if isinstance(planes, tuple):
            planes = tuple(self._resolved(p) for p in planes)
        object.__setattr__(self, "planes", planes)

    def _resolved(self, plane: Any) -> Any:
        """The plane with its default band filled in, where the values it depends on are valid."""
        if not isinstance(plane, Plane) or plane.band is not None:
            return plane
        width, height, tile, context = (_plain(v) for v in (self.width, self.height, plane.tile, plane.context))
        numbers = (width, height, *tile, *context) if _pair(tile) and _pair(context) else ()
        if len(numbers) != 6 or any(type(v) is not int for v in numbers):
            return plane
        if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE and min(tile) >= 1 and min(context) >= 0):
            return plane
        return dataclasses.replace(plane, band=default_band(height, width, tuple(tile), tuple(context)))

    @property
    def shared_deflate(self) -> bool:
        """Whether plane 1's deflate stream holds both planes of an LA or RGBA image (plane 2 is
        deflated in 0 bytes: see the module docstring)."""
        planes = self.planes
        return len(planes) == 2 and planes[0].method == planes[1].method == "deflate" and not planes[1].data

    __hash__ = None  # type: ignore[assignment]


def _pair(obj: Any) -> bool:
    return type(obj) in (list, tuple) and len(obj) == 2


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

    ``obj`` has the keys width, height, mode, pixel_crc32, arithmetic, planes (a list of dicts with
    channels, model_id, model_name, tile, context, band, calibration, n_words) and extras, with the
    API's value types.  A band of None is replaced by the default band.
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
    if not 1 <= len(planes) <= 2:
        raise _bad(f"there must be 1 or 2 planes, not {len(planes)}")
    for i, p in enumerate(planes):
        where = f"plane {i + 1}"
        ch = p["channels"]
        if type(ch) is not str or ch not in PLANE_CHANNELS:
            shown = repr(ch)[:40] if type(ch) is str else _jtype(ch)
            raise _bad(f"{where} channels {shown} is not one of {', '.join(PLANE_CHANNELS)}")
        method = p["method"]
        if type(method) is not str or method not in METHODS:
            shown = repr(method)[:40] if type(method) is str else _jtype(method)
            raise _bad(f"{where} method {shown} is not one of {', '.join(METHODS)}")
        if method == "model":
            _check_model_plane(p, where, width, height)
        else:
            _check_other_plane(p, where, width, height)
        _int(p["n_words"], f"{where} length", 0, MAX_WORDS)  # words of a model plane, else bytes
    if any(p["method"] == "model" for p in planes):
        _int(obj["arithmetic"], "arithmetic", 1, MAX_ARITHMETIC)
    elif obj["arithmetic"] is not None:
        raise _bad(f"arithmetic must be None where no plane is coded by the model, not {obj['arithmetic']!r:.40}")

    extras = obj["extras"]
    if type(extras) is not dict:
        raise _bad(f"extras must be a dict, not {_jtype(extras)}")
    unknown = [k for k in extras if k not in _EXTRA_KEYS]
    if unknown:
        shown = ", ".join(repr(k)[:40] for k in sorted(unknown, key=str)[:5])
        raise _bad(f"unknown field(s) in extras: {shown}")
    _check_extras(mode, extras)

    expected = plane_channels(mode, "constant_alpha" in extras)
    spelled = [p["channels"] for p in planes]
    if spelled != expected:
        listed = " + ".join(repr(c) for c in spelled)
        alpha = ", its alpha constant" if "constant_alpha" in extras else ""
        raise _bad(f"planes {listed} are not those of mode {mode}{alpha}: {' + '.join(repr(c) for c in expected)}")


def _check_model_plane(p: dict, where: str, width: int, height: int) -> None:
    mid = _str(p["model_id"], f"{where} model_id", 2 * MODEL_ID_BYTES, 2 * MODEL_ID_BYTES)
    if not _MODEL_ID.match(mid):
        raise _bad(f"{where} model_id must be lowercase hexadecimal")
    if p["model_name"] is not None:
        _str(p["model_name"], f"{where} model_name", 1, MAX_MODEL_NAME_CHARS)
    tile = p["tile"]
    if not _pair(tile):
        raise _bad(f"{where} tile must be a pair (tile_h, tile_w)")
    _int(tile[0], f"{where} tile height", 1, MAX_SIDE)
    _int(tile[1], f"{where} tile width", 1, MAX_SIDE)
    context = p["context"]
    if not _pair(context):
        raise _bad(f"{where} context must be a pair (above, left)")
    _int(context[0], f"{where} context above", 0, MAX_SIDE)
    _int(context[1], f"{where} context left", 0, MAX_SIDE)
    default = default_band(height, width, tuple(tile), tuple(context))
    if p["band"] is None:
        p["band"] = default
    if type(p["band"]) is not int or p["band"] != default:  # the default may exceed what the field holds
        if context[0] == 0 and p["band"] != 1:
            raise _bad(f"{where} band must be 1 where there is no context above, not {p['band']!r:.40}")
        _int(p["band"], f"{where} band", 1, MAX_SIDE)
    _check_calibration(p["calibration"], where)


def _check_other_plane(p: dict, where: str, width: int, height: int) -> None:
    """A plane not coded by the model: nothing of a model's, and bilevel only for one channel."""
    method = p["method"]
    default = default_band(height, width, DEFAULT_TILE, DEFAULT_CONTEXT)
    for name, value, unset in (("model_id", p["model_id"], None), ("model_name", p["model_name"], None),
                               ("tile", p["tile"], DEFAULT_TILE), ("context", p["context"], DEFAULT_CONTEXT),
                               ("band", p["band"], default), ("calibration", p["calibration"], None)):
        if name in ("tile", "context"):
            unchanged = _pair(value) and tuple(value) == unset
        else:
            unchanged = value is None or name == "band" and type(value) is int and value == default
        if not unchanged:
            raise _bad(f"{where} is coded {method}, not by the model, so it has no {name}")
    p["band"] = default
    if method == "bilevel" and len(p["channels"]) != 1:
        raise _bad(f"{where} is {p['channels']}: bilevel codes a plane of one channel")


def _check_lengths(obj: dict) -> None:
    """The lengths that a plane's method fixes (once every plane's length is known)."""
    for i, p in enumerate(obj["planes"]):
        n, where = p["n_words"], f"plane {i + 1}"
        if p["method"] == "stored":
            size = stored_size(obj["width"], obj["height"], obj["mode"], p["channels"])
            if n != size:
                raise _bad(f"{where} is stored in {n} bytes; a {obj['width']} x {obj['height']} {obj['mode']} image's "
                           f"{p['channels']} pixels take {size}")
        elif p["method"] == "bilevel" and n % 4:
            raise _bad(f"{where} is bilevel in {n} bytes, not a whole number of 4-byte words")
        elif p["method"] == "deflate" and n == 0:
            first = obj["planes"][0]
            if i == 0 or obj["mode"] not in ("LA", "RGBA") or first["method"] != "deflate" or first["n_words"] == 0:
                raise _bad(f"{where} is deflated in 0 bytes: only the alpha of an LA or RGBA image whose first plane "
                           "is deflated may be (it is in that plane's stream)")


def _calibration_size(calibration: tuple) -> str:
    """'100 outputs', or '100 outputs, 48 features' (for messages)."""
    outputs, features = len(calibration[0]), len(calibration[2]) if len(calibration) > 2 else 0
    shown = f"{outputs} output{'s' if outputs != 1 else ''}"
    return shown + (f", {features} feature{'s' if features != 1 else ''}" if features else "")


def _check_calibration(calibration: Any, where: str) -> None:
    if calibration is None:
        return
    if type(calibration) not in (list, tuple) or len(calibration) != 3:
        raise _bad(f"{where} calibration must be None or (scale, shift, feature gain)")
    scale, shift, gain = calibration
    if type(scale) not in (list, tuple) or type(shift) not in (list, tuple) or len(scale) != len(shift):
        raise _bad(f"{where} calibration scale and shift must be lists of the same length")
    if not 1 <= len(scale) <= MAX_CALIBRATION_OUTPUTS:
        raise _bad(f"{where} calibration has {len(scale)} outputs, not 1..{MAX_CALIBRATION_OUTPUTS}")
    if type(gain) not in (list, tuple) or len(gain) > MAX_CALIBRATION_FEATURES:
        raise _bad(f"{where} calibration feature gain must be a list of 0..{MAX_CALIBRATION_FEATURES} numbers")
    for name, values in (("scale", scale), ("shift", shift), ("feature gain", gain)):
        for v in values:
            if type(v) is not float or not _is_binary16(v):
                raise _bad(f"{where} calibration {name} values must be finite binary16 numbers (not -0)")


def _is_binary16(v: float) -> bool:
    """Whether v is exactly a finite IEEE binary16 number other than -0 (one encoding per value)."""
    if not math.isfinite(v) or abs(v) > BINARY16_MAX or math.copysign(1.0, v) < 0 and v == 0.0:
        return False
    return _F16.unpack(_F16.pack(v))[0] == v


def _check_extras(mode: str, extras: dict) -> None:
    paletted = mode in ("P", "PA")
    if "constant_alpha" in extras:
        if mode not in _ALPHA_MODES:
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
    if not isinstance(f.planes, tuple):
        raise ValueError(f"invalid SnailFile: planes must be a tuple of Plane, not {_jtype(f.planes)}")
    planes = []
    for i, p in enumerate(f.planes):
        if not isinstance(p, Plane):
            raise ValueError(f"invalid SnailFile: plane {i + 1} is a {type(p).__name__}, not a Plane")
        w = p.words
        if not isinstance(w, np.ndarray) or w.ndim != 1 or w.dtype != np.uint32:
            raise ValueError(f"invalid SnailFile: plane {i + 1} words must be a 1-D numpy uint32 array")
        if type(p.data) is not bytes or (p.data if p.method == "model" else w.size):
            raise ValueError(f"invalid SnailFile: plane {i + 1} must have bytes data (for a plane not coded by "
                             "the model) or words (for one that is), not both")
        planes.append(
            {
                "channels": p.channels,
                "method": p.method,
                "model_id": p.model_id,
                "model_name": p.model_name,
                "tile": _plain(p.tile),
                "context": _plain(p.context),
                "band": _plain(p.band),
                "calibration": _plain(p.calibration),
                "n_words": int(w.size) if p.method == "model" else len(p.data),
            }
        )
    obj = {
        "width": _plain(f.width),
        "height": _plain(f.height),
        "mode": f.mode,
        "pixel_crc32": _plain(f.pixel_crc32),
        "arithmetic": _plain(f.arithmetic),
        "planes": planes,
        "extras": _plain(dict(f.extras)) if isinstance(f.extras, dict) else f.extras,
    }
    try:
        _check_header(obj)
        _check_lengths(obj)
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


def _f16s(values) -> bytes:
    return b"".join(_F16.pack(v) for v in values)


def _encode_header(obj: dict) -> bytes:
    """The header bytes of a checked header object (see the module docstring)."""
    extras, planes = obj["extras"], obj["planes"]
    out = bytearray()
    out += _varint(obj["width"])
    out += _varint(obj["height"])
    code = MODES.index(obj["mode"]) + (_CONSTANT_ALPHA_FLAG if "constant_alpha" in extras else 0)
    for i, p in enumerate(planes):
        code |= METHODS.index(p["method"]) << (_MODE_CODE_BITS + _METHOD_BITS * i)
    out.append(code)
    out += _U32.pack(obj["pixel_crc32"])
    if obj["arithmetic"] is not None:
        out.append(obj["arithmetic"])
    for i, p in enumerate(planes):
        if p["method"] == "model":
            out += bytes.fromhex(p["model_id"])
        if i < len(planes) - 1:
            out += _varint(p["n_words"])

    fields: list[tuple[int, int, bytes]] = []  # (tag, plane, content)
    for i, p in enumerate(planes):
        if p["method"] != "model":
            continue  # none of the per-plane fields: _check_header made sure they hold their defaults
        index = bytes((i,))
        if p["model_name"] is not None:
            fields.append((_TAG_MODEL_NAME, i, index + p["model_name"].encode("utf-8")))
        if tuple(p["tile"]) != DEFAULT_TILE:
            fields.append((_TAG_TILE, i, index + _varint(p["tile"][0]) + _varint(p["tile"][1])))
        if tuple(p["context"]) != DEFAULT_CONTEXT:
            fields.append((_TAG_CONTEXT, i, index + _varint(p["context"][0]) + _varint(p["context"][1])))
        if p["band"] != default_band(obj["height"], obj["width"], tuple(p["tile"]), tuple(p["context"])):
            fields.append((_TAG_BAND, i, index + _varint(p["band"])))
        if p["calibration"] is not None:
            scale, shift, gain = p["calibration"]
            fields.append((_TAG_CALIBRATION, i, index + _varint(len(scale)) + _f16s(scale) + _f16s(shift)
                           + _varint(len(gain)) + _f16s(gain)))
    if "constant_alpha" in extras:
        fields.append((_TAG_CONSTANT_ALPHA, 0, bytes((extras["constant_alpha"],))))
    if "palette" in extras:
        pal = bytes.fromhex(extras["palette"])
        bpe = len(extras["palette_mode"])
        fields.append((_TAG_PALETTE, 0, bytes((bpe,)) + _varint(len(pal) // bpe) + pal))
    if "transparency" in extras:
        t = extras["transparency"]
        if isinstance(t, str):
            alpha = bytes.fromhex(t)
            fields.append((_TAG_ALPHA_TABLE, 0, _varint(len(alpha)) + alpha))
        else:
            fields.append((_TAG_TRANSPARENCY, 0, b"".join(_varint(v) for v in (t if isinstance(t, list) else [t]))))
    for tag, _, content in sorted(fields, key=lambda x: x[:2]):
        out += bytes((tag,)) + _varint(len(content)) + content
    return bytes(out)


def _header_bytes(f: SnailFile) -> bytes:
    header = _encode_header(_header_obj(f))
    if len(header) > MAX_HEADER_BYTES:  # pragma: no cover - the field limits keep headers far smaller
        raise ValueError(f"invalid SnailFile: header of {len(header)} bytes exceeds {MAX_HEADER_BYTES}")
    return header


def write(f: SnailFile) -> bytes:
    """Serialize f.  Raises ValueError (TypeError) if f would not be readable back."""
    header = _header_bytes(f)
    parts = [MAGIC, bytes((VERSION,)) + _varint(len(header)) + header]
    parts += [p.words.astype("<u4", copy=False).tobytes() if p.method == "model" else p.data for p in f.planes]
    crc = 0
    for part in parts[1:]:
        crc = zlib.crc32(part, crc)
    return b"".join((*parts, _U32.pack(crc)))


def overhead(f: SnailFile) -> int:
    """Bytes of write(f) that are not coded words: magic, version, header length, header, checksum."""
    header = _header_bytes(f)
    return len(MAGIC) + 1 + len(_varint(len(header))) + len(header) + 4


def file_size(f: SnailFile) -> int:
    """The length in bytes of write(f), without building it."""
    return overhead(f) + sum(p.payload_bytes for p in f.planes)


# --------------------------------------------------------------------------------------------
# reading

_TRUNCATED = "file is truncated"
_PART_WORD = "file is truncated or has trailing data (its length leaves a part of a 4-byte word)"
_CRC_MISMATCH = "file is corrupt, truncated or has trailing data (checksum mismatch)"


class _Fields:
    """Reads fields from bytes whose checksum was already verified."""

    def __init__(self, data: bytes, where: str = "it"):
        self.data = data
        self.pos = 0
        self.where = where

    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, name: str) -> bytes:
        if n > len(self.data) - self.pos:
            raise _bad(f"{self.where} ends in the middle of {name}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self, name: str) -> int:
        return self.take(1, name)[0]

    def u32(self, name: str) -> int:
        return _U32.unpack(self.take(4, name))[0]

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

    def binary16s(self, count: int, name: str) -> tuple[float, ...]:
        return tuple(v for (v,) in _F16.iter_unpack(self.take(_F16.size * count, name)))

    def mode(self) -> tuple[str, bool, list[str]]:
        """The mode, whether its alpha is constant, and the coding method of each of its planes."""
        byte = self.u8("mode")
        code = byte & ((1 << _MODE_CODE_BITS) - 1)
        base, constant = code & ~_CONSTANT_ALPHA_FLAG, bool(code & _CONSTANT_ALPHA_FLAG)
        if base >= len(MODES) or constant and MODES[base] not in _ALPHA_MODES:
            raise _bad(
                f"mode code {code} is not one of 0..6 ({', '.join(MODES)}) or 10, 12, 14 "
                "(LA, RGBA, PA with a constant alpha)"
            )
        shifts = [_MODE_CODE_BITS + _METHOD_BITS * i for i in range(2)]
        methods = [METHODS[(byte >> shift) & ((1 << _METHOD_BITS) - 1)] for shift in shifts]
        count = len(plane_channels(MODES[base], constant))
        if count == 1 and methods[1] != "model":
            raise _bad(f"the mode byte {byte} gives a coding method for plane 2, and this mode has one plane")
        return MODES[base], constant, methods[:count]


def _decode_fixed(r: _Fields) -> dict:
    """The fixed header fields; the planes' channels follow from the mode."""
    obj: dict[str, Any] = {}
    obj["width"] = r.varint("width")
    obj["height"] = r.varint("height")
    obj["mode"], obj["constant"], methods = r.mode()
    obj["pixel_crc32"] = r.u32("pixel_crc32")
    obj["arithmetic"] = r.u8("arithmetic") if "model" in methods else None
    pieces = plane_channels(obj["mode"], obj["constant"])
    planes = []
    for i, (ch, method) in enumerate(zip(pieces, methods)):
        where = f"plane {i + 1}"
        planes.append(
            {
                "channels": ch,
                "method": method,
                "model_id": r.take(MODEL_ID_BYTES, f"{where} model_id").hex() if method == "model" else None,
                "model_name": None,
                "tile": DEFAULT_TILE,
                "context": DEFAULT_CONTEXT,
                "band": None,
                "calibration": None,
                "n_words": r.varint(f"{where} length") if i < len(pieces) - 1 else None,
            }
        )
    obj["planes"] = planes
    return obj


def _decode_header(data: bytes) -> tuple[dict, set]:
    """Parse the header (FormatError for anything malformed); values are checked separately.

    Returns the header object (absent fields hold their defaults, the band None) and the set of
    (tag, plane) of the tagged fields present."""
    r = _Fields(data)
    obj = _decode_fixed(r)
    mode, planes = obj["mode"], obj["planes"]
    extras: dict[str, Any] = {}
    present: set[tuple[int, int]] = set()
    last: tuple[int, int] | None = None
    while r.left():
        tag = r.u8("a field tag")
        if tag not in _FIELDS:
            raise FormatError(
                f"this file was written by a newer snailcompress (unknown header field {tag}): "
                "upgrade snailcompress to decode it"
            )
        name, per_plane = _FIELDS[tag]
        length = r.varint(f"the length of the {name} field")
        c = _Fields(r.take(length, f"the {name} field"), f"the {name} field")
        plane = 0
        if per_plane:
            plane = c.u8("its plane index")
            if plane >= len(planes):
                raise _bad(f"the {name} field is for plane {plane + 1}, and there are only {len(planes)}")
            if planes[plane]["method"] != "model":
                method = planes[plane]["method"]
                raise _bad(f"the {name} field is for plane {plane + 1}, which is coded {method}, not by the model")
            c.where = f"the {name} field of plane {plane + 1}"
        key = (tag, plane)
        if last is not None and key <= last:
            what = f"the {name} field" + (f" of plane {plane + 1}" if per_plane else "")
            raise _bad(f"{what} appears twice" if key == last else f"{what} is out of order")
        last = key
        present.add(key)
        p = planes[plane]
        where = f"plane {plane + 1}"
        if tag == _TAG_MODEL_NAME:
            raw = c.take(c.left(), "model_name")
            try:
                p["model_name"] = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise _bad(f"{where} model_name is not valid UTF-8") from None
        elif tag == _TAG_TILE:
            p["tile"] = (c.varint(f"{where} tile height"), c.varint(f"{where} tile width"))
        elif tag == _TAG_CONTEXT:
            p["context"] = (c.varint(f"{where} context above"), c.varint(f"{where} context left"))
        elif tag == _TAG_BAND:
            p["band"] = c.varint(f"{where} band")
        elif tag == _TAG_CALIBRATION:
            outputs = c.varint(f"{where} calibration output count")
            if not 1 <= outputs <= MAX_CALIBRATION_OUTPUTS:
                raise _bad(f"{where} calibration has {outputs} outputs, not 1..{MAX_CALIBRATION_OUTPUTS}")
            numbers = c.binary16s(2 * outputs, f"{where} calibration scales and shifts")
            features = c.varint(f"{where} calibration feature count")
            if features > MAX_CALIBRATION_FEATURES:
                raise _bad(f"{where} calibration has {features} features, not 0..{MAX_CALIBRATION_FEATURES}")
            gain = c.binary16s(features, f"{where} calibration feature gains")
            p["calibration"] = (numbers[:outputs], numbers[outputs:], gain)
        elif tag == _TAG_CONSTANT_ALPHA:
            if not obj["constant"]:
                raise _bad(f"the constant_alpha field is given but mode code {MODES.index(mode)} ({mode}) codes its alpha")
            extras["constant_alpha"] = c.u8("constant_alpha")
        elif tag == _TAG_PALETTE:
            bpe = c.u8("the palette entry size")
            if bpe not in (3, 4):
                raise _bad(f"palette entry size {bpe} is not 3 (RGB) or 4 (RGBA)")
            entries = c.varint("the palette entry count")
            if entries > MAX_PALETTE_ENTRIES:
                raise _bad(f"palette has {entries} entries, at most {MAX_PALETTE_ENTRIES} are allowed")
            extras["palette"] = c.take(entries * bpe, "the palette").hex()
            extras["palette_mode"] = "RGB" if bpe == 3 else "RGBA"
        elif tag == _TAG_TRANSPARENCY:
            if mode == "RGB":
                extras["transparency"] = [c.varint(f"transparency {ch}") for ch in "rgb"]
            elif mode in ("L", "1", "P", "PA"):
                extras["transparency"] = c.varint("transparency")
            else:
                raise _bad(f"transparency is not allowed for mode {mode}")
        else:  # _TAG_ALPHA_TABLE
            if "transparency" in extras:
                raise _bad("transparency is given twice (as numbers and as per-index alpha)")
            if mode not in ("P", "PA"):
                raise _bad(f"transparency as per-index alpha is not allowed for mode {mode}")
            n = c.varint("the transparency length")
            if n > 256:
                raise _bad(f"transparency has {n} entries, at most 256 are allowed")
            extras["transparency"] = c.take(n, "transparency").hex()
        if c.left():
            raise _bad(f"{c.where} has {c.left()} unexpected byte{'s' if c.left() != 1 else ''} at its end")
    if obj["constant"] and "constant_alpha" not in extras:
        code = MODES.index(mode) + _CONSTANT_ALPHA_FLAG
        raise _bad(f"mode code {code} ({mode} with a constant alpha) needs the constant_alpha field")
    obj["extras"] = extras
    return obj, present


def _check_canonical(obj: dict, present: set) -> None:
    """Refuse tagged fields that hold their default (after _check_header: the values are valid)."""
    for i, p in enumerate(obj["planes"]):
        where = f"plane {i + 1}"
        band = default_band(obj["height"], obj["width"], tuple(p["tile"]), tuple(p["context"]))
        for tag, value, default in (
            (_TAG_TILE, tuple(p["tile"]), DEFAULT_TILE),
            (_TAG_CONTEXT, tuple(p["context"]), DEFAULT_CONTEXT),
            (_TAG_BAND, p["band"], band),
        ):
            if (tag, i) in present and value == default:
                name = _FIELDS[tag][0]
                raise _bad(f"{where} {name} {value} is the default, so its field must be left out (not canonical)")


def _header_start(view: memoryview) -> tuple[int, int]:
    """(offset of the header, its length) after checking the magic, the version and the length field."""
    size = len(view)
    if size == 0:
        raise FormatError("not a .snail file (the file is empty)")
    head = bytes(view[: len(OLD_MAGIC) + 1])
    if head.startswith(OLD_MAGIC):
        if size == len(OLD_MAGIC):
            raise FormatError(_TRUNCATED)
        version = head[len(OLD_MAGIC)]
        if version in OLD_VERSIONS:
            raise FormatError(
                f"this is a .snail file of format version {version}, written by snailcompress 0.1; this release reads "
                f"version {VERSION} only: decode it with snailcompress 0.1 (pip install 'snailcompress<0.2')"
            )
        raise FormatError(f"this is a .snail file of snailcompress 0.1's layout with an unknown format version {version}")
    if not head.startswith(MAGIC):
        if MAGIC.startswith(head) or OLD_MAGIC.startswith(head):
            raise FormatError(_TRUNCATED)
        if head[1:4] == MAGIC[1:] or b"SNAIL" in bytes(view[:12]):
            raise FormatError(
                "not a .snail file: its first bytes were altered "
                "(was it sent through a 7-bit channel or opened in an editor?)"
            )
        raise FormatError("not a .snail file")
    pos = len(MAGIC)
    if size <= pos:
        raise FormatError(_TRUNCATED)
    version = view[pos]
    if version != VERSION:
        if version > VERSION:
            raise FormatError(
                f"this .snail file has format version {version}, written by a newer snailcompress; this release reads "
                f"version {VERSION} only: upgrade snailcompress to decode it"
            )
        raise FormatError(f"unsupported .snail format version {version}; this release reads version {VERSION} only")
    pos += 1
    hlen = 0
    for i in range(3):  # the header length: a varint of at most 3 bytes (MAX_HEADER_BYTES < 2**21)
        if pos >= size:
            raise FormatError(_TRUNCATED)
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
    return pos, hlen


def _word_counts(size: int, payload_start: int, planes: list[dict]) -> list[int] | str:
    """Every plane's length (words of a model plane, bytes of another), the last one from the file's
    length; or why the length is wrong."""
    explicit = [p["n_words"] for p in planes[:-1]]
    rest = size - 4 - payload_start - sum(4 * n if p["method"] == "model" else n for p, n in zip(planes, explicit))
    if rest < 0:
        return _TRUNCATED
    if planes[-1]["method"] != "model":
        return [*explicit, rest]
    if rest % 4:
        return _PART_WORD
    return [*explicit, rest // 4]


def _mismatch(view: memoryview, pos: int, hlen: int) -> FormatError:
    """What a checksum mismatch most likely means: a length that cannot be right, else corruption."""
    try:
        obj = _decode_fixed(_Fields(bytes(view[pos : pos + hlen])))
    except FormatError:
        return FormatError(_CRC_MISMATCH)
    counts = _word_counts(len(view), pos + hlen, obj["planes"])
    return FormatError(counts if isinstance(counts, str) else _CRC_MISMATCH)


def _parse(data: bytes | bytearray | memoryview, copy: bool) -> SnailFile:
    view = memoryview(data).cast("B") if not isinstance(data, bytes) else memoryview(data)
    size = len(view)
    pos, hlen = _header_start(view)
    if size < pos + hlen + 4:
        raise FormatError(_TRUNCATED)
    (crc,) = _U32.unpack_from(view, size - 4)
    if zlib.crc32(view[len(MAGIC) : size - 4]) != crc:
        raise _mismatch(view, pos, hlen)

    obj, present = _decode_header(bytes(view[pos : pos + hlen]))
    del obj["constant"]
    obj["planes"][-1]["n_words"] = 0  # known below, from the file's length, once the header is valid
    _check_header(obj)
    _check_canonical(obj, present)

    counts = _word_counts(size, pos + hlen, obj["planes"])
    if isinstance(counts, str):
        raise FormatError(counts)
    if counts[-1] > MAX_WORDS:
        unit = "words" if obj["planes"][-1]["method"] == "model" else "bytes"
        raise FormatError(f"file is too long: its last plane would have {counts[-1]} {unit}, at most {MAX_WORDS} are allowed")
    obj["planes"][-1]["n_words"] = counts[-1]
    _check_lengths(obj)

    planes = []
    offset = pos + hlen
    for p, n in zip(obj["planes"], counts):
        if p["method"] != "model":
            planes.append(Plane.coded(p["channels"], p["method"], view[offset : offset + n]))
            offset += n
            continue
        words = np.frombuffer(view, dtype="<u4", count=n, offset=offset)
        if copy or words.dtype != np.uint32:
            words = words.astype(np.uint32)  # a private, aligned, native-endian copy
        offset += 4 * n
        planes.append(
            Plane(channels=p["channels"], model_id=p["model_id"], words=words, model_name=p["model_name"],
                  tile=p["tile"], context=p["context"], band=p["band"], calibration=p["calibration"])
        )
    return SnailFile(
        width=obj["width"],
        height=obj["height"],
        mode=obj["mode"],
        planes=tuple(planes),
        pixel_crc32=obj["pixel_crc32"],
        arithmetic=obj["arithmetic"],
        extras=obj["extras"],
    )


def read(data: bytes) -> SnailFile:
    """Parse and fully verify a .snail file.  Raises FormatError, and only FormatError, if invalid."""
    return _parse(data, copy=True)


def read_header(data: bytes) -> SnailFile:
    """Like read (everything is verified, the checksum too), but the words are read-only views of
    data instead of copies: for `snailcompress info`, which only describes the file."""
    return _parse(data, copy=False)


# --------------------------------------------------------------------------------------------
# describing


_METHOD_NOTES = {
    "stored": "stored (the raw pixels)",
    "deflate": "deflate (PNG-filtered rows, zlib)",
    "bilevel": "bilevel (adaptive binary context model)",
}


def describe(f: SnailFile, known_model: Callable[[str], str | None] | None = None) -> str:
    """The header in words, several lines, for `snailcompress info`.  Sizes are in bits per
    subpixel: the file's over every channel of every pixel (as encode's summary line), each stream's
    per value it codes (a constant alpha is not coded). `known_model`: the name of a
    model (a shipped one) by the id a file holds, or None; asked only for a plane whose file names none."""
    total = file_size(f)
    payload = sum(p.payload_bytes for p in f.planes)
    pixels = f.width * f.height
    subpixels = pixels * len(MODE_CHANNELS[f.mode])
    alpha = f", alpha constant {f.extras['constant_alpha']} (not coded)" if "constant_alpha" in f.extras else ""
    lines = [
        f".snail file, format version {VERSION}",
        f"image:        {f.width} x {f.height} pixels, mode {f.mode}{alpha}",
        f"size:         {total:,} bytes, {8 * total / subpixels:.4f} bits per subpixel ({8 * payload / subpixels:.4f} in "
        f"the coded streams, {total - payload:,} bytes of header and checksum)",
        f"pixel CRC32:  {f.pixel_crc32:08x}",
    ]
    if f.arithmetic is not None:
        lines.append(f"arithmetic:   integer arithmetic version {f.arithmetic}")
    for i, p in enumerate(f.planes, 1):
        if f.shared_deflate and i == 2:
            lines.append(f"plane 2:      {p.channels}, in plane 1's deflate stream")
            continue
        if p.method != "model":
            both = f" and plane 2's {f.planes[1].channels} (one stream)" if f.shared_deflate else ""
            lines.append(f"plane {i}:      {p.channels}{both}, {_METHOD_NOTES[p.method]}")
            coded = len(f.mode) if f.shared_deflate else len(p.channels)
            bits = 8 * p.payload_bytes / (pixels * coded)
            lines.append(f"              stream: {bits:.4f} bits per subpixel")
            continue
        known = known_model(p.model_id) if known_model is not None and p.model_name is None else None
        name = f" ({p.model_name})" if p.model_name is not None else f" (shipped {known})" if known else ""
        context = f"context {p.context[0]} above, {p.context[1]} left" if any(p.context) else "no context"
        band = f", bands of {p.band} rows of windows" if p.context[0] else ""
        calibration = f", calibrated ({_calibration_size(p.calibration)})" if p.calibration else ", not calibrated"
        bits = 32 * p.n_words / (pixels * len(p.channels))
        lines.append(f"plane {i}:      {p.channels}, model {p.model_id}{name}")
        lines.append(f"              tiles {p.tile[0]}x{p.tile[1]}, {context}{band}{calibration}")
        lines.append(f"              stream: {bits:.4f} bits per subpixel")
    ex = f.extras
    if "palette" in ex:
        pm = ex.get("palette_mode", "RGB")
        lines.append(f"palette:      {palette_entries(ex)} entries, {pm}")
    if "transparency" in ex:
        t = ex["transparency"]
        if f.mode in ("P", "PA"):
            shown = f"index {t}" if isinstance(t, int) else f"alpha for {len(t) // 2} palette entries"
        elif isinstance(t, list):
            shown = "colour (" + ", ".join(str(v) for v in t) + ")"
        else:
            shown = f"grey value {t}"
        lines.append(f"transparency: {shown}")
    return "\n".join(lines)
