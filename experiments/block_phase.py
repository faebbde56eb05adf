"""Does the photo model use the JPEG block grid's phase it can read off a crop's border?

Most validation photos passed through JPEG (data README), and many show their 8x8 block
edges at the image origin's phase. The codec's segments start on multiples of 32 and the
model trains on crops starting on multiples of 8 (``train.crop_multiple``), so the border
of what the network sees tells it where the blocks are. This measures how much the model
relies on that: the continuous-time diffusion term on 64x64 crops whose corners lie on a
grid of multiples of 64, against the same crops shifted by (dy, dx) pixels, with the same
t and noise for every shift (so the differences are far more certain than the values).
A shift of (8, 8) keeps the 8x8 phase and changes only the 16x16 one (4:2:0 chroma).
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
from PIL import Image

from benchmarks.mnist import machine, resolve_data
from experiments.norm_windows import in_codec_arithmetic
from vdmcodec.diffusion import scale_pixels
from vdmcodec.zoo import load_model

DEFAULT_SHIFTS = "0+0,4+4,0+4,2+2,8+8"


def crop_grid(height: int, width: int, side: int, max_shift: int) -> list[tuple[int, int]]:
    """Crop corners on multiples of ``side`` that leave room for every shift up to max_shift."""
    return [(y, x) for y in range(0, height - side - max_shift + 1, side)
            for x in range(0, width - side - max_shift + 1, side)]


@torch.no_grad()
def measure(model, pixels: np.ndarray, shifts: list[tuple[int, int]], side: int, draws: int, seed: int) -> dict:
    h, w, c = pixels.shape
    origins = crop_grid(h, w, side, max(max(s) for s in shifts))
    gen = torch.Generator().manual_seed(seed)
    ts = (torch.arange(draws) + torch.rand(draws, generator=gen)) / draws
    eps = torch.randn((draws, len(origins), c, side, side), generator=gen)
    out = {}
    for dy, dx in shifts:
        batch = np.stack([pixels[y + dy:y + dy + side, x + dx:x + dx + side] for y, x in origins])
        x = scale_pixels(torch.from_numpy(batch).permute(0, 3, 1, 2))
        nats = 0.0
        for k in range(draws):
            gamma, dgamma = model.gamma.gamma_and_derivative(ts[k:k + 1])
            z = model.q_sample(x, gamma, eps[k])
            e = model.eps_and_v(z, gamma.expand(z.shape[0]))[0]
            nats += (0.5 * dgamma * (eps[k] - e).float().square().sum()).item() / draws
        out[f"{dy}+{dx}"] = nats / (x.numel() * math.log(2))
    return {"crops": len(origins), "bpd": out}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("images", nargs="+", type=Path)
    ap.add_argument("--model", default="natural")
    ap.add_argument("--shifts", default=DEFAULT_SHIFTS, help="DY+DX, comma-separated; the first is the reference")
    ap.add_argument("--side", type=int, default=64)
    ap.add_argument("--draws", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("experiments/results/block_phase.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    shifts = [tuple(int(v) for v in s.split("+")) for s in args.shifts.split(",")]
    model, info = load_model(args.model)
    arith = in_codec_arithmetic(model, info)
    rows = []
    for path in args.images:
        pixels = np.array(Image.open(resolve_data(path)).convert("RGB"))
        r = measure(model, pixels, shifts, args.side, args.draws, args.seed)
        r["image"], r["shape"] = path.name, list(pixels.shape)
        rows.append(r)
        print(path.name, " ".join(f"{k} {v:.4f}" for k, v in r["bpd"].items()), flush=True)
    keys = [f"{dy}+{dx}" for dy, dx in shifts]
    card = info.get("card", {})
    result = {"command": "python -m experiments.block_phase " + shlex.join(sys.argv[1:] if argv is None else argv),
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": machine(), "model": args.model, "steps": card.get("steps"), "arithmetic": arith,
              "side": args.side, "draws": args.draws, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    m = result["machine"]
    lines = ["# JPEG block phase: crops on the origin's grid against shifted crops", "",
             f"Command: `{result['command']}`", "",
             f"Date: {result['date']}; machine: {m['cpu']} ({m['cpu_count']} logical CPUs), {m['torch_threads']} torch "
             f"thread(s), torch {m['torch']}.", "",
             f"Model: `{args.model}` (steps {result['steps']}), network arithmetic as the codec runs it ({arith}). "
             f"Continuous-time diffusion term on {args.side}x{args.side} crops with corners on multiples of {args.side}, "
             f"{args.draws} stratified t draws, the same t and noise for every shift; bits per subpixel; DY+DX shifts "
             f"every crop down and right by that many pixels (relative change against {keys[0]}).", ""]
    lines += ["| image | size | crops | " + " | ".join(keys) + " |", "|---|---|---:|" + "---:|" * len(keys)]
    for r in rows:
        base = r["bpd"][keys[0]]
        cells = [f"{base:.4f}"] + [f"{r['bpd'][k]:.4f} ({r['bpd'][k] / base - 1:+.2%})" for k in keys[1:]]
        lines.append(f"| {r['image']} | {r['shape'][1]}x{r['shape'][0]} | {r['crops']} | " + " | ".join(cells) + " |")
    means = {k: float(np.mean([r["bpd"][k] for r in rows])) for k in keys}
    cells = [f"{means[keys[0]]:.4f}"] + [f"{means[k]:.4f} ({means[k] / means[keys[0]] - 1:+.2%})" for k in keys[1:]]
    lines.append("| **mean** | | | " + " | ".join(cells) + " |")
    args.out.write_text("\n".join(lines) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
