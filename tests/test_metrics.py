"""The Fréchet distance against closed forms, and the MNIST classifier's code path on tiny data."""
from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from vdmcodec.metrics import (ClassifierConfig, GaussianStats, accuracy, extract_features, frechet_distance,
                              gaussian_stats, load_or_train, read_idx_labels, to_input, train_classifier)


pytestmark = pytest.mark.usefixtures("one_thread")


def stats(mu, sigma) -> GaussianStats:
    return GaussianStats(np.asarray(mu, dtype=np.float64), np.atleast_2d(np.asarray(sigma, dtype=np.float64)), 0)


def random_spd(d: int, rng: np.random.Generator) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T + 0.1 * np.eye(d)


# ---- Fréchet distance ------------------------------------------------------------------------
def test_frechet_distance_of_1d_gaussians_is_the_w2_closed_form():
    # W2^2(N(m1, s1^2), N(m2, s2^2)) = (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance(stats([1.0], [[4.0]]), stats([-0.5], [[0.25]])) == pytest.approx(1.5**2 + 1.5**2, rel=1e-12)


def test_frechet_distance_commuting_and_identity_cases():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = rng.uniform(0.2, 2.0, 5), rng.uniform(0.2, 2.0, 5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((s1 - s2) ** 2)             # diagonal covariances
    assert frechet_distance(stats(mu1, np.diag(s1**2)), stats(mu2, np.diag(s2**2))) == pytest.approx(expected, rel=1e-10)
    # rotating both covariances by the same orthogonal matrix changes nothing
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    rotated = frechet_distance(stats(mu1, q @ np.diag(s1**2) @ q.T), stats(mu2, q @ np.diag(s2**2) @ q.T))
    assert rotated == pytest.approx(expected, rel=1e-9)
    sigma = random_spd(5, rng)
    assert abs(frechet_distance(stats(mu1, sigma), stats(mu1, sigma))) < 1e-9


def test_frechet_distance_against_identity_and_symmetry():
    rng = np.random.default_rng(1)
    d = 6
    s2 = random_spd(d, rng)
    mu = rng.normal(size=d)
    lam = np.linalg.eigvalsh(s2)
    expected = mu @ mu + np.sum((1 - np.sqrt(lam)) ** 2)                     # Sigma_1 = I
    assert frechet_distance(stats(np.zeros(d), np.eye(d)), stats(mu, s2)) == pytest.approx(expected, rel=1e-10)
    s1 = random_spd(d, rng)                                                  # does not commute with s2
    assert not np.allclose(s1 @ s2, s2 @ s1)
    ab, ba = frechet_distance(stats(mu, s1), stats(0 * mu, s2)), frechet_distance(stats(0 * mu, s2), stats(mu, s1))
    assert ab == pytest.approx(ba, rel=1e-10) and ab > 0


def test_frechet_distance_from_samples_converges_to_the_closed_form():
    rng = np.random.default_rng(2)
    s1, s2 = np.diag([1.0, 0.25, 4.0]), np.diag([0.5, 1.0, 1.0])
    mu1, mu2 = np.array([0.0, 1.0, 0.0]), np.array([0.5, 0.0, 0.0])
    exact = frechet_distance(stats(mu1, s1), stats(mu2, s2))
    a = gaussian_stats(rng.multivariate_normal(mu1, s1, size=50_000))
    b = gaussian_stats(rng.multivariate_normal(mu2, s2, size=50_000))
    assert a.count == 50_000 and a.sigma.shape == (3, 3)
    assert frechet_distance(a, b) == pytest.approx(exact, rel=0.02)
    # few samples of the same Gaussian: biased upwards
    small = [frechet_distance(gaussian_stats(rng.multivariate_normal(mu1, s1, size=20)), stats(mu1, s1))
             for _ in range(20)]
    assert min(small) > 0


def test_frechet_distance_rejects_bad_input():
    with pytest.raises(ValueError, match="dimensions differ"):
        frechet_distance(stats([0.0], [[1.0]]), stats([0.0, 0.0], np.eye(2)))
    with pytest.raises(ValueError):
        gaussian_stats(np.ones((1, 3)))                                       # one sample has no covariance
    with pytest.raises(ValueError, match="NaN"):
        gaussian_stats(np.array([[0.0, np.nan], [1.0, 2.0]]))


# ---- classifier ------------------------------------------------------------------------------
TINY = ClassifierConfig(channels=(4, 8), features=16, epochs=8, batch_size=10, lr=1e-2, shift=1, seed=3)


def tiny_digits(n: int = 100, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fake 28x28 'digits': class k is a bright 6x6 block at position k on a 5-wide grid, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    images = rng.integers(0, 40, size=(n, 28, 28, 1)).astype(np.uint8)
    for i, k in enumerate(labels):
        r, c = 3 + 12 * (k // 5), 1 + 5 * (k % 5)
        images[i, r:r + 6, c:c + 4] = 255
    return images, labels.astype(np.uint8)


def test_classifier_trains_deterministically_and_gives_features():
    images, labels = tiny_digits()
    rng_state = torch.get_rng_state()
    a = train_classifier(images, labels, TINY)
    assert torch.equal(torch.get_rng_state(), rng_state)                     # the global RNG is not touched
    b = train_classifier(images, labels, TINY)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    feats = extract_features(a, images, batch_size=50)
    assert feats.shape == (len(images), TINY.features) and feats.dtype == np.float64
    assert np.all(feats >= 0)                                                # post-ReLU
    # independent of the batch up to float rounding (oneDNN picks kernels by batch size on some CPUs)
    np.testing.assert_allclose(feats[:7], extract_features(a, images[:7]), rtol=1e-5, atol=1e-5)
    assert accuracy(a, images, labels) > 0.9                                 # learns the easy fake digits
    gaussian_stats(feats)                                                    # and the features feed FID


def test_classifier_is_cached_by_config_and_data(tmp_path):
    images, labels = tiny_digits(40)
    cfg = ClassifierConfig(channels=(2, 2), features=3, epochs=1, batch_size=20)
    model, info = load_or_train(tmp_path, images, labels, cfg)
    assert not info["cached"] and info["train_images"] == 40
    again, info2 = load_or_train(tmp_path, images, labels, cfg)
    assert info2["cached"] and info2["key"] == info["key"]
    np.testing.assert_array_equal(extract_features(model, images), extract_features(again, images))
    _, other = load_or_train(tmp_path, images, (labels + 1) % 10, cfg)      # other data: other key
    assert not other["cached"] and other["key"] != info["key"]


def test_inputs_and_labels_are_checked(tmp_path):
    x = to_input(np.full((2, 28, 28, 1), 255, np.uint8))
    assert x.shape == (2, 1, 28, 28) and x.dtype == torch.float32 and float(x.max()) == 1.0
    with pytest.raises(ValueError, match="uint8"):
        to_input(np.zeros((2, 28, 28), np.float32))
    with pytest.raises(ValueError, match="MNIST-shaped"):
        to_input(np.zeros((2, 32, 32, 1), np.uint8))
    with pytest.raises(ValueError, match="labels"):
        train_classifier(*tiny_digits(10)[:1], np.arange(5), TINY)
    path = tmp_path / "labels-idx1-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + bytes([7, 0, 9]))
    assert read_idx_labels(path).tolist() == [7, 0, 9]
    bad = tmp_path / "bad-idx1-ubyte"
    bad.write_bytes(b"\x00\x00\x08\x03" + bytes(12))
    with pytest.raises(ValueError, match="magic"):
        read_idx_labels(bad)


def test_shared_mnist_labels_read(mnist_path):
    labels = read_idx_labels(mnist_path.parent / "mnist9k-labels-idx1-ubyte.gz")
    assert labels.shape == (9000,) and labels.max() == 9 and labels.min() == 0
