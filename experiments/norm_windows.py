"""Does the denoiser code whole photos worse than it would in windows? GroupNorm statistics.

python -m experiments.norm_windows [--model natural] [--windows 96+16,112+8,224+16]
    [--draws 8] [--threads 1] [--out experiments/results/norm_windows.md] IMAGE...

The natural model is trained on 64x64 crops, so each GroupNorm normalises over one crop;
the codec runs it on whole segments (up to 2^20 subpixels, e.g. a 768x512 photo in two
bands), where each GroupNorm normalises over the whole segment. This measures what that
costs: the continuous-time diffusion term of the -ELBO of each whole image with eps_hat
from (a) one forward pass over the image, as the codec does, and (b) overlapping windows of
CORE + 2 HALO pixels a side, batched, each window's centre CORE x CORE written out (windows
at an edge shift inwards so that every window has the same shape), at the cost of the extra
pixels the windows recompute. Paired: the same t draws (stratified) and noise for every way,
so the differences are far more certain than the draws' spread. Nothing in the codec changes.
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
from PIL import Image

from benchmarks.mnist import machine, resolve_data
from vdmcodec.coding.arithmetic import ARITHMETIC, apply_arithmetic
from vdmcodec.coding.codec import coding_defaults
from vdmcodec.diffusion import scale_pixels
from vdmcodec.zoo import load_model


def in_codec_arithmetic(model, info: dict, arith: str | None = None) -> str:
    """Put ``model`` (eval mode) in the network arithmetic the codec runs for it (``arith``,
    default its card's): autocast dtype and memory format. Returns the arithmetic's name."""
    arith = arith or coding_defaults(info)[1]
    if arith not in ARITHMETIC:
        raise SystemExit(f"arithmetic must be one of {', '.join(ARITHMETIC)}, got {arith!r}")
    if ARITHMETIC[arith].portable:
        raise SystemExit("the portable arithmetic is not measured here")
    apply_arithmetic(model, arith)
    return arith


def window_spans(n: int, core: int, win: int) -> list[tuple[int, int, int]]:
    """(window start, core start, core end) along a side of n: the cores tile [0, n) and
    every window [start, start + min(win, n)) lies inside it."""
    if n <= win:
        return [(0, 0, n)]
    spans = []
    for c0 in range(0, n, core):
        c1 = min(n, c0 + core)
        spans.append((min(max(0, c0 - (win - core) // 2), n - win), c0, c1))
    return spans


def eps_in_windows(eps_fn, z: torch.Tensor, core: int, halo: int) -> torch.Tensor:
    """eps_fn over overlapping windows of z (one batched call), stitched from their cores."""
    win = core + 2 * halo
    H, W = z.shape[-2:]
    rows, cols = window_spans(H, core, win), window_spans(W, core, win)
    wh, ww = min(win, H), min(win, W)
    where = [(r, c) for r in rows for c in cols]
    e = eps_fn(torch.cat([z[..., r[0]:r[0] + wh, c[0]:c[0] + ww] for r, c in where]))
    out = torch.empty_like(z)
    B = z.shape[0]
    for k, (r, c) in enumerate(where):
        out[..., r[1]:r[2], c[1]:c[2]] = e[k * B:(k + 1) * B, :, r[1] - r[0]:r[2] - r[0], c[1] - c[0]:c[2] - c[0]]
    return out


@torch.no_grad()
def measure(model, pixels: np.ndarray, windows: list[tuple[int, int]], draws: int, seed: int) -> dict:
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None]
    xd = scale_pixels(x)
    gen = torch.Generator().manual_seed(seed)
    ts = (torch.arange(draws) + torch.rand(draws, generator=gen)) / draws
    ways = [None] + windows
    nats = {w: 0.0 for w in ways}
    secs = {w: 0.0 for w in ways}
    for k in range(draws):
        eps = torch.randn(x.shape, generator=gen)
        gamma, dgamma = model.gamma.gamma_and_derivative(ts[k:k + 1])
        z = model.q_sample(xd, gamma, eps)

        def eps_fn(zz):
            return model.eps_and_v(zz, gamma.expand(zz.shape[0]))[0]
        for w in ways:
            t0 = time.perf_counter()
            e = eps_fn(z) if w is None else eps_in_windows(eps_fn, z, *w)
            secs[w] += time.perf_counter() - t0
            nats[w] += (0.5 * dgamma * (eps - e).float().square().sum()).item() / draws
    dims = x.numel() * math.log(2)
    return {"whole": {"bpd": nats[None] / dims, "seconds": secs[None]},
            "windows": [{"core": c, "halo": h, "bpd": nats[(c, h)] / dims, "seconds": secs[(c, h)]}
                        for c, h in windows]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("images", nargs="+", type=Path)
    ap.add_argument("--model", default="natural")
    ap.add_argument("--windows", default="96+16,112+8,224+16", help="CORE+HALO, comma-separated")
    ap.add_argument("--draws", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("experiments/results/norm_windows.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    windows = [tuple(int(v) for v in s.split("+")) for s in args.windows.split(",")]
    model, info = load_model(args.model)
    arith = in_codec_arithmetic(model, info)
    rows = []
    for path in args.images:
        pixels = np.array(Image.open(resolve_data(path)).convert("RGB"))
        r = measure(model, pixels, windows, args.draws, args.seed)
        r["image"], r["shape"] = path.name, list(pixels.shape)
        rows.append(r)
        print(path.name, f"whole {r['whole']['bpd']:.4f}",
              " ".join(f"{w['core']}+{w['halo']} {w['bpd']:.4f}" for w in r["windows"]), flush=True)
    card = info.get("card", {})
    result = {"command": "python -m experiments.norm_windows " + shlex.join(sys.argv[1:] if argv is None else argv),
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": machine(), "model": args.model, "steps": card.get("steps"), "arithmetic": arith,
              "draws": args.draws, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    m = result["machine"]
    lines = ["# GroupNorm over whole photos vs over windows: the diffusion term of the -ELBO", "",
             f"Command: `{result['command']}`", "",
             f"Date: {result['date']}; machine: {m['cpu']} ({m['cpu_count']} logical CPUs), {m['torch_threads']} torch "
             f"thread(s), torch {m['torch']}; 1-minute load average {m['load_average_1min']:.2f} at the start (the time "
             "ratios are side by side, same process).", "",
             f"Model: `{args.model}` (steps {result['steps']}), network arithmetic as the codec runs it ({arith}, autocast dtype and memory format). "
             f"Continuous-time diffusion term, {args.draws} stratified t draws, the same t and noise for every way; "
             "bits per subpixel. 'whole' is one forward pass over the image (what the codec does within a segment); "
             "CORE+HALO is overlapping windows of CORE + 2 HALO pixels, batched, keeping each window's centre. "
             "Time: network seconds relative to 'whole'.", ""]
    head = "| image | size | whole | " + " | ".join(f"{c}+{h}" for c, h in windows) + " |"
    lines += [head, "|---|---|---:|" + "---:|" * len(windows)]
    for r in rows:
        base = r["whole"]
        cells = [f"{w['bpd']:.4f} ({w['bpd'] / base['bpd'] - 1:+.2%}, {w['seconds'] / base['seconds']:.2f}x)"
                 for w in r["windows"]]
        lines.append(f"| {r['image']} | {r['shape'][1]}x{r['shape'][0]} | {base['bpd']:.4f} | " + " | ".join(cells) + " |")
    args.out.write_text("\n".join(lines) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
