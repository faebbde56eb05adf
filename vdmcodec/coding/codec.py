"""The user-facing codec: ``load_codec(...).compress(images) -> bytes`` and back.

How an archive is coded:
1. every image gets its best classical encoding (PNG / WebP / JPEG XL lossless, and ctx,
   the shipped context model, on small one-channel images);
2. images the model can code (same channel count; a grayscale image with an RGB model as
   R = G = B, "tiled-gray") go through the bits-back chain, in
   chunks whose size grows with the bits already on the stack; the chain's first pops need
   real bits, so the classical bytes of the first few images ("seeds") are the initial
   ANS message (HiLLoC's trick): the decoder gets them back at the very end;
3. if the whole archive would be smaller with every image classical, it is written so.
Before the chain, a preflight (preflight.py) estimates the model's rate on a few crops of
each large image and codes classically, without running the chain, those whose classical
file is far smaller than even that estimate allows.
A SHA-256 of all pixels is stored and verified on decode.

``Codec`` ties the pieces together: inputs.py brings the images to one form, planner.py
makes the encoder's decisions, archive.py pushes and pops the archive's layout on the ANS
stack (and holds what a decoder checks: thread count, device, ``DecodeLimits``), and
container/ writes and reads the header built here.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from ..errors import ModelError, VdmcodecError
from ..hardware import native_bf16
from ..zoo import load_model, resolve_for_file
from . import classical, levels, tiles
from .archive import (DecodeLimits, check_device, check_limits, chunk_floor, decode_payload, device_record,
                      model_digest, pixels_digest, push_chunks, push_tiled, seed_message)
from .ans import EmptyMessageError
from .arithmetic import ARITHMETIC
from .chain import ChainConfig, DiffusionChain
from .container import (DTYPES, MAX_GRID_BITS, MAX_STEPS, MIN_GRID_BITS, MODEL_METHODS, Header, name_sequence, pack,
                        run_length, unpack)
from .determinism import pinned
from .effort import DEFAULT_EFFORT, EffortChoice, check_effort, effort_choice
from .inputs import image_entries
from .planner import ImageChoice, Planner, plan_seeds, probe_network
from .preflight import PreflightConfig
from .spec import CURRENT as CURRENT_CODER
from .spec import CoderSpec

DEFAULT_STEPS = 128
DEFAULT_GRID_BITS = 2  # measured: see coding/grid.py
DEFAULT_ARITHMETIC = "float32-nhwc"  # measured: benchmarks/results/coding_arithmetic.md
INIT_MARGINS = (1.1, 1.5, 3.0)  # safety factors on the estimated initial bits, tried in turn
MAX_CACHED_CHAINS = 4           # per-(steps, grid_bits) chains a Codec keeps
_COMPRESS_DEFAULT = object()    # Codec.chain's default: the level times / correlations compress uses


class Codec:
    """Lossless compression with one VDM. ``steps`` is the default T of ``compress``."""

    def __init__(self, model, info: dict, steps: int = DEFAULT_STEPS, grid_bits: int | None = None,
                 tile: int = tiles.DEFAULT_TILE, arithmetic: str = DEFAULT_ARITHMETIC,
                 preflight: PreflightConfig | None = PreflightConfig(), fitted_levels: bool = True,
                 structure_priors: bool = True, channel_corr: bool = True, effort: int = DEFAULT_EFFORT,
                 steps_fixed: bool = True):
        if arithmetic not in ARITHMETIC:
            raise ValueError(f"arithmetic must be one of {', '.join(ARITHMETIC)}, got {arithmetic!r}")
        # grid_bits None: DEFAULT_GRID_BITS, one less for a small archive (Planner.grid_bits)
        self.grid_fixed = grid_bits is not None
        grid_bits = DEFAULT_GRID_BITS if grid_bits is None else grid_bits
        ChainConfig(steps, grid_bits, arithmetic=arithmetic)  # refuses steps / grid_bits no chain can run, up front
        if not MIN_GRID_BITS <= grid_bits:  # coarser grids code only an archive's first chunks (push_chunks)
            raise ValueError(f"grid_bits must be an integer in [{MIN_GRID_BITS}, {MAX_GRID_BITS}], got {grid_bits!r}")
        self.model, self.info = model, info
        self.steps, self.grid_bits = steps, grid_bits
        self.effort = check_effort(effort)  # compress's default speed/size dial (effort.py)
        # ``steps`` is the caller's T, which the effort's T does not override (load_codec
        # passes False when T came from the card, so that the card's coding_efforts apply)
        self.steps_fixed = steps_fixed
        self.arithmetic = arithmetic  # what compress runs; decompress runs what the file names
        self.tile = tiles.check_tile(tile)  # images with a longer side are coded in tiles (tiles.py)
        self.preflight = preflight  # None: every codable image goes through the chain
        self.fitted_levels = fitted_levels  # compress at the card's coding_times where it lists them for T
        self.channel_corr = channel_corr  # compress with the card's coding_corr where it lists one (level_codecs.p_codec_corr)
        # try structure priors (priors/structure.py, priors/jpeg_prior.py) on tiled RGB images; keep one
        # where an estimate on crops says it saves bits
        self.structure_priors = structure_priors
        self._chains: dict[tuple, DiffusionChain] = {}
        self._probe = None  # probe_model's copy of the network

    @property
    def channels(self) -> int:
        return self.model.cfg.network.image_channels

    @property
    def device(self) -> torch.device:
        """Where the network runs (the model's device)."""
        return next(self.model.parameters()).device

    def device_record(self, arithmetic: str) -> str | None:
        """What a file coded here in ``arithmetic`` records of the device (``device_record``)."""
        return device_record(self.device, arithmetic)

    def level_times(self, steps: int) -> tuple[float, ...] | None:
        """The level times compress uses at T = ``steps``: the card's fitted ones where it lists
        them for that T (and ``fitted_levels``), else None (uniform)."""
        if not self.fitted_levels:
            return None
        return levels.card_times(self.info.get("card", {}), steps, self.info.get("dir", "model"))

    def corr_table(self):
        """The channel correlations compress uses: the card's ``coding_corr`` for a
        three-channel model (and ``channel_corr``), else None (p factorises)."""
        if not self.channel_corr or self.channels != 3:
            return None
        return levels.card_corr(self.info.get("card", {}), self.info.get("dir", "model"))

    def chain(self, steps: int, grid_bits: int, arithmetic: str | None = None, times=_COMPRESS_DEFAULT,
              corr=_COMPRESS_DEFAULT, spec: CoderSpec = CURRENT_CODER) -> DiffusionChain:
        """The chain for (T, grid_bits, arithmetic, level times, channel correlations, coder);
        ``times`` and ``corr`` default to what compress uses (``level_times``, ``corr_table``),
        None is uniform / factorised; ``spec``: the coder's constants (spec.py), compress
        writes the current format version's."""
        if times is _COMPRESS_DEFAULT:
            times = self.level_times(steps)
        if corr is _COMPRESS_DEFAULT:
            corr = self.corr_table()
        key = (steps, grid_bits, arithmetic or self.arithmetic, times, corr, spec)
        if key not in self._chains:
            if len(self._chains) >= MAX_CACHED_CHAINS:  # files choose (steps, grid_bits): keep memory bounded
                self._chains.pop(next(iter(self._chains)))
            self._chains[key] = DiffusionChain(self.model, ChainConfig(steps, grid_bits, arithmetic=key[2], times=times,
                                                                       channel_corr=corr, spec=spec))
        return self._chains[key]

    # ---- compress --------------------------------------------------------------------
    def effort_choice(self, effort: int | None = None) -> EffortChoice:
        """What compress runs at ``effort`` (None: this codec's default; effort.py): the
        classical candidates' efforts and the chain's T, from the model card."""
        return effort_choice(self.effort if effort is None else effort, self.info.get("card", {}), self.steps,
                             self.info.get("dir", "model"))

    def compress(self, images: Iterable, steps: int | None = None, names: Sequence[str] | None = None,
                 progress: bool = False, classical_only: bool = False, force_model: bool = False,
                 effort: int | None = None) -> bytes:
        """Compress images (uint8 numpy (H, W) / (H, W, 1|3) or PIL) into one container.
        ``effort`` (1-9, None: the codec's) sets the classical candidates' efforts and the
        chain's T (effort.py); ``steps`` overrides that T, and runs the model even at an
        effort that would not. ``force_model`` keeps the model-coded result even where
        all-classical is smaller (for measurements) and runs the chain on every image the
        model can code, without the preflight; ``classical_only`` skips the model. torch's
        precision switches are pinned (determinism.pinned) from the chain's first pass to the
        end of the call and restored after; the encoder's estimates before it only steer its
        choices, never a decoded bit, so a call that writes every image classically never
        touches them (the first switch costs about a second and a half of imports)."""
        with ExitStack() as stack:
            return self._compress(images, steps, names, progress, classical_only, force_model, effort,
                                  lambda: stack.enter_context(pinned()))

    def _compress(self, images, steps, names, progress, classical_only, force_model, effort, pin) -> bytes:
        entries = image_entries(images, names)
        choice = self.effort_choice(effort)
        asked = steps or (self.steps if self.steps_fixed else None)  # a T the caller chose
        T = int(asked or choice.steps or self.steps)
        if T < 1:
            raise VdmcodecError(f"steps must be >= 1, got {T}")
        classical_only = classical_only or (asked is None and choice.steps is None and not force_model)
        pix = [e.pixels for e in entries]
        shapes = [p.shape for p in pix]
        # images with a side longer than a tile are coded in tiles (tiles.py: bounded memory,
        # their own seeds); smaller ones whole, in chunks of equal shapes
        planner = self.planner
        tiled = planner.tiled_methods(pix)
        eligible = planner.chunk_eligible(pix, tiled)
        preflight = bool(tiled) and self.preflight is not None and not (force_model or classical_only)

        probe_grid = self._grid_bits(tiled)  # the probe's estimates do not depend on the grid

        def look(k: int, m: str) -> tuple[bool, float | None]:
            """The lattice test; a decoded JPEG's quick rate (Planner.quick_rate)."""
            if not planner.lattice(pix[k], m):
                return False, None
            return True, planner.quick_rate(pix[k], self.chain(T, probe_grid))

        with ThreadPoolExecutor(1) if preflight else nullcontext() as side:
            # the lattice tests, and the decoded JPEGs' quick rates, run while the classical
            # codecs encode (they release the GIL)
            looks = {k: side.submit(look, k, m) for k, m in tiled.items()} if preflight else {}
            best = [classical.encode_best(p, choice.classical, context=True) for p in pix]
            looks = {k: job.result() for k, job in looks.items()}
        if preflight:  # images the preflight gives up on stay classical
            tiled = {k: m for k, m in tiled.items()
                     if not self.preflight_check(pix[k], m, 8 * len(best[k][1]), choice.probe_plain, *looks[k])[1]}
        if classical_only or not (eligible or tiled):
            return self._pack_classical(entries, best, T)
        chain = self.chain(T, self._grid_bits(tiled))
        # one probe per tiled RGB image: its structure prior or correlation share, and its rate
        choices = {k: self.choose(pix[k], chain) for k, m in tiled.items() if m == "tiled"}
        if not force_model:  # an image whose estimate loses even with its choice stays classical
            tiled = {k: m for k, m in tiled.items() if not planner.loses(choices.get(k), 8 * len(best[k][1]), pix[k].size)}
        if not (eligible or tiled):
            return self._pack_classical(entries, best, T)
        pin()
        chain = self.chain(T, self._grid_bits(tiled))  # the same, or fewer images now
        structures = {k: c.prior for k, c in choices.items() if k in tiled}
        corr_scales = {k: c.corr_share for k, c in choices.items() if k in tiled}
        blob = None
        # the seeds start the first chunk on the coarsest grid (push_chunks)
        first_per_dim = chain.on_grid(chunk_floor(chain.cfg.grid_bits)).initial_bits_per_dim()
        for margin in INIT_MARGINS:  # a short estimate only costs a retry with more seeds
            plan = plan_seeds(shapes, best, eligible, first_per_dim * margin, tiled) if eligible else None
            if plan is None:
                if not tiled:
                    return self._pack_classical(entries, best, T)
                plan = ([tiled[k] if k in tiled else best[k][0] for k in range(len(pix))], [])
            methods, order = plan
            try:
                blob = self._compress_chain(entries, best, methods, order, chain, margin, progress, structures,
                                            corr_scales)
                break
            except EmptyMessageError:
                continue
        all_classical = self._pack_classical(entries, best, T)
        if blob is None:
            if force_model:
                raise EmptyMessageError("the chain ran out of initial bits at every margin")
            return all_classical
        return blob if force_model or len(blob) < len(all_classical) else all_classical

    # ---- the encoder's decisions (planner.py) ------------------------------------------
    def grid_bits_for(self, images) -> int:
        """The latent grid compress codes ``images`` on through the chain (Planner.grid_bits;
        the codec's own where it was given one), before any preflight drops an image."""
        return self._grid_bits(self.planner.tiled_methods([e.pixels for e in image_entries(images, None)]))

    def _grid_bits(self, tiled: dict[int, str]) -> int:
        """The grid of an archive whose chain codes ``tiled`` ({image: method}) in tiles."""
        return self.grid_bits if self.grid_fixed else self.planner.grid_bits(self.grid_bits, tiled)

    @property
    def planner(self) -> Planner:
        """The encoder's decisions for this model and these settings."""
        return Planner(self.channels, self.tile, self.arithmetic, self.preflight, self.structure_priors,
                       self.info.get("card", {}), self.info.get("dir", "model"))

    def choose(self, pixels: np.ndarray, chain: DiffusionChain, priors: list | None = None) -> ImageChoice:
        """Planner.choose with this codec's settings: a tiled RGB image's structure prior or
        correlation share, and the probe's estimates (``priors``: its candidates where known)."""
        return self.planner.choose(pixels, chain, priors)

    def preflight_estimate(self, pixels: np.ndarray, method: str = "tiled") -> float | None:
        """Planner.preflight_estimate on ``probe_model``."""
        return self.planner.preflight_estimate(pixels, method, self.probe_model)

    def probe_model(self):
        """The network for the encoder's estimates (planner.probe_network), made once."""
        if self._probe is None:
            self._probe = probe_network(self.model, self.arithmetic)
        return self._probe

    def preflight_check(self, pixels: np.ndarray, method: str, classical_bits: int,
                        probe_plain: bool = True, lattice: bool | None = None,
                        quick: float | None = None) -> tuple[float | None, bool]:
        """Planner.preflight_check with this codec's settings and ``preflight_estimate``."""
        return self.planner.preflight_check(pixels, method, classical_bits, self.preflight_estimate, probe_plain,
                                            lattice, quick)

    # ---- writing the archive -----------------------------------------------------------
    def _header(self, entries, methods, classical_sizes, chunks, T, init_pad, uses_model, layouts=(), times=None,
                structures=(), corr=None, corr_scales=(), grid_bits=0) -> Header:
        names = [e.name for e in entries]
        seq = name_sequence(names)
        return Header(
            model=self.info["name"] if uses_model else None,
            model_hash=model_digest(self.info) if uses_model else None,
            steps=T if uses_model else 0,
            grid_bits=grid_bits if uses_model else 0,
            torch=torch.__version__ if uses_model else "",
            dtype=self.arithmetic if uses_model else DTYPES[0],
            threads=torch.get_num_threads() if uses_model else 0,
            shapes=run_length([tuple(e.pixels.shape) for e in entries]),
            names={"sequence": seq} if seq else {"list": names},
            methods=run_length(methods),
            classical_sizes=classical_sizes,
            chunks=chunks,
            init_pad=init_pad,
            pixels_hash=pixels_digest([e.pixels for e in entries]),
            squeeze=run_length([int(e.squeeze) for e in entries]) if any(e.squeeze for e in entries) else [],
            tile=self.tile if layouts else 0,
            tiled=list(layouts),
            levels=levels.times_digest(times) if uses_model and times is not None else None,
            corr=levels.corr_digest(corr) if uses_model and corr is not None and any(corr_scales) else None,
            corr_scales=list(corr_scales) if uses_model and corr is not None and any(corr_scales) else [],
            structures=list(structures) if any(p is not None for p in structures) else [],
            device=self.device_record(self.arithmetic) if uses_model else None,
        )

    def _pack_classical(self, entries, best, T) -> bytes:
        methods = [b[0] for b in best]
        blob = b"".join(b[1] for b in best)
        header = self._header(entries, methods, [len(b[1]) for b in best], [], T, 0, uses_model=False)
        return pack(header, blob)

    def _compress_chain(self, entries, best, methods, order, chain, margin, progress, structures=None,
                        corr_scales=None) -> bytes:
        classical_idx = [k for k, m in enumerate(methods) if m not in MODEL_METHODS]
        msg, pad = seed_message(b"".join(best[k][1] for k in classical_idx))
        pix = [e.pixels for e in entries]
        chunks, grids = push_chunks(chain, msg, pix, order, margin, progress)
        layouts, priors, shares = push_tiled(chain, msg, pix, methods, self.tile, chain.initial_bits_per_dim() * margin,
                                             progress, structures or {}, corr_scales or {})
        header = self._header(entries, methods, [len(best[k][1]) for k in classical_idx], chunks, chain.cfg.steps, pad,
                              uses_model=True, layouts=layouts, times=chain.cfg.times, structures=priors,
                              corr=chain.cfg.channel_corr, corr_scales=shares, grid_bits=chain.cfg.grid_bits)
        if any(g != chain.cfg.grid_bits for g in grids):
            header = replace(header, chunk_grids=grids)
        return pack(header, msg.to_bytes())

    # ---- decompress ------------------------------------------------------------------
    def decompress(self, blob: bytes, progress: bool = False, limits: DecodeLimits | None = None) -> list[np.ndarray]:
        """The images of an archive written by ``compress``, bit-exact, in order: uint8 arrays
        [H, W, C], or [H, W] where the caller gave [H, W]. ``limits`` bounds what the file may
        claim (DecodeLimits; default: the format's own limits). Raises FormatError on a
        damaged or forged file, ModelError when it needs another model. An archive written
        from files by the CLI holds codec images (one per frame; 16-bit and alpha planes in its
        image records): vdmcodec.imagefile.restore_files rebuilds the files."""
        return [im for im, _ in self.decompress_named(blob, progress, limits)]

    def decompress_named(self, blob: bytes, progress: bool = False,
                         limits: DecodeLimits | None = None) -> list[tuple[np.ndarray, str]]:
        """Like ``decompress``, with each image's name: (pixels, name) in archive order. Names are
        relative paths as stored (not checked here for safety as output paths; frames of one
        animation share their file's name)."""
        header, payload = unpack(blob)
        return decode_payload(header, payload, self, progress, limits)

    # ---- estimates -------------------------------------------------------------------
    def estimate_bpd(self, images: Iterable, steps: int | None = None, seed: int = 0) -> dict:
        """The model's negative ELBO (continuous and T-step) on these images, in bpd."""
        from ..data import ImageItem
        from ..evaluate import evaluate

        entries = image_entries(images, None)
        items = [ImageItem(e.pixels, e.name) for e in entries]
        return evaluate(self.model, items, steps=int(steps or self.steps), seed=seed, progress=False)


def load_codec(name_or_dir: str | Path | None = None, steps: int | None = None, device: str = "cpu",
               arithmetic: str | None = None, preflight: PreflightConfig | None = PreflightConfig()) -> Codec:
    """A Codec for a shipped model name (default: the default model) or a model directory.
    ``steps`` is compress's default T (None: the T the card gives compress's effort, effort.py)
    and ``arithmetic`` what compress runs (a key of
    coding.arithmetic.ARITHMETIC); either left None comes from the model card (coding_steps,
    coding_arithmetic: chosen by measurement for that model), else DEFAULT_STEPS and
    DEFAULT_ARITHMETIC. Decompress runs whatever a file names. ``preflight``: compress's
    quick estimate that skips the chain on images the model clearly loses (None: off)."""
    model, info = load_model(name_or_dir, device=device)
    fixed = steps is not None
    steps, arithmetic = coding_defaults(info, steps, arithmetic, device)
    return Codec(model, info, steps=steps, arithmetic=arithmetic, preflight=preflight, steps_fixed=fixed)


def coding_defaults(info: dict, steps: int | None = None, arithmetic: str | None = None,
                    device: str | torch.device = "cpu") -> tuple[int, str]:
    """(T, arithmetic) for compress: the caller's, else the model card's, else the codec's
    defaults. A card's bfloat16 arithmetic applies only where ``device`` multiplies bfloat16
    natively (hardware.native_bf16; elsewhere it is about 100x slower): otherwise the codec's
    float32 default. A caller's explicit choice is kept."""
    card = info.get("card", {})
    if steps is None:
        steps = card.get("coding_steps", DEFAULT_STEPS)
        if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= MAX_STEPS:
            raise ModelError(f"{info.get('dir', 'model')}: card's coding_steps must be an integer in [1, {MAX_STEPS}], "
                             f"got {steps!r}")
    if arithmetic is None:
        arithmetic = card.get("coding_arithmetic", DEFAULT_ARITHMETIC)
        if arithmetic not in ARITHMETIC:
            raise ModelError(f"{info.get('dir', 'model')}: card's coding_arithmetic must be one of "
                             f"{', '.join(ARITHMETIC)}, got {arithmetic!r}")
        if ARITHMETIC[arithmetic].autocast is not None and not native_bf16(device):
            arithmetic = DEFAULT_ARITHMETIC
    return steps, arithmetic


def decompress_file_bytes(blob: bytes, model: str | Path | None = None, progress: bool = False,
                          limits: DecodeLimits | None = None,
                          device: str | torch.device = "cpu") -> list[tuple[np.ndarray, str]]:
    """Decode a container, loading the model it names (or ``model``) on ``device`` only if
    needed. A file whose arithmetic ``device`` cannot replay is refused before the model loads."""
    header, payload = unpack(blob)
    limits = limits or DecodeLimits()
    check_limits(header, limits)
    codec = None
    if any(m in MODEL_METHODS for m, _ in header.methods):
        if model is None:
            model = resolve_for_file(header.model, header.model_hash)
        check_device(header, torch.device(device))
        codec = load_codec(model, steps=max(1, header.steps), device=device)
    return decode_payload(header, payload, codec, progress, limits)
