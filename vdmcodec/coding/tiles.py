"""Tiled coding: images of any size through the diffusion chain with bounded memory.

Why: the chain codes a batch only after popping about ``initial_bits_per_dim`` (~10) bits
per dimension from the ANS stack, and its network batch must fit in memory. A lone
768x512 photo (1.18 M subpixels) as one chunk would need ~1.5 MB of initial bits and a
1.18 M-subpixel network batch. Cut into tiles (``tilegrid``), it starts small and grows:

1. Where the stack cannot yet start the next tile, the next segment is *classical*: the
   fewest tiles whose PNG/WebP/JPEG XL bytes, pushed onto the stack as raw bytes, let the chain
   start the tile after them (HiLLoC's trick, mid-stream: the decoder pops those bytes
   back after the chain segments above them and decodes them classically). For a lone
   photo this is the first few tiles of the top row and nothing else. "Let the chain start"
   is tried, not estimated: the encoder pushes k seed tiles and the chain's tile after them
   onto a copy of the stack, for k = 1, 2, ..., and keeps the first k whose chain never
   pops from a dry stack (a failed try stops at its first dry pop: at most one tile's
   chain). The planner's estimate (``initial_bits_per_dim``, 10.66 bits per dimension at
   T = 256, nearly all of it spent by the chain's first two pops) is about right, but with
   the codec's 1.1 margin it asked for a tile more than needed on most photos, and a seed
   tile costs its classical bytes, more than the chain's: on CSet5 at T = 256 bird,
   butterfly and woman need 3 seed tiles where the estimate asked for 4 (bird's 3 hold
   10.64 bits per dimension of the tile after them), baby 5 either way; woman's fourth tile
   cost about 800 bytes more than the chain would (benchmarks/results/natural_CSet5_T256.md at
   commit 0a21b78 has the estimated seeds, natural_CSet5_T384.md the tried ones).
2. Chain segments are as large as the stack's bits can start (estimated like the
   codec's chunks), at most ``MAX_REGION_SUBPIXELS``: within a band of one tile row they
   grow tile by tile; once the stack can start a whole tile row, each band takes as
   many full-width tile rows as fit. The network sees the whole segment at every step,
   so a wide segment gives its tiles their neighbours' context; encoder and decoder run
   it on the same rectangle.

Memory: the network and the coder see one segment at a time, so their working memory is
bounded by ``MAX_REGION_SUBPIXELS`` (2^20 subpixels) whatever the image size; what grows
with the image is only the image itself (uint8), the classical encodings compress
compares against, and the compressed stack.
"""
from __future__ import annotations

import math
from typing import Callable

import constriction
import numpy as np

from ..errors import FormatError
from . import classical
from .ans import EmptyMessageError, Message, uniform
from .chain import DiffusionChain
from .priors import NO_PRIOR, TilePrior
from .tilegrid import MAX_REGION_SUBPIXELS, MAX_TILE, Band, Rect, Segment, TileLayout, grid, rects

DEFAULT_TILE = 32
STACK_RESERVE_BITS = 64  # bits a chain segment leaves on the stack beyond its estimate (as the codec's chunks)


def needs_tiling(shape: tuple[int, ...], tile: int) -> bool:
    """Images with a side longer than one tile are coded tiled; smaller ones whole."""
    return max(shape[0], shape[1]) > tile


def check_tile(tile: int) -> int:
    if not 1 <= int(tile) <= MAX_TILE:
        raise ValueError(f"tile side must be in 1..{MAX_TILE}, got {tile}")
    return int(tile)


class _Planner:
    """The encoder's running layout: where the next segment starts and how big it may be."""

    def __init__(self, pixels: np.ndarray, tile: int, per_dim: float, prior: TilePrior = NO_PRIOR):
        self.pixels, self.tile, self.per_dim, self.prior = pixels, tile, per_dim, prior
        self.h, self.w, self.c = pixels.shape
        self.rows, self.cols = grid(self.h, self.w, tile)

    def dims(self, row: int, nrows: int, col: int, ncols: int) -> int:
        t = self.tile
        return ((min((row + nrows) * t, self.h) - row * t) * (min((col + ncols) * t, self.w) - col * t) * self.c)

    def fits(self, msg: Message, dims: int) -> bool:
        """The stack's bits can start a chain segment of ``dims`` subpixels (estimated)."""
        return dims <= MAX_REGION_SUBPIXELS and self.per_dim * dims + STACK_RESERVE_BITS <= msg.num_bits

    def crop(self, row: int, nrows: int, col: int, ncols: int) -> np.ndarray:
        t = self.tile
        return self.pixels[row * t : (row + nrows) * t, col * t : (col + ncols) * t]


def push_image(chain: DiffusionChain, msg: Message, pixels: np.ndarray, tile: int, per_dim: float,
               progress: Callable[[int], None] | None = None, prior: TilePrior = NO_PRIOR) -> TileLayout:
    """Code one image (uint8 [H, W, C]) onto the stack; return its layout for the header.
    ``per_dim``: the estimated initial bits per dimension of a chain segment (with margin).
    ``progress(n)`` is called with the tiles of each segment coded; ``prior``: the image's
    TilePrior (priors/: its structure prior and share of the chain's channel correlations),
    which each chain segment is coded with at the segment's origin. Raises
    ans.EmptyMessageError when the estimate was short (the caller retries)."""
    p = _Planner(pixels, check_tile(tile), per_dim, prior)
    bands: list[Band] = []
    row = 0
    while row < p.rows:
        # a band of full-width tile rows when the stack can start one, else one row in segments
        nrows = 0
        while row + nrows < p.rows and p.fits(msg, p.dims(row, nrows + 1, 0, p.cols)):
            nrows += 1
        if nrows:
            _push_chain(chain, msg, p, row, nrows, 0, p.cols)
            bands.append(Band(nrows, (Segment(p.cols, "vdm"),)))
            if progress is not None:
                progress(nrows * p.cols)
        else:
            nrows = 1
            bands.append(Band(1, tuple(_push_row(chain, msg, p, row, progress))))
        row += nrows
    return TileLayout(tuple(bands))


