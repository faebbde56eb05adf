"""Resuming from shipped raw weights (training/warmstart.py): the restart loads exactly the
saved weights, needs no optimiser state, ramps the learning rate up again, continues the
step count and card, and refuses files that are not raw weights of the same network."""
import json
import math
import shutil
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import tiny_model_config
from tests.test_training import TINY_TRAIN, write_npy
from vdmcodec.errors import DataError
from vdmcodec.training.config import RunConfig
from vdmcodec.training.trainer import DataSpec, Trainer
from vdmcodec.training.warmstart import (RAW_WEIGHTS, raw_weights_from_checkpoint, read_raw_weights,
                                         restart_from_weights, rewarm_factor, write_raw_weights)
from vdmcodec.zoo import CARD, WEIGHTS


def shipped_dir(run, dst, dtype="float32"):
    """A model directory as the repository ships it: EMA weights, card, raw weights; no
    checkpoint.pt."""
    dst.mkdir()
    for f in (WEIGHTS, CARD):
        shutil.copyfile(run / f, dst / f)
    raw_weights_from_checkpoint(run / "checkpoint.pt", dst, dtype)
    assert sorted(p.name for p in dst.iterdir()) == sorted([WEIGHTS, CARD, RAW_WEIGHTS])
    return dst


@pytest.fixture
def trained(tmp_path, mnist_path):
    data = write_npy(tmp_path / "train.npy", 64, mnist_path)
    cfg = RunConfig(model=tiny_model_config(), train=replace(TINY_TRAIN, lr_warmup=2))
    src = Trainer(cfg, tmp_path / "src", DataSpec(data), progress=False, card={"name": "src"})
    src.fit(10)
    return cfg, data, tmp_path / "src"


def test_restart_loads_exactly_the_saved_weights_without_optimiser_state(tmp_path, trained):
    cfg, data, run = trained
    model_dir = shipped_dir(run, tmp_path / "shipped")
    st = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
    tr = Trainer(cfg, tmp_path / "again", DataSpec(data), progress=False)
    rec = restart_from_weights(tr, model_dir, rewarm_steps=4)
    for k, v in st["model"].items():
        assert torch.equal(tr.model.state_dict()[k], v), k
    for k, v in st["ema"].items():  # the shipped EMA is the checkpoint's own: paired, loaded as is
        assert torch.equal(tr.ema.state_dict()[k], v), k
    assert rec["ema"] == "shipped" and rec["weights"] == "raw" and rec["steps"] == 10
    assert len(tr.opt.state) == 0  # AdamW starts afresh: no moments were shipped or loaded
    assert tr.step == 10
    tr.fit(13)
    assert tr.step == 13 and len(tr.opt.state) > 0
    card = json.loads((tmp_path / "again" / CARD).read_text())["card"]
    assert card["steps"] == 13  # the step count continues
    assert card["init_from"]["weights"] == "raw" and card["init_from"]["model"] == "src"
    assert math.isclose(card["cpu_hours"], card["init_from"]["cpu_hours"] + tr.cpu_seconds / 3600, abs_tol=2e-3)


def test_rewarm_ramps_the_learning_rate_and_survives_a_resume(tmp_path, trained):
    cfg, data, run = trained
    model_dir = shipped_dir(run, tmp_path / "shipped")
    tr = Trainer(cfg, tmp_path / "again", DataSpec(data), progress=False)
    restart_from_weights(tr, model_dir, rewarm_steps=4)
    lr = cfg.train.lr
    assert [tr.lr_at(s) for s in (10, 11, 12, 13, 14, 50)] == pytest.approx([lr / 4, lr / 2, 3 * lr / 4, lr, lr, lr])
    tr = Trainer(replace(cfg, train=replace(cfg.train, log_every=1)), tmp_path / "logged", DataSpec(data), progress=False)
    restart_from_weights(tr, model_dir, rewarm_steps=4)
    tr.fit(12)
    logged = [json.loads(x)["lr"] for x in (tmp_path / "logged" / "train.log").read_text().splitlines()]
    assert logged == pytest.approx([lr / 4, lr / 2])
    resumed = Trainer(cfg, tmp_path / "logged", DataSpec(data), resume=True, progress=False)
    assert resumed.step == 12 and resumed.lr_at(12) == pytest.approx(3 * lr / 4)
    # without a restart there is no ramp: a plain run or warm start keeps its schedule
    assert rewarm_factor(None, 0) == 1.0 and rewarm_factor({"model": "m", "steps": 5}, 5) == 1.0
    assert rewarm_factor({"weights": "raw", "steps": 5, "rewarm_steps": 0}, 5) == 1.0


