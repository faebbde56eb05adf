"""JPEG-lattice priors: the denoiser told that a photo is a decoded JPEG.

A JPEG decoder's luma plane is the inverse DCT of integer multiples of the quantisation
table's steps q_uv, rounded; the RGB it writes rounds once more. The orthonormal 8 x 8 DCT of
the luma recomputed from such RGB (JFIF weights, minus 128), on the JPEG's own block grid,
lies within about half a unit of the lattice q_uv Z for every coefficient
(experiments/jpeg_lattice.py: zebra and woman 0.05-0.08 of a step, 0.25 without a lattice).
The network predicts a smooth distribution for each coefficient; this prior multiplies it
by a comb: per coefficient, the network's prediction as a Gaussian envelope (variance
``tau`` times the latent's noise variance on that coefficient) times (1 - rho) sum_k N(k q,
s^2) / q + rho / A (the broad part keeps the network's value: clipped blocks, coefficients
off the lattice). The posterior mean replaces the network's prediction of the coefficient;
in mode 3 the change of luma goes back to RGB as the smallest change with that luma.

Chroma (mode 4): the decoder also wrote Cb and Cr, each the inverse DCT of multiples of the
chroma table's steps on a plane subsampled by (sy, sx) (4:2:0: 2 x 2), upsampled. The
orthonormal DCT of the means of the recomputed Cb / Cr over each sy x sx cell, on 8 x 8
blocks of cells (the image's own grid of 8 sy x 8 sx pixels), lies near multiples of those
steps too, if less tightly (zebra, woman, foreman, coastguard at 2 x 2: about 0.1 of a step;
ppt3 at 1 x 1), and most high-frequency chroma coefficients are zero in every block. The same
comb with its own spread and broad share gives their posterior means; a change of a cell's
mean goes to each of its pixels, and the changes of (Y, Cb, Cr) go back to RGB through
JFIF's inverse: a luma change keeps the network's chroma (mode 3 moves along the luma
weights, the smallest RGB change, which moves chroma too). Estimated savings on crops
(the structure probe on 4 crops at every level, the step-21,223 weights): luma alone along the luma weights / through
JFIF's inverse / with the chroma term, woman 0.393 / 0.479 / 0.533 bpd, zebra 0.372 / 0.431 /
0.526, foreman 0.159 / 0.196 / 0.221, coastguard 0.218 / 0.276 / 0.269; so every candidate is
mode 4, luma only (no chroma steps) or with the chroma term.

Float arithmetic only (the DCT is a matrix product): compress does not offer this prior
with the portable arithmetic.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .structure import LEVEL

MODE_ID = 3               # luma only
MODE_ID_CHROMA = 4        # luma and chroma
W_LUMA = np.array([0.299, 0.587, 0.114])
W_CB = np.array([-0.168736, -0.331264, 0.5])
W_CR = np.array([0.5, -0.418688, -0.081312])
# JFIF's inverse: the RGB change per unit of Y, Cb, Cr (columns)
YCC_TO_RGB = np.array([[1.0, 0.0, 1.402], [1.0, -0.344136, -0.714136], [1.0, 1.772, 0.0]])
CHROMA_SUBSAMPLING = ((2, 2), (1, 2), (1, 1))  # (sy, sx) the chroma term may name; byte: index
MIN_CHROMA_LATTICE = 4    # chroma coefficients on a lattice (not only zero) a chroma term needs
BROAD_WIDTH = 2048.0      # the broad part: flat over this many units of a coefficient
ZERO_STEP = 255           # q of a coefficient that is ~0 in every block: the lattice is {0}
MIN_OUTSIDE = 30          # coefficients outside the origin's cell needed to estimate q
MAX_RESIDUAL = 0.15       # mean |c/q - round(c/q)| above which a coefficient gets no prior
SIZE = 1 + 64 + 2 + 2 + 2  # serialised: mode, q[64], spread, tau, rho (u16 each, scaled)
SIZE_CHROMA = SIZE + 64 + 1 + 2 + 2  # then qc[64], subsampling byte, spread_c, rho_c


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
    qc: tuple[int, ...] = ()            # chroma: 64 steps shared by Cb and Cr (0: none); (): mode 3
    chroma_sub: tuple[int, int] = (2, 2)  # chroma cells (sy, sx), one of CHROMA_SUBSAMPLING
    spread_c: int = 256                 # chroma's s in 1/256 units
    rho_c: int = 1                      # chroma's broad share in 1/65536

    mode = "jpeg"

    def __post_init__(self):
        for name in ("q",) + (("qc",) if self.qc else ()):
            v = getattr(self, name)
            if len(v) != 64 or not all(isinstance(x, int) and 0 <= x <= 255 for x in v):
                raise ValueError(f"jpeg prior steps {name} must be 64 integers in 0..255")
        for name in ("spread", "tau", "rho", "spread_c", "rho_c"):
            v = getattr(self, name)
            if not isinstance(v, int) or not 1 <= v <= 65535:
                raise ValueError(f"jpeg prior {name} must be an integer in 1..65535")
        if tuple(self.chroma_sub) not in CHROMA_SUBSAMPLING:
            raise ValueError(f"jpeg prior chroma subsampling must be one of {CHROMA_SUBSAMPLING}")

    def to_bytes(self) -> bytes:
        head = np.asarray([self.spread, self.tau, self.rho], dtype="<u2").tobytes()
        if not self.qc:
            return bytes([MODE_ID]) + bytes(self.q) + head
        return (bytes([MODE_ID_CHROMA]) + bytes(self.q) + head + bytes(self.qc)
                + bytes([CHROMA_SUBSAMPLING.index(tuple(self.chroma_sub))])
                + np.asarray([self.spread_c, self.rho_c], dtype="<u2").tobytes())

    @staticmethod
    def from_bytes(data: bytes) -> "JpegPrior":
        s, t, r = (int(v) for v in np.frombuffer(data[65:71], dtype="<u2"))
        if data[0] != MODE_ID_CHROMA:
            return JpegPrior(tuple(data[1:65]), s, t, r)
        if data[135] >= len(CHROMA_SUBSAMPLING):
            raise ValueError(f"unknown chroma subsampling {data[135]}")
        sc, rc = (int(v) for v in np.frombuffer(data[136:140], dtype="<u2"))
        return JpegPrior(tuple(data[1:65]), s, t, r, tuple(data[71:135]), CHROMA_SUBSAMPLING[data[135]], sc, rc)

    def describe(self) -> str:
        out = (f"JPEG lattice (q {self.q[1]}, {self.q[8]}, {self.q[9]}...; s {self.spread / 256:.2f}, "
               f"tau {self.tau / 256:.2f}")
        if any(self.qc):
            sy, sx = self.chroma_sub
            out += f"; chroma {sy}x{sx} q {self.qc[0]}, {self.qc[1]}, {self.qc[8]}..., s {self.spread_c / 256:.2f}"
        elif self.qc:
            out += "; keeps chroma"
        return out + ")"

    def adjust_eps(self, eps_hat: np.ndarray, z: np.ndarray, alpha: float, sigma: float,
                   origin: tuple[int, int] = (0, 0), exp: Callable = np.exp, log: Callable = np.log) -> np.ndarray:
        B, C, H, W = eps_hat.shape
        if C != 3:
            return eps_hat
        x_hat = (z - sigma * eps_hat) / alpha
        noise_sd = sigma / alpha / LEVEL                      # per subpixel, in pixel units
        tau = self.tau / 256.0
        # luma minus 128 in pixel units: x_s / LEVEL = x + 1/2 - 128
        dy = _plane_change(x_hat, W_LUMA, (1, 1), origin, self.q, self.spread, self.rho, noise_sd, tau, exp,
                           offset=-0.5 * W_LUMA.sum())
        if not self.qc:
            if dy is None:
                return eps_hat
            win, d = dy
            dx = d[:, None] * (W_LUMA / float((W_LUMA**2).sum()))[None, :, None, None] * LEVEL
            out = eps_hat.copy()
            out[win] = eps_hat[win] - (alpha / sigma) * dx
            return out
        changes = [dy] + [_plane_change(x_hat, w, self.chroma_sub, origin, self.qc, self.spread_c, self.rho_c,
                                        noise_sd, tau, exp) for w in (W_CB, W_CR)]
        if all(c is None for c in changes):
            return eps_hat
        dx = np.zeros_like(x_hat)
        for j, change in enumerate(changes):                  # (Y, Cb, Cr) changes to RGB
            if change is not None:
                win, d = change
                dx[win] += d[:, None] * YCC_TO_RGB[:, j][None, :, None, None] * LEVEL
        return eps_hat - (alpha / sigma) * dx


def _plane_change(x_hat, w, sub, origin, q, spread, rho, noise_sd, tau, exp, offset=0.0):
    """The posterior-mean change (pixel units) of the plane w . pixel, as (window of the
    [B, 3, H, W] arrays, [B, h, w] change over it), on complete 8 x 8 blocks of (sy, sx)
    cell means on the image's grid; None where no block or coefficient takes part."""
    B, _, H, W = x_hat.shape
    sy, sx = sub
    if not any(q):
        return None
    oy, ox = (-origin[0]) % (8 * sy), (-origin[1]) % (8 * sx)
    ny, nx = (H - oy) // (8 * sy), (W - ox) // (8 * sx)
    if ny <= 0 or nx <= 0:
        return None
    win = (slice(None), slice(None), slice(oy, oy + ny * 8 * sy), slice(ox, ox + nx * 8 * sx))
    xw = x_hat[win]
    y = (w[0] * xw[:, 0] + w[1] * xw[:, 1] + w[2] * xw[:, 2]) / LEVEL + offset
    if sy * sx > 1:
        y = y.reshape(B, ny * 8, sy, nx * 8, sx).mean(axis=(2, 4))
    blk = y.reshape(B, ny, 8, nx, 8).transpose(0, 1, 3, 2, 4)                    # [B, ny, nx, 8, 8]
    c = dct2(blk).reshape(B, ny, nx, 64)
    var_noise = noise_sd**2 * float((w**2).sum()) / (sy * sx)                   # per coefficient
    new = _comb(c, np.asarray(q, dtype=np.float64), tau * var_noise, (spread / 256.0) ** 2, rho / 65536.0, exp)
    if new is None:
        return None
    dc = (new - c).reshape(B, ny, nx, 8, 8)
    d = dct2(dc, inverse=True).transpose(0, 1, 3, 2, 4).reshape(B, ny * 8, nx * 8)
    if sy * sx > 1:
        d = np.repeat(np.repeat(d, sy, axis=1), sx, axis=2)
    return win, d


