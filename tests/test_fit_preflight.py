"""The preflight's calibration from a photos benchmark run (training/fit_preflight.py)."""
import json

import pytest

from vdmcodec.training.fit_preflight import main, plain_floor


def row(name, prior, model, jxl, webp):
    return {"set": "CSet5", "image": name, "prior": prior, "model_coded": {"bpd": model, "steps": 32},
            "jxl": {"bpd": jxl}, "webp": {"bpd": webp}}


def test_the_floor_is_the_least_ratio_over_photos_without_a_lattice():
    rows = [row("a", False, 3.3, 3.0, 3.2), row("b", False, 2.2, 2.3, 2.0), row("c", True, 1.0, 2.0, 2.0),
            {"set": "CSet5", "image": "d", "prior": False, "jxl": {"bpd": 1.0}, "webp": {"bpd": 1.0}}]
    cal = plain_floor(rows)
    assert cal["plain_floor"] == pytest.approx(1.1) and cal["least_at"] == "CSet5/a" and cal["photos"] == 2
    with pytest.raises(ValueError, match="no photo"):
        plain_floor([row("c", True, 1.0, 2.0, 2.0)])


def test_results_of_other_weights_are_refused(tmp_path, capsys):
    from tests.helpers import tiny_model_config
    from vdmcodec.diffusion import VDM
    from vdmcodec.zoo import load_model, save_model

    save_model(tmp_path / "m", VDM(tiny_model_config(image_channels=3)), {"name": "m"})
    sha = load_model(tmp_path / "m")[1]["sha256"]
    res = tmp_path / "photos.json"
    res.write_text(json.dumps({"model": {"sha256": "ab" * 32}, "rows": [row("a", False, 3.3, 3.0, 3.2)]}))
    assert main(["--model", str(tmp_path / "m"), "--results", str(res), "--write"]) == 2
    assert "measured weights" in capsys.readouterr().err
    res.write_text(json.dumps({"model": {"sha256": sha}, "rows": [row("a", False, 3.3, 3.0, 3.2)]}))
    assert main(["--model", str(tmp_path / "m"), "--results", str(res), "--write"]) == 0
    card = load_model(tmp_path / "m")[1]["card"]
    assert card["coding_preflight"]["plain_floor"] == pytest.approx(1.1)
    assert card["coding_preflight"]["weights_sha256"] == sha[:16]
