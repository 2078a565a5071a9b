"""`snailcompress demo`: the main job end to end on an image that ships with the package.

Encode the demo image with the shipped default model, decode it, check the pixels are identical, and
compare the file size with the classical lossless codecs.
"""

from __future__ import annotations

import shutil
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from .api import decode_file, encode_file
from .bench.codecs import get_codecs

DEMO_IMAGE = "kodim23-crop.png"
DEMO_FILES = (DEMO_IMAGE, "demo.snail", "demo-decoded.png")  # what it writes in its directory
COMPARE = "png,webp,jpegxl-e9,jpeg2000"


def run_demo(workdir: Path | None = None, echo=print) -> dict[str, float]:
    """Returns bits/subpixel by method; raises if the round trip is not exact."""
    source = Path(str(resources.files("snailcompress") / "assets" / DEMO_IMAGE))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        image_path, snail_path, decoded_path = (work / name for name in DEMO_FILES)
        shutil.copyfile(source, image_path)
        pixels = np.asarray(Image.open(image_path).convert("RGB"))
        echo(f"demo image: {DEMO_IMAGE} ({pixels.shape[1]}x{pixels.shape[0]} RGB, a Kodak crop held out from training)")
        encoded = encode_file(image_path, snail_path, force=True)
        echo(f"encode: {encoded.target.name}, {encoded.bytes:,} bytes, {encoded.bits_per_subpixel:.3f} bits/subpixel, {encoded.seconds:.1f} s")
        decoded = decode_file(encoded.target, decoded_path, force=True)
        same = np.array_equal(pixels, np.asarray(Image.open(decoded.target).convert("RGB")))
        if not same:
            raise AssertionError("demo: decoded pixels differ from the original")
        echo(f"decode: {decoded.target.name}, pixels identical to the original, {decoded.seconds:.1f} s")
        results = {"snailcompress": encoded.bits_per_subpixel}
        echo("the same image with classical lossless codecs (whole files):")
        for codec in get_codecs(COMPARE):
            size = len(codec.encode(pixels))
            results[codec.label] = 8 * size / pixels.size
        width = max(len(k) for k in results)
        for method, bits in sorted(results.items(), key=lambda kv: kv[1]):
            echo(f"  {method:<{width}}  {bits:.3f} bits/subpixel  ({bits / results['snailcompress']:.2f}x)")
        echo(f"files kept in {work}" if workdir else
             "the files were made in a temporary folder and removed; `snailcompress demo --keep DIR` keeps them")
    return results
