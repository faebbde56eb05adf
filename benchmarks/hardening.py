"""Shared pieces of the reliability benchmark (benchmarks/reliability.py) and its tests:
tiny untrained models, random test images, and the valid seed archives that the fuzzer
mutates."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vdmcodec.coding.codec import Codec, load_codec
from vdmcodec.coding.container import MODEL_METHODS
from vdmcodec.diffusion import VDM, ModelConfig
from vdmcodec.networks import NetworkConfig
from vdmcodec.schedules import ScheduleConfig, ScheduleKind
from vdmcodec.zoo import save_model

ROOT = Path(__file__).resolve().parent.parent
MNIST = ROOT.parent / "shared" / "data" / "mnist" / "mnist9k-images-idx3-ubyte.gz"


def tiny_model(out: Path, image_channels: int = 1, seed: int = 0) -> Path:
    """An untrained tiny VDM (8 channels, learned schedule) saved as a model directory, the
    same configuration the test suite uses."""
    cfg = ModelConfig(schedule=ScheduleConfig(kind=ScheduleKind.learned, hidden=16),
                      network=NetworkConfig(image_channels=image_channels, channels=8, channel_mult=(1, 2), num_res_blocks=1))
    torch.manual_seed(seed)
    save_model(out, VDM(cfg), {"name": f"tiny{'-rgb' if image_channels == 3 else ''}", "data": "none (untrained)"})
    return out


# ---- random images -----------------------------------------------------------------------
KINDS = ("noise", "constant", "extremes", "few_levels", "gradient", "smooth", "checker", "one_pixel")
EDGE_SIDES = (1, 2, 3, 7, 8, 31, 32, 33, 63, 64)


def random_image(rng: np.random.Generator, max_side: int = 64) -> tuple[np.ndarray, str]:
    """One random uint8 test image as a caller would pass it: (H, W), (H, W, 1) or (H, W, 3),
    sides 1..max_side (edge sizes often), one of KINDS of content. Returns (image, kind)."""
    def side():
        edges = [s for s in EDGE_SIDES if s <= max_side]
        return int(rng.choice(edges)) if rng.random() < 0.3 else int(rng.integers(1, max_side + 1))

    h, w = side(), side()
    c = 3 if rng.random() < 0.4 else 1
    kind = str(rng.choice(KINDS))
    shape = (h, w, c)
    if kind == "noise":
        x = rng.integers(0, 256, shape)
    elif kind == "constant":
        x = np.full(shape, int(rng.choice([0, 255, int(rng.integers(0, 256))])))
    elif kind == "extremes":
        x = np.where(rng.random(shape) < rng.random(), 255, 0)
    elif kind == "few_levels":
        levels = rng.integers(0, 256, int(rng.integers(2, 5)))
        x = levels[rng.integers(0, len(levels), shape)]
    elif kind == "gradient":
        x = (np.add.outer(np.arange(h), np.arange(w))[..., None] * int(rng.integers(1, 9)) + np.arange(c) * 40) % 256
        x = np.broadcast_to(x, shape)
    elif kind == "smooth":
        base = rng.normal(128, 60, (max(1, h // 4 + 1), max(1, w // 4 + 1), c))
        x = np.clip(np.repeat(np.repeat(base, 4, 0), 4, 1)[:h, :w] + rng.normal(0, 3, shape), 0, 255)
    elif kind == "checker":
        x = ((np.add.outer(np.arange(h), np.arange(w)) % 2) * 255)[..., None].repeat(c, -1)
    else:  # one_pixel: constant but for one subpixel
        x = np.full(shape, int(rng.integers(0, 256)))
        x[int(rng.integers(h)), int(rng.integers(w)), int(rng.integers(c))] ^= 0xFF
    x = np.ascontiguousarray(x, dtype=np.uint8)
    if c == 1 and rng.random() < 0.5:
        x = x[..., 0]  # (H, W): comes back (H, W)
    return x, kind


def as_hwc(im: np.ndarray) -> np.ndarray:
    return im[..., None] if im.ndim == 2 else im


def same_images(out, ref) -> bool:
    """Bit-exact equality of decoded and original images, shapes and dtype included."""
    return len(out) == len(ref) and all(
        a.dtype == np.uint8 and a.shape == b.shape and np.array_equal(a, b) for a, b in zip(out, ref))


# ---- seed archives -------------------------------------------------------------------------
@dataclass(frozen=True)
class Seed:
    """A valid archive to mutate, the images it holds, and the model it needs (a key of the
    codecs dict, or None)."""

    name: str
    blob: bytes
    images: tuple
    model: str | None

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.blob).hexdigest()[:12]


def codecs_for(model_dirs: dict[str, str | Path], steps: int) -> dict[str, Codec]:
    return {key: load_codec(d, steps=steps) for key, d in model_dirs.items()}


def build_seeds(codecs: dict[str, Codec], mnist_steps: int = 4, tiny_steps: int = 2) -> list[Seed]:
    """Small valid archives: all classical (names list, gray / RGB, squeezed or not), chain
    coded with the tiny model (default names), and with the MNIST model when it is given
    (real digits if the shared data is there, else random ones). Coded at one torch thread
    (the fuzz worker's count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _build_seeds(codecs, mnist_steps, tiny_steps)
    finally:
        torch.set_num_threads(before)


def _build_seeds(codecs: dict[str, Codec], mnist_steps: int, tiny_steps: int) -> list[Seed]:
    rng = np.random.default_rng(1234)
    seeds = []
    classical = [rng.integers(0, 256, (5, 4), dtype=np.uint8), rng.integers(0, 256, (3, 6, 3), dtype=np.uint8),
                 np.full((2, 2, 1), 7, np.uint8)]
    any_codec = next(iter(codecs.values()))
    seeds.append(Seed("classical", any_codec.compress(classical, names=["a.png", "dir/b.png", "c.png"], classical_only=True),
                      tuple(classical), None))
    if "tiny" in codecs:
        imgs = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)] + [rng.integers(0, 256, (3, 4), dtype=np.uint8)
                                                                     for _ in range(4)]
        blob = codecs["tiny"].compress(imgs, steps=tiny_steps, force_model=True)
        seeds.append(Seed("tiny-chain", blob, tuple(imgs), "tiny"))
    if "tiny-rgb" in codecs:
        seeds += tiled_seeds(codecs["tiny-rgb"], tiny_steps, rng)
    if "mnist" in codecs:
        if MNIST.exists():
            from vdmcodec.data import read_idx

            digits = [np.ascontiguousarray(d) for d in read_idx(MNIST)[8000:8006]]
        else:
            digits = [rng.integers(0, 256, (28, 28, 1), dtype=np.uint8) for _ in range(6)]
        imgs = [rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)] + digits
        blob = codecs["mnist"].compress(imgs, steps=mnist_steps, force_model=True)
        seeds.append(Seed("mnist-chain", blob, tuple(imgs), "mnist"))
    return seeds


