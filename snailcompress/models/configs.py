"""The models' configurations: plain dataclasses, importable without torch (`snailcompress models`
lists presets and shipped models without loading it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class PixelSNAILConfig:
    channels: int = 3  # 3 for RGB, 1 for grayscale
    filters: int = 256  # F, width of the residual stream
    blocks: int = 12  # attention blocks
    resnets_per_block: int = 4  # gated residual blocks before each attention
    key_channels: int = 16  # "small key"
    value_channels: int = 128  # F/2 in the paper configuration
    mixtures: int = 10  # M logistic components per pixel
    dropout: float = 0.5  # drop probability after the second nonlinearity of every gated block
    nonlinearity: str = "elu"  # "elu" (paper) or "concat_elu" (PixelCNN++ style)

    def to_dict(self) -> dict:
        return {"architecture": "pixelsnail", **asdict(self)}


@dataclass(frozen=True)
class PixelCNNppConfig:
    channels: int = 3
    filters: int = 160
    resnets_per_stage: int = 5
    mixtures: int = 10
    dropout: float = 0.5
    nonlinearity: str = "concat_elu"

    def to_dict(self) -> dict:
        return {"architecture": "pixelcnnpp", **asdict(self)}
