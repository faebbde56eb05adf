"""Priors that a tiled RGB image is coded with beyond the network (tile.py: ``TilePrior``,
one value per image, moved to each tile's origin): structure priors that adjust the
network's mean (structure.py: chroma subsampling; jpeg_prior.py: a decoded JPEG's DCT
lattice) and a share of the channel correlations. The header holds a structure prior as
bytes whose first byte names its kind (``prior_size``, ``parse_prior``)."""
from __future__ import annotations

from .jpeg_prior import MODE_ID, MODE_ID_CHROMA, SIZE, SIZE_CHROMA, JpegPrior
from .structure import StructurePrior
from .tile import NO_PRIOR, MeanAdjuster, TilePrior


def prior_size(mode_id: int) -> int:
    """Bytes of a serialised prior of either kind with this mode byte (0: none, 1 byte)."""
    return {MODE_ID: SIZE, MODE_ID_CHROMA: SIZE_CHROMA}.get(mode_id) or StructurePrior.size_of(mode_id)


def parse_prior(data: bytes) -> StructurePrior | JpegPrior | None:
    """A serialised prior of either kind (its ``prior_size(data[0])`` bytes), or None."""
    return JpegPrior.from_bytes(data) if data[0] in (MODE_ID, MODE_ID_CHROMA) else StructurePrior.from_bytes(data)


def describe(prior) -> str:
    """One line on a prior of either kind (structure.py, jpeg_prior.py), or "none"."""
    return "none" if prior is None else prior.describe()


__all__ = ["NO_PRIOR", "JpegPrior", "MeanAdjuster", "StructurePrior", "TilePrior", "describe", "parse_prior",
           "prior_size"]
