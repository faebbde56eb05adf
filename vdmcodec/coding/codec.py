"""The user-facing codec: ``load_codec(...).compress(images) -> bytes`` and back.

How an archive is coded:
1. every image gets its best classical encoding (PNG / WebP / JPEG XL lossless);
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

Decoding replays the encoder's float32 network arithmetic, which depends on torch's thread
count (measured: an MNIST archive coded at 1 thread fails at 2 and the reverse). The header
stores the encoder's count; the decoder runs the network at that count (switching torch's
setting for the call and back) or, where it may not (``DecodeLimits``), refuses up front
with what to match. ``DecodeLimits`` also bounds what a file may claim (steps, subpixels,
images) before any work, for callers that decode untrusted files.

On a GPU (``load_codec(device="cuda")``) the float arithmetics' outputs depend on the GPU,
its CUDA and cuDNN, and torch's precision switches: both directions pin those switches
(determinism.pinned, restored after), and the file records the device's fingerprint
(hardware.device_fingerprint), which the decoder must match, or it refuses up front. The
portable arithmetic runs on the GPU too and writes the file the CPU writes (exact.py), so it
records no device and decodes anywhere.
"""
from __future__ import annotations

import copy
import hashlib
import math
import os
import platform
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from ..errors import FormatError, LimitError, ModelError, RuntimeMismatchError, VdmcodecError
from ..hardware import cpu_capability, device_fingerprint, native_bf16
from ..zoo import load_model, resolve_for_file
from . import classical, jpeg_prior, levels, structure, tiles
from .effort import DEFAULT_EFFORT, EffortChoice, check_effort, effort_choice
from .ans import EmptyMessageError, Message
from .determinism import PRECISION_MODE, pinned
from .preflight import (PreflightConfig, corr_scale_gains, estimate_bpd, hopeless, plain_photos_lose, structure_gains,
                        sure_win)
from .chain import ARITHMETIC, ChainConfig, DiffusionChain, apply_arithmetic
from .spec import CURRENT as CURRENT_CODER
from .spec import CoderSpec, coder_spec
from .container import (CORR_SCALE_STEPS, DTYPES, HASH_BYTES, MAX_IMAGES, MAX_SIDE, MAX_STEPS, MAX_THREADS, MAX_TOTAL_SUBPIXELS, MODEL_METHODS, TILED_METHODS, Header,
                        coded_shape, pack, run_length, unpack)

DEFAULT_STEPS = 128
DEFAULT_GRID_BITS = 2  # measured: see coding/chain.py
# crops on which compress estimates what a chroma-structure prior saves (preflight.structure_gains)
STRUCTURE_PROBE = PreflightConfig(crops=4, crop=64, draws=32)
DEFAULT_ARITHMETIC = "float32-nhwc"  # measured: benchmarks/results/coding_arithmetic.md
MAX_CHUNK_IMAGES = 64
MAX_CHUNK_SUBPIXELS = 1 << 20   # network batch memory bound; larger images are coded classically
INIT_MARGINS = (1.1, 1.5, 3.0)  # safety factors on the estimated initial bits, tried in turn
MAX_CACHED_CHAINS = 4           # per-(steps, grid_bits) chains a Codec keeps
_COMPRESS_DEFAULT = object()    # Codec.chain's default: the level times / correlations compress uses


@dataclass(frozen=True)
class DecodeLimits:
    """What a decoder accepts from a file, checked on the header before any work.

    The defaults are the format's own limits, so that every file the encoder writes decodes.
    Decode time is proportional to steps x model-coded subpixels (the same as encoding the
    file) and memory to the subpixels (see docs/format.md): lower the limits to decode
    untrusted files on a budget. ``match_threads``: run the network at the encoder's torch
    thread count when it differs from this process's and is at most ``max_threads``
    (default: the CPU count); otherwise refuse up front."""

    max_steps: int = MAX_STEPS
    max_subpixels: int = MAX_TOTAL_SUBPIXELS
    max_images: int = MAX_IMAGES
    match_threads: bool = True
    max_threads: int | None = None


