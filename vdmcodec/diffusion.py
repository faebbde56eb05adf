"""The Variational Diffusion Model (Kingma et al. 2021): its distributions and loss terms.

Glossary: gamma = -log SNR; alpha, sigma are standard deviations; t in [0, 1]; T is the
number of discrete steps. Images are uint8 subpixels x in {0..255}, mapped to the data
scale x_s = 2 (x + 1/2) / 256 - 1 (VDM). All loss terms are returned per example in nats;
bits per dimension are computed in ``likelihood.py``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .networks import Denoiser, NetworkConfig, NetworkKind
from .schedules import NoiseSchedule, ScheduleConfig, ScheduleKind, alpha_sigma, make_schedule

VOCAB = 256


@dataclass(frozen=True)
class ModelConfig:
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    # the network sees t_norm = (gamma_t - gamma_min) / (gamma_max - gamma_min) with these
    # fixed values, so that a learned endpoint does not shift the conditioning
    cond_gamma_min: float = -13.3
    cond_gamma_max: float = 5.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["schedule"]["kind"] = ScheduleKind(self.schedule.kind).value
        d["network"]["kind"] = NetworkKind(self.network.kind).value
        return d

    @staticmethod
    def from_dict(d: dict) -> "ModelConfig":
        s = dict(d.get("schedule", {}))
        n = dict(d.get("network", {}))
        if "kind" in s:
            s["kind"] = ScheduleKind(s["kind"])
        if "kind" in n:
            n["kind"] = NetworkKind(n["kind"])
        for key in ("channel_mult", "fourier_exponents"):
            if key in n:
                n[key] = tuple(n[key])
        rest = {k: v for k, v in d.items() if k not in ("schedule", "network")}
        return ModelConfig(schedule=ScheduleConfig(**s), network=NetworkConfig(**n), **rest)


class VDMLoss(NamedTuple):
    """Per-example loss terms in nats, each of shape [B]. Their sum is the negative ELBO."""

    loss_recon: torch.Tensor
    loss_prior: torch.Tensor
    loss_diff: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return self.loss_recon + self.loss_prior + self.loss_diff


def scale_pixels(x: torch.Tensor) -> torch.Tensor:
    """uint8 subpixels {0..255} -> bin centres in (-1, 1)."""
    return 2.0 * (x.float() + 0.5) / VOCAB - 1.0


class VDM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.gamma: NoiseSchedule = make_schedule(cfg.schedule)
        self.net = Denoiser(cfg.network)

    amp_dtype: torch.dtype | None = None  # autocast dtype for the network (training only)

    # ---- the denoiser -------------------------------------------------------------
    def t_norm(self, gamma_t: torch.Tensor) -> torch.Tensor:
        lo, hi = self.cfg.cond_gamma_min, self.cfg.cond_gamma_max
        return (gamma_t - lo) / (hi - lo)

    def eps_hat(self, z_t: torch.Tensor, gamma_t: torch.Tensor) -> torch.Tensor:
        """Predicted noise; gamma_t has shape [B]. Drops the learned-variance channels."""
        t_norm = self.t_norm(gamma_t)
        if self.amp_dtype is not None:
            with torch.autocast(z_t.device.type, dtype=self.amp_dtype):
                out = self.net(z_t, t_norm)
            return out[:, : z_t.shape[1]].float()
        return self.net(z_t, t_norm)[:, : z_t.shape[1]]

    def forward(self, x, t, eps, eps_0) -> "TrainTerms":
        """Training forward pass (what DistributedDataParallel wraps)."""
        return training_terms(self, x, t, eps, eps_0)

    # ---- forward process ----------------------------------------------------------
    @staticmethod
    def q_sample(x_s: torch.Tensor, gamma_t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """z_t = alpha_t x + sigma_t eps."""
        alpha_t, sigma_t = alpha_sigma(_bc(gamma_t, x_s))
        return alpha_t * x_s + sigma_t * eps

    # ---- reverse process ----------------------------------------------------------
    def p_mean_std(self, z_t, gamma_t, gamma_s, eps_hat=None):
        """Mean and std of p(z_s | z_t) = q(z_s | z_t, x = x_hat(z_t)) (VDM eq. 26-29):
        mu = alpha_s / alpha_t (z_t + sigma_t expm1(gamma_s - gamma_t) eps_hat),
        var = sigma_s^2 (-expm1(gamma_s - gamma_t))."""
        if eps_hat is None:
            eps_hat = self.eps_hat(z_t, gamma_t)
        g_t, g_s = _bc(gamma_t, z_t), _bc(gamma_s, z_t)
        alpha_t, sigma_t = alpha_sigma(g_t)
        alpha_s, sigma_s = alpha_sigma(g_s)
        c = -torch.expm1(g_s - g_t)
        mean = alpha_s / alpha_t * (z_t - c * sigma_t * eps_hat)
        std = sigma_s * c.sqrt()
        return mean, std

    @staticmethod
    def q_step_mean_std(z_s, gamma_s, gamma_t):
        """q(z_t | z_s): mean alpha_{t|s} z_s, std sigma_{t|s} (VDM eq. 21-22)."""
        g_s, g_t = _bc(gamma_s, z_s), _bc(gamma_t, z_s)
        alpha_s, _ = alpha_sigma(g_s)
        alpha_t, sigma_t = alpha_sigma(g_t)
        alpha_ts = alpha_t / alpha_s
        # sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2 = sigma_t^2 (-expm1(g_s - g_t))
        sigma_ts = sigma_t * (-torch.expm1(g_s - g_t)).sqrt()
        return alpha_ts * z_s, sigma_ts

    def decoder_logits(self, z_0: torch.Tensor, gamma_0: torch.Tensor) -> torch.Tensor:
        """log p(x | z_0) over the 256 subpixel values, up to the log-softmax: [..., 256].

        p(x | z_0) is proportional to q(z_0 | x) (VDM Appendix C): logits
        -1/2 ((z_0 - alpha_0 x_v) / sigma_0)^2 for each bin centre x_v.
        """
        alpha_0, sigma_0 = alpha_sigma(_bc(gamma_0, z_0))
        x_vals = scale_pixels(torch.arange(VOCAB, device=z_0.device))
        diff = (z_0.unsqueeze(-1) - alpha_0.unsqueeze(-1) * x_vals) / sigma_0.unsqueeze(-1)
        return -0.5 * diff.square()

    # ---- loss terms ---------------------------------------------------------------
    def loss_recon(self, x: torch.Tensor, eps_0: torch.Tensor) -> torch.Tensor:
        """-log p(x | z_0) with z_0 ~ q(z_0 | x), summed over dimensions: [B]."""
        gamma_0 = self.gamma.gamma_0.expand(x.shape[0])
        z_0 = self.q_sample(scale_pixels(x), gamma_0, eps_0)
        logp = F.log_softmax(self.decoder_logits(z_0, gamma_0), dim=-1)
        logp_x = logp.gather(-1, x.long().unsqueeze(-1)).squeeze(-1)
        return -logp_x.flatten(1).sum(1)

    def loss_prior(self, x: torch.Tensor) -> torch.Tensor:
        """KL(q(z_1 | x) || N(0, I)) summed over dimensions: [B]."""
        gamma_1 = self.gamma.gamma_1
        alpha_1, sigma_1 = alpha_sigma(gamma_1)
        x_s = scale_pixels(x)
        var_1 = sigma_1.square()
        kl = 0.5 * (var_1 + (alpha_1 * x_s).square() - 1.0 - torch.log(var_1))
        return kl.flatten(1).sum(1)

    def loss_diff_continuous(self, x, t, eps, gamma_t=None, dgamma_dt=None):
        """1/2 gamma'(t) ||eps - eps_hat(z_t; t)||^2 (VDM eq. 17), [B]. x: uint8 pixels or
        float data-scale values."""
        if gamma_t is None:
            gamma_t, dgamma_dt = self.gamma.gamma_and_derivative(t)
        z_t = self.q_sample(_data_scale(x), gamma_t, eps)
        err = (eps - self.eps_hat(z_t, gamma_t)).float().square().flatten(1).sum(1)
        return 0.5 * dgamma_dt * err

    def loss_diff_discrete(self, x, i, T: int, eps):
        """T/2 expm1(gamma_t - gamma_s) ||eps - eps_hat(z_t; t)||^2, t = i/T, s = (i-1)/T,
        i in {1..T} (VDM eq. 15 written in gamma): an unbiased single-step estimate of the
        discrete-time diffusion loss L_T. [B]."""
        t = i.to(x.device, torch.float32) / T
        s = (i.to(x.device, torch.float32) - 1) / T
        gamma_t, gamma_s = self.gamma(t), self.gamma(s)
        z_t = self.q_sample(_data_scale(x), gamma_t, eps)
        err = (eps - self.eps_hat(z_t, gamma_t)).float().square().flatten(1).sum(1)
        return 0.5 * T * torch.expm1(gamma_t - gamma_s) * err

    def loss_step_discrete(self, x, i, T: int, eps):
        """The exact-in-i term of the discrete diffusion loss for step i (no factor T):
        KL(q(z_s | z_t, x) || p(z_s | z_t)) = 1/2 expm1(gamma_t - gamma_s) ||eps - eps_hat||^2."""
        return self.loss_diff_discrete(x, i, T, eps) / T


class TrainTerms(NamedTuple):
    loss: VDMLoss
    gamma_t: torch.Tensor     # schedule outputs, with the graph to the schedule parameters
    dgamma_dt: torch.Tensor
    gamma_leaf: torch.Tensor  # detached copies fed to the diffusion loss
    dgamma_leaf: torch.Tensor


def training_terms(model: "VDM", x, t, eps, eps_0) -> TrainTerms:
    """The VLB terms for a batch, arranged for VDM's variance-minimising schedule update:
    the diffusion loss sees detached copies of gamma_t and gamma'(t), so the caller can
    send the schedule d/d eta E[L_diff^2] = E[2 L_diff dL_diff/d eta] instead of dL/d eta."""
    gamma_t, dgamma_dt = model.gamma.gamma_and_derivative(t)
    gamma_leaf = gamma_t.detach().requires_grad_(True)
    dgamma_leaf = dgamma_dt.detach().requires_grad_(True)
    loss = VDMLoss(
        loss_recon=model.loss_recon(x, eps_0),
        loss_prior=model.loss_prior(x),
        loss_diff=model.loss_diff_continuous(x, t, eps, gamma_leaf, dgamma_leaf),
    )
    return TrainTerms(loss, gamma_t, dgamma_dt, gamma_leaf, dgamma_leaf)


def low_discrepancy_t(batch: int, generator: torch.Generator, device, offset: int = 0, world: int = 1):
    """Antithetic/low-discrepancy times: t_i = (u + (offset*B + i) / (world*B)) mod 1."""
    u = torch.rand((), generator=generator)
    idx = torch.arange(batch, dtype=torch.float64) + offset * batch
    return ((u + idx / (world * batch)) % 1.0).float().to(device)


def _data_scale(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels are mapped to bin centres; float input is taken as data scale already
    (the diffusion terms are defined for continuous data too, which the tests use)."""
    return x if x.is_floating_point() else scale_pixels(x)


def _bc(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-example ([B] or scalar) quantity against an image batch."""
    v = v.to(like.dtype) if v.is_floating_point() and like.is_floating_point() else v
    if v.dim() == 0:
        return v
    return v.reshape(v.shape + (1,) * (like.dim() - v.dim()))
