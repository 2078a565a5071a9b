"""The compiled CPU kernels (integer/kernels.py) give exactly the integers of the torch code.

Compared directly, array for array, on real network outputs and on inputs that reach the limits of
the arithmetic: activations of +-2**20, every log-scale and mean, saturated and zero weights, slots
at position 0 and slots waiting behind others.
"""

from __future__ import annotations

import constriction
import numba
import numpy as np
import pytest
import torch

from snailcompress.codec import calibration_objective, coder
from snailcompress.integer import arithmetic as ar
from snailcompress.integer import kernels, network, runtime
from snailcompress.integer.mixture import IntegerConditionals
from snailcompress.errors import FormatError
from snailcompress.integer.network import IntegerPixelSNAIL, IntegerStepper, step_attention
from snailcompress.mixture import num_params
from snailcompress.threads import set_threads
from snailcompress.zoo import load_model


@pytest.fixture
def torch_threads():
    """Set coding's thread count for a test (what --threads sets: the kernels' and torch's), and 1
    again after it."""
    yield set_threads
    set_threads(1)


def _coded(params: torch.Tensor, values: np.ndarray, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """values (N, C) coded as the encoder codes one step's pixels, channel by channel, each from its
    two cumulative counts in the torch code's tables: the stream's words, and the counts."""
    start, count = IntegerConditionals(params, channels, compiled=False).symbol_bounds(values)
    encoder = constriction.stream.queue.RangeEncoder()
    for c in range(channels):
        coder._encode_symbols(encoder, values[:, c], start[:, c], count[:, c])
    return encoder.get_compressed(), count


def _decoded(params: torch.Tensor, channels: int, decoders: list) -> tuple[np.ndarray, float]:
    """One step's pixels (rows of params, plane by plane) decoded by the compiled decoder."""
    streams = coder._Streams(decoders)
    known = np.zeros((len(params), channels), np.int64)
    bits = streams.decode(np.asarray(params), known)
    streams.close()
    return known, bits


def _constriction_decoded(params: torch.Tensor, channels: int, words: np.ndarray) -> np.ndarray:
    """The same, by constriction's decoder from the torch code's full tables."""
    decoder = constriction.stream.queue.RangeDecoder(words)
    reference = IntegerConditionals(params, channels, compiled=False)
    known = np.zeros((len(params), channels), np.int64)
    for c in range(channels):
        known[:, c] = decoder.decode(coder._FAMILY, reference.tables(c, known[:, :c]).numpy().astype(np.float64))
    return known


def _check_decoder(params, values: np.ndarray, channels: int) -> None:
    params = torch.as_tensor(params)
    words, count = _coded(params, values, channels)
    known, bits = _decoded(params, channels, [coder.StreamDecoder(words)])
    assert np.array_equal(known, values)
    assert bits == pytest.approx(float((ar.PRECISION_BITS - np.log2(count + 1.0)).sum()), rel=1e-12)
    assert np.array_equal(_constriction_decoded(params, channels, words), values)  # constriction's stream


@pytest.mark.parametrize("channels", [3, 1])
def test_the_decoder_reads_the_encoders_stream_on_a_real_image(channels):
    """The compiled decoder, searching each pixel's cumulative counts, decodes what the encoder coded
    from the torch code's tables, as constriction's own decoder does from the full tables, and counts
    the bits each value took."""
    net = IntegerPixelSNAIL.convert(load_model("snail-rgb" if channels == 3 else "snail-gray").model)
    rng = np.random.default_rng(channels)
    ramp = np.add.outer(np.arange(12), np.arange(12))[None, None] * 9 + rng.integers(0, 9, (2, channels, 12, 12))
    images = torch.from_numpy(np.clip(ramp, 0, 255).astype(np.uint8))
    params = net.forward(images).reshape(-1, num_params(channels, 10))
    _check_decoder(params, images.permute(0, 2, 3, 1).reshape(-1, channels).numpy().astype(np.int64), channels)


def _at_the_limits(seed: int, channels: int, n: int = 400, mixtures: int = 10):
    """Parameters drawn over and beyond every clamp (logits, means, log-scales, coefficients) and
    values crowding the ends of 0..255."""
    rng = np.random.default_rng(seed)
    k = num_params(channels, mixtures)
    spread = rng.choice([2**20, 16 * 4096, 8 * 4096, 4096, 64], (n, k))
    params = torch.from_numpy(np.floor(rng.uniform(-1, 1, (n, k)) * spread)).double()
    params[: n // 4, :mixtures] = 0  # equal logits: every component weighted
    values = torch.from_numpy(rng.choice([0, 1, 2, 127, 128, 253, 254, 255, *range(256)], (n, channels)))
    return params, values


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("seed", range(4))
def test_the_decoder_reads_the_encoders_stream_at_the_limits(channels, seed):
    """Peaked and flat mixtures, values at the ends of 0..255: intervals of width 1 to most of 2**24,
    the range decoder taking in words often or seldom."""
    params, values = _at_the_limits(seed, channels)
    _check_decoder(params, values.numpy(), channels)


def test_the_search_finds_the_value_whose_interval_holds_the_quantile_from_any_guess():
    """_search, from every kind of guess, gives the value v with v + C(v) <= q < v + 1 + C(v + 1)
    (C: the torch code's cumulative counts) at each value's first and last quantile."""
    channels, mixtures = 3, 10
    params, _ = _at_the_limits(40, channels, n=24)
    t = kernels._mixture_tables()
    weights, mean, inverse = np.empty(mixtures, np.int64), np.empty(mixtures), np.empty(mixtures)
    tables = IntegerConditionals(params, channels, compiled=False).tables(0).numpy()
    rng = np.random.default_rng(41)
    for row, table in zip(params.numpy(), tables):
        kernels._prior(row, mixtures, t[0], weights)
        kernels._components(row, np.zeros(channels, np.int64), 0, mixtures, channels, t, mean, inverse)
        starts = np.arange(256) + np.concatenate([[0], np.cumsum(table)[:-1]])  # where each value's interval begins
        quantiles = np.unique(np.clip(np.concatenate([starts, starts - 1, [(1 << ar.PRECISION_BITS) - 1]]), 0, None))
        expected = np.searchsorted(starts, quantiles, side="right") - 1
        denominator = int(weights.sum()) << ar.CDF_BITS
        for guess in (0, 1, 127, 254, 255, int(rng.integers(0, 256))):
            found = [kernels._search(int(q), guess, weights, denominator, mean, inverse, t[4]) for q in quantiles]
            assert np.array_equal(found, expected), guess


@pytest.mark.parametrize("threads", [1, 2])
def test_the_decoder_goes_on_where_it_stopped_and_decodes_planes_together(threads, torch_threads, monkeypatch):
    """Three planes' streams decoded together, over two steps, on one thread or shared among two:
    each StreamDecoder goes on where the first step left it, neither plane's rows read another's
    stream, and the bits are the sum of each symbol's."""
    torch_threads(threads)
    monkeypatch.setattr(kernels, "SEARCH_SYMBOLS_PER_SHARE", 1)  # share even these few
    channels, n, planes = 3, 150, 3
    steps = [_at_the_limits(seed, channels, n=planes * n) for seed in (20, 21)]
    streams, bits = [], 0.0
    for plane in range(planes):
        encoder = constriction.stream.queue.RangeEncoder()
        for params, values in steps:
            rows = slice(plane * n, (plane + 1) * n)
            start, count = IntegerConditionals(params[rows], channels, compiled=False).symbol_bounds(values[rows].numpy())
            bits += float(np.sum(ar.PRECISION_BITS - np.log2(count + 1)))
            for c in range(channels):
                coder._encode_symbols(encoder, values[rows].numpy()[:, c], start[:, c], count[:, c])
        streams.append(encoder.get_compressed())
    decoders = [coder.StreamDecoder(words) for words in streams]
    decoded_bits = 0.0
    for params, values in steps:
        known, step_bits = _decoded(params, channels, decoders)
        assert np.array_equal(known, values.numpy())
        decoded_bits += step_bits
    assert not any(decoder.failed for decoder in decoders)
    assert decoded_bits == pytest.approx(bits, rel=1e-12)


@pytest.mark.parametrize("threads", [1, 2])
def test_the_decoder_reads_a_short_stream_as_constriction_does_and_fails_where_it_fails(threads, torch_threads,
                                                                                        monkeypatch):
    """Past its last word a stream reads as zeros (constriction's decoder does the same, and gives the
    same values, from no words and from one on); a quantile beyond the tables (all ones) is constriction's error: the plane fails,
    and decode_planes gives a FormatError for it alone (on one thread, or with the planes shared among two)."""
    torch_threads(threads)
    monkeypatch.setattr(kernels, "SEARCH_SYMBOLS_PER_SHARE", 1)
    channels = 3
    params, values = _at_the_limits(30, channels, n=200)
    words, _ = _coded(params, values.numpy(), channels)
    for length in (0, 1, len(words) // 3):
        short = words[:length]
        known, _ = _decoded(params, channels, [coder.StreamDecoder(short)])
        assert np.array_equal(known, _constriction_decoded(params, channels, short)), length
    ones = np.full(2, 0xFFFFFFFF, np.uint32)
    with pytest.raises(AssertionError):  # constriction's error
        constriction.stream.queue.RangeDecoder(ones).decode(coder._FAMILY, np.ones((1, 256)))
    decoders = [coder.StreamDecoder(ones), coder.StreamDecoder(words)]
    doubled = torch.cat([params, params])
    known, _ = _decoded(doubled, channels, decoders)
    assert decoders[0].failed and not decoders[1].failed
    assert np.array_equal(known[len(params):], values.numpy())


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("seed", range(4))
def test_symbol_bounds_equal_torch_at_the_limits(channels, seed, threads, torch_threads):
    """The encoder's two cumulative counts per subpixel, compiled, are torch's, and are the entries
    of the full tables (every row of which sums to the total)."""
    torch_threads(threads)
    params, values = _at_the_limits(seed + 10, channels, n=600)
    values = values.numpy()
    compiled = IntegerConditionals(params, channels, compiled=True)
    reference = IntegerConditionals(params, channels, compiled=False)
    rows = np.arange(len(values))
    start, count = compiled.symbol_bounds(values)
    assert start.dtype == count.dtype == np.int64 and start.shape == count.shape == values.shape
    expected = reference.symbol_bounds(values)
    assert np.array_equal(start, expected[0]) and np.array_equal(count, expected[1])
    for c in range(channels):
        tables = reference.tables(c, values[:, :c]).numpy()
        assert bool((tables.sum(axis=1) == ar.TABLE_TOTAL).all())
        assert np.array_equal(count[:, c], tables[rows, values[:, c]])
        assert np.array_equal(start[:, c], np.cumsum(tables, axis=1)[rows, values[:, c]] - count[:, c])


@pytest.mark.parametrize("threads", [1, 2])
def test_attention_equals_torch_at_the_limits(threads):
    """Keys, values and queries of +-2**20 (the activation limit), positions from 0 to the window's
    end, every slot at one position (nobody waits) and at different ones; keys of 0 make every weight
    equal, so the rounding of the average meets exact halves. Key channels a multiple of four (the
    kernel takes four a pass) and not."""
    rng = np.random.default_rng(threads)
    batch, n = 9, 40
    set_threads(threads)
    try:
        for trial in range(16):
            limit = [2**20, 2**12, 50, 0][trial % 4]
            dk, dv = (16, 24) if trial < 8 else (7, 5)
            keys = torch.from_numpy(rng.integers(-limit, limit + 1, (batch, dk, n))).float()
            values = torch.from_numpy(rng.integers(-2**20, 2**20 + 1, (batch, dv, n))).float()
            query = torch.from_numpy(rng.integers(-limit, limit + 1, (batch, dk))).double()
            together = trial % 2 == 0
            position = torch.full((batch,), int(rng.integers(0, n + 1))) if together else torch.from_numpy(
                rng.integers(0, 4 if limit == 0 else n + 1, batch))
            assert np.array_equal(kernels.attend(query.numpy(), keys.numpy(), values.numpy(), position.numpy()),
                                  step_attention(query, keys.double(), values.double(), position).numpy()), trial
    finally:
        set_threads(1)


def test_the_steps_attention_is_exact_in_the_longest_window():
    """The step's attention where its sums are largest: a window of 2**16 - 1 positions (the most
    network.check_positions allows), every weight equal (keys of 0) or not, values at +-2**20, the
    last positions attending to all the others, averages at exact halves among them: the rounded
    average against torch's integer division."""
    rng = np.random.default_rng(7)
    n, batch = 2**16 - 1, 3
    query = np.zeros((batch, 16))
    query[2] = rng.integers(-2**12, 2**12 + 1, 16)
    keys = rng.integers(-50, 51, (batch, 16, n)).astype(np.float32)
    keys[:2] = 0.0
    values = rng.choice(np.array([-2.0**20, 2.0**20], np.float32), (batch, 24, n))
    values[0, :2], values[0, 2:4] = 2.0**20, -(2.0**20)  # averages of +-(2**20 - 1/2) over 2**16 - 2 positions:
    values[0, :2, 0], values[0, 2:4, 0] = 2.0**20 - 32767, -(2.0**20) + 32767  # exact halves, rounded up
    values[0, 4, 0] = 2.0**20 - 1  # an average just below 2**20
    position = np.array([n - 1, n - 2, n - 1])
    expected = step_attention(torch.from_numpy(query), torch.from_numpy(keys).double(), torch.from_numpy(values).double(),
                              torch.from_numpy(position)).numpy()
    assert np.array_equal(kernels.attend(query, keys, values, position), expected)


def test_the_full_passes_attention_equals_torch_at_the_limits():
    """The encoder's attention over a whole window (every position attends to those before it),
    compiled, against torch's, at the limits of keys, values and queries; keys of 0 make every
    weight equal, so the rounding of the averages meets exact halves, and values all at +-2**20
    make the largest sums a window of this length has."""
    rng = np.random.default_rng(5)
    exp16 = kernels._step_tables()[2]
    for trial in range(10):
        limit = [2**20, 2**12, 50, 0, 0][trial % 5]
        n = [40, 130][trial // 5]  # one block of queries, and three
        query = rng.integers(-limit, limit + 1, (n, 16)).astype(np.float64)
        keys = rng.integers(-limit, limit + 1, (n, 16)).astype(np.float64)
        values = rng.integers(-2**20, 2**20 + 1, (n, 24)).astype(np.float64)
        if trial % 5 == 4:
            values = rng.choice([-2.0**20, 2.0**20], (n, 24))
        expected = network._causal_attention(*(torch.from_numpy(a)[None] for a in (query, keys, values)), ar.on("cpu"))
        assert np.array_equal(kernels._causal_attention(query, keys, values, exp16), expected[0].numpy()), trial


def test_the_attentions_rounding_is_exact_at_every_boundary():
    """round_half_up(weighted / total) without an integer division: at and beside each point where
    the rounding changes, over the whole range a window allows (totals up to (2**16 - 1) * 2**16,
    averages of |v| <= 2**20), as Python's integers give it. (The float quotient alone, by the
    reciprocal, is a unit low at many of these.)"""
    rng = np.random.default_rng(6)
    largest = (2**16 - 1) * 2**16
    totals = [1, 2, 3, 2**27 - 1, largest, largest - 1, *rng.integers(1, 2**27, 1000).tolist(),
              *rng.integers(2**27, largest + 1, 500).tolist()]
    for total in totals:
        m = np.concatenate([[-2**20, 2**20], rng.integers(-2**20, 2**20 + 1, 62)])
        weighted = (2 * m - 1) * total // 2 + rng.integers(-1, 2, 64)  # (2 w + t) / 2t at, below and above m
        weighted = np.clip(weighted, -(2**20) * total, 2**20 * total)  # an average of values within +-2**20
        out = np.empty(64)
        kernels._divide_half_up(weighted.astype(np.float64), float(total), out)
        expected = [(2 * int(w) + total) // (2 * total) for w in weighted]
        assert out.tolist() == expected, total


def test_keys_values_and_row_caches_are_exact_in_float32():
    """The compiled stepper stores keys, values and the row caches as float32: exact for every
    activation, |a| <= 2**20."""
    edge = torch.tensor([-ar.ACTIVATION_LIMIT, -ar.ACTIVATION_LIMIT + 1, -1, 0, 1, ar.ACTIVATION_LIMIT - 1,
                         ar.ACTIVATION_LIMIT], dtype=torch.float64)
    assert torch.equal(edge.float().double(), edge)
    stepper = IntegerStepper(IntegerPixelSNAIL.convert(load_model("snail-rgb").model), 2, 3, 3, compiled=True)
    assert {stepper.keys.dtype, stepper.values.dtype, stepper.caches.dtype} == {np.dtype(np.float32)}


def test_the_kernels_narrow_tables_hold_every_entry_exactly():
    """The kernels read the lookup tables in narrower types than int64 (less cache): every entry of
    each is the pinned table's, compared directly."""
    tables = ar.tables()
    elu, sigmoid, exp16, pixels = kernels._step_tables()
    step = {"elu": elu, "sigmoid": sigmoid * ar.ONE, "exp16": exp16, "pixels": pixels}
    exp16, tanh, inverse_scale, pixels, cdf = kernels._mixture_tables()
    mixture = {"exp16": exp16, "tanh": tanh, "inverse_scale": inverse_scale, "pixels": pixels, "cdf": cdf}
    for name, table in [*step.items(), *mixture.items()]:
        assert np.array_equal(table, np.asarray(tables[name], np.int64)), name  # compared as float64: exact here


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_the_compiled_step_equals_torch_on_any_thread_count(threads, torch_threads):
    """The shipped model's whole step (commit, then predict) as one compiled call, its slots shared
    among threads, against the torch stepper: the same parameters at every step and the same keys and
    values after, with slots that wait, restart on another window, and reach the window's end."""
    net = IntegerPixelSNAIL.convert(load_model("snail-rgb").model)
    rng = np.random.default_rng(threads)
    batch, height, width = 5, 6, 7
    images = torch.from_numpy(rng.integers(0, 256, (2 * batch, 3, height, width)).astype(np.uint8))
    torch_threads(threads)
    compiled, reference = (IntegerStepper(net, batch, height, width, compiled=flag) for flag in (True, False))
    seen, image = np.zeros(batch, int), np.arange(batch)
    for step in range(2 * height * width):
        params = compiled.predict()
        assert np.array_equal(params, reference.predict().numpy()), step
        advance = torch.from_numpy((rng.random(batch) < 0.8) & (seen < height * width - 1))
        values = images[image, :, seen // width, seen % width]
        for stepper in (compiled, reference):
            stepper.commit(values, advance)
        seen += advance.numpy()
        if step == height * width:  # two slots start another window
            begins = torch.tensor([True, False, False, True, False])
            for stepper in (compiled, reference):
                stepper.restart(begins)
            seen[begins.numpy()], image[begins.numpy()] = 0, image[begins.numpy()] + batch
    compiled.predict()  # does the last commit
    assert np.array_equal(compiled.keys, reference.keys.numpy()) and np.array_equal(compiled.values, reference.values.numpy())


@pytest.mark.parametrize("threads", [1, 2])
def test_slots_left_out_of_a_step_are_not_stepped_and_lose_nothing(threads, torch_threads):
    """predict(slots) steps only those slots (compiled): slots left out for some steps, at the start,
    in the middle of a window or after its end, then stepped again, give the parameters of the torch
    stepper that steps every slot every time, and the same keys and values; left-out rows are 0, and
    a left-out slot cannot move on."""
    net = IntegerPixelSNAIL.convert(load_model("snail-rgb").model)
    rng = np.random.default_rng(threads)
    batch, height, width = 5, 4, 5
    n = height * width
    images = torch.from_numpy(rng.integers(0, 256, (batch, 3, height, width)).astype(np.uint8))
    torch_threads(threads)
    compiled, reference = (IntegerStepper(net, batch, height, width, compiled=flag) for flag in (True, False))
    seen = np.zeros(batch, int)
    for step in range(4 * n):
        stepped = rng.random(batch) < 0.6
        stepped[0] = step >= n  # slot 0 waits a whole window's worth of steps before its first
        params, expected = compiled.predict(stepped), reference.predict(stepped).numpy()
        assert np.array_equal(params[stepped], expected[stepped]), step
        assert not params[~stepped].any()
        advance = torch.from_numpy(stepped & (rng.random(batch) < 0.8) & (seen < n - 1))
        values = images[np.arange(batch), :, seen // width, seen % width]
        for stepper in (compiled, reference):
            stepper.commit(values, advance)
        seen += advance.numpy()
    assert (seen > 2).all()
    compiled.predict(np.ones(batch, bool))  # does the last commit
    for b in range(batch):
        done = slice(0, seen[b])  # positions whose keys and values are final
        assert np.array_equal(compiled.keys[:, b, :, done], reference.keys[:, b, :, done].numpy())
        assert np.array_equal(compiled.values[:, b, :, done], reference.values[:, b, :, done].numpy())
    compiled.commit(values, torch.zeros(batch, dtype=torch.bool))
    compiled.predict(np.array([True, False, True, True, True]))
    with pytest.raises(ValueError, match="did not step"):
        compiled.commit(values, torch.tensor([False, True, False, False, False]))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("channels", [3, 1])
def test_the_compiled_full_pass_equals_torch(channels, threads, torch_threads):
    """The encoder's full forward pass, a window at a time in compiled calls, against torch: windows
    of one row, one column and one pixel, flat, saturated and random images, on one and two threads."""
    net = IntegerPixelSNAIL.convert(load_model("snail-rgb" if channels == 3 else "snail-gray").model)
    rng = np.random.default_rng(channels + threads)
    torch_threads(threads)
    for shape in [(3, 1, 1), (2, 1, 9), (2, 7, 1), (3, 9, 11)]:
        images = [rng.integers(0, 256, (*shape[:1], channels, *shape[1:])), np.zeros((1, channels, *shape[1:]), int),
                  np.full((1, channels, *shape[1:]), 255)]
        pixels = torch.from_numpy(np.concatenate(images).astype(np.uint8))
        assert np.array_equal(net.forward(pixels, compiled=True), net.forward(pixels, compiled=False).numpy()), shape


@pytest.mark.parametrize("threads", [1, 2])
def test_the_compiled_output_layer_equals_torch(threads, torch_threads):
    """The output layer on numpy features (blocks of rows shared among the threads) against torch's:
    features over the whole activation range, more rows than one block, and none."""
    net = IntegerPixelSNAIL.convert(load_model("snail-rgb").model)
    rng = np.random.default_rng(threads)
    features = np.floor(rng.uniform(-1, 1, (2, 1300, 48)) * rng.choice([2**20, 4096, 64], (2, 1300, 48)))
    torch_threads(threads)
    assert np.array_equal(net.outputs(features), net.outputs(torch.from_numpy(features)).numpy())
    assert net.outputs(np.zeros((0, 48))).shape == (0, num_params(3, 10))


def test_a_decoder_holds_the_threads_and_gives_them_back(torch_threads):
    """While decoding, the kernels run on --threads and torch on one (its spinning OpenMP threads
    would take the kernels' cores); after, torch has its threads again."""
    torch_threads(2)
    with runtime.take_threads():
        assert torch.get_num_threads() == 1 and runtime._threads == 2
    assert torch.get_num_threads() == 2 and runtime._threads == 0


def test_two_threads_decode_what_one_encoded(torch_threads):
    net = IntegerPixelSNAIL.convert(load_model("snail-rgb").model)
    rng = np.random.default_rng(5)
    plane = np.clip(rng.integers(-30, 31, (20, 44, 3)).cumsum(axis=1) + 128, 0, 255).astype(np.uint8)
    torch_threads(1)
    words, _ = coder.code_plane(net, plane, (8, 8), (2, 2), band=2)
    torch_threads(2)
    assert np.array_equal(coder.decode_plane(net, words, 20, 44, 3, (8, 8), (2, 2), band=2), plane)


class _TorchPath:
    """An integer network seen through its torch code, as a GPU runs it, here on the CPU."""

    def __init__(self, net: IntegerPixelSNAIL):
        self.net, self.device = net, "cpu"

    def features(self, pixels):
        return self.net.features(pixels, compiled=False)  # tensors, as on a GPU

    def outputs(self, features):
        return self.net.outputs(features)

    def stepper(self, batch: int, height: int, width: int) -> IntegerStepper:
        return IntegerStepper(self.net, batch, height, width, compiled=False)


def test_the_torch_path_codes_the_stream_of_the_compiled_one():
    """The coder driven by the torch code (tensors out of the full pass and the stepper, the GPU's
    path) writes the streams of the compiled kernels (numpy arrays), of one plane and of three coded
    together, and decodes them, either way."""
    net = IntegerPixelSNAIL.convert(load_model("snail-rgb").model)
    rng = np.random.default_rng(11)
    planes = [np.clip(rng.integers(-20, 21, (11, 13, 3)).cumsum(axis=1) + 128, 0, 255).astype(np.uint8) for _ in range(3)]
    words, _ = coder.code_plane(net, planes[0], (4, 4), (2, 2), band=2)
    torch_words, _ = coder.code_plane(_TorchPath(net), planes[0], (4, 4), (2, 2), band=2)
    assert np.array_equal(torch_words, words)
    assert np.array_equal(coder.decode_plane(_TorchPath(net), words, 11, 13, 3, (4, 4), (2, 2), band=2), planes[0])
    together, _ = coder.code_planes(_TorchPath(net), planes, (4, 4), (2, 2), band=2)
    assert np.array_equal(together[0], words)
    assert all(np.array_equal(a, b) for a, b in zip(together, coder.code_planes(net, planes, (4, 4), (2, 2), band=2)[0]))


@pytest.mark.parametrize("threads, chunk", [(1, 64), (2, 5), (3, 1)])
def test_the_compiled_decoding_loop_decodes_what_the_step_by_step_one_does(threads, chunk, torch_threads, monkeypatch):
    """On the CPU a chunk of the decoder's steps is one compiled call (IntegerStepper.decode: every
    step's restarts, network and searches, the threads meeting between them); the torch path steps
    in Python. Four planes decoded together, one stream cut short: each plane comes out as the torch
    path gives it (its pixels, or its error), on one to three threads (more than there may be cores),
    the planes' searches shared among them, in chunks of one step to many (each chunk's last commit
    left to the next)."""
    net = IntegerPixelSNAIL.convert(load_model("snail-rgb").model)
    rng = np.random.default_rng(12)
    planes = [np.clip(rng.integers(-20, 21, (11, 13, 3)).cumsum(axis=1) + 128, 0, 255).astype(np.uint8) for _ in range(4)]
    streams = [coder.code_plane(net, plane, (4, 4), (2, 2), band=2)[0] for plane in planes]
    streams[1] = streams[1][: len(streams[1]) // 2]
    reference = coder.decode_planes(_TorchPath(net), streams, 11, 13, 3, (4, 4), (2, 2), band=2)
    torch_threads(threads)
    monkeypatch.setattr(kernels, "SEARCH_SYMBOLS_PER_SHARE", 1)  # share even these few
    monkeypatch.setattr(coder, "DECODE_CHUNK_STEPS", chunk)
    decoded = coder.decode_planes(net, streams, 11, 13, 3, (4, 4), (2, 2), band=2)
    for expected, result in zip(reference, decoded):
        if isinstance(expected, FormatError):
            assert isinstance(result, FormatError)
        else:
            assert np.array_equal(result, expected)
    assert all(np.array_equal(decoded[k], planes[k]) for k in (0, 2, 3))


@pytest.mark.parametrize("threads", [2, 3])
def test_the_compiled_decoding_loop_stops_when_every_stream_fails(threads, torch_threads):
    """Streams that fail at their first symbol (all ones: a quantile beyond the tables): every thread
    leaves the loop at the same step, and each plane gives its error."""
    net = IntegerPixelSNAIL.convert(load_model("snail-rgb").model)
    torch_threads(threads)
    ones = np.full(2, 0xFFFFFFFF, np.uint32)
    results = coder.decode_planes(net, [ones] * 3, 11, 13, 3, (4, 4), (2, 2), band=2)
    assert all(isinstance(result, FormatError) for result in results)


@numba.njit(nogil=True)
def _meetings(first, threads, meeting, seen, gives_up):  # pragma: no cover (compiled)
    """Each thread marks seen[m, first] before meeting m and checks every thread's mark after it;
    thread `gives_up` gives up before meeting 2. Returns nothing: seen[m, threads + first] = 1 where
    the thread saw every mark after meeting m, 2 where meet said a thread had given up."""
    for m in range(4):
        if first == gives_up and m == 2:
            runtime.give_up(meeting)
            return
        seen[m, first] = 1
        if not runtime.meet(meeting, threads, m):
            seen[m, threads + first] = 2
            return
        seen[m, threads + first] = 1 if seen[m, :threads].all() else 0


@pytest.mark.parametrize("threads", [2, 3])
def test_threads_meet_and_stop_when_one_gives_up(threads, torch_threads):
    """runtime.meet: no thread leaves a meeting before every thread has come and what each wrote
    before it is seen by all after it; a thread that gives up (the decoding loop's, on an exception)
    sends the others away from their next meeting instead of leaving them waiting for ever."""
    torch_threads(threads)
    for gives_up, passed in ((-1, 4), (threads - 1, 2)):
        seen = np.zeros((4, 2 * threads), np.int64)
        runtime.share_rows(_meetings, threads, np.zeros(2, np.int64), seen, gives_up)
        others = [first for first in range(threads) if first != gives_up]
        assert (seen[:passed, threads:] == 1).all()
        assert passed == 4 or (seen[2, [threads + first for first in others]] == 2).all()


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("raising", ["this thread's share", "a worker's share"])
def test_a_share_that_raises_before_its_meetings_sends_the_others_away(threads, raising, torch_threads):
    """A share that raises in Python, never reaching its compiled call (an interrupt, a failed
    dispatch), cannot mark the meeting itself: share_rows's `abandon` does, and the others leave their
    first meeting; the error is raised."""
    torch_threads(threads)
    fails = 0 if raising == "this thread's share" else threads - 1
    meeting, seen = np.zeros(2, np.int64), np.zeros((4, 2 * threads), np.int64)

    def share(first, step, meeting, seen):
        if first == fails:
            raise KeyError("no meeting")
        _meetings(first, step, meeting, seen, -1)

    with pytest.raises(KeyError):
        runtime.share_rows(share, threads, meeting, seen, abandon=lambda: meeting.__setitem__(1, 1))
    assert all(seen[0, threads + first] == 2 for first in range(threads) if first != fails)


def test_a_failing_decoding_loop_raises_and_its_threads_decode_again(torch_threads, monkeypatch):
    """An exception inside the compiled decoding loop (here a division by zero) ends it on every
    thread with an error, not a hang; the threads decode the next file."""
    net = IntegerPixelSNAIL.convert(load_model("snail-rgb").model)
    plane = np.full((6, 7, 3), 77, np.uint8)
    words, _ = coder.code_plane(net, plane, (4, 4), (2, 2), band=2)
    torch_threads(2)
    monkeypatch.setattr(kernels, "SEARCH_SYMBOLS_PER_SHARE", 0)
    with pytest.raises(RuntimeError, match="decoding thread failed"):
        coder.decode_plane(net, words, 6, 7, 3, (4, 4), (2, 2), band=2)
    monkeypatch.undo()
    assert np.array_equal(coder.decode_plane(net, words, 6, 7, 3, (4, 4), (2, 2), band=2), plane)


def test_kernels_leave_the_thread_count_alone():
    """--threads sets torch's threads; a kernel must not change them (numba's OpenMP layer would)."""
    torch.set_num_threads(1)
    kernels.attend(np.zeros((2, 16)), np.zeros((2, 16, 3), np.float32), np.zeros((2, 3, 24), np.float32),
                   np.array([1, 3]))
    kernels.symbol_bounds(np.zeros((2, num_params(3, 10))), np.zeros((2, 3), np.int64), 10, 3)
    assert torch.get_num_threads() == 1


def _mark_rows(first, step, rows, fail_at):
    """A kernel for share_rows's tests: marks the rows it does, raises on row `fail_at`."""
    for row in range(first, len(rows), step):
        if row == fail_at:
            raise ValueError(f"row {row}")
        rows[row] += 1


@pytest.mark.parametrize("threads", [2, 3])
def test_share_rows_does_every_row_once_and_hands_back_a_workers_error(threads, monkeypatch):
    """share_rows's workers: every row done once on any thread count; an error in a worker's share
    reaches the caller (not a hang, not a silent gap), and the workers still serve after it."""
    rows = np.zeros(10, np.int64)
    monkeypatch.setattr(runtime, "_threads", threads)
    runtime.share_rows(_mark_rows, len(rows), rows, -1)
    assert rows.tolist() == [1] * 10
    with pytest.raises(ValueError, match="row 1"):  # row 1 is the first worker's
        runtime.share_rows(_mark_rows, len(rows), rows, 1)
    rows[:] = 0
    runtime.share_rows(_mark_rows, len(rows), rows, -1)
    assert rows.tolist() == [1] * 10


def test_share_rows_from_two_threads_at_once_gives_both_their_rows(monkeypatch):
    """A second caller while the workers are busy runs its rows itself: both get every row."""
    import threading

    results = [np.zeros(64, np.int64) for _ in range(4)]
    monkeypatch.setattr(runtime, "_threads", 2)
    callers = [threading.Thread(target=lambda r=r: [runtime.share_rows(_mark_rows, len(r), r, -1) for _ in range(50)])
               for r in results]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert all(r.tolist() == [50] * 64 for r in results)


def test_more_threads_replace_the_workers_and_the_replaced_ones_end():
    import threading

    workers = lambda: [t for t in threading.enumerate() if t.name.startswith("snailcompress-kernels")]  # noqa: E731
    started = runtime._workers(1)
    replaced = workers()
    assert len(replaced) >= len(started.jobs)
    larger = runtime._workers(len(started.jobs) + 1)
    assert larger is not started and len(larger.jobs) == len(started.jobs) + 1
    for thread in replaced:
        thread.join(timeout=10)
        assert not thread.is_alive()
    assert len(workers()) == len(larger.jobs)


def test_kernels_load_where_no_cache_can_be_written(tmp_path):
    """A read-only install run with no writable home: numba, asked to cache, raised at import (every
    coding command failed). Now the kernels are kept in a temporary directory and compiled in each
    process. Simulated in a copy of the package whose __pycache__ folders are files, with HOME a file."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    package = Path(kernels.__file__).resolve().parents[1]
    copy = tmp_path / "site" / "snailcompress"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__", "weights", "*.npz"))
    for folder in (copy / "integer", copy / "codec"):
        (folder / "__pycache__").write_text("not a directory")
    (tmp_path / "home").write_text("not a directory")
    script = ("import numpy as np\n"
              "import snailcompress.codec.calibration_objective, snailcompress.integer.kernels\n"
              "from snailcompress.integer import runtime\n"
              "meeting = np.zeros(2, np.int64)\n"
              "runtime.give_up(meeting)\n"  # compiled, and cached in the temporary directory
              "print(runtime.temporary_kernel_cache, meeting[1])\n")
    env = {**os.environ, "HOME": str(tmp_path / "home"), "PYTHONPATH": str(copy.parent)}
    for name in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    kept, given_up = done.stdout.split()
    assert "snailcompress-kernels-" in kept and given_up == "1"
    assert not Path(kept).exists()  # removed at exit


def test_compiling_the_encoders_or_the_decoders_kernels_is_noticed_once_each_and_loading_never(
        tmp_path, monkeypatch, capsys):
    """numba's compile event (a cache miss) calls compile_notice once a process for the encoder's
    kernels and once for the decoder's, for these kernels only, never for one already compiled or
    loaded from numba's disk cache; a notice that raises does not fail the compilation; the CLI's
    notice is one line on stderr, and none with -q. Functions compiled here stand for kernels: they
    are given the kernels' module (and a decoder kernel's name), so the listener counts them as theirs."""
    import importlib
    import sys

    from snailcompress import cli

    params, values = _at_the_limits(0, 3, n=4)
    kernels.symbol_bounds(params.numpy(), values.numpy(), 10, 3)  # compiled or loaded by now
    noticed = []
    monkeypatch.setattr(runtime, "compile_notice", noticed.append)
    monkeypatch.setattr(runtime._compile_listener, "noticed", set())
    kernels.symbol_bounds(params.numpy(), values.numpy(), 10, 3)
    assert not noticed

    def compiled(module, name="add_one"):
        def add_one(x):
            return x + 1

        add_one.__module__, add_one.__name__ = module, name
        return numba.njit(add_one)

    assert compiled("elsewhere")(1) == 2 and not noticed  # another module's compilation says nothing
    assert compiled(kernels.__name__)(1) == 2 and noticed == ["encoding"]
    assert compiled(kernels.__name__)(2) == 3 and noticed == ["encoding"]  # once a process
    assert compiled(kernels.__name__, "_decode_rows")(3) == 4 and noticed == ["encoding", "decoding"]
    assert compiled(kernels.__name__, "_step_slots")(4) == 5 and noticed == ["encoding", "decoding"]

    # loaded from the disk cache: no compilation, no notice
    (tmp_path / "cached_kernel.py").write_text(
        "import numba\n\n\ndef add_two(x):\n    return x + 2\n\n\n"
        f"add_two.__module__ = {kernels.__name__!r}\nadd_two = numba.njit(cache=True)(add_two)\n")
    monkeypatch.syspath_prepend(tmp_path)
    monkeypatch.setattr(runtime._compile_listener, "noticed", set())
    module = importlib.import_module("cached_kernel")
    assert module.add_two(1) == 3 and noticed == ["encoding", "decoding", "encoding"]  # compiled, cached
    monkeypatch.setattr(runtime._compile_listener, "noticed", set())
    module = importlib.reload(module)
    assert module.add_two(2) == 4 and noticed == ["encoding", "decoding", "encoding"]  # loaded
    sys.modules.pop("cached_kernel")

    def fails(work):
        noticed.append("failed")
        raise BrokenPipeError

    monkeypatch.setattr(runtime, "compile_notice", fails)
    monkeypatch.setattr(runtime._compile_listener, "noticed", set())
    assert compiled(kernels.__name__)(5) == 6 and noticed[-1] == "failed"
    monkeypatch.setattr(runtime, "compile_notice", noticed.append)  # the calibration's kernel is the encoder's too
    monkeypatch.setattr(runtime._compile_listener, "noticed", set())
    assert compiled(calibration_objective.__name__)(6) == 7 and noticed[-1] == "encoding"

    capsys.readouterr()
    cli._say_when_compiling(False)
    assert runtime.compile_notice is None
    cli._say_when_compiling(True)
    runtime.compile_notice("decoding")
    err = capsys.readouterr().err
    assert err.startswith("snailcompress: ") and err.count("\n") == 1


@numba.njit(cache=False)
def _elementwise(kind, x, in_place):  # pragma: no cover (compiled)
    out, bits = x.copy() if in_place else np.empty_like(x), np.empty(2 * len(x), np.int64)
    source = out if in_place else x  # the objective calls them in place
    if kind == 0:
        calibration_objective._exp_into(source, out, bits)
    elif kind == 1:
        calibration_objective._expm1_into(source, out, bits)
    else:
        calibration_objective._log_into(source, out, bits)
    return out


def test_the_fits_own_exp_expm1_and_log_are_libms_to_a_few_units_in_the_last_place():
    """The calibration's objective computes exp, exp - 1 and log as polynomials over a block of
    pixels (so that they vectorise), in place: within 4 units in the last place of numpy's over
    their ranges, at the edges of each branch, 0 where exp would be subnormal, and NaN carried
    through (as libm's), never a finite number."""
    rng = np.random.default_rng(0)
    edges = [0.0, -0.0, -1e-300, -1e-17, -1e-9, -0.33999999, -0.34, -0.34000001, -0.5 * np.log(2), -1.0, -707.9, -708.0]
    x = np.concatenate([rng.uniform(-708, 709, 20000), rng.uniform(-1, 1, 20000), edges, -np.array(edges)])
    near_one = 1.0 + np.array([-1e-15, -1e-9, 1e-9, 1e-15, 0.0, np.sqrt(2) - 1, np.sqrt(2) / 2 - 1])
    y = np.concatenate([np.exp(rng.uniform(-708, 709, 20000)), rng.uniform(0.5, 2.0, 20000), near_one,
                        [np.finfo(np.float64).tiny, np.finfo(np.float64).max, 1e-300]])
    cases = ((0, np.exp, x), (1, np.expm1, -np.abs(np.concatenate([x[x > -708], rng.uniform(-60, 0, 5000)]))), (2, np.log, y))
    for in_place in (False, True):
        for kind, function, inputs in cases:
            got, want = _elementwise(kind, inputs, in_place), function(inputs)
            assert np.all(np.abs(got - want) <= 4 * np.spacing(np.abs(want))), function.__name__
            assert np.isnan(_elementwise(kind, np.array([1.0, np.nan, -2.0]), in_place)[1]), function.__name__
        assert np.array_equal(_elementwise(0, np.array([-708.5, -745.2, -1e300]), in_place), np.zeros(3))
        assert _elementwise(2, np.ones(1), in_place)[0] == 0.0
        assert np.isnan(_elementwise(2, np.array([0.0, -1.0, np.inf]), in_place)).all()
