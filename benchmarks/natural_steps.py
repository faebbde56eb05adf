"""How many diffusion steps T a natural-image model needs: the T-step negative ELBO against
the continuous-time one, for fixed reverse variances (VDM) and learned ones (iDDPM's
L_hybrid), after the same short training run on the natural training photos.

python -m benchmarks.natural_steps --workdir runs/natural-steps [--train-steps 600]
    [--steps 16,32,64,128] [--crops 64] [--draws 8] [--out benchmarks/results/natural_steps.md]
python -m benchmarks.natural_steps --model natural [--steps ...] [--out benchmarks/results/natural_steps_shipped.md]

Why it matters: the codec costs T network evaluations per pixel each way, and it codes at the
T-step -ELBO, not the continuous-time one. Both runs start from configs/natural.json with the
same short-run settings (32x32 crops, batch 16, lr 1e-3 with 100 warm-up steps, EMA 0.99),
the same seed and data, and differ only in the reverse variance. Each trains in WORKDIR/NAME
(resumable; a finished run is reused) and is measured on the same fixed 64x64 crops of the
validation photos (CSet14 + CSet5, RGB only), the continuous and each T-step bound estimated
with ``draws`` stratified draws per crop and the same noise seed. With --model, no training:
the same measurement of a shipped model (or model directory), which is what the codec's
default T for that model is chosen from (its card's coding_steps).
"""
from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.mnist import machine, resolve_data
from vdmcodec.data import to_tensor
from vdmcodec.likelihood import bpd_continuous, bpd_discrete, mean_and_stderr
from vdmcodec.objective import ObjectiveConfig
from vdmcodec.training.config import RunConfig, load_config
from vdmcodec.training.datasets import DataSpec, load_validation
from vdmcodec.training.trainer import Trainer
from vdmcodec.zoo import load_model

DATA = Path("../shared/data/natural")
TRAIN, VAL = ("CBSD68", "CUrban100"), ("CSet14", "CSet5")
VARIANTS = {
    "fixed": "VDM: the reverse step keeps the posterior variance (fixed by the schedule)",
    "learned": "iDDPM: learned variance interpolation v, L_hybrid with lambda 0.001 and vlb_steps 32",
}


def variant_config(base: RunConfig, name: str, steps: int) -> RunConfig:
    train = replace(base.train, patch_size=32, val_patch_size=64, lr=1e-3, lr_warmup=100, ema_decay=0.99,
                    eval_every=0, ckpt_every=100, steps=steps,
                    objective=ObjectiveConfig(hybrid_lambda=0.001, vlb_steps=32) if name == "learned" else ObjectiveConfig())
    net = replace(base.model.network, learned_variance=name == "learned")
    return RunConfig(model=replace(base.model, network=net), train=train)


def train(cfg: RunConfig, out: Path, name: str) -> None:
    done = out / "checkpoint.pt"
    if done.exists():
        saved = RunConfig.from_dict(json.loads((out / "run.json").read_text()))
        if saved != cfg:
            raise SystemExit(f"{out}: holds a run with another config; remove it or choose another --workdir")
        step = torch.load(done, weights_only=False)["step"]
        if step >= cfg.train.steps:
            return
    trainer = Trainer(cfg, out, [DataSpec(resolve_data(DATA / s)) for s in TRAIN], resume=done.exists(),
                      card={"name": f"natural-steps-{name}"})
    trainer.fit(cfg.train.steps)
    if trainer.step < cfg.train.steps:  # stopped by a signal: saved, never measured half-trained
        raise SystemExit(f"{name}: interrupted at step {trainer.step} of {cfg.train.steps} (saved; run again to resume)")


@torch.no_grad()
def measure(model, crops: torch.Tensor, steps: list[int], draws: int) -> dict:
    g = torch.Generator().manual_seed(0)
    m, se = mean_and_stderr(bpd_continuous(model, crops, g, t_samples=draws).total)
    out = {"continuous": m, "continuous_se": se}
    for T in steps:
        g = torch.Generator().manual_seed(0)
        m, se = mean_and_stderr(bpd_discrete(model, crops, T, g, t_samples=draws).total)
        out[f"T{T}"], out[f"T{T}_se"] = m, se
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, help="where the two short runs train (not with --model)")
    ap.add_argument("--model", help="measure this shipped model or model directory instead of training the two variants")
    ap.add_argument("--config", type=Path, default=Path("configs/natural.json"))
    ap.add_argument("--train-steps", type=int, default=600)
    ap.add_argument("--steps", default="16,32,64,128")
    ap.add_argument("--crops", type=int, default=64)
    ap.add_argument("--draws", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/natural_steps.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    steps = [int(s) for s in args.steps.split(",") if s]
    base = load_config(args.config)
    crops, skipped = load_validation([DataSpec(resolve_data(DATA / s)) for s in VAL], 64, args.crops,
                                     base.model.network.image_channels)
    x = to_tensor(crops)
    rows, labels = {}, dict(VARIANTS)
    if args.model:
        model, info = load_model(args.model)
        card = info.get("card", {})
        name = card.get("name", str(args.model))
        labels[name] = (f"shipped model, {card.get('steps', '?')} training steps, {card.get('cpu_hours', float('nan')):.2f} "
                        f"CPU-h, reverse variance {'learned' if model.cfg.network.learned_variance else 'fixed'}")
        rows[name] = measure(model, x, steps, args.draws)
    elif args.workdir is None:
        raise SystemExit("give --workdir (train and compare the two variances) or --model (measure a shipped model)")
    else:
        for name in VARIANTS:
            cfg = variant_config(base, name, args.train_steps)
            train(cfg, args.workdir / name, name)
            rows[name] = measure(load_model(args.workdir / name)[0], x, steps, args.draws)
    for name, r in rows.items():
        print(name, json.dumps(r), file=sys.stderr, flush=True)
    m = machine()
    lines = ["# Diffusion steps T for natural images: T-step vs continuous -ELBO", "",
             f"Command: `python -m benchmarks.natural_steps {shlex.join(sys.argv[1:] if argv is None else argv)}`", "",
             f"Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; machine: {m['cpu']}, "
             f"{args.threads} torch thread(s), torch {m['torch']}.", "",
             (f"Model: `{args.model}` as shipped (EMA weights)." if args.model else
              f"Both models: {args.config} with the short-run settings of this script, {args.train_steps} training steps on "
              f"{' + '.join(TRAIN)} (same seed), EMA weights.") + f" Measured on the same {args.crops} fixed 64x64 crops of "
             f"{' + '.join(VAL)} ({skipped} grayscale image left out), {args.draws} stratified draws per crop; bpd mean ± "
             "standard error over crops (" + ("the same noise for every T, so the gaps are far more certain than the "
                                              "error bars" if args.model else
                                              "the same noise for both models, so their difference is far more certain "
                                              "than either error bar") +
             "). The gap is T-step / continuous - 1: what coding with T steps costs over the bound.", "",
             "| reverse variance | continuous | " + " | ".join(f"T = {T}" for T in steps) + " |",
             "|---|---:|" + "---:|" * len(steps)]
    for name, r in rows.items():
        lines.append(f"| {name}: {labels[name]} | {r['continuous']:.3f} ± {r['continuous_se']:.3f} | "
                     + " | ".join(f"{r[f'T{T}']:.3f} ({r[f'T{T}'] / r['continuous'] - 1:+.1%})" for T in steps) + " |")
    if not args.model:
        lines += ["", "Early models (a few hundred steps): the gaps of a converged model will differ; the comparison "
                  "between the two variances at equal training is what this measures."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows},
                                                        indent=1) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
