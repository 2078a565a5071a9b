"""Training, the reference's way (docs/pixelsnail-reference.md section 5), in one plain loop.

    data-dependent init on the first batch
    for every step:  loss = total NLL (nats) of the batch      (the reference's per-GPU loss)
                     Adam(beta1 0.95, beta2 0.9995, eps inside the square root)
                     lr = lr0 * decay**step                     (decayed every step, not every epoch)
                          x (steps - step) / cooldown           (optional, not the reference: over the
                                                                 last `cooldown_steps`, falling to 0)
                     EMA of every parameter (V, g, b)           (used to evaluate, sample and code)

Distributed: launched with torchrun, every process trains on its own `batch_size` images of one
global batch (global batch = batch_size x world size; the paper's 8 GPUs x 8 images = 64). Each
rank's loss is scaled by the world size, so DDP's average of the gradients is their sum over the
global batch, as in the reference (with eps inside Adam's square root the scale matters: averaging
would act like a world^2 times larger eps). The data order is a pure function of (seed, epoch), so every
rank agrees and a resumed run continues exactly where the interrupted one stopped: the checkpoint
counts its place in the epoch in images (a resumed run may change the batch size or the number of
processes) and holds every rank's RNG states (each rank draws its own dropout masks).

A run directory holds:
    checkpoints/last/   ema.safetensors (a model file: --model RUN_DIR works), weights.safetensors (the raw
                        weights, a model file too: --model RUN_DIR/checkpoints/last/weights.safetensors),
                        trainer.pt (optimiser state, step, each rank's RNG states; loaded with weights_only=True),
                        config.json
    log.csv             one row per log interval and at the end (a signal's stop too): step, images, lr,
                        train bits/dim and speed since the row before, test bits/dim where evaluated
    bpd_curve.png       the curves of log.csv
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Sampler

from . import distributed, mixture
from .data import load_split
from .errors import ModelError, SnailError, UsageError
from .fileio import atomic_path, check_directory
from .evaluate import EvaluationStopped, check_context, evaluate, scored_log_prob
from .models.layers import data_dependent_init
from .models.presets import PRESETS, ModelConfig, build_from_config, config_from_dict, preset_config
from .zoo import last_checkpoint, load_model, save_model
from .progress import progress_bar as terminal_bar  # train() has a progress_bar flag

# Reference hyper-parameters by architecture: lr decay per step, Adam epsilon (inside the sqrt).
REFERENCE = {
    "pixelsnail": {"lr_decay": 0.999998, "adam_eps": 1e-6},
    "pixelcnnpp": {"lr_decay": 0.999995, "adam_eps": 1e-8},
}
#: the reference's Polyak decay by data set (its CIFAR-10 and ImageNet commands); others take CIFAR-10's
REFERENCE_EMA = {"imagenet32": 0.9997, "imagenet64": 0.9997}

LOG_FIELDS = ["step", "epoch", "images", "elapsed_s", "cpu_s", "lr", "train_bpd", "test_bpd", "images_per_s"]


@dataclass
class TrainOptions:
    model: str  # a preset name, or a trained model (shipped name, model file, run dir) to go on training
    dataset: str
    out: str
    data_dir: str | None = None
    batch_size: int = 8  # per process; the reference uses 8 per GPU (PixelSNAIL), 16 (PixelCNN++)
    init_batch: int | None = None  # images for data-dependent init; default batch_size
    lr: float = 1e-3
    lr_decay: float | None = None  # per optimiser step; default from REFERENCE
    cooldown_steps: int = 0  # the last N of `steps` take the lr linearly down to 0 (not in the reference)
    warmup_steps: int = 0  # the first N steps take the lr linearly up from 0 (not in the reference)
    adam_eps: float | None = None  # inside the square root; default from REFERENCE
    ema_decay: float | None = None  # Polyak averaging; default the reference's for the data set (ema_decay)
    dropout: float | None = None  # overrides the preset's
    model_overrides: dict = field(default_factory=dict)  # e.g. {"filters": 96}
    steps: int | None = None
    minutes: float | None = None  # wall-clock budget (in total, across resumes)
    cpu_minutes: float | None = None  # CPU-time budget of this process: fair on a shared machine
    log_every: int = 50
    eval_every: int = 1000
    eval_images: int | None = 1000  # test images per periodic evaluation; None = whole split
    checkpoint_minutes: float = 10.0
    seed: int = 0
    workers: int = 2
    device: str = "auto"
    precision: str = "auto"  # network arithmetic: "bf16" autocast, "fp32", or "auto" (bf16 on CUDA only); see network_autocast
    compile: bool = False
    cache_dir: str | None = None  # HDF5 cache of fixed data sets (see snailcompress.data.cache)
    # Score only pixels below the first N rows and right of the first N columns of each image, as
    # the codec codes a window (encode --context N): train on --crop tile+N (not in the reference).
    context: int = 0
    # `folder` data set only
    crop: int = 32
    scales: tuple[float, ...] = (1.0, 0.5, 0.25)
    holdout: tuple[str, ...] = ()
    channels: int | None = None
    samples_per_epoch: int | None = None


def ema_decay(options: TrainOptions) -> float:
    """The run's Polyak decay: --ema, else the reference's for its data set (0.9995 but on ImageNet)."""
    return options.ema_decay if options.ema_decay is not None else REFERENCE_EMA.get(options.dataset, 0.9995)


# ---------------------------------------------------------------------------------------------
# The optimiser of the reference code


class ReferenceAdam(torch.optim.Optimizer):
    """Adam as the reference's nn.adam_updates: update = lr * m_hat / sqrt(v_hat + eps).

    torch.optim.Adam puts eps outside the square root; with the reference's eps = 1e-6 the two
    differ for parameters with small gradients, so this is written out.
    """

    def __init__(self, params, lr=1e-3, betas=(0.95, 0.9995), eps=1e-6):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            states = [self.state[p] for p in params]
            for p, s in zip(params, states):
                if not s:
                    s["step"] = torch.zeros((), dtype=torch.float64)
                    s["m"], s["v"] = torch.zeros_like(p), torch.zeros_like(p)
            t = float(states[0]["step"]) + 1
            grads = [p.grad for p in params]
            m, v = [s["m"] for s in states], [s["v"] for s in states]
            torch._foreach_lerp_(m, grads, 1 - beta1)
            torch._foreach_mul_(v, beta2)
            torch._foreach_addcmul_(v, grads, grads, value=1 - beta2)
            denom = torch._foreach_div(v, 1 - beta2**t)
            torch._foreach_add_(denom, group["eps"])
            torch._foreach_sqrt_(denom)
            torch._foreach_addcdiv_(params, m, denom, value=-group["lr"] / (1 - beta1**t))
            for s in states:
                s["step"] += 1


PRECISIONS = ("auto", "bf16", "fp32")


def network_autocast(precision: str, device: torch.device):
    """bf16 autocast of the network's forward pass, or nothing (the parameters, their gradients, the
    loss, Adam and the EMA are fp32 either way). "auto" uses it on CUDA only. On a CPU with
    AMX, bf16 trained snail-rgb 1.24x faster but 0.59% worse on the held-out images where fp32 gained
    0.04% (results/experiments/default_models/bf16_training.md); without AMX or AVX512-BF16 it is emulated."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cpu_bf16_units() -> str:
    """This CPU's native bf16 units ("AMX, AVX512-BF16"), or "none": where bf16 on the CPU runs fast."""
    checks = {"AMX": "_is_amx_tile_supported", "AVX512-BF16": "_is_avx512_bf16_supported"}  # torch.cpu, private
    return ", ".join(name for name, check in checks.items() if getattr(torch.cpu, check, lambda: False)()) or "none"


