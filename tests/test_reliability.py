"""Hardening (issue 7), the fast versions of benchmarks/reliability.py: crash safety of the
CLI (SIGKILL and Ctrl-C), determinism across torch thread counts in fresh processes, a short
fuzz campaign, payload truncation under a valid CRC, random-image round trips, and the
resource limits and file writes behind them."""
from __future__ import annotations

import dataclasses
import os
import signal
import tracemalloc

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from benchmarks import crashsafety, determinism, fuzzing, hardening
from vdmcodec.coding import classical, container
from vdmcodec.coding.archive import MAX_CHUNK_SUBPIXELS
from vdmcodec.coding.codec import MAX_CACHED_CHAINS, DecodeLimits, load_codec
from vdmcodec.errors import FormatError, LimitError, RuntimeMismatchError, VdmcodecError
from vdmcodec.files import atomic_write_bytes, write_files


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def codec(tiny_model_dir):
    return load_codec(tiny_model_dir, steps=2)


@pytest.fixture(scope="module")
def seeds(codec):
    return hardening.build_seeds({"tiny": codec})


def rgb_and_gray(rng, n=4):
    return [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)] + [rng.integers(0, 256, (6, 5), dtype=np.uint8) for _ in range(n)]


# ---- crash safety ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def crash_work(tmp_path_factory, codec, tiny_model_dir):
    work = tmp_path_factory.mktemp("crash")
    rng = np.random.default_rng(0)
    images = dict(zip(["rgb.png", "g0.png", "g1.png", "g2.png", "g3.png"], rgb_and_gray(rng)))
    (work / "in").mkdir()
    (work / "arc").mkdir()
    for name, px in images.items():
        Image.fromarray(px).save(work / "in" / name)
    (work / "arc" / "a.vdmc").write_bytes(codec.compress(list(images.values()), names=list(images), force_model=True))
    return work, images


def _scenario(name: str) -> crashsafety.Scenario:
    return next(s for s in crashsafety.standard_scenarios() if s.name == name)


@pytest.mark.parametrize("name", [
    "compress killed while its archive is written",
    "compress --force killed while replacing an archive",
    "decompress killed while writing its images (2 staged)",
    "compress Ctrl-C while encoding",
    "decompress Ctrl-C while writing its images",
])
def test_interrupted_cli_leaves_nothing(crash_work, tiny_model_dir, name):
    """SIGKILL part-way: no output file, no temporary file, an overwritten archive and the
    inputs unchanged. Ctrl-C: the same, exit code 130 and the one line 'error: interrupted'."""
    work, images = crash_work
    sc = _scenario(name)
    res = crashsafety.run_scenario(sc, work, work / "in", work / "arc" / "a.vdmc", tiny_model_dir, 2, images)
    assert res.paused, "the child never reached its pause point"
    assert not res.completed
    assert res.leftovers == (), f"left behind: {res.leftovers}"
    assert res.inputs_unchanged
    if sc.sig == signal.SIGINT:
        assert res.returncode == 130 and res.last_line == "error: interrupted", res
    else:
        assert res.returncode == -signal.SIGKILL
    assert res.ok, res.note


def test_atomic_write_replaces_whole_and_keeps_permissions(tmp_path):
    p = tmp_path / "new" / "dir" / "f.bin"
    atomic_write_bytes(p, b"one")
    atomic_write_bytes(p, b"two!")
    assert p.read_bytes() == b"two!"
    umask = os.umask(0)
    os.umask(umask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~umask
    assert sorted(x.name for x in p.parent.iterdir()) == ["f.bin"]  # no temporary file beside it


def test_write_files_rolls_back_on_error(tmp_path):
    (tmp_path / "keep.png").write_bytes(b"old")
    with pytest.raises(TypeError):
        write_files([(tmp_path / "a" / "1.png", b"1"), (tmp_path / "a" / "b" / "2.png", b"2"), (tmp_path / "c" / "3.png", None)])
    assert sorted(x.name for x in tmp_path.iterdir()) == ["keep.png"]  # files and the folders made for them are gone
    write_files([(tmp_path / "a" / "1.png", b"1"), (tmp_path / "keep.png", b"new")])
    assert (tmp_path / "a" / "1.png").read_bytes() == b"1" and (tmp_path / "keep.png").read_bytes() == b"new"


# ---- determinism ---------------------------------------------------------------------------------
def test_thread_mismatch_is_matched_or_refused_up_front(codec):
    """In-process: a file coded at 1 thread decodes at 2 (the network runs at 1 for the
    call, and the count is restored); with matching off it is refused before any work."""
    rng = np.random.default_rng(3)
    images = rgb_and_gray(rng, 6)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        blob = codec.compress(images, force_model=True)
        assert container.unpack(blob)[0].threads == 1
        torch.set_num_threads(2)
        assert hardening.same_images(codec.decompress(blob), images)
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeMismatchError, match=r"1 torch thread.*set_num_threads\(1\)"):
            codec.decompress(blob, limits=DecodeLimits(match_threads=False))
        with pytest.raises(RuntimeMismatchError, match="coded with 3 torch threads"):  # more than we may run
            forged = dataclasses.replace(container.unpack(blob)[0], threads=3)
            codec.decompress(container.pack(forged, container.unpack(blob)[1]), limits=DecodeLimits(max_threads=2))
    finally:
        torch.set_num_threads(before)


