"""Brownian-tree noise: one Brownian path per sample, queried at any noise level.

The SDE samplers (``dpmpp-2m-sde``, ``dpmpp-3m-sde``) draw the noise of the step from sigma
to sigma_next as the Brownian increment (W(sigma) - W(sigma_next)) / sqrt(sigma - sigma_next)
of one fixed path W per sample (k-diffusion's ``BrownianTreeNoiseSampler``, with time = sigma).
Because every schedule samples the same path, refining the schedule refines the same
solution, and a seed gives the same sample whatever the step count's neighbours or the batch.

The path is a virtual Brownian tree (Li et al. 2020, "Scalable gradients for SDEs", sec. 4;
torchsde's ``BrownianTree``): on [t0, t1] with W(t0) = 0 and W(t1) ~ N(0, (t1 - t0) I), the
value at a node's midpoint is the Brownian-bridge draw
W(m) = (W(a) + W(b)) / 2 + sqrt((b - a) / 4) z, with z drawn from a generator seeded by
(seed, sample index, node number) only. A query bisects down to a leaf ``depth`` levels deep
(width (t1 - t0) / 2^depth) and interpolates linearly inside it: the variance error is of the
order of the leaf width, 2^-depth of the interval. Visited nodes are kept, so a descending
sequence of queries costs a few draws each. No global RNG is touched.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .registry import SamplingError

_MASK = (1 << 64) - 1


def _mix(*words: int) -> int:
    """splitmix64 over the words: a 63-bit seed for one tree node."""
    h = 0x9E3779B97F4A7C15
    for w in words:
        h = (h ^ (int(w) & _MASK)) & _MASK
        h = (h + 0x9E3779B97F4A7C15) & _MASK
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK
        h ^= h >> 31
    return h & ((1 << 63) - 1)


class BrownianTree:
    """One sample's Brownian path of shape ``shape`` on [t0, t1] (float64, CPU)."""

    def __init__(self, seed: int, index: int, shape: Sequence[int], t0: float, t1: float, depth: int = 32):
        if not t1 > t0:
            raise SamplingError(f"a Brownian tree needs t0 < t1 (got {t0}, {t1})")
        self.key = (int(seed), int(index))
        self.shape = tuple(int(s) for s in shape)
        self.t0, self.t1, self.depth = float(t0), float(t1), int(depth)
        self.nodes: dict[int, torch.Tensor] = {}   # heap numbering: root 1, children 2k, 2k + 1

    def _normal(self, node: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(_mix(0xB10, *self.key, node))
        return torch.randn(self.shape, generator=g, dtype=torch.float64)

    def _end(self) -> torch.Tensor:
        if 0 not in self.nodes:
            self.nodes[0] = math.sqrt(self.t1 - self.t0) * self._normal(0)   # W(t1)
        return self.nodes[0]

    def __call__(self, t: float) -> torch.Tensor:
        """W(t), t in [t0, t1]."""
        t = min(max(float(t), self.t0), self.t1)
        a, b = self.t0, self.t1
        wa, wb = torch.zeros(self.shape, dtype=torch.float64), self._end()
        node = 1
        for _ in range(self.depth):
            m = 0.5 * (a + b)
            wm = self.nodes.get(node)
            if wm is None:
                wm = 0.5 * (wa + wb) + math.sqrt((b - a) / 4) * self._normal(node)
                self.nodes[node] = wm
            if t == m:
                return wm
            if t < m:
                b, wb, node = m, wm, 2 * node
            else:
                a, wa, node = m, wm, 2 * node + 1
        frac = (t - a) / (b - a)
        return wa + frac * (wb - wa)


class BrownianNoise:
    """Standard normal step noise for a batch from per-sample Brownian trees on [t0, t1]:
    ``step(sigma, sigma_next)`` = (W(sigma) - W(sigma_next)) / sqrt(sigma - sigma_next),
    row b from the tree of sample ``indices[b]`` under ``seed``."""

    def __init__(self, seed: int, indices: Sequence[int], shape: Sequence[int], t0: float, t1: float,
                 device: str | torch.device = "cpu", depth: int = 32):
        self.trees = [BrownianTree(seed, i, shape, t0, t1, depth) for i in indices]
        self.device = torch.device(device)

    def step(self, sigma: float, sigma_next: float) -> torch.Tensor:
        if not sigma > sigma_next:
            raise SamplingError(f"Brownian step needs sigma > sigma_next (got {sigma}, {sigma_next})")
        scale = 1.0 / math.sqrt(sigma - sigma_next)
        rows = [(tree(sigma) - tree(sigma_next)) * scale for tree in self.trees]
        return torch.stack(rows).to(self.device)
