"""CLI: help of every command; bad input gives one line on stderr and a non-zero exit."""
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()


def commands():
    import typer.main

    return sorted(typer.main.get_command(app).commands)


def test_every_command_has_help():
    names = commands()
    assert {"train", "eval", "models"} <= set(names)
    for name in names:
        res = runner.invoke(app, [name, "--help"])
        assert res.exit_code == 0, name
        assert "Usage" in res.output


def _one_line_error(res):
    assert res.exit_code != 0
    err = res.stderr.strip()
    assert err.startswith("error:") and "\n" not in err, err
    assert "Traceback" not in res.output


@pytest.mark.parametrize("args", [
    ["eval", "--data", "/nonexistent/path.png", "--model", "{model}"],
    ["eval", "--data", "{empty}", "--model", "{model}"],
    ["eval", "--data", "{cmyk}", "--model", "{model}"],
    ["eval", "--data", "{img}", "--model", "/nonexistent-model"],
    ["train", "--data", "{empty}", "--out", "{out}"],
    ["train", "--data", "/nonexistent.npy", "--out", "{out}"],
])
def test_bad_input_one_line_error(tmp_path, args, tiny_model_dir):
    empty = tmp_path / "empty"; empty.mkdir()
    cmyk = tmp_path / "c.tif"; Image.new("CMYK", (4, 4)).save(cmyk)
    img = tmp_path / "g.png"; Image.fromarray(np.zeros((5, 5), np.uint8)).save(img)
    fill = {"empty": empty, "cmyk": cmyk, "img": img, "out": tmp_path / "o", "model": tiny_model_dir}
    res = runner.invoke(app, [a.format(**fill) for a in args])
    _one_line_error(res)


