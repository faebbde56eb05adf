"""JPEG-lattice priors: the denoiser told that a photo is a decoded JPEG.

A JPEG decoder's luma plane is the inverse DCT of integer multiples of the quantisation
table's steps q_uv, rounded; the RGB it writes rounds once more. The orthonormal 8 x 8 DCT of
the luma recomputed from such RGB (JFIF weights, minus 128), on the JPEG's own block grid,
lies within about half a unit of the lattice q_uv Z for every coefficient
(benchmarks/jpeg_lattice.py: zebra and woman 0.05-0.08 of a step, 0.25 without a lattice).
The network predicts a smooth distribution for each coefficient; this prior multiplies it
by a comb: per coefficient, the network's prediction as a Gaussian envelope (variance
``tau`` times the latent's noise variance on that coefficient) times (1 - rho) sum_k N(k q,
s^2) / q + rho / A (the broad part keeps the network's value: clipped blocks, coefficients
off the lattice). The posterior mean replaces the network's prediction of the coefficient;
the change of luma goes back to RGB as the smallest change with that luma; chroma keeps the
network's prediction.

Float arithmetic only (the DCT is a matrix product): compress does not offer this prior
with the portable arithmetic.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .structure import LEVEL

MODE_ID = 3
W_LUMA = np.array([0.299, 0.587, 0.114])
BROAD_WIDTH = 2048.0      # the broad part: flat over this many units of a coefficient
ZERO_STEP = 255           # q of a coefficient that is ~0 in every block: the lattice is {0}
MIN_OUTSIDE = 30          # coefficients outside the origin's cell needed to estimate q
MAX_RESIDUAL = 0.15       # mean |c/q - round(c/q)| above which a coefficient gets no prior
SIZE = 1 + 64 + 2 + 2 + 2  # serialised: mode, q[64], spread, tau, rho (u16 each, scaled)


def dct_matrix(n: int = 8) -> np.ndarray:
    k = np.arange(n)
    d = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n))
    d[0] /= np.sqrt(2.0)
    return d


_D = dct_matrix()


def dct2(b: np.ndarray, inverse: bool = False) -> np.ndarray:
    """Orthonormal 2-D DCT D b D^T of [..., 8, 8] blocks (inverse: D^T b D), as two matrix
    products over all blocks at once."""
    m = _D if inverse else _D.T
    t = (b.reshape(-1, 8) @ m).reshape(b.shape).swapaxes(-1, -2)
    return (t.reshape(-1, 8) @ m).reshape(b.shape).swapaxes(-1, -2)


@dataclass(frozen=True)
class JpegPrior:
    q: tuple[int, ...]      # 64 steps, row-major (u, v); 0: no prior on that coefficient
    spread: int             # s in 1/256 units
    tau: int                # envelope variance factor in 1/256
    rho: int                # broad share in 1/65536

    mode = "jpeg"

    def __post_init__(self):
        if len(self.q) != 64 or not all(isinstance(v, int) and 0 <= v <= 255 for v in self.q):
            raise ValueError("jpeg prior steps must be 64 integers in 0..255")
        for name in ("spread", "tau", "rho"):
            v = getattr(self, name)
            if not isinstance(v, int) or not 1 <= v <= 65535:
                raise ValueError(f"jpeg prior {name} must be an integer in 1..65535")

    def to_bytes(self) -> bytes:
        return bytes([MODE_ID]) + bytes(self.q) + np.asarray([self.spread, self.tau, self.rho], dtype="<u2").tobytes()

    @staticmethod
    def from_bytes(data: bytes) -> "JpegPrior":
        s, t, r = (int(v) for v in np.frombuffer(data[65:71], dtype="<u2"))
        return JpegPrior(tuple(data[1:65]), s, t, r)

    def describe(self) -> str:
        return (f"JPEG lattice (q {self.q[1]}, {self.q[8]}, {self.q[9]}...; s {self.spread / 256:.2f}, "
                f"tau {self.tau / 256:.2f})")

    def adjust_eps(self, eps_hat: np.ndarray, z: np.ndarray, alpha: float, sigma: float,
                   origin: tuple[int, int] = (0, 0), exp: Callable = np.exp, log: Callable = np.log) -> np.ndarray:
        B, C, H, W = eps_hat.shape
        oy, ox = (-origin[0]) % 8, (-origin[1]) % 8
        ny, nx = (H - oy) // 8, (W - ox) // 8
        if C != 3 or ny <= 0 or nx <= 0:
            return eps_hat
        win = (slice(None), slice(None), slice(oy, oy + ny * 8), slice(ox, ox + nx * 8))
        x_hat = (z[win] - sigma * eps_hat[win]) / alpha
        # luma minus 128 in pixel units: x_s / LEVEL = x + 1/2 - 128
        y = (W_LUMA[0] * x_hat[:, 0] + W_LUMA[1] * x_hat[:, 1] + W_LUMA[2] * x_hat[:, 2]) / LEVEL - 0.5 * W_LUMA.sum()
        blk = y.reshape(B, ny, 8, nx, 8).transpose(0, 1, 3, 2, 4)                    # [B, ny, nx, 8, 8]
        c = dct2(blk).reshape(B, ny, nx, 64)
        var_noise = (sigma / alpha / LEVEL) ** 2 * float((W_LUMA**2).sum())          # per coefficient
        s2 = (self.spread / 256.0) ** 2
        v = (self.tau / 256.0) * var_noise + s2
        rho = self.rho / 65536.0
        q = np.asarray(self.q, dtype=np.float64)
        sd = math.sqrt(v)
        active = np.flatnonzero((q > 0) & (2.0 * q >= sd))  # no prior, or the comb washed out
        if active.size == 0:
            return eps_hat
        reach = np.ceil(6.0 * sd / q[active]).astype(np.int64) + 1
        log_broad = math.log(rho / BROAD_WIDTH)
        tau_share = (v - s2) / v                            # Gaussian product: towards the lattice point
        new = c.copy()
        for r in np.unique(reach):                          # coefficients with one reach at once
            k = active[reach == r]
            qk, ck = q[k], c[..., k]
            n0 = np.round(ck / qk)
            log_comb = np.log((1.0 - rho) / qk) - 0.5 * math.log(2.0 * math.pi * v)
            offsets = range(-int(r), int(r) + 1)
            logits = [log_comb - 0.5 * np.square((n0 + j) * qk - ck) / v for j in offsets]
            top = np.maximum.reduce(logits + [np.full_like(ck, log_broad)])
            total = exp(log_broad - top)
            mean = total * ck
            for j, lg in zip(offsets, logits):
                p = exp(lg - top)
                total = total + p
                mean = mean + p * (ck + tau_share * ((n0 + j) * qk - ck))
            new[..., k] = mean / total
        dc = (new - c).reshape(B, ny, nx, 8, 8)
        dy = dct2(dc, inverse=True).transpose(0, 1, 3, 2, 4).reshape(B, ny * 8, nx * 8)
        dx = dy[:, None] * (W_LUMA / float((W_LUMA**2).sum()))[None, :, None, None] * LEVEL
        out = eps_hat.copy()
        out[win] = eps_hat[win] - (alpha / sigma) * dx
        return out


def luma(pixels: np.ndarray) -> np.ndarray:
    """JFIF luma minus 128 (float64 [H, W]) of uint8 [H, W, 3] pixels; gray ones as they are."""
    x = pixels.astype(np.float64)
    if x.ndim == 2 or x.shape[-1] == 1:
        return x.reshape(x.shape[0], x.shape[1]) - 128.0
    return W_LUMA[0] * x[..., 0] + W_LUMA[1] * x[..., 1] + W_LUMA[2] * x[..., 2] - 128.0


def block_dct(y: np.ndarray, oy: int = 0, ox: int = 0) -> np.ndarray:
    """[n_blocks, 8, 8] orthonormal DCT of the complete 8x8 blocks of y starting at (oy, ox)."""
    y = y[oy:, ox:]
    h, w = (y.shape[0] // 8) * 8, (y.shape[1] // 8) * 8
    b = y[:h, :w].reshape(h // 8, 8, w // 8, 8).transpose(0, 2, 1, 3).reshape(-1, 8, 8)
    return dct2(b)


def estimate_steps(pixels: np.ndarray) -> tuple[tuple[int, ...], float]:
    """The 64 quantisation steps seen in an RGB image's luma on its own 8 x 8 grid (0 where
    none), and the share of coefficients farther than 1.5 units from their lattice."""
    if pixels.shape[0] < 8 or pixels.shape[1] < 8:
        return (0,) * 64, 1.0
    c = block_dct(luma(pixels)).reshape(-1, 64)
    steps, off = [], []
    for k in range(64):
        vals = c[:, k]
        if (np.abs(vals) > 1.5).sum() < MIN_OUTSIDE:
            steps.append(ZERO_STEP)
            off.append(np.abs(vals) > 1.5)
            continue
        best = None
        for q in range(2, 256):
            keep = np.abs(vals) > q / 2
            if keep.sum() < MIN_OUTSIDE:
                break
            r = vals[keep] / q
            res = float(np.abs(r - np.round(r)).mean())
            if best is None or res < best[0]:
                best = (res, q)
        if best is None or best[0] > MAX_RESIDUAL:
            steps.append(0)
            continue
        q = best[1]
        steps.append(q)
        off.append(np.abs(vals - q * np.round(vals / q)) > 1.5)
    rho = float(np.mean(np.concatenate(off))) if off else 1.0
    return tuple(steps), rho


def candidates(pixels: np.ndarray) -> list[JpegPrior]:
    """JPEG-lattice priors worth trying: RGB images whose luma shows a lattice on at least 8
    of the 64 coefficients, at a few (spread, tau) settings."""
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        return []
    steps, rho = estimate_steps(pixels)
    if sum(1 for q in steps if 0 < q < ZERO_STEP) < 8:
        return []
    r = max(1, min(65535, round(max(rho, 1e-4) * 65536)))
    return [JpegPrior(steps, round(s * 256), round(t * 256), r) for s, t in ((0.7, 1.0), (0.7, 0.25), (0.4, 0.25))]
