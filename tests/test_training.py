"""Trainer: learning happens, save/load is exact, resume continues, DDP under torchrun."""
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import tiny_model_config
from vdmcodec.data import to_tensor
from vdmcodec.likelihood import bpd_continuous
from vdmcodec.training.config import RunConfig, TrainConfig, load_config
from vdmcodec.training.trainer import DataSpec, Trainer
from vdmcodec.hardware import native_bf16
from vdmcodec.zoo import load_model

TINY_TRAIN = TrainConfig(batch_size=32, lr=2e-3, lr_warmup=20, eval_every=0, eval_images=200,
                         ckpt_every=1000, log_every=10, ema_decay=0.9, seed=0)


def write_npy(path: Path, n: int, mnist_path) -> Path:
    from vdmcodec.data import read_idx

    np.save(path, read_idx(mnist_path)[:n])
    return path


def val_bpd(model, arr, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return float(bpd_continuous(model, to_tensor(arr), g, t_samples=4).total.mean())


def test_tiny_model_learns(tmp_path, mnist_path):
    """Threshold: 300 steps of a 20k-parameter model must take the validation bpd from
    ~13 (untrained: eps_hat = 0 pays the whole gamma range) to below 60% of it. A model
    that does not learn stays near 13; the measured value here is about 3-4 bpd."""
    data = write_npy(tmp_path / "train.npy", 512, mnist_path)
    from vdmcodec.data import read_idx

    val = read_idx(mnist_path)[8000:8128]
    cfg = RunConfig(model=tiny_model_config(), train=TINY_TRAIN)
    tr = Trainer(cfg, tmp_path / "run", DataSpec(data), progress=False)
    before = val_bpd(tr.model, val)
    tr.fit(300)
    after = val_bpd(tr.model, val)
    assert before > 10
    assert after < 0.6 * before, (before, after)


def test_save_load_identical_and_resume(tmp_path, mnist_path):
    data = write_npy(tmp_path / "train.npy", 64, mnist_path)
    cfg = RunConfig(model=tiny_model_config(), train=replace(TINY_TRAIN, ckpt_every=5))
    out = tmp_path / "run"
    tr = Trainer(cfg, out, DataSpec(data), progress=False)
    tr.fit(10)
    loaded, info = load_model(out)
    x = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    with torch.no_grad():
        a = bpd_continuous(tr.ema.eval(), x, g1).total
        b = bpd_continuous(loaded, x, g2).total
    assert torch.equal(a, b)
    assert info["card"]["steps"] == 10
    # a second trainer without --resume refuses to clobber; with it, continues the count
    from vdmcodec.errors import DataError

    with pytest.raises(DataError, match="resume"):
        Trainer(cfg, out, DataSpec(data), progress=False)
    tr2 = Trainer(cfg, out, DataSpec(data), resume=True, progress=False)
    assert tr2.step == 10
    for p, q in zip(tr.model.parameters(), tr2.model.parameters()):
        assert torch.equal(p, q)
    tr2.fit(15)
    assert json.loads((out / "model.json").read_text())["card"]["steps"] == 15


def test_resume_reproduces_uninterrupted_run(tmp_path, mnist_path):
    """10 steps straight == 5 steps, save, resume, 5 more (RNG and sampler state restored)."""
    data = write_npy(tmp_path / "train.npy", 64, mnist_path)
    cfg = RunConfig(model=tiny_model_config(), train=TINY_TRAIN)
    a = Trainer(cfg, tmp_path / "a", DataSpec(data), progress=False)
    a.fit(10)
    b = Trainer(cfg, tmp_path / "b", DataSpec(data), progress=False)
    b.fit(5)
    b = Trainer(cfg, tmp_path / "b", DataSpec(data), resume=True, progress=False)
    b.fit(10)
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_config_file_roundtrip(tmp_path):
    cfg = RunConfig(model=tiny_model_config(), train=TINY_TRAIN)
    p = tmp_path / "cfg.json"
    p.write_text(json.dumps(cfg.to_dict()))
    assert load_config(p) == cfg
    p.write_text(json.dumps({"train": {"bogus": 1}}))
    from vdmcodec.errors import DataError

    with pytest.raises(DataError, match="bogus"):
        load_config(p)
    for bad, msg in [({"crop_multiple": 0}, "crop_multiple must be a positive integer, got 0"),
                     ({"batch_size": 2.5}, "batch_size must be a positive integer"),
                     ({"ema_decay": 1.0}, r"ema_decay must be in \[0, 1\)"), ({"lr": -1e-3}, "lr must be positive")]:
        p.write_text(json.dumps({"train": bad}))
        with pytest.raises(DataError, match="config: bad train section") as e:
            load_config(p)
        assert e.match(msg) and "\n" not in str(e.value)


def test_torchrun_two_processes(tmp_path, mnist_path):
    """DDP smoke test: 2 CPU processes (gloo) train 4 steps and write one checkpoint."""
    data = write_npy(tmp_path / "train.npy", 64, mnist_path)
    cfg = RunConfig(model=tiny_model_config(), train=replace(TINY_TRAIN, batch_size=8, threads=1))
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(cfg.to_dict()))
    out = tmp_path / "ddp"
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "cli.main", "train",
           "--data", str(data), "--out", str(out), "--steps", "4", "--config", str(cfg_path), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=Path(__file__).parent.parent)
    assert res.returncode == 0, res.stderr[-2000:]
    card = json.loads((out / "model.json").read_text())["card"]
    assert card["steps"] == 4 and card["batch_size"] == 16
    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ck["step"] == 4