@dataclass(frozen=True)
class ImageEntry:
    pixels: np.ndarray  # uint8 [H, W, C]
    name: str
    squeeze: bool       # the caller passed (H, W): return (H, W)


def as_hwc(img, name: str = "image") -> tuple[np.ndarray, bool]:
    """numpy (H, W) / (H, W, 1|3) uint8 or a PIL image -> uint8 [H, W, C]."""
    try:
        from PIL import Image

        if isinstance(img, Image.Image):
            from ..data import pil_to_array

            arr = pil_to_array(img, name)
            return arr, arr.shape[-1] == 1
    except ImportError:  # pragma: no cover
        pass
    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        raise VdmcodecError(f"{name}: pixels must be uint8, got {arr.dtype}")
    if arr.ndim == 2:
        return np.ascontiguousarray(arr[..., None]), True
    if arr.ndim == 3 and arr.shape[-1] in (1, 3):
        return np.ascontiguousarray(arr), False
    raise VdmcodecError(f"{name}: image shape {arr.shape} is not (H, W), (H, W, 1) or (H, W, 3)")


def pixels_digest(images: Sequence[np.ndarray]) -> str:
    """Hex of the first 8 bytes of SHA-256 over (shape as u32 LE, pixels) of each image."""
    h = hashlib.sha256()
    for im in images:
        h.update(np.asarray(im.shape, dtype="<u4").tobytes())
        h.update(np.ascontiguousarray(im).tobytes())
    return h.hexdigest()[: 2 * HASH_BYTES]


def model_digest(info: dict) -> str:
    """The weights' identity as stored in a file: the first 8 bytes of their SHA-256."""
    return info["sha256"][: 2 * HASH_BYTES]


def _encode_order(shapes: list[tuple], methods: list[str]) -> list[int]:
    """Model-coded images in chain order: by size (small first, so the stack grows before
    large images need their initial bits), stable within a size."""
    vdm = [k for k, m in enumerate(methods) if m == "vdm"]
    return sorted(vdm, key=lambda k: (shapes[k][0] * shapes[k][1] * shapes[k][2], shapes[k]))


def _plan_seeds(shapes, best, eligible, per_dim: float, tiled: dict | None = None):
    """Which images are classical seeds (their bytes start the stack) and the chain order of
    the rest: first the images the model cannot code, then eligible images in input order
    until the first chunk's estimated initial bits are covered. None if they never are.
    ``tiled`` ({image: "tiled" | "tiled-gray"}) images are coded after the chunks (tiles.py)
    and seed nothing here."""
    eligible_set, tiled = set(eligible), tiled or {}
    methods = ["vdm" if k in eligible_set else tiled[k] if k in tiled else best[k][0] for k in range(len(shapes))]
    order = _encode_order(shapes, methods)
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


