"""The .vdmc file around the header (header.py): ``frame`` writes it, ``pack`` writes a
``Header`` it has validated (validation.py), ``unpack`` reads and validates one.

Layout (see docs/format.md; integers are unsigned LEB128 varints unless stated):

    offset  size  field
    0       4     magic b"VDMC"
    4       1     format version (10 where an image is coded by the ``ctx`` context model, else 9
                  where a chunk has its own latent grid, else 8 with image records, else 7; 6
                  has no JPEG XL, 5 nor channel correlations, 4 nor structure priors, 3 nor
                  level times)
    5       v     header length H (varint, at most MAX_HEADER_BYTES and the bytes that remain)
    5+v     H     header (``Header``), binary, every field bounds-checked
    (versions 8-10) varint length E, then E bytes: the image records (coding/envelope.py:
                  original modes, palettes, frames, metadata, alpha and 16-bit planes); in
                  versions 9 and 10, E = 0 where there are none
            P     payload: ANS words (u32 LE), or the classical blob when no image uses the model
    end-4   4     CRC-32 (u32 LE) of every byte before it
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import replace

from ...errors import FormatError
from .header import (CHUNK_GRID_VERSION, CONTEXT_VERSION, ENVELOPE_VERSION, MAGIC, MAX_HEADER_BYTES, READABLE_VERSIONS,
                     VERSION, Header, Reader, encode_header, encode_varint, parse_header)
from .validation import validate


def frame(header_bytes: bytes, payload: bytes, envelope: bytes = b"", version: int | None = None) -> bytes:
    """The file's bytes at ``version`` (None: version 7 without image records, 8 with them)."""
    version = version or (ENVELOPE_VERSION if envelope else VERSION)
    if version < ENVELOPE_VERSION and envelope:
        raise ValueError(f"format version {version} has no image records")
    records = encode_varint(len(envelope)) + envelope if version >= ENVELOPE_VERSION else b""
    body = MAGIC + bytes([version]) + encode_varint(len(header_bytes)) + header_bytes + records + payload
    return body + struct.pack("<I", zlib.crc32(body))


def pack(header: Header, payload: bytes) -> bytes:
    """The file of ``header`` and ``payload``, refused (ValueError / FormatError) if it would not read back."""
    hb = encode_header(header)
    validate(parse_header(hb, header.format_version))  # never write what we would refuse to read
    return frame(hb, payload, header.envelope, header.format_version)


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
    r = Reader(blob[:-4])
    r.pos = 5
    hlen = r.varint("header length", MAX_HEADER_BYTES)
    start = r.pos
    if hlen > len(blob) - 4 - start:
        raise FormatError("truncated file (header length exceeds the file)")
    header = validate(parse_header(blob[start : start + hlen], version))
    if version >= ENVELOPE_VERSION:
        r.pos = start + hlen
        elen = r.varint("image records length", len(blob))
        if not (1 if version == ENVELOPE_VERSION else 0) <= elen <= len(blob) - 4 - r.pos:
            raise FormatError("truncated file (image records length exceeds the file)" if elen else
                              "invalid header: version 8 without image records")
        if version == CHUNK_GRID_VERSION and not header.chunk_grids:
            raise FormatError("invalid header: version 9 without a chunk on its own grid")
        if version >= CONTEXT_VERSION and all(m != "ctx" for m, _ in header.methods):  # runs, not every image
            raise FormatError("invalid header: version 10 without a ctx image")
        header = replace(header, envelope=r.take(elen, "image records") if elen else b"")
        return header, blob[r.pos : -4]
    return header, blob[start + hlen : -4]
