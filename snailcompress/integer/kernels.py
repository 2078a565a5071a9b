"""Compiled CPU kernels (numba): the network's full pass a window at a time (the encoder), its whole
step at one position (the decoder), and, from the network's outputs, each subpixel's two cumulative
counts (the encoder) or its value, searched for in the range coder's stream (the decoder).

Each gives exactly the integers of the torch code it replaces on the CPU (`IntegerPixelSNAIL.forward`,
`IntegerStepper`, `IntegerConditionals.symbol_bounds`, and constriction's range decoder reading
`IntegerConditionals.tables`; tests compare them directly): every value is an integer or a multiple
of a power of two, every product and sum stays exact in float64 or int64 (arithmetic.py), so neither
the order of a sum, nor fused multiply-add, nor the number of threads can change a bit (the one
quotient taken in floats, the attention's rounded average, is corrected to the exact integer:
`_divide_half_up`). They are
faster because they do less, not because they round differently:

* the network's matrix products go to BLAS (numba's np.dot, through SciPy) and everything between
  them (requantising, lookup tables, the 2x2 convs' inputs, gates) runs in compiled loops, one pass
  each instead of several torch operations; a full pass runs a window at a time (its arrays stay in
  cache), a step (a commit, then a predict) is one call instead of some two hundred torch operations,
  and its attention reads keys and values stored as float32 (integers below 2**20: exact), channel by
  channel, only up to each slot's own position; the step's row caches and every lookup table are
  stored in the narrowest type that holds their integers exactly (the step streams tens of MB of
  keys and values, and what else it reads misses the cache less the smaller it is);
* the encoder's counts take the component weights and the CDFs at a value's two edges only; the
  decoder runs constriction's range decoder itself and finds each value by searching the pixel's
  cumulative counts at a few edges (the same two counts, at the value found), where constriction's
  decoder needs all 256 counts of every table, which took longer to build than the network's step;
* the decoder's loop runs a chunk of steps (network, search, network, ...) in one call, its
  threads meeting between the parts of each step (runtime.meet) instead of being handed each part,
  so that no step pays for Python or for waking a sleeping thread.

Rows (windows, slots, pixels, planes) are independent: runtime.share_rows shares them among
--threads threads, each running the whole computation on its share; a plane's symbols are one
stream, read in order on one thread (planes decoded together, each with its own stream, are shared).
The decoder's loop is the one kernel whose shares wait for each other, at each step's two meetings.
On a GPU the torch code runs the network instead (it is the reference), and the decoder's search
still runs here, on the network's outputs copied to the CPU.
"""

from __future__ import annotations

import functools

import numba
import numpy as np

from . import arithmetic as ar
from .mixture import EDGE_ONE as _EDGE_ONE
from .mixture import INVERSE_TO_GRID
from .mixture import TABLE_CENTRE as _CENTRE
from .runtime import give_up, meet, one_thread_per_product, share_rows

_ONE = ar.ONE
_EXP_LIMIT = ar.EXP_INPUT_LIMIT
_TOP = 2 * _CENTRE  # the CDF table's last index
_TOTAL = ar.TABLE_TOTAL
_CDF_BITS = ar.CDF_BITS
_LIMIT = float(ar.ACTIVATION_LIMIT)
_WEIGHT_BITS = ar.ATTENTION_WEIGHT_BITS
_CDF_ONE = 1 << ar.CDF_BITS
_PRECISION_BITS = float(ar.PRECISION_BITS)
_MEAN_LIMIT = float(ar.MEAN_LIMIT)
_LOG_SCALE_LIMIT = float(ar.LOG_SCALE_LIMIT)
_TANH_LIMIT = float(ar.TANH_INPUT_LIMIT)
_INVERSE_TO_GRID = INVERSE_TO_GRID
_QUERY_BLOCK = 32  # queries per block of the full pass's attention
COUNT_ROWS_PER_BLOCK = 256  # rows of a thread's run: a pixel's counts take a microsecond or so, a hand-over some tens



@functools.lru_cache(maxsize=None)
def _table(name: str, dtype=np.int64) -> np.ndarray:
    """A lookup table as `dtype`, a copy the kernels own (the shared tables are read-only)."""
    return np.array(ar.tables()[name], dtype)


@numba.njit(cache=True, fastmath={"reassoc", "contract", "nnan", "ninf", "nsz"})
def _attend_row(query, keys, values, p, exp16, index, out):  # pragma: no cover (compiled)
    """One slot's attention: its query (dk,) over its keys (dk, n) and values (dv, n) at positions
    before p, into out (dv,); index: int32 scratch of at least p (_exp_of_distances), the caller's, so
    that a step allocates it once for all its slots. Every loop runs along positions, so each vectorises. The fast-math
    flags change no value here: sums may be reassociated (every term and partial sum is an integer
    below 2**53, exact in any order; a fused multiply-add of integers is exact too), no value is ever
    NaN, infinite or a zero whose sign matters, and the rounded average (_divide_half_up) only
    compares integers with products whose rounding, where there is any, keeps their order."""
    key_channels, value_channels = len(query), values.shape[0]
    if p == 0:  # nothing to attend to: 0, as in the full pass
        out[:] = 0.0
        return
    logits = np.zeros(p)  # q . k: integers of at most key_channels * 2**40 < 2**52 (network.from_weights)
    c = 0
    while c + 4 <= key_channels:  # four channels a pass: a quarter of the passes over the logits
        q0, q1, q2, q3 = query[c], query[c + 1], query[c + 2], query[c + 3]
        k0, k1, k2, k3 = keys[c], keys[c + 1], keys[c + 2], keys[c + 3]
        for j in range(p):
            logits[j] += q0 * k0[j] + q1 * k1[j] + q2 * k2[j] + q3 * k3[j]
        c += 4
    for c in range(c, key_channels):
        q, k0 = query[c], keys[c]
        for j in range(p):
            logits[j] += q * k0[j]
    weights = logits  # exp(-distance) in place of each logit, 0 from the table's end on
    total = _exp_of_distances(logits, p, exp16, index)
    c = 0
    while c + 4 <= value_channels:  # four channels a pass: each weight read once for four
        v0, v1, v2, v3 = values[c], values[c + 1], values[c + 2], values[c + 3]
        a0 = a1 = a2 = a3 = 0.0  # w * v below 2**36, sums below 2**52 (below 2**16 positions)
        for j in range(p):
            w = weights[j]
            a0 += w * v0[j]
            a1 += w * v1[j]
            a2 += w * v2[j]
            a3 += w * v3[j]
        out[c], out[c + 1], out[c + 2], out[c + 3] = a0, a1, a2, a3
        c += 4
    for c in range(c, value_channels):
        row, acc = values[c], 0.0
        for j in range(p):
            acc += weights[j] * row[j]
        out[c] = acc
    _divide_half_up(out, total, out)


