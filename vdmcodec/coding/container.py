"""The .vdmc container: parsing never trusts a length or count without a bound.

Layout (all integers little-endian):

    offset  size  field
    0       4     magic b"VDMC"
    4       1     format version (1)
    5       4     header length H (u32, at most MAX_HEADER_BYTES)
    9       H     header: zlib-compressed UTF-8 JSON (decompressed at most MAX_JSON_BYTES)
    9+H     8     payload length P (u64, must equal the bytes that remain minus 4)
    17+H    P     payload: ANS words (u32 LE), or the classical blob when no image uses the model
    17+H+P  4     CRC-32 of every byte before it

The header (see ``Header``) names the model and its weights hash, T, the latent grid, the
torch version / dtype / thread count that encoded it, the images (shapes run-length
coded, names as a pattern or a list, per-image coding method), the chunk schedule of the
bits-back chain, the sizes of the classically coded images, and a SHA-256 of all pixels.
"""
from __future__ import annotations

import json
import struct
import zlib
from dataclasses import asdict, dataclass, field

from ..errors import FormatError

MAGIC = b"VDMC"
VERSION = 1
MAX_HEADER_BYTES = 16 << 20
MAX_JSON_BYTES = 64 << 20
MAX_IMAGES = 10_000_000
MAX_SIDE = 1 << 16
MAX_TOTAL_SUBPIXELS = 1 << 32
MAX_STEPS = 100_000
METHODS = ("vdm", "png", "webp")


@dataclass(frozen=True)
class Header:
    model: str | None               # model name (None when no image uses the model)
    model_sha256: str | None
    steps: int                      # T
    grid_bits: int
    torch: str
    dtype: str
    threads: int
    shapes: list                    # run-length: [[H, W, C, count], ...] in image order
    names: dict                     # {"sequence": [prefix, digits, suffix]} or {"list": [...]}
    methods: list                   # run-length: [["vdm" | "png" | "webp", count], ...]
    classical_sizes: list           # bytes of each classically coded image, in order
    chunks: list                    # [[start, size], ...] over the vdm images, encode order
    init_pad: int                   # zero bytes padding the classical blob to whole words
    pixels_sha256: str
    extra: dict = field(default_factory=dict)

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


def run_length(values: list) -> list:
    out: list = []
    for v in values:
        if out and out[-1][:-1] == list(v if isinstance(v, tuple) else (v,)):
            out[-1][-1] += 1
        else:
            out.append(list(v if isinstance(v, tuple) else (v,)) + [1])
    return out


def pack(header: Header, payload: bytes) -> bytes:
    hjson = json.dumps(asdict(header), separators=(",", ":")).encode()
    hz = zlib.compress(hjson, 9)
    body = MAGIC + struct.pack("<BI", VERSION, len(hz)) + hz + struct.pack("<Q", len(payload)) + payload
    return body + struct.pack("<I", zlib.crc32(body))


