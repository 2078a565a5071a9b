"""PixelSNAIL and PixelCNN++ against the reference (docs/pixelsnail-reference.md sections 1-3 and 5).

Causality, the first pixel, parameter counts, the paper's layer list, data-dependent init and the
incremental stepper. Everything runs on small images with the `-tiny` presets, except the
parameter counts and layer lists, which only build the paper-sized models.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from snailcompress import mixture
from snailcompress.models import presets
from snailcompress.models.layers import (
    DownRightShiftedConv2d,
    DownShiftedConv2d,
    GatedResnet,
    WeightNormConv2d,
    concat_elu,
    count_flops,
    count_parameters,
    data_dependent_init,
)
from snailcompress.models.pixelcnnpp import PixelCNNpp
from snailcompress.models.pixelsnail import (
    PixelSNAIL,
    PixelSNAILConfig,
    positional_background,
    strictly_causal_attention,
)
from snailcompress.models.stepper import PixelSNAILStepper


def random_images(batch: int, channels: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """uint8-valued images (as long) with every value 0..255 possible."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, channels, height, width), generator=generator)


def initialised(name: str, channels: int, height: int, width: int, seed: int = 0, **overrides) -> nn.Module:
    """A preset after data-dependent init on random images, in eval mode."""
    torch.manual_seed(seed)
    model = presets.build(name, channels, **overrides)
    data_dependent_init(model, mixture.to_unit(random_images(8, channels, height, width, seed + 1)))
    return model.eval()


# ---------------------------------------------------------------------------------------------
# Causality


def dependence_matrix(model: nn.Module, channels: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """D[t, s] = sum over input channels of |d out(t) / d x(s)|, t and s in raster order.

    One image is repeated H*W times; copy t back-propagates only the output at position t (all
    mixture parameters, each with its own random weight, so no dependence can cancel out).
    Copies are independent of each other (no batch statistics), so one backward pass suffices.
    """
    n = height * width
    x = mixture.to_unit(random_images(1, channels, height, width, seed + 2)).repeat(n, 1, 1, 1)
    x.requires_grad_(True)
    out = model(x)
    k = out.shape[1]
    assert out.shape == (n, k, height, width)
    weights = torch.randn(k, generator=torch.Generator().manual_seed(seed + 3)) + 3.0  # no weight near 0
    at_t = out.flatten(2)[torch.arange(n), :, torch.arange(n)]  # (n, K): copy t, position t
    (at_t * weights).sum().backward()
    return x.grad.abs().sum(1).flatten(1)  # (n, n)


CAUSALITY_CASES = [
    # (preset, channels, (H, W), overrides, train_mode)
    ("pixelsnail-tiny", 3, (6, 7), {}, False),
    ("pixelsnail-tiny", 1, (6, 7), {}, False),
    ("pixelsnail-tiny", 3, (5, 6), {"nonlinearity": "concat_elu"}, False),
    ("pixelsnail-tiny", 1, (4, 7), {"nonlinearity": "concat_elu"}, False),
    ("pixelsnail-tiny", 3, (6, 5), {"dropout": 0.5}, False),
    ("pixelsnail-tiny", 3, (5, 5), {"dropout": 0.5}, True),  # dropout active: still causal
    ("pixelcnnpp-tiny", 3, (8, 8), {}, False),
    ("pixelcnnpp-tiny", 1, (8, 8), {}, False),
    ("pixelcnnpp-tiny", 3, (8, 12), {"dropout": 0.5}, False),
]


@pytest.mark.parametrize("name,channels,size,overrides,train_mode", CAUSALITY_CASES)
def test_output_at_t_depends_only_on_pixels_before_t(name, channels, size, overrides, train_mode):
    height, width = size
    model = initialised(name, channels, height, width, **overrides)
    model.train(train_mode)
    dep = dependence_matrix(model, channels, height, width)
    n = height * width
    future = torch.ones(n, n, dtype=torch.bool).triu()  # s >= t, the current pixel included
    leaks = dep[future]
    assert torch.all(leaks == 0), f"output depends on {int((leaks != 0).sum())} current/future inputs"
    past = dep.tril(-1)
    for t in range(1, n):
        assert past[t, :t].max() > 0, f"position {t} sees none of the earlier pixels"
    if isinstance(model, PixelSNAIL):
        # The attention gives every position the whole causal context, not only the up-left quadrant
        # of the conv stack: every earlier pixel matters (the reference's strictly-lower mask).
        assert torch.all(past[torch.ones(n, n, dtype=torch.bool).tril(-1)] > 0)


def test_first_position_output_is_a_constant():
    """Position 0 sees no pixel: its parameters are the same for every image."""
    model = initialised("pixelsnail-tiny", 3, 5, 6)
    with torch.no_grad():
        a = model(mixture.to_unit(random_images(3, 3, 5, 6, seed=10)))
        b = model(mixture.to_unit(random_images(3, 3, 5, 6, seed=11)))
    assert torch.equal(a[:, :, 0, 0], b[:, :, 0, 0])
    assert not torch.equal(a[:, :, 0, 1], b[:, :, 0, 1])


# ---------------------------------------------------------------------------------------------
# The first pixel and degenerate shapes


def reference_attention(query, key, value):
    """Attention over strictly previous positions, written out; position 0 gets 0 (reference 2.4)."""
    b, dk, h, w = query.shape
    q, k, v = (t.flatten(2).transpose(1, 2) for t in (query, key, value))  # (B, N, d)
    out = torch.zeros(b, h * w, value.shape[1], dtype=value.dtype)
    for i in range(1, h * w):
        logits = q[:, i : i + 1] @ k[:, :i].transpose(1, 2) / math.sqrt(dk)
        out[:, i] = (torch.softmax(logits, dim=-1) @ v[:, :i])[:, 0]
    return out.transpose(1, 2).reshape(b, -1, h, w)


@pytest.mark.parametrize("size", [(3, 5), (1, 1), (1, 6), (6, 1)])
def test_strictly_causal_attention_first_position_is_zero(size):
    h, w = size
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, d, h, w, generator=g, dtype=torch.float64) * 3 for d in (4, 4, 5))
    for t in (q, k, v):
        t.requires_grad_(True)
    out = strictly_causal_attention(q, k, v)
    assert out.shape == (2, 5, h, w)
    assert torch.isfinite(out).all()
    assert torch.equal(out[:, :, 0, 0], torch.zeros(2, 5, dtype=torch.float64))
    torch.testing.assert_close(out, reference_attention(q, k, v), rtol=1e-10, atol=1e-12)
    out.sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("size", [(1, 1), (1, 5), (5, 1)])
