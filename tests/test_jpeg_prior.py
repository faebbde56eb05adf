"""JPEG-lattice priors (coding/jpeg_prior.py): the steps seen in a decoded JPEG, serialisation,
the correction, and lossless coding with them."""
from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import tiny_model_config
from vdmcodec.coding import container, jpeg_prior, structure
from vdmcodec.coding.codec import Codec
from vdmcodec.coding.jpeg_prior import JpegPrior
from vdmcodec.diffusion import VDM, scale_pixels
from vdmcodec.errors import FormatError, RuntimeMismatchError

pytestmark = pytest.mark.usefixtures("one_thread")


def textured(h=64, w=80, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = 128 + 60 * np.sin(x / 5.0) * np.cos(y / 7.0)
    rgb = np.stack([base, base * 0.8 + 20, 230 - base * 0.7], -1) + rng.normal(0, 10, (h, w, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8)


def decoded_jpeg(im: np.ndarray, quality: int = 50) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(im).save(buf, format="JPEG", quality=quality, subsampling=0)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def test_steps_of_a_decoded_jpeg_are_its_quantisation_table():
    """Pillow's quality-50 luminance table is the standard one: 16, 11, 10, 16, ... on row 0."""
    steps, rho = jpeg_prior.estimate_steps(decoded_jpeg(textured(96, 128)))
    lattice = [q for q in steps if 0 < q < jpeg_prior.ZERO_STEP]
    assert len(lattice) >= 8 and rho < 0.1
    assert steps[1] == 11 and steps[8] == 12       # (0, 1) and (1, 0) of the standard table
    assert jpeg_prior.candidates(textured()) == []  # no lattice in a raw image
    assert jpeg_prior.candidates(textured()[..., :1]) == []


def test_prior_bytes_round_trip_and_bad_priors():
    (p, *_) = jpeg_prior.candidates(decoded_jpeg(textured(96, 128)))
    data = p.to_bytes()
    assert len(data) == jpeg_prior.SIZE == structure.prior_size(data[0])
    assert structure.parse_prior(data) == p and JpegPrior.from_bytes(data) == p
    for bad in [dict(q=(1,) * 63), dict(q=(256,) + (1,) * 63), dict(spread=0), dict(tau=70000), dict(rho=0)]:
        with pytest.raises(ValueError):
            replace(p, **bad)


def test_the_comb_pulls_coefficients_onto_the_lattice():
    """Low noise, a network that knows nothing (eps_hat = 0): the corrected prediction is far
    closer to the true noise on a decoded JPEG; on a shifted grid (wrong phase) it is not."""
    im = decoded_jpeg(textured(96, 128))
    (p, *_) = jpeg_prior.candidates(im)
    rng = np.random.default_rng(0)
    x = scale_pixels(torch.from_numpy(im.copy()).permute(2, 0, 1)[None]).double().numpy()
    gamma = -9.0
    alpha, sigma = np.sqrt(1 / (1 + np.exp(gamma))), np.sqrt(1 / (1 + np.exp(-gamma)))
    eps = rng.standard_normal(x.shape)
    z = alpha * x + sigma * eps
    zero = np.zeros_like(z)
    before = np.square(eps).sum()
    after = np.square(eps - p.adjust_eps(zero, z, alpha, sigma)).sum()
    shifted = np.square(eps - p.adjust_eps(zero, z, alpha, sigma, origin=(0, 4))).sum()
    assert after < 0.9 * before and shifted > after
    per_weight = p.adjust_eps(zero, z, alpha, sigma) / jpeg_prior.W_LUMA[None, :, None, None]
    for ch in (1, 2):   # the change is along the luma weights: the smallest RGB change with that luma
        np.testing.assert_allclose(per_weight[:, ch], per_weight[:, 0], atol=1e-9)


def tiny_rgb_codec(**kw) -> Codec:
    torch.manual_seed(5)
    model = VDM(tiny_model_config(image_channels=3)).eval().requires_grad_(False)
    return Codec(model, {"name": "tiny3", "sha256": "05" * 32}, steps=2, tile=16, **kw)


def test_coding_with_a_jpeg_prior_is_lossless_and_recorded():
    im = decoded_jpeg(textured(40, 56, seed=2))
    (p, *_) = jpeg_prior.candidates(decoded_jpeg(textured(96, 128)))
    codec = tiny_rgb_codec()
    codec.choose_structure = lambda pixels, chain: p
    blob = codec.compress([im], force_model=True)
    h, payload = container.unpack(blob)
    assert h.structures == [p]
    np.testing.assert_array_equal(tiny_rgb_codec().decompress(blob)[0], im)
    forged = replace(h, structures=[replace(p, tau=p.tau + 256)])
    with pytest.raises((FormatError, RuntimeMismatchError)):
        tiny_rgb_codec().decompress(container.frame(container.encode_header(forged), payload))


def test_portable_coding_does_not_offer_the_jpeg_prior(monkeypatch):
    import vdmcodec.coding.codec as codec_module

    seen = []
    monkeypatch.setattr(codec_module, "structure_gains", lambda chain, pixels, priors, cfg: seen.append(priors) or [1.0] * len(priors))
    im = decoded_jpeg(textured(96, 128))
    assert tiny_rgb_codec(arithmetic="portable").choose_structure(im, tiny_rgb_codec(arithmetic="portable").chain(2, 2)) is None
    codec = tiny_rgb_codec()
    assert isinstance(codec.choose_structure(im, codec.chain(2, 2)), JpegPrior)


def test_block_dct_is_the_orthonormal_2d_dct():
    b = np.random.default_rng(0).standard_normal((3, 5, 8, 8))
    d = jpeg_prior.dct_matrix()
    np.testing.assert_allclose(d @ d.T, np.eye(8), atol=1e-12)
    np.testing.assert_allclose(jpeg_prior.dct2(b), np.einsum("ui,bnij,vj->bnuv", d, b, d), atol=1e-12)
    np.testing.assert_allclose(jpeg_prior.dct2(jpeg_prior.dct2(b), inverse=True), b, atol=1e-12)
