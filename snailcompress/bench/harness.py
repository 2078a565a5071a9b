"""The benchmark: models (likelihood and real coded size) against classical codecs on one data set.

    load_split ─► the first N images ─┬─► each model: NLL bits/subpixel (evaluate)        kind model-nll
                                      ├─► each PixelSNAIL: .snail files, one per image    kind model-coded
                                      │                    one range-coder stream         kind model-coded
                                      ├─► each PixelCNN++: one stream coded in-process    kind model-coded
                                      ├─► each codec: one file per image, one mosaic      kind codec
                                      └─► Table 1 of the paper (cifar10, imagenet32)      kind paper
                                    ─► bench.report.write_report: summary.csv/.md, per_image.h5, bits_per_subpixel.png

Every number is in bits per subpixel (one channel of one pixel), what the papers call bits/dim.
Coded sizes are real and checked: every .snail file and every stream is decoded again and compared
with the original pixels; a mismatch raises (it is a bug, not a user error). Each coded row carries
its model's NLL over the images it codes (`nll_same_images`: a coded row may code only the first
`coded_limit`) and its real bits' excess over it (`over_nll`).

A folder of images (dataset "folder", unless `crops`) is measured whole, each image at full size,
as a user codes it: the NLL row scores every pixel in the window that codes it
(evaluate.tiled_nll_bits, the codec's tiles and context), the .snail files are what `snailcompress
encode` writes (api.encode_images: default tiles, context and calibration), and each codec writes
one file per image; no one-stream row and no mosaic, which are for sets of small images. Every image
is measured as RGB (grayscale with data_options channels 1, the codec's model for it): a grayscale or
palette image is converted and an alpha channel dropped, where `encode` would code the image's own
planes; an image that does not convert exactly (16-bit, CMYK) is refused (data/folder.py). With
`crops`, a folder gives crop x crop tiles (data_options crop, scales, holdout) like any data set.

* "per file": each of the first `coded_limit` images is its own .snail file (every header byte
  counted), all encoded together (api.encode_images, as `snailcompress encode -n` codes many files)
  and decoded together (api.decode_images). Without the model's name (-n): a file of a model that is
  not shipped would otherwise record the --model given, a path whose length is the user's choice and
  not the format's cost (tens of bytes, a large share of a small image's file), so the row would
  depend on where the model lies. For small images: coded alone as one tile, without the
  codec's per-image calibration
  (codec/calibration.py), so that the files measure the model, as its NLL row does.
* "one stream": all N images in one range-coder stream, in chunks of at most `chunk` images, each a
  row of images side by side coded as one plane (coder.code_plane, tiles the size of an image, no
  context: each image is coded alone) appending to one shared encoder; bytes = 4 * words + the fixed
  container overhead (the length of a .snail file with an empty stream and the header of one image
  of the set: magic, version, header length, header, checksum).

Under torchrun (distributed.start: WORLD_SIZE > 1) every process scores a contiguous share of the
images for each model's NLL row (whole batches, or whole images for a folder) and the per-image values
are gathered in order: the rows and per_image.h5 are the same, to the last bit, as one process's. The
coded rows, the codecs and the report are rank 0's alone, after the NLL rows; the other ranks return.

Every model row also gives the model's architecture, parameter count and training budget as its file
records them (zoo.training_record: steps, images seen, wall and CPU time, device), beside the paper's
rows, which carry the parameters of the paper's configuration (bench.paper).

PixelCNN++ has no integer twin, so it cannot write a .snail file that decodes on any machine. Its
coded row is "coded in-process, float: not a portable file; one stream": the first `coded_limit`
images in one range-coder stream, `chunk` images a batch, encoded and decoded again in this process by
the same float computation, its incremental stepper (models/pixelcnnpp_stepper.py) on both sides
(bench/inprocess.py: real bits, verified, but the stream may not decode on another machine, thread
count or torch build); bytes = 4 * words, no container. A folder's whole images get no PixelCNN++
coded row (its images differ in size; --crop gives a set of crops).
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import constriction
import numpy as np
import pandas as pd
import torch
from ..progress import progress_bar

from .. import api, distributed
from ..codec import container
from ..codec.coder import CodingProgress, StreamDecoder, code_plane, coding_steps, decode_plane
from ..codec.images import DecomposedImage, same_image
from ..data import ArrayDataset, load_split
from ..data.folder import MODE_OF, whole_images
from ..errors import ChannelCountError, DatasetError, ModelError, SnailError, UsageError
from ..evaluate import check_counts, evaluate, tiled_nll_bits
from ..fileio import check_directory
from ..models.pixelsnail import PixelSNAIL
from ..models.presets import PRESETS
from ..zoo import TRAINING_FACTS, LoadedModel, default_model_for, load_model, training_record
from . import codecs as bench_codecs
from .codecs import NotLosslessError
from .inprocess import cpu_model
from .inprocess import decode_images as decode_in_process
from .inprocess import encode_images as encode_in_process
from .paper import ARCHITECTURES, paper_rows
from .report import REPORT_FILES, default_meta, training_text, write_report

__all__ = ["BenchOptions", "BenchResult", "run_benchmark", "machine_facts"]



@dataclass
class BenchOptions:
    dataset: str
    data_dir: str | os.PathLike | None = None
    models: Sequence[str] = ()
    split: str = "test"
    limit: int | None = None  # the first N images (None: the whole split)
    coded_limit: int | None = None  # images coded as separate .snail files (None: 100, or every whole image)
    chunk: int = 1000  # images per batch of the one-stream coding
    codecs: str | Sequence[str] | None = None  # None or "all": every available codec
    out: str | os.PathLike = "bench"
    data_options: dict = field(default_factory=dict)  # load_split keywords: crop, scales, holdout, channels (folder); cache_dir
    crops: bool = False  # folder: crop x crop tiles (data_options crop, scales) instead of the images whole
    batch_size: int = 32  # evaluation batch
    device: str = "cpu"  # where the models run (api.resolve_device); the coded bytes are the same on each
    progress: bool = True
    argv: list[str] | None = None  # the command line recorded in the meta (default sys.argv)
    force: bool = False  # write over an earlier report in `out`


@dataclass
class BenchResult:
    rows: pd.DataFrame
    per_image: dict[str, np.ndarray]
    meta: dict
    out: Path
    notes: list[str]


# ---------------------------------------------------------------------------------------------
# inputs


def machine_facts() -> dict:
    """CPU model, cores, torch version and threads: what the timings depend on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "torch": str(torch.__version__),
        "torch_threads": torch.get_num_threads(),
    }