def test_degenerate_image_shapes_give_finite_outputs(channels, size):
    model = initialised("pixelsnail-tiny", channels, 5, 6)
    x = mixture.to_unit(random_images(2, channels, *size, seed=4))
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, mixture.num_params(channels, 5), *size)
    assert torch.isfinite(out).all()
    assert torch.isfinite(mixture.log_prob(x, out)).all()


def test_position_copies_are_stored_only_where_set():
    """Model files written before the setting existed keep their config dict, and so their ids."""
    plain = presets.PRESETS["pixelsnail-small"].config
    paper = presets.PRESETS["pixelsnail-cifar10"].config
    assert paper.positions_per_channel and "positions_per_channel" not in plain.to_dict()
    assert presets.config_from_dict(paper.to_dict()) == paper and presets.config_from_dict(plain.to_dict()) == plain
    assert (plain.position_channels, paper.position_channels, presets.preset_config("pixelsnail-cifar10", 1).position_channels) == (2, 6, 2)


def test_positional_background_is_the_references():
    """Row channel (i - H/2)/H and column channel (j - W/2)/W (not /2 as in one port)."""
    bg = positional_background(4, 5, torch.zeros(1, dtype=torch.float64))
    assert bg.shape == (1, 2, 4, 5)
    for i in range(4):
        for j in range(5):
            assert bg[0, 0, i, j] == (i - 2) / 4 and bg[0, 1, i, j] == (j - 2.5) / 5
    # The authors' code broadcasts each over x's channels: tf.concat([rows + 0. * x, cols + 0. * x], 3).
    tripled = positional_background(4, 5, torch.zeros(1, dtype=torch.float64), copies=3)
    assert torch.equal(tripled, torch.cat([bg[:, :1]] * 3 + [bg[:, 1:]] * 3, dim=1))


