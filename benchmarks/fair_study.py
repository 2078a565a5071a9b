"""A fair study on Fashion-MNIST: PixelSNAIL against PixelCNN++ at matched parameter counts, with equal
CPU time, at several budgets (issue 37).

Each model is one training run on one thread (`train.TrainOptions.cpu_minutes`: this process's CPU
time, cumulative across resumes, evaluation excluded), with the reference's training settings: data-
dependent init, ReferenceAdam (beta1 0.95, beta2 0.9995, epsilon inside the square root: 1e-6
PixelSNAIL, 1e-8 PixelCNN++), lr 1e-3 decayed every step by the architecture's factor (0.999998,
0.999995) with no warm-up or cool-down (so the schedule does not depend on the budget), EMA 0.9995, the
loss the batch's total nats. The budgets are points of that one run: the run stops at the first
budget, its checkpoint is evaluated, then it resumes to the next. Budgets go in order, the models one
after the other in each (both reach 20 CPU-minutes before either goes on to 80).

At each budget the checkpoint is evaluated on the whole test split (10,000 images): the EMA weights
(the reference's evaluation) and the last weights (the EMA of 0.9995 averages over about 2,000 steps
and starts at the initial weights, so after few steps it still holds much of them). The numbers go to
RUNS/study.json, then results/fair-study/README.md and curve.png are rewritten from it.

Or side by side, on a machine with a core for each: `--only MODEL` trains one model's run through
every budget, and two such processes share the study (study.json changes under a lock). Budgets are
each process's own CPU time, so this changes no result, only the wall-clock time.

Resumable: run the same command again. A run with a checkpoint goes on from it, a budget already
evaluated is not redone, a stop by SIGTERM or Ctrl-C during training saves a checkpoint first.

    nohup nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fair_study.py >> /tmp/fair_study.log 2>&1 &
    # or, side by side:
    for m in pixelsnail-fmnist pixelcnnpp-fmnist; do nohup nice -n 19 env OMP_NUM_THREADS=1 \
        .venv/bin/python benchmarks/fair_study.py --only $m >> /tmp/fair_study-$m.log 2>&1 & done
    python benchmarks/fair_study.py --report-only     # rewrite the README and plot from RUNS/study.json
"""

from __future__ import annotations

import argparse
import copy
import csv
import fcntl
import json
import math
import signal
import sys
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import load_file

from snailcompress.bench.harness import machine_facts
from snailcompress.bench.scripts import publish, run
from snailcompress.data import load_split
from snailcompress.errors import UsageError
from snailcompress.evaluate import evaluate
from snailcompress.fileio import atomic_write
from snailcompress.models.layers import count_flops, count_parameters
from snailcompress.models.presets import PRESETS, build
from snailcompress.train import TrainOptions, has_checkpoint, resume_options, train
from snailcompress.zoo import last_checkpoint, load_model

ROOT = Path(__file__).resolve().parents[1]
MODELS = "pixelsnail-fmnist,pixelcnnpp-fmnist"
BUDGETS = "20,80,320,640"
IMAGE_SHAPE = (1, 28, 28)  # Fashion-MNIST's
EVAL_BATCH = 16  # the fastest on one thread for PixelSNAIL's attention (8-16: 31 images/s; 64: 21)


def now() -> str:
    return f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"