def tiled_seeds(codec: Codec, steps: int, rng: np.random.Generator) -> list[Seed]:
    """An archive whose images are coded in tiles (``codec``: a three-channel model): a
    smooth RGB image of a few tiles, seeded by a classical segment on the stack, a gray one
    through the RGB model (tiled-gray) and two small RGB chunks; and the same archive with a
    chroma-structure prior and with a JPEG-lattice prior recorded on its RGB image (forged:
    they decode to a checksum mismatch, but every field of both records gets forged)."""
    import dataclasses

    from vdmcodec.coding import container
    from vdmcodec.coding.priors import parse_prior

    # two grid bits: on compress's one for tiled images the stack needs no classical segment here
    codec = Codec(codec.model, codec.info, steps=steps, grid_bits=2, tile=8, arithmetic=codec.arithmetic, preflight=None)
    side = 20  # 3 x 3 tiles of 8 (the decoder reads the tile side from the header)
    y, x = np.mgrid[0:side, 0 : side - 3]
    rgb = np.clip((y * 3 + x * 2)[..., None] + 40 * np.arange(3) + rng.integers(-6, 7, (side, side - 3, 3)), 0, 255)
    imgs = [rgb.astype(np.uint8), rng.integers(0, 256, (9, 6), dtype=np.uint8)] + [
        rng.integers(0, 256, (2, 2, 3), dtype=np.uint8) for _ in range(2)]
    blob = codec.compress(imgs, steps=steps, force_model=True)
    h, payload = container.unpack(blob)
    if not any(s.method != "vdm" for layout in h.tiled for b in layout.bands for s in b.segments):
        raise RuntimeError("the tiled seed has no classical segment: change its images")
    out = [Seed("tiny-tiled", blob, tuple(imgs), "tiny-rgb")]
    priors = {"structure": parse_prior(bytes([2]) + b"\x10\x00" * 78), "jpeg": parse_prior(
        bytes([3]) + bytes(range(1, 65)) + b"\x00\x01" * 3)}
    for name, prior in priors.items():
        forged = dataclasses.replace(h, structures=[prior if m == "tiled" else None for m in h.image_methods()
                                                   if m in container.TILED_METHODS])
        out.append(Seed(f"tiny-tiled-{name}", container.frame(container.encode_header(forged), payload), tuple(imgs),
                        "tiny-rgb"))
    return out


