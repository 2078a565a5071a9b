"""What the CLI and users call: encode and decode images and .snail files, choose the models.

    image file ─► images.read_image ─► planes (RGB | L | A | P) ─► one model per plane, calibrated
              for it where that pays (codec/calibration.py) ─► coder ─► container.write ─► .snail
              (written to a temporary file, then renamed)

Each plane is coded by the model for its channel count: RGB by a 3-channel model, L, A and P (palette
indices) by a 1-channel one, converted to the integer network (integer/network.py) with the plane's
calibration folded in: its tables are the same on every machine, so a file decodes anywhere, with
any thread count. Decoding checks the arithmetic version and the model before it starts and the
pixel checksum after it ends: a file either decodes to the original pixels or fails loudly.
"""

from __future__ import annotations

import glob
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .codec import container, methods
from .codec.calibration import Calibration, calibration_for, worth_trying
from .codec.coder import code_plane, code_planes, decode_planes
from .codec.images import (SUPPORTED_MODES, DecomposedImage, pixel_checksum, png_bytes, read_image, read_image_bytes,
                           write_image)
from .codec.tiles import WindowPlan, default_band
from .errors import ChannelCountError, FormatError, ModelError, SnailError, UsageError
from .integer.arithmetic import ARITHMETIC_VERSION
from .integer.network import MAX_WINDOW_POSITIONS, IntegerPixelSNAIL
from .fileio import atomic_write, write_stream
from .lazy import torch
from .models.presets import PRESETS
from .zoo import LoadedModel, default_model_for, load_model, shipped_models

DEFAULT_TILE = 32
DEFAULT_CONTEXT = 2
CHANNEL_COUNT = {"RGB": 3, "L": 1, "A": 1, "P": 1}  # of each kind of plane (container.PLANE_CHANNELS)


def resolve_device(name: str = "auto") -> str:
    """--device, as a device's name: "auto" is CUDA where a GPU is present, else the CPU. Files are
    the same on every device (the integer network's arithmetic is exact on each), so this only
    chooses speed. The CPU needs no torch: "auto" asks torch only where a GPU driver is present."""
    if name == "cpu" or (name == "auto" and not _gpu_driver_present()):
        return "cpu"
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {name}: not a device here (auto, cpu, cuda, cuda:N)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: this machine has no CUDA GPU that torch can use")
    return "cpu" if device.type == "cpu" else str(device)


def _gpu_driver_present() -> bool:
    """Whether torch might find a GPU here, without importing torch: on Linux, only where an NVIDIA
    (or ROCm, or WSL2's) driver's files are; never on macOS, where torch has no CUDA; elsewhere, perhaps."""
    if sys.platform.startswith("linux"):  # /dev/dxg: a GPU under WSL2
        return (os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/kfd")
                or os.path.exists("/dev/dxg") or bool(glob.glob("/dev/nvidia[0-9]*")))
    return sys.platform != "darwin"


