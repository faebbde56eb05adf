"""The .vdmc container: pack/unpack round trips, and unpack's refusal of anything it cannot
bound (sizes, counts, lengths) before allocating for it. No model needed: a file whose
images are all classical decodes without one."""
from __future__ import annotations

import struct
import tracemalloc
import zlib
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vdmcodec.coding import classical, container
from vdmcodec.coding.archive import decode_payload, pixels_digest
from vdmcodec.coding.codec import decompress_file_bytes
from vdmcodec.coding.container import MAX_IMAGES, MAX_SIDE, MAX_STEPS, MAX_THREADS, Header, pack, run_length, unpack
from vdmcodec.errors import FormatError, ModelError


def header(**over) -> Header:
    base = dict(model=None, model_hash=None, steps=0, grid_bits=0, torch="", dtype="float32", threads=0,
                shapes=[[2, 3, 1, 2], [4, 1, 3, 1]], names={"sequence": ["img_", 3, ".png"]},
                methods=[["png", 2], ["webp", 1]], classical_sizes=[10, 11, 12], chunks=[], init_pad=0,
                pixels_hash="ab" * 8, squeeze=[[1, 2], [0, 1]])
    base.update(over)
    return Header(**base)


MODEL = dict(model="mnist", model_hash="0123456789abcdef", steps=128, grid_bits=6, torch="2.13.0+cpu", threads=1,
             methods=[["vdm", 2], ["webp", 1]], classical_sizes=[12], chunks=[[0, 1], [1, 1]], init_pad=3)


def classical_file(images: list[np.ndarray], names=None) -> bytes:
    """A valid all-classical container built by hand (the codec's layout, no model)."""
    best = [classical.encode_best(im) for im in images]
    h = header(shapes=run_length([im.shape for im in images]), methods=run_length([b[0] for b in best]),
               classical_sizes=[len(b[1]) for b in best], pixels_hash=pixels_digest(images),
               names={"list": names} if names else {"sequence": ["", 5, ".png"]}, squeeze=[])
    return pack(h, b"".join(b[1] for b in best))


def forge(h: Header, payload: bytes = b"") -> bytes:
    """A container around any header, unvalidated, with a correct CRC (a forged file)."""
    return container.frame(container.encode_header(h), payload)


# ---- round trips -----------------------------------------------------------------------------
@pytest.mark.parametrize("names", [{"sequence": ["img_", 3, ".png"]}, {"sequence": ["", 5, ".png"]},
                                   {"list": ["a.png", "b/c.png", "ü d.png"]}], ids=["sequence", "default", "list"])
@pytest.mark.parametrize("payload", [b"", b"\x00", bytes(range(256)) * 3])
@pytest.mark.parametrize("model", [False, True], ids=["classical", "model"])
def test_header_round_trip(names, payload, model):
    h = header(names=names, **(MODEL if model else {}))
    h2, p2 = unpack(pack(h, payload))
    assert h2 == h and p2 == payload
    assert h2.count == 3
    assert h2.image_shapes() == [(2, 3, 1), (2, 3, 1), (4, 1, 3)]
    assert h2.image_methods() == (["vdm", "vdm", "webp"] if model else ["png", "png", "webp"])
    assert h2.image_squeeze() == [True, True, False]
    expected = {"sequence": ["img_000.png", "img_001.png", "img_002.png"], "list": names.get("list")}
    if names == {"sequence": ["", 5, ".png"]}:
        expected["sequence"] = ["00000.png", "00001.png", "00002.png"]
    assert h2.image_names() == expected["list" if "list" in names else "sequence"]


def test_one_image_container_is_small():
    """What a single 28x28 digit pays for the container: magic, version, header, CRC."""
    h = header(shapes=[[28, 28, 1, 1]], methods=[["webp", 1]], classical_sizes=[214], names={"sequence": ["", 5, ".png"]},
               squeeze=[[1, 1]])
    assert len(pack(h, b"")) <= 32
    hm = header(**{**MODEL, "shapes": [[28, 28, 1, 1]], "methods": [["vdm", 1]], "classical_sizes": [], "chunks": [[0, 1]],
                   "init_pad": 0, "names": {"sequence": ["", 5, ".png"]}, "squeeze": []})
    assert len(pack(hm, b"")) <= 60


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


@pytest.mark.parametrize("version", [0, 1, 2, 11, 255])
def test_wrong_version(version):
    blob = bytearray(pack(header(), b""))
    blob[4] = version
    with pytest.raises(FormatError, match="version"):
        unpack(bytes(blob))


