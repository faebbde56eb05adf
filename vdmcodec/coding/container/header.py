"""The .vdmc header's bytes, both ways: the ``Header`` record, ``encode_header`` and
``parse_header``, and the format's constants and limits (the file around the header:
file.py; the header's consistency: validation.py).

The header is small on purpose: a one-image file of a 28x28 digit is about 30 bytes of
container around its payload. Hashes are 64-bit prefixes of SHA-256 (identity and
decode verification, not security). Parsing never trusts a length or a count: each is
checked against the bytes that remain and against the limits below before anything is
allocated for it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ...errors import FormatError
from ..priors import parse_prior, prior_size
from ..tilegrid import MAX_TILE, encode_layout, parse_layout
from ..varint import encode_varint

MAGIC = b"VDMC"
VERSION = 7            # written for archives without image records (byte-identical to before version 8)
ENVELOPE_VERSION = 8   # version 7 plus the image-record section; its coder constants are version 7's
CHUNK_GRID_VERSION = 9  # version 8 plus a latent grid per chunk (its records optional); written where a chunk is coarser
CONTEXT_VERSION = 10    # version 9 plus the ``ctx`` method (coding/context_model.py); written where an image uses it
READABLE_VERSIONS = (3, 4, 5, 6, 7, 8, 9, 10)
HASH_BYTES = 8
MAX_HEADER_BYTES = 64 << 20
MAX_IMAGES = 10_000_000
MAX_CHUNK_IMAGES = 64   # images in one chain chunk: what the encoder writes (the decoder's batch bound)
MAX_SIDE = 1 << 16
MAX_TOTAL_SUBPIXELS = 1 << 32
MAX_STEPS = 100_000
MIN_GRID_BITS, MAX_GRID_BITS = 1, 16  # an archive's latent grid (coding/grid.py)
MIN_CHUNK_GRID_BITS = -1  # the coarsest grid of a chunk of whole images (version 9)
MAX_CHUNK_GRID_DROP = 3   # a chunk's grid is grid_bits minus 0..3 (two bits of its entry)
MAX_THREADS = 1024             # torch threads of the encoder (the decoder runs the same count)
MAX_NAME_BYTES = 4096
MAX_SHORT_STR = 255
CORR_SCALE_STEPS = 4  # a tiled image's share of the channel correlations: 0, 1/4, ..., 4/4 (version 6)
METHODS = ("vdm", "png", "webp", "tiled", "tiled-gray", "jxl", "ctx")  # "jxl": version 7; "ctx": version 10
MODEL_METHODS = ("vdm", "tiled", "tiled-gray")  # coded by the chain: whole (chunks) or in tiles (tilegrid)
# coded in tiles; "tiled-gray": a one-channel image coded by a three-channel model as R = G = B
TILED_METHODS = ("tiled", "tiled-gray")
DTYPES = ("float32", "float32-nhwc", "bfloat16-nhwc", "portable", "bfloat16")  # the network arithmetic (coding/arithmetic.py: ARITHMETIC)
DEFAULT_NAMES = ("", 5, ".png")  # 00000.png, 00001.png, ...

_F_MODEL, _F_NAME_LIST, _F_NAME_SEQ, _F_SQUEEZE, _F_SQUEEZE_ALL, _F_TILED = 1, 2, 4, 8, 64, 128
_PAD_SHIFT = 4  # bits 4-5: init_pad


@dataclass(frozen=True)
class Header:
    model: str | None               # model name (None when no image uses the model)
    model_hash: str | None          # hex, first 8 bytes of the weights' SHA-256
    steps: int                      # T (0 when no image uses the model)
    grid_bits: int
    torch: str                      # what the encoder ran ("" when no image uses the model)
    dtype: str
    threads: int
    shapes: list                    # run-length: [[H, W, C, count], ...] in image order
    names: dict                     # {"sequence": [prefix, digits, suffix]} or {"list": [...]}
    methods: list                   # run-length: [[a METHODS name, count], ...]
    classical_sizes: list           # bytes of each classically coded image, in order
    chunks: list                    # [[start, size], ...] over the vdm images, encode order
    init_pad: int                   # zero bytes padding the classical blob to whole words
    pixels_hash: str                # hex, first 8 bytes of SHA-256 over all images
    squeeze: list = field(default_factory=list)  # run-length [[0|1, count]]: return (H, W)
    tile: int = 0                   # tile side of the tiled images (0: none)
    tiled: list = field(default_factory=list)  # a tilegrid.TileLayout per tiled image (TILED_METHODS), in image order
    levels: str | None = None       # hex, first 8 bytes of SHA-256 of the level times (levels.py); None: t_i = i / T
    corr: str | None = None         # hex, 8 bytes of SHA-256 of the channel correlation table (levels.py); None: p factorises
    structures: list = field(default_factory=list)  # per tiled image: a structure / jpeg_prior prior or None (version 5)
    corr_scales: list = field(default_factory=list)  # per tiled image with ``corr``: its share of the correlations, in 1/CORR_SCALE_STEPS
    envelope: bytes = b""           # version 8: the image-record section, parsed by coding/envelope.py (b"": none)
    # the format version it was read from (spec.py: the coder of that version); files are written at VERSION.
    # Not part of equality: a header means the same whichever version carried it
    version: int = field(default=VERSION, compare=False)
    device: str | None = None       # a GPU-coded float file: the device fingerprint (hardware.py); None: CPU or portable
    chunk_grids: list = field(default_factory=list)  # version 9: each chunk's latent grid bits ([]: all at grid_bits)

    @property
    def format_version(self) -> int:
        """The version a file of this header is written at: 10 where an image is ``ctx``, 9 where
        a chunk has its own grid, 8 with image records, else 7."""
        if any(m == "ctx" for m, _ in self.methods):
            return CONTEXT_VERSION
        return CHUNK_GRID_VERSION if self.chunk_grids else ENVELOPE_VERSION if self.envelope else VERSION

    @property
    def count(self) -> int:
        return sum(r[3] for r in self.shapes)

    def image_shapes(self) -> list[tuple[int, int, int]]:
        return [tuple(r[:3]) for r in self.shapes for _ in range(r[3])]

    def image_methods(self) -> list[str]:
        return [m for m, n in self.methods for _ in range(n)]

    def image_names(self) -> list[str]:
        if "sequence" in self.names:
            prefix, digits, suffix = self.names["sequence"]
            return [f"{prefix}{k:0{digits}d}{suffix}" for k in range(self.count)]
        return list(self.names["list"])

    def image_squeeze(self) -> list[bool]:
        if not self.squeeze:
            return [False] * self.count
        return [bool(v) for v, n in self.squeeze for _ in range(n)]


def run_length(values: list) -> list:
    out: list = []
    for v in values:
        if out and out[-1][:-1] == list(v if isinstance(v, tuple) else (v,)):
            out[-1][-1] += 1
        else:
            out.append(list(v if isinstance(v, tuple) else (v,)) + [1])
    return out


# ---- writing --------------------------------------------------------------------------
def encode_str(s: str, limit: int) -> bytes:
    b = s.encode()
    if len(b) > limit:
        raise ValueError(f"string of {len(b)} bytes over the limit {limit}")
    return encode_varint(len(b)) + b


def name_sequence(names: list[str]) -> list | None:
    """[prefix, digits, suffix] such that ``names`` are prefix + k in ``digits`` digits
    (zero-padded) + suffix for k = 0, 1, ... (``Header.image_names``), or None: the header's
    short form for numbered files (``000.png``, ``img_0000.tif``, ...), 4-260 bytes instead of
    a list."""
    if not names:
        return None
    default = list(DEFAULT_NAMES)  # costs no byte: try it first
    if all(n == f"{default[0]}{k:0{default[1]}d}{default[2]}" for k, n in enumerate(names)):
        return default
    first, last = names[0], names[-1]
    for digits in range(12, 0, -1):  # the widest zero-padded field first
        for i in range(len(first) - digits + 1):
            if first[i : i + digits] != "0" * digits:
                continue
            prefix, suffix = first[:i], first[i + digits :]
            if (len(prefix.encode()) > MAX_SHORT_STR or len(suffix.encode()) > MAX_SHORT_STR
                    or last != f"{prefix}{len(names) - 1:0{digits}d}{suffix}"):
                continue
            if all(n == f"{prefix}{k:0{digits}d}{suffix}" for k, n in enumerate(names)):
                return [prefix, digits, suffix]
    return None


def encode_header(h: Header) -> bytes:
    """The header's bytes. Writes what ``parse_header`` reads; it does not validate
    (tests forge headers with it), ``file.pack`` does."""
    seq = h.names.get("sequence")
    default_names = seq is not None and tuple(seq) == DEFAULT_NAMES
    squeeze_all = len(h.squeeze) == 1 and h.squeeze[0][0] == 1 and h.squeeze[0][1] == h.count
    flags = ((_F_MODEL if h.model is not None else 0) | (_F_NAME_LIST if "list" in h.names else 0)
             | (_F_NAME_SEQ if seq is not None and not default_names else 0)
             | (_F_SQUEEZE_ALL if squeeze_all else _F_SQUEEZE if h.squeeze else 0) | (h.init_pad << _PAD_SHIFT)
             | (_F_TILED if h.tiled else 0))
    out = bytearray([flags])
    if h.model is not None:
        out += encode_str(h.model, MAX_SHORT_STR) + bytes.fromhex(h.model_hash or "")
        out += encode_varint(h.steps) + bytes([h.grid_bits, DTYPES.index(h.dtype)]) + encode_varint(h.threads)
        out += encode_str(h.torch, MAX_SHORT_STR)
        kind = (h.levels is not None) | (h.corr is not None) << 1 | (h.device is not None) << 2
        out += bytes([kind]) + bytes.fromhex(h.levels or "") + bytes.fromhex(h.corr or "")
        out += b"" if h.device is None else encode_str(h.device, MAX_SHORT_STR)
    out += encode_varint(len(h.shapes))
    for r in h.shapes:
        out += b"".join(encode_varint(v) for v in r)
    out += encode_varint(len(h.methods))
    for m, n in h.methods:
        out += bytes([METHODS.index(m)]) + encode_varint(n)
    out += b"".join(encode_varint(v) for v in h.classical_sizes)
    if h.model is not None or h.chunks:
        out += encode_varint(len(h.chunks))
        if h.format_version >= CHUNK_GRID_VERSION:  # (size << 2) | how many bits coarser than grid_bits
            grids = h.chunk_grids or [h.grid_bits] * len(h.chunks)
            out += b"".join(encode_varint(size << 2 | (h.grid_bits - g)) for (_, size), g in zip(h.chunks, grids))
        else:
            out += b"".join(encode_varint(size) for _, size in h.chunks)
    if h.tiled:
        out += encode_varint(h.tile) + b"".join(encode_layout(t) for t in h.tiled)
        structures = h.structures or [None] * len(h.tiled)
        out += b"".join(bytes([0]) if p is None else p.to_bytes() for p in structures)
        if h.corr is not None:
            out += bytes(h.corr_scales or [0] * len(h.tiled))
    if "list" in h.names:
        out += b"".join(encode_str(s, MAX_NAME_BYTES) for s in h.names["list"])
    elif not default_names:
        prefix, digits, suffix = seq
        out += encode_str(prefix, MAX_SHORT_STR) + bytes([digits]) + encode_str(suffix, MAX_SHORT_STR)
    if h.squeeze and not squeeze_all:
        out += encode_varint(len(h.squeeze))
        for v, n in h.squeeze:
            out += bytes([v]) + encode_varint(n)
    out += bytes.fromhex(h.pixels_hash)
    return bytes(out)


# ---- reading --------------------------------------------------------------------------
@dataclass(frozen=True)
class Field:
    """Where parse_header read one field (for tools that forge headers: benchmarks/fuzzing.py)."""

    start: int
    end: int
    what: str
    limit: int | None = None  # a varint's upper bound (None: raw bytes)


class Reader:
    """Bounds-checked reads over the header bytes; every failure is a FormatError.
    ``trace``: a list that receives a Field per field read."""

    def __init__(self, data: bytes, trace: list | None = None):
        self.data, self.pos, self.trace = data, 0, trace

    def bad(self, what: str):
        raise FormatError(f"invalid header: {what}")

    def take(self, n: int, what: str) -> bytes:
        if n > len(self.data) - self.pos:
            self.bad(f"{what} runs past the header")
        b = self.data[self.pos : self.pos + n]
        self.pos += n
        if self.trace is not None:
            self.trace.append(Field(self.pos - n, self.pos, what))
        return b

    def byte(self, what: str) -> int:
        return self.take(1, what)[0]

    def varint(self, what: str, hi: int) -> int:
        v, shift, start, mark = 0, 0, self.pos, len(self.trace or ())
        while True:
            b = self.byte(what)
            v |= (b & 0x7F) << shift
            if not b & 0x80:
                break
            shift += 7
            if shift > 63:
                self.bad(f"{what} is not a valid varint")
        if v > hi:
            self.bad(f"{what} {v} exceeds the limit {hi}")
        if self.trace is not None:
            self.trace[mark:] = [Field(start, self.pos, what, hi)]
        return v

    def count(self, what: str, hi: int, min_bytes_each: int = 1) -> int:
        """A count of items that each take at least ``min_bytes_each`` bytes: bounded by
        what remains before anything is allocated for it."""
        n = self.varint(what, hi)
        if n * min_bytes_each > len(self.data) - self.pos:
            self.bad(f"{what} {n} is more than the header holds")
        return n

    def string(self, what: str, limit: int) -> str:
        n = self.varint(f"{what} length", limit)
        try:
            return self.take(n, what).decode()
        except UnicodeDecodeError:
            self.bad(f"{what} is not UTF-8")


def parse_header(data: bytes, version: int = VERSION, trace: list | None = None) -> Header:
    """The header of a file of format ``version``; ``trace``: a list that receives a Field
    (offset, length, name, limit) per field read."""
    r = Reader(data, trace)
    flags = r.byte("flags")
    if (flags & _F_NAME_LIST and flags & _F_NAME_SEQ) or (flags & _F_SQUEEZE and flags & _F_SQUEEZE_ALL):
        r.bad("unknown flags")
    model = model_hash = levels = corr = device = None
    steps, grid_bits, torch_v, dtype, threads = 0, 0, "", "float32", 0
    if flags & _F_MODEL:
        model = r.string("model name", MAX_SHORT_STR)
        model_hash = r.take(HASH_BYTES, "model hash").hex()
        steps = r.varint("steps", MAX_STEPS)
        grid_bits = r.byte("grid_bits")
        d = r.byte("dtype")
        if d >= len(DTYPES):
            r.bad(f"unknown dtype code {d}")
        dtype = DTYPES[d]
        threads = r.varint("threads", MAX_THREADS)
        torch_v = r.string("torch version", MAX_SHORT_STR)
        if version >= 4:
            # bit 0: fitted times; bit 1: channel correlations; bit 2: a device record (GPU files)
            kind = r.byte("level times kind")
            if kind > (7 if version >= 7 else 3 if version >= 6 else 1):
                r.bad(f"unknown level times kind {kind}")
            levels = r.take(HASH_BYTES, "level times hash").hex() if kind & 1 else None
            corr = r.take(HASH_BYTES, "channel correlation hash").hex() if kind & 2 else None
            device = r.string("device record", MAX_SHORT_STR) if kind & 4 else None
    shapes = [[r.varint("height", MAX_SIDE), r.varint("width", MAX_SIDE), r.byte("channels"), r.varint("count", MAX_IMAGES)]
              for _ in range(r.count("shape runs", MAX_IMAGES, 4))]
    methods = []
    for _ in range(r.count("method runs", MAX_IMAGES, 2)):
        m = r.byte("method")
        if (m >= len(METHODS) or (version < 7 and METHODS[m] == "jxl")
                or (version < CONTEXT_VERSION and METHODS[m] == "ctx")):
            r.bad(f"unknown coding method {m}")
        methods.append([METHODS[m], r.varint("method count", MAX_IMAGES)])
    n_images = sum(s[3] for s in shapes)
    n_classical = sum(n for m, n in methods if m not in MODEL_METHODS)
    if n_images > MAX_IMAGES or n_classical > n_images:
        r.bad("image counts out of range")
    if n_classical > len(data) - r.pos:
        r.bad("more classical sizes than the header holds")
    classical_sizes = [r.varint("classical size", 1 << 40) for _ in range(n_classical)]
    chunks, chunk_grids, pos = [], [], 0
    for _ in range(r.count("chunks", MAX_IMAGES) if flags & _F_MODEL else 0):
        if version >= CHUNK_GRID_VERSION:
            v = r.varint("chunk entry", MAX_IMAGES << 2 | MAX_CHUNK_GRID_DROP)
            size = v >> 2
            chunk_grids.append(grid_bits - (v & MAX_CHUNK_GRID_DROP))
        else:
            size = r.varint("chunk size", MAX_IMAGES)
        chunks.append([pos, size])
        pos += size
    if all(g == grid_bits for g in chunk_grids):  # the same header as one of version 8 or before
        chunk_grids = []
    tile, tiled, structures, corr_scales = 0, [], [], []
    if corr is not None and not flags & _F_TILED:
        r.bad("channel correlations without tiled images")
    if flags & _F_TILED:
        tile = r.varint("tile side", MAX_TILE)
        n_tiled = sum(n for m, n in methods if m in TILED_METHODS)
        if not n_tiled:
            r.bad("tile layouts flagged without tiled images")
        if n_tiled > len(data) - r.pos:
            r.bad("more tiled images than the header holds")
        tiled = [parse_layout(r, MAX_SIDE, jxl=version >= 7) for _ in range(n_tiled)]
        if version >= 5:
            structures = [_parse_structure(r) for _ in range(n_tiled)]
        if corr is not None:
            corr_scales = [r.byte("correlation share") for _ in range(n_tiled)]
            if max(corr_scales) > CORR_SCALE_STEPS:
                r.bad(f"a correlation share above {CORR_SCALE_STEPS}")
    if flags & _F_NAME_LIST:
        if n_images > len(data) - r.pos:
            r.bad("more names than the header holds")
        names = {"list": [r.string("name", MAX_NAME_BYTES) for _ in range(n_images)]}
    elif flags & _F_NAME_SEQ:
        names = {"sequence": [r.string("name prefix", MAX_SHORT_STR), r.byte("name digits"), r.string("name suffix", MAX_SHORT_STR)]}
    else:
        names = {"sequence": list(DEFAULT_NAMES)}
    squeeze = [[1, n_images]] if flags & _F_SQUEEZE_ALL else []
    if flags & _F_SQUEEZE:
        squeeze = [[r.byte("squeeze flag"), r.varint("squeeze count", MAX_IMAGES)] for _ in range(r.count("squeeze runs", MAX_IMAGES, 2))]
    pixels_hash = r.take(HASH_BYTES, "pixel hash").hex()
    if r.pos != len(data):
        r.bad(f"{len(data) - r.pos} unread bytes at its end")
    return Header(model=model, model_hash=model_hash, steps=steps, grid_bits=grid_bits, torch=torch_v, dtype=dtype,
                  threads=threads, shapes=shapes, names=names, methods=methods, classical_sizes=classical_sizes,
                  chunks=chunks, init_pad=(flags >> _PAD_SHIFT) & 3, pixels_hash=pixels_hash, squeeze=squeeze,
                  tile=tile, tiled=tiled, levels=levels, corr=corr, structures=structures if any(structures) else [],
                  corr_scales=corr_scales, version=version, device=device, chunk_grids=chunk_grids)


def _parse_structure(r: Reader):
    mode = r.byte("structure mode")
    try:
        size = prior_size(mode)
    except ValueError:
        r.bad(f"unknown structure mode {mode}")
    if size == 1:
        return None
    data = bytes([mode]) + r.take(size - 1, "structure prior")
    try:
        return parse_prior(data)
    except ValueError as e:
        r.bad(f"structure prior ({e})")
