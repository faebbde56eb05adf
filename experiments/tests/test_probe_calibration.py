"""experiments/probe_calibration.py end to end on a tiny RGB model."""
import json

import torch
from PIL import Image

from tests.helpers import tiny_model_config
from tests.test_structure import photo
from vdmcodec.diffusion import VDM
from vdmcodec.zoo import load_model, save_model


def test_probe_calibration_smoke(tmp_path):
    """Every RGB photo the benchmark coded at the asked T gets the probe's rate, saving and
    estimate beside its file; gray photos and other weights' results are left out or refused."""
    from experiments import probe_calibration

    torch.manual_seed(0)
    save_model(tmp_path / "m", VDM(tiny_model_config(image_channels=3)), {"name": "tiny3", "data": "none"})
    sha = load_model(tmp_path / "m")[1]["sha256"]
    (tmp_path / "data" / "S").mkdir(parents=True)
    Image.fromarray(photo(40, 48)).save(tmp_path / "data" / "S" / "a.png")
    Image.fromarray(photo(40, 48)[..., 0]).save(tmp_path / "data" / "S" / "gray.png")
    row = {"set": "S", "jxl": {"bpd": 3.0}, "webp": {"bpd": 3.2}, "model_coded": {"bpd": 6.0, "steps": 2}}
    bench = {"model": {"name": "tiny3", "sha256": sha}, "rows": [dict(row, image="a.png"), dict(row, image="gray.png")]}
    (tmp_path / "photos.json").write_text(json.dumps(bench))
    out = tmp_path / "cal.md"
    args = ["--model", str(tmp_path / "m"), "--steps", "2", "--threads", "1", "--photos", str(tmp_path / "photos.json"),
            "--data", str(tmp_path / "data"), "--out", str(out)]
    probe_calibration.main(args)
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [r["photo"] for r in rows] == ["a.png"] and rows[0]["rate"] > 0 and rows[0]["file"] == 6.0
    assert "| S | a.png |" in out.read_text()
    bench["model"]["sha256"] = "00" * 32
    (tmp_path / "photos.json").write_text(json.dumps(bench))
    try:
        probe_calibration.main(args)
    except SystemExit as e:
        assert "other weights" in str(e)
    else:
        raise AssertionError("a benchmark of other weights was accepted")
