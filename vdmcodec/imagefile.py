"""Image files into archives and back, with nothing lost: modes, palettes, transparency,
16-bit samples, every frame of an animation, and metadata.

``read_inputs`` turns the command line's inputs into ``SourceImage``s: the codec images
(one per frame: 8-bit L or RGB planes) and an image record (coding/envelope.py) for
whatever else the file holds. ``restore_files`` rebuilds each file from the decoded codec
images and its record. Files are written as PNG (an animation as APNG): PNG holds every
mode kept here and carries metadata as chunks; a PNG input's ancillary chunks (text, EXIF,
ICC, XMP, pHYs, gAMA, ... and private ones) are copied verbatim, at their place relative to
PLTE and the image data. What is kept, in short: docs/format.md, "What is kept".
"""
from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from .coding import classical
from .coding.envelope import MODES, SIXTEEN_BIT, Animation, Metadata, Plane, Record, records_of
from .errors import DataError, FormatError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ANIMATED_FORMATS = ("PNG", "GIF", "WEBP")   # multi-frame inputs kept frame by frame (as APNG)
STDIN_NAME = "stdin.png"
_PIL_16BIT = ("I;16", "I;16B", "I;16L", "I;16N")


@dataclass(frozen=True)
class SourceImage:
    """One input image: what the codec codes and what the record keeps."""

    name: str                       # the restored file's relative name
    source: str                     # the input's name (relative to its folder argument)
    format: str                     # Pillow's format name, or "IDX" / "NPY" / "CIFAR" for dataset files
    planes: tuple                   # codec images, one per frame: uint8 [H, W, 1 | 3]
    record: Record | None           # None: a plain 8-bit L / RGB image (start 0: placed by ``records_for``)
    stripped: tuple[str, ...] = ()  # metadata kinds dropped by strip
    note: str = ""                  # what could not be kept as it was (one line), or ""


@dataclass(frozen=True)
class RestoredFile:
    name: str
    data: bytes          # the PNG file's bytes
    source: str          # the input's name, where the archive records one that differs
    mode: str
    frames: int


# ---- PNG chunks -------------------------------------------------------------------------
def png_chunks(data: bytes, what: str) -> list[tuple[bytes, bytes]]:
    """(type, data) of every chunk of a PNG stream, lengths checked against the bytes there."""
    if data[:8] != PNG_SIGNATURE:
        raise DataError(f"{what}: not a PNG stream")
    out, pos = [], 8
    while pos < len(data):
        if pos + 12 > len(data):
            raise DataError(f"{what}: truncated PNG chunk")
        (n,) = struct.unpack_from(">I", data, pos)
        if n > len(data) - pos - 12:
            raise DataError(f"{what}: PNG chunk runs past the end of the file")
        kind = data[pos + 4 : pos + 8]
        out.append((kind, data[pos + 8 : pos + 8 + n]))
        pos += 12 + n
        if kind == b"IEND":
            break
    return out


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@dataclass(frozen=True)
class _PngLayout:
    """What a PNG input holds beyond its pixels (read from its chunks)."""

    bit_depth: int
    colour_type: int
    palette: bytes
    transparency: bytes
    chunks: tuple[Metadata, ...]           # ancillary chunks, verbatim, with their slot
    plays: int | None                      # acTL num_plays (None: not animated)
    delays: tuple[tuple[int, int], ...]    # per fcTL
    default_image: bool                    # IDAT is not part of the animation


