"""The benchmark harness and the receptive-field figure, end to end through the CLI, on tiny fixtures."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from snailcompress.bench.harness import BenchOptions, run_benchmark
from snailcompress.bench.paper import paper_rows
from snailcompress.cli import main
from snailcompress.errors import ModelError
from snailcompress.receptive_field import model_for_receptive_field, receptive_field

TEST_IMAGES = 7


def smooth_noisy(rng: np.random.Generator, n: int, channels: int, side: int) -> np.ndarray:
    """Images with some structure (gradients + noise), uint8 (N, C, side, side)."""
    yy, xx = np.mgrid[0:side, 0:side]
    out = np.empty((n, channels, side, side), np.uint8)
    for k in range(n):
        for c in range(channels):
            base = 128 + 60 * np.sin(xx / side * (2 + k) + c) * np.cos(yy / side * (1 + c))
            out[k, c] = np.clip(base + rng.normal(0, 12, (side, side)), 0, 255).astype(np.uint8)
    return out


def write_cifar_folder(root):
    """cifar-10-batches-py with the official pickled batches (2 training images each, 7 test images)."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, n in [*((f"data_batch_{i}", 2) for i in range(1, 6)), ("test_batch", TEST_IMAGES)]:
        rows = smooth_noisy(rng, n, 3, 32).reshape(n, 3072)
        batch = {b"batch_label": name.encode(), b"labels": [0] * n, b"data": rows, b"filenames": [b"x.png"] * n}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return root


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory, code_with_the_model_only):  # the model's files, as the untrained model codes them
    root = tmp_path_factory.mktemp("bench")
    data_dir = write_cifar_folder(root / "data")
    out = root / "report"
    args = [
        "bench", "--dataset", "cifar10", "--data-dir", str(data_dir), "--model", "pixelsnail-tiny",
        "--model", "pixelcnnpp-tiny", "--limit", "6", "--coded-limit", "2",
        "--codecs", "png,jpegxl-e7", "--out", str(out),
    ]
    with pytest.MonkeyPatch.context() as mp:  # only for this run: the module's other tests code as users do
        code_with_the_model_only(mp)
        mp.setattr("sys.argv", ["/somewhere/bin/snailcompress", *args])  # as a shell would run it
        result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, (result.output, result.exception)
    return out, result


