"""Bits per dimension: the one place where nats become bits and ELBO terms are estimated.

Every figure is the negative ELBO of the discrete data x in {0..255}^D, in bits per
subpixel, with all three terms (reconstruction, prior, diffusion) and no dequantisation.
"continuous" is the T -> infinity diffusion loss, "discrete" is the T-step loss that the
codec pays. Estimates are per image, so that means and standard errors are over images.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .diffusion import VDM, low_discrepancy_t


def nats_to_bpd(nats, dims: int):
    """nats per image -> bits per dimension (subpixel)."""
    return nats / (dims * math.log(2.0))


@dataclass(frozen=True)
class BpdTerms:
    """Per-image estimates in bits per dimension, shape [B] each."""

    recon: torch.Tensor
    prior: torch.Tensor
    diff: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return self.recon + self.prior + self.diff


@torch.no_grad()
def bpd_continuous(model: VDM, x: torch.Tensor, generator: torch.Generator, t_samples: int = 1) -> BpdTerms:
    """Negative continuous-time ELBO per image; the diffusion term is averaged over
    ``t_samples`` low-discrepancy draws of t. x: uint8 [B, C, H, W]."""
    dims = x[0].numel()
    eps_0 = torch.randn(x.shape, generator=generator).to(x.device)
    recon = model.loss_recon(x, eps_0)
    prior = model.loss_prior(x)
    diff = torch.zeros(x.shape[0], device=x.device)
    for _ in range(t_samples):
        t = low_discrepancy_t(x.shape[0], generator, x.device)
        eps = torch.randn(x.shape, generator=generator).to(x.device)
        diff += model.loss_diff_continuous(x, t, eps)
    diff /= t_samples
    return BpdTerms(*(nats_to_bpd(v, dims) for v in (recon, prior, diff)))


@torch.no_grad()
def bpd_discrete(model: VDM, x: torch.Tensor, T: int, generator: torch.Generator, t_samples: int | None = None,
                 times=None) -> BpdTerms:
    """Negative T-step ELBO per image. With ``t_samples=None`` every step i=1..T is
    evaluated (one eps each), so only the noise is Monte Carlo; otherwise ``t_samples``
    stratified steps are drawn per image and the sum is estimated as T * mean. ``times``:
    the T + 1 level times t_0 = 0 < ... < t_T = 1 (a chain's, coding/levels.py); None:
    uniform, t_i = i / T."""
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    if times is not None and len(times) != T + 1:
        raise ValueError(f"{len(times)} level times for T = {T} (need T + 1)")
    dims = x[0].numel()
    B = x.shape[0]
    eps_0 = torch.randn(x.shape, generator=generator).to(x.device)
    recon = model.loss_recon(x, eps_0)
    prior = model.loss_prior(x)
    diff = torch.zeros(B, device=x.device)
    gamma = None if times is None else model.gamma(torch.tensor(times, dtype=torch.float32, device=x.device))

    def step(i: torch.Tensor, eps: torch.Tensor, scale: int) -> torch.Tensor:  # scale x the KL of step i, [B]
        if gamma is None:
            return model.loss_diff_discrete(x, i, T, eps) if scale == T else model.loss_step_discrete(x, i, T, eps)
        i = i.to(x.device)
        return scale * model.loss_step_between(x, gamma[i], gamma[i - 1], eps)

    if t_samples is None or t_samples >= T:
        for i in range(1, T + 1):
            eps = torch.randn(x.shape, generator=generator).to(x.device)
            diff += step(torch.full((B,), i), eps, 1)
    else:
        for k in range(t_samples):
            u = torch.rand(B, generator=generator)
            i = 1 + torch.floor((k + u) / t_samples * T).long().clamp(max=T - 1)
            eps = torch.randn(x.shape, generator=generator).to(x.device)
            diff += step(i, eps, T)
        diff /= t_samples
    return BpdTerms(*(nats_to_bpd(v, dims) for v in (recon, prior, diff)))


def mean_and_stderr(values: torch.Tensor) -> tuple[float, float]:
    v = values.double()
    n = v.numel()
    se = float(v.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    return float(v.mean()), se
