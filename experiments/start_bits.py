"""Where a small archive's start-up bits go, and what three ways of cutting them would save,
for an archive of N validation digits coded by the shipped `mnist` model:

- the latent grid (``grid_bits``, stored in every header): every grid bit costs about two
  initial bits per dimension and changes the chain's rate; archives at 1, 2 and 3 grid
  bits, compressed and decoded, their first chunks on coarser grids (format version 9,
  archive.push_chunks: the seeds cover the coarsest grid's initial bits; the seeds are the
  digits' best classical codes, ctx since format version 10);
- z_0 folded into x: the chain would start by popping z_1 from q(z_1 | x) and push x with
  p(x | z_1) = the integral of p(x | z_0) p(z_0 | z_1) (a Gaussian of variance std_p0^2 +
  sigma_0^2 on the pixel grid, its tails folded into 0 and 255); its initial bits are the
  running balance of that chain's entropies, computed from the grid as
  ``LevelGrid.initial_bits_per_dim`` does for the shipped one (not coded: the format has no
  such chain);
- seeds coded together: the seed images' classical bytes one by one against one mosaic
  (the seeds side by side) in WebP m6, JPEG XL e9 and ctx.

python -m experiments.start_bits [--images 100] [--steps 48] [--threads 1]
    [--out experiments/results/start_bits.md]
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.mnist import machine
from vdmcodec.coding import classical
from vdmcodec.coding.codec import Codec, load_codec
from vdmcodec.coding.container import unpack
from vdmcodec.coding.grid import LOG2_SQRT_2PI_E
from vdmcodec.data import load_array
from vdmcodec.likelihood import bpd_discrete

MNIST = Path("../shared/data/mnist/mnist9k-images-idx3-ubyte.gz")
ELBO_DRAWS = 4  # noise draws of the T-step bound (one draw's mean over 100 digits moves by about 0.3%)


def folded_initial_bits(grid) -> float:
    """Initial bits per dimension of the chain with z_0 folded into x: pop z_1 ~ q(z_1 | x)
    (std sigma_1), push x with p(x | z_1) (its entropy is at most that of a Gaussian of std
    sqrt(std_p0^2 + sigma_0^2) on the pixel grid, or 0), then the shipped chain's pops and
    pushes from level 2 on; the lowest point of the running balance."""
    h_q = np.log2(grid.std_q / grid.delta) + LOG2_SQRT_2PI_E
    h_p = np.log2(grid.std_p / grid.delta) + LOG2_SQRT_2PI_E
    step = float(np.diff(grid.x_means).min())
    h_x = max(0.0, math.log2(math.hypot(grid.std_p[0], grid.sigma[0]) / step) + LOG2_SQRT_2PI_E)
    balance = -(math.log2(grid.sigma[1] / grid.delta[1]) + LOG2_SQRT_2PI_E)
    worst = balance
    balance += h_x
    for i in range(2, grid.steps + 1):
        balance -= h_q[i]
        worst = min(worst, balance)
        balance += h_p[i - 1]
    return -worst


def seed_bytes(seeds: np.ndarray) -> dict:
    """Bytes of the seed images (uint8 [N, H, W, C]) one by one and as one row, per codec
    (ctx: the row only where it has at most context_model.MAX_PIXELS pixels, else None)."""
    row = np.concatenate(list(seeds), axis=1)
    out = {}
    for name, method, effort in (("webp m6", "webp", 6), ("jxl e9", "jxl", 9), ("ctx", "ctx", None)):
        fits = method != "ctx" or classical.context_eligible(row)
        out[name] = {"single": sum(len(classical.encode(s, method, effort)) for s in seeds),
                     "row": len(classical.encode(row, method, effort)) if fits else None}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m experiments.start_bits", description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--start", type=int, default=8000)
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--grid-bits", default="1,2,3")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("experiments/results/start_bits.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    x = load_array(MNIST, args.start, args.start + args.images).copy()
    dims = x.size
    rows, seeds_seen = [], None
    for gb in (int(v) for v in args.grid_bits.split(",")):
        shipped = load_codec("mnist", steps=args.steps)
        codec = Codec(shipped.model, shipped.info, steps=args.steps, grid_bits=gb, arithmetic=shipped.arithmetic,
                      steps_fixed=True)  # this grid, not compress's choice for a small archive
        chain = codec.chain(args.steps, gb)
        t0 = time.perf_counter()
        blob = codec.compress(list(x), force_model=True)
        enc = time.perf_counter() - t0
        back = codec.decompress(blob)
        header = unpack(blob)[0]
        seed_idx = [k for k, m in enumerate(header.image_methods()) if m != "vdm"]
        if gb == 2:
            seeds_seen = seed_idx
        grids = header.chunk_grids or [gb] * len(header.chunks)
        coarse = ", ".join(f"{g}: {grids.count(g)}" for g in sorted(set(grids)) if g < gb) or "none"
        rows.append({"grid_bits": gb, "initial_bits_per_dim": chain.initial_bits_per_dim(),
                     "first_initial_bits_per_dim": chain.on_grid(min(grids)).initial_bits_per_dim(),
                     "coarse_chunks": coarse, "container_bytes": len(blob) - len(unpack(blob)[1]),
                     "folded_initial_bits_per_dim": folded_initial_bits(chain.grid), "seeds": len(seed_idx),
                     "seed_bytes": sum(header.classical_sizes), "bytes": len(blob), "bpd": 8 * len(blob) / dims,
                     "exact": all(np.array_equal(a, b) for a, b in zip(back, x)), "encode_s": enc})
        print(rows[-1], file=sys.stderr, flush=True)
    seeds = seed_bytes(x[seeds_seen or list(range(6))])
    with torch.no_grad():
        codec = load_codec("mnist", steps=args.steps)
        xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
        elbo = float(np.mean([bpd_discrete(codec.model, xt, args.steps, torch.Generator().manual_seed(s),
                                           times=codec.level_times(args.steps)).total.mean() for s in range(ELBO_DRAWS)]))
    m = machine()
    cmd = shlex.join(sys.argv[1:] if argv is None else argv)
    n_seeds = len(seeds_seen or range(6))
    lines = ["# Start-up bits of a small archive", "", f"Command: `python -m experiments.start_bits {cmd}`", "",
             f"Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; machine: {m['cpu']}, "
             f"{args.threads} torch thread(s).", "",
             f"{args.images} digits ({MNIST.name} [{args.start}:{args.start + args.images}]), model `mnist`, T = {args.steps} "
             f"at the card's level times, one archive each (`force_model`), decoded in process. The model's T-step "
             f"-ELBO on these digits (mean of {ELBO_DRAWS} noise draws): {elbo:.4f} bpd.", "",
             "| grid bits | initial bits / dim | with z_0 folded into x (computed) | coarser chunks (grid: count) "
             "| first chunk's initial bits / dim | seed images | seed bytes | container bytes | bytes | bpd | over the ELBO "
             "| exact |",
             "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['grid_bits']}{' (the default grid)' if r['grid_bits'] == 2 else ''} | {r['initial_bits_per_dim']:.2f} | "
                     f"{r['folded_initial_bits_per_dim']:.2f} | {r['coarse_chunks']} | {r['first_initial_bits_per_dim']:.2f} | "
                     f"{r['seeds']} | {r['seed_bytes']:,} | {r['container_bytes']:,} | {r['bytes']:,} | "
                     f"{r['bpd']:.4f} | {r['bpd'] / elbo - 1:+.1%} | {'yes' if r['exact'] else 'NO'} |")
    lines += ["", f"The {n_seeds} seed images of the 2-bit archive, coded one by one and as one row "
              f"(bpd of the seeds' {n_seeds * x[0].size:,} subpixels):", "",
              "| codec | one by one | one row |", "|---|---:|---:|"]
    for name, s in seeds.items():
        row = "-" if s["row"] is None else f"{8 * s['row'] / (n_seeds * x[0].size):.3f}"
        lines.append(f"| {name} | {8 * s['single'] / (n_seeds * x[0].size):.3f} | {row} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "machine": m,
                                                         "elbo": elbo, "rows": rows, "seeds": seeds}, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