def test_bench_writes_every_output(bench_run):
    out, result = bench_run
    for name in ("summary.csv", "summary.md", "per_image.h5", "bits_per_subpixel.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    with Image.open(out / "bits_per_subpixel.png") as im:
        assert im.format == "PNG"
    assert "pixelsnail-tiny (coded, one stream)" in result.stdout  # the table printed at the end
    assert "pixelcnnpp-tiny (coded, in-process, float: not a portable file; one stream, first 2)" in result.stdout
    # one unit, bits per subpixel, said once to be what the paper's Table 1 calls bits/dim
    assert "bits/subpixel" in result.stdout.splitlines()[0] and "bits/dim" not in result.output
    assert "bits/subpixel (NLL)" in result.stderr
    summary = (out / "summary.md").read_text()
    assert "what the papers call bits/dim" in summary
    # the paper's numbers to the table's two decimals, not padded to a precision they lack
    header = next(line for line in summary.splitlines() if line.startswith("| method |")).split("|")
    column = [cell.strip() for cell in header].index("bits/subpixel")
    paper = {line.split("|")[1].strip(): line.split("|")[column].strip() for line in summary.splitlines()
             if line.startswith("| ") and "| paper |" in line}
    assert paper["PixelSNAIL"] == "2.85" and paper["PixelRNN"] == "3.00", paper


def test_bench_summary_rows(bench_run):
    out, _ = bench_run
    table = pd.read_csv(out / "summary.csv")
    for column in ("method", "kind", "bits_per_subpixel", "images", "encode_images_per_s", "decode_images_per_s"):
        assert column in table.columns
    assert set(table["kind"]) == {"model-nll", "model-coded", "codec", "paper"}
    by_method = {(r.method, r.kind): r for r in table.itertuples()}

    nll = by_method[("pixelsnail-tiny", "model-nll")]
    per_file = by_method[("pixelsnail-tiny (coded, per file, first 2)", "model-coded")]
    stream = by_method[("pixelsnail-tiny (coded, one stream)", "model-coded")]
    assert (nll.images, per_file.images, stream.images) == (6, 2, 6)
    assert nll.parameters > 0 and nll.eval_images_per_s > 0
    assert per_file.encode_images_per_s > 0 and per_file.decode_images_per_s > 0
    # real coded sizes, by the integer network (integer/): close to the float likelihood. The untrained
    # preset's outputs are extreme (log-scales past the integer network's clamp at +-7), which moves
    # it by about 1.5% here; the trained model's cost is measured in test_integer.py (< 0.3%).
    assert abs(stream.bits_per_subpixel / nll.bits_per_subpixel - 1) < 0.03
    assert stream.bits_per_subpixel <= per_file.bits_per_subpixel
    # the per-file overhead is the .snail header of each file: ~0.1-0.3 bits/subpixel on 3072 subpixels
    assert stream.total_bytes == 4 * stream.stream_words + stream.container_overhead_bytes
    assert 20 < stream.container_overhead_bytes < 200

    # PixelCNN++: an NLL row, and real bits of the first 2 images coded in-process (bench/inprocess.py)
    assert ("pixelcnnpp-tiny", "model-nll") in by_method
    assert [m for m, _ in by_method if m.startswith("pixelcnnpp-tiny (coded")] == [
        "pixelcnnpp-tiny (coded, in-process, float: not a portable file; one stream, first 2)"
    ]
    cnn = by_method[("pixelcnnpp-tiny (coded, in-process, float: not a portable file; one stream, first 2)", "model-coded")]
    assert cnn.images == 2 and cnn.total_bytes == 4 * cnn.stream_words and cnn.container_overhead_bytes == 0
    assert cnn.encode_images_per_s > 0 and cnn.decode_images_per_s > 0

    codecs = table[table["kind"] == "codec"]
    assert sorted(zip(codecs["method"], codecs["mosaic"])) == [
        ("jpegxl-e7", False), ("jpegxl-e7", True), ("png", False), ("png", True)
    ]
    assert (codecs["images"] == 6).all() and (codecs["bits_per_subpixel"] > 0).all()

    paper = table[table["kind"] == "paper"].set_index("method")["bits_per_subpixel"]
    expected = paper_rows("cifar10").set_index("method")["bits_per_subpixel"]
    pd.testing.assert_series_equal(paper.sort_index(), expected.sort_index(), check_names=False)


def test_bench_per_image_and_meta(bench_run):
    out, _ = bench_run
    table = pd.read_csv(out / "summary.csv").set_index("method")
    with h5py.File(out / "per_image.h5", "r") as f:
        methods = {f[k].attrs["method"]: f[k][()] for k in f}
        attrs = dict(f.attrs)
    nll = methods["pixelsnail-tiny"]
    per_file = methods["pixelsnail-tiny (coded, per file, first 2)"]
    assert nll.shape == (6,) and per_file.shape == (2,) and methods["png"].shape == (6,)
    assert nll.mean() == pytest.approx(table.loc["pixelsnail-tiny", "bits_per_subpixel"], rel=1e-6)
    assert per_file.mean() == pytest.approx(table.loc["pixelsnail-tiny (coded, per file, first 2)", "bits_per_subpixel"], rel=1e-9)
    assert (per_file > 0.97 * nll[:2]).all()  # each file costs about its image's NLL, and a header
    # each coded row beside its model's NLL on the same images (the first 2 of 6, or all 6)
    for method, same in [("pixelsnail-tiny (coded, per file, first 2)", nll[:2].mean()),
                         ("pixelsnail-tiny (coded, one stream)", nll.mean()),
                         ("pixelcnnpp-tiny (coded, in-process, float: not a portable file; one stream, first 2)",
                          methods["pixelcnnpp-tiny"][:2].mean())]:
        row = table.loc[method]
        assert row["nll_same_images"] == pytest.approx(same, rel=1e-9), method
        assert row["over_nll"] == pytest.approx(row["bits_per_subpixel"] / same - 1, rel=1e-9), method
    assert table.loc[table["kind"] != "model-coded", "over_nll"].isna().all()
    assert "| over NLL |" in (out / "summary.md").read_text()
    # PixelCNN++'s in-process stream of the first 2 images costs their NLL (the stream's last word aside)
    cnn = table.loc["pixelcnnpp-tiny (coded, in-process, float: not a portable file; one stream, first 2)",
                    "bits_per_subpixel"]
    assert cnn == pytest.approx(methods["pixelcnnpp-tiny"][:2].mean(), rel=0.005)
    for key in ("command", "machine", "date", "dataset", "split", "images", "cpu", "cpu_cores", "torch",
                "torch_threads"):
        assert key in attrs, key
    assert attrs["dataset"] == "cifar10" and attrs["split"] == "test" and attrs["images"] == 6
    assert attrs["command"].startswith("snailcompress bench --dataset cifar10 ")
    assert "--coded-limit 2" in attrs["command"]
    assert "pixelsnail-tiny (coded, one stream)" in (out / "summary.md").read_text()


def test_bench_grayscale_folder_in_chunks(tmp_path):
    """Grayscale folder tiles: a 1-channel preset, a stream of several chunks, no paper rows."""
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(3)
    for k in range(2):
        Image.fromarray(smooth_noisy(rng, 1, 1, 24)[0, 0]).save(photos / f"p{k}.png")
    opts = BenchOptions(
        dataset="folder", data_dir=photos, models=["pixelsnail-tiny"], codecs="png", out=tmp_path / "out",
        coded_limit=2, chunk=4, progress=False, argv=["test"], crops=True,
        data_options={"crop": 8, "scales": (1.0,), "holdout": ("p0.png",), "channels": 1},
    )
    result = run_benchmark(opts, log=lambda line: None)
    rows = result.rows.set_index("method")
    assert set(rows["kind"]) == {"model-nll", "model-coded", "codec"}  # Table 1 has no folder column
    assert "Table 1 has no numbers for this data set" in (tmp_path / "out" / "summary.md").read_text()  # said, not left out
    assert result.meta["image_shape"] == "1x8x8" and result.meta["images"] == 9
    stream = rows.loc["pixelsnail-tiny (coded, one stream)"]
    assert stream["images"] == 9  # chunks of 4, 4 and 1 images in one stream, decoded exactly
    assert stream["bits_per_subpixel"] >= rows.loc["pixelsnail-tiny", "bits_per_subpixel"] - 1e-3
    assert rows.loc["pixelsnail-tiny (coded, per file, first 2)", "images"] == 2
    assert (tmp_path / "out" / "summary.csv").is_file()


def write_photos(folder, sizes=((20, 24), (9, 13), (16, 16))):
    """A few small RGB PNGs of different sizes (height, width): p0.png, p1.png, ..."""
    folder.mkdir()
    rng = np.random.default_rng(5)
    for k, (height, width) in enumerate(sizes):
        side = max(height, width)
        Image.fromarray(smooth_noisy(rng, 1, 3, side)[0, :, :height, :width].transpose(1, 2, 0)).save(folder / f"p{k}.png")
    return folder


def test_bench_folder_measures_every_image_whole(tmp_path):
    """`bench --dataset folder DIR`: every image at full size, coded as `encode -n` codes it (the same bytes)
    and by each codec in one file per image; no crops, no one stream, no mosaic."""
    from snailcompress.api import ModelChooser, encode_bytes
    from snailcompress.bench.codecs import PillowPNG
    from snailcompress.codec.images import read_image

    photos = write_photos(tmp_path / "photos")
    args = ["bench", "--dataset", "folder", str(photos), "--model", "pixelsnail-tiny", "--codecs", "png",
            "--out", str(tmp_path / "report"), "-q"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, (result.output, result.exception)
    assert "3 whole images of 3x9..20x13..24" in result.stderr
    table = pd.read_csv(tmp_path / "report" / "summary.csv").set_index("method")
    assert list(table.index) == sorted(table.index, key=lambda m: table.loc[m, "bits_per_subpixel"])
    assert set(table.index) == {"pixelsnail-tiny", "pixelsnail-tiny (coded, per file)", "png"}
    assert (table["images"] == 3).all() and (table["subpixels"] == 3 * (20 * 24 + 9 * 13 + 16 * 16)).all()
    files = sorted(photos.iterdir())
    chooser = ModelChooser(["pixelsnail-tiny"], names=False)
    snail_bytes = sum(len(encode_bytes(read_image(path), chooser)) for path in files)
    assert table.loc["pixelsnail-tiny (coded, per file)", "total_bytes"] == snail_bytes
    # beside the NLL of the same (all) images, each weighted by its subpixels as the NLL row weighs them
    assert table.loc["pixelsnail-tiny (coded, per file)", "nll_same_images"] == pytest.approx(
        table.loc["pixelsnail-tiny", "bits_per_subpixel"], rel=1e-9)
    png_bytes = sum(len(PillowPNG().encode(np.asarray(Image.open(path)))) for path in files)
    assert table.loc["png", "total_bytes"] == png_bytes and not table.loc["png", "mosaic"]
    assert table.loc["pixelsnail-tiny", "coding"] == "likelihood, 32x32 tiles, context 2"
    with h5py.File(tmp_path / "report" / "per_image.h5", "r") as f:
        assert f.attrs["whole_images"] and f.attrs["split"] == "all"
        assert {f[k].attrs["method"]: f[k].shape for k in f} == {m: (3,) for m in table.index}

    held = CliRunner().invoke(main, [*args[:4], "--holdout", "p1", *args[4:-3], "--out", str(tmp_path / "held"), "-q"])
    assert held.exit_code == 0, held.output
    assert "1 whole images of 3x9x13" in held.stderr
    # an earlier report is refused before any work, and written over with -f
    before = (tmp_path / "held" / "summary.csv").read_bytes()
    again = CliRunner().invoke(main, [*args[:4], *args[4:-3], "--out", str(tmp_path / "held"), "-q"])
    assert again.exit_code == 2 and again.stderr.count("\n") == 1, again.output
    assert "holds an earlier report (summary.csv, summary.md, per_image.h5, bits_per_subpixel.png)" in again.stderr
    assert (tmp_path / "held" / "summary.csv").read_bytes() == before
    again = CliRunner().invoke(main, [*args[:4], *args[4:-3], "--out", str(tmp_path / "held"), "-q", "-f"])
    assert again.exit_code == 0, again.output
    assert "3 whole images" in again.stderr and (tmp_path / "held" / "summary.csv").read_bytes() != before


@pytest.mark.parametrize(
    "extra, code, match",
    [
        (["--crop", "8"], 1, "no test split unless images are held out with --holdout NAME"),
        (["--holdout", "nope"], 1, "no image named nope to hold out (--holdout takes file names"),
        (["--data-dir", "{photos}"], 2, "give the data directory once"),
    ],
)
def test_bench_folder_errors_name_flags(tmp_path, extra, code, match):
    photos = write_photos(tmp_path / "photos")
    args = ["bench", "--dataset", "folder", str(photos), "--model", "pixelsnail-tiny", "--codecs", "png",
            "--out", str(tmp_path / "out"), "-q", *(a.format(photos=photos) for a in extra)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and match in lines[0], result.stderr


def test_bench_refuses_a_codec_that_cannot_hold_an_image_before_any_work(tmp_path, monkeypatch):
    """WebP holds at most 16383 pixels a side: a folder with a wider image is refused in one line
    before the models run (their NLL and coding would otherwise be done, then lost at the codecs)."""
    from PIL import Image

    from snailcompress.bench import harness

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (16384, 2), (9, 9, 9)).save(photos / "wide.png")
    monkeypatch.setattr(harness, "_load", lambda *args: pytest.fail("a model was loaded"))
    args = ["bench", "--dataset", "folder", str(photos), "--model", "pixelsnail-tiny", "--codecs", "png,webp", "--out",
            str(tmp_path / "out"), "-q"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "codec 'webp'" in lines[0] and "image 1, 16384x2" in lines[0], result.stderr
    assert not (tmp_path / "out" / "summary.csv").exists()


def test_per_file_rows_do_not_depend_on_where_the_model_lies(tmp_path):
    """A model that is not shipped is named in a file by the --model given (a path) unless `encode -n`:
    the per-file rows code as -n does, so their bytes are the same for a short and a long path."""
    from snailcompress.bench.harness import _one_tile_files, _per_file_row
    from snailcompress.codec import container
    from snailcompress.zoo import load_model, save_model

    model = load_model("pixelsnail-tiny", channels=3).model
    paths = [tmp_path / "m.safetensors", tmp_path / ("long-" * 15) / "m.safetensors"]
    paths[1].parent.mkdir()
    images = list(smooth_noisy(np.random.default_rng(3), 2, 3, 8).transpose(0, 2, 3, 1))
    captured = []

    def encode(*args):
        captured.append(_one_tile_files(*args))
        return captured[-1]

    rows = []
    for path in paths:
        save_model(model, path)
        rows.append(_per_file_row(load_model(str(path)), images, BenchOptions("cifar10", progress=False), 2, encode)[0])
    assert rows[0]["total_bytes"] == rows[1]["total_bytes"] and captured[0] == captured[1]
    assert all(p.model_name is None for data in captured[0] for p in container.read(data).planes)
    # an 8x8 image is one window of the default tile: no tile field in its header (it had 5 bytes more)
    from snailcompress import api
    from snailcompress.codec.images import decompose

    default = api.encode_images([decompose(Image.fromarray(im)) for im in images], api.ModelChooser([str(paths[0])], names=False),
                                calibrate=False, fallback=False)
    assert captured[0] == [container.write(snail) for snail in default]


def test_shared_encoder_makes_one_stream():
    """The harness's one stream: rows of images side by side (one tile each), coded by code_plane into
    one shared encoder and decoded by decode_plane from one shared decoder."""
    import constriction

    from snailcompress.bench.harness import side_by_side
    from snailcompress.api import integer_network
    from snailcompress.codec.coder import StreamDecoder, code_plane, decode_plane
    from snailcompress.zoo import load_model

    provider = integer_network(load_model("pixelsnail-tiny").model)
    images = np.random.default_rng(0).integers(0, 256, (5, 3, 4, 6), dtype=np.uint8)
    row = side_by_side(images)
    assert row.shape == (4, 30, 3) and np.array_equal(row[:, 6:12].transpose(2, 0, 1), images[1])
    encoder = constriction.stream.queue.RangeEncoder()
    first, _ = code_plane(provider, side_by_side(images[:3]), (4, 6), encoder=encoder)
    words, _ = code_plane(provider, side_by_side(images[3:]), (4, 6), encoder=encoder)
    assert 0 < len(first) < len(words)
    decoder = StreamDecoder(words)
    np.testing.assert_array_equal(decode_plane(provider, None, 4, 18, 3, (4, 6), decoder=decoder), side_by_side(images[:3]))
    np.testing.assert_array_equal(decode_plane(provider, None, 4, 12, 3, (4, 6), decoder=decoder), side_by_side(images[3:]))
    alone, _ = code_plane(provider, side_by_side(images[:3]), (4, 6))  # without an encoder: a stream of its own
    np.testing.assert_array_equal(alone, first)


def test_bench_model_channels_must_match_data(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(photos / "a.png")
    checkpoint = tmp_path / "rgb.safetensors"
    from snailcompress.zoo import load_model, save_model

    save_model(load_model("pixelsnail-tiny").model, checkpoint)
    opts = BenchOptions(
        dataset="folder", data_dir=photos, models=[str(checkpoint)], codecs="png", out=tmp_path / "out",
        progress=False, data_options={"holdout": ("a.png",), "channels": 1},
    )
    with pytest.raises(ModelError, match="3-channel images but folder has 1-channel"):
        run_benchmark(opts, log=lambda line: None)


@pytest.mark.parametrize(
    "extra, code, match",
    [
        (["--data-dir", "{missing}"], 1, "not found in"),
        (["--data-dir", "{data}", "--codecs", "png,gif"], 2, "unknown codec 'gif'"),
        (["--data-dir", "{data}", "--model", "no-such-model"], 1, "no model 'no-such-model'"),
        (["--data-dir", "{data}", "--limit", "0"], 2, "--limit must be at least 1"),
    ],
)
def test_bench_bad_inputs_fail_in_one_line(tmp_path, extra, code, match):
    data = write_cifar_folder(tmp_path / "data")
    args = ["bench", "--dataset", "cifar10", "--out", str(tmp_path / "out"), "-q"]
    args += [a.format(missing=tmp_path / "nowhere", data=data) for a in extra]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("snailcompress: error: ") and match in lines[0], result.stderr
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# receptive field


def test_receptive_field_pixelsnail_sees_all_of_the_context():
    fields = {}
    for name in ("pixelcnnpp-tiny", "pixelsnail-tiny"):
        loaded = model_for_receptive_field(name, 16, 16)
        fields[name] = receptive_field(loaded.model, 16, 16, (15, 15), name=name)
    for field in fields.values():
        assert field.leaks == 0  # nothing at or after the target: both models are causal
        assert field.context == 255
    assert fields["pixelsnail-tiny"].fraction == 1.0  # attention reaches every previous pixel
    assert fields["pixelcnnpp-tiny"].fraction < fields["pixelsnail-tiny"].fraction


def test_receptive_field_command(tmp_path):
    out = tmp_path / "rf.png"
    args = ["receptive-field", "--model", "pixelcnnpp-tiny", "--model", "pixelsnail-tiny", "--size", "16x16",
            "--position", "15,15", "-o", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, (result.output, result.exception)
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > im.height
    assert "pixelsnail-tiny: output (15, 15) depends on 255 of its 255 causal positions (100.0%;" in result.stdout
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 2 and "already exists" in again.stderr
    args = ["receptive-field", "--model", "pixelcnnpp-tiny", "--size", "18x18", "-o", str(tmp_path / "x.png")]
    bad = CliRunner().invoke(main, args)
    assert bad.exit_code == 2 and "divisible by 4" in bad.stderr
    # a model that cannot be used is refused before any other is measured: one line, nothing printed
    args = ["receptive-field", "--model", "pixelsnail-tiny", "--model", str(tmp_path / "missing"), "--size", "8x8",
            "-o", str(tmp_path / "y.png")]
    late = CliRunner().invoke(main, args)
    assert late.exit_code != 0 and late.stdout == "" and len(late.stderr.splitlines()) == 1, late.output


def test_bench_codecs_none_empty_and_an_out_that_is_a_file(tmp_path):
    """--codecs none: the models' rows only; an empty --codecs is refused (it meant all); an --out that
    is a file is refused before the work (it failed once the report was written, after all of it)."""
    data_dir = write_cifar_folder(tmp_path / "data")
    args = ["bench", "--dataset", "cifar10", "--data-dir", str(data_dir), "--model", "pixelsnail-tiny", "--limit", "2",
            "--coded-limit", "0", "-q"]
    result = CliRunner().invoke(main, [*args, "--codecs", "none", "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    assert set(pd.read_csv(tmp_path / "report" / "summary.csv")["kind"]) == {"model-nll", "model-coded", "paper"}
    (tmp_path / "a-file").write_text("x")
    for extra, needle in [(["--codecs", "", "--out", str(tmp_path / "r2")], "names no codec"),
                          (["--codecs", "none,png", "--out", str(tmp_path / "r2")], "'none' cannot be combined"),
                          (["--codecs", "png", "--out", str(tmp_path / "a-file")], "is a file")]:
        bad = CliRunner().invoke(main, [*args, *extra])
        lines = bad.stderr.strip().splitlines()
        assert bad.exit_code != 0 and len(lines) == 1 and needle in lines[0], bad.output
    assert not (tmp_path / "r2").exists() and (tmp_path / "a-file").read_text() == "x"


def test_bench_without_model_runs_the_shipped_default(tmp_path):
    """`bench --dataset X` alone measures the shipped model for the data's channel count, and says so."""
    data_dir = write_cifar_folder(tmp_path / "data")
    args = ["bench", "--dataset", "cifar10", "--data-dir", str(data_dir), "--limit", "2", "--coded-limit", "1",
            "--codecs", "png", "--out", str(tmp_path / "report"), "-q"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "no --model: the shipped snail-rgb" in result.stderr
    table = pd.read_csv(tmp_path / "report" / "summary.csv")
    assert {"snail-rgb", "snail-rgb (coded, one stream)"} <= set(table["method"])


def test_bench_summary_gives_parameters_and_training_beside_the_paper(tmp_path):
    """Every model row: its parameter count and training budget as its file records it (a preset:
    untrained; an older checkpoint: the progress in the config.json beside it; nothing recorded:
    blank), and summary.md sets each model beside Table 1's row of its architecture, whose parameter
    count is the preset of the paper's configuration."""
    import json

    from snailcompress.models.presets import PRESETS
    from snailcompress.zoo import load_model, save_model

    tiny = load_model("pixelsnail-tiny").model
    trained = tmp_path / "trained.safetensors"  # the facts train.save_checkpoint writes, 8 GPUs for 3 hours
    save_model(tiny, trained, dataset="cifar10", step=5000, images=320000, test_bpd=3.1, elapsed_s=3 * 3600,
               cpu_s=3 * 3600, device="cuda", processes=8)
    older = tmp_path / "older-run"  # a run saved before the time was a fact: its config.json has it
    (older / "checkpoints" / "last").mkdir(parents=True)
    save_model(tiny, older / "checkpoints" / "last" / "ema.safetensors", dataset="cifar10", step=40, images=320,
               test_bpd=None)
    (older / "checkpoints" / "last" / "config.json").write_text(
        json.dumps({"progress": {"step": 40, "images": 320, "elapsed_s": 1800.0, "cpu_s": 3600.0}}))
    bare = tmp_path / "bare.safetensors"
    save_model(load_model("pixelcnnpp-tiny").model, bare)

    data_dir = write_cifar_folder(tmp_path / "data")
    opts = BenchOptions(
        dataset="cifar10", data_dir=data_dir, models=["pixelsnail-tiny", str(trained), str(older), str(bare)],
        limit=1, coded_limit=0, codecs="png", out=tmp_path / "report", progress=False, argv=["test"],
    )
    run_benchmark(opts, log=lambda line: None)
    table = pd.read_csv(tmp_path / "report" / "summary.csv").set_index("method")
    for column in ("parameters", "training", "architecture", "train_step", "train_images", "train_elapsed_s",
                   "train_cpu_s", "train_device", "train_processes"):
        assert column in table.columns, column
    assert table.loc["pixelsnail-tiny", "training"] == "untrained"
    assert table.loc[str(trained), "training"] == "5,000 steps, 320,000 images, 24 GPU-hours (8 GPUs)"
    assert table.loc[str(trained), "train_processes"] == 8 and table.loc[str(trained), "train_device"] == "cuda"
    assert table.loc[str(older), "training"] == "40 steps, 320 images, 0.5 h wall, 1 CPU-hours"
    assert pd.isna(table.loc[str(bare), "training"])  # nothing recorded: blank
    assert table.loc[f"{trained} (coded, one stream)", "training"] == table.loc[str(trained), "training"]
    assert table.loc[str(trained), "parameters"] == PRESETS["pixelsnail-tiny"].parameters[0]
    assert table.loc[str(bare), "parameters"] == PRESETS["pixelcnnpp-tiny"].parameters[0]
    assert table.loc[str(trained), "architecture"] == "PixelSNAIL" and table.loc[str(bare), "architecture"] == "PixelCNN++"
    # the paper's rows of the two architectures: the presets of the paper's configurations
    paper = table[table["kind"] == "paper"]
    assert paper.loc["PixelSNAIL", "parameters"] == PRESETS["pixelsnail-cifar10"].parameters[0] == 46_180_788
    assert paper.loc["PixelCNN++", "parameters"] == PRESETS["pixelcnnpp-cifar10"].parameters[0] == 53_659_080
    assert paper.loc["PixelCNN++", "training"] == "about 5 days on 8 Maxwell Titan X GPUs"
    assert paper.drop(["PixelSNAIL", "PixelCNN++"])["parameters"].isna().all()
    assert (table[table["kind"] == "codec"]["parameters"]).isna().all()

    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "| parameters | training |" in summary.splitlines()[summary.splitlines().index("## Models beside the paper") + 4]
    beside = summary.split("## Models beside the paper")[1]
    assert (f"| {trained} | 79.7k | 5,000 steps, 320,000 images, 24 GPU-hours (8 GPUs) |" in beside
            and "| PixelSNAIL | 46.18M | - | 2.85 |" in beside)
    assert f"| {bare} | 577.1k | - |" in beside and "| PixelCNN++ | 53.66M | about 5 days on 8 Maxwell Titan X GPUs |" in beside
    assert "| pixelsnail-tiny | 79.7k | untrained |" in beside
