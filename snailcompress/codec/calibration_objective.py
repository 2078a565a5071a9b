"""The calibration's objective, compiled: the float model's NLL of a sample of pixels under a
calibrated output layer, and its gradient, in float64 (codec/calibration.py fits with it). No file's
arithmetic depends on it: the encoder sends the calibration it fits; so it lives apart from the
integer network's kernels (integer/kernels.py), and in numba rather than torch because importing
torch would be most of an encode's start-up. Its pixels are shared among the coding threads as the
kernels' rows are (integer/runtime.py).

Its work is some thirty bins a pixel, each five exponentials or logarithms: numba calls libm for
those one number at a time, so they are written here as polynomials over a block's pixels at once,
loops that LLVM turns into SIMD instructions. They are compiled with numpy's error model: numba's
default checks every division for a zero divisor, to raise, and that check keeps LLVM from
vectorising a loop that divides (no divisor here can be zero: 1 + exp(-|a|) >= 1, sums of exp(0)
and more >= 1, 1 - exp(-width) >= 1e-30).
"""

from __future__ import annotations

import numba
import numpy as np

from .. import mixture as mixture_float
from ..integer.runtime import one_thread_per_product, share_rows

_HALF_BIN = mixture_float.BIN_HALF_WIDTH
_LOG_SCALE_MIN = mixture_float.LOG_SCALE_MIN
FIT_ROWS_PER_BLOCK = 256  # pixels of a thread's run (see integer/kernels.py: COUNT_ROWS_PER_BLOCK), computed side by side

_LOG2E = 1.4426950408889634
_LN2_HIGH, _LN2_LOW = 6.93147180369123816490e-01, 1.90821492927058770002e-10  # ln 2 = high + low, high * k exact
_ROUNDER = 6755399441055744.0  # 1.5 * 2**52: adding it rounds a double to an integer, held in its low bits
_EXP_BIAS_BITS = np.int64(1023)
_MANTISSA = np.int64((1 << 52) - 1)
_ONE_BITS = np.int64(1023 << 52)  # 1.0
_TWO52_BITS = np.int64(0x4330000000000000)  # 2**52
_SQRT2 = 1.4142135623730951
_EXP_LOWEST = -708.0  # exp below this would be subnormal: taken as 0


@numba.njit(cache=True, inline="always", error_model="numpy")
def _exp_reduced(r):  # pragma: no cover (compiled)
    """exp(r) for |r| <= ln(2)/2: its Taylor series to r**13 (the rest below 2**-55 of it), in
    Estrin's order, whose short chains of dependent operations let a core overlap many at once."""
    r2 = r * r
    r4 = r2 * r2
    low = ((1.0 + r) + (1.0 / 2.0 + r * (1.0 / 6.0)) * r2
           + ((1.0 / 24.0 + r * (1.0 / 120.0)) + (1.0 / 720.0 + r * (1.0 / 5040.0)) * r2) * r4)
    high = ((1.0 / 40320.0 + r * (1.0 / 362880.0)) + (1.0 / 3628800.0 + r * (1.0 / 39916800.0)) * r2
            + (1.0 / 479001600.0 + r * (1.0 / 6227020800.0)) * r4)
    return low + high * (r4 * r4)


@numba.njit(cache=True, inline="always", error_model="numpy")
def _exp_into(x, out, bits):  # pragma: no cover (compiled)
    """out = exp(x) entry by entry, for x <= 709 (0 below _EXP_LOWEST, NaN for NaN), within a few units
    in the last place; out may be x; bits: int64 scratch at least as long. exp(x) = 2**k exp(r),
    x = k ln 2 + r; 2**k is built from its bits (numba has no vector ldexp)."""
    n = len(x)
    bits, scaled = bits[:n], bits[:n].view(np.float64)
    for i in range(n):
        v = _EXP_LOWEST if x[i] < _EXP_LOWEST else x[i]  # a NaN stays NaN
        t = v * _LOG2E + _ROUNDER  # k in t's low bits (no fast-math here or in a caller: it would fold this away)
        k = t - _ROUNDER
        out[i] = 0.0 if x[i] < _EXP_LOWEST else _exp_reduced((v - k * _LN2_HIGH) - k * _LN2_LOW)
        scaled[i] = t
    for i in range(n):
        bits[i] = (bits[i] + _EXP_BIAS_BITS) << 52  # 2**k: k + 1023 in the exponent's bits
    for i in range(n):
        out[i] *= scaled[i]


