"""Laws of the sampler set, checked against a Gaussian mixture with a closed-form denoiser.

The data distribution is a 2-D mixture sum_k w_k N(mu_k, s_k^2 I); its noisy marginal at
level sigma is sum_k w_k N(mu_k, (s_k^2 + sigma^2) I), so the exact denoiser is the posterior
mean D(x, sigma) = sum_k r_k(x) (mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k)), with r_k the
posterior component probabilities. It is wrapped in the same contract as a VDM.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from vdmcodec.diffusion import VDM, ModelConfig
from vdmcodec.networks import NetworkConfig
from vdmcodec.sampling.mixture import GaussianMixture, make_mixture  # noqa: F401  (GaussianMixture: used by tests below)
from vdmcodec.sampling import (SAMPLERS, SCHEDULES, AdaptiveConfig, BrownianNoise, NoiseSource, ScoreOptimalCost,
                               VDMDenoiser, adaptive_sigmas, generate, get_sampler, image_grid, karras_sigmas,
                               loglinear_sigmas, make_sigmas, model_sigmas, respace, sample_ancestral, sample_ddim,
                               sample_euler, sample_heun, score_optimal_cost, steps_for, to_pixels, vp_sigmas)
from vdmcodec.schedules import alpha_sigma
from vdmcodec.zoo import save_model


def sliced_w1(a: torch.Tensor, b: torch.Tensor, n_dir: int = 64) -> float:
    """Sliced 1-Wasserstein distance between 2-D samples (quantile matching per direction)."""
    angles = torch.arange(n_dir, dtype=torch.float64) * math.pi / n_dir
    dirs = torch.stack([angles.cos(), angles.sin()], 1)
    pa, pb = (a @ dirs.T).sort(0).values, (b @ dirs.T).sort(0).values
    q = (torch.arange(a.shape[0], dtype=torch.float64) + 0.5) / a.shape[0]
    return float((pa - pb[(q * b.shape[0]).long().clamp(max=b.shape[0] - 1)]).abs().mean())


def run(denoiser, sampler, sigmas, count=256, seed=0, **options):
    return generate(denoiser, sampler, sigmas, (2,), count=count, seed=seed, batch_size=count, options=options)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mixture():
    return make_mixture()


@pytest.fixture(scope="module")
def reference(mixture):
    """High-step solution of the probability-flow ODE for 256 fixed noises (4096 steps of the
    fourth-order lms: its error, ~1e-10, is far below every error measured against it)."""
    return run(mixture, "lms", karras_sigmas(4096, mixture.sigma_min, mixture.sigma_max))


@pytest.fixture(scope="module")
def target(mixture):
    return mixture.sample(20000, torch.Generator().manual_seed(123))


# ---- convergence order ------------------------------------------------------------------
ORDERS = [("euler", {}, 1.0), ("heun", {}, 2.0), ("dpmpp-2m", {}, 2.0), ("ddim", {"eta": 0.0}, 1.0),
          ("dpmpp-2s-ancestral", {"eta": 0.0}, 2.0), ("dpmpp-2m-sde", {"eta": 0.0, "solver_type": "heun"}, 2.0),
          ("unipc", {"order": 2}, 3.0),   # UniP-2 plus the corrector UniC: one order more
          ("lms", {"order": 4}, 4.0),
          ("ipndm", {"order": 4}, 2.0)]   # fixed coefficients on varying steps: second order (docstring)
TOLERANCE = 0.25  # on the fitted slope of log(error) vs log(steps)


@pytest.mark.parametrize("name,options,order", ORDERS, ids=[f"{o[0]}-{o[2]:g}" for o in ORDERS])
def test_deterministic_samplers_converge_at_their_order(mixture, reference, name, options, order):
    # Error = median over 256 samples of |x_N - x_ref|: the median is robust to the rare
    # trajectory that starts next to a boundary between two modes and flips mode at coarse
    # steps; in this range the local slopes are already within 0.1 of the order (lms: from 64 steps).
    steps = [64, 128, 256] if order == 4 else [32, 64, 128, 256]
    errors = []
    for n in steps:
        x = run(mixture, name, karras_sigmas(n, mixture.sigma_min, mixture.sigma_max), **options)
        errors.append(float((x - reference).square().sum(1).sqrt().median()))
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert abs(slope - order) < TOLERANCE, (name, slope, errors)


def test_ddim_eta0_is_euler(mixture):
    sigmas = karras_sigmas(20, mixture.sigma_min, mixture.sigma_max)
    a, b = run(mixture, "ddim", sigmas, eta=0.0), run(mixture, "euler", sigmas)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_k_diffusion_samplers_reduce_to_their_relatives(mixture):
    sigmas = karras_sigmas(20, mixture.sigma_min, mixture.sigma_max)
    torch.testing.assert_close(run(mixture, "euler-ancestral", sigmas, eta=1.0),
                               run(mixture, "ancestral", sigmas, variance="small"), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(run(mixture, "euler-ancestral", sigmas, eta=0.0), run(mixture, "euler", sigmas),
                               rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(run(mixture, "dpmpp-2m-sde", sigmas, eta=0.0), run(mixture, "dpmpp-2m", sigmas),
                               rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(run(mixture, "unipc", sigmas, corrector=False), run(mixture, "dpmpp-2m", sigmas),
                               rtol=1e-10, atol=1e-10)   # UniP-2 (bh2, rho = 1/2) is DPM-Solver++(2M)
    torch.testing.assert_close(run(mixture, "lms", sigmas, order=1), run(mixture, "euler", sigmas),
                               rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(run(mixture, "ipndm", sigmas, order=1), run(mixture, "euler", sigmas),
                               rtol=1e-10, atol=1e-10)


def test_ddim_eta1_is_ancestral_small(mixture):
    sigmas = karras_sigmas(20, mixture.sigma_min, mixture.sigma_max)
    a, b = run(mixture, "ddim", sigmas, eta=1.0), run(mixture, "ancestral", sigmas, variance="small")
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


# ---- distribution ------------------------------------------------------------------------
DIST_BOUND = 0.05  # sliced W1 to the mixture; two exact 2000-sample sets are ~0.01 apart
DIST_CASES = [
    ("euler", {}), ("heun", {}), ("dpmpp-2m", {}), ("ddim", {"eta": 0.0}), ("ddim", {"eta": 0.5}),
    ("ddim", {"eta": 1.0}), ("ancestral", {"variance": "small"}), ("ancestral", {"variance": "large"}),
    ("ancestral", {"variance": "learned"}),
    ("edm", {"S_churn": 40.0, "S_tmin": 0.05, "S_tmax": 50.0, "S_noise": 1.003}),
    ("euler-ancestral", {}), ("dpmpp-2s-ancestral", {}), ("dpmpp-2m-sde", {}), ("dpmpp-3m-sde", {}),
    ("unipc", {}), ("lms", {}), ("ipndm", {}),
]


@pytest.mark.parametrize("name,options", DIST_CASES, ids=[f"{n}-{'-'.join(map(str, o.values()))}" for n, o in DIST_CASES])
def test_samples_match_the_mixture(target, name, options):
    mixture = make_mixture(v=0.0)  # v = 0: learned variance halfway (in log) between small and large
    sigmas = karras_sigmas(64, mixture.sigma_min, mixture.sigma_max)
    # Brownian trees are per-sample Python objects: 1000 samples for the SDE samplers (noise ~0.015)
    count = 1000 if name.endswith("-sde") else 2000
    x = run(mixture, name, sigmas, count=count, seed=1, **options)
    assert sliced_w1(x, target) < DIST_BOUND


def test_distribution_bound_rejects_wrong_samples(mixture, target):
    g = torch.Generator().manual_seed(7)
    assert sliced_w1(mixture.sample(2000, g), target) < DIST_BOUND / 2  # the bound has slack over exact samples
    noise = torch.randn(2000, 2, generator=g, dtype=torch.float64)
    assert sliced_w1(noise, target) > 3 * DIST_BOUND                                  # pure noise
    mean, cov = target.mean(0), torch.cov(target.T)
    gauss = mean + noise @ torch.linalg.cholesky(cov).T
    assert sliced_w1(gauss, target) > 3 * DIST_BOUND                                  # right mean and covariance
    sigmas = karras_sigmas(64, mixture.sigma_min, mixture.sigma_max)
    stopped = sigmas[: int((sigmas > 0.3).sum()) + 1]                                 # forgot the last steps
    assert sliced_w1(run(mixture, "heun", stopped, count=2000, seed=1), target) > 2 * DIST_BOUND


# ---- adaptive schedule -------------------------------------------------------------------
@pytest.fixture(scope="module")
def mixture_cost(mixture):
    data = mixture.sample(4096, torch.Generator().manual_seed(1))
    return score_optimal_cost(mixture, data, AdaptiveConfig(levels=48, batch=256, iterations=6))


@pytest.mark.parametrize("name", ["heun", "dpmpp-2m"])
@pytest.mark.parametrize("nfe", [10, 16])
def test_adaptive_schedule_against_rho7(mixture, reference, mixture_cost, name, nfe):
    """The paper's schedule (no floor) against EDM's rho = 7 at equal evaluations. Measured:
    heun 0.41 (10), 0.46 (16); dpmpp-2m 1.5 (10), 0.66 (16). At 10 evaluations dpmpp-2m is
    worse on it: the corrector cost says nothing of the multistep predictor's error."""
    steps = steps_for(name, nfe)

    def error(sigmas):
        return float((run(mixture, name, sigmas) - reference).square().sum(1).sqrt().median())

    ratio = error(adaptive_sigmas(mixture, steps, cost=mixture_cost)) / error(
        karras_sigmas(steps, mixture.sigma_min, mixture.sigma_max))
    bound = {"heun": 0.6, "dpmpp-2m": 0.75 if nfe == 16 else 2.0}[name]
    assert ratio < bound, ratio


