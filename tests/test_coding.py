"""The entropy-coding stack, tested by its laws and end to end.

1. ANS codec laws (hypothesis): ``pop(push(m, x)) == (m, x)`` for every leaf codec and
   combinator on a message that already holds random words; the rate of a push within
   1% + 64 bits of sum(-log2 p); pops never read past the end of a message.
2. The diffusion chain: push a batch, pop it from a fresh message built from the words.
3. The image codec: bit-exact round trips (odd sizes, gray/RGB, PIL, archives, MNIST,
   decoding in another process).
4. Size accounting: file = container + seeds + chain bits; never larger than classical.
5. Corruption: every damaged or forged file is a FormatError (ModelError for the wrong
   model), never another exception type.

Everything runs the untrained tiny model with T = 2..4 on tiny images.
"""
from __future__ import annotations

import copy

import dataclasses
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vdmcodec.coding import classical, container
from vdmcodec.coding.ans import (
    EmptyMessageError,
    Message,
    bit_swap,
    bits_back,
    categorical,
    counted,
    permuted,
    quantized_gaussian,
    serial,
    uniform,
    whiten,
    whitened,
    windowed_gaussian,
)
from vdmcodec.coding.ans.message import _mask16
from vdmcodec.coding.arithmetic import ARITHMETIC
from vdmcodec.coding.chain import ChainConfig, DiffusionChain
from vdmcodec.coding.archive import chain_order
from vdmcodec.coding.codec import Codec, decompress_file_bytes, load_codec
from vdmcodec.coding.level_codecs import x_window
from vdmcodec.errors import FormatError, ModelError
from tests.helpers import gaussian_vdm

LAWS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RATES = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
seeds = st.integers(0, 2**32 - 1)
OVERHEAD = 5 + 4  # container bytes around the header and its length: magic, version, CRC
CLASSICAL = ("png", "webp", "jxl", "ctx")


pytestmark = pytest.mark.usefixtures("one_thread")


# ---- helpers ---------------------------------------------------------------------------
def random_words(rng: np.random.Generator, n: int) -> np.ndarray:
    """n random uint32 words; the top one non-zero (an unsealed message needs that)."""
    w = rng.integers(0, 1 << 32, size=n, dtype=np.uint64).astype(np.uint32)
    w[-1] = max(int(w[-1]), 1)
    return w


def assert_law(codec, data, words: np.ndarray, sealed: bool, same=np.testing.assert_array_equal):
    """pop(push(m, x)) == (m, x), on a message that starts with ``words``."""
    msg = Message(words, sealed=sealed)
    codec.push(msg, data)
    out = codec.pop(msg)
    same(out, data)
    np.testing.assert_array_equal(msg.words(unseal=sealed), words)


def gauss_bin_bits(k: np.ndarray, mean: np.ndarray, std: np.ndarray) -> float:
    """sum of -log2 P(k) for N(mean, std^2) quantised to the unit bin [k - 1/2, k + 1/2]."""
    total = 0.0
    for kk, m, s in zip(k.tolist(), mean.tolist(), std.tolist()):
        a, b = (kk - 0.5 - m) / (s * math.sqrt(2)), (kk + 0.5 - m) / (s * math.sqrt(2))
        # same-sign tails via erfc, to keep the difference accurate
        p = 0.5 * (math.erfc(a) - math.erfc(b)) if a > 0 else 0.5 * (math.erfc(-b) - math.erfc(-a)) if b < 0 \
            else 0.5 * (math.erf(b) - math.erf(a))
        total -= math.log2(p)
    return total


def push_bits(codec, data, words: np.ndarray) -> int:
    msg = Message(words)
    before = msg.num_bits
    codec.push(msg, data)
    return msg.num_bits - before


def assert_rate(bits: float, ideal: float):
    assert abs(bits - ideal) <= 0.01 * ideal + 64, f"push cost {bits} bits, -log2 p = {ideal:.1f}"


def toy_model(rng: np.random.Generator, K: int, M: int):
    """A small discrete latent model: prior p(z) on K values, likelihood rows p(x | z) on M."""
    pz = rng.dirichlet(np.ones(K)) + 0.02
    pz /= pz.sum()
    lik = rng.dirichlet(np.ones(M), size=K) + 0.02
    lik /= lik.sum(axis=1, keepdims=True)
    return pz, lik


def toy_bits_back(pz, lik, q, n: int):
    """BB-ANS for n i.i.d. items of the toy model with posterior rows q [M, K]."""
    return bits_back(
        categorical(np.tile(pz, (n, 1))),
        lambda z: categorical(lik[np.asarray(z)]),
        lambda x: categorical(q[np.asarray(x)]),
    )


# ---- 1. codec laws -----------------------------------------------------------------------
@LAWS
@given(seed=seeds, n=st.integers(0, 200), lo=st.integers(-1000, 1000), span=st.integers(1, 3000), sealed=st.booleans())
def test_quantized_gaussian_law(seed, n, lo, span, sealed):
    rng = np.random.default_rng(seed)
    hi = lo + span
    mean = rng.uniform(lo - 3, hi + 3, n)
    std = np.exp(rng.uniform(math.log(0.05), math.log(500), n))
    near = np.clip(np.rint(mean + std * rng.standard_normal(n)), lo, hi).astype(np.int64)
    k = np.where(rng.random(n) < 0.5, near, rng.integers(lo, hi + 1, n))
    k[: min(n, 2)] = [lo, hi][: min(n, 2)]  # both ends of the range
    assert_law(quantized_gaussian(mean, std, lo, hi), k, random_words(rng, 8), sealed)


@LAWS
@given(seed=seeds, n=st.integers(0, 200), width=st.integers(1, 300), sealed=st.booleans())
def test_windowed_gaussian_with_escapes_law(seed, n, width, sealed):
    """Any 32-bit integer is codable, including ones far outside the window and exactly
    on its edge (offset +-width escapes, +-(width - 1) does not)."""
    rng = np.random.default_rng(seed)
    mean = rng.uniform(-1e6, 1e6, n)
    std = np.exp(rng.uniform(math.log(0.1), math.log(200), n))
    centre = np.rint(mean).astype(np.int64)
    choices = np.stack([
        np.rint(mean + std * rng.standard_normal(n)),                  # typical
        centre + rng.choice([-1, 1], n) * width,                       # on the window edge: escapes
        centre + rng.choice([-1, 1], n) * (width - 1),                 # just inside
        rng.integers(-(2**31), 2**31, n),                              # anywhere in int32
        rng.choice([-(2**31), 2**31 - 1], n),                          # the extremes
    ]).astype(np.int64)
    k = choices[rng.integers(0, len(choices), n), np.arange(n)]
    assert_law(windowed_gaussian(mean, std, width, escape=True), k, random_words(rng, 8), sealed)


