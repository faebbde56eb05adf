"""experiments/structure.py and experiments/structure_priors.py end to end on tiny models."""
import json

import numpy as np
import torch

from tests.helpers import tiny_model_config
from tests.test_augment import smooth_rgb
from tests.test_structure import photo
from vdmcodec.diffusion import VDM
from vdmcodec.training.augment import subsample_chroma


def test_structure_benchmark_smoke(tmp_path):
    """experiments/structure.py end to end on two small photos and a tiny RGB model: every
    variant measured for the model and the classical codecs, report and JSON written."""
    import torch
    from PIL import Image

    from experiments import structure
    from vdmcodec.diffusion import VDM
    from vdmcodec.zoo import save_model

    torch.manual_seed(0)
    save_model(tmp_path / "m", VDM(tiny_model_config(image_channels=3)), {"name": "tiny3", "data": "none"})
    (tmp_path / "data" / "S").mkdir(parents=True)
    for k in range(2):
        Image.fromarray(smooth_rgb(21, 30, k)).save(tmp_path / "data" / "S" / f"{k}.png")
    Image.fromarray(smooth_rgb(20, 20)[..., 0]).save(tmp_path / "data" / "S" / "gray.png")  # skipped: not RGB
    out = tmp_path / "r" / "structure.md"
    structure.main(["--models", str(tmp_path / "m"), "--labels", "tiny", "--data", str(tmp_path / "data"), "--sets", "S",
                    "--crop", "16", "--draws", "2", "--out", str(out)])
    raw = json.loads(out.with_suffix(".json").read_text())
    assert [r["name"] for r in raw["rows"]] == ["S/0.png", "S/1.png"] and raw["rows"][0]["shape"] == [16, 16, 3]
    for r in raw["rows"]:
        for v in structure.VARIANTS:
            assert np.isfinite(r[v]["tiny"]) and r[v]["tiny"] > 0 and r[v]["PNG"] > 0
    text = out.read_text()
    assert all(f"| {v} |" in text for v in structure.VARIANTS) and "tiny" in text


def test_structure_priors_benchmark_smoke(tmp_path):
    """The benchmark script runs end to end on a tiny RGB model: candidates, choice, both
    files and the decode check (its figures mean nothing here)."""
    from PIL import Image

    from experiments import structure_priors
    from vdmcodec.zoo import save_model

    torch.manual_seed(0)
    model_dir = tmp_path / "tiny3"
    save_model(model_dir, VDM(tiny_model_config(image_channels=3)), {"name": "tiny3", "data": "none", "coding_steps": 2})
    paths = []
    for name, im in (("sub.png", subsample_chroma(photo(40, 48), (1, 2), "replicate", "jfif")), ("plain.png", photo(40, 48))):
        Image.fromarray(im).save(tmp_path / name)
        paths.append(str(tmp_path / name))
    out = tmp_path / "sp.md"
    structure_priors.main(paths + ["--model", str(model_dir), "--out", str(out)])
    text = out.read_text()
    assert "| sub.png | 48x40 |" in text and "| plain.png | 48x40 | none | none | - |" in text
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert rows[0]["exact"] is True and any(k.startswith("4:2:2") for k in rows[0]["candidates"]) and "with" not in rows[1]
