"""Importance sampling of t: iDDPM's loss-second-moment resampler (Nichol & Dhariwal 2021,
sec. 3.3, ``LossSecondMomentResampler``) on a grid of N bins of t in [0, 1].

Each bin keeps the last ``history`` training losses seen in it. Until every bin is full the
sampler is uniform (and the trainer's t stays VDM's low-discrepancy draw, bit for bit);
after that p_k is proportional to sqrt(E[L_k^2]), mixed with ``uniform_prob`` of the
uniform distribution, t is drawn inside the bin uniformly, and the estimate is multiplied by
1 / (N p_k): with density p(t) = N p_k on bin k, E_p[L(t) / p(t)] = int_0^1 L(t) dt, so the
weighted loss stays an unbiased estimate of the ELBO. Draws invert the piecewise-constant
CDF at the trainer's stratified u, which keeps them stratified.
"""
from __future__ import annotations

import numpy as np
import torch


class LossSecondMomentResampler:
    def __init__(self, bins: int = 128, history: int = 10, uniform_prob: float = 0.001):
        if bins < 1 or history < 1 or not 0.0 <= uniform_prob <= 1.0:
            raise ValueError("need bins >= 1, history >= 1 and 0 <= uniform_prob <= 1")
        self.bins, self.size, self.uniform_prob = bins, history, uniform_prob
        self.history = np.zeros((bins, history), dtype=np.float64)
        self.counts = np.zeros(bins, dtype=np.int64)

    @property
    def warm(self) -> bool:
        return bool((self.counts == self.size).all())

    def probabilities(self) -> np.ndarray:
        """p_k over the bins: uniform until warm, then proportional to the RMS loss."""
        if not self.warm:
            return np.full(self.bins, 1.0 / self.bins)
        w = np.sqrt(np.mean(self.history**2, axis=1))
        if not np.isfinite(w).all() or w.sum() <= 0:
            raise ValueError("importance sampler: loss history is not finite and positive")
        p = w / w.sum()
        return p * (1.0 - self.uniform_prob) + self.uniform_prob / self.bins

    def sample(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """t = F^-1(u) and the weights 1 / (N p_k), [B]; before warm-up (t = u, None)."""
        if not self.warm:
            return u, None
        p = self.probabilities()
        cdf = np.concatenate([[0.0], np.cumsum(p)])
        cdf[-1] = 1.0
        uu = u.detach().cpu().double().numpy()
        k = np.clip(np.searchsorted(cdf, uu, side="right") - 1, 0, self.bins - 1)
        frac = np.clip((uu - cdf[k]) / p[k], 0.0, np.nextafter(1.0, 0.0))
        t = (k + frac) / self.bins
        weight = 1.0 / (self.bins * p[k])
        return (torch.from_numpy(t).to(u.device, u.dtype).clamp(0.0, np.nextafter(np.float32(1.0), np.float32(0.0))),
                torch.from_numpy(weight).to(u.device, u.dtype))

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Record per-example losses (not importance-weighted) at their times t."""
        k = np.clip((t.detach().cpu().double().numpy() * self.bins).astype(np.int64), 0, self.bins - 1)
        for b, loss in zip(k, losses.detach().cpu().double().numpy()):
            if self.counts[b] == self.size:
                self.history[b, :-1] = self.history[b, 1:]
                self.history[b, -1] = loss
            else:
                self.history[b, self.counts[b]] = loss
                self.counts[b] += 1

    def state_dict(self) -> dict:
        return {"history": torch.from_numpy(self.history.copy()), "counts": torch.from_numpy(self.counts.copy())}

    def load_state_dict(self, state: dict) -> None:
        history, counts = state["history"].cpu().numpy(), state["counts"].cpu().numpy()  # (a checkpoint may hold device tensors)
        if history.shape != self.history.shape or counts.shape != self.counts.shape:
            raise ValueError(f"importance sampler state has {history.shape} history, expected {self.history.shape} "
                             "(is_bins / is_history changed since the checkpoint)")
        self.history[...] = history
        self.counts[...] = counts
