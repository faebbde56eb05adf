"""Combinators: bigger codecs from smaller ones (``permuted``, ``serial``, ``autoregressive``,
``bits_back``, ``counted``, ``whitened``, ``bit_swap``; the diffusion chain is ``bit_swap``
over its levels, chain.py). Each keeps the law pop(push(m, x)) == (m, x) of its parts."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from .message import Message, PushPop, whiten


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
