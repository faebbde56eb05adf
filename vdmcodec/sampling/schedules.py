"""Which noise levels a sampler visits: float64 sigmas from sigma_max down, ending with 0.

Every schedule returns ``steps + 1`` values: ``steps`` noise levels, the first sigma_max and
the last sigma_min of the denoiser, then 0. A sampler takes one step per interval, the
last one from sigma_min to 0 (the final denoising). Stepping lives in ``samplers.py``.
Every schedule but ``model`` takes ``sigma_min`` / ``sigma_max`` overrides (default: the
denoiser's own range; an override outside it asks the network for levels it was not trained on).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .denoiser import Denoiser
from .registry import SamplingError, lookup


def _check_steps(steps: int) -> int:
    if int(steps) != steps or steps < 1:
        raise SamplingError(f"steps must be a positive integer (got {steps})")
    return int(steps)


def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas.to(torch.float64), sigmas.new_zeros(1, dtype=torch.float64)])


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """EDM's schedule (Karras et al. 2022, eq. 5): sigma_i = (sigma_max^(1/rho) + i/(N-1)
    (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho for i = 0..N-1, then 0."""
    steps = _check_steps(steps)
    if not 0 < sigma_min < sigma_max:
        raise SamplingError(f"need 0 < sigma_min < sigma_max (got {sigma_min}, {sigma_max})")
    if rho <= 0:
        raise SamplingError(f"rho must be positive (got {rho})")
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64) if steps > 1 else torch.zeros(1, dtype=torch.float64)
    max_inv_rho, min_inv_rho = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    sigmas[0] = sigma_max   # exact endpoints despite the power
    if steps > 1:
        sigmas[-1] = sigma_min
    return _append_zero(sigmas)


def loglinear_sigmas(steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Uniform in log sigma from sigma_max to sigma_min, then 0 (the ``model`` schedule of
    a model whose gamma(t) is linear in t)."""
    steps = _check_steps(steps)
    if not 0 < sigma_min < sigma_max:
        raise SamplingError(f"need 0 < sigma_min < sigma_max (got {sigma_min}, {sigma_max})")
    if steps > 1:
        sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), steps, dtype=torch.float64).exp()
    else:
        sigmas = torch.tensor([float(sigma_max)], dtype=torch.float64)
    sigmas[0] = sigma_max
    if steps > 1:
        sigmas[-1] = sigma_min
    return _append_zero(sigmas)


def vp_sigmas(steps: int, sigma_min: float, sigma_max: float, epsilon_s: float = 1e-3) -> torch.Tensor:
    """The VP time discretisation of EDM (Karras et al. 2022, Table 1, from Song et al. 2021):
    t_i = 1 + i/(N-1) (epsilon_s - 1), sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1), with
    beta_d and beta_min fitted so that sigma(1) = sigma_max and sigma(epsilon_s) = sigma_min (as
    EDM's ``ablation_sampler`` does), then 0."""
    steps = _check_steps(steps)
    if not 0 < sigma_min < sigma_max:
        raise SamplingError(f"need 0 < sigma_min < sigma_max (got {sigma_min}, {sigma_max})")
    if not 0 < epsilon_s < 1:
        raise SamplingError(f"epsilon_s must be in (0, 1) (got {epsilon_s})")
    l0, l1 = math.log1p(sigma_min**2), math.log1p(sigma_max**2)
    beta_d = 2 * (l0 / epsilon_s - l1) / (epsilon_s - 1)
    beta_min = l1 - 0.5 * beta_d
    t = torch.linspace(1, epsilon_s, steps, dtype=torch.float64) if steps > 1 else torch.ones(1, dtype=torch.float64)
    sigmas = torch.expm1(0.5 * beta_d * t**2 + beta_min * t).sqrt()
    sigmas[0] = sigma_max
    if steps > 1:
        sigmas[-1] = sigma_min
    if not torch.all(sigmas[1:] < sigmas[:-1]):
        raise SamplingError("the VP schedule is not decreasing for this range; use another schedule")
    return _append_zero(sigmas)


