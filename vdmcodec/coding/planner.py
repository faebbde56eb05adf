"""The encoder's decisions: which images the model codes, how, and with which priors.

Compress (codec.py) asks, in this order:
1. which images the chain can code: those of the model's channel count, whole (in chunks)
   where both sides fit a tile (``Planner.chunk_eligible``), in tiles where a side is longer
   (``Planner.tiled_methods``, tiles.py), and, with an RGB model, every grayscale image in
   tiles as R = G = B ("tiled-gray");
2. which tiled images the preflight gives up on (``Planner.preflight_check``, preflight.py;
   decoded JPEGs on a quick probe, ``Planner.quick_rate``): they stay classical, without a
   chain run;
3. per tiled RGB image, one probe of the chain's network on crops (``Planner.choose``,
   preflight.Probe, PROBE) estimates its rate and chooses a structure prior
   (priors/structure.py, priors/jpeg_prior.py) or else a share of the model card's channel
   correlations, where it saves bits; an image whose estimate with its choice still loses to
   its classical file stays classical (``Planner.loses``);
4. which images are seeds, whose classical bytes start the stack, and the chain order of the
   rest (``plan_seeds``), from an estimate of the initial bits the first chunk needs on the
   coarsest chunk grid (archive.push_chunks).
The file records every choice (archive.py): the decoder replays them and decides nothing.
The estimates only steer these choices, never a decoded bit, so they may run a faster
arithmetic than the chain (``probe_network``).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import tiles
from .archive import MAX_CHUNK_SUBPIXELS, chain_order, coded_pixels
from .arithmetic import ARITHMETIC, apply_arithmetic
from .chain import DiffusionChain
from .container import CORR_SCALE_STEPS, MODEL_METHODS
from .preflight import (PreflightConfig, Probe, estimate_bpd, loses_before_prior, loses_with_prior, plain_photos_lose,
                        sure_win)
from .priors import jpeg_prior, structure

# the crops and levels of the one network pass that estimates a tiled RGB image's rate and what
# each structure prior and correlation share saves (preflight.Probe)
PROBE = PreflightConfig(crops=16, crop=64, draws=4)
# the quicker probe that runs beside the classical codecs on decoded JPEGs, its rate alone
# (preflight.loses_before_prior): half PROBE's draws on 48x48 crops, 28% of its network work
# (16 crops at one level each were biased by up to 0.3 of the rate, 8 or 4 crops by up to 0.2:
# fewer draws per crop, or fewer crops, read the per-level zigzag or one corner of the photo)
QUICK_PROBE = PreflightConfig(crops=16, crop=48, draws=2)
# the coarse latent grid of archives with tiled images (``Planner.grid_bits``)
COARSE_GRID_BITS = 1


@dataclass(frozen=True)
class Planner:
    """The decisions that depend on the model and compress's settings (the codec's)."""

    channels: int      # the model's image channels
    tile: int          # images with a longer side are coded in tiles (tiles.py)
    arithmetic: str    # what compress runs (a key of arithmetic.ARITHMETIC)
    preflight: PreflightConfig | None = None  # None: every codable image goes through the chain
    structure_priors: bool = True  # try structure priors on tiled RGB images
    card: dict = field(default_factory=dict)  # the model card (its coding_preflight calibration)
    where: str = "model"  # the model's directory, for messages about its card

    def tiled_methods(self, pix) -> dict[int, str]:
        """{image: method} of the images coded in tiles: those of the model's channel count
        with a side longer than a tile, and (RGB models) every grayscale image, as R = G = B."""
        out = {k: "tiled" for k, p in enumerate(pix) if p.shape[-1] == self.channels and tiles.needs_tiling(p.shape, self.tile)}
        if self.channels == 3:
            out.update({k: "tiled-gray" for k, p in enumerate(pix) if p.shape[-1] == 1})
        return out

    def chunk_eligible(self, pix, tiled: dict[int, str]) -> list[int]:
        """The images the chain can code whole, in chunks: the model's channel count, within
        a chunk's memory bound, not ``tiled``."""
        return [k for k, p in enumerate(pix)
                if p.shape[-1] == self.channels and p.size <= MAX_CHUNK_SUBPIXELS and k not in tiled]

    def grid_bits(self, default: int, tiled: dict[int, str]) -> int:
        """The latent grid of one archive: COARSE_GRID_BITS where the chain codes tiled images,
        else ``default``. Each grid bit costs about two initial bits per dimension, which seed
        tiles pay for at their classical rate. On lone photos (`natural`, T = 32, 2026-12-07)
        one bit gave smaller files on all seven measured: coastguard -0.27%, monarch -0.27%,
        foreman -0.20%, woman -0.15%, butterfly -0.10%, zebra -0.03%, and compress up to 15%
        faster (foreman: 29.1 -> 24.6 s), a tile row's segments growing faster. Whole images
        stay on ``default`` however few: their first chunks start on coarser grids
        (archive.push_chunks), so the default grid costs no seeds. Measured on 100 digits
        (`mnist`, T = 48, experiments/results/start_bits.md): 4.59% over their ELBO on 2 bits,
        4.91% on 1, 6.60% on 3."""
        return COARSE_GRID_BITS if tiled and default > COARSE_GRID_BITS else default

    def preflight_estimate(self, pixels: np.ndarray, method: str, network: Callable) -> float | None:
        """The preflight's estimate of the model's bits per subpixel on one image (uint8
        [H, W, C]) coded as ``method`` ("tiled" or "tiled-gray": bits per gray subpixel),
        or None where compress runs no preflight (switched off, or a small image);
        ``network()``: the network to estimate with (``probe_network``), asked for only then."""
        cfg = self.preflight
        if cfg is None or pixels.shape[0] * pixels.shape[1] < cfg.min_pixels:
            return None
        coded = coded_pixels(pixels, method)
        return estimate_bpd(network(), coded, cfg) * coded.shape[-1] / pixels.shape[-1]

    def lattice(self, pixels: np.ndarray, method: str) -> bool:
        """Whether compress treats an image coded as ``method`` as a decoded JPEG: a tiled RGB
        image whose luma shows a JPEG lattice (jpeg_prior.has_lattice), where the JPEG prior
        can be used (structure priors on, a float arithmetic)."""
        return (method == "tiled" and self.structure_priors and self.channels == 3
                and not ARITHMETIC[self.arithmetic].portable and jpeg_prior.has_lattice(pixels))

    def preflight_check(self, pixels: np.ndarray, method: str, classical_bits: int, estimate: Callable,
                        probe_plain: bool = True, lattice: bool | None = None,
                        quick: float | None = None) -> tuple[float | None, bool]:
        """(the preflight's estimate, a decoded JPEG's quick rate, or None; whether compress
        gives the model up on this image, whose best classical encoding takes
        ``classical_bits``): decoded JPEGs are given up where ``quick`` (``quick_rate``, None:
        not measured) loses whatever their prior saves (preflight.loses_before_prior), else
        left to the probe (``choose``, ``loses``); others are given up unless even the
        estimate's pessimistic reading wins (preflight.sure_win). Without ``probe_plain``, an image without a JPEG lattice is given up
        before any network pass where the card's calibration says the model lost on every such
        validation photo (preflight.plain_photos_lose). ``estimate(pixels, method)``:
        ``preflight_estimate`` on a network; ``lattice``: ``self.lattice(pixels, method)`` where
        the caller has it (None: computed here)."""
        cfg = self.preflight
        if cfg is None:
            return None, False
        lattice = self.lattice(pixels, method) if lattice is None else lattice
        if not (lattice or probe_plain) and plain_photos_lose(self.card, cfg, self.where):
            return None, True
        if lattice:  # the quick rate; past it, the probe (``choose``) with its prior, and ``loses``
            return quick, quick is not None and loses_before_prior(quick, classical_bits, pixels.size, cfg)
        est = estimate(pixels, method)
        if est is None:
            return None, False
        return est, not sure_win(est, classical_bits, pixels.size, cfg)

    def quick_rate(self, pixels: np.ndarray, chain: DiffusionChain, probe: PreflightConfig = QUICK_PROBE) -> float:
        """The chain's rate on a tiled RGB image (bits per subpixel, no prior) from a probe
        quicker than ``choose``'s (QUICK_PROBE), for ``preflight_check`` on decoded JPEGs."""
        return Probe(chain, pixels, probe).rate

    def candidates(self, pixels: np.ndarray) -> list:
        """The structure priors worth trying on a tiled RGB image (priors/structure.py: chroma
        subsampling; priors/jpeg_prior.py: decoded JPEGs, float arithmetics only)."""
        if not (self.structure_priors and self.channels == 3):
            return []
        if ARITHMETIC[self.arithmetic].portable:  # the JPEG prior's DCT is a float matrix product
            return structure.candidates(pixels)
        return structure.candidates(pixels) + jpeg_prior.candidates(pixels)

    def choose(self, pixels: np.ndarray, chain: DiffusionChain, priors: list | None = None,
               probe: PreflightConfig = PROBE) -> ImageChoice:
        """What ``chain`` codes a tiled RGB image with, from one probe (preflight.Probe, ``probe``):
        of the structure priors measured on it (``priors``, None: ``candidates``), the one with
        the largest estimated saving where that beats its header bytes; else the share of the
        card's channel correlations (chain.corr) with the largest saving, 0 where none saves."""
        priors = self.candidates(pixels) if priors is None else priors
        p = Probe(chain, pixels, probe)
        if priors:
            gains = p.prior_savings(priors)
            k = int(np.argmax(gains))
            if gains[k] * pixels.size > 8 * len(priors[k].to_bytes()):
                return ImageChoice(priors[k], 0, p.rate, gains[k])
        if chain.corr is not None:
            shares = range(1, CORR_SCALE_STEPS + 1)
            gains = p.corr_savings([k / CORR_SCALE_STEPS for k in shares])
            k = int(np.argmax(gains))
            if gains[k] > 0:
                return ImageChoice(None, shares[k], p.rate, gains[k])
        return ImageChoice(None, 0, p.rate, 0.0)

    def loses(self, choice: ImageChoice | None, classical_bits: int, subpixels: int) -> bool:
        """Whether compress gives the chain up on an image ``choose`` estimated (None: not
        probed, never), whose best classical encoding takes ``classical_bits``:
        preflight.loses_with_prior (False with the preflight off)."""
        return self.preflight is not None and choice is not None and loses_with_prior(
            choice.rate, choice.saving, classical_bits, subpixels, self.preflight)