def _png_layout(data: bytes, what: str) -> _PngLayout:
    chunks = png_chunks(data, what)
    if not chunks or chunks[0][0] != b"IHDR" or len(chunks[0][1]) != 13:
        raise DataError(f"{what}: PNG without a valid IHDR chunk")
    bit_depth, colour_type = chunks[0][1][8], chunks[0][1][9]
    palette = transparency = b""
    kept, delays = [], []
    plays, default_image, slot, seen_fctl = None, False, 0, False
    for kind, body in chunks[1:]:
        if kind == b"IDAT":
            default_image = default_image or (plays is not None and not seen_fctl)
            slot = 2
        elif kind == b"PLTE" and colour_type == 3:
            palette, slot = body, max(slot, 1)
        elif kind == b"tRNS":
            transparency = body
        elif kind == b"acTL" and len(body) == 8:
            plays = struct.unpack(">I", body[4:])[0]
        elif kind == b"fcTL" and len(body) == 26:
            seen_fctl = True
            delays.append(struct.unpack(">HH", body[20:24]))
        elif kind in (b"fdAT", b"IEND", b"acTL", b"fcTL"):
            pass
        elif kind[:1].isupper() and kind != b"PLTE":
            raise DataError(f"{what}: unknown critical PNG chunk {kind.decode('latin-1')!r}")
        else:
            kept.append(Metadata("png", body, kind, slot))
            if kind == b"PLTE":  # a suggested palette of a truecolour image: later chunks follow it
                slot = max(slot, 1)
    return _PngLayout(bit_depth, colour_type, palette, transparency, tuple(kept), plays, tuple(delays), default_image)


# ---- reading ----------------------------------------------------------------------------
def _frames(img, fmt: str, name: str) -> list:
    n = getattr(img, "n_frames", 1)
    if n > 1 and fmt not in ANIMATED_FORMATS:
        raise DataError(f"{name}: {fmt} file with {n} frames or pages; only animated GIF, PNG and WebP keep "
                        "every frame (nothing was written)")
    out = []
    for k in range(n):
        img.seek(k)
        img.load()
        out.append(img.copy() if n > 1 else img)
    return out


def _uniform(frames: list) -> list:
    """Frames of one mode and palette: as they are, or all converted to RGB(A) where they differ."""
    if len(frames) == 1:
        return frames
    first = frames[0]
    same = all(f.mode == first.mode and f.info.get("transparency") == first.info.get("transparency")
               and (f.mode != "P" or f.getpalette() == first.getpalette()) for f in frames)
    if same and first.mode in ("L", "RGB", "1", "P", "LA", "RGBA"):
        return frames
    alpha = any(f.mode in ("LA", "RGBA", "PA") or "transparency" in f.info for f in frames)
    return [f.convert("RGBA" if alpha else "RGB") for f in frames]