def test_train_then_eval_on_png_folder(tmp_path):
    """`vdmcodec train` then `vdmcodec eval --json` end to end on a folder of PNG images of
    mixed sizes (random patches for training)."""
    from PIL import Image
    from typer.testing import CliRunner

    from cli.main import app

    rng = np.random.default_rng(0)
    folder = tmp_path / "pngs"
    folder.mkdir()
    for k, (h, w) in enumerate([(20, 24), (17, 30), (32, 18)]):
        Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(folder / f"{k}.png")
    cfg = RunConfig(model=tiny_model_config(), train=replace(TINY_TRAIN, batch_size=4, patch_size=16))
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--data", str(folder), "--out", str(tmp_path / "run"), "--steps", "3",
                              "--config", str(tmp_path / "cfg.json"), "--no-progress"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["eval", "--data", str(folder), "--model", str(tmp_path / "run"), "--json", "--no-progress"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["images"] == 3 and out["bpd_continuous"] > 0


@pytest.mark.parametrize("kind", ["learned", "learned_linear"])
def test_schedule_endpoints_get_the_vlb_gradient(tmp_path, mnist_path, kind):
    """VDM trains the schedule's endpoints on the VLB and its interior on the variance of
    the diffusion loss. One train_step's gradients against both, recomputed from the same
    t and noise: the endpoints' must equal d VLB / d eta, the interior's d E[L_diff^2] / d eta
    (before this was split, the endpoints got the variance gradient too, and gamma(0),
    gamma(1) drifted inwards: on the shipped model at step 11.5k the VLB's gradient was
    +0.10 bpd per unit of gamma(0))."""
    from vdmcodec.diffusion import training_terms  # noqa: F401  (the objective the trainer uses)
    from vdmcodec.schedules import ScheduleKind

    data = write_npy(tmp_path / "train.npy", 64, mnist_path)
    cfg = RunConfig(model=tiny_model_config(ScheduleKind(kind)), train=replace(TINY_TRAIN, grad_clip=1e9))
    tr = Trainer(cfg, tmp_path / "run", DataSpec(data), progress=False)
    x = to_tensor(np.load(data)[:16])
    state = tr.generator.get_state()
    captured = {}
    tr.opt.step = lambda *a, **k: captured.update({n: p.grad.clone() for n, p in tr.model.gamma.named_parameters()
                                                   if p.grad is not None})
    torch.manual_seed(5)
    tr.train_step(x)

    from vdmcodec.diffusion import low_discrepancy_t

    g = torch.Generator()
    g.set_state(state)
    t = low_discrepancy_t(16, g, "cpu")
    eps, eps_0 = torch.randn(x.shape, generator=g), torch.randn(x.shape, generator=g)
    m = tr.model
    scale = 1.0 / (x[0].numel() * np.log(2.0))
    torch.manual_seed(5)
    vlb = (m.loss_recon(x, eps_0) + m.loss_prior(x) + m.loss_diff_continuous(x, t, eps)).mean() * scale
    torch.manual_seed(5)
    var = (m.loss_diff_continuous(x, t, eps) ** 2).mean() * scale**2
    ends = {id(p) for p in m.gamma.endpoint_parameters()}
    assert ends, "a learned schedule has endpoint parameters"
    names = [n for n, _ in m.gamma.named_parameters()]
    params = [p for _, p in m.gamma.named_parameters()]
    d_vlb = torch.autograd.grad(vlb, params, allow_unused=True, retain_graph=True)
    d_var = torch.autograd.grad(var, params, allow_unused=True)
    for n, p, a, b in zip(names, params, d_vlb, d_var):
        want = a if id(p) in ends else b
        want = torch.zeros_like(p) if want is None else want
        torch.testing.assert_close(captured[n], want, rtol=2e-4, atol=1e-7, msg=f"{kind}: {n}")


def _eval_line(step: int, bpd: float) -> str:
    return json.dumps({"eval": True, "step": step, "cpu_hours": step / 1000, "val_bpd": bpd, "val_bpd_se": 0.1})


def test_reship_keeps_earlier_history_and_coding_defaults(tmp_path):
    """A run resumed on a fresh machine logs only its own evaluations: shipping it over an
    earlier ship keeps the earlier ones, the image size and the coding defaults, and the
    codec then codes with the card's T and arithmetic unless told otherwise."""
    from vdmcodec.coding.codec import DEFAULT_ARITHMETIC, DEFAULT_STEPS, load_codec
    from vdmcodec.diffusion import VDM
    from vdmcodec.errors import ModelError
    from vdmcodec.training.ship import ship
    from vdmcodec.zoo import save_model

    torch.manual_seed(0)
    run, out = tmp_path / "run", tmp_path / "shipped"
    save_model(run, VDM(tiny_model_config()), {"name": "tiny", "steps": 4000})
    (run / "train.log").write_text("\n".join([_eval_line(3000, 2.5), '{"step": 3500}', _eval_line(4000, 2.4)]) + "\n")
    ship(run, out, None, checkpoint=False, notes=None)
    card = load_model(out)[1]["card"]
    assert [e["step"] for e in card["eval_history"]] == [3000, 4000] and "coding_steps" not in card
    codec = load_codec(out)
    assert (codec.steps, codec.arithmetic) == (DEFAULT_STEPS, DEFAULT_ARITHMETIC)

    ship(run, out, [28, 28], checkpoint=False, notes=None, coding_steps=24, coding_arithmetic="bfloat16-nhwc")
    # an earlier ship held evaluations from before this run's log (steps 1000, 2000, and an older 3000)
    meta = json.loads((out / "model.json").read_text())
    meta["card"]["eval_history"] = [{"step": s, "cpu_hours": 0.0, "val_bpd": 9.0, "val_bpd_se": 0.1} for s in (1000, 2000, 3000)]
    (out / "model.json").write_text(json.dumps(meta))
    ship(run, out, None, checkpoint=False, notes=None)  # a later ship names none of them
    card = load_model(out)[1]["card"]
    assert [(e["step"], e["val_bpd"]) for e in card["eval_history"]] == [(1000, 9.0), (2000, 9.0), (3000, 2.5), (4000, 2.4)]
    assert (card["image_size"], card["coding_steps"], card["coding_arithmetic"]) == ([28, 28], 24, "bfloat16-nhwc")
    codec = load_codec(out)  # the card's bfloat16 where this CPU has it natively (hardware.py)
    assert (codec.steps, codec.arithmetic) == (24, "bfloat16-nhwc" if native_bf16() else "float32-nhwc")
    codec = load_codec(out, steps=5, arithmetic="float32")
    assert (codec.steps, codec.arithmetic) == (5, "float32")

    with pytest.raises(ValueError, match="coding_arithmetic"):
        ship(run, out, None, checkpoint=False, notes=None, coding_arithmetic="float16")
    for bad in ({"coding_steps": 0}, {"coding_steps": "64"}, {"coding_arithmetic": "int8"}):
        meta = json.loads((out / "model.json").read_text())
        meta["card"] = {**meta["card"], "coding_steps": 24, "coding_arithmetic": "float32", **bad}
        (out / "model.json").write_text(json.dumps(meta))
        with pytest.raises(ModelError, match=next(iter(bad))):
            load_codec(out)


def test_warm_start_adds_learned_variance_and_keeps_eps(tmp_path, mnist_path):
    """--init-from: a trained model without learned variances starts a run that has them.
    Before any step the new model's eps_hat equals the source's and v = 0; the card keeps
    the source's record; a different network is refused; resuming keeps the record."""
    from vdmcodec.errors import DataError

    data = write_npy(tmp_path / "train.npy", 64, mnist_path)
    src_cfg = RunConfig(model=tiny_model_config(), train=TINY_TRAIN)
    src = Trainer(src_cfg, tmp_path / "src", DataSpec(data), progress=False, card={"name": "src"})
    src.fit(10)
    source, _ = load_model(tmp_path / "src")
    lv = replace(src_cfg.model, network=replace(src_cfg.model.network, learned_variance=True))
    cfg = RunConfig(model=lv, train=TINY_TRAIN)
    tr = Trainer(cfg, tmp_path / "lv", DataSpec(data), progress=False, init_from=tmp_path / "src")
    z = torch.randn(2, 1, 28, 28)
    g = torch.tensor([-3.0, 2.0])
    with torch.no_grad():
        eps_src = source.eps_hat(z, g)
        eps_new, v = tr.ema.eval().eps_and_v(z, g)
    assert eps_src.abs().max() > 0  # the source learnt something to carry over
    assert torch.equal(eps_src, eps_new)
    assert torch.equal(v, torch.zeros_like(v))
    tr.fit(3)
    card = json.loads((tmp_path / "lv" / "model.json").read_text())["card"]
    assert card["init_from"]["model"] == "src" and card["init_from"]["steps"] == 10
    assert card["init_from"]["grown"] == ["net.conv_out.weight", "net.conv_out.bias"]
    assert card["steps"] == 3 and card["cpu_hours"] >= card["init_from"]["cpu_hours"]
    wider = replace(lv, network=replace(lv.network, channels=16))
    with pytest.raises(DataError, match="init-from src"):
        Trainer(RunConfig(model=wider, train=TINY_TRAIN), tmp_path / "w", DataSpec(data), progress=False,
                init_from=tmp_path / "src")
    with pytest.raises(DataError, match="resumed run"):
        Trainer(cfg, tmp_path / "lv", DataSpec(data), resume=True, progress=False, init_from=tmp_path / "src")
    again = Trainer(cfg, tmp_path / "lv", DataSpec(data), resume=True, progress=False)
    assert again.card()["init_from"] == card["init_from"]


def test_warm_start_shrinks_res_blocks(tmp_path, mnist_path):
    """--init-from a network with more residual blocks per level: the smaller one takes the
    source's first down blocks, and on the way up its first blocks and the source's last
    (which reads the level's first skip); the card records the shrink; any other change of
    network is still refused."""
    from vdmcodec.errors import DataError
    from vdmcodec.training.warmstart import shrunk_keys

    data = write_npy(tmp_path / "train.npy", 64, mnist_path)
    base = tiny_model_config()
    two = replace(base, network=replace(base.network, num_res_blocks=2))
    src = Trainer(RunConfig(model=two, train=TINY_TRAIN), tmp_path / "src", DataSpec(data), progress=False,
                  card={"name": "src"})
    src.fit(5)
    source, _ = load_model(tmp_path / "src")
    tr = Trainer(RunConfig(model=base, train=TINY_TRAIN), tmp_path / "one", DataSpec(data), progress=False,
                 init_from=tmp_path / "src")
    assert shrunk_keys(1, 2, ["net.up.0.1.conv1.weight", "net.up.1.0.emb.bias", "net.down.1.0.skip.weight",
                              "net.conv_in.weight"]) == {
        "net.up.0.1.conv1.weight": "net.up.0.2.conv1.weight", "net.up.1.0.emb.bias": "net.up.1.0.emb.bias",
        "net.down.1.0.skip.weight": "net.down.1.0.skip.weight", "net.conv_in.weight": "net.conv_in.weight"}
    src_state, new_state = source.state_dict(), tr.ema.state_dict()
    rename = shrunk_keys(1, 2, new_state)
    assert any(rename[k] != k for k in new_state)
    for k, v in new_state.items():
        assert torch.equal(v, src_state[rename[k]]), k
    assert tr.card()["init_from"]["res_blocks"] == [2, 1]
    narrower = replace(base, network=replace(base.network, channels=4))
    with pytest.raises(DataError, match="init-from src"):
        Trainer(RunConfig(model=narrower, train=TINY_TRAIN), tmp_path / "n", DataSpec(data), progress=False,
                init_from=tmp_path / "src")


@pytest.mark.parametrize("native", [True, False])
def test_bf16_config_trains_in_bf16_only_where_native(tmp_path, mnist_path, monkeypatch, native):
    """TrainConfig.bf16 means bf16 autocast where the hardware multiplies bfloat16 natively
    (hardware.py); elsewhere the trainer runs float32 (bf16 there is about 100x slower)."""
    from vdmcodec.training import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "native_bf16", lambda device="cpu": native)
    data = write_npy(tmp_path / "train.npy", 32, mnist_path)
    cfg = RunConfig(model=tiny_model_config(), train=replace(TINY_TRAIN, bf16=True, batch_size=4))
    tr = Trainer(cfg, tmp_path / "run", DataSpec(data), progress=False)
    seen = []
    tr.model.net.conv_out.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    tr.fit(1)
    assert tr.bf16 is native
    assert seen and set(seen) == {torch.bfloat16 if native else torch.float32}


