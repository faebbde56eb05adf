"""experiments/levels.py: files with and without the card's fitted times or channel
correlations, side by side, on tiny models."""
import json

import numpy as np
import pytest

from tests.test_channel_corr import rgb_dir  # noqa: F401  (a fixture)
from vdmcodec.zoo import CARD


def test_levels_benchmark_runs_side_by_side(tmp_path):
    from PIL import Image

    from experiments import levels as bench
    from tests.helpers import tiny_model_config
    from vdmcodec.diffusion import VDM
    from vdmcodec.zoo import save_model

    d = tmp_path / "rgb"
    save_model(d, VDM(tiny_model_config(image_channels=3)),
               {"name": "rgb", "coding_steps": 3, "coding_times": [0.0, 0.3, 0.45, 1.0]})
    photo = tmp_path / "p.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 36, 3), dtype=np.uint8)).save(photo)
    out = tmp_path / "levels.md"
    bench.main([str(photo), "--model", str(d), "--out", str(out)])
    result = json.loads(out.with_suffix(".json").read_text())
    (row,) = result["rows"]
    assert row["exact"] and row["uniform"] > 0 and row["fitted"] > 0 and row["uniform"] != row["fitted"]
    assert "| p.png | 36x20 |" in out.read_text()


def test_levels_benchmark_compares_correlations_side_by_side(rgb_dir, tmp_path):
    from PIL import Image

    from experiments import levels as bench

    photo = tmp_path / "p.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 36, 3), dtype=np.uint8)).save(photo)
    out = tmp_path / "corr.md"
    bench.main([str(photo), "--compare", "corr", "--model", str(rgb_dir), "--steps", "2", "--out", str(out)])
    result = json.loads(out.with_suffix(".json").read_text())
    (row,) = result["rows"]
    assert result["compare"] == "corr" and result["steps"] == 2
    assert row["exact"] and row["factorised"] > 0 and row["correlated"] > 0 and row["share"] in {f"{k}/4" for k in range(5)}
    assert "| p.png | 36x20 |" in out.read_text() and "channel-correlated" in out.read_text()
    meta = json.loads((rgb_dir / CARD).read_text())
    del meta["card"]["coding_corr"]
    (rgb_dir / CARD).write_text(json.dumps(meta))
    with pytest.raises(SystemExit, match="coding_corr"):
        bench.main([str(photo), "--compare", "corr", "--model", str(rgb_dir), "--out", str(out)])
