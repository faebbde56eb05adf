"""benchmarks.natural on tiny gray images and the untrained tiny model: ``--decode written``
decodes exactly the files compress writes, and the report says which candidates it left."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from benchmarks import natural
from vdmcodec.coding.codec import load_codec


def flat_and_noisy() -> list[np.ndarray]:
    """A flat image (PNG beats an untrained model on it) and a noisy one."""
    rng = np.random.default_rng(3)
    return [np.full((12, 10, 1), 77, np.uint8), rng.integers(0, 256, (12, 10, 1), dtype=np.uint8)]


@pytest.fixture(scope="module")
def codec(tiny_model_dir):
    return load_codec(tiny_model_dir, steps=2)


@pytest.mark.parametrize("k", [0, 1])
def test_written_decodes_only_what_compress_writes(codec, k):
    im = flat_and_noisy()[k]
    every = natural.measure_vdmcodec(codec, im, 2, "all")
    written = natural.measure_vdmcodec(codec, im, 2, "written")
    assert every["model_decoded"] and every["decode_s"] is not None and every["roundtrip"]
    assert every["model_bytes"] == written["model_bytes"] and every["bytes"] == written["bytes"]
    model_written = written["method"] in natural.MODEL_METHODS
    assert written["model_decoded"] == model_written
    assert (written["decode_s"] is None) == (not model_written)
    assert written["roundtrip"]


def test_report_names_the_candidates_left_undecoded(tmp_path, tiny_model_dir):
    (tmp_path / "SetA").mkdir()
    for k, im in enumerate(flat_and_noisy()):
        Image.fromarray(im[..., 0]).save(tmp_path / "SetA" / f"im{k}.png")
    out = tmp_path / "res" / "n.md"
    natural.main(["--model", str(tiny_model_dir), "--steps", "2", "--data", str(tmp_path), "--sets", "SetA",
                  "--elbo", "none", "--memory-sizes", "", "--decode", "written", "--out", str(out)])
    text = out.read_text()
    assert "all exact." in text
    assert not out.with_suffix(".partial.json").exists()
    rows = json.loads(out.with_suffix(".json").read_text())["sets"]["SetA"]
    undecoded = [r["name"] for r in rows if not r["vdmcodec"]["model_decoded"]]
    assert undecoded, "the flat image is written as PNG, so its model-coded candidate is left undecoded"
    for name in undecoded:
        assert name in text.split("were not decoded")[0].split("Round trip:")[1]
    assert text.count("not decoded |") == len(undecoded)
