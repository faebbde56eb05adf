"""Noise schedules gamma(t) = -log SNR(t) on t in [0, 1].

Every schedule is an ``nn.Module`` whose ``forward(t)`` returns ``gamma_t``; from it
``alpha_t^2 = sigmoid(-gamma_t)`` and ``sigma_t^2 = sigmoid(gamma_t)`` (VDM, Kingma et al.
2021, eq. 3-4). Monotonicity and the endpoints hold by construction, never by a penalty.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import torch
import torch.nn.functional as F
from torch import nn


class ScheduleKind(str, Enum):
    learned = "learned"          # VDM's monotone network with learnable endpoints
    learned_linear = "learned_linear"
    fixed_linear = "fixed_linear"
    cosine = "cosine"            # iDDPM cosine, in log-SNR form
    linear_beta = "linear_beta"  # DDPM linear betas, continuous-time limit


@dataclass(frozen=True)
class ScheduleConfig:
    kind: ScheduleKind = ScheduleKind.learned
    gamma_min: float = -13.3
    gamma_max: float = 5.0
    hidden: int = 1024  # width of the monotone network (VDM uses 1024)


class NoiseSchedule(nn.Module):
    """Shared interface: gamma(t), its derivative and the derived alpha/sigma."""

    def forward(self, t: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def gamma_and_derivative(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """gamma(t) and d gamma / dt, differentiable w.r.t. the schedule parameters."""
        with torch.enable_grad():
            t = t.detach().requires_grad_(True)
            gamma_t = self(t)
            (dgamma_dt,) = torch.autograd.grad(gamma_t.sum(), t, create_graph=True)
        return gamma_t, dgamma_dt

    def endpoint_parameters(self) -> list[nn.Parameter]:
        """Parameters that move gamma(0) or gamma(1) (VDM trains them on the VLB; the rest of
        a learned schedule only shapes the path between them, which leaves the continuous
        VLB unchanged, and is trained to minimise the loss variance)."""
        return []

    @torch.no_grad()
    def t_of_gamma(self, gamma: torch.Tensor, iterations: int = 40) -> torch.Tensor:
        """The inverse t = gamma^-1(gamma) by bisection on [0, 1] (every schedule is
        increasing); values outside [gamma(0), gamma(1)] map to the nearest end."""
        lo = torch.zeros_like(gamma)
        hi = torch.ones_like(gamma)
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            below = self(mid) < gamma
            lo = torch.where(below, mid, lo)
            hi = torch.where(below, hi, mid)
        return 0.5 * (lo + hi)

    @property
    def gamma_0(self) -> torch.Tensor:
        return self(torch.zeros(1, device=self._device(), dtype=self._dtype()))[0]

    @property
    def gamma_1(self) -> torch.Tensor:
        return self(torch.ones(1, device=self._device(), dtype=self._dtype()))[0]

    def _device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    def _dtype(self) -> torch.dtype:
        for p in self.parameters():
            return p.dtype
        for b in self.buffers():
            return b.dtype
        return torch.float32


def alpha_sigma(gamma_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha_t, sigma_t (standard deviations) from gamma_t = -log SNR."""
    return torch.sigmoid(-gamma_t).sqrt(), torch.sigmoid(gamma_t).sqrt()


class FixedLinear(NoiseSchedule):
    """gamma(t) = gamma_min + (gamma_max - gamma_min) t, no parameters."""

    def __init__(self, gamma_min: float, gamma_max: float):
        super().__init__()
        self.register_buffer("g0", torch.tensor(float(gamma_min)))
        self.register_buffer("g1", torch.tensor(float(gamma_max)))

    def forward(self, t):
        return self.g0 + (self.g1 - self.g0) * t


class LearnedLinear(NoiseSchedule):
    """gamma(t) = gamma_0 + |w| t with learnable scalar endpoints (monotone by |w|)."""

    def __init__(self, gamma_min: float, gamma_max: float):
        super().__init__()
        self.b = nn.Parameter(torch.tensor(float(gamma_min)))
        self.w = nn.Parameter(torch.tensor(float(gamma_max - gamma_min)))

    def forward(self, t):
        return self.b + self.w.abs() * t

    def endpoint_parameters(self) -> list[nn.Parameter]:
        return [self.b, self.w]


class DenseMonotone(nn.Linear):
    """Linear layer with non-negative weights (|W|), hence monotone non-decreasing."""

    def forward(self, x):
        return F.linear(x, self.weight.abs(), self.bias)


