"""Closed-form checks of the VDM loss terms with the optimal denoiser for Gaussian data."""
import math

import numpy as np
import pytest
import torch

from tests.helpers import gaussian_vdm
from vdmcodec.diffusion import VDM, ModelConfig, scale_pixels
from vdmcodec.schedules import alpha_sigma

M, S, D = 0.3, 0.5, 16


def analytic_continuous(g0, g1, s=S, d=D):
    # 1/2 int gamma' E||eps - E[eps|z]||^2 dt = D/2 [log(1 + s^2 SNR_0) - log(1 + s^2 SNR_1)]
    return 0.5 * d * (math.log1p(s**2 * math.exp(-g0)) - math.log1p(s**2 * math.exp(-g1)))


def analytic_discrete(g0, g1, T, s=S, d=D, g=None):
    """The T-step diffusion loss at levels ``g`` (default: uniform in gamma from g0 to g1)."""
    g = np.linspace(g0, g1, T + 1) if g is None else np.asarray(g)
    snr_t = np.exp(-g[1:])
    return 0.5 * d * float(np.sum(np.expm1(g[1:] - g[:-1]) * s**2 * snr_t / (1 + s**2 * snr_t)))


def sample_data(n, gen):
    return (M + S * torch.randn(n, 1, 4, 4, generator=gen, dtype=torch.float64))


def test_continuous_loss_matches_closed_form():
    model = gaussian_vdm(M, S)
    gen = torch.Generator().manual_seed(0)
    n = 20000
    x = sample_data(n, gen)
    t = torch.rand(n, generator=gen, dtype=torch.float64)
    eps = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        vals = model.loss_diff_continuous(x, t, eps).double()
    est, se = vals.mean().item(), vals.std().item() / math.sqrt(n)
    ref = analytic_continuous(-10.0, 6.0)
    assert abs(est - ref) < 4 * se + 1e-3, (est, ref, se)


@pytest.mark.parametrize("T", [4, 32])
def test_discrete_loss_matches_closed_form(T):
    model = gaussian_vdm(M, S)
    gen = torch.Generator().manual_seed(1)
    n = 4000
    x = sample_data(n, gen)
    total = torch.zeros(n, dtype=torch.float64)
    with torch.no_grad():
        for i in range(1, T + 1):
            eps = torch.randn(x.shape, generator=gen, dtype=torch.float64)
            total += model.loss_step_discrete(x, torch.full((n,), i), T, eps).double()
    est, se = total.mean().item(), total.std().item() / math.sqrt(n)
    ref = analytic_discrete(-10.0, 6.0, T)
    assert abs(est - ref) < 4 * se + 1e-3, (T, est, ref, se)


def test_steps_between_fitted_levels_match_closed_form():
    """loss_step_between at non-uniform levels (as a chain's fitted times) sums to the
    closed-form T-step loss at those levels, and uniform times reproduce loss_step_discrete."""
    model = gaussian_vdm(M, S)
    T, n = 8, 4000
    times = torch.tensor([(i / T) ** 2 for i in range(T + 1)], dtype=torch.float64)
    gen = torch.Generator().manual_seed(2)
    x = sample_data(n, gen)
    total = torch.zeros(n, dtype=torch.float64)
    with torch.no_grad():
        g = model.gamma(times)
        for i in range(1, T + 1):
            eps = torch.randn(x.shape, generator=gen, dtype=torch.float64)
            total += model.loss_step_between(x, g[i].expand(n), g[i - 1].expand(n), eps).double()
        g_uniform = model.gamma(torch.arange(T + 1, dtype=torch.float64) / T)
        i = torch.full((n,), 3)
        assert torch.allclose(model.loss_step_between(x, g_uniform[3].expand(n), g_uniform[2].expand(n), eps).double(),
                              model.loss_step_discrete(x, i, T, eps).double(), rtol=1e-5)
    est, se = total.mean().item(), total.std().item() / math.sqrt(n)
    ref = analytic_discrete(-10.0, 6.0, T, g=g.numpy())
    assert abs(est - ref) < 4 * se + 1e-3, (est, ref, se)
    assert abs(ref - analytic_discrete(-10.0, 6.0, T)) > 10 * se  # the levels matter at this T


