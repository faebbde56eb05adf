"""Where a photo's coding time goes and which levers move it, for the shipped photo model.

python -m experiments.speed_levers [--model natural] [--size 512x768] [--threads 2] [--repeats 3]
    [--compile] [--photo ../shared/data/natural/CSet5/butterfly.png] [--steps 64]
    [--out experiments/results/speed_levers.md]

The chain runs the network once per level over every segment, so a 768x512 photo costs T
passes of the network over 768x512 (plus seeds): the time is network passes x the cost of
one pass (py-spy on a running chain: 97% in the network). Three measurements:

1. One pass over SIZE in each arithmetic this CPU runs natively (coding/arithmetic.py: ARITHMETIC;
   bfloat16 only with native bfloat16): its floating-point operations
   (torch.utils.flop_counter), seconds (median of REPEATS after a warm-up), the rate that
   makes, and the operators' shares of one pass in the model card's arithmetic (profiler).
2. With --compile: torch.compile (inductor, static shapes) of the same pass in float32 NHWC,
   side by side with eager: compile seconds, pass seconds and the largest difference in
   eps_hat (a compiled network would be another arithmetic: encoder and decoder would both
   need it, and every segment shape compiles anew).
3. Scale-space evaluation at high noise: at level t the network runs on the latent averaged
   over 2x2 pixels (a latent of the half-size image at gamma - log 4, rescaled to unit
   variance), its x prediction is upsampled (bilinear) and eps_hat is read off the
   full-size latent. Per level of the chain's T-step bound (the card's level times for
   --steps) on --photo: the step's KL with the full-size and the half-size pass, the same
   noise for both; then, coarsening the k noisiest levels, the rate change against the
   network time saved (a half-size pass costs about a quarter).

Writes OUT (markdown) and OUT with suffix .json.
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
import torch.nn.functional as F
from PIL import Image

from benchmarks.mnist import machine, resolve_data
from vdmcodec.coding import levels
from vdmcodec.coding.arithmetic import ARITHMETIC, apply_arithmetic
from vdmcodec.coding.codec import coding_defaults
from vdmcodec.diffusion import kl_step, scale_pixels
from vdmcodec.hardware import native_bf16
from vdmcodec.zoo import load_model

PHOTO = Path("../shared/data/natural/CSet5/butterfly.png")
GAMMA = -8.0  # the noise level of the timed passes (the network's cost does not depend on it)


def pass_seconds(fn, z: torch.Tensor, gamma: torch.Tensor, repeats: int) -> float:
    fn(z, gamma)  # warm-up (oneDNN primitives, compile)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(z, gamma)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


@torch.no_grad()
def network_passes(model_name: str, h: int, w: int, repeats: int, compile_too: bool) -> dict:
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    out = {"arithmetics": {}, "profile": [], "compile": None}
    gamma = torch.tensor([GAMMA])
    card_arith = None
    for name, arith in ARITHMETIC.items():
        if arith.portable or (arith.autocast is not None and not native_bf16()):
            continue
        model, info = load_model(model_name)
        card_arith = card_arith or coding_defaults(info)[1]
        apply_arithmetic(model, name)
        z = torch.randn(1, model.cfg.network.image_channels, h, w, generator=torch.Generator().manual_seed(0))
        z = z.contiguous(memory_format=arith.memory_format)
        with FlopCounterMode(display=False) as fc:
            model.eps_and_v(z, gamma)
        s = pass_seconds(model.eps_and_v, z, gamma, repeats)
        out["arithmetics"][name] = {"gflop": fc.get_total_flops() / 1e9, "seconds": s}
        if name == card_arith:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                model.eps_and_v(z, gamma)
            ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
            total = sum(e.self_cpu_time_total for e in ops)
            out["profile"] = [{"op": e.key, "share": e.self_cpu_time_total / total, "calls": e.count} for e in ops[:8]]
        if compile_too and name == "float32-nhwc":
            compiled = torch.compile(model.eps_and_v, dynamic=False)
            t0 = time.perf_counter()
            got = compiled(z, gamma)[0]
            compile_s = time.perf_counter() - t0
            ref = model.eps_and_v(z, gamma)[0]
            out["compile"] = {"compile_s": compile_s, "seconds": pass_seconds(compiled, z, gamma, repeats),
                              "eager_s": pass_seconds(model.eps_and_v, z, gamma, repeats),
                              "max_abs_diff": float((got - ref).abs().max())}
    out["card_arithmetic"] = card_arith
    return out


@torch.no_grad()
def scale_space(model_name: str, photo: Path, steps: int) -> dict:
    """Per level: the T-step KL (bits per subpixel) with the full-size and the half-size pass."""
    model, info = load_model(model_name)
    arith = coding_defaults(info)[1]
    apply_arithmetic(model, arith)
    fmt = ARITHMETIC[arith].memory_format
    with Image.open(resolve_data(photo)) as im:
        px = np.asarray(im.convert("RGB"))
    px = np.array(px[: px.shape[0] // 2 * 2, : px.shape[1] // 2 * 2])
    x = torch.from_numpy(px).permute(2, 0, 1)[None]
    xs = scale_pixels(x)
    times = levels.card_times(info["card"], steps) or levels.uniform_times(steps)
    g = model.gamma(torch.tensor(times, dtype=torch.float32))
    gen = torch.Generator().manual_seed(0)
    bits = 1.0 / (x.numel() * math.log(2.0))
    rows = []
    for i in range(1, steps + 1):
        gt, gs = g[i : i + 1], g[i - 1 : i]
        eps = torch.randn(x.shape, generator=gen)
        z = model.q_sample(xs, gt, eps)
        full = model.eps_and_v(z.contiguous(memory_format=fmt), gt)
        alpha, sigma = torch.sigmoid(-gt).sqrt(), torch.sigmoid(gt).sqrt()
        gh = gt - math.log(4.0)  # averaging 2x2 pixels quarters the noise variance
        ah, sh = torch.sigmoid(-gh).sqrt(), torch.sigmoid(gh).sqrt()
        zh = F.avg_pool2d(z, 2) * (ah / alpha)
        eh, vh = model.eps_and_v(zh.contiguous(memory_format=fmt), gh)
        up = lambda u: F.interpolate(u, scale_factor=2, mode="bilinear", align_corners=False)  # noqa: E731
        x_hat = up((zh - sh * eh) / ah)
        half = ((z - alpha * x_hat) / sigma, None if vh is None else up(vh))
        kl = [float(_kl(eps, e, v, gt, gs)) * bits for e, v in (full, half)]
        rows.append({"level": i, "gamma": float(gt), "full": kl[0], "half": kl[1]})
    return {"photo": str(photo), "shape": list(px.shape), "steps": steps, "arithmetic": arith,
            "levels": "card" if levels.card_times(info["card"], steps) else "uniform", "rows": rows}


def _kl(eps, eps_hat, v, gt, gs) -> torch.Tensor:
    if v is None:
        v = -torch.ones_like(eps)  # the fixed variance beta-tilde
    return kl_step(eps, eps_hat, v, gt, gs).sum()


def report(meta: dict, net: dict, ss: dict) -> list[str]:
    m = meta["machine"]
    lines = ["# Speed levers: what one network pass costs, and two ways to make passes cheaper", "",
             f"Command: `{meta['command']}`", "",
             f"Date: {meta['date']}; machine: {m['cpu']} ({m['cpu_count']} logical CPUs), {m['torch_threads']} torch "
             f"thread(s), torch {m['torch']}; 1-minute load average {m['load_average_1min']:.2f} at the start.", "",
             f"## One network pass over {meta['size']} (model `{meta['model']}`)", "",
             "| arithmetic | GFLOP per pass | seconds per pass | GFLOP/s | seconds per 768x512 photo at T = 64 |",
             "|---|---:|---:|---:|---:|"]
    h, w = (int(v) for v in meta["size"].split("x"))
    per_photo = 768 * 512 / (h * w) * 64
    for name, r in net["arithmetics"].items():
        lines.append(f"| {name} | {r['gflop']:.1f} | {r['seconds']:.2f} | {r['gflop'] / r['seconds']:.1f} | "
                     f"{r['seconds'] * per_photo:.0f} |")
    lines += ["", f"Operators' shares of one pass in the card's arithmetic ({net['card_arithmetic']}):", "",
              "| operator | share | calls |", "|---|---:|---:|"]
    lines += [f"| {p['op']} | {p['share']:.1%} | {p['calls']} |" for p in net["profile"]]
    c = net["compile"]
    if c:
        lines += ["", "## torch.compile (inductor, static shapes), float32 NHWC, side by side", "",
                  f"Compile {c['compile_s']:.0f} s for this one shape; pass {c['seconds']:.2f} s compiled against "
                  f"{c['eager_s']:.2f} s eager (eager / compiled = {c['eager_s'] / c['seconds']:.2f}); largest "
                  f"difference in eps_hat {c['max_abs_diff']:.1e}."]
    rows = ss["rows"]
    full = sum(r["full"] for r in rows)
    lines += ["", f"## Scale-space evaluation at high noise ({Path(ss['photo']).name}, {ss['shape'][1]}x{ss['shape'][0]}, "
              f"T = {ss['steps']} at {ss['levels']} level times, {ss['arithmetic']})", "",
              f"T-step diffusion term with every pass full-size: {full:.4f} bits per subpixel. Coarsening the k "
              "noisiest levels to half-size passes:", "",
              "| k | gamma of the lowest coarsened level | diffusion term | change | network time saved |",
              "|---:|---:|---:|---:|---:|"]
    for k in sorted({1, 2, 3, 4, 5, 6, 8, 10, 12, 16, len(rows) // 2} & set(range(1, len(rows) + 1))):
        coarse = rows[len(rows) - k:]
        total = full + sum(r["half"] - r["full"] for r in coarse)
        lines.append(f"| {k} | {coarse[0]['gamma']:.2f} | {total:.4f} | {total / full - 1:+.2%} | "
                     f"{0.75 * k / len(rows):.1%} |")
    return lines


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="natural")
    ap.add_argument("--size", default="512x768", help="HxW of the timed passes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (minutes of compiling)")
    ap.add_argument("--photo", type=Path, default=PHOTO)
    ap.add_argument("--steps", type=int, default=64, help="T of the scale-space measurement")
    ap.add_argument("--out", type=Path, default=Path("experiments/results/speed_levers.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    meta = {"command": "python -m experiments.speed_levers " + shlex.join(sys.argv[1:] if argv is None else argv),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(), "model": args.model, "size": args.size}
    h, w = (int(v) for v in args.size.split("x"))
    net = network_passes(args.model, h, w, args.repeats, args.compile)
    print(json.dumps(net["arithmetics"]), flush=True)
    ss = scale_space(args.model, args.photo, args.steps)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({**meta, "network": net, "scale_space": ss}, indent=1))
    args.out.write_text("\n".join(report(meta, net, ss)) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
