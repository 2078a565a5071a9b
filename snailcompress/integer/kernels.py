"""Compiled CPU kernels (numba) for the two hot spots of decoding: one position's attention and the
mixture's frequency tables.

Each gives exactly the integers of the torch code it replaces on the CPU (`network.step_attention`,
`IntegerConditionals.tables`; tests compare them directly): every value is an integer or a multiple
of a power of two, every product and sum stays exact in float64 or int64 (arithmetic.py), so neither
the order of a sum, nor fused multiply-add, nor the number of threads can change a bit. They are
faster because they do less, not because they round differently:

* attention reads keys and values stored as float32 (integers below 2**20: exact), half the memory
  traffic of float64, and reads each slot only up to its own position, in one pass;
* the tables skip components of zero weight and, per component, the edges where its CDF is
  saturated at the table's ends (the CDF's argument grows with the edge, so those are a prefix and
  a suffix), adding their constant contribution through a difference array.

Rows (slots, pixels) are independent and run in parallel on torch's number of threads (--threads).
On a GPU the torch code runs instead; it is the reference.
"""

from __future__ import annotations

import functools

import numba
import numpy as np
import torch

from . import arithmetic as ar
from .mixture import EDGE_ONE as _EDGE_ONE
from .mixture import TABLE_CENTRE as _CENTRE

_ONE = ar.ONE
_EXP_LIMIT = ar.EXP_INPUT_LIMIT
_TOP = 2 * _CENTRE  # the CDF table's last index
_TOTAL = ar.TABLE_TOTAL
_CDF_BITS = ar.CDF_BITS


def _run(serial, parallel, *args) -> None:
    """Run a kernel on torch's number of threads (--threads): one thread runs the serial version,
    which starts no thread pool at all. numba's parallel one runs in its OpenMP layer, which shares
    torch's OpenMP runtime and, starting, sets that runtime's thread count to its own: torch's is set
    back after it. (numba's own pool, "workqueue", leaves torch alone but gained nothing from a
    second thread; the OpenMP pool beside a busy core and OMP_NUM_THREADS=1 made one thread slower.)"""
    threads = torch.get_num_threads()
    if threads == 1:
        serial(*args)
        return
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    parallel(*args)
    torch.set_num_threads(threads)


@functools.lru_cache(maxsize=None)
def _table(name: str) -> np.ndarray:
    return np.ascontiguousarray(ar.tables()[name].numpy().astype(np.int64))


@numba.njit(cache=True)
def _attend_row(b, query, keys, values, position, exp16, out):  # pragma: no cover (compiled)
    key_channels, value_channels = query.shape[1], values.shape[2]
    p = position[b]
    acc = np.zeros(value_channels)
    if p == 0:  # nothing to attend to: 0, as in the full pass
        out[b] = acc
        return
    logits = np.zeros(p)  # q . k: integers below 2**44, exact in any order
    for c in range(key_channels):  # channel by channel: the inner loop runs along positions
        q, row = query[b, c], keys[b, c]
        for j in range(p):
            logits[j] += q * row[j]
    top = logits.max()
    total = 0
    for j in range(p):
        distance = (top - logits[j]) * (1.0 / _ONE)  # exact; truncation floors (>= 0)
        if distance >= _EXP_LIMIT:  # the table is 0 from there on
            continue
        w = exp16[int(distance)]
        if w == 0:
            continue
        total += w
        for c in range(value_channels):  # w * v below 2**36, sums below 2**47: exact
            acc[c] += w * values[b, j, c]
    for c in range(value_channels):  # round_half_up(acc / total), as arithmetic's _normalise
        out[b, c] = float((2 * np.int64(acc[c]) + total) // (2 * total))


@numba.njit(cache=True)
def _attend_serial(query, keys, values, position, exp16, out):  # pragma: no cover (compiled)
    for b in range(len(query)):
        _attend_row(b, query, keys, values, position, exp16, out)


@numba.njit(parallel=True, cache=True)
def _attend_parallel(query, keys, values, position, exp16, out):  # pragma: no cover (compiled)
    for b in numba.prange(len(query)):
        _attend_row(b, query, keys, values, position, exp16, out)


def attend(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """Attention of each slot's query (B, dk) float64 over its own earlier positions: keys (B, dk, n)
    and values (B, n, dv) float32 holding integers, positions (B,) -> (B, dv) float64, Q.12."""
    out = np.empty((query.shape[0], values.shape[2]))
    _run(_attend_serial, _attend_parallel, query.numpy(), keys.numpy(), values.numpy(), position.numpy(),
         _table("exp16"), out)
    return torch.from_numpy(out)


@numba.njit(cache=True)
def _mixture_row(i, weights, mean, inverse, cdf, out):  # pragma: no cover (compiled)
    mixtures = weights.shape[1]
    mixed = np.zeros(256, np.int64)  # sum_k w_k cdf_k at edges 1..255 (index e - 1)
    constant = np.zeros(257, np.int64)  # a difference array: saturated edges' contributions
    total = 0
    for k in range(mixtures):
        w = weights[i, k]
        if w == 0:
            continue
        total += w
        inv = inverse[i, k]
        offset = _CENTRE - mean[i, k] * inv  # exact (integer/mixture.py: _cdf)
        step = _EDGE_ONE * inv
        # the CDF's argument at edge e + 1 is ((e + 1) * EDGE_ONE - ONE) * inv + offset, increasing
        # with e; start a little below the estimated first unsaturated edge, and check that the
        # edge before the start is saturated (else start at the first edge)
        first = int(max(0.0, min(255.0, (-offset / step) + _ONE / _EDGE_ONE - 1.0 - 2.0)))
        if first > 0 and float(first * _EDGE_ONE - _ONE) * inv + offset > 0.0:
            first = 0
        constant[0] += w * cdf[0]
        constant[first] -= w * cdf[0]
        last = 255
        for e in range(first, 255):
            v = float((e + 1) * _EDGE_ONE - _ONE) * inv + offset
            if v >= _TOP:
                last = e
                break
            mixed[e] += w * cdf[int(v) if v > 0.0 else 0]
        constant[last] += w * cdf[_TOP]
    denominator = total << _CDF_BITS
    running, previous = 0, 0
    for e in range(255):
        running += constant[e]
        cumulative = ((mixed[e] + running) * _TOTAL) // denominator
        out[i, e] = cumulative - previous
        previous = cumulative
    out[i, 255] = _TOTAL - previous


@numba.njit(cache=True)
def _mixture_serial(weights, mean, inverse, cdf, out):  # pragma: no cover (compiled)
    for i in range(len(weights)):
        _mixture_row(i, weights, mean, inverse, cdf, out)


@numba.njit(parallel=True, cache=True)
def _mixture_parallel(weights, mean, inverse, cdf, out):  # pragma: no cover (compiled)
    for i in numba.prange(len(weights)):
        _mixture_row(i, weights, mean, inverse, cdf, out)


def mixture_counts(weights: torch.Tensor, mean: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """Frequency tables (N, 256) int64 of the mixture: component weights (N, M) int64 (each row's sum
    above 0), means (N, M) Q.13 and inverse scales (N, M) as integer/mixture.py computes them."""
    out = np.empty((weights.shape[0], 256), np.int64)
    _run(_mixture_serial, _mixture_parallel, weights.numpy(), mean.contiguous().numpy(), inverse.contiguous().numpy(),
         _table("cdf"), out)
    return torch.from_numpy(out)
