"""Chroma-structure priors (coding/priors/structure.py): measurement, serialisation, the denoiser
correction, and coding with them (bit-exact, recorded in the file, refused when forged)."""
from __future__ import annotations

import json
from types import SimpleNamespace
from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.helpers import tiny_model_config
from vdmcodec.coding import container
from vdmcodec.coding.codec import Codec
from vdmcodec.coding.planner import ImageChoice
from vdmcodec.coding.priors import structure
from vdmcodec.coding.priors.structure import CELLS, MODES, StructurePrior
from vdmcodec.diffusion import VDM, scale_pixels
from vdmcodec.errors import FormatError, RuntimeMismatchError
from vdmcodec.training.augment import subsample_chroma

pytestmark = pytest.mark.usefixtures("one_thread")


def photo(h=48, w=64, seed=0) -> np.ndarray:
    """Smooth colour gradients with texture: an RGB image without chroma structure."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([y * 2 + x, 200 - x * 2, 60 + y + (x % 7) * 3], axis=-1)
    return np.clip(base + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("mode, factors", [("422", (1, 2)), ("420", (2, 2))])
def test_subsampled_images_are_measured_as_structured(mode, factors):
    im = subsample_chroma(photo(), factors, "replicate", "jfif")
    prior, covered = structure.measure(im, mode)
    assert covered > 0.97
    zero = CELLS // 2
    assert all(w[zero] / sum(w) > 0.5 for w in prior.weights)   # most block differences are exactly 0
    assert mode in [p.mode for p in structure.candidates(im)]
    plain, covered = structure.measure(photo(), mode)
    assert covered < 0.5 and mode not in [p.mode for p in structure.candidates(photo())]


def test_components_are_the_block_differences():
    im = np.zeros((2, 4, 3), dtype=np.uint8)
    im[0, 1] = (10, 7, 3)        # R - G = 3, B - G = -4 at (0, 1); 0 elsewhere
    (comp,) = structure.components(im, "422")
    np.testing.assert_array_equal(comp, [[3, -4], [0, 0], [0, 0], [0, 0]])   # pixel 1 minus pixel 0 of each pair
    h, v, d = structure.components(im, "420")
    np.testing.assert_array_equal(h[0], [3, -4])     # right minus left
    np.testing.assert_array_equal(v[0], [-3, 4])     # bottom minus top
    np.testing.assert_array_equal(d[0], [-3, 4])     # diagonal
    assert structure.candidates(im[..., :1]) == []   # gray images have no chroma


def test_prior_bytes_round_trip_and_bad_priors():
    prior, _ = structure.measure(subsample_chroma(photo(), (2, 2), "replicate", "jfif"), "420")
    data = prior.to_bytes()
    assert len(data) == StructurePrior.size_of(data[0]) == 1 + 2 * (CELLS + 1) * 3
    assert StructurePrior.from_bytes(data) == prior
    assert StructurePrior.from_bytes(b"\0") is None and StructurePrior.size_of(0) == 1
    with pytest.raises(ValueError):
        StructurePrior.size_of(9)
    for bad in [("444", prior.weights), ("420", prior.weights[:1]), ("422", ((0,) * (CELLS + 1),)),
                ("422", ((1,) * CELLS,))]:
        with pytest.raises(ValueError):
            StructurePrior(*bad)


def _eps_error(prior, im, gamma, origin=(0, 0), seed=0):
    """Squared error of eps_hat = 0 (a network that knows nothing) before and after the prior."""
    rng = np.random.default_rng(seed)
    x = scale_pixels(torch.from_numpy(im).permute(2, 0, 1)[None]).double().numpy()
    alpha, sigma = np.sqrt(1 / (1 + np.exp(gamma))), np.sqrt(1 / (1 + np.exp(-gamma)))
    eps = rng.standard_normal(x.shape)
    z = alpha * x + sigma * eps
    eps_hat = np.zeros_like(z)
    adj = prior.adjust_eps(eps_hat, z, alpha, sigma, origin)
    return float(np.square(eps - eps_hat).sum()), float(np.square(eps - adj).sum()), eps_hat, adj


@pytest.mark.parametrize("mode, factors", [("422", (1, 2)), ("420", (2, 2))])
def test_the_posterior_mean_removes_the_structured_directions_noise(mode, factors):
    """With z at low noise, the block differences of chroma are all but known from the prior:
    the corrected eps_hat is far closer to the true noise; luma and the block means keep the
    network's (here: zero) prediction."""
    im = subsample_chroma(photo(), factors, "replicate", "jfif")
    prior, _ = structure.measure(im, mode)
    before, after, eps_hat, adj = _eps_error(prior, im, gamma=-9.0)
    n_b = np.prod(MODES[mode][0])
    # the constrained directions: 2 of 3 colour directions times (n_b - 1) of n_b block positions
    share = 2 / 3 * (n_b - 1) / n_b
    assert after < before * (1 - 0.8 * share)
    np.testing.assert_allclose(adj.sum(axis=1), 0.0, atol=1e-9)          # luma direction untouched
    (by, bx) = MODES[mode][0]
    blocks = adj.reshape(1, 3, 48 // by, by, 64 // bx, bx).sum(axis=(3, 5))
    np.testing.assert_allclose(blocks, 0.0, atol=1e-9)                  # block sums untouched


def test_the_broad_component_keeps_the_network_where_the_prior_is_wrong():
    """On an image without structure, a prior measured on a structured one changes little at
    low noise: the off-grid differences go to the broad component, which keeps eps_hat."""
    prior, _ = structure.measure(subsample_chroma(photo(), (1, 2), "replicate", "jfif"), "422")
    rough = photo(seed=3)
    rough[:, 1::2, 0] = np.clip(rough[:, 1::2, 0].astype(int) + 40, 0, 255)   # pair differences of 40 levels
    before, after, _, _ = _eps_error(prior, rough, gamma=-12.0)
    assert after < 1.05 * before


def test_phase_follows_the_origin():
    """A segment starting at an odd column pairs its pixels from column 1 on."""
    im = subsample_chroma(photo(48, 66), (1, 2), "replicate", "jfif")
    prior, _ = structure.measure(im, "422")
    right = im[:, 1:65]          # starts at image column 1: odd phase
    _, in_phase, _, adj = _eps_error(prior, right, gamma=-9.0, origin=(0, 1))
    _, off_phase, _, _ = _eps_error(prior, right, gamma=-9.0, origin=(0, 0))
    assert in_phase < off_phase
    assert (adj[..., 0] == 0).all() and (adj[..., -1] == 0).all()   # incomplete pairs at both edges keep eps_hat


# ---- coding ------------------------------------------------------------------------------
def tiny_rgb_codec(**kw) -> Codec:
    torch.manual_seed(3)
    model = VDM(tiny_model_config(image_channels=3)).eval().requires_grad_(False)
    return Codec(model, {"name": "tiny3", "sha256": "03" * 32}, steps=2, tile=8, **kw)


@pytest.fixture(scope="module")
def structured():
    im = subsample_chroma(photo(20, 26, seed=4), (1, 2), "replicate", "jfif")
    prior, _ = structure.measure(im, "422")
    codec = tiny_rgb_codec()
    codec.choose = lambda pixels, chain, priors=None: ImageChoice(prior, 0, 0.0, 0.0)      # the tiny model's estimate is not the point here
    return codec, im, prior, codec.compress([im], force_model=True)


@pytest.mark.parametrize("arith", ["float32", "portable"])
def test_coding_with_a_structure_prior_is_lossless_and_recorded(structured, arith):
    codec, im, prior, blob = structured
    if arith != "float32":
        codec = tiny_rgb_codec(arithmetic=arith)
        codec.choose = lambda pixels, chain, priors=None: ImageChoice(prior, 0, 0.0, 0.0)
        blob = codec.compress([im], force_model=True)
    h = container.unpack(blob)[0]
    assert h.structures == [prior] and blob[4] == container.VERSION == 7
    np.testing.assert_array_equal(tiny_rgb_codec().decompress(blob)[0], im)
    plain = tiny_rgb_codec(structure_priors=False).compress([im], force_model=True)
    assert container.unpack(plain)[0].structures == [] and plain != blob


def test_a_forged_structure_prior_is_refused_or_caught(structured):
    codec, im, prior, blob = structured
    h, payload = container.unpack(blob)
    other = StructurePrior("422", tuple(tuple(w[::-1]) for w in prior.weights))
    for forged in (replace(h, structures=[other]), replace(h, structures=[None])):
        with pytest.raises((FormatError, RuntimeMismatchError)):
            codec.decompress(container.frame(container.encode_header(forged), payload))
    with pytest.raises(FormatError, match="structure"):   # unknown mode byte
        hb = bytearray(container.encode_header(h))
        at = bytes(hb).index(prior.to_bytes())
        hb[at] = 7
        container.parse_header(bytes(hb))
    gray = replace(h, shapes=[[20, 26, 1, 1]], methods=[["tiled-gray", 1]])
    with pytest.raises(FormatError, match="structure"):
        container.validate(container.parse_header(container.encode_header(gray)))


def test_choose_keeps_a_prior_only_where_it_saves(monkeypatch):
    codec = tiny_rgb_codec()
    chain = codec.chain(2, codec.grid_bits)
    im = subsample_chroma(photo(), (1, 2), "replicate", "jfif")
    from vdmcodec.coding import planner

    def fake(saving):
        return lambda chain, pixels, cfg: SimpleNamespace(rate=3.0, prior_savings=lambda priors: (saving,) * len(priors),
                                                          corr_savings=lambda scales: (0.0,) * len(scales))

    monkeypatch.setattr(planner, "Probe", fake(0.5))
    choice = codec.choose(im, chain)
    assert choice.prior.mode == "422" and (choice.rate, choice.saving) == (3.0, 0.5)
    monkeypatch.setattr(planner, "Probe", fake(-0.1))
    assert codec.choose(im, chain).prior is None
    assert codec.choose(photo(), chain).prior is None                # no candidate
    assert tiny_rgb_codec(structure_priors=False).choose(im, chain).prior is None


def test_the_probes_prior_saving_is_paired_and_signed():
    """The estimate is a paired difference: zero for a prior that changes nothing
    (an image whose blocks are all off the grid keeps the network's eps_hat everywhere),
    reproducible, and positive for a structured image under a model that knows nothing."""
    from vdmcodec.coding.preflight import PreflightConfig, Probe

    def structure_gains(chain, im, priors, cfg):
        return list(Probe(chain, im, cfg).prior_savings(priors))

    codec = tiny_rgb_codec()
    chain = codec.chain(4, codec.grid_bits)
    im = subsample_chroma(photo(64, 64), (1, 2), "replicate", "jfif")
    prior, _ = structure.measure(im, "422")
    cfg = PreflightConfig(crops=2, crop=32, draws=4)
    g = structure_gains(chain, im, [prior], cfg)
    assert g == structure_gains(chain, im, [prior], cfg) and g[0] > 0
