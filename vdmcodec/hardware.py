"""What this machine's arithmetic can do fast.

bfloat16 autocast pays only where the hardware has bfloat16 kernels: CUDA devices that
report it, and CPUs from AVX-512 (BW/VL/DQ) up, where oneDNN runs bf16 kernels (fully native
with AVX-512 BF16 or AMX; the speed-ups in benchmarks/results were measured with AVX-512
BF16). This module's test is oneDNN's own. On an AVX2-only CPU, oneDNN falls back to a reference path: measured on one (an AMD EPYC without
AVX-512, torch 2.13), a 64-channel 3x3 convolution on 16x64x64 took 21.6 s in bf16 autocast
against 0.23 s in float32, about 100x slower. Configuration that asks for bf16 therefore
means "bf16 where native"; callers fall back to float32 elsewhere and say so.
"""
from __future__ import annotations

import torch


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """True when bfloat16 matrix arithmetic on ``device`` runs on bf16 kernels (not oneDNN's
    reference fallback)."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    try:  # oneDNN's own test: AVX-512 (BW/VL/DQ) cores and up, where its bf16 kernels run
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_capability() -> str:
    """torch's SIMD level for this CPU and whether bfloat16 is native, e.g. 'AVX2, no native
    bfloat16' (for benchmark machine lines: timings depend on both)."""
    try:
        simd = torch.backends.cpu.get_cpu_capability()
    except AttributeError:
        simd = "unknown SIMD"
    return f"{simd}, {'native' if native_bf16('cpu') else 'no native'} bfloat16"
