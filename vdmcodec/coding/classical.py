"""Classical lossless codecs for the container: PNG and WebP lossless (via Pillow), JPEG XL
lossless (libjxl via imagecodecs) and, for whole one-channel images of at most 4096 pixels,
``ctx``: the shipped static context model fitted on MNIST digits (context_model.py).

Used for images the model cannot code (other channel count), for the images whose bytes
seed the bits-back chain, and wherever they are smaller: ``encode_best`` keeps the smallest.
JPEG XL runs at effort 9 up to ``JXL_E9_MAX_PIXELS`` and at effort 7 beyond (e9 costs about
15 s per megapixel here; measured on CSet14 ppt3: e7 1.362, e9 1.347 bpd).

Decoding checks the stream's size and mode against the header before it decodes a pixel, so
it allocates at most what the header claims (8 bytes per claimed pixel at most); it opens
PNG and WebP with their own Pillow plugins, not ``Image.open``, so Pillow's global
decompression-bomb limit (about 179 million pixels) neither refuses an image that vdmcodec
wrote nor is needed; a JPEG XL stream's size is read from its codestream's SizeHeader
(``jxl_size``) before libjxl sees it. WebP is used only where its format allows (sides up to
16383) and below ``WEBP_MAX_PIXELS``."""
from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np

from ..errors import FormatError
from . import context_model

WEBP_MAX_SIDE = 16383        # the WebP format's limit
WEBP_MAX_PIXELS = 1 << 26    # Pillow's WebP reader refuses ~179M pixels; stay well below
JXL_E9_MAX_PIXELS = 1 << 22  # effort 9 up to ~4 megapixels, effort 7 beyond (time)
JXL_SIGNATURE = b"\xff\x0a"  # a bare JPEG XL codestream (what jpegxl_encode writes)
# SizeHeader's fixed aspect ratios xsize / ysize for ratio codes 1..7 (ISO/IEC 18181-1)
JXL_RATIOS = ((1, 1), (12, 10), (4, 3), (3, 2), (16, 9), (5, 4), (2, 1))
CLASSICAL_METHODS = ("png", "webp", "jxl")  # also the method codes of envelope.py's extra planes
CONTEXT = "ctx"  # whole images only (the container's method 6, version 10; not tiles or planes)


def _webp_available() -> bool:
    from PIL import features

    return bool(features.check("webp"))


def _jxl_available() -> bool:
    try:
        import imagecodecs
    except ImportError:
        return False
    return bool(getattr(getattr(imagecodecs, "JPEGXL", None), "available", False))


def encode(pixels: np.ndarray, method: str, effort: int | None = None) -> bytes:
    """``pixels``: uint8 (H, W, 1 | 3); ``method``: one of CLASSICAL_METHODS; ``effort``: libjxl's
    effort (1-9) for JPEG XL, WebP's method (0-6) for WebP, ignored for PNG; None: the
    largest (JPEG XL: 9, or 7 beyond ``JXL_E9_MAX_PIXELS``)."""
    if method == "jxl":
        return _encode_jxl(pixels, effort)
    if method == CONTEXT:
        return context_model.load_table().encode(pixels[..., 0])
    from PIL import Image

    img = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    buf = io.BytesIO()
    if method == "png":
        img.save(buf, format="PNG", optimize=True, compress_level=9)
    elif method == "webp":
        img.save(buf, format="WEBP", lossless=True, quality=100, method=6 if effort is None else effort, exact=True)
    else:
        raise ValueError(f"unknown classical method {method!r}; choose one of {', '.join(CLASSICAL_METHODS)}")
    return buf.getvalue()


def plane(pixels: np.ndarray) -> np.ndarray:
    """imagecodecs takes grayscale as [H, W] and colour as [H, W, 3]."""
    return np.ascontiguousarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)


def _encode_jxl(pixels: np.ndarray, effort: int | None = None) -> bytes:
    import imagecodecs

    h, w = pixels.shape[:2]
    effort = min(9 if effort is None else effort, 9 if h * w <= JXL_E9_MAX_PIXELS else 7)
    return bytes(imagecodecs.jpegxl_encode(plane(pixels), lossless=True, effort=effort))


