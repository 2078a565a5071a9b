"""The discretized logistic mixture (reference section 4 and 6.2), bits/dim, and sampling."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner
from PIL import Image
from torch.utils.data import Dataset

from snailcompress import evaluate as evaluate_module
from snailcompress import mixture, sampling
from snailcompress.cli import main
from snailcompress.data import ArrayDataset
from snailcompress.models import presets
from snailcompress.models.layers import data_dependent_init

F64 = torch.float64


def random_params(n: int, channels: int, m: int, seed: int, log_scales=(-2.0, 0.5), means=1.0) -> torch.Tensor:
    """(n, K) float64 network outputs with means in [-means, means] and log-scales in a given range."""
    g = torch.Generator().manual_seed(seed)
    params = torch.randn(n, mixture.num_params(channels, m), generator=g, dtype=F64) * 1.5
    slot = 3 if channels == 3 else 2
    for c in range(channels):
        base = m + c * slot * m
        params[:, base : base + m] = (torch.rand(n, m, generator=g, dtype=F64) * 2 - 1) * means
        lo, hi = log_scales
        params[:, base + m : base + 2 * m] = lo + (hi - lo) * torch.rand(n, m, generator=g, dtype=F64)
    return params


def random_values(n: int, channels: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, channels), generator=torch.Generator().manual_seed(seed))


def joint_log_prob(params: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """log p(pixel) of (N, C) integer values under (N, K) parameters: the training loss's formula."""
    channels = values.shape[1]
    return mixture.pixel_log_prob(mixture.to_unit(values, F64), mixture.unpack(params, channels, pixel_last=True))


def conditional_probs(params: torch.Tensor, values: torch.Tensor) -> list[torch.Tensor]:
    """p(r), p(g | r), p(b | r, g) of the true values from PixelConditionals."""
    cond = mixture.PixelConditionals(params, values.shape[1])
    rows = torch.arange(len(values))
    return [cond.pmf(c, values)[rows, values[:, c]] for c in range(values.shape[1])]


# ---------------------------------------------------------------------------------------------
# Sequential conditionals = joint


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("m", [1, 5, 10])
def test_conditionals_multiply_to_the_joint(channels, m):
    params = random_params(400, channels, m, seed=m)
    values = random_values(400, channels, seed=m + 100)
    product = torch.stack(conditional_probs(params, values)).prod(0)
    joint = joint_log_prob(params, values).exp()
    assert torch.all(product > 0)
    rel = ((product - joint) / joint).abs().max()
    assert rel < 1e-6, f"relative error {rel:.2e}"


@pytest.mark.parametrize("channels", [3, 1])
def test_conditionals_multiply_to_the_joint_at_likely_values_with_small_scales(channels):
    """Sharper components (log-scale down to -4.5) at values drawn from the model itself."""
    params = random_params(500, channels, 4, seed=3, log_scales=(-4.5, 0.0))
    values = mixture.PixelConditionals(params, channels).sample(torch.Generator().manual_seed(0)).long()
    product = torch.stack(conditional_probs(params, values)).prod(0)
    log_joint = joint_log_prob(params, values)
    torch.testing.assert_close(product.log(), log_joint, rtol=0, atol=1e-6)


@pytest.mark.parametrize("channels", [3, 1])
def test_every_pmf_sums_to_one_and_gives_every_bin_some_mass(channels):
    params = random_params(300, channels, 10, seed=7)
    values = random_values(300, channels, seed=8)
    cond = mixture.PixelConditionals(params, channels)
    for c in range(channels):
        pmf = cond.pmf(c, values)
        assert pmf.shape == (300, 256) and pmf.dtype == F64
        assert (pmf.sum(1) - 1).abs().max() < 1e-12
        assert torch.all(pmf > 0), f"channel {c}: {int((pmf <= 0).sum())} empty bins"