def _push_row(chain, msg, p: _Planner, row: int, progress) -> list[Segment]:
    """One tile row in segments: chain segments as wide as the stack allows, classical
    segments where it cannot start even one tile."""
    segs, col = [], 0
    while col < p.cols:
        ncols = 0
        while col + ncols < p.cols and p.fits(msg, p.dims(row, 1, col, ncols + 1)):
            ncols += 1
        if ncols:
            _push_chain(chain, msg, p, row, 1, col, ncols)
            segs.append(Segment(ncols, "vdm"))
        else:
            ncols, method, data, started = _seed_and_start(chain, msg, p, row, col)
            segs.append(Segment(ncols, method, len(data)))
            if started:  # the chain's tile after the seed is on the stack too
                segs.append(Segment(1, "vdm"))
                ncols += 1
        if progress is not None:
            progress(ncols)
        col += ncols
    return segs


def _seed_and_start(chain, msg: Message, p: _Planner, row: int, col: int) -> tuple[int, str, bytes, bool]:
    """Push the fewest tiles from ``col`` whose classical bytes let the chain code the tile
    after them, and that tile (or the rest of the row, classically, at its end): each
    candidate is tried on a copy of the stack and kept once its chain tile needed no more
    bits than the stack held. Returns (seed tiles, method, bytes, whether the chain tile
    after them was pushed)."""
    for ncols in range(1, p.cols - col + 1):
        method, data = classical.encode_best(np.ascontiguousarray(p.crop(row, 1, col, ncols)))
        nxt = col + ncols
        trial = msg.clone()
        _raw_bytes(len(data)).push(trial, np.frombuffer(data, dtype=np.uint8))
        if nxt < p.cols:
            try:
                _push_chain(chain, trial, p, row, 1, nxt, 1)
            except EmptyMessageError:
                continue  # one more seed tile
        msg.coder = trial.coder
        return ncols, method, data, nxt < p.cols
    raise AssertionError("unreachable: the loop returns at the row's end")


def _raw_bytes(n: int):
    """Bytes as uniform 8-bit symbols: exactly 8 bits each on the stack."""
    return uniform(256, n)


def _pop_raw_bytes(msg: Message, n: int) -> bytes:
    """Pop bytes pushed by ``_raw_bytes``. Not through ``Message.pop``: its dry check
    refuses pops that reach the stack's bottom 32 bits, which is right for bits-back pops
    (they may ask for more than was pushed) but not here, where exactly the pushed symbols
    come back; a seed at the very bottom of the stack ends there. A damaged file yields
    wrong bytes, which the classical decoder, the final seal and the pixel hash refuse.

    ``n`` comes from the header (up to 2^40): the stack must hold its 8 n bits before
    constriction allocates the symbols (each raw byte is exactly 8 bits on the stack, so a
    file the encoder wrote always does)."""
    if 8 * n > msg.num_bits:
        raise FormatError(f"corrupted file (a classical tile segment claims {n} bytes; the ANS stack holds "
                          f"{msg.num_bits // 8})")
    return np.asarray(msg.coder.decode(_BYTE_MODEL, n), dtype=np.uint8).tobytes()


_BYTE_MODEL = constriction.stream.model.Uniform(256)


def _push_chain(chain: DiffusionChain, msg: Message, p: _Planner, row: int, nrows: int, col: int, ncols: int) -> None:
    region = p.crop(row, nrows, col, ncols)
    chain.push(msg, np.ascontiguousarray(region.transpose(2, 0, 1)[None]), prior=p.prior.at((row * p.tile, col * p.tile)))


def pop_image(chain: DiffusionChain, msg: Message, layout: TileLayout, shape: tuple[int, int, int], tile: int,
              progress: Callable[[int], None] | None = None, prior: TilePrior = NO_PRIOR) -> np.ndarray:
    """Decode one tiled image (the layout was validated against ``shape`` by the container;
    ``prior``: the one it was pushed with)."""
    h, w, c = shape
    out = np.zeros(shape, dtype=np.uint8)
    for rect in reversed(rects(layout, h, w, tile)):
        out[rect.y0 : rect.y1, rect.x0 : rect.x1] = _pop_rect(chain, msg, rect, c, prior)
        if progress is not None:
            progress(math.prod(grid(rect.y1 - rect.y0, rect.x1 - rect.x0, tile)))
    return out


def _pop_rect(chain: DiffusionChain, msg: Message, rect: Rect, c: int, prior: TilePrior) -> np.ndarray:
    hh, ww, _ = rect.shape(c)
    if rect.method == "vdm":
        return chain.pop(msg, (1, c, hh, ww), prior=prior.at((rect.y0, rect.x0)))[0].transpose(1, 2, 0)
    return classical.decode(_pop_raw_bytes(msg, rect.nbytes), rect.method, (hh, ww, c))
