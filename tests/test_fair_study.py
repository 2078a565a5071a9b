"""benchmarks/fair_study.py: each model trains to each budget of CPU time in turn, is evaluated on the
whole test split, and a rerun goes on where the last one stopped without redoing an evaluated budget."""

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from snailcompress.models.layers import count_flops, count_parameters
from snailcompress.models.presets import build

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fair_study.py"


def write_idx(path: Path, images: np.ndarray) -> None:
    path.write_bytes(struct.pack(">4I", 0x00000803, *images.shape) + images.tobytes())


def study_command(tmp_path: Path, budgets: str, *extra: str) -> list[str]:
    return [sys.executable, str(SCRIPT), "--models", "pixelsnail-tiny,pixelcnnpp-tiny", "--budgets", budgets,
            "--data-dir", str(tmp_path / "data"), "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
            "--batch-size", "4", "--eval-every", "5", "--eval-images", "4", *extra]


def run_study(tmp_path: Path, budgets: str, *extra: str) -> subprocess.CompletedProcess:
    done = subprocess.run(study_command(tmp_path, budgets, *extra), capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    return done


def write_data(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    (tmp_path / "data").mkdir()
    write_idx(tmp_path / "data" / "train-images-idx3-ubyte", rng.integers(0, 256, (40, 28, 28), dtype=np.uint8))
    write_idx(tmp_path / "data" / "t10k-images-idx3-ubyte", rng.integers(0, 256, (6, 28, 28), dtype=np.uint8))


def test_fair_study_trains_each_budget_once_and_resumes(tmp_path):
    write_data(tmp_path)
    study = tmp_path / "runs" / "study.json"

    first = run_study(tmp_path, "0.01")
    assert first.stdout.count("training to 0.01 CPU-minutes from the start") == 2
    rows = json.loads(study.read_text())["rows"]
    assert [(r["model"], r["budget_cpu_minutes"], r["test_images"]) for r in rows] == [
        ("pixelsnail-tiny", 0.01, 6), ("pixelcnnpp-tiny", 0.01, 6)]
    assert all(r["cpu_minutes"] >= 0.01 and r["steps"] > 0 and r["ema_bpd"] > 0 and r["last_bpd"] > 0 for r in rows)

    second = run_study(tmp_path, "0.01,0.02")  # a longer study: only the new budget trains, from the checkpoint
    assert "training to 0.01" not in second.stdout and second.stdout.count("training to 0.02 CPU-minutes from 0.") == 2
    rows2 = json.loads(study.read_text())["rows"]
    assert rows2[:2] == rows and [(r["model"], r["budget_cpu_minutes"]) for r in rows2[2:]] == [
        ("pixelsnail-tiny", 0.02), ("pixelcnnpp-tiny", 0.02)]
    assert all(later["steps"] > earlier["steps"] and later["images"] > earlier["images"]
               for earlier, later in zip(rows2[:2], rows2[2:]))

    before = study.read_text()
    third = run_study(tmp_path, "0.01,0.02")  # all done: nothing trains or is evaluated again
    assert "training to" not in third.stdout and study.read_text() == before
    readme = (tmp_path / "out" / "README.md").read_text()
    table = [line for line in readme.splitlines() if line.startswith("| pixel")]
    assert len(table) == 4 and "In progress" not in readme and (tmp_path / "out" / "curve.png").stat().st_size > 0
    assert "## Which wins" in readme and "- **0.02 CPU-minutes**:" in readme and "Gap PixelSNAIL minus PixelCNN++" in readme
    # the work a step costs each model is counted, and each one's training rate is its latest row's
    flops = [count_flops(build(m, channels=1), torch.zeros(1, 1, 28, 28)) / 1e9 for m in ("pixelsnail-tiny", "pixelcnnpp-tiny")]
    assert f"PixelSNAIL {flops[0]:.2f} GFLOP and PixelCNN++ {flops[1]:.2f} GFLOP" in readme
    assert flops[1] > flops[0] and "buys PixelCNN++ more images" not in readme  # the why is PixelSNAIL's costlier case
    rates = [r["images"] / (60 * r["cpu_minutes"]) for r in rows2[2:]]
    assert f"PixelSNAIL {rates[0]:.1f} images per CPU-second" in readme and f"PixelCNN++ {rates[1]:.1f} images" in readme

    run_study(tmp_path, "0.01,0.02,0.04", "--report-only")
    assert "**In progress**: 2 of 6" in (tmp_path / "out" / "README.md").read_text()

    other = subprocess.run([sys.executable, str(SCRIPT), "--models", "pixelsnail-tiny,pixelcnnpp-tiny", "--budgets", "0.01",
                            "--runs", str(tmp_path / "runs"), "--batch-size", "8", "--report-only"],
                           capture_output=True, text=True)
    assert other.returncode != 0 and other.stderr.startswith("fair_study.py: error: ") and "batch_size" in other.stderr


def test_two_processes_train_one_model_each_into_one_study(tmp_path):
    """--only: two processes at once, one model each, through two budgets; every row and every
    process's CPU time ends up in the one study.json (changed under a lock), the report has them all."""
    write_data(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen(study_command(tmp_path, "0.01,0.02", "--only", model), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
               for model in ("pixelsnail-tiny", "pixelcnnpp-tiny")]
    for worker, model, other in zip(workers, ("pixelsnail-tiny", "pixelcnnpp-tiny"), ("pixelcnnpp-tiny", "pixelsnail-tiny")):
        out, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err
        assert out.count(f"{model}: training to") == 2 and f"{other}: training to" not in out
    study = json.loads((tmp_path / "runs" / "study.json").read_text())
    assert sorted((r["model"], r["budget_cpu_minutes"]) for r in study["rows"]) == [
        ("pixelcnnpp-tiny", 0.01), ("pixelcnnpp-tiny", 0.02), ("pixelsnail-tiny", 0.01), ("pixelsnail-tiny", 0.02)]
    assert all(sum(study["machines"][m].values()) >= 0.02 * 60 for m in ("pixelsnail-tiny", "pixelcnnpp-tiny"))
    assert len(study["commands"]) == 2 and all("--only" in c for c in study["commands"])
    readme = (tmp_path / "out" / "README.md").read_text()
    assert len([line for line in readme.splitlines() if line.startswith("| pixel")]) == 4 and "In progress" not in readme
    assert "training to" not in run_study(tmp_path, "0.01,0.02").stdout  # the plain command finds it all done

    wrong = subprocess.run(study_command(tmp_path, "0.01", "--only", "pixelcnnpp-cifar10"), capture_output=True, text=True)
    assert wrong.returncode != 0 and "--only pixelcnnpp-cifar10: not one of" in wrong.stderr


def test_the_study_presets_have_parameter_counts_within_ten_percent():
    snail, cnn = (count_parameters(build(name, channels=1)) for name in ("pixelsnail-fmnist", "pixelcnnpp-fmnist"))
    assert (snail, cnn) == (585_488, 548_364) and abs(snail - cnn) / max(snail, cnn) < 0.10