def test_adaptive_iteration_equalises_the_increments(mixture):
    """The fixed point of the damped iteration has equal cost increments on its grid (the
    first, log-uniform grid does not)."""
    data = mixture.sample(2048, torch.Generator().manual_seed(2))
    history = []
    score_optimal_cost(mixture, data, AdaptiveConfig(levels=24, batch=2048, iterations=8, damping=0.7),
                       history=history)
    spread = [np.std(h["increments"]) / np.mean(h["increments"]) for h in history]
    assert spread[0] > 0.5 and spread[-1] < 0.25 * spread[0], spread


def test_adaptive_schedule_is_computed_once_and_reused(mixture):
    data = mixture.sample(64, torch.Generator().manual_seed(3))
    mixture.calls = 0
    cost = score_optimal_cost(mixture, data, AdaptiveConfig(levels=16, batch=8, iterations=3))
    assert mixture.calls == 2 * 15 * 3  # 2 denoiser calls per grid interval and iteration
    mixture.calls = 0
    a = adaptive_sigmas(mixture, 12, cost=cost)
    assert mixture.calls == 0
    b = adaptive_sigmas(None, 12, cost=ScoreOptimalCost.from_dict(json.loads(json.dumps(cost.to_dict()))))
    assert torch.equal(a, b)
    part = adaptive_sigmas(None, 6, cost=cost, sigma_range=(0.01, 10.0))  # a sub-range of the cost
    assert part[0] == pytest.approx(10.0) and part[-2] == pytest.approx(0.01)
    with pytest.raises(ValueError, match="outside"):
        adaptive_sigmas(None, 6, cost=cost, sigma_range=(0.01, 500.0))


