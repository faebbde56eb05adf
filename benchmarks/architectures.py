"""Which network for MNIST on this CPU: validation bpd reached per CPU-hour of training.

python -m benchmarks.architectures --out runs/architectures [--cpu-minutes 10] [--points 4]
    [--archs unet-16,unet-32,...] [--batch 64] [--val-images 300] [--threads 1]
    [--report benchmarks/results/architectures.md]

Every architecture trains from scratch with the shipped MNIST config (configs/mnist.json:
optimiser, learning rate, batch, EMA, seed, images 0-7999) and only the network (or the
schedule) changed, for the same budget of CPU time (``time.process_time`` of the training
process, so other work on a shared machine does not bill one architecture for another's
load). At ``--points`` equally spaced fractions of the budget, the EMA weights are measured
on validation images 8000-(8000+N-1): the continuous-time negative ELBO (4 stratified t per
image, fixed noise seeds, the same for every architecture), mean +- standard error over images.
Measurement time is not billed to the budget. Each architecture's run directory OUT/NAME is
resumable; a finished curve (OUT/NAME/curve.json, and a copy under benchmarks/results/runs/
architectures/ to commit, since a run may start on a fresh machine) is not redone. Writes a markdown
report with the command and machine, and a plot of bpd against CPU-hours beside it.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from benchmarks.ablation import (DATA, STORE, TRAIN, VAL, base_config, start, store, stored, validation_bpd,
                                 write_raw)
from benchmarks.mnist import resolve_data
from vdmcodec.data import load_array
from vdmcodec.networks import NetworkKind
from vdmcodec.schedules import ScheduleKind
from vdmcodec.training.config import RunConfig
from vdmcodec.training.datasets import DataSpec
from vdmcodec.training.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Architecture:
    description: str
    network: dict  # fields of NetworkConfig that differ from the shipped config's network
    schedule: ScheduleKind | None = None  # None: the shipped config's (learned)


ARCHS: dict[str, Architecture] = {
    "unet-32": Architecture("U-Net 32 ch, mults (1,2,2), 2 blocks/level, Fourier features (the shipped config)", {}),
    "unet-16": Architecture("U-Net, width 16", {"channels": 16}),
    "unet-64": Architecture("U-Net, width 64", {"channels": 64}),
    "unet-32-1block": Architecture("U-Net 32, 1 block per level (shallower)", {"num_res_blocks": 1}),
    "unet-32-nofourier": Architecture("U-Net 32 without Fourier features", {"fourier_exponents": ()}),
    "resnet-64": Architecture("VDM-style full-resolution ResNet, 64 ch, 4 blocks (no downsampling)",
                              {"kind": NetworkKind.resnet, "channels": 64, "num_res_blocks": 4}),
    "unet-32-cosine": Architecture("U-Net 32 with the fixed iDDPM cosine schedule instead of the learned one", {},
                                   ScheduleKind.cosine),
}
DEFAULT_ARCHS = "unet-16,unet-32,unet-64,unet-32-1block,unet-32-nofourier,resnet-64"


def arch_config(base: RunConfig, arch: Architecture, batch: int) -> RunConfig:
    net = replace(base.model.network, **arch.network)
    sched = base.model.schedule if arch.schedule is None else replace(base.model.schedule, kind=arch.schedule)
    model = replace(base.model, network=net, schedule=sched)
    # no evaluation or periodic checkpoint inside fit: the budget loop measures and saves
    train = replace(base.train, batch_size=batch, eval_every=0, ckpt_every=10**9, log_every=50)
    return RunConfig(model=model, train=train)


def train_to(trainer: Trainer, cpu_seconds: float, first_guess_s: float = 2.0) -> None:
    """Train until the run has used ``cpu_seconds`` of CPU time (overshoot: under one step's
    worth plus the last save), predicting the steps from the rate so far."""
    while trainer.cpu_seconds < cpu_seconds and not trainer._stop:
        rate = trainer.cpu_seconds / trainer.step if trainer.step else first_guess_s
        n = max(1, int((cpu_seconds - trainer.cpu_seconds) / rate * 0.95))
        trainer.fit(trainer.step + n)


def run_arch(name: str, cfg: RunConfig, out: Path, data: DataSpec, val: np.ndarray, args) -> dict:
    d = out / name
    done = d / "curve.json"
    if done.exists():
        print(f"{name}: done already ({done})", flush=True)
        return json.loads(done.read_text())
    measured = {"cpu_minutes": args.cpu_minutes, "points": args.points, "val_images": args.val_images, "seed": args.seed}
    kept = stored("architectures", name, cfg, measured, args.store)
    if kept is not None:
        print(f"{name}: done by an earlier run ({args.store / 'architectures' / (name + '.json')})", flush=True)
        return kept
    resume = (d / "checkpoint.pt").exists()
    if resume and RunConfig.from_dict(json.loads((d / "run.json").read_text())) != cfg:
        raise SystemExit(f"{d}: holds a run with another config; remove it or choose another --out")
    trainer = Trainer(cfg, d, data, resume=resume, progress=False, card={"name": f"arch-{name}"})
    part = d / "points.json"
    points = json.loads(part.read_text()) if part.exists() else []
    params = sum(p.numel() for p in trainer.model.parameters())
    budget = args.cpu_minutes * 60.0
    for k in range(len(points) + 1, args.points + 1):
        train_to(trainer, budget * k / args.points)
        if trainer._stop:
            raise SystemExit(f"{name}: interrupted at step {trainer.step}; run again to resume")
        trainer.ema.eval()
        t0 = time.perf_counter()
        v = validation_bpd(trainer.ema, val, None, args.seed)
        m, se = v["bpd_continuous"], v["bpd_continuous_se"]
        points.append({"step": trainer.step, "cpu_hours": trainer.cpu_seconds / 3600, "bpd": m, "bpd_se": se,
                       "eval_seconds": time.perf_counter() - t0})
        part.write_text(json.dumps(points, indent=1) + "\n")
        print(f"{name}: step {trainer.step}, {trainer.cpu_seconds / 60:.1f} CPU-min, val bpd {m:.4f} +- {se:.4f}",
              flush=True)
    result = {"name": name, "description": ARCHS[name].description, "params": params, "config": cfg.to_dict(),
              "points": points, "cpu_seconds_per_step": trainer.cpu_seconds / max(1, trainer.step)}
    done.write_text(json.dumps(result, indent=1) + "\n")
    store("architectures", name, result, measured, args.store)
    return result


def report(results: list[dict], args, meta: dict, plot_path: Path) -> list[str]:
    m = meta["machine"]
    lines = [
        "# Network architecture for MNIST: validation bpd per CPU-hour", "",
        f"Command: `{meta['command']}`", "",
        f"Report written {meta['started']}; git {meta['git']}. Machine: {m['cpu']}, {m['torch_threads']} torch "
        f"thread(s), torch {m['torch']}. Curves trained by earlier runs of this command are reused (from OUT or the "
        "store), so other work may have shared the 2 cores while they trained: the budget is each training "
        "process's own CPU time, not wall time.", "",
        f"Budget, the same for every row: {args.cpu_minutes:g} CPU-minutes of training at batch {args.batch}, from "
        f"scratch, the shipped `configs/mnist.json` otherwise (images 0-7999, seed of the config). Validation: EMA "
        f"weights, continuous-time -ELBO on images 8000-{8000 + args.val_images - 1} (4 stratified t per image, the "
        "same noise for every row), mean ± s.e. over images; the rows share images and noise, so differences are "
        "resolved better than the errors suggest.", "",
        "| architecture | what | parameters | CPU-s / step | steps in budget | "
        + " | ".join(f"bpd at {args.cpu_minutes * k / args.points:g} min" for k in range(1, args.points + 1)) + " |",
        "|---|---|---:|---:|---:|" + "---:|" * args.points,
    ]
    best = min(r["points"][-1]["bpd"] for r in results)
    for r in results:
        cells = [f"{p['bpd']:.4f} ± {p['bpd_se']:.4f}" for p in r["points"]]
        if r["points"][-1]["bpd"] == best:
            cells[-1] = f"**{cells[-1]}**"
        lines.append(f"| {r['name']} | {r['description']} | {r['params']:,} | {r['cpu_seconds_per_step']:.2f} | "
                     f"{r['points'][-1]['step']} | " + " | ".join(cells) + " |")
    lines += ["", f"![bpd vs CPU-hours]({plot_path.name})", ""]
    return lines


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for r in results:
        h = [p["cpu_hours"] for p in r["points"]]
        b = [p["bpd"] for p in r["points"]]
        e = [p["bpd_se"] for p in r["points"]]
        ax.errorbar(h, b, yerr=e, marker="o", capsize=2, label=r["name"])
    ax.set_xlabel("training CPU-hours")
    ax.set_ylabel("validation bpd, continuous (lower is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.architectures", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="directory of the run directories (one per architecture)")
    ap.add_argument("--cpu-minutes", type=float, default=10.0, help="training CPU-minutes per architecture")
    ap.add_argument("--points", type=int, default=4, help="measurements along the budget")
    ap.add_argument("--archs", default=DEFAULT_ARCHS, help=f"comma-separated, from {', '.join(ARCHS)}")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--val-images", type=int, default=300, help="validation images from 8000 on")
    ap.add_argument("--seed", type=int, default=0, help="noise seed of the measurement")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "mnist.json")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--store", type=Path, default=STORE, help="finished rows kept across runs (commit them)")
    ap.add_argument("--report", type=Path, default=ROOT / "benchmarks" / "results" / "architectures.md")
    args = ap.parse_args(argv)
    unknown = [a for a in args.archs.split(",") if a not in ARCHS]
    if unknown:
        ap.error(f"unknown architectures {unknown}; choose from {', '.join(ARCHS)}")
    if args.cpu_minutes <= 0 or args.points < 1 or args.batch < 1 or not 1 <= args.val_images <= 1000:
        ap.error("need --cpu-minutes > 0, --points >= 1, --batch >= 1 and 1 <= --val-images <= 1000")
    return args


def main(argv=None):
    args = parse_args(argv)
    meta = start("benchmarks.architectures", argv, args.threads)
    base = base_config(args.config, args.threads)
    path = resolve_data(args.data)
    data = DataSpec(path, TRAIN.start, TRAIN.stop)
    val = load_array(path, VAL.start, VAL.start + args.val_images)
    args.out.mkdir(parents=True, exist_ok=True)
    results = [run_arch(n, arch_config(base, ARCHS[n], args.batch), args.out, data, val, args)
               for n in args.archs.split(",")]
    out = args.report
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_path = out.with_suffix(".png")
    plot(results, plot_path)
    out.write_text("\n".join(report(results, args, meta, plot_path)) + "\n")
    write_raw(out.with_suffix(".json"), meta, args, results)
    print(f"wrote {out}", flush=True)
    return results


if __name__ == "__main__":
    main()