@LAWS
@given(seed=seeds, n=st.integers(0, 200), width=st.integers(1, 300), sealed=st.booleans())
def test_windowed_gaussian_without_escapes_law(seed, n, width, sealed):
    rng = np.random.default_rng(seed)
    mean = rng.uniform(-1e6, 1e6, n)
    std = np.exp(rng.uniform(math.log(0.1), math.log(200), n))
    k = np.rint(mean).astype(np.int64) + rng.integers(-width, width + 1, n)
    assert_law(windowed_gaussian(mean, std, width, escape=False), k, random_words(rng, 8), sealed)


@LAWS
@given(seed=seeds, n=st.integers(0, 200), K=st.integers(2, 40), sealed=st.booleans())
def test_categorical_law(seed, n, K, sealed):
    """Random rows, unnormalised, with zero entries: every symbol stays codable (leaky)."""
    rng = np.random.default_rng(seed)
    probs = rng.random((n, K)) ** 3 * rng.uniform(0.1, 10, (n, 1))
    probs[rng.random((n, K)) < 0.3] = 0.0
    probs[np.arange(n), rng.integers(0, K, n)] += 0.5  # at least one non-zero entry per row
    x = rng.integers(0, K, n)
    assert_law(categorical(probs), x, random_words(rng, 8), sealed)


@LAWS
@given(seed=seeds, count=st.integers(0, 300), n_symbols=st.integers(2, 1 << 24), sealed=st.booleans())
def test_uniform_law(seed, count, n_symbols, sealed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, n_symbols, count)
    assert_law(uniform(n_symbols, count), x, random_words(rng, 8), sealed)


@LAWS
@given(seed=seeds, n=st.integers(1, 100), sealed=st.booleans())
def test_serial_and_permuted_law(seed, n, sealed):
    rng = np.random.default_rng(seed)
    mean, std = rng.normal(0, 50, n), rng.uniform(0.5, 20, n)
    probs = rng.random((n, 5)) + 0.01
    codec = serial([
        quantized_gaussian(mean, std, -300, 300),
        permuted(categorical(probs), rng.permutation(n)),
        uniform(256, n),
        windowed_gaussian(mean, std, 40),
    ])
    data = [rng.integers(-300, 301, n), rng.integers(0, 5, n), rng.integers(0, 256, n), rng.integers(-1000, 1000, n)]

    def same(out, ref):
        assert len(out) == len(ref)
        for a, b in zip(out, ref):
            np.testing.assert_array_equal(a, b)

    assert_law(codec, data, random_words(rng, 8), sealed, same)


@LAWS
@given(seed=seeds, n=st.integers(1, 200), K=st.integers(2, 8), M=st.integers(2, 12), sealed=st.booleans())
def test_bits_back_law(seed, n, K, M, sealed):
    """BB-ANS with an arbitrary (not exact) posterior: still a bijection on messages."""
    rng = np.random.default_rng(seed)
    pz, lik = toy_model(rng, K, M)
    q = rng.random((M, K)) + 0.01
    x = rng.integers(0, M, n)
    assert_law(toy_bits_back(pz, lik, q, n), x, random_words(rng, 16 + n), sealed)


def toy_chain(rng: np.random.Generator, sizes: list[int], n: int):
    """A discrete Markov chain y_0 -> ... -> y_L (y_j on sizes[j] values, n items each): a
    random top prior, random p(y_j | y_{j+1}) and q(y_{j+1} | y_j) tables, whitened pops.
    Returns (bit_swap codec, tables) with tables[j] = (q_j [S_j, S_{j+1}], p_j [S_{j+1}, S_j])."""
    tables = [(rng.random((a, b)) + 0.01, rng.random((b, a)) + 0.01) for a, b in zip(sizes, sizes[1:])]
    levels = [((lambda y, q=q, j=j: whitened(categorical(q[np.asarray(y)]), 3, key=j)),
               (lambda y, p=p: categorical(p[np.asarray(y)]))) for j, (q, p) in enumerate(tables)]
    top = categorical(np.tile(rng.random(sizes[-1]) + 0.01, (n, 1)))
    return bit_swap(top, levels), tables, top


@LAWS
@given(seed=seeds, n=st.integers(1, 60), depth=st.integers(1, 5), sealed=st.booleans())
def test_bit_swap_law(seed, n, depth, sealed):
    """Bit-Swap over a chain of any depth, with whitened posteriors: a bijection on messages."""
    rng = np.random.default_rng(seed)
    sizes = [int(v) for v in rng.integers(2, 9, depth + 1)]
    codec, _, _ = toy_chain(rng, sizes, n)
    assert_law(codec, rng.integers(0, sizes[0], n), random_words(rng, 32 + 4 * n * depth), sealed)


@LAWS
@given(seed=seeds, n=st.integers(1, 60), K=st.integers(2, 8), M=st.integers(2, 12))
def test_one_level_bit_swap_is_bits_back(seed, n, K, M):
    """bit_swap with one level is bits_back: the same stack, word for word."""
    rng = np.random.default_rng(seed)
    pz, lik = toy_model(rng, K, M)
    q = rng.random((M, K)) + 0.01
    x = rng.integers(0, M, n)
    words = random_words(rng, 16 + n)
    a, b = Message(words), Message(words)
    toy_bits_back(pz, lik, q, n).push(a, x)
    prior = categorical(np.tile(pz, (n, 1)))
    bit_swap(prior, [(lambda x: categorical(q[np.asarray(x)]), lambda z: categorical(lik[np.asarray(z)]))]).push(b, x)
    np.testing.assert_array_equal(a.words(), b.words())


@LAWS
@given(seed=seeds, n=st.integers(1, 60), sealed=st.booleans())
def test_counted_and_whitened_keep_the_law(seed, n, sealed):
    rng = np.random.default_rng(seed)
    ticks = []
    codec = counted(whitened(categorical(rng.random((n, 5)) + 0.01), 2, key=7), ticks.append)
    assert_law(codec, rng.integers(0, 5, n), random_words(rng, 8 + n), sealed)
    assert ticks == [1, 1]


