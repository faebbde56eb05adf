"""JPEG-lattice priors (coding/priors/jpeg_prior.py): the steps seen in a decoded JPEG, serialisation,
the correction, and lossless coding with them."""
from __future__ import annotations

import io
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import tiny_model_config
from vdmcodec.coding import container
from vdmcodec.coding.codec import Codec
from vdmcodec.coding.planner import ImageChoice
from vdmcodec.coding.priors import jpeg_prior, parse_prior, prior_size
from vdmcodec.coding.priors.jpeg_prior import JpegPrior
from vdmcodec.diffusion import VDM, scale_pixels
from vdmcodec.errors import FormatError, RuntimeMismatchError

pytestmark = pytest.mark.usefixtures("one_thread")


def textured(h=64, w=80, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = 128 + 60 * np.sin(x / 5.0) * np.cos(y / 7.0)
    rgb = np.stack([base, base * 0.8 + 20, 230 - base * 0.7], -1) + rng.normal(0, 10, (h, w, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8)


def decoded_jpeg(im: np.ndarray, quality: int = 50, subsampling: int = 0) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(im).save(buf, format="JPEG", quality=quality, subsampling=subsampling)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def noisy_latent(im: np.ndarray, seed: int, gamma: float = -9.0):
    """(eps, z, alpha, sigma): the VDM latent of a uint8 RGB image at low noise."""
    x = scale_pixels(torch.from_numpy(im.copy()).permute(2, 0, 1)[None]).double().numpy()
    alpha, sigma = np.sqrt(1 / (1 + np.exp(gamma))), np.sqrt(1 / (1 + np.exp(-gamma)))
    eps = np.random.default_rng(seed).standard_normal(x.shape)
    return eps, alpha * x + sigma * eps, alpha, sigma


def test_steps_of_a_decoded_jpeg_are_its_quantisation_table():
    """Pillow's quality-50 luminance table is the standard one: 16, 11, 10, 16, ... on row 0."""
    steps, rho = jpeg_prior.estimate_steps(decoded_jpeg(textured(96, 128)))
    lattice = [q for q in steps if 0 < q < jpeg_prior.ZERO_STEP]
    assert len(lattice) >= 8 and rho < 0.1
    assert steps[1] == 11 and steps[8] == 12       # (0, 1) and (1, 0) of the standard table
    assert jpeg_prior.candidates(textured()) == []  # no lattice in a raw image
    assert jpeg_prior.candidates(textured()[..., :1]) == []


@pytest.mark.parametrize("quality", [50, 90])
def test_the_quick_lattice_test_agrees_with_the_full_estimate(quality):
    """has_lattice looks at every k-th block only: on a decoded JPEG large enough for the
    subsampling (2,400 blocks, every 5th kept) it still sees the lattice; on the raw image,
    gray input and a tiny one it sees none."""
    raw = textured(320, 480, seed=1)
    jpg = decoded_jpeg(raw, quality)
    assert jpeg_prior.has_lattice(jpg, blocks=512) and bool(jpeg_prior.candidates(jpg))
    assert not jpeg_prior.has_lattice(raw, blocks=512) and not jpeg_prior.candidates(raw)
    assert not jpeg_prior.has_lattice(jpg[..., :1]) and not jpeg_prior.has_lattice(jpg[:7, :7])


def test_prior_bytes_round_trip_and_bad_priors():
    (p, *_) = jpeg_prior.candidates(decoded_jpeg(textured(96, 128)))
    assert p.qc == (0,) * 64   # luma only, in mode 4
    for p, mode, size in ((replace(p, qc=()), jpeg_prior.MODE_ID, jpeg_prior.SIZE), (p, jpeg_prior.MODE_ID_CHROMA, jpeg_prior.SIZE_CHROMA)):
        data = p.to_bytes()
        assert data[0] == mode and len(data) == size == prior_size(data[0])
        assert parse_prior(data) == p and JpegPrior.from_bytes(data) == p
    for bad in [dict(q=(1,) * 63), dict(q=(256,) + (1,) * 63), dict(spread=0), dict(tau=70000), dict(rho=0)]:
        with pytest.raises(ValueError):
            replace(p, **bad)


def test_the_comb_pulls_coefficients_onto_the_lattice():
    """Low noise, a network that knows nothing (eps_hat = 0): the corrected prediction is far
    closer to the true noise on a decoded JPEG; on a shifted grid (wrong phase) it is not."""
    im = decoded_jpeg(textured(96, 128))
    (p4, *_) = jpeg_prior.candidates(im)
    p = replace(p4, qc=())     # mode 3
    eps, z, alpha, sigma = noisy_latent(im, seed=0)
    zero = np.zeros_like(z)
    before = np.square(eps).sum()
    after = np.square(eps - p.adjust_eps(zero, z, alpha, sigma)).sum()
    shifted = np.square(eps - p.adjust_eps(zero, z, alpha, sigma, origin=(0, 4))).sum()
    assert after < 0.9 * before and shifted > after
    per_weight = p.adjust_eps(zero, z, alpha, sigma) / jpeg_prior.W_LUMA[None, :, None, None]
    for ch in (1, 2):   # the change is along the luma weights: the smallest RGB change with that luma
        np.testing.assert_allclose(per_weight[:, ch], per_weight[:, 0], atol=1e-9)
    # mode 4 without chroma steps: the same luma change, with R = G = B changes (chroma kept)
    d4 = p4.adjust_eps(zero, z, alpha, sigma)
    np.testing.assert_allclose(d4[:, 1], d4[:, 0], atol=1e-9)
    np.testing.assert_allclose(d4[:, 2], d4[:, 0], atol=1e-9)
    luma_of = lambda d: np.einsum("c,bchw->bhw", jpeg_prior.W_LUMA, d)  # noqa: E731
    np.testing.assert_allclose(luma_of(d4), luma_of(p.adjust_eps(zero, z, alpha, sigma)), atol=1e-9)


def test_chroma_lattice_of_a_decoded_jpeg():
    """Pillow's quality-50 chrominance table starts 17, 18, 24 / 18 (standard). A 4:4:4 file
    shows it exactly on single pixels; 4:2:2 and 4:2:0 files show their cells, with steps a
    little smaller where the decoder's smoothing upsampler shrank them; a raw image, none."""
    steps, found, spread, rho = jpeg_prior.estimate_chroma(decoded_jpeg(textured(192, 256), subsampling=0))
    assert found == (1, 1) and (steps[0], steps[1], steps[2], steps[8]) == (17, 18, 24, 18)
    assert 0 < spread < 0.5 and rho < 0.05
    for subsampling, sub in ((1, (1, 2)), (2, (2, 2))):
        steps, found, spread, rho = jpeg_prior.estimate_chroma(decoded_jpeg(textured(192, 256), subsampling=subsampling))
        assert found == sub and 16 <= steps[1] <= 18 and 16 <= steps[8] <= 18, (subsampling, found, steps[:9])
        assert 0 < spread < 1.5 and rho < 0.1
    assert jpeg_prior.estimate_chroma(textured(192, 256)) is None
    cands = jpeg_prior.candidates(decoded_jpeg(textured(192, 256), subsampling=2))
    assert [any(p.qc) for p in cands] == [False] * 3 + [True] * 3
    assert [replace(p, qc=(0,) * 64, chroma_sub=(2, 2), spread_c=256, rho_c=1) for p in cands[3:]] == cands[:3]
    assert "keeps chroma" in cands[0].describe() and "chroma 2x2" in cands[3].describe()


def test_chroma_prior_bytes_round_trip_and_bad_priors():
    p = jpeg_prior.candidates(decoded_jpeg(textured(192, 256), subsampling=2))[3]
    data = p.to_bytes()
    assert data[0] == jpeg_prior.MODE_ID_CHROMA and len(data) == jpeg_prior.SIZE_CHROMA == prior_size(data[0])
    assert parse_prior(data) == p and JpegPrior.from_bytes(data) == p
    with pytest.raises(ValueError):
        JpegPrior.from_bytes(data[:135] + bytes([len(jpeg_prior.CHROMA_SUBSAMPLING)]) + data[136:])
    for bad in [dict(qc=(1,) * 63), dict(chroma_sub=(2, 1)), dict(spread_c=0), dict(rho_c=65536)]:
        with pytest.raises(ValueError):
            replace(p, **bad)


def test_the_chroma_comb_lowers_the_error_further():
    """4:2:0 decoded JPEG, low noise, eps_hat = 0: the luma-and-chroma prior's prediction is
    closer to the true noise than the luma-only one's, at the image's phase and at a tile's
    odd origin."""
    im = decoded_jpeg(textured(192, 256), subsampling=2)
    cands = jpeg_prior.candidates(im)
    luma_only, both = cands[0], cands[3]
    eps, z, alpha, sigma = noisy_latent(im, seed=1)
    zero = np.zeros_like(z)
    before = np.square(eps).sum()
    for cut in (0, 5):   # an array that starts at image coordinate (5, 5)
        sl = (slice(None), slice(None), slice(cut, None), slice(cut, None))
        e, zz, o = eps[sl], z[sl], zero[sl]
        err = {p: np.square(e - p.adjust_eps(o, zz, alpha, sigma, origin=(cut, cut))).sum() for p in (luma_only, both)}
        assert err[both] < 0.97 * err[luma_only] < 0.9 * before


def tiny_rgb_codec(**kw) -> Codec:
    torch.manual_seed(5)
    model = VDM(tiny_model_config(image_channels=3)).eval().requires_grad_(False)
    return Codec(model, {"name": "tiny3", "sha256": "05" * 32}, steps=2, tile=16, **kw)


def test_coding_with_a_jpeg_prior_is_lossless_and_recorded():
    im = decoded_jpeg(textured(40, 56, seed=2))
    (p4, *_) = jpeg_prior.candidates(decoded_jpeg(textured(96, 128)))
    for p in (replace(p4, qc=()), p4):   # mode 3 (files written before commit 26414dd), mode 4 luma only
        codec = tiny_rgb_codec()
        codec.choose = lambda pixels, chain, priors=None, p=p: ImageChoice(p, 0, 0.0, 0.0)
        blob = codec.compress([im], force_model=True)
        h, payload = container.unpack(blob)
        assert h.structures == [p]
        np.testing.assert_array_equal(tiny_rgb_codec().decompress(blob)[0], im)
    forged = replace(h, structures=[replace(p, tau=p.tau + 256)])
    with pytest.raises((FormatError, RuntimeMismatchError)):
        tiny_rgb_codec().decompress(container.frame(container.encode_header(forged), payload))


def test_coding_with_a_chroma_prior_is_lossless_and_recorded():
    im = decoded_jpeg(textured(40, 56, seed=3), subsampling=2)
    p = jpeg_prior.candidates(decoded_jpeg(textured(192, 256), subsampling=2))[3]
    codec = tiny_rgb_codec()
    codec.choose = lambda pixels, chain, priors=None: ImageChoice(p, 0, 0.0, 0.0)
    blob = codec.compress([im], force_model=True)
    assert container.unpack(blob)[0].structures == [p]
    np.testing.assert_array_equal(tiny_rgb_codec().decompress(blob)[0], im)


def test_portable_coding_does_not_offer_the_jpeg_prior(monkeypatch):
    from vdmcodec.coding import planner

    seen = []
    monkeypatch.setattr(planner, "Probe", lambda chain, pixels, cfg: SimpleNamespace(
        rate=3.0, prior_savings=lambda priors: seen.append(priors) or (1.0,) * len(priors), corr_savings=lambda s: (0.0,) * len(s)))
    im = decoded_jpeg(textured(96, 128))
    assert tiny_rgb_codec(arithmetic="portable").choose(im, tiny_rgb_codec(arithmetic="portable").chain(2, 2)).prior is None
    codec = tiny_rgb_codec()
    assert isinstance(codec.choose(im, codec.chain(2, 2)).prior, JpegPrior)


def test_block_dct_is_the_orthonormal_2d_dct():
    b = np.random.default_rng(0).standard_normal((3, 5, 8, 8))
    d = jpeg_prior.dct_matrix()
    np.testing.assert_allclose(d @ d.T, np.eye(8), atol=1e-12)
    np.testing.assert_allclose(jpeg_prior.dct2(b), np.einsum("ui,bnij,vj->bnuv", d, b, d), atol=1e-12)
    np.testing.assert_allclose(jpeg_prior.dct2(jpeg_prior.dct2(b), inverse=True), b, atol=1e-12)
