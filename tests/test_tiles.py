"""Tiled coding (coding/tiles.py, coding/tilegrid.py): bit-exact round trips of odd sizes,
layouts that cover the image with bounded chain segments, seeds only where the stack is
short, the header record and the decoder's refusal of forged layouts.

Tiny untrained models (gray and RGB), T = 2, small tiles so that small images are tiled.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.helpers import tiny_model_config
from vdmcodec.coding import container, tiles
from vdmcodec.coding.ans import Message
from vdmcodec.coding.codec import Codec
from vdmcodec.coding.tilegrid import (MAX_REGION_SUBPIXELS, Band, Segment, TileLayout, check_layout, encode_layout,
                                      grid, parse_layout, rects)
from vdmcodec.diffusion import VDM
from vdmcodec.errors import FormatError

STEPS = 2


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_codec(channels: int, tile: int) -> Codec:
    torch.manual_seed(channels)
    model = VDM(tiny_model_config(image_channels=channels)).eval().requires_grad_(False)
    return Codec(model, {"name": f"tiny{channels}", "sha256": f"{channels:02d}" * 32}, steps=STEPS, tile=tile)


@pytest.fixture(scope="module")
def codecs():
    return {c: tiny_codec(c, 8) for c in (1, 3)}


def smooth(rng, h, w, c) -> np.ndarray:
    """A photo-like image (a gradient plus noise): classical codecs and the model both see structure."""
    y, x = np.mgrid[0:h, 0:w]
    base = (y * 3 + x * 2)[..., None] + 40 * np.arange(c)[None, None]
    return np.clip(base + rng.integers(-6, 7, (h, w, c)), 0, 255).astype(np.uint8)


def header_of(blob: bytes) -> container.Header:
    return container.unpack(blob)[0]


# ---- round trips ------------------------------------------------------------------------------
@pytest.mark.parametrize("hw", [(1, 1), (3, 5), (29, 31), (100, 67), (9, 8), (8, 200)])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("tile", [2, 8])
def test_single_image_round_trip_odd_sizes(codecs, hw, channels, tile):
    codec = codecs[channels] if tile == 8 else tiny_codec(channels, tile)
    im = smooth(np.random.default_rng(hw[0] * 1000 + hw[1]), *hw, channels)
    blob = codec.compress([im], force_model=True)
    h = header_of(blob)
    if max(hw) > tile:
        assert h.image_methods() == ["tiled"] and h.tile == tile
        layout = h.tiled[0]
        assert check_layout(layout, im.shape, tile) is None
        assert any(r.method == "vdm" for r in rects(layout, *hw, tile))  # the chain coded something
    out = codec.decompress(blob)
    assert len(out) == 1 and out[0].dtype == np.uint8
    np.testing.assert_array_equal(out[0].reshape(im.shape), im)


def test_two_dimensional_input_comes_back_two_dimensional(codecs):
    im = smooth(np.random.default_rng(3), 29, 31, 1)[..., 0]
    out = codecs[1].decompress(codecs[1].compress(im, force_model=True))
    assert out[0].shape == (29, 31)
    np.testing.assert_array_equal(out[0], im)


def test_archive_mixing_chunks_tiles_and_gray(codecs):
    """Whole-image chunks (small images), tiled images and a grayscale image (coded by the
    RGB model as R = G = B: "tiled-gray") in one file; the later tiled images find the stack
    full and need no seed."""
    rng = np.random.default_rng(7)
    small = [smooth(rng, 6, 7, 3) for _ in range(5)]
    big = [smooth(rng, 40, 52, 3), smooth(rng, 33, 17, 3)]
    gray = smooth(rng, 20, 20, 1)
    images = [small[0], big[0], gray, *small[1:], big[1]]
    blob = codecs[3].compress(images, force_model=True)
    h = header_of(blob)
    methods = h.image_methods()
    assert methods[1] == methods[-1] == "tiled" and methods[2] == "tiled-gray"
    assert "vdm" in methods
    seeds = [[r for r in rects(lay, *shape[:2], h.tile) if r.method != "vdm"]
             for lay, shape in zip(h.tiled, [big[0].shape, gray.shape, big[1].shape])]
    assert seeds[1] == seeds[2] == []  # the stack already held enough bits
    out = codecs[3].decompress(blob)
    for a, b in zip(out, images):
        np.testing.assert_array_equal(a.reshape(b.shape), b)


@pytest.mark.parametrize("shape", [(5, 7), (29, 31, 1), (1, 1)])
def test_gray_image_through_the_rgb_model(codecs, shape):
    """A grayscale image with an RGB model is model-coded as three equal channels, at any
    size (smaller than a tile too), and comes back in its own shape."""
    im = smooth(np.random.default_rng(shape[0]), *shape[:2], 1).reshape(shape)
    blob = codecs[3].compress(im, force_model=True)
    h = header_of(blob)
    assert h.image_methods() == ["tiled-gray"] and h.image_shapes() == [(*shape[:2], 1)]
    assert check_layout(h.tiled[0], (*shape[:2], 3), h.tile) is None
    if max(shape) > h.tile:  # (a lone one-tile image is all seed: nothing on the stack to start the chain)
        assert any(r.method == "vdm" for r in rects(h.tiled[0], *shape[:2], h.tile))
    out = codecs[3].decompress(blob)
    assert out[0].shape == im.shape
    np.testing.assert_array_equal(out[0], im)
    # the same file claiming a colour image, or read with a gray model, is refused
    with pytest.raises(FormatError, match="tiled-gray"):
        codecs[3].decompress(_reheader(blob, shapes=[[*shape[:2], 3, 1]], squeeze=[]))
    with pytest.raises(FormatError, match="three-channel model"):
        codecs[1].decompress(blob)


def test_lone_photo_seeds_only_its_first_tiles(codecs):
    """A lone image: classical segments only at the start of the first band, then the chain."""
    im = smooth(np.random.default_rng(11), 64, 96, 3)
    h = header_of(codecs[3].compress([im], force_model=True))
    layout = h.tiled[0]
    methods = [s.method for b in layout.bands for s in b.segments]
    first_chain = methods.index("vdm")
    assert first_chain >= 1 and all(m != "vdm" for m in methods[:first_chain])
    assert all(m == "vdm" for m in methods[first_chain:])
    assert layout.bands[0].rows == 1


def test_chain_segments_stay_within_the_region_bound(monkeypatch):
    """With the bound lowered to 300 subpixels every network batch, encoding and decoding,
    holds at most 300 subpixels, and the image still round-trips."""
    codec = tiny_codec(3, 8)  # a tile is 8 x 8 x 3 = 192 subpixels
    im = smooth(np.random.default_rng(5), 37, 45, 3)
    unbounded = header_of(codec.compress([im], force_model=True)).tiled[0]
    assert max(r.subpixels(3) for r in rects(unbounded, 37, 45, 8) if r.method == "vdm") > 300  # the bound will bind
    monkeypatch.setattr(tiles, "MAX_REGION_SUBPIXELS", 300)
    chain = codec.chain(STEPS, codec.grid_bits_for([im]))
    pushed, popped = [], []
    push, pop = chain.push, chain.pop

    def spy_push(msg, x, progress=None, **kw):
        pushed.append(x.size)
        return push(msg, x, progress, **kw)

    def spy_pop(msg, shape, progress=None, **kw):
        popped.append(int(np.prod(shape)))
        return pop(msg, shape, progress, **kw)

    monkeypatch.setattr(chain, "push", spy_push)
    monkeypatch.setattr(chain, "pop", spy_pop)
    blob = codec.compress([im], force_model=True)
    np.testing.assert_array_equal(codec.decompress(blob)[0], im)
    assert pushed and max(pushed) <= 300 and max(popped) <= 300  # (pushes include the seed's trial tiles)
    layout = header_of(blob).tiled[0]
    assert sorted(popped) == sorted(r.subpixels(3) for r in rects(layout, 37, 45, 8) if r.method == "vdm")


def test_seed_is_the_fewest_tiles_that_start_the_chain(codecs):
    """A lone photo's seed is tried, not estimated: with one tile fewer, the chain's first tile
    runs the stack dry; with the seed it has, it does not (and the chain tile follows it)."""
    from vdmcodec.coding.ans import EmptyMessageError, Message

    codec = codecs[3]
    im = smooth(np.random.default_rng(11), 16, 96, 3)
    layout = header_of(codec.compress([im], force_model=True)).tiled[0]
    segs = layout.bands[0].segments
    assert segs[0].method != "vdm" and segs[1].method == "vdm"
    chain = codec.chain(STEPS, codec.grid_bits_for([im]))
    p = tiles._Planner(im, codec.tile, 1.0)
    outcomes = []
    for k in (segs[0].width - 1, segs[0].width):
        msg = Message()
        if k:
            data = tiles.classical.encode_best(np.ascontiguousarray(p.crop(0, 1, 0, k)))[1]
            tiles._raw_bytes(len(data)).push(msg, np.frombuffer(data, dtype=np.uint8))
        try:
            tiles._push_chain(chain, msg, p, 0, 1, k, 1)
            outcomes.append(True)
        except EmptyMessageError:
            outcomes.append(False)
    assert outcomes == [False, True]


def test_a_short_initial_bits_estimate_is_retried(codecs, monkeypatch):
    """The planner's estimate is only an estimate: when a segment runs the stack dry, compress
    retries with the next margin (codec.INIT_MARGINS) and still round-trips."""
    from vdmcodec.coding import codec as codec_mod

    monkeypatch.setattr(codec_mod, "INIT_MARGINS", (0.05, 3.0))
    im = smooth(np.random.default_rng(9), 30, 40, 3)
    blob = codecs[3].compress([im], force_model=True)
    np.testing.assert_array_equal(codecs[3].decompress(blob)[0], im)


def test_push_then_pop_restores_the_message_exactly(codecs):
    """tiles.pop_image(push_image(m, x)) == (m, x) on a message holding other words."""
    chain = codecs[1].chain(STEPS, codecs[1].grid_bits)
    rng = np.random.default_rng(2)
    words = rng.integers(1, 1 << 32, 40, dtype=np.uint64).astype(np.uint32)
    msg = Message(words, sealed=True)
    im = smooth(rng, 19, 23, 1)
    layout = tiles.push_image(chain, msg, im, 8, chain.initial_bits_per_dim() * 1.5)
    back = Message(msg.words())
    out = tiles.pop_image(chain, back, layout, im.shape, 8)
    np.testing.assert_array_equal(out, im)
    np.testing.assert_array_equal(back.words(unseal=True), words)


# ---- the header record --------------------------------------------------------------------------
LAYOUT = TileLayout((Band(1, (Segment(2, "webp", 300), Segment(1, "vdm"), Segment(2, "vdm"))),
                     Band(3, (Segment(5, "vdm"),))))


def test_layout_record_round_trip_and_geometry():
    data = encode_layout(LAYOUT)
    r = container.Reader(data)
    assert parse_layout(r, container.MAX_SIDE) == LAYOUT and r.pos == len(data)
    jxl = TileLayout((Band(1, (Segment(2, "jxl", 77), Segment(3, "vdm"))),))
    assert parse_layout(container.Reader(encode_layout(jxl)), container.MAX_SIDE) == jxl
    with pytest.raises(FormatError, match="unknown segment method 3"):  # format version 6 knew no JPEG XL
        parse_layout(container.Reader(encode_layout(jxl)), container.MAX_SIDE, jxl=False)
    assert grid(29, 37, 8) == (4, 5)
    assert check_layout(LAYOUT, (29, 37, 3), 8) is None
    got = [(r.y0, r.y1, r.x0, r.x1, r.method) for r in rects(LAYOUT, 29, 37, 8)]
    assert got == [(0, 8, 0, 16, "webp"), (0, 8, 16, 24, "vdm"), (0, 8, 24, 37, "vdm"), (8, 29, 0, 37, "vdm")]


@pytest.mark.parametrize("bad", [
    TileLayout(()),                                                                   # no bands
    replace(LAYOUT, bands=LAYOUT.bands[:1]),                                          # rows not covered
    replace(LAYOUT, bands=(LAYOUT.bands[0], Band(3, (Segment(4, "vdm"),)))),          # columns not covered
    replace(LAYOUT, bands=(LAYOUT.bands[0], Band(3, (Segment(6, "vdm"),)))),          # columns overrun
    replace(LAYOUT, bands=(Band(1, (Segment(2, "png", 0), Segment(3, "vdm"))), LAYOUT.bands[1])),  # empty seed
])
def test_layouts_that_do_not_fit_are_refused(bad):
    assert check_layout(bad, (29, 37, 3), 8) is not None


def test_a_chain_segment_over_the_bound_is_refused():
    side = 1024  # one band of 1024 x 1024 x 3 subpixels: over MAX_REGION_SUBPIXELS
    layout = TileLayout((Band(1, (Segment(1, "vdm"),)),))
    assert side * side * 3 > MAX_REGION_SUBPIXELS
    assert "larger" in check_layout(layout, (side, side, 3), side)  # (MAX_TILE keeps real files from this)


@pytest.fixture(scope="module")
def tiled_blob(codecs):
    im = smooth(np.random.default_rng(21), 20, 27, 3)
    return codecs[3].compress([im], force_model=True), im


def _reheader(blob: bytes, **over) -> bytes:
    h, payload = container.unpack(blob)
    return container.frame(container.encode_header(replace(h, **over)), payload)


def test_forged_tiling_headers_give_format_error(codecs, tiled_blob):
    blob, im = tiled_blob
    h = header_of(blob)
    layout = h.tiled[0]
    forged = [
        _reheader(blob, tiled=[]),                                     # tiled image without a layout
        _reheader(blob, tile=0),                                       # layouts without a tile side
        _reheader(blob, tile=4),                                       # another grid: bands do not cover it
        _reheader(blob, tiled=[replace(layout, bands=layout.bands[:-1])]),
        _reheader(blob, methods=[["webp", 1]], classical_sizes=[10], model=None, model_hash=None, steps=0,
                  grid_bits=0, threads=0, torch="", chunks=[], init_pad=0),  # flagged layouts, no tiled image
    ]
    for f in forged:
        with pytest.raises(FormatError):
            codecs[3].decompress(f)
    with pytest.raises(FormatError, match="tile side"):  # the tile side is bounded when read
        container.parse_header(container.encode_header(replace(h, tile=container.MAX_TILE + 1)))


def test_damaged_tiled_payload_gives_format_error(codecs, tiled_blob):
    blob, _ = tiled_blob
    h, payload = container.unpack(blob)
    rng = np.random.default_rng(0)
    for _ in range(8):
        p = bytearray(payload)
        at = int(rng.integers(0, len(p)))
        p[at] ^= 1 << int(rng.integers(0, 8))
        with pytest.raises(FormatError):
            codecs[3].decompress(container.frame(container.encode_header(h), bytes(p)))
