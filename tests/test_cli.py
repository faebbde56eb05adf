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
    res = runner.invoke(app, ["models", "--json"])
    assert res.exit_code == 0
    json.loads(res.stdout)