@RATES
@given(seed=seeds, depth=st.integers(1, 3))
def test_bit_swap_with_exact_posteriors_costs_minus_log_p_x(seed, depth):
    """Bit-Swap's net rate: with each q(y_{j+1} | y_j) the exact posterior of a chain whose
    joint is p(y_L) prod p(y_j | y_{j+1}), the push costs sum -log2 p(x)."""
    rng = np.random.default_rng(seed)
    sizes = [int(v) for v in rng.integers(2, 7, depth + 1)]
    top = rng.random(sizes[-1]) + 0.05
    top /= top.sum()
    ps = [rng.random((b, a)) + 0.05 for a, b in zip(sizes, sizes[1:])]  # p(y_j | y_{j+1}) rows over y_j
    ps = [p / p.sum(axis=1, keepdims=True) for p in ps]
    marg = [None] * (depth + 1)  # marginals p(y_j)
    marg[depth] = top
    for j in range(depth - 1, -1, -1):
        marg[j] = marg[j + 1] @ ps[j]
    # exact posterior p(y_{j+1} | y_j) = p(y_{j+1}) p(y_j | y_{j+1}) / p(y_j): the joint is Markov
    qs = [(marg[j + 1][:, None] * ps[j]).T / marg[j][:, None] for j in range(depth)]
    levels = [((lambda y, q=q: categorical(q[np.asarray(y)])), (lambda y, p=p: categorical(p[np.asarray(y)])))
              for q, p in zip(qs, ps)]
    x = rng.choice(sizes[0], size=N_RATE, p=marg[0])
    codec = bit_swap(categorical(np.tile(top, (N_RATE, 1))), levels)
    bits = push_bits(codec, x, random_words(rng, 64 + depth * N_RATE // 4))
    assert_rate(bits, -np.log2(marg[0][x]).sum())


@LAWS
@given(seed=seeds, n=st.integers(1, 50), sealed=st.booleans())
def test_whiten_is_a_free_involution(seed, n, sealed):
    rng = np.random.default_rng(seed)
    words = random_words(rng, 8 + n)
    msg = Message(words, sealed=sealed)
    key = int(rng.integers(0, 1000))
    whiten(msg, n, key=key)
    assert msg.num_bits == Message(words, sealed=sealed).num_bits  # costs nothing
    # the mask is splitmix64(key * golden + index): zero for key 0 at index 0, so one digit
    # with key 0 stays as it is (the chain's level 0 leaves its first digit unmasked)
    assert np.array_equal(msg.words(unseal=sealed), words) == (not _mask16(n, key).any())
    whiten(msg, n, key=key)
    np.testing.assert_array_equal(msg.words(unseal=sealed), words)


# ---- 1b. rate laws ------------------------------------------------------------------------
N_RATE = 3000


@RATES
@given(seed=seeds)
def test_quantized_gaussian_rate(seed):
    rng = np.random.default_rng(seed)
    mean, std = rng.uniform(-50, 50, N_RATE), np.exp(rng.uniform(math.log(0.3), math.log(20), N_RATE))
    k = np.rint(mean + std * rng.standard_normal(N_RATE)).astype(np.int64)
    bits = push_bits(quantized_gaussian(mean, std, -600, 600), k, random_words(rng, 4))
    assert_rate(bits, gauss_bin_bits(k, mean, std))


@RATES
@given(seed=seeds)
def test_windowed_gaussian_rate(seed):
    rng = np.random.default_rng(seed)
    mean, std = rng.uniform(-1e5, 1e5, N_RATE), np.full(N_RATE, math.exp(rng.uniform(math.log(0.3), math.log(20))))
    k = np.rint(mean + std * rng.standard_normal(N_RATE)).astype(np.int64)
    codec = windowed_gaussian(mean, std, math.ceil(16 * std[0]))
    assert_rate(push_bits(codec, k, random_words(rng, 4)), gauss_bin_bits(k, mean, std))


@RATES
@given(seed=seeds, K=st.integers(2, 64))
def test_categorical_rate(seed, K):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(K, 0.5), size=N_RATE) + 1e-3
    probs *= rng.uniform(0.5, 2, (N_RATE, 1))  # unnormalised rows
    p = probs / probs.sum(axis=1, keepdims=True)
    x = (rng.random((N_RATE, 1)) > p.cumsum(axis=1)).sum(axis=1).clip(0, K - 1)
    ideal = -np.log2(p[np.arange(N_RATE), x]).sum()
    assert_rate(push_bits(categorical(probs), x, random_words(rng, 4)), ideal)


@RATES
@given(seed=seeds, n_symbols=st.integers(2, 1 << 20))
def test_uniform_rate(seed, n_symbols):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, n_symbols, N_RATE)
    assert_rate(push_bits(uniform(n_symbols, N_RATE), x, random_words(rng, 4)), N_RATE * math.log2(n_symbols))


