"""Fitted level times (coding/levels.py): the fit, the card, the container and the codec."""
from __future__ import annotations

import itertools
import json
import shutil

import numpy as np
import pytest
import torch

from vdmcodec.coding import container, levels
from vdmcodec.coding.codec import load_codec
from vdmcodec.errors import FormatError, ModelError
from vdmcodec.training import fit_levels
from vdmcodec.zoo import CARD, load_model

pytestmark = pytest.mark.usefixtures("one_thread")


def synthetic_stats(K: int, M: int = 200, learned: bool = True, seed: int = 0) -> levels.LevelStats:
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, K)
    gamma = -10 + 16 * t + 2 * np.sin(3 * t)  # increasing, curved
    err2 = (rng.random((K, M)) * np.exp(-3 * t)[:, None] + 0.01).astype(np.float32)
    v = np.tanh(rng.normal(size=(K, M))).astype(np.float32) if learned else None
    return levels.LevelStats(t, gamma, err2, v)


def test_check_times():
    assert levels.check_times([0, 0.25, 1], 2) == (0.0, 0.25, 1.0)
    assert levels.uniform_times(4) == (0.0, 0.25, 0.5, 0.75, 1.0)
    for bad in ([0.1, 1], [0, 0.9], [0, 0.5, 0.5, 1], [0, 0.7, 0.3, 1], [1], "x", [0, "a", 1]):
        with pytest.raises(ValueError):
            levels.check_times(bad)
    with pytest.raises(ValueError, match="T = 3"):
        levels.check_times([0, 0.5, 1], 3)


def test_times_digest_tells_grids_apart():
    a = levels.times_digest(levels.uniform_times(8))
    assert a == levels.times_digest(list(levels.uniform_times(8))) and len(a) == 16
    assert a != levels.times_digest(levels.uniform_times(9))
    assert a != levels.times_digest((0.0, 0.1, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0))


@pytest.mark.parametrize("learned", [True, False])
def test_optimal_path_is_the_brute_force_optimum(learned):
    stats = synthetic_stats(9, learned=learned)
    for T in (1, 2, 3, 5):
        path = levels.optimal_path(stats, T)
        assert path[0] == 0 and path[-1] == 8 and len(path) == T + 1 and np.all(np.diff(path) > 0)
        brute = min(levels.path_cost(stats, [0, *mid, 8]) for mid in itertools.combinations(range(1, 8), T - 1))
        assert levels.path_cost(stats, path) == pytest.approx(brute, rel=1e-12)


def test_max_jump_is_respected():
    stats = synthetic_stats(17)
    path = levels.optimal_path(stats, 8, max_jump=3)
    assert max(np.diff(path)) <= 3
    with pytest.raises(ValueError, match="cannot span"):
        levels.optimal_path(stats, 4, max_jump=3)


def test_fit_never_loses_to_uniform_and_beats_it_on_a_curved_schedule():
    stats = synthetic_stats(33)
    out = levels.fit(stats, 8)
    assert out["fitted_bpd"] <= out["uniform_bpd"]
    assert out["fitted_bpd"] < 0.999 * out["uniform_bpd"]
    assert out["times"][0] == 0.0 and out["times"][-1] == 1.0 and len(out["times"]) == 9


def test_the_t_step_cost_approaches_the_continuous_term_from_above():
    stats = synthetic_stats(257, learned=False)
    costs = [levels.fit(stats, T)["fitted_bpd"] for T in (4, 16, 64)]
    cont = levels.continuous_term(stats)
    assert costs[0] > costs[1] > costs[2] > cont * 0.99


def test_measure_on_a_model(tiny_model_dir):
    model, _ = load_model(tiny_model_dir)
    crops = np.random.default_rng(0).integers(0, 256, (3, 12, 12, 1), dtype=np.uint8)
    stats = levels.measure(model, crops, points=9, samples=100)
    assert stats.err2.shape == (9, 100) and (stats.v is None) == (not model.learned_variance)
    assert np.all(np.diff(stats.gamma) > 0) and np.all(np.isfinite(stats.err2))
    again = levels.measure(model, crops, points=9, samples=100)
    np.testing.assert_array_equal(stats.err2, again.err2)  # seeded


@pytest.fixture()
def fitted_dir(tiny_model_dir, tmp_path):
    d = tmp_path / "fitted"
    shutil.copytree(tiny_model_dir, d)
    meta = json.loads((d / CARD).read_text())
    meta["card"]["coding_times"] = [0.0, 0.3, 0.45, 1.0]
    (d / CARD).write_text(json.dumps(meta))
    return d


def images(seed=5):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (34, 34, 3), dtype=np.uint8)] + [rng.integers(0, 256, (9, 11), dtype=np.uint8)
                                                                    for _ in range(3)]


