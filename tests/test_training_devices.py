"""Training on any device: collectives on the backend's device, checkpoints loaded onto the
CPU, every rank's random state saved and restored (a 2-process gloo run resumed equals one
run straight through), validation on rank 0 only, device-hours on the card."""
import ast
import io
import json
import os
import socket
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from tests.helpers import tiny_model_config
from vdmcodec.training import trainer as trainer_mod
from vdmcodec.training.config import RunConfig, TrainConfig
from vdmcodec.training.trainer import DataSpec, Distributed, Trainer

TINY = TrainConfig(batch_size=8, lr=2e-3, lr_warmup=5, eval_every=0, eval_images=16, ckpt_every=1000, log_every=10,
                   ema_decay=0.9, seed=0, threads=1)
COLLECTIVES = {"all_reduce", "all_gather", "all_gather_object", "gather", "gather_object", "broadcast",
               "broadcast_object_list", "reduce", "scatter", "reduce_scatter", "barrier", "all_to_all"}


def _data(path: Path, n: int = 48, side: int = 16) -> Path:
    rng = np.random.default_rng(0)
    np.save(path, rng.integers(0, 256, (n, side, side), dtype=np.uint8))
    return path


def test_collectives_live_only_in_distributed():
    """Every torch.distributed collective of the package is a Distributed method (which puts
    its tensors on the backend's device)."""
    root = Path(trainer_mod.__file__).resolve().parents[1]
    offenders = []
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        inside = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name == "Distributed":
                inside |= {id(n) for n in ast.walk(node)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in COLLECTIVES
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "dist" and id(node) not in inside):
                offenders.append(f"{path.name}:{node.lineno}")
    assert not offenders, offenders


def test_every_collective_tensor_is_on_the_backend_device(monkeypatch):
    """With the backend on a device (meta here, cuda under nccl), each collective gets its
    tensors there; a tensor elsewhere is refused."""
    d = object.__new__(Distributed)
    d.world, d.rank, d.local_rank, d.enabled, d.device = 2, 0, 0, True, torch.device("meta")
    seen = []

    class Stop(Exception):
        pass

    def all_reduce(t, *a, **k):
        seen.append(t.device)
        raise Stop

    def all_gather(parts, t, *a, **k):
        seen.extend([t.device] + [p.device for p in parts])
        raise Stop

    monkeypatch.setattr(trainer_mod.dist, "all_reduce", all_reduce)
    monkeypatch.setattr(trainer_mod.dist, "all_gather", all_gather)
    meta = torch.device("meta")
    for call in (lambda: d.mean(1.5), lambda: d.any(True), lambda: d.average_(torch.zeros(3, device=meta)),
                 lambda: d.all_gather(torch.zeros(2, device=meta))):
        with pytest.raises(Stop):
            call()
    assert len(seen) == 6 and set(seen) == {meta}
    for call in (lambda: d.average_(torch.zeros(3)), lambda: d.all_gather(torch.zeros(2))):
        with pytest.raises(RuntimeError, match="backend's device is meta"):
            call()


def test_resume_loads_onto_the_cpu_and_old_checkpoints_still_resume(tmp_path, monkeypatch):
    data = _data(tmp_path / "d.npy")
    cfg = RunConfig(model=tiny_model_config(), train=TINY)
    out = tmp_path / "run"
    Trainer(cfg, out, DataSpec(data), progress=False, device="cpu").fit(2)
    st = torch.load(out / "checkpoint.pt", weights_only=False)
    assert st["device"] == "cpu" and len(st["rank_rng"]) == 1 and st["rank_rng"][0]["cuda_rng"] is None
    loads = []
    real_load = torch.load

    def spy(*a, **k):
        loads.append(k.get("map_location"))
        return real_load(*a, **k)

    monkeypatch.setattr(torch, "load", spy)
    tr = Trainer(cfg, out, DataSpec(data), resume=True, progress=False, device="cpu")
    assert loads == ["cpu"] and tr.step == 2
    # a checkpoint written before per-rank states and device-hours resumes from its top-level state
    for k in ("rank_rng", "device", "gpu_seconds"):
        st.pop(k)
    buf = io.BytesIO()
    torch.save(st, buf)
    (out / "checkpoint.pt").write_bytes(buf.getvalue())
    tr = Trainer(cfg, out, DataSpec(data), resume=True, progress=False, device="cpu")
    assert tr.step == 2 and tr.gpu_seconds == 0.0
    assert torch.equal(tr.generator.get_state(), st["generator"])


