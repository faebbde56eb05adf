"""The per-level numbers of the diffusion chain (chain.py): for levels i = 0..T at times t_i,
gamma_i = -log SNR, alpha_i and sigma_i, the standard deviations of q(z_i | z_{i-1}) and
p(z_i | z_{i+1}), the latent bin delta_i, the window of p(x | z_0), and the initial-bits
estimate. They depend on the schedule, the times and the coder's constants only, never on
the data, and are computed once per chain (``LevelGrid.of``).

Discretisation: z_i lives on the grid delta_i * Z with delta_i = 2^-grid_bits *
min(std of q(z_i | z_{i-1}), std of p(z_i | z_{i+1})) (the CoderSpec's "min-std" rule). Both
distributions that touch z_i (the posterior it is popped from and the model it is pushed
with) use that same grid, so the log delta_i terms cancel.

The grid is coarse by default (grid_bits = 2, bins of a quarter std). Measured with the
shipped MNIST model (step 9.5k), T = 128, validation images 8000-8047, one coding run
each, against a discrete ELBO of 1.196-1.199 bpd (three noise seeds):

    grid_bits      0      1      2      3      4      6      8
    rate (bpd)   1.2032 1.1973 1.1956 1.1939 1.2007 1.2185 1.2585
    initial bits   6.0    8.0   10.0   12.0   14.0   18.0   22.0   (per dimension)

Finer grids do not approach the ELBO here: they cost more (+1.7% at 6, +5% at 8),
and every extra grid bit costs two more initial bits per dimension (the first two pops
happen before any push returns bits). Why fine grids lose is not settled; the rate of
popping from a stack whose top was just written by the level below is the suspect (see
``ans.whitened``). At 2 bits the rate is within the measurement noise of the ELBO.

Arithmetic: the numbers are float64, from the schedule in float64 and elementwise functions
that are numpy's / libm's, or exact.py's in the portable arithmetic (``elementwise``), which
give the same bits on any CPU and thread count.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..diffusion import VOCAB, scale_pixels
from . import exact, levels
from .spec import CoderSpec

LOG2_SQRT_2PI_E = 2.047095585180641  # 0.5 log2(2 pi e), written out: a decoder must not depend on its libm


@dataclass(frozen=True)
class Elementwise:
    """exp, expm1, log and sigmoid on float64 arrays in one arithmetic."""

    exp: Callable
    expm1: Callable
    log: Callable
    sigmoid: Callable
    portable: bool  # exact.py's functions: the same bits everywhere


def _np_of(f):
    """A float64 numpy version of an exact.py function (scalars and arrays)."""
    def g(x):
        arr = np.asarray(x, dtype=np.float64)
        return f(torch.from_numpy(np.ascontiguousarray(arr.reshape(-1)))).numpy().reshape(arr.shape)
    return g


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * v))


NUMPY = Elementwise(np.exp, np.expm1, np.log, _sigmoid, portable=False)
PORTABLE = Elementwise(_np_of(exact.exp), _np_of(exact.expm1), _np_of(exact.log), _np_of(exact.sigmoid), portable=True)


def elementwise(portable: bool) -> Elementwise:
    """The elementwise functions of the portable arithmetic (exact.py) or of the float ones (numpy)."""
    return PORTABLE if portable else NUMPY


def level_gamma(schedule: torch.nn.Module, steps: int, times: tuple[float, ...] | None, portable: bool) -> np.ndarray:
    """gamma_i = gamma(t_i) (float64, [T + 1]) of ``schedule`` at the level times (levels.py;
    None: t_i = i / T), in the portable arithmetic (exact.py) or torch's float64."""
    if times is None:
        t = torch.arange(steps + 1, dtype=torch.float64) / steps
    else:
        t = torch.tensor(levels.check_times(times, steps), dtype=torch.float64)
    if portable:
        return exact.schedule_gamma(schedule, t).numpy()
    sched = copy.deepcopy(schedule).to("cpu").double()
    with torch.no_grad():
        return sched(t).numpy()


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=np.float64)
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class LevelGrid:
    """The chain's per-level numbers, float64 arrays over levels i = 0..T (read-only)."""

    gamma: np.ndarray  # -log SNR at t_i
    alpha: np.ndarray  # sqrt(sigmoid(-gamma_i))
    sigma: np.ndarray  # sqrt(sigmoid(gamma_i))
    a_q: np.ndarray    # q(z_i | z_{i-1}) = N(a_q[i] z_{i-1}, std_q[i]^2); a_q[0] = 1
    std_q: np.ndarray  # level 0: q(z_0 | x) = N(alpha_0 x, sigma_0^2)
    std_p: np.ndarray  # std of p(z_i | z_{i+1}) (VDM eq. 29); level T: the prior N(0, 1)
    delta: np.ndarray  # latent bin of level i
    x_means: np.ndarray  # alpha_0 x for the pixel values x = 0..255, increasing
    x_half: int        # p(x | z_0)'s window: this many values each side of the nearest
    x_width: int       # values in p(x | z_0)'s window

    def __post_init__(self):
        for name in ("gamma", "alpha", "sigma", "a_q", "std_q", "std_p", "delta", "x_means"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))

    @classmethod
    def of(cls, gamma: np.ndarray, grid_bits: int, spec: CoderSpec, fn: Elementwise) -> LevelGrid:
        """The grid of the levels with -log SNR ``gamma`` ([T + 1]), in the arithmetic ``fn``."""
        g = np.asarray(gamma, dtype=np.float64)
        T = g.size - 1
        alpha = np.sqrt(fn.sigmoid(-g))
        sigma = np.sqrt(fn.sigmoid(g))
        a_q = np.ones(T + 1)
        a_q[1:] = alpha[1:] / alpha[:-1]
        std_q = np.empty(T + 1)
        std_q[0] = sigma[0]
        std_q[1:] = sigma[1:] * np.sqrt(-fn.expm1(g[:-1] - g[1:]))
        std_p = np.empty(T + 1)
        std_p[:T] = sigma[:T] * np.sqrt(-fn.expm1(g[:T] - g[1:]))
        std_p[T] = 1.0
        if not (np.all(std_q > 0) and np.all(std_p > 0)):
            raise ValueError("the schedule is not strictly increasing on this T: a step has zero variance")
        delta = 2.0 ** (-grid_bits) * np.minimum(std_q, std_p)
        # p(x | z_0)'s window: z_0 lies within (q_window_stds sigma_0 + 2 delta_0) of alpha_0 x,
        # so x lies within twice that of the value nearest to z_0 / alpha_0
        x_means = alpha[0] * scale_pixels(torch.arange(VOCAB)).double().numpy()
        step = float(np.diff(x_means).min())  # alpha_0 times the spacing of the scaled pixel values
        reach = max(2.0 * (spec.q_window_stds * sigma[0] + 2.0 * delta[0]), spec.x_window_stds * sigma[0])
        x_half = min(VOCAB - 1, math.ceil(reach / step) + 1)
        # latent symbols are int32 (escapes code them raw): |z| up to 64 must fit
        if (64.0 / delta).max() >= 2**31 - 1:
            raise ValueError("latent grid too fine for 32-bit symbols; lower grid_bits")
        return cls(gamma=g, alpha=alpha, sigma=sigma, a_q=a_q, std_q=std_q, std_p=std_p, delta=delta,
                   x_means=x_means, x_half=x_half, x_width=min(VOCAB, 2 * x_half + 1))

    @property
    def steps(self) -> int:
        """T."""
        return self.gamma.size - 1

    def initial_bits_per_dim(self) -> float:
        """Upper estimate of the stack deficit of one batch, per dimension: the running
        balance of (entropies of pushes) - (entropies of pops) along the encoder's order,
        taking its lowest point (the bits a chain needs before it starts)."""
        h_q = np.log2(self.std_q / self.delta) + LOG2_SQRT_2PI_E
        h_p = np.log2(self.std_p / self.delta) + LOG2_SQRT_2PI_E
        balance, worst = 0.0, 0.0
        balance -= h_q[0]
        worst = min(worst, balance)
        for i in range(1, self.steps + 1):
            balance -= h_q[i]
            worst = min(worst, balance)
            balance += h_p[i - 1]
        return -worst
