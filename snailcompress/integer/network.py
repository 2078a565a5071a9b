"""A trained float PixelSNAIL converted to integers: the network the codec runs on both sides.

Conversion (`IntegerPixelSNAIL.from_weights`, from a model file's float32 parameters read with
numpy, or `convert`, from a torch module's) is deterministic on every machine: each effective weight
g * v / |v| is computed in float64 with correctly rounded elementwise operations and an exactly
rounded sum (math.fsum) for the norm, the per-image calibration and the attention's 1/sqrt(dk) are
folded in the same way, and each output channel's weights become integers w * 2**k (|w| <= 2**14)
so that requantising its output is a shift by k. Every layer records the largest accumulator its
inputs can produce (`bound`); conversion refuses a model for which one reaches 2**52.

The network runs in two ways that give identical integers (arithmetic.py explains why):

* the full forward pass over a batch of windows, all positions at once: the encoder's one pass
  (codec/coder.py, chunks of windows bounded in memory), as `features(pixels)` and then `outputs`
  (the output layer, which a per-image calibration changes, so that the features of the windows
  the calibration samples are not computed twice; `forward` is the two together); on the CPU a
  window at a time in compiled calls (kernels.py);
* `stepper(batch, h, w)`: one position at a time with cached rows and keys/values (as
  models/stepper.py does in float): the decoder. On the CPU each step is one compiled call
  (kernels.py), and the decoder runs a chunk of steps, its searches included, as one (`decode`);
  the same integers as the torch code here, which is the reference and the GPU's path (there each
  predict and commit is captured once as a CUDA graph and replayed: `_capture`).

On the CPU both take and give numpy arrays and never import torch (a coding command's start-up is
otherwise mostly torch's import); on another device the torch code runs and gives tensors there.

Layout is channels-last (B, H, W, C) throughout: every layer is a matrix product over the last axis,
the same product in both ways (a 2x2 down-right-shifted conv reads (i-1, j-1), (i-1, j), (i, j-1),
(i, j) in that order).
"""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from ..lazy import F, torch
from ..mixture import num_params
from ..models.configs import PixelSNAILConfig
from . import arithmetic as ar
from .arithmetic import ONE


# ---------------------------------------------------------------------------------------------
# Conversion


def layout(cfg: PixelSNAILConfig) -> dict[str, tuple[int, int, tuple[int, int]]]:
    """Every conv of a PixelSNAIL (models/pixelsnail.py), by its name in a model file, in the order
    the network runs them: (outputs, inputs, kernel). What conversion reads; a file must hold
    exactly these, each as v (outputs, inputs, *kernel), g and b (outputs,)."""
    c, f, dk, dv, at = cfg.channels, cfg.filters, cfg.key_channels, cfg.value_channels, cfg.position_channels
    layers = {"input_above": (f, c + 1, (1, 3)), "input_left": (f, c + 1, (2, 1))}

    def resnet(name: str, width: int, kernel: tuple[int, int], aux: int = 0) -> None:
        layers[f"{name}.conv_in"] = (width, width, kernel)
        if aux:
            layers[f"{name}.aux_in"] = (width, aux, (1, 1))
        layers[f"{name}.conv_out"] = (2 * width, width, kernel)

    for b in range(cfg.blocks):
        for r in range(cfg.resnets_per_block):
            resnet(f"blocks.{b}.resnets.{r}", f, (2, 2))
        resnet(f"blocks.{b}.kv_resnet", c + f + at, (1, 1))
        layers[f"blocks.{b}.kv_proj"] = (dk + dv, c + f + at, (1, 1))
        resnet(f"blocks.{b}.q_resnet", f + at, (1, 1))
        layers[f"blocks.{b}.q_proj"] = (dk, f + at, (1, 1))
        resnet(f"blocks.{b}.out_resnet", f, (1, 1), aux=dv)
    layers["head"] = (num_params(c, cfg.mixtures), f, (1, 1))
    return layers


