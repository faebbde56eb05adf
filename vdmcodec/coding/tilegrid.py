"""The geometry of a tiled image and its record in the container header.

An image of H x W is cut by a grid of square tiles of side S (the last row and column of
tiles are shorter when S does not divide H or W; nothing is padded). The grid is coded
in *bands* of whole tile rows, top to bottom; a band is cut into *segments* of whole
tile columns, left to right. Each segment is one rectangle of pixels, coded either by the
diffusion chain as one batch element (the network sees the whole rectangle, so a wide
segment gives every tile the context of its neighbours) or classically (PNG / WebP / JPEG XL, whose
bytes are pushed onto the ANS stack as raw bytes: this is how the first segment of a lone
photo supplies the chain's initial bits). ``tiles.py`` chooses the layout; this module
only describes it.

Header record of one tiled image (varints; see docs/format.md):

    band count, then per band: tile rows, segment count, then per segment
    (width in tiles << 2 | method) with method 0 = chain, 1 = png, 2 = webp, 3 = jxl
    (format version 7), and for a classical segment its byte length.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .varint import encode_varint

MAX_TILE = 512                   # a tile's side; one full tile (512 x 512 x 3) fits one region
MAX_REGION_SUBPIXELS = 1 << 20   # a chain-coded segment's subpixels: the network batch memory bound
SEGMENT_METHODS = ("vdm", "png", "webp", "jxl")  # codes 0..3 (the container's for 0..2; jxl: version 7)


@dataclass(frozen=True)
class Segment:
    width: int        # tile columns
    method: str       # "vdm" (the chain) or a classical method
    nbytes: int = 0   # classical segments: their byte length on the stack


@dataclass(frozen=True)
class Band:
    rows: int                       # tile rows
    segments: tuple[Segment, ...]   # left to right; widths sum to the grid's columns


@dataclass(frozen=True)
class TileLayout:
    """How one tiled image was cut and coded, in coding order."""

    bands: tuple[Band, ...]


@dataclass(frozen=True)
class Rect:
    y0: int
    y1: int
    x0: int
    x1: int
    method: str
    nbytes: int

    def shape(self, channels: int) -> tuple[int, int, int]:
        return (self.y1 - self.y0, self.x1 - self.x0, channels)

    def subpixels(self, channels: int) -> int:
        return (self.y1 - self.y0) * (self.x1 - self.x0) * channels


def grid(height: int, width: int, tile: int) -> tuple[int, int]:
    """Tile rows and columns of an image."""
    return math.ceil(height / tile), math.ceil(width / tile)


def rects(layout: TileLayout, height: int, width: int, tile: int) -> list[Rect]:
    """The segments' pixel rectangles in coding order (the layout must be valid)."""
    out, row = [], 0
    for band in layout.bands:
        col = 0
        y0, y1 = row * tile, min((row + band.rows) * tile, height)
        for seg in band.segments:
            out.append(Rect(y0, y1, col * tile, min((col + seg.width) * tile, width), seg.method, seg.nbytes))
            col += seg.width
        row += band.rows
    return out


# ---- header record -----------------------------------------------------------------------
def encode_layout(layout: TileLayout) -> bytes:
    out = bytearray(encode_varint(len(layout.bands)))
    for band in layout.bands:
        out += encode_varint(band.rows) + encode_varint(len(band.segments))
        for seg in band.segments:
            code = SEGMENT_METHODS.index(seg.method)
            out += encode_varint(seg.width << 2 | code)
            if code:
                out += encode_varint(seg.nbytes)
    return bytes(out)


def parse_layout(r, max_side: int, jxl: bool = True) -> TileLayout:
    """Read one record with the container's bounds-checked reader ``r`` (every count is
    bounded by the bytes that remain before anything is allocated for it); ``jxl``: whether
    code 3 (JPEG XL, format version 7) is allowed."""
    bands = []
    for _ in range(r.count("tile bands", max_side, 3)):
        rows = r.varint("band rows", max_side)
        segs = []
        for _ in range(r.count("band segments", max_side, 1)):
            v = r.varint("segment", (max_side << 2) | 3)
            width, code = v >> 2, v & 3
            if code >= len(SEGMENT_METHODS) or (not jxl and SEGMENT_METHODS[code] == "jxl"):
                r.bad(f"unknown segment method {code}")
            nbytes = r.varint("segment bytes", 1 << 40) if code else 0
            segs.append(Segment(width, SEGMENT_METHODS[code], nbytes))
        bands.append(Band(rows, tuple(segs)))
    return TileLayout(tuple(bands))


def check_layout(layout: TileLayout, shape: tuple[int, int, int], tile: int) -> str | None:
    """Why a record does not fit its image (None when it does): bands and segments must
    cover the grid exactly, chain segments stay within the region bound, classical
    segments hold at least one byte."""
    h, w, c = shape
    rows, cols = grid(h, w, tile)
    if not layout.bands:
        return "a tiled image without bands"
    if any(b.rows < 1 for b in layout.bands) or sum(b.rows for b in layout.bands) != rows:
        return f"bands do not cover the {rows} tile rows"
    for b in layout.bands:
        if not b.segments or any(s.width < 1 for s in b.segments) or sum(s.width for s in b.segments) != cols:
            return f"segments do not cover the {cols} tile columns"
    for rect in rects(layout, h, w, tile):
        if rect.method == "vdm" and rect.subpixels(c) > MAX_REGION_SUBPIXELS:
            return "a chain segment is larger than the encoder writes"
        if rect.method != "vdm" and rect.nbytes < 1:
            return "an empty classical segment"
    return None
