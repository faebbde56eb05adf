"""experiments/jpeg_lattice.py finds the DCT quantisation lattice of a decoded JPEG at its own
block phase, and none in an image that never went through JPEG."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from experiments.jpeg_lattice import analyse, dct_matrix, main


def textured(h=96, w=128, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = 128 + 60 * np.sin(x / 5.0) * np.cos(y / 7.0)
    return np.clip(np.stack([base, base * 0.8 + 20, 255 - base], -1) + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)


def decoded_jpeg(im: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(im).save(buf, format="JPEG", quality=quality, subsampling=0)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def test_dct_matrix_is_orthonormal():
    d = dct_matrix()
    np.testing.assert_allclose(d @ d.T, np.eye(8), atol=1e-12)


def test_decoded_jpeg_shows_its_lattice_and_a_raw_image_does_not():
    raw = textured()
    jpeg = analyse(decoded_jpeg(raw, 50))
    plain = analyse(raw)
    ok = [c for c in jpeg if c["q"] is not None and c["shifted"] is not None]
    assert len(ok) >= 4
    assert np.mean([c["aligned"] for c in ok]) < 0.12 < 0.2 < np.mean([c["shifted"] for c in ok])
    rough = [c for c in plain if c["q"] is not None]
    assert np.mean([c["aligned"] for c in rough]) > 0.2


def test_jpeg_lattice_script_writes_its_table(tmp_path, monkeypatch):
    d = tmp_path / "CSetX"
    d.mkdir()
    Image.fromarray(decoded_jpeg(textured(), 50)).save(d / "j.png")
    Image.fromarray(textured(seed=1)).save(d / "raw.png")
    import experiments.jpeg_lattice as jl

    monkeypatch.setattr(jl, "DATA", tmp_path)
    main(["--sets", "CSetX", "--out", str(tmp_path / "jl.md")])
    text = (tmp_path / "jl.md").read_text()
    assert "| CSetX/j.png |" in text and "| CSetX/raw.png |" in text
