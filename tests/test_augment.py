"""Training-crop augmentations (vdmcodec/training/augment.py): the colour arithmetic, the
structure they leave in the crops, determinism, and that the trainer applies them."""
import json
from dataclasses import replace

import numpy as np
import pytest

from tests.helpers import tiny_model_config
from vdmcodec.errors import DataError
from vdmcodec.training.augment import (AugmentConfig, Augmenter, _upsample_axis, gray_rgb, subsample_chroma,
                                       ycbcr_matrix)
from vdmcodec.training.config import RunConfig, TrainConfig, load_config


def smooth_rgb(h=32, w=32, seed=0):
    """A colourful image with gentle gradients plus noise, uint8 [h, w, 3]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([200 * yy + 30, 180 * xx + 40, 120 * (1 - yy) * xx + 60], -1)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).round().astype(np.uint8)


def block_dev(c, fy, fx):
    H, W = c.shape
    b = c.reshape(H // fy, fy, W // fx, fx)
    return float(np.abs(b - b.mean(axis=(1, 3), keepdims=True)).mean())


@pytest.mark.parametrize("kind", ["jfif", "bt601", "bt709"])
def test_ycbcr_matrices(kind):
    m, off = ycbcr_matrix(kind)
    white, black = m @ [255.0, 255, 255] + off, m @ [0.0, 0, 0] + off
    lo, hi = (0, 255) if kind == "jfif" else (16, 235)
    np.testing.assert_allclose(white, [hi, 128, 128], atol=1e-9)
    np.testing.assert_allclose(black, [lo, 128, 128], atol=1e-9)
    # pure blue / red reach the chroma extremes: 128 + 255 / 2 (full range), 240 (studio range)
    top = 255.5 if kind == "jfif" else 240
    np.testing.assert_allclose((m @ [0.0, 0, 255] + off)[1], top, atol=1e-9)
    np.testing.assert_allclose((m @ [255.0, 0, 0] + off)[2], top, atol=1e-9)


def test_fancy_upsampling_of_a_ramp_is_a_ramp():
    c = np.arange(6, dtype=np.float64)
    up = _upsample_axis(c, 0, "linear")
    np.testing.assert_allclose(np.diff(up[1:-1]), 0.5)  # interior: slope halves, no steps
    assert up[0] == 0 and up[-1] == 5                   # clamped edges
    np.testing.assert_array_equal(_upsample_axis(c, 0, "replicate"), np.repeat(c, 2))


@pytest.mark.parametrize("factors", [(2, 2), (1, 2)])
def test_subsampled_chroma_is_flat_over_blocks_and_luma_kept(factors):
    x = smooth_rgb()
    m, off = ycbcr_matrix("jfif")
    y = subsample_chroma(x, factors, "replicate", "jfif")
    c_in, c_out = x.astype(float) @ m.T + off, y.astype(float) @ m.T + off
    for ch in (1, 2):  # only RGB rounding is left inside a block
        assert block_dev(c_out[..., ch], *factors) < 0.2 < 2 < block_dev(c_in[..., ch], *factors)
    assert np.abs(c_out[..., 0] - c_in[..., 0]).max() < 1.5
    assert not np.array_equal(subsample_chroma(x, factors, "linear", "bt709"), y)


def test_gray_rgb():
    g = gray_rgb(smooth_rgb())
    assert g.dtype == np.uint8 and (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all()
    assert g.std() > 10


def test_augmenter_shares_determinism_and_channels():
    batch = np.stack([smooth_rgb(16, 16, s) for s in range(200)])
    aug = Augmenter(AugmentConfig(chroma_subsampling=0.3, grayscale=0.2), seed=1)
    out = aug(batch, step=5)
    np.testing.assert_array_equal(out, aug(batch, step=5))   # (seed, step, rank) fix the draws
    assert not np.array_equal(out, aug(batch, step=6))
    assert not np.array_equal(out, aug(batch, step=5, rank=1))
    gray = np.array([(o[..., 0] == o[..., 1]).all() and (o[..., 1] == o[..., 2]).all() for o in out])
    changed = np.array([not np.array_equal(o, b) for o, b in zip(out, batch)])
    assert 20 <= gray.sum() <= 60 and 40 <= (changed & ~gray).sum() <= 80   # about 40 and 60 of 200
    mono = batch[..., :1]
    assert aug(mono, step=5) is mono                                      # only RGB crops are touched
    assert Augmenter(AugmentConfig(), seed=1)(batch, step=5) is batch


@pytest.mark.parametrize("share", [0.0, 1 / 3, 1.0])
def test_augmenter_chroma_422_share(share, monkeypatch):
    """chroma_422 is the share of the subsampled crops that are 4:2:2 (factors (1, 2)); the
    rest are 4:2:0."""
    import vdmcodec.training.augment as augment

    factors = []
    real = augment.subsample_chroma
    monkeypatch.setattr(augment, "subsample_chroma", lambda x, f, *a: factors.append(f) or real(x, f, *a))
    batch = np.stack([smooth_rgb(16, 16, s) for s in range(120)])
    Augmenter(AugmentConfig(chroma_subsampling=1.0, chroma_422=share), seed=3)(batch, step=0)
    assert len(factors) == 120 and set(factors) <= {(1, 2), (2, 2)}
    n422 = factors.count((1, 2))
    if share in (0.0, 1.0):
        assert n422 == round(share * 120)
    else:
        assert 25 <= n422 <= 55   # about 40 of 120


def test_augment_config_in_run_config(tmp_path):
    cfg = RunConfig(model=tiny_model_config(image_channels=3),
                    train=TrainConfig(augment=AugmentConfig(chroma_subsampling=0.25, grayscale=0.1)))
    p = tmp_path / "cfg.json"
    p.write_text(json.dumps(cfg.to_dict()))
    assert load_config(p) == cfg
    for bad, msg in [({"grayscale": 1.5}, r"grayscale must be a probability in \[0, 1\]"),
                     ({"chroma_subsampling": 0.7, "grayscale": 0.5}, "must not exceed 1"),
                     ({"sepia": 0.1}, "unknown train.augment options"), (0.3, "must be a table of options")]:
        p.write_text(json.dumps({"train": {"augment": bad}}))
        with pytest.raises(DataError, match=msg) as e:
            load_config(p)
        assert "\n" not in str(e.value)


def test_trainer_feeds_augmented_crops(tmp_path):
    from PIL import Image

    from vdmcodec.training.trainer import DataSpec, Trainer

    folder = tmp_path / "rgb"
    folder.mkdir()
    for k in range(3):
        Image.fromarray(smooth_rgb(24, 40, k)).save(folder / f"{k}.png")
    train = TrainConfig(batch_size=4, patch_size=16, crop_multiple=8, eval_every=0, ckpt_every=1000, log_every=1000,
                        augment=AugmentConfig(grayscale=1.0))
    trainer = Trainer(RunConfig(model=tiny_model_config(image_channels=3), train=train), tmp_path / "run",
                      DataSpec(folder), progress=False)
    seen = []
    trainer.train_step = lambda x: (seen.append(x.clone()), {"loss_bpd": 0.0})[1]
    trainer.fit(2)
    assert len(seen) == 2 and all(x.shape == (4, 3, 16, 16) for x in seen)
    assert all(bool((x[:, 0] == x[:, 1]).all() and (x[:, 1] == x[:, 2]).all()) for x in seen)
    plain = replace(train, augment=AugmentConfig())
    trainer = Trainer(RunConfig(model=tiny_model_config(image_channels=3), train=plain), tmp_path / "run2",
                      DataSpec(folder), progress=False)
    seen.clear()
    trainer.train_step = lambda x: (seen.append(x.clone()), {"loss_bpd": 0.0})[1]
    trainer.fit(1)
    assert not bool((seen[0][:, 0] == seen[0][:, 1]).all())
