"""The consistency of a parsed header (header.py): counts that agree across its fields,
shapes, methods, chunks, tile layouts and the priors and correlation shares of tiled images.
The parser has already bounded every single value; ``validate`` checks how they fit together."""
from __future__ import annotations

from ...errors import FormatError
from ..context_model import MAX_PIXELS as CTX_MAX_PIXELS
from ..tilegrid import MAX_TILE, check_layout
from .header import (MAX_CHUNK_IMAGES, MAX_GRID_BITS, MAX_IMAGES, MAX_THREADS, MAX_TOTAL_SUBPIXELS, MIN_CHUNK_GRID_BITS,
                     MIN_GRID_BITS, MODEL_METHODS, TILED_METHODS, Header)


def validate(h: Header) -> Header:
    """Consistency of a parsed header (the parser already bounded every value)."""
    def bad(what):
        raise FormatError(f"invalid header: {what}")

    if (h.model is None) != (h.steps == 0) or (h.model is not None and not MIN_GRID_BITS <= h.grid_bits <= MAX_GRID_BITS):
        bad("steps / grid_bits out of range")
    if h.model is not None and not 1 <= h.threads <= MAX_THREADS:
        bad(f"threads {h.threads} out of range 1..{MAX_THREADS}")
    if h.device is not None and (h.model is None or h.dtype == "portable" or not h.device):
        bad("a device record on a file without a float model arithmetic")
    total, count = 0, 0
    for hh, w, c, n in h.shapes:
        if hh < 1 or w < 1 or c not in (1, 3) or n < 1:
            bad("shape entry")
        count += n
        total += hh * w * c * n
    if count < 1:
        bad("no images")
    if count > MAX_IMAGES or total > MAX_TOTAL_SUBPIXELS:
        bad(f"claims {count} images / {total} subpixels, over the limits")
    if any(n < 1 for _, n in h.methods) or sum(n for _, n in h.methods) != count:
        bad("methods do not cover the images")
    if any(v < 1 for v in h.classical_sizes):
        bad("classical_sizes")
    for (hh, w, c), _ in _shapes_of(h, ("ctx",)):  # the runs walked together, never every image expanded
        if c != 1 or hh * w > CTX_MAX_PIXELS:
            bad(f"a ctx image of {hh}x{w}x{c} (ctx codes one channel of at most {CTX_MAX_PIXELS} pixels)")
    n_vdm = sum(n for m, n in h.methods if m == "vdm")
    n_model = sum(n for m, n in h.methods if m in MODEL_METHODS)
    if (n_model > 0) != (h.model is not None):
        bad("model named without model-coded images, or the reverse")
    if any(size < 1 for _, size in h.chunks) or sum(size for _, size in h.chunks) != n_vdm:
        bad("chunks do not cover the model-coded images")
    if any(size > MAX_CHUNK_IMAGES for _, size in h.chunks):
        # what the encoder writes; it also bounds the image count by the header's own bytes
        # (every image is a classical size, a tile layout or 1/64 of a chunk entry), so that
        # a small file cannot claim millions of images for the per-image lists built after
        bad(f"a chunk of more than {MAX_CHUNK_IMAGES} images (more than the encoder writes)")
    if h.chunk_grids and (len(h.chunk_grids) != len(h.chunks)
                          or not all(MIN_CHUNK_GRID_BITS <= g <= h.grid_bits for g in h.chunk_grids)):
        bad("chunk grids out of range")
    if n_model == 0 and h.init_pad:
        bad("init_pad without model-coded images")
    n_tiled = n_model - n_vdm
    if len(h.tiled) != n_tiled or (n_tiled > 0) != (h.tile > 0) or h.tile > MAX_TILE:
        bad("tiled images and their layouts disagree")
    if h.structures and len(h.structures) != n_tiled:
        bad("structure priors do not match the tiled images")
    if (h.corr is not None and len(h.corr_scales) != n_tiled) or (h.corr is None and h.corr_scales):
        bad("correlation shares do not match the tiled images")
    structures = h.structures or [None] * n_tiled
    for share, (shape, method), prior in zip(h.corr_scales, _shapes_of(h, TILED_METHODS), structures):
        if share and (method != "tiled" or shape[2] != 3 or prior is not None):
            bad("channel correlations on an image that is not tiled RGB without a structure prior")
    for layout, (shape, method), prior in zip(h.tiled, _shapes_of(h, TILED_METHODS), structures):
        if method == "tiled-gray" and shape[2] != 1:
            bad("a tiled-gray image with more than one channel")
        if prior is not None and (method != "tiled" or shape[2] != 3):
            bad("a structure prior on an image that is not tiled RGB")
        why = check_layout(layout, coded_shape(shape, method), h.tile)
        if why:
            bad(f"tile layout of a {shape[0]}x{shape[1]} image: {why}")
    if "sequence" in h.names:
        prefix, digits, suffix = h.names["sequence"]
        if not 1 <= digits <= 12 or "\0" in prefix + suffix:
            bad("names sequence")
    elif any(len(s) == 0 for s in h.names["list"]):
        bad("empty name")
    elif any("\0" in s for s in h.names["list"]):
        bad("a name with a NUL character (no file system can hold it)")
    if h.squeeze and (any(v not in (0, 1) or n < 1 for v, n in h.squeeze) or sum(n for _, n in h.squeeze) != count):
        bad("squeeze flags")
    return h


def coded_shape(shape: tuple[int, int, int], method: str) -> tuple[int, int, int]:
    """The shape the chain codes for an image of ``shape``: "tiled-gray" images go
    through a three-channel model as R = G = B."""
    return (shape[0], shape[1], 3) if method == "tiled-gray" else tuple(shape)


def _shapes_of(h: Header, methods: tuple[str, ...]):
    """(shape, method) of the images coded with one of ``methods``, in image order, walking
    the two run-length lists together (never expanding all images: a run may claim millions)."""
    runs = iter(h.shapes)
    shape, left = None, 0
    for m, n in h.methods:
        while n:
            if not left:
                hh, w, c, left = next(runs)
                shape = (hh, w, c)
            take = min(n, left)
            if m in methods:
                for _ in range(take):
                    yield shape, m
            n, left = n - take, left - take
