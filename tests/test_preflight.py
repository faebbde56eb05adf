"""The compress preflight (coding/preflight.py): its crops, that its estimate is the
continuous-time negative ELBO of those crops, and that compress skips the chain exactly on
the images it gives up on (and never with force_model or the preflight off).

Tiny untrained RGB model; small preflight settings so that small images get one.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import tiny_model_config
from vdmcodec.coding import container
from vdmcodec.coding.codec import Codec
from vdmcodec.coding.preflight import (PreflightConfig, Probe, cell_origins, crop_origins, estimate_bpd, probe_design,
                                        sure_win)
from vdmcodec.diffusion import VDM
from vdmcodec.likelihood import bpd_continuous

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = PreflightConfig(crops=4, crop=16, draws=2, min_pixels=32 * 32)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(3)
    return VDM(tiny_model_config(image_channels=3)).eval().requires_grad_(False)


def codec_for(model, preflight) -> Codec:
    return Codec(model, {"name": "tiny3", "sha256": "03" * 32}, steps=2, tile=8, preflight=preflight)


def noise(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.mark.parametrize("hw", [(480, 500), (64, 64), (10, 300), (300, 10), (5, 5)])
@pytest.mark.parametrize("n", [1, 4, 16])
def test_crop_origins_spread_over_the_image_corners_included(hw, n):
    h, w = hw
    side = 64
    got = crop_origins(h, w, n, side)
    assert n <= len(got) <= 2 * n
    sh, sw = min(side, h), min(side, w)
    assert all(0 <= y <= h - sh and 0 <= x <= w - sw for y, x in got)
    if n > 1 and h > sh and w > sw:
        assert {(0, 0), (h - sh, w - sw), (0, w - sw), (h - sh, 0)} <= set(got) or len(got) == 2


@pytest.mark.parametrize("hw", [(512, 768), (288, 352), (40, 48)])
def test_cell_origins_centre_a_crop_in_each_cell(hw):
    h, w = hw
    got = cell_origins(h, w, 16, 64)
    sh, sw = min(64, h), min(64, w)
    assert all(0 <= y <= h - sh and 0 <= x <= w - sw for y, x in got)
    assert len(set(got)) == len(got) or h <= 64  # distinct crops where the image has room
    if h > 4 * 64 and w > 4 * 64:  # room for every cell: no crop touches the border
        assert all(0 < y < h - sh and 0 < x < w - sw for y, x in got)


@pytest.mark.parametrize("crops, T, draws", [(16, 32, 8), (5, 10, 3), (4, 6, 8), (1, 7, 2)])
def test_probe_design_draws_every_crop_once_per_stratum_and_shares_the_levels(crops, T, draws):
    design = probe_design(crops, T, draws)
    per_crop = {n: [] for n in range(crops)}
    for i, chosen, weight in design:
        assert 1 <= i <= T
        for n in chosen:
            per_crop[n].append((i, weight))
    for n, got in per_crop.items():
        assert len(got) == min(T, draws) and sum(w for _, w in got) == T  # each crop's weights cover 1..T
    levels = [i for i, _, _ in design]
    assert len(set(levels)) == len(levels)
    if crops >= T:  # enough crops: every level is drawn
        assert sorted(levels) == list(range(1, T + 1))


def test_the_probe_rate_is_the_chains_bound_on_its_crops(model):
    """With every level drawn, the probe's rate is the per-level KLs of its crops plus the two
    ends; drawing a level per stratum estimates it (here within 15% on a tiny model)."""
    codec = codec_for(model, SMALL)
    chain = codec.chain(6, 2)
    im = noise((48, 48, 3))
    full = Probe(chain, im, PreflightConfig(crops=4, crop=24, draws=6))
    assert [d[2] for d in full.draws] == list(range(1, 7)) and full.rate > 0
    assert Probe(chain, im, PreflightConfig(crops=4, crop=24, draws=6)).rate == full.rate  # deterministic
    part = Probe(chain, im, PreflightConfig(crops=4, crop=24, draws=3))
    assert len(part.draws) == 6 and abs(part.rate / full.rate - 1) < 0.15


def test_estimate_is_the_continuous_elbo_of_its_crops(model):
    """One crop covering the whole image: the estimate is likelihood.bpd_continuous of it,
    same noise (same generator, same order of draws)."""
    im = noise((16, 16, 3))
    cfg = PreflightConfig(crops=1, crop=16, draws=3, seed=5)
    est = estimate_bpd(model, im, cfg)
    x = torch.from_numpy(im).permute(2, 0, 1)[None].contiguous()
    ref = float(bpd_continuous(model, x, torch.Generator().manual_seed(5), t_samples=3).total[0])
    assert est == pytest.approx(ref, rel=1e-5)
    assert estimate_bpd(model, im, cfg) == est  # deterministic


def test_estimate_keeps_crops_times_draws_on_small_images(model, monkeypatch):
    """An image smaller than the crops' area gets fewer crops and more draws."""
    calls = []
    orig = VDM.loss_diff_continuous

    def spy(self, x, t, eps, *a, **k):
        calls.append(x.shape[0])
        return orig(self, x, t, eps, *a, **k)

    monkeypatch.setattr(VDM, "loss_diff_continuous", spy)
    estimate_bpd(model, noise((16, 16, 3)), PreflightConfig(crops=8, crop=16, draws=2))
    assert calls == [1] * 16
    calls.clear()
    estimate_bpd(model, noise((64, 64, 3)), PreflightConfig(crops=8, crop=16, draws=2))
    n = len(crop_origins(64, 64, 8, 16))  # a 3 x 3 grid for "about 8"
    assert calls == [n] * -(-16 // n)


def chain_must_not_run(codec, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the chain ran")

    monkeypatch.setattr(codec, "chain", refuse)


def test_compress_skips_the_chain_on_an_image_classical_wins_by_far(model, monkeypatch):
    """A flat image: a few hundred bytes classically, several bits per subpixel for the
    untrained model. The preflight writes the classical file without running the chain."""
    im = np.full((40, 48, 3), 77, dtype=np.uint8)
    codec = codec_for(model, SMALL)
    expect = codec.compress([im], classical_only=True)
    assert codec.preflight_estimate(im) > 1.0
    chain_must_not_run(codec, monkeypatch)
    blob = codec.compress([im])
    assert blob == expect
    assert np.array_equal(codec.decompress(blob)[0], im)


def test_sure_win_compares_the_estimate_times_its_clean_margin():
    cfg = PreflightConfig(clean_margin=1.1)
    assert sure_win(3.0, 3.4 * 100, 100, cfg)       # 3 x 1.1 = 3.3 < 3.4
    assert not sure_win(3.0, 3.2 * 100, 100, cfg)
    with pytest.raises(ValueError):
        PreflightConfig(clean_margin=0.99)


@pytest.mark.parametrize("lattice", [False, True])
def test_short_of_a_sure_win_only_decoded_jpegs_run_the_chain(model, monkeypatch, lattice):
    """Not a sure win: the chain runs only where the image has a JPEG lattice the prior can
    use."""
    from vdmcodec.coding.priors import jpeg_prior

    im = np.full((40, 48, 3), 77, dtype=np.uint8)
    codec = codec_for(model, PreflightConfig(crops=4, crop=16, draws=2, min_pixels=32 * 32, clean_margin=1e9,
                                             prior_margin=1e9))
    monkeypatch.setattr(jpeg_prior, "has_lattice", lambda pixels: lattice)
    chain_must_not_run(codec, monkeypatch)
    if lattice:
        with pytest.raises(AssertionError, match="the chain ran"):
            codec.compress([im])
    else:
        assert codec.compress([im]) == codec.compress([im], classical_only=True)


@pytest.mark.parametrize("saving", ["none", "most"])
def test_a_decoded_jpeg_whose_estimate_loses_even_with_its_prior_stays_classical(model, monkeypatch, saving):
    """A decoded JPEG goes to the probe without the preflight's estimate, and is given up
    when the probe's rate less its choice's saving, over prior_margin, is not below the
    classical file (the chain is never run, the classical file is written); where the saving
    brings it below, the chain runs."""
    from dataclasses import replace

    from vdmcodec.coding.preflight import loses_with_prior
    from vdmcodec.coding.priors import jpeg_prior

    im = np.full((40, 48, 3), 77, dtype=np.uint8)
    from vdmcodec.coding import planner

    codec = codec_for(model, PreflightConfig(crops=4, crop=16, draws=2, min_pixels=32 * 32, clean_margin=1e9))
    monkeypatch.setattr(planner, "loses_before_prior", lambda *a: False)  # the quick check passes it on
    monkeypatch.setattr(jpeg_prior, "has_lattice", lambda pixels: True)
    monkeypatch.setattr(codec, "preflight_estimate", lambda *a: pytest.fail("a decoded JPEG needs no preflight estimate"))
    real = codec.choose(im, codec.chain(codec.steps, codec.grid_bits))  # the tiny model's probe
    classical_bits = 8 * len(container.unpack(codec.compress([im], classical_only=True))[1])
    assert real.rate / codec.preflight.prior_margin > classical_bits / im.size
    codec.choose = lambda pixels, chain, priors=None: replace(real, saving=0.0 if saving == "none" else real.rate)
    assert loses_with_prior(real.rate, 0.0, classical_bits, im.size)
    assert not loses_with_prior(real.rate, real.rate, classical_bits, im.size)

    def refuse(*a, **k):
        raise AssertionError("the chain ran")

    monkeypatch.setattr(codec, "_compress_chain", refuse)
    if saving == "none":
        assert codec.compress([im]) == codec.compress([im], classical_only=True)
    else:
        with pytest.raises(AssertionError, match="the chain ran"):
            codec.compress([im])


@pytest.mark.parametrize("saving_max", [0.0, 0.9])
def test_a_decoded_jpeg_whose_quick_rate_loses_whatever_its_prior_saves_skips_the_probe(model, monkeypatch,
                                                                                       saving_max):
    """Beside the classical codecs, a decoded JPEG's quick rate (Planner.quick_rate): where
    even a prior saving ``prior_saving_max`` of it would leave it above the classical file
    over prior_margin, compress writes the classical file without the full probe or the
    chain; otherwise the full probe decides (here it gives up too: its rate is the untrained
    model's, thousands of bits per subpixel)."""
    from vdmcodec.coding import planner
    from vdmcodec.coding.preflight import loses_before_prior
    from vdmcodec.coding.priors import jpeg_prior

    im = np.full((40, 48, 3), 77, dtype=np.uint8)
    cfg = PreflightConfig(crops=4, crop=16, draws=2, min_pixels=32 * 32, prior_saving_max=saving_max)
    codec = codec_for(model, cfg)
    monkeypatch.setattr(jpeg_prior, "has_lattice", lambda pixels: True)
    classical = codec.compress([im], classical_only=True)
    per_subpixel = 8 * len(container.unpack(classical)[1]) / im.size
    quick = 2 * cfg.prior_margin * per_subpixel  # loses by 2x, unless a prior saved more than half
    monkeypatch.setattr(planner.Planner, "quick_rate", lambda self, pixels, chain: quick)
    assert loses_before_prior(quick, per_subpixel * im.size, im.size, cfg) == (saving_max == 0.0)
    probed = []
    real_choose = codec.choose
    codec.choose = lambda *a, **k: probed.append(1) or real_choose(*a, **k)

    def refuse(*a, **k):
        raise AssertionError("the chain ran")

    monkeypatch.setattr(codec, "_compress_chain", refuse)
    assert codec.compress([im]) == classical
    assert probed == ([] if saving_max == 0.0 else [1])


def test_the_probe_batches_levels_as_a_call_per_level_would(model):
    """DiffusionChain.p_mean_std_levels (the probe's levels mixed in network calls) gives
    what p_mean_std gives level by level, to float32 rounding."""
    from vdmcodec.coding.chain import ChainConfig, DiffusionChain

    chain = DiffusionChain(model, ChainConfig(steps=4, arithmetic="float32"))
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((k, 3, 16, 16)), i) for k, i in ((2, 1), (1, 4), (3, 2))]
    for call in (1, 4, 64):
        for (z, i), (mean, std) in zip(batches, chain.p_mean_std_levels(batches, call)):
            want_mean, want_std = chain.p_mean_std(z, i)
            np.testing.assert_allclose(mean, want_mean, rtol=1e-5, atol=1e-6)
            assert (std is None) == (want_std is None)
            if std is not None:
                np.testing.assert_allclose(std, want_std, rtol=1e-5)