@numba.njit(cache=True, inline="always", error_model="numpy")
def _expm1_series(v):  # pragma: no cover (compiled)
    """exp(v) - 1 for |v| < 0.34, without cancelling: v + v**2 / 2 + ... + v**14 / 14!."""
    v2 = v * v
    v4 = v2 * v2
    low = (1.0 + v * (1.0 / 2.0)) + (1.0 / 6.0 + v * (1.0 / 24.0)) * v2 + ((1.0 / 120.0 + v * (1.0 / 720.0))
                                                                         + (1.0 / 5040.0 + v * (1.0 / 40320.0)) * v2) * v4
    high = ((1.0 / 362880.0 + v * (1.0 / 3628800.0)) + (1.0 / 39916800.0 + v * (1.0 / 479001600.0)) * v2
            + (1.0 / 6227020800.0 + v * (1.0 / 87178291200.0)) * v4)
    return (low + high * (v4 * v4)) * v


@numba.njit(cache=True, inline="always", error_model="numpy")
def _expm1_into(x, out, bits):  # pragma: no cover (compiled)
    """out = exp(x) - 1 for x <= 0, near 0 without cancelling (its Taylor series to x**14); out may be
    x (so the series is kept aside, in bits[n:2n], 2.0 where it is not used: exp(x) - 1 is never 2);
    bits: int64 scratch at least twice as long."""
    n = len(x)
    small = bits[n : 2 * n].view(np.float64)  # scratch: the series where |x| is small
    for i in range(n):
        v = x[i]
        small[i] = _expm1_series(v) if v > -0.34 else 2.0  # 2.0: not used
    _exp_into(x, out, bits)
    for i in range(n):
        out[i] = small[i] if small[i] != 2.0 else out[i] - 1.0


@numba.njit(cache=True, inline="always", error_model="numpy")
def _log_into(x, out, bits):  # pragma: no cover (compiled)
    """out = log(x) entry by entry, for normal x > 0 (NaN for any other), within a few units in the
    last place; out may be x; bits: int64 scratch at least twice as long. x = 2**e m, m in
    (sqrt(2)/2, sqrt(2)], and log(m)
    = log(1 + f) = f - s (f - R), s = f / (2 + f), R = 2 s**2 / 3 + 2 s**4 / 5 + ... (fdlibm's form)."""
    n = len(x)
    mantissa, exponent = bits[:n], bits[n : 2 * n]
    m_float, e_float = mantissa.view(np.float64), exponent.view(np.float64)
    for i in range(n):
        m_float[i] = x[i]
    for i in range(n):
        b = mantissa[i]
        exponent[i] = (b >> 52) | _TWO52_BITS  # 2**52 + the biased exponent, as a double
        mantissa[i] = (b & _MANTISSA) | _ONE_BITS  # m in [1, 2)
    for i in range(n):
        m, e = m_float[i], e_float[i] - (4503599627370496.0 + 1023.0)
        if m > _SQRT2:
            m, e = 0.5 * m, e + 1.0
        f = m - 1.0
        s = f / (2.0 + f)
        z = s * s
        z2 = z * z
        z4 = z2 * z2
        r = ((2.0 / 3.0 + z * (2.0 / 5.0)) + (2.0 / 7.0 + z * (2.0 / 9.0)) * z2 + ((2.0 / 11.0 + z * (2.0 / 13.0))
             + (2.0 / 15.0 + z * (2.0 / 17.0)) * z2) * z4 + ((2.0 / 19.0 + z * (2.0 / 21.0)) + z2 * (2.0 / 23.0)) * (z4 * z4))
        log = e * _LN2_HIGH + ((f - s * (f - r * z)) + e * _LN2_LOW)
        out[i] = log if 0.0 < x[i] < np.inf else np.nan  # (never here) rather than a finite number