def test_green_and_blue_use_the_posterior_component_weights():
    """Two components that agree on R's mean but not its scale: R's value shifts G's weights."""
    m = 2
    params = torch.zeros(1, mixture.num_params(3, m), dtype=F64)
    params[0, m + 0 * 3 * m : m + 0 * 3 * m + m] = torch.tensor([0.0, 0.0])  # R means
    params[0, m + 0 * 3 * m + m : m + 0 * 3 * m + 2 * m] = torch.tensor([-4.0, 0.0])  # R: sharp vs wide
    params[0, m + 1 * 3 * m : m + 1 * 3 * m + m] = torch.tensor([-0.5, 0.5])  # G means differ
    params[0, m + 1 * 3 * m + m : m + 1 * 3 * m + 2 * m] = -3.0
    cond = mixture.PixelConditionals(params, 3)
    near = cond.pmf(1, torch.tensor([[128, 0, 0]]))  # r at the sharp component's mean
    far = cond.pmf(1, torch.tensor([[250, 0, 0]]))  # r only the wide component explains
    # p(g < 128 | r) is the weight of component 0
    assert near[0, :128].sum() > 0.95
    assert far[0, 128:].sum() > 0.999


# ---------------------------------------------------------------------------------------------
# One bin's probability


def softplus(t):
    """log(1 + e^t) to full precision (torch's F.softplus returns t itself above t = 20; TF's does not)."""
    return torch.logaddexp(torch.zeros_like(t), t)


def reference_bin_log_prob(x, mean, log_scale):
    """openai/pixel-cnn discretized_mix_logistic_loss, its exact branches only."""
    inv_s = torch.exp(-log_scale)
    centered = x - mean
    plus, minus = inv_s * (centered + 1 / 255), inv_s * (centered - 1 / 255)
    generic = torch.log(torch.sigmoid(plus) - torch.sigmoid(minus))
    left = plus - softplus(plus)
    right = -softplus(minus)
    delta = torch.sigmoid(plus) - torch.sigmoid(minus)
    return generic, left, right, delta


