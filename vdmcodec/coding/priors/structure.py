"""Chroma-structure priors: the denoiser told what chroma subsampling left in a photo.

Photos that went through video or JPEG with replicated chroma (4:2:2: one chroma value per
horizontal pixel pair; 4:2:0: per 2 x 2 block) carry an almost exact constraint in RGB: the
chroma differences R - G and B - G are equal (up to the conversion's rounding) over each
block, whatever the luma does. Measured on barbara (4:2:2): the mean |difference| of
R - G between pair mates is 0.04 levels against 5.7 across pairs. JPEG XL's context model
finds this; the network finds it only in part (on barbara the pair-difference directions
of chroma still cost ~0.29 of its 3.37 bpd, where their rounding leaves ~0.08).

A ``StructurePrior`` names the block shape and, per orthogonal block-difference component
(4:2:2: one; 4:2:0: horizontal, vertical and diagonal Haar differences), a discrete prior
over that component's value in integer levels on a (2L + 1)^2 grid (R - G, B - G) plus a
broad component (a flat density over a wide square) for the values off the grid. Given the
noisy latent, the exact posterior mean of each component under that prior (the noise on a
component is Gaussian with a known 2 x 2 covariance; the broad component's share of the
posterior keeps the network's prediction) replaces the network's prediction of it, by the
smallest change of the predicted pixels; everything the prior says nothing about keeps
the network's prediction. The encoder measures the priors on the
image, writes them into the file and uses the prior only where it lowers the estimated
rate (``codec``); the decoder reads them and runs the same float64 arithmetic.

Blocks sit on the image's own grid (origin at pixel (0, 0)); an array that starts at an
odd image coordinate (a segment's ``origin``) is handled by its phase, and incomplete
blocks at its edges keep the network's prediction.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

L = 2                    # prior grid: component values -L..L levels in each of R - G, B - G
CELLS = (2 * L + 1) ** 2
BROAD_SIDE = 512.0       # the broad component: flat over a square of this side (levels)
WEIGHT_MAX = 65535       # priors are stored as uint16 weights, each >= 1
LEVEL = 2.0 / 256.0      # one pixel level in the data scale (diffusion.scale_pixels)
MIN_COVERED = 0.9        # a mode is a candidate when this share of every component falls on the grid

# block shape and the +-1 sign pattern (row-major over the block) of each component
MODES: dict[str, tuple[tuple[int, int], tuple[tuple[int, ...], ...]]] = {
    "422": ((1, 2), ((-1, 1),)),
    "420": ((2, 2), ((-1, 1, -1, 1), (-1, -1, 1, 1), (1, -1, -1, 1))),
}
MODE_IDS = {"422": 1, "420": 2}


@dataclass(frozen=True)
class StructurePrior:
    mode: str                                  # a key of MODES
    # per component: CELLS + 1 uint16 weights >= 1 (last: the broad component); a grid cell of
    # weight 1 is left out of the prior (measure gives weight 1 exactly to the cells no block had)
    weights: tuple[tuple[int, ...], ...]

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown structure mode {self.mode!r}")
        if len(self.weights) != len(MODES[self.mode][1]):
            raise ValueError(f"structure mode {self.mode} has {len(MODES[self.mode][1])} components, got {len(self.weights)}")
        for w in self.weights:
            if len(w) != CELLS + 1 or not all(isinstance(v, int) and 1 <= v <= WEIGHT_MAX for v in w):
                raise ValueError(f"structure weights must be {CELLS + 1} integers in 1..{WEIGHT_MAX}")

    # ---- serialisation ----------------------------------------------------------------
    def describe(self) -> str:
        zero = CELLS // 2
        share = [w[zero] / sum(w) for w in self.weights]
        return f"{self.mode[0]}:{self.mode[1]}:{self.mode[2]} chroma (exact share {', '.join(f'{s:.0%}' for s in share)})"

    def to_bytes(self) -> bytes:
        out = bytes([MODE_IDS[self.mode]])
        for w in self.weights:
            out += np.asarray(w, dtype="<u2").tobytes()
        return out

    @staticmethod
    def size_of(mode_id: int) -> int:
        """Bytes of a serialised prior with this mode byte (0: none, 1 byte)."""
        mode = _mode_of_id(mode_id)
        return 1 if mode is None else 1 + 2 * (CELLS + 1) * len(MODES[mode][1])

    @staticmethod
    def from_bytes(data: bytes) -> "StructurePrior | None":
        mode = _mode_of_id(data[0])
        if mode is None:
            return None
        n = len(MODES[mode][1])
        w = np.frombuffer(data[1 : 1 + 2 * (CELLS + 1) * n], dtype="<u2").reshape(n, CELLS + 1)
        return StructurePrior(mode, tuple(tuple(int(v) for v in row) for row in w))

    # ---- the denoiser's correction ----------------------------------------------------------
    def adjust_eps(self, eps_hat: np.ndarray, z: np.ndarray, alpha: float, sigma: float,
                   origin: tuple[int, int] = (0, 0), exp: Callable = np.exp, log: Callable = np.log) -> np.ndarray:
        """eps_hat (float64 [B, 3, H, W], the network's prediction at latent z with the level's
        alpha, sigma) with every complete block's components set to their posterior means.
        ``origin``: the image coordinates of the array's pixel (0, 0). ``exp`` / ``log``:
        the chain's elementwise functions (the portable arithmetic passes its own)."""
        (by, bx), signs = MODES[self.mode]
        B, C, H, W = eps_hat.shape
        oy, ox = (-origin[0]) % by, (-origin[1]) % bx
        ny, nx = (H - oy) // by, (W - ox) // bx
        if C != 3 or ny <= 0 or nx <= 0:
            return eps_hat
        win = (slice(None), slice(None), slice(oy, oy + ny * by), slice(ox, ox + nx * bx))
        # blocks as [B, 3, ny, nx, n_b] with the block's pixels row-major
        def blocks(a):
            return a[win].reshape(B, C, ny, by, nx, bx).transpose(0, 1, 2, 4, 3, 5).reshape(B, C, ny, nx, by * bx)
        z_b, e_b = blocks(z), blocks(eps_hat)
        x_hat = (z_b - sigma * e_b) / alpha
        y_obs = z_b / alpha
        n_b = by * bx
        grid = _grid_levels() * LEVEL                                   # [CELLS, 2] data scale
        var = n_b * (sigma / alpha) ** 2                                # per component, times [[2, 1], [1, 2]]
        prec = np.array([[2.0, -1.0], [-1.0, 2.0]]) / (3.0 * var)       # inverse of var [[2, 1], [1, 2]]
        # Gaussian normaliser: log(2 pi sqrt(det)), det = 3 var^2; the broad component's density 1 / area
        log_norm = float(log(np.float64(2.0 * np.pi * var * np.sqrt(3.0))))
        log_area = float(log(np.float64((BROAD_SIDE * LEVEL) ** 2)))
        corr = np.zeros_like(x_hat)
        for signs_k, w in zip(signs, self.weights):
            comp_obs, comp_hat = _signed_sum(_chroma(y_obs), signs_k), _signed_sum(_chroma(x_hat), signs_k)  # [B, 2, ny, nx]
            # posterior over the grid's cells; sums run cell by cell (elementwise arithmetic
            # only, so that every machine gets the same bits)
            lw = _log_weights(w, log)
            cells = [k for k in range(CELLS) if w[k] > 1]               # weight 1: a cell the image never had
            logits = []
            for (d0, d1), lw_k in zip(grid[cells], lw[cells]):
                r0, r1 = comp_obs[:, 0] - d0, comp_obs[:, 1] - d1
                logits.append(lw_k - 0.5 * (prec[0, 0] * r0 * r0 + 2.0 * prec[0, 1] * r0 * r1 + prec[1, 1] * r1 * r1)
                              - log_norm)
            logits.append(np.full(comp_obs.shape[:1] + comp_obs.shape[2:], lw[CELLS] - log_area))
            top = logits[0]
            for lg in logits[1:]:
                top = np.maximum(top, lg)
            total, m0, m1 = np.zeros_like(top), np.zeros_like(top), np.zeros_like(top)
            for (d0, d1), lg in zip(grid[cells], logits[:-1]):
                p = exp(lg - top)
                total, m0, m1 = total + p, m0 + p * d0, m1 + p * d1
            p = exp(logits[-1] - top)                                   # broad: keep the network's value
            total, m0, m1 = total + p, m0 + p * comp_hat[:, 0], m1 + p * comp_hat[:, 1]
            e0 = (m0 / total - comp_hat[:, 0]) / n_b                    # per-pixel change of (R - G, B - G)
            e1 = (m1 / total - comp_hat[:, 1]) / n_b
            g = -(e0 + e1) / 3.0                                        # the smallest RGB change with those
            u = np.stack([g + e0, g, g + e1], axis=1)                   # differences: orthogonal to (1, 1, 1)
            corr += u[..., None] * np.asarray(signs_k, dtype=np.float64)
        out = eps_hat.copy()
        dx = corr.reshape(B, C, ny, nx, by, bx).transpose(0, 1, 2, 4, 3, 5).reshape(B, C, ny * by, nx * bx)
        out[win] = eps_hat[win] - (alpha / sigma) * dx
        return out