@numba.njit(cache=True, inline="always")
def _largest(row, count):  # pragma: no cover (compiled)
    """The largest of row[:count] (count >= 1), kept in eight running maxima: one running maximum is
    a chain of dependent comparisons, one at a time, where eight independent ones run side by side
    in a vector (none of these values is NaN, so the order of comparisons cannot matter)."""
    t0 = t1 = t2 = t3 = t4 = t5 = t6 = t7 = row[0]
    j = 0
    while j + 8 <= count:
        t0, t1, t2, t3 = max(t0, row[j]), max(t1, row[j + 1]), max(t2, row[j + 2]), max(t3, row[j + 3])
        t4, t5, t6, t7 = max(t4, row[j + 4]), max(t5, row[j + 5]), max(t6, row[j + 6]), max(t7, row[j + 7])
        j += 8
    for j in range(j, count):
        t0 = max(t0, row[j])
    return max(max(max(t0, t1), max(t2, t3)), max(max(t4, t5), max(t6, t7)))


@numba.njit(cache=True, inline="always")
def _exp_of_distances(row, count, exp16, index):  # pragma: no cover (compiled)
    """The softmax's weights in place of its logits row[:count] (each a product of two Q.12 numbers):
    exp16 at each one's distance below the largest, divided by 4096 and floored to Q.12 (exact),
    clamped where exp16 is 0; returns their sum (an integer below 2**32: exact). In three loops, each
    of which vectorises (the table indices into `index`, int32 scratch of at least `count`; the
    lookups; the sum), where one loop doing all three did not."""
    top = _largest(row, count)
    for j in range(count):
        index[j] = np.int32(min((top - row[j]) * (1.0 / _ONE), _EXP_LIMIT))
    for j in range(count):
        row[j] = exp16[np.uint32(index[j])]  # unsigned: no check for a negative index
    total = 0.0
    for j in range(count):
        total += row[j]
    return total


@numba.njit(cache=True, inline="always")
def _divide_half_up(weighted, total, out):  # pragma: no cover (compiled)
    """out = round_half_up(weighted / total) = floor((2 weighted + total) / (2 total)), entry by entry,
    as network._normalise, without an integer division (slow). A window has fewer than 2**16
    positions (network.check_positions), each weight is at most 2**16 and each value at most 2**20 in
    magnitude, so the denominator is below 2**33, the numerator an integer below 2**53 (exact) and
    the quotient at most 2**20 + 1: the float quotient is within 2**-30 of the exact one, its floor
    at most 1 off either way. The checks below put that right: each compares the exact numerator
    with a product that is exact below 2**53 and, above it, rounded without passing the numerator."""
    denominator = 2.0 * total
    reciprocal = 1.0 / denominator
    for c in range(len(out)):
        numerator = 2.0 * weighted[c] + total
        quotient = np.floor(numerator * reciprocal)
        if quotient * denominator > numerator:
            quotient -= 1.0
        elif (quotient + 1.0) * denominator <= numerator:
            quotient += 1.0
        out[c] = quotient


@numba.njit(cache=True, nogil=True)
def _attend_rows(first, step, query, keys, values, position, exp16, out):  # pragma: no cover (compiled)
    index = np.empty(keys.shape[2], np.int32)
    for b in range(first, len(out), step):
        _attend_row(query[b], keys[b], values[b], position[b], exp16, index, out[b])


def attend(query: np.ndarray, keys: np.ndarray, values: np.ndarray, position: np.ndarray) -> np.ndarray:
    """The step's attention on its own (tests check it at the arithmetic's limits): each slot's query
    (B, dk) float64 over its own earlier positions, keys (B, dk, n) and values (B, dv, n) float32
    holding integers, positions (B,) int64 -> (B, dv) float64, Q.12."""
    out = np.empty((query.shape[0], values.shape[1]))
    share_rows(_attend_rows, len(out), query, keys, values, position, _step_tables()[2], out)
    return out


# ---------------------------------------------------------------------------------------------
# The network's layers, shared by the decoder's step and the encoder's full pass


