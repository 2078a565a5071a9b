"""Reading and writing images exactly: pixels, mode, palette and transparency.

An image is split into planes of 8-bit channels that the models code ("decomposed"), plus the few
facts that are not pixels ("extras"):

========  ===========================================  =============================================
mode      planes (uint8 arrays, H x W x C)             extras
========  ===========================================  =============================================
"L"       "L" (H,W,1)                                  transparency (int, grey value) if present
"1"       "L" (H,W,1) holding only 0 and 255           transparency (0 or 255) if present
"LA"      "L" (H,W,1), "A" (H,W,1)                     constant_alpha (int) instead of "A" when the
                                                       alpha is the same everywhere
"RGB"     "RGB" (H,W,3)                                transparency ([r, g, b]) if present
"RGBA"    "RGB" (H,W,3), "A" (H,W,1)                   constant_alpha as for LA
"P"       "P" (H,W,1), the palette indices             palette (hex of the raw RGB palette bytes),
                                                       palette_mode ("RGB"), transparency (int index
                                                       or hex of the per-index alpha bytes) if present
========  ===========================================  =============================================

The extras use exactly the keys and types of the .snail header (see container.py).

Not coded: 16-bit and wider samples, floating point, CMYK / YCbCr / LAB / HSV, palettes with alpha
(RGBA palettes) and "PA", multi-frame images: `read_image` refuses them with an ImageError rather
than change a pixel.  Metadata that is not pixels (ICC profile, gamma, text chunks, resolution) is
not kept.  `write_image` re-reads what it is about to write and refuses (ImageError) a format that
would not give back exactly the same pixels, mode, palette and transparency.
"""

from __future__ import annotations

import io
import json
import os
import re
import threading
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from snailcompress.codec.container import MAX_PIXELS, MAX_SIDE, MODE_CHANNELS, palette_entries, plane_channels
from snailcompress.errors import ImageError
from snailcompress.fileio import OutputExistsError, atomic_write

__all__ = [
    "SUPPORTED_MODES",
    "WRITE_FORMATS",
    "DecomposedImage",
    "decompose",
    "compose",
    "pixel_checksum",
    "same_image",
    "sample_problem",
    "read_image",
    "read_image_bytes",
    "png_bytes",
    "write_format",
    "write_image",
]

SUPPORTED_MODES = ("L", "LA", "RGB", "RGBA", "P", "1")
_SUPPORTED_TEXT = "snailcompress codes 8-bit L, LA, RGB, RGBA, P and 1 images"

#: file suffix -> (Pillow format, save options).  Which modes fit is checked by re-reading.
WRITE_FORMATS: dict[str, tuple[str, dict]] = {
    ".png": ("PNG", {}),
    ".ppm": ("PPM", {}),
    ".pgm": ("PPM", {}),
    ".pbm": ("PPM", {}),
    ".pnm": ("PPM", {}),
    ".bmp": ("BMP", {}),
    ".tif": ("TIFF", {"compression": "tiff_lzw"}),
    ".tiff": ("TIFF", {"compression": "tiff_lzw"}),
}
#: the one mode each Netpbm name holds (Pillow writes whichever of P4, P5, P6 the mode needs, whatever
#: the name says: an RGB image "x.pgm" would be a PPM); .pnm holds any of the three
NETPBM_MODES = {".pbm": "1", ".pgm": "L", ".ppm": "RGB"}

_MODE_NOTES = {
    "I": "32-bit integer",
    "F": "32-bit floating point",
    "LAB": "Lab colour",
    "HSV": "HSV colour",
    "PA": "palette with alpha",
    "RGBX": "RGB with padding",
    "RGBa": "premultiplied alpha",
    "La": "premultiplied alpha",
}


@dataclass
class DecomposedImage:
    """An image as coded: planes of uint8 channels plus the non-pixel facts (see module docstring)."""

    mode: str  # original Pillow mode
    width: int
    height: int
    planes: dict[str, np.ndarray]  # e.g. {"RGB": (H,W,3)}, {"L": (H,W,1)}, {"RGB": ..., "A": (H,W,1)}, {"P": ...}
    extras: dict[str, Any] = field(default_factory=dict)

    def expected_planes(self) -> list[str]:
        """The plane names this image must have, in coding order."""
        return plane_channels(self.mode, "constant_alpha" in self.extras)


