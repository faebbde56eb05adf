"""What a per-photo scale of the learned variances would save: the chain pays, per level,
KL(q(z_s | z_t, x) || p(z_s | z_t)) with p's variance from the network; a photo whose
errors the network over- or under-states would code cheaper with p's variance times s^2,
one s per photo written in the header (JPEG XL adapts its model to each image; the network
does not). This measures the T-step bound on each validation photo's crops at a grid of s^2
(the same draws for every s: a paired comparison), and the best s^2's saving, for one scale
over all levels and for one scale per quarter of the levels.

python -m experiments.variance_scale [--model natural] [--sets CSet14,CSet5] [--crops 24]
    [--crop 64] [--steps 32] [--t-samples 8] [--threads 1] [--out experiments/results/variance_scale.md]
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
from experiments.compare_photos import add_crop_options, grid_crops, group
from vdmcodec.data import load_items
from vdmcodec.diffusion import log_variance_ratio, scale_pixels
from vdmcodec.likelihood import nats_to_bpd
from vdmcodec.zoo import load_model

SCALES = np.exp(np.linspace(-0.5, 0.5, 21))  # s^2, 1 included
BANDS = 4


@torch.no_grad()
def kl_table(model, crops: np.ndarray, T: int, t_samples: int, seed: int) -> tuple[np.ndarray, float]:
    """[BANDS, len(SCALES)]: the diffusion term's nats per crop in each quarter of the levels
    at each s^2 (stratified draws of the level, T x mean), and the recon + prior nats."""
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous()
    xs = scale_pixels(x)
    g = torch.Generator().manual_seed(seed)
    B = x.shape[0]
    out = np.zeros((BANDS, len(SCALES)))
    ln_s2 = torch.tensor(np.log(SCALES), dtype=torch.float32)
    for k in range(t_samples):
        u = torch.rand(B, generator=g)
        i = 1 + torch.floor((k + u) / t_samples * T).long().clamp(max=T - 1)
        eps = torch.randn(x.shape, generator=g)
        g_t, g_s = model.gamma(i.float() / T), model.gamma((i - 1).float() / T)
        a_t, s_t = torch.sigmoid(-g_t).sqrt(), torch.sigmoid(g_t).sqrt()
        z = a_t[:, None, None, None] * xs + s_t[:, None, None, None] * eps
        with torch.autocast("cpu", dtype=torch.bfloat16):
            eps_hat, v = model.eps_and_v(z, g_t)
        gt, gs = g_t[:, None, None, None], g_s[:, None, None, None]
        r = log_variance_ratio(v.float(), gt, gs)
        m = torch.expm1(gt - gs) * (eps - eps_hat.float()).square()
        for j, l in enumerate(ln_s2):  # var_p -> s^2 var_p: r -> r + ln s^2
            rr = r + l
            kl = (0.5 * (rr + torch.expm1(-rr) + torch.exp(-rr) * m)).flatten(1).sum(1)  # [B]
            band = ((i - 1) * BANDS // T).numpy()
            for b in range(BANDS):
                out[b, j] += float(kl[band == b].sum()) * T / t_samples / B
    eps_0 = torch.randn(x.shape, generator=g)
    rest = float((model.loss_recon(x, eps_0) + model.loss_prior(x)).mean())
    return out, rest


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m experiments.variance_scale", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="natural")
    add_crop_options(ap, Path("experiments/results/variance_scale.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, info = load_model(args.model)
    model.eval()
    one = int(np.argmin(np.abs(np.log(SCALES))))
    rows = []
    for s in args.sets.split(","):
        for k, item in enumerate(load_items([resolve_data(args.data / s)])):
            px = item.pixels if item.pixels.shape[-1] == 3 else np.repeat(item.pixels, 3, axis=-1)
            crops = grid_crops(px, args.crops, args.crop)
            table, rest = kl_table(model, crops, args.steps, args.t_samples, args.seed * 1000 + k)
            dims = crops[0].size
            base = table[:, one].sum() + rest
            total = table.sum(0) + rest
            j = int(np.argmin(total))
            banded = table.min(1).sum() + rest
            rows.append({"set": s, "image": item.name, "group": group(item.pixels), "bpd": float(nats_to_bpd(base, dims)),
                         "best_s2": float(SCALES[j]), "saving_one": float(1 - total[j] / base),
                         "best_s2_bands": [float(SCALES[b]) for b in table.argmin(1)],
                         "saving_bands": float(1 - banded / base)})
            r = rows[-1]
            print(f"{item.name} {r['group']} {r['bpd']:.3f} s2={r['best_s2']:.2f} {r['saving_one']:+.2%} "
                  f"bands {r['best_s2_bands']} {r['saving_bands']:+.2%}", file=sys.stderr, flush=True)
    m = machine()
    cmd = shlex.join(sys.argv[1:] if argv is None else argv)
    lines = ["# A per-photo scale of the learned variances: what it would save", "",
             f"Command: `python -m experiments.variance_scale {cmd}`", "",
             f"Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; machine: {m['cpu']}, "
             f"{args.threads} torch thread(s), bfloat16 autocast; model `{args.model}` (weights {info['sha256'][:12]}).", "",
             f"Per photo: {args.crops} crops of {args.crop} x {args.crop} on a grid; T = {args.steps} bound (uniform levels, "
             f"{args.t_samples} stratified levels per crop, the same draws at every scale). 'one scale': the best single "
             f"s^2 of p's variance over {len(SCALES)} values in [0.61, 1.65]; 'per quarter': one s^2 per quarter of the "
             "levels (lowest noise first). Saving: relative to the bound at s^2 = 1 (bound: recon + prior + diffusion).", "",
             "| set | photo | group | T-step bound | best s^2 | saving | s^2 per quarter | saving |",
             "|---|---|---|---:|---:|---:|---|---:|"]
    for r in rows:
        lines.append(f"| {r['set']} | {r['image']} | {r['group']} | {r['bpd']:.3f} | {r['best_s2']:.2f} | "
                     f"{r['saving_one']:.2%} | {', '.join(f'{v:.2f}' for v in r['best_s2_bands'])} | {r['saving_bands']:.2%} |")
    for g in ("clean", "palette", "decoded JPEG"):
        sel = [r for r in rows if r["group"] == g]
        if sel:
            lines.append(f"\n- {g} ({len(sel)}): mean saving one scale {np.mean([r['saving_one'] for r in sel]):.2%}, "
                         f"per quarter {np.mean([r['saving_bands'] for r in sel]):.2%}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                         "machine": m, "rows": rows}, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
