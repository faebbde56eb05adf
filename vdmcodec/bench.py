"""Measure vdmcodec against classical lossless codecs on the same images, in one run.

Used by ``vdmcodec bench`` and ``benchmarks/mnist.py``. Every ``measure_*`` function takes a
list of uint8 [H, W, C] arrays and returns a JSON-ready dict (a "row"). Figures are real
file sizes, decoded and compared with the original (``roundtrip``), except the ELBO rows,
which are the model's estimate (vdmcodec.likelihood) and name themselves so.

bpd = 8 * bytes / subpixels, pooled over all images (the archive-level figure). Image codecs
code each image as its own file (so they pay their header once per image); lzma and bzip2
code the raw pixel bytes of all images concatenated (no shapes stored).
"""
from __future__ import annotations

import bz2
import lzma
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

from .coding import classical
from .coding.ans import EmptyMessageError
from .coding.codec import Codec
from .coding.container import MODEL_METHODS, TILED_METHODS, unpack
from .data import ImageItem
from .errors import VdmcodecError


@dataclass(frozen=True)
class ImageCodec:
    """One classical per-image codec: ``encode(pixels) -> bytes`` and ``decode(bytes,
    shape) -> pixels`` on uint8 [H, W, C]."""

    name: str
    settings: str
    encode: Callable[[np.ndarray], bytes]
    decode: Callable[[bytes, tuple], np.ndarray]


@dataclass(frozen=True)
class StreamCodec:
    """A general-purpose compressor over the concatenated raw bytes of all images."""

    name: str
    settings: str
    compress: Callable[[bytes], bytes]
    decompress: Callable[[bytes], bytes]


def subpixels(images: Sequence[np.ndarray]) -> int:
    return int(sum(im.size for im in images))


def _hwc(arr, shape: tuple) -> np.ndarray:
    arr = np.asarray(arr)
    return arr.reshape(shape) if arr.size == math.prod(shape) else arr


def image_codecs() -> tuple[list[ImageCodec], dict[str, str]]:
    """The available per-image codecs, and {name: reason} for those that are not."""
    codecs = [ImageCodec("PNG", "Pillow, optimize, zlib level 9", lambda p: classical.encode(p, "png"),
                         lambda b, s: classical.decode(b, "png", s))]
    missing: dict[str, str] = {}
    from PIL import features

    if features.check("webp"):
        codecs.append(ImageCodec("WebP lossless", "Pillow, method 6, quality 100, exact",
                                 lambda p: classical.encode(p, "webp"), lambda b, s: classical.decode(b, "webp", s)))
    else:
        missing["WebP lossless"] = "Pillow was built without WebP"
    names = {"JPEG-LS": "JPEGLS", "JPEG 2000": "JPEG2K", "JPEG XL": "JPEGXL"}
    try:
        import imagecodecs as ic
    except ImportError:
        for name in names:
            missing[name] = "imagecodecs is not installed (pip install imagecodecs)"
        return codecs, missing
    available = {name: bool(getattr(getattr(ic, attr, None), "available", False)) for name, attr in names.items()}
    if available["JPEG-LS"]:
        codecs.append(ImageCodec("JPEG-LS", f"imagecodecs {ic.__version__} (CharLS), lossless (near=0)",
                                 lambda p: bytes(ic.jpegls_encode(classical.plane(p))),
                                 lambda b, s: _hwc(ic.jpegls_decode(b), s)))
    if available["JPEG 2000"]:
        codecs.append(ImageCodec("JPEG 2000", f"imagecodecs {ic.__version__} (OpenJPEG), reversible 5/3, .j2k codestream",
                                 lambda p: bytes(ic.jpeg2k_encode(classical.plane(p), level=0, reversible=True, codecformat="J2K")),
                                 lambda b, s: _hwc(ic.jpeg2k_decode(b), s)))
    if available["JPEG XL"]:
        codecs.append(ImageCodec("JPEG XL", f"imagecodecs {ic.__version__} (libjxl), lossless, effort 9",
                                 lambda p: bytes(ic.jpegxl_encode(classical.plane(p), lossless=True, effort=9)),
                                 lambda b, s: _hwc(ic.jpegxl_decode(b), s)))
    for name, ok in available.items():
        if not ok:
            missing[name] = f"imagecodecs {ic.__version__} was built without it"
    return codecs, missing


