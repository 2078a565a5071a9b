"""Classical lossless image codecs behind one small interface, for the benchmark.

Every codec turns a uint8 image of shape (H, W), (H, W, 1) or (H, W, 3) into the
bytes of a complete, standalone file (every header and marker counted) and back.
Grayscale images, (H, W) or (H, W, 1), are always coded as 2-D arrays.

Registered codecs (``CODECS``):

=============  =============================================================
name           library call
=============  =============================================================
png            Pillow ``Image.save(f, "PNG", optimize=True, compress_level=9)``
webp           Pillow ``Image.save(f, "WEBP", lossless=True, quality=100, method=6)``
               (Pillow writes grayscale as RGB with three equal channels;
               ``decode`` checks they are equal and returns one)
jpegxl-e7      ``imagecodecs.jpegxl_encode(img, lossless=True, distance=0.0, effort=7)``
jpegxl-e9      ``imagecodecs.jpegxl_encode(img, lossless=True, distance=0.0, effort=9)``
               (bare JPEG XL codestream, no ISO-BMFF container)
jpeg2000       ``imagecodecs.jpeg2k_encode(img, level=0, reversible=True,
               codecformat=JPEG2K.CODEC.J2K)``: reversible 5/3 wavelet and
               reversible colour transform, written as a raw J2K codestream
               (a complete ``.j2k`` file; the JP2 box container would add about
               85 bytes per file)
jpegls         ``imagecodecs.jpegls_encode(img, level=0)`` (NEAR = 0, i.e.
               lossless; CharLS writes a SPIFF header, which is counted)
=============  =============================================================

``measure`` codes a set of images either one file per image or as one mosaic
file, verifies that every file decodes to exactly the input pixels, and reports
bits per subpixel (the papers' "bits/dim") and throughput.  A codec that is not lossless on
some input raises :class:`NotLosslessError`, which is deliberately *not* a
:class:`~snailcompress.errors.SnailError`: it is a bug, not a user error.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import numpy as np

from snailcompress.errors import ImageError, UsageError

__all__ = [
    "Codec",
    "CodecResult",
    "CODECS",
    "NotLosslessError",
    "PillowPNG",
    "PillowWebP",
    "JpegXL",
    "Jpeg2000",
    "JpegLS",
    "get_codecs",
    "measure",
    "check_sizes",
    "mosaic_grid",
    "tile_mosaic",
]


class NotLosslessError(AssertionError):
    """A codec's decoded output differs from its input: a bug (ours or the library's)."""


def _as_codable(image: np.ndarray) -> np.ndarray:
    """Check dtype/shape and return the array the codec really codes: (H, W) or (H, W, 3), C-contiguous."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ImageError(f"only 8-bit images can be coded; got dtype {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ImageError(
            f"images must have shape (H, W), (H, W, 1) or (H, W, 3); got {tuple(image.shape)}"
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ImageError(f"images must be at least 1x1; got {tuple(image.shape)}")
    return np.ascontiguousarray(image)


def _reshape(name: str, out: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    shape = tuple(int(s) for s in shape)
    if out.size != math.prod(shape):
        raise ImageError(f"{name}: decoded image has shape {tuple(out.shape)}, cannot be returned as {shape}")
    return out.reshape(shape)


def _channels(image: np.ndarray) -> int:
    return 1 if image.ndim == 2 else int(image.shape[2])


class Codec:
    """A lossless image codec. Subclasses implement ``_encode`` and ``_decode`` on 2-D or (H, W, 3) arrays."""

    name: str = ""
    label: str = ""
    #: largest width or height the format can hold (None: no practical limit)
    max_side: int | None = None

    # -- public interface -------------------------------------------------
    def available(self) -> bool:
        """True when the underlying library (and its codec) can be used here."""
        return True

    def require(self) -> None:
        """Raise UsageError with a clear message if the codec cannot be used here."""
        if not self.available():
            raise UsageError(f"codec '{self.name}' ({self.label}) is not available in this installation")

    def encode(self, image: np.ndarray) -> bytes:
        """Return the complete file bytes for a uint8 image (H, W), (H, W, 1) or (H, W, 3)."""
        self.require()
        arr = _as_codable(image)
        if self.max_side is not None and max(arr.shape[:2]) > self.max_side:
            raise ImageError(
                f"{self.label} cannot hold a {arr.shape[1]}x{arr.shape[0]} image "
                f"(at most {self.max_side} pixels a side)"
            )
        return bytes(self._encode(arr))

    def decode(self, data: bytes, shape: Sequence[int] | None = None) -> np.ndarray:
        """Decode a file written by ``encode``.

        A file does not record whether a grayscale input was (H, W) or (H, W, 1):
        without ``shape`` grayscale decodes to (H, W) and colour to (H, W, 3).
        Pass the original ``shape`` to get exactly that shape back (the pixel
        count must match, or ImageError is raised).
        """
        self.require()
        out = np.asarray(self._decode(bytes(data)))
        if out.ndim == 3 and out.shape[2] == 1:
            out = out[:, :, 0]
        return out if shape is None else _reshape(self.name, out, shape)

    def roundtrip(self, image: np.ndarray) -> tuple[bytes, np.ndarray]:
        """Encode, decode and return (file bytes, decoded array in the input's shape)."""
        data = self.encode(image)
        return data, self.decode(data, shape=np.shape(image))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    # -- implementation -----------------------------------------------------
    def _encode(self, image: np.ndarray) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def _decode(self, data: bytes) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


# --------------------------------------------------------------------------- Pillow


class _PillowCodec(Codec):
    pil_format: ClassVar[str] = ""
    save_kwargs: ClassVar[dict] = {}

    def available(self) -> bool:
        try:
            from PIL import features
        except ImportError:
            return False
        feature = self.pil_format.lower()
        if feature in ("webp",):
            return bool(features.check(feature))
        return True

    def _to_pil(self, image: np.ndarray):
        from PIL import Image

        return Image.fromarray(image)  # uint8 (H, W) -> "L", (H, W, 3) -> "RGB"

    def _encode(self, image: np.ndarray) -> bytes:
        buf = io.BytesIO()
        self._to_pil(image).save(buf, self.pil_format, **self.save_kwargs)
        return buf.getvalue()

    def _decode(self, data: bytes) -> np.ndarray:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.mode not in ("L", "RGB"):
                raise ImageError(f"{self.name}: decoded unexpected mode {im.mode}")
            return np.asarray(im)


class PillowPNG(_PillowCodec):
    name = "png"
    label = "PNG (Pillow, optimize, level 9)"
    pil_format = "PNG"
    save_kwargs = {"optimize": True, "compress_level": 9}
    max_side = 2**31 - 1


class PillowWebP(_PillowCodec):
    """WebP lossless. The format has no grayscale mode: gray is written as RGB with equal channels."""

    name = "webp"
    label = "WebP lossless (Pillow, method 6)"
    pil_format = "WEBP"
    save_kwargs = {"lossless": True, "quality": 100, "method": 6}
    max_side = 16383

    def _to_pil(self, image: np.ndarray):
        from PIL import Image

        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        return Image.fromarray(image)

    def decode(self, data: bytes, shape: Sequence[int] | None = None) -> np.ndarray:
        """As Codec.decode, but WebP files are always RGB: without ``shape`` a
        grayscale file decodes to (H, W, 3); with a grayscale ``shape`` the three
        channels are checked equal and collapsed back to one."""
        out = super().decode(data, None)
        if out.ndim != 3 or out.shape[2] != 3:
            raise ImageError(f"webp: decoded unexpected shape {tuple(out.shape)}")
        if shape is not None and (len(shape) == 2 or (len(shape) == 3 and shape[2] == 1)):
            if not (np.array_equal(out[:, :, 0], out[:, :, 1]) and np.array_equal(out[:, :, 0], out[:, :, 2])):
                raise NotLosslessError("webp: a grayscale file decoded to unequal RGB channels")
            out = out[:, :, 0]
        return out if shape is None else _reshape(self.name, out, shape)


# --------------------------------------------------------------------------- imagecodecs


def _imagecodecs():
    try:
        import imagecodecs
    except ImportError as exc:  # pragma: no cover - depends on installation
        raise UsageError("the classical codecs need the 'imagecodecs' package (pip install imagecodecs)") from exc
    return imagecodecs


class _ImagecodecsCodec(Codec):
    ic_name: ClassVar[str] = ""  # e.g. "JPEGXL": imagecodecs.JPEGXL.available

    def available(self) -> bool:
        try:
            import imagecodecs
        except ImportError:
            return False
        try:
            return bool(getattr(imagecodecs, self.ic_name).available)
        except Exception:
            return False


class JpegXL(_ImagecodecsCodec):
    ic_name = "JPEGXL"
    max_side = 2**30

    def __init__(self, effort: int) -> None:
        self.effort = int(effort)
        self.name = f"jpegxl-e{self.effort}"
        self.label = f"JPEG-XL lossless (effort {self.effort})"

    def _encode(self, image: np.ndarray) -> bytes:
        ic = _imagecodecs()
        return ic.jpegxl_encode(image, lossless=True, distance=0.0, effort=self.effort)

    def _decode(self, data: bytes) -> np.ndarray:
        return _imagecodecs().jpegxl_decode(data)


class Jpeg2000(_ImagecodecsCodec):
    name = "jpeg2000"
    label = "JPEG 2000 lossless (OpenJPEG, 5/3)"
    ic_name = "JPEG2K"
    max_side = 2**31 - 1

    def _encode(self, image: np.ndarray) -> bytes:
        ic = _imagecodecs()
        return ic.jpeg2k_encode(image, level=0, reversible=True, codecformat=ic.JPEG2K.CODEC.J2K)

    def _decode(self, data: bytes) -> np.ndarray:
        return _imagecodecs().jpeg2k_decode(data)


class JpegLS(_ImagecodecsCodec):
    name = "jpegls"
    label = "JPEG-LS lossless (CharLS)"
    ic_name = "JPEGLS"
    max_side = 65535

    def _encode(self, image: np.ndarray) -> bytes:
        return _imagecodecs().jpegls_encode(image, level=0)

    def _decode(self, data: bytes) -> np.ndarray:
        return _imagecodecs().jpegls_decode(data)


# --------------------------------------------------------------------------- registry

CODECS: dict[str, Codec] = {
    c.name: c
    for c in (PillowPNG(), PillowWebP(), JpegXL(7), JpegXL(9), Jpeg2000(), JpegLS())
}


def get_codecs(names: str | Sequence[str] | None = None) -> list[Codec]:
    """Codecs by name, in the order given.

    ``None``, ``"all"`` (or a list containing only "all"): every *available*
    codec in registry order; ``"none"``: no codec (the models' rows only). A
    comma-separated string is accepted. An unknown name, or none at all (an
    empty string), raises UsageError; a known but unavailable one too.
    """
    if names is None:
        wanted: list[str] = ["all"]
    elif isinstance(names, str):
        wanted = [n.strip() for n in names.split(",") if n.strip()]
    else:
        wanted = [str(n).strip() for n in names if str(n).strip()]
    if not wanted:
        raise UsageError("--codecs names no codec: give names, 'all' or 'none'")
    keys = [n.lower() for n in wanted]
    if keys == ["none"]:
        return []
    if keys == ["all"]:
        return [c for c in CODECS.values() if c.available()]
    out: list[Codec] = []
    for n, key in zip(wanted, keys):
        if key in ("all", "none"):
            raise UsageError(f"'{key}' cannot be combined with other codec names")
        if key not in CODECS:
            raise UsageError(f"unknown codec '{n}'; known: {', '.join(CODECS)}")
        codec = CODECS[key]
        codec.require()
        if codec not in out:
            out.append(codec)
    return out


# --------------------------------------------------------------------------- measuring


@dataclass
class CodecResult:
    """Outcome of :func:`measure` for one codec on one set of images."""

    codec: str
    label: str
    mosaic: bool
    images: int
    subpixels: int
    total_bytes: int
    bits_per_subpixel: float
    encode_s: float
    decode_s: float
    encode_images_per_s: float
    decode_images_per_s: float
    per_image_bytes: np.ndarray | None = field(default=None, repr=False)
    #: subpixels of each image (H * W * C), always set
    per_image_subpixels: np.ndarray | None = field(default=None, repr=False)

    @property
    def per_image_bits_per_subpixel(self) -> np.ndarray | None:
        """Bits per subpixel of each image's own file; None for a mosaic."""
        if self.per_image_bytes is None or self.per_image_subpixels is None:
            return None
        return self.per_image_bytes * 8.0 / self.per_image_subpixels

    def as_row(self) -> dict:
        """A row for the report table (kind "codec")."""
        return {
            "method": self.codec,
            "label": self.label,
            "kind": "codec",
            "bits_per_subpixel": self.bits_per_subpixel,
            "images": self.images,
            "subpixels": self.subpixels,
            "total_bytes": self.total_bytes,
            "mosaic": self.mosaic,
            "encode_s": self.encode_s,
            "decode_s": self.decode_s,
            "encode_images_per_s": self.encode_images_per_s,
            "decode_images_per_s": self.decode_images_per_s,
        }


def mosaic_grid(n: int) -> tuple[int, int]:
    """(rows, cols) of a near-square grid with room for n cells: cols = ceil(sqrt n), rows = ceil(n / cols)."""
    if n < 1:
        raise ValueError("need at least one image")
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    return rows, cols


def tile_mosaic(images: Sequence[np.ndarray]) -> np.ndarray:
    """Tile images row-major into a near-square grid of equal cells.

    Cells are as large as the largest image; smaller images sit at the top-left
    of their cell and everything else (including unused cells of the last row)
    is zero. Returns (H, W) for grayscale, (H, W, 3) for colour.
    """
    arrs = [_as_codable(im) for im in images]
    ch = _channels(arrs[0])
    ch_h = max(a.shape[0] for a in arrs)
    ch_w = max(a.shape[1] for a in arrs)
    rows, cols = mosaic_grid(len(arrs))
    shape = (rows * ch_h, cols * ch_w) + (() if ch == 1 else (ch,))
    out = np.zeros(shape, dtype=np.uint8)
    for i, a in enumerate(arrs):
        r, c = divmod(i, cols)
        out[r * ch_h : r * ch_h + a.shape[0], c * ch_w : c * ch_w + a.shape[1]] = a
    return out


def check_sizes(codecs: Sequence[Codec], images: Sequence[np.ndarray], mosaic: bool) -> None:
    """UsageError, before any work, for a codec that cannot hold one of these images (H, W[, C]), or
    their mosaic where one is coded: a run should not end there, its models' work done and lost."""
    heights, widths = [im.shape[0] for im in images], [im.shape[1] for im in images]
    largest = max(range(len(images)), key=lambda i: max(heights[i], widths[i]))
    sizes = [(f"image {largest + 1}, {widths[largest]}x{heights[largest]}", max(heights[largest], widths[largest]))]
    if mosaic:
        rows, cols = mosaic_grid(len(images))
        sizes.append((f"mosaic of them, {cols * max(widths)}x{rows * max(heights)}",
                      max(rows * max(heights), cols * max(widths))))
    for codec in codecs:
        for what, side in sizes:
            if codec.max_side is not None and side > codec.max_side:
                raise UsageError(f"codec '{codec.name}' ({codec.label}) cannot hold the {what} (at most "
                                 f"{codec.max_side} pixels a side): leave it out of --codecs")


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def measure(codec: Codec, images: Sequence[np.ndarray], mosaic: bool = False) -> CodecResult:
    """Code ``images`` with ``codec``; return sizes, bits/subpixel and throughput.

    * ``mosaic=False``: one file per image. ``total_bytes`` is the sum of the
      file sizes, ``per_image_bytes`` holds each file's size.
    * ``mosaic=True``: the images are tiled (see :func:`tile_mosaic`) into ONE
      file. The padding of unused/oversize cells is coded but not counted as
      subpixels: bits/subpixel = (bytes of the real mosaic file) * 8 / (subpixels of
      the real images), so padding can only make the mosaic look worse.
      ``per_image_bytes`` is None.

    bits_per_subpixel = total_bytes * 8 / sum(H * W * C) over the input images.
    Every file is decoded and compared with its input (outside the timed
    region); a mismatch raises NotLosslessError. Timings use
    ``time.perf_counter`` around the encode and decode calls only (the mosaic
    tiling is not timed). Images must all have the same channel count.
    """
    images = list(images)
    if not images:
        raise UsageError("measure() needs at least one image")
    arrs = [_as_codable(im) for im in images]
    channels = {_channels(a) for a in arrs}
    if len(channels) != 1:
        raise ImageError(f"all images must have the same number of channels; got {sorted(channels)}")
    subpixels = int(sum(a.size for a in arrs))
    n = len(arrs)

    if mosaic:
        big = tile_mosaic(arrs)
        t0 = time.perf_counter()
        data = codec.encode(big)
        enc_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = codec.decode(data, shape=big.shape)
        dec_s = time.perf_counter() - t0
        if out.shape != big.shape or not np.array_equal(out, big):
            raise NotLosslessError(
                f"{codec.name}: mosaic {tuple(big.shape)} did not decode to the same pixels"
            )
        total = len(data)
        per_image = None
    else:
        sizes = np.zeros(n, dtype=np.int64)
        enc_s = dec_s = 0.0
        for i, a in enumerate(arrs):
            t0 = time.perf_counter()
            data = codec.encode(a)
            t1 = time.perf_counter()
            out = codec.decode(data, shape=a.shape)
            t2 = time.perf_counter()
            enc_s += t1 - t0
            dec_s += t2 - t1
            if out.shape != a.shape or not np.array_equal(out, a):
                raise NotLosslessError(
                    f"{codec.name}: image {i} of shape {tuple(a.shape)} did not decode to the same pixels"
                )
            sizes[i] = len(data)
        total = int(sizes.sum())
        per_image = sizes

    result = CodecResult(
        codec=codec.name,
        label=codec.label,
        mosaic=bool(mosaic),
        images=n,
        subpixels=subpixels,
        total_bytes=int(total),
        bits_per_subpixel=total * 8.0 / subpixels,
        encode_s=enc_s,
        decode_s=dec_s,
        encode_images_per_s=_rate(n, enc_s),
        decode_images_per_s=_rate(n, dec_s),
        per_image_bytes=per_image,
        per_image_subpixels=np.array([a.size for a in arrs], dtype=np.int64),
    )
    return result
