"""Channel-correlated p(z_{i-1} | z_i) (level_codecs.p_codec_corr, levels.py's correlation table):
the autoregressive combinator, the table, the rate, the card, the container and the codec."""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.helpers import tiny_model_config
from vdmcodec.coding import container, levels
from vdmcodec.coding.ans import Message, autoregressive, uniform
from vdmcodec.coding.chain import ChainConfig, DiffusionChain
from vdmcodec.coding.codec import load_codec
from vdmcodec.coding.level_codecs import p_codec
from vdmcodec.coding.planner import ImageChoice
from vdmcodec.coding.preflight import Probe
from vdmcodec.coding.priors import TilePrior
from vdmcodec.diffusion import VDM
from vdmcodec.errors import FormatError, ModelError
from vdmcodec.training import fit_levels
from vdmcodec.zoo import CARD, save_model

pytestmark = pytest.mark.usefixtures("one_thread")

TABLE = ((-12.0, 0.0, 0.0, 0.0), (-6.0, 0.4, 0.3, 0.35), (4.0, 0.8, 0.6, 0.75))


def rgb_model() -> VDM:
    torch.manual_seed(0)
    cfg = tiny_model_config(image_channels=3)
    cfg = dataclasses.replace(cfg, network=dataclasses.replace(cfg.network, learned_variance=True))
    return VDM(cfg).eval()


@pytest.fixture()
def rgb_dir(tmp_path):
    d = tmp_path / "rgb"
    save_model(d, rgb_model(), {"name": "rgb", "coding_steps": 3,
                                "coding_corr": {"table": [list(r) for r in TABLE], "fit": {}}})
    return d


def test_autoregressive_hands_each_part_the_ones_before_it():
    seen = []

    def codec_of(prev):  # part j: uniform over 7 + sum(prev) symbols, so a wrong prefix breaks the sizes
        seen.append(len(prev))
        return uniform(7 + int(sum(int(p[0]) for p in prev)), 1)

    parts = [np.array([5]), np.array([11]), np.array([2])]
    msg = Message(np.arange(1, 9, dtype=np.uint32))
    before = msg.words().copy()
    autoregressive(codec_of, 3).push(msg, parts)
    assert seen == [2, 1, 0]
    out = autoregressive(codec_of, 3).pop(msg)
    assert [int(p[0]) for p in out] == [5, 11, 2] and seen[3:] == [0, 1, 2]
    np.testing.assert_array_equal(msg.words(), before)
    with pytest.raises(ValueError, match="3 parts"):
        autoregressive(codec_of, 3).push(msg, parts[:2])


def test_the_table_is_checked_and_interpolated_in_gamma():
    assert levels.check_corr([list(r) for r in TABLE]) == TABLE
    assert levels.corr_at(TABLE, -20.0) == (0.0, 0.0, 0.0) and levels.corr_at(TABLE, 9.0) == (0.8, 0.6, 0.75)
    assert levels.corr_at(TABLE, -6.0) == (0.4, 0.3, 0.35)
    np.testing.assert_allclose(levels.corr_at(TABLE, -1.0), (0.6, 0.45, 0.55), rtol=1e-12)
    for bad in ([], "x", [[0, 0.1, 0.1]], [[0, 0.1, 0.1, 0.1], [0, 0.1, 0.1, 0.1]], [[0, 1.2, 0, 0]],
                [[0, 0.9, 0.9, -0.9]], [[0, float("nan"), 0, 0]]):
        with pytest.raises(ValueError):
            levels.check_corr(bad)
    d = levels.corr_digest(TABLE)
    assert len(d) == 16 and d != levels.corr_digest(TABLE[:2]) and d == levels.corr_digest([list(r) for r in TABLE])