def test_jpeg_xl_is_read_from_version_7_only():
    """A JPEG XL image (method 5, format version 7) decodes; the same bytes labelled
    version 6, whose readers knew no JPEG XL, are refused rather than misread."""
    assert container.VERSION == 7
    assert_method_needs_version(np.random.default_rng(3).integers(0, 256, (9, 13, 3), dtype=np.uint8), "jxl", 7)


def assert_method_needs_version(im: np.ndarray, method: str, version: int):
    """A lone classical image of ``method`` is written at ``version`` and decodes; the same
    bytes labelled one version lower are refused as an unknown coding method. Returns its
    header and stream."""
    data = classical.encode(im, method)
    h = header(shapes=[[*im.shape, 1]], methods=[[method, 1]], classical_sizes=[len(data)],
               pixels_hash=pixels_digest([im]), names={"sequence": ["", 5, ".png"]}, squeeze=[])
    blob = pack(h, data)
    assert blob[4] == version
    (out, _), = decompress_file_bytes(blob)
    np.testing.assert_array_equal(out, im)
    old = bytearray(blob[:-4])
    old[4] = version - 1
    with pytest.raises(FormatError, match="unknown coding method"):
        unpack(bytes(old) + struct.pack("<I", zlib.crc32(bytes(old))))
    return h, data


def test_chunk_grids_are_version_9():
    """Chunks on their own grids are written at version 9 (image records optional) and read
    back; a version-9 file without a coarser chunk, or a chunk grid under the floor, is
    refused; the chunks of a version-8 file are read as before."""
    h = header(**{**MODEL, "grid_bits": 2, "chunk_grids": [-1, 2]})
    blob = pack(h, b"\0" * 8)
    assert blob[4] == container.CHUNK_GRID_VERSION == 9
    h2, p2 = unpack(blob)
    assert h2 == h and h2.chunk_grids == [-1, 2] and h2.envelope == b"" and p2 == b"\0" * 8
    with_records = header(**{**MODEL, "grid_bits": 2, "chunk_grids": [0, 1], "envelope": b"\x01\x02"})
    assert unpack(pack(with_records, b""))[0] == with_records
    plain = header(**{**MODEL, "grid_bits": 2})
    assert pack(plain, b"")[4] == container.VERSION
    same = header(**{**MODEL, "grid_bits": 2, "chunk_grids": [2, 2]})  # version-9 entries, no chunk coarser
    with pytest.raises(FormatError, match="version 9 without"):
        unpack(container.frame(container.encode_header(same), b"", version=9))
    with pytest.raises(FormatError):  # a version-8 header's entries misread as version 9's
        unpack(container.frame(container.encode_header(plain), b"", version=9))
    under = header(**{**MODEL, "grid_bits": 1, "chunk_grids": [-2, 1]})
    with pytest.raises(FormatError, match="chunk grids out of range"):
        unpack(container.frame(container.encode_header(under), b"", version=9))
    with pytest.raises((FormatError, ValueError)):
        pack(under, b"")


def test_ctx_images_are_version_10():
    """A ctx image (method 6) is written at version 10 and decodes; the same bytes labelled
    version 9 are refused, as are a version-10 file without a ctx image and a ctx image of
    three channels or over the model's pixel limit. Chunks of a version-10 file keep their
    grids (version 9's entries)."""
    from vdmcodec.coding import context_model

    assert container.CONTEXT_VERSION == 10
    h, data = assert_method_needs_version(np.random.default_rng(4).integers(0, 256, (9, 13, 1), dtype=np.uint8),
                                          "ctx", 10)
    with pytest.raises(FormatError, match="version 10 without"):
        unpack(container.frame(container.encode_header(header()), b"", version=10))
    side = int(context_model.MAX_PIXELS ** 0.5) + 1
    for shape in ([9, 13, 3, 1], [side, side, 1, 1]):
        forged = replace(h, shapes=[shape])
        with pytest.raises(FormatError, match="ctx image"):
            unpack(container.frame(container.encode_header(forged), data, version=10))
    gray = {**MODEL, "shapes": [[2, 3, 1, 3]], "squeeze": [], "methods": [["vdm", 2], ["ctx", 1]], "grid_bits": 2}
    model = header(**gray, chunk_grids=[1, 2])
    assert unpack(pack(model, b""))[0] == model
    flat = header(**gray)
    assert unpack(pack(flat, b""))[0] == flat