def test_a_sure_win_runs_the_chain_without_a_lattice(model, monkeypatch):
    from vdmcodec.coding.priors import jpeg_prior

    im = np.full((40, 48, 3), 77, dtype=np.uint8)
    codec = codec_for(model, PreflightConfig(crops=4, crop=16, draws=2, min_pixels=32 * 32))
    monkeypatch.setattr(jpeg_prior, "has_lattice", lambda pixels: False)
    monkeypatch.setattr(codec, "preflight_estimate", lambda pixels, method="tiled": 1e-6)
    chain_must_not_run(codec, monkeypatch)
    with pytest.raises(AssertionError, match="the chain ran"):
        codec.compress([im])


@pytest.mark.parametrize("preflight", [None, PreflightConfig(min_pixels=10**6)])
def test_compress_runs_the_chain_when_the_preflight_is_off_or_small(model, monkeypatch, preflight):
    im = np.full((40, 48, 3), 77, dtype=np.uint8)
    codec = codec_for(model, preflight)
    chain_must_not_run(codec, monkeypatch)
    with pytest.raises(AssertionError, match="the chain ran"):
        codec.compress([im])


def test_force_model_ignores_the_preflight(model):
    im = np.full((40, 48, 3), 77, dtype=np.uint8)
    codec = codec_for(model, SMALL)
    blob = codec.compress([im], force_model=True)
    assert container.unpack(blob)[0].image_methods() == ["tiled"]
    assert np.array_equal(codec.decompress(blob)[0], im)


