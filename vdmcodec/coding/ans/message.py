"""The ANS stack (``Message``, over constriction's ``AnsCoder``), the codec type (``PushPop``),
and ``whiten``, a bijection of the stack's top digits.

Popping past the end of the stack would return degenerate symbols without consuming bits
(constriction 0.5 decodes from zero bits once its state runs dry, and does not report it),
which silently breaks bits-back coding; ``Message.pop`` refuses with ``EmptyMessageError``
instead (craystack invents random bits there: we raise). "Past the end" is detected from
constriction's invariant: its 64-bit state stays >= 2^32 while words remain under it, so a
state below 2^32 with no words under it (fewer than 32 valid bits) means the stack is dry.
A message therefore keeps its bottom 32 bits: only bits above them can be popped.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import constriction
import numpy as np

from ...errors import FormatError

_model = constriction.stream.model


class EmptyMessageError(RuntimeError):
    """A pop would read from an empty (or exhausted) ANS stack."""


class Message:
    """The ANS stack. ``words`` (uint32) seed it with real bits, e.g. the bytes of
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

    def pop_iid(self, model, count: int) -> np.ndarray:
        """``count`` i.i.d. symbols of a fully parameterised ``model`` (each of at least 2
        symbols, so at least one bit: a count over the stack's bits is refused before
        constriction allocates for it)."""
        if count and (self.is_dry or count > self.num_bits):
            raise EmptyMessageError("pop from an empty ANS stack")
        out = np.asarray(self.coder.decode(model, count), dtype=np.int32)
        if count and self.is_dry:
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
    digits = msg.pop_iid(_UNIFORM16, n).astype(np.uint64)
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
