"""Bits-back coding over the VDM's discrete-time latent chain (Bit-Swap ordering).

With T steps, levels i = 0..T sit at t_i = i/T (or at times fitted to the model: levels.py)
and z_i ~ q(z_i | x). Encoding a batch x:

    pop z_0 ~ q(z_0 | x);  push x with p(x | z_0)
    for i = 1..T:  pop z_i ~ q(z_i | z_{i-1});  push z_{i-1} with p(z_{i-1} | z_i)
    push z_T with the prior N(0, I)

and decoding runs the mirror image. The net length is -log p(x, z_{0:T}) + log q(z_{0:T} | x),
whose expectation is the T-step negative ELBO; only the first pop needs bits that the
chain has not pushed itself (Bit-Swap), so one level's worth of "initial bits" suffices.

The latents are integers on per-level grids, z_i = k_i delta_i; those grids and the
level's alpha, sigma and standard deviations are ``grid.LevelGrid`` (grid.py, which also
holds the measurement behind the default grid_bits = 2).

Channel correlations (``ChainConfig.channel_corr``): with learned variances, p(z_{i-1} | z_i)
can be a Gaussian per pixel whose extra variance (beyond beta-tilde) is correlated across the
three colour channels, as the network's error is (``_p_codec_corr``; the correlations come from
the model card, levels.py). Coded as channel 0, then 1 given 0, then 2 given 0 and 1.

The coder's constants (the windows, p(x | z_0)'s rows per call, the whitening digits, the
grid rule) are those of a format version (spec.py; ``ChainConfig.spec``): a decoder runs the
record of the file's version, so retuning one is a new format version, never an edit.

Determinism: the coder's parameters are float64 numpy computed from (a) the schedule in
float64 (grid.py) and (b) the network's output (float32, or bfloat16 autocast's, cast to float32) on
the float32 latent; the decoder feeds the network bit-identical inputs in the same batch
shapes, memory format and precision (the container's dtype byte names them: arithmetic.py).
The portable arithmetic computes (a) and (b) with exact.py instead, from the
float64 latent, which gives the same bits on any CPU and thread count.
"""
from __future__ import annotations

import copy
import math
import numbers
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from ..diffusion import VDM, VOCAB, scale_pixels
from ..networks import ConditioningCache
from . import exact, levels
from .ans import (Message, PushPop, autoregressive, bit_swap, categorical, counted, permuted, whitened,
                  windowed_gaussian)
from .arithmetic import ARITHMETIC
from .grid import LOG2_SQRT_2PI_E, MAX_GRID_BITS, MIN_GRID_BITS, LevelGrid, elementwise, level_gamma
from .spec import CURRENT, CoderSpec, check_spec


@dataclass(frozen=True)
class ChainConfig:
    steps: int = 100    # T
    grid_bits: int = 2  # latent bin = 2^-grid_bits of the narrower of the two stds (see above)
    whiten: bool = True  # mask the stack top before each posterior pop
    arithmetic: str = "float32"  # a key of ARITHMETIC
    times: tuple[float, ...] | None = None  # level times t_0..t_T (levels.py); None: t_i = i / T
    # the network error's correlation between colour channels as a function of gamma, rows
    # (gamma, r_01, r_02, r_12) (levels.py: channel correlations); None: p factorises over channels
    channel_corr: tuple[tuple[float, float, float, float], ...] | None = None
    spec: CoderSpec = CURRENT  # the coder's constants: those of the file's format version (spec.py)

    def __post_init__(self):
        # refused here, before any work: a chain the container would refuse to record
        if not _is_int(self.steps) or self.steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {self.steps!r}")
        if not _is_int(self.grid_bits) or not MIN_GRID_BITS <= self.grid_bits <= MAX_GRID_BITS:
            raise ValueError(f"grid_bits must be an integer in [{MIN_GRID_BITS}, {MAX_GRID_BITS}], got {self.grid_bits!r}")
        if self.arithmetic not in ARITHMETIC:
            raise ValueError(f"arithmetic must be one of {', '.join(ARITHMETIC)}, got {self.arithmetic!r}")
        check_spec(self.spec)


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