def shown(path: Path) -> str:
    """A path as the report names it: from the repository root when it is inside the checkout."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


class Study:
    """RUNS/study.json: the settings (a rerun must match them), one row per evaluated (model, budget),
    and the CPU seconds each run trained on each CPU model (sessions get different CPUs). Several
    processes may share it (`--only`, one model each): every change reads the file again and writes it
    back under a lock (RUNS/study.lock), so none overwrites another's rows or CPU time."""

    def __init__(self, runs: Path, settings: dict):
        self.path, self.settings = runs / "study.json", settings
        self.data = self._read()

    @contextmanager
    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> dict:
        if not self.path.exists():
            return {"settings": self.settings, "rows": [], "machines": {}, "commands": []}
        saved = json.loads(self.path.read_text())
        if saved["settings"] != self.settings:
            changed = ", ".join(k for k in self.settings.keys() | saved["settings"].keys()
                                if self.settings.get(k) != saved["settings"].get(k))
            raise UsageError(f"{self.path} was made with other settings ({changed}); give another --runs to start a new study")
        return saved

    @contextmanager
    def held(self):
        """The study as it is on disk, held still (under the lock) while it is read: for the report."""
        with self._locked():
            self.data = self._read()
            yield self

    @contextmanager
    def _change(self):
        """The study as it is now on disk, to change and write back, under the lock."""
        with self.held():
            yield self.data
            atomic_write(self.path, (json.dumps(self.data, indent=1) + "\n").encode(), overwrite=True)

    def refresh(self) -> Study:
        """Read what other processes have written since."""
        with self.held():
            return self

    def row(self, model: str, budget: float) -> dict | None:
        return next((r for r in self.refresh().data["rows"] if r["model"] == model and r["budget_cpu_minutes"] == budget), None)

    def add_row(self, row: dict) -> None:
        with self._change() as data:
            data["rows"].append(row)

    def credit(self, model: str, cpu: str, seconds: float) -> None:
        with self._change() as data:
            tally = data["machines"].setdefault(model, {})
            tally[cpu] = tally.get(cpu, 0.0) + seconds

    def note_command(self, command: str) -> None:
        with self._change() as data:
            if command not in data["commands"]:
                data["commands"].append(command)


def saved_progress(run_dir: Path) -> dict | None:
    """The progress record (step, images, cpu_s, ...) of a run's last checkpoint, None without one."""
    path = last_checkpoint(run_dir) / "config.json"
    return json.loads(path.read_text())["progress"] if has_checkpoint(run_dir) and path.is_file() else None


class Monitor:
    """Prints the newest row of the training run's log.csv every `seconds`: the log shows progress."""

    def __init__(self, seconds: float):
        self.seconds, self.label, self.log = seconds, "", None
        self.stop = threading.Event()
        threading.Thread(target=self._loop, daemon=True).start()

    def watch(self, label: str, log: Path | None) -> None:
        self.label, self.log = label, log

    def _loop(self) -> None:
        while not self.stop.wait(self.seconds):
            if self.log is None or not self.log.exists():
                continue
            try:
                with self.log.open() as f:
                    r = list(csv.DictReader(f))[-1]
                print(f"{now()} {self.label}: step {r['step']}, {int(r['images']):,} images, "
                      f"{float(r['cpu_s']) / 60:.1f} CPU-minutes, train {r['train_bpd'] or '-'} "
                      f"test(part) {r['test_bpd'] or '-'} bits/dim, {r['images_per_s']} images/s", flush=True)
            except (OSError, IndexError, KeyError, TypeError, ValueError):  # no row yet, or one half written
                pass


def train_to(model: str, budget: float, run_dir: Path, args, study: Study, monitor: Monitor) -> dict:
    """Train `model`'s run until `budget` CPU-minutes in all; its progress record."""
    if has_checkpoint(run_dir):
        options = resume_options(str(run_dir), out=str(run_dir), data_dir=args.data_dir, cpu_minutes=budget)
    else:
        options = TrainOptions(
            model=model, dataset="fashion-mnist", data_dir=args.data_dir, out=str(run_dir), batch_size=args.batch_size,
            ema_decay=args.ema, cpu_minutes=budget, eval_every=args.eval_every, eval_images=args.eval_images,
            checkpoint_minutes=args.checkpoint_minutes, seed=args.seed, workers=0, device="cpu", precision="fp32",
        )
    before = saved_progress(run_dir)
    cpu_before = before["cpu_s"] if before else 0.0
    recorded = sum(study.refresh().data["machines"].get(model, {}).values())
    if cpu_before > recorded + 1:  # trained by a run killed outright (SIGKILL) after a checkpoint
        study.credit(model, "not recorded (a run killed after a checkpoint)", cpu_before - recorded)
    print(f"{now()} {model}: training to {budget:g} CPU-minutes"
          + (f" from {cpu_before / 60:.1f} (step {before['step']})" if before else " from the start"), flush=True)
    monitor.watch(f"{model} -> {budget:g} CPU-min", run_dir / "log.csv")
    progress = train(options, progress_bar=False)
    monitor.watch("", None)
    study.credit(model, machine_facts()["cpu"], progress["cpu_s"] - cpu_before)
    return progress