def _split16(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """16-bit samples -> (high bytes, (low - high) mod 256)."""
    hi = (arr >> 8).astype(np.uint8)
    lo = ((arr & 0xFF).astype(np.int16) - hi).astype(np.uint8)
    return hi, lo


def _join16(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    return (hi.astype(np.uint16) << 8) | ((lo.astype(np.uint16) + hi) & 0xFF)


def _hwc(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a[..., None] if a.ndim == 2 else a)


def _planes16(arr: np.ndarray) -> tuple[str, np.ndarray, list[np.ndarray]]:
    """uint16 [H, W] / [H, W, 2 | 3 | 4] -> (mode, codec plane, extra planes)."""
    arr = _hwc(arr)
    mode = {1: "I;16", 2: "LA;16", 3: "RGB;16", 4: "RGBA;16"}[arr.shape[-1]]
    c = MODES[mode][0]
    hi, lo = _split16(arr[..., :c])
    extra = [lo]
    if arr.shape[-1] > c:
        ahi, alo = _split16(arr[..., c:])
        extra += [ahi, alo]
    return mode, hi, extra


def _planes8(img, name: str) -> tuple[str, np.ndarray, list[np.ndarray]]:
    """A Pillow frame -> (mode, codec plane, extra planes)."""
    mode = img.mode
    if mode == "1":
        return mode, _hwc(np.asarray(img.convert("L"))), []
    if mode in ("L", "P", "RGB"):
        return mode, _hwc(np.asarray(img)), []
    if mode in ("LA", "RGBA"):
        arr = np.asarray(img)
        return mode, np.ascontiguousarray(arr[..., :-1]), [_hwc(arr[..., -1])]
    if mode in _PIL_16BIT:
        return _planes16(np.asarray(img).astype(np.uint16))
    raise DataError(f"{name}: mode {mode!r} cannot be stored exactly (kept: 1, L, P, LA, RGB, RGBA, and 16-bit "
                    "gray, gray+alpha, RGB, RGBA PNGs)")


def _palette(img) -> tuple[bytes, bytes]:
    """(RGB palette bytes, tRNS payload) of a P image read from a file other than PNG."""
    pal = img.palette
    rgb = bytes(img.getpalette("RGB") or b"")
    trns = b""
    if pal is not None and pal.mode == "RGBA":
        alphas = bytes(img.getpalette("RGBA")[3::4]).rstrip(b"\xff")
        trns = alphas
    t = img.info.get("transparency")
    if isinstance(t, int) and 0 <= t < 256:
        trns = b"\xff" * t + b"\0"
    elif isinstance(t, bytes):
        trns = t
    return rgb, trns[: len(rgb) // 3]


def _colour_key(img) -> bytes:
    """tRNS payload of an L / RGB image's transparent colour (Pillow info), or b""."""
    t = img.info.get("transparency")
    if img.mode == "L" and isinstance(t, int):
        return struct.pack(">H", t)
    if img.mode == "RGB" and isinstance(t, tuple) and len(t) == 3:
        return struct.pack(">HHH", *t)
    return b""


def _info_metadata(info: dict) -> list[Metadata]:
    out = []
    for key, kind in (("exif", "exif"), ("icc_profile", "icc"), ("xmp", "xmp"), ("comment", "comment")):
        v = info.get(key)
        if isinstance(v, str):
            v = v.encode()
        if isinstance(v, (bytes, bytearray)) and v and not (kind == "comment" and b"\0" in v):
            out.append(Metadata(kind, bytes(v)))
    return out


def _delay(ms, name: str) -> tuple[int, int]:
    ms = float(ms or 0)
    for den in (1000, 100, 10, 1):
        num = ms * den / 1000
        if num == int(num) and num <= 0xFFFF:
            return int(num), den
    raise DataError(f"{name}: frame duration {ms} ms cannot be kept exactly")


def output_name(rel: str) -> str:
    """The restored file's name: the input's, with the suffix .png (kept as it is if it is one)."""
    p = Path(rel)
    return rel if p.suffix.lower() == ".png" else str(p.with_suffix(".png"))


def read_image_file(data: bytes, rel: str, strip: bool = False) -> SourceImage:
    """One image file's bytes -> a SourceImage (DataError, naming ``rel``, where it cannot be kept exactly)."""
    from .data import open_image

    name = output_name(rel)
    note = ""
    layout = _png_layout(data, rel) if data[:8] == PNG_SIGNATURE else None
    try:
        with open_image(io.BytesIO(data), rel) as img:
            fmt = img.format or "?"
            if layout is not None and layout.bit_depth == 16:
                if layout.plays is not None:
                    raise DataError(f"{rel}: animated 16-bit PNG is not supported (nothing was written)")
                import imagecodecs

                arr = np.asarray(imagecodecs.png_decode(data))
                if arr.dtype != np.uint16:
                    raise DataError(f"{rel}: 16-bit PNG decodes to {arr.dtype}")
                if layout.colour_type in (0, 2) and arr.ndim == 3 and arr.shape[-1] in (2, 4):
                    # libpng turned the colour key (tRNS) into an alpha channel: the file has
                    # none, and its key is kept as the key (below), so drop the made-up alpha
                    arr = arr[..., :-1]
                    arr = arr[..., 0] if arr.shape[-1] == 1 else arr
                frames, info = [None], dict(img.info)
                parts = [_planes16(arr)]
            else:
                frames = _frames(img, fmt, rel)
                modes = sorted({f.mode for f in frames})
                frames = _uniform(frames)
                if sorted({f.mode for f in frames}) != modes:
                    note = f"{rel}: frames of modes {', '.join(modes)} are kept as {frames[0].mode} (every pixel as it was)"
                info = dict(frames[0].info)
                parts = [_planes8(f, rel) for f in frames]
            mode = parts[0][0]
            palette = transparency = b""
            if layout is None and mode == "P":
                palette, transparency = _palette(frames[0])
            elif layout is None and mode in ("L", "RGB"):
                transparency = _colour_key(frames[0])
            durations = [f.info.get("duration", 0) for f in frames] if layout is None else []
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{rel}: not a readable image ({type(e).__name__})") from None
    if any(p[0] != mode or p[1].shape != parts[0][1].shape for p in parts):
        raise DataError(f"{rel}: frames differ in size or mode")
    if layout is not None:
        palette = layout.palette if mode == "P" else b""
        transparency = layout.transparency if mode in ("P", "1", "L", "RGB", "I;16", "RGB;16") else b""
        if mode == "L" and layout.bit_depth < 8 and len(transparency) == 2:  # Pillow widened the samples to 8 bits
            scale = 255 // ((1 << layout.bit_depth) - 1)
            transparency = struct.pack(">H", min(255, struct.unpack(">H", transparency)[0] * scale))
        metadata = list(layout.chunks)
    else:
        metadata = _info_metadata(info)
        comment = info.get("comment")
        if isinstance(comment, str):
            comment = comment.encode()
        if not strip and isinstance(comment, (bytes, bytearray)) and b"\0" in comment:
            lost = f"{rel}: its comment holds a NUL byte, which a PNG text chunk cannot hold: the comment is not kept"
            note = f"{note}; {lost}" if note else lost
    if mode == "P":
        top = max(int(p[1].max()) for p in parts)
        palette = palette + b"\0" * max(0, 3 * (top + 1) - len(palette))  # every index names an entry
        transparency = transparency[: len(palette) // 3]
    animation = None
    if layout is not None and layout.plays is not None:
        n = len(parts) - layout.default_image
        if len(layout.delays) != n:
            raise DataError(f"{rel}: APNG with {len(layout.delays)} frame controls for {n} frames")
        animation = Animation(layout.plays, layout.delays, layout.default_image)
    elif len(parts) > 1:
        plays = info.get("loop")
        animation = Animation(1 if plays is None else int(plays), tuple(_delay(d, rel) for d in durations))
    stripped = tuple(sorted({m.chunk.decode("latin-1") if m.kind == "png" else m.kind for m in metadata})) if strip else ()
    if strip:
        metadata = []
    planes = tuple(np.ascontiguousarray(p[1]) for p in parts)
    extra = tuple(Plane(*classical.encode_best(np.ascontiguousarray(x))) for p in parts for x in p[2])
    source = rel if rel != name else ""
    plain = mode in ("L", "RGB") and not (animation or metadata or transparency or source)
    record = None if plain else Record(0, mode, len(parts), source, palette, transparency, animation, extra, tuple(metadata))
    return SourceImage(name, rel, fmt, planes, record, stripped, note)


def read_inputs(paths: list[Path], strip: bool = False, stdin: bytes | None = None) -> tuple[list[SourceImage], int]:
    """The images of the command line's inputs (files, folders, dataset files; ``-``: one image
    file read from ``stdin``) and the input files' total bytes. Refuses, before anything is
    decoded or written, a file given twice and two inputs that would be restored under one name."""
    from .data import _is_dataset_file, iter_inputs, read_dataset_file

    files: list[tuple[Path | None, str]] = []
    seen: dict[Path, str] = {}
    for p in paths:
        for f, rel in ([(None, STDIN_NAME)] if str(p) == "-" else iter_inputs([p])):
            key = f.resolve() if f is not None else Path("-")
            if key in seen:
                raise DataError(f"{f or '-'}: given twice (also as {seen[key]}); each file goes into an archive once")
            seen[key] = str(f or "-")
            files.append((f, rel))
    names: dict[str, str] = {}
    for f, rel in files:
        if f is None or not _is_dataset_file(f):
            _claim(names, output_name(rel), str(f or "-"))
    out: list[SourceImage] = []
    total = 0
    multi = len(paths) > 1
    for f, rel in files:
        if f is None:
            if stdin is None:
                raise DataError("-: standard input is not available")
            total += len(stdin)
            out.append(read_image_file(stdin, rel, strip))
            continue
        try:
            total += f.stat().st_size
            if _is_dataset_file(f):
                arr = read_dataset_file(f)
                stem = f.name.split(".")[0]
                fmt = "NPY" if f.suffix.lower() in (".npy", ".npz") else "CIFAR" if f.name.lower().startswith(("data_batch", "test_batch")) else "IDX"
                for k in range(arr.shape[0]):
                    name = f"{stem}/{k:05d}.png" if multi else f"{k:05d}.png"
                    _claim(names, name, f"{f} (image {k})")
                    out.append(SourceImage(name, str(f), fmt, (arr[k],), None))
            else:
                out.append(read_image_file(f.read_bytes(), rel, strip))
        except OSError as e:
            raise DataError(f"{f}: {e.strerror or e}") from None
    if not out:
        raise DataError(f"no images found in {', '.join(map(str, paths))}")
    _check_folders(names)
    return out, total


def _claim(names: dict[str, str], name: str, source: str) -> None:
    other = names.setdefault(name, source)
    if other != source:
        raise DataError(f"{other} and {source} would both be restored as {name}; rename one, or compress them "
                        "into separate archives (nothing was written)")


def _check_folders(names: dict[str, str]) -> None:
    """No image is restored as a file where another's folder must go (``q.png`` beside
    ``q.png/z.png``, from a file q.png next to a folder q.png)."""
    for name, source in names.items():
        for folder in PurePosixPath(name).parents:
            other = names.get(folder.as_posix())
            if other is not None:
                raise DataError(f"{other} would be restored as {folder}, the folder {source} is restored into; "
                                "rename one, or compress them into separate archives (nothing was written)")


def records_for(images: list[SourceImage]) -> list[Record]:
    """The images' records, placed at their first codec image."""
    from dataclasses import replace

    out, start = [], 0
    for s in images:
        if s.record is not None:
            out.append(replace(s.record, start=start))
        start += len(s.planes)
    return out


# ---- writing ----------------------------------------------------------------------------
def plain_png(pixels: np.ndarray) -> bytes:
    """An 8-bit L / RGB image ([H, W], [H, W, 1 | 3]) as PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.ndim == 3 and pixels.shape[-1] == 1 else pixels).save(buf, format="PNG")
    return buf.getvalue()


def _frame_png(record: Record, colour: np.ndarray, extra: list[np.ndarray]) -> bytes:
    """One frame as a bare PNG stream (IHDR, PLTE, IDAT, IEND)."""
    from PIL import Image

    mode = record.mode
    if mode in SIXTEEN_BIT:
        import imagecodecs

        arr = _join16(colour, extra[0])
        if len(extra) == 3:
            arr = np.concatenate([arr, _join16(extra[1], extra[2])], axis=-1)
        return bytes(imagecodecs.png_encode(arr[..., 0] if arr.shape[-1] == 1 else arr))
    h, w = colour.shape[:2]
    if mode == "1":
        if not np.isin(colour, (0, 255)).all():
            raise FormatError("invalid image record: a 1-bit image with values other than 0 and 255")
        img = Image.fromarray(colour[..., 0]).convert("1", dither=Image.Dither.NONE)
    elif mode == "P":
        img = Image.frombytes("P", (w, h), np.ascontiguousarray(colour[..., 0]).tobytes())
        img.putpalette(record.palette, "RGB")
    else:
        arr = np.concatenate([colour] + extra, axis=-1) if extra else colour
        img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _metadata_chunks(items) -> list[tuple[int, bytes, bytes]]:
    """(slot, type, data) of the chunks that carry a record's metadata."""
    out = []
    for m in items:
        if m.kind == "png":
            out.append((m.slot, m.chunk, m.data))
        elif m.kind == "icc":
            out.append((0, b"iCCP", b"ICC Profile\0\0" + zlib.compress(m.data, 9)))
        elif m.kind == "exif":
            out.append((1, b"eXIf", m.data[6:] if m.data.startswith(b"Exif\0\0") else m.data))
        elif m.kind == "xmp":
            out.append((1, b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0" + m.data))
        elif m.kind == "comment":
            out.append((1, b"tEXt", b"Comment\0" + m.data))
    return out


def restore_png(record: Record, frames: list[np.ndarray]) -> bytes:
    """The PNG (or APNG) file of ``record`` from its decoded codec images."""
    _, extra_channels = MODES[record.mode]
    n = len(extra_channels)
    streams = []
    for k, colour in enumerate(frames):
        h, w = colour.shape[:2]
        extra = [classical.decode(p.data, p.method, (h, w, c))
                 for p, c in zip(record.planes[k * n : (k + 1) * n], extra_channels)]
        streams.append(png_chunks(_frame_png(record, colour, extra), "restored frame"))
    ihdr = streams[0][0][1]
    if any(s[0][1] != ihdr for s in streams):
        raise FormatError("invalid image record: frames that do not share one PNG header")
    meta = _metadata_chunks(record.metadata)
    a = record.animation
    out = bytearray(PNG_SIGNATURE) + _chunk(b"IHDR", ihdr)
    if a is not None:
        out += _chunk(b"acTL", struct.pack(">II", len(frames) - a.default_image, a.plays))
    out += b"".join(_chunk(t, d) for s, t, d in meta if s == 0)
    if record.mode == "P":
        out += _chunk(b"PLTE", record.palette)
    if record.transparency:
        out += _chunk(b"tRNS", record.transparency)
    out += b"".join(_chunk(t, d) for s, t, d in meta if s == 1)
    seq, (h, w) = 0, frames[0].shape[:2]
    for k, chunks in enumerate(streams):
        if a is not None and not (k == 0 and a.default_image):
            num, den = a.delays[k - a.default_image]
            out += _chunk(b"fcTL", struct.pack(">IIIIIHHBB", seq, w, h, 0, 0, num, den, 0, 0))
            seq += 1
        for kind, body in chunks:
            if kind != b"IDAT":
                continue
            if k == 0:
                out += _chunk(b"IDAT", body)
            else:
                out += _chunk(b"fdAT", struct.pack(">I", seq) + body)
                seq += 1
    out += b"".join(_chunk(t, d) for s, t, d in meta if s == 2)
    out += _chunk(b"IEND", b"")
    return bytes(out)


def restore_files(header, images: list[tuple[np.ndarray, str]]) -> list[RestoredFile]:
    """The files of an archive: its decoded codec images (``decompress_named``'s list) grouped
    and rebuilt by the header's image records."""
    records = {r.start: r for r in records_of(header)}
    out, k = [], 0
    while k < len(images):
        r = records.get(k)
        if r is None:
            pixels, name = images[k]
            pix = pixels if pixels.ndim == 3 else pixels[..., None]
            out.append(RestoredFile(name, plain_png(pix), "", "L" if pix.shape[-1] == 1 else "RGB", 1))
            k += 1
            continue
        frames = [_hwc(images[j][0]) for j in range(r.start, r.stop)]
        out.append(RestoredFile(images[k][1], restore_png(r, frames), r.source, r.mode, r.frames))
        k = r.stop
    return out


def file_names(header) -> list[str]:
    """The names of the files an archive restores (one per record, one per image without),
    read from the header alone, before anything is decoded."""
    names = header.image_names()
    records = {r.start: r for r in records_of(header)}
    out, k = [], 0
    while k < len(names):
        out.append(names[k])
        k = records[k].stop if k in records else k + 1
    return out


KEEPS_ALL_FORMATS = ("PNG", "IDX", "NPY", "CIFAR")   # restored without losing a field of the input format


def compress_report(blob: bytes, sources: list[SourceImage], input_bytes: int, codec, output: str, strip: bool) -> dict:
    """What ``compress`` wrote: sizes against the input files' own bytes, the method of every
    image, and notes (one line each) on what the user should know."""
    from collections import Counter

    from .coding.container import MODEL_METHODS, unpack

    header, _ = unpack(blob)
    methods = header.image_methods()
    files, k, subpixels = [], 0, 0
    for s in sources:
        m = sorted(set(methods[k : k + len(s.planes)]))
        r = s.record
        mode = r.mode if r is not None else ("L" if s.planes[0].shape[-1] == 1 else "RGB")
        channels = MODES[mode][0] + (1 if mode in ("LA", "RGBA", "LA;16", "RGBA;16") else 0)
        subpixels += len(s.planes) * s.planes[0].shape[0] * s.planes[0].shape[1] * channels
        files.append({"name": s.name, "source": s.source, "format": s.format, "mode": mode, "frames": len(s.planes),
                      "method": m[0] if len(m) == 1 else m,
                      "extra_planes": sorted({p.method for p in r.planes}) if r is not None else [],
                      "metadata": [x.chunk.decode("latin-1") if x.kind == "png" else x.kind for x in r.metadata] if r else []})
        k += len(s.planes)
    res = {"output": output, "bytes": len(blob), "images": len(sources), "frames": len(methods),
           "subpixels": subpixels, "bpd": 8 * len(blob) / subpixels, "input_bytes": input_bytes,
           "input_formats": dict(Counter(s.format for s in sources)), "format_version": blob[4]}
    model_coded = any(m in MODEL_METHODS for m in methods)
    if model_coded:
        res.update({"model": header.model, "steps": header.steps, "arithmetic": header.dtype})
    notes = []
    if not model_coded:
        colour = {p.shape[-1] for s in sources for p in s.planes}
        if codec.channels == 1 and colour == {3}:
            why = f"model {codec.info['name']} codes grayscale images only, and these are colour"
        else:
            why = ("the classical coders were smaller for every image (estimated on crops before running the model, "
                   "or measured after)")
        notes.append(f"no image was coded by the model: {why}; all are stored classically "
                     "(PNG / WebP / JPEG XL lossless, or the ctx context model)")
    converted = sorted({s.format for s in sources if s.format not in KEEPS_ALL_FORMATS})
    if converted:
        n = sum(s.format in converted for s in sources)
        jpeg = "; a JPEG's decoded pixels are kept, not its file" if "JPEG" in converted else ""
        tiff = "; a TIFF's own tags (orientation, description, resolution) are not" if "TIFF" in converted else ""
        notes.append(f"{n} input{'s' * (n != 1)} ({', '.join(converted)}) will be restored as PNG (APNG for animations): "
                     f"pixels, mode, frames, EXIF, ICC, XMP and comments are kept, other fields of those formats "
                     f"are not{tiff}{jpeg}")
    mode_notes = [s.note for s in sources if s.note]
    if mode_notes:
        more = f" (and {len(mode_notes) - 1} more)" if len(mode_notes) > 1 else ""
        notes.append(mode_notes[0] + more)
    if strip:
        dropped = [s for s in sources if s.stripped]
        kinds = sorted({x for s in dropped for x in s.stripped})
        notes.append(f"--strip dropped metadata ({', '.join(kinds)}) from {len(dropped)} image{'s' * (len(dropped) != 1)}"
                     if dropped else "--strip: the inputs held no metadata")
    res["notes"] = notes
    res["files"] = files
    return res