def respace(trained_steps: int, steps: int) -> list[int]:
    """iDDPM respacing (Nichol & Dhariwal 2021, ``space_timesteps``): ``steps`` of the
    ``trained_steps + 1`` levels t = i/T, i = 0..T, of a T-step model, evenly spaced with
    rounding and always including both ends. Returns the indices i, descending (t = 1 first).
    ``steps = T + 1`` gives every level, i.e. the model's own T-step chain."""
    T, K = int(trained_steps), _check_steps(steps)
    if T < 1:
        raise SamplingError(f"trained_steps must be positive (got {trained_steps})")
    if K > T + 1:
        raise SamplingError(f"cannot pick {K} levels from a {T}-step model (at most {T + 1})")
    if K == 1:
        return [T]
    frac_stride = T / (K - 1)
    return sorted({round(k * frac_stride) for k in range(K)}, reverse=True)


def model_sigmas(denoiser: Denoiser, steps: int, trained_steps: int | None = None) -> torch.Tensor:
    """Uniform in t under the denoiser's own gamma(t): sigma = exp(gamma(t)/2) at
    t = 1, ..., 0 (``steps`` levels), then 0. With ``trained_steps`` = T the levels are the
    ``respace(T, steps)`` subset of the T-step grid t = i/T (iDDPM respacing)."""
    steps = _check_steps(steps)
    if trained_steps is None:
        t = torch.linspace(1, 0, steps, dtype=torch.float64) if steps > 1 else torch.ones(1, dtype=torch.float64)
    else:
        t = torch.tensor(respace(trained_steps, steps), dtype=torch.float64) / int(trained_steps)
    gamma_t = denoiser.gamma(t).to(torch.float64)
    sigmas = torch.exp(gamma_t / 2)
    if not torch.all(sigmas[1:] < sigmas[:-1]):
        raise SamplingError("the model's gamma(t) is not increasing in t; cannot build a schedule")
    return _append_zero(sigmas)


@dataclass(frozen=True)
class ScheduleInfo:
    name: str
    fn: Callable[..., torch.Tensor]   # (denoiser, steps, **options) -> sigmas
    description: str


def _range(denoiser, sigma_min, sigma_max) -> tuple[float, float]:
    lo = denoiser.sigma_min if sigma_min is None else float(sigma_min)
    hi = denoiser.sigma_max if sigma_max is None else float(sigma_max)
    if not 0 < lo < hi:
        raise SamplingError(f"need 0 < sigma_min < sigma_max (got {lo}, {hi})")
    return lo, hi


def _karras(denoiser, steps, rho: float = 7.0, sigma_min=None, sigma_max=None):
    return karras_sigmas(steps, *_range(denoiser, sigma_min, sigma_max), rho)


def _loglinear(denoiser, steps, sigma_min=None, sigma_max=None):
    return loglinear_sigmas(steps, *_range(denoiser, sigma_min, sigma_max))


def _vp(denoiser, steps, epsilon_s: float = 1e-3, sigma_min=None, sigma_max=None):
    return vp_sigmas(steps, *_range(denoiser, sigma_min, sigma_max), epsilon_s)


def _adaptive(denoiser, steps, cost=None, sigma_min=None, sigma_max=None, **options):
    from .adaptive import adaptive_sigmas

    if sigma_min is not None or sigma_max is not None:
        options["sigma_range"] = _range(denoiser, sigma_min, sigma_max)
    return adaptive_sigmas(denoiser, steps, cost=cost, **options)


SCHEDULES: dict[str, ScheduleInfo] = {
    "model": ScheduleInfo("model", model_sigmas,
                          "uniform in t under the model's gamma schedule (iDDPM respacing with --trained-steps)"),
    "karras": ScheduleInfo("karras", _karras, "EDM's rho schedule between the model's sigma_min and sigma_max (rho=7)"),
    "loglinear": ScheduleInfo("loglinear", _loglinear, "uniform in log sigma between sigma_min and sigma_max"),
    "exponential": ScheduleInfo("exponential", _loglinear,
                                "k-diffusion's name for loglinear (uniform in log sigma)"),
    "vp": ScheduleInfo("vp", _vp, "EDM's VP time steps (Song et al. 2021), fitted to sigma_min and sigma_max"),
    "adaptive": ScheduleInfo("adaptive", _adaptive,
                             "score-optimal schedule (Williams et al. 2024), estimated once per model and cached"),
}


def make_sigmas(name: str, denoiser: Denoiser, steps: int, **options) -> torch.Tensor:
    """The sigmas of schedule ``name`` (see ``SCHEDULES``) for ``denoiser``."""
    info = lookup(SCHEDULES, name, "schedule")
    try:
        return info.fn(denoiser, steps, **options)
    except TypeError as e:
        if "unexpected keyword" in str(e):
            raise SamplingError(f"schedule {name!r}: {e}") from None
        raise
