"""Noise keyed by (seed, sample index), so that a seed reproduces a sample whatever the batch.

Every sample owns a CPU ``torch.Generator`` seeded from (seed, index); a batch draws each
sample's noise from its own generator, in the same order, and stacks them (EDM's
``StackedRandomGenerator``). Nothing here touches a global RNG (LESSONS.md item 7).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch

from .brownian import BrownianNoise
from .registry import SamplingError


def sample_generator(seed: int, index: int) -> torch.Generator:
    """The generator of sample ``index`` under ``seed`` (both non-negative integers)."""
    if seed < 0 or index < 0:
        raise SamplingError(f"seed and sample index must be non-negative (got seed={seed}, index={index})")
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0]
    return torch.Generator(device="cpu").manual_seed(int(state) & ((1 << 63) - 1))


class NoiseSource:
    """Standard normal noise for a batch of samples with indices ``indices`` under ``seed``.

    ``randn(shape)`` returns ``[B, *shape]``: row b comes from the generator of
    ``indices[b]``, so sample i is the same whether it is drawn in a batch of 1 or of 8.
    Noise is drawn on the CPU in float64 and then moved, so it is the same on every device.
    """

    def __init__(self, seed: int, indices: int | Iterable[int], device: str | torch.device = "cpu"):
        self.seed = int(seed)
        self.indices: Sequence[int] = list(range(indices)) if isinstance(indices, int) else [int(i) for i in indices]
        if not self.indices:
            raise SamplingError("a noise source needs at least one sample index")
        self.device = torch.device(device)
        self.generators = [sample_generator(self.seed, i) for i in self.indices]
        self._trees: dict = {}

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape: Sequence[int], dtype: torch.dtype = torch.float64) -> torch.Tensor:
        shape = tuple(int(s) for s in shape)
        rows = [torch.randn(shape, generator=g, dtype=torch.float64) for g in self.generators]
        return torch.stack(rows).to(device=self.device, dtype=dtype)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != len(self):
            raise SamplingError(f"noise source has {len(self)} samples but the batch has {x.shape[0]}")
        return self.randn(x.shape[1:], dtype=x.dtype).to(x.device)

    def brownian(self, shape: Sequence[int], t0: float, t1: float) -> BrownianNoise:
        """Per-sample Brownian paths on [t0, t1] (``brownian.py``), keyed by (seed, index) like
        the rest of this source and independent of its generators' state; one per (shape, t0, t1)."""
        key = (tuple(int(s) for s in shape), float(t0), float(t1))
        if key not in self._trees:
            self._trees[key] = BrownianNoise(self.seed, self.indices, key[0], t0, t1, device=self.device)
        return self._trees[key]