def test_card_records_device_and_its_hours(tmp_path, monkeypatch):
    data = _data(tmp_path / "d.npy")
    tr = Trainer(RunConfig(model=tiny_model_config(), train=TINY), tmp_path / "run", DataSpec(data), progress=False,
                 device="cpu")
    tr.fit(2)
    card = tr.card()
    assert card["device"] == "cpu" and card["cpu_hours"] >= 0 and "gpu_hours" not in card
    # on a GPU the hours are wall-clock x devices, and CPU-hours stay the CPU segments' own
    cpu_hours = card["cpu_hours"]
    tr.device = torch.device("cuda", 0)
    monkeypatch.setattr(trainer_mod, "device_name", lambda device: "Fake GPU")
    tr._account((time.process_time(), time.time() - 1800.0))
    card = tr.card()
    assert card["device"] == "cuda" and card["gpu"] == "Fake GPU"
    assert card["gpu_hours"] == pytest.approx(0.5, abs=0.01) and card["cpu_hours"] == cpu_hours


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, cfg: dict, data: str, val: str, out: str, steps: int, resume: bool):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    tr = Trainer(RunConfig.from_dict(cfg), Path(out), DataSpec(Path(data)), DataSpec(Path(val)), resume=resume,
                 progress=False, device="auto")
    tr.fit(steps)
    Path(out, f"rank{rank}.json").write_text(json.dumps({
        "device": str(tr.device), "validates": tr.val_images is not None,
        "generator": tr.generator.get_state().tolist()[:64]}))
    tr.close()


def _ddp(tmp_path, cfg, out, steps, resume=False):
    args = (2, _free_port(), cfg.to_dict(), str(tmp_path / "d.npy"), str(tmp_path / "v.npy"), str(out), steps, resume)
    mp.spawn(_ddp_worker, args=args, nprocs=2, join=True)


def test_two_gloo_ranks_resume_exactly(tmp_path):
    """2 CPU ranks (gloo), 4 steps straight == 2 steps, checkpoint, resume, 2 more: every
    rank gets its own random state back (before, every rank restored rank 0's)."""
    _data(tmp_path / "d.npy")
    np.save(tmp_path / "v.npy", np.random.default_rng(1).integers(0, 256, (8, 16, 16), dtype=np.uint8))
    cfg = RunConfig(model=tiny_model_config(), train=replace(TINY, eval_every=2))
    _ddp(tmp_path, cfg, tmp_path / "a", 4)
    _ddp(tmp_path, cfg, tmp_path / "b", 2)
    mid = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    ranks = mid["rank_rng"]
    assert len(ranks) == 2 and not torch.equal(ranks[0]["generator"], ranks[1]["generator"])
    _ddp(tmp_path, cfg, tmp_path / "b", 4, resume=True)
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert a["step"] == b["step"] == 4
    for k, v in a["model"].items():
        assert torch.allclose(v, b["model"][k], atol=1e-6), k
    info = [json.loads((tmp_path / "b" / f"rank{r}.json").read_text()) for r in range(2)]
    assert [i["device"] for i in info] == ["cpu", "cpu"]
    assert [i["validates"] for i in info] == [True, False]  # validation on rank 0 only
    evals = [json.loads(line) for line in (tmp_path / "a" / "train.log").read_text().splitlines() if '"eval"' in line]
    assert [e["step"] for e in evals] == [2, 4]