STREAM_CODECS = [
    StreamCodec("lzma", "xz, preset 9 extreme", lambda d: lzma.compress(d, preset=9 | lzma.PRESET_EXTREME), lzma.decompress),
    StreamCodec("bzip2", "level 9", lambda d: bz2.compress(d, 9), bz2.decompress),
]


def _iter(seq: Sequence, progress: bool, desc: str) -> Iterable:
    if not progress:
        return seq
    from tqdm import tqdm

    return tqdm(seq, desc=desc, unit="img", dynamic_ncols=True, leave=False)


def _row(method: str, settings: str, nbytes: int | None, dims: int, **extra) -> dict:
    row = {"method": method, "settings": settings, "bytes": nbytes,
           "bpd": None if nbytes is None else 8 * nbytes / dims}
    row.update(extra)
    return row


# ---- classical ---------------------------------------------------------------------------
def measure_image_codec(codec: ImageCodec, images: Sequence[np.ndarray], progress: bool = False) -> dict:
    """Each image its own file: total bytes, encode / decode seconds, exact round trip."""
    sizes, enc_s, dec_s, ok = [], 0.0, 0.0, True
    for im in _iter(images, progress, codec.name):
        t0 = time.perf_counter()
        data = codec.encode(im)
        t1 = time.perf_counter()
        back = codec.decode(data, im.shape)
        dec_s += time.perf_counter() - t1
        enc_s += t1 - t0
        ok &= back.shape == im.shape and bool(np.array_equal(back, im))
        sizes.append(len(data))
    return _row(codec.name, codec.settings, sum(sizes), subpixels(images), kind="classical",
                encode_s=enc_s, decode_s=dec_s, roundtrip=ok, image_bytes=sizes)


def measure_stream_codec(codec: StreamCodec, images: Sequence[np.ndarray]) -> dict:
    raw = b"".join(np.ascontiguousarray(im).tobytes() for im in images)
    t0 = time.perf_counter()
    data = codec.compress(raw)
    t1 = time.perf_counter()
    ok = codec.decompress(data) == raw
    return _row(codec.name, codec.settings + ", all raw bytes concatenated", len(data), subpixels(images),
                kind="classical", encode_s=t1 - t0, decode_s=time.perf_counter() - t1, roundtrip=ok,
                note="pixels only (shapes not stored)")


def measure_classical(images: Sequence[np.ndarray], progress: bool = False) -> tuple[list[dict], dict[str, str]]:
    """Every available classical codec on these images: (rows, {skipped codec: reason})."""
    codecs, missing = image_codecs()
    rows = [measure_image_codec(c, images, progress) for c in codecs]
    rows += [measure_stream_codec(c, images) for c in STREAM_CODECS]
    return rows, missing


# ---- vdmcodec ----------------------------------------------------------------------------
@contextmanager
def network_timer(codec: Codec, steps: int, grid_bits: int | None = None):
    """Time the network calls (``DiffusionChain.p_mean_std``) of ``codec``'s chain for T steps
    on ``grid_bits`` (default the codec's; ``Codec.grid_bits_for`` says which one compress
    uses, a file's header which one it was coded with) (``DiffusionChain.timed``: nothing is
    patched). Yields a NetworkClock whose ``seconds`` and ``calls`` grow while the block runs."""
    with codec.chain(steps, codec.grid_bits if grid_bits is None else grid_bits).timed() as clock:
        yield clock


def _same(decoded: Sequence[np.ndarray], images: Sequence[np.ndarray]) -> bool:
    if len(decoded) != len(images):
        return False
    return all(np.array_equal(d.reshape(im.shape), im) for d, im in zip(decoded, images))


