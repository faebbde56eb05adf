"""Nothing lost: every mode, palette, frame and metadata field of an input file comes back
from `compress` + `decompress` exactly, or the input is refused cleanly (exit code, one
line, nothing written). Inputs are made here with Pillow and imagecodecs."""
from __future__ import annotations

import io
import json
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from typer.testing import CliRunner

from cli.main import app
from vdmcodec.imagefile import png_chunks

runner = CliRunner()
RNG = np.random.default_rng(7)


def _noise(*shape, hi=256, dtype=np.uint8):
    return RNG.integers(0, hi, shape).astype(dtype)


def _exif(orientation: int = 6) -> bytes:
    ex = Image.Exif()
    ex[0x0112] = orientation  # Orientation
    ex[0x010F] = "vdmcodec test camera"  # Make
    return ex.tobytes()


ICC = bytes(range(256)) * 3  # any bytes: an ICC profile is kept as bytes


def _save(img, fmt, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _with_key(png: bytes, key: bytes) -> bytes:
    """A PNG with a colour key (a tRNS chunk) added after its IHDR."""
    import struct
    import zlib

    chunk = struct.pack(">I", len(key)) + b"tRNS" + key + struct.pack(">I", zlib.crc32(b"tRNS" + key))
    return png[:33] + chunk + png[33:]


def _inputs() -> dict[str, bytes]:
    """File name -> bytes of every case, one feature each."""
    p = Image.frombytes("P", (11, 7), _noise(77, hi=6).tobytes())
    p.putpalette(bytes(_noise(18)))  # 6 entries
    text = PngImagePlugin.PngInfo()
    text.add_text("Title", "a title")
    text.add_text("Comment", "zipped " * 20, zip=True)
    text.add_itxt("Description", "ünïcode", lang="de", tkey="Beschreibung")
    text.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta xmlns:x='adobe:ns:meta/'/>")
    gif = [Image.fromarray(_noise(10, 12, 3)).convert("P") for _ in range(3)]
    apng = [Image.fromarray(_noise(9, 8, 4)) for _ in range(3)]
    webp = [Image.fromarray(_noise(9, 8, 3)) for _ in range(3)]
    return {
        "palette.png": _save(p, "PNG", transparency=bytes([255, 0, 128, 255, 7])),
        "bilevel.png": _save(Image.fromarray(_noise(9, 13, hi=2).astype(bool)), "PNG"),
        "gray_alpha.png": _save(Image.fromarray(_noise(8, 9, 2)), "PNG"),
        "rgba.png": _save(Image.fromarray(_noise(8, 9, 4)), "PNG"),
        "opaque_rgba.png": _save(Image.fromarray(np.concatenate([_noise(8, 9, 3), np.full((8, 9, 1), 255, np.uint8)], -1)), "PNG"),
        "gray16.png": _save(Image.fromarray(_noise(7, 9, hi=65536, dtype=np.uint16)), "PNG"),
        "rgb16.png": bytes(imagecodecs.png_encode(_noise(7, 9, 3, hi=65536, dtype=np.uint16))),
        "gray16_key.png": _with_key(bytes(imagecodecs.png_encode(_noise(7, 9, hi=65536, dtype=np.uint16))),
                                    bytes([3, 232])),
        "rgb16_key.png": _with_key(bytes(imagecodecs.png_encode(_noise(7, 9, 3, hi=65536, dtype=np.uint16))),
                                   bytes([0, 0, 0, 1, 0, 2])),
        "bilevel_key.png": _save(Image.fromarray(_noise(9, 13, hi=2).astype(bool)), "PNG", transparency=0),
        "rgba16.png": bytes(imagecodecs.png_encode(_noise(7, 9, 4, hi=65536, dtype=np.uint16))),
        "gray_alpha16.png": bytes(imagecodecs.png_encode(_noise(7, 9, 2, hi=65536, dtype=np.uint16))),
        "anim.gif": _save(gif[0], "GIF", save_all=True, append_images=gif[1:], duration=[100, 250, 40], loop=0),
        "anim_png.png": _save(apng[0], "PNG", save_all=True, append_images=apng[1:], duration=[30, 70, 110], loop=3),
        "anim_webp.webp": _save(webp[0], "WEBP", save_all=True, append_images=webp[1:], duration=[50, 60, 70], loop=0,
                           lossless=True),
        "meta.png": _save(Image.fromarray(_noise(9, 10, 3)), "PNG", exif=_exif(), icc_profile=ICC, pnginfo=text,
                          dpi=(300, 300)),
        "photo.jpg": _save(Image.fromarray(_noise(16, 16, 3)), "JPEG", exif=_exif(8), icc_profile=ICC, quality=90,
                           xmp=b"<x:xmpmeta xmlns:x='adobe:ns:meta/'/>"),
        "gray.png": _save(Image.fromarray(_noise(10, 10)), "PNG"),
    }


def _frames(data: bytes):
    """(format, mode, n_frames, info of frame 0, per frame (pixels as RGBA and as stored, duration), palette)."""
    im = Image.open(io.BytesIO(data))
    frames = []
    for k in range(getattr(im, "n_frames", 1)):
        im.seek(k)
        im.load()
        frames.append((np.asarray(im.convert("RGBA")).copy(), np.asarray(im).copy(), im.info.get("duration")))
    im.seek(0)
    return im.mode, len(frames), dict(im.info), frames, im.getpalette() if im.mode == "P" else None


def _ancillary(data: bytes) -> list[tuple[bytes, bytes]]:
    return sorted((k, v) for k, v in png_chunks(data, "test") if k not in (b"IHDR", b"IDAT", b"IEND", b"fcTL", b"fdAT"))


def _one_line_error(res):
    assert res.exit_code != 0
    err = res.stderr.strip()
    assert err.startswith("error:") and "\n" not in err, err
    assert "Traceback" not in res.output


@pytest.fixture(scope="module")
def restored(tmp_path_factory, tiny_model_dir):
    """Every case in one folder, compressed and decompressed through the CLI."""
    root = tmp_path_factory.mktemp("fidelity")
    src = root / "in"
    src.mkdir()
    cases = _inputs()
    for name, data in cases.items():
        (src / name).write_bytes(data)
    arc = root / "a.vdmc"
    res = runner.invoke(app, ["compress", str(src), "-o", str(arc), "--model", str(tiny_model_dir), "--steps", "2",
                              "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    res = runner.invoke(app, ["decompress", str(arc), "-o", str(root / "out"), "--model", str(tiny_model_dir)])
    assert res.exit_code == 0, res.output
    return cases, root / "out", report, arc


@pytest.mark.parametrize("name", sorted(_inputs()))
def test_round_trip_is_exact(restored, name):
    cases, out, report, _ = restored
    data = cases[name]
    back = (out / (name if name.endswith(".png") else name.rsplit(".", 1)[0] + ".png")).read_bytes()
    assert back[:8] == b"\x89PNG\r\n\x1a\n"
    mode_a, n_a, info_a, frames_a, pal_a = _frames(data)
    mode_b, n_b, info_b, frames_b, pal_b = _frames(back)
    assert n_b == n_a
    for (rgba_a, raw_a, dur_a), (rgba_b, raw_b, dur_b) in zip(frames_a, frames_b):
        assert np.array_equal(rgba_a, rgba_b)
        assert dur_b == dur_a or (dur_a is not None and float(dur_b) == float(dur_a))
    if name != "anim.gif":  # Pillow shows a GIF's frames after the first as RGB: kept as RGB (and said so)
        assert mode_b == mode_a and pal_b == pal_a
        for (_, raw_a, _), (_, raw_b, _) in zip(frames_a, frames_b):
            assert np.array_equal(raw_a, raw_b)
    if n_a > 1:
        assert info_b.get("loop") == info_a.get("loop")
    for key in ("exif", "icc_profile", "xmp", "transparency", "Title", "Comment", "Description"):
        assert info_b.get(key) == info_a.get(key), key
    if data[:4] == b"\x89PNG":  # a PNG's ancillary chunks come back verbatim (a JPEG's JFIF density does not)
        assert info_b.get("dpi") == info_a.get("dpi")
        assert _ancillary(back) == _ancillary(data)
    if "16" in name:  # every bit of the 16-bit samples
        assert np.array_equal(imagecodecs.png_decode(back), imagecodecs.png_decode(data))
    if name == "photo.jpg":
        assert Image.open(io.BytesIO(back)).getexif()[0x0112] == 8
    entry = next(f for f in report["files"] if f["source"] == name)
    assert entry["frames"] == n_a and entry["method"]


def test_report_names_methods_and_says_what_changed(restored):
    cases, _, report, arc = restored
    assert report["images"] == len(cases) and report["bytes"] == arc.stat().st_size
    assert report["input_bytes"] == sum(len(d) for d in cases.values())
    assert report["frames"] == len(cases) + 2 + 2 + 2  # three animations of 3 frames
    notes = " | ".join(report["notes"])
    assert "GIF" in notes and "JPEG" in notes and "restored as PNG" in notes
    assert "anim.gif: frames of modes P, RGB are kept as RGB" in notes
    if "model" not in report:
        assert "no image was coded by the model" in notes


def test_info_lists_the_records(restored):
    cases, _, _, arc = restored
    res = runner.invoke(app, ["info", str(arc), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["version"] == (10 if "ctx" in doc["method_counts"] else 8) and doc["images"] == len(cases) + 6
    modes = {r["source"] or r["mode"]: r for r in doc["records"]}
    assert modes["anim.gif"]["frames"] == 3 and modes["anim.gif"]["animated"]
    assert {"eXIf", "iCCP", "tEXt", "zTXt", "iTXt", "pHYs"} <= set(modes["RGB"]["metadata"])  # meta.png
    res = runner.invoke(app, ["info", str(arc)])
    assert res.exit_code == 0 and "image records:" in res.stdout
    res = runner.invoke(app, ["info", "-", "--json"], input=arc.read_bytes())
    assert res.exit_code == 0 and json.loads(res.stdout)["images"] == doc["images"]


def test_records_with_model_coded_planes(tiny_model_dir):
    """The records work the same when the model codes the planes (a gray model: the L plane of
    an LA image, the indices of a P image, the high bytes of a 16-bit image)."""
    from vdmcodec.coding.codec import load_codec
    from vdmcodec.coding.container import unpack
    from vdmcodec.coding.envelope import attach
    from vdmcodec.imagefile import read_image_file, records_for, restore_files

    cases = _inputs()
    srcs = [read_image_file(cases[n], n) for n in ("gray_alpha.png", "palette.png", "gray16.png", "bilevel.png")]
    codec = load_codec(tiny_model_dir, steps=2)
    planes = [p for s in srcs for p in s.planes]
    blob = attach(codec.compress(planes, names=[s.name for s in srcs], force_model=True), records_for(srcs))
    header, _ = unpack(blob)
    # the first images seed the chain (classical; ctx where it is smallest, which is version 10)
    assert blob[4] == (10 if "ctx" in header.image_methods() else 8) and "vdm" in header.image_methods()
    files = restore_files(header, codec.decompress_named(blob))
    for s, f in zip(srcs, files):
        a, b = _frames(cases[s.source]), _frames(f.data)
        assert f.name == s.name and a[0] == b[0] and a[4] == b[4]
        assert np.array_equal(a[3][0][1], b[3][0][1])


def test_strip_drops_metadata_and_says_so(tmp_path, tiny_model_dir):
    src = tmp_path / "meta.png"
    src.write_bytes(_inputs()["meta.png"])
    arc = tmp_path / "a.vdmc"
    res = runner.invoke(app, ["compress", str(src), "-o", str(arc), "--model", str(tiny_model_dir), "--strip"])
    assert res.exit_code == 0, res.output
    assert "--strip dropped metadata" in res.stderr and "eXIf" in res.stderr and "iCCP" in res.stderr
    res = runner.invoke(app, ["decompress", str(arc), "-o", str(tmp_path / "out"), "--model", str(tiny_model_dir)])
    assert res.exit_code == 0, res.output
    back = (tmp_path / "out" / "meta.png").read_bytes()
    assert _ancillary(back) == []
    assert np.array_equal(np.asarray(Image.open(src)), np.asarray(Image.open(io.BytesIO(back))))


def test_plain_images_stay_format_version_7(tmp_path, tiny_model_dir):
    """8-bit L / RGB PNGs without metadata need no record: the archive is a version-7 file as
    before (an L image over ctx's 4096 pixels, which would make it version 10)."""
    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray(_noise(65, 64)).save(d / "a.png")
    Image.fromarray(_noise(9, 7, 3)).save(d / "b.png")
    arc = tmp_path / "a.vdmc"
    assert runner.invoke(app, ["compress", str(d), "-o", str(arc), "--model", str(tiny_model_dir), "-e", "3"]).exit_code == 0
    assert arc.read_bytes()[4] == 7


# ---- refusals ------------------------------------------------------------------------------
def _gray(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (6, 5), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("case", ["same_name", "twice", "folder_and_file", "png_and_tif", "file_where_folder",
                                  "multipage_tiff", "cmyk", "pixels_over_the_limit"])
def test_refused_inputs_write_nothing(tmp_path, tiny_model_dir, case):
    if case == "same_name":
        args = [_gray(tmp_path / "a" / "img.png"), _gray(tmp_path / "b" / "img.png", 1)]
    elif case == "twice":
        f = _gray(tmp_path / "img.png")
        args = [f, f]
    elif case == "folder_and_file":
        f = _gray(tmp_path / "d" / "img.png")
        args = [tmp_path / "d", f]
    elif case == "png_and_tif":
        _gray(tmp_path / "d" / "a.png")
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "d" / "a.tif")
        args = [tmp_path / "d"]
    elif case == "file_where_folder":  # q.jpg restores as q.png, where q.png/z.png needs a folder
        _gray(tmp_path / "d" / "q.png" / "z.png")
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "d" / "q.tif")
        args = [tmp_path / "d"]
    elif case == "multipage_tiff":
        pages = [Image.fromarray(np.full((4, 4), k, np.uint8)) for k in range(3)]
        pages[0].save(tmp_path / "p.tif", save_all=True, append_images=pages[1:])
        args = [tmp_path / "p.tif"]
    elif case == "pixels_over_the_limit":  # 400 Mpixel: Pillow itself only warns below 2 x its limit
        import struct
        import zlib

        def chunk(kind, data):
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        rows = zlib.compress(b"\0" * 2501 * 20000, 9)  # 20000 x 20000, one bit per pixel, all 0
        ihdr = struct.pack(">IIBBBBB", 20000, 20000, 1, 0, 0, 0, 0)
        (tmp_path / "big.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows)
                                           + chunk(b"IEND", b""))
        args = [tmp_path / "big.png"]
    else:
        Image.new("CMYK", (4, 4)).save(tmp_path / "c.tif")
        args = [tmp_path / "c.tif"]
    arc = tmp_path / "x.vdmc"
    res = runner.invoke(app, ["compress", *map(str, args), "-o", str(arc), "--model", str(tiny_model_dir)])
    _one_line_error(res)
    assert not arc.exists()
    expect = {"same_name": "would both be restored as img.png", "twice": "given twice",
              "folder_and_file": "given twice", "png_and_tif": "would both be restored as a.png",
              "file_where_folder": "the folder", "pixels_over_the_limit": "image larger than",
              "multipage_tiff": "3 frames or pages", "cmyk": "CMYK"}[case]
    assert expect in res.stderr


def _clash_refused_then_renamed(tmp_path, model_dir, imgs, names, restored, **compress) -> str:
    """An archive of ``imgs`` under ``names``: decompress refuses it before writing anything,
    and --rename-duplicates restores each image under ``restored``. Returns that run's stderr."""
    from vdmcodec.coding.codec import load_codec

    arc = tmp_path / "clash.vdmc"
    arc.write_bytes(load_codec(model_dir).compress(imgs, names=names, **compress))
    out = tmp_path / "out"
    res = runner.invoke(app, ["decompress", str(arc), "-o", str(out), "--model", str(model_dir)])
    _one_line_error(res)
    assert "image names that clash" in res.stderr and not out.exists()
    res = runner.invoke(app, ["decompress", str(arc), "-o", str(out), "--model", str(model_dir), "--rename-duplicates"])
    assert res.exit_code == 0, res.output
    for name, im in zip(restored, imgs):
        assert np.array_equal(np.asarray(Image.open(out / name)), im)
    return res.stderr


def test_archives_with_duplicate_names_restore_with_rename(tmp_path, tiny_model_dir):
    """Archives written before names were checked may hold duplicates: decompress refuses them
    cleanly, and --rename-duplicates restores every image and says how."""
    imgs = [np.random.default_rng(k).integers(0, 256, (5, 6), dtype=np.uint8) for k in range(3)]
    err = _clash_refused_then_renamed(tmp_path, tiny_model_dir, imgs, ["img.png", "img.png", "img-2.png"],
                                      ["img.png", "img-3.png", "img-2.png"])
    assert "img.png was written as img-3.png" in err


@pytest.mark.parametrize("names, restored", [
    (["x.png", "./x.png"], ["x.png", "x-2.png"]),             # one file under two spellings
    (["q.png", "q.png/z.png"], ["q-2.png", "q.png/z.png"]),   # a file where another image's folder goes
    (["q.png/z.png", "q.png"], ["q.png/z.png", "q-2.png"]),
])
def test_names_that_clash_only_as_paths(tmp_path, tiny_model_dir, names, restored):
    """Names that differ as strings but not as paths are refused before anything is
    decoded (no image silently replaces another), and --rename-duplicates restores them all."""
    imgs = [np.full((4, 5), 40 * k + 7, dtype=np.uint8) for k in range(2)]
    _clash_refused_then_renamed(tmp_path, tiny_model_dir, imgs, names, restored, classical_only=True)


def test_images_named_like_dataset_files_are_images(tmp_path, tiny_model_dir):
    """IDX and CIFAR files are known by their names; a file with an image suffix is an image."""
    src = tmp_path / "in"
    for name in ("photo_idx.png", "data_batch_7.png", "scan-ubyte.png"):
        _gray(src / name)
    arc = tmp_path / "a.vdmc"
    res = runner.invoke(app, ["compress", str(src), "-o", str(arc), "--model", str(tiny_model_dir), "-e", "1"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["decompress", str(arc), "-o", str(tmp_path / "out"), "--model", str(tiny_model_dir)])
    assert res.exit_code == 0, res.output
    for f in src.iterdir():
        assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / f.name)), np.asarray(Image.open(f)))


def test_what_is_not_kept_is_said(tmp_path, tiny_model_dir):
    """A JPEG comment with a NUL byte (no PNG text chunk holds one) and a TIFF's own tags are
    not restored; the notes say so rather than claim them kept."""
    src = tmp_path / "in"
    src.mkdir()
    (src / "c.jpg").write_bytes(_save(Image.fromarray(_noise(8, 8)), "JPEG", comment=b"a\0b"))
    ex = Image.Exif()
    ex[0x0112] = 3
    (src / "t.tif").write_bytes(_save(Image.fromarray(_noise(8, 8)), "TIFF", exif=ex))
    res = runner.invoke(app, ["compress", str(src), "-o", str(tmp_path / "a.vdmc"), "--model", str(tiny_model_dir),
                              "-e", "1", "--json"])
    assert res.exit_code == 0, res.output
    notes = " | ".join(json.loads(res.stdout)["notes"])
    assert "c.jpg: its comment holds a NUL byte" in notes and "a TIFF's own tags" in notes


def test_verbose_lines_stay_one_per_image(tmp_path, tiny_model_dir):
    """-v prints one line per image, also for a file name holding a newline."""
    src = tmp_path / "in"
    _gray(src / "a\nb.png"), _gray(src / "c.png", 1)
    arc = tmp_path / "a.vdmc"
    res = runner.invoke(app, ["compress", str(src), "-o", str(arc), "--model", str(tiny_model_dir), "-e", "1", "-v"])
    assert res.exit_code == 0, res.output
    assert any(line.startswith("a\\nb.png: PNG L") for line in res.stderr.splitlines())
    res = runner.invoke(app, ["decompress", str(arc), "-o", str(tmp_path / "out"), "--model", str(tiny_model_dir), "-v"])
    assert res.exit_code == 0, res.output
    assert sum(line.endswith("bytes") for line in res.stderr.splitlines()) == 2
    assert (tmp_path / "out" / "a\nb.png").exists()


def test_compress_refuses_names_no_file_can_have(tiny_model_dir):
    from vdmcodec.coding.codec import load_codec
    from vdmcodec.errors import VdmcodecError

    for bad in ("a\0b.png", ""):
        with pytest.raises(VdmcodecError, match="without NUL"):
            load_codec(tiny_model_dir).compress([np.zeros((4, 4), np.uint8)], names=[bad], classical_only=True)


# ---- command-line conventions ------------------------------------------------------------------
def test_version():
    from vdmcodec import __version__

    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.stdout.strip() == f"vdmcodec {__version__}"


def test_quiet_prints_nothing_and_json_is_one_document(tmp_path, tiny_model_dir):
    src = _gray(tmp_path / "g.png")
    arc = tmp_path / "a.vdmc"
    res = runner.invoke(app, ["compress", str(src), "-o", str(arc), "--model", str(tiny_model_dir), "-q"])
    assert res.exit_code == 0 and res.stdout == "" and res.stderr == ""
    res = runner.invoke(app, ["decompress", str(arc), "-o", str(tmp_path / "out"), "--model", str(tiny_model_dir), "-q"])
    assert res.exit_code == 0 and res.stdout == "" and res.stderr == ""
    res = runner.invoke(app, ["compress", str(src), "-o", str(arc), "--model", str(tiny_model_dir), "--json", "--force"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)  # the whole of stdout
    assert doc["output"] == str(arc) and doc["files"][0]["method"] in ("png", "webp", "jxl", "ctx", "vdm", "tiled")
    if doc["files"][0]["method"] in ("png", "webp", "jxl"):
        assert "model" not in doc and "arithmetic" not in doc
        assert any("no image was coded by the model" in n for n in doc["notes"])
    res = runner.invoke(app, ["compress", str(src), "-o", str(arc), "--model", str(tiny_model_dir), "--force", "-v"])
    assert res.exit_code == 0 and "g.png: PNG L, 1 frame" in res.stderr


def test_stdin_and_stdout(tmp_path, tiny_model_dir):
    data = _inputs()["rgba.png"]
    res = runner.invoke(app, ["compress", "-", "-o", "-", "--model", str(tiny_model_dir)], input=data)
    assert res.exit_code == 0, res.output
    blob = res.stdout_bytes
    assert blob[:4] == b"VDMC" and "input files: " + str(len(data)) + " bytes" in res.stderr
    assert not (tmp_path / "-").exists()
    res = runner.invoke(app, ["decompress", "-", "-o", "-", "--model", str(tiny_model_dir)], input=blob)
    assert res.exit_code == 0, res.output
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(res.stdout_bytes))), np.asarray(Image.open(io.BytesIO(data))))
    res = runner.invoke(app, ["compress", "-", "-o", "-", "--json", "--model", str(tiny_model_dir)], input=data)
    _one_line_error(res)
    # -o - writes one image: an archive of two is refused before decoding
    d = tmp_path / "two"
    _gray(d / "a.png"), _gray(d / "b.png", 1)
    arc = tmp_path / "two.vdmc"
    assert runner.invoke(app, ["compress", str(d), "-o", str(arc), "--model", str(tiny_model_dir)]).exit_code == 0
    res = runner.invoke(app, ["decompress", str(arc), "-o", "-", "--model", str(tiny_model_dir)])
    _one_line_error(res)
    assert res.stdout_bytes == b""