def test_in_an_archive_only_the_images_given_up_on_skip_the_chain(model, monkeypatch):
    """In an archive, an image given up on is stored classically (its bytes seed the stack)
    while the others still go through the chain; gray images are estimated as R = G = B."""
    from vdmcodec.coding import planner, tiles

    # a sure win: an estimate below twice the classical file (the untrained model's on noise)
    monkeypatch.setattr(planner, "sure_win", lambda est, bits, subpixels, cfg: est < 2 * bits / subpixels)

    flat = np.full((40, 48, 3), 77, dtype=np.uint8)
    busy = noise((40, 48, 3), seed=1)
    codec = codec_for(model, PreflightConfig(crops=4, crop=16, draws=2, min_pixels=32 * 32, prior_margin=1e9))
    assert codec.preflight_estimate(busy) < 2 * 8.0
    chained = []
    orig = tiles.push_image

    def spy(chain, msg, pixels, *a, **k):
        chained.append(pixels.copy())
        return orig(chain, msg, pixels, *a, **k)

    monkeypatch.setattr(tiles, "push_image", spy)
    blob = codec.compress([flat, busy])
    assert len(chained) == 1 and np.array_equal(chained[0], busy)
    out = codec.decompress(blob)
    assert np.array_equal(out[0], flat) and np.array_equal(out[1], busy)
    gray = np.full((40, 48, 1), 9, dtype=np.uint8)
    assert codec.preflight_estimate(gray, "tiled-gray") == pytest.approx(
        3 * codec.preflight_estimate(np.repeat(gray, 3, -1)), rel=1e-9)