def test_learning_rate_warmup_stable_decay():
    from vdmcodec.training.lr_schedule import learning_rate

    lr = 1e-3
    # warmup, then constant when no decay is asked for
    assert learning_rate(lr, 10, 0) == pytest.approx(1e-4)
    assert learning_rate(lr, 10, 9) == lr
    assert learning_rate(lr, 10, 10**6) == lr
    for shape in ("linear", "cosine", "1-sqrt"):
        rates = [learning_rate(lr, 10, s, decay_start=100, decay_steps=50, lr_min=1e-5, shape=shape) for s in range(300)]
        assert rates[99] == lr  # constant up to the start
        assert all(a >= b for a, b in zip(rates[99:], rates[100:])), shape  # never rises while decaying
        assert rates[100] < lr
        assert rates[149] == pytest.approx(1e-5) and rates[299] == pytest.approx(1e-5)
    # 1-sqrt drops faster early than linear, cosine slower
    at = {sh: learning_rate(lr, 1, 110, 100, 100, 0.0, sh) for sh in ("linear", "cosine", "1-sqrt")}
    assert at["1-sqrt"] < at["linear"] < at["cosine"]
    assert at["linear"] == pytest.approx(lr * (1 - 11 / 100))


def test_lr_decay_config_checked_and_applied(tmp_path, mnist_path):
    with pytest.raises(ValueError, match="lr_decay_shape"):
        TrainConfig(lr_decay_start=5, lr_decay_shape="exp")
    with pytest.raises(ValueError, match="lr_min"):
        TrainConfig(lr=1e-3, lr_min=1e-2)
    with pytest.raises(ValueError, match="lr_decay_steps"):
        TrainConfig(lr_decay_start=5, lr_decay_steps=0)
    # a run resumed with a decay from its current step: the optimiser gets the decayed rates
    data = write_npy(tmp_path / "train.npy", 64, mnist_path)
    out = tmp_path / "run"
    tr = Trainer(RunConfig(model=tiny_model_config(), train=TINY_TRAIN), out, DataSpec(data), progress=False)
    tr.fit(5)
    cool = replace(TINY_TRAIN, lr_decay_start=5, lr_decay_steps=4, lr_min=0.0, lr_decay_shape="linear")
    tr2 = Trainer(RunConfig(model=tiny_model_config(), train=cool), out, DataSpec(data), progress=False, resume=True)
    assert tr2.step == 5
    tr2.fit(10)
    logged = [json.loads(line) for line in (out / "train.log").read_text().splitlines() if '"lr"' in line]
    assert [r["step"] for r in logged] == [10]
    assert logged[-1]["lr"] == 0.0  # step 9: past the 4-step decay
    assert tr2.opt.param_groups[0]["lr"] == 0.0


