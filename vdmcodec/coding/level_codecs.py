"""The codecs of one level of the diffusion chain (chain.py), on the level's grid (grid.py):
the posterior q(z_i | z_{i-1}) (level 0: q(z_0 | x)), the model p(z_i | z_{i+1}) (factorised,
or correlated across three colour channels), and p(x | z_0) on a window of pixel values.
Latents are integer grid indices k_i (z_i = k_i delta_i); the coder's constants are the
CoderSpec's (spec.py)."""
from __future__ import annotations

import math

import numpy as np
import torch

from ..diffusion import VOCAB
from . import exact
from .ans import Message, PushPop, autoregressive, categorical, permuted, windowed_gaussian
from .grid import Elementwise, LevelGrid
from .spec import CoderSpec


def q_codec(grid: LevelGrid, spec: CoderSpec, i: int, mean: np.ndarray) -> PushPop:
    """q(z_i | z_{i-1}) (level 0: q(z_0 | x)) with mean ``mean``, truncated to
    +-spec.q_window_stds std, popped in ``far_order``.

    Truncation matters: a pop reads the bits that the previous push left on top of the
    stack, so when the model is miscalibrated an extreme push becomes an extreme pop one
    level up, and with constriction's leaky floor (or escapes) such pops land anywhere
    and feed back along the chain (measured on an early MNIST model, T=20: +120% over
    the ELBO with a +-16 std window and escapes, +16% truncated at 6 std; with
    independent random pops the same grid costs the ELBO)."""
    d, s = grid.delta[i], grid.std_q[i] / grid.delta[i]
    perm = far_order(mean.size)
    base = windowed_gaussian(mean.ravel()[perm] / d, np.full(mean.size, s), math.ceil(spec.q_window_stds * s),
                             escape=False)
    return permuted(base, perm)


def p_codec(grid: LevelGrid, spec: CoderSpec, i: int, mean: np.ndarray, std: np.ndarray | None = None,
            corr=None) -> PushPop:
    """p(z_i | z_{i+1}) with the schedule's std_p[i], or a learned std per element; with
    ``corr`` (r_01, r_02, r_12) and three channels, correlated across them (``p_codec_corr``)."""
    d = grid.delta[i]
    if corr is not None and std is not None and mean.ndim == 4 and mean.shape[1] == 3:
        return p_codec_corr(grid, spec, i, mean, std, corr)
    s = np.full(mean.size, grid.std_p[i] / d) if std is None else np.asarray(std, dtype=np.float64).ravel() / d
    return windowed_gaussian(mean.ravel() / d, s, _window(spec.p_window_stds, s))


def p_codec_corr(grid: LevelGrid, spec: CoderSpec, i: int, mean: np.ndarray, std: np.ndarray, corr) -> PushPop:
    """p(z_i | z_{i+1}) = N(mean, Sigma) per pixel, Sigma = b I + S R S over its three
    channels: b = beta-tilde (std_p[i]^2), S = diag(sqrt(std^2 - b)) the learned extra std
    (iDDPM's interpolation, which is c^2 Var[x | z_{i+1}] for the ideal model) and R the
    channel correlation ``corr`` of the network's error at this level. The joint Gaussian
    is coded as channel 0, then 1 given 0, then 2 given 0 and 1 (Cholesky factor L of
    Sigma; each conditional on the grid like the factorised p), so the decoder knows the
    channels a conditional mean needs before it pops the next. Only IEEE operations and
    sqrt: the same bits in every arithmetic."""
    d, shape = grid.delta[i], mean.shape
    b = grid.std_p[i] * grid.std_p[i]
    m = [mean[:, c] for c in range(3)]
    sd = [std[:, c] for c in range(3)]
    s = [np.sqrt(np.maximum(v * v - b, 0.0)) for v in sd]
    r01, r02, r12 = (float(v) for v in corr)
    l00 = sd[0]
    l10 = s[0] * s[1] * r01 / l00
    l11 = np.sqrt(np.maximum(sd[1] * sd[1] - l10 * l10, b))  # >= b exactly when |r_01| <= 1
    l20 = s[0] * s[2] * r02 / l00
    l21 = (s[1] * s[2] * r12 - l20 * l10) / l11
    l22 = np.sqrt(np.maximum(sd[2] * sd[2] - l20 * l20 - l21 * l21, b))  # >= b when R is PSD

    def codec_of(prev: list) -> PushPop:
        if not prev:
            mu, sig = m[0], l00
        else:
            u0 = (prev[0].reshape(m[0].shape) * d - m[0]) / l00
            if len(prev) == 1:
                mu, sig = m[1] + l10 * u0, l11
            else:
                u1 = (prev[1].reshape(m[1].shape) * d - (m[1] + l10 * u0)) / l11
                mu, sig = m[2] + l20 * u0 + l21 * u1, l22
        w = sig.ravel() / d
        return windowed_gaussian(mu.ravel() / d, w, _window(spec.p_window_stds, w))

    channels = autoregressive(codec_of, 3)

    def push(msg: Message, k: np.ndarray) -> None:
        k = np.asarray(k, dtype=np.int64).reshape(shape)
        channels.push(msg, [k[:, c].ravel() for c in range(3)])

    def pop(msg: Message) -> np.ndarray:
        parts = channels.pop(msg)
        return np.stack([p.reshape(shape[0], *shape[2:]) for p in parts], axis=1).ravel()

    return PushPop(push, pop)