class PackedNetwork:
    """An IntegerPixelSNAIL's layers in three flat arrays, the form the compiled step reads: every
    weight matrix (in, out) of `network.linears()`, in that order, one after the other (`weights`);
    per layer its bias, low and high clamps (`vectors`); and per layer (weight offset, inputs,
    outputs, vector offset) (`layers`). What runs is each IntegerLinear's own `_weight` and `_bias`."""

    def __init__(self, net):
        linears = net.linears()
        weights, vectors, layers = [], [], []
        w_offset = v_offset = 0
        for linear in linears:
            n_in, n_out = linear._weight.shape
            weights.append(linear._weight.reshape(-1))
            vectors += [linear._bias, linear._low, linear._high]
            layers.append((w_offset, n_in, n_out, v_offset))
            w_offset, v_offset = w_offset + n_in * n_out, v_offset + 3 * n_out
        self.weights = np.concatenate(weights)
        self.vectors = np.concatenate(vectors)
        self.layers = np.array(layers, np.int64)
        self.arrays = (self.layers, self.weights, self.vectors)
        self.shape = (net.config.blocks, net.config.resnets_per_block, net.config.position_channels // 2)


def _packed(net) -> PackedNetwork:
    """The network's packed form, made once per network (its layers never change after conversion)."""
    one_thread_per_product()
    if getattr(net, "_packed", None) is None:
        net._packed = PackedNetwork(net)
    return net._packed


@numba.njit(cache=True)
def _linear(net, index, x, out):  # pragma: no cover (compiled)
    """IntegerLinear.__call__: out = clamp(floor(x @ w + b)), the same exact products and sums."""
    bias, low, high = _product(net, index, x, out)
    for b in range(out.shape[0]):
        _requantise_row(out, b, bias, low, high)


@numba.njit(cache=True)
def _linear_then_elu(net, index, x, elu, out):  # pragma: no cover (compiled)
    """_elu of _linear's outputs, row by row as they are finished (one pass over them, not two):
    for a layer whose outputs are read only through ELU."""
    bias, low, high = _product(net, index, x, out)
    table_index = np.empty(len(bias), np.int32)
    for b in range(out.shape[0]):
        _requantise_row(out, b, bias, low, high)
        _elu_row(out, b, out, elu, table_index)


@numba.njit(cache=True, inline="always")
def _requantise_row(out, b, bias, low, high):  # pragma: no cover (compiled)
    """Row b of a layer's products, in place: floor(out + bias), clamped (the bias holds the 1/2 of
    round half up, and the shift by k is in the weights: IntegerLinear)."""
    for o in range(len(bias)):
        out[b, o] = min(max(np.floor(out[b, o] + bias[o]), low[o]), high[o])


@numba.njit(cache=True, inline="always")
def _product(net, index, x, out):  # pragma: no cover (compiled)
    """out = x @ w of layer `index` (exact integers); returns the layer's bias and clamping bounds."""
    layers, weights, vectors = net
    w_offset, n_in, n_out, v_offset = layers[index]
    np.dot(x, weights[w_offset : w_offset + n_in * n_out].reshape((n_in, n_out)), out)
    bias = vectors[v_offset : v_offset + n_out]
    low = vectors[v_offset + n_out : v_offset + 2 * n_out]
    high = vectors[v_offset + 2 * n_out : v_offset + 3 * n_out]
    return bias, low, high


_OUTPUT_ROWS = 1024  # rows per product of the output layer (`outputs`): blocks shared among the threads


@numba.njit(cache=True, nogil=True)
def _output_blocks(first, step, net, x, out):  # pragma: no cover (compiled)
    last = len(net[0]) - 1  # the output layer, packed last
    for block in range(first, (len(x) + _OUTPUT_ROWS - 1) // _OUTPUT_ROWS, step):
        rows = slice(block * _OUTPUT_ROWS, min(len(x), (block + 1) * _OUTPUT_ROWS))
        _linear(net, last, x[rows], out[rows])


def outputs(net, features: np.ndarray) -> np.ndarray:
    """IntegerPixelSNAIL.outputs (the output layer) in compiled calls, blocks of rows shared among
    the threads: features (N, F) float64, Q.12 -> mixture parameters (N, K). Compiled like the rest,
    its products run on the kernels' threads, one each, rather than on BLAS threads of their own
    that would spin on the cores the kernels need next."""
    packed = _packed(net)
    x = np.ascontiguousarray(features, np.float64)
    out = np.empty((len(x), packed.layers[-1, 2]))
    share_rows(_output_blocks, -(-len(x) // _OUTPUT_ROWS), packed.arrays, x, out)
    return out


@numba.njit(cache=True)
def _output_buffer(net, index, rows):  # pragma: no cover (compiled)
    """An uninitialised (rows, outputs) array for layer `index` to write its outputs into."""
    return np.empty((rows, net[0][index, 2]))


@numba.njit(cache=True)
def _elu(x, elu):  # pragma: no cover (compiled)
    """arithmetic.elu of every row of x, into a new array (_elu_row)."""
    out = np.empty_like(x)
    index = np.empty(x.shape[1], np.int32)
    for b in range(x.shape[0]):
        _elu_row(x, b, out, elu, index)
    return out


@numba.njit(cache=True, inline="always")
def _elu_row(x, b, out, elu, index):  # pragma: no cover (compiled)
    """arithmetic.elu of row b of x into row b of out (which may be x): x where x >= 0, else the ELU
    table at -x, clamped at its end. Without a branch (signs are unpredictable): the table at 0 is
    ELU(0) = 0, so max(x, 0) + table[max(-x, 0)]. The table indices are taken into `index` (int32
    scratch, a row long) in a loop of their own, so that both loops vectorise (as in _exp_of_distances)."""
    for c in range(x.shape[1]):
        index[c] = np.int32(min(max(-x[b, c], 0.0), _EXP_LIMIT))
    for c in range(x.shape[1]):
        out[b, c] = max(x[b, c], 0.0) + elu[np.uint32(index[c])]


@numba.njit(cache=True, inline="always")
def _put(destination, row, at, source, source_row):  # pragma: no cover (compiled)
    """destination[row, at : at + C] = source[source_row] (C: source's columns), as a plain loop over
    two-dimensional indices: numba's slice assignment checks for broadcasting at every element, and a
    row's view costs two reference counts."""
    for c in range(source.shape[1]):
        destination[row, at + c] = source[source_row, c]


@numba.njit(cache=True)
def _window(cache, rows, value):  # pragma: no cover (compiled)
    """IntegerStepper._window: write each slot's value into its current row (rows[:, 0]), then read
    its 2x2 inputs (above-left, above, left, here: rows[:, 1:]) side by side."""
    batch, channels = value.shape
    for b in range(batch):
        _put(cache, rows[b, 0], 0, value, b)
    out = np.empty((batch, 4 * channels))
    for b in range(batch):
        for k in range(4):
            _put(out, b, k * channels, cache, rows[b, 1 + k])
    return out


_ONE_BY_ONE, _FULL_2X2 = -1, -2  # a resnet's `pair` when it has no row caches: 1x1, or 2x2 over a whole window


@numba.njit(cache=True)
def _conv_input(h, caches, pair, which, rows, width):  # pragma: no cover (compiled)
    """The input of conv `which` (0: conv_in, 1: conv_out) of a resnet: h itself (1x1), the 2x2
    inputs through the stepper's row caches (pair >= 0), or those of a whole window (_FULL_2X2)."""
    if pair >= 0:
        return _window(caches[pair + which], rows, h)
    if pair == _FULL_2X2:
        return _down_right_2x2(h, width)
    return h


@numba.njit(cache=True)
def _down_right_2x2(h, width):  # pragma: no cover (compiled)
    """IntegerLinear.down_right_2x2's inputs over a window's rows (i * width + j): (i-1, j-1),
    (i-1, j), (i, j-1), (i, j) side by side, 0 outside the window."""
    n, channels = h.shape
    out = np.empty((n, 4 * channels))
    for r in range(n):  # indexed in two dimensions, as _put does
        i, j = r // width, r % width
        for c in range(channels):
            out[r, c] = h[r - width - 1, c] if i > 0 and j > 0 else 0.0
            out[r, channels + c] = h[r - width, c] if i > 0 else 0.0
            out[r, 2 * channels + c] = h[r - 1, c] if j > 0 else 0.0
            out[r, 3 * channels + c] = h[r, c]
    return out


@numba.njit(cache=True)
def _resnet(net, index, x, aux, caches, pair, rows, width, t):  # pragma: no cover (compiled)
    """IntegerResnet.forward over (B, C), in place on x: layers index (conv_in), index + 1 (conv_out),
    index + 2 (aux_in, where aux has columns); `pair`: see _conv_input."""
    elu, sigmoid = t[0], t[1]
    c1 = _output_buffer(net, index, len(x))  # ELU of conv_in's outputs (plus aux_in's): conv_out's input
    conv_in_input = _conv_input(_elu(x, elu), caches, pair, 0, rows, width)
    if aux.shape[1]:
        _linear(net, index, conv_in_input, c1)
        extra = np.empty_like(c1)
        _linear(net, index + 2, _elu(aux, elu), extra)
        for b in range(c1.shape[0]):
            for c in range(c1.shape[1]):
                c1[b, c] = min(max(c1[b, c] + extra[b, c], -_LIMIT), _LIMIT)
        c1 = _elu(c1, elu)
    else:
        _linear_then_elu(net, index, conv_in_input, elu, c1)
    c2 = _output_buffer(net, index + 1, len(x))
    _linear(net, index + 1, _conv_input(c1, caches, pair, 1, rows, width), c2)
    channels = x.shape[1]
    gates = np.empty(channels)  # a row's sigmoids, looked up in a loop of their own (see _elu)
    for b in range(x.shape[0]):  # arithmetic.gate: x + a * sigmoid(b), half up, clamped
        for c in range(channels):
            gates[c] = sigmoid[np.uint32(np.int32(c2[b, channels + c]))]
        for c in range(channels):
            gated = np.floor(x[b, c] + c2[b, c] * gates[c] + 0.5)
            x[b, c] = min(max(gated, -_LIMIT), _LIMIT)


@numba.njit(cache=True)
def _where(slots, position, height, width):  # pragma: no cover (compiled)
    """IntegerStepper._where for these slots at these positions: each one's cache rows (write; read
    above-left, above, left, here) and the index of its pixel above-left in the padded pixels."""
    batch = len(position)
    rows = np.empty((batch, 5), np.int64)
    base = np.empty(batch, np.int64)
    for b in range(batch):
        slot, i, j = slots[b], position[b] // width, position[b] % width
        current = (slot * 2 + i % 2) * (width + 1)
        previous = (slot * 2 + (i + 1) % 2) * (width + 1)
        rows[b, 0], rows[b, 1], rows[b, 2] = current + j + 1, previous + j, previous + j + 1
        rows[b, 3], rows[b, 4] = current + j, current + j + 1
        base[b] = slot * (height + 1) * (width + 2) + i * (width + 2) + j
    return rows, base


@numba.njit(cache=True)
def _input_layers(net, above, left, position, width):  # pragma: no cover (compiled)
    """The network's first activations at these positions from the inputs of its two input layers
    (layers 0 and 1): their sum, clamped, with nothing above row 0 and nothing left of column 0."""
    ul, from_left = _output_buffer(net, 0, len(above)), _output_buffer(net, 1, len(left))
    _linear(net, 0, above, ul)
    _linear(net, 1, left, from_left)
    for b in range(len(ul)):
        i, j = position[b] // width, position[b] % width
        for c in range(ul.shape[1]):
            ul[b, c] = min(max((ul[b, c] if i > 0 else 0.0) + (from_left[b, c] if j > 0 else 0.0), -_LIMIT), _LIMIT)
    return ul


@numba.njit(cache=True)
def _with_position(x, y, position, row_channel, column_channel, copies):  # pragma: no cover (compiled)
    """[x, y, row channel (`copies` times), column channel (as many)] per row: the inputs of the kv
    resnet (pixels, features) and of the q resnet (features, and y with no columns)."""
    width, columns = len(column_channel), x.shape[1] + y.shape[1]
    out = np.empty((x.shape[0], columns + 2 * copies))
    for b in range(x.shape[0]):
        _put(out, b, 0, x, b)
        _put(out, b, x.shape[1], y, b)
        for k in range(copies):
            out[b, columns + k] = row_channel[position[b] // width]
            out[b, columns + copies + k] = column_channel[position[b] % width]
    return out


# ---------------------------------------------------------------------------------------------
# The decoder's step: the whole network at one position, for a batch of slots


@numba.njit(cache=True, nogil=True)
def _predict_slots(slots, shape, net, state, t, out):  # pragma: no cover (compiled)
    """IntegerStepper.predict (torch) for these slots: their mixture parameters, into their rows of out."""
    blocks, resnets, copies = shape
    position, pixels, caches, keys, values, features, row_channel, column_channel = state
    position = position[slots]
    batch, height, width, stride = len(position), len(row_channel), len(column_channel), pixels.shape[1]
    rows, base = _where(slots, position, height, width)
    above, left = np.empty((batch, 3 * stride)), np.empty((batch, 2 * stride))
    for b in range(batch):
        for k in range(3):
            _put(above, b, k * stride, pixels, base[b] + k)
        _put(left, b, 0, pixels, base[b])
        _put(left, b, stride, pixels, base[b] + width + 2)
    ul = _input_layers(net, above, left, position, width)
    no_aux = np.empty((batch, 0))
    table_index = np.empty(keys.shape[3], np.int32)  # the attention's scratch (_attend_row), one for every slot
    per_block = 2 * resnets + 9  # linears(): resnets (in, out), kv (in, out), q (in, out), out (in, out, aux), kv_proj, q_proj
    for block in range(blocks):
        index = 2 + block * per_block
        for r in range(resnets):
            _resnet(net, index + 2 * r, ul, no_aux, caches, 2 * (block * resnets + r), rows, width, t)
        stored = features[block]
        for b in range(batch):
            _put(stored, slots[b], 0, ul, b)
        q = _with_position(ul, no_aux, position, row_channel, column_channel, copies)
        _resnet(net, index + 2 * resnets + 2, q, no_aux, caches, _ONE_BY_ONE, rows, width, t)
        query = _output_buffer(net, index + 2 * resnets + 8, batch)
        _linear(net, index + 2 * resnets + 8, q, query)
        attended = np.empty((batch, values.shape[2]))
        for b in range(batch):  # keys and values indexed by slot: contiguous rows, vectorised loops
            slot = slots[b]
            _attend_row(query[b], keys[block, slot], values[block, slot], position[b], t[2], table_index, attended[b])
        _resnet(net, index + 2 * resnets + 4, ul, attended, caches, _ONE_BY_ONE, rows, width, t)
    params = _output_buffer(net, len(net[0]) - 1, batch)
    _linear(net, len(net[0]) - 1, _elu(ul, t[0]), params)
    for b in range(batch):
        out[slots[b]] = params[b]


@numba.njit(cache=True, nogil=True)
def _commit_slots(slots, shape, net, state, t, known, advance):  # pragma: no cover (compiled)
    """IntegerStepper.commit (torch) for these slots: values, keys and values stored, positions moved on."""
    blocks, resnets, copies = shape
    all_positions, pixels, caches, keys, values, features, row_channel, column_channel = state
    position, known = all_positions[slots], known[slots]
    batch, height, width, channels = len(position), len(row_channel), len(column_channel), known.shape[1]
    rows, base = _where(slots, position, height, width)
    x = np.empty((batch, channels))
    for b in range(batch):
        for c in range(channels):
            x[b, c] = t[3][known[b, c]]
            pixels[base[b] + width + 3, c] = x[b, c]
        pixels[base[b] + width + 3, channels] = _ONE
    no_aux = np.empty((batch, 0))
    per_block = 2 * resnets + 9
    key_channels = keys.shape[2]
    for block in range(blocks):
        index = 2 + block * per_block
        kv_in = _with_position(x, features[block][slots], position, row_channel, column_channel, copies)
        _resnet(net, index + 2 * resnets, kv_in, no_aux, caches, _ONE_BY_ONE, rows, width, t)
        kv = _output_buffer(net, index + 2 * resnets + 7, batch)
        _linear(net, index + 2 * resnets + 7, kv_in, kv)
        for b in range(batch):
            p = position[b]
            for c in range(key_channels):
                keys[block, slots[b], c, p] = kv[b, c]
            for c in range(values.shape[2]):
                values[block, slots[b], c, p] = kv[b, key_channels + c]
    for b in range(batch):
        all_positions[slots[b]] += advance[slots[b]]


@numba.njit(cache=True, nogil=True)
def _step_slots(first, step, run, committed, predicted, shape, net, state, t, known, advance, out):  # pragma: no cover (compiled)
    """For slots run[first], run[first + step], ...: a commit of those `committed` (where `known` has
    rows), then a predict of those `predicted` (where `out` has rows); one call, so one hand-over to
    the threads, for both, and each slot's two on one thread."""
    mine = run[first::step]
    if len(known):
        slots = mine[committed[mine]]
        if len(slots):
            _commit_slots(slots, shape, net, state, t, known, advance)
    if len(out):
        slots = mine[predicted[mine]]
        if len(slots):
            _predict_slots(slots, shape, net, state, t, out)


def step(net, state: tuple[np.ndarray, ...], commit: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
         predict: np.ndarray | None) -> np.ndarray | None:
    """IntegerStepper's commit and then predict, in one compiled call over the stepper's state
    (arrays: position, pixels, caches, keys, values, features, row and column channels; changed in
    place). `commit`: (slots, known, advance): the slots (a boolean mask (B,)) whose known values
    (B, C) int64 0..255 are stored and that move on by advance (B,) int64; `predict`: a boolean mask
    of the slots whose mixture parameters are returned, (B, K) float64, Q.12 (other rows 0). Either
    may be None. The slots are split among the threads, each running the whole network on its share
    (each matrix product on one thread)."""
    packed = _packed(net)
    batch, outputs = len(state[0]), packed.layers[-1, 2]
    nothing = np.zeros(batch, np.bool_)
    committed, known, advance = commit if commit is not None else (nothing, np.zeros((0, 1), np.int64), np.zeros(0, np.int64))
    predicted = predict if predict is not None else nothing
    out = np.zeros((batch, outputs)) if predict is not None else np.empty((0, outputs))
    run = np.flatnonzero(committed | predicted)
    share_rows(_step_slots, len(run), run, committed, predicted, packed.shape, packed.arrays, state, _step_tables(),
           known, advance, out)
    return out if predict is not None else None


# ---------------------------------------------------------------------------------------------
# The full forward pass: every position of a window at once (the encoder)


@numba.njit(cache=True)
def _forward_window(shape, net, t, x, row_channel, column_channel, out):  # pragma: no cover (compiled)
    """IntegerPixelSNAIL.features (torch) of one window: pixels x (H * W, C) in Q.12, rows in raster
    order, -> what the output layer reads at every position into out (H * W, F)."""
    blocks, resnets, copies = shape
    n, channels = x.shape
    width = len(column_channel)
    stride = channels + 1  # the pixels with the ones channel, zero outside the window
    above, left = np.zeros((n, 3 * stride)), np.zeros((n, 2 * stride))
    for r in range(n):
        i, j = r // width, r % width
        for k in range(3):  # (i-1, j-1), (i-1, j), (i-1, j+1)
            if i > 0 and 0 <= j + k - 1 < width:
                above[r, k * stride : k * stride + channels] = x[r - width + k - 1]
                above[r, k * stride + channels] = _ONE
        if j > 0:  # (i-1, j-1), (i, j-1)
            if i > 0:
                left[r, :channels] = x[r - width - 1]
                left[r, channels] = _ONE
            left[r, stride : stride + channels] = x[r - 1]
            left[r, stride + channels] = _ONE
    positions = np.arange(n)
    ul = _input_layers(net, above, left, positions, width)
    no_aux, no_cache, no_rows = np.empty((n, 0)), np.empty((0, 0, 0)), np.empty((0, 5), np.int64)
    per_block = 2 * resnets + 9
    for block in range(blocks):
        index = 2 + block * per_block
        for r in range(resnets):
            _resnet(net, index + 2 * r, ul, no_aux, no_cache, _FULL_2X2, no_rows, width, t)
        kv = _with_position(x, ul, positions, row_channel, column_channel, copies)
        _resnet(net, index + 2 * resnets, kv, no_aux, no_cache, _ONE_BY_ONE, no_rows, width, t)
        key_value = _output_buffer(net, index + 2 * resnets + 7, n)
        _linear(net, index + 2 * resnets + 7, kv, key_value)
        q = _with_position(ul, no_aux, positions, row_channel, column_channel, copies)
        _resnet(net, index + 2 * resnets + 2, q, no_aux, no_cache, _ONE_BY_ONE, no_rows, width, t)
        query = _output_buffer(net, index + 2 * resnets + 8, n)
        _linear(net, index + 2 * resnets + 8, q, query)
        key_channels = query.shape[1]
        attended = _causal_attention(query, np.ascontiguousarray(key_value[:, :key_channels]),
                                     np.ascontiguousarray(key_value[:, key_channels:]), t[2])
        _resnet(net, index + 2 * resnets + 4, ul, attended, no_cache, _ONE_BY_ONE, no_rows, width, t)
    out[:] = _elu(ul, t[0])


@numba.njit(cache=True, fastmath={"reassoc", "contract", "nnan", "ninf", "nsz"})
def _causal_attention(query, keys, values, exp16):  # pragma: no cover (compiled)
    """network._causal_attention of one window: queries (n, dk), keys (n, dk), values (n, dv) ->
    (n, dv); position i attends to positions j < i, position 0 gets 0. Blocks of queries: their
    logits and weighted sums are matrix products (exact: integers below dk * 2**40 and 2**52). The
    fast-math flags change no value, as in _attend_row: the sums of integers are exact in any order."""
    n = len(query)
    out = np.zeros((n, values.shape[1]))
    index = np.empty(n, np.int32)
    for a in range(1, n, _QUERY_BLOCK):
        b = min(n, a + _QUERY_BLOCK)
        logits = np.dot(query[a:b], keys[: b - 1].T)  # (b - a, b - 1)
        weights = logits  # each row's weights in place of its logits, its later positions zeroed
        totals = np.zeros(b - a)
        for r in range(b - a):
            seen, weight = a + r, weights[r]
            totals[r] = _exp_of_distances(weight, seen, exp16, index)
            weight[seen:] = 0.0
        weighted = np.dot(weights, values[: b - 1])
        for r in range(b - a):
            _divide_half_up(weighted[r], totals[r], out[a + r])
    return out


@numba.njit(cache=True, nogil=True)
def _forward_windows(first, step, shape, net, t, x, row_channel, column_channel, out):  # pragma: no cover (compiled)
    for w in range(first, len(x), step):
        _forward_window(shape, net, t, x[w], row_channel, column_channel, out[w])


def features(net, pixels: np.ndarray) -> np.ndarray:
    """IntegerPixelSNAIL.features in compiled calls, a window at a time (small arrays stay in cache),
    the windows shared among the threads: pixels 0..255 (B, C, H, W) -> (B, H, W, F) float64, Q.12."""
    batch, channels, height, width = pixels.shape
    packed = _packed(net)
    x = _step_tables()[3][pixels.astype(np.intp)].transpose(0, 2, 3, 1).reshape(batch, height * width, channels)
    out = np.empty((batch, height * width, packed.layers[-1, 1]))
    share_rows(_forward_windows, batch, packed.shape, packed.arrays, _step_tables(), np.ascontiguousarray(x),
           ar.positional_channel(height), ar.positional_channel(width), out)
    return out.reshape(batch, height, width, -1)


@functools.lru_cache(maxsize=None)
def _step_tables() -> tuple[np.ndarray, ...]:
    """The lookup tables the step reads: ELU, sigmoid / 4096, exp16 (float32: every entry is exact
    there, and the three together, read at scattered indices, take half the cache of float64's),
    and the pixel values (float64, the network's input)."""
    return (_table("elu", np.float32), (_table("sigmoid", np.float64) / ar.ONE).astype(np.float32),
            _table("exp16", np.float32), _table("pixels", np.float64))


# ---------------------------------------------------------------------------------------------
# The mixture's cumulative counts, from the network's outputs. The small functions here and in the
# decoder's search are inlined (numba's inline="always"): a call that passes arrays pays two atomic
# reference counts for each, a large share of a search that takes a few probes a symbol.


@numba.njit(cache=True, inline="always")
def _prior(row, mixtures, exp16, weights):  # pragma: no cover (compiled)
    """The component weights before any channel (IntegerConditionals' first posterior): exp(logit -
    max) from the Q.16 table, normalised (floor)."""
    top = row[:mixtures].max()
    for k in range(mixtures):
        weights[k] = exp16[int(min(top - row[k], _EXP_LIMIT))]
    _normalise(weights)


@numba.njit(cache=True, inline="always")
def _normalise(weights):  # pragma: no cover (compiled)
    """integer/mixture._normalise, in place: floor(w * 2**16 / sum w); a zero row stays zero."""
    total = max(weights.sum(), 1)
    for k in range(len(weights)):
        weights[k] = (weights[k] << _WEIGHT_BITS) // total


@numba.njit(cache=True, inline="always")
def _components(row, known, c, mixtures, channels, t, mean, inverse):  # pragma: no cover (compiled)
    """IntegerConditionals._mean and inverse_scales of channel c: each component's mean on the
    0..255 scale (Q.13), shifted by the known values of channels < c, and its inverse scale."""
    tanh, inverse_scale, pixel_values = t[1], t[2], t[3]
    slot = 3 if channels == 3 else 2
    base = mixtures + c * slot * mixtures
    for k in range(mixtures):
        mu = row[base + k]
        if c:
            # the coefficients alpha, beta, gamma are the third parameter of channels 0, 1, 2
            if c == 1:
                shift = _coefficient(row, 0, k, mixtures, tanh) * pixel_values[known[0]]
            else:
                shift = (_coefficient(row, 1, k, mixtures, tanh) * pixel_values[known[0]]
                         + _coefficient(row, 2, k, mixtures, tanh) * pixel_values[known[1]])
            mu += np.floor((shift + _ONE // 2) * (1.0 / _ONE))  # Q.24 -> Q.12, half up
        mean[k] = (min(max(mu, -_MEAN_LIMIT), _MEAN_LIMIT) + _ONE) * 255
        log_scale = min(max(row[base + mixtures + k], -_LOG_SCALE_LIMIT), _LOG_SCALE_LIMIT)
        inverse[k] = inverse_scale[int(log_scale + _LOG_SCALE_LIMIT)] * _INVERSE_TO_GRID


@numba.njit(cache=True, inline="always")
def _coefficient(row, channel, k, mixtures, tanh):  # pragma: no cover (compiled)
    raw = min(max(row[mixtures + channel * 3 * mixtures + 2 * mixtures + k], -_TANH_LIMIT), _TANH_LIMIT)
    return tanh[int(raw + _TANH_LIMIT)]


@numba.njit(cache=True, inline="always")
def _cdf_at(edge, mean, inverse, cdf):  # pragma: no cover (compiled)
    """A component's Q.20 CDF at the edge v - 1/2 (IntegerConditionals._cdf)."""
    v = float(edge * _EDGE_ONE - _ONE) * inverse + (_CENTRE - mean * inverse)
    return cdf[int(min(v, float(_TOP))) if v > 0.0 else 0]


@numba.njit(cache=True, inline="always")
def _bin(v, mean, inverse, cdf):  # pragma: no cover (compiled)
    """A component's Q.20 CDF below and above value v (its edges v - 1/2 and v + 1/2): 0 below 0, one
    above 255 (the tails)."""
    low = 0 if v == 0 else _cdf_at(v, mean, inverse, cdf)
    high = _CDF_ONE if v == 255 else _cdf_at(v + 1, mean, inverse, cdf)
    return low, high


@numba.njit(cache=True, inline="always")
def _update(weights, posterior):  # pragma: no cover (compiled)
    """Weights (in place) to their posterior, given each component's w * P(value) in `posterior`
    (normalised here); kept where the value has probability 0 under every component."""
    _normalise(posterior)
    if posterior.sum() > 0:
        weights[:] = posterior


@numba.njit(cache=True, inline="always")
def _value_bounds(value, weights, mean, inverse, cdf, posterior):  # pragma: no cover (compiled)
    """A value's two cumulative counts in its pixel's table, (start, count): floor(sum_k w_k cdf_k *
    TOTAL / (sum_k w_k * 2**20)) at its two edges (0 below value 0 and TOTAL above 255 come out
    exactly); the same component CDFs give each component's w_k * P(value) in `posterior`, the
    weights' update for the next channel, so each is read once."""
    below = above = total = 0
    for k in range(len(weights)):
        low, high = _bin(value, mean[k], inverse[k], cdf) if weights[k] else (0, 0)
        below += weights[k] * low
        above += weights[k] * high
        total += weights[k]
        posterior[k] = weights[k] * (high - low)
    denominator = total << _CDF_BITS
    start = (below * _TOTAL) // denominator
    return start, (above * _TOTAL) // denominator - start


@numba.njit(cache=True, nogil=True)
def _bound_rows(first, step, params, values, mixtures, channels, t, start, count):  # pragma: no cover (compiled)
    """IntegerConditionals.symbol_bounds for the blocks of COUNT_ROWS_PER_BLOCK rows first, first +
    step, ... (a thread's rows in runs: rows interleaved among threads would write each other's cache
    lines): channel by channel, the two cumulative counts around the pixel's value, and the weights'
    posterior for the next channel."""
    weights, posterior = np.empty(mixtures, np.int64), np.empty(mixtures, np.int64)
    mean, inverse = np.empty(mixtures), np.empty(mixtures)
    for block in range(first, (len(start) + COUNT_ROWS_PER_BLOCK - 1) // COUNT_ROWS_PER_BLOCK, step):
        for i in range(block * COUNT_ROWS_PER_BLOCK, min(len(start), (block + 1) * COUNT_ROWS_PER_BLOCK)):
            _prior(params[i], mixtures, t[0], weights)
            for c in range(channels):
                _components(params[i], values[i], c, mixtures, channels, t, mean, inverse)
                start[i, c], count[i, c] = _value_bounds(values[i, c], weights, mean, inverse, t[4], posterior)
                if c + 1 < channels:
                    _update(weights, posterior)


def symbol_bounds(params: np.ndarray, values: np.ndarray, mixtures: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """IntegerConditionals.symbol_bounds in one compiled call: (start, count) int64 (N, C) of each
    channel's value in its table, from the network's outputs (N, K) float64, Q.12, and the values
    (N, C) int64."""
    start, count = np.empty(values.shape, np.int64), np.empty(values.shape, np.int64)
    share_rows(_bound_rows, -(-len(start) // COUNT_ROWS_PER_BLOCK), params, values, mixtures, channels, _mixture_tables(), start, count)
    return start, count


@functools.lru_cache(maxsize=None)
def _mixture_tables() -> tuple[np.ndarray, ...]:
    """What the tables read, each in the narrowest type that holds its values exactly (the decoder's
    search reads them at scattered indices just after a network step has filled the caches with
    other things): exp16 and the inverse scales (below 2**31) as int32, tanh (integers of at most
    4096) as float32, the CDF (below 2**21) as int32; the pixel values as float64."""
    return (_table("exp16", np.int32), _table("tanh", np.float32), _table("inverse_scale", np.int32),
            _table("pixels", np.float64), _table("cdf", np.int32))


# ---------------------------------------------------------------------------------------------
# The decoder's symbols: constriction's range decoder, searching each pixel's cumulative counts


_WORD_BITS = np.uint64(32)
_SMALLEST_RANGE = np.uint64(1 << 32)  # a range below this takes in the next word
_PRECISION = np.uint64(ar.PRECISION_BITS)
_QUANTILES = np.uint64(1 << ar.PRECISION_BITS)


@numba.njit(cache=True, inline="always")
def _mixed(edge, weights, mean, inverse, cdf):  # pragma: no cover (compiled)
    """sum_k w_k cdf_k at edge 1..255 (an integer below 2**36): what _bound_rows sums."""
    mixed = 0
    for k in range(len(weights)):
        if weights[k]:
            mixed += weights[k] * _cdf_at(edge, mean[k], inverse[k], cdf)
    return mixed


@numba.njit(cache=True, inline="always")
def _fits(value, quantile, weights, denominator, mean, inverse, cdf):  # pragma: no cover (compiled)
    """Whether value's interval starts at or below quantile: value + C(value) <= quantile, where
    C(value) = floor(mixed * TOTAL / denominator) is the table's cumulative count below it; compared
    without the division (both products are below 2**61)."""
    if value == 0:
        return True
    room = quantile - value  # C(value) <= room  <=>  mixed * TOTAL < (room + 1) * denominator
    return room >= 0 and _mixed(value, weights, mean, inverse, cdf) * _TOTAL < (room + 1) * denominator


@numba.njit(cache=True, inline="always")
def _search(quantile, guess, weights, denominator, mean, inverse, cdf):  # pragma: no cover (compiled)
    """The value v whose interval [v + C(v), v + 1 + C(v + 1)) holds quantile: the largest that
    fits. Gallops from `guess` (anywhere in 0..255: only the number of steps depends on it) to a
    bracket, then bisects."""
    if _fits(guess, quantile, weights, denominator, mean, inverse, cdf):
        low, step = guess, 1  # low fits; look above
        high = 255
        while low + step <= 255:
            if _fits(low + step, quantile, weights, denominator, mean, inverse, cdf):
                low, step = low + step, 2 * step
            else:
                high = low + step - 1
                break
    else:
        high, step = guess - 1, 1  # guess does not fit: the value is below it (0 always fits)
        low = 0
        while high - step >= 0:
            if _fits(high - step + 1, quantile, weights, denominator, mean, inverse, cdf):
                low = high - step + 1
                break
            high, step = high - step, 2 * step
    while low < high:  # low fits, everything above high does not
        middle = (low + high + 1) >> 1
        if _fits(middle, quantile, weights, denominator, mean, inverse, cdf):
            low = middle
        else:
            high = middle - 1
    return low


@numba.njit(cache=True, inline="always")
def _guess(quantile, weights, mean, inverse):  # pragma: no cover (compiled)
    """Where the heaviest component puts the quantile: a start for _search (no value depends on it)."""
    best = 0
    for k in range(1, len(weights)):
        if weights[k] > weights[best]:
            best = k
    u = (quantile + 0.5) / float(1 << ar.PRECISION_BITS)
    z = np.log(u / (1.0 - u))  # the logistic's quantile, in units of its scale
    # the component's CDF argument at edge e is (e * EDGE_ONE - ONE - mean) * inverse (+ CENTRE), z on the
    # CDF's grid of 2**CDF_TABLE_STEP_BITS a unit
    edge = (mean[best] + _ONE + z * float(1 << ar.CDF_TABLE_STEP_BITS) / inverse[best]) / _EDGE_ONE
    return int(min(max(edge, 0.0), 255.0))


@numba.njit(cache=True, inline="always")
def _decode_symbol(coder, words, end, weights, mean, inverse, cdf, posterior):  # pragma: no cover (compiled)
    """One value from a range decoder's state `coder` (lower, range, point, index of its next word
    in `words`, up to `end`), as constriction.stream.queue.RangeDecoder decodes it from a table
    whose value v takes [v + C(v), v + 1 + C(v + 1)) of 2**24 (the encoder's intervals). Returns the
    value and its interval's width, and each component's w_k * P(value) in `posterior` (see
    _value_bounds); (-1, 0) where the stream cannot have come from these tables (constriction's
    error: a quantile beyond them)."""
    lower, width, point = coder[0], coder[1], coder[2]
    scale = width >> _PRECISION
    quantile = (point - lower) // scale
    if quantile >= _QUANTILES:
        return -1, 0
    q = np.int64(quantile)
    total = 0
    for k in range(len(weights)):
        total += weights[k]
    denominator = total << _CDF_BITS
    value = _search(q, _guess(q, weights, mean, inverse), weights, denominator, mean, inverse, cdf)
    below, count = _value_bounds(value, weights, mean, inverse, cdf, posterior)
    size = count + 1  # constriction gives each value its count + 1, after the values below it
    lower += scale * np.uint64(below + value)
    width = scale * np.uint64(size)
    if width < _SMALLEST_RANGE:
        lower <<= _WORD_BITS
        width <<= _WORD_BITS
        point <<= _WORD_BITS
        at = np.int64(coder[3])
        if at < end:  # past the end, constriction reads zeros
            point |= np.uint64(words[at])
        coder[3] = np.uint64(at + 1)
    coder[0], coder[1], coder[2] = lower, width, point
    return value, size


SEARCH_SYMBOLS_PER_SHARE = 1024  # a millisecond or so of searching: many times a hand-over to a thread


@numba.njit(cache=True, nogil=True)
def _decode_plane(k, rows, params, known, mixtures, channels, t, coders, words, ends, failed, weights):  # pragma: no cover (compiled)
    """One step's pixels of plane k (its rows of params (N, K) and known (N, C), in order) from its
    stream, coders[k], channel by channel, each channel's values in row order; a plane that fails is
    marked in `failed` and read no further. `weights` (N, K): each row's component weights, from
    the prior at channel 0, then updated to their posterior by each decoded value. Returns the bits
    its symbols took."""
    posterior = np.empty(mixtures, np.int64)
    mean, inverse = np.empty(mixtures), np.empty(mixtures)
    plane_bits = 0.0
    for c in range(channels):
        for i in rows:
            if failed[k]:
                break
            if c == 0:
                _prior(params[i], mixtures, t[0], weights[i])
            _components(params[i], known[i], c, mixtures, channels, t, mean, inverse)
            value, size = _decode_symbol(coders[k], words, ends[k], weights[i], mean, inverse, t[4], posterior)
            if value < 0:
                failed[k] = True
                break
            known[i, c] = value
            plane_bits += _PRECISION_BITS - np.log2(size)
            if c + 1 < channels:
                _update(weights[i], posterior)
    return plane_bits


@numba.njit(cache=True, nogil=True)
def _decode_rows(first, step, params, known, mixtures, channels, t, coders, words, ends, failed, weights, bits):  # pragma: no cover (compiled)
    """One step's pixels into known (N, C) for a thread's run of planes (share `first` of `step`;
    planes are independent, each with its own stream): plane k's rows are a run of N / K
    (_decode_plane). bits[k]: the bits plane k's symbols took."""
    planes = len(coders)
    per_plane = len(params) // planes
    for k in range(first * planes // step, (first + 1) * planes // step):
        rows = np.arange(k * per_plane, (k + 1) * per_plane)
        bits[k] = _decode_plane(k, rows, params, known, mixtures, channels, t, coders, words, ends, failed, weights)


def decode_pixels(params: np.ndarray, known: np.ndarray, mixtures: int, channels: int, coders: np.ndarray,
                  words: np.ndarray, ends: np.ndarray, failed: np.ndarray) -> float:
    """Decode one step's pixels (see _decode_rows), the planes shared among coding's threads: params
    (N, K) float64, Q.12, the network's outputs; known (N, C) int64, written; range decoders
    `coders` (P, 4) uint64 over `words` (uint32; plane p's up to ends[p]), changed in place; failed
    (P,) bool. Returns the bits. A share is at least SEARCH_SYMBOLS_PER_SHARE symbols: fewer are
    not worth a hand-over (one plane's are never shared: its stream is read in order)."""
    weights = np.empty((len(params), mixtures), np.int64)
    bits = np.empty(len(coders))
    shares = min(len(coders), known.size // SEARCH_SYMBOLS_PER_SHARE)
    share_rows(_decode_rows, shares, np.ascontiguousarray(params, np.float64), known, mixtures, channels,
           _mixture_tables(), coders, words, ends, failed, weights, bits)
    return float(bits.sum())


@numba.njit(cache=True, nogil=True)
def _decode_steps(first, threads, meeting, schedule, pending, canvases, shape, net, state, t, tables, mixtures,
                  streams, per_share, out, weights, bits):  # pragma: no cover (compiled)
    """Thread `first` of `threads` through a chunk of the decoder's steps (codec/coder.py:
    _decode_batch, whose loop this is, step for step). At each step s: the slots of this thread's
    share (interleaved) commit their last values, restart if they begin a window, and predict if
    active; all meet; the planes are shared among the threads (at least `per_share` symbols a
    share), each plane's slots reading their known values from its canvas and its coded
    ones decoding theirs from its stream into it; all meet again, and stop once every stream has
    failed. A thread that raises marks `meeting` as given up (the others stop at their next
    meeting), and so does `decode_steps` where a share raises in Python (share_rows's `abandon`)."""
    active, begins, advance, coded, ys, xs = schedule
    committed_first, values, moving_first = pending
    coders, words, ends, failed = streams
    position, caches = state[0], state[2]
    slots, channels = values.shape
    planes = len(coders)
    per_plane = slots // planes
    row_pair = 2 * (len(state[7]) + 1)  # a slot's two rows of each row cache
    met = 0
    try:
        for s in range(len(active)):
            committed = committed_first if s == 0 else active[s - 1]
            moving = moving_first if s == 0 else advance[s - 1]
            mine = np.flatnonzero(committed | active[s])[first::threads]
            stepping = mine[committed[mine]]
            if len(stepping):
                _commit_slots(stepping, shape, net, state, t, values, moving)
            for b in mine[begins[s][mine]]:  # IntegerStepper.restart
                position[b] = 0
                caches[:, b * row_pair + row_pair // 2 : (b + 1) * row_pair] = 0.0
            stepping = mine[active[s][mine]]
            if len(stepping):
                _predict_slots(stepping, shape, net, state, t, out)
            if not meet(meeting, threads, met):
                return
            met += 1
            shares = max(1, min(threads, planes, coded[s].sum() * channels // per_share))
            for k in range(first * planes // shares, (first + 1) * planes // shares if first < shares else 0):
                for b in range(k * per_plane, (k + 1) * per_plane):
                    for c in range(channels):
                        values[b, c] = canvases[k, ys[s, b], xs[s, b], c] if active[s, b] else 0
                rows = k * per_plane + np.flatnonzero(coded[s, k * per_plane : (k + 1) * per_plane])
                bits[s, k] = _decode_plane(k, rows, out, values, mixtures, channels, tables, coders, words, ends, failed,
                                           weights)
                for b in rows:
                    for c in range(channels):
                        canvases[k, ys[s, b], xs[s, b], c] = values[b, c]
            if not meet(meeting, threads, met):
                return
            met += 1
            if failed.all():
                break
    except Exception:
        give_up(meeting)


def decode_steps(net, state: tuple[np.ndarray, ...], pending: tuple[np.ndarray, np.ndarray, np.ndarray],
                 schedule: tuple[np.ndarray, ...], canvases: np.ndarray, coders: np.ndarray, words: np.ndarray,
                 ends: np.ndarray, failed: np.ndarray, mixtures: int) -> np.ndarray:
    """A chunk of S decoder steps in one compiled call on coding's threads (see _decode_steps): the
    stepper's state (IntegerStepper), its commit not yet done (committed (B,) bool, values (B, C)
    int64, advance (B,) int64; values is written: the chunk's last values, to commit next), the
    schedule (active, begins, advance, coded (S, B) bool; the canvas rows and columns (S, B) int64
    each slot reads and writes), the planes' canvases (P, H', W', C) uint8, written, and their range
    decoders (as decode_pixels). Slots are plane by plane, B / P each. Returns the bits each step's
    planes took (S, P)."""
    packed = _packed(net)
    committed, values, advance = pending
    steps, slots = schedule[0].shape
    out = np.zeros((slots, packed.layers[-1, 2]))
    bits = np.zeros((steps, len(coders)))
    meeting = np.zeros(2, np.int64)
    active, begins, moving, coded, ys, xs = (np.ascontiguousarray(a) for a in schedule)
    share_rows(_decode_steps, slots, meeting, (active, begins, moving.astype(np.int64), coded, ys, xs),
           (committed, values, advance), canvases, packed.shape, packed.arrays, state, _step_tables(), _mixture_tables(),
           mixtures, (coders, words, ends, failed), SEARCH_SYMBOLS_PER_SHARE, out, np.empty((slots, mixtures), np.int64),
           bits, abandon=lambda: meeting.__setitem__(1, 1))
    if meeting[1]:
        raise RuntimeError("a decoding thread failed (an exception in the compiled loop)")
    return bits
