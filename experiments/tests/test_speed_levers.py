"""experiments.speed_levers on an untrained tiny RGB model: every arithmetic is timed, the
scale-space table runs at the card's level times over every level, and the report lists them."""
from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from experiments import speed_levers
from tests.helpers import tiny_model_config
from vdmcodec.diffusion import VDM
from vdmcodec.zoo import save_model


def test_report_on_a_tiny_model(tmp_path):
    torch.manual_seed(0)
    model_dir = tmp_path / "m"
    save_model(model_dir, VDM(tiny_model_config(image_channels=3)),
               {"name": "tiny", "data": "none", "coding_times": [0.0, 0.1, 0.5, 1.0]})
    photo = tmp_path / "p.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (13, 16, 3), dtype=np.uint8)).save(photo)
    out = tmp_path / "r.md"
    speed_levers.main(["--model", str(model_dir), "--size", "16x24", "--threads", "1", "--repeats", "1",
                       "--photo", str(photo), "--steps", "3", "--out", str(out)])
    res = json.loads(out.with_suffix(".json").read_text())
    ss = res["scale_space"]
    assert ss["levels"] == "card" and ss["shape"] == [12, 16, 3]  # cropped to even sides
    assert [r["level"] for r in ss["rows"]] == [1, 2, 3]
    assert all(np.isfinite(r["full"]) and r["full"] > 0 and np.isfinite(r["half"]) for r in ss["rows"])
    assert {"float32", "float32-nhwc"} <= set(res["network"]["arithmetics"])
    assert all(r["gflop"] > 0 and r["seconds"] > 0 for r in res["network"]["arithmetics"].values())
    text = out.read_text()
    assert "| 3 |" in text and "torch.compile" not in text  # k up to T; no --compile
