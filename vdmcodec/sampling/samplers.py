"""Samplers: free functions with one signature, and the name -> sampler registry.

    sample_NAME(denoiser, x, sigmas, *, noise=None, callback=None, progress=False, **options)

``denoiser`` follows ``denoiser.Denoiser`` (D(x, sigma) -> x0_hat, VE); ``x`` is the start,
already at noise level ``sigmas[0]`` (e.g. ``sigmas[0] * noise.randn(shape)``); ``sigmas``
is a decreasing float64 schedule, normally ending with 0 (``schedules.py``). ``noise`` is a
``NoiseSource``; stochastic samplers require it, nothing draws from a global RNG.
``callback`` gets a dict (i, x, sigma, sigma_next, denoised) after every step. Options are
keyword arguments checked against the sampler's frozen options dataclass. All bookkeeping is
float64; the result is float64 ``x`` at ``sigmas[-1]``.

Notation (Karras et al. 2022): sigma is the VE noise std; the probability-flow ODE is
dx/dsigma = (x - D(x, sigma)) / sigma (EDM eq. 3 with s(t) = 1, sigma(t) = t).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Callable, Optional

import torch
from tqdm.auto import tqdm

from .denoiser import Denoiser
from .noise import NoiseSource
from .registry import SamplingError, lookup, make_options

Callback = Optional[Callable[[dict], None]]


# ---- options ---------------------------------------------------------------------
@dataclass(frozen=True)
class NoOptions:
    """The sampler takes no options."""


class ReverseVariance(str, Enum):
    small = "small"      # posterior std: sigma_s^2 (1 - SNR_t / SNR_s) as a variance (DDPM's beta-tilde)
    large = "large"      # forward step std sigma_{t|s} (DDPM's beta)
    learned = "learned"  # iDDPM: log-variance interpolated between the two by the network's v


@dataclass(frozen=True)
class AncestralOptions:
    variance: ReverseVariance = ReverseVariance.small

    def __post_init__(self):
        try:
            object.__setattr__(self, "variance", ReverseVariance(self.variance))
        except ValueError:
            raise SamplingError(f"unknown variance {self.variance!r}; choose one of: "
                                f"{', '.join(v.value for v in ReverseVariance)}") from None


@dataclass(frozen=True)
class DDIMOptions:
    eta: float = 0.0  # 0: deterministic DDIM; 1: ancestral sampling with the small variance

    def __post_init__(self):
        if not 0.0 <= float(self.eta) <= 1.0:
            raise SamplingError(f"eta must be in [0, 1] (got {self.eta})")


@dataclass(frozen=True)
class EDMOptions:
    """EDM Algorithm 2: churn S_churn (0 = deterministic Heun), applied for sigma in
    [S_tmin, S_tmax], with fresh noise scaled by S_noise."""

    S_churn: float = 0.0
    S_tmin: float = 0.0
    S_tmax: float = math.inf
    S_noise: float = 1.0

    def __post_init__(self):
        if self.S_churn < 0 or self.S_noise < 0 or self.S_tmin < 0 or self.S_tmin > self.S_tmax:
            raise SamplingError("EDM options need S_churn >= 0, S_noise >= 0 and 0 <= S_tmin <= S_tmax "
                                f"(got S_churn={self.S_churn}, S_tmin={self.S_tmin}, S_tmax={self.S_tmax}, "
                                f"S_noise={self.S_noise})")


# ---- shared bookkeeping -------------------------------------------------------------
def _prepare(x: torch.Tensor, sigmas) -> tuple[torch.Tensor, list[float]]:
    sig = torch.as_tensor(sigmas, dtype=torch.float64).flatten().cpu()
    if sig.numel() < 2:
        raise SamplingError("a schedule needs at least two sigmas (one step)")
    if not torch.all(sig[1:] < sig[:-1]) or not torch.all(sig[:-1] > 0) or sig[-1] < 0:
        raise SamplingError("sigmas must be strictly decreasing and positive, except a final 0")
    return x.to(torch.float64), sig.tolist()


def _need_noise(noise: NoiseSource | None, name: str) -> NoiseSource:
    if noise is None:
        raise SamplingError(f"sampler {name!r} is stochastic here: pass noise=NoiseSource(seed, indices)")
    return noise


def _sigma_batch(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return torch.full((x.shape[0],), sigma, dtype=torch.float64, device=x.device)


def _denoise(denoiser: Denoiser, x: torch.Tensor, sigma: float) -> torch.Tensor:
    return denoiser(x, _sigma_batch(x, sigma)).to(torch.float64)


def _steps(n: int, progress: bool, name: str):
    return tqdm(range(n), desc=name, disable=not progress, unit="step", leave=False)


def _report(callback: Callback, i, x, sigma, sigma_next, denoised):
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "denoised": denoised})


# ---- samplers ------------------------------------------------------------------------
def sample_euler(denoiser, x, sigmas, *, noise=None, callback=None, progress=False, **options):
    """EDM's deterministic first-order sampler: Euler steps on the probability-flow ODE."""
    make_options(NoOptions, options, "euler")
    x, sig = _prepare(x, sigmas)
    for i in _steps(len(sig) - 1, progress, "euler"):
        sigma, sigma_next = sig[i], sig[i + 1]
        denoised = _denoise(denoiser, x, sigma)
        d = (x - denoised) / sigma                       # dx/dsigma, EDM eq. 3
        x = denoised if sigma_next == 0 else x + (sigma_next - sigma) * d
        _report(callback, i, x, sigma, sigma_next, denoised)
    return x


