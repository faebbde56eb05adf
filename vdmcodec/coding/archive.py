"""The archive's layout on the ANS stack, in both directions, and what a decoder checks.

The stack starts from the seeds: the classical bytes of the images that are not model-coded,
zero-padded to whole words, as a sealed initial message (``seed_message``; HiLLoC's trick:
the decoder gets them back exactly at the end). On them the encoder pushes the model-coded
whole images in chain order (``chain_order``), in chunks of one shape (``push_chunks``; the
first ones on coarser latent grids, which need fewer initial bits),
then the tiled images in image order (``push_tiled``, tiles.py). The decoder pops the tiled
images, then the chunks, in reverse (``pop_tiled``, ``pop_chunks``), is left with the seeds,
decodes the classical images from them and checks every pixel against the header's SHA-256
(``decode_payload``). The layout in bytes: docs/format.md.

Decoding replays the encoder's float32 network arithmetic, which depends on torch's thread
count (measured: an MNIST archive coded at 1 thread fails at 2 and the reverse). The header
stores the encoder's count; the decoder runs the network at that count (switching torch's
setting for the call and back: ``network_threads``) or, where it may not (``DecodeLimits``),
refuses up front with what to match. ``DecodeLimits`` also bounds what a file may claim
(steps, subpixels, images) before any work, for callers that decode untrusted files.

On a GPU the float arithmetics' outputs depend on the GPU, its CUDA and cuDNN, and torch's
precision switches: both directions pin those switches (determinism.pinned, restored after),
and the file records the device's fingerprint (``device_record``), which the decoder must
match, or it refuses up front (``check_device``). The portable arithmetic runs on the GPU
too and writes the file the CPU writes (exact.py), so it records no device and decodes
anywhere.
"""
from __future__ import annotations

import hashlib
import math
import os
import platform
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from ..errors import FormatError, LimitError, ModelError, RuntimeMismatchError
from ..hardware import cpu_capability, device_fingerprint
from . import classical, levels, tiles
from .ans import EmptyMessageError, Message
from .arithmetic import ARITHMETIC
from .chain import DiffusionChain
from .container import (CORR_SCALE_STEPS, HASH_BYTES, MAX_CHUNK_GRID_DROP, MAX_CHUNK_IMAGES, MAX_IMAGES, MAX_STEPS,
                        MAX_THREADS, MAX_TOTAL_SUBPIXELS, MIN_CHUNK_GRID_BITS, MODEL_METHODS, TILED_METHODS, Header, coded_shape)
from .determinism import PRECISION_MODE, pinned
from .priors import TilePrior
from .spec import coder_spec

if TYPE_CHECKING:
    from .codec import Codec

MAX_CHUNK_SUBPIXELS = 1 << 20   # network batch memory bound; larger images are coded classically


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


def chain_order(shapes: list[tuple], methods: list[str]) -> list[int]:
    """Model-coded images in chain order: by size (small first, so the stack grows before
    large images need their initial bits), stable within a size."""
    vdm = [k for k, m in enumerate(methods) if m == "vdm"]
    return sorted(vdm, key=lambda k: (shapes[k][0] * shapes[k][1] * shapes[k][2], shapes[k]))


def coded_pixels(pixels: np.ndarray, method: str) -> np.ndarray:
    """What the chain codes for an image: a "tiled-gray" image as three equal channels."""
    return np.repeat(pixels, 3, axis=-1) if method == "tiled-gray" else pixels


# ---- encoder: push ----------------------------------------------------------------------
def seed_message(seeds: bytes) -> tuple[Message, int]:
    """The initial message: the seeds' classical bytes, zero-padded to whole words, sealed;
    and the pad's length (the header's init_pad)."""
    pad = (-len(seeds)) % 4
    init = np.frombuffer(seeds + b"\0" * pad, dtype="<u4").astype(np.uint32)
    return Message(init, sealed=True), pad


def chunk_floor(grid_bits: int) -> int:
    """The coarsest latent grid ``push_chunks`` codes a chunk on, for an archive on ``grid_bits``."""
    return max(MIN_CHUNK_GRID_BITS, grid_bits - MAX_CHUNK_GRID_DROP)