class ModelChooser:
    """One model per channel count: the user's (--model, one for RGB and one for grayscale), else the
    shipped default. The integer networks it gives run on `device`. `names`: whether a file records the name of a model
    that is not shipped (the --model given, often a path) beside its id, so that decoding finds it
    there where it can and names it where it cannot; False (encode -n): the id alone, as on any other
    machine, and no local path in the file."""

    def __init__(self, specs: Sequence[str] = (), device: str | torch.device = "cpu", names: bool = True):
        self.specs = list(specs)
        self.device = str(device)
        self.names = names
        self._cache: dict[tuple[str, int], LoadedModel | ModelError] = {}
        self._networks: dict[str, IntegerPixelSNAIL] = {}
        self._lock = threading.RLock()  # threads sharing a chooser load each model once

    def _load(self, spec: str, channels: int) -> LoadedModel:
        """The model, loaded once; a model that cannot be had for this channel count fails once too
        (for_plane tries the shipped models in turn for every plane of every file)."""
        key = (spec, channels)
        with self._lock:
            if key not in self._cache:
                try:
                    self._cache[key] = load_model(spec, channels=channels)
                except ModelError as e:
                    self._cache[key] = e
            found = self._cache[key]
        if isinstance(found, ModelError):
            raise found.with_traceback(None)
        return found

    def for_channels(self, channels: int) -> LoadedModel:
        """The --model that codes this many channels, else the default. A model file codes one channel
        count; a preset (untrained: for tests) codes any, and is taken only where no file fits. A
        --model that cannot be loaded at all (a typo, a damaged file) is an error, not a silent switch
        to the default; so are two files, or two presets, for the same channels (which one would code
        the plane is no guess to leave)."""
        files, presets = [], []
        for spec in dict.fromkeys(self.specs):  # each once, in order
            try:
                (presets if spec in PRESETS else files).append(self._load(spec, channels))
            except ChannelCountError:
                continue  # a model for the other channel count
        fitting = files or presets
        if len(fitting) > 1:
            raise UsageError(f"--model {fitting[0].name} and --model {fitting[1].name} both code {channels}-channel "
                             "planes: give one model for RGB and one for grayscale")
        return fitting[0] if fitting else self._load(default_model_for(channels), channels)

    def network(self, loaded: LoadedModel, calibration: Calibration | None = None) -> IntegerPixelSNAIL:
        """The integer network the codec runs for a loaded model: converted once per model, except
        where a plane's calibration is folded into it."""
        if calibration is not None:
            return integer_network(loaded, calibration).to(self.device)
        with self._lock:
            if loaded.model_id not in self._networks:
                self._networks[loaded.model_id] = integer_network(loaded).to(self.device)
            return self._networks[loaded.model_id]

    def stored_name(self, loaded: LoadedModel) -> str | None:
        """The model's name as a file records it (`names`); none for a shipped model, which its id finds."""
        return stored_model_name(loaded.name) if self.names and loaded.name not in shipped_models() else None

    def for_plane(self, plane: container.Plane, channels: int) -> LoadedModel:
        """The model that made this plane: the user's if its id matches, else the one it names. A
        --model that cannot be loaded at all (a typo, a damaged file) is an error, as in for_channels;
        one for the other channel count is passed over."""
        user = set(self.specs)
        for spec in [*self.specs, *([plane.model_name] if plane.model_name else []), *shipped_models()]:
            try:
                loaded = self._load(spec, channels)
            except ChannelCountError:
                continue
            except ModelError:
                if spec in user:
                    raise
                continue
            if loaded.model_id.startswith(plane.model_id):
                return loaded
        named = f"model {plane.model_name!r} (id {plane.model_id})" if plane.model_name else f"the model with id {plane.model_id}"
        raise ModelError(f"this file was coded with {named}, which is not available here with those exact weights; "
                         "pass it with --model (snailcompress models lists the ids of the shipped ones)")


@dataclass
class CodingReport:
    source: Path
    target: Path | None  # None: a file tested (decode --test), nothing written
    width: int
    height: int
    mode: str
    bytes: int
    seconds: float  # the batch's time over its files, where several were coded together
    batch: int = 1  # files coded together with this one, itself included

    @property
    def bits_per_subpixel(self) -> float:
        """Over every channel of every pixel of the image, a constant alpha or a palette's index included."""
        from PIL import Image

        return 8 * self.bytes / max(self.width * self.height * Image.getmodebands(self.mode), 1)


def stored_model_name(name: str) -> str:
    """A model name as a .snail header holds it: no control characters, and at most 100 characters
    (the end of a long path, which says the most)."""
    clean = "".join("?" if ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F or 0xD800 <= ord(ch) <= 0xDFFF else ch
                    for ch in name) or "?"
    limit = container.MAX_MODEL_NAME_CHARS
    return clean if len(clean) <= limit else "..." + clean[3 - limit:]


