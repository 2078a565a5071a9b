"""A plane coded without the model, and the encoder's choice of the smallest coding of each plane.

.snail codes each plane with one of four methods (container.py, "Coding methods"): the model
(codec/coder.py), or one of three that need none, here:

* stored: the pixels, raw (mode "1": one bit a pixel), so that no file is much larger than its pixels;
* deflate: PNG-filtered rows in a zlib stream, so that none is much larger than a PNG of them.
  Pillow's PNG encoder writes it (the data of the IDAT chunks, at the bit depth PNG would use) and
  its PNG decoder reads it back (``Image.frombytes`` with the "zip" decoder). An LA or RGBA image
  may have both planes in one stream, as a PNG of the image holds them (its alpha plane then has
  no data): a PNG filters each row once, two planes filter it twice, which costs a byte a row (a
  1 x 177 LA image: 302 bytes in two streams, 274 as a PNG);
* bilevel: a plane of 0 and 255, with codec/bilevel.py's context model.

`smallest` keeps, per plane, what makes the smallest file, every header byte counted. The model is
not run on a bilevel plane (`model_may_win`): on rendered text, line art and a dithered photo it
took 4 to 11 times the bilevel method's bytes (64 x 64 text: 1,070 against 175; 256 x 256: 15,976
against 1,471; results/small_images.md).
"""

from __future__ import annotations

import io
import itertools
import struct

import numpy as np
from PIL import Image

from ..errors import FormatError
from . import bilevel, container
from .images import DecomposedImage, pixel_checksum