# ---- seeds -------------------------------------------------------------------------------
SEED_CASES = [("ancestral", {"variance": "large"}), ("ddim", {"eta": 0.7}), ("edm", {"S_churn": 20.0}),
              ("heun", {}), ("euler-ancestral", {}), ("dpmpp-2s-ancestral", {}), ("dpmpp-2m-sde", {}),
              ("dpmpp-3m-sde", {})]


@pytest.mark.parametrize("name,options", SEED_CASES, ids=[c[0] for c in SEED_CASES])
def test_seed_reproduces_a_sample_for_batch_sizes_1_and_8(mixture, name, options):
    sigmas = karras_sigmas(12, mixture.sigma_min, mixture.sigma_max)
    batch8 = generate(mixture, name, sigmas, (2,), count=8, seed=11, batch_size=8, options=options)
    batch1 = generate(mixture, name, sigmas, (2,), count=8, seed=11, batch_size=1, options=options)
    alone = generate(mixture, name, sigmas, (2,), count=1, seed=11, first_index=5, options=options)
    assert torch.equal(batch8, batch1)
    assert torch.equal(batch8[5:6], alone)
    other = generate(mixture, name, sigmas, (2,), count=8, seed=12, batch_size=8, options=options)
    assert not torch.equal(batch8, other)