@RATES
@given(seed=seeds, K=st.integers(2, 8), M=st.integers(2, 16))
def test_bits_back_with_exact_posterior_costs_minus_log_p_x(seed, K, M):
    """With q(z|x) the exact posterior, p(x, z) / q(z | x) = p(x) for every z: the net
    length of a bits-back push is sum -log2 p(x), whichever z the pop produced."""
    rng = np.random.default_rng(seed)
    pz, lik = toy_model(rng, K, M)
    joint = pz[:, None] * lik               # [K, M]
    px = joint.sum(axis=0)
    q = (joint / px).T                      # [M, K] exact posterior
    x = rng.choice(M, size=N_RATE, p=px)
    bits = push_bits(toy_bits_back(pz, lik, q, N_RATE), x, random_words(rng, 64 + N_RATE // 4))
    assert_rate(bits, -np.log2(px[x]).sum())


# ---- 1c. empty and exhausted messages ---------------------------------------------------
LEAVES = {
    "quantized_gaussian": lambda: quantized_gaussian(np.zeros(4), np.ones(4), -10, 10),
    "windowed_escape": lambda: windowed_gaussian(np.zeros(4), np.ones(4), 8, escape=True),
    "windowed_no_escape": lambda: windowed_gaussian(np.zeros(4), np.ones(4), 8, escape=False),
    "categorical": lambda: categorical(np.full((4, 3), 1 / 3)),
    "uniform": lambda: uniform(256, 4),
}


@pytest.mark.parametrize("name", LEAVES)
def test_pop_from_empty_message_raises(name):
    with pytest.raises(EmptyMessageError):
        LEAVES[name]().pop(Message())
    with pytest.raises(EmptyMessageError):
        whiten(Message(), 3, key=0)


@LAWS
@given(seed=seeds, n_words=st.integers(1, 8), extra=st.integers(1, 200), sealed=st.booleans(),
       kind=st.sampled_from(["uniform", "categorical", "windowed"]))
def test_popping_past_the_end_raises_never_degenerate_symbols(seed, n_words, extra, sealed, kind):
    """A message of n words cannot supply more than 32 n bits: a pop that needs more must
    raise, not return made-up symbols (constriction 0.5 returns zeros there)."""
    rng = np.random.default_rng(seed)
    count = (32 * n_words + 64) // 8 + extra  # 8 bits per symbol: more than the message holds
    codec = {
        "uniform": lambda: uniform(256, count),
        "categorical": lambda: categorical(np.ones((count, 256))),
        "windowed": lambda: windowed_gaussian(np.zeros(count), np.full(count, 70.0), 127, escape=False),
    }[kind]()
    msg = Message(random_words(rng, n_words), sealed=sealed)
    with pytest.raises(EmptyMessageError):
        codec.pop(msg)


@LAWS
@given(seed=seeds, n_words=st.integers(3, 40), sealed=st.booleans())
def test_pops_within_the_message_succeed(seed, n_words, sealed):
    """...while pops that stay clear of the last two words read the message's own bits."""
    rng = np.random.default_rng(seed)
    words = random_words(rng, n_words)
    count = 32 * (n_words - 2) // 8
    msg = Message(words, sealed=sealed)
    out = uniform(256, count).pop(msg)
    uniform(256, count).push(msg, out)
    np.testing.assert_array_equal(msg.words(unseal=sealed), words)


def test_whiten_past_the_end_raises():
    with pytest.raises(EmptyMessageError):
        whiten(Message(np.arange(1, 5, dtype=np.uint32), sealed=True), 100, key=1)


def test_invalid_pushes_raise_value_error_and_leave_the_message():
    words = np.arange(1, 9, dtype=np.uint32)
    cases = [
        (quantized_gaussian(np.zeros(2), np.ones(2), -5, 5), np.array([0, 6])),
        (windowed_gaussian(np.zeros(2), np.ones(2), 5, escape=False), np.array([0, -6])),
        (windowed_gaussian(np.zeros(2), np.ones(2), 5, escape=True), np.array([0, 2**31])),
        (windowed_gaussian(np.zeros(2), np.ones(2), 5, escape=True), np.array([-(2**31) - 1, 0])),
        (uniform(256, 3), np.array([1, 2])),
    ]
    for codec, x in cases:
        msg = Message(words)
        with pytest.raises(ValueError):
            codec.push(msg, x)
        np.testing.assert_array_equal(msg.words(), words)


@pytest.mark.parametrize("make", [
    lambda: quantized_gaussian(np.zeros(1), np.ones(1), 3, 3),
    lambda: quantized_gaussian(np.zeros(1), np.ones(1), 3, 2),
    lambda: windowed_gaussian(np.zeros(1), np.ones(1), 0),
    lambda: uniform(1, 1),
    lambda: uniform(0, 1),
], ids=["qg_one_symbol", "qg_empty", "window_0", "uniform_1", "uniform_0"])
def test_degenerate_codec_parameters_raise_value_error(make):
    """Not a Rust panic (pyo3's PanicException is a BaseException: no handler catches it)."""
    with pytest.raises(ValueError):
        make()


def test_message_bytes_round_trip_and_bad_lengths():
    words = np.array([7, 0, 0xFFFFFFFF, 3], dtype=np.uint32)
    msg = Message(words, sealed=True)
    again = Message.from_bytes(msg.to_bytes())
    np.testing.assert_array_equal(again.words(unseal=True), words)
    with pytest.raises(FormatError):
        Message.from_bytes(b"\x01\x02\x03")
    with pytest.raises(FormatError):
        Message(np.array([5, 0], dtype=np.uint32))  # unsealed data must end in a non-zero word


# ---- 2. the diffusion chain ---------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_vdm(tiny_model_dir):
    from vdmcodec.zoo import load_model

    return load_model(tiny_model_dir)[0]


def chain_init_words(chain: DiffusionChain, dims: int, rng) -> np.ndarray:
    bits = 2 * chain.initial_bits_per_dim() * dims + 32 * (chain.cfg.steps + 1) * 4 + 256
    return random_words(rng, math.ceil(bits / 32))


@pytest.mark.parametrize("steps,grid_bits,white,shape", [
    (3, 6, True, (2, 1, 5, 4)),
    (2, 4, False, (1, 1, 3, 5)),
    (4, 8, True, (3, 1, 2, 2)),
])
def test_chain_round_trip_through_a_fresh_message(tiny_vdm, steps, grid_bits, white, shape):
    chain = DiffusionChain(tiny_vdm, ChainConfig(steps=steps, grid_bits=grid_bits, whiten=white))
    rng = np.random.default_rng(steps)
    x = rng.integers(0, 256, shape, dtype=np.uint8)
    init = chain_init_words(chain, x.size, rng)
    msg = Message(init, sealed=True)
    chain.push(msg, x)
    fresh = Message(msg.words())  # what a decoder sees: only the words
    y = chain.pop(fresh, shape)
    np.testing.assert_array_equal(y, x)
    assert y.dtype == np.uint8
    np.testing.assert_array_equal(fresh.words(unseal=True), init)


@pytest.mark.parametrize("g0", [-13.3, -10.0, -6.0, -3.0])
def test_x_window_holds_every_pixel_q_can_produce_and_p_s_mass(g0):
    """p(x | z_0) is coded on a window of pixel values: every x that the truncated q(z_0 | x)
    can have produced lies in it, and it holds all but a negligible part of VDM's p(x | z_0)
    over the 256 values (the window grows to the whole range when sigma_0 is large)."""
    chain = DiffusionChain(gaussian_vdm(0.0, 0.5, g0=g0), ChainConfig(steps=8, grid_bits=2))
    rng = np.random.default_rng(0)
    x = np.concatenate([np.arange(256), rng.integers(0, 256, 1000)])
    mean = chain.grid.alpha[0] * (2.0 * (x + 0.5) / 256 - 1.0)
    reach = chain.spec.q_window_stds * chain.grid.sigma[0] + 2 * chain.grid.delta[0]  # q's window, in latent units
    z_0 = np.concatenate([mean - reach, mean + reach, mean + rng.uniform(-reach, reach, x.size)])
    x = np.tile(x, 3)
    lo, probs = x_window(chain.grid, chain.fn, z_0)
    assert probs.shape == (z_0.size, chain.grid.x_width) and np.all((lo >= 0) & (lo + chain.grid.x_width <= 256))
    assert np.all((x >= lo) & (x < lo + chain.grid.x_width))
    if g0 >= -3.0:
        assert chain.grid.x_width == 256
    vals = chain.grid.alpha[0] * (2.0 * (np.arange(256) + 0.5) / 256 - 1.0)
    full = -0.5 * ((z_0[:, None] - vals[None]) / chain.grid.sigma[0]) ** 2
    full = np.exp(full - full.max(axis=1, keepdims=True))
    full /= full.sum(axis=1, keepdims=True)
    inside = np.take_along_axis(full, lo[:, None] + np.arange(chain.grid.x_width)[None], axis=1)
    assert 1.0 - inside.sum(axis=1).min() < 1e-15
    np.testing.assert_allclose(probs, inside / inside.sum(axis=1, keepdims=True), rtol=1e-9, atol=1e-300)


@pytest.mark.parametrize("arithmetic", list(ARITHMETIC))
def test_chain_round_trip_in_each_arithmetic_leaves_the_model_alone(tiny_vdm, arithmetic):
    chain = DiffusionChain(tiny_vdm, ChainConfig(steps=3, grid_bits=4, arithmetic=arithmetic))
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (2, 1, 9, 7), dtype=np.uint8)
    init = chain_init_words(chain, x.size, rng)
    msg = Message(init, sealed=True)
    chain.push(msg, x)
    np.testing.assert_array_equal(chain.pop(Message(msg.words()), x.shape), x)
    if ARITHMETIC[arithmetic].portable:  # its own float64 network (exact.py), no torch module
        assert chain.network is None and chain._exact_net is not None
    else:
        convs = [m.weight for m in chain.network.modules() if isinstance(m, torch.nn.Conv2d)]
        assert convs and all(w.is_contiguous(memory_format=ARITHMETIC[arithmetic].memory_format) for w in convs)
        assert chain.network.amp_dtype == ARITHMETIC[arithmetic].autocast
    # the caller's model keeps its layout (NCHW) and precision: the chain runs its own copy
    assert all(m.weight.is_contiguous() for m in tiny_vdm.modules() if isinstance(m, torch.nn.Conv2d))
    assert tiny_vdm.amp_dtype is None


def test_bfloat16_arithmetic_really_runs_reduced_precision_and_replays_itself(tiny_vdm):
    model = copy.deepcopy(tiny_vdm)
    torch.manual_seed(0)
    with torch.no_grad():  # the untrained output layer is zero: give every weight a value
        for p in model.net.parameters():
            p.copy_(0.2 * torch.randn_like(p))
    z = np.random.default_rng(2).standard_normal((2, 1, 9, 7))
    means = {}
    for a in ("float32-nhwc", "bfloat16-nhwc"):
        chain = DiffusionChain(model, ChainConfig(steps=3, arithmetic=a))
        first, again = chain.p_mean_std(z, 2)[0], chain.p_mean_std(z.copy(), 2)[0]
        np.testing.assert_array_equal(first, again)  # the decoder's call gives the encoder's bits
        means[a] = first
    diff = np.abs(means["float32-nhwc"] - means["bfloat16-nhwc"])
    assert 0 < diff.max() < 0.05  # bfloat16's 8-bit mantissa shows, and stays small


def test_bfloat16_nchw_runs_the_network_in_batches_of_16_on_both_sides(tiny_vdm):
    """The "bfloat16" arithmetic splits a batch into calls of at most 16 images: 20 images
    give each image the bits of its own call's group, and a 20-image archive round-trips."""
    model = copy.deepcopy(tiny_vdm)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.net.parameters():
            p.copy_(0.2 * torch.randn_like(p))
    chain = DiffusionChain(model, ChainConfig(steps=3, arithmetic="bfloat16"))
    calls = []
    real = chain.network.eps_and_v
    chain.network.eps_and_v = lambda z, g, c=None: calls.append(z.shape[0]) or real(z, g, c)
    z = np.random.default_rng(3).standard_normal((20, 1, 9, 7))
    whole = chain.p_mean_std(z, 2)
    assert calls == [16, 4]
    parts = [chain.p_mean_std(z[:16], 2), chain.p_mean_std(z[16:], 2)]
    np.testing.assert_array_equal(whole[0], np.concatenate([p[0] for p in parts]))
    f32 = DiffusionChain(model, ChainConfig(steps=3, arithmetic="float32")).p_mean_std(z, 2)[0]
    assert 0 < np.abs(whole[0] - f32).max() < 0.05  # bfloat16 really runs


def test_an_archive_in_bfloat16_nchw_round_trips(tiny_model_dir):
    codec = load_codec(tiny_model_dir, steps=2, arithmetic="bfloat16")
    imgs = list(np.random.default_rng(4).integers(0, 256, (40, 8, 8), dtype=np.uint8))
    blob = codec.compress(imgs, force_model=True)
    assert container.unpack(blob)[0].dtype == "bfloat16"
    assert all(np.array_equal(a, b) for a, b in zip(load_codec(tiny_model_dir).decompress(blob), imgs))


def test_chain_and_codec_refuse_an_unknown_arithmetic(tiny_vdm):
    with pytest.raises(ValueError, match="arithmetic"):
        DiffusionChain(tiny_vdm, ChainConfig(steps=3, arithmetic="float16"))
    with pytest.raises(ValueError, match="arithmetic"):
        Codec(tiny_vdm, {"name": "tiny"}, arithmetic="float64")
    assert set(ARITHMETIC) == set(container.DTYPES)  # the wire table names every arithmetic


def test_chain_with_too_few_initial_bits_raises(tiny_vdm):
    chain = DiffusionChain(tiny_vdm, ChainConfig(steps=3))
    x = np.random.default_rng(0).integers(0, 256, (2, 1, 6, 6), dtype=np.uint8)
    msg = Message(random_words(np.random.default_rng(1), 4), sealed=True)
    with pytest.raises(EmptyMessageError):
        chain.push(msg, x)


# ---- 3. the image codec ---------------------------------------------------------------
@pytest.fixture(scope="module")
def codec(tiny_model_dir):
    return load_codec(tiny_model_dir, steps=2)


def rgb_seed(rng, side=34) -> np.ndarray:
    """A random RGB image: the gray model cannot code it, its classical bytes seed the chain."""
    return rng.integers(0, 256, (side, side, 3), dtype=np.uint8)


def methods_of(blob: bytes) -> list[str]:
    return container.unpack(blob)[0].image_methods()


def assert_same_images(out, ref):
    assert len(out) == len(ref)
    for a, b in zip(out, ref):
        assert a.shape == b.shape and a.dtype == np.uint8
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("hw", [(1, 1), (3, 5), (29, 31)])
@pytest.mark.parametrize("form", ["HW", "HW1"])
def test_round_trip_odd_sizes_through_the_chain(codec, hw, form):
    rng = np.random.default_rng(hw[0] * 100 + hw[1])
    gray = [rng.integers(0, 256, hw if form == "HW" else (*hw, 1), dtype=np.uint8) for _ in range(3)]
    images = [rgb_seed(rng)] + gray
    blob = codec.compress(images, force_model=True)
    methods = methods_of(blob)
    assert methods[0] in CLASSICAL
    assert "vdm" in methods  # the chain really coded something
    assert_same_images(codec.decompress(blob), images)


def test_archive_grid_bits(tiny_model_dir, mnist_path):
    """Whole images are coded on the default grid however few, an archive with a tiled image
    on a grid one bit coarser (fewer initial bits, so fewer seed tiles), a caller's grid_bits
    always; each file records its grid and decodes."""
    from vdmcodec.coding import planner
    from vdmcodec.data import read_idx

    x = list(read_idx(mnist_path)[:12])
    grids = {}
    big = np.tile(x[0], (3, 1))  # 84 x 28: coded in tiles
    for label, kwargs, images in (("whole", {}, x), ("tiled", {}, x + [big]), ("fixed", {"grid_bits": 3}, x + [big])):
        codec = load_codec(tiny_model_dir, steps=2)
        if kwargs:
            codec = Codec(codec.model, codec.info, steps=2, arithmetic=codec.arithmetic, **kwargs)
        blob = codec.compress(images, force_model=True)
        header = container.unpack(blob)[0]
        grids[label] = header.grid_bits
        assert "vdm" in header.image_methods() and ("tiled" in header.image_methods()) == (label != "whole")
        assert_same_images(codec.decompress(blob), images)
    assert grids == {"whole": 2, "tiled": planner.COARSE_GRID_BITS, "fixed": 3}


def test_first_chunks_on_coarser_grids(tiny_model_dir, mnist_path):
    """The seeds start the first chunk on the coarsest chunk grid; chunks refine to the
    archive's grid as the stack grows, never coarser than the floor nor finer than the grid,
    the grids recorded per chunk (format version 9, here 10: the seed digits are ctx) and
    every image decoded."""
    from vdmcodec.coding.archive import chunk_floor
    from vdmcodec.data import read_idx

    x = list(read_idx(mnist_path)[:40])
    codec = load_codec(tiny_model_dir, steps=2)
    blob = codec.compress(x, force_model=True)
    header = container.unpack(blob)[0]
    assert blob[4] == header.version == container.CONTEXT_VERSION and "ctx" in header.image_methods()
    grids = header.chunk_grids
    assert len(grids) == len(header.chunks) and grids[0] == chunk_floor(header.grid_bits) < header.grid_bits
    assert grids == sorted(grids) and grids[-1] == header.grid_bits
    assert all(size == 1 for (_, size), g in zip(header.chunks, grids) if g < header.grid_bits)
    assert_same_images(codec.decompress(blob), x)
    # the same archive with the staircase's grids shifted: the chain pops other latents
    forged = dataclasses.replace(header, chunk_grids=[min(g + 1, header.grid_bits) for g in grids])
    with pytest.raises(FormatError):
        codec.decompress(container.pack(forged, container.unpack(blob)[1]))


@pytest.mark.parametrize("force", [False, True])
def test_round_trip_mnist_archive(codec, mnist_path, force):
    from vdmcodec.data import read_idx

    x = read_idx(mnist_path)[:20]  # [20, 28, 28, 1]
    blob = codec.compress(x, force_model=force)  # a 4-d array is an archive
    if force:
        assert methods_of(blob).count("vdm") >= 2
    out = codec.decompress(blob)
    assert_same_images(out, list(x))
    # 2-d inputs come back 2-d
    blob2 = codec.compress([im[..., 0] for im in x[:3]], force_model=force)
    assert_same_images(codec.decompress(blob2), [im[..., 0] for im in x[:3]])


@pytest.mark.parametrize("arithmetic", list(ARITHMETIC))
def test_a_file_decodes_in_the_arithmetic_it_names(codec, tiny_model_dir, arithmetic):
    """Files of either arithmetic decode with any codec: the decoder follows the header's dtype."""
    rng = np.random.default_rng(11)
    images = [rgb_seed(rng)] + [rng.integers(0, 256, (12, 10), dtype=np.uint8) for _ in range(3)]
    writer = load_codec(tiny_model_dir, steps=2, arithmetic=arithmetic)
    blob = writer.compress(images, force_model=True)
    header = container.unpack(blob)[0]
    assert header.dtype == arithmetic and "vdm" in header.image_methods()
    other = next(a for a in ARITHMETIC if a != arithmetic)
    reader = load_codec(tiny_model_dir, steps=2, arithmetic=other)  # what this reader would encode with
    assert_same_images(reader.decompress(blob), images)
    assert [k[2] for k in reader._chains] == [arithmetic]  # it ran the file's arithmetic, not its own


def test_rgb_goes_classical_with_a_gray_model(codec):
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (7, 9), dtype=np.uint8), rgb_seed(rng, 9), rng.integers(0, 256, (7, 9, 1), dtype=np.uint8),
              rng.integers(0, 256, (5, 4, 3), dtype=np.uint8)]
    for force in (False, True):
        blob = codec.compress(images, force_model=force)
        methods = methods_of(blob)
        assert methods[1] in CLASSICAL and methods[3] in CLASSICAL
        assert_same_images(codec.decompress(blob), images)
    only_rgb = [images[1], images[3]]
    blob = codec.compress(only_rgb, force_model=True)
    assert container.unpack(blob)[0].model is None  # nothing for the model: no model needed
    assert_same_images([im for im, _ in decompress_file_bytes(blob)], only_rgb)


