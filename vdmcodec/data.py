"""Readers for 8-bit image data: MNIST IDX, CIFAR-10 python batches, .npy/.npz arrays, and
folders of image files (via Pillow). Everything comes out as uint8 arrays [H, W, C].

Pillow modes are converted only where that is lossless (1 -> L, P -> RGB/L, LA/RGBA with
an all-opaque alpha -> L/RGB); anything else (16-bit, 32-bit, float, CMYK, YCbCr, real
alpha) is refused with a message naming the file.
"""
from __future__ import annotations

import gzip
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError

IMAGE_SUFFIXES = {".png", ".apng", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm", ".webp", ".gif", ".jpg", ".jpeg",
                  ".jpe", ".jfif", ".tga"}
MAX_PIXELS = 1 << 28  # Pillow's bomb guard is relaxed to this (256 Mpixel)


@dataclass(frozen=True)
class ImageItem:
    """One image: uint8 pixels [H, W, C] (C = 1 or 3) and a relative name for output."""

    pixels: np.ndarray
    name: str


def _open(path: Path):
    path = Path(path)
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def is_idx(path: Path) -> bool:
    """An MNIST IDX file by its name (a file with an image suffix is an image, whatever its name)."""
    name = path.name.lower()
    return Path(name).suffix not in IMAGE_SUFFIXES and ("idx" in name or name.endswith("-ubyte"))


def read_idx(path: Path) -> np.ndarray:
    """MNIST IDX (ubyte, 3-d) -> uint8 [N, H, W, 1]; .gz or raw."""
    path = Path(path)
    try:
        with _open(path) as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read IDX file ({e})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic)")
    dtype, ndim = data[2], data[3]
    if dtype != 0x08:
        raise DataError(f"{path}: IDX element type 0x{dtype:02x} is not unsigned byte")
    if ndim not in (3, 4) or len(data) < 4 + 4 * ndim:
        raise DataError(f"{path}: IDX file has {ndim} dimensions; images need 3 (N, H, W)")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    n = int(np.prod(shape, dtype=np.int64))
    body = data[4 + 4 * ndim :]
    if len(body) != n:
        raise DataError(f"{path}: IDX header promises {n} bytes, file holds {len(body)}")
    arr = np.frombuffer(body, dtype=np.uint8).reshape(shape)
    return arr[..., None] if ndim == 3 else arr


def read_cifar(path: Path) -> np.ndarray:
    """CIFAR-10 python batch (pickle with b'data' [N, 3072]) -> uint8 [N, 32, 32, 3]."""
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        data = np.asarray(d[b"data"] if b"data" in d else d["data"], dtype=np.uint8)
    except Exception as e:  # pickle raises many types on garbage
        raise DataError(f"{path}: not a CIFAR-10 python batch ({type(e).__name__})") from None
    if data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: CIFAR batch data has shape {data.shape}, expected (N, 3072)")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()