def measure_archive(codec: Codec, images: Sequence[np.ndarray], steps: int | None = None,
                    progress: bool = False, verify: bool = True) -> dict:
    """All images in one .vdmc, model-coded (``force_model``), plus the all-classical archive
    that ``compress`` falls back to when it is smaller. Times compress and decompress and
    the network's share of each; ``verify`` decodes and compares."""
    T = int(steps or codec.steps)
    dims = subpixels(images)
    out = {"steps": T, "images": len(images)}
    try:
        with network_timer(codec, T, codec.grid_bits_for(images)) as net_enc:
            t0 = time.perf_counter()
            blob = codec.compress(images, steps=T, force_model=True, progress=progress)
            enc_s = time.perf_counter() - t0
    except EmptyMessageError:
        enc_s = None
    # after the model-coded run, so that its time is not a cold start's
    t0 = time.perf_counter()
    fallback = codec.compress(images, steps=T, classical_only=True)
    fallback_s = time.perf_counter() - t0
    if enc_s is None:
        row = _row("vdmcodec archive (model-coded)", f"T={T}", None, dims, kind="vdmcodec", roundtrip=None,
                   note="the chain ran out of initial bits (estimate too low); compress falls back to classical")
        out.update(model=row, fallback=_fallback_row(fallback, fallback_s, dims, T))
        return out
    header, payload = unpack(blob)
    methods = header.image_methods()
    n_model = sum(m in MODEL_METHODS for m in methods)
    model_dims = sum(im.size for im, m in zip(images, methods) if m in MODEL_METHODS)
    row = _row("vdmcodec archive (model-coded)", f"T={T}, grid_bits={codec.grid_bits}, {codec.arithmetic}", len(blob), dims, kind="vdmcodec",
               encode_s=enc_s, container_bytes=len(blob) - len(payload), model_images=n_model,
               classical_images=len(methods) - n_model, network_encode_s=net_enc.seconds,
               network_calls=net_enc.calls)
    if n_model:
        # the payload is the seeds' classical bytes (the initial message) plus what the chain
        # added: that net growth over the model-coded subpixels is the chain's own rate
        seeds = sum(header.classical_sizes) + header.init_pad
        # tiled images: their classical segments are seeds too (bytes on the stack)
        seed_bytes, seed_dims = tiled_seeds(header)
        seeds += seed_bytes
        row["chain_bpd"] = 8 * (len(payload) - seeds) / max(1, model_dims - seed_dims)
        row["note"] = (f"{n_model} images model-coded, {len(methods) - n_model} classical (their bytes are the initial bits); "
                       f"container {row['container_bytes']} bytes; the chain alone: {row['chain_bpd']:.4f} bpd "
                       f"on the model-coded images")
    else:
        row["note"] = "no image could be model-coded (channel count or too few initial bits): all classical"
    if verify:
        with network_timer(codec, T, header.grid_bits or None) as net_dec:  # 0: no model-coded image
            t0 = time.perf_counter()
            decoded = codec.decompress(blob, progress=progress)
            row["decode_s"] = time.perf_counter() - t0
        row["network_decode_s"] = net_dec.seconds
        row["roundtrip"] = _same(decoded, images)
    else:
        row["roundtrip"] = None
    out.update(model=row, fallback=_fallback_row(fallback, fallback_s, dims, T, codec if verify else None, images))
    return out


def tiled_seeds(header) -> tuple[int, int]:
    """Bytes and subpixels (of the images as stored: a tiled-gray image counts one channel)
    of the classical segments of a file's tiled images."""
    from .coding.tilegrid import rects

    shapes = [s for s, m in zip(header.image_shapes(), header.image_methods()) if m in TILED_METHODS]
    nbytes = dims = 0
    for layout, (h, w, c) in zip(header.tiled, shapes):
        for r in rects(layout, h, w, header.tile):
            if r.method != "vdm":
                nbytes += r.nbytes
                dims += r.subpixels(c)
    return nbytes, dims


def _fallback_row(blob: bytes, seconds: float, dims: int, T: int, codec: Codec | None = None, images=None) -> dict:
    header, payload = unpack(blob)
    row = _row("vdmcodec archive (all classical)", "best of PNG / WebP / JPEG XL / ctx per image", len(blob), dims, kind="vdmcodec",
               encode_s=seconds, container_bytes=len(blob) - len(payload), roundtrip=None,
               note=f"what compress writes when smaller than the model-coded archive; container {len(blob) - len(payload)} bytes")
    if codec is not None:
        t0 = time.perf_counter()
        row["roundtrip"] = _same(codec.decompress(blob), images)
        row["decode_s"] = time.perf_counter() - t0
    return row


