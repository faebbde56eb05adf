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


# The network arithmetics a chain can run, by the name the container records (its dtype
# byte): float32 on NCHW activations, on channels_last (NHWC) ones, which oneDNN runs
# faster on photo-sized inputs, or bfloat16 autocast on NHWC (faster again where the CPU has
# bf16 instructions; the models are trained under the same autocast). Measured in
# benchmarks/results/coding_arithmetic.md. Each replays itself exactly on one machine; they
# differ in the last bits, so a file decodes with the arithmetic it names.
ARITHMETIC = {"float32": Arithmetic(torch.contiguous_format),
              "float32-nhwc": Arithmetic(torch.channels_last),
              "bfloat16-nhwc": Arithmetic(torch.channels_last, torch.bfloat16),
              "portable": Arithmetic(torch.contiguous_format, portable=True)}


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
