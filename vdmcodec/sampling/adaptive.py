"""The score-optimal schedule of Williams, Campbell, Doucet & Syed (NeurIPS 2024,
"Score-Optimal Diffusion Schedules"), estimated from denoiser calls only.

The schedule places noise levels at equal steps of a cost-length along the diffusion
path: with a local cost delta(u) >= 0 on a path parameter u in [0, 1] and
Lambda(u) = int_0^u sqrt(delta(v)) dv, the optimal schedule is
phi*(s) = Lambda^{-1}(Lambda(1) s), s uniform in [0, 1]. Lambda is invariant to how u is
parameterised, so it is computed on a log-uniform grid in sigma and inverted there.

Cost implemented: the paper's corrector-optimal cost, i.e. the rate of the Fisher
divergence between neighbouring marginals, with the score scaled by the noise level (their
velocity v(t) = sigma(t)), in the VE frame the samplers integrate in:

    delta(u) du^2 = E_{x ~ p_sigma} || sigma (grad log p_{sigma + d sigma}(x) - grad log p_sigma(x)) ||^2 / d,

where d is the number of dimensions and the score comes from the denoiser by Tweedie:
grad log p_sigma(x) = (D(x, sigma) - x) / sigma^2. The predictor-optimal cost of the paper
needs Hessians and is not implemented.

Estimate: ``batch`` trajectories run from sigma_max to sigma_min with Heun steps on a
log-uniform grid of ``levels`` noise levels (so x_k ~ p_{sigma_k} up to discretisation);
at each level the score is evaluated at sigma_k and sigma_{k+1} at the same x_k, and the
increment of Lambda between the two levels is
sqrt(mean over batch and dimensions of (sigma_bar (score_{k+1} - score_k))^2), with
sigma_bar = sqrt(sigma_k sigma_{k+1}): a finite difference, 3 denoiser calls per level.
The estimate (grid and Lambda) is computed once per model and cached as JSON.

Regulariser (ours, not the paper's): this cost measures the corrector's work only and
vanishes where the marginals stop changing (below the finest scale of the data), where a
predictor step still has error (Euler/DDIM shrink towards the posterior mean). Without a
floor, one step would span that whole range. ``adaptive_sigmas`` therefore gives every grid
interval at least ``min_density`` (default 0.2) times the mean increment of Lambda, so the
density of noise levels per unit log sigma never falls below about 20% of its average. Measured
on a 2-D Gaussian mixture (tests/test_sampling.py) this beats the log-uniform schedule for
Euler, Heun and ancestral sampling at 10-16 steps; DPM-Solver++(2M), whose multistep
extrapolation dislikes unequal steps in log sigma, does better on the log-uniform schedule.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .denoiser import Denoiser
from .noise import NoiseSource
from .registry import SamplingError
from .schedules import _append_zero, _check_steps, loglinear_sigmas

CACHE_VERSION = 1


@dataclass(frozen=True)
class AdaptiveConfig:
    levels: int = 64   # estimation grid: log-uniform noise levels from sigma_max to sigma_min
    batch: int = 16    # trajectories averaged over
    seed: int = 0      # noise seed of the trajectories

    def __post_init__(self):
        if self.levels < 3 or self.batch < 1 or self.seed < 0:
            raise SamplingError(f"adaptive schedule needs levels >= 3, batch >= 1, seed >= 0 (got {self})")


@dataclass(frozen=True)
class ScoreOptimalCost:
    """Lambda (cumulative cost-length) on a decreasing grid of sigmas, Lambda[0] = 0."""

    sigmas: tuple[float, ...]
    Lambda: tuple[float, ...]

    def to_dict(self) -> dict:
        return {"sigmas": list(self.sigmas), "Lambda": list(self.Lambda)}

    @staticmethod
    def from_dict(d: dict) -> "ScoreOptimalCost":
        cost = ScoreOptimalCost(tuple(float(s) for s in d["sigmas"]), tuple(float(v) for v in d["Lambda"]))
        s, lam = np.asarray(cost.sigmas), np.asarray(cost.Lambda)
        if (len(s) < 2 or len(s) != len(lam) or np.any(np.diff(s) >= 0) or np.any(np.diff(lam) < 0)
                or lam[0] != 0 or lam[-1] <= 0 or not np.all(np.isfinite(lam))):
            raise ValueError("malformed score-optimal cost")
        return cost

    def local_cost(self) -> np.ndarray:
        """sqrt(delta) per unit log sigma on each grid interval (for plots and checks)."""
        return np.diff(self.Lambda) / -np.diff(np.log(self.sigmas))


def score_optimal_cost(denoiser: Denoiser, shape: Sequence[int], config: AdaptiveConfig = AdaptiveConfig(),
                       progress: bool = False) -> ScoreOptimalCost:
    """Estimate Lambda for ``denoiser`` on samples of shape ``shape`` (without the batch)."""
    grid = loglinear_sigmas(config.levels, denoiser.sigma_min, denoiser.sigma_max)[:-1].tolist()
    noise = NoiseSource(config.seed, config.batch)
    x = grid[0] * noise.randn(shape)

    def denoise(x, sigma):
        return denoiser(x, torch.full((x.shape[0],), sigma, dtype=torch.float64)).to(torch.float64)

    increments = []
    for k in tqdm(range(len(grid) - 1), desc="adaptive schedule", disable=not progress, leave=False):
        sigma, sigma_next = grid[k], grid[k + 1]
        denoised = denoise(x, sigma)
        score = (denoised - x) / sigma**2                      # Tweedie: grad log p_sigma(x)
        score_next = (denoise(x, sigma_next) - x) / sigma_next**2
        sigma_bar = math.sqrt(sigma * sigma_next)
        increments.append(math.sqrt(float((sigma_bar * (score_next - score)).square().mean())))
        # Heun step to the next level (EDM Algorithm 1) keeps x ~ p_sigma
        d = (x - denoised) / sigma
        x_next = x + (sigma_next - sigma) * d
        d_prime = (x_next - denoise(x_next, sigma_next)) / sigma_next
        x = x + (sigma_next - sigma) * 0.5 * (d + d_prime)
    inc = np.asarray(increments, dtype=np.float64)
    if not np.all(np.isfinite(inc)) or inc.sum() <= 0:
        raise SamplingError("adaptive schedule: the estimated cost is not finite and positive "
                            "(does the denoiser ignore sigma, e.g. an untrained model?)")
    Lambda = np.concatenate([[0.0], np.cumsum(inc)])
    return ScoreOptimalCost(tuple(grid), tuple(Lambda.tolist()))


def adaptive_sigmas(denoiser: Denoiser | None, steps: int, *, cost: ScoreOptimalCost | None = None,
                    shape: Sequence[int] | None = None, config: AdaptiveConfig = AdaptiveConfig(),
                    min_density: float = 0.2, progress: bool = False) -> torch.Tensor:
    """The score-optimal schedule phi*(s) = Lambda^{-1}(Lambda(1) s) at ``steps`` equally spaced
    s in [0, 1] (sigma_max first, sigma_min last), then 0. Pass a precomputed ``cost`` or
    the sample ``shape`` to estimate it (``score_optimal_cost``). Every grid interval of
    Lambda is floored at ``min_density`` (in (0, 1]) times the mean interval (see the module
    docstring)."""
    steps = _check_steps(steps)
    if not 0.0 < min_density <= 1.0:
        raise SamplingError(f"min_density must be in (0, 1] (got {min_density})")
    if cost is None:
        if denoiser is None or shape is None:
            raise SamplingError("adaptive schedule: pass cost=..., or a denoiser and the sample shape")
        cost = score_optimal_cost(denoiser, shape, config, progress)
    log_sigma = np.log(np.asarray(cost.sigmas, dtype=np.float64))
    inc = np.diff(np.asarray(cost.Lambda, dtype=np.float64))
    inc = np.maximum(inc, min_density * inc.mean())
    Lambda = np.concatenate([[0.0], np.cumsum(inc)])
    targets = Lambda[-1] * (np.linspace(0.0, 1.0, steps) if steps > 1 else np.zeros(1))
    sigmas = torch.from_numpy(np.exp(np.interp(targets, Lambda, log_sigma)))
    sigmas[0] = cost.sigmas[0]
    if steps > 1:
        sigmas[-1] = cost.sigmas[-1]
    return _append_zero(sigmas)


# ---- cache ---------------------------------------------------------------------------
def _cache_key(weights_sha256: str, shape: Sequence[int], config: AdaptiveConfig) -> str:
    return f"v{CACHE_VERSION}:{weights_sha256}:{'x'.join(str(int(s)) for s in shape)}:" \
           f"levels={config.levels}:batch={config.batch}:seed={config.seed}"


def cache_paths(model_dir: Path, weights_sha256: str) -> list[Path]:
    """Where the cost may be cached, in order: a JSON file beside the model directory, then
    $XDG_CACHE_HOME/vdmcodec (default ~/.cache/vdmcodec)."""
    model_dir = Path(model_dir).resolve()
    user = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vdmcodec"
    tag = hashlib.sha256(str(model_dir).encode()).hexdigest()[:8]
    return [model_dir.parent / f"{model_dir.name}.adaptive-schedule.json",
            user / f"{model_dir.name}-{weights_sha256[:12]}-{tag}.adaptive-schedule.json"]


def _read_entries(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def cached_score_optimal_cost(model_dir: Path, weights_sha256: str, denoiser: Denoiser, shape: Sequence[int],
                              config: AdaptiveConfig = AdaptiveConfig(),
                              progress: bool = False) -> tuple[ScoreOptimalCost, Path | None]:
    """The cost for this model (by weights hash), shape and config: read from the first
    cache file that has it, else estimated and written to the first writable cache file.
    Returns (cost, path of the cache file used, or None when no cache file was writable)."""
    from ..zoo import atomic_write_bytes

    key = _cache_key(weights_sha256, shape, config)
    paths = cache_paths(model_dir, weights_sha256)
    for path in paths:
        entry = _read_entries(path).get(key)
        if entry is not None:
            try:
                return ScoreOptimalCost.from_dict(entry), path
            except (KeyError, TypeError, ValueError):
                pass  # a damaged entry is re-estimated and overwritten below
    cost = score_optimal_cost(denoiser, shape, config, progress)
    for path in paths:
        entries = _read_entries(path)
        entries[key] = cost.to_dict()
        try:
            atomic_write_bytes(path, (json.dumps(entries, indent=1) + "\n").encode())
            return cost, path
        except OSError:
            continue
    return cost, None
