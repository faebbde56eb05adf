"""The score-optimal schedule of Williams, Campbell, Doucet & Syed (NeurIPS 2024,
"Score-Optimal Diffusion Schedules"), estimated from denoiser calls on forward-noised data.

The paper places noise levels at equal steps of a cost-length along the diffusion path:
with a local cost delta(u) >= 0 on a path parameter u and Lambda(u) = int sqrt(delta(v)) dv,
the optimal N-level schedule is phi*(s) = Lambda^{-1}(Lambda(1) s) at s = i / (N - 1).
Lambda does not depend on how u is parameterised, so it is kept as values at grid sigmas.

Cost: the paper's corrector-optimised cost, the Fisher divergence between neighbouring
marginals, with the score scaled by the velocity v = sigma (their choice for the VE/EDM
path), in the VE frame the samplers integrate in. Between grid levels sigma_k > sigma_{k+1}:

    L(sigma_k, sigma_{k+1}) = E_{x ~ p_{sigma_k}} || sigma_bar (s_{k+1}(x) - s_k(x)) ||^2 / d,

x = x0 + sigma_k n with x0 from the data (the forward process, as in the paper), d the
number of dimensions, sigma_bar = sqrt(sigma_k sigma_{k+1}), and the score from the denoiser
by Tweedie, s_sigma(x) = (D(x, sigma) - x) / sigma^2. sqrt(L) is the increment of Lambda on
that interval (2 denoiser calls per interval and data point).

Iteration (the paper's online update): the grid itself is the schedule being optimised. It
starts log-uniform; each iteration estimates the increments on the current grid with fresh
data and noise, builds the piecewise-linear Lambda, inverts it at equal steps and moves every
grid level a fraction ``damping`` of the way there (in log sigma); a fixed point has equal
increments. The grid then resolves the cost where it is large, which a fixed grid does not.

Departures from the paper, on purpose:
- no predictor-optimised cost: the paper's predictor cost needs Hessians of log p (the
  Jacobian of the denoiser), i.e. d extra JVPs or a Hutchinson estimate per level; not done.
- the data can be the model's own samples (``model_samples``) when real data is not at hand
  (the CLI does this); benchmarks/samplers.py uses real MNIST training images.
There is no floor on the cost density (an earlier version had one): the schedule is the
paper's. benchmarks/results/samplers.md measures it against EDM's rho = 7.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .denoiser import Denoiser
from .registry import SamplingError
from .schedules import _append_zero, _check_steps

CACHE_VERSION = 2


@dataclass(frozen=True)
class AdaptiveConfig:
    levels: int = 48       # grid levels optimised (log-uniform at the start)
    batch: int = 32        # data points per iteration
    iterations: int = 6    # damped updates of the grid; the last one only estimates Lambda
    damping: float = 0.5   # fraction of the way to the re-equalised grid per update (log sigma)
    seed: int = 0          # data subsets and noise

    def __post_init__(self):
        if self.levels < 3 or self.batch < 1 or self.iterations < 1 or not 0 < self.damping <= 1 or self.seed < 0:
            raise SamplingError("adaptive schedule needs levels >= 3, batch >= 1, iterations >= 1, "
                                f"damping in (0, 1] and seed >= 0 (got {self})")


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
                or lam[0] != 0 or lam[-1] <= 0 or not np.all(np.isfinite(lam)) or not np.all(s > 0)):
            raise ValueError("malformed score-optimal cost")
        return cost

    def local_cost(self) -> np.ndarray:
        """sqrt(delta) per unit log sigma on each grid interval (for plots and checks)."""
        return np.diff(self.Lambda) / -np.diff(np.log(self.sigmas))


def _increments(denoiser: Denoiser, grid: np.ndarray, x0: torch.Tensor, n: torch.Tensor) -> np.ndarray:
    """sqrt of the corrector cost on every grid interval, at x = x0 + sigma_k n."""
    def score(x, sigma):
        d = denoiser(x, torch.full((x.shape[0],), sigma, dtype=torch.float64)).to(torch.float64)
        return (d - x) / sigma**2                                  # Tweedie: grad log p_sigma(x)

    out = []
    for k in range(len(grid) - 1):
        sigma, sigma_next = float(grid[k]), float(grid[k + 1])
        x = x0 + sigma * n
        diff = math.sqrt(sigma * sigma_next) * (score(x, sigma_next) - score(x, sigma))
        out.append(math.sqrt(float(diff.square().mean())))
    return np.asarray(out, dtype=np.float64)


def _equalise(grid: np.ndarray, inc: np.ndarray, levels: int) -> np.ndarray:
    """Lambda^{-1} at ``levels`` equal steps: the grid with equal increments (log-linear inside
    each interval)."""
    lam = np.concatenate([[0.0], np.cumsum(inc)])
    return np.exp(np.interp(np.linspace(0.0, lam[-1], levels), lam, np.log(grid)))


def score_optimal_cost(denoiser: Denoiser, data: torch.Tensor, config: AdaptiveConfig = AdaptiveConfig(),
                       sigma_range: tuple[float, float] | None = None, progress: bool = False,
                       history: list | None = None) -> ScoreOptimalCost:
    """Estimate Lambda for ``denoiser`` from ``data`` (float64 [M, ...], the data scale), by
    the damped iteration of the module docstring on [sigma_min, sigma_max] (default: the
    denoiser's). ``history``, if given, receives each iteration's grid and increments."""
    data = torch.as_tensor(data, dtype=torch.float64)
    if data.dim() < 2 or len(data) < 1:
        raise SamplingError("adaptive schedule: data must be [M, ...] with M >= 1")
    lo, hi = sigma_range or (denoiser.sigma_min, denoiser.sigma_max)
    grid = np.exp(np.linspace(math.log(hi), math.log(lo), config.levels))
    g = torch.Generator().manual_seed(config.seed)
    inc = None
    for it in tqdm(range(config.iterations), desc="adaptive schedule", disable=not progress, leave=False):
        idx = torch.randperm(len(data), generator=g)[:config.batch] if len(data) > config.batch else \
            torch.arange(len(data))
        x0 = data[idx]
        n = torch.randn(x0.shape, generator=g, dtype=torch.float64)
        inc = _increments(denoiser, grid, x0, n)
        if not np.all(np.isfinite(inc)) or inc.sum() <= 0:
            raise SamplingError("adaptive schedule: the estimated cost is not finite and positive "
                                "(does the denoiser ignore sigma, e.g. an untrained model?)")
        if history is not None:
            history.append({"sigmas": grid.tolist(), "increments": inc.tolist()})
        if it + 1 < config.iterations:
            target = _equalise(grid, np.maximum(inc, 1e-12 * inc.max()), config.levels)
            new = np.exp((1 - config.damping) * np.log(grid) + config.damping * np.log(target))
            new[0], new[-1] = hi, lo
            if np.all(np.diff(new) < 0):
                grid = new
    lam = np.concatenate([[0.0], np.cumsum(np.maximum(inc, 1e-12 * inc.max()))])
    return ScoreOptimalCost(tuple(grid.tolist()), tuple(lam.tolist()))


def adaptive_sigmas(denoiser: Denoiser | None, steps: int, *, cost: ScoreOptimalCost | None = None,
                    data: torch.Tensor | None = None, config: AdaptiveConfig = AdaptiveConfig(),
                    sigma_range: tuple[float, float] | None = None, progress: bool = False) -> torch.Tensor:
    """The score-optimal schedule phi*(s) = Lambda^{-1}(Lambda(1) s) at ``steps`` equally spaced
    s (the grid's sigma_max first, sigma_min last), then 0. Pass a precomputed ``cost`` or
    ``data`` to estimate it (``score_optimal_cost``). ``sigma_range`` = (lo, hi) restricts the
    schedule to that part of the cost's range (Lambda interpolated in log sigma)."""
    steps = _check_steps(steps)
    if cost is None:
        if denoiser is None or data is None:
            raise SamplingError("adaptive schedule: pass cost=..., or a denoiser and data")
        cost = score_optimal_cost(denoiser, data, config, progress=progress)
    log_sigma = np.log(np.asarray(cost.sigmas, dtype=np.float64))[::-1]   # increasing
    lam = np.asarray(cost.Lambda, dtype=np.float64)[::-1]                  # decreasing in log sigma
    lo, hi = (cost.sigmas[-1], cost.sigmas[0]) if sigma_range is None else map(float, sigma_range)
    if not cost.sigmas[-1] * (1 - 1e-9) <= lo < hi <= cost.sigmas[0] * (1 + 1e-9):
        raise SamplingError(f"adaptive schedule: sigma range [{lo:g}, {hi:g}] is outside the estimated "
                            f"[{cost.sigmas[-1]:g}, {cost.sigmas[0]:g}]")
    lam_hi, lam_lo = np.interp(math.log(hi), log_sigma, lam), np.interp(math.log(lo), log_sigma, lam)
    targets = lam_hi + (lam_lo - lam_hi) * (np.linspace(0.0, 1.0, steps) if steps > 1 else np.zeros(1))
    sigmas = torch.from_numpy(np.exp(np.interp(targets, lam[::-1], log_sigma[::-1])))
    sigmas[0] = hi
    if steps > 1:
        sigmas[-1] = lo
    return _append_zero(sigmas)


# ---- data when none is at hand: the model's own samples ------------------------------------------
def model_samples(denoiser: Denoiser, shape: Sequence[int], count: int = 32, steps: int = 128, seed: int = 0,
                  progress: bool = False) -> torch.Tensor:
    """``count`` samples of the model (ancestral sampling, small variance, ``steps`` steps on
    EDM's rho = 7 schedule), a stand-in for data when estimating the cost without a dataset."""
    from .generate import generate
    from .schedules import karras_sigmas

    sigmas = karras_sigmas(steps, denoiser.sigma_min, denoiser.sigma_max)
    return generate(denoiser, "ancestral", sigmas, shape, count=count, seed=seed, batch_size=count, progress=progress)


# ---- cache ---------------------------------------------------------------------------
def user_cache_dir() -> Path:
    """$XDG_CACHE_HOME/vdmcodec, default ~/.cache/vdmcodec (never beside the shipped models)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vdmcodec"


def _cache_key(weights_sha256: str, shape: Sequence[int], config: AdaptiveConfig, data_tag: str) -> str:
    cfg = json.dumps(asdict(config), sort_keys=True)
    return f"v{CACHE_VERSION}:{weights_sha256}:{'x'.join(str(int(s)) for s in shape)}:{data_tag}:{cfg}"


def cache_path(model_name: str, weights_sha256: str) -> Path:
    """The JSON file holding this model's costs in the user's cache directory."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_name) or "model"
    return user_cache_dir() / f"{safe}-{weights_sha256[:16]}.adaptive-schedule.json"


def _read_entries(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def cached_score_optimal_cost(model_name: str, weights_sha256: str, denoiser: Denoiser, shape: Sequence[int],
                              config: AdaptiveConfig = AdaptiveConfig(), samples: int = 32, sample_steps: int = 128,
                              progress: bool = False) -> tuple[ScoreOptimalCost, Path | None]:
    """The cost for this model (by weights hash), shape and config, estimated on ``samples``
    of the model's own samples (``model_samples``): read from the user's cache directory when
    there, else estimated and written there. Returns (cost, cache file, or None when the cache
    directory is not writable)."""
    from ..zoo import atomic_write_bytes

    key = _cache_key(weights_sha256, shape, config, f"model-samples:{samples}:{sample_steps}")
    path = cache_path(model_name, weights_sha256)
    entry = _read_entries(path).get(key)
    if entry is not None:
        try:
            return ScoreOptimalCost.from_dict(entry), path
        except (KeyError, TypeError, ValueError):
            pass  # a damaged entry is re-estimated and overwritten below
    data = model_samples(denoiser, shape, samples, sample_steps, seed=config.seed, progress=progress)
    cost = score_optimal_cost(denoiser, data, config, progress=progress)
    entries = _read_entries(path)
    entries[key] = cost.to_dict()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, (json.dumps(entries, indent=1) + "\n").encode())
        return cost, path
    except OSError:
        return cost, None


def data_digest(data: torch.Tensor) -> str:
    """A short hash of a data tensor (for cache keys of benchmark estimates)."""
    return hashlib.sha256(torch.as_tensor(data, dtype=torch.float64).numpy().tobytes()).hexdigest()[:16]
