"""What the CLI and users call: encode and decode images and .snail files, choose the models.

    image file ─► images.read_image ─► planes (RGB | L | A | P) ─► one model per plane, calibrated
              for it where that pays (codec/calibration.py) ─► coder ─► container.write ─► .snail
              (written to a temporary file, then renamed)

Each plane is coded by the model for its channel count: RGB by a 3-channel model, L, A and P (palette
indices) by a 1-channel one. Decoding checks everything exactness depends on before it starts and
the pixel checksum after it ends: a file either decodes to the original pixels or fails loudly.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import constriction
import numpy as np
import torch

from .codec import container
from .codec.adaptation import Adaptation, AdaptingModelTables
from .codec.calibration import Calibration, calibrated, calibration_for
from .codec.coder import FloatModelTables, code_plane, decode_plane
from .codec.images import SUPPORTED_MODES, DecomposedImage, pixel_checksum, read_image, write_image
from .codec.tiles import WindowPlan
from .errors import ChannelCountError, ExactnessError, FormatError, ModelError
from .fileio import atomic_write
from .zoo import LoadedModel, default_model_for, load_model

DEFAULT_TILE = 32
DEFAULT_CONTEXT = 2
BAND_SLOTS = 96  # see context_band
PLANE_CHANNELS = {"RGB": 3, "L": 1, "A": 1, "P": 1}


def environment() -> dict[str, str]:
    """What float decoding needs to be identical to encoding, besides the thread count."""
    facts = {
        "provider": "float32-cpu-incremental",
        "device": "cpu",
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "blas": "mkl" if torch.backends.mkl.is_available() else "other",
        "constriction": getattr(constriction, "__version__", "unknown"),
        "numpy": np.__version__,
    }
    return {key: str(value) for key, value in facts.items()}


def environment_digest(env: dict[str, str] | None = None) -> str:
    """16 hex digits identifying `environment()`: stored in every header instead of the whole list."""
    text = json.dumps(env or environment(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def exactness_record(threads: int) -> dict[str, str]:
    return {"env": environment_digest(), "threads": str(threads)}


def check_exactness(recorded: dict[str, str]) -> int:
    """Refuse to decode where the float computation could differ; returns the thread count to use."""
    if recorded.get("env") != environment_digest():
        here = ", ".join(f"{k} {v}" for k, v in environment().items())
        raise ExactnessError(
            f"this file was encoded in another environment (digest {recorded.get('env')}, here "
            f"{environment_digest()}: {here}); float decoding is exact only where the file was made"
        )
    try:
        threads = int(recorded["threads"])
    except (KeyError, ValueError):
        raise ExactnessError("the file does not record the thread count it was encoded with") from None
    if not 1 <= threads <= 1024:
        raise ExactnessError(f"the file records an impossible thread count ({threads})")
    return threads


class ModelChooser:
    """One model per channel count: the user's (--model, any number of times), else the shipped default."""

    def __init__(self, specs: Sequence[str] = ()):
        self.specs = list(specs)
        self._cache: dict[tuple[str, int], LoadedModel] = {}

    def _load(self, spec: str, channels: int) -> LoadedModel:
        key = (spec, channels)
        if key not in self._cache:
            self._cache[key] = load_model(spec, channels=channels)
        return self._cache[key]

    def for_channels(self, channels: int) -> LoadedModel:
        """The first --model that codes this many channels, else the default. A --model that cannot be
        loaded at all (a typo, a damaged file) is an error, not a silent switch to the default."""
        for spec in self.specs:
            try:
                return self._load(spec, channels)
            except ChannelCountError:
                continue  # a model for the other channel count
        return self._load(default_model_for(channels), channels)

    def for_plane(self, plane: container.Plane, channels: int) -> LoadedModel:
        """The model that made this plane: the user's if its id matches, else the one it names."""
        for spec in [*self.specs, plane.model_name]:
            try:
                loaded = self._load(spec, channels)
            except ModelError:
                continue
            if loaded.model_id == plane.model_id:
                return loaded
        raise ModelError(
            f"this file was coded with model {plane.model_name!r} (id {plane.model_id}), which is not available "
            "here with those exact weights; pass it with --model"
        )


@dataclass
class CodingReport:
    source: Path
    target: Path
    width: int
    height: int
    mode: str
    bytes: int
    subpixels: int
    seconds: float

    @property
    def bits_per_subpixel(self) -> float:
        return 8 * self.bytes / self.subpixels


def stored_model_name(name: str) -> str:
    """A model name as a .snail header holds it: no control characters, and at most 100 characters
    (the end of a long path, which says the most)."""
    clean = "".join("?" if ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F or 0xD800 <= ord(ch) <= 0xDFFF else ch
                    for ch in name) or "?"
    limit = container.MAX_MODEL_NAME_CHARS
    return clean if len(clean) <= limit else "..." + clean[3 - limit:]