def _check_options(opts: BenchOptions) -> None:
    """Refuse, before any work, what evaluate would refuse later (check_counts) and what no run can use."""
    check_counts(opts.limit, opts.batch_size)
    if opts.coded_limit is not None and opts.coded_limit < 0:
        raise UsageError("--coded-limit must be 0 or more")
    if opts.chunk < 1:
        raise UsageError("--chunk must be at least 1")
    check_directory(opts.out)
    earlier = [name for name in REPORT_FILES if (Path(opts.out) / name).exists()]
    if earlier and not opts.force:
        raise UsageError(f"{opts.out} holds an earlier report ({', '.join(earlier)}): give another --out, or -f to "
                         "write over it")


def _images(data, limit: int | None) -> np.ndarray:
    """The first `limit` images of a data set as uint8 (N, C, H, W); a read-only view of an ArrayDataset's array."""
    n = len(data) if limit is None else min(limit, len(data))
    if n < 1:
        raise DatasetError(f"The {data.name} split holds no images.")
    array = getattr(data, "array", None)
    if array is not None:
        return np.ascontiguousarray(array[:n])
    return np.stack([np.asarray(data[i]) for i in range(n)]).astype(np.uint8, copy=False)


def _whole_images(opts: BenchOptions) -> list[np.ndarray]:
    """The first `limit` images of a folder, whole, uint8 (H, W, C) each."""
    options = {key: opts.data_options[key] for key in ("holdout", "channels") if opts.data_options.get(key)}
    return [pixels for _, pixels in whole_images(opts.data_dir, opts.split, limit=opts.limit, **options)]


