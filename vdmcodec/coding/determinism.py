"""torch's global switches pinned while a chain codes, and restored after.

A bits-back decoder must replay the encoder's network outputs to the last bit. On a GPU
the result depends on switches that live in global state: which convolution algorithm
cuDNN picks (``benchmark`` times candidates and may pick another one next run;
``deterministic`` restricts it to reproducible ones), TF32 for float32 matrix products and
convolutions, reduced-precision reductions in half / bfloat16 products, and
``use_deterministic_algorithms`` (which also makes cuBLAS need a fixed workspace layout,
CUBLAS_WORKSPACE_CONFIG). ``pinned()`` sets all of them to the one mode both directions use
(PRECISION_MODE, recorded in a GPU file's device record) for the duration of a compress or
decompress call and puts back whatever the caller had, so no global state is left changed.
On a CPU none of the cuDNN / cuBLAS switches has an effect; setting them is harmless.

``cudnn_off()`` additionally keeps cuDNN out of the portable arithmetic's float64
convolutions (coding/exact.py): its FFT and Winograd algorithms round in their transforms,
which would break the exact integer sums; without cuDNN, torch runs them as im2col and an
IEEE float64 matrix product, whose sums of integers below 2^52 are exact in any order.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

import torch

# the mode a GPU file records (hardware.device_fingerprint): what pinned() sets
PRECISION_MODE = "tf32 off, reduced-precision reductions off, cudnn deterministic"
CUBLAS_WORKSPACE = ":4096:8"  # torch's documented setting for deterministic cuBLAS


def _switches() -> dict:
    m, c = torch.backends.cuda.matmul, torch.backends.cudnn
    return {"matmul_tf32": m.allow_tf32, "fp16_reduction": m.allow_fp16_reduced_precision_reduction,
            "bf16_reduction": m.allow_bf16_reduced_precision_reduction, "cudnn_tf32": c.allow_tf32,
            "cudnn_deterministic": c.deterministic, "cudnn_benchmark": c.benchmark,
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
            "fill_memory": torch.utils.deterministic.fill_uninitialized_memory,
            "cublas_workspace": os.environ.get("CUBLAS_WORKSPACE_CONFIG")}


def _apply(s: dict) -> None:
    m, c = torch.backends.cuda.matmul, torch.backends.cudnn
    m.allow_tf32 = s["matmul_tf32"]
    m.allow_fp16_reduced_precision_reduction = s["fp16_reduction"]
    m.allow_bf16_reduced_precision_reduction = s["bf16_reduction"]
    c.allow_tf32, c.deterministic, c.benchmark = s["cudnn_tf32"], s["cudnn_deterministic"], s["cudnn_benchmark"]
    if s["cublas_workspace"] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = s["cublas_workspace"]
    torch.use_deterministic_algorithms(s["deterministic"], warn_only=s["warn_only"])
    torch.utils.deterministic.fill_uninitialized_memory = s["fill_memory"]


PINNED = {"matmul_tf32": False, "fp16_reduction": False, "bf16_reduction": False, "cudnn_tf32": False,
          "cudnn_deterministic": True, "cudnn_benchmark": False, "deterministic": True, "warn_only": False,
          # (filling new tensors with NaN is a debugging aid that costs time; the chain reads no
          # uninitialised memory)
          "fill_memory": False}


@contextmanager
def pinned():
    """Run the block in PRECISION_MODE (see the module docstring); restore the caller's
    switches after, also on an exception."""
    before = _switches()
    workspace = before["cublas_workspace"] or CUBLAS_WORKSPACE  # a caller's own setting is kept
    _apply({**PINNED, "cublas_workspace": workspace})
    try:
        yield
    finally:
        _apply(before)


@contextmanager
def cudnn_off():
    """Run the block with cuDNN disabled (the portable arithmetic on a GPU); restore after."""
    before = torch.backends.cudnn.enabled
    torch.backends.cudnn.enabled = False
    try:
        yield
    finally:
        torch.backends.cudnn.enabled = before
