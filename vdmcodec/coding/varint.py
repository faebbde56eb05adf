"""LEB128 varints, the container's integer encoding (docs/format.md): seven bits per byte,
least significant group first, the top bit set on every byte but the last. Reading them,
with bounds, is ``container.Reader.varint``."""
from __future__ import annotations


def encode_varint(v: int) -> bytes:
    """The varint of a non-negative integer."""
    if v < 0:
        raise ValueError(f"varint of a negative value {v}")
    out = bytearray()
    while True:
        b, v = v & 0x7F, v >> 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)