__all__ = ["model_may_win", "alternatives", "smallest", "decode_plane"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_SETTINGS = ({}, {"optimize": True})  # Pillow's default (what a plain save writes) and its smallest
#: Pillow's smallest stream (zlib's level 9 and its filter search) is a few percent below its default
#: one, rarely a fifth (19% on one of ten 256x256 photo crops, 0.5-8% on the others): where the default
#: stream is over this many times the model's plane, the smallest cannot win and is not written (a
#: photo's second save takes a few percent of its encode)
HOPELESS = 1.25


def model_may_win(pixels: np.ndarray) -> bool:
    """False for a bilevel plane (one channel of 0 and 255), where the model never came close."""
    return not _is_bilevel(pixels)


def _is_bilevel(pixels: np.ndarray) -> bool:
    return pixels.shape[2] == 1 and bool(np.all((pixels == 0) | (pixels == 255)))


def _png_layout(snail_mode: str, channels: str, extras: dict) -> tuple[str, str, int]:
    """(Pillow mode, Pillow raw mode, bit depth) of a plane's deflate stream (container.py's rule).
    `channels` "LA" or "RGBA": a stream of both planes."""
    if channels in ("RGB", "LA", "RGBA"):
        return channels, channels, 8
    if snail_mode == "1":
        return "1", "1", 1
    if channels == "P":
        entries = container.palette_entries(extras)
        bits = next(b for b, most in ((1, 2), (2, 4), (4, 16), (8, 256)) if entries <= most or b == 8)
        if bits < 8:
            return "P", f"P;{bits}", bits
    return "L", "L", 8


def _idat(png: bytes) -> bytes:
    """The data of a PNG file's IDAT chunks, joined."""
    pos, out = len(_PNG_SIGNATURE), []
    while pos < len(png):
        (length,) = struct.unpack_from(">I", png, pos)
        if png[pos + 4 : pos + 8] == b"IDAT":
            out.append(png[pos + 8 : pos + 8 + length])
        pos += 12 + length
    return b"".join(out)


def _deflate(pixels: np.ndarray, snail_mode: str, channels: str, extras: dict, beat: int | None = None) -> bytes | None:
    """The smallest deflate stream Pillow writes of the plane, or None where the method cannot hold
    it (palette indices beyond what the palette's bit depth holds). `beat`: the bytes of the model's
    coding of the plane; only the default stream is written where it is over HOPELESS times that."""
    mode, _, bits = _png_layout(snail_mode, channels, extras)
    height, width = pixels.shape[:2]
    if mode == "1":
        image = Image.frombytes("1", (width, height), np.packbits(pixels[..., 0] != 0, axis=1).tobytes())
    else:
        image = Image.frombytes(mode, (width, height), np.ascontiguousarray(pixels).tobytes())
    if mode == "P":
        if int(pixels.max()) >= 1 << bits:
            return None
        image.putpalette(bytes(3 << bits))
    streams = []
    for settings in _PNG_SETTINGS:
        if streams and beat is not None and len(streams[0]) > HOPELESS * beat:
            break
        out = io.BytesIO()
        image.save(out, "PNG", **settings, **({"bits": bits} if mode == "P" else {}))
        streams.append(_idat(out.getvalue()))
    return min(streams, key=len)


def _stored(pixels: np.ndarray, snail_mode: str) -> bytes:
    if snail_mode == "1":
        return np.packbits(pixels[..., 0] != 0, axis=1).tobytes()
    return np.ascontiguousarray(pixels).tobytes()


def alternatives(image: DecomposedImage, name: str, beat: int | None = None) -> list[container.Plane]:
    """The plane `name` of the image coded by each method other than the model that can hold it;
    `beat`: the bytes of the model's coding of it, if any (see HOPELESS)."""
    pixels = image.planes[name]
    planes = []
    if _is_bilevel(pixels):
        planes.append(container.Plane.coded(name, "bilevel", bilevel.encode(pixels[..., 0] != 0)))
    deflated = _deflate(pixels, image.mode, name, image.extras, beat)
    if deflated is not None:
        planes.append(container.Plane.coded(name, "deflate", deflated))
    planes.append(container.Plane.coded(name, "stored", _stored(pixels, image.mode)))
    return planes


def _both_planes(image: DecomposedImage) -> list[tuple[container.Plane, ...]]:
    """The two planes of an LA or RGBA image in one deflate stream, as a PNG of the image holds them."""
    names = image.expected_planes()
    if image.mode not in ("LA", "RGBA") or len(names) != 2:
        return []
    both = np.concatenate([image.planes[name] for name in names], axis=2)
    stream = _deflate(both, image.mode, image.mode, image.extras)
    return [(container.Plane.coded(names[0], "deflate", stream), container.Plane.coded(names[1], "deflate", b""))]


def smallest(image: DecomposedImage, model_planes: list[container.Plane | None], arithmetic: int,
             fallback: bool = True) -> container.SnailFile:
    """The smallest file of the image: each plane (in image.expected_planes() order) coded by the
    model (its entry in model_planes; None where the model was not run) or, where `fallback`, by any
    other method that holds it, or both in one deflate stream. On a tie the model, then bilevel,
    deflate, stored."""
    options = []
    for name, coded in zip(image.expected_planes(), model_planes):
        beat = None if coded is None else coded.payload_bytes
        options.append(([coded] if coded is not None else []) + (alternatives(image, name, beat) if fallback else []))
    crc = pixel_checksum(image)
    best, best_size = None, None
    for planes in itertools.chain(itertools.product(*options), _both_planes(image) if fallback else []):
        uses_model = any(p.method == "model" for p in planes)
        snail = container.SnailFile(width=image.width, height=image.height, mode=image.mode, planes=planes,
                                    pixel_crc32=crc, arithmetic=arithmetic if uses_model else None,
                                    extras=dict(image.extras))
        size = container.file_size(snail)
        if best_size is None or size < best_size:
            best, best_size = snail, size
    if best is None:
        raise ValueError("every plane needs the model's coding where fallback is False")
    return best


def decode_plane(snail: container.SnailFile, plane: container.Plane) -> np.ndarray:
    """The (H, W, C) pixels of a plane not coded by the model; FormatError if its data is corrupt."""
    height, width, data = snail.height, snail.width, plane.data
    try:
        if plane.method == "bilevel":
            return (bilevel.decode(data, height, width) * np.uint8(255))[..., None]
        if plane.method == "stored":
            if snail.mode != "1":
                return np.frombuffer(data, np.uint8).reshape(height, width, len(plane.channels)).copy()
            packed = np.frombuffer(data, np.uint8).reshape(height, -1)
            bits = np.unpackbits(packed, axis=1, count=width)
            if not np.array_equal(np.packbits(bits, axis=1), packed):
                raise FormatError("the padding bits at the ends of its rows are not 0")
            return (bits * np.uint8(255))[..., None]
        channels, first = plane.channels, 0
        if snail.shared_deflate:  # both planes in plane 1's stream
            channels, data = snail.mode, snail.planes[0].data
            first = 0 if plane.channels == snail.planes[0].channels else len(snail.planes[0].channels)
        mode, rawmode, _ = _png_layout(snail.mode, channels, snail.extras)
        try:
            decoded = Image.frombytes(mode, (width, height), data, "zip", rawmode)
        except (ValueError, OSError, SyntaxError) as e:  # Pillow's zip decoder: "cannot decode image data", ...
            raise FormatError(f"its deflate stream is corrupt or truncated ({e})") from None
        pixels = np.asarray(decoded)
        if mode == "1":
            pixels = pixels * np.uint8(255)
        pixels = pixels.reshape(height, width, len(channels))
        return np.ascontiguousarray(pixels[..., first : first + len(plane.channels)])
    except FormatError as e:
        raise FormatError(f"plane {plane.channels} ({plane.method}): {e}") from None
