"""The `snailcompress` command: parse, call the library, print. No logic lives here."""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import warnings
from pathlib import Path

import click
from click.core import ParameterSource

from .errors import SnailError, UsageError


DEVICE_HELP = "auto (a CUDA GPU where there is one), cpu, cuda or cuda:N"
CODING_DEVICE_HELP = DEVICE_HELP + "; files are the same on every device"


def friendly_errors(fn):
    """User errors become one line on stderr and a non-zero exit status, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SnailError as e:
            click.echo(f"snailcompress: error: {e}", err=True)
            sys.exit(e.exit_code)
        except OSError as e:  # what the system refused that no check foresaw (a name too long, a full disk)
            where = f"{e.filename}: " if e.filename else ""
            click.echo(f"snailcompress: error: {where}{e.strerror or e}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("snailcompress: interrupted", err=True)
            sys.exit(130)

    return wrapper


def without_warnings(fn):
    """For the codec's commands, which say one line a file: a library's warning there (Pillow's about a
    damaged TIFF tag or a large image it reads, numpy's about a model's non-finite weight) would be
    lines of source locations around it, so it is silenced (training's and the benchmark's are not)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(*args, **kwargs)

    return wrapper


def parse_overrides(pairs: tuple[str, ...]) -> dict:
    """`--set filters=96 --set dropout=0.1` -> {"filters": 96, "dropout": 0.1} (values parsed as JSON)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--set expects KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


class _UsageLine(click.ClickException):
    """A usage error of click's (a missing argument, an unknown option, a bad value) said in one line."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"snailcompress: error: {self.message}", err=True)


class _Commands(click.Group):
    """The command group, whose usage errors, its own and its commands', are one line like every other
    error (click prints the usage and a hint above them)."""

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except getattr(click.exceptions, "NoArgsIsHelpError", ()):  # `snailcompress` alone: the help (click >= 8.2)
            raise
        except click.UsageError as e:
            raise _one_line(e) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            raise _one_line(e) from None


def _one_line(error: click.UsageError) -> _UsageLine:
    names, ctx = [], error.ctx
    while ctx is not None and ctx.parent is not None:  # the command's name below the program's, however started
        names.insert(0, ctx.info_name)
        ctx = ctx.parent
    where = error.ctx.command_path if error.ctx is not None else "snailcompress"
    command = " ".join(names)
    message = " ".join(error.format_message().split()).rstrip(".")  # click lists a missing option's choices a line each
    return _UsageLine(f"{command + ': ' if command else ''}{message} (see {where} --help)")


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="snailcompress")
def main():
    """PixelSNAIL as a lossless image compressor and a density-estimation benchmark."""


@main.command()
@click.option("--channels", type=click.Choice(["3", "1"]), default="3", help="count parameters for RGB or grayscale")
@friendly_errors
def models(channels):
    """List model presets (with parameter counts) and shipped models."""
    from .models.presets import parameter_counts  # neither imports torch: the list takes well under a second
    from .zoo import DEFAULT_MODELS, WEIGHTS_DIR, describe_model_file, shipped_models

    click.echo("presets (architecture only; train them or load a checkpoint):")
    for name, count, description in parameter_counts(int(channels)):
        click.echo(f"  {name:24s} {count / 1e6:7.2f}M  {description}")
    shipped = shipped_models()
    if shipped:
        click.echo("shipped models (trained weights inside the package):")
        defaults = {v: k for k, v in DEFAULT_MODELS.items()}
        for name in shipped:
            model_id, params = describe_model_file(WEIGHTS_DIR / f"{name}.safetensors")
            role = f"  [default for {defaults[name]}]" if name in defaults else ""
            click.echo(f"  {name:24s} {params / 1e6:7.2f}M  id {model_id}{role}")


# ---------------------------------------------------------------------------------------------
# Training and evaluation

PRECISION_CHOICES = ["auto", "bf16", "fp32"]  # train.PRECISIONS, written out: the CLI starts without importing torch
DATASET_CHOICES = ["cifar10", "imagenet32", "imagenet64", "fashion-mnist", "mnist", "folder"]


