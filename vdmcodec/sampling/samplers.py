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
def _choice(cls, value, name: str):
    """``value`` as a member of the enum ``cls``; a SamplingError listing the choices otherwise."""
    try:
        return cls(value)
    except ValueError:
        raise SamplingError(f"unknown {name} {value!r}; choose one of: {', '.join(v.value for v in cls)}") from None


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
        object.__setattr__(self, "variance", _choice(ReverseVariance, self.variance, "variance"))


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


@dataclass(frozen=True)
class EtaNoiseOptions:
    """Ancestral samplers of k-diffusion: eta scales the fresh noise of a step (1 = the
    posterior variance of the VE process, 0 = deterministic), s_noise multiplies it."""

    eta: float = 1.0
    s_noise: float = 1.0

    def __post_init__(self):
        if not float(self.eta) >= 0 or not float(self.s_noise) >= 0:
            raise SamplingError(f"eta and s_noise must be >= 0 (got eta={self.eta}, s_noise={self.s_noise})")


class SDESolverType(str, Enum):
    midpoint = "midpoint"   # k-diffusion's default for DPM-Solver++(2M) SDE
    heun = "heun"


@dataclass(frozen=True)
class DPMSDEOptions:
    """DPM-Solver++(2M) SDE: eta (0 = the ODE solver DPM-Solver++(2M) with ``midpoint``),
    s_noise and the second-order correction ``solver_type``; noise from a Brownian tree."""

    eta: float = 1.0
    s_noise: float = 1.0
    solver_type: SDESolverType = SDESolverType.midpoint

    def __post_init__(self):
        EtaNoiseOptions(self.eta, self.s_noise)
        object.__setattr__(self, "solver_type", _choice(SDESolverType, self.solver_type, "solver_type"))


@dataclass(frozen=True)
class OrderOptions:
    """A multistep sampler's order (how many past denoiser outputs a step uses)."""

    order: int = 4

    def __post_init__(self):
        if int(self.order) != self.order or not 1 <= self.order <= 4:
            raise SamplingError(f"order must be an integer in 1..4 (got {self.order})")


class UniPCVariant(str, Enum):
    bh1 = "bh1"   # B(h) = h
    bh2 = "bh2"   # B(h) = e^h - 1 (recommended by Zhao et al. for few steps)


@dataclass(frozen=True)
class UniPCOptions:
    """UniPC: predictor order (1..3), B(h) variant, and whether the free corrector UniC runs."""

    order: int = 2
    variant: UniPCVariant = UniPCVariant.bh2
    corrector: bool = True

    def __post_init__(self):
        if int(self.order) != self.order or not 1 <= self.order <= 3:
            raise SamplingError(f"order must be an integer in 1..3 (got {self.order})")
        object.__setattr__(self, "variant", _choice(UniPCVariant, self.variant, "variant"))


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


def _ancestral_step(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    """k-diffusion's ``get_ancestral_step``: split the step to sigma_next into a deterministic
    move to sigma_down and fresh noise of std sigma_up, sigma_down^2 + sigma_up^2 = sigma_next^2;
    with eta = 1, sigma_up^2 = sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2 is the VE posterior
    variance (DDPM's beta-tilde in VE units)."""
    if sigma_next == 0 or eta == 0:
        return sigma_next, 0.0
    sigma_up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - sigma_up**2), sigma_up


def sample_euler_ancestral(denoiser, x, sigmas, *, noise=None, callback=None, progress=False, **options):
    """Euler-ancestral (k-diffusion ``sample_euler_ancestral``): an Euler step to sigma_down,
    then fresh noise of std s_noise sigma_up (``_ancestral_step``). With eta = 1 this is
    ancestral sampling with the small variance (and DDIM with eta = 1)."""
    opts = make_options(EtaNoiseOptions, options, "euler-ancestral")
    x, sig = _prepare(x, sigmas)
    if opts.eta > 0 and opts.s_noise > 0 and len(sig) > 2:
        noise = _need_noise(noise, "euler-ancestral")
    for i in _steps(len(sig) - 1, progress, "euler-ancestral"):
        sigma, sigma_next = sig[i], sig[i + 1]
        denoised = _denoise(denoiser, x, sigma)
        sigma_down, sigma_up = _ancestral_step(sigma, sigma_next, opts.eta)
        x = denoised if sigma_down == 0 else x + (sigma_down - sigma) * (x - denoised) / sigma
        if sigma_up > 0 and opts.s_noise > 0:
            x = x + opts.s_noise * sigma_up * noise.randn_like(x)
        _report(callback, i, x, sigma, sigma_next, denoised)
    return x