def evaluate_checkpoint(run_dir: Path, test_set) -> dict:
    """Test bits/dim of the run's last checkpoint on the whole split: EMA weights and last weights."""
    ema = load_model(run_dir).model
    last = copy.deepcopy(ema)
    last.load_state_dict(load_file(str(last_checkpoint(run_dir) / "weights.safetensors")))
    result = {}
    for name, model in (("ema", ema), ("last", last)):
        started = time.process_time()
        evaluation = evaluate(model, test_set, batch_size=EVAL_BATCH, progress=False)
        result[f"{name}_bpd"] = evaluation.bits_per_dim
        result["test_images"] = evaluation.images
        result[f"{name}_eval_cpu_s"] = round(time.process_time() - started, 1)
    return result


# ---------------------------------------------------------------------------------------------
# The report


def short(model: str) -> str:
    return "PixelSNAIL" if model.startswith("pixelsnail") else "PixelCNN++" if model.startswith("pixelcnnpp") else model


def plot(study: Study, runs: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from snailcompress.fileio import atomic_path

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3), dpi=120, sharey=True)
    colours = {}
    for model in study.data["settings"]["models"]:
        rows = sorted((r for r in study.data["rows"] if r["model"] == model), key=lambda r: r["budget_cpu_minutes"])
        log = runs / model / "log.csv"
        curve = []
        if log.exists():
            with log.open() as f:
                curve = [r for r in csv.DictReader(f) if r["test_bpd"]]
        for ax, key, log_key, scale in ((axes[0], "cpu_minutes", "cpu_s", 60.0), (axes[1], "images", "images", 1.0)):
            line = ax.plot([r[key] for r in rows], [r["ema_bpd"] for r in rows], "o-", lw=2, color=colours.get(model),
                           label=f"{short(model)} ({model}, {rows[0]['parameters']:,} params), EMA" if rows else model)
            colours[model] = line[0].get_color()
            ax.plot([r[key] for r in rows], [r["last_bpd"] for r in rows], "s--", mfc="none", color=colours[model],
                    label=f"{short(model)}, last weights")
            if curve:
                ax.plot([float(r[log_key]) / scale for r in curve], [float(r["test_bpd"]) for r in curve], "-", lw=0.8,
                        alpha=0.35, color=colours[model], label=f"{short(model)}, EMA during training (first test images)")
    for ax, label in ((axes[0], "training CPU-minutes (one thread)"), (axes[1], "training images seen")):
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3, which="both")
    evaluated = [r[key] for r in study.data["rows"] for key in ("ema_bpd", "last_bpd")]
    if evaluated:  # the evaluated points fill the height; the early training curves run off the top
        low, high = min(evaluated), max(evaluated)
        axes[0].set_ylim(low - 0.1 * (high - low) - 0.02, high + 0.1 * (high - low) + 0.02)
    tested = {r["test_images"] for r in study.data["rows"]}
    axes[0].set_ylabel(f"test bits/dim ({', '.join(f'{n:,}' for n in sorted(tested))} images)")
    axes[1].legend(fontsize=7, loc="upper right")
    fig.suptitle("Fashion-MNIST: PixelSNAIL vs PixelCNN++, matched parameters, equal CPU time")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def minutes(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:.2g}"


def gap_words(a: dict, b: dict, key: str) -> str:
    """Which of two rows (the same budget) has the lower bits/dim under `key`, and by how much."""
    win, lose = (a, b) if a[key] <= b[key] else (b, a)
    d = lose[key] - win[key]
    return f"{short(win['model'])} by {d:.3f} bits/dim ({100 * d / lose[key]:.1f}%)"