def _shape(images: Sequence[np.ndarray]) -> str:
    """CxHxW of images (H, W, C), or the range of their heights and widths."""
    def span(sizes: set[int]) -> str:
        return f"{min(sizes)}" if len(sizes) == 1 else f"{min(sizes)}..{max(sizes)}"

    return f"{images[0].shape[2]}x{span({im.shape[0] for im in images})}x{span({im.shape[1] for im in images})}"


def _load(spec: str, channels: int, dataset: str, device: str = "cpu") -> LoadedModel:
    if spec in PRESETS:
        return load_model(spec, channels=channels, device=device)
    loaded = load_model(spec, device=device)
    if loaded.channels != channels:
        raise ModelError(
            f"model {spec!r} codes {loaded.channels}-channel images but {dataset} has {channels}-channel images"
        )
    return loaded


def _model_columns(loaded: LoadedModel) -> dict:
    """Columns of every row of a model: its architecture (as the paper's rows name it), parameters and
    training budget as its file records it (zoo.training_record; "untrained" for a preset)."""
    record = training_record(loaded.name, loaded.metadata)
    return {
        "architecture": ARCHITECTURES.get(loaded.config.to_dict()["architecture"]),
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
        "training": training_text(record),
        **{f"train_{key}": record.get(key) for key in TRAINING_FACTS},
    }


def _with_model_columns(rows: list[dict], models: Sequence[LoadedModel]) -> list[dict]:
    """`rows` with _model_columns added to each row of a model (its id, and its name or "name (...)")."""
    described = [(loaded, _model_columns(loaded)) for loaded in models]
    out = []
    for row in rows:
        method = str(row.get("method"))
        owner = next((columns for loaded, columns in described if row.get("model_id") == loaded.model_id
                      and (method == loaded.name or method.startswith(f"{loaded.name} ("))), {})
        out.append({**row, **owner})
    return out


def _beside_nll(row: dict, nll: np.ndarray, subpixels: np.ndarray) -> dict:
    """A coded row of the first row["images"] images with its model's NLL over those same images
    (`nll`: each image's bits/subpixel, weighted by its subpixels) and by how much the real bits
    exceed it (`over_nll`, a fraction): what coding costs beyond the likelihood, whatever share of
    the split the row codes."""
    n = int(row["images"])
    same = float(np.average(nll[:n], weights=subpixels[:n]))
    return {**row, "nll_same_images": same, "over_nll": row["bits_per_subpixel"] / same - 1}


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


# ---------------------------------------------------------------------------------------------
# models


def _nll_row(loaded: LoadedModel, images: np.ndarray, opts: BenchOptions, dataset: str) -> tuple[dict, np.ndarray]:
    """NLL of images (N, C, H, W); under torchrun each process scores its share (evaluate, sharded)."""
    start = time.perf_counter()
    result = evaluate(
        loaded.model, ArrayDataset(dataset, images), batch_size=opts.batch_size, progress=opts.progress, sharded=True,
    )
    seconds = time.perf_counter() - start
    row = {
        "method": loaded.name,
        "kind": "model-nll",
        "bits_per_subpixel": result.bits_per_dim,
        "images": result.images,
        "subpixels": result.dims,
        "coding": "likelihood",
        "model_id": loaded.model_id,
        "eval_s": seconds,
        "eval_images_per_s": _rate(result.images, seconds),
    }
    return row, result.per_image_nats / (int(np.prod(images.shape[1:])) * math.log(2))