def read_array(path: Path) -> np.ndarray:
    """.npy / .npz (first array) uint8 [N, H, W] or [N, H, W, C] -> [N, H, W, C]."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            keys = list(loaded.keys())
            if not keys:
                raise DataError(f"{path}: empty .npz archive")
            arr = loaded[keys[0]]
        else:
            arr = loaded
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path}: cannot read as a numpy array ({type(e).__name__}: {e})") from None
    if arr.dtype != np.uint8:
        raise DataError(f"{path}: array dtype is {arr.dtype}; only uint8 images are supported")
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        raise DataError(f"{path}: array shape {arr.shape} is not (N, H, W) or (N, H, W, 1|3)")
    return arr


def pil_to_array(img, name: str) -> np.ndarray:
    """A Pillow image -> uint8 [H, W, C], converting only where lossless."""
    mode = img.mode
    if mode == "1":
        img = img.convert("L")
    elif mode == "P":
        if "transparency" in img.info:
            img = img.convert("RGBA")
            mode = "RGBA"
        else:
            img = img.convert("RGB")
            arr = np.asarray(img)
            if (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all():
                return arr[..., :1].copy()
            return arr.copy()
    if mode in ("LA", "RGBA", "PA"):
        arr = np.asarray(img)
        if not (arr[..., -1] == 255).all():
            raise DataError(f"{name}: image has transparency (mode {img.mode}); alpha is not supported")
        arr = arr[..., :-1]
        return (arr if arr.ndim == 3 else arr[..., None]).copy()
    if img.mode == "L":
        return np.asarray(img)[..., None].copy()
    if img.mode == "RGB":
        return np.asarray(img).copy()
    raise DataError(f"{name}: unsupported image mode {img.mode!r} (only 8-bit grayscale or RGB convert losslessly)")


def read_image(path: Path) -> np.ndarray:
    try:
        with open_image(path, str(path)) as img:
            img.load()
            return pil_to_array(img, str(path))
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path}: not a readable image ({type(e).__name__})") from None


def _is_dataset_file(path: Path) -> bool:
    s = path.name.lower()
    if Path(s).suffix in IMAGE_SUFFIXES:  # photo_idx.png, data_batch_1.png: images
        return False
    return is_idx(path) or s.endswith((".npy", ".npz")) or s.startswith("data_batch") or s == "test_batch"


def open_image(source, name: str):
    """``Image.open`` with the pixel limit enforced: Pillow raises only above twice its
    MAX_IMAGE_PIXELS and warns (on stderr) between once and twice; here both refuse, in
    one line naming ``name``."""
    import warnings

    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return Image.open(source)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise DataError(f"{name}: image larger than {MAX_PIXELS} pixels") from None


def read_dataset_file(path: Path) -> np.ndarray:
    s = path.name.lower()
    if is_idx(path):
        return read_idx(path)
    if s.endswith((".npy", ".npz")):
        return read_array(path)
    return read_cifar(path)


def iter_inputs(paths: list[Path]) -> list[tuple[Path, str]]:
    """Expand inputs into (file, relative name) pairs; folders recursively, sorted."""
    out: list[tuple[Path, str]] = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise DataError(f"{p}: no such file or folder")
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise DataError(f"{p}: folder holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
            out += [(f, str(f.relative_to(p))) for f in files]
        else:
            out.append((p, p.name))
    return out


def load_items(paths: list[Path] | Path, limit: int | None = None) -> list[ImageItem]:
    """Images from files, folders and dataset files, in input order. Dataset files yield
    items named 00000.png, 00001.png, ... (prefixed by the file stem when several inputs)."""
    if isinstance(paths, (str, Path)):
        paths = [Path(paths)]
    items: list[ImageItem] = []
    multi = len(paths) > 1
    for f, rel in iter_inputs(paths):
        if limit is not None and len(items) >= limit:
            break
        if _is_dataset_file(f):
            arr = read_dataset_file(f)
            stem = f.name.split(".")[0]
            for k in range(arr.shape[0] if limit is None else min(arr.shape[0], limit - len(items))):
                name = f"{stem}/{k:05d}.png" if multi else f"{k:05d}.png"
                items.append(ImageItem(arr[k], name))
        else:
            name = str(Path(rel).with_suffix(".png"))
            items.append(ImageItem(read_image(f), name))
    if not items:
        raise DataError(f"no images found in {', '.join(map(str, paths))}")
    return items


def load_array(path: Path, start: int = 0, stop: int | None = None) -> np.ndarray:
    """A dataset of equal-size images as uint8 [N, H, W, C] (slice [start:stop]); folders
    must then hold images of one size and channel count."""
    path = Path(path)
    if path.is_file() and _is_dataset_file(path):
        arr = read_dataset_file(path)
    else:
        items = load_items([path])
        shapes = {it.pixels.shape for it in items}
        if len(shapes) != 1:
            raise DataError(f"{path}: images differ in size {sorted(shapes)[:3]}...; use a patch size")
        arr = np.stack([it.pixels for it in items])
    arr = arr[start:stop]
    if arr.shape[0] == 0:
        raise DataError(f"{path}: selection [{start}:{stop}] holds no images")
    return arr


class PatchSampler:
    """Random training batches: whole images from an equal-size array, or random crops of
    ``patch`` x ``patch`` from images of any size (images smaller than the patch are
    padded by reflection only for training). Crops from a list of images of different sizes
    pick the image in proportion to its area, so that every pixel is equally likely to be
    seen (a 1024x768 photo is not under-sampled next to a 481x321 one). With ``multiple``
    > 1 a crop's top-left corner is a multiple of it: crops keep the images' 8x8 JPEG block
    grid in the same phase as the codec's tiles (whose corners are multiples of 32)."""

    def __init__(self, images: list[np.ndarray] | np.ndarray, patch: int | None, seed: int, multiple: int = 1):
        if multiple < 1:
            raise ValueError(f"crop multiple must be >= 1, got {multiple}")
        self.images = images
        self.patch = patch
        self.multiple = multiple
        self.rng = np.random.default_rng(seed)
        self.weights = None
        if patch is not None and not isinstance(images, np.ndarray):
            area = np.array([im.shape[0] * im.shape[1] for im in images], dtype=np.float64)
            self.weights = area / area.sum()

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state

    def batch(self, n: int) -> np.ndarray:
        if self.weights is None:
            idx = self.rng.integers(0, len(self.images), size=n)
        else:
            idx = self.rng.choice(len(self.images), size=n, p=self.weights)
        if self.patch is None:
            return np.stack([self.images[i] for i in idx])
        out = []
        p = self.patch
        for i in idx:
            im = self.images[i]
            h, w = im.shape[:2]
            if h < p or w < p:
                im = np.pad(im, ((0, max(0, p - h)), (0, max(0, p - w)), (0, 0)), mode="reflect")
                h, w = im.shape[:2]
            m = self.multiple
            y = m * self.rng.integers(0, (h - p) // m + 1)
            x = m * self.rng.integers(0, (w - p) // m + 1)
            out.append(im[y : y + p, x : x + p])
        return np.stack(out)


def to_tensor(batch: np.ndarray):
    """uint8 [B, H, W, C] -> uint8 torch [B, C, H, W] (contiguous)."""
    import torch

    return torch.from_numpy(np.array(batch.transpose(0, 3, 1, 2), copy=True, order="C"))