def test_stdout_writes_every_byte_or_fails():
    """A buffered write may take fewer bytes than it is given (a pipe whose reader left
    mid-write): write_all writes the rest, and a reader that is gone ends in an error, never
    in a truncated output with exit status 0."""
    from cli.coding import write_all

    class Partial(io.BytesIO):  # takes at most 7 bytes per call
        def write(self, b):
            return super().write(bytes(b[:7]))

    class Gone(io.BytesIO):  # takes 10 bytes, then the reader is gone
        def write(self, b):
            if self.tell() >= 10:
                raise BrokenPipeError(32, "Broken pipe")
            return super().write(bytes(b[:10]))

    data = bytes(range(256)) * 3
    out = Partial()
    write_all(out, data)
    assert out.getvalue() == data
    with pytest.raises(BrokenPipeError):
        write_all(Gone(), data)


@pytest.mark.parametrize("closed", ["stdin", "stdout"])
def test_closed_standard_streams_are_one_line_errors(tmp_path, tiny_model_dir, closed):
    """A process started with standard input or output closed (Python's sys.stdin / stdout
    are then None) refuses - in one line, not with an internal error."""
    import subprocess
    import sys

    src = _gray(tmp_path / "g.png")
    args = ["-", "-o", str(tmp_path / "x.vdmc")] if closed == "stdin" else [str(src), "-o", "-"]
    redirect = "<&-" if closed == "stdin" else ">&-"
    cmd = " ".join([sys.executable, "-m", "cli.main", "compress", *args, "--model", str(tiny_model_dir), redirect])
    out = {"stdout": subprocess.PIPE} if closed == "stdin" else {}  # (bash closes it otherwise)
    res = subprocess.run(["bash", "-c", cmd], stderr=subprocess.PIPE, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1], **out)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert lines == [f"error: standard {closed[3:]}put is closed"], res.stderr
    assert not (tmp_path / "x.vdmc").exists()


