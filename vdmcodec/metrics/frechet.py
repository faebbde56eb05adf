"""The Fréchet distance between two Gaussians fitted to feature vectors (the quantity behind
FID, Heusel et al. 2017, eq. 6):

    d^2 = ||mu_1 - mu_2||^2 + tr(Sigma_1 + Sigma_2 - 2 (Sigma_1^{1/2} Sigma_2 Sigma_1^{1/2})^{1/2}).

tr((Sigma_1 Sigma_2)^{1/2}) is computed as the sum of the square roots of the eigenvalues
of the symmetric matrix Sigma_1^{1/2} Sigma_2 Sigma_1^{1/2} (same spectrum as Sigma_1 Sigma_2),
in float64 with numpy's eigh: no scipy, no complex parts to discard.

The estimate from n samples is biased upwards, roughly by a term of order tr(Sigma)/n: compare
figures only at the same sample count (and report that count).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GaussianStats:
    """Mean ``mu`` [F] and covariance ``sigma`` [F, F] (float64) of ``count`` feature vectors."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int


def gaussian_stats(features: np.ndarray) -> GaussianStats:
    """Sample mean and unbiased covariance of features [N, F] (N >= 2)."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need features of shape [N >= 2, F] (got {f.shape})")
    if not np.all(np.isfinite(f)):
        raise ValueError("features contain NaN or infinity")
    return GaussianStats(f.mean(0), np.atleast_2d(np.cov(f, rowvar=False)), int(f.shape[0]))


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (negative
    eigenvalues from rounding are clipped to 0)."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(a: GaussianStats, b: GaussianStats) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(a.mu, a.sigma) and N(b.mu, b.sigma)."""
    if a.mu.shape != b.mu.shape or a.sigma.shape != b.sigma.shape:
        raise ValueError(f"feature dimensions differ ({a.mu.shape} vs {b.mu.shape})")
    root_a = _psd_sqrt(a.sigma)
    cross = root_a @ b.sigma @ root_a                                # same spectrum as Sigma_a Sigma_b
    tr_sqrt = float(np.sqrt(np.clip(np.linalg.eigvalsh((cross + cross.T) / 2), 0, None)).sum())
    diff = a.mu - b.mu
    return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * tr_sqrt)
