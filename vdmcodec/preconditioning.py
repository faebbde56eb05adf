"""How the network's raw output F becomes the VDM's eps_hat: VDM's plain eps-prediction, or
EDM's preconditioning (Karras et al. 2022, Table 1 and sec. 5) written for the VP/VDM latent.

EDM works in the variance-exploding frame x = y + sigma n with the denoiser
D(x; sigma) = c_skip x + c_out F(c_in x; c_noise), where (EDM eq. 7, Table 1)

    c_skip = sigma_data^2 / (sigma^2 + sigma_data^2)
    c_out  = sigma sigma_data / sqrt(sigma^2 + sigma_data^2)
    c_in   = 1 / sqrt(sigma^2 + sigma_data^2)
    c_noise = ln(sigma) / 4.

The VDM latent is z_t = alpha_t y + sigma_t eps, i.e. x = z_t / alpha_t with
sigma = sigma_t / alpha_t = exp(gamma_t / 2). Since eps_hat = (x - D) / sigma, with
v_t = sigma_t^2 + alpha_t^2 sigma_data^2 (the variance of z_t for data of variance
sigma_data^2) the same model in VDM terms is

    network input   c_in x = z_t / sqrt(v_t)
    eps_hat = (1 - c_skip) x / sigma - (c_out / sigma) F
            = (sigma_t / v_t) z_t - (alpha_t sigma_data / sqrt(v_t)) F.

The first term is E[eps | z_t] for Gaussian data N(0, sigma_data^2): the network only learns
the residual, with a unit-variance input and a unit-variance target. The model stays an
eps-prediction VDM, so its likelihood (every bpd in ``likelihood.py``) is exact as before.
c_noise: the network is conditioned on ``VDM.t_norm(gamma_t)``, which like EDM's ln(sigma)/4
is affine in ln sigma = gamma_t / 2 (only scaled to the embedding's [0, 1] range).
"""
from __future__ import annotations

from enum import Enum
from typing import NamedTuple

import torch

from .schedules import alpha_sigma


class Preconditioning(str, Enum):
    vdm = "vdm"  # eps_hat = F(z_t): VDM's parameterisation
    edm = "edm"  # EDM's c_skip / c_out / c_in, expressed for eps_hat (module docstring)


class EDMCoefficients(NamedTuple):
    c_skip: torch.Tensor
    c_out: torch.Tensor
    c_in: torch.Tensor
    c_noise: torch.Tensor


def edm_coefficients(sigma: torch.Tensor, sigma_data: float) -> EDMCoefficients:
    """EDM Table 1 ("ours"), in EDM's own variance-exploding units."""
    s2, d2 = sigma.square(), sigma_data**2
    return EDMCoefficients(
        c_skip=d2 / (s2 + d2),
        c_out=sigma * sigma_data / (s2 + d2).sqrt(),
        c_in=1.0 / (s2 + d2).sqrt(),
        c_noise=sigma.log() / 4,
    )


class VPScales(NamedTuple):
    """eps_hat = eps_skip * z_t - eps_out * F(in_scale * z_t): the EDM coefficients in VDM
    units, computed without the cancellation in 1 - c_skip at small sigma."""

    in_scale: torch.Tensor   # c_in / alpha_t = 1 / sqrt(v_t)
    eps_skip: torch.Tensor   # (1 - c_skip) / (sigma alpha_t) = sigma_t / v_t
    eps_out: torch.Tensor    # c_out / sigma = alpha_t sigma_data / sqrt(v_t)


def edm_vp_scales(gamma_t: torch.Tensor, sigma_data: float) -> VPScales:
    alpha_t, sigma_t = alpha_sigma(gamma_t)
    v_t = sigma_t.square() + alpha_t.square() * sigma_data**2
    return VPScales(in_scale=v_t.rsqrt(), eps_skip=sigma_t / v_t, eps_out=alpha_t * sigma_data * v_t.rsqrt())