def folder_options(fn, crops: str = ""):
    """The folder data set's options; `crops`: what they do where they are not given, if not crop."""
    for decorator in reversed(
        [
            click.option("--crop", type=int, default=32, help=f"folder: crop size [32{crops}]"),
            click.option("--scales", default="1,0.5,0.25", help=f"folder: downsampling scales [1,0.5,0.25{crops}]"),
            click.option("--holdout", default="", help="folder: comma-separated image names kept for the test split"),
            click.option("--channels", type=click.Choice(["3", "1"]), default=None, help="folder: RGB or grayscale"),
            click.option("--cache", "cache_dir", type=click.Path(), default=None, help="HDF5 cache directory for fixed data sets"),
        ]
    ):
        fn = decorator(fn)
    return fn


def _data_kwargs(dataset, crop, scales, holdout, channels, cache_dir) -> dict:
    """Keyword arguments of data.load_split: the folder options for `folder`, the cache for the others
    (and --channels or --holdout where typed, which load_split refuses for them)."""
    if dataset != "folder":
        typed = {"channels": int(channels)} if channels is not None else {}
        return {"cache_dir": cache_dir, **typed, **({"holdout": holdout.split(",")} if holdout else {})}
    return _folder_kwargs(crop, scales, holdout, channels)


def _folder_kwargs(crop, scales, holdout, channels) -> dict:
    try:
        scale_values = tuple(float(s) for s in scales.split(",") if s)
    except ValueError:
        raise UsageError(f"--scales expects numbers like 1,0.5,0.25, got {scales!r}") from None
    return {
        "crop": crop,
        "scales": scale_values,
        "holdout": tuple(h for h in holdout.split(",") if h),
        "channels": int(channels) if channels else None,
    }


@main.command()
@click.option("--model", "model_name",
              help="preset to train (see `snailcompress models`), or a trained model to go on training from")
@click.option("--dataset", type=click.Choice(DATASET_CHOICES))
@click.option("--data-dir", type=click.Path(), help="where the data set's official files are")
@click.option("--out", required=True, type=click.Path(), help="run directory (resumed if it holds a checkpoint)")
@click.option("--batch-size", type=int, default=None, help="images per process per step [8]")
@click.option("--steps", type=int, default=None, help="stop after this many optimiser steps (in total)")
@click.option("--minutes", type=float, default=None, help="stop after this much training time (in total)")
@click.option("--cpu-minutes", type=float, default=None,
              help="stop after this much CPU time of this process, in total across resumes")
@click.option("--lr", type=float, default=None, help="initial learning rate [1e-3]")
@click.option("--cooldown-steps", type=int, default=None, help="take the lr linearly to 0 over the last N of --steps")
@click.option("--warmup-steps", type=int, default=None, help="take the lr linearly up from 0 over the first N steps")
@click.option("--ema", "ema_decay", type=float, default=None,
              help="Polyak averaging decay [the reference's: 0.9997 on ImageNet, else 0.9995]")
@click.option("--dropout", type=float, default=None, help="override the model's dropout")
@click.option("--set", "overrides", multiple=True, help="override a model setting, e.g. --set filters=96")
@click.option("--eval-every", type=int, default=None, help="steps between test evaluations (0: only at the end) [1000]")
@click.option("--eval-images", type=int, default=None, help="test images per periodic evaluation [1000]")
@click.option("--checkpoint-minutes", type=float, default=None, help="minutes between checkpoints [10]")
@click.option("--workers", type=int, default=None, help="data-loading processes [2]")
@click.option("--device", default=None, help="auto, cpu, cuda, cuda:1, ...")
@click.option("--compile/--no-compile", "compile_", default=None, help="torch.compile the model (CUDA or CPU)")
@click.option("--precision", type=click.Choice(PRECISION_CHOICES), default=None,
              help="the network's arithmetic: auto = bf16 on CUDA, fp32 on a CPU (bf16 there trained 1.24x "
                   "faster with AMX, and worse: results/experiments/default_models/bf16_training.md) [auto]")
@click.option("--context", type=int, default=None,
              help="score only pixels below the first N rows and right of the first N columns of each image, as "
                   "`encode --context N` codes a window; use with --crop 32+N [0]")
