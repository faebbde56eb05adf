"""Paired comparison of models on the same images and the same noise: the continuous-time
and T-step negative ELBO of each, and each one's difference from the first model with the
standard error of the paired difference (far smaller than either model's own error bar).

python -m experiments.compare_models --models mnist,runs/mnist_lv [--data ../shared/data/mnist/mnist9k-images-idx3-ubyte.gz]
    [--data-range 8000:9000] [--steps 128] [--t-samples 8] [--batch 100] [--threads 1]
    [--out experiments/results/compare_models.md]

Every model sees the same images and, batch by batch, a generator seeded alike, so the noise
and the time steps drawn are the same for all of them. The T-step estimate draws
``t_samples`` stratified steps per image (the codec pays all T; their mean is estimated).
"""
from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from benchmarks.mnist import machine, resolve_data
from vdmcodec.data import load_items, to_tensor
from vdmcodec.likelihood import bpd_continuous, bpd_discrete
from vdmcodec.training.datasets import parse_range
from vdmcodec.zoo import load_model

MNIST = Path("../shared/data/mnist/mnist9k-images-idx3-ubyte.gz")


@torch.no_grad()
def per_image(model, x: np.ndarray, T: int, t_samples: int, batch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    cont, disc = [], []
    for k, i in enumerate(range(0, len(x), batch)):
        xb = to_tensor(x[i : i + batch])
        g = torch.Generator().manual_seed(seed * 100003 + k)
        cont.append(bpd_continuous(model, xb, g, t_samples=4).total.numpy())
        g = torch.Generator().manual_seed(seed * 100003 + k)
        disc.append(bpd_discrete(model, xb, T, g, t_samples=t_samples).total.numpy())
        print(f"{i + len(xb)}/{len(x)}", file=sys.stderr, flush=True)
    return np.concatenate(cont), np.concatenate(disc)


def mean_se(v: np.ndarray) -> tuple[float, float]:
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m experiments.compare_models", description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", required=True, help="comma-separated shipped names or model directories; the first is the reference")
    ap.add_argument("--data", type=Path, default=MNIST)
    ap.add_argument("--data-range", default="8000:9000")
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--t-samples", type=int, default=8)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("experiments/results/compare_models.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    a, b = parse_range(args.data_range)
    items = load_items([resolve_data(args.data)])[a:b]
    shapes = {it.pixels.shape for it in items}
    if len(shapes) != 1:
        raise SystemExit(f"{args.data}: images of {len(shapes)} shapes; this comparison needs one")
    x = np.stack([it.pixels for it in items])
    rows = []
    for name in args.models.split(","):
        model, info = load_model(name)
        card = info["card"]
        cont, disc = per_image(model, x, args.steps, args.t_samples, args.batch, args.seed)
        rows.append({"model": name, "name": card.get("name"), "steps": card.get("steps"), "cpu_hours": card.get("cpu_hours"),
                     "init_from": card.get("init_from"), "learned_variance": model.cfg.network.learned_variance,
                     "cont": cont, "disc": disc})
    ref = rows[0]
    ref_disc = float(ref["disc"].mean())
    m = machine()
    cmd = shlex.join(sys.argv[1:] if argv is None else argv)
    lines = ["# Paired model comparison", "", f"Command: `python -m experiments.compare_models {cmd}`", "",
             f"Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; machine: {m['cpu']}, "
             f"{args.threads} torch thread(s), torch {m['torch']}.", "",
             f"{len(x)} images of {args.data.name} {args.data_range}; bpd mean ± standard error over images; "
             f"continuous with 4 stratified t per image, T = {args.steps} with {args.t_samples} stratified steps per "
             "image; the same noise for every model, so the paired difference (vs the first row) has its own, smaller, "
             "error bar.", "",
             f"| model | training steps | CPU-h | learned variance | continuous | T = {args.steps} | T-step gap | "
             f"Δ continuous vs first | Δ T = {args.steps} vs first |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        c, d = mean_se(r["cont"]), mean_se(r["disc"])
        dc, dd = mean_se(r["cont"] - ref["cont"]), mean_se(r["disc"] - ref["disc"])
        steps = f"{r['steps']}" + (f" (+{r['init_from']['steps']} of {r['init_from']['model']})" if r["init_from"] else "")
        lines.append(f"| `{r['model']}` | {steps} | {r['cpu_hours']} | {'yes' if r['learned_variance'] else 'no'} | "
                     f"{c[0]:.4f} ± {c[1]:.4f} | {d[0]:.4f} ± {d[1]:.4f} | {d[0] / c[0] - 1:+.1%} | "
                     + ("—" if r is ref else f"{dc[0]:+.4f} ± {dc[1]:.4f}") + " | "
                     + ("—" if r is ref else f"{dd[0]:+.4f} ± {dd[1]:.4f} ({dd[0] / ref_disc:+.1%})")
                     + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "machine": m,
         "rows": [{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in r.items()} for r in rows]}) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