def test_stochastic_samplers_need_a_noise_source(mixture):
    sigmas = karras_sigmas(4, mixture.sigma_min, mixture.sigma_max)
    x = sigmas[0] * NoiseSource(0, 2).randn((2,))
    for name, options in [("ancestral", {}), ("ddim", {"eta": 1.0}), ("edm", {"S_churn": 1.0}), ("euler-ancestral", {}),
                          ("dpmpp-2s-ancestral", {}), ("dpmpp-2m-sde", {}), ("dpmpp-3m-sde", {})]:
        with pytest.raises(ValueError, match="stochastic"):
            get_sampler(name).fn(mixture, x, sigmas, **options)
    sample_ddim(mixture, x, sigmas, eta=0.0)  # deterministic: no noise needed


# ---- schedules (LESSONS.md item 8) -----------------------------------------------------------
def test_schedule_endpoints(mixture):
    lo, hi = mixture.sigma_min, mixture.sigma_max
    cost = score_optimal_cost(mixture, mixture.sample(64, torch.Generator().manual_seed(0)),
                              AdaptiveConfig(levels=16, batch=32, iterations=2))
    for steps in (1, 2, 7, 50):
        for sigmas in (karras_sigmas(steps, lo, hi), loglinear_sigmas(steps, lo, hi), model_sigmas(mixture, steps),
                       adaptive_sigmas(mixture, steps, cost=cost), vp_sigmas(steps, lo, hi),
                       make_sigmas("exponential", mixture, steps)):
            assert sigmas.dtype == torch.float64 and sigmas.shape == (steps + 1,)
            assert sigmas[-1] == 0 and sigmas[0] == pytest.approx(hi, rel=1e-12)
            assert torch.all(sigmas[1:] < sigmas[:-1])
            if steps > 1:
                assert sigmas[-2] == pytest.approx(lo, rel=1e-12)


def test_schedule_overrides_and_vp(mixture):
    for name in ("karras", "loglinear", "exponential", "vp"):
        sigmas = make_sigmas(name, mixture, 10, sigma_min=0.01, sigma_max=5.0)
        assert sigmas[0] == pytest.approx(5.0, rel=1e-12) and sigmas[-2] == pytest.approx(0.01, rel=1e-12)
    torch.testing.assert_close(make_sigmas("exponential", mixture, 9), make_sigmas("loglinear", mixture, 9))
    # EDM's VP steps: sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1) at t = 1 .. 1e-3, linear in t
    sig = vp_sigmas(6, 0.002, 80.0)[:-1]
    t = torch.linspace(1, 1e-3, 6, dtype=torch.float64)
    u = torch.log1p(sig**2)                                    # = beta_d t^2 / 2 + beta_min t: a quadratic in t
    coeffs = np.polyfit(t.numpy(), u.numpy(), 2)
    assert abs(coeffs[2]) < 1e-9 and np.allclose(np.polyval(coeffs, t.numpy()), u.numpy(), rtol=1e-10)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        make_sigmas("karras", mixture, 5, sigma_min=3.0, sigma_max=2.0)