# ---------------------------------------------------------------------------------------------
# Parameter counts and layer lists of the paper configurations


@pytest.mark.parametrize(
    "name,expected",
    [("pixelsnail-cifar10", 46.18e6), ("pixelsnail-imagenet32", 46.24e6), ("pixelcnnpp-cifar10", 53.66e6)],
)
def test_parameter_counts_match_the_reference(name, expected):
    rgb = presets.build(name)
    count = count_parameters(rgb)
    assert abs(count - expected) / expected < 0.01, f"{name}: {count / 1e6:.3f}M, reference {expected / 1e6}M"
    m = rgb.config.mixtures
    assert rgb.head.v.shape[0] == 10 * m
    gray = presets.build(name, channels=1)
    assert gray.head.v.shape[0] == 3 * m
    assert count_parameters(gray) < count


def test_flop_count_is_two_per_multiply_add_forward_and_backward():
    """Two 1x1 convs over N = 4 * 5 * 5 positions: 2 * N * (2 * 3 + 3 * 4) forward; a training step adds
    the weights' gradients (as much again) and the activations' gradient between the two convs (the
    input needs none)."""
    model = nn.Sequential(nn.Conv2d(2, 3, 1), nn.Conv2d(3, 4, 1))
    images, positions = torch.rand(4, 2, 5, 5), 4 * 5 * 5
    forward = 2 * positions * (2 * 3 + 3 * 4)
    assert count_flops(model, images, backward=False) == forward
    assert count_flops(model, images) == 2 * forward + 2 * positions * 3 * 4
    assert all(p.grad is None for p in model.parameters())  # counting leaves no gradients behind
    tiny = presets.build("pixelsnail-tiny", channels=1)
    assert count_flops(tiny, torch.rand(2, 1, 8, 8)) == 2 * count_flops(tiny, torch.rand(1, 1, 8, 8))


@pytest.mark.parametrize("name", list(presets.PRESETS))
def test_stored_parameter_counts_are_the_built_models(name):
    """`snailcompress models` prints the counts stored with each preset, to list them without torch."""
    built = tuple(count_parameters(presets.build(name, channels=channels)) for channels in (3, 1))
    assert presets.PRESETS[name].parameters == built, f"{name}: set Preset.parameters to {built}"


def test_paper_pixelsnail_imagenet_differs_from_cifar_only_in_head_and_dropout():
    cifar, imagenet = presets.build("pixelsnail-cifar10"), presets.build("pixelsnail-imagenet32")
    head_params = lambda m: m.head.v.numel() + m.head.g.numel() + m.head.b.numel()  # noqa: E731
    assert count_parameters(imagenet) - count_parameters(cifar) == head_params(imagenet) - head_params(cifar)
    assert (head_params(imagenet) - head_params(cifar)) == (320 - 100) * (256 + 2)


def _convs(module: nn.Module) -> list[WeightNormConv2d]:
    return [m for m in module.modules() if isinstance(m, WeightNormConv2d)]


def _dropouts(module: nn.Module) -> list[float]:
    return [m.p for m in module.modules() if isinstance(m, nn.Dropout)]


