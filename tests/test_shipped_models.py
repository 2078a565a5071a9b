"""The models that ship inside the package: what `snailcompress encode` uses when no --model is given.

Every other codec test runs an untrained preset; these load the real weights, so they check what a
user gets: trained models (a swapped, truncated or untrained file fails), within the issue's size
limit, with their attribution, coding an image exactly through the default path.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from importlib import resources

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from snailcompress.cli import main
from snailcompress.codec import container
from snailcompress.codec.tiles import WindowPlan
from snailcompress.errors import ModelError
from snailcompress.demo import DEMO_IMAGE
from snailcompress.evaluate import image_log_probs
from snailcompress.zoo import (WEIGHTS_DIR, default_model_for, describe_model_file, load_model, save_model,
                               shipped_model_with_id)

SHIPPED = {"snail-rgb": ("RGB", 3), "snail-gray": ("L", 1)}
TILE = 32


def demo_image(mode: str) -> Image.Image:
    """The demo crop of kodim23, held out from the shipped models' training."""
    with resources.as_file(resources.files("snailcompress") / "assets" / DEMO_IMAGE) as path:
        return Image.open(path).convert(mode)


def png_bits_per_subpixel(image: Image.Image) -> float:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return 8 * buffer.tell() / np.asarray(image).size


def nll_bits_per_subpixel(model: torch.nn.Module, image: Image.Image) -> float:
    """The model's NLL of the image cut into independent TILE x TILE tiles (the codec without context)."""
    plane = np.asarray(image).reshape(image.height, image.width, -1)  # 256x256: whole tiles, no padding
    tiles, _ = WindowPlan.for_image(image.height, image.width, (TILE, TILE), (0, 0)).windows(plane)
    with torch.no_grad():
        nats = image_log_probs(model, torch.from_numpy(tiles)).sum().item()
    return -nats / np.log(2) / plane.size


def test_the_defaults_ship_within_20_mb_with_their_attribution():
    assert default_model_for(3) == "snail-rgb" and default_model_for(1) == "snail-gray"
    assert sum((WEIGHTS_DIR / f"{name}.safetensors").stat().st_size for name in SHIPPED) <= 20 * 10**6
    attribution = (WEIGHTS_DIR / "ATTRIBUTION.md").read_text()
    for name in SHIPPED:
        assert name in attribution
        for held_out in load_model(name).metadata["holdout"]:
            assert held_out in attribution