def trend_lines(by_budget: dict, models: list[str]) -> list[str]:
    """Facts about the trend: the gap at each budget, each model's gain per doubling of compute between
    the last two budgets, and where straight lines through those would cross (a naive extrapolation)."""
    done = [b for b in sorted(by_budget) if len(by_budget[b]) == len(models)]
    if len(models) != 2 or len(done) < 2:
        return ["The trend needs two budgets of both models."]
    first, second = models
    gaps = [by_budget[b][first]["ema_bpd"] - by_budget[b][second]["ema_bpd"] for b in done]
    lines = [
        f"- Gap {short(first)} minus {short(second)} (EMA, bits/dim): "
        + ", ".join(f"{g:+.3f} at {b:g}" for g, b in zip(gaps, done)) + " CPU-minutes: "
        + ("narrowing" if abs(gaps[-1]) < abs(gaps[-2]) else "widening")
        + (", and it changed sign" if gaps[-1] * gaps[-2] < 0 else "") + " over the last step."
    ]
    lo, hi = done[-2], done[-1]
    doublings = math.log2(hi / lo)
    slopes = {m: (by_budget[hi][m]["ema_bpd"] - by_budget[lo][m]["ema_bpd"]) / doublings for m in models}
    lines.append("- Gain per doubling of CPU time between {:g} and {:g} CPU-minutes: ".format(lo, hi)
                 + ", ".join(f"{short(m)} {-slopes[m]:.3f} bits/dim" for m in models) + ".")
    lines += per_image_lines(by_budget, models, hi)
    if slopes[first] != slopes[second]:
        k = -gaps[-1] / (slopes[first] - slopes[second])  # doublings past `hi` where the lines meet
        if k > 30:  # nearly equal gains: the lines meet past any budget (2 ** k may not even be a float)
            lines.append("- If both kept those gains per doubling, they would meet only past 2**30 times the last "
                         "budget: the gains per doubling are nearly equal.")
        elif k > 0:
            lines.append(f"- If both kept those gains per doubling (a naive straight line in log compute, not a "
                         f"prediction: gains usually shrink), they would meet at about {minutes(hi * 2 ** k)} CPU-minutes.")
        else:
            lines.append("- Straight lines through the last two budgets do not meet at larger budgets: the model "
                         "ahead is also gaining faster.")
    return lines


def per_image_lines(by_budget: dict, models: list[str], budget: float) -> list[str]:
    """At `budget`, the model that saw fewer images against the other at the same count of images seen
    (interpolated linearly in log images between the other's budgets), with both weights."""
    fewer = min(by_budget[budget].values(), key=lambda r: r["images"])
    other = [by_budget[b][m] for b in sorted(by_budget) for m in models if m != fewer["model"] and m in by_budget[b]]
    for a, b in zip(other, other[1:]):
        if a["images"] <= fewer["images"] <= b["images"] and a["images"] < b["images"]:
            t = math.log(fewer["images"] / a["images"]) / math.log(b["images"] / a["images"])
            said = []
            for key, name in (("ema_bpd", "EMA"), ("last_bpd", "last weights")):
                bpd = a[key] + t * (b[key] - a[key])
                better = short(fewer["model"]) if fewer[key] < bpd else short(a["model"])
                said.append(f"{name}: {short(fewer['model'])} {fewer[key]:.4f}, {short(a['model'])} about {bpd:.4f} "
                            f"({better} ahead)")
            return [f"- Per image seen, at {fewer['images']:,} images ({short(fewer['model'])}'s count at {budget:g} "
                    f"CPU-minutes; the other interpolated between its budgets in log images): " + "; ".join(said) + "."]
    return []