@numba.njit(cache=True, inline="always", error_model="numpy")
def _exp_from_largest_into(rows, exps, n, top, total, bits):  # pragma: no cover (compiled)
    """A log-sum-exp's parts, pixel by pixel (columns i < n) over the M rows of exps: top[i] the
    largest rows[k, i], exps[k, i] = exp(rows[k, i] - top[i]) (exps may be rows) and total[i] their
    sum, so that the log-sum-exp is top + log(total)."""
    m = len(exps)
    top[:] = rows[0, :n]
    for k in range(1, m):
        row = rows[k, :n]
        for i in range(n):
            top[i] = max(top[i], row[i])
    total[:] = 0.0
    for k in range(m):
        source, row = rows[k, :n], exps[k, :n]
        for i in range(n):
            row[i] = source[i] - top[i]
        _exp_into(row, row, bits)
        for i in range(n):
            total[i] += row[i]


@numba.njit(cache=True, inline="always", error_model="numpy")
def _bin_alone(plus, minus, x, inverse):  # pragma: no cover (compiled)
    """A bin's log-probability and its derivatives with respect to the mean and the log-scale, one at
    a time through libm: for the tails (values 0 and 255) and bins too unlikely for one product."""
    if x < -0.999:  # value 0: the whole left tail, sigmoid(plus)
        down = 1.0 / (1.0 + np.exp(plus))  # sigmoid(-plus)
        return min(plus, 0.0) - np.log1p(np.exp(-abs(plus))), -inverse * down, -plus * down
    if x > 0.999:  # value 255: the whole right tail, sigmoid(-minus)
        up = 1.0 / (1.0 + np.exp(-minus))  # sigmoid(minus)
        return min(-minus, 0.0) - np.log1p(np.exp(-abs(minus))), inverse * up, minus * up
    width = max(plus - minus, 1e-30)
    inside = -np.expm1(-width)
    b = min(plus, 0.0) - np.log1p(np.exp(-abs(plus))) + min(-minus, 0.0) - np.log1p(np.exp(-abs(minus))) + np.log(inside)
    plus_down, minus_up = 1.0 / (1.0 + np.exp(plus)), 1.0 / (1.0 + np.exp(-minus))
    ds = minus * minus_up - plus * plus_down - (0.0 if plus - minus < 1e-30 else width * (1.0 - inside) / inside)
    return b, inverse * (minus_up - plus_down), ds


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _calibrated_blocks(first, step, features, weight, bias, calibration, x, mixtures, nll, d_outputs, products):  # pragma: no cover (compiled)
    """Blocks first, first + step, ... of FIT_ROWS_PER_BLOCK pixels: each pixel's NLL into nll, and
    where d_outputs (blocks, K) and products (blocks, K, F) have rows, each block's sum of the
    gradients G (K, pixels) with respect to the calibrated outputs and G @ features.

    The NLL is -mixture.pixel_log_prob. Component k's bin in channel c, of mean mu and log-scale s
    (clamped below at LOG_SCALE_MIN), has probability sigmoid(plus) - sigmoid(minus), plus, minus =
    (x - mu +- 1/255) exp(-s), that is sigmoid(plus) sigmoid(-minus) (1 - exp(minus - plus))
    (mixture.py's closed form; a tail's alone for values 0 and 255). The NLL is -logsumexp_k(log w_k
    + sum_c b_ck), b the bins' log-probabilities; its gradient: w_k - r_k for logit k (r_k the
    component's posterior), -r_k db_ck/dmu for a mean, -r_k db_ck/ds for a log-scale (0 where
    clamped), and for a coefficient, its mean's times the known value times tanh's derivative. Every
    quantity is a row over the block's pixels."""
    gain, shift, feature_gain = calibration
    outputs, channels, m = weight.shape[0], x.shape[1], mixtures
    slot = 3 if channels == 3 else 2
    size = FIT_ROWS_PER_BLOCK
    params, grads = np.empty((outputs, size)), np.empty((outputs, size))  # outputs, then G, (K, pixels)
    prior, joint, coefficient = np.empty((m, size)), np.empty((m, size)), np.empty((3, m, size))
    values = np.empty((channels, size))
    top, total, inverse, plus, minus = np.empty(size), np.empty(size), np.empty(size), np.empty(size), np.empty(size)
    e_plus, e_minus, inside, b = np.empty(size), np.empty(size), np.empty(size), np.empty(size)
    plus_up, plus_down, minus_up, minus_down = np.empty(size), np.empty(size), np.empty(size), np.empty(size)
    bits, alone = np.empty(2 * size, np.int64), np.empty(size, np.int64)
    want = len(d_outputs) > 0
    for block in range(first, (len(nll) + size - 1) // size, step):
        start = block * size
        mine = features[start : start + size]
        n = len(mine)
        z = np.dot(weight, (mine * feature_gain).T)  # (K, n): the outputs before the output calibration
        for k in range(outputs):
            for i in range(n):
                params[k, i] = (z[k, i] + bias[k]) * gain[k] + shift[k]
        for c in range(channels):
            for i in range(n):
                values[c, i] = x[start + i, c]
        t, s, w = top[:n], total[:n], b[:n]
        _exp_from_largest_into(params, prior, n, t, s, bits)  # the mixture weights' log-sum-exp
        _log_into(s, w, bits)
        for k in range(m):
            for i in range(n):
                joint[k, i] = params[k, i] - (t[i] + w[i])  # log w_k
                prior[k, i] /= s[i]
        if channels == 3:
            for j in range(3):
                for k in range(m):
                    raw_coefficient, tanh_row = params[m + j * slot * m + 2 * m + k, :n], coefficient[j, k, :n]
                    for i in range(n):
                        tanh_row[i] = -2.0 * abs(raw_coefficient[i])
                    _exp_into(tanh_row, tanh_row, bits)  # tanh(|a|) = (1 - e) / (1 + e), e = exp(-2 |a|)
                    for i in range(n):
                        th = (1.0 - tanh_row[i]) / (1.0 + tanh_row[i])
                        tanh_row[i] = th if raw_coefficient[i] >= 0.0 else -th
        for c in range(channels):
            base = m + c * slot * m
            xc = values[c, :n]
            for k in range(m):
                mean, raw = params[base + k, :n], params[base + m + k, :n]
                g_mean, g_scale = grads[base + k, :n], grads[base + m + k, :n]  # d b / d mean, d b / d log-scale
                inv, pl, mi = inverse[:n], plus[:n], minus[:n]
                for i in range(n):
                    inv[i] = -max(raw[i], _LOG_SCALE_MIN)
                _exp_into(inv, inv, bits)
                centred = w  # x - mu, the mean moved by the channels before (RGB)
                if c == 0:
                    for i in range(n):
                        centred[i] = xc[i] - mean[i]
                elif c == 1:
                    alpha, red = coefficient[0, k, :n], values[0, :n]
                    for i in range(n):
                        centred[i] = xc[i] - (mean[i] + alpha[i] * red[i])
                else:
                    beta, gamma, red, green = coefficient[1, k, :n], coefficient[2, k, :n], values[0, :n], values[1, :n]
                    for i in range(n):
                        centred[i] = xc[i] - (mean[i] + beta[i] * red[i] + gamma[i] * green[i])
                for i in range(n):
                    pl[i] = inv[i] * (centred[i] + _HALF_BIN)
                    mi[i] = inv[i] * (centred[i] - _HALF_BIN)
                ep, em, within = e_plus[:n], e_minus[:n], inside[:n]
                pu, pd, mu, md = plus_up[:n], plus_down[:n], minus_up[:n], minus_down[:n]  # sigmoid(+-plus), sigmoid(+-minus)
                for i in range(n):
                    ep[i], em[i] = -abs(pl[i]), -abs(mi[i])
                for i in range(n):
                    within[i] = -max(pl[i] - mi[i], 1e-30)
                _exp_into(ep, ep, bits)
                _exp_into(em, em, bits)
                _expm1_into(within, within, bits)
                for i in range(n):  # sigmoid(+-plus) from exp(-|plus|), then the same for minus
                    high = 1.0 / (1.0 + ep[i])
                    pu[i], pd[i] = (high, ep[i] * high) if pl[i] >= 0.0 else (ep[i] * high, high)
                for i in range(n):
                    high = 1.0 / (1.0 + em[i])
                    mu[i], md[i] = (high, em[i] * high) if mi[i] >= 0.0 else (em[i] * high, high)
                for i in range(n):
                    within[i] = -within[i]  # 1 - exp(-width)
                for i in range(n):
                    w[i] = pu[i] * md[i] * within[i]  # the bin's mass
                for i in range(n):
                    g_mean[i] = inv[i] * (mu[i] - pd[i])
                for i in range(n):  # d log(1 - exp(-width)) / d width = 1 / expm1(width) = (1 - within) / within
                    width = pl[i] - mi[i]
                    g_scale[i] = mi[i] * mu[i] - pl[i] * pd[i] - (0.0 if width < 1e-30 else width * (1.0 - within[i]) / within[i])
                count = 0
                for i in range(n):
                    if not w[i] > 1e-300 or xc[i] < -0.999 or xc[i] > 0.999:
                        alone[count] = i
                        count += 1
                        w[i] = 1.0  # any number: put right below
                _log_into(w, w, bits)
                for i in alone[:count]:
                    w[i], g_mean[i], g_scale[i] = _bin_alone(pl[i], mi[i], xc[i], inv[i])
                row = joint[k, :n]
                for i in range(n):
                    row[i] += w[i]
                    g_scale[i] = g_scale[i] if raw[i] >= _LOG_SCALE_MIN else 0.0
        _exp_from_largest_into(joint, joint, n, t, s, bits)  # the pixel's log-sum-exp over its components
        _log_into(s, w, bits)
        for i in range(n):
            nll[start + i] = -(t[i] + w[i])
        if want:
            for k in range(m):
                for i in range(n):
                    posterior = joint[k, i] / s[i]
                    grads[k, i] = prior[k, i] - posterior
                    for c in range(channels):
                        base = m + c * slot * m
                        grads[base + k, i] *= -posterior
                        grads[base + m + k, i] *= -posterior
                if channels == 3:  # d mu_G / d raw alpha = r (1 - alpha^2), and so on
                    for i in range(n):
                        grads[m + 2 * m + k, i] = grads[m + slot * m + k, i] * values[0, i] * (1.0 - coefficient[0, k, i] ** 2)
                        grads[m + slot * m + 2 * m + k, i] = grads[m + 2 * slot * m + k, i] * values[0, i] * (1.0 - coefficient[1, k, i] ** 2)
                        grads[m + 2 * slot * m + 2 * m + k, i] = grads[m + 2 * slot * m + k, i] * values[1, i] * (1.0 - coefficient[2, k, i] ** 2)
            for k in range(outputs):
                acc = 0.0
                for i in range(n):
                    acc += grads[k, i]
                d_outputs[block, k] = acc
            np.dot(grads if n == size else np.ascontiguousarray(grads[:, :n]), mine, products[block])


def calibrated_nll(features: np.ndarray, weight: np.ndarray, bias: np.ndarray, scale: np.ndarray, shift: np.ndarray,
                   feature_gain: np.ndarray, x: np.ndarray, mixtures: int, gradient: bool = False):
    """The NLL in nats (N,) of each pixel whose channels' bin centres are x (N, C), in [-1, 1], under
    the float mixture parameters ((features * (1 + feature_gain)) @ weight.T + bias) * (1 + scale) +
    shift, as mixture.pixel_log_prob gives them, in float64; features (N, F), weight (K, F), the rest
    (K,) or (F,). With `gradient`, also G's sum over the pixels (K,) and G.T @ features (K, F), G
    (N, K) the NLL's gradient with respect to the outputs: what the calibration's gradient needs
    (codec/calibration.py). Blocks of pixels are shared among the threads and summed in order: no
    thread count changes a bit."""
    one_thread_per_product()
    features, x = np.ascontiguousarray(features, np.float64), np.ascontiguousarray(x, np.float64)
    outputs, blocks = len(bias), -(-len(features) // FIT_ROWS_PER_BLOCK)
    nll = np.empty(len(features))
    d_outputs = np.empty((blocks, outputs) if gradient else (0, outputs))
    products = np.empty((blocks, outputs, features.shape[1]) if gradient else (0, outputs, features.shape[1]))
    calibration = tuple(np.ascontiguousarray(a, np.float64) for a in (1.0 + scale, shift, 1.0 + feature_gain))
    share_rows(_calibrated_blocks, blocks, features, np.ascontiguousarray(weight, np.float64), np.asarray(bias, np.float64),
           calibration, x, mixtures, nll, d_outputs, products)
    if not gradient:
        return nll, None, None
    return nll, d_outputs.sum(axis=0), products.sum(axis=0)
