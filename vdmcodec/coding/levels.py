"""Where the chain's T levels sit in time: t_0 = 0 < t_1 < ... < t_T = 1.

The chain's rate is the T-step negative ELBO (up to its seeds), whose diffusion term is

    sum_i KL(q(z_s | z_t, x) || p(z_s | z_t)),   (s, t) = (t_{i-1}, t_i),

per dimension 1/2 (r + expm1(-r) + exp(-r) expm1(gamma_t - gamma_s) ||eps - eps_hat(z_t)||^2)
with r = log(var_p / beta-tilde) (diffusion.kl_step; r = 0 without learned variances). The
continuous-time bound does not depend on the schedule between its end points (VDM, Kingma et al.
2021, sec. 5.1); the T-step bound does, through where the levels sit. The default is uniform,
t_i = i / T. ``fit`` chooses the times that minimise the T-step term measured on training
crops:

1. at K candidate times (uniform in t) run the network on the same crops and the same noise
   (common random numbers make the per-subpixel statistics smooth in t), and keep
   ||eps - eps_hat||^2 and the learned-variance output v of a fixed random subset of subpixels;
2. the exact per-step KL for every pair of candidates j < k <= j + max_jump, averaged over
   that subset;
3. the path of exactly T steps from candidate 0 to candidate K - 1 with the least total KL
   (dynamic programming, O(T K max_jump)).

The uniform grid is a path through the candidates when T divides K - 1, so the fit is never
worse than uniform on the crops it was measured on. Measured on the natural model (step
18632, T = 64, 16 training crops of 128x128, K = 257): diffusion term 2.9953 -> 2.9773 bpd
(-0.60%); on 16 other crops with other noise, with the times fitted on the first: 3.0382 ->
3.0197 (-0.61%). The continuous-time term of the same crops is 2.8487: most of the T-step
excess is the discretisation itself (T = 128, uniform: 2.9238), which no placement removes.

A model card may list its times (``coding_times``: T + 1 floats for its default T, and
``coding_times_more``: {"T": {"times": [...], "fit": {...}}} for other T such as a slower,
smaller T = 128; written by this module's command); the codec then codes at those levels
when it runs that T, and a file records
their hash (``times_digest``) so that the decoder knows it needs them. A re-ship of new
weights drops the times (training/ship.py): they belong to the weights they were fitted to.

The command that fits and stores them: python -m vdmcodec.training.fit_levels (after ship).
"""
from __future__ import annotations

import copy
import hashlib
import math
import struct
from dataclasses import dataclass

import numpy as np
import torch

from ..diffusion import VDM, scale_pixels
from ..errors import ModelError

HASH_BYTES = 8
LN2 = math.log(2.0)


def uniform_times(steps: int) -> tuple[float, ...]:
    return tuple(i / steps for i in range(steps + 1))


def check_times(times, steps: int | None = None) -> tuple[float, ...]:
    """``times`` as a tuple of floats if it is a valid level grid (0 first, 1 last, strictly
    increasing, ``steps`` + 1 of them when given), else ValueError."""
    try:
        out = tuple(float(v) for v in times)
    except (TypeError, ValueError):
        raise ValueError("level times must be a list of numbers") from None
    if len(out) < 2 or out[0] != 0.0 or out[-1] != 1.0 or any(b <= a for a, b in zip(out, out[1:])):
        raise ValueError("level times must start at 0, end at 1 and increase strictly")
    if steps is not None and len(out) != steps + 1:
        raise ValueError(f"{len(out)} level times for T = {steps} (need T + 1)")
    return out


def times_digest(times) -> str:
    """The level grid's identity in a file: the first 8 bytes of the SHA-256 of the times as
    little-endian float64, in hex."""
    return hashlib.sha256(struct.pack(f"<{len(times)}d", *times)).hexdigest()[: 2 * HASH_BYTES]


def card_times(card: dict, steps: int, where: str = "model") -> tuple[float, ...] | None:
    """The card's level times if it lists them for T = ``steps`` (``coding_times`` for its
    coding T, ``coding_times_more[str(T)]["times"]`` for others), else None (uniform)."""
    times, key = card.get("coding_times"), "coding_times"
    if not isinstance(times, list) or len(times) != steps + 1:
        more = card.get("coding_times_more") or {}
        entry = more.get(str(steps)) if isinstance(more, dict) else None
        if not isinstance(more, dict) or not isinstance(entry, (dict, type(None))):
            raise ModelError(f"{where}: card's coding_times_more must map T to {{'times': [...]}}")
        if entry is not None:
            times, key = entry.get("times"), f"coding_times_more[{steps}]"
    if times is None:
        return None
    try:
        times = check_times(times)
    except ValueError as e:
        raise ModelError(f"{where}: card's {key}: {e}") from None
    return times if len(times) == steps + 1 else None