def _mode_note(mode: str) -> str:
    if mode.startswith("I;16"):
        return " (16-bit)"
    note = _MODE_NOTES.get(mode)
    return f" ({note})" if note else ""


def _unsupported(name: str, mode: str, why: str = "") -> ImageError:
    return ImageError(f"{name}: mode {mode}{why or _mode_note(mode)} cannot be coded exactly; {_SUPPORTED_TEXT}")


# --------------------------------------------------------------------------------------------
# PIL image <-> planes


def decompose(im: Image.Image, name: str = "image") -> DecomposedImage:
    """Split a loaded PIL image into planes and extras.  ImageError if it cannot be coded exactly."""
    mode = im.mode
    if mode not in SUPPORTED_MODES:
        raise _unsupported(name, mode)
    w, h = im.size
    if w < 1 or h < 1:
        raise ImageError(f"{name}: the image is empty ({w} x {h} pixels)")
    extras: dict[str, Any] = {}
    planes: dict[str, np.ndarray] = {}
    info_t = im.info.get("transparency")

    if mode == "1":
        bits = np.unpackbits(np.frombuffer(im.tobytes(), dtype=np.uint8).reshape(h, -1), axis=1, count=w)
        planes["L"] = (bits * np.uint8(255)).reshape(h, w, 1)
    else:
        arr = np.frombuffer(im.tobytes(), dtype=np.uint8).reshape(h, w, len(mode))
        if mode in ("LA", "RGBA"):
            color, alpha = arr[..., :-1], arr[..., -1:]
            planes[mode[:-1]] = np.ascontiguousarray(color)
            first = alpha.flat[0]
            if np.all(alpha == first):
                extras["constant_alpha"] = int(first)
            else:
                planes["A"] = np.ascontiguousarray(alpha)
        else:
            planes[mode] = arr.copy()

    if mode == "P":
        pal = im.palette
        pmode = getattr(pal, "mode", None)
        if pal is None or pmode is None:
            raise ImageError(f"{name}: mode P image without a palette cannot be coded exactly")
        if pmode != "RGB":
            raise _unsupported(name, mode, f" with an {pmode} palette")
        raw = im.getpalette("RGB")
        if raw is None:
            raise ImageError(f"{name}: mode P image without a palette cannot be coded exactly")
        extras["palette"] = bytes(raw).hex()
        extras["palette_mode"] = "RGB"
        if info_t is not None:
            if isinstance(info_t, (bytes, bytearray)) and 1 <= len(info_t) <= 256:
                extras["transparency"] = bytes(info_t).hex()
            elif _is_int(info_t) and 0 <= info_t <= 255:
                extras["transparency"] = int(info_t)
            else:
                raise _unsupported(name, mode, f" with transparency {info_t!r:.40}")
    elif info_t is not None:
        if mode in ("L", "1") and _is_int(info_t) and 0 <= info_t <= 65535:
            extras["transparency"] = int(info_t)
        elif (
            mode == "RGB"
            and isinstance(info_t, (tuple, list))
            and len(info_t) == 3
            and all(_is_int(v) and 0 <= v <= 65535 for v in info_t)
        ):
            extras["transparency"] = [int(v) for v in info_t]
        elif mode in ("LA", "RGBA"):
            pass  # Pillow leaves stale colour-key info on images with real alpha; it means nothing
        else:
            raise _unsupported(name, mode, f" with transparency {info_t!r:.40}")

    return DecomposedImage(mode=mode, width=w, height=h, planes=planes, extras=extras)


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _check_structure(img: DecomposedImage) -> None:
    """ValueError unless img's planes and extras fit its mode and size."""
    if img.mode not in MODE_CHANNELS or img.mode == "PA":
        raise ValueError(f"cannot compose mode {img.mode!r}")
    for side in (img.width, img.height):
        if not _is_int(side) or not 1 <= side <= MAX_SIDE:
            raise ValueError(f"invalid image size {img.width} x {img.height}")
    names = plane_channels(img.mode, "constant_alpha" in img.extras)
    if sorted(img.planes) != sorted(names):
        raise ValueError(f"mode {img.mode} needs planes {names}, got {sorted(img.planes)}")
    for key in names:
        a = img.planes[key]
        want = (img.height, img.width, len(key))
        if not isinstance(a, np.ndarray) or a.dtype != np.uint8 or a.shape != want:
            shape = getattr(a, "shape", None)
            dtype = getattr(a, "dtype", type(a).__name__)
            raise ValueError(f"plane {key!r} must be uint8 {want}, got {dtype} {shape}")
    if img.mode == "P" and not isinstance(img.extras.get("palette"), str):
        raise ValueError("mode P needs extras['palette']")