def test_karras_schedule_matches_edm():
    sigmas = karras_sigmas(18, 0.002, 80.0, rho=7.0)
    i = torch.arange(18, dtype=torch.float64)
    expected = (80.0 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7  # EDM eq. 5
    torch.testing.assert_close(sigmas[:-1], expected, rtol=1e-12, atol=0)
    assert karras_sigmas(1, 0.002, 80.0).tolist() == [80.0, 0.0]


def test_respacing_picks_the_right_steps(mixture):
    assert respace(1000, 1001) == list(range(1000, -1, -1))   # every level: the model's own chain
    assert respace(1000, 2) == [1000, 0]
    assert respace(10, 4) == [10, 7, 3, 0]                     # stride 10/3, rounded
    assert respace(4, 3) == [4, 2, 0]
    assert respace(1000, 11) == list(range(1000, -1, -100))
    with pytest.raises(ValueError):
        respace(10, 12)
    sigmas = model_sigmas(mixture, 4, trained_steps=10)
    t = torch.tensor([10, 7, 3, 0], dtype=torch.float64) / 10
    torch.testing.assert_close(sigmas[:-1], torch.exp(mixture.gamma(t) / 2), rtol=1e-12, atol=0)


def test_heun_last_step_is_euler_and_samplers_end_with_the_denoised(mixture):
    sigmas = karras_sigmas(10, mixture.sigma_min, mixture.sigma_max)
    x = sigmas[0] * NoiseSource(0, 4).randn((2,))
    mixture.calls = 0
    seen = []
    out = sample_heun(mixture, x, sigmas, callback=seen.append)
    assert mixture.calls == 2 * 10 - 1                          # no second evaluation at sigma = 0
    assert seen[-1]["sigma_next"] == 0 and torch.equal(out, seen[-1]["denoised"])
    for fn in (sample_euler, sample_ancestral):
        seen.clear()
        out = fn(mixture, x, sigmas, noise=NoiseSource(0, 4), callback=seen.append)
        assert torch.equal(out, seen[-1]["denoised"])


def test_unknown_names_list_the_choices(mixture):
    with pytest.raises(ValueError, match="choose one of: ancestral, ddim, euler, heun, edm, dpmpp-2m, euler-ancestral"):
        get_sampler("dpm++")
    with pytest.raises(ValueError, match="karras"):
        make_sigmas("cosine", mixture, 10)
    sigmas = karras_sigmas(4, mixture.sigma_min, mixture.sigma_max)
    x = sigmas[0] * NoiseSource(0, 2).randn((2,))
    with pytest.raises(ValueError, match="small, large, learned"):
        sample_ancestral(mixture, x, sigmas, noise=NoiseSource(0, 2), variance="big")
    with pytest.raises(ValueError, match=r"eta must be in \[0, 1\]"):
        sample_ddim(mixture, x, sigmas, eta=1.5)
    with pytest.raises(ValueError, match="valid: S_churn, S_tmin, S_tmax, S_noise"):
        get_sampler("edm").fn(mixture, x, sigmas, churn=3)
    with pytest.raises(ValueError, match="learned variances"):
        sample_ancestral(mixture, x, sigmas, noise=NoiseSource(0, 2), variance="learned")
    with pytest.raises(ValueError, match="midpoint, heun"):
        get_sampler("dpmpp-2m-sde").fn(mixture, x, sigmas, noise=NoiseSource(0, 2), solver_type="rk4")
    with pytest.raises(ValueError, match=r"order must be an integer in 1..3"):
        get_sampler("unipc").fn(mixture, x, sigmas, order=4)
    assert set(SAMPLERS) == {"ancestral", "ddim", "euler", "heun", "edm", "dpmpp-2m", "euler-ancestral",
                             "dpmpp-2s-ancestral", "dpmpp-2m-sde", "dpmpp-3m-sde", "unipc", "lms", "ipndm"}
    assert set(SCHEDULES) >= {"model", "karras", "loglinear", "exponential", "vp", "adaptive"}


def test_learned_variance_interpolates_small_and_large():
    sigmas = karras_sigmas(8, 0.002, 80.0)

    def draw(v, variance):
        mixture = make_mixture(v=v)
        return run(mixture, "ancestral", sigmas, count=16, variance=variance)

    torch.testing.assert_close(draw(-1.0, "learned"), draw(None, "small"), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(draw(1.0, "learned"), draw(None, "large"), rtol=1e-10, atol=1e-10)


# ---- the VDM adapter and the CLI -----------------------------------------------------------------
def tiny_vdm(randomise_output=True) -> VDM:
    torch.manual_seed(0)
    model = VDM(ModelConfig(network=NetworkConfig(channels=8, channel_mult=(1,), num_res_blocks=1)))
    if randomise_output:  # the output layer starts at zero (eps_hat = 0): make eps_hat depend on z and gamma
        torch.nn.init.normal_(model.net.conv_out.weight, std=0.05)
    return model.eval().requires_grad_(False)


def test_vdm_adapter_is_the_vp_ve_equivalence():
    model = tiny_vdm()
    D = VDMDenoiser(model)
    assert D.sigma_min == pytest.approx(math.exp(float(model.gamma.gamma_0) / 2), rel=1e-6)
    assert D.sigma_max == pytest.approx(math.exp(float(model.gamma.gamma_1) / 2), rel=1e-6)
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.01, 0.5, 5.0], dtype=torch.float64)
    gamma_t = 2 * sigma.log()
    alpha_t, sigma_t = alpha_sigma(gamma_t.float())
    z_t = alpha_t[:, None, None, None] * x.float()
    eps_hat = model.eps_hat(z_t, gamma_t.float())
    expected = (z_t - sigma_t[:, None, None, None] * eps_hat) / alpha_t[:, None, None, None]  # VDM x0_hat
    torch.testing.assert_close(D(x, sigma).float(), expected, rtol=1e-4, atol=1e-4)
    sigmas = model_sigmas(D, 5)
    assert sigmas[0] == pytest.approx(D.sigma_max, rel=1e-6) and sigmas[-2] == pytest.approx(D.sigma_min, rel=1e-6)
    # a seed gives the same sample in a batch of 1 and of 4. In float64, so that only the
    # pipeline is tested: float32 convolutions differ in the last bit between batch sizes, and
    # the untrained net's Fourier features (frequency 2^7 2 pi) amplify that to ~1e-4.
    D = VDMDenoiser(model.double())
    sig = karras_sigmas(4, D.sigma_min, D.sigma_max)
    a = generate(D, "ancestral", sig, (1, 8, 8), count=4, seed=3, batch_size=4)
    b = generate(D, "ancestral", sig, (1, 8, 8), count=4, seed=3, batch_size=1)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("variance", ["small", "large"])