def _whole_nll_row(loaded: LoadedModel, images: Sequence[np.ndarray], opts: BenchOptions) -> tuple[dict, np.ndarray]:
    """NLL of whole images (H, W, C), each pixel scored in the window of the codec's tiles that codes
    it. A PixelSNAIL sees the codec's context; other models independent tiles (PixelCNN++ needs sides
    divisible by 4). Under torchrun each process scores a contiguous share of the images, each image
    alone as in one process, and every rank gets all of their values in order (distributed.gather)."""
    context = api.DEFAULT_CONTEXT if isinstance(loaded.model, PixelSNAIL) else 0
    mine = distributed.share(len(images), *distributed.rank_world())
    start = time.perf_counter()
    bits = distributed.gather([
        tiled_nll_bits(loaded.model, pixels, api.DEFAULT_TILE, context, opts.batch_size)
        for pixels in progress_bar(images[mine.start : mine.stop], desc=f"{loaded.name} NLL", unit="image",
                                   enabled=opts.progress, leave=False)
    ])
    seconds = time.perf_counter() - start
    subpixels = np.array([pixels.size for pixels in images])
    row = {
        "method": loaded.name,
        "kind": "model-nll",
        "bits_per_subpixel": float(bits.sum() / subpixels.sum()),
        "images": len(images),
        "subpixels": int(subpixels.sum()),
        "coding": f"likelihood, {api.DEFAULT_TILE}x{api.DEFAULT_TILE} tiles, context {context}",
        "model_id": loaded.model_id,
        "eval_s": seconds,
        "eval_images_per_s": _rate(len(images), seconds),
    }
    return row, bits / subpixels


class _OneModel(api.ModelChooser):
    """A chooser that always answers with one already loaded model, its files recording no name
    (the module docstring, "per file")."""

    def __init__(self, loaded: LoadedModel, device: str = "cpu"):
        super().__init__((), device, names=False)
        self.loaded = loaded

    def for_channels(self, channels: int) -> LoadedModel:
        if channels != self.loaded.channels:
            raise ChannelCountError(f"model {self.loaded.name!r} codes {self.loaded.channels}-channel planes, not {channels}")
        return self.loaded

    def for_plane(self, plane: container.Plane, channels: int) -> LoadedModel:
        if not self.loaded.model_id.startswith(plane.model_id):
            raise ModelError(f"plane coded with model id {plane.model_id}, not {self.loaded.model_id}")
        return self.for_channels(channels)


def _as_image(pixels: np.ndarray) -> DecomposedImage:
    """(H, W, C) uint8 -> a DecomposedImage of mode RGB or L."""
    height, width, channels = pixels.shape
    mode = MODE_OF[channels]
    return DecomposedImage(mode, width, height, {mode: np.array(pixels, order="C")}, {})


def _coded_row(loaded: LoadedModel, coding: str, n: int, of: int, subpixels: int, total_bytes: int,
               encode_s: float, decode_s: float) -> dict:
    """A model-coded summary row over the first n of `of` images: real bytes, verified, with timings."""
    return {
        "method": f"{loaded.name} (coded, {coding}{'' if n == of else f', first {n}'})",
        "kind": "model-coded",
        "bits_per_subpixel": 8.0 * total_bytes / subpixels,
        "images": n,
        "subpixels": subpixels,
        "total_bytes": total_bytes,
        "coding": coding,
        "model_id": loaded.model_id,
        "encode_s": encode_s,
        "decode_s": decode_s,
        "encode_images_per_s": _rate(n, encode_s),
        "decode_images_per_s": _rate(n, decode_s),
    }


def _files(images: Sequence[DecomposedImage], chooser: api.ModelChooser, progress: bool, **options) -> list[bytes]:
    """The images' .snail files, encoded together (api.encode_images, as `snailcompress encode` codes
    many files) with these options."""
    files = []
    for snail in api.encode_images(images, chooser, progress=progress, **options):
        if isinstance(snail, SnailError):
            raise snail
        files.append(container.write(snail))
    return files


