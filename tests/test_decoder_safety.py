"""The decoder never trusts a size and never hands constriction a value it panics on: forged
archives (made here) are refused with one FormatError line, in the library and the CLI, and
nothing aborts the process.

Tiny untrained models, T = 2, tiles of 8 pixels so that small images are tiled."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import tiny_model_config
from vdmcodec.coding import container
from vdmcodec.coding.ans import EmptyMessageError, Message, categorical, quantized_gaussian, uniform, windowed_gaussian
from vdmcodec.coding.chain import ChainConfig, DiffusionChain
from vdmcodec.coding.archive import model_digest
from vdmcodec.coding.codec import Codec
from vdmcodec.coding.level_codecs import p_codec
from vdmcodec.coding.tilegrid import Band, Segment, TileLayout
from vdmcodec.diffusion import VDM
from vdmcodec.errors import FormatError
from vdmcodec.zoo import load_model

ROOT = Path(__file__).resolve().parent.parent
STEPS = 2

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_codec(channels: int = 3, tile: int = 8, seed: int = 3) -> Codec:
    torch.manual_seed(seed)
    model = VDM(tiny_model_config(image_channels=channels)).eval().requires_grad_(False)
    return Codec(model, {"name": "t", "sha256": f"{seed:02d}" * 32}, steps=STEPS, tile=tile)


def forged_tiled(model: str, model_hash: str, nbytes: int, payload: bytes, channels: int = 3) -> bytes:
    """One 9x9 image in 8-pixel tiles whose only segment is classical and claims ``nbytes``
    raw bytes on the stack (the issue's forged archive), around ``payload``."""
    h = container.Header(model=model, model_hash=model_hash, steps=STEPS, grid_bits=2, torch="", dtype="float32",
                         threads=1, shapes=[[9, 9, channels, 1]], names={"sequence": ["", 5, ".png"]},
                         methods=[["tiled", 1]], classical_sizes=[], chunks=[], init_pad=0, pixels_hash="00" * 8,
                         tile=8, tiled=[TileLayout((Band(2, (Segment(2, "png", nbytes),)),))])
    return container.frame(container.encode_header(h), payload)


@pytest.mark.parametrize("nbytes", [9, 1 << 32, 1 << 40])
def test_a_tiled_segment_larger_than_the_stack_is_refused(nbytes):
    codec = tiny_codec()
    blob = forged_tiled("t", "03" * 8, nbytes, b"\x01\x02\x03\x04" * 2)
    assert len(blob) < 80
    container.unpack(blob)  # the header alone is well formed: the payload has to be checked
    with pytest.raises(FormatError, match="classical tile segment claims"):
        codec.decompress(blob)


def test_a_forged_tiled_archive_is_one_cli_line(tmp_path, tiny_model_dir):
    """The issue's archive, through the command line in a fresh process: exit code 1, one
    line on stderr, no traceback, no signal, nothing written."""
    _, info = load_model(tiny_model_dir)
    arc = tmp_path / "forged.vdmc"
    arc.write_bytes(forged_tiled("tiny", model_digest(info), 1 << 40, b"\x05\x00\x00\x00" * 2, channels=1))
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "cli.main", "decompress", str(arc), "-o", str(out), "--model",
                          str(tiny_model_dir), "--no-progress", "--threads", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert res.returncode == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "classical tile segment claims" in lines[0], res.stderr
    assert "Traceback" not in res.stderr
    assert not out.exists() or not any(out.iterdir())


def test_a_valid_tiled_archive_still_decodes():
    codec = tiny_codec()
    im = np.random.default_rng(0).integers(0, 256, (20, 19, 3), dtype=np.uint8)
    blob = codec.compress([im], force_model=True)
    h, payload = container.unpack(blob)
    assert h.tiled and any(s.method != "vdm" for b in h.tiled[0].bands for s in b.segments)  # a classical seed
    np.testing.assert_array_equal(codec.decompress(blob)[0], im)
    seg = next(s for b in h.tiled[0].bands for s in b.segments if s.method != "vdm")
    for claim in (len(payload) + 1, 1 << 40):  # the same file claiming more seed bytes than there are
        layout = TileLayout(tuple(Band(b.rows, tuple(replace(s, nbytes=claim) if s is seg else s for s in b.segments))
                                  for b in h.tiled[0].bands))
        with pytest.raises(FormatError):
            codec.decompress(container.frame(container.encode_header(replace(h, tiled=[layout])), payload))


# ---- the chain's configuration ----------------------------------------------------------------
@pytest.mark.parametrize("over", [dict(grid_bits=-2), dict(grid_bits=17), dict(grid_bits=2.5), dict(steps=0),
                                  dict(steps=-3), dict(steps=True), dict(arithmetic="float16")])
def test_chain_config_refuses_what_the_container_cannot_record(over):
    """A chain's grid is an archive's (1..16) or a chunk's (down to -1, version 9)."""
    with pytest.raises(ValueError):
        ChainConfig(**{"steps": 4, "grid_bits": 2, **over})


@pytest.mark.parametrize("grid_bits", [0, -1, 17])
def test_codec_refuses_a_grid_no_archive_records(tiny_model_dir, grid_bits):
    """Grids under 1 code only an archive's first chunks: a Codec refuses them as its grid."""
    from vdmcodec.coding.codec import Codec, load_codec

    codec = load_codec(tiny_model_dir, steps=2)
    with pytest.raises(ValueError, match="grid_bits"):
        Codec(codec.model, codec.info, steps=2, grid_bits=grid_bits)


def test_codec_refuses_grid_bits_zero_before_any_work():
    torch.manual_seed(0)
    model = VDM(tiny_model_config()).eval()
    with pytest.raises(ValueError, match="grid_bits"):
        Codec(model, {"name": "t", "sha256": "00" * 32}, steps=2, grid_bits=0)
    ChainConfig(steps=np.int64(3), grid_bits=np.int64(16))  # numpy integers are integers


# ---- what constriction is given ----------------------------------------------------------------
BAD_STDS = [np.nan, 0.0, -1.0, np.inf]
BAD_MEANS = [np.nan, np.inf, -np.inf, 1e300]


@pytest.mark.parametrize("std", BAD_STDS)
def test_gaussians_refuse_stds_constriction_panics_on(std):
    """constriction raises a PanicException (a BaseException, past `except Exception`) on a
    NaN, zero or negative std: the codecs refuse first with a ValueError."""
    for make in (lambda m, s: windowed_gaussian(m, s, 8), lambda m, s: quantized_gaussian(m, s, -8, 8)):
        with pytest.raises(ValueError, match="std"):
            make(np.zeros(3), np.array([1.0, std, 1.0]))


@pytest.mark.parametrize("mean", BAD_MEANS)
def test_gaussians_refuse_means_that_are_not_finite_or_in_range(mean):
    for make in (lambda m, s: windowed_gaussian(m, s, 8), lambda m, s: quantized_gaussian(m, s, -8, 8)):
        with pytest.raises(ValueError, match="mean"):
            make(np.array([0.0, mean]), np.ones(2))


@pytest.mark.parametrize("rows", [[[0.5, 0.5], [np.nan, 1.0]], [[0.5, 0.5], [0.0, 0.0]], [[-1.0, 2.0]],
                                  [[np.inf, 1.0]], [[1e308, 1e308]], [[1.0]], [0.5, 0.5]])
def test_categorical_refuses_rows_it_cannot_normalise(rows):
    with pytest.raises(ValueError):
        categorical(np.array(rows))


def test_a_count_over_the_stack_is_refused_before_allocation():
    msg = Message(np.array([7, 9], dtype=np.uint32), sealed=True)
    with pytest.raises(EmptyMessageError):
        uniform(256, 1 << 40).pop(msg)  # would be 4 TB of symbols


def test_a_nan_std_from_the_network_is_refused(tiny_vdm_learned):
    chain = DiffusionChain(tiny_vdm_learned, ChainConfig(steps=2))
    mean = np.zeros((1, 1, 2, 2))
    std = np.full(mean.shape, 0.1)
    std[0, 0, 1, 1] = np.nan
    with pytest.raises(ValueError, match="std"):
        p_codec(chain.grid, chain.spec, 0, mean, std)


@pytest.fixture(scope="module")
def tiny_vdm_learned():
    from vdmcodec.diffusion import ModelConfig
    from vdmcodec.networks import NetworkConfig
    from vdmcodec.schedules import ScheduleConfig, ScheduleKind

    torch.manual_seed(0)
    cfg = ModelConfig(schedule=ScheduleConfig(kind=ScheduleKind.learned, hidden=16),
                      network=NetworkConfig(image_channels=1, channels=8, channel_mult=(1, 2), num_res_blocks=1,
                                            learned_variance=True))
    return VDM(cfg).eval().requires_grad_(False)


@pytest.mark.parametrize("channels", [1, 3])
def test_a_network_that_returns_nan_gives_a_format_error(channels):
    """A decoder whose network yields NaN (what damaged latents can do to a network, here
    forced) refuses the file with a FormatError: no panic, no wrong pixels."""
    codec = tiny_codec(channels)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (20, 19, channels), dtype=np.uint8)] + [
        rng.integers(0, 256, (4, 4, channels), dtype=np.uint8) for _ in range(3)]
    blob = codec.compress(images, force_model=True)
    broken = tiny_codec(channels)
    with torch.no_grad():
        for p in broken.model.net.parameters():
            p.fill_(float("nan"))
    with pytest.raises(FormatError):
        broken.decompress(blob)