def _full_rows(img: DecomposedImage, r0: int, r1: int) -> np.ndarray:
    """Rows r0:r1 of the original image's channels, interleaved in mode order (H, W, C) uint8."""
    names = plane_channels(img.mode, "constant_alpha" in img.extras)
    parts = [img.planes[k][r0:r1] for k in names]
    if "constant_alpha" in img.extras and img.mode in ("LA", "RGBA"):
        parts.append(np.full((r1 - r0, img.width, 1), img.extras["constant_alpha"], dtype=np.uint8))
    if len(parts) == 1:
        return np.ascontiguousarray(parts[0])
    return np.concatenate(parts, axis=2)


def compose(img: DecomposedImage) -> Image.Image:
    """Rebuild the PIL image (mode, pixels, palette, transparency).  ValueError if img is inconsistent."""
    _check_structure(img)
    full = _full_rows(img, 0, img.height)
    size = (img.width, img.height)
    if img.mode == "1":
        plane = full[..., 0]
        if not np.all((plane == 0) | (plane == 255)):
            raise ValueError("a mode 1 image's L plane must hold only 0 and 255")
        im = Image.frombytes("1", size, np.packbits(plane != 0, axis=1).tobytes())
    else:
        im = Image.frombytes(img.mode, size, full.tobytes())
    if img.mode == "P":
        pmode = img.extras.get("palette_mode", "RGB")
        im.putpalette(bytes.fromhex(img.extras["palette"]), pmode)
    t = img.extras.get("transparency")
    if t is not None:
        if img.mode == "P" and isinstance(t, str):
            im.info["transparency"] = bytes.fromhex(t)
        elif img.mode == "RGB":
            im.info["transparency"] = tuple(int(v) for v in t)
        else:
            im.info["transparency"] = int(t)
    return im


_META_KEYS = ("palette", "palette_mode", "transparency")