@pytest.mark.parametrize("shape", [(1, 1), (6, 5), (6, 5, 1), (4, 7, 3)])
def test_single_image_round_trip(codec, shape):
    img = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    out = codec.decompress(codec.compress(img))
    assert_same_images(out, [img])


def test_pil_inputs(codec):
    from PIL import Image

    rng = np.random.default_rng(5)
    gray = rng.integers(0, 256, (6, 7), dtype=np.uint8)
    rgb = rng.integers(0, 256, (5, 3, 3), dtype=np.uint8)
    pil = [Image.fromarray(gray), Image.fromarray(rgb)]
    for force in (False, True):
        # a PIL "L" image comes back (H, W), an "RGB" one (H, W, 3)
        assert_same_images(codec.decompress(codec.compress(pil, force_model=force)), [gray, rgb])
    assert_same_images(codec.decompress(codec.compress(Image.fromarray(gray))), [gray])  # a single PIL image


def test_names_survive(codec):
    rng = np.random.default_rng(6)
    images = [rng.integers(0, 256, (4, 4), dtype=np.uint8) for _ in range(3)]
    names = ["a.png", "dir/b.png", "c d.png"]
    out = codec.decompress_named(codec.compress(images, names=names))
    assert [n for _, n in out] == names
    out = codec.decompress_named(codec.compress(images))
    assert [n for _, n in out] == ["00000.png", "00001.png", "00002.png"]