def _calibrated(codec, floor):
    codec.info = {**codec.info, "card": {**codec.info.get("card", {}), "coding_preflight": {"plain_floor": floor}}}
    return codec


@pytest.mark.parametrize("floor, effort, runs", [(1.03, 7, False), (0.97, 7, True), (1.03, 8, True), (None, 7, True)])
def test_the_cards_calibration_gives_plain_photos_to_classical_codecs(model, monkeypatch, floor, effort, runs):
    """A card whose model lost on every validation photo without a JPEG lattice
    (plain_floor >= 1) sends such photos to the classical codecs before any network pass,
    below effort 8; a model that won somewhere, effort 8-9, or no calibration: the estimate
    decides (here a sure win, so the chain runs)."""
    from vdmcodec.coding.priors import jpeg_prior

    im = np.full((40, 48, 3), 77, dtype=np.uint8)
    codec = codec_for(model, PreflightConfig(crops=4, crop=16, draws=2, min_pixels=32 * 32))
    if floor is not None:
        _calibrated(codec, floor)
    monkeypatch.setattr(jpeg_prior, "has_lattice", lambda pixels: False)
    estimates = []
    monkeypatch.setattr(codec, "preflight_estimate", lambda pixels, method="tiled": estimates.append(1) or 1e-6)
    chain_must_not_run(codec, monkeypatch)
    if runs:
        with pytest.raises(AssertionError, match="the chain ran"):
            codec.compress([im], effort=effort)
        assert estimates
    else:
        assert codec.compress([im], effort=effort) == codec.compress([im], classical_only=True)
        assert not estimates