@click.option("--seed", type=int, default=None)
@folder_options
@friendly_errors
def train(model_name, dataset, data_dir, out, overrides, crop, scales, holdout, channels, cache_dir, compile_, **options):
    """Train a preset, the reference's way, on one CPU/GPU or many (torchrun), or go on training a
    trained model (fine-tune a shipped one on your own images: the second example).

    \b
    Examples:
      snailcompress train --model pixelsnail-small --dataset fashion-mnist --out runs/fm --minutes 60
      snailcompress train --model snail-rgb --dataset folder --data-dir my-photos --scales 1 --out runs/mine \\
          --lr 2e-4 --warmup-steps 200 --steps 2000 --cooldown-steps 1800
      torchrun --nproc_per_node 8 -m snailcompress.cli train --model pixelsnail-cifar10 \\
          --dataset cifar10 --data-dir ~/data --out runs/cifar --batch-size 8 --steps 500000
    Running the same command again resumes from the run's last checkpoint.
    """
    from .distributed import launch_rank
    from .train import train as run_training, train_options

    # Only what was typed counts, as a resumed run keeps its saved options (the folder options have
    # defaults, the same as TrainOptions'); the run and its data may have been moved since it was saved.
    source = click.get_current_context().get_parameter_source
    typed = {name for name in ("overrides", "crop", "scales", "holdout", "channels")
             if source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)}
    folder = _folder_kwargs(crop, scales, holdout, channels)
    opts, resuming = train_options(
        out, model=model_name, dataset=dataset, data_dir=data_dir, cache_dir=cache_dir, compile=compile_,
        model_overrides=parse_overrides(overrides) if "overrides" in typed else None,
        **{key: folder[key] for key in ("crop", "scales", "holdout", "channels") if key in typed}, **options,
    )
    reports = launch_rank() == 0  # a torchrun job's other ranks train silently
    if resuming and reports:
        click.echo(f"resuming {out} at its last checkpoint", err=True)
    progress = run_training(opts)
    if progress["stopped_by"]:
        click.echo(f"{out}: stopped by {progress['stopped_by']} at step {progress['step']}, checkpoint saved; "
                   "the same command resumes it", err=True)
        sys.exit(128 + signal.Signals[progress["stopped_by"]].value)
    if reports:  # rank 0 evaluates
        if resuming and not progress["steps_trained"]:
            click.echo(f"{out}: its budget was already spent, nothing trained (give a larger --steps, --minutes or "
                       "--cpu-minutes to go on)", err=True)
        scored = f"EMA weights, {progress['test_images']:,} test images" if progress.get("test_images") else "EMA weights"
        click.echo(f"{out}: {progress['step']} steps, {progress['images']} images, test {progress['test_bpd']:.4f} "
                   f"bits/dim ({scored})")


@main.command("eval")
@click.option("--model", "model_spec", default=None,
              help="checkpoint, run dir, model file or shipped name [snail-rgb; gray data: snail-gray]")
@click.option("--dataset", type=click.Choice(DATASET_CHOICES), required=True)
@click.option("--data-dir", type=click.Path(), default=None)
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True)
@click.option("--limit", type=int, default=None, help="only the first N images")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--context", type=int, default=0, show_default=True,
              help="score only pixels below the first N rows and right of the first N columns (as train --context)")
@folder_options
@friendly_errors
def evaluate_command(model_spec, dataset, data_dir, split, limit, batch_size, device, context, crop, scales, holdout,
                     channels, cache_dir):
    """Bits/dim of a model over a whole split (EMA weights, dropout off, exact division).

    \b
    Under torchrun the processes split the split, each a contiguous run of whole batches, and gather
    every image's NLL: the same bits/dim, to the last bit, as one process. Rank 0 prints:
      torchrun --nproc_per_node 8 -m snailcompress.cli eval --dataset imagenet32 --data-dir ~/data \\
          --model runs/imagenet32
    """
    from . import distributed
    from .data import load_split
    from .evaluate import check_context, check_counts, evaluate
    from .zoo import default_model_for, load_model

    check_counts(limit, batch_size)
    rank, world, local_rank = distributed.start(device)
    try:
        data = load_split(dataset, data_dir, split, limit=limit,
                          **_data_kwargs(dataset, crop, scales, holdout, channels, cache_dir))
        check_context(context, data[0].shape)
        device = distributed.device_for(device, local_rank)
        spec = model_spec or default_model_for(data.channels)
        loaded = load_model(spec, channels=data.channels, device=device)
        result = evaluate(loaded.model, data, batch_size=batch_size, limit=limit, context=context, progress=rank == 0,
                          sharded=True)
    finally:
        distributed.finish()
    if rank == 0:
        click.echo(
            f"{dataset} {split}: {result.bits_per_dim:.4f} bits/dim over {result.images} images "
            f"({result.dims} dims) with {loaded.name} [{loaded.model_id}]"
            + (f", {world} processes" if world > 1 else "")
        )