def learning_rate(options: TrainOptions, step: int, lr_decay: float) -> float:
    """The lr of optimiser step `step` (0-based): the reference's per-step exponential decay, times
    an optional linear warm-up from zero over the first `warmup_steps` and an optional linear
    cool-down to zero over the run's last `cooldown_steps`.

    Both are ours, not the paper's. The cool-down: a run cut short by its compute budget (our shipped
    models) ends with its lr still high; annealing it before the end ("warmup-stable-decay",
    Hagele et al. 2024) takes the loss the rest of the way down without retraining from scratch.
    The warm-up: going on from a trained model with a fresh optimiser, Adam's first steps move every
    weight by about the full lr (its second-moment estimate is one gradient), which undoes training
    (snail-rgb: 2.3 to 4.5 bits/dim in one step at lr 4e-4); a ramp lets the estimate settle first.
    """
    lr = options.lr * lr_decay**step
    if options.warmup_steps:
        lr *= min(1.0, (step + 1) / options.warmup_steps)
    if options.cooldown_steps:
        lr *= min(1.0, max(0.0, (options.steps - step) / options.cooldown_steps))
    return lr


# ---------------------------------------------------------------------------------------------
# Data order: a pure function of (seed, epoch), shared by every rank


class GlobalBatchSampler(Sampler):
    """Batches of this rank's share of each global batch, from image `start` of the epoch's order on.

    A resumed run starts where its checkpoint stopped, counted in images: with another batch size or
    number of processes it neither skips nor repeats an image of the epoch."""

    def __init__(self, n, batch_size, rank, world, seed, epoch, start=0):
        self.n, self.batch_size, self.rank, self.world = n, batch_size, rank, world
        self.seed, self.epoch, self.start = seed, epoch, start

    def __len__(self):
        return (self.n - self.start) // (self.batch_size * self.world)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=generator).tolist()
        per_global = self.batch_size * self.world
        for b in range(len(self)):
            first = self.start + b * per_global + self.rank * self.batch_size
            yield order[first : first + self.batch_size]


# ---------------------------------------------------------------------------------------------
# Checkpoints


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def save_checkpoint(run_dir: Path, model, ema, optimizer, progress: dict, options: TrainOptions, device,
                    rng: list[dict]) -> None:
    """Write checkpoints/last as a new directory (last.tmp) renamed into place, the previous one moved
    aside first (last.old, then removed): a save killed at any point leaves a whole checkpoint, last or,
    between the two renames, last.old (has_checkpoint puts it back). The model file's facts
    say what the EMA weights are and what they cost: data set, steps, images seen, test bits/dim,
    wall and CPU (rank 0's process) seconds in total across resumes, device type and process count.
    `rng` holds every rank's RNG states (_rng_state), in rank order."""
    last = last_checkpoint(run_dir)
    tmp, old = last.with_name("last.tmp"), last.with_name("last.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    facts = {"dataset": options.dataset, **{k: progress[k] for k in ("step", "images", "test_bpd")},
             "elapsed_s": progress.get("elapsed_s"), "cpu_s": progress.get("cpu_s"), "device": torch.device(device).type,
             "processes": len(rng)}
    save_model(ema, tmp / "ema.safetensors", **facts)
    # the raw weights, a model file too (their test score is not the EMA's, so not among their facts)
    save_model(model, tmp / "weights.safetensors", **{k: v for k, v in facts.items() if k != "test_bpd"})
    torch.save(
        {"optimizer": optimizer.state_dict(), "progress": progress, "rng": rng},
        tmp / "trainer.pt",
    )
    config = {"model": model.config.to_dict(), "options": asdict(options), "progress": progress}
    (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str))
    if last.exists():
        shutil.rmtree(old, ignore_errors=True)  # what a save killed while removing it left
        last.rename(old)
    tmp.rename(last)
    shutil.rmtree(old, ignore_errors=True)


