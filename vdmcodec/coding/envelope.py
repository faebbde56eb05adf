"""Image records (container version 8): what an image file holds beyond the 8-bit L / RGB
planes the codec codes, so that the file can be rebuilt exactly.

A record covers ``frames`` consecutive codec images (one per frame, each the frame's colour
planes: palette indices for P, 0 / 255 for 1-bit, the high bytes of a 16-bit image) and
holds the original mode, the palette and transparency, the animation timing, the planes
stored outside the model (alpha; the low bytes of 16-bit samples), each coded by a
classical lossless coder (classical.py), and the metadata (EXIF, ICC, XMP, comments, PNG
ancillary chunks verbatim). Images without a record are plain 8-bit L / RGB images.

Binary layout (docs/format.md, "Image records"): varint record count, then per record a
varint gap (its first image minus the previous record's end), a mode byte, a flags byte and
a varint frame count, then the fields the flags name. Every count and length is checked
against the bytes that remain and against the header's images before it is used; every
failure is a FormatError.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, replace

from ..errors import FormatError
from . import classical
from .container import MAX_NAME_BYTES, Reader, encode_str, encode_varint, pack, unpack

# mode -> (colour channels the codec codes, channels of each extra plane per frame)
MODES = {
    "L": (1, ()), "RGB": (3, ()), "1": (1, ()), "P": (1, ()),
    "LA": (1, (1,)), "RGBA": (3, (1,)),
    # 16-bit samples: the codec codes the high bytes; the extra planes are the low bytes
    # (as (low - high) mod 256: zero where a 16-bit image is an 8-bit one scaled by 257),
    # then for alpha its high bytes and its low bytes the same way
    "I;16": (1, (1,)), "RGB;16": (3, (3,)), "LA;16": (1, (1, 1, 1)), "RGBA;16": (3, (3, 1, 1)),
}
MODE_CODES = tuple(MODES)
SIXTEEN_BIT = ("I;16", "RGB;16", "LA;16", "RGBA;16")
METADATA_KINDS = ("exif", "icc", "xmp", "comment")  # codes 0-3; PNG chunks: 4 + slot
PNG_SLOTS = 3          # a PNG chunk's place: 0 before PLTE, 1 before the image data, 2 after it
REGENERATED_CHUNKS = (b"IHDR", b"IDAT", b"IEND", b"tRNS", b"acTL", b"fcTL", b"fdAT")  # written from the record
MAX_METADATA_BYTES = 1 << 28
ZLIB_MAX_RATIO = 1032  # deflate's largest expansion: a claimed size above it is forged

_F_SOURCE, _F_ANIMATED, _F_DEFAULT_IMAGE, _F_PALETTE, _F_TRANSPARENCY, _F_METADATA = 1, 2, 4, 8, 16, 32


@dataclass(frozen=True)
class Plane:
    """One extra plane of one frame, coded by a classical lossless coder."""

    method: str   # one of classical.CLASSICAL_METHODS
    data: bytes


@dataclass(frozen=True)
class Metadata:
    kind: str            # "exif", "icc", "xmp", "comment" or "png" (an ancillary chunk, verbatim)
    data: bytes
    chunk: bytes = b""   # "png": the chunk type (4 ASCII letters)
    slot: int = 0        # "png": 0 before PLTE, 1 before the image data, 2 after it


@dataclass(frozen=True)
class Animation:
    plays: int                              # times to play (APNG num_plays; 0: forever)
    delays: tuple[tuple[int, int], ...]     # per animation frame: (num, den), num / den seconds
    default_image: bool = False             # the first frame is a still shown outside the animation


@dataclass(frozen=True)
class Record:
    start: int                   # the first codec image of this file
    mode: str                    # a key of MODES
    frames: int = 1
    source: str = ""             # the input's name where it differs from the restored file's
    palette: bytes = b""         # mode P: RGB triples
    transparency: bytes = b""    # PNG tRNS payload (P: alpha per palette entry; L / RGB: the transparent colour)
    animation: Animation | None = None
    planes: tuple[Plane, ...] = ()        # frame-major: frames x len(MODES[mode][1])
    metadata: tuple[Metadata, ...] = ()

    @property
    def stop(self) -> int:
        return self.start + self.frames


# ---- writing --------------------------------------------------------------------------
def _metadata_bytes(m: Metadata) -> bytes:
    kind = 4 + m.slot if m.kind == "png" else METADATA_KINDS.index(m.kind)
    out = bytearray([kind]) + (m.chunk if m.kind == "png" else b"")
    packed = zlib.compress(m.data, 9)
    if len(packed) + 8 < len(m.data):
        out += bytes([1]) + encode_varint(len(m.data)) + encode_varint(len(packed)) + packed
    else:
        out += bytes([0]) + encode_varint(len(m.data)) + m.data
    return bytes(out)


def encode(records: list[Record]) -> bytes:
    """The record section's bytes (records in image order, not overlapping)."""
    out, end = bytearray(encode_varint(len(records))), 0
    for r in records:
        if r.start < end:
            raise ValueError("image records overlap or are out of order")
        a = r.animation
        flags = ((_F_SOURCE if r.source else 0) | (_F_ANIMATED if a else 0)
                 | (_F_DEFAULT_IMAGE if a and a.default_image else 0) | (_F_PALETTE if r.palette else 0)
                 | (_F_TRANSPARENCY if r.transparency else 0) | (_F_METADATA if r.metadata else 0))
        out += encode_varint(r.start - end) + bytes([MODE_CODES.index(r.mode), flags]) + encode_varint(r.frames)
        if r.source:
            out += encode_str(r.source, MAX_NAME_BYTES)
        if a:
            out += encode_varint(a.plays) + b"".join(encode_varint(n) + encode_varint(d) for n, d in a.delays)
        if r.palette:
            out += encode_varint(len(r.palette) // 3) + r.palette
        if r.transparency:
            out += encode_varint(len(r.transparency)) + r.transparency
        for p in r.planes:
            out += bytes([classical.CLASSICAL_METHODS.index(p.method)]) + encode_varint(len(p.data)) + p.data
        if r.metadata:
            out += encode_varint(len(r.metadata)) + b"".join(_metadata_bytes(m) for m in r.metadata)
        end = r.stop
    return bytes(out)


def attach(blob: bytes, records: list[Record]) -> bytes:
    """An archive ``blob`` with ``records`` added (checked against its images as a reader
    would); unchanged when there are none."""
    if not records:
        return blob
    header, payload = unpack(blob)
    data = encode(records)
    parse(data, header.image_shapes())  # never write what we would refuse to read
    return pack(replace(header, envelope=data), payload)


# ---- reading --------------------------------------------------------------------------
class _RecordReader(Reader):
    def bad(self, what: str):
        raise FormatError(f"invalid image record: {what}")


def _parse_metadata(r: _RecordReader) -> Metadata:
    kind = r.byte("metadata kind")
    if kind >= len(METADATA_KINDS) + PNG_SLOTS:
        r.bad(f"unknown metadata kind {kind}")
    chunk, slot = b"", 0
    if kind >= len(METADATA_KINDS):
        chunk, slot = r.take(4, "chunk type"), kind - len(METADATA_KINDS)
        critical = chunk[:1].isupper() and chunk != b"PLTE"  # PLTE: a truecolour image's suggested palette
        if not chunk.isalpha() or not chunk.isascii() or chunk in REGENERATED_CHUNKS or critical:
            r.bad(f"PNG chunk type {chunk!r} cannot be kept as metadata")
    packing = r.byte("metadata packing")
    if packing > 1:
        r.bad(f"unknown metadata packing {packing}")
    size = r.varint("metadata size", MAX_METADATA_BYTES)
    if packing == 0:
        data = r.take(size, "metadata")
    else:
        stored = r.varint("packed metadata size", len(r.data) - r.pos)
        if size > ZLIB_MAX_RATIO * stored + 64:
            r.bad("packed metadata claims more than deflate can expand to")
        z = zlib.decompressobj()
        try:
            data = z.decompress(r.take(stored, "packed metadata"), size)
        except zlib.error:
            r.bad("packed metadata is not a deflate stream")
        if len(data) != size or not z.eof or z.unconsumed_tail or z.unused_data:
            r.bad("packed metadata does not unpack to its size")
    return Metadata("png" if chunk else METADATA_KINDS[kind], data, chunk, slot)


def parse(data: bytes, shapes: list[tuple[int, int, int]]) -> list[Record]:
    """The records of a section, checked against the header's image ``shapes``."""
    r = _RecordReader(data)
    records, end = [], 0
    for _ in range(r.count("record count", len(shapes), 4)):
        start = end + r.varint("record gap", len(shapes))
        code, flags = r.byte("mode"), r.byte("flags")
        if code >= len(MODE_CODES):
            r.bad(f"unknown mode code {code}")
        if flags >= 2 * _F_METADATA or (flags & _F_DEFAULT_IMAGE and not flags & _F_ANIMATED):
            r.bad("unknown flags")
        mode = MODE_CODES[code]
        frames = r.varint("frame count", len(shapes))
        if frames < 1 or start + frames > len(shapes):
            r.bad("frames beyond the archive's images")
        if frames > 1 and not flags & _F_ANIMATED:
            r.bad("several frames without animation timing")
        first = shapes[start]
        channels, extra = MODES[mode]
        if any(shapes[k] != first for k in range(start, start + frames)) or first[2] != channels:
            r.bad(f"frames do not match mode {mode}")
        source = r.string("source name", MAX_NAME_BYTES) if flags & _F_SOURCE else ""
        animation = None
        if flags & _F_ANIMATED:
            plays = r.varint("play count", (1 << 31) - 1)
            default = bool(flags & _F_DEFAULT_IMAGE)
            n = frames - default
            if n < 1:
                r.bad("an animation without frames")
            if 2 * n > len(r.data) - r.pos:
                r.bad("more frame delays than the section holds")
            delays = tuple((r.varint("delay numerator", 0xFFFF), r.varint("delay denominator", 0xFFFF)) for _ in range(n))
            animation = Animation(plays, delays, default)
        palette = b""
        if flags & _F_PALETTE:
            entries = r.varint("palette entries", 256)
            if entries < 1:
                r.bad("empty palette")
            palette = r.take(3 * entries, "palette")
        if (mode == "P") != bool(palette):
            r.bad("a palette goes with mode P, and only with it")
        transparency = b""
        if flags & _F_TRANSPARENCY:
            transparency = r.take(r.varint("transparency size", 256), "transparency")
            allowed = {"P": range(1, len(palette) // 3 + 1), "1": (2,), "L": (2,), "RGB": (6,), "I;16": (2,),
                       "RGB;16": (6,)}
            if len(transparency) not in allowed.get(mode, ()):
                r.bad(f"transparency of {len(transparency)} bytes on mode {mode}")
        planes = []
        for k in range(frames * len(extra)):
            m = r.byte("plane method")
            if m >= len(classical.CLASSICAL_METHODS):
                r.bad(f"unknown plane method {m}")
            size = r.varint("plane size", len(r.data) - r.pos)
            if size < 1:
                r.bad("empty plane")
            planes.append(Plane(classical.CLASSICAL_METHODS[m], r.take(size, "plane")))
        metadata = ()
        if flags & _F_METADATA:
            metadata = tuple(_parse_metadata(r) for _ in range(r.count("metadata count", 1 << 20, 3)))
            if mode == "P" and any(m.chunk == b"PLTE" for m in metadata):
                r.bad("a second palette chunk on a palette image")
        records.append(Record(start, mode, frames, source, palette, transparency, animation, tuple(planes), metadata))
        end = start + frames
    if r.pos != len(data):
        r.bad(f"{len(data) - r.pos} unread bytes at the end")
    return records


def records_of(header) -> list[Record]:
    """The records of an unpacked archive's header (none before version 8)."""
    return parse(header.envelope, header.image_shapes()) if header.envelope else []
