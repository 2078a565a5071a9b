"""Training (reference section 5): the optimiser, learning, exact resume, DDP, and the CLI around it.

Everything runs on CPU with one thread and workers=0. Small runs use the `folder` data set on a few
generated 24x24 PNGs (8x8 crops). The learning tests use real photographs: the Kodak crop that ships
in the package (always there) and, where installed, the system copy of Fashion-MNIST.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import fields, replace
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
from conftest import job_failure
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file

from snailcompress.cli import PRECISION_CHOICES, main
from snailcompress.data.idx import FASHION_MNIST_SYSTEM_DIR
from snailcompress.errors import DatasetError, UsageError
from snailcompress.evaluate import evaluate
from snailcompress.train import (
    LOG_FIELDS, PRECISIONS, GlobalBatchSampler, ReferenceAdam, TrainOptions, learning_rate, network_autocast,
    saved_options, train, train_options,
)
from snailcompress.zoo import load_model

CHECKPOINT_FILES = ("config.json", "ema.safetensors", "weights.safetensors", "trainer.pt")


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory) -> Path:
    """Three 24x24 RGB 'photographs' (smooth structure + noise); c.png is held out as the test split."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:24, 0:24]
    for k, name in enumerate("abc"):
        image = np.stack([(yy * 9 + k * 40) % 256, (xx * 7 + 30) % 256, (yy + xx) * 5 % 256], -1)
        image = np.clip(image + rng.integers(0, 20, (24, 24, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / f"{name}.png")
    return root


def test_the_polyak_decay_is_the_references_for_the_data_set_unless_given():
    """The reference's commands average with 0.9995 on CIFAR-10 and 0.9997 on ImageNet; --ema wins."""
    from snailcompress.train import ema_decay

    runs = {name: TrainOptions(model="pixelsnail-cifar10", dataset=name, out="x") for name in ("cifar10", "imagenet32")}
    assert ema_decay(runs["cifar10"]) == 0.9995 and ema_decay(runs["imagenet32"]) == 0.9997
    assert ema_decay(TrainOptions(model="pixelsnail-tiny", dataset="imagenet32", out="x", ema_decay=0.9)) == 0.9


def folder_options(photo_dir: Path, out: Path, **changes) -> TrainOptions:
    """18 train crops of 8x8 per epoch (2 images x 9 tiles), 9 test tiles; no periodic evaluation."""
    options = dict(
        model="pixelsnail-tiny", dataset="folder", data_dir=str(photo_dir), out=str(out), batch_size=4,
        crop=8, scales=(1.0,), holdout=("c",), log_every=1, eval_every=0, ema_decay=0.9, workers=0, device="cpu",
    )
    options.update(changes)
    return TrainOptions(**options)


def folder_split(photo_dir: Path, split: str):
    """The split that folder_options trains (or tests) on."""
    from snailcompress.data import load_split

    return load_split("folder", str(photo_dir), split, crop=8, scales=(1.0,), seed=0, holdout=("c",))


def first_training_batch(photo_dir: Path) -> torch.Tensor:
    """The first batch a folder_options run trains on, scaled to [-1, 1]."""
    from snailcompress import mixture

    data = folder_split(photo_dir, "train")
    data.set_epoch(0)
    first = next(iter(GlobalBatchSampler(len(data), 4, rank=0, world=1, seed=0, epoch=0)))
    return mixture.to_unit(torch.stack([data[i] for i in first]))


def folder_cli_args(photo_dir: Path) -> list[str]:
    return ["--dataset", "folder", "--data-dir", str(photo_dir), "--holdout", "c", "--crop", "8", "--scales", "1"]


def read_log(run_dir: Path) -> list[dict]:
    with open(run_dir / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def checkpoint(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "last"


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs (max {float((a[key] - b[key]).abs().max()):.3g})"


# ---------------------------------------------------------------------------------------------
# The optimiser


def numpy_adam_updates(params, grads_per_step, lrs, mom1=0.95, mom2=0.9995, eps=1e-6):
    """The reference's nn.adam_updates, step by step: eps inside the sqrt, bias correction with t."""
    params = [p.copy() for p in params]
    v = [np.zeros_like(p) for p in params]  # first moment ("v" in the reference)
    mg = [np.zeros_like(p) for p in params]  # second moment ("mg")
    history = []
    for t, (grads, lr) in enumerate(zip(grads_per_step, lrs), start=1):
        for i, g in enumerate(grads):
            v[i] = mom1 * v[i] + (1.0 - mom1) * g
            v_hat = v[i] / (1.0 - mom1**t)
            mg[i] = mom2 * mg[i] + (1.0 - mom2) * g * g
            mg_hat = mg[i] / (1.0 - mom2**t)
            params[i] = params[i] - lr * v_hat / np.sqrt(mg_hat + eps)
        history.append([p.copy() for p in params])
    return history


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-13), (torch.float32, 2e-6)])
@pytest.mark.parametrize("eps", [1e-6, 1e-8])
def test_reference_adam_matches_the_reference_update(dtype, tol, eps):
    rng = np.random.default_rng(1)
    shapes = [(3, 4), (5,), (2, 3, 2, 2)]
    initial = [rng.standard_normal(s) for s in shapes]
    # gradients of very different sizes: where eps matters (1e-4) and where it does not (10)
    steps = [[rng.standard_normal(s) * scale for s, scale in zip(shapes, (10.0, 1e-3, 1e-4))] for _ in range(6)]
    lrs = [1e-3 * 0.999998**t for t in range(6)]
    tensors = [torch.nn.Parameter(torch.tensor(p, dtype=dtype)) for p in initial]
    optimizer = ReferenceAdam(tensors, lr=lrs[0], eps=eps)
    expected = numpy_adam_updates(initial, steps, lrs, eps=eps)
    for grads, lr, want in zip(steps, lrs, expected):
        for group in optimizer.param_groups:
            group["lr"] = lr
        for p, g in zip(tensors, grads):
            p.grad = torch.tensor(g, dtype=dtype)
        optimizer.step()
        for p, w in zip(tensors, want):
            np.testing.assert_allclose(p.detach().double().numpy(), w, rtol=tol, atol=tol)
    assert float(optimizer.state[tensors[0]]["step"]) == 6
    # the update is not torch's (eps outside the square root): the test can tell them apart
    if eps == 1e-6 and dtype == torch.float64:
        torch_params = [torch.nn.Parameter(torch.tensor(p, dtype=dtype)) for p in initial]
        torch_adam = torch.optim.Adam(torch_params, lr=lrs[0], betas=(0.95, 0.9995), eps=eps)
        for p, g in zip(torch_params, steps[0]):
            p.grad = torch.tensor(g, dtype=dtype)
        torch_adam.step()
        assert not np.allclose(torch_params[2].detach().numpy(), numpy_adam_updates(initial, steps[:1], lrs)[0][2])


def test_reference_adam_skips_parameters_without_gradient():
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    optimizer = ReferenceAdam([a, b])
    a.grad = torch.ones(3)
    optimizer.step()
    assert torch.equal(b.detach(), torch.ones(2)) and not torch.equal(a.detach(), torch.ones(3))


def test_global_batches_are_split_between_ranks():
    whole = list(GlobalBatchSampler(40, 6, rank=0, world=1, seed=3, epoch=2))
    halves = [list(GlobalBatchSampler(40, 3, rank=r, world=2, seed=3, epoch=2)) for r in range(2)]
    assert len(whole) == len(halves[0]) == len(halves[1]) == 40 // 6
    for b, batch in enumerate(whole):
        assert batch == halves[0][b] + halves[1][b]
    resumed = list(GlobalBatchSampler(40, 6, rank=0, world=1, seed=3, epoch=2, start=24))
    assert resumed == whole[4:]
    assert list(GlobalBatchSampler(40, 6, rank=0, world=1, seed=3, epoch=3)) != whole


def test_learning_rate_is_the_reference_decay_until_the_cooldown_takes_it_to_zero():
    plain = TrainOptions(model="m", dataset="d", out="o", lr=1e-3, steps=100)
    assert [learning_rate(plain, s, 0.99) for s in (0, 50, 100)] == pytest.approx([1e-3, 1e-3 * 0.99**50, 1e-3 * 0.99**100])
    cooled = TrainOptions(model="m", dataset="d", out="o", lr=1e-3, steps=100, cooldown_steps=40)
    assert learning_rate(cooled, 60, 0.99) == learning_rate(plain, 60, 0.99)  # before the last 40 steps
    assert learning_rate(cooled, 80, 0.99) == pytest.approx(learning_rate(plain, 80, 0.99) * 0.5)
    assert learning_rate(cooled, 99, 0.99) == pytest.approx(learning_rate(plain, 99, 0.99) / 40)
    assert learning_rate(cooled, 100, 0.99) == 0.0
    warmed = TrainOptions(model="m", dataset="d", out="o", lr=1e-3, steps=100, warmup_steps=10, cooldown_steps=40)
    assert learning_rate(warmed, 0, 0.99) == pytest.approx(learning_rate(cooled, 0, 0.99) / 10)
    assert learning_rate(warmed, 4, 0.99) == pytest.approx(learning_rate(cooled, 4, 0.99) / 2)
    assert [learning_rate(warmed, s, 0.99) for s in (9, 60, 80)] == [learning_rate(cooled, s, 0.99) for s in (9, 60, 80)]


@pytest.mark.parametrize(
    "budget, cooldown",
    [({"minutes": 1.0}, 5), ({"steps": 4}, -1), ({"steps": 4}, 5)],
    ids=["no-step-budget", "negative", "longer-than-the-run"],
)
def test_cooldown_needs_a_step_budget_it_fits_in(photo_dir, tmp_path, budget, cooldown):
    with pytest.raises(UsageError, match="--steps"):
        train(folder_options(photo_dir, tmp_path / "run", cooldown_steps=cooldown, **budget), progress_bar=False)
    assert not (tmp_path / "run").exists()


def test_warmup_cannot_be_negative(photo_dir, tmp_path):
    with pytest.raises(UsageError, match="--warmup-steps"):
        train(folder_options(photo_dir, tmp_path / "run", steps=2, warmup_steps=-1), progress_bar=False)


def test_context_scores_only_the_pixels_a_codec_window_codes(photo_dir, tmp_path):
    """--context 2: the loss and the test bits/dim count only pixels below and right of each crop's
    first 2 rows and columns (what `encode --context 2` codes of a window), which the model still sees."""
    from snailcompress import mixture

    shipped = load_model("snail-rgb").model
    options = folder_options(photo_dir, tmp_path / "run", model="snail-rgb", steps=1, lr=0.0, context=2,
                             eval_every=1, eval_images=4)
    train(options, progress_bar=False)
    x = first_training_batch(photo_dir)
    with torch.no_grad():
        log_p = mixture.log_prob(x, shipped(x))
    inner = mixture.bits_per_dim(-log_p[:, 2:, 2:].sum().item(), 4 * 3 * 6 * 6)
    whole = mixture.bits_per_dim(-log_p.sum().item(), x.numel())
    row = read_log(tmp_path / "run")[0]
    assert float(row["train_bpd"]) == pytest.approx(inner, abs=1e-4) and abs(inner - whole) > 1e-2
    expected = evaluate(shipped, folder_split(photo_dir, "test"), limit=4, progress=False, context=2)
    assert expected.dims == 4 * 3 * 6 * 6
    assert float(row["test_bpd"]) == pytest.approx(expected.bits_per_dim, abs=1e-4)


@pytest.mark.parametrize("context, message", [(8, "--context 8 leaves nothing"), (-1, "--context must be 0 or more")])
def test_context_must_leave_pixels_to_score(photo_dir, tmp_path, context, message):
    with pytest.raises(UsageError, match=message):
        train(folder_options(photo_dir, tmp_path / "run", steps=1, context=context), progress_bar=False)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# Going on from a trained model


def test_a_run_from_a_shipped_model_starts_from_its_weights(photo_dir, tmp_path):
    """--model snail-rgb: its architecture and weights, no data-dependent init; the first step's loss
    is the shipped model's own NLL of that batch (lr 0 keeps the weights exactly)."""
    shipped = load_model("snail-rgb").model
    options = folder_options(photo_dir, tmp_path / "run", model="snail-rgb", steps=1, lr=0.0, eval_every=0)
    progress = train(options, progress_bar=False)
    assert progress["step"] == 1
    saved = json.loads((checkpoint(tmp_path / "run") / "config.json").read_text())["model"]
    assert saved == shipped.config.to_dict()
    for name in ("weights.safetensors", "ema.safetensors"):
        assert_same_tensors(load_file(checkpoint(tmp_path / "run") / name), shipped.state_dict())

    from snailcompress import mixture

    x = first_training_batch(photo_dir)
    with torch.no_grad():
        expected = mixture.bits_per_dim(-mixture.log_prob(x, shipped(x)).sum().item(), x.numel())
    assert float(read_log(tmp_path / "run")[0]["train_bpd"]) == pytest.approx(expected, abs=1e-4)
    fresh = folder_options(photo_dir, tmp_path / "fresh", model="pixelsnail-small", steps=1, lr=0.0,
                           model_overrides={"filters": 48, "blocks": 2, "resnets_per_block": 3, "value_channels": 24})
    train(fresh, progress_bar=False)
    assert float(read_log(tmp_path / "fresh")[0]["train_bpd"]) > expected + 1.0  # the same architecture, untrained


def test_a_run_from_a_trained_run_resumes_without_it(cli_run, photo_dir, tmp_path):
    """A run started from another run's directory saves that config; resuming reads it from its own
    checkpoint, so the run it started from may be gone."""
    source = tmp_path / "source"
    shutil.copytree(cli_run, source)
    run = tmp_path / "run"
    train(folder_options(photo_dir, run, model=str(source), steps=1, dropout=0.25), progress_bar=False)
    saved = json.loads((checkpoint(run) / "config.json").read_text())["model"]
    assert saved == {**load_model(source).config.to_dict(), "dropout": 0.25}
    shutil.rmtree(source)
    result = CliRunner().invoke(main, ["train", "--out", str(run), "--steps", "2", "--dropout", "0.5"])
    assert result.exit_code == 0, result.output
    assert re.search(r"2 steps, 8 images", result.stdout), result.stdout
    resumed = json.loads((checkpoint(run) / "config.json").read_text())["model"]
    assert resumed == {**saved, "dropout": 0.5}  # a new dropout applies on resuming


def test_a_folder_run_from_a_gray_model_reads_the_images_in_gray(photo_dir, tmp_path):
    """Without --channels the folder data set takes the trained model's channel count (3 for a
    preset), saved with the run so that resuming reads the same way."""
    run = tmp_path / "run"
    train(folder_options(photo_dir, run, model="snail-gray", steps=1), progress_bar=False)
    options = json.loads((checkpoint(run) / "config.json").read_text())["options"]
    assert options["channels"] == 1
    result = CliRunner().invoke(main, ["train", "--out", str(run), "--steps", "2"])
    assert result.exit_code == 0, result.output
    assert re.search(r"2 steps, 8 images", result.stdout), result.stdout


@pytest.mark.parametrize(
    "model, changes, message",
    [("snail-gray", {"channels": 3}, "codes 1-channel images; the data has 3 channels"),
     ("snail-rgb", {"model_overrides": {"filters": 8}}, "--set filters=8 changes the shapes of snail-rgb's weights"),
     ("no-such-model", {}, "--model: no model 'no-such-model'")],
    ids=["channels", "shapes", "unknown"],
)
def test_a_run_from_a_trained_model_that_does_not_fit_is_refused(photo_dir, tmp_path, model, changes, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        train(folder_options(photo_dir, tmp_path / "run", model=model, steps=1, **changes), progress_bar=False)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# Learning on real data


def assert_learnt(progress: dict, run_dir: Path, steps: int, batch: int, start: float, drop: float, below: float) -> None:
    """Train bits/dim started under `start` (the first 10 steps), fell by `drop` to the last 10 steps
    and ended `below`; the EMA weights on the held-out split agree."""
    assert progress["step"] == steps and progress["images"] == steps * batch
    rows = [r for r in read_log(run_dir) if r["train_bpd"]]
    assert [int(r["step"]) for r in rows] == list(range(10, steps + 1, 10))
    first, last = float(rows[0]["train_bpd"]), float(rows[-1]["train_bpd"])
    assert math.isfinite(first) and first < start
    assert last < first - drop, f"train bits/dim went from {first:.3f} (steps 1-10) to {last:.3f} (last 10 steps)"
    assert last < below
    assert progress["test_bpd"] < first - drop, (progress["test_bpd"], first)


def test_pixelsnail_tiny_learns_a_kodak_photo(tmp_path):
    """The package's 256x256 Kodak crop cut into quarters; the lower-right quarter is the test split.
    Measured: 9.14 bits/dim in the first 10 steps, 4.9 in the last 10, 5.2 on the test quarter."""
    photo = np.asarray(Image.open(files("snailcompress.assets") / "kodim23-crop.png").convert("RGB"))
    data = tmp_path / "kodak"
    data.mkdir()
    for name, (y, x) in zip("abcd", [(0, 0), (0, 128), (128, 0), (128, 128)]):
        Image.fromarray(photo[y : y + 128, x : x + 128]).save(data / f"{name}.png")
    options = TrainOptions(
        model="pixelsnail-tiny", dataset="folder", data_dir=str(data), out=str(tmp_path / "run"), batch_size=4,
        crop=16, scales=(1.0, 0.5), holdout=("d",), steps=400, log_every=10, eval_every=0, eval_images=32,
        ema_decay=0.9, workers=0, device="cpu",
    )
    progress = train(options, progress_bar=False)
    assert_learnt(progress, tmp_path / "run", steps=400, batch=4, start=9.5, drop=3.0, below=6.0)


@pytest.mark.skipif(
    not (FASHION_MNIST_SYSTEM_DIR / "train-images-idx3-ubyte.gz").is_file()
    or not (FASHION_MNIST_SYSTEM_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST is not installed in /usr/share/datasets/fashion-mnist",
)
def test_pixelsnail_tiny_learns_fashion_mnist(tmp_path):
    options = TrainOptions(
        model="pixelsnail-tiny", dataset="fashion-mnist", data_dir=None, out=str(tmp_path / "run"), batch_size=4,
        steps=120, log_every=10, eval_every=0, eval_images=32, ema_decay=0.9, workers=0, device="cpu",
    )
    progress = train(options, progress_bar=False)
    assert_learnt(progress, tmp_path / "run", steps=120, batch=4, start=9.0, drop=1.0, below=4.5)


@pytest.mark.parametrize("eval_every", [0, 2])
def test_a_run_ending_on_a_log_step_writes_one_row_there(photo_dir, tmp_path, eval_every):
    """The last step is logged once, by the run's end: its train bits/dim and its test bits/dim in one
    row (not a periodic row with the first, then the end's row with the second), and evaluated once."""
    out = tmp_path / "run"
    train(folder_options(photo_dir, out, steps=4, log_every=2, eval_every=eval_every), progress_bar=False)
    rows = read_log(out)
    assert [int(row["step"]) for row in rows] == [2, 4]
    assert all(row["train_bpd"] for row in rows)
    assert [bool(row["test_bpd"]) for row in rows] == [bool(eval_every), True]


def test_a_signal_during_the_final_evaluation_keeps_the_steps_and_resumes_to_evaluate(photo_dir, tmp_path, monkeypatch):
    """SIGTERM (a session ending) while the run's last evaluation runs: the steps are saved first and
    the evaluation stops, as during training, rather than the handlers being gone and the run lost.
    The same command then evaluates, and trains nothing."""
    import signal

    from snailcompress import train as train_module

    real = train_module.evaluate
    calls = []

    def evaluate_with_a_signal(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            signal.raise_signal(signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate", evaluate_with_a_signal)
    out = tmp_path / "run"
    stopped = train(folder_options(photo_dir, out, steps=2, log_every=50), progress_bar=False)
    assert stopped["stopped_by"] == "SIGTERM" and stopped["step"] == 2
    assert json.loads((checkpoint(out) / "config.json").read_text())["progress"]["step"] == 2
    rows = read_log(out)
    assert [row["step"] for row in rows] == ["2"] and rows[0]["train_bpd"] and not rows[0]["test_bpd"]
    resumed = train(folder_options(photo_dir, out, steps=2, log_every=50), progress_bar=False)
    assert resumed["steps_trained"] == 0 and resumed["stopped_by"] is None and len(calls) == 2
    assert read_log(out)[-1]["step"] == "2" and read_log(out)[-1]["test_bpd"]


# ---------------------------------------------------------------------------------------------
# Exact resume


def test_resumed_run_is_identical_to_an_uninterrupted_one(photo_dir, tmp_path):
    """6 steps vs 3 + 3 (resumed mid-epoch, then across an epoch boundary); dropout on, so the
    RNG state must be restored exactly too."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(folder_options(photo_dir, straight, steps=6, dropout=0.5), progress_bar=False)
    first = train(folder_options(photo_dir, split, steps=3, dropout=0.5), progress_bar=False)
    assert first["step"] == 3 and first["epoch"] == 0
    resumed = train(folder_options(photo_dir, split, steps=6, dropout=0.5), progress_bar=False)
    assert resumed["step"] == 6 and resumed["epoch"] == 1 and resumed["images_in_epoch"] == 8  # 4 batches/epoch

    for name in ("weights.safetensors", "ema.safetensors"):
        assert_same_tensors(load_file(checkpoint(straight) / name), load_file(checkpoint(split) / name))
    a = torch.load(checkpoint(straight) / "trainer.pt", weights_only=True)
    b = torch.load(checkpoint(split) / "trainer.pt", weights_only=True)
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for index, state in a["optimizer"]["state"].items():
        assert state.keys() == b["optimizer"]["state"][index].keys()
        for key, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][index][key]), (index, key)
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert len(a["rng"]) == len(b["rng"]) == 1 and torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"])
    skip = {"elapsed_s", "cpu_s"}
    assert {k: v for k, v in a["progress"].items() if k not in skip} == {
        k: v for k, v in b["progress"].items() if k not in skip
    }
    # every step's training loss is the same, before and after the interruption
    train_bpd = lambda run: [(r["step"], r["train_bpd"]) for r in read_log(run) if r["train_bpd"]]  # noqa: E731
    assert train_bpd(straight) == train_bpd(split) and len(train_bpd(split)) == 6


def test_a_run_resumed_with_another_batch_size_trains_on_each_image_of_the_epoch_once(photo_dir, tmp_path, monkeypatch):
    """3 steps of 4 crops, then 3 of 2: the epoch's 18 crops, each once (its place is counted in images)."""
    drawn = []
    batches = GlobalBatchSampler.__iter__

    def recorded(sampler):
        for batch in batches(sampler):
            drawn.append((sampler.epoch, batch))
            yield batch

    monkeypatch.setattr(GlobalBatchSampler, "__iter__", recorded)
    out = tmp_path / "run"
    train(folder_options(photo_dir, out, batch_size=4, steps=3), progress_bar=False)
    options, resuming = train_options(str(out), batch_size=2, steps=6)
    assert resuming and options.batch_size == 2
    progress = train(options, progress_bar=False)
    assert sorted(i for epoch, batch in drawn if epoch == 0 for i in batch) == list(range(18))
    assert progress["images_in_epoch"] == progress["images"] == 18


def test_a_checkpoint_of_an_earlier_version_resumes_exactly(photo_dir, tmp_path):
    """Its trainer.pt holds one RNG state (rank 0's) and the place in the epoch in batches."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(folder_options(photo_dir, straight, steps=5, dropout=0.5), progress_bar=False)
    train(folder_options(photo_dir, split, steps=3, dropout=0.5), progress_bar=False)
    state = torch.load(checkpoint(split) / "trainer.pt", weights_only=True)
    state["rng"] = state["rng"][0]
    state["progress"]["batch_in_epoch"] = state["progress"].pop("images_in_epoch") // 4
    torch.save(state, checkpoint(split) / "trainer.pt")
    train(folder_options(photo_dir, split, steps=5, dropout=0.5), progress_bar=False)
    for name in ("weights.safetensors", "ema.safetensors"):
        assert_same_tensors(load_file(checkpoint(straight) / name), load_file(checkpoint(split) / name))


# ---------------------------------------------------------------------------------------------
# Distributed data parallel


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """`args` (-m MODULE ..., or a script) under torchrun: 2 gloo processes on the CPU, a thread each.
    A job still running after `timeout` seconds (deadlocked) is stopped and fails the test."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *args,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as job:
        try:
            stdout, stderr = job.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            job.terminate()  # torchrun stops its workers
            job.communicate(timeout=60)
            pytest.fail(f"the torchrun job did not end in {timeout:g} s")
    return subprocess.CompletedProcess(command, job.returncode, stdout, stderr)


def torchrun_train(tmp_path: Path, options: TrainOptions, patch: str = "", timeout: float = 240) -> None:
    """train(options) under torchrun, each process running `patch` first (`T` is snailcompress.train)."""
    script = tmp_path / "train_script.py"
    script.write_text(f"from snailcompress import train as T\n{patch}\nT.train(T.{options!r}, progress_bar=False)\n")
    done = torchrun(str(script), timeout=timeout)
    assert done.returncode == 0, job_failure(done.stderr)


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_with_the_global_batch(photo_dir, tmp_path):
    """torchrun, gloo, 2 ranks x 2 images == 1 process x 4 images on the same global batches."""
    steps = 5
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    done = torchrun(
        "-m", "snailcompress.cli", "train", "--model", "pixelsnail-tiny", *folder_cli_args(photo_dir),
        "--batch-size", "2", "--steps", str(steps), "--workers", "0", "--device", "cpu", "--eval-every", "0",
        "--ema", "0.9", "--out", str(ddp_dir),
    )
    assert done.returncode == 0, job_failure(done.stderr)
    assert done.stdout.count("bits/dim") == 1, done.stdout  # rank 0 reports, rank 1 stays quiet

    # DDP's init batch is each rank's batch (rank 0's init wins, broadcast by DDP): 2 images.
    single = train(
        folder_options(photo_dir, single_dir, batch_size=4, init_batch=2, steps=steps, log_every=50, ema_decay=0.9),
        progress_bar=False,
    )
    ddp_progress = json.loads((checkpoint(ddp_dir) / "config.json").read_text())["progress"]
    assert ddp_progress["step"] == single["step"] == steps
    assert ddp_progress["images"] == single["images"] == 4 * steps
    for name in ("weights.safetensors", "ema.safetensors"):
        a, b = load_file(checkpoint(ddp_dir) / name), load_file(checkpoint(single_dir) / name)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5, msg=f"{name} {key}")
    # the weights did move during these steps, by much more than the tolerance
    weights, ema = load_file(checkpoint(ddp_dir) / "weights.safetensors"), load_file(checkpoint(ddp_dir) / "ema.safetensors")
    assert max(float((weights[k] - ema[k]).abs().max()) for k in weights) > 1e-3


@pytest.mark.slow
def test_two_process_ddp_logs_the_train_loss_of_the_global_batch(photo_dir, tmp_path):
    """log.csv's train bits/dim of 2 ranks x 2 images is that of 1 process x 4 images, not rank 0's half."""
    same = dict(steps=3, dropout=0.0, log_every=1)
    torchrun_train(tmp_path, folder_options(photo_dir, tmp_path / "ddp", batch_size=2, **same))
    train(folder_options(photo_dir, tmp_path / "single", batch_size=4, init_batch=2, **same), progress_bar=False)
    logged = [[float(r["train_bpd"]) for r in read_log(tmp_path / run) if r["train_bpd"]] for run in ("ddp", "single")]
    assert len(logged[0]) == 3
    assert logged[0] == pytest.approx(logged[1], abs=1e-4)


@pytest.mark.slow
def test_two_process_ddp_stops_every_rank_where_one_rank_runs_out_of_time(photo_dir, tmp_path):
    """Rank 1's CPU budget is spent after 2 steps, rank 0's never: both stop there, instead of rank 1
    waiting at the end for rank 0, and rank 0 in its next step for rank 1."""
    patch = """
import os
trained = []
step = T._train_step
T._train_step = lambda run, batch: trained.append(1) or step(run, batch)
if os.environ["RANK"] == "1":
    T._Clock.cpu_s = lambda clock: 1e9 if len(trained) >= 2 else 0.0
"""
    out = tmp_path / "run"
    torchrun_train(tmp_path, folder_options(photo_dir, out, batch_size=2, cpu_minutes=10.0), patch, timeout=120)
    assert json.loads((checkpoint(out) / "config.json").read_text())["progress"]["step"] == 2


@pytest.fixture(scope="module")
def ddp_resumed(photo_dir, tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """Under torchrun (2 ranks x 2 images, dropout on): 4 steps straight, and 2 steps resumed to 4;
    the two run directories and the resumed job."""
    root = tmp_path_factory.mktemp("ddp-resume")

    def run(out: Path, steps: int) -> subprocess.CompletedProcess:
        done = torchrun(
            "-m", "snailcompress.cli", "train", "--model", "pixelsnail-tiny", *folder_cli_args(photo_dir),
            "--batch-size", "2", "--steps", str(steps), "--workers", "0", "--device", "cpu", "--eval-every", "0",
            "--ema", "0.9", "--dropout", "0.5", "--out", str(out),
        )
        assert done.returncode == 0, job_failure(done.stderr)
        return done

    run(root / "straight", 4)
    run(root / "split", 2)
    return root / "straight", root / "split", run(root / "split", 4)


@pytest.mark.slow
def test_two_process_ddp_resumes_exactly_with_each_ranks_dropout(ddp_resumed):
    straight, split, _ = ddp_resumed
    for name in ("weights.safetensors", "ema.safetensors"):
        assert_same_tensors(load_file(checkpoint(straight) / name), load_file(checkpoint(split) / name))
    rng = torch.load(checkpoint(split) / "trainer.pt", weights_only=True)["rng"]
    assert len(rng) == 2 and not torch.equal(rng[0]["torch"], rng[1]["torch"])  # each rank draws its own masks


@pytest.mark.slow
def test_two_process_ddp_resumed_reports_once(ddp_resumed):
    """Rank 1 holds the checkpoint's test bits/dim, not its own: only rank 0 reports."""
    assert ddp_resumed[2].stdout.count("bits/dim") == 1, ddp_resumed[2].stdout
    assert ddp_resumed[2].stderr.count("resuming") == 1, ddp_resumed[2].stderr  # one line, not one a rank


# ---------------------------------------------------------------------------------------------
# The CLI


def one_line_error(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("snailcompress: error: "), lines[0]
    assert "Traceback" not in result.output
    return lines[0]


def test_cli_train_needs_a_length(photo_dir, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--model", "pixelsnail-tiny", *folder_cli_args(photo_dir), "--out", str(out)])
    assert result.exit_code == UsageError.exit_code != 0
    assert "--steps" in one_line_error(result)
    assert not (out / "checkpoints").exists()


def test_cli_train_on_a_missing_data_set(tmp_path):
    result = CliRunner().invoke(
        main,
        ["train", "--model", "pixelsnail-tiny", "--dataset", "mnist", "--data-dir", str(tmp_path / "nowhere"),
         "--steps", "1", "--workers", "0", "--device", "cpu", "--out", str(tmp_path / "run")],
    )
    assert result.exit_code == DatasetError.exit_code != 0
    assert "MNIST" in one_line_error(result)
    evaluated = CliRunner().invoke(
        main, ["eval", "--model", "pixelsnail-tiny", "--dataset", "cifar10", "--data-dir", str(tmp_path / "nowhere")]
    )
    assert evaluated.exit_code == DatasetError.exit_code
    assert "CIFAR" in one_line_error(evaluated)


@pytest.mark.parametrize("extra, needle", [
    (["--eval-images", "0"], "--eval-images must be more than 0"),  # crashed after training, saving nothing
    (["--ema", "1.5"], "--ema must be in [0, 1)"),  # trained to 3e12 bits/dim, exit 0
    (["--lr", "-1"], "--lr must be 0 or more"),
    (["--batch-size", "0"], "--batch-size must be more than 0"),
    (["--steps", "-3"], "--steps must be more than 0"),  # blamed --cooldown-steps
    (["--cpu-minutes", "-1"], "--cpu-minutes must be more than 0"),
    (["--seed", "-1"], "--seed must be 0 or more"),
    (["--workers", "-1"], "--workers must be 0 or more"),
    (["--dropout", "2"], "dropout must be a number in [0, 1)"),
    (["--set", "foo=3"], "--set foo: pixelsnail-tiny has no such setting"),
    (["--set", "filters=abc"], "filters must be a whole number of at least 1, not 'abc'"),
    (["--set", "filters=0"], "filters must be a whole number of at least 1, not 0"),
    (["--set", "channels=1"], "--set channels: the data sets"),  # trained on, then a traceback
    (["--dropout", "1"], "--dropout: dropout must be a number in [0, 1)"),
    (["--model", "pixelcnnpp-tiny", "--crop", "10"], "divisible by 4, not 10x10"),
    (["--batch-size", "19"], "has 18 images, fewer than one global batch of 19"),  # a traceback in the init
])
def test_cli_train_refuses_what_no_run_can_use_before_writing(photo_dir, tmp_path, extra, needle):
    """Each of these gave a traceback, or trained on and exited 0; now one line, and no run directory."""
    out = tmp_path / "run"
    args = ["train", "--model", "pixelsnail-tiny", *folder_cli_args(photo_dir), "--steps", "1", "--workers", "0",
            "--device", "cpu", "--out", str(out), *extra]
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0 and needle in one_line_error(result), result.output
    assert not out.exists()


def test_cli_train_never_writes_over_files_it_did_not_make(photo_dir, tmp_path):
    """A new run's --out is new or empty: not a file, not a folder of someone's files (nor its images)."""
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "log.csv").write_text("my notes")
    (tmp_path / "a-file").write_text("x")
    for out, needle in [(notes, "is not empty"), (tmp_path / "a-file", "is a file"), (photo_dir, "is not empty"),
                        (tmp_path / "a-file" / "run", "a-file is a file, not a directory")]:
        before = sorted(p.name for p in Path(out).parent.rglob("*"))
        result = CliRunner().invoke(main, ["train", "--model", "pixelsnail-tiny", *folder_cli_args(photo_dir),
                                           "--steps", "1", "--workers", "0", "--device", "cpu", "--out", str(out)])
        assert result.exit_code != 0 and needle in one_line_error(result)
        assert sorted(p.name for p in Path(out).parent.rglob("*")) == before
    assert (notes / "log.csv").read_text() == "my notes"
    # what a run killed before its first checkpoint left is its own: the same command starts again there
    # (its log.csv, by its header, and its first checkpoint's unfinished save, last.tmp)
    killed = tmp_path / "killed"
    (killed / "checkpoints" / "last.tmp").mkdir(parents=True)
    (killed / "checkpoints" / "last.tmp" / "weights.safetensors").write_bytes(b"half")
    (killed / "log.csv").write_text(",".join(LOG_FIELDS) + "\n7,0,56,0.1,0.1,0.001,9.0,,3.0\n")
    result = CliRunner().invoke(main, ["train", "--model", "pixelsnail-tiny", *folder_cli_args(photo_dir),
                                       "--steps", "1", "--workers", "0", "--device", "cpu", "--out", str(killed)])
    assert result.exit_code == 0, result.output
    assert (checkpoint(killed) / "trainer.pt").is_file()
    assert [row["step"] for row in read_log(killed)] == ["1"]  # the new run's row, not the killed run's
    (killed / "checkpoints" / "last.old").mkdir()
    (killed / "checkpoints" / "last.old" / "x").write_text("a checkpoint")
    shutil.rmtree(killed / "checkpoints" / "last")
    result = CliRunner().invoke(main, ["train", "--model", "pixelsnail-tiny", *folder_cli_args(photo_dir),
                                       "--steps", "1", "--workers", "0", "--device", "cpu", "--out", str(killed)])
    assert result.exit_code != 0 and "is not empty" in one_line_error(result)  # a real checkpoint is kept


def nan_model(path: Path) -> str:
    """A model file whose first weights are NaN (as a damaged file or a diverged run would hold)."""
    from snailcompress.models.presets import build
    from snailcompress.zoo import save_model

    model = build("pixelsnail-tiny", 3)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    save_model(model, path)
    return str(path)


def error_after_a_bar(result) -> str:
    """The last line of stderr, after any progress bar written on the same line (not a terminal)."""
    assert result.exit_code != 0 and "Traceback" not in result.output
    last = result.stderr.strip().splitlines()[-1]
    return last[last.index("snailcompress: error: "):]


def test_cli_train_stops_in_one_line_where_the_loss_is_not_finite(photo_dir, tmp_path):
    result = CliRunner().invoke(main, ["train", "--model", nan_model(tmp_path / "nan.safetensors"), *folder_cli_args(photo_dir),
                                       "--steps", "2", "--workers", "0", "--device", "cpu", "--out", str(tmp_path / "run")])
    assert error_after_a_bar(result).startswith("snailcompress: error: the loss is nan at step 0")
    assert not (tmp_path / "run" / "checkpoints" / "last").exists()


@pytest.mark.parametrize("damage", ["cut mid-row", "cut after a comma", "garbage", "another header"])
def test_a_resumed_run_drops_log_rows_it_cannot_read(photo_dir, tmp_path, damage):
    """A log.csv cut off by a kill in an append, or damaged: the resumed run keeps its readable rows up
    to the checkpoint and goes on, rather than gluing its rows onto a cut one or failing to draw."""
    out = tmp_path / "run"
    train(folder_options(photo_dir, out, steps=3), progress_bar=False)  # log_every 1: rows at steps 1, 2, 3
    log = out / "log.csv"
    text = log.read_text()
    lines = text.splitlines(keepends=True)
    log.write_text({"cut mid-row": "".join(lines[:3]) + lines[3][:12],
                    "cut after a comma": "".join(lines[:3]) + lines[3][: lines[3].index(",") + 1],
                    "garbage": "garbage,x\n1,2\n", "another header": "step,bpd\n1,3.0\n"}[damage])
    train(folder_options(photo_dir, out, steps=5), progress_bar=False)
    rows = read_log(out)
    kept = {"garbage": [], "another header": [1]}.get(damage, [1, 2])  # another version's rows are kept, its fields
    assert [int(r["step"]) for r in rows] == kept + [4, 5] and all(r["train_bpd"] for r in rows[-2:])
    assert list(rows[0]) == LOG_FIELDS and (out / "bpd_curve.png").is_file()


def test_a_second_training_in_a_run_directory_that_is_training_is_refused(photo_dir, tmp_path):
    """The same --out twice at once would interleave the two runs' log rows and save over each other's
    checkpoints: while one holds the run directory (here, this test), another is refused in one line."""
    from snailcompress.errors import UsageError
    from snailcompress.train import _hold_run_dir

    out = tmp_path / "run"
    train(folder_options(photo_dir, out, steps=1), progress_bar=False)
    before = (out / "log.csv").read_text()
    held = _hold_run_dir(out)
    try:
        with pytest.raises(UsageError, match="another training is running there"):
            train(folder_options(photo_dir, out, steps=2), progress_bar=False)
        assert (out / "log.csv").read_text() == before
    finally:
        held.close()
    assert train(folder_options(photo_dir, out, steps=2), progress_bar=False)["step"] == 2  # let go: it goes on
    fresh = tmp_path / "fresh"  # a run killed before its first checkpoint leaves the lock's file: a new run may start
    fresh.mkdir()
    (fresh / ".training").touch()
    assert train(folder_options(photo_dir, fresh, steps=1), progress_bar=False)["step"] == 1


def test_cli_train_a_model_too_large_for_memory_is_one_line(photo_dir, tmp_path, monkeypatch):
    """--set filters=99999999: torch's allocator refuses (simulated here: the real one takes minutes to
    fail), which was a traceback of 72 lines; now one line, and no run directory."""
    from snailcompress import train as train_module

    def too_large(config):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried "
                           "to allocate 3840000000000 bytes.\nmore lines")

    monkeypatch.setattr(train_module, "build_from_config", too_large)
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--model", "pixelsnail-tiny", *folder_cli_args(photo_dir), "--steps", "1",
                                       "--workers", "0", "--device", "cpu", "--out", str(out)])
    assert "does not fit in memory here ([enforce fail" in one_line_error(result) and not out.exists()


def test_weights_that_diverged_after_a_finite_loss_are_never_saved(photo_dir, tmp_path, monkeypatch):
    """A step whose loss was finite but whose update made the weights NaN (lr 1e6): the checkpoint saved
    after it would hold them, and the run could never resume; it stops without saving them."""
    from snailcompress import train as train_module
    from snailcompress.train import TrainingDiverged

    real = train_module._train_step

    def diverging_step(run, batch):
        out = real(run, batch)
        with torch.no_grad():
            next(run.model.parameters()).fill_(float("nan"))
        return out

    monkeypatch.setattr(train_module, "_train_step", diverging_step)
    with pytest.raises(TrainingDiverged, match="not finite numbers after step 1"):
        train(folder_options(photo_dir, tmp_path / "run", steps=3, checkpoint_minutes=0.0), progress_bar=False)
    assert not checkpoint(tmp_path / "run").exists()


@pytest.mark.parametrize("damage", ["trainer.pt", "weights.safetensors", "config.json"])
def test_cli_resuming_a_damaged_checkpoint_says_so_in_one_line(cli_run, tmp_path, damage):
    run = tmp_path / "run"
    shutil.copytree(cli_run, run)
    target = checkpoint(run) / damage
    target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 2])
    result = CliRunner().invoke(main, ["train", "--out", str(run), "--steps", "3", "--workers", "0"])
    last = error_after_a_bar(result)  # after the line that says it is resuming
    assert "its last checkpoint" in last and "cannot be read" in last


@pytest.mark.parametrize("extra, needle", [(["--limit", "0"], "--limit must be at least 1"),
                                           (["--limit", "-1"], "--limit must be at least 1"),  # printed -0.0000 bits/dim
                                           (["--batch-size", "0"], "--batch-size must be at least 1")])
def test_cli_eval_refuses_empty_counts(photo_dir, extra, needle):
    result = CliRunner().invoke(main, ["eval", "--model", "pixelsnail-tiny", *folder_cli_args(photo_dir),
                                       "--device", "cpu", *extra])
    assert result.exit_code != 0 and needle in one_line_error(result)


@pytest.mark.parametrize("command", ["eval", "bench", "train"])
@pytest.mark.parametrize("extra", [["--channels", "3"], ["--holdout", "x"]])
def test_folder_only_options_are_refused_for_a_fixed_data_set(command, extra, tmp_path):
    """--channels and --holdout shape the folder data set; a fixed one (MNIST here, not installed: the
    refusal comes first) was scored as published while they were ignored. Now one line, nothing written."""
    out = [] if command == "eval" else ["--out", str(tmp_path / "out"), *(["--steps", "1"] if command == "train" else [])]
    result = CliRunner().invoke(main, [command, "--model", "pixelsnail-tiny", "--dataset", "mnist", "--data-dir",
                                       str(tmp_path / "none"), *extra, *out])
    assert result.exit_code != 0 and "apply to the folder data set only" in one_line_error(result), result.output
    assert not (tmp_path / "out").exists()


def test_cli_eval_of_a_model_with_non_finite_weights_is_an_error(photo_dir, tmp_path):
    result = CliRunner().invoke(main, ["eval", "--model", nan_model(tmp_path / "nan.safetensors"),
                                       *folder_cli_args(photo_dir), "--device", "cpu"])
    assert "not finite" in error_after_a_bar(result)  # it printed "nan bits/dim", exit 0


@pytest.fixture(scope="module")
def cli_run(photo_dir, tmp_path_factory) -> Path:
    """A 2-step run trained through the CLI."""
    out = tmp_path_factory.mktemp("cli") / "run"
    result = CliRunner().invoke(
        main,
        ["train", "--model", "pixelsnail-tiny", *folder_cli_args(photo_dir), "--batch-size", "3", "--steps", "2",
         "--workers", "0", "--device", "cpu", "--eval-every", "0", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert re.search(r"2 steps, 6 images, test \d+\.\d{4} bits/dim", result.stdout), result.stdout
    return out


def test_cli_run_directory_contents(cli_run):
    for name in CHECKPOINT_FILES:
        assert (checkpoint(cli_run) / name).is_file(), name
    assert (cli_run / "bpd_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = read_log(cli_run)
    assert rows and rows[-1]["step"] == "2" and rows[-1]["test_bpd"]
    config = json.loads((checkpoint(cli_run) / "config.json").read_text())
    assert config["model"]["architecture"] == "pixelsnail" and config["options"]["steps"] == 2
    assert config["progress"]["step"] == 2
    loaded = load_model(cli_run)  # --model RUN_DIR: the EMA weights
    assert loaded.metadata["step"] == 2
    # what the training cost, for bench's summary: images seen, time, device, processes
    assert loaded.metadata["images"] == 6 and loaded.metadata["device"] == "cpu" and loaded.metadata["processes"] == 1
    assert loaded.metadata["elapsed_s"] == config["progress"]["elapsed_s"] > 0
    assert loaded.metadata["cpu_s"] == config["progress"]["cpu_s"] > 0
    ema = load_file(checkpoint(cli_run) / "ema.safetensors")
    assert_same_tensors(loaded.model.state_dict(), ema)
    weights = load_file(checkpoint(cli_run) / "weights.safetensors")
    assert weights.keys() == ema.keys() and any(not torch.equal(weights[k], ema[k]) for k in ema)
    state = torch.load(checkpoint(cli_run) / "trainer.pt", weights_only=True)
    assert state["progress"]["step"] == 2 and len(state["optimizer"]["state"]) == len(weights)


def test_cli_eval_prints_bits_per_dim_of_a_run(cli_run, photo_dir):
    result = CliRunner().invoke(main, ["eval", "--model", str(cli_run), *folder_cli_args(photo_dir), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    match = re.search(r"folder test: (\d+\.\d+) bits/dim over 9 images \(1728 dims\)", result.stdout)
    assert match, result.stdout
    trained = json.loads((checkpoint(cli_run) / "config.json").read_text())["progress"]["test_bpd"]
    assert float(match.group(1)) == pytest.approx(trained, abs=1e-4)


def test_cli_eval_with_context_scores_what_a_codec_window_codes(cli_run, photo_dir):
    args = ["eval", "--model", str(cli_run), *folder_cli_args(photo_dir), "--device", "cpu"]
    result = CliRunner().invoke(main, [*args, "--context", "2"])
    assert result.exit_code == 0, result.output
    match = re.search(r"folder test: (\d+\.\d+) bits/dim over 9 images \(972 dims\)", result.stdout)
    assert match, result.stdout
    expected = evaluate(load_model(str(cli_run)).model, folder_split(photo_dir, "test"), progress=False,
                        context=2).bits_per_dim
    assert float(match.group(1)) == pytest.approx(expected, abs=1e-4)
    refused = CliRunner().invoke(main, [*args, "--context", "8"])
    assert refused.exit_code != 0 and "--context 8 leaves nothing to score" in refused.output


def test_cli_resumes_a_finished_run_with_more_steps(cli_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(cli_run, run)
    before = read_log(run)
    result = CliRunner().invoke(main, ["train", "--out", str(run), "--steps", "3"])  # no model or data set needed
    assert result.exit_code == 0, result.output
    assert "resuming" in result.stderr
    assert re.search(r"3 steps, 9 images", result.stdout), result.stdout
    after = read_log(run)
    assert read_log(cli_run) == before, "resuming a copied run wrote into the original run directory"
    assert after[: len(before)] == before  # the first run's rows are kept as they were
    assert [r["step"] for r in after[len(before):]] == ["3"]
    state = torch.load(checkpoint(run) / "trainer.pt", weights_only=True)
    assert state["progress"]["step"] == 3
    assert all(float(s["step"]) == 3 for s in state["optimizer"]["state"].values())  # 2 old + 1 new update
    options = json.loads((checkpoint(run) / "config.json").read_text())["options"]
    assert options["steps"] == 3 and options["batch_size"] == 3 and options["dataset"] == "folder"


def test_the_last_step_is_evaluated_once_and_a_finished_run_run_again_changes_nothing(photo_dir, tmp_path):
    """A last step that a periodic evaluation just scored is not scored again (one log row, not two);
    the same command on the finished run trains nothing, evaluates nothing and writes nothing."""
    out = tmp_path / "run"
    args = ["train", "--model", "pixelsnail-tiny", *folder_cli_args(photo_dir), "--batch-size", "3", "--steps", "2",
            "--workers", "0", "--device", "cpu", "--eval-every", "2", "--out", str(out)]
    assert CliRunner().invoke(main, args).exit_code == 0
    rows = read_log(out)
    assert [(r["step"], bool(r["test_bpd"])) for r in rows] == [("2", True)]
    saved = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and f"test {float(rows[-1]['test_bpd']):.4f} bits/dim" in again.stdout, again.output
    assert read_log(out) == rows and {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == saved


def test_a_save_killed_between_its_renames_resumes_from_the_previous_checkpoint(cli_run, tmp_path):
    """save_checkpoint moves the old checkpoint aside, then the new one into place: killed between the
    two, only checkpoints/last.old is left, and the same command resumes from it (it said the run
    directory was not empty and held no checkpoint); a half-removed last.old does not stop a save."""
    run = tmp_path / "run"
    shutil.copytree(cli_run, run)
    (run / "checkpoints" / "last").rename(run / "checkpoints" / "last.old")
    result = CliRunner().invoke(main, ["train", "--out", str(run), "--steps", "3"])
    assert result.exit_code == 0 and "resuming" in result.stderr, result.output
    (run / "checkpoints" / "last.old").mkdir()
    (run / "checkpoints" / "last.old" / "left.txt").write_text("a removal cut short")
    result = CliRunner().invoke(main, ["train", "--out", str(run), "--steps", "4"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last"]
    assert json.loads((checkpoint(run) / "config.json").read_text())["progress"]["step"] == 4


def test_the_data_workers_last_the_whole_run(photo_dir, tmp_path, monkeypatch):
    """One loader serves every epoch: the same worker draws the crops of every epoch (keeping the
    images it decoded, data/folder.py: RandomCrops), and they are the crops of a run without workers."""
    from snailcompress.data import folder

    drawn, get = tmp_path / "drawn.txt", folder.RandomCrops.__getitem__

    def recorded(self, index):  # runs in the worker process (forked: the patch goes with it)
        with drawn.open("a") as f:
            f.write(f"{os.getpid()}\n")
        return get(self, index)

    monkeypatch.setattr(folder.RandomCrops, "__getitem__", recorded)
    with_workers = train(folder_options(photo_dir, tmp_path / "workers", steps=12, workers=1), progress_bar=False)
    assert with_workers["epoch"] >= 2  # 4 batches an epoch
    workers = {pid for pid in drawn.read_text().split() if pid != str(os.getpid())}  # the main process inits
    assert len(workers) == 1, workers
    alone = train(folder_options(photo_dir, tmp_path / "alone", steps=12, workers=0), progress_bar=False)
    assert alone["test_bpd"] == with_workers["test_bpd"]


def test_cli_resume_retyping_the_command_may_change_the_crops(cli_run, photo_dir, tmp_path):
    """The same command again resumes; of the data options typed, --crop and --scales replace the
    saved ones (fine-tuning on other crops), the rest must match."""
    run = tmp_path / "run"
    shutil.copytree(cli_run, run)
    args = ["train", "--model", "pixelsnail-tiny", *folder_cli_args(photo_dir), "--out", str(run), "--steps", "3"]
    args[args.index("--scales") + 1] = "1,0.5"
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "resuming" in result.stderr and re.search(r"3 steps, 9 images", result.stdout), result.output
    # what the score is: c.png's 8x8 tiles at scales 1 and 0.5 (3 x 3 and 1), all of them
    assert re.search(r"bits/dim \(EMA weights, 10 test images\)", result.stdout), result.stdout
    again = CliRunner().invoke(main, args)  # its budget spent: nothing trained, and it says so
    assert again.exit_code == 0 and "nothing trained" in again.stderr, again.output
    options = json.loads((checkpoint(run) / "config.json").read_text())["options"]
    assert options["scales"] == [1.0, 0.5] and options["holdout"] == ["c"] and options["crop"] == 8


@pytest.mark.parametrize(
    "change, option",
    [(["--model", "pixelsnail-small"], "--model"), (["--set", "filters=8"], "--set"), (["--holdout", "a"], "--holdout"),
     (["--dataset", "mnist"], "--dataset"), (["--channels", "1"], "--channels"),
     (["--seed", "3"], "--seed"), (["--context", "2"], "--context")],  # the data order; what the scores count
)
def test_cli_resume_refuses_another_model_or_test_split(cli_run, tmp_path, change, option):
    run = tmp_path / "run"
    shutil.copytree(cli_run, run)
    before = (checkpoint(run) / "trainer.pt").read_bytes()
    result = CliRunner().invoke(main, ["train", "--out", str(run), "--steps", "3", *change])
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert f"was started with {option}" in result.stderr and "start a new --out" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert (checkpoint(run) / "trainer.pt").read_bytes() == before


def test_cli_resume_takes_the_same_test_split_and_channels_said_otherwise(cli_run, tmp_path):
    """The held-out names in another order (or repeated), and a folder's default --channels 3 typed
    where the run was started without it, are the run's own: it resumes."""
    run = tmp_path / "run"
    shutil.copytree(cli_run, run)
    result = CliRunner().invoke(main, ["train", "--out", str(run), "--steps", "3", "--holdout", "c,c", "--channels", "3"])
    assert result.exit_code == 0 and "resuming" in result.stderr, result.output


def test_cli_resume_with_a_cooldown_replaces_the_saved_budget_and_finds_moved_data(cli_run, photo_dir, tmp_path):
    """A run saved with --minutes (spent) resumed with --steps trains to those steps, the lr falling
    linearly over the cool-down; its data folder moved, so --data-dir points at the new place."""
    run, moved = tmp_path / "run", tmp_path / "moved-data"
    shutil.copytree(cli_run, run)
    shutil.copytree(photo_dir, moved)
    config_path = checkpoint(run) / "config.json"
    config = json.loads(config_path.read_text())
    config["options"].update(steps=None, minutes=1e-9, data_dir=str(tmp_path / "gone"))
    config_path.write_text(json.dumps(config))
    result = CliRunner().invoke(
        main, ["train", "--out", str(run), "--data-dir", str(moved), "--steps", "6", "--cooldown-steps", "4"]
    )
    assert result.exit_code == 0, result.output
    assert re.search(r"6 steps, 18 images", result.stdout), result.stdout
    options = json.loads(config_path.read_text())["options"]
    assert options["minutes"] is None and options["steps"] == 6 and options["data_dir"] == str(moved)
    new_rows = read_log(run)[len(read_log(cli_run)):]
    assert [r["step"] for r in new_rows] == ["6"]
    assert float(new_rows[-1]["lr"]) == pytest.approx(1e-3 * 0.999998**5 / 4, rel=1e-4)  # the last step's, 0-based 5


def test_train_options_resume_a_run_with_a_checkpoint_and_start_one_without(cli_run, tmp_path):
    """What was typed (None: not typed): a run with a checkpoint keeps its saved options but for
    what was typed; a new run takes TrainOptions' defaults and needs a model and a data set."""
    resumed, resuming = train_options(str(cli_run), steps=3, model=None, crop=None)
    assert resuming and resumed == replace(saved_options(cli_run), steps=3)
    new = tmp_path / "new"
    fresh, resuming = train_options(str(new), model="pixelsnail-tiny", dataset="mnist", steps=3, crop=None)
    assert not resuming and fresh == TrainOptions(model="pixelsnail-tiny", dataset="mnist", out=str(new), steps=3)
    for model, dataset in [("pixelsnail-tiny", None), (None, "mnist"), ("", "mnist")]:
        with pytest.raises(UsageError, match="a new run needs --model and --dataset"):
            train_options(str(new), model=model, dataset=dataset, steps=3)
    result = CliRunner().invoke(main, ["train", "--out", str(new), "--steps", "3", "--dataset", "mnist"])
    assert result.exit_code == UsageError.exit_code
    assert one_line_error(result).endswith("a new run needs --model and --dataset")
    assert not new.exists()


def test_cli_train_shows_the_folder_defaults_a_new_run_gets():
    """A new run leaves the folder options not typed to TrainOptions: `train --help` must show those."""
    from snailcompress.cli import _folder_kwargs

    shown = {p.name: p.default for p in main.commands["train"].params}
    typed = _folder_kwargs(shown["crop"], shown["scales"], shown["holdout"], shown["channels"])
    library = {f.name: f.default for f in fields(TrainOptions)}
    assert typed == {key: library[key] for key in typed}


def test_network_autocast_is_bf16_where_asked_and_auto_keeps_the_cpu_in_fp32():
    model = load_model("pixelsnail-tiny").model.eval()
    x = torch.zeros(1, 3, 8, 8)
    cpu = torch.device("cpu")
    with torch.no_grad():
        with network_autocast("bf16", cpu):
            assert model(x).dtype == torch.bfloat16
        for precision in ("auto", "fp32"):
            with network_autocast(precision, cpu):
                assert model(x).dtype == torch.float32
    with pytest.raises(ValueError, match="precision must be one of auto, bf16, fp32"):
        network_autocast("fp16", cpu)
    assert tuple(PRECISION_CHOICES) == PRECISIONS  # the CLI's copy of the list


def test_cli_train_in_bf16_on_the_cpu_and_resume_in_fp32(photo_dir, tmp_path):
    """--precision is saved with the run, and a resumed run may change it (it is not the model)."""
    out = tmp_path / "bf16"
    result = CliRunner().invoke(
        main,
        ["train", "--model", "pixelsnail-tiny", *folder_cli_args(photo_dir), "--batch-size", "3", "--steps", "2",
         "--workers", "0", "--device", "cpu", "--eval-every", "0", "--precision", "bf16", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert re.search(r"2 steps, 6 images, test \d+\.\d{4} bits/dim", result.stdout), result.stdout
    assert saved_options(out).precision == "bf16"
    assert all(math.isfinite(float(row["train_bpd"])) for row in read_log(out) if row["train_bpd"])
    resumed = CliRunner().invoke(main, ["train", "--out", str(out), "--steps", "3", "--precision", "fp32"])
    assert resumed.exit_code == 0, resumed.output
    assert saved_options(out).precision == "fp32"


@pytest.mark.parametrize("amp, precision", [(True, "auto"), (False, "fp32")])
def test_runs_saved_before_precision_resume_with_what_their_amp_meant(cli_run, tmp_path, amp, precision):
    """Checkpoints from before --precision saved `amp` (bf16 autocast on CUDA only): "auto" is that."""
    run = tmp_path / "old"
    shutil.copytree(cli_run, run)
    config_path = checkpoint(run) / "config.json"
    config = json.loads(config_path.read_text())
    del config["options"]["precision"]
    config["options"]["amp"] = amp
    config_path.write_text(json.dumps(config))
    assert saved_options(run).precision == precision


def test_ctrl_c_saves_a_checkpoint_and_the_same_command_resumes(photo_dir, tmp_path):
    """SIGINT to the whole process group, as Ctrl-C sends it (data-loading workers included): the run
    finishes its step, saves, says so and exits 130; the checkpoint holds the step it reported."""
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "snailcompress.cli", "train", "--model", "pixelsnail-tiny", *folder_cli_args(photo_dir),
        "--batch-size", "2", "--steps", "100000", "--workers", "1", "--device", "cpu", "--eval-every", "0",
        "--checkpoint-minutes", "0.0001", "--out", str(out),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (checkpoint(out) / "trainer.pt").is_file():  # a checkpoint after every step: it is training
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-2000:]
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 128 + signal.SIGINT, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
    match = re.search(r"stopped by SIGINT at step (\d+), checkpoint saved", stderr)
    assert match, stderr[-2000:]
    saved = json.loads((checkpoint(out) / "config.json").read_text())["progress"]
    assert saved["step"] == int(match.group(1)) > 0
    # log.csv's last row is at the stopping step, with the train bits/dim of the steps since the row before
    stopped = read_log(out)[-1]
    assert int(stopped["step"]) == saved["step"] and stopped["train_bpd"] and not stopped["test_bpd"]
    end = saved["step"] + 1
    resumed = CliRunner().invoke(main, ["train", "--out", str(out), "--steps", str(end)])
    assert resumed.exit_code == 0, resumed.output
    assert re.search(rf"{end} steps", resumed.stdout), resumed.stdout
    assert read_log(out)[-2] == stopped  # kept; the new row covers the steps trained since
    last = read_log(out)[-1]
    assert int(last["step"]) == end and last["train_bpd"] and last["test_bpd"]


def test_the_curve_of_a_run_stopped_before_its_first_log_row_is_an_empty_plot(tmp_path):
    """A run stopped at once (Ctrl-C in its first steps) has a log with no rows: its picture is an
    empty plot, without matplotlib's warning about a legend with nothing to label."""
    import warnings

    from snailcompress.figures import plot_training_curve
    from snailcompress.train import LOG_FIELDS

    (tmp_path / "log.csv").write_text(",".join(LOG_FIELDS) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = plot_training_curve(tmp_path / "log.csv", tmp_path / "curve.png", "stopped early")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"



def test_a_data_workers_error_is_its_own_line_and_its_workers_stop(photo_dir, tmp_path, monkeypatch):
    """A crop that fails in a data worker (a damaged photo whose header passed): torch re-raises the
    error with the worker's traceback in its message, and the workers, which ignore stop signals, kept
    the process from exiting. The error is its own line again, and the workers are gone."""
    import multiprocessing

    from snailcompress.data import folder
    from snailcompress.errors import DatasetError

    parent, real = os.getpid(), folder.RandomCrops.__getitem__

    def damaged_in_workers(self, index):  # the data-dependent init draws in this process: it succeeds
        if os.getpid() != parent:
            raise DatasetError("b.png is not a readable image (image file is truncated).")
        return real(self, index)

    monkeypatch.setattr(folder.RandomCrops, "__getitem__", damaged_in_workers)
    with pytest.raises(DatasetError) as caught:
        train(folder_options(photo_dir, tmp_path / "run", steps=4, workers=1), progress_bar=False)
    assert str(caught.value) == "b.png is not a readable image (image file is truncated)."
    assert not multiprocessing.active_children()


def test_a_checkpoints_raw_weights_are_a_model_file_too(cli_run):
    """eval and bench score the EMA weights (--model RUN_DIR); the raw ones are loadable beside them."""
    raw, averaged = load_model(checkpoint(cli_run) / "weights.safetensors"), load_model(cli_run)
    assert raw.config == averaged.config and raw.model_id != averaged.model_id
    # the same training facts (bench's training column), but the test score, which is the EMA's
    assert raw.metadata == {k: v for k, v in averaged.metadata.items() if k != "test_bpd"} and raw.metadata
    assert_same_tensors(raw.model.state_dict(), load_file(str(checkpoint(cli_run) / "weights.safetensors")))