def context_band(height: int, width: int, tile: int) -> int:
    """Rows of windows per band (codec/tiles.py, WindowPlan): as long as leaves about BAND_SLOTS
    windows coding side by side, and at least 2 (a band of 1 has no context above)."""
    windows = -(-height // tile) * -(-width // tile)
    return max(2, windows // BAND_SLOTS)


def adaptive_band(height: int, tile: int) -> int:
    """One band: the windows then finish in raster order, which adaptation needs (updates on windows
    from several bands at once gained a fifth as much; results/adaptation_bands.md)."""
    return min(-(-height // tile), container.MAX_SIDE)


def table_provider(model: torch.nn.Module, adaptation: Adaptation | None):
    return AdaptingModelTables(model, adaptation) if adaptation else FloatModelTables(model)


def encode_image(image: DecomposedImage, models: ModelChooser, tile: int = DEFAULT_TILE, context: int = DEFAULT_CONTEXT,
                 progress: bool = False, adaptation: Adaptation | None = None,
                 calibrate: bool = True) -> container.SnailFile:
    """`adaptation`: let the model learn the image while coding it (codec/adaptation.py); slower, smaller.
    `calibrate`: fit and send a correction of the model's output layer for each plane where it pays
    (codec/calibration.py); a little slower to encode, no slower to decode."""
    if adaptation and not context:
        raise ValueError("adaptation needs context: without it every tile is coded at once, none after another")
    threads = torch.get_num_threads()
    band = adaptive_band(image.height, tile) if adaptation else context_band(image.height, image.width, tile)
    planes = []
    for name in image.expected_planes():
        pixels = image.planes[name]
        loaded = models.for_channels(PLANE_CHANNELS[name])
        model, calibration = loaded.model, None
        if calibrate:
            plan = WindowPlan.for_image(image.height, image.width, (tile, tile), (context, context), band)
            calibration = calibration_for(model, plan, pixels)
            model = calibrated(model, calibration) if calibration else model
        words, plan = code_plane(table_provider(model, adaptation), pixels, (tile, tile), (context, context), band,
                                 progress)
        planes.append(container.Plane(name, loaded.model_id, stored_model_name(loaded.name), (plan.tile_h, plan.tile_w),
                                      words, (plan.above, plan.left), plan.band,
                                      (adaptation.windows, adaptation.steps, adaptation.lr) if adaptation else None,
                                      calibration.numbers() if calibration else None))
    return container.SnailFile(
        width=image.width, height=image.height, mode=image.mode, planes=tuple(planes),
        pixel_crc32=pixel_checksum(image), exactness=exactness_record(threads), extras=dict(image.extras),
    )


def plane_model(model: torch.nn.Module, plane: container.Plane) -> torch.nn.Module:
    """The model as the plane was coded with it: calibrated if the plane says so."""
    if plane.calibration is None:
        return model
    try:
        return calibrated(model, Calibration(*plane.calibration))
    except ValueError as e:
        raise FormatError(f"plane {plane.channels}: {e}") from None


def decode_image(snail: container.SnailFile, models: ModelChooser, progress: bool = False) -> DecomposedImage:
    if snail.mode not in SUPPORTED_MODES:  # the format has room for modes (PA) this version never writes
        raise FormatError(f"this file holds a mode {snail.mode} image, which this version of snailcompress cannot decode")
    threads = check_exactness(snail.exactness)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        planes = {}
        for plane in snail.planes:
            channels = PLANE_CHANNELS[plane.channels]
            model = plane_model(models.for_plane(plane, channels).model, plane)
            adaptation = Adaptation(*plane.adaptation) if plane.adaptation else None
            planes[plane.channels] = decode_plane(
                table_provider(model, adaptation), plane.words, snail.height, snail.width, channels, plane.tile,
                plane.context, plane.band, progress,
            )
    finally:
        torch.set_num_threads(previous)
    image = DecomposedImage(snail.mode, snail.width, snail.height, planes, dict(snail.extras))
    if pixel_checksum(image) != snail.pixel_crc32:
        raise FormatError("decoded pixels do not match the stored checksum: the file is corrupt")
    return image


def default_output(source: Path, suffix: str) -> Path:
    return source.with_name(source.name + suffix) if source.suffix == suffix else source.with_suffix(suffix)


def encode_file(source, target=None, models: ModelChooser | None = None, tile: int = DEFAULT_TILE,
                context: int = DEFAULT_CONTEXT, force: bool = False, progress: bool = False,
                adaptation: Adaptation | None = None, calibrate: bool = True) -> CodingReport:
    source = Path(source)
    target = Path(target) if target else default_output(source, ".snail")
    start = time.perf_counter()
    image = read_image(source)
    data = container.write(encode_image(image, models or ModelChooser(), tile, context, progress, adaptation, calibrate))
    atomic_write(target, data, overwrite=force)
    subpixels = sum(p.size for p in image.planes.values())
    return CodingReport(source, target, image.width, image.height, image.mode, len(data), max(subpixels, 1),
                        time.perf_counter() - start)


def decode_file(source, target=None, models: ModelChooser | None = None, force: bool = False,
                progress: bool = False) -> CodingReport:
    source = Path(source)
    target = Path(target) if target else (source.with_suffix(".png") if source.suffix == ".snail" else Path(f"{source}.png"))
    start = time.perf_counter()
    try:
        data = source.read_bytes()
    except OSError as e:
        raise FormatError(f"{source}: cannot read ({e.strerror})") from None
    snail = container.read(data)
    image = decode_image(snail, models or ModelChooser(), progress)
    write_image(image, target, overwrite=force)
    subpixels = sum(p.size for p in image.planes.values())
    return CodingReport(source, target, image.width, image.height, image.mode, len(data), max(subpixels, 1),
                        time.perf_counter() - start)