def _heun_step(denoiser, x, sigma, sigma_next):
    """One step of EDM Algorithm 1 (lines 4-8); an Euler step when sigma_next = 0."""
    denoised = _denoise(denoiser, x, sigma)
    d = (x - denoised) / sigma
    if sigma_next == 0:
        return denoised, denoised
    x_next = x + (sigma_next - sigma) * d
    d_prime = (x_next - _denoise(denoiser, x_next, sigma_next)) / sigma_next
    return x + (sigma_next - sigma) * (0.5 * d + 0.5 * d_prime), denoised


def sample_heun(denoiser, x, sigmas, *, noise=None, callback=None, progress=False, **options):
    """EDM's deterministic second-order sampler (Algorithm 1): Heun steps, the last one
    (to sigma = 0) an Euler step. 2N - 1 denoiser calls for N steps."""
    make_options(NoOptions, options, "heun")
    x, sig = _prepare(x, sigmas)
    for i in _steps(len(sig) - 1, progress, "heun"):
        x, denoised = _heun_step(denoiser, x, sig[i], sig[i + 1])
        _report(callback, i, x, sig[i], sig[i + 1], denoised)
    return x


def sample_edm(denoiser, x, sigmas, *, noise=None, callback=None, progress=False, **options):
    """EDM's stochastic sampler (Algorithm 2): raise the noise level by a factor
    (1 + churn), churn = min(S_churn / N, sqrt(2) - 1) for sigma in [S_tmin, S_tmax], with
    fresh noise of std sqrt(sigma_hat^2 - sigma^2) S_noise, then a Heun step down."""
    opts = make_options(EDMOptions, options, "edm")
    x, sig = _prepare(x, sigmas)
    n_steps = len(sig) - 1
    if opts.S_churn > 0:
        noise = _need_noise(noise, "edm")
    for i in _steps(n_steps, progress, "edm"):
        sigma, sigma_next = sig[i], sig[i + 1]
        churn = min(opts.S_churn / n_steps, math.sqrt(2) - 1) if opts.S_tmin <= sigma <= opts.S_tmax else 0.0
        sigma_hat = sigma * (1 + churn)                  # EDM's t_hat
        if churn > 0:
            x = x + math.sqrt(sigma_hat**2 - sigma**2) * opts.S_noise * noise.randn_like(x)
        x, denoised = _heun_step(denoiser, x, sigma_hat, sigma_next)
        _report(callback, i, x, sigma, sigma_next, denoised)
    return x