def check_weights(cfg: PixelSNAILConfig, weights: Mapping[str, np.ndarray]) -> None:
    """ValueError unless `weights` are exactly the parameters `layout(cfg)` names, in their shapes."""
    expected = {}
    for name, (outputs, inputs, kernel) in layout(cfg).items():
        expected.update({f"{name}.v": (outputs, inputs, *kernel), f"{name}.g": (outputs,), f"{name}.b": (outputs,)})
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise ValueError(f"weights do not match the config: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for name, shape in expected.items():
        if tuple(weights[name].shape) != shape:
            raise ValueError(f"weights do not match the config: {name} has shape {tuple(weights[name].shape)}, "
                             f"not {shape}")


def module_weights(model) -> dict[str, np.ndarray]:
    """A torch module's parameters as float32 arrays by name: what a model file holds."""
    return {name: t.detach().cpu().float().numpy() for name, t in model.state_dict().items()}


def effective_weight(v: np.ndarray, g: np.ndarray) -> np.ndarray:
    """g * v / |v| as float64 (out, kh * kw * in), inputs ordered (kernel row, column, channel);
    the norm summed by math.fsum so that no machine's reduction order can change a bit."""
    v, g = v.astype(np.float64), g.astype(np.float64)
    flat = v.reshape(v.shape[0], -1)
    norms = np.array([math.sqrt(math.fsum(row.tolist())) for row in flat * flat])
    weight = v * (g / norms).reshape(-1, 1, 1, 1)
    return weight.transpose(0, 2, 3, 1).reshape(v.shape[0], -1)


def _two_to(k) -> np.ndarray:
    """2**k for integer-valued k, exactly: ldexp sets the exponent, where np.exp2 may run a vector
    maths routine that is specified only to a few units in the last place."""
    return np.ldexp(1.0, np.asarray(k).astype(np.int64))


class IntegerLinear:
    """A conv as an integer matrix: out = round_half_up((x @ w + b) * 2**-k) per output channel,
    clamped to the activation range; x holds Q.12 integers, w * 2**-k the weights.

    The last `gate_channels` outputs feed a gate's sigmoid table: they are offset by 16 (in Q.12) and
    clamped to the table's range [0, 2 * 16] instead, so the gate reads the table directly."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray, name: str, gate_channels: int = 0):
        """weight (out, in) and bias (out,) as float64, already exactly what the layer computes."""
        largest = np.abs(weight).max(axis=1)
        shifts = [0 if m == 0 else min(ar.MAX_WEIGHT_SHIFT, ar.WEIGHT_BITS - math.frexp(m)[1]) for m in largest.tolist()]
        shift = np.array(shifts, dtype=np.float64)
        integer_weight = np.floor(weight * _two_to(shift)[:, None] + 0.5)
        integer_bias = np.floor(bias * _two_to(shift + ar.ACTIVATION_BITS) + 0.5)
        outputs = len(shifts)
        low = np.full(outputs, -float(ar.ACTIVATION_LIMIT))
        high = np.full(outputs, float(ar.ACTIVATION_LIMIT))
        if gate_channels:
            integer_bias[-gate_channels:] += ar.EXP_INPUT_LIMIT * _two_to(shift[-gate_channels:])
            low[-gate_channels:], high[-gate_channels:] = 0, 2 * ar.EXP_INPUT_LIMIT
        self.name = name
        if not np.isfinite(integer_bias).all():
            raise ValueError(f"{name}: a bias is not finite")
        # |w| <= 2**14 over fewer than 2**39 inputs: each row's float64 sum of |w| is exact.
        weight_sums = np.abs(integer_weight).sum(axis=1).tolist()
        self.bound = max(
            int(total) * ar.ACTIVATION_LIMIT + abs(int(b)) + 2 ** max(int(k) - 1, 0)
            for total, b, k in zip(weight_sums, integer_bias.tolist(), shifts)
        )
        if self.bound >= ar.ACCUMULATOR_LIMIT:
            raise ValueError(f"{name}: an accumulator could reach 2**{math.log2(max(self.bound, 1)):.1f}, "
                             "beyond exact float64 arithmetic")
        self.weight = integer_weight.T.copy()  # (in, out) integers
        self.bias = integer_bias  # integers, in units of 2**-(12 + k)
        self.shift = shift
        # What runs: the weights and bias times 2**-k, with the rounding's 1/2 in the bias. Every
        # partial sum is then an integer multiple of 2**-k below 2**(52 - k): exact, so flooring it
        # gives round_half_up of the integer accumulator times 2**-k.
        self._weight = self.weight * _two_to(-self.shift)
        self._bias = (self.bias + _two_to(self.shift - 1)) * _two_to(-self.shift)
        self._low, self._high = low, high
        self._gated = bool(gate_channels)
        self._on: dict[str, tuple] = {}  # the torch code's copies, by device

    @classmethod
    def from_conv(cls, weights: Mapping[str, np.ndarray], name: str, output_gain: np.ndarray | None = None,
                  output_shift: np.ndarray | None = None, input_gain: np.ndarray | None = None,
                  gate_channels: int = 0) -> IntegerLinear:
        """The conv `name` of a model's weights (its v, g and b)."""
        weight = effective_weight(weights[f"{name}.v"], weights[f"{name}.g"])
        bias = np.asarray(weights[f"{name}.b"], np.float64)
        if input_gain is not None:
            weight = weight * input_gain[None, :]
        if output_gain is not None:
            weight, bias = weight * output_gain[:, None], bias * output_gain
        if output_shift is not None:
            bias = bias + output_shift
        return cls(weight, bias, name, gate_channels)

    def _tensors(self, device) -> tuple:
        key = str(device)
        if key not in self._on:
            self._on[key] = tuple(torch.from_numpy(a).to(device) for a in (self._weight, self._bias, self._low, self._high))
        return self._on[key]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias, low, high = self._tensors(x.device)
        flat = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])
        out = torch.addmm(bias, flat, weight).floor_()
        out = torch.clamp(out, low, high) if self._gated else ar.clamp_activation(out)
        return out if x.dim() == 2 else out.view(*x.shape[:-1], -1)

    def down_right_2x2(self, h: torch.Tensor) -> torch.Tensor:
        """The 2x2 down-right-shifted conv over (B, H, W, C): each position's inputs at (i-1, j-1),
        (i-1, j), (i, j-1), (i, j), side by side, times the weight matrix."""
        height, width = h.shape[1:3]
        p = F.pad(h, (0, 0, 1, 0, 1, 0))
        return self(torch.cat([p[:, :height, :width], p[:, :height, 1:], p[:, 1:, :width], p[:, 1:, 1:]], dim=-1))