def integer_network(model: LoadedModel | torch.nn.Module, calibration: Calibration | None = None) -> IntegerPixelSNAIL:
    """The network the codec runs: `model` in integers, with the calibration folded into its head;
    a LoadedModel is converted from its weights (without torch), a float PixelSNAIL from its own."""
    try:
        if isinstance(model, LoadedModel):
            return IntegerPixelSNAIL.from_weights(model.config, model.weights, calibration)
        return IntegerPixelSNAIL.convert(model, calibration)
    except ValueError as e:
        raise ModelError(f"this model cannot be coded with exact integer arithmetic: {e}") from None


def encode_images(images: Sequence[DecomposedImage], models: ModelChooser, tile: int = DEFAULT_TILE,
                  context: int = DEFAULT_CONTEXT, progress: bool = False, calibrate: bool = True,
                  fallback: bool = True) -> list[container.SnailFile | SnailError]:
    """Encode many images at once: their planes of one shape and model, not calibrated, are coded
    together, the network's work of all of them in the same passes (coder.code_planes; a calibrated
    plane has a network of its own). Each result is the image's file, or the error it alone gave.

    `calibrate`: fit and send a correction of the model's output layer for each plane where it pays
    (codec/calibration.py); a little slower to encode, no slower to decode. `fallback`: a plane may
    instead be stored, deflated or coded as bilevel where that is smaller (codec/methods.py)."""
    results: list = [None] * len(images)
    coded: list[dict] = [{} for _ in images]  # each image's model-coded planes by name
    together: dict[tuple, list] = {}  # planes that code as one batch
    for index, image in enumerate(images):
        band = default_band(image.height, image.width, (tile, tile), (context, context))
        try:
            plan = WindowPlan.for_image(image.height, image.width, (tile, tile), (context, context), band)
            for name in image.expected_planes():
                pixels = image.planes[name]
                if fallback and not methods.model_may_win(pixels):  # a bilevel plane
                    continue
                loaded = models.for_channels(CHANNEL_COUNT[name])
                if plan.positions > MAX_WINDOW_POSITIONS:
                    raise UsageError(f"--tile {tile} with --context {context} makes {plan.win_h}x{plan.win_w} windows of "
                                     f"{plan.positions:,} pixels on this image; the model's exact arithmetic takes at "
                                     f"most {MAX_WINDOW_POSITIONS:,} (a tile and its context at most 255 pixels a side)")
                if calibrate and worth_trying(loaded.config, pixels):
                    calibration, kept = calibration_for(loaded.config, loaded.weights, plan, pixels, models.network(loaded))
                    words = code_plane(models.network(loaded, calibration), pixels, (tile, tile), (context, context),
                                       band, progress, kept=kept)[0]
                    coded[index][name] = _model_plane(name, loaded, models, words, tile, context, band, calibration)
                else:
                    together.setdefault((loaded.model_id, pixels.shape, band), []).append((index, name, loaded))
        except SnailError as e:
            results[index] = e
    for (_, _, band), members in together.items():
        members = [m for m in members if results[m[0]] is None]
        if not members:
            continue
        try:
            net = models.network(members[0][2])
        except ModelError as e:  # each image it would have coded fails alone, as if coded alone
            for index, _, _ in members:
                results[index] = e
            continue
        planes = [images[index].planes[name] for index, name, _ in members]
        words, _ = code_planes(net, planes, (tile, tile), (context, context), band, progress)
        for (index, name, loaded), plane_words in zip(members, words):
            coded[index][name] = _model_plane(name, loaded, models, plane_words, tile, context, band)
    for index, image in enumerate(images):
        if results[index] is None:
            planes = [coded[index].get(name) for name in image.expected_planes()]
            results[index] = methods.smallest(image, planes, ARITHMETIC_VERSION, fallback)
    return results