def push_chunks(chain: DiffusionChain, msg: Message, pixels: Sequence[np.ndarray], order: list[int], margin: float,
                progress: bool) -> tuple[list[list[int]], list[int]]:
    """Push the whole model-coded images in ``order`` chunk by chunk; return the chunks
    ([start in order, size]) and each one's latent grid bits. A chunk holds images of one
    shape, as many as the stack's bits can start on the chain's grid (its initial bits per
    subpixel times ``margin``), bounded for memory. Where the stack cannot start one image on
    that grid, the chunk is that one image on the finest coarser grid it can start, down to
    ``chunk_floor``: a coarse grid needs fewer initial bits and costs some rate, measured on
    `mnist`, T = 48, 16 validation digits (bpd against initial bits per dimension):

        grid_bits     -3      -2      -1      0       1       2
        rate          10.14   2.140   1.163   1.079   1.071   1.066
        initial bits  0.45    1.78    3.78    5.78    7.78    9.78

    so the seeds (planner.plan_seeds) need only cover the first image on the floor's grid,
    and a stack grows to the archive's grid within a few images."""
    chunks: list[list[int]] = []
    grids: list[int] = []
    target = chain.cfg.grid_bits
    on_grid = {g: chain.on_grid(g) for g in range(target, chunk_floor(target) - 1, -1)}
    pos = 0
    bar = _bar(progress, len(order), "compress")
    try:
        while pos < len(order):
            shape = pixels[order[pos]].shape
            dims = math.prod(shape)
            run = 1
            while pos + run < len(order) and pixels[order[pos + run]].shape == shape:
                run += 1
            for g, c in on_grid.items():  # the finest grid the stack can start an image on
                fit = int((msg.num_bits - 64) // (c.initial_bits_per_dim() * margin * dims))
                if fit >= 1:
                    break
            size = max(1, min(fit, run, MAX_CHUNK_IMAGES, max(1, MAX_CHUNK_SUBPIXELS // dims))) if g == target else 1
            x = np.stack([pixels[k] for k in order[pos : pos + size]]).transpose(0, 3, 1, 2).copy()
            c.push(msg, x)  # chunks: small images, no prior (factorised p)
            chunks.append([pos, size])
            grids.append(g)
            pos += size
            if bar is not None:
                bar.update(size)
    finally:
        if bar is not None:
            bar.close()
    return chunks, grids


def tile_prior(structure, share: int) -> TilePrior:
    """The TilePrior of a tiled image from the header's values: its structure prior (or None)
    and its share of the channel correlations in 1/CORR_SCALE_STEPS."""
    return TilePrior(structure, corr_scale=share / CORR_SCALE_STEPS)


def push_tiled(chain: DiffusionChain, msg: Message, pixels: Sequence[np.ndarray], methods: list[str], tile: int,
               per_dim: float, progress: bool, structures: dict, corr_scales: dict) -> tuple[list, list, list]:
    """Push the tiled images, after the chunks, in image order (tiles.py), each with the
    TilePrior of its structure prior (``structures``) and share of the channel correlations
    (``corr_scales``, in 1/CORR_SCALE_STEPS): their layouts, structure priors and shares."""
    idx = [k for k, m in enumerate(methods) if m in TILED_METHODS]
    priors = [structures.get(k) for k in idx]
    shares = [corr_scales.get(k, 0) for k in idx]
    bar = _tile_bar(progress, [pixels[k].shape for k in idx], tile, "compress")
    try:
        return [tiles.push_image(chain, msg, coded_pixels(pixels[k], methods[k]), tile, per_dim,
                                 bar and bar.update, tile_prior(prior, share))
                for k, prior, share in zip(idx, priors, shares)], priors, shares
    finally:
        if bar is not None:
            bar.close()


# ---- decoder: checks, then pop ----------------------------------------------------------
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
    """The images of a parsed container and their names; ``codec``: the model the header
    names (None where it names none)."""
    limits = limits or DecodeLimits()
    check_limits(header, limits)
    shapes = header.image_shapes()
    methods = header.image_methods()
    names = header.image_names()
    out: list[np.ndarray | None] = [None] * len(shapes)
    order = chain_order(shapes, methods)
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
                pop_tiled(chain, msg, header, shapes, methods, tiled_idx, out, progress)
                cblob = pop_chunks(chain, msg, header, shapes, order, out, bar)
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


def pop_tiled(chain: DiffusionChain, msg: Message, header: Header, shapes, methods, tiled_idx, out, progress) -> None:
    """Decode the tiled images (pushed last, so popped first) into ``out``."""
    bar = _tile_bar(progress, [shapes[k] for k in tiled_idx], header.tile, "decompress")
    try:
        priors = header.structures or [None] * len(tiled_idx)
        shares = header.corr_scales or [0] * len(tiled_idx)
        for k, layout, prior, share in reversed(list(zip(tiled_idx, header.tiled, priors, shares))):
            im = tiles.pop_image(chain, msg, layout, coded_shape(shapes[k], methods[k]), header.tile, bar and bar.update,
                                 tile_prior(prior, share))
            if methods[k] == "tiled-gray":
                if not ((im[..., 0] == im[..., 1]).all() and (im[..., 1] == im[..., 2]).all()):
                    raise _mismatch(header)
                im = np.ascontiguousarray(im[..., :1])
            out[k] = im
    finally:
        if bar is not None:
            bar.close()


def pop_chunks(chain: DiffusionChain, msg: Message, header: Header, shapes, order, out, bar) -> bytes:
    """Decode the model-coded images into ``out``; return the initial message (the seeds)."""
    grids = header.chunk_grids or [header.grid_bits] * len(header.chunks)
    on_grid = {g: chain.on_grid(g) for g in set(grids)}
    for (start, size), g in reversed(list(zip(header.chunks, grids))):
        idx = order[start : start + size]
        h, w, c = shapes[idx[0]]
        if any(shapes[k] != (h, w, c) for k in idx):
            raise FormatError("corrupted header (a chunk mixes image sizes)")
        x = on_grid[g].pop(msg, (size, c, h, w))
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


# ---- progress bars ----------------------------------------------------------------------
def _bar(progress: bool, total: int, desc: str):
    if not progress or not total:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc=desc, dynamic_ncols=True)


def _tile_bar(progress: bool, shapes, tile: int, desc: str):
    if not progress or not shapes:
        return None
    from tqdm import tqdm

    total = sum(math.ceil(s[0] / tile) * math.ceil(s[1] / tile) for s in shapes)
    return tqdm(total=total, unit="tile", desc=f"{desc} (tiles)", dynamic_ncols=True)