def sample_dpmpp_2s_ancestral(denoiser, x, sigmas, *, noise=None, callback=None, progress=False, **options):
    """DPM-Solver++(2S) ancestral (k-diffusion ``sample_dpmpp_2s_ancestral``): a second-order
    single-step DPM-Solver++ step (midpoint r = 1/2 in lambda = -log sigma) to sigma_down, then
    fresh noise of std s_noise sigma_up. 2 evaluations per step, 1 on the last (to sigma = 0)."""
    opts = make_options(EtaNoiseOptions, options, "dpmpp-2s-ancestral")
    x, sig = _prepare(x, sigmas)
    if opts.eta > 0 and opts.s_noise > 0 and len(sig) > 2:
        noise = _need_noise(noise, "dpmpp-2s-ancestral")
    for i in _steps(len(sig) - 1, progress, "dpmpp-2s-ancestral"):
        sigma, sigma_next = sig[i], sig[i + 1]
        denoised = _denoise(denoiser, x, sigma)
        sigma_down, sigma_up = _ancestral_step(sigma, sigma_next, opts.eta)
        if sigma_down == 0:
            x = denoised
        else:
            h = math.log(sigma) - math.log(sigma_down)                  # lambda_down - lambda
            sigma_mid = math.exp(-(-math.log(sigma) + 0.5 * h))           # lambda_mid = lambda + h / 2
            x_2 = (sigma_mid / sigma) * x - math.expm1(-0.5 * h) * denoised
            denoised_2 = _denoise(denoiser, x_2, sigma_mid)
            x = (sigma_down / sigma) * x - math.expm1(-h) * denoised_2
        if sigma_up > 0 and opts.s_noise > 0:
            x = x + opts.s_noise * sigma_up * noise.randn_like(x)
        _report(callback, i, x, sigma, sigma_next, denoised)
    return x


def _brownian(noise, x, sig, name):
    return _need_noise(noise, name).brownian(x.shape[1:], 0.0, sig[0])