def correlated_level(R, seed=0, shape=(4, 3, 32, 32)):
    """A chain level with learned stds, and symbols drawn from N(mean, b I + S R S) on its grid."""
    model = rgb_model()
    chain = DiffusionChain(model, ChainConfig(4, channel_corr=TABLE))
    i = 2
    rng = np.random.default_rng(seed)
    b = chain.grid.std_p[i] ** 2
    std = np.sqrt(b + (rng.uniform(1, 3, shape) * chain.grid.std_p[i]) ** 2)  # extra variance 1-9 x b
    mean = rng.normal(size=shape)
    s = np.sqrt(std**2 - b)
    R = np.asarray(R)
    L = np.linalg.cholesky(R)
    n = rng.normal(size=shape)
    extra = np.einsum("ij,bjhw->bihw", L, n) * s
    z = mean + extra + math.sqrt(b) * rng.normal(size=shape)
    k = np.rint(z / chain.grid.delta[i]).astype(np.int64).ravel()
    return chain, i, mean, std, k


def coded_bits(chain, i, mean, std, k, corr):
    msg = Message(np.ones(64, dtype=np.uint32))
    start = msg.num_bits
    codec = p_codec(chain.grid, chain.spec, i, mean, std, corr)
    codec.push(msg, k)
    bits = msg.num_bits - start
    np.testing.assert_array_equal(p_codec(chain.grid, chain.spec, i, mean, std, corr).pop(msg), k)
    return bits


def test_correlated_p_codes_correlated_latents_in_fewer_bits():
    R = [[1, 0.8, 0.6], [0.8, 1, 0.75], [0.6, 0.75, 1]]
    chain, i, mean, std, k = correlated_level(R)
    factorised = coded_bits(chain, i, mean, std, k, None)
    correlated = coded_bits(chain, i, mean, std, k, (0.8, 0.6, 0.75))
    # the joint Gaussian saves -1/2 log2 det(corr(Sigma)) per pixel (in expectation)
    b = chain.grid.std_p[i] ** 2
    s = np.sqrt(std**2 - b).transpose(0, 2, 3, 1).reshape(-1, 3)
    sd = std.transpose(0, 2, 3, 1).reshape(-1, 3)
    corr = s[:, :, None] * np.asarray(R)[None] * s[:, None, :] / (sd[:, :, None] * sd[:, None, :])
    corr[:, np.arange(3), np.arange(3)] = 1.0
    expected = -0.5 * np.linalg.slogdet(corr)[1].sum() / math.log(2)
    assert expected > 2000 and factorised - correlated == pytest.approx(expected, rel=0.1)
    # and with uncorrelated latents, zero correlations cost what the factorised p costs
    chain, i, mean, std, k = correlated_level(np.eye(3), seed=1)
    assert coded_bits(chain, i, mean, std, k, (0.0, 0.0, 0.0)) == pytest.approx(
        coded_bits(chain, i, mean, std, k, None), rel=0.01)


@pytest.mark.parametrize("arithmetic", ["float32", "portable"])
def test_the_chain_with_correlations_is_lossless(arithmetic):
    model = rgb_model()
    x = np.random.default_rng(3).integers(0, 256, (2, 3, 12, 10), dtype=np.uint8)
    sizes = []
    for corr in (None, TABLE):
        chain = DiffusionChain(model, ChainConfig(3, arithmetic=arithmetic, channel_corr=corr))
        init = np.random.default_rng(4).integers(0, 2**32, x.size, dtype=np.uint64).astype(np.uint32)
        msg = Message(init.copy())
        chain.push(msg, x, prior=TilePrior(corr_scale=1.0))
        sizes.append(msg.num_bits)
        np.testing.assert_array_equal(chain.pop(msg, x.shape, prior=TilePrior(corr_scale=1.0)), x)
        np.testing.assert_array_equal(msg.words(), Message(init).words())
    assert sizes[0] != sizes[1]


def codec_with_share(model_dir, share):
    codec = load_codec(model_dir)
    codec.choose = lambda pixels, chain, priors=None: ImageChoice(None, share, 0.0, 0.0)  # the tiny model's estimate is not the point here
    return codec


