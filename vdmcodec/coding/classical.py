"""Classical lossless codecs for the container (via Pillow): PNG and WebP lossless.

Used for images the model cannot code (other channel count), for the images whose bytes
seed the bits-back chain, and wherever they are smaller.

Decoding checks the stream's size and mode against the header before it decodes a pixel, so
it allocates at most what the header claims (8 bytes per claimed pixel at most); it opens
PNG and WebP with their own Pillow plugins, not ``Image.open``, so Pillow's global
decompression-bomb limit (about 179 million pixels) neither refuses an image that vdmcodec
wrote nor is needed. WebP is used only where its format allows (sides up to 16383) and below
``WEBP_MAX_PIXELS``."""
from __future__ import annotations

import io

import numpy as np

from ..errors import FormatError

WEBP_MAX_SIDE = 16383        # the WebP format's limit
WEBP_MAX_PIXELS = 1 << 26    # Pillow's WebP reader refuses ~179M pixels; stay well below


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
    h, w = pixels.shape[:2]
    webp = _webp_available() and max(h, w) <= WEBP_MAX_SIDE and h * w <= WEBP_MAX_PIXELS
    for method in ("png", "webp") if webp else ("png",):
        data = encode(pixels, method)
        if best is None or len(data) < len(best[1]):
            if method == "webp" and not np.array_equal(decode(data, method, pixels.shape), pixels):
                continue  # never trust a lossy path
            best = (method, data)
    assert best is not None
    return best


def _plugin(method: str):
    if method == "png":
        from PIL.PngImagePlugin import PngImageFile

        return PngImageFile
    if method == "webp":
        from PIL.WebPImagePlugin import WebPImageFile

        return WebPImageFile
    raise FormatError(f"unknown classical method {method!r}")


def decode(data: bytes, method: str, shape: tuple[int, int, int]) -> np.ndarray:
    h, w, c = shape
    opener = _plugin(method)
    try:
        with opener(io.BytesIO(data)) as img:
            if img.size != (w, h):  # before decoding: never allocate more than the header claims
                raise FormatError(f"{method} image has size {img.size[::-1]}, header says {(h, w)}")
            img.load()
            arr = np.asarray(img.convert("RGB") if img.mode not in ("L", "RGB") else img)
    except FormatError:
        raise
    except Exception as e:
        raise FormatError(f"corrupted {method} image data ({type(e).__name__})") from None
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[:2] != (h, w):
        raise FormatError(f"{method} image has size {arr.shape[:2]}, header says {(h, w)}")
    if c == 1 and arr.shape[-1] == 3:
        arr = arr[..., :1]
    if arr.shape[-1] != c:
        raise FormatError(f"{method} image has {arr.shape[-1]} channels, header says {c}")
    return np.ascontiguousarray(arr)