def _model_plane(name: str, loaded: LoadedModel, models: ModelChooser, words, tile: int, context: int, band: int,
                 calibration: Calibration | None = None) -> container.Plane:
    return container.Plane(name, loaded.model_id[:8], words, models.stored_name(loaded), (tile, tile),
                           (context, context), band, calibration.numbers() if calibration else None)


def encode_image(image: DecomposedImage, models: ModelChooser, tile: int = DEFAULT_TILE, context: int = DEFAULT_CONTEXT,
                 progress: bool = False, calibrate: bool = True, fallback: bool = True) -> container.SnailFile:
    """One image's .snail file (encode_images)."""
    result = encode_images([image], models, tile=tile, context=context, progress=progress, calibrate=calibrate,
                           fallback=fallback)[0]
    if isinstance(result, SnailError):
        raise result
    return result


def plane_calibration(plane: container.Plane) -> Calibration | None:
    if plane.calibration is None:
        return None
    try:
        return Calibration(*plane.calibration)
    except ValueError as e:
        raise FormatError(f"plane {plane.channels}: {e}") from None


def _check_decodable(snail: container.SnailFile) -> None:
    if snail.mode not in SUPPORTED_MODES:  # the format has room for modes (PA) this version never writes
        raise FormatError(f"this file holds a mode {snail.mode} image, which this version of snailcompress cannot decode")
    if snail.arithmetic not in (None, ARITHMETIC_VERSION):  # None: no plane is the model's
        raise FormatError(f"this file was coded with integer arithmetic version {snail.arithmetic}; this release "
                          f"of snailcompress has version {ARITHMETIC_VERSION} only")
    for plane in snail.planes:
        if plane.method == "model":
            plan = WindowPlan.for_image(snail.height, snail.width, plane.tile, plane.context, plane.band)
            if plan.positions > MAX_WINDOW_POSITIONS:
                raise FormatError(f"plane {plane.channels}: its windows of {plan.positions:,} pixels are larger than the "
                                  f"model's exact arithmetic allows ({MAX_WINDOW_POSITIONS:,}): no encoder writes them")


def decode_images(snails: Sequence[container.SnailFile], models: ModelChooser,
                  progress: bool = False) -> list[DecomposedImage | SnailError]:
    """Decode many files at once: model-coded planes of one shape, model and coding decode together,
    their steps shared (many small files decode many times faster than one by one). Each result is
    the file's image, or the error that file alone gave."""
    results: list = [None] * len(snails)
    planes: list[dict] = [{} for _ in snails]
    together: dict[tuple, list] = {}  # planes that decode as one batch
    for index, snail in enumerate(snails):
        try:
            _check_decodable(snail)
            for plane in snail.planes:
                if plane.method != "model":
                    planes[index][plane.channels] = methods.decode_plane(snail, plane)
                    continue
                loaded = models.for_plane(plane, CHANNEL_COUNT[plane.channels])
                coding = (snail.height, snail.width, CHANNEL_COUNT[plane.channels], plane.tile, plane.context, plane.band)
                alone = None if plane.calibration is None else (index, plane.channels)  # its own network
                together.setdefault((loaded.model_id, alone, coding), []).append((index, plane, loaded))
        except SnailError as e:
            results[index] = e
    for (_, _, coding), members in together.items():
        members = [m for m in members if results[m[0]] is None]
        if not members:
            continue
        first = members[0][1]
        try:
            net = models.network(members[0][2], plane_calibration(first))
        except (ModelError, FormatError) as e:
            error = FormatError(f"plane {first.channels}: {e}")
            for index, _, _ in members:
                results[index] = error
            continue
        decoded = decode_planes(net, [plane.words for _, plane, _ in members], *coding, progress=progress)
        for (index, plane, _), result in zip(members, decoded):
            if isinstance(result, SnailError):
                results[index] = result
            else:
                planes[index][plane.channels] = result
    for index, snail in enumerate(snails):
        if results[index] is None:
            image = DecomposedImage(snail.mode, snail.width, snail.height, planes[index], dict(snail.extras))
            results[index] = image if pixel_checksum(image) == snail.pixel_crc32 else FormatError(
                "decoded pixels do not match the stored checksum: the file is corrupt")
    return results


