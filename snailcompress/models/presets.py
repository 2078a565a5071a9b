"""Named model configurations: the paper's, and smaller ones sized for a CPU.

A preset fixes the architecture; the data decides the channel count (`build(name, channels=1)` gives
the grayscale variant of any preset). Importing this module does not import torch: `snailcompress
models` lists the presets, with their parameter counts, without it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ..errors import ModelError
from .configs import PixelCNNppConfig, PixelSNAILConfig

if TYPE_CHECKING:
    import torch.nn as nn

ModelConfig = PixelSNAILConfig | PixelCNNppConfig
CONFIGS = {"pixelsnail": PixelSNAILConfig, "pixelcnnpp": PixelCNNppConfig}


@dataclass(frozen=True)
class Preset:
    name: str
    config: ModelConfig
    description: str
    parameters: tuple[int, int]  # of the built model with 3 and with 1 channels (tests/test_models.py checks them)


# pixelsnail-small's architecture, also the fair study's PixelSNAIL (pixelsnail-fmnist)
SMALL_PIXELSNAIL = PixelSNAILConfig(filters=64, blocks=4, resnets_per_block=2, value_channels=32, mixtures=10, dropout=0.0)

PRESETS = {
    p.name: p
    for p in [
        Preset(
            "pixelsnail-cifar10",
            PixelSNAILConfig(filters=256, blocks=12, resnets_per_block=4, mixtures=10, dropout=0.5, positions_per_channel=True),
            "the paper's CIFAR-10 model (2.85 bits/dim)",
            (46_180_788, 45_960_248),
        ),
        Preset(
            "pixelsnail-imagenet32",
            PixelSNAILConfig(filters=256, blocks=12, resnets_per_block=4, mixtures=32, dropout=0.0, positions_per_channel=True),
            "the paper's ImageNet 32x32 model (3.80 bits/dim)",
            (46_237_548, 45_977_276),
        ),
        Preset(
            "pixelsnail-small",
            SMALL_PIXELSNAIL,
            "CPU-sized PixelSNAIL: 4 attention blocks of 2 resnets, 64 filters",
            (594_444, 585_488),
        ),
        Preset(
            "pixelsnail-tiny",
            PixelSNAILConfig(filters=32, blocks=2, resnets_per_block=2, value_channels=16, mixtures=5, dropout=0.0),
            "tests and quick experiments",
            (79_718, 77_192),
        ),
        Preset(
            "pixelcnnpp-cifar10",
            PixelCNNppConfig(filters=160, resnets_per_stage=5, mixtures=10, dropout=0.5),
            "PixelCNN++ as in its paper (2.92 bits/dim on CIFAR-10)",
            (53_659_080, 53_644_220),
        ),
        Preset(
            "pixelcnnpp-small",
            PixelCNNppConfig(filters=64, resnets_per_stage=2, mixtures=10, dropout=0.0),
            "CPU-sized PixelCNN++: 2 resnets per stage, 64 filters",
            (3_874_632, 3_868_604),
        ),
        Preset(
            "pixelcnnpp-tiny",
            PixelCNNppConfig(filters=32, resnets_per_stage=1, mixtures=5, dropout=0.0),
            "tests and quick experiments",
            (577_060, 575_166),
        ),
        # The matched pair of the fair Fashion-MNIST study (benchmarks/fair_study.py, results/fair-study/).
        # PixelSNAIL keeps pixelsnail-small's architecture: 585,488 parameters at 1 channel, 14.8
        # training images/s at batch 8 on one thread of the project's 2-core Xeon (about 4.7 epochs in
        # 320 CPU-minutes). PixelCNN++ is pixelcnnpp-small (2 resnets per stage) made narrower until its
        # count came within 10%: 24 filters give 548,364 (-6.3%), 36 images/s. 25 filters would be
        # closer (594,710, +1.6%) but trained 15-20% slower per image than 24 (an odd width vectorises
        # worse on this CPU), so the nearest multiple of 8 was taken: the smaller model is PixelCNN++.
        # Counts from models.layers.count_parameters (the `parameters` below, checked by tests).
        Preset(
            "pixelsnail-fmnist",
            SMALL_PIXELSNAIL,
            "fair study: pixelsnail-small's architecture, matched by pixelcnnpp-fmnist (1 channel: 585,488)",
            (594_444, 585_488),
        ),
        Preset(
            "pixelcnnpp-fmnist",
            PixelCNNppConfig(filters=24, resnets_per_stage=2, mixtures=10, dropout=0.0),
            "fair study: 2 resnets per stage, 24 filters, within 10% of pixelsnail-fmnist (1 channel: 548,364)",
            (550_712, 548_364),
        ),
    ]
}


def config_from_dict(d: dict) -> ModelConfig:
    """Inverse of `config.to_dict()` (as stored in checkpoints)."""
    d = dict(d)
    arch = d.pop("architecture", None)
    if arch not in CONFIGS:
        raise ModelError(f"unknown architecture {arch!r} in model config; known: {', '.join(CONFIGS)}")
    try:
        return CONFIGS[arch](**d)
    except TypeError as e:
        raise ModelError(f"invalid {arch} config: {e}") from None


def build_from_config(config: ModelConfig) -> nn.Module:
    from .pixelcnnpp import PixelCNNpp  # the models import torch: only here, where one is built
    from .pixelsnail import PixelSNAIL

    model_cls = {PixelSNAILConfig: PixelSNAIL, PixelCNNppConfig: PixelCNNpp}[type(config)]
    return model_cls(config)


def preset_config(name: str, channels: int | None = None, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise ModelError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}")
    config = PRESETS[name].config
    if channels is not None:
        overrides["channels"] = channels
    return replace(config, **overrides) if overrides else config


def build(name: str, channels: int | None = None, **overrides) -> nn.Module:
    """A freshly initialised model of preset `name` (weights random until data-dependent init)."""
    return build_from_config(preset_config(name, channels, **overrides))


def parameter_counts(channels: int = 3) -> list[tuple[str, int, str]]:
    """(name, parameter count, description) of every preset, for `snailcompress models` (without torch)."""
    return [(p.name, p.parameters[0 if channels == 3 else 1], p.description) for p in PRESETS.values()]
