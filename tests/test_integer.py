"""The integer network: deterministic conversion, exact arithmetic, identical tables on every path.

Tables are compared directly (arrays, not round trips): thread counts, batch sizes, compositions and
orders, the incremental stepper against the full forward pass, and against pinned digests of the
lookup tables and of the shipped models' conversion, so that any change of arithmetic shows up here
and needs a new arithmetic version.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from snailcompress import mixture
from snailcompress.codec.calibration import Calibration
from snailcompress.integer import arithmetic as ar
from snailcompress.integer.mixture import IntegerConditionals
from snailcompress.integer.network import (MAX_KEY_CHANNELS, MAX_MIXTURES, MAX_WINDOW_POSITIONS, IntegerLinear, IntegerPixelSNAIL, IntegerStepper,
                                            check_weights, layout)
from snailcompress.models import presets
from snailcompress.models.configs import PixelSNAILConfig
from snailcompress.threads import set_threads
from snailcompress.zoo import load_model

#: SHA-256 of arithmetic version 1's lookup tables (arithmetic.table_digest).
TABLE_DIGEST = "e5e6352564d93efdbc6c93242916f8c808b2fbc3d676602e165a4d93b2d8c7e1"
#: The integer weights of the shipped models under arithmetic version 1 (IntegerPixelSNAIL.digest).
PINNED = {"snail-rgb": "54133c73cf937cbe", "snail-gray": "136a6c461a591cae"}


def _net(channels: int, preset: str = "pixelsnail-tiny", **overrides) -> IntegerPixelSNAIL:
    """A preset's fixed-seed random weights in integers; `overrides`: of its config."""
    if not overrides:
        return IntegerPixelSNAIL.convert(load_model(preset, channels=channels).model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return IntegerPixelSNAIL.convert(presets.build(preset, channels, **overrides))


def _images(n: int, channels: int, height: int, width: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, channels, 1, 1))
    noise = rng.integers(-20, 21, (n, channels, height, width))
    return torch.from_numpy(np.clip(base + noise.cumsum(axis=3), 0, 255).astype(np.uint8))


def test_lookup_tables_are_pinned():
    assert ar.table_digest(ar.build_tables()) == TABLE_DIGEST  # built afresh, not read from the cache
    assert ar.table_digest() == TABLE_DIGEST and ar.TABLE_DIGEST == TABLE_DIGEST