def x_window(grid: LevelGrid, fn: Elementwise, z_0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """p(x | z_0) (VDM's decoder) on a window of pixel values around z_0 / alpha_0: the
    window's first value per element ([n] int) and its probability rows ([n, W], float64),
    in the arithmetic ``fn``.

    sigma_0 is a small fraction of a pixel step, so nearly all of p's mass sits on one or
    two values; the window (grid.x_half each side of the value nearest to z_0 / alpha_0,
    shifted inside 0..255 at the ends) holds every x that q(z_0 | x), truncated at
    spec.q_window_stds, can have produced, and p's mass beyond spec.x_window_stds std. Rows
    over the whole range cost 256 float64 per subpixel, most of a photo's non-network time."""
    W, means = grid.x_width, grid.x_means
    z = z_0.reshape(-1)
    right = np.clip(np.searchsorted(means, z), 1, VOCAB - 1)  # means[right - 1] <= z < means[right]
    nearest = right - (z - means[right - 1] < means[right] - z)
    lo = np.clip(nearest - grid.x_half, 0, VOCAB - W)
    logits = -0.5 * ((z[:, None] - means[lo[:, None] + np.arange(W)[None]]) / grid.sigma[0]) ** 2
    logits -= logits.max(axis=1, keepdims=True)
    p = fn.exp(logits)
    if fn.portable:  # numpy's sum order depends on the SIMD width
        return lo, p / exact.det_sum(torch.from_numpy(p)).numpy()[:, None]
    return lo, p / p.sum(axis=1, keepdims=True)


def x_codec(grid: LevelGrid, spec: CoderSpec, fn: Elementwise, z_0: np.ndarray) -> PushPop:
    """p(x | z_0) over the pixels of a batch (``x_window``), in rows of at most the spec's
    categorical symbols (pushed last row first, so that pops run forward)."""
    zf = z_0.ravel()
    rows = spec.max_categorical_symbols
    starts = list(range(0, zf.size, rows))

    def push(msg: Message, x: np.ndarray) -> None:
        xf = x.ravel().astype(np.int64)
        for s in reversed(starts):
            e = s + rows
            lo, probs = x_window(grid, fn, zf[s:e])
            sym = xf[s:e] - lo
            if sym.min() < 0 or sym.max() >= grid.x_width:  # cannot happen with a truncated q: loud if it does
                raise RuntimeError("a pixel lies outside p(x | z_0)'s window")
            categorical(probs).push(msg, sym.astype(np.int32))

    def pop(msg: Message) -> np.ndarray:
        parts = []
        for s in starts:
            lo, probs = x_window(grid, fn, zf[s : s + rows])
            parts.append(categorical(probs).pop(msg) + lo)
        return np.concatenate(parts).reshape(z_0.shape).astype(np.uint8)

    return PushPop(push, pop)


def far_order(n: int) -> np.ndarray:
    """Visit order for posterior pops: start half-way through the batch. A pop reads the
    bits of the push just before it, element by element from the start, so this pairs each
    popped latent with a pushed one from half a batch away (another image when B >= 2)."""
    return np.roll(np.arange(n), -(n // 2))


def _window(stds: float, s: np.ndarray) -> int:
    """p's window half-width in bins: ``stds`` times the widest std. A std that is not a
    positive finite number (a network's NaN on a damaged file's latents) is refused here,
    before constriction sees it."""
    if not s.size:
        return 1
    widest = float(s.max())
    if not (math.isfinite(widest) and float(s.min()) > 0):
        raise ValueError("p's std is not a positive finite number")
    return math.ceil(stds * widest)
