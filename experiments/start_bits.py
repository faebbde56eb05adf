"""Where a small archive's start-up bits go, and what a coarser grid on the first latent
would save: the chain's initial-bit deficit per dimension (the encoder's running balance of
pops and pushes, ``DiffusionChain.initial_bits_per_dim``), the seeds compress plans for it,
and the archive's size, for an archive of N validation digits, with the shipped grid
(latent bin = 2^-grid_bits of the narrower of q's and p's std at every level) and with
level 0's bin set from q(z_0 | x)'s own std sigma_0 instead (p(z_0 | z_1)'s is 4.7 times
narrower on `mnist`, so z_0's pop reads about 2.2 more bits per dimension than any
other level's). The variant changes the coder and is not a format any decoder reads: it is
measured here by compress and an in-process decode with the same patched chain.

python -m experiments.start_bits [--images 100] [--steps 128] [--threads 1]
    [--out experiments/results/start_bits.md]
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.mnist import machine
from vdmcodec.coding.codec import load_codec
from vdmcodec.coding.container import unpack
from vdmcodec.data import load_array
from vdmcodec.likelihood import bpd_discrete

MNIST = Path("../shared/data/mnist/mnist9k-images-idx3-ubyte.gz")


def level0_bins(std_q0_over: float):
    """A chain patcher: level 0's bin = std_q[0] / ``std_q0_over`` (None: the shipped rule)."""
    def patch(chain):
        delta = chain.grid.delta.copy()
        delta[0] = chain.grid.std_q[0] / std_q0_over
        chain.grid = dataclasses.replace(chain.grid, delta=delta)
        return chain
    return patch


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m experiments.start_bits", description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--start", type=int, default=8000)
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("experiments/results/start_bits.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    x = load_array(MNIST, args.start, args.start + args.images)
    dims = x.size
    rows = []
    for label, patch in (("shipped grid", None), ("level 0 bin = sigma_0 / 4", level0_bins(4.0)),
                         ("level 0 bin = sigma_0 / 2", level0_bins(2.0))):
        codec = load_codec("mnist", steps=args.steps)
        chain = codec.chain(args.steps, codec.grid_bits)
        if patch is not None:
            patch(chain)
        t0 = time.perf_counter()
        blob = codec.compress(list(x), force_model=True)
        enc = time.perf_counter() - t0
        back = codec.decompress(blob)
        exact = all(np.array_equal(a, b) for a, b in zip(back, x))
        methods = unpack(blob)[0].image_methods()
        seeds = sum(1 for m in methods if m != "vdm")
        rows.append({"grid": label, "initial_bits_per_dim": chain.initial_bits_per_dim(), "seeds": seeds,
                     "bytes": len(blob), "bpd": 8 * len(blob) / dims, "exact": exact, "encode_s": enc})
        print(rows[-1], file=sys.stderr, flush=True)
    with torch.no_grad():
        codec = load_codec("mnist", steps=args.steps)
        elbo = float(bpd_discrete(codec.model, torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), args.steps,
                                  torch.Generator().manual_seed(0), times=codec.level_times(args.steps)).total.mean())
    m = machine()
    cmd = shlex.join(sys.argv[1:] if argv is None else argv)
    lines = ["# Start-up bits of a small archive", "", f"Command: `python -m experiments.start_bits {cmd}`", "",
             f"Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; machine: {m['cpu']}, "
             f"{args.threads} torch thread(s).", "",
             f"{args.images} digits ({MNIST.name} [{args.start}:{args.start + args.images}]), model `mnist`, T = {args.steps}, "
             f"one archive each (`force_model`), decoded in process with the same chain. The model's T-step -ELBO on "
             f"these digits (all T levels, one noise draw): {elbo:.4f} bpd.", "",
             "| grid | initial bits / dim | seed images | bytes | bpd | over the ELBO | exact |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['grid']} | {r['initial_bits_per_dim']:.2f} | {r['seeds']} | {r['bytes']:,} | {r['bpd']:.4f} | "
                     f"{r['bpd'] / elbo - 1:+.1%} | {'yes' if r['exact'] else 'NO'} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "machine": m,
                                                         "elbo": elbo, "rows": rows}, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
