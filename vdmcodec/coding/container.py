"""The .vdmc container (format versions 7 and 8; versions 3 to 6 are still read): a compact
binary header, then the payload.

Layout (see docs/format.md; integers are unsigned LEB128 varints unless stated):

    offset  size  field
    0       4     magic b"VDMC"
    4       1     format version (8 with image records, else 7; 6 has no JPEG XL, 5 nor channel
                  correlations, 4 nor structure priors, 3 nor level times)
    5       v     header length H (varint, at most MAX_HEADER_BYTES and the bytes that remain)
    5+v     H     header (``Header``), binary, every field bounds-checked
    (version 8 only) varint length E, then E bytes: the image records (coding/envelope.py:
                  original modes, palettes, frames, metadata, alpha and 16-bit planes)
            P     payload: ANS words (u32 LE), or the classical blob when no image uses the model
    end-4   4     CRC-32 (u32 LE) of every byte before it

The header is small on purpose: a one-image file of a 28x28 digit is about 30 bytes of
container around its payload. Hashes are 64-bit prefixes of SHA-256 (identity and
decode verification, not security). Parsing never trusts a length or a count: each is
checked against the bytes that remain and against the limits below before anything is
allocated for it.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field, replace

from ..errors import FormatError
from .structure import parse_prior, prior_size
from .tilegrid import MAX_TILE, check_layout, encode_layout, parse_layout

MAGIC = b"VDMC"
VERSION = 7            # written for archives without image records (byte-identical to before version 8)
ENVELOPE_VERSION = 8   # version 7 plus the image-record section; its coder constants are version 7's
READABLE_VERSIONS = (3, 4, 5, 6, 7, 8)
HASH_BYTES = 8
MAX_HEADER_BYTES = 64 << 20
MAX_IMAGES = 10_000_000
MAX_SIDE = 1 << 16
MAX_TOTAL_SUBPIXELS = 1 << 32
MAX_STEPS = 100_000
MAX_THREADS = 1024             # torch threads of the encoder (the decoder runs the same count)
MAX_NAME_BYTES = 4096
MAX_SHORT_STR = 255
CORR_SCALE_STEPS = 4  # a tiled image's share of the channel correlations: 0, 1/4, ..., 4/4 (version 6)
METHODS = ("vdm", "png", "webp", "tiled", "tiled-gray", "jxl")  # "jxl": version 7
MODEL_METHODS = ("vdm", "tiled", "tiled-gray")  # coded by the chain: whole (chunks) or in tiles (tilegrid)
# coded in tiles; "tiled-gray": a one-channel image coded by a three-channel model as R = G = B
TILED_METHODS = ("tiled", "tiled-gray")
DTYPES = ("float32", "float32-nhwc", "bfloat16-nhwc", "portable")  # the network arithmetic (coding/arithmetic.py: ARITHMETIC)
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
def _varint(v: int) -> bytes:
    if v < 0:
        raise ValueError(f"varint of a negative value {v}")
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _str(s: str, limit: int) -> bytes:
    b = s.encode()
    if len(b) > limit:
        raise ValueError(f"string of {len(b)} bytes over the limit {limit}")
    return _varint(len(b)) + b


def encode_header(h: Header) -> bytes:
    """The header's bytes. Writes what ``parse_header`` reads; it does not validate
    (tests forge headers with it), ``pack`` does."""
    seq = h.names.get("sequence")
    default_names = seq is not None and tuple(seq) == DEFAULT_NAMES
    squeeze_all = len(h.squeeze) == 1 and h.squeeze[0][0] == 1 and h.squeeze[0][1] == h.count
    flags = ((_F_MODEL if h.model is not None else 0) | (_F_NAME_LIST if "list" in h.names else 0)
             | (_F_NAME_SEQ if seq is not None and not default_names else 0)
             | (_F_SQUEEZE_ALL if squeeze_all else _F_SQUEEZE if h.squeeze else 0) | (h.init_pad << _PAD_SHIFT)
             | (_F_TILED if h.tiled else 0))
    out = bytearray([flags])
    if h.model is not None:
        out += _str(h.model, MAX_SHORT_STR) + bytes.fromhex(h.model_hash or "")
        out += _varint(h.steps) + bytes([h.grid_bits, DTYPES.index(h.dtype)]) + _varint(h.threads)
        out += _str(h.torch, MAX_SHORT_STR)
        kind = (h.levels is not None) | (h.corr is not None) << 1 | (h.device is not None) << 2
        out += bytes([kind]) + bytes.fromhex(h.levels or "") + bytes.fromhex(h.corr or "")
        out += b"" if h.device is None else _str(h.device, MAX_SHORT_STR)
    out += _varint(len(h.shapes))
    for r in h.shapes:
        out += b"".join(_varint(v) for v in r)
    out += _varint(len(h.methods))
    for m, n in h.methods:
        out += bytes([METHODS.index(m)]) + _varint(n)
    out += b"".join(_varint(v) for v in h.classical_sizes)
    if h.model is not None or h.chunks:
        out += _varint(len(h.chunks)) + b"".join(_varint(size) for _, size in h.chunks)
    if h.tiled:
        out += _varint(h.tile) + b"".join(encode_layout(t) for t in h.tiled)
        structures = h.structures or [None] * len(h.tiled)
        out += b"".join(bytes([0]) if p is None else p.to_bytes() for p in structures)
        if h.corr is not None:
            out += bytes(h.corr_scales or [0] * len(h.tiled))
    if "list" in h.names:
        out += b"".join(_str(s, MAX_NAME_BYTES) for s in h.names["list"])
    elif not default_names:
        prefix, digits, suffix = seq
        out += _str(prefix, MAX_SHORT_STR) + bytes([digits]) + _str(suffix, MAX_SHORT_STR)
    if h.squeeze and not squeeze_all:
        out += _varint(len(h.squeeze))
        for v, n in h.squeeze:
            out += bytes([v]) + _varint(n)
    out += bytes.fromhex(h.pixels_hash)
    return bytes(out)


def frame(header_bytes: bytes, payload: bytes, envelope: bytes = b"") -> bytes:
    """The file's bytes: version 7 without image records, version 8 with them."""
    version = ENVELOPE_VERSION if envelope else VERSION
    records = _varint(len(envelope)) + envelope if envelope else b""
    body = MAGIC + bytes([version]) + _varint(len(header_bytes)) + header_bytes + records + payload
    return body + struct.pack("<I", zlib.crc32(body))


