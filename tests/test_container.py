"""The .vdmc container: pack/unpack round trips, and unpack's refusal of anything it cannot
bound (sizes, counts, lengths) before allocating for it. No model needed: a file whose
images are all classical decodes without one."""
from __future__ import annotations

import dataclasses
import json
import struct
import tracemalloc
import zlib

import numpy as np
import pytest

from vdmcodec.coding import classical, container
from vdmcodec.coding.codec import decode_payload, decompress_file_bytes, pixels_digest
from vdmcodec.coding.container import MAX_IMAGES, MAX_SIDE, MAX_STEPS, Header, pack, run_length, unpack
from vdmcodec.errors import FormatError, ModelError


def header(**over) -> Header:
    base = dict(model=None, model_sha256=None, steps=0, grid_bits=6, torch="2.13.0+cpu", dtype="float32", threads=1,
                shapes=[[2, 3, 1, 2], [4, 1, 3, 1]], names={"sequence": ["img_", 3, ".png"]},
                methods=[["png", 2], ["webp", 1]], classical_sizes=[10, 11, 12], chunks=[], init_pad=0,
                pixels_sha256="ab" * 32, extra={"squeeze": [[1, 2], [0, 1]]})
    base.update(over)
    return Header(**base)


def classical_file(images: list[np.ndarray], names=None) -> bytes:
    """A valid all-classical container built by hand (the codec's layout, no model)."""
    best = [classical.encode_best(im) for im in images]
    h = header(shapes=run_length([im.shape for im in images]), methods=run_length([b[0] for b in best]),
               classical_sizes=[len(b[1]) for b in best], pixels_sha256=pixels_digest(images),
               names={"list": names} if names else {"sequence": ["", 5, ".png"]}, extra={})
    return pack(h, b"".join(b[1] for b in best))


def raw_container(header_json: bytes, payload: bytes = b"", *, hz: bytes | None = None) -> bytes:
    """A container around arbitrary header JSON (bypassing Header), with a valid CRC."""
    hz = zlib.compress(header_json) if hz is None else hz
    body = container.MAGIC + struct.pack("<BI", container.VERSION, len(hz)) + hz + struct.pack("<Q", len(payload)) + payload
    return body + struct.pack("<I", zlib.crc32(body))


# ---- round trips -----------------------------------------------------------------------------
@pytest.mark.parametrize("names", [{"sequence": ["img_", 3, ".png"]}, {"list": ["a.png", "b/c.png", "ü d.png"]}],
                         ids=["sequence", "list"])
@pytest.mark.parametrize("payload", [b"", b"\x00", bytes(range(256)) * 3])
def test_header_round_trip(names, payload):
    h = header(names=names)
    h2, p2 = unpack(pack(h, payload))
    assert h2 == h and p2 == payload
    assert h2.count == 3
    assert h2.image_shapes() == [(2, 3, 1), (2, 3, 1), (4, 1, 3)]
    assert h2.image_methods() == ["png", "png", "webp"]
    expected = ["img_000.png", "img_001.png", "img_002.png"] if "sequence" in names else names["list"]
    assert h2.image_names() == expected


def test_unpack_accepts_bytearray_and_memoryview():
    blob = pack(header(), b"xyz")
    assert unpack(bytearray(blob))[1] == b"xyz"
    assert unpack(memoryview(blob))[1] == b"xyz"


def test_run_length():
    assert run_length([]) == []
    assert run_length(["png", "png", "vdm", "png"]) == [["png", 2], ["vdm", 1], ["png", 1]]
    assert run_length([(2, 3, 1), (2, 3, 1), (1, 1, 3)]) == [[2, 3, 1, 2], [1, 1, 3, 1]]


def test_classical_file_decodes_without_a_model():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (3, 5, 1), dtype=np.uint8), rng.integers(0, 256, (2, 2, 3), dtype=np.uint8)]
    out = decompress_file_bytes(classical_file(images, names=["x.png", "y.png"]))
    assert [n for _, n in out] == ["x.png", "y.png"]
    for (a, _), b in zip(out, images):
        np.testing.assert_array_equal(a, b)


# ---- refusals ---------------------------------------------------------------------------------
def test_short_and_foreign_blobs():
    blob = pack(header(), b"payload!")
    for cut in range(len(blob)):
        with pytest.raises(FormatError):
            unpack(blob[:cut])
    for bad in (b"\x89PNG\r\n\x1a\n" + blob[8:], b"vdmc" + blob[4:], blob + b"\0"):
        with pytest.raises(FormatError):
            unpack(bad)
    with pytest.raises(FormatError):
        unpack("VDMC...")  # type: ignore[arg-type]


@pytest.mark.parametrize("version", [0, 2, 255])
def test_wrong_version(version):
    blob = bytearray(pack(header(), b""))
    blob[4] = version
    with pytest.raises(FormatError, match="version"):
        unpack(bytes(blob))


def test_length_fields_are_bounded():
    blob = pack(header(), b"abcd")
    hlen = int.from_bytes(blob[5:9], "little")
    huge_header = blob[:5] + struct.pack("<I", 0xFFFFFFFF) + blob[9:]
    with pytest.raises(FormatError, match="header length"):
        unpack(huge_header)
    for plen in (0, 3, 5, 2**32, 2**64 - 1):
        forged = blob[: 9 + hlen] + struct.pack("<Q", plen) + blob[9 + hlen + 8 :]
        with pytest.raises(FormatError):
            unpack(forged)