class TrainingDiverged(SnailError):
    """The loss is not finite: nothing a checkpoint could keep."""


@contextlib.contextmanager
def _reading_checkpoint(run_dir: Path):
    """A checkpoint that cannot be read (truncated, damaged, of another version) is a ModelError in
    one line naming the run, not the reading library's traceback."""
    try:
        yield
    except Exception as e:
        if isinstance(e, SnailError) and not isinstance(e, ModelError):
            raise
        # a ModelError (a config's values) whole, else the reader's first sentence
        detail = str(e) if isinstance(e, ModelError) else " ".join(str(e).split()).split(". ")[0][:160] or type(e).__name__
        raise ModelError(f"{run_dir}: its last checkpoint ({last_checkpoint(run_dir)}) cannot be read: {detail}") from None


def load_checkpoint(run_dir: Path, model, ema, optimizer, device, rank: int = 0) -> dict:
    """The run's weights, EMA and optimiser state into these, rank `rank`'s RNG states into torch; returns
    the progress. A rank the saved run did not have (resumed on more processes) keeps its own seed."""
    last = last_checkpoint(run_dir)
    with _reading_checkpoint(run_dir):
        model.load_state_dict(load_file(str(last / "weights.safetensors")))
        ema.load_state_dict(load_file(str(last / "ema.safetensors")))
        state = torch.load(last / "trainer.pt", map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        rng = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]  # a dict: rank 0's, saved alone
        if rank < len(rng):
            torch.set_rng_state(rng[rank]["torch"])
            if device.type == "cuda" and "cuda" in rng[rank]:
                torch.cuda.set_rng_state(rng[rank]["cuda"], device)
        progress = state["progress"]
        if "batch_in_epoch" in progress:  # saved before the place in the epoch was counted in images
            progress["images_in_epoch"] = progress.pop("batch_in_epoch") * _saved_global_batch(run_dir)
        return progress


def _saved_global_batch(run_dir: Path) -> int:
    """The global batch of a run's last checkpoint: its batch size times its process count."""
    with safe_open(str(last_checkpoint(run_dir) / "ema.safetensors"), framework="numpy") as f:
        processes = json.loads((f.metadata() or {}).get("facts", "{}")).get("processes") or 1
    return saved_options(run_dir).batch_size * int(processes)


def has_checkpoint(run_dir: Path) -> bool:
    """Whether `run_dir` holds a checkpoint to resume: then the same command goes on from it. A save
    killed between its two renames (save_checkpoint) left the previous checkpoint as last.old and no
    last: it is put back first, so that the run resumes from it."""
    last = last_checkpoint(run_dir)
    old = last.with_name("last.old")
    if not last.exists() and (old / "trainer.pt").is_file():
        old.rename(last)
    return (last / "trainer.pt").is_file()


def _saved_record(run_dir: Path) -> dict | None:
    """The last checkpoint's config.json (model config, options, progress), None if there is none."""
    path = last_checkpoint(run_dir) / "config.json"
    if not path.is_file():
        return None
    with _reading_checkpoint(run_dir):
        record = json.loads(path.read_text())
        if not isinstance(record, dict) or not {"model", "options"} <= set(record):
            raise ValueError("config.json lacks the model's config or the run's options")
        return record


def saved_options(run_dir: Path) -> TrainOptions | None:
    """The options a run was started with, to resume it without repeating them."""
    record = _saved_record(run_dir)
    if record is None:
        return None
    with _reading_checkpoint(run_dir):
        saved = dict(record["options"])
        saved["scales"], saved["holdout"] = tuple(saved["scales"]), tuple(saved["holdout"])
        if "amp" in saved:  # runs saved before `precision`: amp meant bf16 on CUDA, which "auto" still means
            saved["precision"] = "auto" if saved.pop("amp") else "fp32"
        return TrainOptions(**saved)


# ---------------------------------------------------------------------------------------------
# Logs and curves


class CsvLog:
    """A run's log.csv, a row appended at a time. A resumed run first drops the rows its interrupted
    run wrote after its checkpoint, and any it cannot read (a row cut off by a kill, a damaged file:
    the rows after it would be glued onto it, or the curve fail to draw), rewriting the file whole,
    atomically, only where there are any."""

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        kept: list[dict] = []
        if path.exists() and resume_step > 0:
            text = path.read_text(errors="replace")
            reader = csv.DictReader(io.StringIO(text))
            rows = list(reader)
            if rows and not text.endswith("\n"):
                rows.pop()  # its last row was cut off
            readable = [r for r in rows if None not in r and None not in r.values() and r.get("step", "").isdigit()]
            kept = [{k: r.get(k, "") for k in LOG_FIELDS} for r in readable if int(r["step"]) <= resume_step]
            if reader.fieldnames == LOG_FIELDS and len(kept) == len(rows) and text.endswith("\n"):
                return
        with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, LOG_FIELDS)
            writer.writeheader()
            writer.writerows(kept)

    def append(self, row: dict) -> None:
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, LOG_FIELDS).writerow({k: row.get(k, "") for k in LOG_FIELDS})


# ---------------------------------------------------------------------------------------------
# The loop


def _trained_model(options: TrainOptions) -> nn.Module | None:
    """The trained model a new run goes on from, or None where `--model` is a preset."""
    if options.model in PRESETS:
        return None
    try:
        return load_model(options.model).model
    except ModelError as e:
        raise UsageError(f"--model: {e} (a preset, or a trained model to go on training)") from None


