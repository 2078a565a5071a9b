"""The models' configurations: plain dataclasses, importable without torch (`snailcompress models`
lists presets and shipped models without loading it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ..errors import ModelError

NONLINEARITIES = ("elu", "concat_elu")


def check_config(config) -> None:
    """Refuse settings no network can be built with (ModelError, one sentence): every count a whole
    number of at least 1, 1 or 3 channels, a dropout in [0, 1), a known nonlinearity. Checked when a
    config is made, so a --set typo or a damaged model file is named before torch sees it."""
    for f in fields(config):
        value = getattr(config, f.name)
        if f.name == "dropout":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1
            need = "a number in [0, 1)"
        elif f.name == "nonlinearity":
            ok, need = value in NONLINEARITIES, f"one of {', '.join(NONLINEARITIES)}"
        elif f.name == "positions_per_channel":
            ok, need = isinstance(value, bool), "true or false"
        elif f.name == "channels":
            ok, need = isinstance(value, int) and not isinstance(value, bool) and value in (1, 3), "1 or 3"
        else:
            ok, need = isinstance(value, int) and not isinstance(value, bool) and value >= 1, "a whole number of at least 1"
        if not ok:
            raise ModelError(f"{f.name} must be {need}, not {value!r}")


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
    # The attention's inputs carry a row and a column position channel; the authors' code broadcasts
    # each over the image's channels (`... + 0. * x`), so an RGB model has three copies of each.
    positions_per_channel: bool = False

    def __post_init__(self) -> None:
        check_config(self)

    @property
    def position_channels(self) -> int:
        """Position channels of the attention's inputs: rows then columns, each once, or once per image
        channel (`positions_per_channel`)."""
        return 2 * (self.channels if self.positions_per_channel else 1)

    def to_dict(self) -> dict:
        """The config as a model file stores it. A setting added after the first model files were
        written appears only where it is not its default, so those files keep their ids (which hash
        this dict: zoo.model_id)."""
        d = asdict(self)
        if not self.positions_per_channel:
            del d["positions_per_channel"]
        return {"architecture": "pixelsnail", **d}


@dataclass(frozen=True)
class PixelCNNppConfig:
    channels: int = 3
    filters: int = 160
    resnets_per_stage: int = 5
    mixtures: int = 10
    dropout: float = 0.5
    nonlinearity: str = "concat_elu"

    def __post_init__(self) -> None:
        check_config(self)

    def to_dict(self) -> dict:
        return {"architecture": "pixelcnnpp", **asdict(self)}