def test_ship_a_decayed_branch_with_the_constant_rate_checkpoint(tmp_path):
    """--checkpoint-from: the weights and card come from the branch, the raw weights to
    continue from from the other run (no optimiser state is shipped), and the card says
    which step they are at."""
    from vdmcodec.diffusion import VDM
    from vdmcodec.training.ship import ship
    from vdmcodec.training.warmstart import RAW_WEIGHTS, read_raw_weights
    from vdmcodec.zoo import save_model

    torch.manual_seed(0)
    branch, main, out = tmp_path / "branch", tmp_path / "main", tmp_path / "shipped"
    models = {}
    for run, steps, hours in ((branch, 5000, 5.5), (main, 4800, 5.2)):
        raw, ema = VDM(tiny_model_config()), VDM(tiny_model_config())
        save_model(run, ema, {"name": "tiny", "steps": steps, "cpu_hours": hours})
        torch.save({"step": steps, "model": raw.state_dict(), "ema": ema.state_dict(), "opt": {"moments": "big"},
                    "cpu_seconds": hours * 3600}, run / "checkpoint.pt")
        models[run] = raw.state_dict()
    card = ship(branch, out, None, checkpoint=False, notes=None, checkpoint_from=main)
    assert not (out / "checkpoint.pt").exists()
    state, meta = read_raw_weights(out / RAW_WEIGHTS)
    assert all(torch.equal(state[k], v) for k, v in models[main].items())
    assert meta["step"] == 4800 and "ema_sha256" not in meta  # not the shipped EMA's step
    assert (out / "model.safetensors").read_bytes() == (branch / "model.safetensors").read_bytes()
    assert card["steps"] == 5000 and card["checkpoint"]["steps"] == 4800 and card["checkpoint"]["cpu_hours"] == 5.2
    card = ship(branch, out, None, checkpoint=True, notes=None)  # a plain ship: its own raw weights, paired
    state, meta = read_raw_weights(out / RAW_WEIGHTS)
    assert all(torch.equal(state[k], v) for k, v in models[branch].items())
    assert meta["step"] == 5000 and meta["ema_sha256"] and card["checkpoint"]["steps"] == 5000
    card = ship(branch, out, None, checkpoint=False, notes=None)  # a re-ship without state keeps the raw weights' record
    assert card["checkpoint"]["steps"] == 5000 and (out / RAW_WEIGHTS).exists()


