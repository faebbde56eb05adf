"""Training objectives beyond VDM's plain ELBO, each an option (defaults: VDM exactly).

Every variant is written as a weighted diffusion loss in gamma (Kingma & Gao 2023):

    L_w = 1/2 int_{gamma_0}^{gamma_1} w(gamma) E ||eps_target - eps_hat(z_gamma; gamma)||^2 dgamma,

estimated from one noise level per example drawn with density p: the estimate is
1/2 w(gamma) / p(gamma) ||.||^2. The ELBO is w = 1 with eps_target = eps; the reported
validation bpd is always that unweighted bound (``likelihood.py``), whatever is trained.

- t_sampling: ``low_discrepancy`` (VDM: uniform t, stratified; with a learned schedule
  this is VDM's variance-minimised proposal p(gamma) = 1 / gamma'(t)), ``importance``
  (iDDPM's loss-second-moment resampler over a t grid, ``training/resampler.py``; the
  estimate is reweighted by 1 / (N p_bin) so that it stays unbiased), ``lognormal`` (EDM:
  ln sigma ~ N(P_mean, P_std^2) with sigma = exp(gamma / 2), truncated to [gamma_0, gamma_1]).
- loss_weighting: ``elbo`` (w = 1) or ``edm``: EDM's lambda(sigma) ||D - y||^2 with
  lambda = 1 / c_out^2 and its lognormal p_train(sigma), which in eps units is
  w(gamma) = K N(gamma; 2 P_mean, (2 P_std)^2) (1 + exp(gamma) / sigma_data^2), K chosen so
  that w has the ELBO's total mass gamma_max - gamma_min.
- target: ``plain`` (eps) or ``stf`` (Stable Target Field, ``stable_target.py``).
- discrete_steps: 0 for the continuous-time loss; T > 0 trains VDM's discrete-time loss
  L_T (Kingma et al. 2021, eq. 13) at the levels t_i = i / T of the learned schedule: one
  step i per example, uniform in {1..T}, estimate T KL(q(z_s | z_t, x) || p(z_s | z_t)),
  s = t - 1/T, with learned variances when the network has them. Schedule and network both
  get the bound's plain gradient (in discrete time the interior of the schedule moves the
  bound). A codec run at that T pays exactly this bound.
- hybrid_lambda, vlb_steps: with ``NetworkConfig.learned_variance``, iDDPM's L_hybrid: the
  training loss plus hybrid_lambda times the T-step diffusion loss T * KL(q(z_s|z_t,x) ||
  p(z_s|z_t)) with s = t - 1/T, T = vlb_steps, in which the mean is detached so that it
  trains only the variance.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import torch


class TimeSampling(str, Enum):
    low_discrepancy = "low_discrepancy"
    importance = "importance"
    lognormal = "lognormal"


class LossWeighting(str, Enum):
    elbo = "elbo"
    edm = "edm"


class Target(str, Enum):
    plain = "plain"
    stf = "stf"


def _enum(cls, value, name):
    try:
        return cls(value)
    except ValueError:
        raise ValueError(f"unknown {name} {value!r}; choose one of {[v.value for v in cls]}") from None


@dataclass(frozen=True)
class ObjectiveConfig:
    t_sampling: TimeSampling = TimeSampling.low_discrepancy
    is_bins: int = 128              # importance sampling: t grid of N bins
    is_history: int = 10            # losses kept per bin (iDDPM: 10)
    is_uniform_prob: float = 0.001  # mixed-in uniform mass (iDDPM)
    p_mean: float = -1.2            # EDM: ln sigma ~ N(P_mean, P_std^2)
    p_std: float = 1.2
    loss_weighting: LossWeighting = LossWeighting.elbo
    target: Target = Target.plain
    stf_reference: int = 1024       # STF reference batch size, the example itself included
    hybrid_lambda: float = 0.001    # iDDPM L_hybrid (only with learned variances)
    vlb_steps: int = 128            # T of L_vlb: the discrete steps the variance is learned for
    discrete_steps: int = 0         # T of VDM's discrete-time loss; 0: continuous time

    def __post_init__(self):
        object.__setattr__(self, "t_sampling", _enum(TimeSampling, self.t_sampling, "t_sampling"))
        object.__setattr__(self, "loss_weighting", _enum(LossWeighting, self.loss_weighting, "loss_weighting"))
        object.__setattr__(self, "target", _enum(Target, self.target, "target"))
        if self.is_bins < 1 or self.is_history < 1 or not 0.0 <= self.is_uniform_prob <= 1.0:
            raise ValueError("need is_bins >= 1, is_history >= 1 and 0 <= is_uniform_prob <= 1")
        if self.p_std <= 0 or self.stf_reference < 1 or self.vlb_steps < 1 or self.hybrid_lambda < 0:
            raise ValueError("need p_std > 0, stf_reference >= 1, vlb_steps >= 1 and hybrid_lambda >= 0")
        if isinstance(self.discrete_steps, bool) or not isinstance(self.discrete_steps, int) or self.discrete_steps < 0:
            raise ValueError(f"discrete_steps must be 0 (continuous time) or a number of steps T >= 1, got {self.discrete_steps!r}")
        if self.discrete_steps and (self.t_sampling is not TimeSampling.low_discrepancy
                                    or self.loss_weighting is not LossWeighting.elbo or self.target is not Target.plain):
            raise ValueError("discrete_steps trains the discrete-time ELBO itself: it needs t_sampling 'low_discrepancy', "
                             "loss_weighting 'elbo' and target 'plain'")

    def to_dict(self) -> dict:
        return {k: (v.value if isinstance(v, Enum) else v) for k, v in self.__dict__.items()}

    @property
    def is_default(self) -> bool:
        return self == ObjectiveConfig()


# ---- EDM's lognormal noise levels, as a density over gamma = 2 ln sigma -------------
def lognormal_gamma_params(cfg: ObjectiveConfig) -> tuple[float, float]:
    """Mean and std of gamma = 2 ln sigma when ln sigma ~ N(P_mean, P_std^2)."""
    return 2.0 * cfg.p_mean, 2.0 * cfg.p_std


def truncated_normal_icdf(u: torch.Tensor, mu: float, s: float, lo: float, hi: float) -> tuple[torch.Tensor, torch.Tensor]:
    """gamma = F^-1(u) for N(mu, s^2) truncated to [lo, hi], and its density there
    (float64). u in [0, 1) stays stratified when it is low-discrepancy."""
    u = u.double()
    a = torch.special.ndtr(torch.tensor((lo - mu) / s, dtype=torch.float64))
    b = torch.special.ndtr(torch.tensor((hi - mu) / s, dtype=torch.float64))
    p = (a + u * (b - a)).clamp(1e-300, 1 - 1e-16)
    gamma = (mu + s * torch.special.ndtri(p)).clamp(lo, hi)
    density = torch.exp(-0.5 * ((gamma - mu) / s) ** 2) / (s * math.sqrt(2 * math.pi) * (b - a))
    return gamma, density


def edm_weight(gamma: torch.Tensor, cfg: ObjectiveConfig, sigma_data: float, gamma_min: float, gamma_max: float) -> torch.Tensor:
    """w(gamma) of EDM's training loss relative to the ELBO (module docstring)."""
    mu, s = lognormal_gamma_params(cfg)

    def raw(g):
        return torch.exp(-0.5 * ((g - mu) / s) ** 2) / (s * math.sqrt(2 * math.pi)) * (1.0 + torch.exp(g) / sigma_data**2)

    grid = torch.linspace(gamma_min, gamma_max, 20001, dtype=torch.float64)
    mass = float(torch.trapezoid(raw(grid), grid))
    k = (gamma_max - gamma_min) / mass
    return (k * raw(gamma.double())).to(gamma.dtype)