def test_header_zlib_bomb_is_refused_within_the_json_limit():
    """A header that inflates past MAX_JSON_BYTES: refused after inflating at most the limit."""
    z = zlib.compressobj(9)
    chunk = b" " * (1 << 20)
    hz = b"".join(z.compress(chunk) for _ in range((container.MAX_JSON_BYTES >> 20) + 2)) + z.flush()
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match="too large"):
            unpack(raw_container(b"", hz=hz))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * container.MAX_JSON_BYTES


@pytest.mark.parametrize("what,over", [
    ("too many images", dict(shapes=[[1, 1, 1, MAX_IMAGES + 1]], methods=[["png", MAX_IMAGES + 1]])),
    ("too many images in total", dict(shapes=[[1, 1, 1, MAX_IMAGES]] * 2, methods=[["png", 2 * MAX_IMAGES]])),
    ("side too long", dict(shapes=[[MAX_SIDE + 1, 1, 1, 1]], methods=[["png", 1]])),
    ("too many subpixels", dict(shapes=[[MAX_SIDE, MAX_SIDE, 3, 1]], methods=[["png", 1]])),
    ("too many subpixels over images", dict(shapes=[[MAX_SIDE, MAX_SIDE, 1, 2]], methods=[["png", 2]])),
    ("steps", dict(steps=MAX_STEPS + 1)),
    ("steps negative", dict(steps=-1)),
    ("steps bool", dict(steps=True)),
    ("steps float", dict(steps=2.0)),
    ("grid_bits", dict(grid_bits=17)),
    ("threads", dict(threads=-1)),
    ("init_pad", dict(init_pad=4)),
    ("channels", dict(shapes=[[2, 3, 2, 2], [4, 1, 3, 1]])),
    ("zero side", dict(shapes=[[0, 3, 1, 2], [4, 1, 3, 1]])),
    ("zero count", dict(shapes=[[2, 3, 1, 0], [4, 1, 3, 3]])),
    ("methods do not cover", dict(methods=[["png", 2]])),
    ("unknown method", dict(methods=[["jpeg", 2], ["webp", 1]])),
    ("classical sizes count", dict(classical_sizes=[10, 11])),
    ("classical size zero", dict(classical_sizes=[10, 0, 12])),
    ("classical size huge", dict(classical_sizes=[10, 11, 2**41])),
    ("chunks without vdm images", dict(chunks=[[0, 1]])),
    ("chunks not contiguous", dict(methods=[["vdm", 2], ["webp", 1]], classical_sizes=[12], chunks=[[1, 1]])),
    ("chunks short", dict(methods=[["vdm", 2], ["webp", 1]], classical_sizes=[12], chunks=[[0, 1]])),
    ("chunks huge", dict(methods=[["vdm", 2], ["webp", 1]], classical_sizes=[12], chunks=[[0, MAX_IMAGES + 1]])),
    ("names list length", dict(names={"list": ["a", "b"]})),
    ("names list empty name", dict(names={"list": ["a", "", "c"]})),
    ("names two kinds", dict(names={"list": ["a", "b", "c"], "sequence": ["", 5, ""]})),
    ("names digits", dict(names={"sequence": ["", 13, ""]})),
    ("names unknown", dict(names={"glob": "*"})),
    ("model type", dict(model=7)),
    ("torch huge", dict(torch="x" * 201)),
    ("extra type", dict(extra=[])),
])
def test_unpack_refuses_headers_it_cannot_bound(what, over):
    blob = pack(header(**over), b"")
    tracemalloc.start()
    try:
        with pytest.raises(FormatError):
            unpack(blob)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1e6, f"{what}: unpack allocated {peak} bytes"


@pytest.mark.parametrize("doc", [
    b"[]", b"null", b"7", b'"s"', b"{}", b"{", b"\xff\xfe",
    json.dumps({**dataclasses.asdict(header()), "surprise": 1}).encode(),
    json.dumps({k: v for k, v in dataclasses.asdict(header()).items() if k != "shapes"}).encode(),
])
def test_unpack_refuses_malformed_json(doc):
    with pytest.raises(FormatError):
        unpack(raw_container(doc))


NASTY = [None, True, -1, 0, 2**70, 1.5, float("nan"), "x", "", [], [[]], [[1, 2, 3, 4, 5]], {}, {"a": 1}]


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(Header)])
def test_hostile_field_values_give_format_error(field):
    """Every field, every type of hostile value: unpack and decode either refuse with
    FormatError (ModelError when a model is demanded) or, for values that are harmless,
    decode the original images. Nothing else escapes."""
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (3, 4, 1), dtype=np.uint8), rng.integers(0, 256, (3, 4, 1), dtype=np.uint8)]
    good = classical_file(images)
    h, payload = unpack(good)
    for value in NASTY:
        doc = {**dataclasses.asdict(h), field: value}
        blob = raw_container(json.dumps(doc).encode(), payload)
        try:
            h2, p2 = unpack(blob)
            out = decode_payload(h2, p2, None)
        except (FormatError, ModelError):
            continue
        for (a, _), b in zip(out, images):
            np.testing.assert_array_equal(a[..., None] if a.ndim == 2 else a, b)