def decode_image(snail: container.SnailFile, models: ModelChooser, progress: bool = False) -> DecomposedImage:
    result = decode_images([snail], models, progress)[0]
    if isinstance(result, SnailError):
        raise result
    return result


def standard_input() -> bytes:
    """All of standard input (`-`); UsageError where the command was started with it closed."""
    if sys.stdin is None:
        raise UsageError("standard input is closed")
    return sys.stdin.buffer.read()


def default_output(source: Path, suffix: str) -> Path:
    """Where `encode` writes a file's .snail by default: x.png -> x.snail, x.snail -> x.snail.snail; a
    path with no name (".", "/": directories, which reading then refuses) its text + suffix."""
    if not source.name:
        return Path(f"{source}{suffix}")
    return source.with_name(source.name + suffix) if source.suffix == suffix else source.with_suffix(suffix)


def decoded_output(source: Path) -> Path:
    """Where `decode` writes a file's image by default: x.snail -> x.png, anything else -> its name + .png."""
    return source.with_suffix(".png") if source.suffix == ".snail" else Path(f"{source}.png")


def encode_bytes(image: DecomposedImage, models: ModelChooser | None = None, tile: int = DEFAULT_TILE,
                 context: int = DEFAULT_CONTEXT, progress: bool = False, calibrate: bool = True) -> bytes:
    """The .snail file of an image, as bytes."""
    return container.write(encode_image(image, models or ModelChooser(), tile, context, progress, calibrate))


def encode_file(source, target=None, models: ModelChooser | None = None, tile: int = DEFAULT_TILE,
                context: int = DEFAULT_CONTEXT, force: bool = False, progress: bool = False,
                calibrate: bool = True, stdout=None) -> CodingReport:
    """Encode an image file (source "-": standard input) to `target`, or to `stdout` (a binary stream)."""
    report = next(encode_files([(source, target)], models, tile, context, force, progress, calibrate, stdout))
    if isinstance(report, SnailError):
        raise report
    return report


ENCODE_BATCH_PIXELS = 1 << 20  # pixels of the files encode_files codes together: a thousand 32x32, two photos


def encode_files(jobs: Sequence[tuple], models: ModelChooser | None = None, tile: int = DEFAULT_TILE,
                 context: int = DEFAULT_CONTEXT, force: bool = False, progress: bool = False, calibrate: bool = True,
                 stdout=None, make_directories: bool = False):
    """Encode image files (source "-": standard input) to their targets (None: the default name), or
    to `stdout`, many together (encode_images), in batches of about ENCODE_BATCH_PIXELS; `jobs` are
    (source, target). Yields, in order, each file's report or its error; the time a report gives is
    its share of its batch's. A progress bar (`progress`) is shown for a single file only.
    `make_directories`: a target's directory that is not there is created when its file is written."""
    models = models or ModelChooser()
    jobs = list(jobs)

    def read(source):
        image = read_image_bytes(standard_input()) if str(source) == "-" else read_image(Path(source))
        return image, image.width * image.height

    for batch, start in _in_batches(jobs, read, ENCODE_BATCH_PIXELS):
        yield from _encode_and_write(batch, start, models, tile, context, force, progress and len(jobs) == 1,
                                     calibrate, stdout, make_directories)


def _in_batches(jobs: list[tuple], read, limit: int):
    """The jobs (source, target), each with what read(source) gives (an item, and its pixels) or the
    SnailError it raised, in batches of about `limit` pixels: yields each batch, a list of (source,
    target, item or error), and when its first read began (encode_files, decode_files)."""
    batch: list = []
    pixels = 0  # of the batch's items
    for index, (source, target) in enumerate(jobs):
        if not batch:
            start = time.perf_counter()
        try:
            item, size = read(source)
        except SnailError as e:
            item, size = e, 0
        batch.append((source, target, item))
        pixels += size
        if pixels >= limit or index == len(jobs) - 1:
            yield batch, start
            batch, pixels = [], 0