def test_models_lists_the_shipped_models_without_importing_torch(tmp_path):
    """`snailcompress models` reads the model files with numpy, to answer in well under a second
    (results/cli_startup.md); the ids and parameter counts it prints are load_model's."""
    code = ("import sys\nfrom snailcompress.cli import main\nmain(['models'], standalone_mode=False)\n"
            "print('torch imported' if 'torch' in sys.modules else 'no torch')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.endswith("no torch\n"), out
    for name in SHIPPED:
        loaded = load_model(name)
        parameters = sum(p.numel() for p in loaded.model.parameters())
        assert describe_model_file(WEIGHTS_DIR / f"{name}.safetensors") == (loaded.model_id, parameters)
        assert f"{parameters / 1e6:7.2f}M  id {loaded.model_id}" in out
        assert shipped_model_with_id(loaded.model_id[:8]) == name  # what a file holds of its id
    assert shipped_model_with_id("00000000") is None
    tiny = load_model("pixelsnail-tiny", channels=1)
    saved = save_model(tiny.model, tmp_path / "tiny.safetensors")
    assert describe_model_file(saved) == (load_model(saved).model_id, 77_192)
    assert load_model(saved).model_id == tiny.model_id  # read with numpy, the id torch's state dict gives


def test_a_pixelsnail_with_concat_elu_loads_but_is_not_coded(tmp_path):
    """The weights check is the integer network's layout (the paper's ELU): a concat_elu PixelSNAIL
    file loads for eval and training as before, and only its conversion for coding is refused."""
    from snailcompress import api
    from snailcompress.models.presets import build

    saved = save_model(build("pixelsnail-tiny", 1, nonlinearity="concat_elu"), tmp_path / "concat.safetensors")
    loaded = load_model(saved)
    assert loaded.model.config.nonlinearity == "concat_elu"
    with pytest.raises(ModelError, match="ELU"):
        api.integer_network(loaded)


@pytest.mark.parametrize("config, cause", [('[1, 2]', "cannot convert"),
                                           ('{"architecture": "pixelsnail", "channels": "1"}', "channels must be 1 or 3"),
                                           ('{"architecture": "pixelsnail", "channels": 3.0}', "channels must be 1 or 3"),
                                           ('{"architecture": "pixelsnail", "blocks": 1.5}', "blocks must be a whole number")])
def test_a_model_file_whose_config_is_not_a_config_is_refused(tmp_path, config, cause):
    """Refused as the config is read, for what is wrong with it (not later, by the weights' check)."""
    from safetensors.numpy import save_file

    path = tmp_path / "odd.safetensors"
    save_file({"head.v": np.zeros((1, 1, 1, 1), np.float32)}, str(path), metadata={"config": config})
    with pytest.raises(ModelError, match=f"odd.safetensors: model config in its metadata is not a model config .*{cause}"):
        load_model(path).model


@pytest.mark.parametrize("preset", ["pixelsnail-tiny", "pixelcnnpp-tiny"])
def test_a_model_file_whose_weights_do_not_fit_its_config_is_refused(tmp_path, preset):
    """A PixelSNAIL's weights are checked as the file is read (with numpy: the layers the codec
    converts), another architecture's when its torch module is first built: a ModelError either way."""
    from safetensors.numpy import save_file

    model = load_model(preset, channels=1).model
    tensors = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    tensors["head.v"] = tensors["head.v"][:-1]  # one output too few
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path), metadata={"config": json.dumps(model.config.to_dict())})
    with pytest.raises(ModelError, match="do not match the config: head.v has shape"):  # not torch's heading alone
        load_model(path).model
    huge = dict(model.config.to_dict(), filters=100_000)  # 10^13 parameters: compared before anything is allocated
    save_file(tensors, str(path), metadata={"config": json.dumps(huge)})
    with pytest.raises(ModelError, match="do not match the config: .* has shape"):
        load_model(path).model
    save_file(tensors, str(path), metadata={"config": json.dumps(model.config.to_dict()), "facts": "not json"})
    with pytest.raises(ModelError, match="the training facts in its metadata are not valid JSON"):
        load_model(path)


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_model_is_trained_it_beats_png_on_a_held_out_image(name):
    mode, channels = SHIPPED[name]
    loaded = load_model(name)
    image = demo_image(mode)
    assert loaded.model.config.channels == channels
    assert "kodim23" in loaded.metadata["holdout"]  # the demo crop's source
    # Here an untrained model costs about 10 bits/subpixel, PNG 4.2 (RGB) and 4.3 (gray).
    assert nll_bits_per_subpixel(loaded.model, image) < png_bits_per_subpixel(image)


def test_encode_without_model_round_trips_rgba_through_both_shipped_models(tmp_path, monkeypatch, model_only):
    rgb = np.asarray(demo_image("RGB"))[100:124, 60:100]  # 24x40: two tiles across, one edge tile
    alpha = np.tile(np.linspace(0, 255, 40).astype(np.uint8), (24, 1))
    original = np.dstack([rgb, alpha])
    Image.fromarray(original, "RGBA").save(tmp_path / "a.png")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    assert runner.invoke(main, ["encode", "a.png", "-q"]).exit_code == 0
    assert runner.invoke(main, ["decode", "a.snail", "-o", "b.png", "-q"]).exit_code == 0
    decoded = Image.open(tmp_path / "b.png")
    assert decoded.mode == "RGBA" and np.array_equal(np.asarray(decoded), original)
    planes = container.read((tmp_path / "a.snail").read_bytes()).planes
    assert [p.model_id for p in planes] == [load_model(name).model_id[:8] for name in ("snail-rgb", "snail-gray")]


def test_demo_round_trips_and_keeps_its_files_only_when_asked(tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["demo", "--keep", str(tmp_path / "kept")])
    assert r.exit_code == 0, r.output
    assert "pixels identical to the original" in r.output
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["demo-decoded.png", "demo.snail", DEMO_IMAGE]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "kept" / "demo-decoded.png").convert("RGB")),
                          np.asarray(Image.open(tmp_path / "kept" / DEMO_IMAGE).convert("RGB")))
    # a second demo into the same directory would write over them, a directory holding anything might;
    # a file is no directory (a traceback)
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    for keep, needle in [("kept", "is not empty"), ("other", "is not empty"), ("a-file", "is a file")]:
        again = runner.invoke(main, ["demo", "--keep", str(tmp_path / keep)])
        lines = again.stderr.strip().splitlines()
        assert again.exit_code != 0 and len(lines) == 1 and needle in lines[0], again.output