@pytest.mark.parametrize("name,mixtures,dropout", [("pixelsnail-cifar10", 10, 0.5), ("pixelsnail-imagenet32", 32, 0.0)])
def test_paper_pixelsnail_layer_list(name, mixtures, dropout):
    model = presets.build(name)
    cfg = model.config
    f = 256
    assert (cfg.filters, cfg.blocks, cfg.resnets_per_block, cfg.key_channels, cfg.value_channels) == (f, 12, 4, 16, 128)
    assert cfg.nonlinearity == "elu" and cfg.mixtures == mixtures and cfg.dropout == dropout

    # Input layer: down-shifted 1x3 and down-right-shifted 2x1 on [x, ones] (3 + 1 channels).
    assert type(model.input_above) is DownShiftedConv2d and model.input_above.v.shape == (f, 4, 1, 3)
    assert type(model.input_left) is DownRightShiftedConv2d and model.input_left.v.shape == (f, 4, 2, 1)

    assert len(model.blocks) == 12
    for block in model.blocks:
        assert len(block.resnets) == 4
        for resnet in block.resnets:
            assert type(resnet.conv_in) is DownRightShiftedConv2d and resnet.conv_in.v.shape == (f, f, 2, 2)
            assert type(resnet.conv_out) is DownRightShiftedConv2d and resnet.conv_out.v.shape == (2 * f, f, 2, 2)
            assert resnet.aux_in is None
        # key/value branch: [x (3), ul (F), background (6: the row and column channels, each broadcast
        # over x's 3 channels by `+ 0. * x`)], one 1x1 gated block, 1x1 to 16 + 128.
        assert block.kv_resnet.conv_in.v.shape == (f + 9, f + 9, 1, 1)
        assert block.kv_resnet.conv_out.v.shape == (2 * (f + 9), f + 9, 1, 1)
        assert block.kv_proj.v.shape == (16 + 128, f + 9, 1, 1)
        # query branch: [ul (F), background (6)] -> 16.
        assert block.q_resnet.conv_in.v.shape == (f + 6, f + 6, 1, 1)
        assert block.q_proj.v.shape == (16, f + 6, 1, 1)
        # output: gated block on ul with the 128 attention channels as aux input.
        assert block.out_resnet.conv_in.v.shape == (f, f, 1, 1)
        assert block.out_resnet.aux_in.v.shape == (f, 128, 1, 1)
        for resnet in [*block.resnets, block.kv_resnet, block.q_resnet, block.out_resnet]:
            assert resnet.f is F.elu
            assert all(type(c) in (WeightNormConv2d, DownRightShiftedConv2d) for c in _convs(resnet))
    assert model.head.v.shape == (10 * mixtures, f, 1, 1)

    resnets = [m for m in model.modules() if isinstance(m, GatedResnet)]
    assert len(resnets) == 12 * (4 + 3)
    expected_dropouts = [dropout] * len(resnets) if dropout > 0 else []
    assert _dropouts(model) == expected_dropouts
    # every conv is weight-normalised (V, g, b) with one g and b per output channel
    for conv in _convs(model):
        assert conv.g.shape == conv.b.shape == (conv.v.shape[0],)
    assert sum(p.numel() for c in _convs(model) for p in c.parameters()) == count_parameters(model)


@pytest.mark.parametrize("name", ["pixelsnail-cifar10", "pixelcnnpp-cifar10", "pixelsnail-tiny", "pixelcnnpp-tiny"])
def test_second_conv_of_every_gated_resnet_starts_at_scale_one_tenth(name):
    model = presets.build(name)
    resnets = [m for m in model.modules() if isinstance(m, GatedResnet)]
    assert resnets
    for resnet in resnets:
        assert resnet.conv_out.init_scale == 0.1
        assert resnet.conv_in.init_scale == 1.0
        assert resnet.aux_in is None or resnet.aux_in.init_scale == 1.0
    scales = {c.init_scale for c in _convs(model)}
    assert scales == {0.1, 1.0}
    assert model.head.init_scale == 1.0


def test_paper_pixelcnnpp_layer_list():
    model = presets.build("pixelcnnpp-cifar10")
    f = 160
    assert [len(stage) for stage in model.up] == [5, 5, 5]
    assert [len(stage) for stage in model.down] == [5, 6, 6]
    pairs = [pair for stage in [*model.up, *model.down] for pair in stage]
    for u_block, ul_block in pairs:
        assert u_block.f is concat_elu and ul_block.f is concat_elu
        assert type(u_block.conv_in) is DownShiftedConv2d and u_block.conv_in.v.shape == (f, 2 * f, 2, 3)
        assert type(ul_block.conv_in) is DownRightShiftedConv2d and ul_block.conv_in.v.shape == (f, 2 * f, 2, 2)
    # up pass: ul takes aux u; down pass: u takes popped u, ul takes [u, popped ul]
    for u_block, ul_block in (pair for stage in model.up for pair in stage):
        assert u_block.aux_in is None and ul_block.aux_in.v.shape == (f, 2 * f, 1, 1)
    for u_block, ul_block in (pair for stage in model.down for pair in stage):
        assert u_block.aux_in.v.shape == (f, 2 * f, 1, 1) and ul_block.aux_in.v.shape == (f, 4 * f, 1, 1)
    assert _dropouts(model) == [0.5] * (2 * len(pairs))
    assert model.head.v.shape == (100, f, 1, 1)