def test_eval_json_on_folder(tmp_path, tiny_model_dir):
    rng = np.random.default_rng(0)
    for k in range(3):
        Image.fromarray(rng.integers(0, 256, (12, 10), dtype=np.uint8)).save(tmp_path / f"{k}.png")
    res = runner.invoke(app, ["eval", "--data", str(tmp_path), "--model", str(tiny_model_dir), "--steps", "4", "--json", "--no-progress"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["images"] == 3 and out["steps"] == 4
    assert out["bpd_continuous"] > 0 and out["bpd_discrete"] > 0


def test_models_lists_shipped():
    from vdmcodec.coding.arithmetic import ARITHMETIC

    res = runner.invoke(app, ["models", "--json"])
    assert res.exit_code == 0
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert {"mnist", "natural"} <= set(rows)
    for r in rows.values():  # every shipped card names valid coding defaults (or none: the codec's)
        assert isinstance(r["coding_steps"], int) and r["coding_steps"] >= 1 and r["coding_arithmetic"] in ARITHMETIC
    assert rows["natural"]["coding_steps"] in rows["natural"]["fitted_levels"]  # its default T has fitted times
    assert all(isinstance(r["speed"], dict) for r in rows.values())  # the card's measured speed, or {}
    text = runner.invoke(app, ["models"]).stdout
    assert "fitted levels for T=" in text


def test_fitted_steps_of_a_card():
    from cli.main import fitted_steps

    assert fitted_steps({}) == [] and fitted_steps({"coding_times_more": "bad"}) == []
    assert fitted_steps({"coding_times": [0.0, 0.5, 1.0], "coding_times_more": {"8": {}, "x": {}}}) == [2, 8]


def _digits(tmp_path, n=3):
    rng = np.random.default_rng(1)
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    for k in range(n):
        Image.fromarray(rng.integers(0, 256, (9, 7), dtype=np.uint8)).save(d / ("sub" if k == 0 else ".") / f"{k}.png")
    return d


def test_compress_decompress_info_roundtrip(tmp_path, tiny_model_dir):
    d = _digits(tmp_path)
    arc = tmp_path / "a.vdmc"
    res = runner.invoke(app, ["compress", str(d), "-o", str(arc), "--model", str(tiny_model_dir), "--steps", "2", "--json", "--no-progress"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)  # exactly one JSON document
    assert out["images"] == 3 and out["bytes"] == arc.stat().st_size
    model_coded = any(f["method"] in ("vdm", "tiled", "tiled-gray") for f in out["files"])
    assert ("steps" in out) == ("model" in out) == ("arithmetic" in out) == model_coded  # named only when used
    assert out.get("steps", 2) == 2
    res = runner.invoke(app, ["info", str(arc), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["images"] == 3
    res = runner.invoke(app, ["decompress", str(arc), "-o", str(tmp_path / "out"), "--model", str(tiny_model_dir), "--no-progress"])
    assert res.exit_code == 0, res.output
    for f in d.rglob("*.png"):
        rel = f.relative_to(d)
        assert np.array_equal(np.asarray(Image.open(f)), np.asarray(Image.open(tmp_path / "out" / rel)))
    # existing outputs are refused without --force, and nothing is written
    res = runner.invoke(app, ["decompress", str(arc), "-o", str(tmp_path / "out"), "--model", str(tiny_model_dir)])
    _one_line_error(res)
    res = runner.invoke(app, ["compress", str(d), "-o", str(arc), "--model", str(tiny_model_dir)])
    _one_line_error(res)
    # an input is never overwritten, even with --force
    target = d / "1.png"
    before = target.read_bytes()
    res = runner.invoke(app, ["compress", str(d), "-o", str(target), "--model", str(tiny_model_dir), "--force"])
    _one_line_error(res)
    assert target.read_bytes() == before


def test_compress_arithmetic_option(tmp_path, tiny_model_dir, monkeypatch):
    from vdmcodec.coding.codec import Codec

    used = []
    orig = Codec.compress
    monkeypatch.setattr(Codec, "compress", lambda self, *a, **k: used.append(self.arithmetic) or orig(self, *a, **k))
    d = _digits(tmp_path)
    arc = tmp_path / "a.vdmc"
    res = runner.invoke(app, ["compress", str(d), "-o", str(arc), "--model", str(tiny_model_dir), "--steps", "2",
                              "--arithmetic", "bfloat16-nhwc", "--json", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert used == ["bfloat16-nhwc"] and json.loads(res.stdout).get("arithmetic", "bfloat16-nhwc") == "bfloat16-nhwc"
    res = runner.invoke(app, ["decompress", str(arc), "-o", str(tmp_path / "out"), "--model", str(tiny_model_dir), "--no-progress"])
    assert res.exit_code == 0, res.output
    for f in d.rglob("*.png"):
        assert np.array_equal(np.asarray(Image.open(f)), np.asarray(Image.open(tmp_path / "out" / f.relative_to(d))))
    res = runner.invoke(app, ["compress", str(d), "-o", str(tmp_path / "b.vdmc"), "--model", str(tiny_model_dir),
                              "--arithmetic", "float16"])
    _one_line_error(res)
    assert "arithmetic" in res.output and not (tmp_path / "b.vdmc").exists()


@pytest.mark.parametrize("mangle", ["magic", "truncate", "flip", "empty"])
def test_decompress_bad_archive_one_line(tmp_path, tiny_model_dir, mangle):
    d = _digits(tmp_path, 2)
    arc = tmp_path / "a.vdmc"
    assert runner.invoke(app, ["compress", str(d), "-o", str(arc), "--model", str(tiny_model_dir), "--steps", "2", "--no-progress"]).exit_code == 0
    blob = bytearray(arc.read_bytes())
    if mangle == "magic":
        blob[:4] = b"XXXX"
    elif mangle == "truncate":
        blob = blob[: len(blob) // 2]
    elif mangle == "flip":
        blob[len(blob) // 2] ^= 0x40
    else:
        blob = bytearray()
    arc.write_bytes(bytes(blob))
    res = runner.invoke(app, ["decompress", str(arc), "-o", str(tmp_path / "out"), "--model", str(tiny_model_dir)])
    _one_line_error(res)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    _one_line_error(runner.invoke(app, ["info", str(arc)]))


def test_compress_non_image_and_missing_model(tmp_path, tiny_model_dir):
    junk = tmp_path / "x.png"
    junk.write_text("hello")
    _one_line_error(runner.invoke(app, ["compress", str(junk), "-o", str(tmp_path / "a.vdmc"), "--model", str(tiny_model_dir)]))
    img = tmp_path / "g.png"
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(img)
    _one_line_error(runner.invoke(app, ["compress", str(img), "-o", str(tmp_path / "b.vdmc"), "--model", str(tmp_path / "nomodel")]))
    assert not (tmp_path / "b.vdmc").exists()


@pytest.mark.parametrize("native", [True, False])
def test_decompress_says_when_bfloat16_is_not_native(tmp_path, tiny_model_dir, monkeypatch, native):
    """A model-coded bfloat16 file must decode in bfloat16: where this CPU lacks it natively
    (about 100x slower) decompress says so on stderr, and still decodes."""
    import numpy as np

    from vdmcodec.coding.codec import load_codec

    codec = load_codec(tiny_model_dir, steps=2, arithmetic="bfloat16-nhwc")
    img = np.random.default_rng(0).integers(0, 256, (40, 40, 1), dtype=np.uint8)  # tiled: seeds itself
    arc = tmp_path / "a.vdmc"
    arc.write_bytes(codec.compress([img], force_model=True))
    monkeypatch.setattr("vdmcodec.hardware.native_bf16", lambda device="cpu": native)
    res = runner.invoke(app, ["decompress", str(arc), "-o", str(tmp_path / "out"), "--model", str(tiny_model_dir), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert ("without native bfloat16" in res.stderr) is (not native)


def test_every_shipped_card_names_its_directory():
    """A file records its model's card name and the decoder resolves that name under models/:
    a card whose name differs from its directory would write files nothing can decode."""
    from vdmcodec.zoo import read_card, shipped_models

    dirs = shipped_models()
    assert dirs
    for d in dirs:
        assert read_card(d)["card"]["name"] == d.name, d


@pytest.mark.parametrize("flag, chained", [([], False), (["--no-preflight"], True)])
def test_compress_preflight_skips_the_chain_unless_switched_off(tmp_path, tiny_model_dir, monkeypatch, flag, chained):
    """A flat 256x256 image: a few hundred classical bytes against the untrained model's
    estimate, so the preflight stores it classically without the chain; --no-preflight
    runs the chain (and compress still writes the smaller, classical, file)."""
    from vdmcodec.coding import tiles

    calls = []
    orig = tiles.push_image
    monkeypatch.setattr(tiles, "push_image", lambda *a, **k: calls.append(1) or orig(*a, **k))
    src = tmp_path / "flat.png"
    Image.fromarray(np.full((256, 256), 200, dtype=np.uint8)).save(src)
    arc = tmp_path / "flat.vdmc"
    res = runner.invoke(app, ["compress", str(src), "-o", str(arc), "--model", str(tiny_model_dir), "--steps", "2",
                              "--no-progress", *flag])
    assert res.exit_code == 0, res.output
    assert bool(calls) == chained
    res = runner.invoke(app, ["info", str(arc), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["images"] == 1


def test_effort_sets_what_compress_runs(tmp_path, tiny_model_dir):
    """-e 1 (classical only) writes no model; -e 7 with --steps runs the chain on digits;
    an effort outside 1..9 is refused in one line."""
    from vdmcodec.coding.container import unpack

    rng = np.random.default_rng(3)
    for k in range(4):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / f"{k}.png")
    out = tmp_path / "a.vdmc"
    res = runner.invoke(app, ["compress", str(tmp_path), "-o", str(out), "--model", str(tiny_model_dir), "-e", "1", "-q"])
    assert res.exit_code == 0, res.output
    header = unpack(out.read_bytes())[0]
    assert header.model is None and header.steps == 0
    res = runner.invoke(app, ["compress", str(tmp_path), "-o", str(tmp_path / "b.vdmc"), "--model", str(tiny_model_dir),
                              "-e", "10"])
    assert res.exit_code != 0 and "Traceback" not in res.output