# ---- structured forgeries (benchmarks/fuzzing.py runs them all, with truncations, in a worker) ----
def test_every_header_field_of_a_tiled_archive_at_its_extremes_is_refused_or_harmless():
    """Each field the parser reads (tile layouts, segment byte counts, structure records
    included) at 0, 1, its limit +-1, 2^32, 2^40, 2^64 - 1, ...; the frame and the payload at
    extremes; segments and records swapped: the codec's one-line error, or the seed's pixels."""
    from benchmarks import fuzzing, hardening

    codec = tiny_codec(3)
    seeds = hardening.tiled_seeds(codec, STEPS, np.random.default_rng(0))
    fams = {"field": [], "frame": [], "payload": [], "swap": []}
    tiled = seeds[0]
    fams["field"] = fuzzing.field_forgeries(tiled) + [i for s in seeds[1:] for i in fuzzing.field_forgeries(s)
                                                       if "structure" in i.how]  # the prior records' fields
    fams["frame"] = fuzzing.frame_forgeries(tiled)[::8]
    fams["payload"] = fuzzing.payload_forgeries(tiled, seeds)
    fams["swap"] = fuzzing.swap_forgeries(tiled)
    assert any("segment bytes" in i.how and i.how.endswith("=1099511627776") for i in fams["field"])
    by_name = {s.name: s for s in seeds}
    for fam, inputs in fams.items():
        assert inputs, fam
        for inp in inputs:
            kind, err, msg = fuzzing.decode_outcome(inp.blob, {"tiny-rgb": codec}, by_name[inp.source], fuzzing.FUZZ_LIMITS)
            assert kind in ("refused", "decoded-identical"), (inp.how, kind, err, msg)