def work_lines(models: list[str], rows: list[dict]) -> list[str]:
    """What a training step on one image costs each model, counted, and the images per CPU-second each
    trained at: why equal compute is not an equal number of images."""
    flops = {m: count_flops(build(m, channels=1), torch.zeros(1, *IMAGE_SHAPE)) for m in models}
    latest = {r["model"]: r for r in sorted(rows, key=lambda r: r["budget_cpu_minutes"])}
    costs = " and ".join(f"{short(m)} {flops[m] / 1e9:.2f} GFLOP" for m in models)
    costlier = max(flops, key=flops.get)
    line = (f"**Work per image.** A training step on one {IMAGE_SHAPE[1]}x{IMAGE_SHAPE[2]} image costs {costs} "
            "(forward and backward; matrix products and convolutions, as torch's FlopCounterMode counts them: "
            f"`models.layers.count_flops`), {max(flops.values()) / min(flops.values()):.2f} times as much for "
            f"{short(costlier)}.")
    if short(costlier) == "PixelSNAIL" and {short(m) for m in models} == {"PixelSNAIL", "PixelCNN++"}:
        line += (" PixelSNAIL runs every layer at full resolution and attends over all earlier positions (work "
                 "that grows with their square), where PixelCNN++ runs most of its resnets on its downsampled "
                 "streams (a quarter and a sixteenth of the positions); so equal CPU time buys PixelCNN++ more "
                 "images.")
    rates = [(m, latest[m]["images"] / (60 * latest[m]["cpu_minutes"])) for m in models if m in latest]
    if rates:
        line += " Averaged over each run's training CPU time (the CPUs above): " + ", ".join(
            f"{short(m)} {rate:.1f} images per CPU-second ({rate * flops[m] / 1e9:.1f} GFLOP/s)" for m, rate in rates) + "."
    return [line, ""]