def test_numbered_names_are_a_sequence():
    """Names numbered from 0 with a fixed zero padding are stored as prefix, width and
    suffix (the default 00000.png... costs nothing), and come back the same."""
    assert container.name_sequence([f"{k:05d}.png" for k in range(3)]) == ["", 5, ".png"]
    assert container.name_sequence([f"{k:03d}.png" for k in range(100)]) == ["", 3, ".png"]
    assert container.name_sequence(["img_0.tif", "img_1.tif"]) == ["img_", 1, ".tif"]
    assert container.name_sequence(["x/00.png", "x/01.png", "x/03.png"]) is None  # a gap
    assert container.name_sequence(["1.png", "2.png"]) is None  # not from 0
    assert container.name_sequence(["a.png"]) is None and container.name_sequence([]) is None
    names = [f"d/{k:04d}_x.png" for k in range(12)]
    h = header(names={"sequence": container.name_sequence(names)})
    assert unpack(pack(h, b""))[0].image_names()[:12] == names[: h.count]


def reframe(body_after_version: bytes) -> bytes:
    body = container.MAGIC + bytes([container.VERSION]) + body_after_version
    return body + struct.pack("<I", zlib.crc32(body))


def test_length_fields_are_bounded():
    hb = container.encode_header(header())
    for hlen in (len(hb) + 1, len(hb) + 100, container.MAX_HEADER_BYTES + 1, 2**63, 2**70):
        with pytest.raises(FormatError):
            unpack(reframe(container.encode_varint(hlen) + hb))
    for hlen in (0, 1, len(hb) - 1):  # a header cut short, the rest read as payload
        with pytest.raises(FormatError):
            unpack(reframe(container.encode_varint(hlen) + hb))
    with pytest.raises(FormatError, match="varint"):
        unpack(reframe(b"\xff" * 12 + hb))


@pytest.mark.parametrize("what,over", [
    ("too many images", dict(shapes=[[1, 1, 1, MAX_IMAGES + 1]], methods=[["png", MAX_IMAGES + 1]])),
    ("too many images in total", dict(shapes=[[1, 1, 1, MAX_IMAGES]] * 2, methods=[["png", 2 * MAX_IMAGES]])),
    ("side too long", dict(shapes=[[MAX_SIDE + 1, 1, 1, 1]], methods=[["png", 1]])),
    ("too many subpixels", dict(shapes=[[MAX_SIDE, MAX_SIDE, 3, 1]], methods=[["png", 1]])),
    ("too many subpixels over images", dict(shapes=[[MAX_SIDE, MAX_SIDE, 1, 2]], methods=[["png", 2]])),
    ("many classical sizes", dict(shapes=[[1, 1, 1, 10**6]], methods=[["png", 10**6]], squeeze=[])),
    ("many names", dict(shapes=[[1, 1, 1, 10**6]], methods=[["png", 10**6]], classical_sizes=[], squeeze=[],
                        names={"list": []})),
    ("steps", dict(MODEL, steps=MAX_STEPS + 1)),
    ("steps zero with a model", dict(MODEL, steps=0)),
    ("grid_bits", dict(MODEL, grid_bits=17)),
    ("grid_bits zero", dict(MODEL, grid_bits=0)),
    ("threads zero with a model", dict(MODEL, threads=0)),
    ("threads over the limit", dict(MODEL, threads=MAX_THREADS + 1)),
    ("channels", dict(shapes=[[2, 3, 2, 2], [4, 1, 3, 1]])),
    ("zero side", dict(shapes=[[0, 3, 1, 2], [4, 1, 3, 1]])),
    ("zero count", dict(shapes=[[2, 3, 1, 0], [4, 1, 3, 3]])),
    ("methods do not cover", dict(methods=[["png", 2]])),
    ("classical sizes short", dict(classical_sizes=[10, 11])),
    ("classical size zero", dict(classical_sizes=[10, 0, 12])),
    ("classical size huge", dict(classical_sizes=[10, 11, 2**41])),
    ("chunks without vdm images", dict(chunks=[[0, 1]])),
    ("chunks without vdm images, with a model", dict(MODEL, methods=[["png", 2], ["webp", 1]], classical_sizes=[10, 11, 12])),
    ("vdm images without a model", dict(methods=[["vdm", 2], ["webp", 1]], classical_sizes=[12], chunks=[[0, 2]])),
    ("model without vdm images", dict(MODEL, methods=[["png", 2], ["webp", 1]], classical_sizes=[10, 11, 12], chunks=[], init_pad=0)),
    ("chunks short", dict(MODEL, chunks=[[0, 1]])),
    ("chunks huge", dict(MODEL, chunks=[[0, MAX_IMAGES + 1]])),
    ("chunk empty", dict(MODEL, chunks=[[0, 0], [0, 2]])),
    ("init_pad without a model", dict(init_pad=2)),
    ("names list empty name", dict(names={"list": ["a", "", "c"]})),
    ("names list NUL", dict(names={"list": ["a", "b\0.png", "c"]})),
    ("names sequence NUL", dict(names={"sequence": ["x\0", 3, ".png"]})),
    ("names digits", dict(names={"sequence": ["", 13, ""]})),
    ("names digits zero", dict(names={"sequence": ["", 0, ""]})),
    ("squeeze count", dict(squeeze=[[1, 1]])),
    ("squeeze value", dict(squeeze=[[2, 3]])),
    ("squeeze huge", dict(squeeze=[[1, 10**15]])),
])
def test_unpack_refuses_headers_it_cannot_bound(what, over):
    blob = forge(header(**over))
    tracemalloc.start()
    try:
        with pytest.raises(FormatError):
            unpack(blob)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1e6, f"{what}: unpack allocated {peak} bytes"
    with pytest.raises(FormatError):
        pack(header(**over), b"")  # and the writer refuses to write it