def unpack(blob: bytes) -> tuple[Header, bytes]:
    """Parse and validate a container; every failure is a FormatError with one line."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise FormatError("compressed data must be bytes")
    blob = bytes(blob)
    if len(blob) < 4 or blob[:4] != MAGIC:
        raise FormatError("not a vdmcodec file (bad magic bytes)")
    if len(blob) < 9:
        raise FormatError("truncated file (header missing)")
    version, hlen = struct.unpack_from("<BI", blob, 4)
    if version != VERSION:
        raise FormatError(f"unsupported format version {version} (this build reads version {VERSION})")
    if hlen > MAX_HEADER_BYTES:
        raise FormatError(f"header length {hlen} exceeds the limit {MAX_HEADER_BYTES}")
    if len(blob) < 9 + hlen + 8 + 4:
        raise FormatError("truncated file")
    (plen,) = struct.unpack_from("<Q", blob, 9 + hlen)
    if 9 + hlen + 8 + plen + 4 != len(blob):
        raise FormatError("truncated or extended file (payload length does not match the file size)")
    (crc,) = struct.unpack_from("<I", blob, len(blob) - 4)
    if zlib.crc32(blob[:-4]) != crc:
        raise FormatError("corrupted file (CRC-32 mismatch)")
    try:
        d = zlib.decompressobj()
        hjson = d.decompress(blob[9 : 9 + hlen], MAX_JSON_BYTES)
        if d.unconsumed_tail or not d.eof:
            raise FormatError("header too large or truncated")
        h = json.loads(hjson.decode())
    except FormatError:
        raise
    except (zlib.error, UnicodeDecodeError, ValueError):
        raise FormatError("corrupted header") from None
    header = _validate(h)
    return header, blob[9 + hlen + 8 : 9 + hlen + 8 + plen]


def _validate(h) -> Header:
    def bad(what):
        raise FormatError(f"invalid header: {what}")

    if not isinstance(h, dict):
        bad("not an object")
    names = {f for f in Header.__dataclass_fields__}
    if set(h) - names or (names - {"extra"}) - set(h):
        bad("unexpected or missing fields")

    def is_int(v, lo, hi):
        return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi

    if not is_int(h["steps"], 0, MAX_STEPS) or not is_int(h["grid_bits"], 0, 16):
        bad("steps / grid_bits out of range")
    if not is_int(h["threads"], 0, 1 << 16) or not is_int(h["init_pad"], 0, 3):
        bad("threads / init_pad out of range")
    for key in ("torch", "dtype", "pixels_sha256"):
        if not isinstance(h[key], str) or len(h[key]) > 200:
            bad(key)
    for key in ("model", "model_sha256"):
        if h[key] is not None and (not isinstance(h[key], str) or len(h[key]) > 4096):
            bad(key)
    shapes = h["shapes"]
    if not isinstance(shapes, list) or len(shapes) > MAX_IMAGES:
        bad("shapes")
    total, count = 0, 0
    for r in shapes:
        if not (isinstance(r, list) and len(r) == 4 and is_int(r[0], 1, MAX_SIDE) and is_int(r[1], 1, MAX_SIDE)
                and r[2] in (1, 3) and is_int(r[3], 1, MAX_IMAGES)):
            bad("shape entry")
        count += r[3]
        total += r[0] * r[1] * r[2] * r[3]
    if count > MAX_IMAGES or total > MAX_TOTAL_SUBPIXELS:
        bad(f"claims {count} images / {total} subpixels, over the limits")
    methods = h["methods"]
    if not isinstance(methods, list) or not all(isinstance(r, list) and len(r) == 2 and r[0] in METHODS and is_int(r[1], 1, MAX_IMAGES) for r in methods):
        bad("methods")
    if sum(r[1] for r in methods) != count:
        bad("methods do not cover the images")
    n_classical = sum(r[1] for r in methods if r[0] != "vdm")
    cs = h["classical_sizes"]
    if not isinstance(cs, list) or len(cs) != n_classical or not all(is_int(v, 1, 1 << 40) for v in cs):
        bad("classical_sizes")
    n_vdm = count - n_classical
    chunks = h["chunks"]
    if not isinstance(chunks, list) or not all(isinstance(c, list) and len(c) == 2 and is_int(c[0], 0, MAX_IMAGES) and is_int(c[1], 1, MAX_IMAGES) for c in chunks):
        bad("chunks")
    pos = 0
    for start, size in chunks:
        if start != pos:
            bad("chunks are not contiguous")
        pos += size
    if pos != n_vdm:
        bad("chunks do not cover the model-coded images")
    nm = h["names"]
    if not isinstance(nm, dict) or len(nm) != 1:
        bad("names")
    if "sequence" in nm:
        seq = nm["sequence"]
        if not (isinstance(seq, list) and len(seq) == 3 and isinstance(seq[0], str) and len(seq[0]) < 256
                and is_int(seq[1], 1, 12) and isinstance(seq[2], str) and len(seq[2]) < 256):
            bad("names sequence")
    elif "list" in nm:
        if not isinstance(nm["list"], list) or len(nm["list"]) != count or not all(isinstance(s, str) and 0 < len(s) < 4096 for s in nm["list"]):
            bad("names list")
    else:
        bad("names")
    if not isinstance(h.get("extra", {}), dict):
        bad("extra")
    return Header(**h)