def test_determinism_across_threads_in_fresh_processes(tiny_model_dir, tmp_path):
    """Encode at 1 thread and at 2 in fresh processes; decode each at the other count in a
    fresh process: exact with thread matching, refused up front (naming the count) without."""
    rng = np.random.default_rng(4)
    images = rgb_and_gray(rng, 6)
    npz = tmp_path / "images.npz"
    np.savez(npz, *images)
    for enc, dec in ((1, 2), (2, 1)):
        arc = tmp_path / f"enc{enc}.vdmc"
        info = determinism.encode_in_process(str(tiny_model_dir), 2, enc, npz, arc, timeout=300)
        assert info["header_threads"] == enc and any(m == "vdm" for m, _ in info["methods"]), info
        r = determinism.decode_in_process(str(tiny_model_dir), dec, arc, npz, match=True, timeout=300)
        assert r.get("exact") is True and r["threads_after"] == dec, r
        r = determinism.decode_in_process(str(tiny_model_dir), dec, arc, npz, match=False, timeout=300)
        assert r["error"] == "RuntimeMismatchError" and f"set_num_threads({enc})" in r["message"], r


# ---- fuzzing -----------------------------------------------------------------------------------
FUZZ_LIMITS = fuzzing.FUZZ_LIMITS
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(rng=st.randoms(use_true_random=False))
def test_short_fuzz_campaign(codec, seeds, rng):
    """Mutated seeds and random bytes: the codec's own error with one line, or exactly the
    seed's images. (benchmarks/reliability.py runs the same generator for 10,000+ inputs in
    a worker process with a timeout and a memory measurement.)"""
    inp = fuzzing.make_input(rng, seeds)
    seed = next((s for s in seeds if s.name == inp.source), None)
    kind, err, msg = fuzzing.decode_outcome(inp.blob, {"tiny": codec}, seed, FUZZ_LIMITS)
    assert kind in ("refused", "decoded-identical"), (inp.how, kind, err, msg)


def test_fuzz_runner_survives_a_timeout(tiny_model_dir, codec, seeds):
    """The campaign's worker: outcomes come back with a memory measurement; an input over
    the per-input timeout (here the valid seed under a 1 ms budget) is recorded as a
    timeout and the worker restarted."""
    tiny = next(s for s in seeds if s.name == "tiny-chain")
    valid = fuzzing.FuzzInput("tiny-chain", "none", tiny.blob)
    with fuzzing.Runner({"tiny": str(tiny_model_dir)}, 2, seeds, FUZZ_LIMITS, timeout=30.0) as run:
        records = fuzzing.campaign(20, seeds, run)
        assert run(valid, timeout=0.001).kind == "timeout"
        assert run(valid).kind == "decoded-identical"
        assert run.restarts == 1
    summary = fuzzing.summarize(records)
    assert summary["inputs"] == 20 and not summary["failures"], summary["failures"]
    assert all(r.outcome.peak_mb >= 0 for r in records)  # memory was measured (Linux)


def test_truncated_payload_with_a_valid_crc_is_refused(codec, seeds):
    """A forger's truncation: the payload cut at every byte, the CRC recomputed."""
    tiny = next(s for s in seeds if s.name == "tiny-chain")
    cuts = [i for i in fuzzing.truncations(tiny) if i.how.startswith("payload-cut")]
    assert len(cuts) > 1000
    for inp in cuts:
        kind, err, msg = fuzzing.decode_outcome(inp.blob, {"tiny": codec}, tiny, DecodeLimits())
        assert kind == "refused", (inp.how, kind, err, msg)


# ---- round trips -----------------------------------------------------------------------------
def test_random_images_round_trip(codec, tmp_path):
    """Random sizes 1x1..64x64, gray and RGB, constant / noise / extreme values, through the
    tiny gray and RGB models, forced through the chain and as the CLI writes them."""
    rgb = load_codec(hardening.tiny_model(tmp_path / "rgb", image_channels=3), steps=2)
    stats = hardening.round_trips({"gray": codec, "rgb": rgb}, 30, seed=5, max_archive=8)
    assert stats.failures == ()
    assert stats.images == 30 and stats.round_trips >= 4 * 30 - 8 * stats.out_of_bits
    assert stats.model_coded > 10