def _encode_and_write(batch: list, start: float, models: ModelChooser, tile: int, context: int, force: bool,
                      progress: bool, calibrate: bool, stdout, make_directories: bool):
    """encode_files for one batch (read since `start`): encode its images together, then write each, in order."""
    readable = [image for _, _, image in batch if not isinstance(image, SnailError)]
    snails = iter(encode_images(readable, models, tile, context, progress, calibrate))
    seconds = (time.perf_counter() - start) / max(len(readable), 1)
    for source, target, image in batch:
        snail = image if isinstance(image, SnailError) else next(snails)
        try:
            if isinstance(snail, SnailError):
                raise snail
            data = container.write(snail)
            if stdout is not None:
                write_stream(stdout, data)
                target = Path("-")
            else:
                target = Path(target) if target else default_output(Path(source), ".snail")
                atomic_write(target, data, overwrite=force, make_directories=make_directories)
        except SnailError as e:
            yield e
            continue
        yield CodingReport(Path(source), target, image.width, image.height, image.mode, len(data), seconds, len(readable))


DECODE_BATCH_PIXELS = 1 << 22  # pixels of the files decode_files decodes together (memory: their images)


def decode_files(jobs: Sequence[tuple], models: ModelChooser | None = None, force: bool = False, progress: bool = False,
                 stdout=None, test: bool = False, make_directories: bool = False):
    """Decode .snail files (source "-": standard input) to image files, or to `stdout` as PNG, many
    together (decode_images), in batches of about DECODE_BATCH_PIXELS; `jobs` are (source, target or
    None for the default name). `test`: decode and check each against its checksum, write nothing
    (reports' target None). Yields, in order, each file's report or its error; the time a report
    gives is its share of its batch's. `make_directories`: as encode_files'."""
    models = models or ModelChooser()

    def read(source):
        if str(source) == "-":
            data = standard_input()
        else:
            try:
                data = Path(source).read_bytes()
            except OSError as e:
                raise FormatError(f"{source}: cannot read ({e.strerror})") from None
        snail = container.read(data)
        return (snail, len(data)), snail.width * snail.height

    for batch, start in _in_batches(list(jobs), read, DECODE_BATCH_PIXELS):
        yield from _decode_and_write(batch, start, models, force, progress, stdout, test, make_directories)


def _decode_and_write(batch: list, start: float, models: ModelChooser, force: bool, progress: bool, stdout,
                      test: bool = False, make_directories: bool = False):
    """decode_files for one batch (read since `start`), (source, target, (file, its bytes) or error):
    decode its files together, then write each (unless `test`), in order."""
    snails = [item[0] for _, _, item in batch if not isinstance(item, SnailError)]
    images = iter(decode_images(snails, models, progress))
    seconds = (time.perf_counter() - start) / max(len(snails), 1)
    for source, target, item in batch:
        image, size = (item, 0) if isinstance(item, SnailError) else (next(images), item[1])
        try:
            if isinstance(image, SnailError):
                raise image
            if test:
                target = None
            elif stdout is not None:
                write_stream(stdout, png_bytes(image))
                target = Path("-")
            else:
                target = Path(target) if target else decoded_output(Path(source))
                write_image(image, target, overwrite=force, make_directories=make_directories)
        except SnailError as e:
            yield e
            continue
        yield CodingReport(Path(source), target, image.width, image.height, image.mode, size, seconds, len(snails))


def decode_file(source, target=None, models: ModelChooser | None = None, force: bool = False,
                progress: bool = False, stdout=None) -> CodingReport:
    """Decode a .snail file (source "-": standard input) to an image file, or to `stdout` as PNG."""
    result = next(decode_files([(source, target)], models, force, progress, stdout))
    if isinstance(result, SnailError):
        raise result
    return result