def sample_dpmpp_2m_sde(denoiser, x, sigmas, *, noise=None, callback=None, progress=False, **options):
    """DPM-Solver++(2M) SDE (Lu et al. 2022, sec. 5; k-diffusion ``sample_dpmpp_2m_sde``), h =
    lambda_next - lambda, lambda = -log sigma:
      x_next = (sigma_next / sigma) e^(-eta h) x + (1 - e^(-(1 + eta) h)) x0_hat + correction
               + sigma_next sqrt(1 - e^(-2 eta h)) s_noise z,
    correction (r = h_prev / h, D = x0_hat - x0_hat_prev, c = 1 - e^(-(1 + eta) h)):
    midpoint c D / (2 r); heun (1 - c / ((1 + eta) h)) D / r. z is the Brownian-tree increment
    of the step (``brownian.py``). eta = 0 with midpoint is DPM-Solver++(2M)."""
    opts = make_options(DPMSDEOptions, options, "dpmpp-2m-sde")
    x, sig = _prepare(x, sigmas)
    eta, stochastic = float(opts.eta), opts.eta > 0 and opts.s_noise > 0 and len(sig) > 2
    bm = _brownian(noise, x, sig, "dpmpp-2m-sde") if stochastic else None
    old_denoised, h_last = None, None
    for i in _steps(len(sig) - 1, progress, "dpmpp-2m-sde"):
        sigma, sigma_next = sig[i], sig[i + 1]
        denoised = _denoise(denoiser, x, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            h = math.log(sigma) - math.log(sigma_next)
            eta_h = eta * h
            one_minus = -math.expm1(-h - eta_h)                             # 1 - e^(-(1 + eta) h)
            x = (sigma_next / sigma) * math.exp(-eta_h) * x + one_minus * denoised
            if old_denoised is not None:
                r = h_last / h
                if opts.solver_type is SDESolverType.midpoint:
                    x = x + 0.5 * one_minus * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + (one_minus / (-h - eta_h) + 1) * (1 / r) * (denoised - old_denoised)
            if bm is not None:
                x = x + bm.step(sigma, sigma_next).to(x.dtype) * sigma_next * math.sqrt(-math.expm1(-2 * eta_h)) \
                    * opts.s_noise
            h_last = h
        old_denoised = denoised
        _report(callback, i, x, sigma, sigma_next, denoised)
    return x


def sample_dpmpp_3m_sde(denoiser, x, sigmas, *, noise=None, callback=None, progress=False, **options):
    """DPM-Solver++(3M) SDE (k-diffusion ``sample_dpmpp_3m_sde``): the third-order multistep
    exponential integrator in h_eta = (1 + eta) h with phi_2 = 1 - (1 - e^(-h_eta)) / h_eta and
    phi_3 = phi_2 / h_eta - 1/2 (first and second order on the first two steps), Brownian-tree noise
    sigma_next sqrt(1 - e^(-2 eta h)) s_noise z. eta = 0 is a deterministic third-order ODE solver."""
    opts = make_options(EtaNoiseOptions, options, "dpmpp-3m-sde")
    x, sig = _prepare(x, sigmas)
    eta, stochastic = float(opts.eta), opts.eta > 0 and opts.s_noise > 0 and len(sig) > 2
    bm = _brownian(noise, x, sig, "dpmpp-3m-sde") if stochastic else None
    denoised_1 = denoised_2 = None
    h_1 = h_2 = None
    for i in _steps(len(sig) - 1, progress, "dpmpp-3m-sde"):
        sigma, sigma_next = sig[i], sig[i + 1]
        denoised = _denoise(denoiser, x, sigma)
        if sigma_next == 0:
            x = denoised
            h = None
        else:
            h = math.log(sigma) - math.log(sigma_next)
            h_eta = h * (eta + 1)
            x = math.exp(-h_eta) * x - math.expm1(-h_eta) * denoised           # e^(-h_eta) = (sigma_next/sigma) e^(-eta h)
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = math.expm1(-h_eta) / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                r = h_1 / h
                d = (denoised - denoised_1) / r
                phi_2 = math.expm1(-h_eta) / h_eta + 1
                x = x + phi_2 * d
            if bm is not None:
                x = x + bm.step(sigma, sigma_next).to(x.dtype) * sigma_next * math.sqrt(-math.expm1(-2 * h * eta)) \
                    * opts.s_noise
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
        _report(callback, i, x, sigma, sigma_next, denoised)
    return x


def _lagrange_integral(times: list[float], j: int, a: float, b: float) -> float:
    """int_a^b of the Lagrange basis polynomial of node j over ``times`` (exact, numpy poly)."""
    import numpy as np

    poly = np.poly1d([1.0])
    for k, t_k in enumerate(times):
        if k != j:
            poly = poly * np.poly1d([1.0, -t_k]) / (times[j] - t_k)
    antiderivative = poly.integ()
    return float(antiderivative(b) - antiderivative(a))


def sample_lms(denoiser, x, sigmas, *, noise=None, callback=None, progress=False, **options):
    """Linear multistep (k-diffusion ``sample_lms``): Adams-Bashforth in sigma on the ODE
    dx/dsigma = d = (x - x0_hat) / sigma, x_next = x + sum_j c_j d_{i-j}, with c_j the exact
    integral over [sigma_i, sigma_next] of the Lagrange polynomial through the last ``order``
    sigmas (variable-step coefficients; k-diffusion integrates them numerically). Order
    ``order`` (default 4), lower on the first steps."""
    opts = make_options(OrderOptions, options, "lms")

    def update(sig, i, ds):  # times[k] belongs to ds[-1 - k]
        times = [sig[i - k] for k in range(len(ds))]
        return sum(_lagrange_integral(times, k, sig[i], sig[i + 1]) * ds[-1 - k] for k in range(len(ds)))

    return _multistep(denoiser, x, sigmas, opts.order, "lms", callback, progress, update)


def _multistep(denoiser, x, sigmas, order, name, callback, progress, update):
    """The loop of the multistep samplers on dx/dsigma = d = (x - x0_hat) / sigma: the last
    ``order`` derivatives ``ds`` (newest last) and x_next = x + update(sigmas, i, ds); the
    last step to sigma = 0 is the denoised estimate."""
    x, sig = _prepare(x, sigmas)
    ds: list[torch.Tensor] = []
    for i in _steps(len(sig) - 1, progress, name):
        sigma, sigma_next = sig[i], sig[i + 1]
        denoised = _denoise(denoiser, x, sigma)
        ds.append((x - denoised) / sigma)
        ds = ds[-order:]
        x = denoised if sigma_next == 0 else x + update(sig, i, ds)
        _report(callback, i, x, sigma, sigma_next, denoised)
    return x


_AB = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def sample_ipndm(denoiser, x, sigmas, *, noise=None, callback=None, progress=False, **options):
    """iPNDM (Zhang & Chen 2023, DEIS sec. 4; k-diffusion ``sample_ipndm``): Adams-Bashforth
    with the fixed constant-step coefficients of order min(order, i + 1) on dx/dsigma. On
    schedules whose steps vary smoothly this is second-order at best (the coefficients do not
    follow the step ratios; ``lms`` does)."""
    opts = make_options(OrderOptions, options, "ipndm")

    def update(sig, i, ds):
        return (sig[i + 1] - sig[i]) * sum(c * ds[-1 - k] for k, c in enumerate(_AB[len(ds)]))

    return _multistep(denoiser, x, sigmas, opts.order, "ipndm", callback, progress, update)


def _unipc_update(x, sig_s0, sig_t, m0, history, order, variant, m_t=None):
    """One UniP (m_t is None) or UniC step of UniPC (Zhao et al. 2023, Algorithms 2-3, data
    prediction; diffusers ``multistep_uni_p_bh_update`` / ``multistep_uni_c_bh_update``) in VE
    units: lambda = -log sigma, h = lambda_t - lambda_s0,
    x_t = (sigma_t / sigma_s0) x - (e^(-h) - 1) m0 - B(h) sum_k rho_k D_k, D_k = (m_k - m0) / r_k.
    ``history`` = [(lambda_k, m_k)] of earlier points, newest first (excluding s0)."""
    import numpy as np

    lam_s0, lam_t = -math.log(sig_s0), -math.log(sig_t)
    h = lam_t - lam_s0
    hh = -h
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    B_h = hh if variant is UniPCVariant.bh1 else math.expm1(hh)
    rks, D1s = [], []
    for lam_k, m_k in history[:order - 1]:
        rk = (lam_k - lam_s0) / h
        rks.append(rk)
        D1s.append((m_k - m0) / rk)
    rks.append(1.0)
    R, b, factorial = [], [], 1
    for k in range(1, order + 1):
        R.append([r ** (k - 1) for r in rks])
        b.append(h_phi_k * factorial / B_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    R, b = np.array(R), np.array(b)
    x_t = (sig_t / sig_s0) * x - h_phi_1 * m0
    if m_t is None:                                                       # predictor UniP
        if D1s:
            rhos = [0.5] if len(D1s) == 1 else np.linalg.solve(R[:-1, :-1], b[:-1]).tolist()
            x_t = x_t - B_h * sum(r * d for r, d in zip(rhos, D1s))
        return x_t
    rhos = [0.5] if order == 1 else np.linalg.solve(R, b).tolist()       # corrector UniC
    corr = sum(r * d for r, d in zip(rhos[:-1], D1s)) if D1s else 0.0
    return x_t - B_h * (corr + rhos[-1] * (m_t - m0))


def sample_unipc(denoiser, x, sigmas, *, noise=None, callback=None, progress=False, **options):
    """UniPC (Zhao et al. 2023): the multistep predictor UniP of order min(order, steps so far),
    then at the next point the corrector UniC with the denoiser output there, which the next
    predictor reuses (no extra evaluation: 1 per step). The step to sigma = 0 returns x0_hat,
    as every sampler here; no corrector runs on it (x0_hat is taken at the uncorrected point, as
    in diffusers). Order of accuracy: the predictor's plus one."""
    opts = make_options(UniPCOptions, options, "unipc")
    x, sig = _prepare(x, sigmas)
    history: list[tuple[float, torch.Tensor]] = []      # (lambda, x0_hat), newest first
    x_prev, last_order = None, None
    for i in _steps(len(sig) - 1, progress, "unipc"):
        sigma, sigma_next = sig[i], sig[i + 1]
        denoised = _denoise(denoiser, x, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            if x_prev is not None and opts.corrector:
                x = _unipc_update(x_prev, sig[i - 1], sigma, history[0][1], history[1:], last_order, opts.variant,
                                  m_t=denoised)
            history.insert(0, (-math.log(sigma), denoised))
            del history[opts.order + 1:]
            last_order = min(opts.order, len(history))
            x_prev = x
            x = _unipc_update(x, sigma, sigma_next, denoised, history[1:], last_order, opts.variant)
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
    "euler-ancestral": SamplerInfo("euler-ancestral", sample_euler_ancestral,
                                   "k-diffusion Euler ancestral: eta, s_noise", EtaNoiseOptions),
    "dpmpp-2s-ancestral": SamplerInfo("dpmpp-2s-ancestral", sample_dpmpp_2s_ancestral,
                                      "DPM-Solver++(2S) ancestral (2 evaluations per step): eta, s_noise",
                                      EtaNoiseOptions),
    "dpmpp-2m-sde": SamplerInfo("dpmpp-2m-sde", sample_dpmpp_2m_sde,
                                "DPM-Solver++(2M) SDE, Brownian-tree noise: eta, s_noise, solver_type",
                                DPMSDEOptions),
    "dpmpp-3m-sde": SamplerInfo("dpmpp-3m-sde", sample_dpmpp_3m_sde,
                                "DPM-Solver++(3M) SDE, Brownian-tree noise (eta=0: third-order ODE): eta, s_noise",
                                EtaNoiseOptions),
    "unipc": SamplerInfo("unipc", sample_unipc, "UniPC predictor-corrector multistep: order, variant, corrector",
                         UniPCOptions),
    "lms": SamplerInfo("lms", sample_lms, "linear multistep with variable-step coefficients: order (1-4)",
                       OrderOptions),
    "ipndm": SamplerInfo("ipndm", sample_ipndm, "iPNDM, fixed Adams-Bashforth coefficients: order (1-4)",
                         OrderOptions),
}

# denoiser evaluations of a sampler for a schedule of ``steps`` steps (the last to sigma = 0)
TWO_EVALUATION_SAMPLERS = frozenset({"heun", "edm", "dpmpp-2s-ancestral"})


def evaluations(name: str, steps: int) -> int:
    """Denoiser calls per sample of sampler ``name`` on ``steps`` steps."""
    get_sampler(name)
    return 2 * steps - 1 if name in TWO_EVALUATION_SAMPLERS else steps


def steps_for(name: str, budget: int) -> int:
    """The most steps whose evaluations stay within ``budget``."""
    get_sampler(name)
    return (budget + 1) // 2 if name in TWO_EVALUATION_SAMPLERS else budget


def get_sampler(name: str) -> SamplerInfo:
    """The registry entry of ``name``; a SamplingError lists the valid names."""
    return lookup(SAMPLERS, name, "sampler")
