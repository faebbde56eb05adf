"""A small craystack-style layer over constriction's ANS stack.

A *message* is the ANS stack (``Message``, wrapping ``constriction.stream.stack.AnsCoder``).
A *codec* (``PushPop``) is a push/pop pair: ``push(msg, data)`` puts ``data`` on the stack and
``pop(msg) -> data`` takes it off again, so ``pop(push(m, x)) == (m, x)``. Leaf codecs wrap
constriction's vectorised models (one call per array, never a Python loop per symbol);
combinators build bigger codecs from smaller ones (``serial``, ``permuted``, ``whitened``,
``bits_back``, ``bit_swap``; the diffusion chain is ``bit_swap`` over its levels, chain.py).

Popping past the end of the stack would return degenerate symbols without consuming bits
(constriction 0.5 decodes from zero bits once its state runs dry, and does not report it),
which silently breaks bits-back coding; ``Message.pop`` refuses with ``EmptyMessageError``
instead (craystack invents random bits there: we raise). "Past the end" is detected from
constriction's invariant: its 64-bit state stays >= 2^32 while words remain under it, so a
state below 2^32 with no words under it (fewer than 32 valid bits) means the stack is dry.
A message therefore keeps its bottom 32 bits: only bits above them can be popped.

Everything that parameterises a distribution is float64 numpy, computed identically by
encoder and decoder; symbols are int32 arrays.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import constriction
import numpy as np

from ..errors import FormatError

_model = constriction.stream.model


class EmptyMessageError(RuntimeError):
    """A pop would read from an empty (or exhausted) ANS stack."""


class Message:
    """The ANS stack. ``initial`` (uint32 words) seeds it with real bits, e.g. the bytes of
    a classically coded image; ``sealed`` marks that those words are arbitrary data that
    constriction must seal (HiLLoC's trick: the decoder recovers them exactly at the end)."""

    def __init__(self, words: np.ndarray | None = None, sealed: bool = False):
        if words is None:
            self.coder = constriction.stream.stack.AnsCoder()
        else:
            words = np.ascontiguousarray(words, dtype=np.uint32)
            try:
                self.coder = constriction.stream.stack.AnsCoder(words, seal=sealed)
            except Exception as e:  # constriction reports invalid data as a plain exception
                raise FormatError(f"invalid ANS payload ({str(e).splitlines()[0]})") from None

    def clone(self) -> "Message":
        """A copy of the stack (a trial push on one leaves the other as it was)."""
        out = Message.__new__(Message)
        out.coder = self.coder.clone()
        return out

    def push(self, symbols: np.ndarray, model, *params: np.ndarray) -> None:
        self.coder.encode_reverse(np.ascontiguousarray(symbols, dtype=np.int32), model, *params)

    def pop(self, model, *params: np.ndarray) -> np.ndarray:
        if self.is_dry:
            raise EmptyMessageError("pop from an empty ANS stack: the chain needs more initial bits")
        out = self.coder.decode(model, *params)
        if self.is_dry:
            # the stack ran dry during this pop: its last symbols may be degenerate
            raise EmptyMessageError("the ANS stack ran out of bits during a pop")
        return out

    @property
    def is_dry(self) -> bool:
        """No real bits left to pop (see the module docstring): constriction's state fell
        below 2^32 with no words under it. Once dry, further decodes stay dry."""
        return int(self.coder.num_valid_bits()) < 32

    @property
    def num_bits(self) -> int:
        return int(self.coder.num_bits())

    @property
    def is_empty(self) -> bool:
        return bool(self.coder.is_empty())

    def words(self, unseal: bool = False) -> np.ndarray:
        if not unseal:
            return self.coder.get_compressed()
        try:
            return self.coder.get_compressed(unseal=True)
        except Exception:  # constriction raises AssertionError when the seal is not on top
            raise FormatError("invalid ANS payload (the message does not end in its seal)") from None

    def to_bytes(self, unseal: bool = False) -> bytes:
        return self.words(unseal).astype("<u4").tobytes()

    @staticmethod
    def from_bytes(data: bytes, sealed: bool = False) -> "Message":
        if len(data) % 4:
            raise FormatError("ANS payload length is not a multiple of 4 bytes")
        return Message(np.frombuffer(data, dtype="<u4").astype(np.uint32), sealed=sealed)


@dataclass(frozen=True)
class PushPop:
    """A codec: a push/pop pair over a Message."""

    push: Callable[[Message, Any], None]
    pop: Callable[[Message], Any]


# ---- leaf codecs ------------------------------------------------------------------
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
            words = _pop_n(msg, raw, 2 * n).astype(np.int64).reshape(n, 2)
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
        return _pop_n(msg, model, count)

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


def _pop_n(msg: Message, model, count: int) -> np.ndarray:
    # constriction decodes `count` i.i.d. symbols of a fully parameterised model (each of
    # at least 2 symbols, so at least one bit: a count over the stack's bits is refused
    # before constriction allocates for it)
    if count and (msg.is_dry or count > msg.num_bits):
        raise EmptyMessageError("pop from an empty ANS stack")
    out = np.asarray(msg.coder.decode(model, count), dtype=np.int32)
    if count and msg.is_dry:
        raise EmptyMessageError("the ANS stack ran out of bits during a pop")
    return out


def whiten(msg: Message, n: int, key: int) -> None:
    """XOR the top ``n`` 16-bit digits of the stack with a fixed pseudo-random mask.

    A bijection of the message (and its own inverse), so it costs nothing. Bits-back pops
    read the bits that the last push left on top of the stack; those encode the pushed
    values' quantiles under their model, which are neither uniform (the model is not
    perfectly calibrated) nor independent of the latents being popped next. Masking them
    makes the popped quantiles uniform over positions, which is what the bits-back
    accounting assumes (measured effect: see chain.py)."""
    if n <= 0:
        return
    if msg.is_dry:
        raise EmptyMessageError("whiten on an empty ANS stack")
    digits = _pop_n(msg, _UNIFORM16, n).astype(np.uint64)
    msg.push((digits ^ _mask16(n, key)).astype(np.int32), _UNIFORM16)


def _mask16(n: int, key: int) -> np.ndarray:
    """splitmix64 of (key, index), low 16 bits: integer arithmetic, the same everywhere."""
    with np.errstate(over="ignore"):
        z = np.arange(n, dtype=np.uint64) + np.uint64((key * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return z & np.uint64(0xFFFF)


_UNIFORM16 = _model.Uniform(1 << 16)


# ---- combinators --------------------------------------------------------------------
def permuted(codec: PushPop, perm: np.ndarray) -> PushPop:
    """The same codec over a flat array visited in the order ``perm``."""
    perm = np.asarray(perm)

    def push(msg: Message, x: np.ndarray) -> None:
        codec.push(msg, np.asarray(x).ravel()[perm])

    def pop(msg: Message) -> np.ndarray:
        y = codec.pop(msg)
        out = np.empty_like(y)
        out[perm] = y
        return out

    return PushPop(push, pop)


def serial(codecs: Sequence[PushPop]) -> PushPop:
    """A codec for a sequence: element j with codecs[j]; popped back in the same order."""

    def push(msg: Message, xs: Sequence[Any]) -> None:
        for c, x in reversed(list(zip(codecs, xs))):
            c.push(msg, x)

    def pop(msg: Message) -> list:
        return [c.pop(msg) for c in codecs]

    return PushPop(push, pop)


def autoregressive(codec_of: Callable[[list], PushPop], n: int) -> PushPop:
    """A codec for a sequence of ``n`` parts where part j's codec depends on the parts before
    it: ``codec_of(xs[:j])``. Push runs j = n-1 .. 0 (the encoder knows every part), so pop
    runs j = 0 .. n-1 and hands each codec the parts it has already decoded."""

    def push(msg: Message, xs: Sequence[Any]) -> None:
        xs = list(xs)
        if len(xs) != n:
            raise ValueError(f"expected {n} parts, got {len(xs)}")
        for j in range(n - 1, -1, -1):
            codec_of(xs[:j]).push(msg, xs[j])

    def pop(msg: Message) -> list:
        xs: list = []
        for _ in range(n):
            xs.append(codec_of(xs).pop(msg))
        return xs

    return PushPop(push, pop)


def bits_back(prior: PushPop, likelihood: Callable[[Any], PushPop], posterior: Callable[[Any], PushPop]) -> PushPop:
    """BB-ANS (Townsend et al. 2019): push x = pop z from q(z|x), push x with p(x|z), push z
    with p(z); pop mirrors it exactly. Net cost -log p(x,z) + log q(z|x) per item."""

    def push(msg: Message, x: Any) -> None:
        z = posterior(x).pop(msg)
        likelihood(z).push(msg, x)
        prior.push(msg, z)

    def pop(msg: Message) -> Any:
        z = prior.pop(msg)
        x = likelihood(z).pop(msg)
        posterior(x).push(msg, z)
        return x

    return PushPop(push, pop)


def counted(codec: PushPop, tick: Callable[[int], Any]) -> PushPop:
    """``codec`` that calls ``tick(1)`` after each push and each pop (progress bars)."""

    def push(msg: Message, x: Any) -> None:
        codec.push(msg, x)
        tick(1)

    def pop(msg: Message) -> Any:
        x = codec.pop(msg)
        tick(1)
        return x

    return PushPop(push, pop)


def whitened(codec: PushPop, n: int, key: int) -> PushPop:
    """``codec`` with the top ``n`` digits of the stack masked (``whiten``) before each pop
    and after each push: the posterior pops of a bits-back chain read masked bits."""

    def push(msg: Message, x: Any) -> None:
        codec.push(msg, x)
        whiten(msg, n, key)

    def pop(msg: Message) -> Any:
        whiten(msg, n, key)
        return codec.pop(msg)

    return PushPop(push, pop)


def bit_swap(top: PushPop, levels: Sequence[tuple[Callable[[Any], PushPop], Callable[[Any], PushPop]]]) -> PushPop:
    """Bit-Swap (Kingma, Abbeel & Ho 2019) over a Markov chain y_0 = x, y_1, ..., y_L:
    ``levels[j] = (posterior, likelihood)`` with ``posterior(y_j)`` the codec of y_{j+1}
    given y_j (q) and ``likelihood(y_{j+1})`` the codec of y_j given y_{j+1} (p); ``top``
    codes y_L. It is ``bits_back`` nested L deep (the prior of level j's bits-back is the
    chain above it), run as a loop: push pops y_{j+1} from q and pushes y_j with p, level by
    level upwards, then y_L with ``top``; pop mirrors it downwards. The stack's deficit is
    the largest running balance of one level's pop over the pushes before it, not the sum
    over levels (the point of Bit-Swap); net cost -log p(x, y_1..L) + log q(y_1..L | x)."""

    def push(msg: Message, x: Any) -> None:
        y = x
        for posterior, likelihood in levels:
            y_next = posterior(y).pop(msg)
            likelihood(y_next).push(msg, y)
            y = y_next
        top.push(msg, y)

    def pop(msg: Message) -> Any:
        y = top.pop(msg)
        for posterior, likelihood in reversed(levels):
            y_prev = likelihood(y).pop(msg)
            posterior(y_prev).push(msg, y)
            y = y_prev
        return y

    return PushPop(push, pop)
