"""Benchmark scripts measure honestly: tiling scores what the codec codes, reports name the machine, and a
script given what snailcompress refuses stops with one line."""

import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from snailcompress.bench import scripts
from snailcompress.bench.scripts import PartialRows
from snailcompress.evaluate import tiled_nll_bits
from snailcompress.models.presets import build
from snailcompress.zoo import WEIGHTS_DIR, load_model, save_model

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def script_main(name: str):
    """The main() of benchmarks/NAME.py (a script, not a module of the package), to call in this process."""
    return runpy.run_path(str(BENCHMARKS / f"{name}.py"))["main"]


@pytest.mark.parametrize("context", [0, 2])
def test_tiling_nll_is_what_the_codec_codes(context):
    """The benchmarks' NLL (evaluate.tiled_nll_bits) scores each pixel in the window that codes it
    (WindowPlan.windows), in the bands the codec picks: the coder's real stream, from the integer
    network the codec runs, is within the range coder's flush and the integer network's rounding of it.

    A trained model on a smooth image: the integer tables give every value at least about 2**-24, so
    a pixel the float model finds all but impossible (an untrained model's, or a trained one's on
    pixels that wrap from 255 to 0) costs far fewer bits in the stream than in the float NLL."""
    from snailcompress.api import integer_network
    from snailcompress.codec import coder
    from snailcompress.codec.tiles import default_band

    model = load_model("snail-rgb").model
    yy, xx = np.mgrid[0:30, 0:37]
    noise = np.random.default_rng(0).integers(-3, 4, (30, 37, 3))
    plane = np.clip(np.stack([100 + 2 * yy + 3 * xx, 60 + 4 * yy, 200 - 3 * xx], -1) + noise, 0, 255).astype(np.uint8)
    nll = tiled_nll_bits(model, plane, 8, context)
    band = default_band(30, 37, (8, 8), (context, context))
    words, _ = coder.code_plane(integer_network(model), plane, (8, 8), (context, context), band)
    assert abs(32 * len(words) - nll) < 0.01 * nll + 64
    if context:
        assert abs(nll - tiled_nll_bits(model, plane, 8, 0)) > 0.01 * nll  # the context counts


def test_tiling_nll_runs_the_windows_where_the_model_is():
    """bench's whole-image NLL on a GPU: the windows go to the model's device (here "meta", where a
    probe stops the pass), not left on the CPU for a CUDA model to refuse."""
    class Stop(Exception):
        pass

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.empty(1, device="meta"))

        def forward(self, x):
            seen.append(x.device.type)
            raise Stop

    seen = []
    with pytest.raises(Stop):
        tiled_nll_bits(Probe(), np.zeros((8, 8, 3), np.uint8), 8)
    assert seen == ["meta"]