def test_codec_codes_at_the_cards_times_and_the_file_says_so(fitted_dir, tiny_model_dir):
    ims = images()
    codec = load_codec(fitted_dir, steps=3)
    blob = codec.compress(ims, force_model=True)
    header = container.unpack(blob)[0]
    assert header.levels == levels.times_digest((0.0, 0.3, 0.45, 1.0))
    assert blob[4] == container.VERSION == 7
    for a, b in zip(load_codec(fitted_dir).decompress(blob), ims):
        np.testing.assert_array_equal(a, b)
    # the same model without the card's times: a clear error, not a bad decode
    with pytest.raises(ModelError, match="level times"):
        load_codec(tiny_model_dir).decompress(blob)
    # another T than the card's: uniform levels, nothing recorded
    other = load_codec(fitted_dir, steps=2).compress(ims, force_model=True)
    assert container.unpack(other)[0].levels is None
    # uniform levels written out give the same file as the default
    uniform = load_codec(tiny_model_dir, steps=3).compress(ims, force_model=True)
    off = load_codec(fitted_dir, steps=3)
    off.fitted_levels = False
    assert off.compress(ims, force_model=True) == uniform and uniform != blob


def test_chain_with_uniform_times_written_out_is_the_uniform_chain(tiny_model_dir):
    codec = load_codec(tiny_model_dir, steps=4)
    a, b = codec.chain(4, 2, times=None), codec.chain(4, 2, times=levels.uniform_times(4))
    np.testing.assert_array_equal(a.grid.gamma, b.grid.gamma)
    np.testing.assert_array_equal(a.grid.std_p, b.grid.std_p)


def test_bad_card_times_are_a_model_error(fitted_dir):
    meta = json.loads((fitted_dir / CARD).read_text())
    meta["card"]["coding_times"] = [0.0, 0.6, 0.3, 1.0]
    (fitted_dir / CARD).write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="coding_times"):
        load_codec(fitted_dir, steps=3).compress(images(), force_model=True)


def test_version_3_headers_still_parse():
    h = container.Header(model="m", model_hash="00" * 8, steps=3, grid_bits=2, torch="2.x", dtype="float32", threads=1,
                         shapes=[[4, 4, 1, 1]], names={"sequence": ["", 5, ".png"]}, methods=[["vdm", 1]],
                         classical_sizes=[], chunks=[[0, 1]], init_pad=0, pixels_hash="11" * 8)
    v4 = container.encode_header(h)
    cut = 1 + len(container.encode_str("m", 255)) + 8 + 1 + 2 + 1 + len(container.encode_str("2.x", 255))
    assert v4[cut] == 0  # the level-times kind byte: uniform
    v3 = v4[:cut] + v4[cut + 1:]
    assert container.parse_header(v3, version=3) == h
    with pytest.raises(FormatError):
        container.parse_header(v3, version=4)
    fitted = container.parse_header(container.encode_header(h.__class__(**{**h.__dict__, "levels": "ab" * 8})))
    assert fitted.levels == "ab" * 8


def test_levels_command_writes_the_card(tiny_model_dir, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_model_dir, d)
    data = tmp_path / "data"
    data.mkdir()
    from PIL import Image

    rng = np.random.default_rng(0)
    for k in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 48), dtype=np.uint8)).save(data / f"{k}.png")
    rc = fit_levels.main(["--model", str(d), "--data", str(data), "--steps", "4", "--crops", "4", "--size", "16",
                      "--points", "17", "--samples", "500", "--write"])
    assert rc == 0
    card = json.loads((d / CARD).read_text())["card"]
    assert len(card["coding_times"]) == 5 and card["coding_times_fit"]["fitted_bpd"] <= card["coding_times_fit"]["uniform_bpd"]
    blob = load_codec(d, steps=4).compress(images()[1:], force_model=True)
    assert container.unpack(blob)[0].levels == levels.times_digest(card["coding_times"])