@dataclass
class IntegerResnet:
    """GatedResnet in integers: x + A * sigmoid(B), [A, B] = conv(ELU(conv(ELU(x)) + nin(ELU(aux))))."""

    conv_in: IntegerLinear
    conv_out: IntegerLinear
    aux_in: IntegerLinear | None
    spatial: bool  # 2x2 down-right-shifted convs (else 1x1)

    @classmethod
    def convert(cls, weights: Mapping[str, np.ndarray], name: str, spatial: bool) -> IntegerResnet:
        aux = IntegerLinear.from_conv(weights, f"{name}.aux_in") if f"{name}.aux_in.v" in weights else None
        gates = weights[f"{name}.conv_out.v"].shape[0] // 2
        return cls(IntegerLinear.from_conv(weights, f"{name}.conv_in"),
                   IntegerLinear.from_conv(weights, f"{name}.conv_out", gate_channels=gates), aux, spatial)

    def linears(self):
        return [lin for lin in (self.conv_in, self.conv_out, self.aux_in) if lin is not None]

    def _conv(self, which: int, linear: IntegerLinear, h: torch.Tensor, window) -> torch.Tensor:
        if not self.spatial:
            return linear(h)
        return linear(window(which, h)) if window is not None else linear.down_right_2x2(h)

    def forward(self, x: torch.Tensor, t: dict, aux: torch.Tensor | None = None, window=None) -> torch.Tensor:
        """Over (..., C): the full pass's (B, H, W, C), or one position of a batch, (B, C), where
        `window(which, h)` gives the 2x2 inputs of conv `which` (0: conv_in, 1: conv_out) from the
        stepper's row caches."""
        c1 = self._conv(0, self.conv_in, ar.elu(x, t), window)
        if aux is not None:
            c1 = ar.clamp_activation(c1 + self.aux_in(ar.elu(aux, t)))
        c2 = self._conv(1, self.conv_out, ar.elu(c1, t), window)
        a, b = c2.chunk(2, dim=-1)
        return ar.gate(x, a, b, t)