def _one_tile_files(images: Sequence[DecomposedImage], chooser: api.ModelChooser, progress: bool) -> list[bytes]:
    """Small images' .snail files: each coded alone as one tile by the model (no calibration, no stored
    or deflated plane: the row measures the model; the module docstring), those of one size together.
    An image no larger than the default tile keeps it (one window all the same, and no tile field in
    its header, as `encode -n` writes it); a larger one gets a tile of its size."""
    files: list = [None] * len(images)
    by_tile: dict[int, list[int]] = {}
    for k, image in enumerate(images):
        by_tile.setdefault(max(api.DEFAULT_TILE, image.height, image.width), []).append(k)
    for tile, members in by_tile.items():
        coded = _files([images[k] for k in members], chooser, progress, tile=tile, calibrate=False, fallback=False)
        for k, data in zip(members, coded):
            files[k] = data
    return files


def _per_file_row(loaded: LoadedModel, images: Sequence[np.ndarray], opts: BenchOptions, of: int,
                  encode: Callable[[Sequence[DecomposedImage], api.ModelChooser, bool], list[bytes]]) -> tuple[dict, np.ndarray]:
    """Each image (H, W, C) its own .snail file, `encode`d as `snailcompress encode` codes many files
    (together), then decoded as `snailcompress decode` decodes them (api.decode_images, together) and
    compared; the first of `of` images."""
    n = len(images)
    chooser = _OneModel(loaded, opts.device)
    originals = [_as_image(pixels) for pixels in images]
    subpixels = np.array([pixels.size for pixels in images])
    t0 = time.perf_counter()
    files = encode(originals, chooser, opts.progress)
    t1 = time.perf_counter()
    decoded = api.decode_images([container.read(data) for data in files], chooser, progress=opts.progress)
    decode_s = time.perf_counter() - t1
    for k, (image, result) in enumerate(zip(originals, decoded)):
        if not isinstance(result, DecomposedImage) or not same_image(image, result):
            raise NotLosslessError(f"{loaded.name}: image {k} did not decode from its .snail file exactly")
    sizes = np.array([len(data) for data in files], np.int64)
    row = _coded_row(loaded, "per file", n, of, int(subpixels.sum()), int(sizes.sum()), t1 - t0, decode_s)
    return row, 8.0 * sizes / subpixels


def stream_overhead(loaded: LoadedModel, images: np.ndarray) -> int:
    """Bytes of a .snail file around an empty stream, for a header describing one image of the set."""
    _, channels, height, width = images.shape
    mode = MODE_OF[channels]
    snail = container.SnailFile(
        width=width, height=height, mode=mode,
        planes=(container.Plane(mode, loaded.model_id[:8], np.zeros(0, np.uint32), tile=(height, width)),),
        pixel_crc32=zlib.crc32(images.tobytes()) & 0xFFFFFFFF,
    )
    return container.file_size(snail)


def side_by_side(images: np.ndarray) -> np.ndarray:
    """(N, C, H, W) images -> one (H, N * W, C) plane: N tiles of one row, coded together as a batch."""
    n, channels, height, width = images.shape
    return np.ascontiguousarray(images.transpose(2, 0, 3, 1).reshape(height, n * width, channels))


def _stream_row(loaded: LoadedModel, images: np.ndarray, opts: BenchOptions, of: int, coding: str, encode_chunk,
                decode_chunk, encode_total: int, decode_total: int, overhead: int = 0,
                reader=constriction.stream.queue.RangeDecoder) -> dict:
    """Images (N, C, H, W) in one range-coder stream, `opts.chunk` images a batch (`encode_chunk(chunk,
    encoder, progress)`), decoded again in the same batches (`decode_chunk(chunk, decoder, progress)`
    gives them back) and compared; the first N of `of` images. `overhead`: container bytes around it;
    `reader`: what decode_chunk reads the stream with."""
    n = len(images)
    starts = range(0, n, opts.chunk)
    encoder = constriction.stream.queue.RangeEncoder()
    t0 = time.perf_counter()
    with CodingProgress(encode_total, f"{loaded.name} encode ({coding})", opts.progress) as progress:
        for s in starts:
            encode_chunk(images[s : s + opts.chunk], encoder, progress)
    words = encoder.get_compressed()
    encode_s = time.perf_counter() - t0
    decoder = reader(words)
    t0 = time.perf_counter()
    with CodingProgress(decode_total, f"{loaded.name} decode ({coding})", opts.progress) as progress:
        for s in starts:
            chunk = images[s : s + opts.chunk]
            if not np.array_equal(decode_chunk(chunk, decoder, progress), chunk):
                raise NotLosslessError(f"{loaded.name}: images {s}..{s + len(chunk) - 1} did not decode exactly")
    decode_s = time.perf_counter() - t0
    row = _coded_row(loaded, coding, n, of, int(images.size), 4 * int(words.size) + overhead, encode_s, decode_s)
    row.update(stream_words=int(words.size), container_overhead_bytes=overhead)
    return row


