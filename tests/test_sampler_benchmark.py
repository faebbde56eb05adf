"""The sampler benchmark's bookkeeping (benchmarks/samplers.py) and the library's Gaussian mixture,
on the mixture only: no network, no data, about a second each."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.samplers import FID_SAMPLERS, load_cells, poly_kid, run, save_cell
from vdmcodec.sampling import GaussianMixture, evaluations, karras_sigmas, make_mixture, steps_for

pytestmark = pytest.mark.usefixtures("one_thread")


def test_mixture_denoiser_is_the_posterior_mean():
    one = GaussianMixture([[0.5, -1.0]], [0.3], [1.0])
    x = torch.tensor([[2.0, 0.0], [-1.0, 3.0]], dtype=torch.float64)
    sigma = torch.tensor([0.4, 2.0], dtype=torch.float64)
    shrink = (0.09 / (0.09 + sigma**2))[:, None]                         # s^2 / (s^2 + sigma^2)
    expected = one.means + shrink * (x - one.means)
    torch.testing.assert_close(one(x, sigma), expected, rtol=1e-12, atol=1e-12)
    mixture = make_mixture()
    far = mixture(torch.tensor([[1.2, 0.6]], dtype=torch.float64), torch.tensor([1e-4], dtype=torch.float64))
    torch.testing.assert_close(far, torch.tensor([[1.2, 0.6]], dtype=torch.float64), rtol=0, atol=1e-6)  # sigma -> 0
    big = mixture(torch.zeros(1, 2, dtype=torch.float64), torch.tensor([1e4], dtype=torch.float64))
    mean = (mixture.log_w.exp()[:, None] * mixture.means).sum(0)          # sigma -> inf: the data mean
    torch.testing.assert_close(big[0], mean, rtol=0, atol=1e-6)
    samples = mixture.sample(4000, torch.Generator().manual_seed(0))
    assert samples.shape == (4000, 2) and float((samples.mean(0) - mean).abs().max()) < 0.05


@pytest.mark.parametrize("budget", [1, 5, 10, 35])
def test_evaluations_are_counted_and_within_the_budget(budget):
    mixture = make_mixture()
    for sampler in FID_SAMPLERS:
        steps = steps_for(sampler, budget)
        nfe = evaluations(sampler, steps)
        assert nfe <= budget and (nfe == budget or nfe == budget - 1)
        # run() checks the denoiser calls against evaluations() (two-evaluation samplers: 1 on the last step)
        x = run(mixture, sampler, karras_sigmas(steps, mixture.sigma_min, mixture.sigma_max), (2,), 6, batch_size=4)
        assert x.shape == (6, 2) and torch.all(torch.isfinite(x))
    assert (steps_for("heun", 10), evaluations("heun", 5), evaluations("dpmpp-2s-ancestral", 3)) == (5, 9, 5)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(600, 8)), rng.normal(size=(600, 8))
    same, same_sd = poly_kid(a, b, subsets=20, size=300)
    shifted, _ = poly_kid(a, b + 0.5, subsets=20, size=300)
    assert abs(same) < 3 * same_sd / np.sqrt(20) + 1e-3          # unbiased: zero within its noise
    assert shifted > 20 * max(same_sd, 1e-4)


def test_cells_resume(tmp_path):
    path = tmp_path / "cells.json"
    assert load_cells(path) == {}
    save_cell(path, "a/1", {"x": 1.5})
    save_cell(path, "b/2", {"y": [1, 2]})
    assert load_cells(path) == {"a/1": {"x": 1.5}, "b/2": {"y": [1, 2]}}
    path.write_text("{broken")
    assert load_cells(path) == {}                               # a damaged file restarts, never crashes