class LearnedMonotone(NoiseSchedule):
    """VDM's learned schedule (Appendix H): a monotone network, rescaled to endpoints.

    gamma_tilde(t) = l1(t) + l3(sigmoid(l2(l1(t)))) with non-negative weights, then
    gamma(t) = gamma_0 + (gamma_1 - gamma_0) (gamma_tilde(t) - gamma_tilde(0)) /
    (gamma_tilde(1) - gamma_tilde(0)); gamma_0 and gamma_1 = gamma_0 + softplus(d) are
    learnable, so gamma(0) = gamma_0 < gamma(1) = gamma_1 hold exactly.
    """

    def __init__(self, gamma_min: float, gamma_max: float, hidden: int = 1024):
        super().__init__()
        self.l1 = DenseMonotone(1, 1)
        self.l2 = DenseMonotone(1, hidden)
        self.l3 = DenseMonotone(hidden, 1, bias=False)
        with torch.no_grad():
            self.l1.weight.fill_(1.0)
            self.l1.bias.zero_()
            nn.init.normal_(self.l2.weight, std=1.0)
            nn.init.normal_(self.l3.weight, std=1.0 / hidden)
        self.gamma_0_param = nn.Parameter(torch.tensor(float(gamma_min)))
        span = float(gamma_max - gamma_min)
        # inverse softplus so that softplus(d) == span
        self.log_span = nn.Parameter(torch.tensor(span + math.log(-math.expm1(-span))))

    def endpoint_parameters(self) -> list[nn.Parameter]:
        return [self.gamma_0_param, self.log_span]

    def _gamma_tilde(self, t):
        h = self.l1(t.reshape(-1, 1))
        return (h + self.l3(torch.sigmoid(self.l2(h)))).reshape(t.shape)

    def forward(self, t):
        ends = self._gamma_tilde(torch.tensor([0.0, 1.0], device=t.device, dtype=t.dtype))
        frac = (self._gamma_tilde(t) - ends[0]) / (ends[1] - ends[0])
        return self.gamma_0_param + F.softplus(self.log_span) * frac


class Cosine(NoiseSchedule):
    """iDDPM's cosine schedule in log-SNR form, truncated to [gamma_min, gamma_max].

    iDDPM sets alpha_bar(t) ~ cos^2(pi/2 (t + s)/(1 + s)), i.e. gamma = 2 log tan(u) with u
    linear in t. Here u runs linearly between the angles whose gamma is gamma_min and
    gamma_max, which plays the role of iDDPM's offset s and its clipping of beta near t=1.
    """

    def __init__(self, gamma_min: float, gamma_max: float):
        super().__init__()
        self.register_buffer("u0", torch.tensor(math.atan(math.exp(gamma_min / 2))))
        self.register_buffer("u1", torch.tensor(math.atan(math.exp(gamma_max / 2))))

    def forward(self, t):
        u = self.u0 + (self.u1 - self.u0) * t
        return 2.0 * torch.log(torch.tan(u))


class LinearBeta(NoiseSchedule):
    """DDPM's linear betas (1e-4 .. 0.02 over N=1000 steps) in the continuous limit.

    -log alpha_bar(t) = I(t) = N (beta_0 t + (beta_1 - beta_0) t^2 / 2), so
    gamma = log(expm1(I)). t is mapped to [1/N, 1] so that gamma(0) is finite (DDPM's first
    step), making gamma(0) = log(expm1(beta_0)) ~ -9.2 and gamma(1) ~ 10.0.
    """

    def __init__(self, beta_0: float = 1e-4, beta_1: float = 0.02, n: int = 1000):
        super().__init__()
        self.beta_0, self.beta_1, self.n = beta_0, beta_1, n

    def forward(self, t):
        tau = (t * (self.n - 1) + 1) / self.n
        integral = self.n * (self.beta_0 * tau + 0.5 * (self.beta_1 - self.beta_0) * tau**2)
        return torch.log(torch.expm1(integral))


def make_schedule(cfg: ScheduleConfig) -> NoiseSchedule:
    try:
        kind = ScheduleKind(cfg.kind)
    except ValueError:
        raise ValueError(f"unknown schedule {cfg.kind!r}; choose one of {[k.value for k in ScheduleKind]}") from None
    if kind is ScheduleKind.learned:
        return LearnedMonotone(cfg.gamma_min, cfg.gamma_max, cfg.hidden)
    if kind is ScheduleKind.learned_linear:
        return LearnedLinear(cfg.gamma_min, cfg.gamma_max)
    if kind is ScheduleKind.fixed_linear:
        return FixedLinear(cfg.gamma_min, cfg.gamma_max)
    if kind is ScheduleKind.cosine:
        return Cosine(cfg.gamma_min, cfg.gamma_max)
    if kind is ScheduleKind.linear_beta:
        return LinearBeta()
    raise ValueError(f"unknown schedule {cfg.kind!r}; choose one of {[k.value for k in ScheduleKind]}")