# ---------------------------------------------------------------------------------------------
# Data-dependent initialisation


@pytest.mark.parametrize(
    "name,channels,size", [("pixelsnail-tiny", 3, (6, 7)), ("pixelsnail-tiny", 1, (5, 8)), ("pixelcnnpp-tiny", 3, (8, 8))]
)
def test_data_dependent_init_normalises_every_preactivation(name, channels, size):
    torch.manual_seed(0)
    model = presets.build(name, channels)
    batch = mixture.to_unit(random_images(8, channels, *size, seed=5))
    data_dependent_init(model, batch)
    model.eval()

    captured: dict[WeightNormConv2d, list[torch.Tensor]] = {}

    def hook(module, inputs, output):
        if module.transposed:
            # The reference normalises a transposed conv's full (uncropped) output, before the
            # crop that keeps it causal; recompute that from the module's input.
            output = module._conv(inputs[0], module.weight(), module.b)
        captured.setdefault(module, []).append(output.detach())

    convs = _convs(model)
    handles = [conv.register_forward_hook(hook) for conv in convs]
    try:
        with torch.no_grad():
            model(batch)
    finally:
        for handle in handles:
            handle.remove()
    assert set(captured) == set(convs)
    assert any(c.transposed for c in convs) == (name == "pixelcnnpp-tiny")
    for conv in convs:
        assert len(captured[conv]) == 1
        y = captured[conv][0].double()
        mean = y.mean(dim=(0, 2, 3))
        std = y.var(dim=(0, 2, 3), unbiased=False).sqrt()
        # observed errors are ~1e-7; 1e-4 still tells a biased from an unbiased variance (0.15% here)
        assert mean.abs().max() < 1e-4 * conv.init_scale, f"{conv}: channel means up to {mean.abs().max():.2e}"
        torch.testing.assert_close(std, torch.full_like(std, conv.init_scale), rtol=1e-4, atol=0)


def test_data_dependent_init_changes_gains_and_biases():
    torch.manual_seed(0)
    model = presets.build("pixelsnail-tiny")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data_dependent_init(model, mixture.to_unit(random_images(4, 3, 5, 5)))
    after = model.state_dict()
    for key in before:
        if key.endswith(".v"):
            assert torch.equal(before[key], after[key]), f"{key}: DDI must not move V"
        else:
            assert not torch.equal(before[key], after[key]), f"{key}: DDI left it unchanged"
    assert all(not c.init_mode for c in _convs(model))


# ---------------------------------------------------------------------------------------------
# The incremental stepper


STEPPER_CASES = [
    # (config overrides of pixelsnail-tiny, channels, (H, W))
    ({}, 3, (5, 6)),
    ({}, 1, (6, 4)),
    ({"nonlinearity": "concat_elu"}, 3, (4, 7)),
    ({"nonlinearity": "concat_elu"}, 1, (3, 5)),
    ({"filters": 16, "blocks": 1, "resnets_per_block": 3, "key_channels": 8, "value_channels": 8, "mixtures": 3,
      "dropout": 0.3, "nonlinearity": "concat_elu"}, 3, (3, 7)),
    ({}, 3, (1, 6)),
    ({}, 1, (6, 1)),
    ({"positions_per_channel": True}, 3, (4, 5)),  # the paper presets' six position channels
]