SEED = click.IntRange(0, 2**63 - 2)  # torch's seeds (one is added to a seed for a preset's init)
#: the most positions `sample` draws (images x H x W): the steppers hold each position's keys and
#: values, some 7 KB of them for the paper's PixelSNAIL, and draw one position at a time
MAX_SAMPLE_POSITIONS = 1 << 18
MAX_GRID_PIXELS = 1 << 26  # the enlarged grid picture `sample` writes
#: the most positions `receptive-field` differentiates through: PixelSNAIL's attention keeps an
#: (H W)^2 matrix a block for the backward pass
MAX_FIELD_POSITIONS = 64 * 64


def _image_size(text: str) -> tuple[int, int]:
    """HxW of a --size, each side at least 1."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"--size expects HxW like 32x32, got {text!r}") from None
    if height < 1 or width < 1:
        raise UsageError(f"each side of --size must be at least 1, got {text!r}")
    return height, width


@main.command()
@click.option("--model", "model_spec", default=None, help="preset, checkpoint, run dir or shipped name [snail-rgb]")
@click.option("-n", "count", type=int, default=16, show_default=True)
@click.option("--size", default="32x32", show_default=True, help="HxW of each sample")
@click.option("-o", "--output", type=click.Path(), default="samples.png", show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--scale", type=int, default=4, show_default=True, help="enlarge the grid by this factor")
@click.option("-f", "--force", is_flag=True, help="overwrite the output")
@friendly_errors
def sample(model_spec, count, size, output, seed, scale, force):
    """Draw images from a model, pixel by pixel, into a grid picture (its format from -o: .png)."""
    from .figures import save_image_grid
    from .sampling import sample_images
    from .zoo import load_model

    height, width = _image_size(size)
    if count < 1 or scale < 1:
        raise UsageError("-n and --scale must be at least 1")
    if count * height * width > MAX_SAMPLE_POSITIONS:
        raise UsageError(f"-n {count} of {height}x{width} is {count * height * width:,} positions to draw; at most "
                         f"{MAX_SAMPLE_POSITIONS:,} (a model's keys and values for each are held in memory)")
    if count * height * width * scale * scale > MAX_GRID_PIXELS:
        raise UsageError(f"--scale {scale} makes a picture of about {count * height * width * scale * scale:,} pixels; "
                         f"at most {MAX_GRID_PIXELS:,}")
    _check_picture_output(output, force, figure=False)
    from .zoo import default_model_for

    loaded = load_model(model_spec or default_model_for(3))
    images = sample_images(loaded.model, count, height, width, seed=seed)
    save_image_grid(images, Path(output), scale=scale)
    click.echo(f"{output}: {count} sample{'' if count == 1 else 's'} of {height}x{width} from {loaded.name}")


@main.command("receptive-field")
@click.option("--model", "models", multiple=True, required=True,
              help="preset, checkpoint, run dir or shipped name; repeatable")
@click.option("--size", default="32x32", show_default=True, help="HxW of the input")
@click.option("--position", default=None, help="ROW,COL of the output pixel [the centre]")
@click.option("--channels", type=click.Choice(["3", "1"]), default=None, help="channels of preset models [3]")
@click.option("-o", "--output", type=click.Path(), default="receptive_field.png", show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True, help="random input image (and init of presets)")
@click.option("-f", "--force", is_flag=True, help="overwrite the output")
@friendly_errors
def receptive_field_command(models, size, position, channels, output, seed, force):
    """Which input pixels one output pixel depends on: gradient maps side by side (the paper's figure).

    \b
    Example:
      snailcompress receptive-field --model pixelcnnpp-cifar10 --model pixelsnail-cifar10 -o rf.png
    Presets get a data-dependent init on random images; trained models are used as they are.
    """
    from .receptive_field import model_for_receptive_field, plot_receptive_fields, receptive_field

    height, width = _image_size(size)
    target = None
    if position is not None:
        try:
            row, col = (int(v) for v in position.split(","))
        except ValueError:
            raise UsageError(f"--position expects ROW,COL like 16,16, got {position!r}") from None
        target = (row, col)
    if height * width > MAX_FIELD_POSITIONS:
        raise UsageError(f"--size {size} is {height * width:,} positions; at most {MAX_FIELD_POSITIONS:,} "
                         "(the attention's gradient holds a matrix of their square)")
    if (target or (height // 2, width // 2)) == (0, 0):
        raise UsageError("the output pixel is the first one, which depends on nothing: give a larger --size or "
                         "another --position")
    _check_picture_output(output, force, figure=True)
    fields = []
    every = [model_for_receptive_field(spec, height, width, int(channels) if channels else None, seed)
             for spec in models]  # each loaded (or refused) before any is measured
    for loaded in every:
        field = receptive_field(loaded.model, height, width, target, seed, name=loaded.name)
        click.echo(
            f"{loaded.name}: output {field.target} depends on {field.seen} of its {field.context} causal positions "
            f"({field.fraction:.1%}; {field.fraction_above(1e-3):.1%} at >= 1e-3 of the largest gradient); "
            f"non-causal positions with a gradient: {field.leaks}"
        )
        fields.append(field)
    plot_receptive_fields(fields, Path(output))
    click.echo(f"{output}: receptive fields of {len(fields)} models on a {height}x{width} input")


def _check_picture_output(output, force: bool, figure: bool) -> None:
    """A picture's -o, before the work: a name whose extension is a picture format, not a directory,
    not an existing file without -f."""
    from .figures import check_picture_path
    from .fileio import check_directory, check_target

    check_target(output, make_directories=True)
    check_directory(Path(output).absolute().parent)  # writable, found now rather than after the work
    check_picture_path(Path(output), figure)
    if Path(output).exists() and not force:
        raise UsageError(f"{output} already exists (use -f to overwrite)")


# ---------------------------------------------------------------------------------------------
# The benchmark


@main.command()
@click.argument("directory", required=False, type=click.Path())
@click.option("--dataset", type=click.Choice(DATASET_CHOICES), required=True)
@click.option("--data-dir", type=click.Path(), default=None, help="where the data set's official files are (or DIRECTORY)")
@click.option("--model", "models", multiple=True, help="checkpoint, run dir, preset or shipped name; repeatable")
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True)
@click.option("--limit", type=int, default=None, help="only the first N images [all]")
@click.option("--coded-limit", type=int, default=None,
              help="images coded as separate .snail files, and by PixelCNN++ in-process [100; a folder's whole images: all]")
@click.option("--chunk", type=int, default=1000, show_default=True, help="images per batch of the one-stream coding")
@click.option("--codecs", "codec_names", default="all", show_default=True,
              help="comma-separated, from png,webp,jpegxl-e7,jpegxl-e9,jpeg2000,jpegls; all; none")
@click.option("--batch-size", type=int, default=32, show_default=True, help="evaluation batch")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--out", type=click.Path(), default=None, help="report directory [bench-DATASET]")
@click.option("-f", "--force", is_flag=True, help="write over an earlier report in --out")
@click.option("-q", "--quiet", is_flag=True, help="no progress bars")
@functools.partial(folder_options, crops="; not given: whole images, uncropped")
@friendly_errors
def bench(directory, dataset, data_dir, models, split, limit, coded_limit, chunk, codec_names, batch_size, device, out,
          force, quiet, crop, scales, holdout, channels, cache_dir):
    """Models (NLL and real coded size) against classical lossless codecs, and the paper's Table 1, in
    bits per subpixel (the papers' bits/dim). A folder's images are measured whole, as `encode` codes
    them and as the codecs write them (one file each); --crop or --scales measures crops instead
    (--holdout NAME: only those images).

    \b
    Writes OUT/summary.csv, summary.md, per_image.h5 and bits_per_subpixel.png. Examples:
      snailcompress bench --dataset folder my-photos
      snailcompress bench --dataset cifar10 --data-dir ~/data --model runs/cifar --limit 1000
    Under torchrun the processes share the models' NLL rows (the same numbers as one process); rank 0
    codes, runs the codecs and writes the report.
    """
    from . import distributed
    from .bench.harness import BenchOptions, run_benchmark
    from .bench.report import format_table

    if directory is not None and data_dir is not None:
        raise UsageError(f"give the data directory once: {directory} or --data-dir {data_dir}")
    source = click.get_current_context().get_parameter_source
    crops = any(source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT) for name in ("crop", "scales"))
    local_rank = distributed.start(device)[2]
    _say_when_compiling(not quiet)  # its coded rows run the codec's kernels
    try:
        options = BenchOptions(
            dataset=dataset, data_dir=directory or data_dir, models=models, split=split, limit=limit,
            coded_limit=coded_limit, chunk=chunk, codecs=codec_names, out=out or f"bench-{dataset}",
            batch_size=batch_size, data_options=_data_kwargs(dataset, crop, scales, holdout, channels, cache_dir),
            crops=crops, device=str(distributed.device_for(device, local_rank)), progress=not quiet,
            argv=["snailcompress", *sys.argv[1:]], force=force,
        )
        result = run_benchmark(options, log=lambda line: click.echo(line, err=True))
    finally:
        distributed.finish()
    if result is None:  # a rank > 0 of a torchrun job: rank 0 reports
        return
    click.echo(format_table(result.rows))
    click.echo(f"report written to {result.out}/ (summary.csv, summary.md, per_image.h5, bits_per_subpixel.png)")


# ---------------------------------------------------------------------------------------------
# The codec


def _report_line(report) -> str:
    where = f"{report.source}: OK" if report.target is None else f"{report.source} -> {report.target}:"
    together = f" (the average of {report.batch} files coded together)" if report.batch > 1 else ""
    return (
        f"{where} {report.width}x{report.height} {report.mode}, {report.bytes} bytes, "
        f"{report.bits_per_subpixel:.3f} bits/subpixel, {report.seconds:.1f} s{together}"
    )


def _outputs(inputs: tuple[str, ...], output: str | None, default) -> tuple[list[Path], bool]:
    """Where each input goes: beside it, or -o FILE (one input), or into -o DIR (a directory, or a name
    ending in /, which is created). Several inputs need a directory, as cp's do: a name like a file's
    is refused rather than made into one. Also returns whether the directory is to be created: at the
    first file written into it, so that a command whose every file fails leaves none behind, and
    commands run side by side into one new directory all find it there."""
    paths = [Path(p) for p in inputs]
    if output is None:
        return [default(p) for p in paths], False
    out = Path(output)
    if out.is_dir() or output.endswith(("/", os.sep)):
        if out.exists() and not out.is_dir():
            raise UsageError(f"-o {output}: a directory was asked for (a name ending in /), and this is a file")
        return [out / default(p).name for p in paths], not out.is_dir()
    if len(paths) > 1:
        what = "is a file" if out.exists() else "is not a directory (end it with / to create one)"
        raise UsageError(f"-o {output}: several inputs go into a directory, and this {what}")
    return [out], False


def _outputs_or_stdout(inputs: tuple[str, ...], output: str | None, to_stdout: bool, default,
                       force: bool = False) -> tuple[list[Path | None], bool]:
    """_outputs, or None for each input that goes to standard output (-c: one input, no -o; not a
    terminal unless forced, as gzip)."""
    if to_stdout:
        if output is not None or len(inputs) != 1:
            raise UsageError("-c writes one input to standard output: give one input and no -o")
        _standard_output()
        if not force and sys.stdout.isatty():
            raise UsageError("-c: standard output is a terminal, which binary data would garble; redirect it, "
                             "or use -f to write there anyway")
        return [None], False
    if "-" in inputs and (output is None or Path(output).is_dir() or output.endswith(("/", os.sep))):
        raise UsageError("-: standard input has no name to give an output beside it or in a directory; give -o FILE or -c")
    return _outputs(inputs, output, default)


def _dash_is_standard_output(output: str | None, to_stdout: bool) -> tuple[str | None, bool]:
    """-o - as -c (as tar -f - and curl -o - read it), not a file named -."""
    if output == "-":
        if to_stdout:
            raise UsageError("-o - and -c both name standard output: give one")
        return None, True
    return output, to_stdout


def _standard_output():
    """Standard output's binary stream; UsageError where the command was started with it closed."""
    if sys.stdout is None:
        raise UsageError("standard output is closed")
    return sys.stdout.buffer


def _file_keys(path: Path) -> list:
    """What names a file whatever the path to it: its resolved path and, where it exists, its device
    and inode (hard links). Two paths share a key exactly where they name one file."""
    try:
        keys: list = [path.resolve()]
        if path.exists():
            stat = path.stat()
            keys.append((stat.st_dev, stat.st_ino))
        return keys
    except OSError:
        return []


def _each_file(pairs, work, force: bool, quiet: bool, to_stdout: bool = False, check=None,
               make_directories: bool = False) -> None:
    """Run `work` on the (source, target) pairs that can be written: it takes a list of them and
    yields, for each in order, its report or the SnailError it met (so that it may code many files
    together). As gzip does: a file that fails is said in one line that names it, the others go on,
    and the exit status is 1 if any failed. A target that cannot be written (an input, it exists and
    no -f, its directory is not there and not `make_directories` or cannot be made, `check(target)`
    raises) is refused before any work."""
    from .fileio import check_directory, check_target

    _say_when_compiling(not quiet)
    seen: set[Path] = set()
    writable: set[Path] = set()
    refused: dict[int, SnailError] = {}
    pairs = list(pairs)
    inputs = {key: Path(source) for source, _ in pairs if str(source) != "-" for key in _file_keys(Path(source))}
    for index, (source, target) in enumerate(pairs):
        if target is None:  # standard output, or nothing (decode --test)
            continue
        if str(source) != "-" and not os.path.lexists(source):  # reading it says so, not its output's checks
            continue
        same = next((inputs[key] for key in _file_keys(target) if key in inputs), None)
        if same is not None:
            which = "itself" if same == target else f"the input {same}"
            refused[index] = UsageError(f"{source}: its output {target} is {which}; an input is never written over, "
                                        "even with -f")
        elif target in seen:
            refused[index] = UsageError(f"{target} would be written twice (several inputs with one name; use separate calls)")
        elif target.exists() and not force and not target.is_dir():
            refused[index] = UsageError(f"{target} already exists (use -f to overwrite)")
        else:
            try:
                check_target(target, make_directories)
                if target.absolute().parent not in writable:  # a read-only place is found now, not after the work
                    check_directory(target.absolute().parent)
                    writable.add(target.absolute().parent)
                if check is not None:
                    check(target)
            except SnailError as e:
                refused[index] = e
        seen.add(target)
    results = iter(work([pair for index, pair in enumerate(pairs) if index not in refused]))
    failed = 0
    for index, (source, _) in enumerate(pairs):
        result = refused[index] if index in refused else next(results)
        if isinstance(result, SnailError):
            failed += 1
            message = str(result)
            named = message if message.startswith(str(source)) else f"{source}: {message}"
            click.echo(f"snailcompress: error: {named}", err=True)
        elif not quiet:
            click.echo(_report_line(result), err=to_stdout)  # with -c, standard output holds the data
    if failed:
        sys.exit(1)


THREADS_HELP = ("CPU threads [1]: coding runs thousands of small steps, each waiting for all its threads, so give "
                "it only idle cores; any count decodes any file")


def _say_when_compiling(enabled: bool = True) -> None:
    """The first encode and the first decode after installing (make demo's or bench's, often) compile
    the CPU kernels, silent for a while: one line says so (integer/runtime.py: compile_notice), above
    any progress bar; nothing with -q, or where there is no stderr to write to."""
    if not enabled and "snailcompress.integer.runtime" not in sys.modules:
        return  # nothing set to clear: numba need not be imported for that
    from tqdm import tqdm

    from .integer import runtime

    def notice(work: str) -> None:
        kept = ("once (numba caches them)" if runtime.temporary_kernel_cache is None else
                "in every run: nowhere here can keep them (set NUMBA_CACHE_DIR to a writable directory)")
        tqdm.write(f"snailcompress: compiling the CPU kernels for {work}, {kept}; this takes a while", file=sys.stderr)

    runtime.compile_notice = notice if enabled and sys.stderr is not None else None


def _threads(threads: int) -> None:
    from .threads import set_threads

    if threads < 1:
        raise UsageError("--threads must be at least 1")
    set_threads(threads)


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", type=click.Path(),
              help="output file (one input) or directory; - is standard output, as -c")
@click.option("-f", "--force", is_flag=True, help="overwrite existing outputs")
@click.option("--model", "models", multiple=True, help="model (name or path) for the planes it fits; repeatable")
@click.option("--tile", type=int, default=None, help="tile size in pixels [32]")
@click.option("--context", type=int, default=None,
              help="rows and columns of already coded neighbours each tile also sees: smaller files, slower [2]")
@click.option("--calibrate/--no-calibrate", default=True,
              help="fit and send a per-image correction of the model's output layer where it pays: about 1.2% smaller, "
                   "a little slower to encode, no slower to decode [on]")
@click.option("--threads", type=int, default=1, help=THREADS_HELP)
@click.option("--device", default="auto", show_default=True, help=CODING_DEVICE_HELP)
@click.option("-n", "--no-name", is_flag=True,
              help="do not record the name (the --model given, often a path) of a model that is not shipped, only its id: "
                   "smaller files, no local path in them; decoding then needs --model, as it does on any other machine")
@click.option("-c", "--stdout", "to_stdout", is_flag=True, help="write the .snail file to standard output")
@click.option("-q", "--quiet", is_flag=True, help="print nothing but errors")
@friendly_errors
@without_warnings
def encode(images, output, force, models, tile, context, calibrate, no_name, threads, device, to_stdout, quiet):
    """Compress images losslessly into .snail files (inputs are kept); - reads standard input."""
    from .api import DEFAULT_CONTEXT, DEFAULT_TILE, ModelChooser, default_output, encode_files, resolve_device

    _threads(threads)
    if tile is not None and not 1 <= tile <= 1024:
        raise UsageError("--tile must be between 1 and 1024")
    if context is not None and not 0 <= context <= 64:
        raise UsageError("--context must be between 0 and 64")
    output, to_stdout = _dash_is_standard_output(output, to_stdout)
    outputs, make_directories = _outputs_or_stdout(images, output, to_stdout, lambda p: default_output(p, ".snail"),
                                                   force)
    chooser = ModelChooser(models, resolve_device(device), names=not no_name)
    stdout = _standard_output() if to_stdout else None
    _each_file(zip(images, outputs), lambda pairs: encode_files(
        pairs, chooser, tile or DEFAULT_TILE, DEFAULT_CONTEXT if context is None else context, force=force,
        progress=not quiet, calibrate=calibrate, stdout=stdout, make_directories=make_directories),
               force, quiet, to_stdout, make_directories=make_directories)


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", type=click.Path(),
              help="output image (one input) or directory; - is standard output, as -c")
