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
        return bool(torch.cuda.is_available()) and cuda_native_bf16(device)
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


def cuda_native_bf16(device: torch.device) -> bool:
    """bfloat16 in hardware on this CUDA device (compute capability 8.0 and up), not counting
    emulation: ``is_bf16_supported()``'s default also answers True on a V100 or T4, whose
    bfloat16 runs through float32 paths, slower than float32 itself."""
    with torch.cuda.device(device):
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # torch before the including_emulation argument
            return torch.cuda.get_device_capability(device) >= (8, 0)


def device_fingerprint(device: torch.device | str, mode: str) -> str | None:
    """What a GPU's float network arithmetic depends on, as one line a file records: the
    product name, compute capability, the CUDA and cuDNN versions torch was built with, and
    the precision ``mode`` (coding/determinism.py). None on the CPU (whose files record
    their thread count instead)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(device)
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return (f"{torch.cuda.get_device_name(device)}; sm {major}.{minor}; CUDA {torch.version.cuda}; "
            f"cuDNN {cudnn}; {mode}")