def test_lookup_tables_cache_is_read_only_when_it_holds_the_pinned_tables(tmp_path, monkeypatch):
    first, second = tmp_path / "unwritable-is-a-file", tmp_path / "cache"
    first.write_bytes(b"")  # a file where a folder should be: the cache goes to the next choice
    monkeypatch.setattr(ar, "cache_dirs", lambda: [first, second])
    assert ar._read_cache() is None
    built = ar.build_tables()
    ar._write_cache(built)
    (cached,) = second.glob("*.npz")
    assert [p.name for p in second.iterdir()] == [cached.name]  # no temporary file left behind
    read = ar._read_cache()
    assert read.keys() == built.keys() and all(np.array_equal(read[k], built[k]) for k in built)
    damaged = dict(built, cdf=built["cdf"].copy())
    damaged["cdf"][1000] += 1
    with cached.open("wb") as f:
        np.savez(f, **damaged)
    assert ar._read_cache() is None  # a table that differs in one entry is not used
    cached.write_bytes(b"not a numpy file")
    assert ar._read_cache() is None
    ar._write_cache(built)
    cached.write_bytes(cached.read_bytes()[: cached.stat().st_size // 2])  # a truncated zip: BadZipFile
    assert ar._read_cache() is None


def test_lookup_tables_follow_their_functions():
    t = {name: torch.from_numpy(table.astype(np.float64)) for name, table in ar.tables().items()}
    k = torch.arange(0, ar.EXP_INPUT_LIMIT + 1, 97, dtype=torch.float64)
    assert torch.equal(t["elu"][k.long()], torch.floor(ar.ONE * torch.expm1(-k / ar.ONE) + 0.5))
    x = torch.arange(-ar.EXP_INPUT_LIMIT, ar.EXP_INPUT_LIMIT + 1, 101, dtype=torch.float64)
    expected = ar.ONE * torch.sigmoid(x / ar.ONE)
    assert (t["sigmoid"][(x + ar.EXP_INPUT_LIMIT).long()] - expected).abs().max() <= 0.5 + 1e-9
    assert torch.equal(t["sigmoid"] + t["sigmoid"].flip(0), torch.full_like(t["sigmoid"], ar.ONE))  # odd about 1/2
    assert torch.equal(t["tanh"], -t["tanh"].flip(0))
    cdf = t["cdf"]
    assert cdf[0] == 0 and cdf[-1] == 1 << ar.CDF_BITS and bool((cdf.diff() >= 0).all())
    z = torch.arange(-16 * 8192, 16 * 8192 + 1, 1009, dtype=torch.float64)
    expected = (1 << ar.CDF_BITS) * torch.sigmoid(z / 8192)
    assert (cdf[(z + 16 * 8192).long()] - expected).abs().max() <= 0.5 + 1e-6
    assert t["pixels"][0] == -ar.ONE and t["pixels"][255] == ar.ONE and bool((t["pixels"].diff() > 0).all())


@pytest.mark.parametrize("name", ["snail-rgb", "snail-gray"])
def test_shipped_conversion_is_pinned(name):
    """From the torch module and, as the codec converts it, from the file's weights read with numpy
    (both numpy and math.fsum only: no thread count enters it)."""
    loaded = load_model(name)
    digests = {IntegerPixelSNAIL.from_weights(loaded.config, loaded.weights).digest()[:16],
               IntegerPixelSNAIL.convert(loaded.model).digest()[:16]}
    assert digests == {PINNED[name]}


@pytest.mark.parametrize("name", ["pixelsnail-tiny", "pixelsnail-small", "pixelsnail-cifar10"])
@pytest.mark.parametrize("channels", [3, 1])
def test_the_layout_conversion_reads_is_the_models(name, channels):
    """network.layout (what conversion reads, without torch) names every parameter of the torch
    module, in its shape; check_weights refuses a missing, an extra or a misshapen one."""
    model = load_model(name, channels=channels).model
    weights = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    expected = {}
    for layer, (outputs, inputs, kernel) in layout(model.config).items():
        expected.update({f"{layer}.v": (outputs, inputs, *kernel), f"{layer}.g": (outputs,), f"{layer}.b": (outputs,)})
    assert {k: tuple(v.shape) for k, v in weights.items()} == expected
    check_weights(model.config, weights)
    for broken in ({k: v for k, v in weights.items() if k != "head.b"}, {**weights, "extra.v": weights["head.v"]},
                   {**weights, "input_left.v": weights["input_left.v"][:, :, :1]}):
        with pytest.raises(ValueError, match="do not match"):
            check_weights(model.config, broken)


def test_every_layer_bound_holds_on_worst_case_inputs():
    """The bound each layer records is reached by inputs at the activation limit with the signs of a
    row's weights; the float64 product of those equals the exact int64 one, and stays below 2**52."""
    net = IntegerPixelSNAIL.convert(load_model("snail-rgb").model)
    for linear in net.linears():
        assert linear.bound < ar.ACCUMULATOR_LIMIT, linear.name
        weight, bias = torch.from_numpy(linear.weight), torch.from_numpy(linear.bias)  # (in, out), (out,)
        worst = torch.sign(weight.t()) * ar.ACTIVATION_LIMIT  # row o: the input that maximises output o
        exact = worst.to(torch.int64) @ weight.to(torch.int64) + bias.to(torch.int64)
        floating = torch.addmm(bias, worst, weight)
        assert torch.equal(floating, exact.to(torch.float64)), linear.name
        assert int(floating.abs().max()) <= linear.bound
        # what runs (weights and bias times 2**-k) gives round_half_up(exact * 2**-k), clamped
        shift = torch.from_numpy(linear.shift).to(torch.int64)
        rounded = torch.div(exact + (1 << (shift - 1).clamp(min=0)) * (shift > 0), 2**shift, rounding_mode="floor")
        low, high = torch.from_numpy(linear._low).to(torch.int64), torch.from_numpy(linear._high).to(torch.int64)
        expected = torch.maximum(torch.minimum(rounded, high), low).to(torch.float64)
        assert torch.equal(linear(worst), expected), linear.name


def test_conversion_refuses_weights_beyond_exact_arithmetic():
    """Tiny weights get a large shift; a large bias at that shift would overflow the accumulator."""
    with pytest.raises(ValueError, match="beyond exact"):
        IntegerLinear(np.full((1, 4), 1e-6), np.array([1000.0]), "tiny weights, large bias")
    IntegerLinear(np.full((1, 4), 1e-6), np.array([1.0]), "fine")


def _smallest_weights(cfg: PixelSNAILConfig) -> dict[str, np.ndarray]:
    """Weights of the right shapes for `cfg`, every one 0 (each row's direction vector a unit one)."""
    weights = {}
    for name, (outputs, inputs, kernel) in layout(cfg).items():
        v = np.zeros((outputs, inputs, *kernel), np.float32)
        v[:, 0, 0, 0] = 1.0
        weights |= {f"{name}.v": v, f"{name}.g": np.zeros(outputs, np.float32), f"{name}.b": np.zeros(outputs, np.float32)}
    return weights


def test_conversion_refuses_key_channels_and_mixtures_beyond_exact_arithmetic():
    """A logit sums key_channels products of two activations of up to 2**20: from 4096 channels it
    can reach 2**52, where the encoder's and decoder's orders of summation may round differently. More
    than 2**16 components: the prior's Q.16 weights can all be 0. The largest of each converts."""
    small = dict(channels=1, filters=1, blocks=1, resnets_per_block=1, value_channels=1, dropout=0.0)
    for key_channels, mixtures in [(MAX_KEY_CHANNELS + 1, 1), (1, MAX_MIXTURES + 1)]:
        cfg = PixelSNAILConfig(**small, key_channels=key_channels, mixtures=mixtures)
        with pytest.raises(ValueError, match="too many"):
            IntegerPixelSNAIL.from_weights(cfg, _smallest_weights(cfg))
    assert MAX_KEY_CHANNELS * ar.ACTIVATION_LIMIT**2 < ar.ACCUMULATOR_LIMIT <= (MAX_KEY_CHANNELS + 1) * ar.ACTIVATION_LIMIT**2
    for key_channels, mixtures in [(MAX_KEY_CHANNELS, 1), (1, MAX_MIXTURES)]:
        cfg = PixelSNAILConfig(**small, key_channels=key_channels, mixtures=mixtures)
        IntegerPixelSNAIL.from_weights(cfg, _smallest_weights(cfg))


@pytest.mark.parametrize("compiled", [True, False])
def test_windows_beyond_the_exact_attention_are_refused(compiled):
    """2**16 positions or more: the attention's weighted sums could pass 2**52. The full pass and the
    stepper refuse such a window before any work, whichever code runs them; one position less is taken."""
    net = _net(3)
    with pytest.raises(ValueError, match="65536 positions are too large for exact attention"):
        net.features(np.zeros((1, 3, 256, 256), np.int64), compiled=compiled)
    with pytest.raises(ValueError, match="65536 positions are too large for exact attention"):
        IntegerStepper(net, 1, 256, 256, compiled=compiled)
    IntegerStepper(net, 1, 1, MAX_WINDOW_POSITIONS, compiled=compiled)


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("channels,overrides", [(3, {}), (1, {}), (3, {"positions_per_channel": True})])
def test_stepper_equals_the_full_forward_pass_at_every_position(channels, overrides, compiled):
    net = _net(channels, **overrides)
    images = _images(3, channels, 6, 7, seed=channels)
    full = net.forward(images)
    assert np.array_equal(full, net.forward(images, compiled=False).numpy())  # compiled and torch
    stepper = IntegerStepper(net, 3, 6, 7, compiled=compiled)
    for p in range(42):
        i, j = divmod(p, 7)
        assert np.array_equal(np.asarray(stepper.predict()), full[:, i, j]), p
        stepper.commit(images[:, :, i, j])


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("height", [5, 4])  # the last row even or odd: the row caches' two halves
def test_slots_at_different_positions_get_their_own_window_exactly(compiled, height):
    """A slot that waits (the codec starts windows at different steps) and a slot that restarts on a
    new image give, at every position, the integers of the full pass over their own image."""
    net, width = _net(3), 5
    n = height * width
    images = _images(3, 3, height, width, seed=7)
    full = net.forward(images)
    stepper = IntegerStepper(net, 2, height, width, compiled=compiled)
    seen = {0: 0, 1: 0}  # slot -> positions done
    image_of = {0: 0, 1: 1}
    for step in range(3 * n):
        advance = torch.tensor([True, step % 3 == 0])
        params = stepper.predict()
        for slot in (0, 1):
            i, j = divmod(seen[slot], width)
            assert np.array_equal(np.asarray(params[slot]), full[image_of[slot], i, j]), (step, slot)
        values = torch.stack([images[(image_of[s], slice(None), *divmod(seen[s], width))] for s in (0, 1)])
        stepper.commit(values, advance)
        for slot in (0, 1):
            seen[slot] += int(advance[slot])
        if seen[0] == n:  # slot 0 starts the third image
            stepper.restart(torch.tensor([True, False]))
            seen[0], image_of[0] = 0, 2
        if seen[1] == n:
            break


def _tables(net: IntegerPixelSNAIL, images: torch.Tensor) -> list[np.ndarray]:
    params = net.forward(images)
    values = images.permute(0, 2, 3, 1).reshape(-1, images.shape[1]).long()
    conditionals = IntegerConditionals(params.reshape(-1, params.shape[-1]), images.shape[1])
    return [conditionals.tables(c, values[:, :c]) for c in range(images.shape[1])]


def test_the_torch_step_never_waits_for_a_value_so_a_cuda_graph_can_replay_it():
    """On a GPU the torch stepper's predict and commit are captured once as CUDA graphs and replayed
    (network._capture): nothing in them may read a value on the host (an .item(), a bool(), a boolean
    mask's indices) or take a shape from one. On the meta device tensors hold no values, so any such
    read raises here: restarts, waiting slots and slots at their window's end, as the decoder steps."""
    net = _net(3).to("meta")
    stepper = IntegerStepper(net, 3, 4, 5)
    assert not stepper.compiled
    for step in range(2 * 20):
        if step == 25:
            stepper.restart(np.array([True, False, True]))
        params = stepper.predict()
        assert params.device.type == "meta" and params.shape == (3, mixture.num_params(3, net.config.mixtures))
        stepper.commit(np.full((3, 3), step % 256), np.array([True, step % 2 == 0, step < 19]))


def test_tables_do_not_depend_on_threads_batch_composition_or_order():
    net = _net(3, "pixelsnail-small")
    images = _images(6, 3, 9, 11, seed=3)
    reference = [t.reshape(6, -1, 256) for t in _tables(net, images)]
    try:
        for threads in (1, 2, 4):
            set_threads(threads)  # the kernels' threads (and torch's), as --threads sets them
            alone = [t.reshape(1, -1, 256) for t in _tables(net, images[2:3])]
            permuted = [t.reshape(6, -1, 256) for t in _tables(net, images[[5, 2, 0, 1, 4, 3]])]
            pair = [t.reshape(2, -1, 256) for t in _tables(net, images[[4, 2]])]
            for c in range(3):
                assert np.array_equal(alone[c][0], reference[c][2])
                assert np.array_equal(permuted[c][1], reference[c][2])
                assert np.array_equal(pair[c][1], reference[c][2])
    finally:
        set_threads(1)


@pytest.mark.parametrize("channels", [3, 1])
def test_tables_are_exact_integer_distributions(channels):
    net = _net(channels)
    images = _images(2, channels, 8, 8, seed=11)
    values = images.permute(0, 2, 3, 1).reshape(-1, channels).long().numpy()
    conditionals = IntegerConditionals(net.forward(images).reshape(len(values), -1), channels)
    for c in range(channels):
        table = conditionals.tables(c, values[:, :c])
        assert table.dtype == np.int64 and bool((table >= 0).all())
        assert bool((table.sum(axis=1) == ar.TABLE_TOTAL).all())
        start, count = (bounds[:, c] for bounds in conditionals.symbol_bounds(values))
        rows = np.arange(len(values))
        assert np.array_equal(count, table[rows, values[:, c]])
        assert np.array_equal(start, table.cumsum(axis=1)[rows, values[:, c]] - table[rows, values[:, c]])


def test_extreme_parameters_still_give_valid_tables():
    """Means far outside the range, the smallest and largest scales, saturated logits and coefficients."""
    m, n = 4, 64
    rng = np.random.default_rng(0)
    params = rng.choice([-2**20, -9 * 4096, 0, 5, 9 * 4096, 2**20], (n, 10 * m)).astype(np.float64)
    conditionals = IntegerConditionals(params, 3)
    values = rng.integers(0, 256, (n, 3))
    for c in range(3):
        table = conditionals.tables(c, values[:, :c])
        assert bool((table.sum(axis=1) == ar.TABLE_TOTAL).all()) and bool((table >= 0).all())


def test_integer_tables_cost_little_against_the_float_model():
    """On a real image crop, the integer tables' code length is within 0.3% of the float model's NLL."""
    from PIL import Image

    from importlib import resources

    model = load_model("snail-rgb").model
    crop = np.array(Image.open(resources.files("snailcompress") / "assets" / "kodim23-crop.png").convert("RGB"))[:34, :68]
    images = torch.from_numpy(np.stack([crop[:, :34], crop[:, 34:]])).permute(0, 3, 1, 2).contiguous()
    values = images.permute(0, 2, 3, 1).reshape(-1, 3).long()
    net = IntegerPixelSNAIL.convert(model)
    conditionals = IntegerConditionals(net.forward(images).reshape(len(values), -1), 3)
    _, count = conditionals.symbol_bounds(values)
    bits = float((ar.PRECISION_BITS - np.log2(count + 1.0)).sum())
    with torch.no_grad():
        nats = -mixture.log_prob(mixture.to_unit(images), model(mixture.to_unit(images))).sum()
    float_bits = float(nats) / math.log(2)
    assert abs(bits / float_bits - 1) < 0.003, (bits, float_bits)


def test_calibration_is_folded_into_the_head_deterministically():
    model = load_model("snail-rgb").model
    k, f = model.head.v.shape[:2]
    rng = np.random.default_rng(1)
    calibration = Calibration(tuple(np.float16(rng.normal(0, 0.05, k)).astype(float).tolist()),
                              tuple(np.float16(rng.normal(0, 0.05, k)).astype(float).tolist()),
                              tuple(np.float16(rng.normal(0, 0.05, f)).astype(float).tolist()))
    a = IntegerPixelSNAIL.convert(model, calibration)
    b = IntegerPixelSNAIL.convert(model, calibration)
    plain = IntegerPixelSNAIL.convert(model)
    assert a.digest() == b.digest() != plain.digest()
    images = _images(1, 3, 4, 4, seed=5)
    # it changes the outputs (its formula: test_calibration.py, test_the_coders_output_layer_is_the_one_the_fit_scores)
    feature_out = IntegerPixelSNAIL.convert(model).forward(images)  # not calibrated
    calibrated_out = a.forward(images)
    assert not np.array_equal(feature_out, calibrated_out)