def _comb(c: np.ndarray, q: np.ndarray, var_env: float, s2: float, rho: float, exp: Callable) -> np.ndarray | None:
    """Posterior means of coefficients c [..., 64] under the network's value as a Gaussian
    envelope (variance var_env) times (1 - rho) sum_k N(k q, s2) / q + rho / BROAD_WIDTH;
    None where no coefficient has a prior or every comb washed out."""
    v = var_env + s2
    sd = math.sqrt(v)
    active = np.flatnonzero((q > 0) & (2.0 * q >= sd))  # no prior, or the comb washed out
    if active.size == 0:
        return None
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
    return new


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


def lattice_steps(c: np.ndarray) -> tuple[list[int], list[np.ndarray]]:
    """Per column of DCT coefficients c [n, 64]: the step q in 2..255 that puts the values
    farthest from the origin's cell nearest to multiples of q (ZERO_STEP where almost every
    value is ~0; 0 where no step fits within MAX_RESIDUAL), and per column with a step the
    mask of values farther than 1.5 units from the lattice."""
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
    return steps, off


def estimate_steps(pixels: np.ndarray) -> tuple[tuple[int, ...], float]:
    """The 64 quantisation steps seen in an RGB image's luma on its own 8 x 8 grid (0 where
    none), and the share of coefficients farther than 1.5 units from their lattice."""
    if pixels.shape[0] < 8 or pixels.shape[1] < 8:
        return (0,) * 64, 1.0
    steps, off = lattice_steps(block_dct(luma(pixels)).reshape(-1, 64))
    rho = float(np.mean(np.concatenate(off))) if off else 1.0
    return tuple(steps), rho