class IntegerPixelSNAIL:
    """The integer twin of a PixelSNAIL (see the module docstring). Outputs mixture parameters in Q.12,
    channels-last, in the layout of snailcompress.mixture."""

    def __init__(self, config: PixelSNAILConfig, input_above, input_left, blocks, head, device="cpu"):
        self.config, self.input_above, self.input_left, self.blocks, self.head = config, input_above, input_left, blocks, head
        self.device = "cpu"
        self.to(device)

    @classmethod
    def convert(cls, model, calibration=None) -> IntegerPixelSNAIL:
        """A float PixelSNAIL (torch module) in integers: `from_weights` of its parameters."""
        return cls.from_weights(model.config, module_weights(model), calibration)

    @classmethod
    def from_weights(cls, cfg, weights: Mapping[str, np.ndarray], calibration=None) -> IntegerPixelSNAIL:
        """A PixelSNAIL's config and float32 parameters (by their names in a model file: `layout`) in
        integers, without torch. `calibration`: a codec.calibration.Calibration folded into the head
        (or None)."""
        if not isinstance(cfg, PixelSNAILConfig):
            raise ValueError("only PixelSNAIL models convert to the integer network")
        if cfg.nonlinearity != "elu":
            raise ValueError(f"the integer network supports the paper's ELU, not {cfg.nonlinearity}")
        check_weights(cfg, weights)
        if cfg.key_channels > MAX_KEY_CHANNELS:
            raise ValueError(f"{cfg.key_channels} key channels are too many for exact attention logits "
                             f"(at most {MAX_KEY_CHANNELS})")
        if cfg.mixtures > MAX_MIXTURES:
            raise ValueError(f"{cfg.mixtures} mixture components are too many for the Q.16 component weights "
                             f"(at most {MAX_MIXTURES})")
        blocks = []
        query_gain = np.full(cfg.key_channels, 1.0 / math.sqrt(cfg.key_channels))
        for b in range(cfg.blocks):
            name = f"blocks.{b}"
            blocks.append({
                "resnets": [IntegerResnet.convert(weights, f"{name}.resnets.{i}", True) for i in range(cfg.resnets_per_block)],
                "kv_resnet": IntegerResnet.convert(weights, f"{name}.kv_resnet", False),
                "kv_proj": IntegerLinear.from_conv(weights, f"{name}.kv_proj"),
                "q_resnet": IntegerResnet.convert(weights, f"{name}.q_resnet", False),
                "q_proj": IntegerLinear.from_conv(weights, f"{name}.q_proj", output_gain=query_gain),
                "out_resnet": IntegerResnet.convert(weights, f"{name}.out_resnet", False),
            })
        head_args = {}
        outputs, features = weights["head.v"].shape[:2]
        if calibration is not None and calibration.outputs != outputs:
            raise ValueError(f"the calibration is for {calibration.outputs} outputs, the model has {outputs}")
        if calibration is not None and calibration.features not in (0, features):
            raise ValueError(f"the calibration is for {calibration.features} features, the model's head reads {features}")
        if calibration is not None:
            head_args["output_gain"] = 1.0 + np.array(calibration.scale, dtype=np.float64)
            head_args["output_shift"] = np.array(calibration.shift, dtype=np.float64)
            if calibration.features:
                head_args["input_gain"] = 1.0 + np.array(calibration.feature_gain, dtype=np.float64)
        head = IntegerLinear.from_conv(weights, "head", **head_args)
        return cls(cfg, IntegerLinear.from_conv(weights, "input_above"), IntegerLinear.from_conv(weights, "input_left"),
                   blocks, head)

    def linears(self) -> list[IntegerLinear]:
        out = [self.input_above, self.input_left]
        for block in self.blocks:
            for resnet in [*block["resnets"], block["kv_resnet"], block["q_resnet"], block["out_resnet"]]:
                out += resnet.linears()
            out += [block["kv_proj"], block["q_proj"]]
        return out + [self.head]

    def to(self, device) -> IntegerPixelSNAIL:
        """Run on `device` ("cpu", "cuda", a torch.device): `self.device` is its name. The CPU runs
        the compiled kernels and never imports torch; another device runs the torch code."""
        name = str(device)
        self.device = "cpu" if name.partition(":")[0] == "cpu" else str(torch.device(name))
        return self

    def digest(self) -> str:
        """SHA-256 of every integer weight, bias and shift: equal on every machine for the same model."""
        h = hashlib.sha256()
        for linear in self.linears():
            for t in (linear.weight, linear.bias, linear.shift):
                h.update(t.astype("<i8").tobytes())
        return h.hexdigest()

    # -----------------------------------------------------------------------------------------
    # The full forward pass (encoder)

    def forward(self, pixels, compiled: bool | None = None):
        """pixels: integer values 0..255, (B, C, H, W) -> mixture parameters (B, H, W, K), Q.12: a
        numpy array from the compiled kernels, a tensor from the torch code (`features`)."""
        return self.outputs(self.features(pixels, compiled))

    def outputs(self, features):
        """The output layer: features (..., F) -> mixture parameters (..., K), Q.12: for a numpy array,
        a numpy array (compiled: integer/kernels.py), for a tensor, a tensor on this device. The
        per-image calibration changes only this layer, so the encoder may compute the features
        before it knows the calibration (codec/calibration.py)."""
        if isinstance(features, np.ndarray):
            from . import kernels  # numba: imported where first needed

            out = kernels.outputs(self, features.reshape(-1, features.shape[-1]))
            return out.reshape(*features.shape[:-1], out.shape[-1])
        return self.head(features.to(self.device, torch.float64))

    def features(self, pixels, compiled: bool | None = None):
        """What the output layer reads, at every position: pixels 0..255 (B, C, H, W) -> (B, H, W, F)
        float64, Q.12. `compiled` (the default on the CPU): a window at a time in compiled calls
        (integer/kernels.py), numpy arrays in and out; else the torch code below, which takes an
        array or a tensor and gives a tensor on this device. The same integers either way."""
        compiled = self.device == "cpu" if compiled is None else compiled
        if compiled and self.device != "cpu":
            raise ValueError("the compiled kernels run on the CPU")
        check_positions(int(np.prod(np.shape(pixels)[2:])))
        if compiled:
            from . import kernels  # numba: imported where first needed

            return kernels.features(self, np.asarray(pixels))
        t = ar.on(self.device)
        x = t["pixels"][torch.as_tensor(pixels).to(self.device).long()].permute(0, 2, 3, 1)  # (B, H, W, C) Q.12
        batch, height, width, _ = x.shape
        xp = torch.cat([x, torch.full_like(x[..., :1], ONE)], dim=-1)
        above = F.pad(xp, (0, 0, 1, 1, 1, 0))  # one row on top, one column each side
        ul = self.input_above(torch.cat([above[:, :height, k : k + width] for k in range(3)], dim=-1))
        ul[:, 0] = 0  # down_shift: nothing above row 0
        left = F.pad(xp, (0, 0, 1, 0, 1, 0))
        from_left = self.input_left(torch.cat([left[:, :height, :width], left[:, 1:, :width]], dim=-1))
        from_left[:, :, 0] = 0  # right_shift: nothing left of column 0
        ul = ar.clamp_activation(ul + from_left)
        background = self._background(height, width).expand(batch, -1, -1, -1)
        for block in self.blocks:
            for resnet in block["resnets"]:
                ul = resnet.forward(ul, t)
            kv = block["kv_proj"](block["kv_resnet"].forward(torch.cat([x, ul, background], dim=-1), t))
            query = block["q_proj"](block["q_resnet"].forward(torch.cat([ul, background], dim=-1), t))
            key, value = kv.split([self.config.key_channels, self.config.value_channels], dim=-1)
            attended = _causal_attention(query.flatten(1, 2), key.flatten(1, 2), value.flatten(1, 2), t)
            ul = block["out_resnet"].forward(ul, t, aux=attended.view(batch, height, width, -1))
        return ar.elu(ul, t)

    def _background(self, height: int, width: int) -> torch.Tensor:
        rows = torch.from_numpy(ar.positional_channel(height)).to(self.device).view(height, 1).expand(height, width)
        cols = torch.from_numpy(ar.positional_channel(width)).to(self.device).view(1, width).expand(height, width)
        return torch.stack([rows, cols], dim=-1).repeat_interleave(self.config.position_channels // 2, dim=-1).unsqueeze(0)

    def stepper(self, batch: int, height: int, width: int) -> IntegerStepper:
        return IntegerStepper(self, batch, height, width)


#: the most positions a window may have: the attention's weighted sums (a weight below 2**16 times a
#: value below 2**20 at each position) stay below ACCUMULATOR_LIMIT, so exact, below 2**16 positions
MAX_WINDOW_POSITIONS = (ar.ACCUMULATOR_LIMIT - 1) // ((1 << ar.ATTENTION_WEIGHT_BITS) * ar.ACTIVATION_LIMIT)


#: the most key channels: a logit sums key_channels products of two activations (each at most
#: ACTIVATION_LIMIT), so it stays below ACCUMULATOR_LIMIT, exact in any order
MAX_KEY_CHANNELS = (ar.ACCUMULATOR_LIMIT - 1) // ar.ACTIVATION_LIMIT**2
#: the most mixture components: the prior's largest weight, 2**16 of at most 2**16 each, must not
#: normalise to 0 (a pixel whose components all weigh nothing has no distribution)
MAX_MIXTURES = 1 << ar.ATTENTION_WEIGHT_BITS


def check_positions(positions: int) -> None:
    """A window of this many positions keeps the attention exact (MAX_WINDOW_POSITIONS), else ValueError."""
    if positions > MAX_WINDOW_POSITIONS:
        raise ValueError(f"windows of {positions} positions are too large for exact attention")


_MASKED = -float(1 << 60)  # a logit no real one comes near (|logit| <= key_channels * 2**40 < 2**52): its weight is exp(-huge) = 0
QUERY_BLOCK = 64  # queries per block of the full pass's attention (temporaries of a few MB, not n^2)


def _attention_weights(logits: torch.Tensor, t: dict) -> torch.Tensor:
    """exp(logit - max) in Q.16 (N, ..., P) of Q.24 logits, masked positions holding _MASKED; the
    distance to the max is floored to Q.12 and clamped at 16, where the table is 0."""
    top = logits.amax(dim=-1, keepdim=True)
    distance = torch.sub(top, logits, out=logits).mul_(1.0 / ONE).clamp_(0, ar.EXP_INPUT_LIMIT)
    index = distance.to(torch.int32)  # >= 0: truncation floors
    return t["exp16"].index_select(0, index.view(-1)).view(index.shape)


def _normalise(weighted: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """round_half_up(weighted / total) with int64 floor division (total > 0)."""
    num, den = weighted.to(torch.int64), total.to(torch.int64)
    return torch.div(2 * num + den, 2 * den, rounding_mode="floor").to(torch.float64)


def _causal_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, t: dict) -> torch.Tensor:
    """(B, N, dk), (B, N, dk), (B, N, dv) -> (B, N, dv): position i attends to positions j < i;
    position 0, which has nothing to attend to, gets 0. In blocks of queries, each reading only the
    keys before its last query."""
    batch, n, _ = query.shape
    out = torch.zeros(batch, n, value.shape[-1], dtype=torch.float64, device=query.device)
    keys = key.transpose(1, 2)
    for a in range(1, n, QUERY_BLOCK):
        b = min(n, a + QUERY_BLOCK)
        logits = torch.bmm(query[:, a:b], keys[:, :, : b - 1])  # (B, b - a, b - 1)
        later = torch.arange(b - 1, device=query.device) >= torch.arange(a, b, device=query.device).unsqueeze(1)
        weights = _attention_weights(logits.masked_fill_(later, _MASKED), t)
        out[:, a:b] = _normalise(torch.bmm(weights, value[:, : b - 1]), weights.sum(dim=-1, keepdim=True))
    return out


def step_attention(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, position: torch.Tensor,
                   t: dict | None = None) -> torch.Tensor:
    """One position of the attention for a batch of slots, in torch (the reference; kernels.attend
    is the compiled step's): query (B, dk), keys (B, dk, n), values (B, dv, n), each slot attending to its own
    positions before `position` (B,); a slot at position 0 gets 0. -> (B, dv) float64. Over all n
    positions, the later ones masked (their weight is 0), so that nothing depends on the positions'
    values but the arithmetic: no shape, no branch, nothing the host must wait for (a CUDA graph
    replays it as captured)."""
    logits = torch.bmm(query.unsqueeze(1), keys.double())  # (B, 1, n)
    later = torch.arange(keys.shape[2], device=query.device) >= position.unsqueeze(1)
    weights = _attention_weights(logits.masked_fill_(later.unsqueeze(1), _MASKED), t or ar.on(str(query.device)))
    out = _normalise(torch.bmm(weights, values.transpose(1, 2).double()), weights.sum(dim=-1, keepdim=True)).squeeze(1)
    return out.masked_fill_((position == 0).unsqueeze(1), 0.0)  # all masked: every weight was the largest


# ---------------------------------------------------------------------------------------------
# The incremental stepper (decoder)


class IntegerStepper:
    """The integer network one position at a time for a batch of windows (the interface of
    models/stepper.py: predict(), commit(values, advance), restart(slots)); each slot has its own
    position. Gives exactly the integers of `IntegerPixelSNAIL.forward` at every position. Compiled,
    a commit's work is done at the start of the next predict (or restart), in the same call. In
    torch, a predict and a commit each read and write only tensors that stay where they are (the
    state below and the commit's input buffers), with no shape or branch that depends on their
    values: on a CUDA device each is captured once as a CUDA graph and replayed (`_capture`).

    A slot may wait at its position for any number of steps: a step that does not move a slot on
    changes nothing that its later steps read (they write again whatever it wrote first). So
    `predict(slots)` may leave out the slots whose outputs nobody needs; compiled, they are not
    stepped at all (the decoder's slots that have not started, or have finished).

    State, per slot: its position; its window's pixels so far (padded, with the ones channel); two
    rows of each 2x2 conv's inputs (`caches`, one pair per spatial resnet, rows alternating with
    the window's row); and each block's keys and values at every position so far, channel by channel
    ((dk, n) and (dv, n) a slot: the compiled attention's loops run along positions)."""

    def __init__(self, net: IntegerPixelSNAIL, batch: int, height: int, width: int, compiled: bool | None = None,
                 cuda_graphs: bool = True):
        """`compiled`: run each step as one compiled call (integer/kernels.py; the default on the
        CPU) instead of torch operations; the same integers either way. Keys, values and the row
        caches are then stored as float32, exact for these integers (below 2**20 in magnitude).
        `cuda_graphs`: on a CUDA device, replay each predict and commit as a CUDA graph (else launch
        their operations one by one; the same integers)."""
        cfg, device = net.config, net.device
        self.compiled = device == "cpu" if compiled is None else compiled
        if self.compiled and device != "cpu":
            raise ValueError("the compiled kernels run on the CPU")
        check_positions(height * width)
        self.net, self.cfg, self.batch, self.height, self.width, self.device = net, cfg, batch, height, width, device

        def zeros(*shape, dtype="float64"):  # numpy arrays for the kernels, else tensors on the device
            return np.zeros(shape, dtype) if self.compiled else torch.zeros(shape, dtype=getattr(torch, dtype), device=device)

        self.position = zeros(batch, dtype="int64")
        spatial = cfg.blocks * cfg.resnets_per_block
        stored = "float32" if self.compiled else "float64"
        self.caches = zeros(2 * spatial, batch * 2 * (width + 1), cfg.filters, dtype=stored)  # resnet r's pair: 2r, 2r + 1
        n = height * width
        self.keys = zeros(cfg.blocks, batch, cfg.key_channels, n, dtype=stored)
        self.values = zeros(cfg.blocks, batch, cfg.value_channels, n, dtype=stored)
        self.features = zeros(cfg.blocks, batch, cfg.filters)  # each block's input to attention, for commit
        self.pixels = zeros(batch * (height + 1) * (width + 2), cfg.channels + 1)  # padded, with the ones channel
        self.rows, self.cols = ar.positional_channel(height), ar.positional_channel(width)
        self._stepped: np.ndarray | None = None  # the slots of the last predict, until its commit
        self._pending: tuple[np.ndarray, ...] | None = None  # a compiled commit not yet done: slots, values, advance
        if not self.compiled:
            self.t = ar.on(device)
            self.rows, self.cols = (torch.from_numpy(a).to(device) for a in (self.rows, self.cols))
            self._slots = torch.arange(batch, device=device)
            self._commit_values = zeros(batch, cfg.channels, dtype="int64")  # what commit() hands its step
            self._commit_advance = zeros(batch, dtype="int64")
            state = [self.position, self.caches, self.keys, self.values, self.features, self.pixels,
                     self._commit_values, self._commit_advance]
            captured = cuda_graphs and torch.device(device).type == "cuda"
            self._graphs = _capture(self._predict_tensors, self._commit_tensors, state, device) if captured else None

    def restart(self, slots: np.ndarray) -> None:
        """Start these slots (a boolean mask) on a new window. Only the row caches' odd rows are
        cleared: a window's first row reads them as the row above, and everything else it reads it
        has written before (the caches' even rows, the pixels) or nothing ever writes (the pixels'
        padding, each row's left edge), as in the first window."""
        self._commit_pending()
        slots = np.asarray(slots, np.bool_)
        if self.compiled:
            self.position[slots] = 0
            self.caches.reshape(len(self.caches), self.batch, 2, -1)[:, slots, 1] = 0.0
            return
        mask = torch.from_numpy(slots).to(self.device)  # a mask, not indices: nothing to wait for
        self.position.masked_fill_(mask, 0)
        self.caches.view(len(self.caches), self.batch, 2, -1)[:, :, 1].masked_fill_(mask.unsqueeze(1), 0.0)

    def predict(self, slots: np.ndarray | None = None):
        """Mixture parameters (B, K), Q.12, of the pixel at each slot's position: a numpy array
        compiled, else a tensor on the device. `slots`: a boolean mask (B,) of the slots whose
        parameters are wanted (default: all); compiled, only those are stepped and the other rows
        are 0 (torch steps every slot). Only those may move on at the commit that follows."""
        self._stepped = np.ones(self.batch, np.bool_) if slots is None else np.asarray(slots, np.bool_)
        if self.compiled:
            return self._compiled_step(predict=True)
        if self._graphs is None:
            return self._predict_tensors()
        graph, result, _ = self._graphs
        graph.replay()
        return result.clone()  # the next replay overwrites `result`

    def _predict_tensors(self) -> torch.Tensor:
        """predict() in torch: every slot's parameters (B, K) at its position."""
        net, where = self.net, self._where()
        above = net.input_above(self.pixels.index_select(0, where.pixels_above).view(self.batch, -1))
        left = net.input_left(self.pixels.index_select(0, where.pixels_left).view(self.batch, -1))
        ul = ar.clamp_activation(above * (where.i > 0).unsqueeze(1) + left * (where.j > 0).unsqueeze(1))
        for b, block in enumerate(net.blocks):
            for r, resnet in enumerate(block["resnets"]):
                pair = 2 * (b * len(block["resnets"]) + r)
                ul = resnet.forward(ul, self.t, window=lambda which, h, pair=pair: where.window(self.caches[pair + which], h))
            self.features[b] = ul
            query = block["q_proj"](block["q_resnet"].forward(torch.cat([ul, where.background], 1), self.t))
            attended = step_attention(query, self.keys[b], self.values[b], self.position, self.t)
            ul = block["out_resnet"].forward(ul, self.t, aux=attended)
        return net.head(ar.elu(ul, self.t))

    def decode(self, schedule: tuple[np.ndarray, ...], canvases: np.ndarray, streams: tuple[np.ndarray, ...]) -> np.ndarray:
        """Compiled: a chunk of the decoder's steps (codec/coder.py) in one call, each a restart,
        predict and commit as the decoder calls them, with the coded values between, decoded from
        `streams` (integer/kernels.py: decode_steps, which says what each argument holds); the
        chunk's last commit is left to do, as commit() leaves it. Returns the bits each step's
        planes took (S, P)."""
        from . import kernels  # numba: imported where first needed

        if not self.compiled:
            raise ValueError("decode() runs the compiled kernels: a compiled stepper's")
        if self._stepped is not None:
            raise RuntimeError("decode() must follow a commit(), not a predict()")
        committed, values, moving = self._pending or (np.zeros(self.batch, np.bool_),
                                                      np.zeros((self.batch, self.cfg.channels), np.int64),
                                                      np.zeros(self.batch, np.int64))
        bits = kernels.decode_steps(self.net, self._state(), (committed, values, moving), schedule, canvases, *streams,
                                    self.cfg.mixtures)
        self._pending = (schedule[0][-1].copy(), values, schedule[2][-1].astype(np.int64))
        return bits

    def _compiled_step(self, predict: bool) -> np.ndarray | None:
        from . import kernels  # numba: imported where first needed

        pending, self._pending = self._pending, None
        return kernels.step(self.net, self._state(), pending, self._stepped if predict else None)

    def _commit_pending(self) -> None:
        if self._pending is not None:
            self._compiled_step(predict=False)

    def _state(self) -> tuple[np.ndarray, ...]:
        """What the compiled step reads and changes (integer/kernels.py)."""
        return self.position, self.pixels, self.caches, self.keys, self.values, self.features, self.rows, self.cols

    def _where(self) -> _Where:
        return _Where(self.position, self._slots, self.rows, self.cols, self.height, self.width,
                      self.cfg.position_channels // 2)

    def commit(self, values: np.ndarray, advance: np.ndarray | None = None) -> None:
        """Pixel values (B, C) 0..255 at each slot's position; slots in `advance` (B,) move on (only
        slots that the last predict stepped may). Numpy arrays (or CPU tensors)."""
        if self._stepped is None:
            raise RuntimeError("commit() must follow predict() for the same position")
        stepped, self._stepped = self._stepped, None
        moving = np.ones(self.batch, np.int64) if advance is None else np.asarray(advance).astype(np.int64)
        if moving[~stepped].any():
            raise ValueError("a slot that predict() did not step cannot move on")
        values = np.asarray(values).astype(np.int64)
        if self.compiled:  # done at the start of the next predict or restart, in the same compiled call
            self._pending = (stepped, values, moving)
            return
        self._commit_values.copy_(torch.from_numpy(values))
        self._commit_advance.copy_(torch.from_numpy(moving))
        if self._graphs is None:
            self._commit_tensors()
        else:
            self._graphs[2].replay()

    def _commit_tensors(self) -> None:
        """commit() in torch, of the values and advance in its buffers."""
        where = self._where()
        x = self.t["pixels"][self._commit_values]
        self.pixels.index_copy_(0, where.pixel_write, torch.cat([x, torch.full_like(x[:, :1], ONE)], 1))
        for b, block in enumerate(self.net.blocks):
            kv = block["kv_proj"](block["kv_resnet"].forward(torch.cat([x, self.features[b], where.background], 1), self.t))
            self.keys[b, self._slots, :, self.position] = kv[:, : self.cfg.key_channels]
            self.values[b, self._slots, :, self.position] = kv[:, self.cfg.key_channels :]
        self.position += self._commit_advance


class _Where:
    """Where each slot of a torch stepper reads and writes at its position: its row caches' rows
    (write; read above-left, above, left, here), its pixels above and to its left, where its pixel
    goes, and its position channels."""

    def __init__(self, position: torch.Tensor, slots: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                 height: int, width: int, copies: int):
        i, j = position // width, position % width
        current = (slots * 2 + i % 2) * (width + 1)
        previous = (slots * 2 + (i + 1) % 2) * (width + 1)
        self.row_write = current + j + 1
        self.row_read = torch.stack([previous + j, previous + j + 1, current + j, current + j + 1], 1).view(-1)
        base = slots * (height + 1) * (width + 2) + i * (width + 2) + j
        self.pixels_above = torch.stack([base, base + 1, base + 2], 1).view(-1)
        self.pixels_left = torch.stack([base, base + width + 2], 1).view(-1)
        self.pixel_write = base + width + 3
        self.background = torch.stack([rows[i], cols[j]], 1).repeat_interleave(copies, dim=1)
        self.i, self.j = i, j

    def window(self, cache: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """A 2x2 conv's inputs (B, 4 C): `value` (B, C) written to its cache, the four read back."""
        cache.index_copy_(0, self.row_write, value)
        return cache.index_select(0, self.row_read).view(len(value), -1)


def _capture(predict, commit, state: list[torch.Tensor], device: str) -> tuple | None:
    """A torch stepper's predict() and commit(), which read and write only `state` (new: all zeros)
    and buffers, captured as CUDA graphs on `device`: one launch for a step's hundreds of small
    kernels, which, launched one at a time from Python, take far longer than they run. Returns
    (predict's graph, the tensor it writes its result to, commit's graph), or None, with a warning,
    where capture fails (the steps then run as they are: slower, the same integers). A warm-up runs
    both first (libraries set themselves up, and tables are made, outside the capture); the state is
    zeroed again after."""
    with torch.cuda.device(device):
        stream = torch.cuda.Stream()  # capture may not use the default stream
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                predict(), commit()
            torch.cuda.synchronize()
            graphs, results = (torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()), []
            try:
                for graph, work in zip(graphs, (predict, commit)):
                    graph.capture_begin()
                    try:
                        results.append(work())
                    finally:
                        graph.capture_end()
            except RuntimeError as error:
                warnings.warn(f"the decoder's steps run without CUDA graphs (slower): {error}", RuntimeWarning)
                graphs = None
        torch.cuda.current_stream().wait_stream(stream)
        for tensor in state:
            tensor.zero_()
        torch.cuda.synchronize()
    return None if graphs is None else (graphs[0], results[0], graphs[1])