def _starting_point(options: TrainOptions, trained: nn.Module | None, channels: int) -> tuple[ModelConfig, dict | None]:
    """The config of a new run and, when it goes on from a trained model, that model's weights.

    A preset starts from data-dependent init. A trained model (fine-tuning, or a warm restart of a
    run whose checkpoint is gone) keeps its architecture; `--set`/`--dropout` may change settings
    that leave the weights' shapes alone (dropout), and the data must have its channel count.
    """
    if "channels" in options.model_overrides:
        raise UsageError("--set channels: the data sets a model's channel count (a folder's: --channels)")
    if trained is not None and trained.config.channels != channels:
        raise UsageError(
            f"--model {options.model} codes {trained.config.channels}-channel images; the data has {channels} channels"
        )
    config = _overridden(preset_config(options.model, channels) if trained is None else trained.config,
                         options.model_overrides, options.model)
    if options.dropout is not None:
        config = _overridden(config, {"dropout": options.dropout}, options.model, "--dropout")
    if trained is None:
        return config, None
    weights = trained.state_dict()
    shapes = {k: tuple(v.shape) for k, v in build_from_config(config).state_dict().items()}
    if shapes != {k: tuple(v.shape) for k, v in weights.items()}:
        raise UsageError(f"--set {_as_option(options.model_overrides)} changes the shapes of {options.model}'s weights; "
                         "going on from a trained model keeps its architecture")
    return config, weights


def _overridden(config: ModelConfig, overrides: dict, model: str, option: str = "--set") -> ModelConfig:
    """`config` with `overrides` (--set's, or --dropout's) applied; an unknown setting or a value no
    network can be built with is a UsageError naming the option and the setting."""
    settings = [f.name for f in fields(config)]
    for key, value in overrides.items():
        named = f"{option} {key}" if option == "--set" else option
        if key not in settings:
            raise UsageError(f"{named}: {model} has no such setting (its settings: {', '.join(settings)})")
        try:
            replace(config, **{key: value})
        except ModelError as e:
            raise UsageError(f"{named}: {e}") from None
    return replace(config, **overrides)


def _saved_config(run_dir: Path, dropout: float | None) -> ModelConfig:
    """The config a run was trained with (what its checkpoint's weights fit), with a new dropout if
    one is given on resuming."""
    record = _saved_record(run_dir)  # which names the run where it cannot be read
    with _reading_checkpoint(run_dir):
        saved = config_from_dict(record["model"])
    return saved if dropout is None else _overridden(saved, {"dropout": dropout}, str(run_dir), "--dropout")


class StopRequest:
    """SIGINT/SIGTERM (Ctrl-C, a session ending) during training: finish the step, save, stop.

    The first signal sets `signal_name`; the loop then saves a checkpoint after the current step and
    returns, so the same command resumes with nothing lost. A second signal acts as usual (stops at
    once). Single-process runs only: under torchrun the ranks could see the signal at different
    steps and wait on each other forever, so there the default behaviour is kept.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.signal_name: str | None = None
        self._previous: dict = {}

    def _handle(self, number, frame) -> None:
        self.signal_name = signal.Signals(number).name
        for sig, handler in self._previous.items():  # the next one stops at once
            signal.signal(sig, handler)
        print(f"\n{self.signal_name}: stopping after this step and saving a checkpoint (again to stop now)",
              file=sys.stderr, flush=True)

    def __enter__(self) -> StopRequest:
        if self.enabled:
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _ignore_stop_signals(worker_id: int) -> None:
    """In data-loading workers: a Ctrl-C reaches the whole process group, and a worker that died of
    it would fail the batch the main process still fetches before it stops (workers end with it)."""
    for sig in StopRequest.SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


# options that must be more than 0, or (True) 0 or more: (option, TrainOptions attribute, 0 allowed)
_POSITIVE = [("--steps", "steps", False), ("--minutes", "minutes", False), ("--cpu-minutes", "cpu_minutes", False),
             ("--batch-size", "batch_size", False), ("--lr", "lr", True), ("--eval-every", "eval_every", True),
             ("--eval-images", "eval_images", False), ("--checkpoint-minutes", "checkpoint_minutes", True),
             ("--seed", "seed", True), ("--workers", "workers", True), ("--warmup-steps", "warmup_steps", True)]


def _check_options(options: TrainOptions) -> None:
    """Refuse values no run can use (a length of 0, an EMA decay of 1.5, a negative learning rate), a
    run with no length, or lr ramps that do not fit it, before anything is loaded or written."""
    for option, name, zero in _POSITIVE:
        value = getattr(options, name)
        if value is not None and not (value >= 0 if zero else value > 0):
            raise UsageError(f"{option} must be {'0 or more' if zero else 'more than 0'}, got {value}")
    if not 0 <= ema_decay(options) < 1:
        raise UsageError(f"--ema must be in [0, 1), got {options.ema_decay}")
    if options.steps is None and options.minutes is None and options.cpu_minutes is None:
        raise UsageError("say how long to train: --steps N, --minutes M or --cpu-minutes M")
    if options.cooldown_steps and options.steps is None:
        raise UsageError("--cooldown-steps counts back from --steps: give --steps too")
    if not 0 <= options.cooldown_steps <= (options.steps or 0):
        raise UsageError(f"--cooldown-steps must be between 0 and --steps ({options.steps}), got {options.cooldown_steps}")


@dataclass
class _Run:
    """What a run holds from its setup to its end; `progress` is what its checkpoints save of the loop."""

    options: TrainOptions
    rank: int
    world: int
    device: torch.device
    run_dir: Path
    train_set: object
    test_set: object | None  # rank 0 only: the other ranks do not evaluate
    model: nn.Module
    ema: nn.Module  # the parameters' moving average: what is evaluated, saved as the model file and shipped
    optimizer: ReferenceAdam
    forward: nn.Module  # `model` as trained: channels-last on CUDA, DDP under torchrun, compiled if asked
    autocast: object
    lr_decay: float
    progress: dict
    loader: DataLoader | None = None  # made at the first epoch (_epoch_batches), its workers kept for the next
    lock: object | None = None  # rank 0's hold on the run directory (_hold_run_dir), let go at the end

    def save(self) -> None:
        """Rank 0 writes a checkpoint holding every rank's RNG states: under torchrun every rank calls
        this. Never weights that are not finite numbers (a step that diverged after its loss was
        scored): a run could not resume from them (TrainingDiverged, on every rank alike)."""
        with torch.no_grad():
            finite = all(bool(torch.isfinite(p).all()) for p in (*self.model.parameters(), *self.ema.parameters()))
        if not finite:
            raise TrainingDiverged(f"the weights are not finite numbers after step {self.progress['step']} (a learning "
                                   "rate too high?); stopping without saving them")
        rng = distributed.gather_objects(_rng_state(self.device))
        if self.rank == 0:
            save_checkpoint(self.run_dir, self.model, self.ema, self.optimizer, self.progress, self.options,
                            self.device, rng)


@dataclass
class _Clock:
    """The run's wall and CPU time in total, across resumes: what --minutes and --cpu-minutes count."""

    started: float  # time.monotonic() at the start the run would have had if it never stopped
    cpu_started: float  # the same for time.process_time(), moved on by each evaluation's: only training counts
    last_saved: float

    @classmethod
    def resumed(cls, progress: dict) -> _Clock:
        now = time.monotonic()
        return cls(now - progress["elapsed_s"], time.process_time() - progress.get("cpu_s", 0.0), now)

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def cpu_s(self) -> float:
        return time.process_time() - self.cpu_started

    def stamp(self, progress: dict) -> None:
        """Into `progress`, for the checkpoint: a resumed run goes on counting from there."""
        progress["elapsed_s"], progress["cpu_s"] = self.elapsed_s(), self.cpu_s()


