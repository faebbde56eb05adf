"""Where the ODE samplers' grey background comes from: samples of the same noises with the
probability-flow ODE solved ever more finely (Heun and Euler up to 512 steps, bfloat16 and
float32) against an ancestral (SDE) sampler, by median pixel, ink fraction (pixels >= 128)
and the mean of the background (pixels < 64). Real digits have median 0 and ink 0.12.

python -m experiments.ode_background [--model mnist-v2] [--samples 64] [--seed 1]
    [--out experiments/results/ode_background.md]
"""
from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.mnist import machine
from vdmcodec.sampling import karras_sigmas
from vdmcodec.sampling.denoiser import VDMDenoiser
from vdmcodec.sampling.generate import generate, to_pixels
from vdmcodec.zoo import load_model

CELLS = (("heun", 18, "bfloat16"), ("heun", 128, "bfloat16"), ("euler", 512, "bfloat16"), ("heun", 128, "float32"),
         ("ancestral", 35, "bfloat16"), ("euler-ancestral", 35, "bfloat16"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.ode_background", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="mnist-v2")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("experiments/results/ode_background.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    model, info = load_model(args.model)
    vdm = VDMDenoiser(model)
    rows = []
    for sampler, steps, dtype in CELLS:
        model.amp_dtype = torch.bfloat16 if dtype == "bfloat16" else None
        sig = karras_sigmas(steps, vdm.sigma_min, vdm.sigma_max)
        t0 = time.perf_counter()
        px = to_pixels(generate(vdm, sampler, sig, (1, 28, 28), count=args.samples, seed=args.seed,
                                batch_size=args.samples))
        rows.append(f"| {sampler} | {steps} | {dtype} | {np.median(px):.0f} | {(px >= 128).mean():.3f} | "
                    f"{px[px < 64].mean():.2f} | {time.perf_counter() - t0:.0f} |")
        print(rows[-1], flush=True)
    m = machine()
    lines = ["# The ODE samplers' grey background", "",
             f"Command: `{' '.join(['python -m experiments.ode_background', shlex.join(sys.argv[1:] if argv is None else argv)]).rstrip()}`",
             "", f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {m['cpu']}, 1 torch thread.",
             "", f"Model `{args.model}` (weights sha256 {info['sha256'][:16]}...), {args.samples} samples, the same "
             "noises in every row (rho = 7 Karras steps, prior start). Background = pixels below 64.", "",
             "| sampler | steps | arithmetic | median pixel | ink fraction | background mean | seconds |",
             "|---|---:|---|---:|---:|---:|---:|", *rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
