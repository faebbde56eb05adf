"""Paired comparison of photo models on the validation photos, photo by photo: the
continuous-time and T-step negative ELBO of each model on the same crops with the same
noise, and each one's difference from the first model, pooled over the clean photos (no
JPEG lattice, more than 256 colours), the palette images and the decoded JPEGs.

python -m experiments.compare_photos --models natural,runs/jpeg_free [--sets CSet14,CSet5]
    [--crops 24] [--crop 64] [--steps 32] [--t-samples 8] [--threads 1]
    [--out experiments/results/compare_photos.md]

Crops: ``crops`` crops of ``crop`` x ``crop`` on a regular grid over each photo (corners
included; gray photos are compared as R = G = B). Continuous time with 4 stratified draws of
t per crop; T steps (uniform level times) with ``t_samples`` stratified steps per crop.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from benchmarks.mnist import machine, resolve_data
from vdmcodec.coding.priors import jpeg_prior
from vdmcodec.data import load_items
from vdmcodec.likelihood import bpd_continuous, bpd_discrete
from vdmcodec.zoo import load_model

DATA = Path("../shared/data/natural")


def grid_crops(pixels: np.ndarray, n: int, side: int) -> np.ndarray:
    h, w, _ = pixels.shape
    rows = max(1, min(n, round(math.sqrt(n * h / w))))
    cols = max(1, -(-n // rows))
    ys = np.linspace(0, h - side, rows).round().astype(int)
    xs = np.linspace(0, w - side, cols).round().astype(int)
    return np.stack([pixels[y : y + side, x : x + side] for y in ys for x in xs])


def group(pixels: np.ndarray) -> str:
    if pixels.shape[-1] == 3 and jpeg_prior.has_lattice(pixels):
        return "decoded JPEG"
    if len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) <= 256:
        return "palette"
    return "clean"


@torch.no_grad()
def score(model, crops: np.ndarray, T: int, t_samples: int, seed: int) -> tuple[float, float]:
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cont = bpd_continuous(model, x, torch.Generator().manual_seed(seed), t_samples=4).total
        disc = bpd_discrete(model, x, T, torch.Generator().manual_seed(seed), t_samples=t_samples).total
    return float(cont.float().mean()), float(disc.float().mean())


def add_crop_options(ap: argparse.ArgumentParser, out: Path) -> None:
    """The options of a per-photo crop measurement: photos, crops, T, draws, threads, output."""
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--sets", default="CSet14,CSet5")
    ap.add_argument("--crops", type=int, default=24)
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--t-samples", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=out)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m experiments.compare_photos", description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", required=True, help="comma-separated shipped names or model directories; the first is the reference")
    add_crop_options(ap, Path("experiments/results/compare_photos.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = [(name, *load_model(name)) for name in args.models.split(",")]
    rows = []
    for s in args.sets.split(","):
        for k, item in enumerate(load_items([resolve_data(args.data / s)])):
            px = item.pixels if item.pixels.shape[-1] == 3 else np.repeat(item.pixels, 3, axis=-1)
            crops = grid_crops(px, args.crops, args.crop)
            row = {"set": s, "image": item.name, "group": group(item.pixels), "crops": len(crops), "scores": []}
            for name, model, _ in models:
                row["scores"].append(score(model.eval(), crops, args.steps, args.t_samples, args.seed * 1000 + k))
            rows.append(row)
            print(item.name, row["group"], row["scores"], file=sys.stderr, flush=True)
    m = machine()
    cmd = shlex.join(sys.argv[1:] if argv is None else argv)
    names = [n for n, _, _ in models]
    lines = ["# Paired comparison of photo models, photo by photo", "",
             f"Command: `python -m experiments.compare_photos {cmd}`", "",
             f"Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; machine: {m['cpu']}, "
             f"{args.threads} torch thread(s), torch {m['torch']}, bfloat16 autocast.", "",
             "Models: " + "; ".join(f"`{n}` (weights {info['sha256'][:12]}, steps {info['card'].get('steps')})"
                                    for n, _, info in models), "",
             f"Per photo: {args.crops} crops of {args.crop} x {args.crop} on a grid, the same crops and noise for every "
             f"model; bpd: continuous-time -ELBO (4 draws of t per crop) / T = {args.steps} -ELBO (uniform levels, "
             f"{args.t_samples} stratified steps per crop). Δ: the model's minus the first model's, relative.", "",
             "| set | photo | group | " + " | ".join(f"`{n}` cont / T={args.steps}" for n in names)
             + "".join(f" | Δ `{n}` cont | Δ `{n}` T={args.steps}" for n in names[1:]) + " |",
             "|---|---|---|" + "---:|" * (len(names) + 2 * (len(names) - 1))]
    for r in rows:
        sc = r["scores"]
        lines.append(f"| {r['set']} | {r['image']} | {r['group']} | " + " | ".join(f"{c:.3f} / {d:.3f}" for c, d in sc)
                     + "".join(f" | {sc[j][0] / sc[0][0] - 1:+.2%} | {sc[j][1] / sc[0][1] - 1:+.2%}" for j in range(1, len(sc)))
                     + " |")
    lines += ["", "Pooled (mean over photos of the group, relative to the first model):", ""]
    for g in ("clean", "palette", "decoded JPEG"):
        sel = [r for r in rows if r["group"] == g]
        if not sel:
            continue
        for j in range(1, len(names)):
            dc = np.mean([r["scores"][j][0] / r["scores"][0][0] - 1 for r in sel])
            dd = np.mean([r["scores"][j][1] / r["scores"][0][1] - 1 for r in sel])
            better = sum(1 for r in sel if r["scores"][j][1] < r["scores"][0][1])
            lines.append(f"- {g} ({len(sel)} photos), `{names[j]}`: continuous {dc:+.2%}, T = {args.steps} {dd:+.2%}; "
                         f"lower T-step bound on {better} of {len(sel)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                         "machine": m, "models": names, "rows": rows}, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
