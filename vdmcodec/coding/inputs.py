"""What compress accepts: one image or many, as uint8 numpy arrays or PIL images, checked
against the format's limits and brought to uint8 [H, W, C]."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import VdmcodecError
from .container import MAX_IMAGES, MAX_SIDE, MAX_TOTAL_SUBPIXELS


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


def image_entries(images, names: Sequence[str] | None) -> list[ImageEntry]:
    """The images (one, or an iterable) with their names (default: 00000.png, ...)."""
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
    if names is not None:
        bad = next((n for n in names if not isinstance(n, str) or not n or "\0" in n), None)
        if bad is not None:
            raise VdmcodecError(f"image name {bad!r}: names are non-empty strings without NUL characters "
                                "(each is restored as a file)")
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
