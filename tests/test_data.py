"""Readers: IDX, CIFAR, npy/npz, folders; lossless mode conversion or a clear refusal."""
import gzip
import pickle
import struct

import numpy as np
import pytest
from PIL import Image

from vdmcodec.data import load_array, load_items, read_idx
from vdmcodec.errors import DataError


def test_mnist_idx(mnist_path):
    arr = read_idx(mnist_path)
    assert arr.shape == (9000, 28, 28, 1) and arr.dtype == np.uint8


def test_idx_raw_and_truncated(tmp_path):
    imgs = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = struct.pack(">BBBBIII", 0, 0, 8, 3, 2, 3, 4) + imgs.tobytes()
    (tmp_path / "x-idx3-ubyte").write_bytes(raw)
    assert np.array_equal(read_idx(tmp_path / "x-idx3-ubyte")[..., 0], imgs)
    with gzip.open(tmp_path / "y-idx3-ubyte.gz", "wb") as f:
        f.write(raw[:-3])
    with pytest.raises(DataError, match="promises"):
        read_idx(tmp_path / "y-idx3-ubyte.gz")


def test_cifar_batch(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, (5, 3072), dtype=np.uint8)
    with open(tmp_path / "data_batch_1", "wb") as f:
        pickle.dump({b"data": data, b"labels": [0] * 5}, f)
    arr = load_array(tmp_path / "data_batch_1")
    assert arr.shape == (5, 32, 32, 3)
    assert np.array_equal(arr[1, :, :, 0].ravel(), data[1, :1024])


def test_npy_npz(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (4, 6, 5), dtype=np.uint8)
    np.save(tmp_path / "a.npy", a)
    np.savez(tmp_path / "b.npz", imgs=a)
    assert load_array(tmp_path / "a.npy").shape == (4, 6, 5, 1)
    assert np.array_equal(load_array(tmp_path / "b.npz")[..., 0], a)
    np.save(tmp_path / "c.npy", a.astype(np.float32))
    with pytest.raises(DataError, match="uint8"):
        load_array(tmp_path / "c.npy")


def test_folder_modes(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    (tmp_path / "sub").mkdir()
    Image.fromarray(rgb).save(tmp_path / "sub" / "a.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "b.png")
    rgba = np.dstack([rgb, np.full((7, 9), 255, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "c.png")  # opaque alpha: dropped losslessly
    Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=16).save(tmp_path / "d.png")
    items = {it.name: it.pixels for it in load_items([tmp_path])}
    assert set(items) == {"sub/a.png", "b.png", "c.png", "d.png"}
    assert np.array_equal(items["sub/a.png"], rgb)
    assert items["b.png"].shape == (7, 9, 1)
    assert np.array_equal(items["c.png"], rgb)
    assert items["d.png"].shape == (7, 9, 3)


@pytest.mark.parametrize("mode,arr", [
    ("16-bit", np.full((4, 4), 1000, np.uint16)),
    ("RGBA", np.dstack([np.zeros((4, 4, 3), np.uint8), np.full((4, 4), 7, np.uint8)])),
    ("CMYK", None),
])
def test_unsupported_modes_rejected_with_file_name(tmp_path, mode, arr):
    path = tmp_path / ("bad.tif" if mode == "CMYK" else "bad.png")
    img = Image.new("CMYK", (4, 4)) if arr is None else Image.fromarray(arr)
    img.save(path)
    with pytest.raises(DataError, match="bad"):
        load_items([path])


def test_empty_and_missing(tmp_path):
    with pytest.raises(DataError, match="no image files"):
        load_items([tmp_path])
    with pytest.raises(DataError, match="no such file"):
        load_items([tmp_path / "missing.png"])
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="junk.png"):
        load_items([tmp_path / "junk.png"])