def test_reship_keeps_fitted_level_times_only_for_the_same_weights(tmp_path):
    from vdmcodec.diffusion import VDM
    from vdmcodec.training.ship import ship
    from vdmcodec.zoo import file_sha256, save_model

    torch.manual_seed(0)
    run, out = tmp_path / "run", tmp_path / "shipped"
    save_model(run, VDM(tiny_model_config()), {"name": "tiny", "steps": 10})
    ship(run, out, None, checkpoint=False, notes=None, coding_steps=3)
    meta = json.loads((out / "model.json").read_text())
    fit = {"weights_sha256": file_sha256(out / "model.safetensors")[:16]}
    more = {"5": {"times": [0.0, 0.2, 0.4, 0.6, 0.8, 1.0], "fit": fit}}
    corr = {"table": [[0.0, 0.5, 0.4, 0.3]], "fit": fit}
    pre = {"plain_floor": 1.03, **fit}
    speed = {"float32": {"compress_s": 1.0, **fit}}
    meta["card"].update({"coding_times": [0.0, 0.3, 0.6, 1.0], "coding_times_fit": fit, "coding_times_more": more,
                         "coding_corr": corr, "coding_preflight": pre, "coding_efforts": {"7": 3},
                         "coding_speed": dict(speed, bfloat16={"compress_s": 2.0, "weights_sha256": "00" * 8})})
    (out / "model.json").write_text(json.dumps(meta))
    ship(run, out, None, checkpoint=False, notes="same weights, new notes")
    card = load_model(out)[1]["card"]
    assert card["coding_times"] == [0.0, 0.3, 0.6, 1.0] and card["notes"] == "same weights, new notes"
    assert card["coding_times_more"] == more and card["coding_corr"] == corr and card["coding_preflight"] == pre
    assert card["coding_speed"] == speed  # the entry measured on other weights is dropped
    save_model(run, VDM(tiny_model_config()), {"name": "tiny", "steps": 20})  # new weights
    ship(run, out, None, checkpoint=False, notes=None)
    card = load_model(out)[1]["card"]
    assert "coding_times" not in card and "coding_times_fit" not in card and card["coding_steps"] == 3
    assert "coding_times_more" not in card and "coding_corr" not in card and "coding_preflight" not in card
    assert "coding_speed" not in card
    assert card["coding_efforts"] == {"7": 3}  # the effort table is not tied to the weights
