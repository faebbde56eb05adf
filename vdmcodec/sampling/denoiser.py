"""The one denoiser contract every sampler uses, and the adapter from a VDM to it.

Contract (EDM, Karras et al. 2022, sec. 2): ``D(x, sigma) -> x0_hat`` in the
variance-exploding (VE) parameterisation ``x = x0 + sigma n``, n ~ N(0, I). ``x`` is float64
``[B, ...]``, ``sigma`` float64 ``[B]`` (> 0) and the result float64 like ``x``. A denoiser
also states the noise levels it was trained on (``sigma_min``, ``sigma_max``) and its own
schedule ``gamma(t)`` = -log SNR on t in [0, 1] (used by the ``model`` schedule only).
A denoiser with iDDPM learned variances says so with ``learned_variance = True`` and
implements ``denoise_and_v``. Samplers never look past this contract.
"""
from __future__ import annotations

import math

import torch

from ..schedules import alpha_sigma


class Denoiser:
    """Base class of the contract. Subclasses implement ``denoise_and_v`` (or ``__call__``)."""

    sigma_min: float
    sigma_max: float
    learned_variance: bool = False

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.denoise_and_v(x, sigma)[0]

    def denoise_and_v(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x0_hat and, with learned variances, iDDPM's v (shape of x, about [-1, 1]), else None."""
        raise NotImplementedError

    def prior_std(self, sigma: float) -> float:
        """Std of the start of sampling at VE level ``sigma`` (the first sigma of the schedule):
        EDM's N(0, sigma^2 I), right when sigma is far above the data's scale."""
        return float(sigma)

    def gamma(self, t: torch.Tensor) -> torch.Tensor:
        """The denoiser's own gamma(t) = -log SNR = 2 log sigma (float64). Default: linear in
        t between 2 log sigma_min and 2 log sigma_max (uniform in log sigma)."""
        g0, g1 = 2 * math.log(self.sigma_min), 2 * math.log(self.sigma_max)
        return g0 + (g1 - g0) * t.to(torch.float64)


class VDMDenoiser(Denoiser):
    """A VDM (variance preserving, eps prediction, schedule gamma(t)) as a VE denoiser.

    EDM's VP/VE equivalence (Karras et al. 2022, Table 1 and eq. 7): with
    sigma = exp(gamma/2) = sigma_t / alpha_t, the VP latent is z_t = alpha_t x, and
    x0_hat = (z_t - sigma_t eps_hat(z_t, gamma_t)) / alpha_t = x - sigma eps_hat. Written in
    EDM's preconditioning: c_skip = 1, c_out = -sigma, c_in = alpha_t = 1/sqrt(1 + sigma^2),
    c_noise = gamma_t = 2 log sigma. The data scale is the VDM's x in (-1, 1)
    (``diffusion.scale_pixels``); sigma_min / sigma_max are exp(gamma(0)/2) / exp(gamma(1)/2).
    """

    def __init__(self, model):
        self.model = model
        self.param = next(model.parameters())
        with torch.no_grad():
            gamma_0, gamma_1 = float(model.gamma.gamma_0), float(model.gamma.gamma_1)
        self.sigma_min = math.exp(gamma_0 / 2)
        self.sigma_max = math.exp(gamma_1 / 2)
        self.learned_variance = bool(model.cfg.network.learned_variance)

    def prior_std(self, sigma: float) -> float:
        """The VP chain's own prior p(z_1) = N(0, I) in VE coordinates x = z / alpha:
        std 1 / alpha = sqrt(1 + sigma^2) (alpha^2 = sigmoid(-gamma) = 1 / (1 + sigma^2)).
        At a sigma_max of about 4.9 this is 2% wider than EDM's sigma_max."""
        return math.sqrt(1.0 + float(sigma) ** 2)

    def gamma(self, t: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model.gamma(t.to(self.param.device, self.param.dtype)).to(torch.float64).cpu()

    def denoise_and_v(self, x, sigma):
        gamma_t = 2 * torch.log(sigma.to(torch.float64))                 # c_noise
        alpha_t, _ = alpha_sigma(gamma_t)                                  # c_in = alpha_t
        c_in = alpha_t.reshape((-1,) + (1,) * (x.dim() - 1))
        c_out = -sigma.to(torch.float64).reshape(c_in.shape)
        z_t = (c_in * x).to(self.param.device, self.param.dtype)
        with torch.no_grad():  # the model's own eps_hat and v (its preconditioning, v in [-1, 1])
            eps_hat, v = self.model.eps_and_v(z_t, gamma_t.to(self.param.device, self.param.dtype))
        eps_hat = eps_hat.to(x.device, torch.float64)
        v = v.to(x.device, torch.float64) if v is not None else None
        return x + c_out * eps_hat, v                                      # c_skip = 1