def test_decode_in_a_separate_process(codec, tiny_model_dir, tmp_path):
    """Lesson 1: decoding must not depend on the encoder's process (here: its thread count)."""
    rng = np.random.default_rng(7)
    images = [rgb_seed(rng, 24)] + [rng.integers(0, 256, (9, 11), dtype=np.uint8) for _ in range(4)]
    blob = codec.compress(images, force_model=True)
    assert "vdm" in methods_of(blob)
    (tmp_path / "a.vdmc").write_bytes(blob)
    script = (
        "import sys, numpy as np, torch; torch.set_num_threads(2)\n"
        "from vdmcodec.coding.codec import decompress_file_bytes\n"
        "blob = open(sys.argv[1], 'rb').read()\n"
        "out = decompress_file_bytes(blob, model=sys.argv[2])\n"
        "np.savez(sys.argv[3], *[im for im, _ in out])\n"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "a.vdmc"), str(tiny_model_dir), str(tmp_path / "out.npz")],
                   check=True, timeout=120, capture_output=True)
    with np.load(tmp_path / "out.npz") as z:
        out = [z[f"arr_{k}"] for k in range(len(z.files))]
    assert_same_images(out, images)


# ---- 4. size accounting ------------------------------------------------------------------
def test_file_size_is_container_plus_seeds_plus_chain_bits(codec):
    """Replay the encoder with the chain alone: the payload is exactly the seeds' classical
    bytes, the chain's words and the seal word; the container adds only its header."""
    rng = np.random.default_rng(8)
    images = [rgb_seed(rng, 30)] + [rng.integers(0, 256, (6, 5), dtype=np.uint8) for _ in range(5)]
    blob = codec.compress(images, force_model=True)
    header, payload = container.unpack(blob)
    hbytes = container.encode_header(header)
    assert blob[5 : 5 + len(container.encode_varint(len(hbytes)))] == container.encode_varint(len(hbytes))
    assert len(blob) == OVERHEAD + len(container.encode_varint(len(hbytes))) + len(hbytes) + len(payload)

    methods = header.image_methods()
    hwc = [im if im.ndim == 3 else im[..., None] for im in images]
    seeds = b"".join(classical.encode_best(hwc[k])[1] for k, m in enumerate(methods) if m != "vdm")
    assert len(seeds) == sum(header.classical_sizes)
    init = np.frombuffer(seeds + b"\0" * header.init_pad, dtype="<u4")
    msg = Message(init, sealed=True)
    start_bits = msg.num_bits
    chain = codec.chain(header.steps, header.grid_bits)
    order = chain_order(header.image_shapes(), methods)
    for start, size in header.chunks:
        chain.push(msg, np.stack([hwc[k] for k in order[start : start + size]]).transpose(0, 3, 1, 2).copy())
    chain_bits = msg.num_bits - start_bits
    assert msg.to_bytes() == payload  # bit-exact replay
    assert 8 * len(payload) == 8 * (len(seeds) + header.init_pad) + 32 + chain_bits  # seeds + seal + chain


