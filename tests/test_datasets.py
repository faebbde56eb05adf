"""Training on several data paths (training/datasets.py): the union trains, validation never
shares an image with training, validation crops are fixed, and crops of mixed-size images
are drawn in proportion to area."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import tiny_model_config
from vdmcodec.data import PatchSampler
from vdmcodec.errors import DataError
from vdmcodec.training.config import RunConfig, TrainConfig
from vdmcodec.training.datasets import DataSpec, check_disjoint, load_images, load_validation

TINY = TrainConfig(batch_size=4, lr=1e-3, lr_warmup=2, eval_every=2, eval_images=6, ckpt_every=1000, log_every=1,
                   seed=0, patch_size=8)


def folder(path: Path, sizes, channels=3, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True)
    for k, (h, w) in enumerate(sizes):
        shape = (h, w, channels) if channels == 3 else (h, w)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path / f"{k}.png")
    return path


@pytest.fixture
def photos(tmp_path):
    return {"a": folder(tmp_path / "a", [(20, 24), (17, 30)], seed=1),
            "b": folder(tmp_path / "b", [(32, 18)], seed=2),
            "v": folder(tmp_path / "v", [(16, 16), (21, 13)], seed=3)}


def test_two_training_folders_train_and_validate(tmp_path, photos):
    from vdmcodec.training.trainer import Trainer

    cfg = RunConfig(model=tiny_model_config(image_channels=3), train=TINY)
    tr = Trainer(cfg, tmp_path / "run", [DataSpec(photos["a"]), DataSpec(photos["b"])], [DataSpec(photos["v"])],
                 progress=False)
    assert len(tr.images) == 3 and tr.val_images.shape == (6, 8, 8, 3)
    tr.fit(2)
    card = json.loads((tmp_path / "run" / "model.json").read_text())["card"]
    assert card["data"] == "a + b" and card["train_split"] == "all + all" and card["val_split"] == "v all"
    assert card["val_bpd_continuous"] is not None


def test_validation_sharing_an_image_with_training_is_refused(tmp_path, photos):
    with pytest.raises(DataError, match="both a training and a validation"):
        check_disjoint([DataSpec(photos["a"]), DataSpec(photos["b"])], [DataSpec(photos["b"])])
    copy = tmp_path / "v2"
    copy.mkdir()
    (copy / "renamed.png").write_bytes((photos["a"] / "1.png").read_bytes())
    with pytest.raises(DataError, match="same pixels"):
        check_disjoint([DataSpec(photos["a"])], [DataSpec(copy)])
    check_disjoint([DataSpec(photos["a"]), DataSpec(photos["b"])], [DataSpec(photos["v"])])  # disjoint: fine


def test_dataset_file_ranges_must_not_overlap(tmp_path):
    arr = tmp_path / "d.npy"
    np.save(arr, np.zeros((10, 4, 4), dtype=np.uint8))
    check_disjoint([DataSpec(arr, 0, 8)], [DataSpec(arr, 8, 10)])
    for train, val in [((0, 8), (7, 10)), ((0, None), (8, 10)), ((2, 5), (0, None)), ((5, None), (0, 6))]:
        with pytest.raises(DataError, match="overlaps"):
            check_disjoint([DataSpec(arr, *train)], [DataSpec(arr, *val)])
    check_disjoint([DataSpec(arr, 5, None)], [DataSpec(arr, 0, 5)])


def test_validation_crops_are_fixed_and_skip_other_channel_counts(tmp_path, photos):
    gray = folder(tmp_path / "g", [(18, 18)], channels=1, seed=4)
    specs = [DataSpec(photos["v"]), DataSpec(gray)]
    a, skipped = load_validation(specs, 8, 10, channels=3)
    b, _ = load_validation(specs, 8, 10, channels=3)
    assert skipped == 1 and a.shape == (10, 8, 8, 3)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(DataError, match="no 1-channel"):
        load_validation([DataSpec(photos["v"])], 8, 10, channels=1)
    with pytest.raises(DataError, match="channels"):  # training data must agree on channels
        load_images([DataSpec(photos["a"]), DataSpec(gray)], 8)


def test_crops_are_drawn_in_proportion_to_area():
    small = np.zeros((10, 10, 1), dtype=np.uint8)
    big = np.full((100, 100, 1), 255, dtype=np.uint8)
    crops = PatchSampler([small, big], 4, seed=0).batch(4000)
    share_big = float((crops[:, 0, 0, 0] == 255).mean())
    assert abs(share_big - 100 / 101) < 0.01, share_big  # uniform over images would give 0.5


def test_crop_corners_fall_on_the_multiple():
    """With multiple=8 every crop starts on the 8x8 grid (so JPEG block edges keep their phase)
    and every grid position that fits is used, the last one included; multiple=1 uses the
    others too."""
    h, w, p = 43, 37, 16
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    im = np.stack([ys, xs], axis=-1).astype(np.uint8)  # each pixel holds its own (y, x)
    for m, want_y, want_x in [(8, {0, 8, 16, 24}, {0, 8, 16}), (1, set(range(h - p + 1)), set(range(w - p + 1)))]:
        crops = PatchSampler([im], p, seed=1, multiple=m).batch(3000)
        assert {int(v) for v in crops[:, 0, 0, 0]} == want_y
        assert {int(v) for v in crops[:, 0, 0, 1]} == want_x
    with pytest.raises(ValueError, match="multiple"):
        PatchSampler([im], p, seed=1, multiple=0)


def test_cli_range_needs_one_path(tmp_path, photos):
    from typer.testing import CliRunner

    from cli.main import app

    cfg = RunConfig(model=tiny_model_config(image_channels=3), train=replace(TINY, eval_every=0))
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    base = ["train", "--data", str(photos["a"]), "--data", str(photos["b"]), "--out", str(tmp_path / "run"),
            "--config", str(tmp_path / "cfg.json"), "--no-progress", "--steps", "1"]
    res = CliRunner().invoke(app, base + ["--data-range", "0:1"])
    assert res.exit_code != 0 and "exactly one --data" in res.output
    res = CliRunner().invoke(app, base + ["--val", str(photos["a"])])
    assert res.exit_code != 0 and "both a training and a validation image" in res.output
    res = CliRunner().invoke(app, base + ["--val", str(photos["v"])])
    assert res.exit_code == 0, res.output