# ---- resource limits ---------------------------------------------------------------------------
def test_decode_limits_refuse_before_work(codec):
    rng = np.random.default_rng(6)
    blob = codec.compress(rgb_and_gray(rng), force_model=True)
    for limits, what in ((DecodeLimits(max_steps=1), "T=2"), (DecodeLimits(max_subpixels=100), "subpixels"),
                         (DecodeLimits(max_images=2), "5 images")):
        with pytest.raises(LimitError, match=what):
            codec.decompress(blob, limits=limits)


def test_one_huge_model_coded_image_is_refused_before_allocation(codec):
    """A forged header claiming one 4096x4096 model-coded image (a 128 MB float64 batch)
    over a tiny payload: refused before the decoder allocates it."""
    rng = np.random.default_rng(7)
    blob = codec.compress(rgb_and_gray(rng), force_model=True)
    h, payload = container.unpack(blob)
    forged = dataclasses.replace(h, shapes=[[4096, 4096, 1, 1]], methods=[["vdm", 1]], classical_sizes=[], chunks=[[0, 1]],
                                 init_pad=0, squeeze=[], names={"sequence": ["", 5, ".png"]})
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match="chunk is larger"):
            codec.decompress(container.pack(forged, payload))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20e6, f"{peak / 1e6:.0f} MB allocated for a forged header"
    assert MAX_CHUNK_SUBPIXELS < 4096 * 4096


def test_encoder_refuses_what_the_format_cannot_hold(codec):
    with pytest.raises(VdmcodecError, match="sides must be"):
        codec.compress([np.zeros((1, container.MAX_SIDE + 1), np.uint8)])
    with pytest.raises(VdmcodecError, match="sides must be"):
        codec.compress([np.zeros((0, 5), np.uint8)])


def test_chain_cache_is_bounded(codec):
    """Files choose (steps, grid_bits): a long-lived decoder must not keep a chain per value."""
    for T in range(1, 3 * MAX_CACHED_CHAINS):
        codec.chain(T, codec.grid_bits)
    assert len(codec._chains) <= MAX_CACHED_CHAINS


def test_classical_codecs_beyond_pillow_limits(monkeypatch):
    """Sides over WebP's 16383 fall back to PNG (or JPEG XL), and decoding does not depend on Pillow's
    global decompression-bomb limit (it checks the size against the header instead)."""
    row = np.arange(16384, dtype=np.uint16).astype(np.uint8).reshape(1, 16384, 1)
    method, data = classical.encode_best(row)
    assert method != "webp" and np.array_equal(classical.decode(data, method, row.shape), row)
    img = np.random.default_rng(8).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    for m in classical.CLASSICAL_METHODS:
        data = classical.encode(img, m)
        with pytest.raises(FormatError, match="header says"):
            classical.decode(data, m, (40, 31, 3))
    # PNG: as if the image were a "bomb" for Pillow (WebP's own reader checks it too, at
    # 2 x MAX_IMAGE_PIXELS, ~179 M pixels: the encoder uses WebP only up to WEBP_MAX_PIXELS)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    data = classical.encode(img, "png")
    assert np.array_equal(classical.decode(data, "png", img.shape), img)
    assert classical.WEBP_MAX_PIXELS < 2 * 89_478_485


