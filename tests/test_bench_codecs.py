"""Classical codecs, Table 1 of the paper, and the report writer of the benchmark."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pandas as pd
import pytest

from snailcompress.bench import codecs as bc
from snailcompress.bench.codecs import CODECS, CodecResult, get_codecs, measure, mosaic_grid, tile_mosaic
from snailcompress.bench.paper import TABLE1, paper_rows
from snailcompress.bench.report import format_table, write_report
from snailcompress.errors import ImageError, UsageError

NAMES = ["png", "webp", "jpegxl-e7", "jpegxl-e9", "jpeg2000", "jpegls"]


def _random(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def _smooth(shape, seed=0):
    h, w = shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    base = 128 + 60 * np.sin(xx / max(w, 1) * 3.0) * np.cos(yy / max(h, 1) * 2.0)
    if len(shape) == 2:
        img = base
    else:
        img = np.stack([base + 10 * c for c in range(shape[2])], axis=-1)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


@pytest.fixture(params=NAMES)
def codec(request):
    c = CODECS[request.param]
    if not c.available():
        pytest.skip(f"{request.param} not available here")
    return c


def test_registry_has_all_codecs():
    assert list(CODECS) == NAMES
    for name, c in CODECS.items():
        assert c.name == name and c.label


SHAPES = [(7, 5), (7, 5, 1), (7, 5, 3), (1, 1), (1, 1, 1), (1, 1, 3), (5, 1, 3), (1, 9), (17, 23, 3)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", ["random", "smooth"])
def test_roundtrip_exact(codec, shape, kind):
    # Every codec here, including WebP (whose grayscale goes through RGB), handles 1x1.
    img = (_random if kind == "random" else _smooth)(shape, seed=len(shape))
    data, out = codec.roundtrip(img)
    assert isinstance(data, bytes) and len(data) > 0
    assert out.shape == img.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, img)
    # decode without shape: (H, W) for gray (except WebP: always RGB), (H, W, 3) for colour
    plain = codec.decode(data)
    if img.ndim == 3 and img.shape[2] == 3:
        np.testing.assert_array_equal(plain, img)
    elif codec.name != "webp":
        np.testing.assert_array_equal(plain, img.reshape(img.shape[:2]))


def test_smooth_compresses_better_than_noise(codec):
    for shape in [(32, 32, 3), (32, 32)]:
        noise = measure(codec, [_random(shape, s) for s in range(3)], mosaic=False)
        smooth = measure(codec, [_smooth(shape, s) for s in range(3)], mosaic=False)
        assert smooth.bits_per_subpixel < noise.bits_per_subpixel, (codec.name, shape)
        # noise cannot be compressed below ~8 bits/subpixel (plus headers)
        assert noise.bits_per_subpixel > 7.5


def test_measure_counts_every_byte(codec):
    imgs = [_random((8, 6, 3), s) for s in range(5)]
    per_file = measure(codec, imgs, mosaic=False)
    assert isinstance(per_file, CodecResult)
    sizes = [len(codec.encode(im)) for im in imgs]
    assert per_file.per_image_bytes is not None
    assert per_file.per_image_bytes.tolist() == sizes
    assert per_file.total_bytes == sum(sizes)
    assert per_file.subpixels == 5 * 8 * 6 * 3
    assert per_file.bits_per_subpixel == pytest.approx(sum(sizes) * 8 / (5 * 8 * 6 * 3))
    assert per_file.images == 5 and not per_file.mosaic
    np.testing.assert_allclose(per_file.per_image_bits_per_subpixel, np.array(sizes) * 8 / (8 * 6 * 3))
    assert per_file.encode_s > 0 and per_file.decode_s > 0
    assert per_file.encode_images_per_s == pytest.approx(5 / per_file.encode_s)
    assert per_file.decode_images_per_s == pytest.approx(5 / per_file.decode_s)

    mosaic = measure(codec, imgs, mosaic=True)
    big = tile_mosaic(imgs)
    assert big.shape == (2 * 8, 3 * 6, 3)  # 5 images -> 2 x 3 grid, one empty cell
    assert mosaic.mosaic and mosaic.per_image_bytes is None
    assert mosaic.total_bytes == len(codec.encode(big))
    # divided by the real images' subpixels, not the padded mosaic's
    assert mosaic.subpixels == per_file.subpixels
    assert mosaic.bits_per_subpixel == pytest.approx(mosaic.total_bytes * 8 / per_file.subpixels)
    # one file has one set of headers: cheaper than five
    assert mosaic.total_bytes < per_file.total_bytes


def test_tile_mosaic_layout():
    assert mosaic_grid(1) == (1, 1)
    assert mosaic_grid(4) == (2, 2)
    assert mosaic_grid(5) == (2, 3)
    assert mosaic_grid(10) == (3, 4)
    imgs = [np.full((2, 3), i + 1, np.uint8) for i in range(3)]
    big = tile_mosaic(imgs)
    assert big.shape == (4, 6)
    np.testing.assert_array_equal(big[:2, :3], 1)
    np.testing.assert_array_equal(big[:2, 3:], 2)
    np.testing.assert_array_equal(big[2:, :3], 3)
    np.testing.assert_array_equal(big[2:, 3:], 0)
    # grayscale (H, W, 1) inputs tile to a 2-D mosaic
    assert tile_mosaic([np.zeros((2, 2, 1), np.uint8)] * 2).shape == (2, 4)


def test_measure_grayscale_hw1():
    c = CODECS["png"]
    imgs = [_smooth((9, 7, 1), s) for s in range(2)]
    r = measure(c, imgs, mosaic=False)
    assert r.subpixels == 2 * 9 * 7
    assert measure(c, imgs, mosaic=True).subpixels == 2 * 9 * 7


def test_measure_rejects_mixed_channels_and_bad_dtype():
    c = CODECS["png"]
    with pytest.raises(ImageError):
        measure(c, [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.uint8)], mosaic=False)
    with pytest.raises(ImageError):
        c.encode(np.zeros((4, 4), np.uint16))
    with pytest.raises(ImageError):
        c.encode(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(UsageError):
        measure(c, [], mosaic=False)


def test_measure_raises_when_not_lossless(monkeypatch):
    c = bc.PillowPNG()
    orig = c._decode

    def broken(data):
        out = np.array(orig(data))
        out.flat[0] ^= 1
        return out

    monkeypatch.setattr(c, "_decode", broken)
    with pytest.raises(bc.NotLosslessError):
        measure(c, [_smooth((4, 4, 3))], mosaic=False)
    with pytest.raises(bc.NotLosslessError):
        measure(c, [_smooth((4, 4, 3))] * 2, mosaic=True)


def test_webp_size_limit():
    with pytest.raises(ImageError, match="16383"):
        CODECS["webp"].encode(np.zeros((1, 16384), np.uint8))


def test_get_codecs():
    assert [c.name for c in get_codecs(None)] == [n for n in NAMES if CODECS[n].available()]
    assert [c.name for c in get_codecs("all")] == [c.name for c in get_codecs(None)]
    assert [c.name for c in get_codecs("png, jpegxl-e9")] == ["png", "jpegxl-e9"]
    assert [c.name for c in get_codecs(["jpegls", "PNG", "png"])] == ["jpegls", "png"]
    with pytest.raises(UsageError, match=r"unknown codec 'gif'; known: png, webp, jpegxl-e7"):
        get_codecs("png,gif")
    with pytest.raises(UsageError):
        get_codecs(["all", "png"])


# --------------------------------------------------------------------------- paper


def test_paper_rows_cifar10():
    df = paper_rows("cifar10")
    assert list(df.columns) == ["method", "kind", "bits_per_subpixel", "reference", "dataset", "architecture",
                                "parameters", "parameters_source", "training"]
    snail = df[df["method"] == "PixelSNAIL"].iloc[0]
    assert snail["architecture"] == "PixelSNAIL" and snail["parameters"] > 40_000_000
    assert (df["kind"] == "paper").all() and (df["dataset"] == "cifar10").all()
    values = dict(zip(df["method"], df["bits_per_subpixel"]))
    assert values["PixelSNAIL"] == pytest.approx(2.85)
    assert values["PixelCNN++"] == pytest.approx(2.92)
    assert values["Block Sparse PixelCNN++"] == pytest.approx(2.90)
    assert values["PixelCNN"] == pytest.approx(3.03)
    assert len(df) == len(TABLE1) == 9  # every row of Table 1 has a CIFAR-10 number
    assert df["reference"].str.len().gt(0).all()


def test_paper_rows_imagenet32():
    df = paper_rows("imagenet32")
    values = dict(zip(df["method"], df["bits_per_subpixel"]))
    assert values["PixelSNAIL"] == pytest.approx(3.80)
    assert values["PixelRNN"] == pytest.approx(3.86)
    # dashes in the table: no ImageNet number for these
    assert "PixelCNN++" not in values and "VAE with IAF" not in values
    assert len(df) == 6


def test_paper_rows_other_dataset_empty():
    df = paper_rows("kodak")
    assert df.empty
    assert list(df.columns) == ["method", "kind", "bits_per_subpixel", "reference", "dataset", "architecture",
                                "parameters", "parameters_source", "training"]


# --------------------------------------------------------------------------- report


def _report_rows() -> pd.DataFrame:
    imgs = [_smooth((8, 8, 3), s) for s in range(3)]
    codec_rows = [dict(measure(CODECS["png"], imgs, mosaic=m).as_row(), dataset="cifar10") for m in (False, True)]
    model = {
        "method": "pixelsnail-small",
        "kind": "model-nll",
        "bits_per_subpixel": 3.1,
        "images": 3,
        "dataset": "cifar10",
    }
    coded = dict(model, kind="model-coded", bits_per_subpixel=3.15, encode_images_per_s=0.5, decode_images_per_s=0.4)
    return pd.concat([pd.DataFrame([model, coded] + codec_rows), paper_rows("cifar10")], ignore_index=True)


def test_write_report(tmp_path):
    rows = _report_rows()
    per_image = {
        "png": np.array([2.5, 2.75, 2.25]),
        "pixelsnail-small": np.array([3.0, 3.2, 3.1]),
        "odd/name": np.array([1.0, 2.0, 3.0]),
    }
    meta = {"command": "snail bench --dataset cifar10", "machine": "test", "date": "2024-01-01",
            "dataset": "cifar10", "images": 3, "codecs": ["png"]}
    out = tmp_path / "run"
    write_report(out, rows, per_image, meta)

    names = sorted(p.name for p in out.iterdir())
    assert names == ["bits_per_subpixel.png", "per_image.h5", "summary.csv", "summary.md"]  # no temp files left

    csv = pd.read_csv(out / "summary.csv")
    for col in ["method", "kind", "bits_per_subpixel", "images", "encode_images_per_s", "decode_images_per_s",
                "dataset", "mosaic", "reference"]:
        assert col in csv.columns
    assert len(csv) == len(rows)
    assert list(csv["bits_per_subpixel"]) == sorted(csv["bits_per_subpixel"])
    assert set(csv["kind"]) == {"model-nll", "model-coded", "codec", "paper"}
    snail = csv[(csv["kind"] == "paper") & (csv["method"] == "PixelSNAIL")]
    assert snail["bits_per_subpixel"].iloc[0] == pytest.approx(2.85)
    assert csv.loc[csv["kind"] == "model-nll", "encode_images_per_s"].isna().all()

    with h5py.File(out / "per_image.h5", "r") as f:
        assert set(f) == {"png", "pixelsnail-small", "odd_name"}
        np.testing.assert_array_equal(f["png"][()], [2.5, 2.75, 2.25])
        assert f["png"].attrs["unit"] == "bits/subpixel"
        assert f["pixelsnail-small"].attrs["unit"] == "bits/subpixel"
        assert f["odd_name"].attrs["method"] == "odd/name"
        assert f.attrs["dataset"] == "cifar10"
        assert f.attrs["images"] == 3
        assert f.attrs["codecs"] == '["png"]'
        assert f["png"].attrs["command"] == "snail bench --dataset cifar10"

    md = (out / "summary.md").read_text()
    assert "snail bench --dataset cifar10" in md and "| method |" in md and "PixelSNAIL" in md
    assert (out / "bits_per_subpixel.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_write_report_without_per_image_and_multi_dataset(tmp_path):
    rows = pd.concat([paper_rows("cifar10"), paper_rows("imagenet32")], ignore_index=True)
    rows["images"] = math.nan
    write_report(tmp_path, rows, None, {"date": "x"})
    with h5py.File(tmp_path / "per_image.h5", "r") as f:
        assert len(f) == 0 and f.attrs["date"] == "x"
    assert len(pd.read_csv(tmp_path / "summary.csv")) == 15


def test_write_report_rejects_bad_rows(tmp_path):
    with pytest.raises(ValueError, match="images"):
        write_report(tmp_path, pd.DataFrame({"method": ["a"], "kind": ["codec"], "bits_per_subpixel": [1.0]}), None, {})
    with pytest.raises(ValueError, match="kind"):
        write_report(tmp_path, pd.DataFrame({"method": ["a"], "kind": ["x"], "bits_per_subpixel": [1.0],
                                             "images": [1]}), None, {})


def test_format_table():
    text = format_table(_report_rows())
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["method", "kind"]
    assert "bits/subpixel" in lines[0] and "enc img/s" in lines[0]
    assert set(lines[1]) <= {"-", " "}
    assert len(lines) == 2 + len(_report_rows())
    body = "\n".join(lines[2:])
    assert "3.1000" in body and "yes" in body  # a measured number to four decimals
    assert " 2.85 " in lines[2] and "2.8500" not in body  # the paper's to its table's two
    # sorted by bits/subpixel: the paper's PixelSNAIL (2.85) comes first
    assert lines[2].startswith("PixelSNAIL")


def test_format_table_prints_the_papers_cells_as_printed_and_counts_without_1000k():
    """Table 1's cells as the paper prints them (Conv DRAW's "3.5" has one decimal, PixelRNN's "3.00"
    two), and a count that rounds to a million as one (1.00M), not 1000.0k."""
    rows = paper_rows("cifar10").assign(images=None)
    cells = {line.split()[0] + (" " + line.split()[1] if line.startswith("Conv") else ""): line
             for line in format_table(rows).splitlines()[2:]}
    assert " 3.5 " in cells["Conv DRAW"] + " " and " 3.50" not in cells["Conv DRAW"]
    assert " 3.00" in cells["PixelRNN"]
    counts = pd.DataFrame({"method": ["a", "b", "c"], "kind": ["model-nll"] * 3, "bits_per_subpixel": [1.0, 2.0, 3.0],
                           "images": [1] * 3, "parameters": pd.array([999_949, 999_950, 46_180_000], dtype="Int64")})
    shown = format_table(counts)
    assert "999.9k" in shown and "1.00M" in shown and "46.18M" in shown and "1000.0k" not in shown