@pytest.mark.parametrize("overrides,channels,size", STEPPER_CASES)
def test_stepper_matches_full_forward_at_every_position(overrides, channels, size):
    height, width = size
    model = initialised("pixelsnail-tiny", channels, 5, 6, seed=7, **overrides)
    images = random_images(3, channels, height, width, seed=8)
    with torch.no_grad():
        full = model(mixture.to_unit(images))
    stepper = PixelSNAILStepper(model, 3, height, width)
    worst = 0.0
    for position in range(height * width):
        i, j = divmod(position, width)
        predicted = stepper.predict()
        assert predicted.shape == (3, full.shape[1])
        worst = max(worst, float((predicted - full[:, :, i, j]).abs().max()))
        torch.testing.assert_close(predicted, full[:, :, i, j], rtol=1e-5, atol=1e-5)
        stepper.commit(images[:, :, i, j])
    assert stepper.position.tolist() == [height * width] * 3


def test_stepper_runs_in_the_models_dtype():
    """A float64 model steps in float64 (its buffers took float32 and the first product failed), and
    agrees with its full pass to float64's precision, not float32's."""
    model = initialised("pixelsnail-tiny", 3, 5, 6, seed=7).double()
    images = random_images(2, 3, 4, 5, seed=8)
    with torch.no_grad():
        full = model(mixture.to_unit(images, torch.float64))
    stepper = PixelSNAILStepper(model, 2, 4, 5)
    for position in range(20):
        i, j = divmod(position, 5)
        predicted = stepper.predict()
        assert predicted.dtype == torch.float64
        torch.testing.assert_close(predicted, full[:, :, i, j], rtol=1e-10, atol=1e-10)
        stepper.commit(images[:, :, i, j])


@pytest.mark.parametrize("channels", [3, 1])
def test_stepper_slots_keep_positions_of_their_own(channels):
    """What the codec's windows with context need: slot k starts 5k steps late (it waits at
    position 0), and slot 0 restarts on a fourth image once its first is done. Every prediction
    matches the full forward pass of the slot's own image."""
    height, width = 4, 5
    n = height * width
    model = initialised("pixelsnail-tiny", channels, 5, 6, seed=3, nonlinearity="concat_elu")
    images = random_images(4, channels, height, width, seed=4)
    with torch.no_grad():
        full = model(mixture.to_unit(images))
    stepper = PixelSNAILStepper(model, 3, height, width)
    start = torch.tensor([0, 5, 10])
    image_of = torch.tensor([0, 1, 2])
    checked = 0
    for step in range(2 * n):
        if step == n:  # slot 0 finished image 0: it codes image 3 next
            stepper.restart(torch.tensor([True, False, False]))
            image_of[0], start[0] = 3, n
        elapsed = step - start
        active = (elapsed >= 0) & (elapsed < n)
        assert torch.equal(stepper.position[active], elapsed[active])
        predicted = stepper.predict()
        i, j = stepper.position // width, stepper.position % width
        for slot in torch.nonzero(active).flatten().tolist():
            expected = full[image_of[slot], :, i[slot], j[slot]]
            torch.testing.assert_close(predicted[slot], expected, rtol=1e-5, atol=1e-5)
            checked += 1
        values = images[image_of, :, i, j]
        stepper.commit(values, active & (elapsed < n - 1))
    assert checked == 4 * n  # every position of the four images


def test_stepper_requires_predict_before_commit():
    model = initialised("pixelsnail-tiny", 3, 4, 4)
    stepper = PixelSNAILStepper(model, 1, 4, 4)
    with pytest.raises(RuntimeError):
        stepper.commit(torch.zeros(1, 3, dtype=torch.long))


def test_pixelsnail_config_roundtrips_through_dict():
    cfg = PixelSNAILConfig(channels=1, filters=8, nonlinearity="concat_elu")
    assert presets.config_from_dict(cfg.to_dict()) == cfg
    assert isinstance(presets.build_from_config(presets.preset_config("pixelcnnpp-tiny")), PixelCNNpp)


def test_presets_loaded_from_several_threads_at_once_get_the_same_weights():
    """An untrained preset's weights come from a fixed seed of torch's one global generator: loads
    in several threads at once take turns (files coded side by side load their models this way)."""
    from concurrent.futures import ThreadPoolExecutor

    from snailcompress import zoo

    with ThreadPoolExecutor(4) as pool:
        ids = set(pool.map(lambda _: zoo.load_model("pixelsnail-tiny").model_id, range(8)))
    assert len(ids) == 1