@dataclass
class _Window:
    """The training loss and images since the last log row: that row's train bits/dim and speed."""

    nats: float = 0.0
    dims: int = 0
    images: int = 0
    start: float = field(default_factory=time.monotonic)

    def add(self, nats: float, dims: int, images: int) -> None:
        self.nats, self.dims, self.images = self.nats + nats, self.dims + dims, self.images + images

    def bits_per_dim(self) -> float:
        return mixture.bits_per_dim(self.nats, self.dims)


def _datasets(options: TrainOptions, rank: int) -> tuple:
    """The train split, and the test split on rank 0 (the only one that evaluates), as much of it as
    the evaluations score (--eval-images)."""
    kwargs = dict(
        crop=options.crop, scales=options.scales, seed=options.seed, samples_per_epoch=options.samples_per_epoch,
        cache_dir=options.cache_dir, channels=options.channels, holdout=options.holdout,  # fixed data sets refuse these
    )
    train_set = load_split(options.dataset, options.data_dir, "train", **kwargs)
    test_set = load_split(options.dataset, options.data_dir, "test", limit=options.eval_images, **kwargs) \
        if rank == 0 else None
    check_context(options.context, train_set[0].shape)
    return train_set, test_set


def _init_weights(model, ema, start_weights: dict | None, train_set, options: TrainOptions, device) -> None:
    """A new run's weights: those of the trained model it goes on from, else data-dependent init on
    the first images (the reference's); the EMA starts from them."""
    if start_weights is not None:
        model.load_state_dict(start_weights)
    else:
        init_n = options.init_batch or options.batch_size
        init_batch = torch.stack([train_set[i] for i in range(init_n)]).to(device)
        data_dependent_init(model, mixture.to_unit(init_batch))
    ema.load_state_dict(model.state_dict())


@contextlib.contextmanager
def _fits_in_memory():
    """A model too large to build or initialise here (--set filters=99999999, say) is one line, not
    torch's allocator's traceback (a RuntimeError, torch.OutOfMemoryError on a GPU) or MemoryError."""
    try:
        yield
    except (MemoryError, RuntimeError) as error:
        text = (str(error).strip().splitlines() or [type(error).__name__])[0]
        if not isinstance(error, MemoryError) and "alloc" not in text.lower() and "out of memory" not in text.lower():
            raise
        raise UsageError(f"the model does not fit in memory here ({text[:160]}): smaller --set values or "
                         "--batch-size") from None


RUN_LOCK = ".training"  # the file a training holds locked in its run directory while it runs