@dataclass(frozen=True)
class ImageChoice:
    """What compress codes a tiled RGB image with (``Planner.choose``), and the probe's
    estimates behind it, in bits per subpixel."""

    prior: object | None  # the structure prior (priors/), or None
    corr_share: int       # the share of the channel correlations, in 1/CORR_SCALE_STEPS; 0 with a prior
    rate: float           # the chain's rate without either
    saving: float         # what the choice saves off ``rate``


def probe_network(model, arithmetic: str):
    """A copy of the network as compress's ``arithmetic`` runs it (bfloat16 autocast on NHWC
    where the card chose that), for the encoder's estimates: they only steer the encoder's
    choices, never a decoded bit, so they may run a fast arithmetic (float32 NHWC for
    portable)."""
    name = "float32-nhwc" if ARITHMETIC[arithmetic].portable else arithmetic
    return apply_arithmetic(copy.deepcopy(model), name)


def plan_seeds(shapes, best, eligible, per_dim: float, tiled: dict | None = None):
    """Which images are classical seeds (their bytes start the stack) and the chain order of
    the rest: first the images the model cannot code, then eligible images in input order
    until the first chunk's estimated initial bits are covered. None if they never are.
    ``tiled`` ({image: "tiled" | "tiled-gray"}) images are coded after the chunks (tiles.py)
    and seed nothing here."""
    eligible_set, tiled = set(eligible), tiled or {}
    methods = ["vdm" if k in eligible_set else tiled[k] if k in tiled else best[k][0] for k in range(len(shapes))]
    order = chain_order(shapes, methods)
    need = per_dim * math.prod(shapes[order[0]]) + 64
    have = 8 * sum(len(best[k][1]) for k in range(len(shapes)) if methods[k] not in MODEL_METHODS)
    for k in eligible:
        if have >= need:
            break
        methods[k] = best[k][0]
        have += 8 * len(best[k][1])
        order = [j for j in order if j != k]
        if order:
            need = per_dim * math.prod(shapes[order[0]]) + 64
    if not order or have < need:
        return None
    return methods, order