@pytest.mark.parametrize("case", ["random", "flat", "mixed", "mnist", "rgb_only"])
def test_never_larger_than_classical(codec, case, mnist_path):
    from vdmcodec.data import read_idx

    rng = np.random.default_rng(9)
    images = {
        "random": lambda: [rng.integers(0, 256, (8, 8), dtype=np.uint8) for _ in range(6)],
        "flat": lambda: [np.full((8, 8), 7, np.uint8) for _ in range(6)],
        "mixed": lambda: [rgb_seed(rng, 20)] + [rng.integers(0, 256, (5, 6, 1), dtype=np.uint8) for _ in range(4)],
        "mnist": lambda: list(read_idx(mnist_path)[20:32]),
        "rgb_only": lambda: [rgb_seed(rng, 6)],
    }[case]()
    default = codec.compress(images)
    classical_only = codec.compress(images, classical_only=True)
    assert len(default) <= len(classical_only)
    assert_same_images(codec.decompress(default), images)
    assert_same_images(codec.decompress(classical_only), images)


# ---- 5. corruption ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chain_blob(codec):
    """A small archive whose payload is an ANS message (two images through the chain)."""
    rng = np.random.default_rng(10)
    images = [rng.integers(0, 256, (5, 4, 3), dtype=np.uint8)] + [rng.integers(0, 256, (3, 2), dtype=np.uint8) for _ in range(3)]
    blob = codec.compress(images, force_model=True)
    assert methods_of(blob).count("vdm") >= 2
    return blob, images


@pytest.fixture(scope="module")
def classical_blob(codec):
    rng = np.random.default_rng(11)
    images = [rng.integers(0, 256, (3, 4), dtype=np.uint8), rng.integers(0, 256, (2, 3, 3), dtype=np.uint8)]
    return codec.compress(images, classical_only=True), images


def expect_format_error(codec, blob):
    with pytest.raises(FormatError):
        codec.decompress(blob)


@pytest.mark.parametrize("which", ["chain", "classical"])
def test_truncation_at_every_byte(codec, chain_blob, classical_blob, which):
    blob, images = chain_blob if which == "chain" else classical_blob
    assert_same_images(codec.decompress(blob), images)
    for cut in range(len(blob)):
        expect_format_error(codec, blob[:cut])
    expect_format_error(codec, blob + b"\0")


@pytest.mark.parametrize("which", ["chain", "classical"])
def test_flipped_bytes_anywhere(codec, chain_blob, classical_blob, which):
    """Header, payload or CRC: the file-level checks catch every single-byte flip."""
    blob, _ = chain_blob if which == "chain" else classical_blob
    for pos in range(len(blob)):
        for mask in (0x01, 0x80, 0xFF):
            bad = bytearray(blob)
            bad[pos] ^= mask
            expect_format_error(codec, bytes(bad))


def format_error_or_exact(codec, blob, images):
    """A damaged file decodes to exactly the original (the damage hit bits nobody reads,
    e.g. an ignored field of a seed's WebP header: the pixel SHA-256 vouches for it) or
    raises FormatError; never wrong pixels, never another exception type."""
    try:
        out = codec.decompress(blob)
    except FormatError:
        return False
    assert_same_images(out, images)
    return True