@pytest.mark.parametrize("kind", ["symlink", "fifo", "folder"])
def test_output_never_replaces_a_link_special_file_or_folder(tmp_path, tiny_model_dir, kind):
    import os
    import stat

    src = _gray(tmp_path / "g.png")
    target = tmp_path / "real.vdmc"
    target.write_bytes(b"keep")
    out = tmp_path / "out.vdmc"
    if kind == "symlink":
        out.symlink_to(target)
    elif kind == "fifo":
        os.mkfifo(out)
    else:
        out.mkdir()
    res = runner.invoke(app, ["compress", str(src), "-o", str(out), "--model", str(tiny_model_dir), "--force"])
    _one_line_error(res)
    want = {"symlink": "is a symbolic link", "fifo": "is not a regular file", "folder": "is a folder"}[kind]
    assert want in res.stderr and "exists" not in res.stderr
    assert target.read_bytes() == b"keep"
    if kind == "symlink":
        assert out.is_symlink()
    elif kind == "fifo":
        assert stat.S_ISFIFO(os.lstat(out).st_mode)
    # the same for decompress's targets
    arc = tmp_path / "a.vdmc"
    assert runner.invoke(app, ["compress", str(src), "-o", str(arc), "--model", str(tiny_model_dir)]).exit_code == 0
    folder = tmp_path / "restore"
    folder.mkdir()
    if kind == "symlink":
        (folder / "g.png").symlink_to(target)
    elif kind == "fifo":
        os.mkfifo(folder / "g.png")
    else:
        (folder / "g.png").mkdir()
    res = runner.invoke(app, ["decompress", str(arc), "-o", str(folder), "--model", str(tiny_model_dir), "--force"])
    _one_line_error(res)
    assert target.read_bytes() == b"keep"


