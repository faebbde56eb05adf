"""What resuming from shipped raw weights costs against an exact resume.

A model directory ships its raw (non-EMA) weights in safetensors and no optimiser moments
(``vdmcodec/training/warmstart.py``). This trains N steps on from a full training checkpoint
in several ways, all with the same data order, noise and dropout draws (the checkpoint's RNG
and sampler states), so that per-step differences are paired:

- ``exact``: ``--resume`` from the checkpoint (AdamW moments restored);
- ``raw-fp32``: raw weights in float32, fresh AdamW, learning-rate warm-up (``--rewarm``);
- ``raw-fp32-no-rewarm``: the same without the warm-up;
- ``raw-bf16``: raw weights stored in bfloat16 (half the file), fresh AdamW, warm-up.

and reports the training loss per window of steps (paired differences against ``exact``)
and the validation -ELBO (continuous time, fixed noise) of the EMA and of the raw weights
after N steps.

python -m benchmarks.resume_cost --checkpoint CKPT --model models/mnist --config configs/mnist_lv.json \\
    --data ../shared/data/mnist/mnist9k-images-idx3-ubyte.gz --data-range 0:8000 --val-range 8000:8500 \\
    --steps 300 --threads 1
Writes benchmarks/results/resume_cost.md (+ .json).
"""
from __future__ import annotations

import argparse
import datetime
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from benchmarks.mnist import machine, resolve_data
from vdmcodec.data import to_tensor
from vdmcodec.hardware import cpu_capability
from vdmcodec.likelihood import bpd_continuous, mean_and_stderr
from vdmcodec.training.config import load_config
from vdmcodec.training.trainer import DataSpec, Trainer, parse_range
from vdmcodec.training.warmstart import RAW_WEIGHTS, raw_weights_from_checkpoint, restart_from_weights
from vdmcodec.zoo import CARD, WEIGHTS

ROOT = Path(__file__).resolve().parent.parent
ARMS = {  # name -> (raw weights dtype or None for the exact resume, warm-up steps)
    "exact": (None, 0),
    "raw-fp32": ("float32", None),
    "raw-fp32-no-rewarm": ("float32", 0),
    "raw-bf16": ("bfloat16", None),
}


def run_arm(name: str, args, cfg, work: Path, specs, vspecs) -> dict:
    dtype, rewarm = ARMS[name]
    rewarm = args.rewarm if rewarm is None else rewarm
    run = work / name
    st = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    raw_bytes = None
    if dtype is None:
        run.mkdir(parents=True)
        shutil.copyfile(args.checkpoint, run / "checkpoint.pt")
        tr = Trainer(cfg, run, specs, vspecs, resume=True, progress=False)
    else:
        src = work / f"{name}-model"
        src.mkdir(parents=True)
        for f in (WEIGHTS, CARD):
            shutil.copyfile(Path(args.model) / f, src / f)
        raw_bytes = raw_weights_from_checkpoint(args.checkpoint, src, dtype)
        tr = Trainer(cfg, run, specs, vspecs, progress=False)
        restart_from_weights(tr, src, rewarm)
        # the exact resume's data order, noise and dropout draws, so that arms pair step by step
        tr.generator.set_state(st["generator"])
        tr.sampler.set_state(st["sampler"])
        torch.set_rng_state(st["torch_rng"])
    start = tr.step
    if start != st["step"]:
        raise RuntimeError(f"{name}: starts at step {start}, the checkpoint at {st['step']}")
    t0 = time.process_time()
    tr.fit(start + args.steps)
    cpu_s = time.process_time() - t0
    losses = [json.loads(line) for line in (run / "train.log").read_text().splitlines()]
    losses = [r["loss_bpd"] for r in losses if "loss_bpd" in r]
    ev = tr.validate()
    g = torch.Generator().manual_seed(12345)
    raw_vals = []
    tr.model.eval()
    with torch.no_grad():
        for i in range(0, len(tr.val_images), 100):
            raw_vals.append(bpd_continuous(tr.model, to_tensor(tr.val_images[i:i + 100]), g).total.cpu())
    raw_m, raw_se = mean_and_stderr(torch.cat(raw_vals))
    return {"arm": name, "dtype": dtype, "rewarm": rewarm if dtype else None, "raw_bytes": raw_bytes,
            "start": start, "losses": losses, "val_ema": ev["val_bpd"], "val_ema_se": ev["val_bpd_se"],
            "val_raw": raw_m, "val_raw_se": raw_se, "val_images": ev["val_images"], "cpu_s": cpu_s,
            "ema_from": (tr.init_from or {}).get("ema")}


def windows(n: int) -> list[tuple[int, int]]:
    edges = [0, 25, 100, n]
    return [(a, b) for a, b in zip(edges, edges[1:]) if a < b <= n]