def test_codec_uses_the_cards_table_and_the_file_says_so(rgb_dir, tmp_path):
    photo = np.random.default_rng(5).integers(0, 256, (36, 40, 3), dtype=np.uint8)
    small = np.random.default_rng(6).integers(0, 256, (8, 9, 3), dtype=np.uint8)
    blobs = {}
    for share in (4, 2, 0):
        blobs[share] = codec_with_share(rgb_dir, share).compress([photo, small, small], force_model=True)
        header = container.unpack(blobs[share])[0]
        assert header.corr == (levels.corr_digest(TABLE) if share else None) and header.corr_scales == ([share] if share else [])
        methods = header.image_methods()
        assert methods[0] == "tiled" and "vdm" in methods and blobs[share][4] == container.VERSION == 7
        for a, b in zip(load_codec(rgb_dir).decompress(blobs[share]), [photo, small, small]):
            np.testing.assert_array_equal(a, b)
    assert len({blobs[4], blobs[2], blobs[0]}) == 3
    off = load_codec(rgb_dir)
    off.channel_corr = False
    assert off.compress([photo, small, small], force_model=True) == blobs[0]
    blob = blobs[4]
    # a card without the table (or with another one) refuses the file with a message
    other = tmp_path / "other"
    shutil.copytree(rgb_dir, other)
    meta = json.loads((other / CARD).read_text())
    del meta["card"]["coding_corr"]
    (other / CARD).write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="channel correlations"):
        load_codec(other).decompress(blob)
    meta["card"]["coding_corr"] = {"table": [[0.0, 0.1, 0.1, 0.1]]}
    (other / CARD).write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="channel correlations"):
        load_codec(other).decompress(blob)
    meta["card"]["coding_corr"] = {"table": [[0.0, 2.0, 0.1, 0.1]]}
    (other / CARD).write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="coding_corr"):
        load_codec(other).compress([photo], force_model=True)


def test_the_share_is_the_best_estimated_one(rgb_dir, monkeypatch):
    from vdmcodec.coding import planner

    photo = np.random.default_rng(5).integers(0, 256, (36, 40, 3), dtype=np.uint8)
    codec = load_codec(rgb_dir)
    chain = codec.chain(codec.steps, codec.grid_bits)
    gains = Probe(chain, photo).corr_savings([0.5, 1.0])
    assert len(gains) == 2 and all(math.isfinite(g) for g in gains)
    assert Probe(load_codec(rgb_dir).chain(3, 2, corr=None), photo).corr_savings([1.0]) == (0.0,)
    codec.structure_priors = False
    for fake, share in (((-0.1, 0.2, 0.3, 0.1), 3), ((-0.1, -0.2, -0.3, -0.1), 0)):
        monkeypatch.setattr(planner, "Probe", lambda chain, pixels, cfg, fake=fake: SimpleNamespace(
            rate=3.0, prior_savings=lambda priors: (-1.0,) * len(priors), corr_savings=lambda scales: fake))
        choice = codec.choose(photo, chain)
        assert choice.corr_share == share and choice.saving == (max(fake) if share else 0.0)


def test_grayscale_models_ignore_a_table(tiny_model_dir, tmp_path):
    d = tmp_path / "gray"
    shutil.copytree(tiny_model_dir, d)
    meta = json.loads((d / CARD).read_text())
    meta["card"]["coding_corr"] = {"table": [list(r) for r in TABLE]}
    (d / CARD).write_text(json.dumps(meta))
    codec = load_codec(d, steps=2)
    assert codec.corr_table() is None
    im = np.random.default_rng(0).integers(0, 256, (9, 11), dtype=np.uint8)
    assert container.unpack(codec.compress([im], force_model=True))[0].corr is None


def test_the_header_carries_a_share_per_tiled_image_and_version_5_none(rgb_dir):
    photo = np.random.default_rng(5).integers(0, 256, (36, 40, 3), dtype=np.uint8)
    gray = np.random.default_rng(5).integers(0, 256, (36, 33), dtype=np.uint8)
    blob = codec_with_share(rgb_dir, 3).compress([photo, gray], force_model=True)
    h, payload = container.unpack(blob)
    assert h.corr is not None and h.corr_scales == [3, 0] and h.image_methods() == ["tiled", "tiled-gray"]
    hb = container.encode_header(h)
    assert container.parse_header(hb) == h
    with pytest.raises(FormatError, match="kind"):
        container.parse_header(hb, version=5)
    for bad in ([5, 0], [3, 1], [3]):  # above 4/4; on a tiled-gray image; not one per tiled image
        with pytest.raises(FormatError):
            container.unpack(container.frame(container.encode_header(dataclasses.replace(h, corr_scales=bad)), payload))
    with pytest.raises(FormatError, match="without tiled"):
        container.parse_header(container.encode_header(dataclasses.replace(h, tiled=[], tile=0, structures=[])))


