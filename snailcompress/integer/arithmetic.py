"""The fixed-point arithmetic of the integer network: its rules, its bounds and its lookup tables.

Why this is portable. Every tensor on the coding path holds integers, stored as float64 (fast matrix
products on every BLAS and GPU) or int64 (on the CPU, the decoder's stored keys, values and row
caches as float32 and the lookup tables in the narrowest type that holds them, kernels.py: integers
below 2**24 are exact in float32 too). IEEE 754 binary64 adds and multiplies
integers exactly, in any order and with or without fused multiply-add, while every intermediate
magnitude stays below 2**53; every sum of the network is built so that it stays below 2**52 (`ACCUMULATOR_LIMIT`,
checked per layer, and for the attention's logits and weighted sums, when a model is converted:
network.py), in units of the layer's 2**-k (a layer whose weights needed k < 0 sums multiples of
2**-k: larger than 2**53, still exact). Multiplying by a power of two is exact
too, and `floor` is exact, so one rounding rule, `round_half_up(x) = floor(x + 1/2)`, written as
a multiply by 2**-k of an integer that already holds the 1/2, is the only requantisation of
activations (and of the attention's normalisation: an int64 division in torch, a float quotient
corrected to the same integer in the compiled kernels). Table indices are floors of
non-negative values; the mixture's cumulative counts are int64 floor divisions, exact everywhere. TF32 and other reduced-precision modes apply to float32 and bfloat16
only, never to these float64 products.

The nonlinearities (ELU, the gates' sigmoid, the softmax's exp, tanh, exp of the log-scales and the
logistic CDF) are lookup tables. They are built from Python integers only (a Taylor series of
exp(-1/4096) to 2**-96 and repeated exact multiplication), never from libm, so every machine builds
the same tables; `TABLE_DIGEST` pins them, and a change to any rule or table is a new
ARITHMETIC_VERSION, never a silently different table. Building them takes a noticeable share of a
small image's command, so the first build is kept in a cache file, which is read back only when its
SHA-256 is the pinned one (anything else, a stale or damaged file included, is built again).

Number formats:

* activations: Q.12 (value * 4096), clamped to |a| <= ACTIVATION_LIMIT = 2**20 (|value| <= 256);
* weights: per output channel w * 2**k rounded, |w| <= 2**14, so a requantisation is a shift by k;
* attention weights: exp(-d) as Q.16; mixture weights Q.16; component CDFs Q.20 (of z floored to 1/8192);
* frequency tables: integer counts summing to 2**24 - 256 (the range coder adds 1 to each).
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

from ..lazy import torch

ARITHMETIC_VERSION = 1  # what a .snail header names; bump with any change to a rule or table
#: SHA-256 of version 1's tables (`table_digest`); tests/test_integer.py pins the same value independently
TABLE_DIGEST = "e5e6352564d93efdbc6c93242916f8c808b2fbc3d676602e165a4d93b2d8c7e1"

ACTIVATION_BITS = 12  # Q.12 activations
ONE = 1 << ACTIVATION_BITS
ACTIVATION_LIMIT = 1 << 20
WEIGHT_BITS = 14  # |integer weight| <= 2**14
MAX_WEIGHT_SHIFT = 40  # a channel of (near) zero weights gets at most this shift
ACCUMULATOR_LIMIT = 1 << 52  # every float64 accumulator stays below this (exact, and +1/2 exact)

EXP_INPUT_LIMIT = 16 * ONE  # exp(-x) for x in Q.12 up to 16; beyond, the tables' outputs are 0 or saturated
ATTENTION_WEIGHT_BITS = 16  # exp(-d) in Q.16: the attention's (and the mixture's) weights
CDF_BITS = 20  # component CDFs in Q.20
CDF_TABLE_STEP_BITS = 13  # the logistic CDF table has 8192 entries per unit of z (z floored to that grid)
CDF_Z_LIMIT = 16  # z outside [-16, 16) is clamped: sigmoid(16) is 1 to within 2**-23
INVERSE_SCALE_BITS = 26  # 1 / (127.5 * scale) in Q.26
LOG_SCALE_LIMIT = 7 * ONE  # log-scales clamped to [-7, 7] (the reference clamps at -7 below)
MEAN_LIMIT = 2 * ONE  # means clamped to [-2, 2] on the [-1, 1] pixel scale
TANH_INPUT_LIMIT = 8 * ONE  # tanh(8) is 1 to within 2**-22
PRECISION_BITS = 24  # the range coder's tables are counts out of 2**24
TABLE_TOTAL = (1 << PRECISION_BITS) - 256  # constriction gives each of the 256 symbols count + 1 out of 2**24

_PRECISION = 96  # bits of the exact fixed-point exp used to build the tables (errors stay below 2**-70)


@functools.lru_cache(maxsize=None)
def _exp_neg(count: int, bits: int = ACTIVATION_BITS) -> tuple[int, ...]:
    """exp(-k / 2**bits) * 2**96 for k = 0..count, from integers only (the same on every machine)."""
    one = 1 << _PRECISION
    term, step, n = one, one, 0
    while term:  # Taylor series of exp(-1/2**bits), each term rounded toward zero
        n += 1
        term = term // ((1 << bits) * n)
        step += -term if n % 2 else term
    out = [one]
    for _ in range(count):
        out.append((out[-1] * step + (one >> 1)) >> _PRECISION)
    return tuple(out)


@functools.lru_cache(maxsize=None)
def tables() -> dict[str, np.ndarray]:
    """Every lookup table of arithmetic version 1, as int64 arrays (torch tensors: `on`): from the
    cache file where it holds the pinned tables, else built (and the cache written)."""
    built = _read_cache()
    if built is None:
        built = build_tables()
        if table_digest(built) == TABLE_DIGEST:
            _write_cache(built)
    for table in built.values():
        table.flags.writeable = False  # shared by every caller
    return built


def build_tables() -> dict[str, np.ndarray]:
    """Every lookup table of arithmetic version 1, built from Python integers, as int64 arrays."""
    e = _exp_neg(EXP_INPUT_LIMIT)
    one, half = 1 << _PRECISION, 1 << (_PRECISION - 1)
    # ELU(-k/4096) = exp(-k/4096) - 1, Q.12, k = 0..65536
    elu = [((x * ONE + half) >> _PRECISION) - ONE for x in e]
    # sigmoid(x), x = (i - 65536)/4096, Q.12: sigmoid(-x) = 1 - sigmoid(x) by construction
    sig_pos = [(ONE * one * 2 // (one + x) + 1) >> 1 for x in e]  # round(4096 / (1 + exp(-x)))
    sigmoid = [ONE - s for s in reversed(sig_pos[1:])] + sig_pos
    # exp(-k/4096) in Q.16: the softmax's and the mixture weights' exp
    exp16 = [(x * (1 << ATTENTION_WEIGHT_BITS) + half) >> _PRECISION for x in e]
    # tanh(k/4096) = (1 - exp(-2x)) / (1 + exp(-2x)), Q.12, k = 0..8*4096; odd by construction
    tanh_pos = [(2 * ONE * (one - e[2 * k]) // (one + e[2 * k]) + 1) >> 1 for k in range(TANH_INPUT_LIMIT + 1)]
    tanh = [-t for t in reversed(tanh_pos[1:])] + tanh_pos
    # 1 / (127.5 * exp(l)) for l = (i - 7*4096)/4096, Q.26: the logistic's inverse scale in bin units
    q = 1 << INVERSE_SCALE_BITS
    inverse_scale = []
    for i in range(2 * LOG_SCALE_LIMIT + 1):
        k = i - LOG_SCALE_LIMIT  # log-scale * 4096
        if k >= 0:  # exp(-l) = e[k] / 2**96
            inverse_scale.append((2 * q * 2 * e[k] // (255 * one) + 1) >> 1)
        else:  # exp(-l) = 2**96 / e[-k]
            inverse_scale.append((2 * q * 2 * one // (255 * e[-k]) + 1) >> 1)
    # logistic CDF at z = j/8192, Q.20, j = -16*8192..16*8192 (index j + 16*8192)
    c = 1 << CDF_BITS
    limit = CDF_Z_LIMIT << CDF_TABLE_STEP_BITS
    fine = _exp_neg(limit, CDF_TABLE_STEP_BITS)
    cdf_pos = [(2 * c * one // (one + x) + 1) >> 1 for x in fine]
    cdf = [c - s for s in reversed(cdf_pos[1:])] + cdf_pos
    pixels = [((2 * v - 255) * 2 * ONE + 255) // 510 for v in range(256)]  # (v - 127.5)/127.5, Q.12
    built = {"elu": elu, "sigmoid": sigmoid, "exp16": exp16, "tanh": tanh, "inverse_scale": inverse_scale,
             "cdf": cdf, "pixels": pixels}
    return {name: np.array(values, dtype=np.int64) for name, values in built.items()}


def table_digest(built: dict[str, np.ndarray] | None = None) -> str:
    """SHA-256 of every table (as little-endian int64), in name order: what version 1 pins.
    `built`: tables as build_tables gives them (default: `tables()`)."""
    built = tables() if built is None else built
    digest = hashlib.sha256(f"arithmetic {ARITHMETIC_VERSION}".encode())
    for name, table in sorted(built.items()):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(table, dtype="<i8").tobytes())
    return digest.hexdigest()


def cache_dirs() -> list[Path]:
    """Where the tables' cache file may live, first choice first: beside the compiled kernels'
    cache (this package's __pycache__, as numba chooses), else the user's cache directory."""
    user = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "snailcompress"
    return [Path(__file__).parent / "__pycache__", user]


def _cache_name() -> str:
    return f"arithmetic-{ARITHMETIC_VERSION}-tables.npz"


def _read_cache() -> dict[str, np.ndarray] | None:
    """The cached tables, if a cache file holds exactly the pinned ones (no pickles are read)."""
    for folder in cache_dirs():
        try:
            with np.load(folder / _cache_name(), allow_pickle=False) as stored:
                built = {name: stored[name] for name in stored.files}
        except Exception:  # missing, unreadable, truncated or not an npz at all (zipfile's, zlib's, numpy's errors)
            continue
        if all(v.dtype == np.int64 and v.ndim == 1 for v in built.values()) and table_digest(built) == TABLE_DIGEST:
            return built
    return None


def _write_cache(built: dict[str, np.ndarray]) -> None:
    """Keep the tables in the first cache folder that can be written (a temporary file, then a
    rename: a reader never sees half a file); none writable leaves them uncached."""
    for folder in cache_dirs():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=folder, suffix=".npz.tmp")
            try:
                with os.fdopen(handle, "wb") as f:
                    np.savez(f, **built)
                os.chmod(temporary, 0o644)  # mkstemp's 0600 would keep other users to their own copy
                os.replace(temporary, folder / _cache_name())
            finally:
                if os.path.exists(temporary):
                    os.unlink(temporary)
            return
        except OSError:
            continue


class _DeviceTables(dict):
    """A device's tables. ELU over the whole activation range (16 MB) is made on first use: only the
    torch network reads it, not the compiled kernels."""

    def __missing__(self, name: str) -> torch.Tensor:
        if name != "elu_all":
            raise KeyError(name)
        x = torch.arange(-ACTIVATION_LIMIT, ACTIVATION_LIMIT + 1, dtype=torch.float64, device=self["elu"].device)
        self[name] = torch.where(x >= 0, x, self["elu"][(-x).clamp(0, EXP_INPUT_LIMIT).long()])
        return self[name]


@functools.lru_cache(maxsize=None)
def on(device: str) -> dict[str, torch.Tensor]:
    """The tables on a torch device as float64 tensors (copied once), with two derived from them to
    save steps: ELU over the whole activation range ("elu_all", made when first read), and the
    sigmoid divided by 4096 (exact: a power of two)."""
    t = _DeviceTables({name: torch.from_numpy(table.astype(np.float64)).to(device) for name, table in tables().items()})
    t["sigmoid_over_one"] = t["sigmoid"] / ONE
    return t


def positional_channel(length: int) -> np.ndarray:
    """(i - L/2)/L for i = 0..L-1 in Q.12 (float64), rounded half up with integers (the reference's
    position channels)."""
    return np.array([((2 * i - length) * ONE * 2 + 2 * length) // (4 * length) for i in range(length)], np.float64)


# ---------------------------------------------------------------------------------------------
# Elementwise integer operations (float64 tensors of integers in, the same out)


def clamp_activation(x: torch.Tensor) -> torch.Tensor:
    return x.clamp_(-ACTIVATION_LIMIT, ACTIVATION_LIMIT)


def elu(x: torch.Tensor, t: dict[str, torch.Tensor]) -> torch.Tensor:
    """ELU in Q.12 of activations (|x| <= 2**20): x where x >= 0, else the ELU table at -x (clamped
    at 16, where it is -1), read from one table over the whole range."""
    index = (x + ACTIVATION_LIMIT).to(torch.int32)
    return t["elu_all"].index_select(0, index.view(-1)).view(x.shape)


def gate(x: torch.Tensor, a: torch.Tensor, b_index: torch.Tensor, t: dict[str, torch.Tensor]) -> torch.Tensor:
    """x + a * sigmoid(b), rounded half up to Q.12 and clamped; b_index = b + 16 in Q.12, already
    clamped to the table (network.IntegerLinear's gate channels). x + a * s / 4096 + 1/2 is exact
    (x integer, a * s an integer below 2**33), so its floor is x + round_half_up(a * s / 4096)."""
    s = t["sigmoid_over_one"].index_select(0, b_index.to(torch.int32).view(-1)).view(b_index.shape)
    return clamp_activation(torch.addcmul(x, a, s).add_(0.5).floor_())