def test_ancestral_step_is_the_vdm_reverse_step(variance):
    """One ancestral step from gamma_t to gamma_s is p(z_s | z_t) of VDM.p_mean_std (small) or
    the same mean with std sigma_{t|s} (large, VDM.q_step_mean_std), mapped by z = alpha x."""
    model = tiny_vdm().double()
    D = VDMDenoiser(model)
    gamma_t, gamma_s = torch.tensor([1.5, -2.0], dtype=torch.float64), torch.tensor([0.5, -4.0], dtype=torch.float64)
    for g_t, g_s in zip(gamma_t, gamma_s):
        sigmas = torch.exp(torch.stack([g_t, g_s]) / 2)                       # VE sigma = exp(gamma / 2)
        z_t = torch.randn(2, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        alpha_t, _ = alpha_sigma(g_t)
        alpha_s, _ = alpha_sigma(g_s)
        x_s = sample_ancestral(D, z_t / alpha_t, sigmas, noise=NoiseSource(5, 2), variance=variance)
        mean, std = model.p_mean_std(z_t, g_t.expand(2), g_s.expand(2))
        if variance == "large":
            std = model.q_step_mean_std(z_t, g_s.expand(2), g_t.expand(2))[1]
        expected = mean + std * NoiseSource(5, 2).randn((1, 6, 6))
        torch.testing.assert_close(alpha_s * x_s, expected, rtol=1e-9, atol=1e-9)


def test_pixels_and_grid():
    x = torch.tensor([-1.0, -1 + 1 / 256, 0.0, 1 - 1 / 256, 1.0, 3.0]).reshape(1, 1, 1, 6)
    assert to_pixels(x).ravel().tolist() == [0, 0, 128, 255, 255, 255]  # bin centres 2 (k + 1/2)/256 - 1
    k = torch.arange(256, dtype=torch.float64)
    assert to_pixels(2 * (k + 0.5) / 256 - 1).tolist() == list(range(256))
    grid = image_grid(np.ones((5, 1, 4, 3), dtype=np.uint8))
    assert grid.shape == (8, 9) and grid.sum() == 5 * 12


@pytest.fixture()
def cli(monkeypatch, tmp_path):
    from cli.main import app

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


def _one_line_error(result):
    assert result.exit_code != 0
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output


def test_cli_sample_writes_png_and_npz(cli, tmp_path):
    model_dir = tmp_path / "tiny"
    save_model(model_dir, tiny_vdm(), {"name": "tiny"})
    out, npz = tmp_path / "grid.png", tmp_path / "raw.npz"
    args = ["sample", "--model", model_dir, "--sampler", "heun", "--steps", 3, "-n", 5, "-o", out,
            "--npz", npz, "--no-progress"]
    result = cli(*args)
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (3 * 28, 2 * 28) and Image.open(out).mode == "L"  # no image_size in the card
    data = np.load(npz)
    assert data["x"].shape == (5, 1, 28, 28) and data["pixels"].dtype == np.uint8
    assert data["sigmas"][-1] == 0
    _one_line_error(cli(*args))                                                # refuses to overwrite
    assert cli(*args, "--force").exit_code == 0
    result = cli("sample", "--model", model_dir, "--sampler", "ddim", "--eta", 0.5, "--steps", 3, "-n", 2,
                 "-o", out, "--force", "--size", "8x6", "--no-progress")
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (2 * 6, 8)


def test_cli_sample_seed_independent_of_batch_size(cli, tmp_path):
    model_dir = tmp_path / "tiny"
    # eps_hat = 0 here: float32 network arithmetic, which differs in the last bit between batch
    # sizes, drops out, and the samples depend on the noise only (the float64 pipeline
    # with a non-trivial network is tested in test_vdm_adapter_is_the_vp_ve_equivalence)
    save_model(model_dir, tiny_vdm(randomise_output=False), {"name": "tiny", "image_size": [12, 10]})
    xs = []
    for bs in (1, 3):
        npz = tmp_path / f"b{bs}.npz"
        result = cli("sample", "--model", model_dir, "--sampler", "edm", "--s-churn", 5, "--steps", 3, "-n", 3,
                     "--seed", 9, "--batch-size", bs, "-o", tmp_path / f"b{bs}.png", "--npz", npz, "--no-progress")
        assert result.exit_code == 0, result.output
        assert Image.open(tmp_path / f"b{bs}.png").size == (2 * 10, 2 * 12)    # card image_size [12, 10]
        xs.append(np.load(npz)["x"])
    assert np.array_equal(xs[0], xs[1])


def test_cli_adaptive_schedule_is_cached_in_the_user_cache(cli, tmp_path):
    model_dir = tmp_path / "models" / "tiny"
    save_model(model_dir, tiny_vdm(), {"name": "tiny"})
    args = ["sample", "--model", model_dir, "--sampler", "dpmpp-2m", "--schedule", "adaptive", "--steps", 4,
            "-n", 2, "--size", 4, "-o", tmp_path / "a.png", "--force", "--no-progress"]
    result = cli(*args)
    assert result.exit_code == 0, result.output
    caches = list((tmp_path / "cache" / "vdmcodec").glob("*.adaptive-schedule.json"))   # $XDG_CACHE_HOME/vdmcodec
    assert len(caches) == 1 and len(json.loads(caches[0].read_text())) == 1
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["tiny"]           # nothing beside the model
    stamp = caches[0].stat().st_mtime_ns
    result = cli(*args)
    assert result.exit_code == 0 and "cached in" in result.output
    assert caches[0].stat().st_mtime_ns == stamp


def test_cli_samples_a_photo_model_at_its_crop_size(cli, tmp_path):
    model_dir = tmp_path / "photo"
    torch.manual_seed(0)
    model = VDM(ModelConfig(network=NetworkConfig(image_channels=3, channels=8, channel_mult=(1,), num_res_blocks=1)))
    save_model(model_dir, model.eval(), {"name": "photo"})
    (model_dir / "run.json").write_text(json.dumps({"train": {"val_patch_size": 16}}))
    out, npz = tmp_path / "photos.png", tmp_path / "photos.npz"
    result = cli("sample", "--model", model_dir, "--sampler", "dpmpp-2m-sde", "--eta", 0.5, "--solver-type", "heun",
                 "--steps", 3, "-n", 4, "-o", out, "--npz", npz, "--no-progress")
    assert result.exit_code == 0, result.output
    img = Image.open(out)
    assert img.mode == "RGB" and img.size == (2 * 16, 2 * 16)
    assert np.load(npz)["x"].shape == (4, 3, 16, 16)


def test_cli_bad_input_fails_in_one_line(cli, tmp_path, monkeypatch):
    model_dir = tmp_path / "tiny"
    save_model(model_dir, tiny_vdm(), {"name": "tiny"})
    out = tmp_path / "x.png"
    _one_line_error(cli("sample", "--model", model_dir, "--sampler", "nope", "--steps", 3, "-n", 1, "-o", out))
    _one_line_error(cli("sample", "--model", model_dir, "--sampler", "heun", "--schedule", "cosine", "--steps", 3,
                        "-n", 1, "-o", out))
    _one_line_error(cli("sample", "--model", model_dir, "--sampler", "heun", "--eta", 0.3, "--steps", 3, "-n", 1,
                        "-o", out))
    _one_line_error(cli("sample", "--model", model_dir, "--sampler", "ancestral", "--variance", "learned",
                        "--steps", 3, "-n", 1, "-o", out, "--no-progress"))
    _one_line_error(cli("sample", "--model", tmp_path / "missing", "--sampler", "heun", "--steps", 3, "-n", 1,
                        "-o", out))
    _one_line_error(cli("sample", "--model", model_dir, "--sampler", "euler", "--order", 2, "--steps", 3, "-n", 1,
                        "-o", out))
    _one_line_error(cli("sample", "--model", model_dir, "--sampler", "heun", "--start", "zero", "--steps", 3, "-n", 1,
                        "-o", out))
    monkeypatch.setenv("VDMCODEC_MODELS", str(tmp_path / "no-models"))          # no shipped default model
    _one_line_error(cli("sample", "--sampler", "heun", "--steps", 3, "-n", 1, "-o", out))
    assert not out.exists()


def test_cli_help_and_listing(cli):
    for command in ("sample", "samplers"):
        result = cli(command, "--help")
        assert result.exit_code == 0 and "Usage" in result.output
    help_text = cli("sample", "--help").output
    for option in ("--sampler", "--schedule", "--steps", "--seed", "--npz", "--eta", "--variance", "--force",
                   "--size", "--start", "--sigma-min", "--sigma-max", "--order", "--solver-type"):
        assert option in help_text
    listing = cli("samplers").output.splitlines()
    assert len(listing) == len(SAMPLERS) + len(SCHEDULES)
    for name in list(SAMPLERS) + list(SCHEDULES):
        assert any(f" {name} " in line for line in listing)


# ---- start distribution and Brownian noise -----------------------------------------------------
class _Recording(VDMDenoiser):
    def __init__(self, model):
        super().__init__(model)
        self.first = None

    def denoise_and_v(self, x, sigma):
        if self.first is None:
            self.first = x.clone()
        return super().denoise_and_v(x, sigma)


def test_samples_start_from_the_models_own_prior():
    """z_1 ~ N(0, I) of the VP chain is x = z / alpha_1 in VE: std sqrt(1 + sigma_max^2) (prior);
    EDM's start N(0, sigma_max^2) stays available as start='edm'."""
    model = tiny_vdm().double()
    sig = karras_sigmas(3, math.exp(float(model.gamma.gamma_0) / 2), math.exp(float(model.gamma.gamma_1) / 2))
    noise = NoiseSource(4, range(3)).randn((1, 6, 6))
    alpha_1, _ = alpha_sigma(2 * torch.log(sig[0]))
    for start, std in (("prior", 1 / float(alpha_1)), ("edm", float(sig[0]))):
        D = _Recording(model)
        generate(D, "euler", sig, (1, 6, 6), count=3, seed=4, start=start)
        torch.testing.assert_close(D.first, std * noise, rtol=1e-12, atol=1e-12)
    assert VDMDenoiser(model).prior_std(float(sig[0])) == pytest.approx(math.sqrt(1 + float(sig[0]) ** 2))
    with pytest.raises(ValueError, match="prior, edm"):
        generate(VDMDenoiser(model), "euler", sig, (1, 6, 6), count=1, start="zero")


def test_brownian_noise_is_one_path_per_sample():
    bm = BrownianNoise(seed=3, indices=range(400), shape=(2,), t0=0.0, t1=5.0)
    a, b, c = 4.0, 1.3, 0.02
    coarse = bm.step(a, c) * math.sqrt(a - c)
    fine = bm.step(a, b) * math.sqrt(a - b) + bm.step(b, c) * math.sqrt(b - c)
    torch.testing.assert_close(coarse, fine, rtol=0, atol=1e-12)              # increments add up: one path
    z = bm.step(4.0, 3.0)
    assert abs(float(z.mean())) < 0.1 and abs(float(z.std()) - 1) < 0.1      # standard normal steps
    z2 = bm.step(3.0, 2.0)
    assert abs(float((z * z2).mean())) < 0.1                                  # disjoint steps independent
    again = BrownianNoise(seed=3, indices=[7, 0], shape=(2,), t0=0.0, t1=5.0)  # any order, any batch
    torch.testing.assert_close(again.step(3.0, 2.0), z2[[7, 0]], rtol=0, atol=1e-12)
    other = BrownianNoise(seed=4, indices=range(2), shape=(2,), t0=0.0, t1=5.0)
    assert not torch.equal(other.step(3.0, 2.0), z2[:2])


def test_sde_sampler_converges_on_its_brownian_path(mixture):
    """With the noise of a fixed Brownian path, refining the schedule refines one solution:
    dpmpp-2m-sde's error against its own fine solution shrinks with the steps."""
    lo, hi = mixture.sigma_min, mixture.sigma_max
    fine = run(mixture, "dpmpp-2m-sde", karras_sigmas(512, lo, hi), count=32)
    errors = [float((run(mixture, "dpmpp-2m-sde", karras_sigmas(n, lo, hi), count=32) - fine).norm(dim=1).median())
              for n in (16, 64)]
    assert errors[1] < 0.5 * errors[0], errors
