"""Writes the golden files: small images with their .snail files, coded by the shipped models with
integer arithmetic version 1 (every plane by the model), and a few coded by the other methods as
the encoder chooses them (stored, deflate, bilevel: codec/methods.py). tests/test_golden.py decodes
every one of them and re-encodes every source in each test run.

Run it only for a new arithmetic version (or new shipped models), or to add a golden file: one
that changes means that files written before cannot be read, which needs a new arithmetic version,
never a silently different table.

    python tests/golden/make.py            # writes the missing ones, keeps the others
    python tests/golden/make.py --force
"""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from snailcompress import api
from snailcompress.codec import calibration, coder, container
from snailcompress.codec.images import decompose
from snailcompress.codec.tiles import WindowPlan

HERE = Path(__file__).parent
CALIBRATED = "rgb-calibrated"  # its plane is calibrated although it is too small for the encoder to choose it
OTHER_METHODS = ("bilevel", "stored", "deflate", "rgba-mask")  # coded as the encoder chooses; the others by the model


def sources() -> dict[str, Image.Image]:
    crop = Image.open(resources.files("snailcompress") / "assets" / "kodim23-crop.png").convert("RGB")
    pixels = np.asarray(crop)
    alpha = np.tile(np.linspace(0, 255, 23).astype(np.uint8), (19, 1))
    return {
        "rgb-odd": Image.fromarray(pixels[100:137, 40:75]),  # 37 x 35: four windows, context above and left
        "gray": Image.fromarray(pixels[10:30, 200:227, 1]),  # mode L
        "rgba": Image.fromarray(np.dstack([pixels[60:79, 10:33], alpha]), "RGBA"),
        "palette": crop.crop((0, 0, 24, 20)).quantize(colors=12),  # mode P
        CALIBRATED: Image.fromarray(pixels[150:170, 150:174]),
        **other_methods(pixels),
    }


def other_methods(pixels: np.ndarray) -> dict[str, Image.Image]:
    """Sources that the encoder codes otherwise than by the model (one plane or both)."""
    text = Image.new("1", (40, 24), 1)
    ImageDraw.Draw(text).text((1, 1), "snail\n1-bit", fill=0)
    stripes = np.zeros((12, 40, 3), np.uint8)
    stripes[:, ::3] = (200, 30, 90)
    stripes[::4] = (5, 5, 250)
    yy, xx = np.mgrid[:19, :23]
    disc = np.where((yy - 9) ** 2 + (xx - 11) ** 2 < 64, 255, 0).astype(np.uint8)
    return {
        "bilevel": text,  # mode 1
        "stored": Image.fromarray(np.random.default_rng(6).integers(0, 256, (10, 13), dtype=np.uint8)),  # noise
        "deflate": Image.fromarray(stripes),
        "rgba-mask": Image.fromarray(np.dstack([pixels[60:79, 10:33], disc]), "RGBA"),  # model + bilevel
    }


def encode(image: Image.Image, name: str) -> bytes:
    decomposed = decompose(image)
    snail = api.encode_image(decomposed, api.ModelChooser(), calibrate=False, fallback=name in OTHER_METHODS)
    if name == CALIBRATED:
        plane = snail.planes[0]
        model = api.ModelChooser().for_channels(3)
        plan = WindowPlan.for_image(snail.height, snail.width, plane.tile, plane.context, plane.band)
        sample = calibration.sample_pixels(api.integer_network(model), plan, decomposed.planes["RGB"])
        layer = calibration.OutputLayer.from_weights(model.weights)
        fitted, _ = calibration.fit_calibration(layer, sample, snail.width * snail.height)  # a small image: forced
        words, _ = coder.code_plane(api.integer_network(model, fitted), decomposed.planes["RGB"], plane.tile,
                                    plane.context, plane.band)
        snail = container.SnailFile(snail.width, snail.height, snail.mode,
                                    (container.Plane("RGB", plane.model_id, words, calibration=fitted.numbers()),),
                                    snail.pixel_crc32, snail.arithmetic, snail.extras)
    return container.write(snail)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="overwrite the golden files")
    args = parser.parse_args()
    for name, image in sources().items():
        png, snail = HERE / f"{name}.png", HERE / f"{name}.snail"
        if (png.exists() or snail.exists()) and not args.force:
            print(f"{snail.name}: kept (golden files change only with a new arithmetic version: --force)")
            continue
        image.save(png)
        snail.write_bytes(encode(Image.open(png), name))
        print(f"{snail.name}: {snail.stat().st_size} bytes")


if __name__ == "__main__":
    main()