def report(study: Study, runs: Path, out: Path, budgets: list[float]) -> None:
    settings, rows = study.data["settings"], study.data["rows"]
    models = settings["models"]
    counts = {m: count_parameters(build(m, channels=1)) for m in models}
    train_images = rows[0]["train_images"] if rows else 0
    by_budget: dict[float, dict[str, dict]] = {}
    for r in rows:
        by_budget.setdefault(r["budget_cpu_minutes"], {})[r["model"]] = r
    missing = [(m, b) for b in budgets for m in models if b not in by_budget or m not in by_budget[b]]
    commands = "\n".join(f"    {c}" for c in study.data["commands"])
    machines = "; ".join(
        f"{m}: " + ", ".join(f"{cpu} {s / 60:.1f} CPU-min" for cpu, s in tally.items())
        for m, tally in study.data["machines"].items()
    )
    lines = [
        "# Fair study on Fashion-MNIST: PixelSNAIL against PixelCNN++, matched size, equal CPU time",
        "",
    ]
    if missing:
        lines += [
            f"**In progress**: {len(missing)} of {len(budgets) * len(models)} (model, budget) points still to train and "
            f"evaluate ({', '.join(f'{m} at {b:g}' for m, b in missing)}). Rerunning the command below goes on "
            "where it stopped; the table and the plot are rewritten after every evaluated budget.",
            "",
        ]
    lines += [
        "Made by (run from the repository root; the same command resumes):",
        "",
        commands,
        "",
        f"Runs, checkpoints and the per-budget numbers: `{shown(runs)}/` "
        "(`study.json`). Training CPU time by CPU model: " + (machines or "none yet") + ". Threads: 1 (torch and OMP).",
        "",
        f"**Setup.** Both models train on {f'the {train_images:,} training images' if rows else 'the training split'} "
        "and are tested on the whole test split. "
        f"Each is one run, on one thread, stopped by its own CPU time (`train --cpu-minutes`, cumulative over "
        "resumes; evaluation excluded) at each budget in turn, evaluated, and resumed: the budgets are points of "
        "one run, not separate runs, and the learning rate does not depend on the budget. Training settings are "
        "the reference's (section 5 of `shared/docs/pixelsnail-reference.md`, beside the checkout): data-dependent init, Adam "
        "with beta1 0.95, beta2 0.9995 and epsilon inside the square root (1e-6 PixelSNAIL, 1e-8 PixelCNN++), "
        "lr 1e-3 multiplied every step by 0.999998 (PixelSNAIL) or 0.999995 (PixelCNN++), no warm-up or "
        f"cool-down, EMA {settings['ema']}, the loss the batch's total nats, batch {settings['batch_size']} for "
        "both (PixelSNAIL's per-GPU batch; PixelCNN++'s reference has 16 per GPU: the same batch for both keeps "
        f"images per step, and so the EMA's horizon in images, equal), init batch {settings['batch_size']}, "
        f"seed {settings['seed']}, dropout 0 (the presets'; with a few epochs there is nothing to regularise). "
        f"Presets {' and '.join(f'`{m}` ({n:,} parameters)' for m, n in counts.items())}: "
        f"the smaller has {100 * (1 - min(counts.values()) / max(counts.values())):.1f}% fewer "
        "(how they were matched: `snailcompress/models/presets.py`).",
        "",
        *work_lines(models, rows),
        "**Two evaluations.** `EMA` is the reference's (Polyak-averaged weights, decay 0.9995). The average "
        "starts at the initial weights and forgets them by 0.9995 per step, so at the small budgets it still "
        "holds a share of them (`EMA init share` = 0.9995^steps) and can be worse than the weights it averages; "
        "`last` is the raw weights at the same step. Both on all test images, dropout off.",
        "",
        "| model | parameters | budget (CPU-min) | trained (CPU-min) | steps | images seen (epochs) | EMA init share "
        "| test bits/dim, EMA | test bits/dim, last weights | test images |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for b in sorted(by_budget):
        for m in models:
            r = by_budget[b].get(m)
            if r is None:
                continue
            best = lambda key: min(x[key] for x in by_budget[b].values()) == r[key] and len(by_budget[b]) > 1  # noqa: E731
            fmt = lambda key: f"**{r[key]:.4f}**" if best(key) else f"{r[key]:.4f}"  # noqa: E731
            lines.append(
                f"| {m} | {r['parameters']:,} | {b:g} | {r['cpu_minutes']:.2f} | {r['steps']:,} | {r['images']:,} "
                f"({r['epochs']:.2f}) | {settings['ema'] ** r['steps']:.2f} | {fmt('ema_bpd')} | {fmt('last_bpd')} "
                f"| {r['test_images']:,} |"
            )
    lines += ["", "Bold: the better of the two at that budget. Plot: `curve.png` (bits/dim against CPU-minutes and "
              "against images seen; the faint lines are the EMA weights on the first "
              f"{settings['eval_images']} test images during training).", "", "## Which wins", ""]
    for b in sorted(by_budget):
        pair = [by_budget[b][m] for m in models if m in by_budget[b]]  # in the table's order
        if len(pair) == 2:
            lines.append(f"- **{b:g} CPU-minutes**: {gap_words(*pair, 'ema_bpd')} with the EMA weights; "
                         f"{gap_words(*pair, 'last_bpd')} with the last weights. Images seen: "
                         + ", ".join(f"{short(x['model'])} {x['images']:,}" for x in pair) + ".")
    lines += ["", "## Trend", ""] + trend_lines(by_budget, models)
    publish(lines, out / "README.md")
    if rows:  # nothing to plot before the first evaluated budget
        plot(study, runs, out / "curve.png")


# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=MODELS, help="comma-separated presets, trained in this order [%(default)s]")
    parser.add_argument("--budgets", default=BUDGETS, help="cumulative CPU-minutes per model, comma-separated [%(default)s]")
    parser.add_argument("--runs", type=Path, default=ROOT / "benchmarks/checkpoints/fair-study", help="run directories and study.json")
    parser.add_argument("--out", type=Path, default=ROOT / "results/fair-study", help="README.md and curve.png")
    parser.add_argument("--data-dir", default=None, help="Fashion-MNIST's IDX files [the system copy]")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--ema", type=float, default=0.9995)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=1000, help="steps between the runs' own quick test evaluations")
    parser.add_argument("--eval-images", type=int, default=500, help="test images of those quick evaluations")
    parser.add_argument("--checkpoint-minutes", type=float, default=5.0)
    parser.add_argument("--monitor-seconds", type=float, default=120.0, help="seconds between progress lines")
    parser.add_argument("--only", default=None, help="train only this one of --models (another process, on another "
                        "core, may train the other: see the module's docstring)")
    parser.add_argument("--report-only", action="store_true", help="rewrite README.md and curve.png from study.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    models = args.models.split(",")
    budgets = sorted(float(b) for b in args.budgets.split(","))
    unknown = [m for m in models if m not in PRESETS]
    if unknown:
        raise UsageError(f"unknown preset(s) {', '.join(unknown)}; known: {', '.join(PRESETS)}")
    if args.only is not None and args.only not in models:
        raise UsageError(f"--only {args.only}: not one of the study's models ({', '.join(models)})")
    trained = [m for m in models if args.only in (None, m)]
    settings = {
        "models": models, "batch_size": args.batch_size, "ema": args.ema, "seed": args.seed, "data_dir": args.data_dir,
        "eval_every": args.eval_every, "eval_images": args.eval_images,
    }
    study = Study(args.runs, settings)
    if args.report_only:
        report(study, args.runs, args.out, budgets)
        return
    study.note_command(
        "nohup nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fair_study.py " + " ".join(
            f"--{k} {v}" for k, v in [("models", args.models), ("budgets", args.budgets), ("runs", shown(args.runs)),
                                      ("out", shown(args.out)), ("data-dir", args.data_dir), ("only", args.only)]
            if v is not None)
        + f" >> /tmp/fair_study{'-' + args.only if args.only else ''}.log 2>&1 &"
    )
    parameters = {m: count_parameters(build(m, channels=1)) for m in models}
    test_set = load_split("fashion-mnist", args.data_dir, "test")
    train_images = len(load_split("fashion-mnist", args.data_dir, "train"))
    print(f"{now()} fair study: {', '.join(f'{m} {n:,} parameters' for m, n in parameters.items())}; "
          f"budgets {', '.join(f'{b:g}' for b in budgets)} CPU-minutes; {machine_facts()['cpu']}", flush=True)
    monitor = Monitor(args.monitor_seconds)
    for budget in budgets:
        for model in trained:
            if study.row(model, budget) is not None:
                continue
            run_dir = args.runs / model
            saved = saved_progress(run_dir)
            if saved is not None and saved["cpu_s"] > budget * 60 and resume_options(str(run_dir)).cpu_minutes != budget:
                raise UsageError(f"{run_dir} has trained {saved['cpu_s'] / 60:.1f} CPU-minutes, past the budget of {budget:g} "
                                 "that has no evaluation: its checkpoint at that budget is gone")
            progress = train_to(model, budget, run_dir, args, study, monitor)
            if progress["stopped_by"]:
                print(f"{now()} {model}: stopped by {progress['stopped_by']} at step {progress['step']}, checkpoint saved; "
                      "the same command goes on from it", flush=True)
                sys.exit(128 + signal.Signals[progress["stopped_by"]].value)
            print(f"{now()} {model}: {budget:g} CPU-minutes reached at step {progress['step']} "
                  f"({progress['images']:,} images); evaluating on {len(test_set):,} test images", flush=True)
            row = {
                "model": model, "budget_cpu_minutes": budget, "parameters": parameters[model],
                "cpu_minutes": round(progress["cpu_s"] / 60, 3), "steps": progress["step"], "images": progress["images"],
                "train_images": train_images,
                "epochs": round(progress["images"] / train_images, 4), **evaluate_checkpoint(run_dir, test_set),
                "cpu": machine_facts()["cpu"], "torch": torch.__version__, "evaluated": now(),
            }
            study.add_row(row)
            print(f"{now()} {model} at {budget:g} CPU-minutes: test {row['ema_bpd']:.4f} bits/dim (EMA), "
                  f"{row['last_bpd']:.4f} (last weights)", flush=True)
            with study.held():  # another process (--only) may be reporting too: one at a time, each up to date
                report(study, args.runs, args.out, budgets)
    monitor.stop.set()
    with study.held():
        report(study, args.runs, args.out, budgets)


if __name__ == "__main__":
    run(main)
