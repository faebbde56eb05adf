"""Would a non-uniform coding time grid beat the uniform one? The T-step bound the codec
pays for the best grid of T steps, against the uniform grid t_i = i / T.

python -m experiments.coding_grid --model mnist [--images 128] [--levels 256] [--max-span 24]
    [--steps 16,32,64,128] [--out experiments/results/coding_grid.md]

The chain codes the latent levels gamma(t_0) < ... < gamma(t_T) of the model's schedule.
Any grid whose nodes lie on a fine lattice t = k / N (N = --levels) is scored from one table:
for every lattice node k and every step span d <= --max-span, the mean over images of the
step's KL(q(z_s | z_t, x) || p(z_s | z_t)) with t = k / N, s = (k - d) / N (the model's
learned variances where it has them), one noise draw per (image, k), shared by all d. The
best T-step grid on the lattice is then a shortest path (dynamic programming over (step,
node)). The images are split in halves: the grid is chosen on the first and both grids are
scored on the second, so the gain is not the selection's own noise. The reconstruction and
prior terms do not depend on the interior grid and are left out (rates are of the diffusion
term only, in bits per dimension).
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

from benchmarks.mnist import machine, resolve_data
from vdmcodec.diffusion import kl_step, scale_pixels
from vdmcodec.zoo import load_model

MNIST = Path("../shared/data/mnist/mnist9k-images-idx3-ubyte.gz")
NATURAL = Path("../shared/data/natural")


def validation_images(model, n: int) -> torch.Tensor:
    """The first n validation images (MNIST 8000-) or 64x64 crops of CSet14 + CSet5, uint8 [B, C, H, W]."""
    if model.cfg.network.image_channels == 1:
        from vdmcodec.data import read_idx

        return torch.from_numpy(read_idx(resolve_data(MNIST))[8000 : 8000 + n].copy()).reshape(-1, 1, 28, 28)
    from vdmcodec.data import to_tensor
    from vdmcodec.training.datasets import DataSpec, load_validation

    crops, _ = load_validation([DataSpec(resolve_data(NATURAL / s)) for s in ("CSet14", "CSet5")], 64, n, 3)
    return to_tensor(crops)


@torch.no_grad()
def step_costs(model, x: torch.Tensor, levels: int, max_span: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-half mean step KL in nats per image: cost[h][k, d] for the step (k - d) / N -> k / N."""
    B = x.shape[0]
    half = B // 2
    gamma = model.gamma(torch.arange(levels + 1, dtype=torch.float32) / levels)
    costs = np.full((2, levels + 1, max_span + 1), np.inf)
    g = torch.Generator().manual_seed(0)
    xs = scale_pixels(x)
    t0 = time.time()
    for k in range(1, levels + 1):
        eps = torch.randn(x.shape, generator=g)
        g_t = gamma[k].expand(B)
        eps_hat, v = model.eps_and_v(model.q_sample(xs, g_t, eps), g_t)
        err2 = (eps - eps_hat).square().flatten(1).sum(1)
        for d in range(1, min(max_span, k) + 1):
            g_s = gamma[k - d].expand(B)
            kl = kl_step(eps, eps_hat, v, g_t, g_s) if v is not None else 0.5 * torch.expm1(g_t - g_s) * err2
            costs[0, k, d], costs[1, k, d] = float(kl[:half].mean()), float(kl[half:].mean())
        if k % 32 == 0:
            print(f"level {k}/{levels}, {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    return costs[0], costs[1]


def best_grid(cost: np.ndarray, T: int) -> list[int]:
    """Lattice nodes 0 = k_0 < ... < k_T = N minimising the summed step cost."""
    N, K = cost.shape[0] - 1, cost.shape[1] - 1
    best = np.full((T + 1, N + 1), np.inf)
    span = np.zeros((T + 1, N + 1), dtype=int)
    best[0, 0] = 0.0
    for s in range(1, T + 1):
        for k in range(1, N + 1):
            ds = np.arange(1, min(K, k) + 1)
            v = best[s - 1, k - ds] + cost[k, ds]
            j = int(np.argmin(v))
            best[s, k], span[s, k] = v[j], ds[j]
    path = [N]
    for s in range(T, 0, -1):
        path.append(path[-1] - span[s, path[-1]])
    return path[::-1]


def grid_cost(cost: np.ndarray, path: list[int]) -> float:
    return float(sum(cost[b, b - a] for a, b in zip(path[:-1], path[1:])))


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m experiments.coding_grid", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="mnist")
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--levels", type=int, default=256)
    ap.add_argument("--max-span", type=int, default=24)
    ap.add_argument("--steps", default="16,32,64,128")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("experiments/results/coding_grid.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, info = load_model(args.model)
    x = validation_images(model, args.images)
    dims = x[0].numel()
    bpd = lambda nats: nats / (dims * math.log(2.0))  # noqa: E731
    select, score = step_costs(model, x, args.levels, args.max_span)
    N = args.levels
    rows = []
    for T in (int(s) for s in args.steps.split(",") if s):
        if N % T or N // T > args.max_span:
            print(f"T={T}: skipped (needs N divisible by T and N / T <= max-span)", file=sys.stderr)
            continue
        uniform = list(range(0, N + 1, N // T))
        best = best_grid(select, T)
        rows.append({"T": T, "uniform": bpd(grid_cost(score, uniform)), "best": bpd(grid_cost(score, best)),
                     "uniform_select": bpd(grid_cost(select, uniform)), "best_select": bpd(grid_cost(select, best)),
                     "spans": np.diff(best).tolist()})
    fine = bpd(grid_cost(score, list(range(N + 1))))
    m = machine()
    card = info["card"]
    cmd = shlex.join(sys.argv[1:] if argv is None else argv)
    lines = ["# Coding time grid: the best T-step grid against the uniform one", "",
             f"Command: `python -m experiments.coding_grid {cmd}`", "",
             f"Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; machine: {m['cpu']}, "
             f"{args.threads} torch thread(s), torch {m['torch']}.", "",
             f"Model: `{card.get('name', args.model)}` as shipped ({card.get('steps', '?')} steps; reverse variance "
             f"{'learned' if model.cfg.network.learned_variance else 'fixed'}), {args.images} validation images "
             f"({dims} dimensions each), lattice N = {N}, spans up to {args.max_span}. Diffusion term only, bits per "
             f"dimension, scored on the half of the images the grid was not chosen on; the {N}-step lattice itself "
             f"scores {fine:.4f}.", "",
             "| T | uniform | best grid | gain | (choosing half: uniform -> best) |", "|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['T']} | {r['uniform']:.4f} | {r['best']:.4f} | {r['best'] / r['uniform'] - 1:+.2%} | "
                     f"{r['uniform_select']:.4f} -> {r['best_select']:.4f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                         "fine": fine, "rows": rows}, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
