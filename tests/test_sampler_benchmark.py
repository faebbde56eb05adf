"""The sampler benchmark's bookkeeping (benchmarks/samplers.py) and the library's Gaussian mixture,
on the mixture only: no network, no data, well under a second each."""
from __future__ import annotations

import math

import pytest
import torch

from benchmarks.samplers import (EVALS_PER_STEP, FID_SAMPLERS, SCHEDULE_PROXY, SCHEDULES, BenchConfig, Target,
                                 best_schedules, nfe_of, ode_sweep, run, steps_for)
from vdmcodec.sampling import AdaptiveConfig, GaussianMixture, make_mixture, score_optimal_cost


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def target():
    mixture = make_mixture()
    cost = score_optimal_cost(mixture, (2,), AdaptiveConfig(levels=16, batch=32))
    return Target("mixture", mixture, (2,), 64, cost)


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
def test_nfe_is_counted_and_within_the_budget(target, budget):
    for sampler in FID_SAMPLERS:
        steps = steps_for(sampler, budget)
        nfe = nfe_of(sampler, steps)
        assert nfe <= budget and (EVALS_PER_STEP[sampler] == 2 or nfe == budget)
        # run() checks the denoiser calls against nfe_of (Heun/EDM: 2 per step, 1 for the last)
        x = run(target, sampler, target.sigmas("karras", steps), 6, 0, 4)
        assert x.shape == (6, 2) and torch.all(torch.isfinite(x))
    assert (steps_for("heun", 10), nfe_of("heun", 5)) == (5, 9)


def test_ode_sweep_errors_shrink_and_reference_is_converged(target):
    cfg = BenchConfig(ode_nfe=(5, 20, 80), fid_nfe=(20,), reference_steps=400, mixture_samples=64)
    ode = ode_sweep(target, cfg, samplers=("euler", "heun"), progress=False)
    assert cfg.ode_nfe == (5, 20, 80) and ode["reference"]["nfe"] == 799
    assert len(ode["cells"]) == 2 * len(SCHEDULES) * 3
    for sampler in ("euler", "heun"):
        for schedule in ("karras", "adaptive"):
            errs = [c["rmse"] for c in ode["cells"] if c["sampler"] == sampler and c["schedule"] == schedule]
            assert errs[0] > errs[1] > errs[2]
    worst_80 = max(c["rmse"] for c in ode["cells"] if c["target"] == 80)
    assert ode["reference"]["half_steps_rmse"] < worst_80 / 10


def test_best_schedules_follow_the_proxy_sampler():
    cells = [{"sampler": s, "schedule": sch, "target": n, "rmse": r}
             for s, sch, n, r in [("euler", "karras", 10, 0.2), ("euler", "model", 10, 0.1),
                                  ("heun", "karras", 10, 0.05), ("heun", "adaptive", 10, 0.3),
                                  ("dpmpp-2m", "loglinear", 10, 0.01), ("dpmpp-2m", "karras", 10, math.inf)]]
    best = best_schedules({"cells": cells}, (10,))
    assert best == {(s, 10): {"euler": "model", "heun": "karras", "dpmpp-2m": "loglinear"}[p]
                    for s, p in SCHEDULE_PROXY.items()}


def test_fid_budgets_are_part_of_the_ode_sweep():
    cfg = BenchConfig(ode_nfe=(5,), fid_nfe=(10, 35))
    assert cfg.ode_nfe == (5, 10, 35)
    with pytest.raises(ValueError):
        BenchConfig(fid_samples=1)