class _Bits:
    """LSB-first bit reader over bytes (the JPEG XL codestream's order)."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def read(self, n: int) -> int:
        if self.pos + n > 8 * len(self.data):
            raise FormatError("truncated jxl image header")
        v = 0
        for k in range(n):
            byte = self.data[(self.pos + k) >> 3]
            v |= ((byte >> ((self.pos + k) & 7)) & 1) << k
        self.pos += n
        return v

    def size_u32(self) -> int:
        """SizeHeader's U32(BitsOffset(9, 1), BitsOffset(13, 1), BitsOffset(18, 1), BitsOffset(30, 1))."""
        return self.read((9, 13, 18, 30)[self.read(2)]) + 1


def jxl_size(data: bytes) -> tuple[int, int]:
    """(height, width) from a bare JPEG XL codestream's SizeHeader, without decoding."""
    if data[:2] != JXL_SIGNATURE:
        raise FormatError("jxl image data lacks the codestream signature")
    r = _Bits(data[2:])
    small = r.read(1)
    ysize = (r.read(5) + 1) * 8 if small else r.size_u32()
    ratio = r.read(3)
    if ratio:
        num, den = JXL_RATIOS[ratio - 1]
        xsize = ysize * num // den
    else:
        xsize = (r.read(5) + 1) * 8 if small else r.size_u32()
    return ysize, xsize


@dataclass(frozen=True)
class ClassicalEffort:
    """How hard ``encode_best`` tries. JPEG XL runs at ``jxl`` (libjxl's effort). WebP first
    runs a quick stream at method ``webp_probe``, and at ``webp`` only where that stream, less
    what the slower method saves at most (``webp_gain_bound``), could still be the smallest.
    PNG is tried on images up to ``png_max_pixels``, where it costs little (and where it can
    win: tiny images), and wherever neither other codec is available."""

    jxl: int = 9
    webp: int = 6
    webp_probe: int = 2
    png_max_pixels: int = 1 << 16

    def __post_init__(self):
        if not (1 <= self.jxl <= 9 and 0 <= self.webp <= 6 and 0 <= self.webp_probe <= 6 and self.png_max_pixels >= 0):
            raise ValueError(f"classical effort out of range: {self}")


# The least ratio of WebP's stream at a method over its stream at any lower method (probe),
# measured on the 19 CSet14 / CSet5 photos as RGB (2026-12-07), rounded down: method 3 over 2: 0.966
# (ppt3); 4 over 2: 0.953 (lenna); 5 over 2: 0.921 (lenna); 6 over 2: 0.850 (bridge as RGB),
# 6 over 4: 0.861 (bridge as RGB). Times on a 768 x 512 photo: method 2 about 0.15 s, 4 about
# 0.3 s, 5 about 0.5 s, 6 3-8 s (JPEG XL at effort 9: 2.3 s).
WEBP_GAIN_BOUND = {0: 1.0, 1: 0.96, 2: 0.96, 3: 0.96, 4: 0.95, 5: 0.92, 6: 0.85}


def webp_gain_bound(method: int) -> float:
    """The least ratio measured between WebP's stream at ``method`` and at a lower method."""
    return WEBP_GAIN_BOUND[method]


PARALLEL_MIN_PIXELS = 1 << 16  # from this size on, JPEG XL and WebP's first stream run side by side
WEBP_AHEAD_MAX_METHOD = 4  # WebP methods quick enough to encode before they are known to be needed (0.3 s at 768x512)


def context_eligible(pixels: np.ndarray) -> bool:
    """Whether ``ctx`` can code these pixels: one channel, 1..context_model.MAX_PIXELS pixels."""
    return pixels.shape[-1] == 1 and pixels.shape[0] * pixels.shape[1] <= context_model.MAX_PIXELS