@dataclass
class NetworkClock:
    """The time (seconds) and calls of ``DiffusionChain.p_mean_std`` inside a ``timed`` block."""

    seconds: float = 0.0
    calls: int = 0


class DiffusionChain:
    """The T-step chain for one model: per-level grids and the push/pop of a batch."""

    def __init__(self, model: VDM, cfg: ChainConfig):
        self.model, self.cfg, self.spec = model, cfg, cfg.spec  # cfg validated itself (__post_init__)
        self.arithmetic = ARITHMETIC[cfg.arithmetic]
        self._memory_format = self.arithmetic.memory_format
        self.portable = self.arithmetic.portable
        self.fn = elementwise(self.portable)  # exp, expm1, log of this arithmetic
        if self.portable:
            self.network = None
            self._exact_net = exact.network_for(model, next(model.parameters()).device)
        elif self._memory_format == torch.contiguous_format and model.amp_dtype == self.arithmetic.autocast:
            self.network = model
        else:
            # the network in that layout and precision (a copy, so other users of the model keep theirs)
            self.network = copy.deepcopy(model).to(memory_format=self._memory_format)
            self.network.amp_dtype = self.arithmetic.autocast
        self.grid = LevelGrid.of(level_gamma(model.gamma, cfg.steps, cfg.times, self.portable), cfg.grid_bits,
                                 self.spec, self.fn)
        g = self.grid.gamma
        # per level i: the correlations of p(z_{i-1} | z_i)'s extra variance between channels
        self.corr = (None if cfg.channel_corr is None
                     else np.array([levels.corr_at(cfg.channel_corr, float(v)) for v in g]))
        self.gamma_f32 = torch.from_numpy(g.astype(np.float32))
        # the network's time conditioning at each level, shared by the segments coded at it
        # (bit-identical to recomputing it: networks.ConditioningCache)
        self._conditioning = ConditioningCache()
        self._clock: NetworkClock | None = None  # counts p_mean_std inside a ``timed`` block

    def initial_bits_per_dim(self) -> float:
        """The bits per dimension one batch needs on the stack before it starts
        (``LevelGrid.initial_bits_per_dim``)."""
        return self.grid.initial_bits_per_dim()

    # ---- the network -----------------------------------------------------------------
    def p_mean_std(self, z_i: np.ndarray, i: int, structure=None,
                   origin: tuple[int, int] = (0, 0)) -> tuple[np.ndarray, np.ndarray | None]:
        """Mean of p(z_{i-1} | z_i) (float64) from the float32 network output, and with
        learned variances its std per element (iDDPM: between beta-tilde, the grid's std_p,
        and beta), else None (std_p). ``structure``: a structure prior (structure.py: block
        differences; jpeg_prior.py: luma and chroma DCT coefficients) whose posterior means replace the
        network's prediction for the batch, whose pixel (0, 0) sits at image coordinates
        ``origin``. Inside a ``timed`` block, its time and calls are counted."""
        if self._clock is None:
            return self._p_mean_std(z_i, i, structure, origin)
        t0 = time.perf_counter()
        try:
            return self._p_mean_std(z_i, i, structure, origin)
        finally:
            self._clock.seconds += time.perf_counter() - t0
            self._clock.calls += 1

    @contextmanager
    def timed(self):
        """Count the time and calls of ``p_mean_std`` (the network's share of coding) while
        the block runs: yields a NetworkClock that grows; the chain counts nothing after."""
        outer, self._clock = self._clock, NetworkClock()
        try:
            yield self._clock
        finally:
            self._clock = outer

    @torch.no_grad()
    def _p_mean_std(self, z_i: np.ndarray, i: int, structure, origin: tuple[int, int]):
        if self.portable:
            eps_hat, v = self._exact_eps_and_v(z_i, i)
        else:
            device = next(self.network.parameters()).device
            z32 = torch.from_numpy(z_i.astype(np.float32)).to(device).contiguous(memory_format=self._memory_format)
            gam = self.gamma_f32[i].expand(z32.shape[0]).to(device)
            eps_hat, v = self.network.eps_and_v(z32, gam, self._conditioning)
            eps_hat = eps_hat.to("cpu", torch.float32).numpy().astype(np.float64)
            v = None if v is None else v.to("cpu", torch.float32).numpy().astype(np.float64)
        if structure is not None:
            eps_hat = structure.adjust_eps(eps_hat, z_i, float(self.grid.alpha[i]), float(self.grid.sigma[i]), origin,
                                           self.fn.exp, self.fn.log)
        g_t, g_s = self.grid.gamma[i], self.grid.gamma[i - 1]
        expm1, log = ((lambda v: float(self.fn.expm1(v)), lambda v: float(self.fn.log(v))) if self.portable
                      else (math.expm1, math.log))  # (the float arithmetics' files were written with libm's)
        c = -expm1(g_s - g_t)
        mean = self.grid.alpha[i - 1] / self.grid.alpha[i] * (z_i - c * self.grid.sigma[i] * eps_hat)
        if v is None:
            return mean, None
        frac = (v + 1.0) / 2.0
        log_ratio = 2.0 * (log(self.grid.sigma[i]) - log(self.grid.sigma[i - 1]))  # log beta / beta-tilde
        return mean, self.grid.std_p[i - 1] * self.fn.exp(0.5 * frac * log_ratio)

    def _exact_eps_and_v(self, z_i: np.ndarray, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        """VDM.eps_and_v in portable arithmetic, on the float64 latent itself."""
        model = self.model
        t_norm = (torch.tensor(self.grid.gamma[i], dtype=torch.float64) - model.cfg.cond_gamma_min) / (
            model.cfg.cond_gamma_max - model.cfg.cond_gamma_min)
        out = self._exact_net(torch.from_numpy(np.ascontiguousarray(z_i)), t_norm.expand(z_i.shape[0]))
        C = z_i.shape[1]
        eps_hat = out[:, :C].numpy()
        return eps_hat, (exact.tanh(out[:, C:]).numpy() if model.learned_variance else None)

    def _whiten_digits(self, i: int, n: int) -> int:
        """How many 16-bit digits of the stack a posterior pop at level i over ``n`` latents
        reads, with a margin (see ans.whiten); 0 with whitening off."""
        if not self.cfg.whiten:
            return 0
        ratio = np.float64(self.grid.std_q[i] / self.grid.delta[i])
        h_q = (float(self.fn.log(ratio)) / exact.LN2 if self.portable else math.log2(ratio)) + LOG2_SQRT_2PI_E
        return math.ceil(n * h_q / self.spec.whiten_digit_bits) + self.spec.whiten_extra_digits

    def _corr(self, i: int, structure=None, scale: float = 1.0):
        """The channel correlations for p(z_{i-1} | z_i) (the network runs at level i) times
        ``scale`` (the share an image is coded with: the table is an average over training
        crops, and photos differ), or None: none at scale 0, and none with a structure prior,
        whose posterior mean replaces the network's prediction in the structured directions,
        so that the network's error correlations no longer describe what is left (measured
        on woman, a decoded JPEG: +0.19% with them)."""
        if self.corr is None or structure is not None or scale == 0:
            return None
        return tuple(float(scale) * float(v) for v in self.corr[i])

    # ---- codecs for one level ------------------------------------------------------------
    def _q_codec(self, i: int, mean: np.ndarray) -> PushPop:
        """q(z_i | z_{i-1}) (level 0: q(z_0 | x)), truncated to +-spec.q_window_stds std.

        Truncation matters: a pop reads the bits that the previous push left on top of the
        stack, so when the model is miscalibrated an extreme push becomes an extreme pop one
        level up, and with constriction's leaky floor (or escapes) such pops land anywhere
        and feed back along the chain (measured on an early MNIST model, T=20: +120% over
        the ELBO with a +-16 std window and escapes, +16% truncated at 6 std; with
        independent random pops the same grid costs the ELBO)."""
        d, s = self.grid.delta[i], self.grid.std_q[i] / self.grid.delta[i]
        perm = far_order(mean.size)
        base = windowed_gaussian(mean.ravel()[perm] / d, np.full(mean.size, s), math.ceil(self.spec.q_window_stds * s),
                                 escape=False)
        return permuted(base, perm)

    def _p_codec(self, i: int, mean: np.ndarray, std: np.ndarray | None = None, corr=None):
        """p(z_i | z_{i+1}) with the schedule's std_p[i], or a learned std per element; with
        ``corr`` (r_01, r_02, r_12) and three channels, correlated across them (``_p_codec_corr``)."""
        d = self.grid.delta[i]
        if corr is not None and std is not None and mean.ndim == 4 and mean.shape[1] == 3:
            return self._p_codec_corr(i, mean, std, corr)
        s = np.full(mean.size, self.grid.std_p[i] / d) if std is None else np.asarray(std, dtype=np.float64).ravel() / d
        return windowed_gaussian(mean.ravel() / d, s, _window(self.spec.p_window_stds, s))

    def _p_codec_corr(self, i: int, mean: np.ndarray, std: np.ndarray, corr) -> PushPop:
        """p(z_i | z_{i+1}) = N(mean, Sigma) per pixel, Sigma = b I + S R S over its three
        channels: b = beta-tilde (std_p[i]^2), S = diag(sqrt(std^2 - b)) the learned extra std
        (iDDPM's interpolation, which is c^2 Var[x | z_{i+1}] for the ideal model) and R the
        channel correlation ``corr`` of the network's error at this level. The joint Gaussian
        is coded as channel 0, then 1 given 0, then 2 given 0 and 1 (Cholesky factor L of
        Sigma; each conditional on the grid like the factorised p), so the decoder knows the
        channels a conditional mean needs before it pops the next. Only IEEE operations and
        sqrt: the same bits in every arithmetic."""
        d, shape = self.grid.delta[i], mean.shape
        b = self.grid.std_p[i] * self.grid.std_p[i]
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
            return windowed_gaussian(mu.ravel() / d, w, _window(self.spec.p_window_stds, w))

        channels = autoregressive(codec_of, 3)

        def push(msg: Message, k: np.ndarray) -> None:
            k = np.asarray(k, dtype=np.int64).reshape(shape)
            channels.push(msg, [k[:, c].ravel() for c in range(3)])

        def pop(msg: Message) -> np.ndarray:
            parts = channels.pop(msg)
            return np.stack([p.reshape(shape[0], *shape[2:]) for p in parts], axis=1).ravel()

        return PushPop(push, pop)

    def _x_window(self, z_0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """p(x | z_0) (VDM's decoder) on a window of pixel values around z_0 / alpha_0: the
        window's first value per element ([n] int) and its probability rows ([n, W], float64).

        sigma_0 is a small fraction of a pixel step, so nearly all of p's mass sits on one or
        two values; the window (grid.x_half each side of the value nearest to z_0 / alpha_0,
        shifted inside 0..255 at the ends) holds every x that q(z_0 | x), truncated at
        spec.q_window_stds, can have produced, and p's mass beyond spec.x_window_stds std. Rows over
        the whole range cost 256 float64 per subpixel, most of a photo's non-network time."""
        W = self.grid.x_width
        z = z_0.reshape(-1)
        right = np.clip(np.searchsorted(self.grid.x_means, z), 1, VOCAB - 1)  # x_means[right - 1] <= z < x_means[right]
        nearest = right - (z - self.grid.x_means[right - 1] < self.grid.x_means[right] - z)
        lo = np.clip(nearest - self.grid.x_half, 0, VOCAB - W)
        logits = -0.5 * ((z[:, None] - self.grid.x_means[lo[:, None] + np.arange(W)[None]]) / self.grid.sigma[0]) ** 2
        logits -= logits.max(axis=1, keepdims=True)
        p = self.fn.exp(logits)
        if self.portable:  # numpy's sum order depends on the SIMD width
            return lo, p / exact.det_sum(torch.from_numpy(p)).numpy()[:, None]
        return lo, p / p.sum(axis=1, keepdims=True)

    def _x_codec(self, z_0: np.ndarray) -> PushPop:
        """p(x | z_0) over the pixels of a batch, in rows of at most the spec's categorical
        symbols (pushed last row first, so that pops run forward)."""
        zf = z_0.ravel()
        rows = self.spec.max_categorical_symbols
        starts = list(range(0, zf.size, rows))

        def push(msg: Message, x: np.ndarray) -> None:
            xf = x.ravel().astype(np.int64)
            for s in reversed(starts):
                e = s + rows
                lo, probs = self._x_window(zf[s:e])
                sym = xf[s:e] - lo
                if sym.min() < 0 or sym.max() >= self.grid.x_width:  # cannot happen with a truncated q: loud if it does
                    raise RuntimeError("a pixel lies outside p(x | z_0)'s window")
                categorical(probs).push(msg, sym.astype(np.int32))

        def pop(msg: Message) -> np.ndarray:
            parts = []
            for s in starts:
                lo, probs = self._x_window(zf[s : s + rows])
                parts.append(categorical(probs).pop(msg) + lo)
            return np.concatenate(parts).reshape(z_0.shape).astype(np.uint8)

        return PushPop(push, pop)

    # ---- the chain -----------------------------------------------------------------------
    def codec(self, shape: tuple[int, int, int, int], progress=None, structure=None,
              origin: tuple[int, int] = (0, 0), corr_scale: float = 1.0) -> PushPop:
        """The codec of a batch x (uint8 [B, C, H, W] of ``shape``): ``ans.bit_swap`` over the
        levels x -> z_0 -> z_1 -> ... -> z_T, latents as integer grid indices k_i (z_i = k_i
        delta_i). Level 0: q(z_0 | x) and p(x | z_0); level i >= 1: q(z_i | z_{i-1}) and
        p(z_{i-1} | z_i) from the network at z_i (``structure``, ``origin``: see
        ``p_mean_std``; ``corr_scale``: see ``_corr``); z_T with the prior N(0, I). Every
        posterior pop reads whitened bits. ``progress(1)`` after each network level."""
        n = math.prod(shape)

        def z(i: int, k: np.ndarray) -> np.ndarray:
            return (k * self.grid.delta[i]).reshape(shape)

        def posterior(i: int):
            def q(y: np.ndarray) -> PushPop:
                mean = self.grid.alpha[0] * scale_pixels(torch.from_numpy(y)).double().numpy() if i == 0 else self.grid.a_q[i] * z(i - 1, y)
                return whitened(self._q_codec(i, mean), self._whiten_digits(i, n), key=i)
            return q

        def likelihood(i: int):
            if i == 0:
                return lambda k: self._x_codec(z(0, k))

            def p(k: np.ndarray) -> PushPop:
                codec = self._p_codec(i - 1, *self.p_mean_std(z(i, k), i, structure, origin),
                                      self._corr(i, structure, corr_scale))
                return codec if progress is None else counted(codec, progress)
            return p

        levels = [(posterior(i), likelihood(i)) for i in range(self.cfg.steps + 1)]
        return bit_swap(self._p_codec(self.cfg.steps, np.zeros(shape)), levels)

    def push(self, msg: Message, x: np.ndarray, progress=None, structure=None,
             origin: tuple[int, int] = (0, 0), corr_scale: float = 1.0) -> None:
        """Encode a batch x (uint8 [B, C, H, W]) onto the stack (``codec``; the decoder must
        pass the same ``structure``, ``origin`` and ``corr_scale``)."""
        self.codec(x.shape, progress, structure, origin, corr_scale).push(msg, x)

    def pop(self, msg: Message, shape: tuple[int, int, int, int], progress=None,
            structure=None, origin: tuple[int, int] = (0, 0), corr_scale: float = 1.0) -> np.ndarray:
        """Decode a batch of the given shape [B, C, H, W] from the stack."""
        return self.codec(shape, progress, structure, origin, corr_scale).pop(msg)


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