def measure_single_files(codec: Codec, images: Sequence[np.ndarray], steps: int | None = None, progress: bool = False) -> dict:
    """Each image compressed alone into its own .vdmc (the fixed cost of a small file); which
    method each file used comes from its header."""
    T = int(steps or codec.steps)
    sizes, methods, enc_s, dec_s, ok = [], [], 0.0, 0.0, True
    for im in _iter(images, progress, "single files"):
        t0 = time.perf_counter()
        blob = codec.compress([im], steps=T)
        t1 = time.perf_counter()
        back = codec.decompress(blob)
        dec_s += time.perf_counter() - t1
        enc_s += t1 - t0
        ok &= _same(back, [im])
        sizes.append(len(blob))
        methods.append(unpack(blob)[0].image_methods()[0])
    n_classical = sum(m not in MODEL_METHODS for m in methods)
    per_image = [8 * b / im.size for b, im in zip(sizes, images)]
    return _row("vdmcodec single-image files", f"T={T}, one .vdmc per image", sum(sizes), subpixels(images),
                kind="vdmcodec", bpd_mean=float(np.mean(per_image)), encode_s=enc_s, decode_s=dec_s, roundtrip=ok,
                classical_images=n_classical, image_bytes=sizes, image_methods=methods,
                note=f"{n_classical} of {len(images)} files went classical (PNG / WebP / JPEG XL / ctx)")


def measure_elbo(codec: Codec, images: Sequence[np.ndarray], steps: int | None = None, seed: int = 0,
                 progress: bool = False) -> dict:
    """The model's negative ELBO (continuous time and T steps) on the images it can code,
    mean and standard error over images (vdmcodec.evaluate)."""
    from .evaluate import evaluate

    T = int(steps or codec.steps)
    items = [ImageItem(im, f"{k:05d}.png") for k, im in enumerate(images) if im.shape[-1] == codec.channels]
    if not items:
        return {"images": 0, "steps": T, "note": f"no {codec.channels}-channel images: the model codes none"}
    t0 = time.perf_counter()
    res = evaluate(codec.model, items, steps=T, seed=seed, progress=progress)
    res["seconds"] = time.perf_counter() - t0
    res["seed"] = seed
    return res


def compare(codec: Codec, images: Sequence[np.ndarray], steps: int | None = None, seed: int = 0,
            progress: bool = False, single_files: bool = True) -> dict:
    """The whole comparison on one list of images: vdmcodec (archive, fallback, single
    files), the model's ELBO, and every available classical codec."""
    images = [np.ascontiguousarray(im) for im in images]
    if not images:
        raise VdmcodecError("no images to measure")
    for k, im in enumerate(images):
        if im.dtype != np.uint8 or im.ndim != 3 or im.shape[-1] not in (1, 3):
            raise VdmcodecError(f"image {k}: expected uint8 [H, W, 1|3], got {im.dtype} {im.shape}")
    T = int(steps or codec.steps)
    archive = measure_archive(codec, images, T, progress=progress)
    rows = [archive["model"], archive["fallback"]]
    if single_files:
        rows.append(measure_single_files(codec, images, T, progress=progress))
    elbo = measure_elbo(codec, images, T, seed=seed, progress=progress)
    classical_rows, missing = measure_classical(images, progress=progress)
    rows += classical_rows
    shapes = sorted({im.shape for im in images})
    return {"model": codec.info["name"], "model_sha256": codec.info["sha256"], "steps": T,
            "images": len(images), "subpixels": subpixels(images),
            "shapes": [list(s) for s in shapes[:10]], "distinct_shapes": len(shapes),
            "rows": rows, "elbo": elbo, "skipped": missing,
            "roundtrip_all": all(r.get("roundtrip") is not False for r in rows)}


# ---- report ------------------------------------------------------------------------------
def _fmt(v, spec: str = ".4f", none: str = "-") -> str:
    return none if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _rate(n: int, seconds) -> str:
    return "-" if not seconds else f"{n / seconds:.1f}"


def format_table(result: dict) -> list[str]:
    """Markdown lines: one row per measured method, ELBO rows in their place."""
    n = result["images"]
    lines = [f"{n} images, {result['subpixels']:,} subpixels; model {result['model']} "
             f"(weights {result['model_sha256'][:12]}), T = {result['steps']}", "",
             "| method | settings | bytes | bpd | encode img/s | decode img/s | round-trip | note |",
             "|---|---|---:|---:|---:|---:|---|---|"]

    def line(r):
        rt = {True: "yes", False: "**FAILED**", None: "-"}[r.get("roundtrip")]
        lines.append(f"| {r['method']} | {r['settings']} | {_fmt(r['bytes'], ',')} | {_fmt(r['bpd'])} | "
                     f"{_rate(n, r.get('encode_s'))} | {_rate(n, r.get('decode_s'))} | {rt} | {r.get('note', '')} |")

    rows = result["rows"]
    vdm = [r for r in rows if r.get("kind") == "vdmcodec"]
    for r in vdm:
        line(r)
    e = result["elbo"]
    if e.get("images"):
        part = "" if e["images"] == n else f" on the {e['images']} model-codable images"
        lines.append(f"| model -ELBO, continuous time (estimate) | seed {e['seed']} | - | "
                     f"{e['bpd_continuous']:.4f} ± {_fmt(e['bpd_continuous_se'])} | - | - | - | mean ± s.e. over images{part} |")
        lines.append(f"| model -ELBO, T = {e['steps']} (estimate) | seed {e['seed']} | - | "
                     f"{e['bpd_discrete']:.4f} ± {_fmt(e['bpd_discrete_se'])} | - | - | - | "
                     f"what the chain should cost; {e['seconds']:.1f} s{part} |")
    else:
        lines.append(f"| model -ELBO | - | - | - | - | - | - | {e.get('note', '')} |")
    for r in rows:
        if r.get("kind") != "vdmcodec":
            line(r)
    for name, why in result.get("skipped", {}).items():
        lines.append(f"| {name} | - | - | - | - | - | - | skipped: {why} |")
    return lines