def encode_best(pixels: np.ndarray, effort: ClassicalEffort = ClassicalEffort(),
                context: bool = False) -> tuple[str, bytes]:
    """The smallest exact stream of the classical candidates that ``effort`` runs, and ``ctx``
    where ``context`` is set and the image is one it codes (whole images only). On images
    of at least PARALLEL_MIN_PIXELS pixels JPEG XL and WebP are encoded at the same time on two
    threads (both libraries release the GIL), WebP's second stream too where its method is at
    most WEBP_AHEAD_MAX_METHOD (then also where it is not needed); the streams and the choice
    are those of running them one after the other."""
    h, w = pixels.shape[:2]
    best: tuple[str, bytes] | None = None

    def offer(method: str, data: bytes) -> None:
        nonlocal best
        if best is None or len(data) < len(best[1]):
            if method != "png" and not np.array_equal(decode(data, method, pixels.shape), pixels):
                return  # never trust a lossy path
            best = (method, data)

    jxl = _jxl_available()
    webp = _webp_available() and max(h, w) <= WEBP_MAX_SIDE and h * w <= WEBP_MAX_PIXELS
    probe_method = min(effort.webp_probe, effort.webp)
    parallel = jxl and webp and h * w >= PARALLEL_MIN_PIXELS
    # side by side, WebP's second stream is encoded before JPEG XL's is known, where it is quick
    ahead = parallel and probe_method < effort.webp <= WEBP_AHEAD_MAX_METHOD

    def webp_streams() -> tuple[bytes, bytes | None]:
        return encode(pixels, "webp", probe_method), (encode(pixels, "webp", effort.webp) if ahead else None)

    with ThreadPoolExecutor(2) if parallel else nullcontext() as pool:
        jxl_job = (pool.submit(encode, pixels, "jxl", effort.jxl) if pool else encode(pixels, "jxl", effort.jxl)) if jxl else None
        webp_job = (pool.submit(webp_streams) if pool else webp_streams()) if webp else None
        if jxl:
            offer("jxl", jxl_job.result() if pool else jxl_job)
        if webp:
            probe, slow = webp_job.result() if pool else webp_job
            offer("webp", probe)
            if effort.webp > probe_method and (best is None or webp_gain_bound(effort.webp) * len(probe) < len(best[1])):
                offer("webp", encode(pixels, "webp", effort.webp) if slow is None else slow)
    if h * w <= effort.png_max_pixels or best is None:
        offer("png", encode(pixels, "png"))
    if context and context_eligible(pixels):
        data = encode(pixels, CONTEXT)
        if data:  # b"": a blank image the container cannot store as ctx (context_model.encode)
            offer(CONTEXT, data)
    if best is None:  # pragma: no cover (PNG always decodes)
        raise FormatError("no classical codec could encode the image")
    return best


def _plugin(method: str):
    if method == "png":
        from PIL.PngImagePlugin import PngImageFile

        return PngImageFile
    if method == "webp":
        from PIL.WebPImagePlugin import WebPImageFile

        return WebPImageFile
    raise FormatError(f"unknown classical method {method!r}")


def _decode_jxl(data: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    if not _jxl_available():
        raise FormatError("this file holds JPEG XL data, and imagecodecs with JPEG XL is not installed "
                          "(pip install imagecodecs)")
    import imagecodecs

    h, w, c = shape
    size = jxl_size(data)
    if size != (h, w):  # before decoding: never allocate more than the header claims
        raise FormatError(f"jxl image has size {size}, header says {(h, w)}")
    try:
        arr = np.asarray(imagecodecs.jpegxl_decode(data))
    except Exception as e:
        raise FormatError(f"corrupted jxl image data ({type(e).__name__})") from None
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.dtype != np.uint8 or arr.shape != (h, w, c):
        raise FormatError(f"jxl image decodes to {arr.dtype} {arr.shape}, header says uint8 {(h, w, c)}")
    return np.ascontiguousarray(arr)


def decode(data: bytes, method: str, shape: tuple[int, int, int]) -> np.ndarray:
    if method == "jxl":
        return _decode_jxl(data, shape)
    if method == CONTEXT:
        if shape[2] != 1:
            raise FormatError(f"a ctx image has one channel, header says {shape[2]}")
        return context_model.load_table().decode(data, shape[:2])[..., None]
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