def sample_ddim(denoiser, x, sigmas, *, noise=None, callback=None, progress=False, **options):
    """DDIM (Song et al. 2021, eq. 12) written in VE: with eps_hat = (x - x0_hat) / sigma,
    x_next = x0_hat + sqrt(sigma_next^2 - sigma_eta^2) eps_hat + sigma_eta n, where
    sigma_eta = eta sigma_next sqrt(1 - sigma_next^2 / sigma^2) is DDIM's sigma_t(eta)
    divided by alpha_next. eta = 0 is Euler on the ODE (EDM sec. 3); eta = 1 is ancestral
    sampling with the small variance."""
    opts = make_options(DDIMOptions, options, "ddim")
    x, sig = _prepare(x, sigmas)
    eta = float(opts.eta)
    if eta > 0:
        noise = _need_noise(noise, "ddim")
    for i in _steps(len(sig) - 1, progress, "ddim"):
        sigma, sigma_next = sig[i], sig[i + 1]
        denoised = _denoise(denoiser, x, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            eps_hat = (x - denoised) / sigma
            sigma_eta = eta * sigma_next * math.sqrt(-math.expm1(2 * (math.log(sigma_next) - math.log(sigma))))
            x = denoised + math.sqrt(sigma_next**2 - sigma_eta**2) * eps_hat
            if sigma_eta > 0:
                x = x + sigma_eta * noise.randn_like(x)
        _report(callback, i, x, sigma, sigma_next, denoised)
    return x


def sample_ancestral(denoiser, x, sigmas, *, noise=None, callback=None, progress=False, **options):
    """DDPM / VDM ancestral sampling, one draw from p(z_s | z_t) per step, written in VE units.

    With VE levels sigma (now) and sigma_next, SNR = 1 / sigma^2 and the VP frame of EDM's
    VP/VE equivalence (alpha = 1/sqrt(1 + sigma^2), z = alpha x):
      mean = x0_hat + (SNR_t / SNR_s) (x - x0_hat), the posterior mean of q(x_s | x_t, x0_hat)
      (VDM eq. 26-29), and the reverse std sigma_rev from one of these variances:
        small:   sigma_next^2 (1 - SNR_t/SNR_s)                      DDPM's beta-tilde = VDM's p(z_s|z_t)
        large:   (1 + sigma_next^2)/(1 + sigma^2) (sigma^2 - sigma_next^2)  = sigma_{t|s}^2 / alpha_s^2, DDPM's beta
        learned: exp(frac log large + (1 - frac) log small), frac = (v + 1)/2  (iDDPM eq. 15)
    On a subset of a model's T levels this is iDDPM respacing (``schedules.respace``). The
    final step to sigma = 0 returns the mean x0_hat without noise, as in DDPM."""
    opts = make_options(AncestralOptions, options, "ancestral")
    learned = opts.variance is ReverseVariance.learned
    if learned and not getattr(denoiser, "learned_variance", False):
        raise SamplingError("variance 'learned' needs a model trained with learned variances "
                            "(NetworkConfig.learned_variance); use 'small' or 'large'")
    x, sig = _prepare(x, sigmas)
    if sig[-1] > 0 or len(sig) > 2:
        noise = _need_noise(noise, "ancestral")
    for i in _steps(len(sig) - 1, progress, "ancestral"):
        sigma, sigma_next = sig[i], sig[i + 1]
        if learned:
            denoised, v = denoiser.denoise_and_v(x, _sigma_batch(x, sigma))
            denoised, v = denoised.to(torch.float64), v.to(torch.float64)
        else:
            denoised, v = _denoise(denoiser, x, sigma), None
        if sigma_next == 0:
            x = denoised
        else:
            snr_ratio = (sigma_next / sigma) ** 2                         # SNR_t / SNR_s
            mean = denoised + snr_ratio * (x - denoised)
            one_minus = -math.expm1(2 * (math.log(sigma_next) - math.log(sigma)))  # 1 - SNR_t/SNR_s
            log_var_small = math.log(sigma_next**2 * one_minus)
            log_var_large = math.log((1 + sigma_next**2) / (1 + sigma**2) * sigma**2 * one_minus)
            if opts.variance is ReverseVariance.small:
                sigma_rev = math.exp(0.5 * log_var_small)
            elif opts.variance is ReverseVariance.large:
                sigma_rev = math.exp(0.5 * log_var_large)
            else:
                frac = (v + 1) / 2
                sigma_rev = torch.exp(0.5 * (frac * log_var_large + (1 - frac) * log_var_small))
            x = mean + sigma_rev * noise.randn_like(x)
        _report(callback, i, x, sigma, sigma_next, denoised)
    return x


def sample_dpmpp_2m(denoiser, x, sigmas, *, noise=None, callback=None, progress=False, **options):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) in VE form, lambda = -log sigma:
    x_next = (sigma_next / sigma) x - expm1(-h) D', h = lambda_next - lambda, with
    D' = (1 + 1/(2r)) x0_hat - 1/(2r) x0_hat_prev, r = h_prev / h; first-order (DDIM) on the
    first step and on the final step to sigma = 0."""
    make_options(NoOptions, options, "dpmpp-2m")
    x, sig = _prepare(x, sigmas)
    old_denoised, h_last = None, None
    for i in _steps(len(sig) - 1, progress, "dpmpp-2m"):
        sigma, sigma_next = sig[i], sig[i + 1]
        denoised = _denoise(denoiser, x, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            h = math.log(sigma) - math.log(sigma_next)                  # lambda_next - lambda
            if old_denoised is None:
                denoised_d = denoised
            else:
                r = h_last / h
                denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigma_next / sigma) * x - math.expm1(-h) * denoised_d
            h_last = h
        old_denoised = denoised
        _report(callback, i, x, sigma, sigma_next, denoised)
    return x


# ---- registry ------------------------------------------------------------------------
@dataclass(frozen=True)
class SamplerInfo:
    name: str
    fn: Callable[..., torch.Tensor]
    description: str
    options: type   # the frozen options dataclass


SAMPLERS: dict[str, SamplerInfo] = {
    "ancestral": SamplerInfo("ancestral", sample_ancestral,
                             "DDPM/VDM ancestral p(z_s|z_t); variance small|large|learned; iDDPM respacing",
                             AncestralOptions),
    "ddim": SamplerInfo("ddim", sample_ddim, "DDIM with eta in [0, 1] (eta=0 deterministic)", DDIMOptions),
    "euler": SamplerInfo("euler", sample_euler, "EDM deterministic first-order ODE sampler", NoOptions),
    "heun": SamplerInfo("heun", sample_heun, "EDM deterministic second-order ODE sampler (Algorithm 1)", NoOptions),
    "edm": SamplerInfo("edm", sample_edm, "EDM stochastic sampler (Algorithm 2): S_churn, S_tmin, S_tmax, S_noise",
                       EDMOptions),
    "dpmpp-2m": SamplerInfo("dpmpp-2m", sample_dpmpp_2m, "DPM-Solver++(2M), second-order multistep", NoOptions),
}


def get_sampler(name: str) -> SamplerInfo:
    """The registry entry of ``name``; a SamplingError lists the valid names."""
    return lookup(SAMPLERS, name, "sampler")
