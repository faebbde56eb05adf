"""A static context model of small grayscale images: the container's ``ctx`` method (version 10).

Each pixel, in raster order, is coded with a categorical distribution over its 256 values
that depends on its four causal neighbours (W, N, NW, NE; zero beyond the image), each
quantised into six bins. The table of counts per context and value was fitted once on the
MNIST training split (images 0-7999; ``python -m vdmcodec.training.fit_context``) and ships
with the package (``tables/context_mnist.npz``): unlike PNG, WebP and JPEG XL, it knows what
digits look like before it sees one. On the 1,000 validation digits it codes 1.25-1.26 bits
per pixel where WebP lossless needs 2.14, so a lone digit, and the seed images that start
an archive's bits-back chain, are coded for little more than the model's bound.

Probabilities are exact functions of integer counts (``probabilities``): each row is
``counts * G + SMOOTHING * g`` over ``(n + SMOOTHING) * G``, the context's counts smoothed
towards the global histogram ``g`` (every value counted once more, ``G`` its total), in
float64 from integers below 2^53, so encoder and decoder see the same floats on any
machine, and constriction quantises them alike. The stream is constriction's ANS words
(little-endian u32); a decoder refuses a stream that is not whole words or does not end
exactly where the image does."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from importlib import resources

import numpy as np

from ..errors import FormatError

EDGES = (1, 64, 128, 192, 250)  # six bins: 0 | 1-63 | 64-127 | 128-191 | 192-249 | 250-255
BINS = len(EDGES) + 1
NEIGHBOURS = ((0, -1), (-1, 0), (-1, -1), (-1, 1))  # W, N, NW, NE as (dy, dx)
CONTEXTS = BINS ** len(NEIGHBOURS)
SMOOTHING = 26  # pseudo-counts per context, spread like the global histogram (about 0.1 per value)
MAX_PIXELS = 1 << 12  # images of at most 64 x 64 pixels: a pixel costs one coder call to decode
TABLE = "context_mnist.npz"
_BIN = np.searchsorted(np.array(EDGES), np.arange(256), side="right").astype(np.int64)


def contexts(images: np.ndarray) -> np.ndarray:
    """Context index of every pixel of uint8 ``images`` [N, H, W] (int64, same shape)."""
    n, h, w = images.shape
    padded = np.zeros((n, h + 1, w + 2), np.int64)
    padded[:, 1:, 1:-1] = _BIN[images]
    out = np.zeros((n, h, w), np.int64)
    for dy, dx in NEIGHBOURS:
        out = out * BINS + padded[:, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
    return out


def fit_counts(images: np.ndarray) -> np.ndarray:
    """Counts [CONTEXTS, 256] (int64) of each value in each context over uint8 ``images`` [N, H, W]."""
    counts = np.zeros((CONTEXTS, 256), np.int64)
    np.add.at(counts, (contexts(images).ravel(), images.ravel()), 1)
    return counts


@dataclass(frozen=True, eq=False)
class ContextModel:
    counts: np.ndarray = field(repr=False)  # int64 [CONTEXTS, 256]

    def __post_init__(self):
        c = self.counts
        if c.shape != (CONTEXTS, 256) or c.dtype.kind not in "iu" or c.min() < 0 or c.sum() >= 1 << 40:
            raise ValueError(f"a context table is {CONTEXTS} x 256 counts below 2^40 in total")

    @cached_property
    def probabilities(self) -> np.ndarray:
        """float64 [CONTEXTS, 256]: each context's distribution, an exact function of the counts."""
        counts = self.counts.astype(np.int64)
        g = counts.sum(0) + 1
        total = int(g.sum())
        num = counts * total + SMOOTHING * g[None, :]
        den = (counts.sum(1, keepdims=True) + SMOOTHING) * total
        return num.astype(np.float64) / den.astype(np.float64)

    def bits(self, image: np.ndarray) -> float:
        """The ideal code length of uint8 ``image`` [H, W] in bits (what ``encode`` comes close to)."""
        p = self.probabilities[contexts(image[None])[0], image]
        return float(-np.log2(p).sum())

    def encode(self, image: np.ndarray) -> bytes:
        """uint8 ``image`` [H, W] of at most MAX_PIXELS pixels -> the ANS stream; b"" where the
        image costs less than a word (a blank one), which the container cannot store (its
        classical sizes are at least 1, so ``decode`` refuses b"")."""
        import constriction

        if image.ndim != 2 or image.dtype != np.uint8 or not 0 < image.size <= MAX_PIXELS:
            raise ValueError(f"the context model codes uint8 [H, W] images of 1..{MAX_PIXELS} pixels")
        coder = constriction.stream.stack.AnsCoder()
        coder.encode_reverse(image.ravel().astype(np.int32), constriction.stream.model.Categorical(perfect=False),
                             self.probabilities[contexts(image[None])[0].ravel()])
        return coder.get_compressed().astype("<u4").tobytes()

    def decode(self, data: bytes, shape: tuple[int, int]) -> np.ndarray:
        """The ANS stream -> uint8 image of ``shape``; FormatError on a stream that is not one."""
        import constriction

        h, w = shape
        if not 0 < h * w <= MAX_PIXELS:
            raise FormatError(f"a ctx image has at most {MAX_PIXELS} pixels (header says {h}x{w})")
        if len(data) % 4 or not data:
            raise FormatError("ctx image data is not whole 32-bit words")
        words = np.frombuffer(data, "<u4").astype(np.uint32)
        try:
            coder = constriction.stream.stack.AnsCoder(words)
        except Exception as e:
            raise FormatError(f"corrupted ctx image data ({type(e).__name__})") from None
        model = constriction.stream.model.Categorical(perfect=False)
        probs = self.probabilities
        out = np.zeros((h + 1, w + 2), np.int64)  # one zero row above, a zero column each side
        binned = np.zeros((h + 1, w + 2), np.int64)  # their bins
        try:
            for y in range(1, h + 1):
                up, here, values = binned[y - 1], binned[y], out[y]
                for x in range(1, w + 1):  # W, N, NW, NE as in ``contexts``
                    c = ((here[x - 1] * BINS + up[x]) * BINS + up[x - 1]) * BINS + up[x + 1]
                    v = int(coder.decode(model, probs[c : c + 1])[0])
                    values[x], here[x] = v, _BIN[v]
        except Exception as e:
            raise FormatError(f"corrupted ctx image data ({type(e).__name__})") from None
        if not coder.is_empty():
            raise FormatError("ctx image data goes on after the image")
        return out[1:, 1:-1].astype(np.uint8)


@lru_cache(maxsize=2)
def load_table(name: str = TABLE) -> ContextModel:
    """The shipped table (``tables/`` beside this module), read once per process (it is
    read-only, like the format constants)."""
    with resources.files(__package__).joinpath("tables", name).open("rb") as f, np.load(f, allow_pickle=False) as z:
        return ContextModel(z["counts"].astype(np.int64))