def _smooth_png(path: Path, height: int, width: int) -> Path:
    from PIL import Image

    yy, xx = np.mgrid[0:height, 0:width]
    pixels = np.clip(np.stack([100 + 2 * yy + 3 * xx, 60 + 4 * yy, 200 - 3 * xx], -1), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_context_tradeoff_reports_the_stream_the_codec_codes(tmp_path, monkeypatch):
    """benchmarks/context_tradeoff.py codes with the integer network (api.integer_network), in the
    bands tiles.default_band picks unless a layout names one: its bits are the coder's real stream."""
    from snailcompress.api import integer_network
    from snailcompress.codec import coder
    from snailcompress.codec.images import read_image
    from snailcompress.codec.tiles import default_band

    image, out = _smooth_png(tmp_path / "img.png", 40, 44), tmp_path / "context.md"
    monkeypatch.setattr(sys, "argv", ["context_tradeoff.py", "--model", "pixelsnail-tiny", "--image", str(image),
                                      "--tile", "8", "--layouts", "0,2,2/b1", "--out", str(out)])
    script_main("context_tradeoff")()
    rows = [line.split(" | ") for line in out.read_text().splitlines() if line.startswith("| ") and line[2].isdigit()]
    band = default_band(40, 44, (8, 8), (2, 2))
    assert band > 1 and [(row[0], row[1]) for row in rows] == [("| 0", "-"), ("| 2", str(band)), ("| 2", "1")]
    plane = read_image(image).planes["RGB"]
    net = integer_network(load_model("pixelsnail-tiny").model)
    for row, (context, rows_per_band) in zip(rows, [(0, 1), (2, band), (2, 1)]):
        words, _ = coder.code_plane(net, plane, (8, 8), (context, context), rows_per_band)
        assert row[3] == f"{32 * len(words) / plane.size:.4f}"


def test_codec_benchmark_codes_each_variant_and_refuses_adapt(tmp_path):
    """`--variants static,default` codes (and decodes, checksum verified) each crop both ways; `adapt`,
    a feature that is gone, is a usage error (exit 2)."""
    script = BENCHMARKS / "codec_benchmark.py"
    image, out = _smooth_png(tmp_path / "img.png", 40, 44), tmp_path / "codec.md"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = [sys.executable, str(script), "--model", "pixelsnail-tiny", "--image", str(image), "--sizes", "16",
              "--threads", "1", "--codecs", "png"]
    done = subprocess.run([*common, "--variants", "static,adapt"], capture_output=True, text=True, env=env)
    assert done.returncode == 2 and done.stdout == "" and "unknown variant(s) adapt" in done.stderr
    done = subprocess.run([*common, "--variants", "static,default", "--out", str(out)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    table = [line for line in out.read_text().splitlines() if line.startswith("| ")]
    assert "| static payload |" in table[0] and "| default file |" in table[0] and "| png |" in table[0]
    assert table[1].startswith("| img-16x16 | 16x16 |") and table[2].startswith("| **all** |") and len(table) == 3


def test_report_header_names_the_cpu_and_threads(monkeypatch):
    """Sessions of this project get different CPUs, so every timing report says which one it ran on."""
    monkeypatch.setattr(scripts, "machine_facts", lambda: {"cpu": "Example CPU 9000"})
    monkeypatch.setattr(scripts, "threads", lambda: 3)  # coding's threads (snailcompress/threads.py)
    facts = scripts.run_facts()
    assert "Example CPU 9000, 3 threads" in facts and facts.endswith(f"torch {torch.__version__}")


def test_a_remade_report_keeps_its_reading_written_by_hand(tmp_path):
    """publish replaces a report with the script's new one, but for what its old one held under the
    BY_HAND line (a reading of the table, which no script writes); a report without one is replaced."""
    out = tmp_path / "r.md"
    scripts.publish(["# T", "", "| a |", "| 1 |"], out, show=False)
    out.write_text(out.read_text() + f"\n{scripts.BY_HAND}\n\n**Reading.** a is 1.\n")
    scripts.publish(["# T", "", "| a |", "| 2 |"], out, show=False)
    text = out.read_text()
    assert "| 2 |" in text and "| 1 |" not in text and text.endswith(f"{scripts.BY_HAND}\n\n**Reading.** a is 1.\n")
    scripts.publish(["# T", "", "| a |", "| 3 |"], out, show=False)
    assert out.read_text() == text.replace("| 2 |", "| 3 |")  # kept once, not piled up
    (tmp_path / "plain.md").write_text("old\n")
    scripts.publish(["new"], tmp_path / "plain.md", show=False)
    assert (tmp_path / "plain.md").read_text() == "new\n"


def test_training_throughput_measures_each_precision_of_the_overridden_preset(tmp_path, monkeypatch):
    """One row per (precision, compile); --set reaches the model measured (fewer parameters than the
    preset's own), and the bf16 column says whether autocast was on."""
    from snailcompress.models.layers import count_flops, count_parameters

    out = tmp_path / "throughput.md"
    monkeypatch.setattr(sys, "argv", ["training_throughput.py", "--presets", "pixelsnail-tiny:2", "--steps", "1",
                                      "--precisions", "fp32,bf16", "--set", "filters=16", "--out", str(out)])
    script_main("training_throughput")()
    rows = [line.split(" | ") for line in out.read_text().splitlines() if line.startswith("| pixelsnail-tiny")]
    assert [row[3] for row in rows] == ["False", "True"]
    smaller = count_parameters(build("pixelsnail-tiny", filters=16)) / 1e6
    assert smaller < count_parameters(build("pixelsnail-tiny")) / 1e6
    assert all(row[1] == f"{smaller:.2f}M" for row in rows)
    assert "Every preset with filters=16." in out.read_text()
    # the work per image is the counted work of the model measured; a CPU has no bf16 peak to compare with
    work = count_flops(build("pixelsnail-tiny", filters=16), torch.zeros(1, 3, 32, 32)) / 1e9
    assert all(row[7] == f"{work:.3g}" and float(row[8]) > 0 and row[9] == "-" for row in rows)


def test_training_throughput_knows_the_bf16_peak_of_the_gpus_it_names():
    bf16_peak = runpy.run_path(str(BENCHMARKS / "training_throughput.py"))["bf16_peak"]
    assert bf16_peak("NVIDIA H100 80GB HBM3") == bf16_peak("NVIDIA H200") == 989.4
    assert bf16_peak("NVIDIA H100 PCIe") == bf16_peak("NVIDIA H200 NVL") - 79 == 756.5
    assert bf16_peak("NVIDIA A100-SXM4-80GB") is None


def test_shipping_a_file_that_is_not_a_model_is_one_line_and_writes_nothing(tmp_path):
    script = BENCHMARKS / "default_models.py"
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    for source in (tmp_path / "missing", tmp_path / "junk.safetensors"):
        done = subprocess.run([sys.executable, str(script), "ship", str(source), "snail-test-nothing"],
                              capture_output=True, text=True)
        assert done.returncode == 1 and done.stdout == ""
        assert done.stderr.startswith("default_models.py: error: ") and done.stderr.count("\n") == 1
    assert not list(WEIGHTS_DIR.glob("snail-test-nothing*"))


def test_averaging_models_writes_the_mean_of_their_weights_and_refuses_two_architectures(tmp_path):
    script = BENCHMARKS / "default_models.py"
    torch.manual_seed(0)
    models = [build("pixelsnail-tiny", channels=3) for _ in range(2)]
    paths = [save_model(m, tmp_path / f"m{i}.safetensors") for i, m in enumerate(models)]
    save_model(build("pixelsnail-tiny", channels=1), tmp_path / "gray.safetensors")

    done = subprocess.run([sys.executable, str(script), "average", *map(str, paths), "--out", str(tmp_path / "mean.safetensors")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    mean = load_model(tmp_path / "mean.safetensors").model.state_dict()
    first, second = (m.state_dict() for m in models)
    for name, value in mean.items():
        torch.testing.assert_close(value, (first[name] + second[name]) / 2)
    assert any(not torch.equal(mean[name], first[name]) for name in mean)  # two different models, not one twice

    done = subprocess.run([sys.executable, str(script), "average", str(paths[0]), str(tmp_path / "gray.safetensors"),
                           "--out", str(tmp_path / "mixed.safetensors")], capture_output=True, text=True)
    assert done.returncode != 0 and done.stderr.startswith("default_models.py: error: ") and done.stderr.count("\n") == 1
    assert not (tmp_path / "mixed.safetensors").exists()


def test_the_results_check_wants_the_shipped_ids_in_each_header(tmp_path):
    """check_model_ids.py, the last step of shipped_results.sh: a header (above the first table row) that
    names the shipped model's id passes, in a script's report or a bench summary.md; an older id, weights
    that are not shipped, or no model named fail, one line each. An id below the table does not count."""
    rgb = load_model("snail-rgb").model_id
    table = "\n| image | bits |\n|---|---|\n| a | 1.0 |\n"
    files = {
        "report.md": f"# T\n\nCommand: `x`  \ndate; model snail-rgb (id {rgb}), tile 32.\n{table}\nbefore: model snail-rgb (id 0123)\n",
        "summary.md": f'# B\n\n- **models**: ["snail-rgb"]\n- **model_ids**: ["{rgb}"]\n{table}',
        "old.md": f"# T\n\nModel snail-rgb (id 0123456789abcdef); 6 images.\n{table}",
        "other.md": f'# B\n\n- **models**: ["runs/x"]\n- **model_ids**: ["fedcba9876543210"]\n{table}',
        "none.md": f"# T\n{table}\nmodel snail-rgb (id {rgb})\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    check = [sys.executable, str(BENCHMARKS / "check_model_ids.py")]
    done = subprocess.run([*check, *(str(tmp_path / n) for n in ("report.md", "summary.md"))], capture_output=True, text=True)
    assert done.returncode == 0 and f"snail-rgb id {rgb}" in done.stdout, done.stderr
    done = subprocess.run([*check, *(str(tmp_path / n) for n in files)], capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr.splitlines() == [
        f"check_model_ids.py: error: {tmp_path / 'old.md'}: made with snail-rgb id 0123456789abcdef, the shipped snail-rgb is id {rgb}",
        f"check_model_ids.py: error: {tmp_path / 'other.md'}: made with runs/x id fedcba9876543210, not a shipped model's weights",
        f"check_model_ids.py: error: {tmp_path / 'none.md'}: names no model in its header",
    ]


@pytest.mark.parametrize("args", [
    ["compare_models.py", "MISSING"], ["context_tradeoff.py", "--model", "MISSING"], ["tiling.py", "--model", "MISSING"],
    ["codec_benchmark.py", "--model", "MISSING"],
    ["model_size_tradeoff.py", "MISSING", "--out", "OUT"], ["orientation.py", "--model", "MISSING"], ["warmup.py", "--data-dir", "DIR", "--model", "MISSING"],
    ["calibration.py", "--model", "MISSING"],
], ids=lambda args: args[0])
def test_every_script_says_a_missing_model_in_one_line(args, tmp_path):
    """scripts.run: what snailcompress refuses ends a script with one line and the CLI's exit code (in a
    checkout without ../shared/data, the scripts that read those images first say that instead)."""
    script = BENCHMARKS / args[0]
    paths = {"MISSING": tmp_path / "missing", "OUT": tmp_path / "out", "DIR": tmp_path}
    argv = [str(paths.get(a, a)) for a in args[1:]]
    done = subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode in (1, 2) and done.stdout == ""
    assert done.stderr.startswith(f"{args[0]}: error: ") and done.stderr.count("\n") == 1
    assert "no model" in done.stderr or "No such file" in done.stderr, done.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_stopped_benchmark_goes_on_only_with_the_same_fingerprint(tmp_path, monkeypatch):
    """PartialRows keeps each measured row; a second run with the same command and CPU reuses them,
    a run that differs (another CPU) starts again, and a line cut short by the stop is dropped."""
    out = tmp_path / "report.md"
    same = {"argv": ["--heldout"]}
    machine = scripts.machine_facts()
    first = PartialRows(out, same)
    assert not first.path.exists()  # nothing measured, nothing left behind
    first.add("a.png", {"bits": 2.5})
    first.add("b.png", {"bits": 3.0})
    with open(first.path, "a") as f:
        f.write('{"key": "c.png", "row": {"bi')  # the process killed mid-write

    again = PartialRows(out, same)
    assert again.get("a.png") == {"bits": 2.5} and again.get("b.png") == {"bits": 3.0}
    assert again.get("c.png") is None and again.resumed == 2 and "2 row(s)" in again.note()
    again.add("c.png", {"bits": 2.0})
    third = PartialRows(out, same)  # the row measured after the cut line is not lost behind it
    assert third.resumed == 3 and third.get("c.png") == {"bits": 2.0}

    monkeypatch.setattr(scripts, "machine_facts", lambda: {**machine, "cpu": "another CPU"})
    elsewhere = PartialRows(out, same)
    assert elsewhere.get("a.png") is None and elsewhere.note() == ""
    elsewhere.add("z.png", {"bits": 1.0})
    monkeypatch.setattr(scripts, "machine_facts", lambda: machine)
    assert PartialRows(out, same).get("a.png") is None  # the other CPU's run started the file again

    elsewhere.done()
    assert not elsewhere.path.exists()
    assert PartialRows(None, same).get("a.png") is None  # no report file, nothing kept


def test_gpu_checks_run_end_to_end_with_the_cpu_standing_in(tmp_path):
    """The script a lent GPU's short session runs first, run here so that it cannot fail there for a
    reason a CPU shows: every file decodes exactly on every device, the second device's file without
    calibration has the first's bytes, and each part writes its table. Its Kodak folder: the shipped
    crop under each held-out name."""
    from PIL import Image

    from snailcompress.bench.heldout import KODAK_HOLDOUT

    kodak = tmp_path / "kodak"
    kodak.mkdir()
    crop = Image.open(Path(__file__).resolve().parents[1] / "snailcompress" / "assets" / "kodim23-crop.png")
    for k, name in enumerate(KODAK_HOLDOUT):
        crop.crop((32 * k, 0, 32 * k + 64, 64)).save(kodak / f"{name}.png")
    out = tmp_path / "gpu_checks.md"
    done = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_checks.py"), "--device", "cpu", "--kodak", str(kodak),
                           "--steps", "6", "--crop", "16", "--tiles", "2", "--throughput", "pixelsnail-tiny:1", "--no-compile",
                           "--out", str(out)], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr + done.stdout
    report = out.read_text()
    files = [line.strip("| ").split(" | ") for line in report.splitlines() if line.startswith("| cpu |")]
    assert len(files) == 8 and all(row[7] == "exact" for row in files)
    assert [row[4] for row in files if row[1] == "off"] == ["-", "-", "yes", "yes"]
    small = [line for line in report.splitlines() if line.startswith("| per file | 2 |")]
    training = [line for line in report.splitlines() if line.startswith("| pixelsnail-tiny |")]
    assert len(small) == 1 and len(training) == 1 and "FAILED" not in report
    steps = [line.strip("| ").split(" | ") for line in report.splitlines() if line.startswith(("| 96 |", "| 1536 |"))]
    assert len(steps) == 2 and all(float(row[2]) > 0 and row[3] == "-" for row in steps)  # no CUDA graphs on a CPU

    # a part that fails is written down, the next part still runs, and the exit code says so
    broken = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_checks.py"), "--device", "cpu", "--kodak", str(kodak),
                             "--steps", "6", "--crop", "8", "--tiles", "1", "--throughput", "no-such-preset:1", "--no-compile",
                             "--out", str(out)], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    report = out.read_text()
    assert broken.returncode == 1 and report.count("FAILED") == 1 and "**FAILED**: CalledProcessError" in report
    assert any(line.startswith("| per file | 1 |") for line in report.splitlines())