def test_summary_compares_with_the_input_files_bytes(tmp_path, tiny_model_dir):
    jpg = tmp_path / "p.jpg"
    Image.fromarray(_noise(64, 64)).save(jpg, quality=75)
    arc = tmp_path / "a.vdmc"
    res = runner.invoke(app, ["compress", str(jpg), "-o", str(arc), "--model", str(tiny_model_dir)])
    assert res.exit_code == 0, res.output
    size, blob = jpg.stat().st_size, arc.stat().st_size
    assert f"input files: {size} bytes, 1 JPEG" in res.stdout
    ratio = size / blob
    assert (f"{ratio:.2f}x smaller" if ratio >= 1 else f"{1 / ratio:.2f}x larger") in res.stdout
    assert "a JPEG's decoded pixels are kept" in res.stderr


def test_write_errors_name_the_target_not_a_temporary_file(tmp_path, monkeypatch):
    import os
    import tempfile

    from vdmcodec import files

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied", str(tmp_path / ".vdmc.abc123.tmp"))

    monkeypatch.delattr(os, "O_TMPFILE", raising=False)
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    target = tmp_path / "x.vdmc"
    for write in (lambda: files.atomic_write_bytes(target, b"x"), lambda: files.write_files([(target, b"x")])):
        with pytest.raises(PermissionError) as e:
            write()
        assert e.value.filename == str(target)


def test_no_progress_bar_for_nothing():
    from vdmcodec.coding.archive import _bar

    assert _bar(True, 0, "compress") is None


def test_eval_of_colour_images_with_a_gray_model_is_one_line(tmp_path, tiny_model_dir):
    Image.fromarray(_noise(8, 8, 3)).save(tmp_path / "c.png")
    res = runner.invoke(app, ["eval", "--data", str(tmp_path / "c.png"), "--model", str(tiny_model_dir)])
    _one_line_error(res)
    assert "RGB image" in res.stderr and "grayscale" in res.stderr and "internal error" not in res.stderr