def chroma_coefficients(pixels: np.ndarray, sub: tuple[int, int]) -> np.ndarray:
    """[n, 64] DCT coefficients of the (sy, sx) cell means of JFIF Cb and Cr minus 128 (both
    planes' blocks) of uint8 [H, W, 3] pixels on their own grid."""
    sy, sx = sub
    x = pixels.astype(np.float64)
    h, w = (x.shape[0] // sy) * sy, (x.shape[1] // sx) * sx
    out = []
    for wc in (W_CB, W_CR):
        p = (wc[0] * x[:h, :w, 0] + wc[1] * x[:h, :w, 1] + wc[2] * x[:h, :w, 2])
        out.append(block_dct(p.reshape(h // sy, sy, w // sx, sx).mean(axis=(1, 3))).reshape(-1, 64))
    return np.concatenate(out)


def estimate_chroma(pixels: np.ndarray) -> tuple[tuple[int, ...], tuple[int, int], float, float] | None:
    """The chroma lattice seen in an RGB image: (steps, subsampling, spread, rho) for the
    subsampling whose coefficients fall on a lattice (zero included) most often, if at
    least MIN_CHROMA_LATTICE fall on a non-zero one; spread: the Gaussian s whose mean
    |deviation| matches that of the values near their lattice points. Else None."""
    best = None
    for sub in CHROMA_SUBSAMPLING:
        if pixels.shape[0] < 8 * sub[0] or pixels.shape[1] < 8 * sub[1]:
            continue
        c = chroma_coefficients(pixels, sub)
        steps, off = lattice_steps(c)
        n = sum(1 for q in steps if 0 < q < ZERO_STEP)
        score = n + sum(1 for q in steps if q == ZERO_STEP)
        if n >= MIN_CHROMA_LATTICE and (best is None or score > best[0]):
            best = (score, steps, off, sub, c)
    if best is None:
        return None
    _, steps, off, sub, c = best
    dev = [np.abs(c[:, k] - q * np.round(c[:, k] / q)) for k, q in enumerate(steps) if 0 < q < ZERO_STEP]
    dev = np.concatenate(dev)
    spread = float(dev[dev <= 1.5].mean()) * math.sqrt(math.pi / 2.0)
    rho = float(np.mean(np.concatenate(off)))
    return tuple(steps), sub, spread, rho


LATTICE_GATE_BLOCKS = 512  # blocks has_lattice looks at (every k-th one)
MIN_LATTICE_COLUMNS = 8   # luma coefficients on a lattice that make an image a decoded JPEG


def has_lattice(pixels: np.ndarray, blocks: int = LATTICE_GATE_BLOCKS) -> bool:
    """Whether an RGB image's luma shows a JPEG lattice on at least MIN_LATTICE_COLUMNS of
    the 64 coefficients, judged on every k-th 8 x 8 block (at most ``blocks`` of them): the
    quick test compress runs on every photo (about a tenth of the full estimate's time on
    768 x 512). Measured (2026-12-07) on CSet14, CSet5 and training photos: the five
    decoded JPEGs of the validation sets and the JPEG-history training photos show 31-50
    such coefficients at 512-1024 blocks, every other photo (and every 2x or 3x Lanczos
    downsampled training photo) none."""
    if pixels.ndim != 3 or pixels.shape[-1] != 3 or pixels.shape[0] < 8 or pixels.shape[1] < 8:
        return False
    c = block_dct(luma(pixels)).reshape(-1, 64)
    steps, _ = lattice_steps(c[:: max(1, -(-len(c) // blocks))])
    return sum(1 for q in steps if 0 < q < ZERO_STEP) >= MIN_LATTICE_COLUMNS


def candidates(pixels: np.ndarray) -> list[JpegPrior]:
    """JPEG-lattice priors worth trying: RGB images whose luma shows a lattice on at least 8
    of the 64 coefficients, at a few (spread, tau) settings, each with luma changes that keep
    chroma (mode 4 without chroma steps) and, where the chroma shows a lattice too, with the
    chroma term."""
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        return []
    steps, rho = estimate_steps(pixels)
    if sum(1 for q in steps if 0 < q < ZERO_STEP) < MIN_LATTICE_COLUMNS:
        return []
    r = _u16(max(rho, 1e-4) * 65536)
    settings = [(round(s * 256), round(t * 256)) for s, t in ((0.7, 1.0), (0.7, 0.25), (0.4, 0.25))]
    out = [JpegPrior(steps, s, t, r, (0,) * 64) for s, t in settings]
    chroma = estimate_chroma(pixels)
    if chroma is not None:
        qc, sub, spread_c, rho_c = chroma
        out += [JpegPrior(steps, s, t, r, qc, sub, _u16(spread_c * 256), _u16(max(rho_c, 1e-4) * 65536)) for s, t in settings]
    return out


def _u16(v: float) -> int:
    return max(1, min(65535, round(v)))
