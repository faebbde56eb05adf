"""Throughput of candidate natural-image denoisers: training (random RGB crops, one full
training step: forward, backward, AdamW; fp32 and bf16 autocast) and coding (the float32
forward pass the codec runs, per pixel of a region), at a fixed torch thread count.

python -m benchmarks.natural_speed [--threads 1] [--repeats 2] [--configs NAME,...]
Writes benchmarks/results/natural_speed.md (and .json). The coding column gives the
network's share of compress (or decompress) time for a 768x512 photo at T steps:
T x 393,216 pixels / (pixels per second).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.mnist import machine
from vdmcodec.diffusion import VDM, ModelConfig, low_discrepancy_t
from vdmcodec.hardware import native_bf16
from vdmcodec.networks import NetworkConfig

CONFIGS = {
    "unet-32 [1-2-2] x2": NetworkConfig(image_channels=3, channels=32, channel_mult=(1, 2, 2), num_res_blocks=2),
    "unet-32 [1-2-2-2] x2": NetworkConfig(image_channels=3, channels=32, channel_mult=(1, 2, 2, 2), num_res_blocks=2),
    "unet-48 [1-2-2] x2": NetworkConfig(image_channels=3, channels=48, channel_mult=(1, 2, 2), num_res_blocks=2),
    "unet-64 [1-2-2] x2": NetworkConfig(image_channels=3, channels=64, channel_mult=(1, 2, 2), num_res_blocks=2),
    "unet-64 [1-2-2-2] x1": NetworkConfig(image_channels=3, channels=64, channel_mult=(1, 2, 2, 2), num_res_blocks=1),
}
CROPS = {32: 64, 64: 16}  # crop side -> batch size (the same 65,536 pixels per step)
PHOTO_PIXELS = 768 * 512


def train_step_seconds(cfg: NetworkConfig, crop: int, batch: int, bf16: bool, repeats: int) -> float:
    torch.manual_seed(0)
    model = VDM(ModelConfig(network=cfg))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (batch, 3, crop, crop), dtype=torch.uint8, generator=g)
    model.amp_dtype = torch.bfloat16 if bf16 else None
    times = []
    for r in range(repeats + 1):  # the first step warms up
        t0 = time.perf_counter()
        t = low_discrepancy_t(batch, g, "cpu")
        terms = model(x, t, torch.randn(x.shape, generator=g), torch.randn(x.shape, generator=g))
        opt.zero_grad()
        terms.loss.total.mean().backward()
        opt.step()
        if r:
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


@torch.no_grad()
def forward_pixels_per_second(cfg: NetworkConfig, side: int, repeats: int) -> float:
    """The codec's network call: float32, batch 1, one side x side region."""
    torch.manual_seed(0)
    model = VDM(ModelConfig(network=cfg)).eval()
    z = torch.randn(1, 3, side, side)
    gamma = torch.zeros(1)
    times = []
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        model.eps_and_v(z, gamma)
        if r:
            times.append(time.perf_counter() - t0)
    return side * side / float(np.median(times))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated names from CONFIGS")
    ap.add_argument("--forward-side", type=int, default=256, help="side of the square region timed for coding")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/natural_speed.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [n for n in args.configs.split(",") if n]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        ap.error(f"unknown configs {unknown}; choose from {list(CONFIGS)}")
    native = native_bf16()
    rows = []
    for name in names:
        cfg = CONFIGS[name]
        params = sum(p.numel() for p in VDM(ModelConfig(network=cfg)).parameters())
        row = {"network": name, "params": params}
        for crop, batch in CROPS.items():
            for bf16 in (False, True):
                # emulated bf16 (no native support) is ~100x slower: not measured, shown n/a
                img_s = batch / train_step_seconds(cfg, crop, batch, bf16, args.repeats) if (native or not bf16) else None
                row[f"train_{crop}_{'bf16' if bf16 else 'fp32'}_img_s"] = img_s
        row["forward_px_s"] = forward_pixels_per_second(cfg, args.forward_side, args.repeats)
        rows.append(row)
        print(json.dumps(row), flush=True)
    m = machine()
    lines = [
        "# Natural-image denoisers: training and coding throughput", "",
        f"Command: `python -m benchmarks.natural_speed {' '.join(sys.argv[1:] if argv is None else argv)}`".rstrip(), "",
        f"Machine: {m['cpu']}, {m['cpu_count']} logical CPUs, {args.threads} torch thread(s), "
        f"torch {m['torch']}; 1-minute load average at the start {m['load_average_1min']:.2f} (other work shares the CPUs, "
        f"so absolute figures are lower bounds of an idle machine's).", "",
        "Training: one full step (forward, backward, AdamW) on random RGB crops, median of "
        f"{args.repeats} after a warm-up; 65,536 pixels per step (64 crops of 32x32 or 16 of 64x64). "
        f"Coding: the float32 forward pass on one {args.forward_side}x{args.forward_side} region (what the codec runs "
        "T times per pixel); the last column is the network time of compress (or decompress) for a 768x512 photo at T = 64.", "",
        "| network | params | train 32x32 fp32 img/s | train 32x32 bf16 img/s | bf16/fp32 | train 64x64 fp32 img/s | "
        "train 64x64 bf16 img/s | bf16/fp32 | coding forward kpx/s | network s per 768x512 photo, T = 64 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        a, b = r["train_32_fp32_img_s"], r["train_32_bf16_img_s"]
        c, d = r["train_64_fp32_img_s"], r["train_64_bf16_img_s"]
        b_, d_ = (f"{b:.1f}", f"{d:.1f}") if native else ("n/a", "n/a")
        rb, rd = (f"{b / a:.2f}", f"{d / c:.2f}") if native else ("n/a", "n/a")
        lines.append(f"| {r['network']} | {r['params']:,} | {a:.1f} | {b_} | {rb} | {c:.1f} | {d_} | {rd} | "
                     f"{r['forward_px_s'] / 1e3:.0f} | {64 * PHOTO_PIXELS / r['forward_px_s']:.0f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"machine": m, "threads": args.threads, "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