@pytest.mark.parametrize("h, w", [(1, 1), (8, 16), (37, 53), (240, 320), (90, 160), (264, 296), (1, 9000), (513, 2)])
def test_jpeg_xl_size_is_read_before_decoding(h, w):
    """The SizeHeader parser agrees with libjxl on small and large sizes and on every fixed
    aspect ratio, so a JPEG XL stream is checked against the header before libjxl allocates;
    gray stays one channel, and damaged or foreign bytes give a FormatError, not a crash."""
    rng = np.random.default_rng(h * 7919 + w)
    for c in (1, 3):
        img = rng.integers(0, 256, (h, w, c), dtype=np.uint8)
        data = classical.encode(img, "jxl")
        assert classical.jxl_size(data) == (h, w)
        np.testing.assert_array_equal(classical.decode(data, "jxl", (h, w, c)), img)
        with pytest.raises(FormatError, match="header says"):
            classical.decode(data, "jxl", (h + 1, w, c))
        with pytest.raises(FormatError, match="header says"):
            classical.decode(data, "jxl", (h, w, 4 - c))
    with pytest.raises(FormatError, match="signature"):
        classical.decode(classical.encode(img, "png"), "jxl", img.shape)
    for cut in (2, len(data) // 2):
        with pytest.raises(FormatError):
            classical.decode(data[:cut], "jxl", img.shape)


def test_encode_best_runs_what_its_effort_says(monkeypatch):
    """Beyond png_max_pixels PNG is not run; WebP's slow method only where its quick stream
    could still win; the result is the smallest of the streams that were run, decoded exactly."""
    rng = np.random.default_rng(6)
    y, x = np.mgrid[:96, :80]
    photo = np.clip(np.stack([x + y, 2 * y, x * 2], -1) + rng.normal(0, 9, (96, 80, 3)), 0, 255).astype(np.uint8)
    fast = classical.ClassicalEffort(jxl=3, webp=2, webp_probe=0, png_max_pixels=0)
    method, data = classical.encode_best(photo, fast)
    sizes = {"jxl": len(classical.encode(photo, "jxl", 3)), "webp0": len(classical.encode(photo, "webp", 0)),
             "webp2": len(classical.encode(photo, "webp", 2))}
    bound = classical.webp_gain_bound(2)
    run = [sizes["jxl"], sizes["webp0"]] + ([sizes["webp2"]] if bound * sizes["webp0"] < min(sizes["jxl"], sizes["webp0"]) else [])
    assert method in ("jxl", "webp") and len(data) == min(run)
    np.testing.assert_array_equal(classical.decode(data, method, photo.shape), photo)
    calls = []
    real = classical.encode
    monkeypatch.setattr(classical, "encode", lambda p, m, e=None: calls.append((m, e)) or real(p, m, e))
    classical.encode_best(photo, classical.ClassicalEffort(png_max_pixels=photo.shape[0] * photo.shape[1] - 1))
    assert ("png", None) not in calls and ("jxl", 9) in calls and ("webp", 2) in calls
    calls.clear()
    classical.encode_best(photo, classical.ClassicalEffort(png_max_pixels=photo.shape[0] * photo.shape[1]))
    assert ("png", None) in calls
    with pytest.raises(ValueError, match="effort"):
        classical.ClassicalEffort(jxl=0)


def test_encode_best_runs_jpeg_xl_and_webp_side_by_side_on_large_images(monkeypatch):
    """From PARALLEL_MIN_PIXELS on, JPEG XL and WebP's first stream are encoded on two threads
    at once; the result is the same stream as one after the other."""
    import threading

    rng = np.random.default_rng(7)
    y, x = np.mgrid[:96, :80]
    photo = np.clip(np.stack([x + y, 2 * y, x * 2], -1) + rng.normal(0, 9, (96, 80, 3)), 0, 255).astype(np.uint8)
    fast = classical.ClassicalEffort(jxl=3, webp=2, webp_probe=0, png_max_pixels=0)
    sequential = classical.encode_best(photo, fast)
    running, overlapped = [], []
    real = classical.encode

    def spy(p, m, e=None):
        running.append(m)
        overlapped.append(len(running) > 1)
        try:
            threading.Event().wait(0.05)  # long enough for the other thread to start
            return real(p, m, e)
        finally:
            running.remove(m)

    monkeypatch.setattr(classical, "encode", spy)
    monkeypatch.setattr(classical, "PARALLEL_MIN_PIXELS", photo.shape[0] * photo.shape[1])
    assert classical.encode_best(photo, fast) == sequential and any(overlapped)
    overlapped.clear()
    monkeypatch.setattr(classical, "PARALLEL_MIN_PIXELS", photo.shape[0] * photo.shape[1] + 1)
    assert classical.encode_best(photo, fast) == sequential and not any(overlapped)


def test_encode_best_keeps_the_smallest_exact_stream():
    """encode_best's stream (small images: PNG, WebP at methods 4 and 6, JPEG XL e9 all run)
    is never larger than PNG's, WebP method 6's or JPEG XL e9's, and decodes exactly; photos'
    noise favours JPEG XL, flat graphics WebP or PNG (whichever: never a larger one)."""
    rng = np.random.default_rng(5)
    y, x = np.mgrid[:48, :40]
    smooth = np.stack([(x * 3 + y) % 256, (y * 5) % 256, (x * y) % 256], -1).astype(np.uint8)
    noisy = np.clip(smooth.astype(int) + rng.integers(-6, 7, smooth.shape), 0, 255).astype(np.uint8)
    for img in (smooth, noisy, noisy[..., :1].copy()):
        method, data = classical.encode_best(img)
        sizes = {m: len(classical.encode(img, m)) for m in classical.CLASSICAL_METHODS}
        assert len(data) <= min(sizes.values())
        np.testing.assert_array_equal(classical.decode(data, method, img.shape), img)
