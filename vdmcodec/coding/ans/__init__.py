"""A small craystack-style layer over constriction's ANS stack: message.py (the stack,
the codec type, whitening), leaves.py (leaf codecs), combinators.py.

A *message* is the ANS stack (``Message``, wrapping ``constriction.stream.stack.AnsCoder``).
A *codec* (``PushPop``) is a push/pop pair: ``push(msg, data)`` puts ``data`` on the stack and
``pop(msg) -> data`` takes it off again, so ``pop(push(m, x)) == (m, x)``. Leaf codecs wrap
constriction's vectorised models (one call per array, never a Python loop per symbol);
combinators build bigger codecs from smaller ones (``serial``, ``permuted``, ``whitened``,
``bits_back``, ``bit_swap``; the diffusion chain is ``bit_swap`` over its levels, chain.py).

A pop past the end of the stack raises ``EmptyMessageError`` (message.py says how that is
detected), never returns invented symbols.

Everything that parameterises a distribution is float64 numpy, computed identically by
encoder and decoder; symbols are int32 arrays.
"""
from .combinators import autoregressive, bit_swap, bits_back, counted, permuted, serial, whitened
from .leaves import MAX_ABS_MEAN, MAX_SUPPORT, categorical, quantized_gaussian, uniform, windowed_gaussian
from .message import EmptyMessageError, Message, PushPop, whiten

__all__ = ["MAX_ABS_MEAN", "MAX_SUPPORT", "EmptyMessageError", "Message", "PushPop", "autoregressive", "bit_swap",
           "bits_back", "categorical", "counted", "permuted", "quantized_gaussian", "serial", "uniform", "whiten",
           "whitened", "windowed_gaussian"]