def paired(a: list[float], b: list[float], lo: int, hi: int) -> tuple[float, float]:
    d = np.asarray(b[lo:hi]) - np.asarray(a[lo:hi])
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")


def report(rows: list[dict], args, argv: list[str], started: str, mach: dict) -> str:
    base = next(r for r in rows if r["arm"] == "exact")
    n = len(base["losses"])
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    lines = [
        "# Resuming from shipped raw weights against an exact resume", "",
        "`python -m benchmarks.resume_cost " + " ".join(shlex.quote(a) for a in argv) + "`", "",
        f"Started {started}; git {git}. Machine: {mach['cpu']}"
        f"{'' if cpu_capability() in mach['cpu'] else ' (' + cpu_capability() + ')'}, {mach['torch_threads']} torch "
        f"thread(s), torch {mach['torch']}, load average {mach['load_average_1min']:.2f} at the start (other training "
        "jobs shared the CPUs).", "",
        f"From the checkpoint at step {base['start']}, {n} steps each, with the checkpoint's data order, noise and "
        "dropout draws in every arm (so the per-step losses pair). `exact` restores AdamW's moments; the `raw` arms "
        "load the raw weights from `raw.safetensors`, the EMA from the shipped EMA weights of the same step, and start "
        "AdamW afresh. Training loss: mean over the window of the per-step loss (bpd), and the paired difference "
        "against `exact` with its standard error. Validation: continuous-time -ELBO (bpd) of the EMA and of the raw "
        f"weights after the {n} steps on {base['val_images']} validation images, the same noise for every arm.", "",
    ]
    wins = windows(n)
    head = "| arm | raw file | warm-up | " + " | ".join(f"loss, steps {a + 1}-{b}" for a, b in wins) + \
        " | val -ELBO, EMA | val -ELBO, raw weights | CPU-min |"
    lines += [head, "|" + "---|" * 3 + "---:|" * (len(wins) + 3)]
    for r in rows:
        cells = []
        for a, b in wins:
            m = float(np.mean(r["losses"][a:b]))
            if r is base:
                cells.append(f"{m:.4f}")
            else:
                d, se = paired(base["losses"], r["losses"], a, b)
                cells.append(f"{m:.4f} ({d:+.4f} ± {se:.4f})")
        size = f"{r['raw_bytes'] / 1e6:.1f} MB {r['dtype']}" if r["raw_bytes"] else "checkpoint.pt"
        warm = "-" if r["rewarm"] is None else f"{r['rewarm']} steps"
        dv = "" if r is base else f" ({r['val_ema'] - base['val_ema']:+.4f})"
        dr = "" if r is base else f" ({r['val_raw'] - base['val_raw']:+.4f})"
        lines.append(f"| {r['arm']} | {size} | {warm} | " + " | ".join(cells) +
                     f" | {r['val_ema']:.4f} ± {r['val_ema_se']:.4f}{dv} | {r['val_raw']:.4f} ± {r['val_raw_se']:.4f}{dr}"
                     f" | {r['cpu_s'] / 60:.1f} |")
    ckpt = Path(args.checkpoint).stat().st_size
    lines += ["", f"The full checkpoint is {ckpt / 1e6:.1f} MB (raw, EMA, AdamW's two moments, RNG states)."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, type=Path, help="a full training checkpoint (checkpoint.pt)")
    ap.add_argument("--model", required=True, type=Path, help="the model directory whose EMA weights go with it")
    ap.add_argument("--config", required=True, type=Path)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--data-range", default=None)
    ap.add_argument("--val-range", default=None)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--rewarm", type=int, default=100)
    ap.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, from {', '.join(ARMS)} (exact always runs)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "resume_cost.md"))
    args = ap.parse_args(argv)
    arms = ["exact"] + [a for a in args.arms.split(",") if a and a != "exact"]
    bad = [a for a in arms if a not in ARMS]
    if bad:
        ap.error(f"unknown arm {bad[0]!r}; choose from {', '.join(ARMS)}")
    torch.set_num_threads(args.threads)
    started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    mach = machine()
    cfg = load_config(args.config)
    cfg = replace(cfg, train=replace(cfg.train, log_every=1, eval_every=0, ckpt_every=10**9,
                                     eval_images=10**6, threads=args.threads))
    data = resolve_data(args.data)
    a, b = parse_range(args.data_range)
    va, vb = parse_range(args.val_range)
    specs, vspecs = [DataSpec(data, a, b)], [DataSpec(data, va, vb)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arm in arms:
            rows.append(run_arm(arm, args, cfg, Path(tmp), specs, vspecs))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "losses"}), flush=True)
    out = Path(args.out)
    out.write_text(report(rows, args, argv, started, mach))
    out.with_suffix(".json").write_text(json.dumps({"command": argv, "started": started, "machine": mach,
                                                    "rows": rows}, indent=1) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
