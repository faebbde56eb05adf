"""Image records (container version 8): encode / parse round trips, and a FormatError (one
line, no other exception) for every truncated or forged record section."""
from __future__ import annotations

import zlib
from dataclasses import replace

import numpy as np
import pytest

from vdmcodec.coding import container, envelope
from vdmcodec.coding.codec import decompress_file_bytes
from vdmcodec.coding.container import pack, unpack
from vdmcodec.coding.envelope import Animation, Metadata, Plane, Record
from vdmcodec.errors import FormatError
from vdmcodec.imagefile import read_image_file, restore_files

from tests.test_container import classical_file


def _archive():
    """A classical archive of 4 images (P indices, LA's L plane, and a 2-frame RGB animation)."""
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 4, (6, 5, 1), dtype=np.uint8), rng.integers(0, 256, (6, 5, 1), dtype=np.uint8),
            rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)]
    blob = classical_file(imgs, names=["p.png", "la.png", "anim.png", "anim.png"])
    from vdmcodec.coding import classical

    alpha = rng.integers(0, 256, (6, 5, 1), dtype=np.uint8)
    records = [
        Record(0, "P", palette=bytes(range(12)), transparency=b"\x00\x80",
               metadata=(Metadata("png", b"Title\0hi", b"tEXt", 1), Metadata("exif", b"Exif\0\0" + bytes(300)))),
        Record(1, "LA", planes=(Plane(*classical.encode_best(alpha)),), source="la.tif"),
        Record(2, "RGB", frames=2, animation=Animation(0, ((1, 10), (3, 100)))),
    ]
    return imgs, alpha, blob, records


def test_records_round_trip_and_rebuild_files():
    imgs, alpha, blob, records = _archive()
    full = envelope.attach(blob, records)
    assert blob[4] == 7 and full[4] == 8
    header, _ = unpack(full)
    assert envelope.records_of(header) == records
    files = restore_files(header, decompress_file_bytes(full))
    assert [f.name for f in files] == ["p.png", "la.png", "anim.png"] and files[1].source == "la.tif"
    back = read_image_file(files[1].data, "la.png")  # the LA file holds the alpha plane
    assert back.record.mode == "LA" and np.array_equal(back.planes[0], imgs[1])
    back = read_image_file(files[2].data, "anim.png")
    assert back.record.animation == records[2].animation and len(back.planes) == 2
    back = read_image_file(files[0].data, "p.png")
    assert back.record.palette == bytes(range(12)) and back.record.transparency == b"\x00\x80"
    assert Metadata("png", b"Title\0hi", b"tEXt", 1) in back.record.metadata


def test_every_truncation_of_the_records_is_a_format_error():
    imgs, _, blob, records = _archive()
    header, payload = unpack(blob)
    data = envelope.encode(records)
    shapes = header.image_shapes()
    for k in range(len(data)):
        with pytest.raises(FormatError):
            envelope.parse(data[:k], shapes)
    with pytest.raises(FormatError):
        envelope.parse(data + b"\0", shapes)
    # and in a file: the section's length is checked against the bytes there
    full = bytearray(envelope.attach(blob, records))
    body = bytes(full[:-4])
    for cut in (len(body) - len(payload) - 3, len(body) - len(payload) - len(data) // 2):
        forged = body[:cut]
        with pytest.raises(FormatError):
            unpack(forged + zlib.crc32(forged).to_bytes(4, "little"))


@pytest.mark.parametrize("forge", ["mode", "frames_beyond", "channels", "palette_on_rgb", "no_palette", "trns_too_long",
                                   "plane_method", "chunk_type", "critical_chunk", "deflate_bomb", "bad_deflate",
                                   "flags", "delay", "overlap"])
def test_forged_records_are_refused(forge):
    imgs, _, blob, records = _archive()
    header, payload = unpack(blob)
    shapes = header.image_shapes()
    p, la, anim = records
    if forge == "mode":
        data = bytearray(envelope.encode([p]))
        data[2] = 200  # the mode byte
        data = bytes(data)
    elif forge == "frames_beyond":
        data = envelope.encode([replace(anim, frames=3, animation=Animation(0, ((1, 1),) * 3))])
    elif forge == "channels":
        data = envelope.encode([replace(p, mode="RGB", palette=b"", transparency=b"")])
    elif forge == "palette_on_rgb":
        data = envelope.encode([replace(anim, palette=b"\0\0\0")])
    elif forge == "no_palette":
        data = envelope.encode([replace(p, palette=b"", transparency=b"")])
    elif forge == "trns_too_long":
        data = envelope.encode([replace(p, transparency=bytes(5))])
    elif forge == "plane_method":
        data = envelope.encode([replace(la, planes=(Plane("png", b"x"),))]).replace(b"\x00\x01x", b"\x09\x01x")
    elif forge == "chunk_type":
        data = envelope.encode([replace(p, metadata=(Metadata("png", b"", b"IDAT", 1),))])
    elif forge == "critical_chunk":
        data = envelope.encode([replace(p, metadata=(Metadata("png", b"", b"ABCD", 1),))])
    elif forge == "deflate_bomb":
        packed = zlib.compress(bytes(1000))
        data = envelope.encode([replace(p, metadata=())])
        data = data[:3] + bytes([data[3] | 32]) + data[4:]  # set the metadata flag (byte 3)
        data += b"\x01" + b"\x00" + b"\x01" + container.encode_varint(1 << 27) + container.encode_varint(len(packed)) + packed
    elif forge == "bad_deflate":
        data = envelope.encode([replace(p, metadata=())])
        data = data[:3] + bytes([data[3] | 32]) + data[4:]
        data += b"\x01" + b"\x00" + b"\x01" + container.encode_varint(10) + container.encode_varint(4) + b"junk"
    elif forge == "flags":
        data = bytearray(envelope.encode([p]))
        data[3] |= 128
        data = bytes(data)
    elif forge == "delay":
        data = envelope.encode([replace(anim, animation=Animation(0, ((1, 10), (1 << 17, 100))))])
    else:  # a second record starting where the first one's frames are (gaps cannot go back): past the end
        data = b"\x02" + envelope.encode([anim])[1:] + envelope.encode([replace(anim, start=0)])[1:]
    with pytest.raises(FormatError):
        envelope.parse(data, shapes)
    forged = pack(replace(header, envelope=data), payload)  # pack checks the header only
    with pytest.raises(FormatError):
        restore_files(unpack(forged)[0], decompress_file_bytes(forged))


def test_version_8_without_records_is_refused():
    _, _, blob, records = _archive()
    header, payload = unpack(blob)
    hb = container.encode_header(header)
    body = container.MAGIC + bytes([8]) + container.encode_varint(len(hb)) + hb + b"\x00" + payload
    with pytest.raises(FormatError, match="without image records"):
        unpack(body + zlib.crc32(body).to_bytes(4, "little"))


def test_every_byte_flip_of_the_records_parses_or_is_a_format_error():
    """Damage the CRC does not see (a forged file): each byte of the section flipped in turn
    either still describes these images, and the files are rebuilt, or is a FormatError."""
    _, _, blob, records = _archive()
    header, payload = unpack(blob)
    images = decompress_file_bytes(blob)
    data = envelope.encode(records)
    outcomes = set()
    for k in range(len(data)):
        forged = bytearray(data)
        forged[k] ^= 0xFF
        try:
            restore_files(replace(header, envelope=bytes(forged)), images)
            outcomes.add("rebuilt")
        except FormatError:
            outcomes.add("refused")
    assert "refused" in outcomes