def test_a_small_file_cannot_claim_millions_of_images():
    """Model-coded images cost the header only their chunk entries; a chunk holds at most
    what the encoder writes (MAX_CHUNK_IMAGES), so a file of a few bytes cannot claim
    millions of images for the per-image lists that info and decompress build."""
    from vdmcodec.coding.container import MAX_CHUNK_IMAGES

    def many(n, per_chunk):
        chunks = [[k, min(per_chunk, n - k)] for k in range(0, n, per_chunk)]
        return header(**dict(MODEL, shapes=[[1, 1, 1, n], [4, 1, 3, 1]], methods=[["vdm", n], ["webp", 1]],
                             chunks=chunks, squeeze=[]))

    assert unpack(forge(many(1000, MAX_CHUNK_IMAGES)))[0].count == 1001  # as the encoder writes them
    blob = forge(many(1_000_000, 1_000_000))
    assert len(blob) < 200
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match="chunk of more than"):
            unpack(blob)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1e6


def test_unknown_codes_are_refused():
    hb = bytearray(container.encode_header(header()))
    for flags in (0x80, 0x06, 0x48):  # tile layouts without tiled images; two kinds of names; two kinds of squeeze
        bad = bytearray(hb)
        bad[0] = flags
        with pytest.raises(FormatError):
            unpack(container.frame(bytes(bad), b""))
    hm = bytearray(container.encode_header(header(**MODEL)))
    dtype_at = 1 + 1 + len("mnist") + 8 + 1 + 1  # flags, name, hash, steps (128 = 2 bytes), grid_bits
    assert hm[dtype_at + 1] == 0
    hm[dtype_at + 1] = 7
    with pytest.raises(FormatError, match="dtype"):
        unpack(container.frame(bytes(hm), b""))
    with pytest.raises(FormatError, match="unread"):
        unpack(container.frame(container.encode_header(header()) + b"\0", b""))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_headers_give_format_error_or_the_images(data):
    """Random byte edits of a valid header (the CRC recomputed, as a forger would): unpack
    and decode refuse with FormatError or, when the edit is harmless, return the original
    images. Nothing else escapes."""
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (3, 4, 1), dtype=np.uint8), rng.integers(0, 256, (3, 4, 1), dtype=np.uint8)]
    good = classical_file(images, names=["a.png", "b.png"])
    h, payload = unpack(good)
    hb = bytearray(container.encode_header(h))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["set", "insert", "delete"]))
        pos = data.draw(st.integers(0, len(hb) - 1))
        if op == "set":
            hb[pos] = data.draw(st.integers(0, 255))
        elif op == "insert":
            hb.insert(pos, data.draw(st.integers(0, 255)))
        elif len(hb) > 1:
            del hb[pos]
    try:
        h2, p2 = unpack(container.frame(bytes(hb), payload))
        out = decode_payload(h2, p2, None)
    except (FormatError, ModelError):
        return
    for (a, _), b in zip(out, images):
        np.testing.assert_array_equal(a[..., None] if a.ndim == 2 else a, b)