def _one_stream_row(loaded: LoadedModel, images: np.ndarray, opts: BenchOptions) -> dict:
    """All images in one stream of the codec's integer network: each chunk side by side, one tile an image."""
    n, channels, height, width = images.shape
    provider = api.integer_network(loaded.model).to(opts.device)

    def encode(chunk, encoder, progress):
        code_plane(provider, side_by_side(chunk), (height, width), progress=progress, encoder=encoder)

    def decode(chunk, decoder, progress):
        row = decode_plane(provider, None, height, len(chunk) * width, channels, (height, width), progress=progress,
                           decoder=decoder)  # (H, N * W, C)
        return np.ascontiguousarray(row.reshape(height, len(chunk), width, channels).transpose(1, 3, 0, 2))

    decode_total = sum(coding_steps(height, min(opts.chunk, n - s) * width, (height, width)) for s in range(0, n, opts.chunk))
    return _stream_row(loaded, images, opts, n, "one stream", encode, decode, n, decode_total,
                       stream_overhead(loaded, images), reader=StreamDecoder)


def _in_process_row(loaded: LoadedModel, images: np.ndarray, opts: BenchOptions, of: int) -> dict:
    """Images in one stream coded in-process by a float model's stepper (bench/inprocess.py)."""
    model = cpu_model(loaded.model)
    steps = -(-len(images) // opts.chunk) * images.shape[2] * images.shape[3]
    return _stream_row(loaded, images, opts, of, "in-process, float: not a portable file; one stream",
                       lambda chunk, encoder, progress: encode_in_process(model, chunk, encoder, progress),
                       lambda chunk, decoder, progress: decode_in_process(model, decoder, chunk.shape, progress),
                       steps, steps)


# ---------------------------------------------------------------------------------------------
# the run


def run_benchmark(opts: BenchOptions, log: Callable[[str], None] = print) -> BenchResult | None:
    """Run everything, write the report into opts.out, return the rows (see the module docstring).

    In a process group (torchrun; distributed.start) every process scores its share of the images
    for the NLL rows, which come out the same to the last bit as in one process; the coded rows, the
    codecs and the report are rank 0's alone, and the other ranks return None without logging."""
    rank, world = distributed.rank_world()
    if rank != 0:
        log, opts = (lambda line: None), dataclasses.replace(opts, progress=False)
    _check_options(opts)
    codecs = bench_codecs.get_codecs(opts.codecs)  # UsageError for an unknown codec, before any work
    whole = opts.dataset == "folder" and not opts.crops
    if whole:
        array = None
        images = _whole_images(opts)
        split = opts.split if opts.data_options.get("holdout") else "all"
        described = f"{opts.data_dir}: {len(images)} whole images of {_shape(images)}"
    else:
        array = _images(load_split(opts.dataset, opts.data_dir, opts.split, limit=opts.limit, **opts.data_options),
                        opts.limit)
        images = list(array.transpose(0, 2, 3, 1))
        split = opts.split
        described = f"{opts.dataset} {opts.split}: {len(images)} images of {_shape(images)}"
    bench_codecs.check_sizes(codecs, images, mosaic=not whole)
    n, channels = len(images), images[0].shape[2]
    coded = min(n, (n if whole else 100) if opts.coded_limit is None else opts.coded_limit)
    # without --model, what a user who types `bench --dataset X` wants to see: the shipped model for the data
    specs = list(opts.models) or [default_model_for(channels)]
    models = [_load(spec, channels, opts.dataset, opts.device) for spec in specs]
    log(described)
    if not opts.models:
        log(f"no --model: the shipped {specs[0]} (for {channels}-channel images)")

    rows: list[dict] = []
    per_image: dict[str, np.ndarray] = {}
    notes: list[str] = []

    # every process scores its share for each model first: the rest is rank 0's alone
    nll_rows = [_whole_nll_row(loaded, images, opts) if whole else _nll_row(loaded, array, opts, opts.dataset)
                for loaded in models]
    if rank != 0:
        return None
    subpixels = np.array([image.size for image in images])
    for loaded, (row, nll) in zip(models, nll_rows):
        rows.append(row)
        per_image[row["method"]] = nll
        log(f"{row['method']}: {row['bits_per_subpixel']:.4f} bits/subpixel (NLL), {row['eval_images_per_s']:.3g} images/s")
        if not isinstance(loaded.model, PixelSNAIL):  # no integer twin: a float stream coded in-process
            if coded and not whole:
                row = _beside_nll(_in_process_row(loaded, array[:coded], opts, n), nll, subpixels)
                rows.append(row)
                log(f"{row['method']}: {row['bits_per_subpixel']:.4f} bits/subpixel over {coded} images")
            elif whole:
                note = (f"{loaded.name}: no coded row: {type(loaded.model).__name__} codes in-process sets of "
                        "same-sized images, not a folder's whole images (--crop measures crops)")
                notes.append(note)
                log(note)
            continue
        # the encoder's calibration runs on the CPU
        loaded = LoadedModel(loaded.name, loaded.model_id, loaded.metadata, loaded.config, model=cpu_model(loaded.model))
        if coded:
            encode = _files if whole else _one_tile_files  # whole: as `snailcompress encode` writes them
            row, values = _per_file_row(loaded, images[:coded], opts, n, encode)
            rows.append(_beside_nll(row, nll, subpixels))
            per_image[row["method"]] = values
            log(f"{row['method']}: {row['bits_per_subpixel']:.4f} bits/subpixel over {coded} files")
        if not whole:
            row = _beside_nll(_one_stream_row(loaded, array, opts), nll, subpixels)
            rows.append(row)
            log(f"{row['method']}: {row['bits_per_subpixel']:.4f} bits/subpixel over {n} images")

    jobs = [(codec, mosaic) for codec in codecs for mosaic in ((False,) if whole else (False, True))]
    for codec, mosaic in progress_bar(jobs, desc="codecs", unit="run", enabled=opts.progress, leave=False):
        result = bench_codecs.measure(codec, images, mosaic=mosaic)
        rows.append({**result.as_row(), "coding": "mosaic" if mosaic else "per file"})
        if not mosaic:
            per_image[codec.name] = result.per_image_bits_per_subpixel

    table = pd.DataFrame.from_records(_with_model_columns(rows, models))
    table["dataset"] = opts.dataset
    paper = paper_rows(opts.dataset)
    if len(paper):
        table = pd.concat([table, paper], ignore_index=True) if len(table) else paper
    if not len(table):
        table = pd.DataFrame(columns=["method", "kind", "bits_per_subpixel", "images"])

    meta = default_meta(
        dataset=opts.dataset, images=n, argv=opts.argv,
        split=split, image_shape=_shape(images), whole_images=whole,
        **machine_facts(), models=[m.name for m in models], model_ids=[m.model_id for m in models],
        codecs=[c.name for c in codecs], coded_files=coded, **({} if whole else {"chunk": opts.chunk}),
        processes=world,
    )
    if notes:
        meta["notes"] = notes
    out = Path(opts.out)
    write_report(out, table, per_image, meta)
    return BenchResult(table, per_image, meta, out, notes)