def test_levels_command_measures_and_writes_the_table(rgb_dir, tmp_path):
    from PIL import Image

    data = tmp_path / "data"
    data.mkdir()
    for k in range(3):
        Image.fromarray(np.random.default_rng(k).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(data / f"{k}.png")
    meta = json.loads((rgb_dir / CARD).read_text())
    meta["card"]["coding_times"] = [0.0, 0.3, 0.45, 1.0]
    (rgb_dir / CARD).write_text(json.dumps(meta))
    assert fit_levels.main(["--model", str(rgb_dir), "--data", str(data), "--crops", "4", "--size", "16",
                            "--points", "17", "--samples", "500", "--write", "--keep-times"]) == 0
    card = json.loads((rgb_dir / CARD).read_text())["card"]
    assert card["coding_times"] == [0.0, 0.3, 0.45, 1.0]  # kept
    table = levels.check_corr(card["coding_corr"]["table"])
    assert len(table) == 5 and card["coding_corr"]["fit"]["crops"] == 4
    assert any(abs(v) > 0 for row in table for v in row[1:])
    photo = np.random.default_rng(6).integers(0, 256, (40, 34, 3), dtype=np.uint8)
    blob = codec_with_share(rgb_dir, 4).compress([photo], force_model=True)
    assert container.unpack(blob)[0].corr == levels.corr_digest(table)
    np.testing.assert_array_equal(load_codec(rgb_dir).decompress(blob)[0], photo)



def test_images_with_a_structure_prior_are_coded_without_correlations():
    from tests.test_structure import photo
    from vdmcodec.coding.priors import structure
    from vdmcodec.training.augment import subsample_chroma

    im = subsample_chroma(photo(20, 26, seed=4), (1, 2), "replicate", "jfif")
    prior, _ = structure.measure(im, "422")
    model = rgb_model()
    x = np.ascontiguousarray(im.transpose(2, 0, 1)[None])
    words = {}
    for structured in (False, True):
        for corr in (None, TABLE):
            chain = DiffusionChain(model, ChainConfig(3, channel_corr=corr))
            msg = Message(np.random.default_rng(4).integers(0, 2**32, x.size, dtype=np.uint64).astype(np.uint32))
            tile_prior = TilePrior(prior if structured else None, corr_scale=1.0)
            chain.push(msg, x, prior=tile_prior)
            words[structured, corr is not None] = msg.words().copy()
            np.testing.assert_array_equal(chain.pop(msg, x.shape, prior=tile_prior), x)
    np.testing.assert_array_equal(words[True, True], words[True, False])
    assert not np.array_equal(words[False, True], words[False, False])


def test_a_tile_prior_scales_the_correlations_and_leaves_them_out_with_a_structure_prior():
    from tests.test_structure import photo
    from vdmcodec.coding.priors import NO_PRIOR, structure

    row = (0.4, 0.3, 0.35)
    assert NO_PRIOR.corr(row) is None and TilePrior(corr_scale=0.5).corr(None) is None
    assert TilePrior(corr_scale=0.5).corr(row) == (0.2, 0.15, 0.175)
    prior, _ = structure.measure(photo(8, 8, seed=1), "420")
    assert TilePrior(prior, corr_scale=1.0).corr(row) is None
    eps = np.random.default_rng(0).standard_normal((1, 3, 6, 6))
    z = 0.9 * eps
    np.testing.assert_array_equal(NO_PRIOR.adjust_eps(eps, z, 0.8, 0.6), eps)
    moved = TilePrior(prior).at((3, 5))
    assert moved.origin == (3, 5) and moved.structure is prior
    np.testing.assert_array_equal(moved.adjust_eps(eps, z, 0.8, 0.6), prior.adjust_eps(eps, z, 0.8, 0.6, (3, 5)))
