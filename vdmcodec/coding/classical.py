"""Classical lossless codecs for the container (via Pillow): PNG and WebP lossless.

Used for images the model cannot code (other channel count), for the images whose bytes
seed the bits-back chain, and wherever they are smaller. Decoding checks the shape."""
from __future__ import annotations

import io

import numpy as np

from ..errors import FormatError


def _webp_available() -> bool:
    from PIL import features

    return bool(features.check("webp"))


def encode(pixels: np.ndarray, method: str) -> bytes:
    from PIL import Image

    img = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    buf = io.BytesIO()
    if method == "png":
        img.save(buf, format="PNG", optimize=True, compress_level=9)
    elif method == "webp":
        img.save(buf, format="WEBP", lossless=True, quality=100, method=6, exact=True)
    else:
        raise ValueError(f"unknown classical method {method!r}; choose png or webp")
    return buf.getvalue()


def encode_best(pixels: np.ndarray) -> tuple[str, bytes]:
    """The smallest of the available classical encodings that decodes exactly."""
    best: tuple[str, bytes] | None = None
    for method in ("png", "webp") if _webp_available() else ("png",):
        data = encode(pixels, method)
        if best is None or len(data) < len(best[1]):
            if method == "webp" and not np.array_equal(decode(data, method, pixels.shape), pixels):
                continue  # never trust a lossy path
            best = (method, data)
    assert best is not None
    return best


def decode(data: bytes, method: str, shape: tuple[int, int, int]) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            arr = np.asarray(img.convert("RGB") if img.mode not in ("L", "RGB") else img)
    except Exception as e:
        raise FormatError(f"corrupted {method} image data ({type(e).__name__})") from None
    h, w, c = shape
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[:2] != (h, w):
        raise FormatError(f"{method} image has size {arr.shape[:2]}, header says {(h, w)}")
    if c == 1 and arr.shape[-1] == 3:
        arr = arr[..., :1]
    if arr.shape[-1] != c:
        raise FormatError(f"{method} image has {arr.shape[-1]} channels, header says {c}")
    return np.ascontiguousarray(arr)