def test_payload_damage_under_a_valid_crc(codec, chain_blob):
    """Damage that passes the file's CRC (a forged file): the chain decodes garbage, and the
    decoder's checks (stream end, seal, classical data, pixel checksum) catch it. Flips at
    every 13th payload bit (an exhaustive run over all bits found one harmless flip, in a
    seed's WebP header, and 235 that used to escape as constriction's AssertionError)."""
    blob, images = chain_blob
    header, payload = container.unpack(blob)
    harmless = 0
    for bit in range(0, 8 * len(payload), 13):  # 13 is coprime to 8: every bit index within a byte
        bad = bytearray(payload)
        bad[bit // 8] ^= 1 << (bit % 8)
        harmless += format_error_or_exact(codec, container.pack(header, bytes(bad)), images)
    assert harmless <= 2
    for forged in (payload[:-4], payload[4:], payload + b"\1\0\0\0", payload[:-1], b"", b"\0" * len(payload)):
        expect_format_error(codec, container.pack(header, forged))


def forged_headers(header: container.Header):
    """Headers that unpack accepts but that do not describe the payload."""
    r = dataclasses.replace
    h, w, c, n = header.shapes[-1]
    yield "steps+1", r(header, steps=header.steps + 1)
    yield "steps=0", r(header, steps=0)
    yield "grid_bits=16", r(header, grid_bits=16)
    yield "grid_bits=0", r(header, grid_bits=0)
    yield "transposed", r(header, shapes=header.shapes[:-1] + [[w, h, c, n]])
    yield "chunks split", r(header, chunks=[[0, 1]] + [[k, 1] for k in range(1, sum(s for _, s in header.chunks))])
    yield "pixels hash", r(header, pixels_hash="0" * 16)
    yield "init_pad", r(header, init_pad=(header.init_pad + 1) % 4)
    yield "classical sizes", r(header, classical_sizes=[s + 1 for s in header.classical_sizes])
    yield "squeeze count", r(header, squeeze=[[1, 1]])
    yield "squeeze huge", r(header, squeeze=[[1, 10**15]])


def test_forged_headers_give_format_error(codec, chain_blob):
    blob, _ = chain_blob
    header, payload = container.unpack(blob)
    for what, forged in forged_headers(header):
        try:
            new = container.frame(container.encode_header(forged), payload)
            container.unpack(new)
        except FormatError:
            continue  # refused by the container: fine
        with pytest.raises(FormatError):
            codec.decompress(new)
            pytest.fail(f"forged header ({what}) decoded without error")


def test_wrong_magic_and_version(codec, chain_blob):
    blob, _ = chain_blob
    expect_format_error(codec, b"PNG\0" + blob[4:])
    expect_format_error(codec, b"")
    expect_format_error(codec, b"VDM")
    for v in (0, 1, 255):
        bad = bytearray(blob)
        bad[4] = v
        with pytest.raises(FormatError, match="version"):
            codec.decompress(bytes(bad))
    with pytest.raises(FormatError):
        codec.decompress("not bytes")  # type: ignore[arg-type]


def test_wrong_model_is_a_model_error(codec, chain_blob, tmp_path):
    from tests.helpers import tiny_model_config
    from vdmcodec.diffusion import VDM
    from vdmcodec.zoo import save_model

    blob, _ = chain_blob
    torch.manual_seed(123)
    other = tmp_path / "other"
    save_model(other, VDM(tiny_model_config()), {"name": "tiny", "data": "none"})  # same name, other weights
    with pytest.raises(ModelError, match="sha256"):
        load_codec(other, steps=2).decompress(blob)
    with pytest.raises(ModelError):
        decompress_file_bytes(blob, model=other)
    with pytest.raises(ModelError):
        decompress_file_bytes(blob)  # the header names "tiny", which is not a shipped model


def test_a_replaced_default_still_decodes_its_files(chain_blob, tiny_model_dir, tmp_path, monkeypatch):
    """A file names its model and the weights' hash: when a newer model takes the name, the
    decoder finds the old weights among the shipped models by their hash."""
    import shutil

    from tests.helpers import tiny_model_config
    from vdmcodec.diffusion import VDM
    from vdmcodec.zoo import save_model

    blob, images = chain_blob  # written by the model named "tiny"
    root = tmp_path / "models"
    torch.manual_seed(123)
    save_model(root / "tiny", VDM(tiny_model_config()), {"name": "tiny", "data": "none"})  # the new "tiny"
    monkeypatch.setenv("VDMCODEC_MODELS", str(root))
    with pytest.raises(ModelError, match="sha256"):  # the old weights are nowhere: a clear refusal
        decompress_file_bytes(blob)
    shutil.copytree(tiny_model_dir, root / "tiny-v1")  # the old weights, kept under another name
    assert_same_images([im for im, _ in decompress_file_bytes(blob)], images)
    shutil.rmtree(root / "tiny")  # the name itself gone: found by hash too
    assert_same_images([im for im, _ in decompress_file_bytes(blob)], images)
    shutil.rmtree(root / "tiny-v1")
    with pytest.raises(ModelError, match="not here"):
        decompress_file_bytes(blob)


def test_oversized_chunk_refused_before_allocation(codec, chain_blob):
    """The encoder never writes a chunk over MAX_CHUNK_IMAGES images (or, above one image,
    over MAX_CHUNK_SUBPIXELS): a forged header claiming one must fail before the decoder
    allocates its batch (here 20000 x 28 x 28: 125 MB per float64 array)."""
    import tracemalloc

    blob, _ = chain_blob
    header, payload = container.unpack(blob)
    n = 20000
    forged = dataclasses.replace(header, shapes=[[28, 28, 1, n]], methods=[["vdm", n]], classical_sizes=[],
                                 chunks=[[0, n]], chunk_grids=[], init_pad=0, names={"sequence": ["", 5, ".png"]},
                                 squeeze=[], envelope=b"")
    for chunks in ([[0, n]], [[0, 65]] + [[65, n - 65]], [[k, 1] for k in range(n - 1)] + [[n - 1, 1]]):
        h = dataclasses.replace(forged, chunks=chunks)  # (pack refuses the first two: the reader's own check)
        new = container.frame(container.encode_header(h), payload, b"", h.format_version)
        tracemalloc.start()
        try:
            with pytest.raises(FormatError):
                codec.decompress(new)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 40e6, f"decoder allocated {peak / 1e6:.0f} MB for a forged header"


def test_shipped_natural_model_codes_a_photo_crop_in_its_card_arithmetic(natural_dir):
    """The shipped photo model, with its card's defaults (bfloat16 autocast where this CPU has
    native bfloat16, else float32 on NHWC), round-trips a tiled RGB crop of a validation
    photo bit-exactly (T cut to 2 to keep the test fast)."""
    from PIL import Image

    from vdmcodec.hardware import native_bf16

    codec = load_codec("natural", steps=2)
    assert codec.info["card"]["coding_arithmetic"] == "bfloat16-nhwc"
    expected = "bfloat16-nhwc" if native_bf16() else "float32-nhwc"
    assert codec.arithmetic == expected
    with Image.open(natural_dir / "CSet5" / "baby.png") as im:
        photo = np.ascontiguousarray(np.asarray(im.convert("RGB"))[100:147, 200:270])
    blob = codec.compress([photo], force_model=True)
    header = container.unpack(blob)[0]
    assert header.dtype == expected and header.steps == 2 and header.image_methods() == ["tiled"]
    assert_same_images(codec.decompress(blob), [photo])


@pytest.mark.parametrize("native", [True, False])
def test_card_bfloat16_applies_only_where_native(monkeypatch, native):
    """A card's bfloat16 coding arithmetic is the default only on hardware with native
    bfloat16 (elsewhere it is ~100x slower); a caller's explicit choice always stands."""
    from vdmcodec.coding import codec as codec_module

    monkeypatch.setattr(codec_module, "native_bf16", lambda device="cpu": native)
    info = {"dir": "m", "card": {"coding_steps": 12, "coding_arithmetic": "bfloat16-nhwc"}}
    assert codec_module.coding_defaults(info) == (12, "bfloat16-nhwc" if native else "float32-nhwc")
    assert codec_module.coding_defaults(info, arithmetic="bfloat16-nhwc") == (12, "bfloat16-nhwc")
    assert codec_module.coding_defaults({"card": {"coding_arithmetic": "float32"}}) == (128, "float32")