def speed_summary(result: dict, load_s: float | None = None) -> dict:
    """Images per second of compress / decompress at T and where the compress time goes."""
    m = next(r for r in result["rows"] if r["method"].startswith("vdmcodec archive (model"))
    fb = next(r for r in result["rows"] if r["method"].startswith("vdmcodec archive (all"))
    n = result["images"]
    out = {"images": n, "steps": result["steps"], "model_load_s": load_s}
    if m.get("encode_s") is None:
        return out
    enc, net = m["encode_s"], m.get("network_encode_s", 0.0)
    cls = min(fb["encode_s"], enc - net)
    out.update({
        "compress_s": enc, "compress_img_s": n / enc,
        "network_s": net, "network_calls": m.get("network_calls"),
        "classical_s": cls, "coder_and_rest_s": enc - net - cls,
        "network_share": net / enc, "classical_share": cls / enc, "coder_share": (enc - net - cls) / enc,
    })
    if m.get("decode_s"):
        dec = m["decode_s"]
        out.update({"decompress_s": dec, "decompress_img_s": n / dec,
                    "network_decode_s": m.get("network_decode_s"), "network_decode_share": m.get("network_decode_s", 0.0) / dec})
    if load_s is not None:
        out["compress_img_s_with_load"] = n / (enc + load_s)
        if m.get("decode_s"):
            out["decompress_img_s_with_load"] = n / (m["decode_s"] + load_s)
    return out


def format_speed(speed: dict) -> list[str]:
    if "compress_s" not in speed:
        return ["(no model-coded archive: no speed figures)"]
    lines = ["| | seconds | images/s |", "|---|---:|---:|"]
    if speed.get("model_load_s") is not None:
        lines.append(f"| model loading (load_codec) | {speed['model_load_s']:.2f} | - |")
    lines.append(f"| compress, T = {speed['steps']} | {speed['compress_s']:.1f} | {speed['compress_img_s']:.2f} |")
    if "decompress_s" in speed:
        lines.append(f"| decompress | {speed['decompress_s']:.1f} | {speed['decompress_img_s']:.2f} |")
    if speed.get("model_load_s") is not None:
        lines.append(f"| compress incl. model loading | {speed['compress_s'] + speed['model_load_s']:.1f} | "
                     f"{speed['compress_img_s_with_load']:.2f} |")
        if "decompress_s" in speed:
            lines.append(f"| decompress incl. model loading | {speed['decompress_s'] + speed['model_load_s']:.1f} | "
                         f"{speed['decompress_img_s_with_load']:.2f} |")
    lines += ["", "Where the compress time goes:", "",
              "| part | seconds | share |", "|---|---:|---:|",
              f"| network (`DiffusionChain.p_mean_std`, {speed['network_calls']} calls) | {speed['network_s']:.1f} | {speed['network_share']:.1%} |",
              f"| classical encodings (PNG + WebP of every image, timed as the all-classical archive) | {speed['classical_s']:.1f} | {speed['classical_share']:.1%} |",
              f"| entropy coder and the rest (ANS pushes/pops, latent grids, numpy) | {speed['coder_and_rest_s']:.1f} | {speed['coder_share']:.1%} |"]
    if speed.get("network_decode_s") is not None:
        lines += ["", f"In decompress the network takes {speed['network_decode_s']:.1f} s ({speed['network_decode_share']:.1%})."]
    return lines