def test_times_for_another_T_sit_beside_the_default_ones(fitted_dir, tmp_path):
    meta = json.loads((fitted_dir / CARD).read_text())
    meta["card"]["coding_steps"] = 3
    meta["card"]["coding_times_more"] = {"2": {"times": [0.0, 0.7, 1.0], "fit": {}}}
    (fitted_dir / CARD).write_text(json.dumps(meta))
    ims = images(3)[1:]
    codec = load_codec(fitted_dir)
    assert codec.level_times(3) == (0.0, 0.3, 0.45, 1.0) and codec.level_times(2) == (0.0, 0.7, 1.0)
    assert codec.level_times(4) is None
    blob = codec.compress(ims, steps=2, force_model=True)
    assert container.unpack(blob)[0].levels == levels.times_digest((0.0, 0.7, 1.0))
    for a, b in zip(load_codec(fitted_dir).decompress(blob), ims):
        np.testing.assert_array_equal(a, b)
    meta["card"]["coding_times_more"]["2"]["times"] = [0.0, 1.0, 0.5]
    (fitted_dir / CARD).write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=r"coding_times_more\[2\]"):
        load_codec(fitted_dir).decompress(blob)
    meta["card"]["coding_times_more"] = ["not", "a", "map"]
    (fitted_dir / CARD).write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="coding_times_more"):
        load_codec(fitted_dir).level_times(2)
    # the levels command fits another T beside the default one
    data = tmp_path / "data"
    data.mkdir()
    from PIL import Image

    for k in range(2):
        Image.fromarray(np.random.default_rng(k).integers(0, 256, (40, 48), dtype=np.uint8)).save(data / f"{k}.png")
    meta["card"]["coding_times_more"] = {}
    (fitted_dir / CARD).write_text(json.dumps(meta))
    assert fit_levels.main(["--model", str(fitted_dir), "--data", str(data), "--steps", "5", "--crops", "2", "--size", "16",
                            "--points", "17", "--samples", "300", "--write"]) == 0
    card = json.loads((fitted_dir / CARD).read_text())["card"]
    assert card["coding_times"] == [0.0, 0.3, 0.45, 1.0]
    assert len(card["coding_times_more"]["5"]["times"]) == 6 and card["coding_times_more"]["5"]["fit"]["steps"] == 5
    # several T from one measurement: each the same fit as its own run
    assert fit_levels.main(["--model", str(fitted_dir), "--data", str(data), "--steps", "6,5", "--crops", "2", "--size", "16",
                            "--points", "17", "--samples", "300", "--write"]) == 0
    both = json.loads((fitted_dir / CARD).read_text())["card"]
    assert both["coding_times_more"]["5"] == card["coding_times_more"]["5"]
    assert len(both["coding_times_more"]["6"]["times"]) == 7 and both["coding_times"] == [0.0, 0.3, 0.45, 1.0]
    for bad in ("5,5", "0", "5,x"):
        assert fit_levels.main(["--model", str(fitted_dir), "--data", str(data), "--steps", bad, "--write"]) == 2
    assert json.loads((fitted_dir / CARD).read_text())["card"] == both


@pytest.mark.parametrize("arithmetic", ["portable", "float32-nhwc"])
def test_fitted_times_in_every_arithmetic(fitted_dir, arithmetic):
    ims = images(9)[1:]
    blob = load_codec(fitted_dir, steps=3, arithmetic=arithmetic).compress(ims, force_model=True)
    header = container.unpack(blob)[0]
    assert header.dtype == arithmetic and header.levels is not None
    for a, b in zip(load_codec(fitted_dir).decompress(blob), ims):
        np.testing.assert_array_equal(a, b)



def test_bpd_discrete_at_level_times():
    """The T-step -ELBO at a chain's level times: uniform times give the uniform figure (to
    float rounding), other times another, and a grid of the wrong length is refused."""
    from tests.helpers import tiny_model_config
    from vdmcodec.diffusion import VDM
    from vdmcodec.likelihood import bpd_discrete

    torch.manual_seed(0)
    model = VDM(tiny_model_config()).eval()
    x = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    T = 4

    def run(times):
        return bpd_discrete(model, x, T, torch.Generator().manual_seed(5), times=times).total

    uniform = run(None)
    assert torch.allclose(run(levels.uniform_times(T)), uniform, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(run((0.0, 0.05, 0.2, 0.5, 1.0)), uniform, rtol=1e-3)
    with pytest.raises(ValueError, match="level times"):
        run((0.0, 0.5, 1.0))


def test_cli_eval_uses_the_card_level_times(tmp_path, tiny_model_dir):
    """`vdmcodec eval --steps T` reports the T-step -ELBO at the level times compress uses."""
    from PIL import Image
    from typer.testing import CliRunner

    from cli.main import app

    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    meta = json.loads((model / CARD).read_text())
    meta["card"]["coding_times"] = [0.0, 0.05, 0.2, 0.5, 1.0]
    (model / CARD).write_text(json.dumps(meta))
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (12, 10), dtype=np.uint8)).save(tmp_path / "a.png")
    out = {}
    for name, m in (("card", model), ("uniform", tiny_model_dir)):
        res = CliRunner().invoke(app, ["eval", "--data", str(tmp_path / "a.png"), "--model", str(m), "--steps", "4",
                                       "--json", "--no-progress"])
        assert res.exit_code == 0, res.output
        out[name] = json.loads(res.stdout.strip().splitlines()[-1])
        assert out[name]["level_times"] == name
    assert out["card"]["bpd_continuous"] == out["uniform"]["bpd_continuous"]
    assert out["card"]["bpd_discrete"] != out["uniform"]["bpd_discrete"]
