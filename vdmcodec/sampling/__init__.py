"""Sampling from a diffusion model: one denoiser contract, schedules, samplers, registry.

    from vdmcodec.sampling import VDMDenoiser, NoiseSource, make_sigmas, get_sampler
    D = VDMDenoiser(model)
    sigmas = make_sigmas("karras", D, steps=32)
    noise = NoiseSource(seed=0, indices=range(8))
    x = get_sampler("heun").fn(D, sigmas[0] * noise.randn((1, 28, 28)), sigmas, noise=noise)
"""
from .adaptive import (AdaptiveConfig, ScoreOptimalCost, adaptive_sigmas, cached_score_optimal_cost,
                       score_optimal_cost)
from .denoiser import Denoiser, VDMDenoiser
from .generate import generate, image_grid, to_pixels
from .mixture import GaussianMixture, make_mixture
from .noise import NoiseSource, sample_generator
from .registry import SamplingError
from .samplers import (SAMPLERS, AncestralOptions, DDIMOptions, EDMOptions, NoOptions, ReverseVariance,
                       SamplerInfo, get_sampler, sample_ancestral, sample_ddim, sample_dpmpp_2m, sample_edm,
                       sample_euler, sample_heun)
from .schedules import SCHEDULES, ScheduleInfo, karras_sigmas, loglinear_sigmas, make_sigmas, model_sigmas, respace

__all__ = [
    "AdaptiveConfig", "ScoreOptimalCost", "adaptive_sigmas", "cached_score_optimal_cost", "score_optimal_cost",
    "Denoiser", "VDMDenoiser", "GaussianMixture", "make_mixture", "generate", "image_grid", "to_pixels",
    "NoiseSource", "sample_generator",
    "SamplingError", "SAMPLERS", "AncestralOptions", "DDIMOptions", "EDMOptions", "NoOptions", "ReverseVariance",
    "SamplerInfo", "get_sampler", "sample_ancestral", "sample_ddim", "sample_dpmpp_2m", "sample_edm",
    "sample_euler", "sample_heun", "SCHEDULES", "ScheduleInfo", "karras_sigmas", "loglinear_sigmas",
    "make_sigmas", "model_sigmas", "respace",
]
