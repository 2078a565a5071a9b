"""Small and odd images: the .snail size and the coding chosen for each plane, against the raw
pixels, PNG, WebP and JPEG-XL, and what the model alone would have written.

Images: a row, a column and an 8x8 crop of kodim23 (held out from training), bilevel text and line
art drawn with Pillow, a flat and a noise image, an RGBA crop with a soft-edged alpha, a photo crop.

    python benchmarks/small_images.py --out results/small_images.md
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import imagecodecs
import numpy as np
from PIL import Image, ImageDraw

from snailcompress import api
from snailcompress.bench.codecs import CODECS
from snailcompress.bench.heldout import SHARED
from snailcompress.bench.scripts import publish, run, run_facts
from snailcompress.codec import container
from snailcompress.codec.images import decompose, same_image

KODIM23 = SHARED / "kodak" / "kodim23.png"
WORDS = "the quick brown fox jumps over the lazy dog while a snail compresses every bit of it".split()


def text(width: int, height: int) -> Image.Image:
    image = Image.new("1", (width, height), 1)
    draw, rng, y = ImageDraw.Draw(image), np.random.default_rng(0), 1
    while y < height:
        draw.text((2, y), " ".join(rng.choice(WORDS, 6)), fill=0)
        y += 12
    return image


def line_art(size: int) -> Image.Image:
    image = Image.new("1", (size, size), 1)
    draw, rng = ImageDraw.Draw(image), np.random.default_rng(1)
    for _ in range(8):
        ends = [tuple(rng.integers(0, size, 2)), tuple(rng.integers(0, size, 2))]
        draw.line(ends, fill=0, width=int(rng.integers(1, 3)))
    for _ in range(3):
        x, y = rng.integers(0, size - 20, 2)
        draw.ellipse([int(x), int(y), int(x) + 20, int(y) + int(rng.integers(8, 20))], outline=0)
    return image


def soft_disc(size: int) -> np.ndarray:
    """An alpha of 255 inside a disc, 0 outside, anti-aliased (drawn at 4x, then averaged)."""
    big = Image.new("L", (4 * size, 4 * size), 0)
    ImageDraw.Draw(big).ellipse([20, 28, 4 * size - 36, 4 * size - 12], fill=255)
    return np.asarray(big.resize((size, size), Image.Resampling.BOX))


def images() -> dict[str, Image.Image]:
    photo = np.asarray(Image.open(KODIM23).convert("RGB"))
    rng = np.random.default_rng(2)
    return {
        "kodim23 row (1x300)": Image.fromarray(photo[256:257, 200:500].copy()),
        "kodim23 column (300x1)": Image.fromarray(photo[100:400, 384:385].copy()),
        "kodim23 8x8 crop": Image.fromarray(photo[250:258, 400:408].copy()),
        "text, bilevel 64x64": text(64, 64),
        "line art, bilevel 64x64": line_art(64),
        "text, bilevel 256x256": text(256, 256),
        "flat RGB 256x256": Image.new("RGB", (256, 256), (40, 120, 200)),
        "noise RGB 64x64": Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)),
        "RGBA 128x128, soft alpha edge": Image.fromarray(np.dstack([photo[200:328, 300:428], soft_disc(128)]), "RGBA"),
        "kodim23 crop 128x128": Image.fromarray(photo[200:328, 300:428].copy()),
    }


def raw_bytes(image: Image.Image) -> int:
    width, height = image.size
    if image.mode == "1":
        return (width + 7) // 8 * height
    return width * height * len(image.getbands())


def png_bytes(image: Image.Image) -> int:
    """Pillow's PNG of the image in its own mode (1-bit for mode 1), as bench/codecs.py's "png" sets it."""
    out = io.BytesIO()
    image.save(out, "PNG", **CODECS["png"].save_kwargs)
    return len(out.getvalue())


def classical_bytes(name: str, image: Image.Image) -> int:
    """A bench/codecs.py codec's file of the pixels (bilevel as 0/255 grey), checked lossless."""
    pixels = np.asarray(image.convert("L") if image.mode == "1" else image)
    codec = CODECS[name]
    if pixels.ndim == 2 or pixels.shape[2] == 3:
        data, back = codec.roundtrip(pixels)
    elif name == "webp":  # RGBA, which codecs.py's interface leaves out; `exact` keeps the colour where alpha is 0
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, "WEBP", **CODECS["webp"].save_kwargs, exact=True)
        data, back = out.getvalue(), np.asarray(Image.open(out))
    else:
        data = codec._encode(pixels)
        back = imagecodecs.jpegxl_decode(data)
    if not np.array_equal(back, pixels):
        raise AssertionError(f"{name} is not lossless on this image")
    return len(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    models = api.ModelChooser()
    lines = [
        "# Small and odd images: never much larger than the pixels",
        "",
        f"`python benchmarks/small_images.py{' --out ' + str(args.out) if args.out else ''}`; {run_facts()}.",
        "",
        "The shipped models: " + " and ".join(f"model {m.name} (id {m.model_id})"
                                                for m in (models.for_channels(3), models.for_channels(1))) + ".",
        "",
        "Bytes of each file, every header byte counted. *raw*: the pixels, a byte a subpixel (bilevel: a bit a",
        "pixel, rows padded to bytes). *PNG*: Pillow, optimize, level 9, in the image's own mode (1-bit for",
        "bilevel). *WebP*: lossless, method 6 (RGBA: `exact`). *JPEG-XL*: lossless, effort 9. *.snail*: `snailcompress encode`",
        "with its defaults (calibrated), decoded again and checked; *coding*: the method of each plane (the",
        "encoder keeps the smallest file: the model, stored, deflate, bilevel; `codec/methods.py`). *model",
        "alone*: the same encoder with every plane coded by the model (`encode_image(..., fallback=False)`),",
        "what it wrote before it had the other methods. *s*: the default encode's seconds.",
        "",
        "| image | mode | raw | PNG | WebP | JPEG-XL | .snail | coding | model alone | s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, image in images().items():
        decomposed = decompose(image)
        start = time.perf_counter()
        snail = api.encode_image(decomposed, models)
        seconds = time.perf_counter() - start
        data = container.write(snail)
        if not same_image(api.decode_image(container.read(data), models), decomposed):
            raise AssertionError(f"{name}: the .snail file does not decode to the image")
        alone = container.file_size(api.encode_image(decomposed, models, fallback=False))
        coding = " + ".join(f"{p.channels} {p.method}" for p in snail.planes)
        if len(snail.planes) == 2 and snail.planes[1].method == "deflate" and not snail.planes[1].data:
            coding = f"{snail.planes[0].channels} and A deflate, one stream"
        sizes = [raw_bytes(image), png_bytes(image), *(classical_bytes(c, image) for c in ("webp", "jpegxl-e9"))]
        lines.append(f"| {name} | {image.mode} | " + " | ".join(f"{v:,}" for v in sizes)
                     + f" | **{len(data):,}** | {coding} | {alone:,} | {seconds:.1f} |")
        print(lines[-1], flush=True)
    publish(lines, args.out)


if __name__ == "__main__":
    run(main)