# ---- channel correlations -----------------------------------------------------------------------
# The network's error eps - eps_hat(z_t) is correlated between the colour channels of a pixel
# (most of it is luminance structure the network has not resolved yet), strongly at high noise
# and hardly at all near t = 0. p(z_s | z_t)'s learned variance is per element; the chain can
# correlate it across channels (level_codecs.p_codec_corr) with R(gamma) measured on training crops
# (``measure``). The mean residual of p is (eps - eps_hat) times a scalar per step, so R
# depends on the level the network runs at, not on the step: one table serves every T.
# A card lists it as ``coding_corr`` {"table": [[gamma, r01, r02, r12], ...], "fit": {...}}.
def check_corr(table) -> tuple[tuple[float, float, float, float], ...]:
    """``table`` as a tuple of (gamma, r_01, r_02, r_12) rows with gamma strictly increasing,
    every r in [-1, 1] and each row's 3x3 correlation matrix positive semi-definite, else
    ValueError."""
    try:
        rows = tuple(tuple(float(v) for v in row) for row in table)
    except (TypeError, ValueError):
        raise ValueError("channel correlations must be a list of [gamma, r01, r02, r12] rows") from None
    if not rows or any(len(r) != 4 or not all(math.isfinite(v) for v in r) for r in rows):
        raise ValueError("channel correlations must be a non-empty list of [gamma, r01, r02, r12] rows")
    if any(b[0] <= a[0] for a, b in zip(rows, rows[1:])):
        raise ValueError("channel correlations' gammas must increase strictly")
    for _, r01, r02, r12 in rows:
        if max(abs(r01), abs(r02), abs(r12)) > 1.0 or 1 + 2 * r01 * r02 * r12 - r01**2 - r02**2 - r12**2 < -1e-12:
            raise ValueError("channel correlations must form a positive semi-definite correlation matrix")
    return rows


def corr_at(table, gamma: float) -> tuple[float, float, float]:
    """(r_01, r_02, r_12) at ``gamma``: linear in gamma between the table's rows, constant
    beyond its ends (plain float arithmetic: the same bits on every machine)."""
    if gamma <= table[0][0]:
        return tuple(table[0][1:])
    if gamma >= table[-1][0]:
        return tuple(table[-1][1:])
    j = max(k for k in range(len(table) - 1) if table[k][0] <= gamma)
    (g0, *a), (g1, *b) = table[j], table[j + 1]
    w = (gamma - g0) / (g1 - g0)
    return tuple(x + w * (y - x) for x, y in zip(a, b))


def corr_digest(table) -> str:
    """The table's identity in a file: ``times_digest`` of its rows, flattened."""
    return times_digest([v for row in table for v in row])


def card_corr(card: dict, where: str = "model") -> tuple[tuple[float, float, float, float], ...] | None:
    """The card's channel correlation table (``coding_corr``), else None."""
    entry = card.get("coding_corr")
    if entry is None:
        return None
    if not isinstance(entry, dict):
        raise ModelError(f"{where}: card's coding_corr must be {{'table': [...], 'fit': {{...}}}}")
    try:
        return check_corr(entry.get("table"))
    except ValueError as e:
        raise ModelError(f"{where}: card's coding_corr: {e}") from None


def corr_table(stats: "LevelStats", every: int = 4) -> list[list[float]]:
    """The table for a card: every ``every``-th candidate of ``stats`` (and the last),
    correlations rounded to 4 decimals and shrunk until each row is PSD."""
    if stats.corr is None:
        raise ValueError("these statistics hold no channel correlations (not a three-channel model)")
    K = len(stats.gamma)
    rows = []
    for k in sorted(set(range(0, K, every)) | {K - 1}):
        r = np.asarray(stats.corr[k], dtype=np.float64)
        while True:
            q = [round(float(v), 4) for v in r]
            if 1 + 2 * q[0] * q[1] * q[2] - q[0] ** 2 - q[1] ** 2 - q[2] ** 2 >= 0:
                break
            r = r * 0.999
        rows.append([float(stats.gamma[k])] + q)
    return [list(r) for r in check_corr(rows)]


# ---- fitting ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class LevelStats:
    """Network statistics at K candidate times: t [K], gamma [K] (float64) and, for a fixed
    subset of subpixels, err2 = (eps - eps_hat)^2 [K, M] and the learned-variance output v
    [K, M] (None without learned variances); for three-channel models, corr [K, 3]: the
    correlations (r_01, r_02, r_12) of eps - eps_hat between channels over every pixel."""

    t: np.ndarray
    gamma: np.ndarray
    err2: np.ndarray
    v: np.ndarray | None
    corr: np.ndarray | None = None