def pack(header: Header, payload: bytes) -> bytes:
    hb = encode_header(header)
    _validate(parse_header(hb))  # never write what we would refuse to read
    return frame(hb, payload, header.envelope)


# ---- reading --------------------------------------------------------------------------
@dataclass(frozen=True)
class Field:
    """Where parse_header read one field (for tools that forge headers: benchmarks/fuzzing.py)."""

    start: int
    end: int
    what: str
    limit: int | None = None  # a varint's upper bound (None: raw bytes)


class _Reader:
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
    r = _Reader(data, trace)
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
        if m >= len(METHODS) or (version < 7 and METHODS[m] == "jxl"):
            r.bad(f"unknown coding method {m}")
        methods.append([METHODS[m], r.varint("method count", MAX_IMAGES)])
    n_images = sum(s[3] for s in shapes)
    n_classical = sum(n for m, n in methods if m not in MODEL_METHODS)
    if n_images > MAX_IMAGES or n_classical > n_images:
        r.bad("image counts out of range")
    if n_classical > len(data) - r.pos:
        r.bad("more classical sizes than the header holds")
    classical_sizes = [r.varint("classical size", 1 << 40) for _ in range(n_classical)]
    chunks, pos = [], 0
    for _ in range(r.count("chunks", MAX_IMAGES) if flags & _F_MODEL else 0):
        size = r.varint("chunk size", MAX_IMAGES)
        chunks.append([pos, size])
        pos += size
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
                  corr_scales=corr_scales, version=version, device=device)


def _parse_structure(r: _Reader):
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


def unpack(blob: bytes) -> tuple[Header, bytes]:
    """Parse and validate a container; every failure is a FormatError with one line."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise FormatError("compressed data must be bytes")
    blob = bytes(blob)
    if len(blob) < 4 or blob[:4] != MAGIC:
        raise FormatError("not a vdmcodec file (bad magic bytes)")
    if len(blob) < 5 + 1 + 4:
        raise FormatError("truncated file (header missing)")
    version = blob[4]
    if version not in READABLE_VERSIONS:
        raise FormatError(f"unsupported format version {version} (this build reads versions "
                          f"{', '.join(map(str, READABLE_VERSIONS))})")
    (crc,) = struct.unpack_from("<I", blob, len(blob) - 4)
    if zlib.crc32(blob[:-4]) != crc:
        raise FormatError("truncated or corrupted file (CRC-32 mismatch)")
    r = _Reader(blob[:-4])
    r.pos = 5
    hlen = r.varint("header length", MAX_HEADER_BYTES)
    start = r.pos
    if hlen > len(blob) - 4 - start:
        raise FormatError("truncated file (header length exceeds the file)")
    header = _validate(parse_header(blob[start : start + hlen], version))
    if version >= ENVELOPE_VERSION:
        r.pos = start + hlen
        elen = r.varint("image records length", len(blob))
        if not 1 <= elen <= len(blob) - 4 - r.pos:
            raise FormatError("truncated file (image records length exceeds the file)" if elen else
                              "invalid header: version 8 without image records")
        header = replace(header, envelope=r.take(elen, "image records"))
        return header, blob[r.pos : -4]
    return header, blob[start + hlen : -4]


def _validate(h: Header) -> Header:
    """Consistency of a parsed header (the parser already bounded every value)."""
    def bad(what):
        raise FormatError(f"invalid header: {what}")

    if (h.model is None) != (h.steps == 0) or (h.model is not None and not 1 <= h.grid_bits <= 16):
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
    n_vdm = sum(n for m, n in h.methods if m == "vdm")
    n_model = sum(n for m, n in h.methods if m in MODEL_METHODS)
    if (n_model > 0) != (h.model is not None):
        bad("model named without model-coded images, or the reverse")
    if any(size < 1 for _, size in h.chunks) or sum(size for _, size in h.chunks) != n_vdm:
        bad("chunks do not cover the model-coded images")
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
        if not 1 <= digits <= 12:
            bad("names sequence")
    elif any(len(s) == 0 for s in h.names["list"]):
        bad("empty name")
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
