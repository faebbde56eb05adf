"""How the chain runs the network: the arithmetics a file can name (its container's dtype
byte), each a memory format for the activations and, if any, autocast's reduced precision,
or the portable arithmetic of exact.py. Measured in benchmarks/results/coding_arithmetic.md."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..diffusion import VDM


@dataclass(frozen=True)
class Arithmetic:
    """How the chain runs the network: the activations' memory format and, if any, the
    reduced precision of autocast (the latent goes in as float32 and the outputs come back
    as float32 either way)."""

    memory_format: torch.memory_format
    autocast: torch.dtype | None = None
    portable: bool = False  # exact.py: the same bits on every CPU, SIMD level and thread count
    micro_batch: int | None = None  # the network sees at most this many images per call (both sides split alike)


# The network arithmetics a chain can run, by the name the container records (its dtype
# byte): float32 on NCHW activations, on channels_last (NHWC) ones, which oneDNN runs
# faster on photo-sized inputs, or bfloat16 autocast on NHWC (faster again where the CPU has
# bf16 instructions; the models are trained under the same autocast), or bfloat16 autocast
# on NCHW in calls of at most 16 images, for small images (the mnist network on one thread
# beside other work, 2026-12-07: 4.4 s per 1,000 digits in calls of 16, 6.7 s in calls of
# 64, 18 s on NHWC, 7.0 s in float32). The first three: benchmarks/results/coding_arithmetic.md.
# Each replays itself exactly on one machine; they differ in the last bits, so a file decodes
# with the arithmetic it names.
ARITHMETIC = {"float32": Arithmetic(torch.contiguous_format),
              "float32-nhwc": Arithmetic(torch.channels_last),
              "bfloat16-nhwc": Arithmetic(torch.channels_last, torch.bfloat16),
              "portable": Arithmetic(torch.contiguous_format, portable=True),
              "bfloat16": Arithmetic(torch.contiguous_format, torch.bfloat16, micro_batch=16)}


def run_network(model: VDM, z: torch.Tensor, gamma: torch.Tensor, arithmetic: Arithmetic, conditioning=None):
    """``model.eps_and_v(z, gamma)`` in ``arithmetic``'s batches (``micro_batch``): the
    outputs of a batch split into the same calls on both sides of a file, whatever the
    library's kernels would do with a larger batch."""
    n = arithmetic.micro_batch
    if n is None or z.shape[0] <= n:
        return model.eps_and_v(z, gamma, conditioning)
    parts = [model.eps_and_v(z[k : k + n], gamma[k : k + n], conditioning) for k in range(0, z.shape[0], n)]
    eps = torch.cat([e for e, _ in parts])
    return eps, (None if parts[0][1] is None else torch.cat([v for _, v in parts]))


def apply_arithmetic(model: VDM, name: str) -> VDM:
    """Put ``model`` (in place, eval mode) in a non-portable arithmetic of ARITHMETIC: its
    autocast dtype and activations' memory format. For measurements that should see the
    network as the chain runs it."""
    arith = ARITHMETIC[name]
    if arith.portable:
        raise ValueError("the portable arithmetic runs exact.py, not the model")
    model.eval()
    model.amp_dtype = arith.autocast
    model.net = model.net.to(memory_format=arith.memory_format)
    return model
