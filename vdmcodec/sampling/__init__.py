"""Sampling from a diffusion model: one denoiser contract, schedules, samplers, registry.

    from vdmcodec.sampling import VDMDenoiser, NoiseSource, make_sigmas, get_sampler
    D = VDMDenoiser(model)
    sigmas = make_sigmas("karras", D, steps=32)
    noise = NoiseSource(seed=0, indices=range(8))
    x = get_sampler("heun").fn(D, sigmas[0] * noise.randn((1, 28, 28)), sigmas, noise=noise)
"""
from .adaptive import (AdaptiveConfig, ScoreOptimalCost, adaptive_sigmas, cached_score_optimal_cost,
                       model_samples, score_optimal_cost, user_cache_dir)
from .brownian import BrownianNoise, BrownianTree
from .denoiser import Denoiser, VDMDenoiser
from .generate import START_DISTRIBUTIONS, generate, image_grid, to_pixels
from .mixture import GaussianMixture, make_mixture
from .noise import NoiseSource, sample_generator
from .registry import SamplingError
from .samplers import (SAMPLERS, AncestralOptions, DDIMOptions, DPMSDEOptions, EDMOptions, EtaNoiseOptions,
                       NoOptions, OrderOptions, ReverseVariance, SamplerInfo, UniPCOptions, evaluations, get_sampler,
                       sample_ancestral, sample_ddim, sample_dpmpp_2m, sample_dpmpp_2m_sde, sample_dpmpp_2s_ancestral,
                       sample_dpmpp_3m_sde, sample_edm, sample_euler, sample_euler_ancestral, sample_heun,
                       sample_ipndm, sample_lms, sample_unipc, steps_for)
from .schedules import (SCHEDULES, ScheduleInfo, karras_sigmas, loglinear_sigmas, make_sigmas, model_sigmas, respace,
                        vp_sigmas)

__all__ = [
    "AdaptiveConfig", "ScoreOptimalCost", "adaptive_sigmas", "cached_score_optimal_cost", "model_samples",
    "score_optimal_cost", "user_cache_dir", "BrownianNoise", "BrownianTree",
    "Denoiser", "VDMDenoiser", "GaussianMixture", "make_mixture", "START_DISTRIBUTIONS", "generate", "image_grid",
    "to_pixels", "NoiseSource", "sample_generator",
    "SamplingError", "SAMPLERS", "AncestralOptions", "DDIMOptions", "DPMSDEOptions", "EDMOptions", "EtaNoiseOptions",
    "NoOptions", "OrderOptions", "ReverseVariance", "SamplerInfo", "UniPCOptions", "evaluations", "get_sampler",
    "sample_ancestral", "sample_ddim", "sample_dpmpp_2m", "sample_dpmpp_2m_sde", "sample_dpmpp_2s_ancestral",
    "sample_dpmpp_3m_sde", "sample_edm", "sample_euler", "sample_euler_ancestral", "sample_heun", "sample_ipndm",
    "sample_lms", "sample_unipc", "steps_for", "SCHEDULES", "ScheduleInfo", "karras_sigmas", "loglinear_sigmas",
    "make_sigmas", "model_sigmas", "respace", "vp_sigmas",
]