def pixel_checksum(img: DecomposedImage) -> int:
    """CRC32 over the mode, the size, the palette and transparency, and all pixels of the image.

    Independent of how the image was split into planes: the pixels are hashed interleaved, in the
    mode's channel order, constant alpha included, row by row (mode 1 as bytes 0/255).
    """
    _check_structure(img)
    meta = {k: img.extras[k] for k in _META_KEYS if k in img.extras}
    head = f"snail-pixels-1\0{img.mode}\0{img.width}\0{img.height}\0"
    crc = zlib.crc32(head.encode("ascii"))
    crc = zlib.crc32(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode("ascii"), crc)
    step = max(1, (1 << 22) // (img.width * 4))
    for r0 in range(0, img.height, step):
        crc = zlib.crc32(_full_rows(img, r0, min(img.height, r0 + step)).data, crc)
    return crc & 0xFFFFFFFF


def same_image(a: DecomposedImage, b: DecomposedImage) -> bool:
    """True if a and b are the same image: mode, size, extras and every plane equal."""
    return (
        a.mode == b.mode
        and (a.width, a.height) == (b.width, b.height)
        and a.extras == b.extras
        and a.planes.keys() == b.planes.keys()
        and all(a.planes[k].shape == b.planes[k].shape and np.array_equal(a.planes[k], b.planes[k]) for k in a.planes)
    )


# --------------------------------------------------------------------------------------------
# files

_SIXTEEN = re.compile(r";16[BLN]")


def sample_problem(im: Image.Image) -> str:
    """' (16-bit)' if Pillow would silently reduce wider samples to 8 bits, else ''.

    Pillow opens a 16-bit RGB PNG, or a PPM with maxval above 255, as mode "RGB": this reads the decoder's
    raw mode, so call it before the image is loaded (the data readers use it too).
    """
    for tile in getattr(im, "tile", None) or ():
        args = getattr(tile, "args", None)
        if args is None and isinstance(tile, tuple) and len(tile) > 3:
            args = tile[3]
        rawmode = args if isinstance(args, str) else (args[0] if isinstance(args, tuple) and args and isinstance(args[0], str) else "")
        if _SIXTEEN.search(rawmode):
            return " (16-bit)"
        # PPM / PGM with maxval above 255 is scaled down to 8 bits by Pillow
        codec = getattr(tile, "codec_name", None) or (tile[0] if isinstance(tile, tuple) and tile else None)
        if codec in ("ppm", "ppm_plain") and isinstance(args, tuple) and len(args) >= 2:
            if _is_int(args[-1]) and args[-1] > 255:
                return " (16-bit)"
    return ""


def _low_bit_grey(im: Image.Image) -> int:
    """Bit depth (1..4) of a PNG greyscale image Pillow expanded to 8 bits, else 0."""
    if getattr(im, "format", None) != "PNG":
        return 0
    for tile in getattr(im, "tile", None) or ():
        args = getattr(tile, "args", None)
        m = re.fullmatch(r"L;([124])", args) if isinstance(args, str) else None
        if m:
            return int(m.group(1))
    return 0


def _pillow_limit() -> int:
    lim = Image.MAX_IMAGE_PIXELS
    return min(MAX_PIXELS, 2 * lim) if lim else MAX_PIXELS


def read_image(path: str | os.PathLike) -> DecomposedImage:
    """Read an image file and decompose it.  ImageError (one sentence) for anything it cannot code."""
    name = os.fspath(path)
    if isinstance(name, bytes):
        name = os.fsdecode(name)
    if not os.path.exists(name):
        raise ImageError(f"{name}: no such file")
    if os.path.isdir(name):
        raise ImageError(f"{name} is a directory, not an image")
    try:
        if os.path.getsize(name) == 0:
            raise ImageError(f"{name} is empty, not an image")
    except OSError as e:
        raise ImageError(f"{name}: cannot read it ({e.strerror or e})") from e
    return _read(name, name)


def read_image_bytes(data: bytes, name: str = "standard input") -> DecomposedImage:
    """read_image for the bytes of an image file (`encode -`): the same checks, `name` in messages."""
    if not data:
        raise ImageError(f"{name} is empty, not an image")
    return _read(io.BytesIO(data), name)


def _read(source, name: str) -> DecomposedImage:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(source)
        except UnidentifiedImageError:
            raise ImageError(f"{name} is not an image file (or not in a format Pillow can read)") from None
        except Image.DecompressionBombError:
            raise ImageError(
                f"{name} has too many pixels to decode safely (more than {_pillow_limit():,}; "
                "possibly a decompression bomb)"
            ) from None
        except PermissionError as e:
            raise ImageError(f"{name}: cannot read it (permission denied)") from e
        except Exception as e:  # Pillow parsers raise many kinds (SyntaxError, struct.error, ...)
            raise ImageError(f"{name}: cannot read the image ({_why(e)})") from e

        with im:
            w, h = im.size
            if w < 1 or h < 1:
                raise ImageError(f"{name}: the image is empty ({w} x {h} pixels)")
            if w > MAX_SIDE or h > MAX_SIDE or w * h > MAX_PIXELS:
                raise ImageError(
                    f"{name}: {w} x {h} pixels is too large; snailcompress codes images of at most "
                    f"{MAX_SIDE} pixels a side and {MAX_PIXELS:,} pixels in all"
                )
            try:
                frames = int(getattr(im, "n_frames", 1))
            except Exception as e:
                raise ImageError(f"{name}: cannot read the image ({_why(e)})") from e
            if frames > 1:
                raise ImageError(
                    f"{name} has {frames} frames (animated or multi-page); snailcompress codes single images"
                )
            if im.mode not in SUPPORTED_MODES:
                raise _unsupported(name, im.mode)
            problem = sample_problem(im)
            if problem:
                raise _unsupported(name, im.mode, problem)
            low_bits = _low_bit_grey(im)
            try:
                im.load()
            except Exception as e:
                raise ImageError(f"{name}: the image data is damaged or truncated ({_why(e)})") from e
            img = decompose(im, name)

    t = img.extras.get("transparency")
    if low_bits and img.mode == "L" and isinstance(t, int) and t < (1 << low_bits):
        # Pillow expands 2- and 4-bit grey to 8 bits but leaves the tRNS grey value unscaled
        img.extras["transparency"] = t * (255 // ((1 << low_bits) - 1))
    if img.mode == "P":
        _check_palette_storable(img, name)
    return img


def _why(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:200]


def _check_palette_storable(img: DecomposedImage, name: str) -> None:
    """A palette image must come back exactly from a PNG; find out now rather than when decoding."""
    try:
        ok = same_image(img, _reread(image_file_bytes(img, "PNG")))
    except Exception:
        ok = False
    if ok:
        return
    entries = palette_entries(img.extras)
    top = int(img.planes["P"].max())
    if top >= entries:
        raise ImageError(
            f"{name}: mode P image uses palette index {top} but its palette has only {entries} entries; "
            "it cannot be coded exactly"
        )
    raise ImageError(f"{name}: this mode P image's palette or transparency cannot be stored exactly in a PNG")


_PILLOW_LIMIT_LOCK = threading.Lock()


def _reread(data: bytes) -> DecomposedImage:
    """The image in file bytes this process has just written, read back with Pillow's decompression-bomb
    limit raised to the format's (MAX_PIXELS) for the moment it takes: they are not untrusted, and a
    .snail file may hold more pixels than Pillow reads by default."""
    with _PILLOW_LIMIT_LOCK:
        limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None if limit is None else max(limit, MAX_PIXELS)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as im:
                    im.load()
                    return decompose(im)
        finally:
            Image.MAX_IMAGE_PIXELS = limit


def image_file_bytes(img: DecomposedImage, fmt: str = "PNG", **options: Any) -> bytes:
    """The image file bytes in Pillow format fmt (no check that they read back exactly)."""
    im = compose(img)
    buf = io.BytesIO()
    im.save(buf, fmt, **options)
    return buf.getvalue()


def png_bytes(img: DecomposedImage) -> bytes:
    """The image as PNG bytes, checked to read back exactly (`decode -c`)."""
    fmt, options = WRITE_FORMATS[".png"]
    return _exact_bytes(img, fmt, options, "standard output")


def _exact_bytes(img: DecomposedImage, fmt: str, options: dict, name: str) -> bytes:
    """The image file bytes in `fmt`, re-read to make sure they hold exactly img; ImageError naming
    `name` (where they were to go) otherwise."""
    _check_structure(img)  # an inconsistent img is a bug in the caller: ValueError, not ImageError
    try:
        data = image_file_bytes(img, fmt, **options)
        ok = same_image(img, _reread(data))
    except Exception:  # Pillow refuses the mode for this format (OSError, KeyError, ...) or reads back another
        ok = False
    if not ok:
        what = f"mode {img.mode} image"
        if "transparency" in img.extras:
            what += " with transparency"
        elif img.mode == "P":
            what += f" with a {palette_entries(img.extras)}-entry palette"
        hint = "" if fmt == "PNG" else "; use .png"
        raise ImageError(f"cannot write {name}: this {what} cannot be stored exactly as {fmt}{hint}")
    return data


def write_format(name: str) -> tuple[str, dict]:
    """The format (Pillow's name and save options) that write_image writes `name` in, from its suffix
    (.png where there is none); ImageError where the suffix names no lossless format it writes."""
    suffix = os.path.splitext(name)[1].lower()
    if suffix == "":
        return WRITE_FORMATS[".png"]
    if suffix not in WRITE_FORMATS:
        known = ", ".join(WRITE_FORMATS)
        raise ImageError(f"cannot write {name}: {suffix} is not a format snailcompress writes exactly (use {known})")
    return WRITE_FORMATS[suffix]


def write_image(img: DecomposedImage, path: str | os.PathLike, overwrite: bool = False,
                make_directories: bool = False) -> None:
    """Write img atomically; the format follows the suffix (.png when there is none).
    `make_directories`: create its directory if it is not there.

    ImageError if the suffix names no lossless format we write or the format cannot hold this image
    exactly (it re-reads the encoded bytes to make sure); OutputExistsError (a SnailError) if the
    file exists and not overwrite; SnailError if the directory is not writable.
    """
    name = os.fspath(path)
    if isinstance(name, bytes):
        name = os.fsdecode(name)
    fmt, options = write_format(name)
    suffix = os.path.splitext(name)[1].lower()
    if NETPBM_MODES.get(suffix, img.mode) != img.mode:
        raise ImageError(f"cannot write {name}: {suffix} holds mode {NETPBM_MODES[suffix]} images, and this one is "
                         f"mode {img.mode}; use .png or .pnm")
    if not overwrite and os.path.lexists(name):
        raise OutputExistsError(f"{name} already exists (use -f to overwrite)")
    atomic_write(name, _exact_bytes(img, fmt, options, name), overwrite, make_directories)
