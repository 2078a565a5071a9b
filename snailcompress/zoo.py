"""Finding, saving and loading models: presets, shipped weights, training checkpoints.

A model file is one safetensors file holding the weights and, in its metadata, the model config
(JSON) and free-form facts about how it was made; nothing in it is ever unpickled. A training
checkpoint directory holds such a file for the EMA weights (`ema.safetensors`, the ones used to
evaluate, sample and code), so `--model RUN_DIR` works wherever a model is expected.

A model is identified by `model_id`: a hash of its config and of every tensor's bytes, so that a
.snail file can name the exact weights it needs. A model file is read with numpy: its id, and the
integer network the codec runs (integer/network.py), come without torch, whose import is most of a
coding command's start-up; the torch module is built when something first asks for it
(`LoadedModel.model`). Importing this module does not import torch.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import threading
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np
from safetensors import SafetensorError, safe_open

from .errors import ChannelCountError, ModelError
from .fileio import atomic_path
from .models.configs import PixelSNAILConfig
from .models.presets import PRESETS, build, build_from_config, config_from_dict

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

WEIGHTS_DIR = Path(str(resources.files("snailcompress") / "weights"))

# Shipped models, by role: the codec picks one per image plane when no --model is given.
DEFAULT_MODELS = {"rgb": "snail-rgb", "gray": "snail-gray"}


class LoadedModel:
    """A model: its config, its float32 weights as numpy arrays (by parameter name) and, built from
    them on first use, the torch module (in eval mode, on the device it was loaded for)."""

    def __init__(self, name: str, model_id: str, metadata: dict, config, weights: dict[str, np.ndarray] | None = None,
                 model: nn.Module | None = None, device: str | torch.device = "cpu"):
        self.name = name  # what the user called it, or the shipped name
        self.model_id = model_id  # 16 hex digits identifying config + weights
        self.metadata, self.config = metadata, config
        self._weights, self._model, self._device = weights, model, device
        self._lock = threading.Lock()

    @property
    def channels(self) -> int:
        return self.config.channels

    @property
    def weights(self) -> dict[str, np.ndarray]:
        if self._weights is None:
            from .integer.network import module_weights

            self._weights = module_weights(self.model)
        return self._weights

    @property
    def model(self) -> nn.Module:
        with self._lock:
            if self._model is None:
                import torch

                with torch.device("meta"):  # shapes only, no memory: a config may claim any size
                    expected = {name: tuple(t.shape) for name, t in build_from_config(self.config).state_dict().items()}
                difference = _first_difference(expected, {name: a.shape for name, a in self._weights.items()})
                if difference:
                    raise ModelError(f"{self.name}: weights do not match the config: {difference}")
                model = build_from_config(self.config)
                model.load_state_dict({name: torch.from_numpy(a) for name, a in self._weights.items()})
                self._model = model.eval().to(self._device)
            return self._model


def _weights_id(config: dict, tensors: Iterable[tuple[str, str, tuple[int, ...], bytes]]) -> str:
    """16 hex digits of SHA-256 over the config and every tensor (name, dtype, shape, bytes) in name order."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for name, dtype, shape, data in sorted(tensors, key=lambda t: t[0]):
        digest.update(f"{name}:{dtype}:{shape}".encode())
        digest.update(data)
    return digest.hexdigest()[:16]


def model_id(model: nn.Module) -> str:
    """The id of a model's config and weights (its state dict), as a .snail file names it."""
    import torch

    tensors = []
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        tensors.append((name, str(t.dtype), tuple(t.shape), t.view(torch.uint8).numpy().tobytes() if t.numel() else b""))
    return _weights_id(model.config.to_dict(), tensors)


def describe_model_file(path: str | Path) -> tuple[str, int]:
    """(model_id, parameter count) of a model file, read with numpy, without torch."""
    config, arrays, _ = _read_model_file(Path(path))
    return _file_id(config, arrays), sum(a.size for a in arrays.values())


def _file_id(config, arrays: dict[str, np.ndarray]) -> str:
    """The model_id of a model read from a file: the models hold float32 parameters only (no
    buffers), which the torch module's state dict gives as the file's tensors in float32."""
    tensors = ((name, "torch.float32", a.shape, a.tobytes()) for name, a in arrays.items())
    return _weights_id(config.to_dict(), tensors)


