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
three colour channels, as the network's error is (``level_codecs.p_codec_corr``; the correlations come from
the model card, levels.py). Coded as channel 0, then 1 given 0, then 2 given 0 and 1.

Priors (priors/): a batch is coded with one ``TilePrior``, its structure prior (which
adjusts the network's eps_hat), its origin in the image and its share of the channel
correlations; the default, ``NO_PRIOR``, is the network alone with a factorised p.

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
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..diffusion import VDM, scale_pixels
from ..networks import ConditioningCache
from . import exact, levels
from .ans import Message, PushPop, bit_swap, counted, whitened
from .arithmetic import ARITHMETIC, run_network
from .container import MAX_GRID_BITS, MIN_CHUNK_GRID_BITS
from .grid import LOG2_SQRT_2PI_E, LevelGrid, elementwise, level_gamma
from .level_codecs import p_codec, q_codec, x_codec
from .priors import NO_PRIOR, TilePrior
from .spec import CURRENT, CoderSpec, check_spec


@dataclass(frozen=True)
class ChainConfig:
    steps: int = 100    # T
    grid_bits: int = 2  # latent bin = 2^-grid_bits of the narrower of the two stds (grid.py); below 1 only for chunks
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
        if not _is_int(self.grid_bits) or not MIN_CHUNK_GRID_BITS <= self.grid_bits <= MAX_GRID_BITS:
            raise ValueError(f"grid_bits must be an integer in [{MIN_CHUNK_GRID_BITS}, {MAX_GRID_BITS}], got {self.grid_bits!r}")
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
        self.fn = elementwise(self.portable)  # exp, expm1, log in this arithmetic (grid.py)
        if self.portable:
            self.network = None
            self._exact_net = exact.network_for(model, next(model.parameters()).device)
        elif self._memory_format == torch.contiguous_format and model.amp_dtype == self.arithmetic.autocast:
            self.network = model
        else:
            # the network in that layout and precision: a copy, so that other users of the model keep theirs
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
        self._root = self  # the chain whose clock counts this one's network calls (``on_grid``)

    def on_grid(self, grid_bits: int) -> "DiffusionChain":
        """This chain on another latent grid (the network, level times and coder shared):
        itself for its own grid."""
        if grid_bits == self.cfg.grid_bits:
            return self
        other = copy.copy(self)
        other.cfg = replace(self.cfg, grid_bits=grid_bits)  # validated by its __post_init__
        other.grid = LevelGrid.of(self.grid.gamma.copy(), grid_bits, self.spec, self.fn)
        return other

    def initial_bits_per_dim(self) -> float:
        """The bits per dimension one batch needs on the stack before it starts
        (``LevelGrid.initial_bits_per_dim``)."""
        return self.grid.initial_bits_per_dim()

    # ---- the network -----------------------------------------------------------------
    def p_mean_std(self, z_i: np.ndarray, i: int, prior: TilePrior = NO_PRIOR) -> tuple[np.ndarray, np.ndarray | None]:
        """Mean of p(z_{i-1} | z_i) (float64) from the float32 network output, and with
        learned variances its std per element (iDDPM: between beta-tilde, the grid's std_p,
        and beta), else None (std_p). ``prior``: the batch's TilePrior, whose structure prior
        (priors/structure.py: block differences; priors/jpeg_prior.py: luma and chroma DCT
        coefficients) replaces the network's prediction by its posterior means. Inside a
        ``timed`` block, its time and calls are counted."""
        clock = self._root._clock
        if clock is None:
            return self._p_mean_std(z_i, i, prior)
        t0 = time.perf_counter()
        try:
            return self._p_mean_std(z_i, i, prior)
        finally:
            clock.seconds += time.perf_counter() - t0
            clock.calls += 1

    @contextmanager
    def timed(self):
        """Count the time and calls of ``p_mean_std`` (the network's share of coding) while
        the block runs, its ``on_grid`` copies' included: yields a NetworkClock that grows; the
        chain counts nothing after."""
        root = self._root
        outer, root._clock = root._clock, NetworkClock()
        try:
            yield root._clock
        finally:
            root._clock = outer

    @torch.no_grad()
    def _p_mean_std(self, z_i: np.ndarray, i: int, prior: TilePrior):
        if self.portable:
            eps_hat, v = self._exact_eps_and_v(z_i, i)
        else:
            eps_hat, v = self._network_eps_and_v(z_i, self.gamma_f32[i].expand(z_i.shape[0]), self._conditioning)
        return self._mean_std(z_i, i, eps_hat, v, prior)

    def _network_eps_and_v(self, z: np.ndarray, gamma: torch.Tensor, conditioning=None):
        """The network's eps_hat and v (float64 numpy; v None without learned variances) on
        latents ``z`` (float64 [B, C, H, W]) at noise levels ``gamma`` (float32 [B])."""
        device = next(self.network.parameters()).device
        z32 = torch.from_numpy(z.astype(np.float32)).to(device).contiguous(memory_format=self._memory_format)
        eps_hat, v = run_network(self.network, z32, gamma.to(device), self.arithmetic, conditioning)
        eps_hat = eps_hat.to("cpu", torch.float32).numpy().astype(np.float64)
        return eps_hat, (None if v is None else v.to("cpu", torch.float32).numpy().astype(np.float64))

    @torch.no_grad()
    def p_mean_std_levels(self, batches: list[tuple[np.ndarray, int]], call: int = 64) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """``p_mean_std`` (no prior) of each (z_i, i) in ``batches``, latents of one shape
        [B_k, C, H, W], with the levels mixed in network calls of at most ``call`` images: for
        the encoder's estimates on crops (preflight.Probe), where a call per level would see two
        crops at a time (twice the time per crop, measured on 64x64 crops, 2026-12-07). Outputs
        depend on how the calls are batched: never use it for a coded bit. The portable
        arithmetic runs a call per level."""
        if self.portable or not batches:
            return [self._p_mean_std(z, i, NO_PRIOR) for z, i in batches]
        z_all = np.concatenate([z for z, _ in batches])
        gam = torch.cat([self.gamma_f32[i].expand(z.shape[0]) for z, i in batches])
        outs = [self._network_eps_and_v(z_all[k : k + call], gam[k : k + call]) for k in range(0, len(z_all), call)]
        eps_all = np.concatenate([e for e, _ in outs])
        v_all = None if outs[0][1] is None else np.concatenate([v for _, v in outs])
        res, k = [], 0
        for z, i in batches:
            n = z.shape[0]
            res.append(self._mean_std(z, i, eps_all[k : k + n], None if v_all is None else v_all[k : k + n], NO_PRIOR))
            k += n
        return res

    def _mean_std(self, z_i: np.ndarray, i: int, eps_hat: np.ndarray, v: np.ndarray | None, prior: TilePrior):
        """p(z_{i-1} | z_i)'s mean and std (None: std_p) from the network's eps_hat and v."""
        grid, fn = self.grid, self.fn
        eps_hat = prior.adjust_eps(eps_hat, z_i, float(grid.alpha[i]), float(grid.sigma[i]), fn.exp, fn.log)
        g_t, g_s = grid.gamma[i], grid.gamma[i - 1]
        expm1, log = ((lambda v: float(fn.expm1(v)), lambda v: float(fn.log(v))) if self.portable
                      else (math.expm1, math.log))  # (the float arithmetics' files were written with libm's)
        c = -expm1(g_s - g_t)
        mean = grid.alpha[i - 1] / grid.alpha[i] * (z_i - c * grid.sigma[i] * eps_hat)
        if v is None:
            return mean, None
        frac = (v + 1.0) / 2.0
        log_ratio = 2.0 * (log(grid.sigma[i]) - log(grid.sigma[i - 1]))  # log beta / beta-tilde
        return mean, grid.std_p[i - 1] * fn.exp(0.5 * frac * log_ratio)

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

    def _corr(self, i: int, prior: TilePrior):
        """The channel correlations for p(z_{i-1} | z_i) (the network runs at level i) as
        ``prior`` takes them (TilePrior.corr), or None (p factorises)."""
        return prior.corr(None if self.corr is None else self.corr[i])

    # ---- the chain -----------------------------------------------------------------------
    def codec(self, shape: tuple[int, int, int, int], progress=None, prior: TilePrior = NO_PRIOR) -> PushPop:
        """The codec of a batch x (uint8 [B, C, H, W] of ``shape``): ``ans.bit_swap`` over the
        levels x -> z_0 -> z_1 -> ... -> z_T, latents as integer grid indices k_i (z_i = k_i
        delta_i). Level 0: q(z_0 | x) and p(x | z_0); level i >= 1: q(z_i | z_{i-1}) and
        p(z_{i-1} | z_i) from the network at z_i (``prior``: see ``p_mean_std`` and
        ``_corr``); z_T with the prior N(0, I). Every
        posterior pop reads whitened bits. ``progress(1)`` after each network level."""
        n, grid, spec = math.prod(shape), self.grid, self.spec

        def z(i: int, k: np.ndarray) -> np.ndarray:
            return (k * grid.delta[i]).reshape(shape)

        def posterior(i: int):
            def q(y: np.ndarray) -> PushPop:
                mean = grid.alpha[0] * scale_pixels(torch.from_numpy(y)).double().numpy() if i == 0 else grid.a_q[i] * z(i - 1, y)
                return whitened(q_codec(grid, spec, i, mean), self._whiten_digits(i, n), key=i)
            return q

        def likelihood(i: int):
            if i == 0:
                return lambda k: x_codec(grid, spec, self.fn, z(0, k))

            def p(k: np.ndarray) -> PushPop:
                codec = p_codec(grid, spec, i - 1, *self.p_mean_std(z(i, k), i, prior), self._corr(i, prior))
                return codec if progress is None else counted(codec, progress)
            return p

        levels = [(posterior(i), likelihood(i)) for i in range(self.cfg.steps + 1)]
        return bit_swap(p_codec(grid, spec, self.cfg.steps, np.zeros(shape)), levels)

    def push(self, msg: Message, x: np.ndarray, progress=None, prior: TilePrior = NO_PRIOR) -> None:
        """Encode a batch x (uint8 [B, C, H, W]) onto the stack (``codec``; the decoder must
        pass the same ``prior``)."""
        self.codec(x.shape, progress, prior).push(msg, x)

    def pop(self, msg: Message, shape: tuple[int, int, int, int], progress=None,
            prior: TilePrior = NO_PRIOR) -> np.ndarray:
        """Decode a batch of the given shape [B, C, H, W] from the stack."""
        return self.codec(shape, progress, prior).pop(msg)

