"""Leaf codecs: constriction's vectorised models over whole arrays (one call per array, never
a Python loop per symbol): Gaussians quantised to unit bins (on a fixed range, or on a
window around each mean with escapes), categorical rows, and uniform symbols (raw bytes
with 256). Every parameter is float64 numpy, computed identically by encoder and decoder;
what constriction would panic on is refused first with a ValueError."""
from __future__ import annotations

import constriction
import numpy as np

from .message import Message, PushPop

_model = constriction.stream.model


def quantized_gaussian(mean: np.ndarray, std: np.ndarray, lo: int, hi: int) -> PushPop:
    """Integer symbols in [lo, hi] under a Gaussian quantised to unit bins (mean and std in
    bin units, float64, one per symbol). constriction's model is leaky: every symbol in
    the range keeps a non-zero probability."""
    _check_support(int(hi) - int(lo) + 1)
    model = _model.QuantizedGaussian(int(lo), int(hi))
    mean = np.ascontiguousarray(mean, dtype=np.float64).ravel()
    std = np.ascontiguousarray(std, dtype=np.float64).ravel()
    _check_gaussian(mean, std)

    def push(msg: Message, k: np.ndarray) -> None:
        k = np.asarray(k).ravel()
        if k.size and (k.min() < lo or k.max() > hi):
            raise ValueError(f"symbol outside the coder's range [{lo}, {hi}]")
        msg.push(k, model, mean, std)

    def pop(msg: Message) -> np.ndarray:
        return msg.pop(model, mean, std)

    return PushPop(push, pop)


def windowed_gaussian(mean: np.ndarray, std: np.ndarray, width: int, escape: bool = True) -> PushPop:
    """Integers k under N(mean, std^2) quantised to unit bins, coded as the offset from
    round(mean) within [-width, width]; offsets at or beyond +-width escape to 32 raw bits.

    Why a window: constriction's leaky models give every symbol of the range at least
    2^-24, so over a global range of 10^5 symbols about 1% of the mass sits in a flat
    floor, and popped latents land there 1% of the time (measured). Centring a narrow range
    on the mean keeps the floor's mass below 1e-4 while any integer stays codable.

    With ``escape=False`` the window is the whole support: pops never leave it, and pushing
    a value outside it is an error (for posteriors, whose samples come from their own pops).
    """
    mean = np.ascontiguousarray(mean, dtype=np.float64).ravel()
    std = np.ascontiguousarray(std, dtype=np.float64).ravel()
    _check_gaussian(mean, std)
    centre = np.rint(mean).astype(np.int64)
    rel_mean = mean - centre
    width = int(width)
    _check_support(2 * width + 1)
    model = _model.QuantizedGaussian(-width, width)
    raw = _model.Uniform(1 << 16)

    def push(msg: Message, k: np.ndarray) -> None:
        k = np.asarray(k, dtype=np.int64).ravel()
        o = k - centre
        if not escape:
            if o.size and np.abs(o).max() > width:
                raise ValueError("symbol outside the window of a codec without escapes")
            msg.push(o, model, rel_mean, std)
            return
        esc = np.abs(o) >= width
        if esc.any():
            u = (k[esc] + (1 << 31)).astype(np.uint64)
            if (u >= (1 << 32)).any():
                raise ValueError("escaped symbol outside the 32-bit range")
            words = np.stack([u >> 16, u & 0xFFFF], axis=1).ravel().astype(np.int32)
            msg.push(words, raw)
        msg.push(np.clip(o, -width, width), model, rel_mean, std)

    def pop(msg: Message) -> np.ndarray:
        o = msg.pop(model, rel_mean, std).astype(np.int64)
        k = centre + o
        if not escape:
            return k
        esc = np.abs(o) >= width
        n = int(esc.sum())
        if n:
            words = msg.pop_iid(raw, 2 * n).astype(np.int64).reshape(n, 2)
            k[esc] = ((words[:, 0] << 16) | words[:, 1]) - (1 << 31)
        return k

    return PushPop(push, pop)


def categorical(probs: np.ndarray) -> PushPop:
    """Symbols 0..K-1, one probability row per symbol ([n, K], rows need not sum to 1)."""
    model = _model.Categorical(perfect=False)
    probs = np.ascontiguousarray(probs, dtype=np.float64)
    _check_categorical(probs)

    def push(msg: Message, x: np.ndarray) -> None:
        msg.push(np.asarray(x).ravel(), model, probs)

    def pop(msg: Message) -> np.ndarray:
        return msg.pop(model, probs)

    return PushPop(push, pop)


def uniform(n_symbols: int, count: int) -> PushPop:
    """``count`` symbols uniform on {0..n_symbols-1} (e.g. raw bytes with 256)."""
    _check_support(int(n_symbols))
    model = _model.Uniform(int(n_symbols))

    def push(msg: Message, x: np.ndarray) -> None:
        x = np.asarray(x).ravel()
        if x.size != count:
            raise ValueError(f"uniform codec expects {count} symbols, got {x.size}")
        msg.push(x, model)

    def pop(msg: Message) -> np.ndarray:
        return msg.pop_iid(model, count)

    return PushPop(push, pop)


MAX_SUPPORT = 1 << 24  # constriction's 24-bit models: every symbol needs a non-zero count


def _check_support(n: int) -> None:
    # constriction panics on these (pyo3's PanicException is a BaseException): refuse first
    if not 2 <= n <= MAX_SUPPORT:
        raise ValueError(f"a codec's support must hold 2..{MAX_SUPPORT} symbols, got {n}")


MAX_ABS_MEAN = float(1 << 52)  # a Gaussian's mean in bins: rounding it to an int64 centre stays exact


def _check_gaussian(mean: np.ndarray, std: np.ndarray) -> None:
    """What constriction's Gaussians accept without panicking (a std that is NaN, zero or
    negative aborts the call with a PanicException) and what the window arithmetic keeps
    exact: finite means within +-MAX_ABS_MEAN, finite positive stds, one of each per symbol.
    A decoder that computed such values from a damaged file gets a ValueError."""
    if mean.shape != std.shape:
        raise ValueError(f"a Gaussian codec needs one std per mean ({mean.size} means, {std.size} stds)")
    if mean.size and not (np.isfinite(mean).all() and np.abs(mean).max() <= MAX_ABS_MEAN):
        raise ValueError("a Gaussian codec's mean is not finite or out of range")
    if std.size and not (np.isfinite(std).all() and std.min() > 0):
        raise ValueError("a Gaussian codec's std is not a positive finite number")


def _check_categorical(probs: np.ndarray) -> None:
    """Rows constriction's categorical model accepts: [n, K] with 2 <= K <= MAX_SUPPORT,
    finite non-negative entries and a positive finite sum per row."""
    if probs.ndim != 2:
        raise ValueError(f"categorical probabilities must be [n, K], got shape {probs.shape}")
    _check_support(probs.shape[1])
    if probs.size:
        with np.errstate(over="ignore", invalid="ignore"):
            sums = probs.sum(axis=1)
        if not (np.isfinite(probs).all() and probs.min() >= 0 and np.isfinite(sums).all() and sums.min() > 0):
            raise ValueError("categorical probabilities are not finite, non-negative and normalisable")