def save_model(model: nn.Module, path: str | Path, **facts) -> Path:
    """Write weights + config (+ facts such as training data, steps, bits/dim) atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    metadata = {"config": json.dumps(model.config.to_dict()), "facts": json.dumps(facts, default=str)}
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
        os.chmod(tmp, 0o644)  # safetensors writes its files private; a model file is meant to be shared
    return path


def _read_model_file(path: Path) -> tuple[object, dict[str, np.ndarray], dict]:
    """(config, float32 weights by name, facts) of a model file, read with numpy (nothing unpickled).
    The weights of a PixelSNAIL with the paper's ELU are checked against its config here
    (integer/network.py: the layers the codec converts); others when their torch module is built."""
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            arrays = {name: np.ascontiguousarray(f.get_tensor(name), dtype=np.float32) for name in f.keys()}
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise ModelError(f"{path}: not a readable safetensors model file ({e})") from None
    if "config" not in metadata:
        if path.name == "weights.safetensors" and (path.parent / "ema.safetensors").exists():
            raise ModelError(f"{path}: raw weights of a checkpoint saved before they carried their config; the "
                             f"run's model is its EMA weights ({path.parent / 'ema.safetensors'})")
        raise ModelError(f"{path}: no model config in its metadata (not a snailcompress model file)")
    try:
        config = config_from_dict(json.loads(metadata["config"]))
    except json.JSONDecodeError:
        raise ModelError(f"{path}: model config in its metadata is not valid JSON") from None
    except (TypeError, AttributeError, ValueError, ModelError) as e:  # JSON, but not a config's fields or values
        raise ModelError(f"{path}: model config in its metadata is not a model config ({e})") from None
    try:
        facts = json.loads(metadata.get("facts", "{}"))
    except json.JSONDecodeError:
        raise ModelError(f"{path}: the training facts in its metadata are not valid JSON") from None
    if isinstance(config, PixelSNAILConfig) and config.nonlinearity == "elu":  # the layout conversion reads
        from .integer.network import check_weights

        try:
            check_weights(config, arrays)
        except (ValueError, TypeError) as e:  # TypeError: a config field of the wrong type
            raise ModelError(f"{path}: {e}") from None
    return config, arrays, facts


def shipped_models() -> list[str]:
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.safetensors"))


@functools.cache
def _shipped_model_ids() -> dict[str, str]:
    return {describe_model_file(WEIGHTS_DIR / f"{name}.safetensors")[0]: name for name in shipped_models()}


def shipped_model_with_id(model_id: str) -> str | None:
    """The shipped model whose id starts with `model_id` (a file stores the first bytes of an id), or
    None. The shipped files are read and hashed once, at the first call."""
    return next((name for full, name in _shipped_model_ids().items() if full.startswith(model_id)), None)


def _first_difference(expected: dict[str, tuple], got: dict[str, tuple]) -> str | None:
    """The first way a file's tensors (name -> shape) differ from what a config builds, or None."""
    for name, shape in expected.items():
        if name not in got:
            return f"{name} is missing"
        if tuple(got[name]) != shape:
            return f"{name} has shape {tuple(got[name])}, not {shape}"
    extra = next((name for name in got if name not in expected), None)
    return None if extra is None else f"{extra} is none of the config's"


def last_checkpoint(run_dir: Path) -> Path:
    """The directory of a training run's newest checkpoint: the one resuming and `--model RUN_DIR` read."""
    return Path(run_dir) / "checkpoints" / "last"


def resolve_model_path(spec: str | Path) -> Path | None:
    """A file, a checkpoint dir, a run dir (its last checkpoint), or a shipped model name."""
    path = Path(spec)
    candidates = [path, path / "ema.safetensors", last_checkpoint(path) / "ema.safetensors"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    shipped = WEIGHTS_DIR / f"{spec}.safetensors"
    return shipped if shipped.is_file() else None


_PRESET_LOCK = threading.Lock()


def load_model(spec: str | Path, channels: int | None = None, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model by preset name (fixed-seed random weights), shipped name, file or directory. A
    file is read with numpy; its torch module is built on first use (`LoadedModel.model`)."""
    spec_str = str(spec)
    if spec_str in PRESETS:
        import torch

        with _PRESET_LOCK, torch.random.fork_rng(devices=[]):  # the global generator: one thread at a time
            torch.manual_seed(0)
            model = build(spec_str, channels)
        model.eval().to(device)
        facts = {"note": "untrained preset with fixed-seed random weights"}
        return LoadedModel(spec_str, model_id(model), facts, model.config, model=model, device=device)
    path = resolve_model_path(spec)
    if path is None:
        if (Path(spec) / "checkpoints").is_dir():
            raise ModelError(f"no model in {spec_str}: a training run's directory without a checkpoint yet "
                             f"({last_checkpoint(Path(spec)) / 'ema.safetensors'} is not there)")
        known = ", ".join(shipped_models() + list(PRESETS))
        raise ModelError(f"no model {spec_str!r}: not a file, checkpoint directory or known name ({known})")
    config, arrays, facts = _read_model_file(path)
    if channels is not None and config.channels != channels:
        raise ChannelCountError(f"model {spec_str!r} codes {config.channels}-channel images, not {channels}-channel")
    return LoadedModel(spec_str, _file_id(config, arrays), facts, config, weights=arrays, device=device)


#: the facts of a model file that say what its training cost (train.save_checkpoint writes them)
TRAINING_FACTS = ("step", "images", "elapsed_s", "cpu_s", "device", "processes")


def training_record(spec: str | Path, metadata: dict) -> dict:
    """What training a model cost, as recorded: the TRAINING_FACTS its file has (`metadata`, the
    LoadedModel's), and for a checkpoint saved before they were facts the step, images and wall and
    CPU seconds of the progress in the config.json beside it. {"untrained": True} for a preset;
    {} where nothing is recorded."""
    if str(spec) in PRESETS:
        return {"untrained": True}
    record = {key: metadata[key] for key in TRAINING_FACTS if metadata.get(key) is not None}
    path = resolve_model_path(spec)
    saved = path.parent / "config.json" if path is not None else None
    if saved is not None and saved.is_file():
        try:
            progress = json.loads(saved.read_text()).get("progress") or {}
        except (OSError, ValueError, AttributeError):
            progress = {}
        for key in ("step", "images", "elapsed_s", "cpu_s"):
            if key not in record and progress.get(key) is not None:
                record[key] = progress[key]
    return record


def default_model_for(channels: int) -> str:
    """The shipped model used when no --model is given (a ModelError where it is not installed)."""
    name = DEFAULT_MODELS["rgb" if channels == 3 else "gray"]
    if (WEIGHTS_DIR / f"{name}.safetensors").is_file():
        return name
    raise ModelError(f"no shipped {name} model in this installation; pass --model")