def test_a_decoded_jpeg_gets_the_estimate_whatever_the_calibration(model, monkeypatch):
    from vdmcodec.coding.priors import jpeg_prior

    im = np.full((40, 48, 3), 77, dtype=np.uint8)
    codec = _calibrated(codec_for(model, PreflightConfig(crops=4, crop=16, draws=2, min_pixels=32 * 32)), 1.5)
    monkeypatch.setattr(jpeg_prior, "has_lattice", lambda pixels: True)
    monkeypatch.setattr(codec, "preflight_estimate", lambda pixels, method="tiled": 1e-6)
    chain_must_not_run(codec, monkeypatch)
    with pytest.raises(AssertionError, match="the chain ran"):
        codec.compress([im])


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), "1.1", True])
def test_a_broken_calibration_is_refused(bad):
    from vdmcodec.errors import ModelError
    from vdmcodec.coding.preflight import plain_photos_lose

    with pytest.raises(ModelError, match="plain_floor"):
        plain_photos_lose({"coding_preflight": {"plain_floor": bad}}, PreflightConfig())
    assert not plain_photos_lose({}, PreflightConfig())


def test_a_classical_compress_leaves_torchs_switches_alone(model, monkeypatch):
    """Precision switches are pinned only once the network runs (their first use imports
    about a second and a half of torch): an all-classical call never sets them."""
    from vdmcodec.coding import codec as codec_mod

    calls = []
    real = codec_mod.pinned
    monkeypatch.setattr(codec_mod, "pinned", lambda: calls.append(1) or real())
    im = np.full((40, 48, 3), 77, dtype=np.uint8)
    codec = _calibrated(codec_for(model, PreflightConfig(crops=4, crop=16, draws=2, min_pixels=32 * 32)), 1.5)
    codec.compress([im])
    assert calls == []
    codec.compress([im], force_model=True)
    assert calls == [1]


def test_the_lattice_test_runs_while_the_classical_codecs_encode(model, monkeypatch):
    """compress tests a tiled image for a JPEG lattice on a second thread while its classical
    candidates encode (both libraries release the GIL), not after them."""
    import threading

    from vdmcodec.coding import classical
    from vdmcodec.coding.priors import jpeg_prior

    im = noise((40, 48, 3))
    codec = codec_for(model, SMALL)
    done, seen = threading.Event(), {}
    real = classical.encode_best

    def encode_best(pixels, effort=classical.ClassicalEffort(), context=False):
        seen["during"] = done.wait(10)  # the lattice test ends while this encode is still running
        return real(pixels, effort, context)

    def has_lattice(pixels):
        seen["thread"] = threading.current_thread() is not threading.main_thread()
        done.set()
        return False

    monkeypatch.setattr(classical, "encode_best", encode_best)
    monkeypatch.setattr(jpeg_prior, "has_lattice", has_lattice)
    codec.compress([im])
    assert seen == {"during": True, "thread": True}


def test_a_decoded_jpegs_quick_rate_runs_beside_the_classical_codecs(model, monkeypatch):
    """Where the lattice test finds a decoded JPEG, its quick rate is measured on the second
    thread while the classical codecs encode; its candidate priors, once, only where the quick
    check passes it on to the probe."""
    import threading

    from vdmcodec.coding import planner
    from vdmcodec.coding.priors import jpeg_prior

    im = noise((40, 48, 3))
    codec = codec_for(model, PreflightConfig(crops=4, crop=16, draws=2, min_pixels=32 * 32, prior_margin=1e9))
    monkeypatch.setattr(planner, "loses_before_prior", lambda *a: False)
    calls, quick = [], []
    monkeypatch.setattr(jpeg_prior, "has_lattice", lambda pixels: True)
    monkeypatch.setattr(jpeg_prior, "candidates", lambda pixels: calls.append(
        threading.current_thread() is threading.main_thread()) or [])
    real_quick = planner.Planner.quick_rate
    monkeypatch.setattr(planner.Planner, "quick_rate", lambda self, pixels, chain: quick.append(
        threading.current_thread() is threading.main_thread()) or real_quick(self, pixels, chain))
    blob = codec.compress([im])
    assert quick == [False] and calls == [True]
    np.testing.assert_array_equal(codec.decompress(blob)[0], im)