def test_bin_log_prob_agrees_with_the_reference_formula():
    x = mixture.to_unit(torch.arange(256), F64).view(256, 1, 1)
    mean = torch.linspace(-1.2, 1.2, 13, dtype=F64).view(1, 13, 1)
    log_scale = torch.linspace(-6.0, 1.0, 15, dtype=F64).view(1, 1, 15)
    ours = mixture.bin_log_prob(x, mean, log_scale)
    generic, left, right, delta = reference_bin_log_prob(x, mean, log_scale)
    assert ours.shape == (256, 13, 15)
    interior = torch.zeros_like(ours, dtype=torch.bool)
    interior[1:255] = True
    well_conditioned = interior & (delta > 1e-5)  # where the reference uses this formula
    assert well_conditioned.sum() > 10_000
    torch.testing.assert_close(ours[well_conditioned], generic[well_conditioned], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(ours[0], left[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours[255], right[255], rtol=1e-12, atol=1e-12)
    # the tails are the whole tails: bin 0 + bin 255 + the interior bins = 1
    total = torch.logsumexp(ours, dim=0)
    torch.testing.assert_close(total, torch.zeros_like(total), rtol=0, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bin_log_prob_finite_with_finite_gradients_for_extreme_parameters(dtype):
    x = mixture.to_unit(torch.arange(256), dtype).view(256, 1, 1)
    mean = torch.tensor([-50.0, -3.0, -1.0, 0.0, 1.0, 3.0, 50.0], dtype=dtype).view(1, 7, 1).requires_grad_(True)
    log_scale = torch.tensor([-7.0, -5.0, 0.0, 5.0, 20.0], dtype=dtype).view(1, 1, 5).requires_grad_(True)
    out = mixture.bin_log_prob(x, mean, log_scale)
    assert torch.isfinite(out).all() and torch.all(out <= 0)
    out.sum().backward()
    assert torch.isfinite(mean.grad).all() and torch.isfinite(log_scale.grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_loss_gradient_finite_for_extreme_network_outputs(dtype):
    """Whole loss path (unpack, clamp, coefficients, logsumexp) on raw outputs far out of range."""
    m = 4
    g = torch.Generator().manual_seed(0)
    params = torch.randn(2, mixture.num_params(3, m), 4, 4, generator=g, dtype=dtype) * 60  # means, coeffs, logits
    params[:, m + m : m + 2 * m] = -30.0  # log-scales of R: clamped to -7
    params[:, m + 3 * m + m : m + 3 * m + 2 * m] = 20.0  # log-scales of G: huge
    params.requires_grad_(True)
    x = mixture.to_unit(torch.randint(0, 256, (2, 3, 4, 4), generator=g), dtype)
    x[:, :, 0, 0] = -1.0
    x[:, :, 0, 1] = 1.0
    loss = -mixture.log_prob(x, params).sum()
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(params.grad).all()


# ---------------------------------------------------------------------------------------------
# The channel layout (reference 4.2, NHWC order)


def test_unpack_layout_rgb():
    m = 2
    logits = [0.3, -1.2]
    means = [[0.11, 0.12], [0.21, 0.22], [0.31, 0.32]]
    log_scales = [[-1.1, -1.2], [-2.1, -2.2], [-3.1, -9.0]]  # -9 is clamped to -7
    raw_coeffs = [[0.5, -0.6], [0.7, -0.8], [0.9, -1.0]]  # slot 0 alpha, 1 beta, 2 gamma
    vector = list(logits)
    for c in range(3):
        vector += means[c] + log_scales[c] + raw_coeffs[c]
    assert len(vector) == mixture.num_params(3, m) == 10 * m
    # the same pixel vector at pixel (1, 2) of an NCHW tensor, other pixels different
    nchw = torch.randn(1, 10 * m, 2, 3, dtype=F64)
    nchw[0, :, 1, 2] = torch.tensor(vector, dtype=F64)
    mix = mixture.unpack(nchw, 3)
    assert mix.means.shape == (1, 2, 3, 3, m)
    expected = {
        "log_weights": torch.log_softmax(torch.tensor(logits, dtype=F64), 0),
        "means": torch.tensor(means, dtype=F64),
        "log_scales": torch.tensor(log_scales, dtype=F64).clamp(min=-7),
        "coeffs": torch.tanh(torch.tensor(raw_coeffs, dtype=F64)),
    }
    for flat in (mixture.unpack(torch.tensor([vector], dtype=F64), 3, pixel_last=True), None):
        for name, value in expected.items():
            got = getattr(mix, name)[0, 1, 2] if flat is None else getattr(flat, name)[0]
            torch.testing.assert_close(got, value, rtol=1e-15, atol=0)
    assert mix.log_scales[0, 1, 2, 2, 1] == -7.0
    # alpha (slot 0) shifts G by r; beta (slot 1) and gamma (slot 2) shift B by r and g
    alpha, beta, gamma = torch.tanh(torch.tensor(raw_coeffs, dtype=F64))
    known = torch.tensor([[0.4, -0.25, 0.0]], dtype=F64)
    flat = mixture.unpack(torch.tensor([vector], dtype=F64), 3, pixel_last=True)
    torch.testing.assert_close(flat.channel_means(0, known)[0], torch.tensor(means[0], dtype=F64))
    torch.testing.assert_close(flat.channel_means(1, known)[0], torch.tensor(means[1], dtype=F64) + alpha * 0.4)
    torch.testing.assert_close(
        flat.channel_means(2, known)[0], torch.tensor(means[2], dtype=F64) + beta * 0.4 + gamma * -0.25
    )


def test_unpack_layout_grayscale():
    m = 3
    vector = [0.1, 0.2, 0.3] + [-0.5, 0.0, 0.5] + [-1.0, -2.0, 4.0]
    assert mixture.num_params(1, m) == 3 * m == len(vector)
    mix = mixture.unpack(torch.tensor(vector, dtype=F64).view(1, 9, 1, 1), 1)
    torch.testing.assert_close(mix.log_weights[0, 0, 0], torch.log_softmax(torch.tensor(vector[:3], dtype=F64), 0))
    torch.testing.assert_close(mix.means[0, 0, 0, 0], torch.tensor(vector[3:6], dtype=F64))
    torch.testing.assert_close(mix.log_scales[0, 0, 0, 0], torch.tensor(vector[6:], dtype=F64))  # no upper clamp
    assert mix.coeffs is None
    with pytest.raises(ValueError):
        mixture.unpack(torch.zeros(1, 10, 1, 1), 1)


# ---------------------------------------------------------------------------------------------
# Bits per dimension over a data set


class UniformModel(nn.Module):
    def forward(self, x):  # never called: log_prob_fn below ignores the model
        raise AssertionError


def uniform_log_prob(model, batch, context):
    return torch.full((len(batch),), -math.log(256) * batch[0, :, context:, context:].numel(), dtype=F64)


@pytest.mark.parametrize("n,batch_size,limit,context", [(10, 4, None, 0), (7, 3, None, 0), (10, 4, 9, 0), (1, 8, None, 0),
                                                         (7, 3, None, 2)])
def test_uniform_model_is_exactly_eight_bits_per_dim(n, batch_size, limit, context):
    data = ArrayDataset("t", np.zeros((n, 3, 4, 5), np.uint8))
    result = evaluate_module.evaluate(
        UniformModel(), data, batch_size=batch_size, limit=limit, progress=False, log_prob_fn=uniform_log_prob,
        context=context,
    )
    images = n if limit is None else min(n, limit)
    assert result.images == images and result.dims == images * 3 * (4 - context) * (5 - context)
    assert result.bits_per_dim == pytest.approx(8.0, rel=1e-14, abs=0)


class NoArray(Dataset):
    """The same images without the `array` shortcut: evaluate() must take its DataLoader path."""

    def __init__(self, array):
        self._array = array

    def __len__(self):
        return len(self._array)

    def __getitem__(self, i):
        return torch.from_numpy(self._array[i].copy())


@pytest.mark.parametrize("channels", [3, 1])
def test_evaluate_equals_the_hand_computation(channels):
    torch.manual_seed(0)
    model = presets.build("pixelsnail-tiny", channels)
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (5, channels, 6, 5), dtype=np.uint8)
    # make the images differ in likelihood so a mean of batch means would be wrong
    array[0] = 0
    array[1, :, :3] = 255
    data_dependent_init(model, mixture.to_unit(torch.from_numpy(array.copy())))
    model.eval()
    with torch.no_grad():
        x = mixture.to_unit(torch.from_numpy(array.copy()))
        total_nats = -mixture.log_prob(x, model(x)).double().sum().item()
    expected = total_nats / (5 * channels * 6 * 5 * math.log(2))
    for data in (ArrayDataset("t", array.copy()), NoArray(array)):
        result = evaluate_module.evaluate(model, data, batch_size=2, progress=False)
        assert result.images == 5 and result.dims == 5 * channels * 30
        assert result.bits_per_dim == pytest.approx(expected, rel=1e-6)
    model.train()
    evaluate_module.evaluate(model, ArrayDataset("t", array.copy()), batch_size=2, progress=False)
    assert model.training, "evaluate() must restore the training mode"


# ---------------------------------------------------------------------------------------------
# Sampling


def chi_square_threshold(df: int, z: float = 3.7) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile at standard-normal z (~1e-4 upper tail)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def chi_square(counts: np.ndarray, probs: np.ndarray, total: int) -> tuple[float, int]:
    """Statistic over cells with expected >= 5, the rest lumped into one cell; returns (stat, df)."""
    expected = probs * total
    keep = expected >= 5
    obs = list(counts[keep]) + [total - counts[keep].sum()]
    exp = list(expected[keep]) + [total - expected[keep].sum()]
    if exp[-1] < 5:  # lumped cell too small to test: drop it
        obs, exp = obs[:-1], exp[:-1]
    obs, exp = np.array(obs, float), np.array(exp, float)
    return float(((obs - exp) ** 2 / exp).sum()), len(obs) - 1


def draw(params_row: torch.Tensor, channels: int, n: int, seed: int, chunk: int = 10_000) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for start in range(0, n, chunk):
        rows = params_row.expand(min(chunk, n - start), -1)
        parts.append(mixture.PixelConditionals(rows, channels).sample(generator).numpy())
    return np.concatenate(parts)


def test_sample_grayscale_distribution_chi_square():
    m = 3
    params = torch.tensor([[0.5, -0.3, 0.1, -0.5, 0.1, 0.7, -3.0, -2.5, -3.5]], dtype=F64)
    assert params.shape[1] == mixture.num_params(1, m)
    n = 30_000
    samples = draw(params, 1, n, seed=0)
    assert samples.dtype == np.uint8 and samples.shape == (n, 1)
    counts = np.bincount(samples[:, 0], minlength=256)
    probs = joint_log_prob(params.expand(256, -1), torch.arange(256).view(256, 1)).exp().numpy()
    stat, df = chi_square(counts, probs, n)
    assert df > 30
    assert stat < chi_square_threshold(df), f"chi2 {stat:.1f} with {df} dof"


def test_sample_rgb_joint_distribution_chi_square():
    """Two components with opposite R->G and G->B coupling; the joint of the triples must match."""
    m = 2
    params = torch.zeros(1, mixture.num_params(3, m), dtype=F64)
    params[0, :m] = torch.tensor([0.3, -0.3])
    settings = {  # channel: (means, log-scales, raw coefficients)
        0: ([-0.3, 0.3], [-4.0, -4.2], [1.5, -1.5]),  # alpha: G follows +R or -R
        1: ([0.0, 0.05], [-4.3, -4.1], [0.5, -0.5]),  # beta
        2: ([0.1, -0.1], [-4.2, -4.0], [-1.0, 1.0]),  # gamma
    }
    for c, (means, log_scales, coeffs) in settings.items():
        base = m + c * 3 * m
        params[0, base : base + m] = torch.tensor(means)
        params[0, base + m : base + 2 * m] = torch.tensor(log_scales)
        params[0, base + 2 * m : base + 3 * m] = torch.tensor(coeffs)
    n = 40_000
    samples = draw(params, 3, n, seed=1).astype(np.int64)
    triples, counts = np.unique(samples, axis=0, return_counts=True)
    probs = joint_log_prob(params.expand(len(triples), -1), torch.from_numpy(triples)).exp().numpy()
    stat, df = chi_square(counts, probs, n)
    assert df > 50
    assert stat < chi_square_threshold(df), f"chi2 {stat:.1f} with {df} dof"


@pytest.mark.parametrize("name,channels,size", [("pixelsnail-tiny", 3, (3, 4)), ("pixelcnnpp-tiny", 1, (4, 4))])
def test_sample_images_shape_dtype_and_seed(name, channels, size):
    torch.manual_seed(0)
    model = presets.build(name, channels)
    data_dependent_init(model, mixture.to_unit(torch.randint(0, 256, (4, channels, *size))))
    a = sampling.sample_images(model, 3, *size, seed=5, progress=False)
    b = sampling.sample_images(model, 3, *size, seed=5, progress=False)
    c = sampling.sample_images(model, 3, *size, seed=6, progress=False)
    assert isinstance(a, np.ndarray) and a.dtype == np.uint8 and a.shape == (3, channels, *size)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_cli_sample_writes_a_png(tmp_path):
    out = tmp_path / "X.png"
    runner = CliRunner()
    args = ["sample", "--model", "pixelsnail-tiny", "-n", "4", "--size", "8x8", "-o", str(out)]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        assert image.width >= 8 and image.height >= 8
    again = runner.invoke(main, args)  # refuses to overwrite without -f
    assert again.exit_code != 0 and "already exists" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    assert out.read_bytes() == data


@pytest.mark.parametrize("command", ["sample", "receptive-field"])
def test_cli_pictures_refuse_outputs_they_cannot_write_in_one_line_before_the_work(tmp_path, command):
    """Each of these was a traceback (from Pillow or matplotlib, on the temporary file's name, or the
    operating system), some after the sampling."""
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-dir").mkdir()
    base = ["sample", "--model", "pixelsnail-tiny", "-n", "1", "--size", "4x4"] if command == "sample" else \
        ["receptive-field", "--model", "pixelsnail-tiny", "--size", "4x4"]
    cases = [(["-o", str(tmp_path / "x.noext")], "extension names none of the picture formats written"),
             (["-o", str(tmp_path / ("x.pgf" if command == "receptive-field" else "x.blp"))],  # failed after the work
              "extension names none of the picture formats written"),
             (["-o", str(tmp_path / "a-dir"), "-f"], "is a directory"),
             (["-o", str(tmp_path / "a-file" / "x.png")], "a-file is a file, not a directory")]
    cases += [(["-n", "0", "-o", str(tmp_path / "x.png")], "must be at least 1"),
              (["--scale", "0", "-o", str(tmp_path / "x.png")], "must be at least 1"),
              (["--size", "0x4", "-o", str(tmp_path / "x.png")], "each side of --size must be at least 1"),
              # a traceback (can't allocate), and a process killed while enlarging the grid
              (["--size", "100000x100000", "-o", str(tmp_path / "x.png")], "10,000,000,000 positions to draw"),
              (["--scale", "100000", "-o", str(tmp_path / "x.png")], "makes a picture of about")] \
        if command == "sample" else \
        [(["--size", "1x1", "-o", str(tmp_path / "x.png")], "the output pixel is the first one"),
         (["--size", "8x8", "--position", "0,0", "-o", str(tmp_path / "x.png")], "depends on nothing"),  # printed nan%
         (["--size", "100x100", "-o", str(tmp_path / "x.png")], "10,000 positions; at most 4,096")]  # a traceback
    for extra, needle in cases:
        result = CliRunner().invoke(main, [*base, *extra])
        lines = result.stderr.strip().splitlines()
        assert result.exit_code != 0 and len(lines) == 1 and lines[0].startswith("snailcompress: error: "), result.output
        assert needle in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a-dir", "a-file"]


@pytest.mark.parametrize("command", ["sample", "receptive-field"])
def test_cli_pictures_refuse_a_directory_they_cannot_write_into_before_the_work(tmp_path, monkeypatch, command):
    """chmod does not stop root: the operating system's refusal is simulated, and the drawing must not start."""
    import os

    out, real_open = tmp_path / "readonly", os.open
    out.mkdir()
    monkeypatch.setattr(os, "open", lambda path, *a, **k: (_ for _ in ()).throw(PermissionError(13, "Permission denied", path))
                        if str(path).startswith(str(out)) else real_open(path, *a, **k))
    drawn = []
    monkeypatch.setattr("snailcompress.sampling.sample_images", lambda *a, **k: drawn.append(1))
    monkeypatch.setattr("snailcompress.receptive_field.receptive_field", lambda *a, **k: drawn.append(1))
    base = ["sample", "--model", "pixelsnail-tiny", "-n", "1", "--size", "4x4"] if command == "sample" else \
        ["receptive-field", "--model", "pixelsnail-tiny", "--size", "4x4"]
    result = CliRunner().invoke(main, [*base, "-o", str(out / "x.png")])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code != 0 and len(lines) == 1 and "Permission denied" in lines[0], result.output
    assert drawn == [] and list(out.iterdir()) == []