@torch.no_grad()
def measure(model: VDM, crops: np.ndarray, points: int = 257, samples: int = 60_000, seed: int = 0,
            progress=None) -> LevelStats:
    """``LevelStats`` of ``model`` on ``crops`` (uint8 [N, H, W, C]) at ``points`` times
    uniform in [0, 1], one network pass over all crops per time, the same noise at every time."""
    if points < 2:
        raise ValueError(f"need at least 2 candidate times, got {points}")
    gen = torch.Generator().manual_seed(seed)
    x = scale_pixels(torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2))
    eps = torch.randn(x.shape, generator=gen)
    idx = torch.randperm(eps.numel(), generator=gen)[: min(samples, eps.numel())]
    t = torch.linspace(0, 1, points, dtype=torch.float64)
    gamma = copy.deepcopy(model.gamma).to("cpu").double()(t)  # the schedule in float64, as the chain evaluates it
    err2 = np.empty((points, idx.numel()), np.float32)
    v_out = np.empty_like(err2) if model.learned_variance else None
    device = next(model.parameters()).device
    corr = np.empty((points, 3)) if x.shape[1] == 3 else None
    for k in range(points):
        g = gamma[k].float().reshape(1)
        z = model.q_sample(x, g, eps).to(device)
        eps_hat, v = model.eps_and_v(z, g.to(device).expand(x.shape[0]))
        e = eps - eps_hat.float().cpu()
        err2[k] = e.square().flatten()[idx].numpy()
        if corr is not None:
            c = np.corrcoef(e.double().transpose(0, 1).reshape(3, -1).numpy())
            corr[k] = (c[0, 1], c[0, 2], c[1, 2])
        if v_out is not None:
            v_out[k] = v.float().cpu().flatten()[idx].numpy()
        if progress is not None:
            progress(1)
    return LevelStats(t.numpy(), gamma.numpy(), err2, v_out, corr)


def _logsigmoid(a):
    return -np.logaddexp(0.0, -a)


def step_costs(stats: LevelStats, j: int, ks: np.ndarray) -> np.ndarray:
    """Mean KL per dimension (nats) of a step from candidate j (s) to each candidate in ks (t)."""
    g_s, g_t = stats.gamma[j], stats.gamma[ks]
    err2 = stats.err2[ks].astype(np.float64)
    a = np.expm1(g_t - g_s)[:, None]
    if stats.v is None:
        return 0.5 * a[:, 0] * err2.mean(axis=1)
    r = 0.5 * (stats.v[ks].astype(np.float64) + 1.0) * (_logsigmoid(g_t) - _logsigmoid(g_s))[:, None]
    return (0.5 * (r + np.expm1(-r) + np.exp(-r) * a * err2)).mean(axis=1)


def path_cost(stats: LevelStats, path) -> float:
    """The diffusion term (bits per dimension) of the levels at candidate indices ``path``."""
    return float(sum(step_costs(stats, j, np.array([k]))[0] for j, k in zip(path, path[1:]))) / LN2


def optimal_path(stats: LevelStats, steps: int, max_jump: int | None = None) -> list[int]:
    """Candidate indices 0 = p_0 < ... < p_T = K - 1 minimising the total step KL."""
    K = len(stats.t)
    if not 1 <= steps <= K - 1:
        raise ValueError(f"T = {steps} needs between 2 and {K} candidate times; have {K}")
    jump = max_jump or K - 1
    if steps * jump < K - 1:
        raise ValueError(f"T = {steps} steps of at most {jump} candidates cannot span {K - 1}")
    cost = np.full((K, K), np.inf)
    for j in range(K - 1):
        ks = np.arange(j + 1, min(K, j + jump + 1))
        cost[j, ks] = step_costs(stats, j, ks)
    best = np.full(K, np.inf)
    best[0] = 0.0
    back = np.zeros((steps, K), dtype=np.int64)
    for n in range(steps):
        total = best[:, None] + cost  # [from, to]
        back[n] = np.argmin(total, axis=0)
        best = total[back[n], np.arange(K)]
    path = [K - 1]
    for n in range(steps - 1, -1, -1):
        path.append(int(back[n][path[-1]]))
    return path[::-1]


def continuous_term(stats: LevelStats) -> float:
    """The continuous-time diffusion term (bits per dimension): 1/2 int ||eps - eps_hat||^2
    dgamma, by the trapezoid rule over the candidates."""
    e = stats.err2.astype(np.float64).mean(axis=1)
    return float(np.sum(0.25 * (e[1:] + e[:-1]) * np.diff(stats.gamma))) / LN2


def fit(stats: LevelStats, steps: int, max_jump: int | None = None) -> dict:
    """The fitted times and what they gain on ``stats``: a dict with ``times`` (T + 1 floats),
    ``uniform_bpd`` (None unless T divides K - 1), ``fitted_bpd`` and ``continuous_bpd``."""
    K = len(stats.t)
    path = optimal_path(stats, steps, max_jump)
    times = [0.0] + [float(stats.t[k]) for k in path[1:-1]] + [1.0]
    uniform = None
    if (K - 1) % steps == 0:
        uniform = path_cost(stats, list(range(0, K, (K - 1) // steps)))
    return {"times": check_times(times, steps), "uniform_bpd": uniform, "fitted_bpd": path_cost(stats, path),
            "continuous_bpd": continuous_term(stats)}