# ---- round trips ---------------------------------------------------------------------------
@dataclass(frozen=True)
class RoundTripStats:
    images: int            # distinct random images
    archives: int
    round_trips: int       # image round trips verified (each image goes through every codec and mode)
    model_coded: int       # of those, how many went through the bits-back chain
    out_of_bits: int       # force_model archives whose chain ran out of initial bits (compress raises: no file)
    failures: tuple        # (archive, codec, mode, what) for every wrong or failed round trip
    seconds: float
    kinds: dict            # images per content kind


def round_trips(codecs: dict[str, Codec], n_images: int, seed: int = 0, max_side: int = 64, max_archive: int = 12,
                steps: int | None = None, modes=("force", "default"), seed_image: bool = True) -> RoundTripStats:
    """``n_images`` random images (random_image) in archives of 1..max_archive images; each
    archive is compressed by every codec in every mode ("force": force_model, the chain
    codes every image it can; "default": what the CLI writes) and decompressed; the output
    must equal the input bit for bit (shape and dtype included). With ``seed_image`` each
    archive starts with a 64x64 noise image of the channel count the codec's model cannot
    code, whose classical bytes give the chain its initial bits (else most small random
    images are spent as seeds); it is verified too but not counted."""
    import time

    from vdmcodec.coding.ans import EmptyMessageError
    from vdmcodec.coding.container import unpack

    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    done = archives = trips = coded = dry = 0
    failures, kinds = [], {}
    while done < n_images:
        k = min(int(rng.integers(1, max_archive + 1)), n_images - done)
        batch = [random_image(rng, max_side) for _ in range(k)]
        images = [im for im, _ in batch]
        for _, kind in batch:
            kinds[kind] = kinds.get(kind, 0) + 1
        for name, codec in codecs.items():
            extra = [rng.integers(0, 256, (64, 64, 3 if codec.channels == 1 else 1), dtype=np.uint8)] if seed_image else []
            for mode in modes:
                try:
                    blob = codec.compress(extra + images, steps=steps, force_model=mode == "force")
                except EmptyMessageError:
                    dry += 1
                    continue
                except Exception as e:  # noqa: BLE001 - recorded as a failure
                    failures.append((archives, name, mode, f"compress: {type(e).__name__}: {e}"))
                    continue
                try:
                    out = codec.decompress(blob)
                except Exception as e:  # noqa: BLE001
                    failures.append((archives, name, mode, f"decompress: {type(e).__name__}: {e}"))
                    continue
                if not same_images(out, extra + images):
                    failures.append((archives, name, mode, "decoded images differ"))
                    continue
                trips += k
                coded += sum(m in MODEL_METHODS for m in unpack(blob)[0].image_methods()[len(extra):])
        done += k
        archives += 1
    return RoundTripStats(done, archives, trips, coded, dry, tuple(failures), time.perf_counter() - t0, kinds)
