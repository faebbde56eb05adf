"""Training throughput (images/s) of denoiser configurations, fp32 vs bf16 autocast, on
MNIST-sized batches: one full training step (forward, backward, AdamW) per measurement.

python -m benchmarks.train_speed [--batch 64] [--repeats 5]
Writes benchmarks/results/train_speed.md.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from benchmarks.mnist import cpu_model
from vdmcodec.diffusion import VDM, ModelConfig, low_discrepancy_t
from vdmcodec.hardware import native_bf16
from vdmcodec.networks import NetworkConfig, NetworkKind

CONFIGS = {
    "unet-32 (1,2,2) x2": NetworkConfig(channels=32, channel_mult=(1, 2, 2), num_res_blocks=2),
    "unet-64 (1,2,2) x2": NetworkConfig(channels=64, channel_mult=(1, 2, 2), num_res_blocks=2),
    "unet-64 (1,2,2) x2 attn": NetworkConfig(channels=64, channel_mult=(1, 2, 2), num_res_blocks=2, attention=True),
    "unet-96 (1,2,2) x2": NetworkConfig(channels=96, channel_mult=(1, 2, 2), num_res_blocks=2),
    "resnet-64 x4 (full res)": NetworkConfig(kind=NetworkKind.resnet, channels=64, num_res_blocks=4),
    "unet-64 no Fourier": NetworkConfig(channels=64, channel_mult=(1, 2, 2), num_res_blocks=2, fourier_exponents=()),
}


def step_time(cfg: NetworkConfig, batch: int, bf16: bool, repeats: int) -> float:
    torch.manual_seed(0)
    model = VDM(ModelConfig(network=cfg))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (batch, 1, 28, 28), dtype=torch.uint8)
    model.amp_dtype = torch.bfloat16 if bf16 else None
    times = []
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        t = low_discrepancy_t(batch, g, "cpu")
        terms = model(x, t, torch.randn(x.shape, generator=g), torch.randn(x.shape, generator=g))
        loss = terms.loss.total.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if r:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/train_speed.md")
    args = ap.parse_args(argv)
    rows = []
    for name, cfg in CONFIGS.items():
        params = sum(p.numel() for p in VDM(ModelConfig(network=cfg)).parameters())
        fp32 = step_time(cfg, args.batch, False, args.repeats)
        # emulated bf16 (no native support, hardware.py) is ~100x slower: not measured
        bf16 = step_time(cfg, args.batch, True, args.repeats) if native_bf16() else None
        rows.append((name, params, args.batch / fp32, args.batch / bf16 if bf16 else None))
        print(f"{name}: {params} params, fp32 {args.batch / fp32:.1f} img/s, bf16 {rows[-1][3]} img/s", flush=True)
    lines = [
        "# Training throughput (MNIST 28x28, one full training step)", "",
        f"Command: `python -m benchmarks.train_speed {' '.join(sys.argv[1:])}`".rstrip(), "",
        f"Machine: {cpu_model()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}", "",
        "| network | params | fp32 img/s | bf16 autocast img/s | bf16 / fp32 |", "|---|---|---|---|---|",
    ]
    lines += [f"| {n} | {p:,} | {a:.1f} | {b:.1f} | {b / a:.2f} |" if b else f"| {n} | {p:,} | {a:.1f} | n/a | n/a |"
              for n, p, a, b in rows]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