def test_bfloat16_raw_weights_are_the_rounded_weights(tmp_path, trained):
    cfg, data, run = trained
    model_dir = shipped_dir(run, tmp_path / "shipped", dtype="bfloat16")
    st = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert (model_dir / RAW_WEIGHTS).stat().st_size < 0.6 * (model_dir / WEIGHTS).stat().st_size
    tr = Trainer(cfg, tmp_path / "again", DataSpec(data), progress=False)
    restart_from_weights(tr, model_dir)
    for k, v in st["model"].items():
        want = v.to(torch.bfloat16).float() if v.is_floating_point() else v
        assert torch.equal(tr.model.state_dict()[k], want), k


def test_unpaired_ema_starts_from_the_raw_weights(tmp_path, trained):
    """Raw weights of another step than the shipped EMA (a decay branch shipped, the
    constant-rate run kept): the EMA restarts from the raw weights."""
    cfg, data, run = trained
    model_dir = shipped_dir(run, tmp_path / "shipped")
    state, meta = read_raw_weights(model_dir / RAW_WEIGHTS)
    write_raw_weights(model_dir / RAW_WEIGHTS, state, step=meta["step"], cpu_hours=meta["cpu_hours"])
    tr = Trainer(cfg, tmp_path / "again", DataSpec(data), progress=False)
    rec = restart_from_weights(tr, model_dir)
    assert rec["ema"] == "raw"
    for k, v in state.items():
        assert torch.equal(tr.ema.state_dict()[k], v), k
    assert not torch.equal(tr.ema.state_dict()["net.conv_out.weight"], load_file(str(model_dir / WEIGHTS))["net.conv_out.weight"])


def test_restart_refuses_what_it_cannot_continue(tmp_path, trained):
    cfg, data, run = trained
    model_dir = shipped_dir(run, tmp_path / "shipped")
    fresh = lambda name: Trainer(cfg, tmp_path / name, DataSpec(data), progress=False)  # noqa: E731
    wider = replace(cfg.model, network=replace(cfg.model.network, channels=cfg.model.network.channels * 2))
    other = Trainer(RunConfig(model=wider, train=cfg.train), tmp_path / "w", DataSpec(data), progress=False)
    with pytest.raises(DataError, match="shape"):
        restart_from_weights(other, model_dir)
    with pytest.raises(DataError, match="started|resumed"):
        tr = fresh("twice")
        restart_from_weights(tr, model_dir)
        restart_from_weights(tr, model_dir)
    blob = (model_dir / RAW_WEIGHTS).read_bytes()
    (model_dir / RAW_WEIGHTS).write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="unreadable raw weights"):
        restart_from_weights(fresh("cut"), model_dir)
    shutil.copyfile(model_dir / WEIGHTS, model_dir / RAW_WEIGHTS)  # EMA weights are not raw weights
    with pytest.raises(DataError, match="not a raw-weights file"):
        restart_from_weights(fresh("ema"), model_dir)
    (model_dir / RAW_WEIGHTS).unlink()
    with pytest.raises(DataError, match="no raw weights"):
        restart_from_weights(fresh("none"), model_dir)
    with pytest.raises(ValueError, match="dtype"):
        write_raw_weights(tmp_path / "x.safetensors", {}, step=0, cpu_hours=0.0, dtype="float16")


def test_cli_restart_from_raw_weights(tmp_path, trained):
    from typer.testing import CliRunner

    from cli.main import app

    cfg, data, run = trained
    model_dir = shipped_dir(run, tmp_path / "shipped")
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "r"), "--config", str(tmp_path / "cfg.json"),
                              "--init-from", str(model_dir), "--init-weights", "raw", "--rewarm-steps", "5",
                              "--steps", "12", "--no-progress"])
    assert res.exit_code == 0, res.output
    card = json.loads(res.stdout.strip().splitlines()[-1])["card"]
    assert card["steps"] == 12 and card["init_from"]["rewarm_steps"] == 5
    res = runner.invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "r2"), "--config", str(tmp_path / "cfg.json"),
                              "--init-weights", "raw", "--no-progress"])
    assert res.exit_code != 0 and "--init-from" in res.output
