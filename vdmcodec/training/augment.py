"""Training-crop augmentations that put the structure of real-world photo pipelines into
the training data, so that the model learns to exploit it.

Most photographs have passed through JPEG or a video codec, which store chroma at half
resolution (4:2:0, or 4:2:2) and rebuild full-resolution RGB by replicating or linearly
interpolating it; scans and old photos are often gray stored as RGB (R = G = B). A
lossless codec that has learned this spends few bits on the redundant chroma; one that
has not pays full price (measured in the issue note: on 128 x 128 validation crops turned
4:2:0, JPEG XL's rate fell by about 35% while the un-augmented model's rose).

``Augmenter`` rewrites a random share of each training batch, deterministically from
(seed, step) so that a resumed run sees the same crops:

* chroma subsampling: RGB -> Y'CbCr (BT.601 full range as in JFIF, BT.601 studio range
  or BT.709 studio range), Y' rounded to integers, Cb / Cr box-averaged over 2 x 2 (4:2:0)
  or 1 x 2 (4:2:2) blocks and rounded, upsampled back by replication or by JPEG's
  "fancy" triangle filter (3/4 nearer sample + 1/4 farther one), converted back to RGB,
  rounded and clipped;
* grayscale: R = G = B = round(BT.601 luma).

Block phase: the subsampling blocks start at the crop's top-left corner; crops start on
multiples of ``train.crop_multiple`` (8), so they sit on the image's own 2 x 2 grid.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Y'CbCr forward matrices (rows: Y', Cb, Cr; columns: R, G, B) and offsets, for 8-bit RGB.
_KR_KB = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722)}


def ycbcr_matrix(kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(M, offset) with Y'CbCr = M @ RGB + offset. ``kind``: 'jfif' (BT.601, full range),
    'bt601' or 'bt709' (studio range: Y' in 16..235, Cb / Cr in 16..240)."""
    kr, kb = _KR_KB["bt601" if kind == "jfif" else kind]
    kg = 1.0 - kr - kb
    m = np.array([[kr, kg, kb],
                  [-kr / (2 * (1 - kb)), -kg / (2 * (1 - kb)), 0.5],
                  [0.5, -kg / (2 * (1 - kr)), -kb / (2 * (1 - kr))]])
    if kind != "jfif":
        m = m * np.array([[219.0], [224.0], [224.0]]) / 255.0
        return m, np.array([16.0, 128.0, 128.0])
    return m, np.array([0.0, 128.0, 128.0])


def _upsample_axis(c: np.ndarray, axis: int, method: str) -> np.ndarray:
    """Double ``c`` along ``axis``: 'replicate', or 'linear' (JPEG's fancy upsampling:
    each output sample is 3/4 of its own input sample and 1/4 of the nearer neighbour,
    edges clamped)."""
    if method == "replicate":
        return np.repeat(c, 2, axis=axis)
    n = c.shape[axis]
    prev = np.take(c, np.clip(np.arange(n) - 1, 0, n - 1), axis=axis)
    nxt = np.take(c, np.clip(np.arange(n) + 1, 0, n - 1), axis=axis)
    even, odd = 0.75 * c + 0.25 * prev, 0.75 * c + 0.25 * nxt
    out = np.stack([even, odd], axis=axis + 1)
    shape = list(c.shape)
    shape[axis] *= 2
    return out.reshape(shape)


def subsample_chroma(x: np.ndarray, factors: tuple[int, int], upsample: str, kind: str) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [H, W, 3] whose chroma went through (factors = (fy, fx),
    each 1 or 2) subsampling and back. H and W must be multiples of the factors."""
    m, off = ycbcr_matrix(kind)
    ycc = x.astype(np.float64) @ m.T + off
    ycc = np.round(ycc)
    fy, fx = factors
    H, W = x.shape[:2]
    for ch in (1, 2):
        c = ycc[..., ch].reshape(H // fy, fy, W // fx, fx).mean(axis=(1, 3)).round()
        if fy == 2:
            c = _upsample_axis(c, 0, upsample)
        if fx == 2:
            c = _upsample_axis(c, 1, upsample)
        ycc[..., ch] = c
    rgb = (ycc - off) @ np.linalg.inv(m).T
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def gray_rgb(x: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> the same image in gray, R = G = B = round(BT.601 luma)."""
    m, _ = ycbcr_matrix("jfif")
    y = np.clip(np.round(x.astype(np.float64) @ m[0]), 0, 255).astype(np.uint8)
    return np.repeat(y[..., None], 3, axis=-1)


@dataclass(frozen=True)
class AugmentConfig:
    chroma_subsampling: float = 0.0  # share of RGB crops whose chroma is subsampled
    grayscale: float = 0.0           # share of RGB crops turned gray (R = G = B)
    chroma_422: float = 1 / 3        # share of the subsampled crops that are 4:2:2 (the rest 4:2:0)

    def __post_init__(self):
        for k in ("chroma_subsampling", "grayscale", "chroma_422"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise ValueError(f"augment.{k} must be a probability in [0, 1], got {v!r}")
        if self.chroma_subsampling + self.grayscale > 1:
            raise ValueError("augment.chroma_subsampling + augment.grayscale must not exceed 1")

    @property
    def active(self) -> bool:
        return self.chroma_subsampling > 0 or self.grayscale > 0


class Augmenter:
    """Applies an ``AugmentConfig`` to uint8 [B, H, W, C] batches; the draws depend only on
    (seed, step, rank), so a resumed run repeats them."""

    KINDS = ("jfif", "bt601", "bt709")

    def __init__(self, cfg: AugmentConfig, seed: int):
        self.cfg, self.seed = cfg, seed

    def __call__(self, batch: np.ndarray, step: int, rank: int = 0) -> np.ndarray:
        if not self.cfg.active or batch.shape[-1] != 3:
            return batch
        rng = np.random.default_rng([self.seed, step, rank])
        out = batch.copy()
        H, W = batch.shape[1:3]
        for i in range(len(batch)):
            u = rng.random()
            if u < self.cfg.chroma_subsampling:
                factors = (1, 2) if rng.random() >= 1 - self.cfg.chroma_422 else (2, 2)
                if H % factors[0] or W % factors[1]:
                    continue
                upsample = "replicate" if rng.random() < 0.5 else "linear"
                kind = self.KINDS[rng.integers(len(self.KINDS))]
                out[i] = subsample_chroma(batch[i], factors, upsample, kind)
            elif u < self.cfg.chroma_subsampling + self.cfg.grayscale:
                out[i] = gray_rgb(batch[i])
        return out
