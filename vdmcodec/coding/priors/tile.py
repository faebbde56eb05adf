"""What one tile is coded with beyond the network: ``TilePrior``.

A tiled RGB image may be coded with a structure prior (structure.py: chroma subsampling;
jpeg_prior.py: a decoded JPEG's DCT lattice) or with a share of the model card's channel
correlations (level_codecs.p_codec_corr), never both (``TilePrior.corr``). A structure prior
is a mean adjuster: ``adjust_eps(eps_hat, z, alpha, sigma, origin, exp, log)`` returns the
network's eps_hat with the directions it knows about replaced by their posterior means, for
an array whose pixel (0, 0) sits at image coordinates ``origin`` (its blocks lie on the
image's own grid). The chain (chain.py) takes one ``TilePrior`` per batch; the tiled codec
(tiles.py) moves its origin to each segment.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Protocol

import numpy as np


class MeanAdjuster(Protocol):
    """A structure prior (structure.StructurePrior, jpeg_prior.JpegPrior): the posterior mean
    of eps under the prior replaces the network's eps_hat where the prior says something."""

    def adjust_eps(self, eps_hat: np.ndarray, z: np.ndarray, alpha: float, sigma: float,
                   origin: tuple[int, int] = (0, 0), exp: Callable = np.exp, log: Callable = np.log) -> np.ndarray: ...

    def to_bytes(self) -> bytes: ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class TilePrior:
    structure: MeanAdjuster | None = None  # the image's structure prior, or None
    origin: tuple[int, int] = (0, 0)       # image coordinates (y, x) of the batch's pixel (0, 0)
    corr_scale: float = 0.0                # share of the chain's channel correlations (0: p factorises)

    def at(self, origin: tuple[int, int]) -> TilePrior:
        """The same prior for a batch whose pixel (0, 0) sits at ``origin`` in the image."""
        return replace(self, origin=origin)

    def adjust_eps(self, eps_hat: np.ndarray, z: np.ndarray, alpha: float, sigma: float,
                   exp: Callable = np.exp, log: Callable = np.log) -> np.ndarray:
        """eps_hat (float64 [B, C, H, W], the network's prediction at latent z with the level's
        alpha, sigma) adjusted by the structure prior at this origin; unchanged without one.
        ``exp`` / ``log``: the chain's elementwise functions (the portable arithmetic's own)."""
        if self.structure is None:
            return eps_hat
        return self.structure.adjust_eps(eps_hat, z, alpha, sigma, self.origin, exp, log)

    def corr(self, level_corr) -> tuple[float, float, float] | None:
        """The channel correlations (r_01, r_02, r_12) p(z_{i-1} | z_i) is coded with, from the
        chain's ``level_corr`` at that level (None: the chain has none): times ``corr_scale``
        (the table is an average over training crops, and photos differ); None at scale 0,
        and None with a structure prior, whose posterior mean replaces the network's
        prediction in the structured directions, so that the network's error correlations no
        longer describe what is left (measured on woman, a decoded JPEG: +0.19% with them)."""
        if level_corr is None or self.structure is not None or self.corr_scale == 0:
            return None
        return tuple(float(self.corr_scale) * float(v) for v in level_corr)


NO_PRIOR = TilePrior()  # the network alone: no structure prior, p factorised over channels