class Codec:
    """Lossless compression with one VDM. ``steps`` is the default T of ``compress``."""

    def __init__(self, model, info: dict, steps: int = DEFAULT_STEPS, grid_bits: int = DEFAULT_GRID_BITS,
                 tile: int = tiles.DEFAULT_TILE, arithmetic: str = DEFAULT_ARITHMETIC,
                 preflight: PreflightConfig | None = PreflightConfig(), fitted_levels: bool = True,
                 structure_priors: bool = True, channel_corr: bool = True, effort: int = DEFAULT_EFFORT,
                 steps_fixed: bool = True):
        if arithmetic not in ARITHMETIC:
            raise ValueError(f"arithmetic must be one of {', '.join(ARITHMETIC)}, got {arithmetic!r}")
        ChainConfig(steps, grid_bits, arithmetic=arithmetic)  # refuses steps / grid_bits no chain can run, up front
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
        self.channel_corr = channel_corr  # compress with the card's coding_corr where it lists one (chain._p_codec_corr)
        # try structure priors (structure.py, jpeg_prior.py) on tiled RGB images; keep one
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
        precision switches are pinned (determinism.pinned) from the first network pass to the
        end of the call and restored after: a call that writes every image classically never
        touches them (the first switch costs about a second and a half of imports)."""
        with ExitStack() as stack:
            pinned_now: list = []

            def pin() -> None:
                if not pinned_now:
                    pinned_now.append(stack.enter_context(pinned()))

            return self._compress(images, steps, names, progress, classical_only, force_model, effort, pin)

    def _compress(self, images, steps, names, progress, classical_only, force_model, effort, pin) -> bytes:
        entries = self._entries(images, names)
        choice = self.effort_choice(effort)
        asked = steps or (self.steps if self.steps_fixed else None)  # a T the caller chose
        T = int(asked or choice.steps or self.steps)
        if T < 1:
            raise VdmcodecError(f"steps must be >= 1, got {T}")
        classical_only = classical_only or (asked is None and choice.steps is None and not force_model)
        pix = [e.pixels for e in entries]
        shapes = [p.shape for p in pix]
        best = [classical.encode_best(p, choice.classical) for p in pix]
        # images with a side longer than a tile are coded in tiles (tiles.py: bounded memory,
        # their own seeds); smaller ones whole, in chunks of equal shapes
        tiled = self._tiled_methods(pix)
        eligible = [k for k, p in enumerate(pix)
                    if p.shape[-1] == self.channels and p.size <= MAX_CHUNK_SUBPIXELS and k not in tiled]
        if not (force_model or classical_only):  # images the preflight gives up on stay classical
            tiled = {k: m for k, m in tiled.items()
                     if not self.preflight_check(pix[k], m, 8 * len(best[k][1]), choice.probe_plain, pin)[1]}
        if classical_only or not (eligible or tiled):
            return self._pack_classical(entries, best, T)
        pin()
        chain = self.chain(T, self.grid_bits)
        structures = {k: self.choose_structure(pix[k], chain) for k, m in tiled.items() if m == "tiled"}
        corr_scales = {k: self.choose_corr_scale(pix[k], chain) for k, m in tiled.items()
                       if m == "tiled" and structures.get(k) is None}
        blob = None
        for margin in INIT_MARGINS:  # a short estimate only costs a retry with more seeds
            per_dim = chain.initial_bits_per_dim() * margin
            plan = _plan_seeds(shapes, best, eligible, per_dim, tiled) if eligible else None
            if plan is None:
                if not tiled:
                    return self._pack_classical(entries, best, T)
                plan = ([tiled[k] if k in tiled else best[k][0] for k in range(len(pix))], [])
            methods, order = plan
            try:
                blob = self._compress_chain(entries, best, methods, order, chain, per_dim, progress, structures,
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

    def _tiled_methods(self, pix) -> dict[int, str]:
        """{image: method} of the images coded in tiles: those of the model's channel count
        with a side longer than a tile, and (RGB models) every grayscale image, as R = G = B."""
        out = {k: "tiled" for k, p in enumerate(pix) if p.shape[-1] == self.channels and tiles.needs_tiling(p.shape, self.tile)}
        if self.channels == 3:
            out.update({k: "tiled-gray" for k, p in enumerate(pix) if p.shape[-1] == 1})
        return out

    def choose_corr_scale(self, pixels: np.ndarray, chain: DiffusionChain) -> int:
        """The share (in 1/CORR_SCALE_STEPS) of ``chain``'s channel correlations a tiled RGB
        image without a structure prior is coded with: the one with the largest saving
        estimated on crops (preflight.corr_scale_gains, STRUCTURE_PROBE), 0 where none saves."""
        if chain.corr is None:
            return 0
        shares = list(range(1, CORR_SCALE_STEPS + 1))
        gains = corr_scale_gains(chain, pixels, [k / CORR_SCALE_STEPS for k in shares], STRUCTURE_PROBE)
        k = int(np.argmax(gains))
        return shares[k] if gains[k] > 0 else 0

    def choose_structure(self, pixels: np.ndarray, chain: DiffusionChain):
        """The structure prior ``chain`` codes a tiled RGB image with (structure.py: chroma
        subsampling; jpeg_prior.py: decoded JPEGs, float arithmetics only): of the candidates
        measured on the image, the one with the largest saving estimated on crops
        (STRUCTURE_PROBE), if that beats the prior's header bytes; else None."""
        if not self.structure_priors or self.channels != 3:
            return None
        priors = structure.candidates(pixels)
        if not ARITHMETIC[chain.cfg.arithmetic].portable:  # its DCT is a float matrix product
            priors += jpeg_prior.candidates(pixels)
        if not priors:
            return None
        gains = structure_gains(chain, pixels, priors, STRUCTURE_PROBE)
        k = int(np.argmax(gains))
        return priors[k] if gains[k] * pixels.size > 8 * len(priors[k].to_bytes()) else None

    def preflight_estimate(self, pixels: np.ndarray, method: str = "tiled") -> float | None:
        """The preflight's estimate of the model's bits per subpixel on one image (uint8
        [H, W, C]) coded as ``method`` ("tiled" or "tiled-gray": bits per gray subpixel),
        or None where compress runs no preflight (switched off, or a small image)."""
        cfg = self.preflight
        if cfg is None or pixels.shape[0] * pixels.shape[1] < cfg.min_pixels:
            return None
        coded = coded_pixels(pixels, method)
        return estimate_bpd(self.probe_model(), coded, cfg) * coded.shape[-1] / pixels.shape[-1]

    def probe_model(self):
        """The network as compress's arithmetic runs it (bfloat16 autocast on NHWC where the
        card chose that), for the encoder's estimates: they only steer the encoder's choices,
        never a decoded bit, so they may run a fast arithmetic (float32 NHWC for portable)."""
        if self._probe is None:
            name = "float32-nhwc" if ARITHMETIC[self.arithmetic].portable else self.arithmetic
            self._probe = apply_arithmetic(copy.deepcopy(self.model), name)
        return self._probe

    def preflight_check(self, pixels: np.ndarray, method: str, classical_bits: int,
                        probe_plain: bool = True, before_network=lambda: None) -> tuple[float | None, bool]:
        """(the preflight's estimate or None, whether compress gives the model up on this
        image, whose best classical encoding takes ``classical_bits``): given up where even
        the estimate's optimistic reading loses, and, between that and a sure win, on all but
        decoded JPEGs (preflight.py). Without ``probe_plain``, an image without a JPEG lattice
        is given up before any network pass where the card's calibration says the model lost
        on every such validation photo (preflight.plain_photos_lose). ``before_network`` is
        called before the first network pass."""
        cfg = self.preflight
        if cfg is None:
            return None, False
        lattice = (method == "tiled" and self.structure_priors and self.channels == 3
                   and not ARITHMETIC[self.arithmetic].portable and jpeg_prior.has_lattice(pixels))
        if not (lattice or probe_plain) and plain_photos_lose(self.info.get("card", {}), cfg, self.info.get("dir", "model")):
            return None, True
        before_network()
        est = self.preflight_estimate(pixels, method)
        if est is None:
            return None, False
        if hopeless(est, classical_bits, pixels.size, cfg):
            return est, True
        if sure_win(est, classical_bits, pixels.size, cfg):
            return est, False
        return est, not lattice

    def _entries(self, images, names) -> list[ImageEntry]:
        single = isinstance(images, np.ndarray) and images.ndim < 4
        try:
            from PIL import Image

            single = single or isinstance(images, Image.Image)  # a PIL image is not iterable
        except ImportError:  # pragma: no cover
            pass
        imgs = [images] if single else list(images)
        if not imgs:
            raise VdmcodecError("no images to compress")
        if names is not None and len(names) != len(imgs):
            raise VdmcodecError(f"{len(names)} names for {len(imgs)} images")
        if len(imgs) > MAX_IMAGES:
            raise VdmcodecError(f"{len(imgs)} images: an archive holds at most {MAX_IMAGES}")
        out, total = [], 0
        for k, im in enumerate(imgs):
            name = names[k] if names is not None else f"{k:05d}.png"
            arr, squeeze = as_hwc(im, name)
            if min(arr.shape[:2]) < 1 or max(arr.shape[:2]) > MAX_SIDE:
                raise VdmcodecError(f"{name}: size {arr.shape[0]}x{arr.shape[1]}; sides must be 1..{MAX_SIDE}")
            total += arr.size
            out.append(ImageEntry(arr, name, squeeze))
        if total > MAX_TOTAL_SUBPIXELS:
            raise VdmcodecError(f"{total} subpixels in all: an archive holds at most {MAX_TOTAL_SUBPIXELS}")
        return out

    def _header(self, entries, methods, classical_sizes, chunks, T, init_pad, uses_model, layouts=(), times=None,
                structures=(), corr=None, corr_scales=()) -> Header:
        names = [e.name for e in entries]
        seq = [f"{k:05d}.png" for k in range(len(entries))]
        return Header(
            model=self.info["name"] if uses_model else None,
            model_hash=model_digest(self.info) if uses_model else None,
            steps=T if uses_model else 0,
            grid_bits=self.grid_bits if uses_model else 0,
            torch=torch.__version__ if uses_model else "",
            dtype=self.arithmetic if uses_model else DTYPES[0],
            threads=torch.get_num_threads() if uses_model else 0,
            shapes=run_length([tuple(e.pixels.shape) for e in entries]),
            names={"sequence": ["", 5, ".png"]} if names == seq else {"list": names},
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

    def _compress_chain(self, entries, best, methods, order, chain, per_dim, progress, structures=None,
                        corr_scales=None) -> bytes:
        classical_idx = [k for k, m in enumerate(methods) if m not in MODEL_METHODS]
        cblob = b"".join(best[k][1] for k in classical_idx)
        pad = (-len(cblob)) % 4
        init = np.frombuffer(cblob + b"\0" * pad, dtype="<u4").astype(np.uint32)
        msg = Message(init, sealed=True)
        chunks: list[list[int]] = []
        # plan and code chunk by chunk: a chunk holds images of one shape, as many as the
        # stack's bits can start (estimated), bounded for memory
        pos = 0
        bar = _bar(progress, len(order), "compress")
        try:
            while pos < len(order):
                shape = entries[order[pos]].pixels.shape
                dims = math.prod(shape)
                run = 1
                while pos + run < len(order) and entries[order[pos + run]].pixels.shape == shape:
                    run += 1
                fit = int((msg.num_bits - 64) // (per_dim * dims))
                size = max(1, min(fit, run, MAX_CHUNK_IMAGES, max(1, MAX_CHUNK_SUBPIXELS // dims)))
                x = np.stack([entries[k].pixels for k in order[pos : pos + size]]).transpose(0, 3, 1, 2).copy()
                chain.push(msg, x, corr_scale=0.0)  # chunks: small images, factorised p
                chunks.append([pos, size])
                pos += size
                if bar is not None:
                    bar.update(size)
        finally:
            if bar is not None:
                bar.close()
        structures = structures or {}
        layouts, priors, shares = self._push_tiled(entries, methods, chain, msg, per_dim, progress, structures,
                                                   corr_scales or {})
        header = self._header(entries, methods, [len(best[k][1]) for k in classical_idx], chunks, chain.cfg.steps, pad,
                              uses_model=True, layouts=layouts, times=chain.cfg.times, structures=priors,
                              corr=chain.cfg.channel_corr, corr_scales=shares)
        return pack(header, msg.to_bytes())

    def _push_tiled(self, entries, methods, chain, msg, per_dim, progress, structures: dict,
                    corr_scales: dict) -> tuple[list, list, list]:
        """The tiled images, after the chunks, in image order (tiles.py): their layouts,
        structure priors and shares of the channel correlations."""
        idx = [k for k, m in enumerate(methods) if m in TILED_METHODS]
        priors = [structures.get(k) for k in idx]
        shares = [corr_scales.get(k, 0) for k in idx]
        bar = _tile_bar(progress, [entries[k].pixels.shape for k in idx], self.tile, "compress")
        try:
            return [tiles.push_image(chain, msg, coded_pixels(entries[k].pixels, methods[k]), self.tile, per_dim,
                                     bar and bar.update, prior, share / CORR_SCALE_STEPS)
                    for k, prior, share in zip(idx, priors, shares)], priors, shares
        finally:
            if bar is not None:
                bar.close()

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

        entries = self._entries(images, None)
        items = [ImageItem(e.pixels, e.name) for e in entries]
        return evaluate(self.model, items, steps=int(steps or self.steps), seed=seed, progress=False)


def device_record(device: torch.device, arithmetic: str) -> str | None:
    """What a file coded on ``device`` in ``arithmetic`` records of the device: the GPU's
    fingerprint for a float arithmetic on CUDA, else None (the CPU, or portable: the same
    bits everywhere)."""
    if ARITHMETIC[arithmetic].portable:
        return None
    return device_fingerprint(device, PRECISION_MODE)


def check_device(header: Header, device: torch.device) -> None:
    """Refuse, before any work, a file whose network arithmetic ``device`` cannot replay: a
    GPU file on the CPU or on another GPU or software (the fingerprints differ), a CPU file
    on a GPU. Portable files decode on any device."""
    if header.model is None or header.dtype == "portable":
        return
    here = device_record(device, header.dtype)
    if header.device == here:
        return
    portable = "files written with --arithmetic portable decode on any device"
    if header.device is None:
        raise RuntimeMismatchError(f"this file was coded on a CPU in {header.dtype} and decodes only on one; this "
                                   f"decoder runs on {device} (use --device cpu; {portable})")
    if here is None:
        raise RuntimeMismatchError(f"this file was coded on a GPU in {header.dtype} ({header.device}) and decodes only "
                                   f"on the same GPU and software; this decoder runs on the CPU (decode there with "
                                   f"--device cuda; {portable})")
    raise RuntimeMismatchError(f"this file was coded on a GPU in {header.dtype} ({header.device}) and decodes only on "
                               f"the same GPU and software; this one is {here} ({portable})")


def check_limits(header: Header, limits: DecodeLimits) -> None:
    """Refuse, before any work, a file that claims more than ``limits`` allow."""
    subpixels = sum(h * w * c * n for h, w, c, n in header.shapes)
    if header.steps > limits.max_steps:
        raise LimitError(f"file is coded with T={header.steps} steps, over this decoder's limit of {limits.max_steps}")
    if subpixels > limits.max_subpixels:
        raise LimitError(f"file holds {subpixels} subpixels, over this decoder's limit of {limits.max_subpixels}")
    if header.count > limits.max_images:
        raise LimitError(f"file holds {header.count} images, over this decoder's limit of {limits.max_images}")


@contextmanager
def network_threads(header: Header, limits: DecodeLimits):
    """Run the block at the encoder's torch thread count (see the module docstring)."""
    here, there = torch.get_num_threads(), header.threads
    # exact.py: the same bits at any count; a GPU file: the network does not run on CPU threads
    if here == there or header.dtype == "portable" or header.device is not None:
        yield
        return
    cap = limits.max_threads if limits.max_threads is not None else (os.cpu_count() or 1)
    if not limits.match_threads or there > min(cap, MAX_THREADS):
        why = "" if limits.match_threads else " (thread matching is off)"
        raise RuntimeMismatchError(
            f"this file was coded with {there} torch thread{'s' * (there != 1)} and decodes bit-exactly only with "
            f"the same count; this process runs {here}{why}: call torch.set_num_threads({there}) first "
            f"(CLI: vdmcodec decompress --threads {there})")
    torch.set_num_threads(there)
    try:
        yield
    finally:
        torch.set_num_threads(here)


def decode_payload(header: Header, payload: bytes, codec: "Codec | None", progress: bool = False,
                   limits: DecodeLimits | None = None) -> list[tuple[np.ndarray, str]]:
    limits = limits or DecodeLimits()
    check_limits(header, limits)
    if any(size > MAX_CHUNK_IMAGES for _, size in header.chunks):  # before the per-image lists are built
        raise FormatError("corrupted header (a chunk is larger than the encoder writes)")
    shapes = header.image_shapes()
    methods = header.image_methods()
    names = header.image_names()
    out: list[np.ndarray | None] = [None] * len(shapes)
    order = _encode_order(shapes, methods)
    tiled_idx = [k for k, m in enumerate(methods) if m in TILED_METHODS]
    if order or tiled_idx:
        if codec is None:
            raise ModelError(f"this file needs model {header.model!r}")
        if any(methods[k] == "tiled-gray" for k in tiled_idx) and codec.channels != 3:
            raise FormatError("invalid header: a tiled-gray image needs a three-channel model")
        if model_digest(codec.info) != header.model_hash:
            raise ModelError(f"file was coded with model {header.model!r} (weights sha256 {header.model_hash}...); "
                             f"the loaded model {codec.info['name']!r} has {model_digest(codec.info)}...")
        check_device(header, codec.device)
        if len(payload) % 4:
            raise FormatError("corrupted payload (not whole ANS words)")
        for start, size in header.chunks:  # the encoder's bounds, checked before any batch is allocated
            if size > MAX_CHUNK_IMAGES or size * math.prod(shapes[order[start]]) > MAX_CHUNK_SUBPIXELS:
                raise FormatError("corrupted header (a chunk is larger than the encoder writes)")
        times = None
        if header.levels is not None:
            times = levels.card_times(codec.info.get("card", {}), header.steps, codec.info.get("dir", "model"))
            if times is None or levels.times_digest(times) != header.levels:
                have = "none for this T" if times is None else levels.times_digest(times) + "..."
                raise ModelError(f"file was coded at fitted level times (sha256 {header.levels}...) for T = {header.steps}; "
                                 f"the loaded model's card lists {have}: decode with the model card the file was written with")
        corr = None
        if header.corr is not None:
            corr = levels.card_corr(codec.info.get("card", {}), codec.info.get("dir", "model"))
            if corr is None or levels.corr_digest(corr) != header.corr:
                have = "none" if corr is None else levels.corr_digest(corr) + "..."
                raise ModelError(f"file was coded with channel correlations (sha256 {header.corr}...); the loaded "
                                 f"model's card lists {have}: decode with the model card the file was written with")
        spec = coder_spec(header.version)  # the coder of the file's format version
        try:
            chain = codec.chain(header.steps, header.grid_bits, header.dtype, times, corr, spec)
        except ValueError as e:  # steps / grid_bits this model cannot run: a forged header
            raise FormatError(f"invalid header for this model ({e})") from None
        msg = Message.from_bytes(payload)
        bar = _bar(progress, len(order), "decompress")
        try:
            with network_threads(header, limits), pinned():
                _pop_tiled(chain, msg, header, shapes, methods, tiled_idx, out, progress)
                cblob = _pop_chunks(chain, msg, header, shapes, order, out, bar)
        except EmptyMessageError:
            raise FormatError("corrupted payload (the ANS stream ended early)") from None
        except (ValueError, RuntimeError, OverflowError, IndexError) as e:
            raise FormatError(f"corrupted payload, or this machine's arithmetic differs from the encoder's "
                              f"({type(e).__name__} while decoding; {_environments(header)})") from None
        finally:
            if bar is not None:
                bar.close()
        if header.init_pad:
            if cblob[-header.init_pad:] != b"\0" * header.init_pad:
                raise _mismatch(header)
            cblob = cblob[: -header.init_pad]
    else:
        cblob = payload
    return _finish(header, shapes, methods, names, out, cblob, bool(order or tiled_idx))


def coded_pixels(pixels: np.ndarray, method: str) -> np.ndarray:
    """What the chain codes for an image: a "tiled-gray" image as three equal channels."""
    return np.repeat(pixels, 3, axis=-1) if method == "tiled-gray" else pixels


def _pop_tiled(chain: DiffusionChain, msg: Message, header: Header, shapes, methods, tiled_idx, out, progress) -> None:
    """Decode the tiled images (pushed last, so popped first) into ``out``."""
    bar = _tile_bar(progress, [shapes[k] for k in tiled_idx], header.tile, "decompress")
    try:
        priors = header.structures or [None] * len(tiled_idx)
        shares = header.corr_scales or [0] * len(tiled_idx)
        for k, layout, prior, share in reversed(list(zip(tiled_idx, header.tiled, priors, shares))):
            im = tiles.pop_image(chain, msg, layout, coded_shape(shapes[k], methods[k]), header.tile, bar and bar.update,
                                 prior, share / CORR_SCALE_STEPS)
            if methods[k] == "tiled-gray":
                if not ((im[..., 0] == im[..., 1]).all() and (im[..., 1] == im[..., 2]).all()):
                    raise _mismatch(header)
                im = np.ascontiguousarray(im[..., :1])
            out[k] = im
    finally:
        if bar is not None:
            bar.close()


def _tile_bar(progress: bool, shapes, tile: int, desc: str):
    if not progress or not shapes:
        return None
    from tqdm import tqdm

    total = sum(math.ceil(s[0] / tile) * math.ceil(s[1] / tile) for s in shapes)
    return tqdm(total=total, unit="tile", desc=f"{desc} (tiles)", dynamic_ncols=True)


def _pop_chunks(chain: DiffusionChain, msg: Message, header: Header, shapes, order, out, bar) -> bytes:
    """Decode the model-coded images into ``out``; return the initial message (the seeds)."""
    for start, size in reversed(header.chunks):
        idx = order[start : start + size]
        h, w, c = shapes[idx[0]]
        if any(shapes[k] != (h, w, c) for k in idx):
            raise FormatError("corrupted header (a chunk mixes image sizes)")
        x = chain.pop(msg, (size, c, h, w), corr_scale=0.0)
        for j, k in enumerate(idx):
            out[k] = np.ascontiguousarray(x[j].transpose(1, 2, 0))
        if bar is not None:
            bar.update(size)
    return msg.to_bytes(unseal=True)


def _finish(header: Header, shapes, methods, names, out, cblob: bytes, chained: bool) -> list[tuple[np.ndarray, str]]:
    """Decode the classical images, verify every pixel, apply names and squeeze flags."""
    classical_idx = [k for k, m in enumerate(methods) if m not in MODEL_METHODS]
    if sum(header.classical_sizes) != len(cblob):
        raise _mismatch(header) if chained else FormatError("corrupted payload (classical data size mismatch)")
    pos = 0
    for k, size in zip(classical_idx, header.classical_sizes):
        out[k] = classical.decode(cblob[pos : pos + size], methods[k], shapes[k])
        pos += size
    if pixels_digest(out) != header.pixels_hash:
        raise _mismatch(header)
    squeeze = header.image_squeeze()
    if any(sq and im.shape[-1] != 1 for im, sq in zip(out, squeeze)):
        raise FormatError("invalid header: a colour image flagged to come back as (H, W)")
    return [(im[..., 0] if sq else im, name) for im, sq, name in zip(out, squeeze, names)]


def _environments(header: Header) -> str:
    """Where the encoder's and this decoder's network arithmetic came from (the decoder ran
    at the header's thread count: network_threads)."""
    if header.dtype == "portable":  # the same bits everywhere: a failure is damage, or another torch's rounding
        return f"encoded with torch {header.torch}, portable arithmetic; decoded with torch {torch.__version__}"
    if header.device is not None:  # the decoder checked the fingerprint: the same GPU and software
        return (f"encoded with torch {header.torch} on {header.device}, {header.dtype}; decoded with torch "
                f"{torch.__version__} on the same GPU; files written with --arithmetic portable decode on any device")
    return (f"encoded with torch {header.torch} at {header.threads} threads, {header.dtype}; "
            f"decoded with torch {torch.__version__} at the same count on {platform.machine()} "
            f"({cpu_capability()}); float files decode only on a CPU of the encoder's SIMD level, "
            f"files written with --arithmetic portable on any")


def _mismatch(header: Header) -> FormatError:
    if header.model is None:
        return FormatError("checksum mismatch: decoded pixels differ from the original (corrupted file)")
    return FormatError(f"checksum mismatch: decoded pixels differ from the original ({_environments(header)})")


def _bar(progress: bool, total: int, desc: str):
    if not progress or not total:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc=desc, dynamic_ncols=True)


def load_codec(name_or_dir: str | Path | None = None, steps: int | None = None, device: str = "cpu",
               arithmetic: str | None = None, preflight: PreflightConfig | None = PreflightConfig()) -> Codec:
    """A Codec for a shipped model name (default: the default model) or a model directory.
    ``steps`` is compress's default T (None: the T the card gives compress's effort, effort.py)
    and ``arithmetic`` what compress runs (a key of
    coding.chain.ARITHMETIC); either left None comes from the model card (coding_steps,
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
