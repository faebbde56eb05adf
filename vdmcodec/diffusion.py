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

from .networks import ConditioningCache, Denoiser, NetworkConfig, NetworkKind
from .objective import LossWeighting, ObjectiveConfig, Target, TimeSampling, edm_weight, lognormal_gamma_params, truncated_normal_icdf
from .preconditioning import Preconditioning, edm_vp_scales
from .schedules import NoiseSchedule, ScheduleConfig, ScheduleKind, alpha_sigma, make_schedule
from .stable_target import stf_eps_target

VOCAB = 256


@dataclass(frozen=True)
class ModelConfig:
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    # the network sees t_norm = (gamma_t - gamma_min) / (gamma_max - gamma_min) with these
    # fixed values, so that a learned endpoint does not shift the conditioning
    cond_gamma_min: float = -13.3
    cond_gamma_max: float = 5.0
    # how the network output becomes eps_hat (preconditioning.py); sigma_data: EDM's data std
    precond: Preconditioning = Preconditioning.vdm
    sigma_data: float = 0.5

    def __post_init__(self):
        try:
            object.__setattr__(self, "precond", Preconditioning(self.precond))
        except ValueError:
            raise ValueError(f"unknown precond {self.precond!r}; choose one of {[p.value for p in Preconditioning]}") from None
        if not self.sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got {self.sigma_data}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["schedule"]["kind"] = ScheduleKind(self.schedule.kind).value
        d["network"]["kind"] = NetworkKind(self.network.kind).value
        d["precond"] = Preconditioning(self.precond).value
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

    amp_dtype: torch.dtype | None = None  # autocast dtype for the network (training; the codec's bfloat16 arithmetic)

    # ---- the denoiser -------------------------------------------------------------
    def t_norm(self, gamma_t: torch.Tensor) -> torch.Tensor:
        lo, hi = self.cfg.cond_gamma_min, self.cfg.cond_gamma_max
        return (gamma_t - lo) / (hi - lo)

    @property
    def learned_variance(self) -> bool:
        return bool(self.cfg.network.learned_variance)

    def eps_hat(self, z_t: torch.Tensor, gamma_t: torch.Tensor) -> torch.Tensor:
        """Predicted noise; gamma_t has shape [B]. Drops the learned-variance channels."""
        return self.eps_and_v(z_t, gamma_t)[0]

    def eps_and_v(self, z_t: torch.Tensor, gamma_t: torch.Tensor,
                  cache: ConditioningCache | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """eps_hat and, with learned variances, iDDPM's interpolation v = tanh(net output) in
        [-1, 1] per subpixel (else None). With EDM preconditioning the network sees
        z_t / sqrt(v_t) and predicts a residual (preconditioning.py). ``cache``: the
        network's time conditioning kept across calls (inference; networks.ConditioningCache)."""
        C = z_t.shape[1]
        edm = self.cfg.precond is Preconditioning.edm
        scales = edm_vp_scales(_bc(gamma_t, z_t), self.cfg.sigma_data) if edm else None
        net_in = z_t * scales.in_scale if edm else z_t
        t_norm = self.t_norm(gamma_t)
        if self.amp_dtype is not None:
            with torch.autocast(z_t.device.type, dtype=self.amp_dtype):
                out = self._net(net_in, t_norm, cache)
            eps_hat = out[:, :C].float()
            v_raw = out[:, C:].float()
        else:
            out = self._net(net_in, t_norm, cache)
            eps_hat, v_raw = out[:, :C], out[:, C:]
        if edm:
            eps_hat = scales.eps_skip * z_t - scales.eps_out * eps_hat
        return eps_hat, (torch.tanh(v_raw) if self.learned_variance else None)

    def _net(self, z, t_norm, cache):
        return self.net(z, t_norm) if cache is None else self.net(z, t_norm, cache)  # any net(z, t_norm) without one

    def forward(self, x, t, eps, eps_0, objective: ObjectiveConfig | None = None, is_weight=None, x_extra=None) -> "TrainTerms":
        """Training forward pass (what DistributedDataParallel wraps)."""
        return training_terms(self, x, t, eps, eps_0, objective, is_weight, x_extra)

    # ---- forward process ----------------------------------------------------------
    @staticmethod
    def q_sample(x_s: torch.Tensor, gamma_t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """z_t = alpha_t x + sigma_t eps."""
        alpha_t, sigma_t = alpha_sigma(_bc(gamma_t, x_s))
        return alpha_t * x_s + sigma_t * eps

    # ---- reverse process ----------------------------------------------------------
    def p_mean_std(self, z_t, gamma_t, gamma_s, eps_hat=None, v=None):
        """Mean and std of p(z_s | z_t) = q(z_s | z_t, x = x_hat(z_t)) (VDM eq. 26-29):
        mu = alpha_s / alpha_t (z_t + sigma_t expm1(gamma_s - gamma_t) eps_hat),
        var = sigma_s^2 (-expm1(gamma_s - gamma_t)) (DDPM's beta-tilde), or with learned
        variances exp(frac log beta + (1 - frac) log beta-tilde), frac = (v + 1) / 2, where
        beta = sigma_{t|s}^2 = sigma_t^2 (-expm1(gamma_s - gamma_t)) (iDDPM eq. 15)."""
        if eps_hat is None:
            eps_hat, v = self.eps_and_v(z_t, gamma_t)
        elif v is None and self.learned_variance:
            raise ValueError("this model has learned variances: pass v along with eps_hat")
        g_t, g_s = _bc(gamma_t, z_t), _bc(gamma_s, z_t)
        alpha_t, sigma_t = alpha_sigma(g_t)
        alpha_s, sigma_s = alpha_sigma(g_s)
        c = -torch.expm1(g_s - g_t)
        mean = alpha_s / alpha_t * (z_t - c * sigma_t * eps_hat)
        std = sigma_s * c.sqrt()
        if v is not None:
            std = std * torch.exp(0.5 * log_variance_ratio(v, g_t, g_s))
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
        return T * self.loss_step_between(x, self.gamma(t), self.gamma(s), eps)

    def loss_step_discrete(self, x, i, T: int, eps):
        """The exact-in-i term of the discrete diffusion loss for step i (no factor T):
        KL(q(z_s | z_t, x) || p(z_s | z_t)) = 1/2 expm1(gamma_t - gamma_s) ||eps - eps_hat||^2
        (the general Gaussian KL of ``kl_step`` with learned variances)."""
        return self.loss_diff_discrete(x, i, T, eps) / T

    def loss_step_between(self, x, gamma_t, gamma_s, eps):
        """KL(q(z_s | z_t, x) || p(z_s | z_t)) summed over dimensions, [B], for one step
        between any two levels gamma_s < gamma_t ([B] each): the T-step loss's term at
        levels that need not be uniform in t (the chain's fitted times, coding/levels.py)."""
        z_t = self.q_sample(_data_scale(x), gamma_t, eps)
        eps_hat, v = self.eps_and_v(z_t, gamma_t)
        if v is not None:
            return kl_step(eps, eps_hat, v, gamma_t, gamma_s)
        err = (eps - eps_hat).float().square().flatten(1).sum(1)
        return 0.5 * torch.expm1(gamma_t - gamma_s) * err


def log_variance_ratio(v: torch.Tensor, gamma_t: torch.Tensor, gamma_s: torch.Tensor) -> torch.Tensor:
    """log(var_p / beta-tilde) for iDDPM's learned variance: frac (log beta - log beta-tilde)
    with frac = (v + 1) / 2 and beta / beta-tilde = sigma_t^2 / sigma_s^2, so it lies in
    [0, log(sigma_t^2 / sigma_s^2)]."""
    return 0.5 * (v + 1) * (F.logsigmoid(gamma_t) - F.logsigmoid(gamma_s))


def kl_step(eps, eps_hat, v, gamma_t, gamma_s) -> torch.Tensor:
    """KL(q(z_s | z_t, x) || p(z_s | z_t)) summed over dimensions, [B], for a p with learned
    variances. With r = log(var_p / beta-tilde) (``log_variance_ratio``) and the mean gap
    |mu_q - mu_p|^2 / beta-tilde = expm1(gamma_t - gamma_s) (eps - eps_hat)^2:
    KL = 1/2 (r + expm1(-r) + exp(-r) expm1(gamma_t - gamma_s) (eps - eps_hat)^2) per
    dimension (r = 0 gives VDM's 1/2 expm1(gamma_t - gamma_s) ||eps - eps_hat||^2)."""
    g_t, g_s = _bc(gamma_t, eps), _bc(gamma_s, eps)
    r = log_variance_ratio(v.float(), g_t, g_s)
    err2 = (eps - eps_hat).float().square()
    kl = 0.5 * (r + torch.expm1(-r) + torch.exp(-r) * torch.expm1(g_t - g_s) * err2)
    return kl.flatten(1).sum(1)


class TrainTerms(NamedTuple):
    loss: VDMLoss             # the trained terms (loss_diff as weighted by the objective)
    gamma_t: torch.Tensor     # schedule outputs, with the graph to the schedule parameters
    dgamma_dt: torch.Tensor
    gamma_leaf: torch.Tensor  # detached copies fed to the diffusion loss
    dgamma_leaf: torch.Tensor
    elbo_diff: torch.Tensor | None = None  # unbiased estimate of the continuous-time L_diff, [B], no graph
    extra: torch.Tensor | None = None      # further trained terms (iDDPM's lambda L_vlb), [B]

    @property
    def objective(self) -> torch.Tensor:
        """What is minimised, per example: the loss terms plus ``extra``."""
        return self.loss.total if self.extra is None else self.loss.total + self.extra


def training_terms(model: "VDM", x, t, eps, eps_0, objective: ObjectiveConfig | None = None,
                   is_weight: torch.Tensor | None = None, x_extra: torch.Tensor | None = None) -> TrainTerms:
    """The VLB terms for a batch, arranged for VDM's variance-minimising schedule update:
    the diffusion loss sees detached copies of gamma_t and gamma'(t), so the caller can
    send the schedule d/d eta E[L_diff^2] = E[2 L_diff dL_diff/d eta] instead of dL/d eta.

    ``objective`` (objective.py; None: VDM's ELBO) selects the weighting, the target and
    how ``t`` is read: a time in [0, 1] (with ``is_weight`` = 1 / (N p) from an importance
    sampler), or for lognormal sampling a uniform u mapped to gamma by the truncated
    normal's inverse CDF. ``x_extra``: the STF reference examples beyond the batch."""
    obj = objective if objective is not None else ObjectiveConfig()
    if obj.discrete_steps:
        return discrete_terms(model, x, t, eps, eps_0, obj)
    B = x.shape[0]
    elbo_w = is_weight
    if obj.t_sampling is TimeSampling.lognormal:
        # gamma = gamma_0 + (gamma_1 - gamma_0) r keeps the pathwise gradient to the endpoints;
        # r has density p_gamma(gamma) (gamma_1 - gamma_0)
        g0, g1 = model.gamma.gamma_0, model.gamma.gamma_1
        g0d, g1d = float(g0.detach()), float(g1.detach())
        mu, s = lognormal_gamma_params(obj)
        gamma_det, density = truncated_normal_icdf(t, mu, s, g0d, g1d)
        r = ((gamma_det - g0d) / (g1d - g0d)).to(g0.dtype)
        gamma_t = g0 + (g1 - g0) * r
        dgamma_dt = (g1 - g0).expand(B)
        elbo_w = (1.0 / (density * (g1d - g0d))).to(g0.dtype)
    else:
        gamma_t, dgamma_dt = model.gamma.gamma_and_derivative(t)
    gamma_leaf = gamma_t.detach().requires_grad_(True)
    dgamma_leaf = dgamma_dt.detach().requires_grad_(True)
    x_s = _data_scale(x)
    z_t = model.q_sample(x_s, gamma_leaf, eps)
    eps_hat, v = model.eps_and_v(z_t, gamma_leaf)
    err = (eps - eps_hat).float().square().flatten(1).sum(1)
    elbo_diff = 0.5 * dgamma_leaf * err
    if elbo_w is not None:
        elbo_diff = elbo_diff * elbo_w
    loss_diff = elbo_diff
    if obj.target is Target.stf or obj.loss_weighting is not LossWeighting.elbo:
        if obj.target is Target.stf:
            extra_s = None if x_extra is None else _data_scale(x_extra)
            target = stf_eps_target(z_t.detach(), gamma_leaf.detach(), x_s, eps, extra_s, obj.stf_reference)
            err = (target - eps_hat).float().square().flatten(1).sum(1)
        loss_diff = 0.5 * dgamma_leaf * err
        if elbo_w is not None:
            loss_diff = loss_diff * elbo_w
        if obj.loss_weighting is LossWeighting.edm:
            sc = model.cfg.schedule
            loss_diff = loss_diff * edm_weight(gamma_leaf.detach(), obj, model.cfg.sigma_data, sc.gamma_min, sc.gamma_max)
    extra = None
    if v is not None and obj.hybrid_lambda > 0:
        # iDDPM's L_hybrid: lambda T KL(q(z_s|z_t,x) || p(z_s|z_t)) at s = t - 1/T with the
        # mean detached, so that it trains the variance only
        T = obj.vlb_steps
        with torch.no_grad():
            t_now = model.gamma.t_of_gamma(gamma_det.to(g0.dtype)) if obj.t_sampling is TimeSampling.lognormal else t
            gamma_s = model.gamma((t_now - 1.0 / T).clamp(min=0.0)).to(gamma_leaf.dtype)
        vlb = T * kl_step(eps, eps_hat.detach(), v, gamma_leaf.detach(), gamma_s)
        extra = obj.hybrid_lambda * (vlb if is_weight is None else vlb * is_weight)
    loss = VDMLoss(loss_recon=model.loss_recon(x, eps_0), loss_prior=model.loss_prior(x), loss_diff=loss_diff)
    return TrainTerms(loss, gamma_t, dgamma_dt, gamma_leaf, dgamma_leaf, elbo_diff.detach(), extra)


def discrete_terms(model: "VDM", x, t, eps, eps_0, objective: ObjectiveConfig) -> TrainTerms:
    """VDM's discrete-time loss L_T (eq. 13) for a batch: each example's t in [0, 1) picks the
    step i = floor(t T) + 1 in {1..T}; the estimate is T KL(q(z_s | z_t, x) || p(z_s | z_t))
    at t = i / T, s = (i - 1) / T (with the learned variances when the network has them). The
    returned levels are detached: the schedule is trained by this bound's own gradient,
    through gamma_t and gamma_s, not by the continuous-time variance rule."""
    T = objective.discrete_steps
    i = (torch.floor(t.double() * T) + 1).clamp(1, T)
    gamma_t = model.gamma((i / T).to(torch.float32))
    gamma_s = model.gamma(((i - 1) / T).to(torch.float32))
    z_t = model.q_sample(_data_scale(x), gamma_t, eps)
    eps_hat, v = model.eps_and_v(z_t, gamma_t)
    if v is not None:
        kl = kl_step(eps, eps_hat, v, gamma_t, gamma_s)
    else:
        kl = 0.5 * torch.expm1(gamma_t - gamma_s) * (eps - eps_hat).float().square().flatten(1).sum(1)
    loss_diff = T * kl
    loss = VDMLoss(loss_recon=model.loss_recon(x, eps_0), loss_prior=model.loss_prior(x), loss_diff=loss_diff)
    levels = gamma_t.detach()
    return TrainTerms(loss, levels, levels, levels, levels, loss_diff.detach(), None)


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
