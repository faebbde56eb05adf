"""A Gaussian mixture with its exact denoiser: ground truth for testing and benchmarking samplers.

The data distribution is sum_k w_k N(mu_k, s_k^2 I); its noisy marginal at VE level sigma is
sum_k w_k N(mu_k, (s_k^2 + sigma^2) I), so the exact denoiser is the posterior mean
D(x, sigma) = sum_k r_k(x) (mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k)), with r_k the
posterior component probabilities. It follows the ``denoiser.Denoiser`` contract like a VDM;
its gamma(t) is the contract's default (linear in t, so the ``model`` schedule is
``loglinear``). ``make_mixture`` is the 2-D, 4-component mixture used by the tests and
``benchmarks/samplers.py``.
"""
from __future__ import annotations

import torch

from .denoiser import Denoiser


class GaussianMixture(Denoiser):
    """Exact denoiser of sum_k w_k N(mu_k, s_k^2 I) on R^d; optional constant learned-variance
    output ``v`` (iDDPM's interpolation coefficient, for testing). ``calls`` counts denoiser calls."""

    def __init__(self, means, stds, weights, sigma_min: float = 0.002, sigma_max: float = 80.0, v: float | None = None):
        self.means = torch.as_tensor(means, dtype=torch.float64)      # [K, d]
        self.stds = torch.as_tensor(stds, dtype=torch.float64)        # [K]
        log_w = torch.as_tensor(weights, dtype=torch.float64).log()
        self.log_w = log_w - log_w.logsumexp(0)
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.v = v
        self.learned_variance = v is not None
        self.calls = 0

    def denoise_and_v(self, x, sigma):
        self.calls += 1
        d = x.shape[1]
        var = self.stds**2 + sigma[:, None] ** 2                        # [B, K]
        diff = x[:, None, :] - self.means[None]                         # [B, K, d]
        log_p = self.log_w - 0.5 * diff.square().sum(-1) / var - 0.5 * d * var.log()
        r = torch.softmax(log_p, dim=1)
        x0_given_k = self.means[None] + (self.stds**2 / var)[..., None] * diff
        x0_hat = (r[..., None] * x0_given_k).sum(1)
        return x0_hat, (None if self.v is None else torch.full_like(x, self.v))

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n exact samples of the data distribution, float64 [n, d]."""
        k = torch.multinomial(self.log_w.exp(), n, replacement=True, generator=generator)
        eps = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        return self.means[k] + self.stds[k, None] * eps


def make_mixture(**kw) -> GaussianMixture:
    """The 2-D test mixture: four components of stds 0.05-0.15 in [-1.2, 1.2]^2, EDM's sigma
    range [0.002, 80] unless overridden."""
    return GaussianMixture([[-1.0, -0.5], [0.8, -0.8], [0.2, 0.9], [1.2, 0.6]], [0.08, 0.15, 0.1, 0.05],
                           [0.3, 0.3, 0.25, 0.15], **kw)