def _hold_run_dir(run_dir: Path):
    """The open lock file of `run_dir` (RUN_LOCK), locked (flock) while this process trains there: a
    second training started in the same --out while one runs would interleave their log rows and
    save over each other's checkpoints, so it is refused. The operating system lets the lock go when
    the process ends, however it ends; the empty file stays. None where there is no flock (Windows)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover (Windows)
        return None
    handle = open(run_dir / RUN_LOCK, "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise UsageError(f"--out {run_dir}: another training is running there (it holds {run_dir / RUN_LOCK}); "
                         "wait for it to end, or give another --out") from None
    return handle


def _fresh_run_dir(run_dir: Path) -> bool:
    """Whether a new run may start in `run_dir` (a directory or nothing: check_directory): it is not
    there, empty, or holds only what a run killed before its first checkpoint left (its log.csv, by
    its header, its curve, and no checkpoint but the first one's unfinished save, checkpoints/last.tmp)."""
    if not run_dir.exists():
        return True
    left = {p.name for p in run_dir.iterdir()}
    if not left <= {"log.csv", "bpd_curve.png", "checkpoints", RUN_LOCK}:
        return False
    saved = run_dir / "checkpoints"
    if "checkpoints" in left and any(p.is_file() and saved / "last.tmp" not in p.parents for p in saved.rglob("*")):
        return False
    if "log.csv" in left:
        with open(run_dir / "log.csv", newline="") as f:
            return f.readline().strip() == ",".join(LOG_FIELDS)
    return True


def _start(options: TrainOptions) -> _Run:
    """The run to train: the interrupted one where OUT holds a checkpoint, else a new one.

    The model, the data and --set are checked before OUT is created: a refused run leaves nothing
    behind. A new run's OUT must be new, empty or what a run killed before its first checkpoint left
    (_fresh_run_dir): a run never writes over files it did not make.
    """
    run_dir = Path(options.out)
    check_directory(run_dir)
    resuming = has_checkpoint(run_dir)
    if not resuming and not _fresh_run_dir(run_dir):
        raise UsageError(f"--out {run_dir} is not empty and holds no checkpoint to resume: a new run needs a new or "
                         "empty directory (or the one a run was killed in before its first checkpoint)")
    rank, world, local_rank = distributed.start(options.device)
    device = distributed.device_for(options.device, local_rank)
    trained = None if resuming else _trained_model(options)
    if trained is not None and options.dataset == "folder" and options.channels is None:
        options = replace(options, channels=trained.config.channels)  # saved with the run, for resuming
    train_set, test_set = _datasets(options, rank)
    if len(train_set) < options.batch_size * world:
        raise UsageError(f"the training set has {len(train_set)} images, fewer than one global batch of "
                         f"{options.batch_size * world} (--batch-size {options.batch_size} on {world} process(es))")
    if resuming:
        config, start_weights = _saved_config(run_dir, options.dropout), None
    else:
        config, start_weights = _starting_point(options, trained, train_set.channels)
    reference = REFERENCE[config.to_dict()["architecture"]]
    lr_decay = options.lr_decay if options.lr_decay is not None else reference["lr_decay"]
    adam_eps = options.adam_eps if options.adam_eps is not None else reference["adam_eps"]

    torch.manual_seed(options.seed + rank)
    with _fits_in_memory():
        model = build_from_config(config).to(device)
        ema = build_from_config(config).to(device)
    optimizer = ReferenceAdam(model.parameters(), lr=options.lr, eps=adam_eps)
    if resuming:
        progress = load_checkpoint(run_dir, model, ema, optimizer, device, rank)
    else:
        with _fits_in_memory():
            _init_weights(model, ema, start_weights, train_set, options, device)
        progress = {"step": 0, "epoch": 0, "images_in_epoch": 0, "images": 0, "elapsed_s": 0.0, "cpu_s": 0.0,
                    "test_bpd": None}
    ema.eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    run_dir.mkdir(parents=True, exist_ok=True)  # once the model has taken the data (PixelCNN++: sides of 4k)
    lock = _hold_run_dir(run_dir) if rank == 0 else None

    net = model.to(memory_format=torch.channels_last) if device.type == "cuda" else model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    return _Run(
        options, rank, world, device, run_dir, train_set, test_set, model, ema, optimizer,
        forward=torch.compile(net) if options.compile else net, autocast=network_autocast(options.precision, device),
        lr_decay=lr_decay, progress=progress, lock=lock,
    )


def _epoch_batches(run: _Run, stop: StopRequest) -> DataLoader:
    """This rank's batches of the rest of the current epoch: a resumed run picks up mid-epoch. One
    loader serves every epoch, its workers kept (their decoded images with them: data/folder.py,
    RandomCrops); the epoch reaches them through the data set's shared memory (set_epoch) and the
    sampler, which the main process reads at each epoch's start."""
    options, progress, train_set = run.options, run.progress, run.train_set
    train_set.set_epoch(progress["epoch"])
    if run.loader is None:
        sampler = GlobalBatchSampler(len(train_set), options.batch_size, run.rank, run.world, options.seed, 0)
        run.loader = DataLoader(
            train_set, batch_sampler=sampler, num_workers=options.workers, collate_fn=torch.stack,
            pin_memory=run.device.type == "cuda", persistent_workers=options.workers > 0,
            generator=torch.Generator(),  # its own RNG: a loader started on resume must not shift dropout's
            worker_init_fn=_ignore_stop_signals if stop.enabled else None,
        )
    run.loader.batch_sampler.epoch = progress["epoch"]
    run.loader.batch_sampler.start = progress["images_in_epoch"]
    return run.loader


def _stop_workers(run: _Run) -> None:
    """End the data workers of a run that stops on an error. They ignore the signals that end a
    process's children at its exit (_ignore_stop_signals), and the error's traceback keeps their loader
    alive, so without this the command would print its error and never exit."""
    iterator = getattr(run.loader, "_iterator", None)  # persistent workers' iterator (torch's)
    if iterator is not None:
        iterator._shutdown_workers()


def _unwrapped(error: SnailError) -> SnailError:
    """A worker's error as torch re-raises it in the main process, its whole traceback in the message
    ("Caught DatasetError in DataLoader worker process 0. Original Traceback ..."), as its own one line."""
    text = str(error)
    if not text.startswith("Caught "):
        return error
    last = text.rstrip().splitlines()[-1]  # "snailcompress.errors.DatasetError: <the message>"
    return type(error)(last.partition(": ")[2] or last)


def _train_step(run: _Run, batch: torch.Tensor) -> tuple[float, int]:
    """One optimiser step and EMA update on this rank's share of a global batch; returns the batch's
    loss (nats) and how many dimensions it scored."""
    options, progress, device = run.options, run.progress, run.device
    x = mixture.to_unit(batch.to(device, non_blocking=True))
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    for group in run.optimizer.param_groups:
        group["lr"] = learning_rate(options, progress["step"], run.lr_decay)
    with run.autocast:
        params_out = run.forward(x)
    scored = scored_log_prob(x, params_out.float(), options.context)
    nats = -scored.sum()
    if not torch.isfinite(nats):
        raise TrainingDiverged(f"the loss is {nats.item()} at step {progress['step']} (a learning rate too high, or "
                               "a model with non-finite weights); stopping without saving it")
    run.optimizer.zero_grad(set_to_none=True)
    (nats * run.world).backward()  # DDP averages over ranks: this makes it the reference's sum
    run.optimizer.step()
    with torch.no_grad():
        torch._foreach_lerp_(list(run.ema.parameters()), list(run.model.parameters()), 1 - ema_decay(options))
    progress["step"] += 1
    progress["images_in_epoch"] += len(batch) * run.world
    progress["images"] += len(batch) * run.world
    return nats.item(), scored.numel() * x.shape[1]


def _finished(run: _Run, clock: _Clock, stop: StopRequest) -> bool:
    """A stop signal came, or one of the run's budgets (steps, minutes, CPU minutes) is spent. Under
    torchrun a rank whose clock ran out stops every rank at this step: one stopping alone would wait in
    _finish's barrier while the others waited in the next step's allreduce."""
    options = run.options
    if stop.signal_name is not None:
        return True
    if options.steps is not None and run.progress["step"] >= options.steps:
        return True
    if options.cpu_minutes is None and options.minutes is None:
        return False
    spent = (options.cpu_minutes is not None and clock.cpu_s() >= options.cpu_minutes * 60
             or options.minutes is not None and clock.elapsed_s() >= options.minutes * 60)
    return distributed.any_rank(spent)


def _evaluate(run: _Run, clock: _Clock, stop: StopRequest | None = None) -> float | None:
    """Test bits/dim of the EMA weights (rank 0 only), and how many test images it took
    (progress["test_images"]); its CPU time does not count against --cpu-minutes. None too where
    `stop` came (a signal) before it ended."""
    if run.rank != 0:
        return None
    cpu_before = time.process_time()
    try:
        result = evaluate(run.ema, run.test_set, batch_size=max(run.options.batch_size, 16),
                          limit=run.options.eval_images, progress=False, context=run.options.context,
                          stop=None if stop is None else (lambda: stop.signal_name is not None))
    except EvaluationStopped:
        return None
    finally:
        clock.cpu_started += time.process_time() - cpu_before
    run.progress["test_images"] = result.images
    return result.bits_per_dim


def _log_row(run: _Run, elapsed_s: float, cpu_s: float, test_bpd: float | None, **window) -> dict:
    """A row of log.csv at the current step; `window` adds the train bits/dim and speed."""
    progress = run.progress
    return {
        "step": progress["step"], "epoch": progress["epoch"], "images": progress["images"],
        "elapsed_s": f"{elapsed_s:.1f}", "cpu_s": f"{cpu_s:.1f}", "lr": f"{run.optimizer.param_groups[0]['lr']:.6g}",
        "test_bpd": f"{test_bpd:.5f}" if test_bpd is not None else "", **window,
    }


def _window_fields(window: _Window) -> dict:
    """A log row's train bits/dim (the global batch's: every rank takes part) and speed over `window`;
    none for a window without steps."""
    nats, dims = distributed.sum_over_ranks(window.nats, window.dims)
    if not dims:
        return {}
    return {"train_bpd": f"{mixture.bits_per_dim(nats, dims):.5f}",
            "images_per_s": f"{window.images / max(time.monotonic() - window.start, 1e-9):.1f}"}


def _periodic(run: _Run, clock: _Clock, window: _Window, log: CsvLog | None) -> _Window:
    """After a step: evaluate every eval_every steps, log every log_every steps and after each
    evaluation, save every checkpoint_minutes. Returns the loss window, a fresh one after a log row.
    Under torchrun every rank takes part in the log row (its train bits/dim is the global batch's)
    and the save (every rank's RNG states), at the same steps."""
    options, progress = run.options, run.progress
    test_bpd = None
    evaluated = options.eval_every and progress["step"] % options.eval_every == 0
    if evaluated:
        test_bpd = progress["test_bpd"] = _evaluate(run, clock)
        progress["evaluated_step"] = progress["step"]
    if progress["step"] % options.log_every == 0 or evaluated:
        since_last_row = _window_fields(window)
        if run.rank == 0:
            log.append(_log_row(run, time.monotonic() - clock.started, clock.cpu_s(), test_bpd, **since_last_row))
        window = _Window()
    if distributed.any_rank(time.monotonic() - clock.last_saved >= options.checkpoint_minutes * 60):
        clock.stamp(progress)
        run.save()
        clock.last_saved = time.monotonic()
    return window


def _finish(run: _Run, clock: _Clock, log: CsvLog | None, stop: StopRequest, window: _Window, trained: bool) -> None:
    """The last evaluation (unless its step was evaluated already: a finished run run again) and log
    row (with the train bits/dim of the steps since the last one, if any: the last step's periodic
    row and evaluation are left to this, so that its step has one row), the checkpoint (where this
    call trained or evaluated: a finished run run again changes nothing) and the curve. A run stopped
    by a signal, before or during that evaluation, logs and saves without it: its resumed run
    evaluates at its end."""
    progress = run.progress
    clock.stamp(progress)
    since_last_row = _window_fields(window)
    evaluate = stop.signal_name is None and progress.get("evaluated_step") != progress["step"]
    saved = evaluate and trained
    if saved:
        run.save()  # the steps are kept whatever comes during the evaluation (a signal, a failure)
    if evaluate:
        test_bpd = _evaluate(run, clock, stop)
        evaluate = run.rank != 0 or test_bpd is not None  # None on rank 0: a signal stopped it (ranks > 0 have none)
        if evaluate:
            progress["test_bpd"], progress["evaluated_step"] = test_bpd, progress["step"]
    if run.rank == 0 and (evaluate or since_last_row):
        log.append(_log_row(run, progress["elapsed_s"], progress["cpu_s"], progress["test_bpd"] if evaluate else None,
                            **since_last_row))
    if evaluate or (trained and not saved):  # not twice where the stopped evaluation changed nothing
        run.save()
    if (trained or evaluate) and run.rank == 0:
        from .figures import plot_training_curve

        plot_training_curve(run.run_dir / "log.csv", run.run_dir / "bpd_curve.png",
                            title=f"{run.run_dir}: {run.options.model} on {run.options.dataset}")
    if run.world > 1:
        dist.barrier()


def train(options: TrainOptions, progress_bar: bool = True) -> dict:
    """Train (or resume, if OUT holds a checkpoint) and return the final progress record.

    Its "stopped_by" is the name of the signal that stopped the run early (StopRequest), else None;
    "steps_trained" counts this call's steps (0: a resumed run whose budget was already spent).
    """
    _check_options(options)
    run = _start(options)
    try:
        return _train_loop(run, progress_bar)
    finally:
        if run.lock is not None:
            run.lock.close()


def _train_loop(run: _Run, progress_bar: bool) -> dict:
    """train's loop, from the run's start (or resumption) to its last checkpoint."""
    progress = run.progress
    log = CsvLog(run.run_dir / "log.csv", progress["step"]) if run.rank == 0 else None
    bar = terminal_bar(
        total=run.options.steps, initial=progress["step"] if run.options.steps else 0, desc="train", unit="step",
        enabled=progress_bar and run.rank == 0, dynamic_ncols=True,
    )
    clock, window, first_step = _Clock.resumed(progress), _Window(), progress["step"]
    stop = StopRequest(enabled=run.world == 1)
    run.model.train()
    with stop:
        try:
            while not _finished(run, clock, stop):
                for batch in _epoch_batches(run, stop):
                    nats, dims = _train_step(run, batch)
                    window.add(nats, dims, images=len(batch) * run.world)
                    bar.update(1)
                    if progress["step"] % 10 == 0:
                        bar.set_postfix(bpd=f"{window.bits_per_dim():.3f}")
                    if _finished(run, clock, stop):  # the last step: _finish evaluates, logs and saves it, once
                        break
                    window = _periodic(run, clock, window, log)
                else:  # the epoch is done: the next one, in its own order
                    progress["epoch"] += 1
                    progress["images_in_epoch"] = 0
        except SnailError as error:  # a damaged image met by a data worker, say
            _stop_workers(run)
            raise _unwrapped(error) from None
        bar.close()
        _finish(run, clock, log, stop, window, trained=progress["step"] > first_step)  # a signal still saves
    return {**progress, "stopped_by": stop.signal_name, "steps_trained": progress["step"] - first_step}


BUDGETS = ("steps", "minutes", "cpu_minutes")
# What a run is: resuming may retrain on other crops (--crop, --scales) but not change these.
KEPT_ON_RESUME = {
    "model": "--model", "dataset": "--dataset", "model_overrides": "--set", "holdout": "--holdout", "channels": "--channels",
    "seed": "--seed", "context": "--context",  # the data order, and what the loss and the test score count
}


#: how a kept option's typed and saved values compare: the held-out names in any order, and a folder's
#: --channels left out as its default, 3
_ALIKE_ON_RESUME = {"holdout": lambda names: frozenset(names or ()), "channels": lambda count: 3 if count is None else count}


def train_options(out: str, **typed) -> tuple[TrainOptions, bool]:
    """The options of `train --out OUT` from what was typed (None: not typed), and whether they resume.

    Where OUT holds a checkpoint the same command, or a shorter one, goes on with the run's saved
    options (resume_options); a new run needs a model and a data set, the rest has defaults.
    """
    typed = {k: v for k, v in typed.items() if v is not None}
    if has_checkpoint(Path(out)):
        return resume_options(out, out=out, **typed), True
    if not typed.get("model") or not typed.get("dataset"):
        raise UsageError("a new run needs --model and --dataset")
    return TrainOptions(out=out, **typed), False


def resume_options(run_dir: str, **changes) -> TrainOptions:
    """Options of an existing run, with `changes` (e.g. a longer --steps) applied.

    A new budget replaces the saved one whole: a run saved with --minutes 21 and resumed with
    --steps 30000 trains to step 30000, instead of stopping at once on its spent 21 minutes.
    The model, data set and test split (KEPT_ON_RESUME) cannot change: UsageError if `changes`
    gives them other values, rather than silently training something else.
    """
    saved = saved_options(Path(run_dir))
    if saved is None:
        raise UsageError(f"{run_dir} holds no checkpoint to resume")
    changes = {k: v for k, v in changes.items() if v is not None}
    for key, option in KEPT_ON_RESUME.items():
        same = _ALIKE_ON_RESUME.get(key, lambda value: value)
        if key in changes and same(changes[key]) != same(getattr(saved, key)):
            raise UsageError(
                f"{run_dir} was started with {option} {_as_option(getattr(saved, key))}; a resumed run keeps it "
                f"(got {_as_option(changes[key])}): start a new --out to change it"
            )
    if any(k in changes for k in BUDGETS):
        saved = replace(saved, **{k: None for k in BUDGETS})
    return replace(saved, **changes)


def _as_option(value) -> str:
    """A saved option value as it would be typed: 'a,b' for tuples, k=v for --set."""
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items()) or "(none)"
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value)) or "(none)"
    return "(none)" if value is None else str(value)
