"""vdmcodec.bench and `vdmcodec bench`: every measured codec round-trips, sizes add up, and
the command prints its table and one JSON object; tiny images and the untrained tiny model."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cli.main import app
from vdmcodec import bench
from vdmcodec.coding import classical
from vdmcodec.coding.codec import load_codec
from vdmcodec.coding.container import unpack

runner = CliRunner()


def tiny_images(seed: int = 0) -> list[np.ndarray]:
    """A random RGB image (the gray model cannot code it: its classical bytes seed the
    chain) and a few small gray images with some structure."""
    rng = np.random.default_rng(seed)
    gray = []
    for k in range(3):
        im = np.zeros((9, 11, 1), np.uint8)
        im[2:7, 3 + k : 8] = rng.integers(120, 256, (5, 5 - k, 1), dtype=np.uint8)
        gray.append(im)
    return [rng.integers(0, 256, (34, 34, 3), dtype=np.uint8)] + gray


@pytest.fixture(scope="module")
def codec(tiny_model_dir):
    return load_codec(tiny_model_dir, steps=2)


def test_classical_rows_round_trip_and_add_up():
    images = tiny_images()
    dims = sum(im.size for im in images)
    rows, skipped = bench.measure_classical(images)
    names = {r["method"] for r in rows}
    assert {"PNG", "lzma", "bzip2"} <= names
    assert names | set(skipped) >= {"PNG", "WebP lossless", "JPEG-LS", "JPEG 2000", "JPEG XL", "lzma", "bzip2"}
    for r in rows:
        assert r["roundtrip"] is True, r["method"]
        assert r["bytes"] > 0 and r["bpd"] == pytest.approx(8 * r["bytes"] / dims)
        assert r["encode_s"] >= 0 and r["decode_s"] >= 0
        if "image_bytes" in r:  # per-image codecs: one file per image
            assert len(r["image_bytes"]) == len(images) and sum(r["image_bytes"]) == r["bytes"]
    png = next(r for r in rows if r["method"] == "PNG")
    assert png["image_bytes"] == [len(classical.encode(im, "png")) for im in images]
    # the random RGB image is incompressible: no codec gets far below 8 bpd on it alone
    for c in bench.image_codecs()[0]:
        assert 8 * len(c.encode(images[0])) / images[0].size > 7.5, c.name


def test_a_codec_that_loses_information_is_caught():
    lossy = bench.ImageCodec("lossy", "drops the low bit", lambda p: (p >> 1).tobytes(),
                             lambda b, s: (np.frombuffer(b, np.uint8).reshape(s) << 1))
    row = bench.measure_image_codec(lossy, tiny_images())
    assert row["roundtrip"] is False


def test_vdmcodec_rows(codec):
    images = tiny_images()
    dims = sum(im.size for im in images)
    res = bench.measure_archive(codec, images, steps=2)
    m, fb = res["model"], res["fallback"]
    assert m["roundtrip"] is True and fb["roundtrip"] is True
    assert m["model_images"] >= 1 and m["model_images"] + m["classical_images"] == len(images)
    assert m["bpd"] == pytest.approx(8 * m["bytes"] / dims)
    assert m["chain_bpd"] > 0
    assert m["network_calls"] >= 2 and 0 < m["network_encode_s"] <= m["encode_s"]
    assert 0 < m["network_decode_s"] <= m["decode_s"]
    # the fallback is exactly what compress writes all-classical
    assert fb["bytes"] == len(codec.compress(images, steps=2, classical_only=True))
    assert unpack(codec.compress(images, steps=2, classical_only=True))[0].model is None
    # the timer counts only inside its block
    with bench.network_timer(codec, 2) as clock:
        pass
    codec.compress(images, steps=2, force_model=True)
    assert clock.calls == 0 and clock.seconds == 0.0

    single = bench.measure_single_files(codec, images, steps=2)
    assert single["roundtrip"] is True and len(single["image_methods"]) == len(images)
    assert single["classical_images"] == sum(mt != "vdm" for mt in single["image_methods"])
    assert single["bytes"] == sum(single["image_bytes"])

    elbo = bench.measure_elbo(codec, images, steps=2)
    assert elbo["images"] == 3  # the gray ones only
    assert np.isfinite(elbo["bpd_discrete"]) and elbo["bpd_discrete_se"] >= 0


def test_compare_table_and_speed(codec):
    res = bench.compare(codec, tiny_images(), steps=2)
    assert res["roundtrip_all"] and res["images"] == 4 and res["steps"] == 2
    table = "\n".join(bench.format_table(res))
    for name in ("vdmcodec archive (model-coded)", "vdmcodec single-image files", "-ELBO", "PNG", "lzma"):
        assert name in table
    speed = bench.speed_summary(res, load_s=0.1)
    assert speed["compress_img_s"] > 0 and speed["decompress_img_s"] > 0
    assert speed["network_share"] + speed["classical_share"] + speed["coder_share"] == pytest.approx(1.0)
    assert "network" in "\n".join(bench.format_speed(speed))
    json.dumps(res)  # JSON-ready


def test_bench_help():
    res = runner.invoke(app, ["bench", "--help"])
    assert res.exit_code == 0
    assert "--data" in res.output and "--steps" in res.output and "--json" in res.output


def test_bench_cli_json_on_folder(tmp_path, tiny_model_dir):
    for k, im in enumerate(tiny_images(1)):
        Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im).save(tmp_path / f"{k}.png")
    res = runner.invoke(app, ["bench", "--data", str(tmp_path), "--model", str(tiny_model_dir), "--steps", "2",
                              "--json", "--no-progress"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert {"model", "steps", "images", "subpixels", "rows", "elbo", "skipped", "speed", "roundtrip_all"} <= set(out)
    assert out["images"] == 4 and out["steps"] == 2 and out["roundtrip_all"] is True
    methods = [r["method"] for r in out["rows"]]
    assert methods[:3] == ["vdmcodec archive (model-coded)", "vdmcodec archive (all classical)", "vdmcodec single-image files"]
    assert "| PNG |" in res.stdout
    for r in out["rows"]:
        assert {"method", "bytes", "bpd", "roundtrip"} <= set(r)


def test_bench_cli_errors_are_one_line(tmp_path, tiny_model_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    for args in (["bench", "--data", str(empty), "--model", str(tiny_model_dir)],
                 ["bench", "--data", "/nonexistent/x.png", "--model", str(tiny_model_dir)],
                 ["bench", "--data", str(tmp_path), "--model", "/nonexistent-model"]):
        res = runner.invoke(app, args)
        assert res.exit_code != 0
        err = res.stderr.strip()
        assert err.startswith("error:") and "\n" not in err, err


def test_bench_without_imagecodecs(monkeypatch, tmp_path, tiny_model_dir):
    """imagecodecs is an extra: without it the codecs it provides are skipped with a note."""
    import builtins

    real_import = builtins.__import__

    def no_imagecodecs(name, *args, **kwargs):
        if name == "imagecodecs" or name.startswith("imagecodecs."):
            raise ImportError("No module named 'imagecodecs'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_imagecodecs)
    codecs, skipped = bench.image_codecs()
    assert {"JPEG-LS", "JPEG 2000", "JPEG XL"} <= set(skipped)
    assert all("imagecodecs" in why for why in skipped.values())
    assert "PNG" in [c.name for c in codecs]
    Image.fromarray(tiny_images()[1][..., 0]).save(tmp_path / "a.png")
    res = runner.invoke(app, ["bench", "--data", str(tmp_path / "a.png"), "--model", str(tiny_model_dir), "--steps", "2", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "skipped: imagecodecs is not installed" in res.stdout