@click.option("-f", "--force", is_flag=True, help="overwrite existing outputs")
@click.option("--model", "models", multiple=True, help="model the file was made with, if not a shipped one")
@click.option("--threads", type=int, default=1, help=THREADS_HELP)
@click.option("--device", default="auto", show_default=True, help=CODING_DEVICE_HELP)
@click.option("-c", "--stdout", "to_stdout", is_flag=True, help="write the image (PNG) to standard output")
@click.option("-t", "--test", is_flag=True, help="decode and check each file against its checksum, write nothing")
@click.option("-q", "--quiet", is_flag=True, help="print nothing but errors")
@friendly_errors
@without_warnings
def decode(files, output, force, models, threads, device, to_stdout, test, quiet):
    """Restore the exact original images from .snail files (checked against their checksum); - reads
    standard input. -t checks that each decodes to its checksummed pixels and writes nothing, as gzip -t."""
    from .api import ModelChooser, decode_files, decoded_output, resolve_device
    from .codec.images import write_format

    _threads(threads)
    if test and (output is not None or to_stdout):
        raise UsageError("-t writes nothing: give it no -o or -c")
    output, to_stdout = _dash_is_standard_output(output, to_stdout)
    outputs, make_directories = (([None] * len(files), False) if test else
                              _outputs_or_stdout(files, output, to_stdout, decoded_output, force))
    chooser = ModelChooser(models, resolve_device(device))
    stdout = _standard_output() if to_stdout else None
    _each_file(zip(files, outputs), lambda pairs: decode_files(pairs, chooser, force, progress=not quiet, stdout=stdout,
                                                               test=test, make_directories=make_directories),
               force, quiet, to_stdout, check=lambda target: write_format(str(target)), make_directories=make_directories)


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path())
@friendly_errors
@without_warnings
def info(files):
    """Print the header of .snail files in words (- reads standard input); a bad file is said in one
    line, the others go on."""
    from .api import standard_input
    from .codec import container
    from .zoo import shipped_model_with_id

    _standard_output()  # what it prints would be lost
    failed = 0
    for name in files:
        try:
            try:
                data = standard_input() if name == "-" else Path(name).read_bytes()
            except OSError as e:
                raise UsageError(f"cannot read ({e.strerror})") from None
            header = container.read_header(data)  # nothing printed for a bad file
        except SnailError as e:
            failed += 1
            click.echo(f"snailcompress: error: {name}: {e}", err=True)
            continue
        click.echo(f"{name}:")
        click.echo(container.describe(header, shipped_model_with_id))
    if failed:
        sys.exit(1)


@main.command()
@click.option("--keep", type=click.Path(), default=None, help="keep the demo's files (image, .snail, decoded) in this directory")
@friendly_errors
@without_warnings
def demo(keep):
    """Encode, decode and verify the shipped demo image; compare with PNG, WebP, JPEG-XL, JPEG 2000."""
    from .demo import run_demo
    from .fileio import check_directory

    if keep:
        check_directory(keep)
        if Path(keep).is_dir() and any(Path(keep).iterdir()):
            raise UsageError(f"--keep {keep} is not empty: give a new or empty directory")
    _say_when_compiling()
    run_demo(Path(keep) if keep else None, echo=click.echo)


if __name__ == "__main__":
    main()