def _chroma(a: np.ndarray) -> np.ndarray:
    """[B, 3, ...] -> [B, 2, ...]: R - G, B - G."""
    return np.stack([a[:, 0] - a[:, 1], a[:, 2] - a[:, 1]], axis=1)


def _signed_sum(a: np.ndarray, signs: tuple[int, ...]) -> np.ndarray:
    """sum_j signs[j] * a[..., j], term by term."""
    out = a[..., 0] * signs[0]
    for j in range(1, len(signs)):
        out = out + a[..., j] * signs[j]
    return out


def _grid_levels() -> np.ndarray:
    v = np.arange(-L, L + 1, dtype=np.float64)
    return np.stack(np.meshgrid(v, v, indexing="ij"), axis=-1).reshape(-1, 2)  # [CELLS, 2] (R - G, B - G)


def _log_weights(w: tuple[int, ...], log: Callable) -> np.ndarray:
    total = float(sum(w))   # exact: integers
    return log(np.asarray(w, dtype=np.float64) / total)


def _mode_of_id(mode_id: int) -> str | None:
    if mode_id == 0:
        return None
    for k, v in MODE_IDS.items():
        if v == mode_id:
            return k
    raise ValueError(f"unknown structure mode id {mode_id}")


def components(pixels: np.ndarray, mode: str) -> list[np.ndarray]:
    """The integer block-difference components of an RGB uint8 [H, W, 3] image on its own
    block grid, one [n_blocks, 2] array (R - G, B - G) per component of the mode."""
    (by, bx), signs = MODES[mode]
    h, w = (pixels.shape[0] // by) * by, (pixels.shape[1] // bx) * bx
    x = pixels[:h, :w].astype(np.int64)
    c = np.stack([x[..., 0] - x[..., 1], x[..., 2] - x[..., 1]], axis=-1)        # [h, w, 2]
    blk = c.reshape(h // by, by, w // bx, bx, 2).transpose(0, 2, 1, 3, 4).reshape(-1, by * bx, 2)
    return [np.einsum("k,nkc->nc", np.asarray(s), blk) for s in signs]


def measure(pixels: np.ndarray, mode: str) -> tuple[StructurePrior | None, float]:
    """The prior of ``mode`` measured on an image, and the least share of any component's
    values that fall on the grid (None when the image has no complete block)."""
    comps = components(pixels, mode)
    if not len(comps[0]):
        return None, 0.0
    weights, covered = [], 1.0
    for comp in comps:
        on = np.all(np.abs(comp) <= L, axis=1)
        covered = min(covered, float(on.mean()))
        idx = (comp[on, 0] + L) * (2 * L + 1) + (comp[on, 1] + L)
        counts = np.append(np.bincount(idx, minlength=CELLS), (~on).sum()).astype(np.float64)
        scale = (WEIGHT_MAX - 1) / max(1.0, counts.max())
        weights.append(tuple(int(v) for v in np.floor(counts * scale).astype(np.int64) + 1))
    return StructurePrior(mode, tuple(weights)), covered


def candidates(pixels: np.ndarray) -> list[StructurePrior]:
    """The structure priors worth trying on an image: RGB, and for each mode whose
    components fall on the grid for at least MIN_COVERED of the blocks."""
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        return []
    out = []
    for mode in MODES:
        prior, covered = measure(pixels, mode)
        if prior is not None and covered >= MIN_COVERED:
            out.append(prior)
    return out