def test_discrete_approaches_continuous_as_T_grows():
    cont = analytic_continuous(-10.0, 6.0)
    gaps = [analytic_discrete(-10.0, 6.0, T) - cont for T in (2, 8, 32, 128, 1024)]
    assert all(g > 0 for g in gaps)
    assert all(a > b for a, b in zip(gaps, gaps[1:]))
    assert gaps[-1] < 0.01 * cont
    # and the code's single-step Monte Carlo estimator (x T) agrees at large T
    model = gaussian_vdm(M, S)
    gen = torch.Generator().manual_seed(2)
    n, T = 20000, 1024
    x = sample_data(n, gen)
    i = torch.randint(1, T + 1, (n,), generator=gen)
    eps = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        vals = model.loss_diff_discrete(x, i, T, eps).double()
    est, se = vals.mean().item(), vals.std().item() / math.sqrt(n)
    assert abs(est - analytic_discrete(-10.0, 6.0, T)) < 4 * se


def test_prior_kl_closed_form():
    model = VDM(ModelConfig())
    x = torch.randint(0, 256, (3, 1, 5, 7), dtype=torch.uint8)
    g1 = model.gamma.gamma_1
    a1, s1 = alpha_sigma(g1)
    q = torch.distributions.Normal(a1 * scale_pixels(x), s1)
    ref = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).flatten(1).sum(1)
    assert torch.allclose(model.loss_prior(x), ref, rtol=1e-5, atol=1e-6)


def test_decoder_is_normalised_and_sharp():
    model = VDM(ModelConfig())
    gen = torch.Generator().manual_seed(4)
    x = torch.randint(0, 256, (4, 1, 16, 16), dtype=torch.uint8, generator=gen)
    g0 = model.gamma.gamma_0.expand(4)
    z0 = VDM.q_sample(scale_pixels(x), g0, torch.randn(x.shape, generator=gen))
    logp = torch.log_softmax(model.decoder_logits(z0, g0), -1)
    assert torch.allclose(logp.exp().sum(-1), torch.ones(()), atol=1e-5)
    assert logp.argmax(-1).eq(x.long()).float().mean() > 0.99
    # at gamma_0 = -13.3, sigma_0 / alpha_0 is a third of a half-bin: the expected
    # reconstruction cost is about 0.01 bit per subpixel
    rec = model.loss_recon(x, torch.randn(x.shape, generator=gen)) / (x[0].numel() * math.log(2))
    assert rec.mean() < 0.05


def test_p_mean_std_matches_posterior_with_true_x():
    """With eps_hat equal to the true eps, p(z_s|z_t) is q(z_s|z_t, x)."""
    model = VDM(ModelConfig())
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(4, 1, 3, 3, generator=gen) * 2 - 1
    eps = torch.randn(x.shape, generator=gen)
    g_t, g_s = torch.full((4,), 1.0), torch.full((4,), -2.0)
    z_t = VDM.q_sample(x, g_t, eps)
    mean, std = model.p_mean_std(z_t, g_t, g_s, eps_hat=eps)
    a_t, s_t = alpha_sigma(g_t[0]); a_s, s_s = alpha_sigma(g_s[0])
    a_ts = a_t / a_s
    var_ts = s_t**2 - a_ts**2 * s_s**2
    mu_ref = a_ts * s_s**2 / s_t**2 * z_t + a_s * var_ts / s_t**2 * x
    assert torch.allclose(mean, mu_ref, atol=1e-5)
    assert torch.allclose(std, (var_ts * s_s**2 / s_t**2).sqrt().expand_as(std), atol=1e-6)
