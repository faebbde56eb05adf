"""Training-objective options (issue 6): each switchable from the config, the defaults VDM's.

Laws tested: the default objective is today's loss bit for bit; importance weights keep the
ELBO estimate unbiased (closed form, Gaussian data); learned variances stay within
[beta-tilde, beta] and enter the discrete ELBO as the Gaussian KL; EDM's c_* identities and
the preconditioned denoiser's eps relation; STF's two limits; configs round-trip.
"""
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.helpers import gaussian_vdm, tiny_model_config
from tests.test_diffusion import M, S, analytic_continuous, sample_data
from vdmcodec.diffusion import VDM, ModelConfig, kl_step, log_variance_ratio, training_terms
from vdmcodec.errors import DataError
from vdmcodec.objective import ObjectiveConfig, edm_weight, truncated_normal_icdf
from vdmcodec.preconditioning import Preconditioning, edm_coefficients, edm_vp_scales
from vdmcodec.schedules import alpha_sigma
from vdmcodec.stable_target import reference_mask, stf_eps_target
from vdmcodec.training.config import RunConfig, TrainConfig, load_config
from vdmcodec.training.resampler import LossSecondMomentResampler


def batch(seed=0, n=4, hw=(6, 5), dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, *hw), dtype=torch.uint8, generator=g)
    t = torch.rand(n, generator=g)
    eps = torch.randn(x.shape, generator=g, dtype=dtype)
    eps_0 = torch.randn(x.shape, generator=g, dtype=dtype)
    return x, t, eps, eps_0


def randomised(model: VDM, seed: int = 0) -> VDM:
    """Give the zero-initialised output layer weights, so eps_hat and v vary."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = model.net.conv_out.weight
        w.copy_(0.3 * torch.randn(w.shape, generator=g))
    return model


# ---- defaults -------------------------------------------------------------------------
def test_default_objective_is_todays_loss_bit_for_bit():
    torch.manual_seed(0)
    model = randomised(VDM(tiny_model_config()))
    x, t, eps, eps_0 = batch()
    terms = training_terms(model, x, t, eps, eps_0)
    same = training_terms(model, x, t, eps, eps_0, ObjectiveConfig())
    # today's formula, written out: 1/2 gamma'(t) ||eps - eps_hat(z_t)||^2 with the schedule's t
    gamma_t, dgamma_dt = model.gamma.gamma_and_derivative(t)
    legacy = model.loss_diff_continuous(x, t, eps, gamma_t.detach(), dgamma_dt.detach())
    assert torch.equal(terms.loss.loss_diff, legacy)
    assert torch.equal(same.loss.loss_diff, legacy) and torch.equal(same.objective, terms.loss.total)
    assert torch.equal(terms.elbo_diff, legacy.detach()) and terms.extra is None
    cfg = RunConfig()
    assert cfg.train.objective.is_default and cfg.model.precond is Preconditioning.vdm
    assert not cfg.model.network.learned_variance


def test_shipped_config_and_model_card_load_with_defaults():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    cfg = load_config(root / "configs" / "mnist.json")
    assert cfg.train.objective == ObjectiveConfig()
    card = json.loads((root / "models" / "mnist" / "model.json").read_text())
    assert ModelConfig.from_dict(card["config"]).precond is Preconditioning.vdm


def test_objective_config_round_trip_and_errors(tmp_path):
    obj = ObjectiveConfig(t_sampling="importance", is_bins=16, loss_weighting="edm", target="stf",
                          stf_reference=8, hybrid_lambda=0.01, vlb_steps=32)
    model = replace(tiny_model_config(), precond="edm", sigma_data=0.6,
                    network=replace(tiny_model_config().network, learned_variance=True))
    cfg = RunConfig(model=model, train=TrainConfig(objective=obj))
    p = tmp_path / "cfg.json"
    p.write_text(json.dumps(cfg.to_dict()))
    assert load_config(p) == cfg
    assert json.loads(p.read_text())["train"]["objective"]["t_sampling"] == "importance"
    p.write_text(json.dumps({"train": {"objective": {"bogus": 1}}}))
    with pytest.raises(DataError, match="bogus"):
        load_config(p)
    p.write_text(json.dumps({"train": {"objective": {"t_sampling": "sobol"}}}))
    with pytest.raises(DataError, match="low_discrepancy"):
        load_config(p)
    with pytest.raises(ValueError, match="edm"):
        ModelConfig(precond="karras")


# ---- importance sampling --------------------------------------------------------------
def warm_resampler(bins=8, history=3, seed=0) -> LossSecondMomentResampler:
    rs = LossSecondMomentResampler(bins, history, uniform_prob=0.01)
    rng = np.random.default_rng(seed)
    for _ in range(history):
        t = torch.from_numpy((np.arange(bins) + 0.5) / bins)
        rs.update(t, torch.from_numpy(rng.uniform(0.1, 5.0, bins) * np.arange(1, bins + 1)))
    return rs


def test_resampler_is_uniform_and_transparent_until_warm():
    rs = LossSecondMomentResampler(4, 2)
    u = torch.rand(16)
    t, w = rs.sample(u)
    assert t is u and w is None
    rs.update(torch.tensor([0.1, 0.3, 0.6]), torch.ones(3))
    assert not rs.warm and np.allclose(rs.probabilities(), 0.25)
    rs = warm_resampler()
    p = rs.probabilities()
    assert rs.warm and abs(p.sum() - 1) < 1e-12 and p.max() > 2 * p.min()


def test_importance_weights_are_unbiased_for_any_integrand():
    """E_p[w(t) L(t)] = int_0^1 L(t) dt: on a fine stratified grid of u the weighted mean is
    the integral up to quadrature error, for a non-trivial proposal."""
    rs = warm_resampler()
    u = (torch.arange(200_000, dtype=torch.float64) + 0.5) / 200_000
    t, w = rs.sample(u)
    f = lambda s: torch.exp(3 * s) * (1 + torch.sin(20 * s))  # noqa: E731
    exact = (math.exp(3) - 1) / 3 + float(torch.trapezoid(torch.exp(3 * u) * torch.sin(20 * u), u))
    assert abs(float((w * f(t)).mean()) - exact) < 1e-3 * exact
    # the density it draws from is the one it weights by: bin frequencies follow p
    k = (t * rs.bins).long().clamp(max=rs.bins - 1)
    freq = torch.bincount(k, minlength=rs.bins).double() / len(t)
    assert np.allclose(freq.numpy(), rs.probabilities(), atol=1e-4)


def test_importance_sampled_elbo_matches_closed_form():
    """The Gaussian-optimal VDM: the importance-weighted diffusion loss is the analytic L_diff."""
    model = gaussian_vdm(M, S)
    rs = warm_resampler(bins=16, history=2, seed=3)
    gen = torch.Generator().manual_seed(5)
    n = 20000
    x = sample_data(n, gen)
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    t, w = rs.sample(u)
    eps = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        vals = (model.loss_diff_continuous(x, t, eps) * w).double()
    est, se = vals.mean().item(), vals.std().item() / math.sqrt(n)
    assert abs(est - analytic_continuous(-10.0, 6.0)) < 4 * se + 1e-3


# ---- EDM ------------------------------------------------------------------------------
def test_edm_coefficient_identities():
    sigma = torch.logspace(-3, 2, 50, dtype=torch.float64)
    for sd in (0.5, 1.0):
        c = edm_coefficients(sigma, sd)
        # unit-variance effective target (EDM eq. 138 / App. B.6) and unit-variance input
        assert torch.allclose((1 - c.c_skip) ** 2 * sd**2 + c.c_skip**2 * sigma**2, c.c_out**2, rtol=1e-12)
        assert torch.allclose(c.c_in**2 * (sigma**2 + sd**2), torch.ones_like(sigma), rtol=1e-12)
        assert torch.allclose(c.c_noise, sigma.log() / 4)
        # the VP scales are the same coefficients in VDM units
        gamma = 2 * sigma.log()
        alpha_t, _ = alpha_sigma(gamma)
        vp = edm_vp_scales(gamma, sd)
        assert torch.allclose(vp.in_scale, c.c_in / alpha_t, rtol=1e-10)
        assert torch.allclose(vp.eps_skip, (1 - c.c_skip) / (sigma * alpha_t), rtol=1e-8)
        assert torch.allclose(vp.eps_out, c.c_out / sigma, rtol=1e-10)


def test_edm_preconditioned_denoiser_obeys_the_eps_relation():
    """x - sigma eps_hat = c_skip x + c_out F(c_in x) with x = z_t / alpha_t (VE units)."""
    torch.manual_seed(1)
    cfg = replace(tiny_model_config(), precond=Preconditioning.edm, sigma_data=0.5)
    model = randomised(VDM(cfg)).double()
    z = torch.randn(3, 1, 6, 6, dtype=torch.float64)
    gamma = torch.tensor([-9.0, 0.0, 4.0], dtype=torch.float64)
    sigma = torch.exp(gamma / 2)
    alpha_t, _ = alpha_sigma(gamma)
    eps_hat = model.eps_hat(z, gamma)
    x_ve = z / alpha_t[:, None, None, None]
    c = [v[:, None, None, None] for v in edm_coefficients(sigma, 0.5)]
    F_out = model.net(c[2] * x_ve, model.t_norm(gamma))
    D = c[0] * x_ve + c[1] * F_out
    assert torch.allclose(x_ve - sigma[:, None, None, None] * eps_hat, D, atol=1e-10)


def test_edm_weighting_has_the_elbo_mass_and_lambda_shape():
    obj = ObjectiveConfig(loss_weighting="edm")
    g = torch.linspace(-13.3, 5.0, 100001, dtype=torch.float64)
    w = edm_weight(g, obj, 0.5, -13.3, 5.0)
    assert abs(float(torch.trapezoid(w, g)) - 18.3) < 1e-6
    # w / (lognormal density) is lambda(sigma) sigma^2 = 1 + sigma^2 / sigma_data^2, up to K
    mu, s = 2 * obj.p_mean, 2 * obj.p_std
    ratio = w * s * math.sqrt(2 * math.pi) / torch.exp(-0.5 * ((g - mu) / s) ** 2) / (1 + torch.exp(g) / 0.25)
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-8)


def test_truncated_lognormal_draws():
    u = (torch.arange(100_000, dtype=torch.float64) + 0.5) / 100_000
    gamma, density = truncated_normal_icdf(u, -2.4, 2.4, -13.3, 5.0)
    assert gamma.min() >= -13.3 and gamma.max() <= 5.0 and torch.all(gamma[1:] >= gamma[:-1])
    # density is du / dgamma (checked by finite differences) and the CDF is the normal's
    du = 1.0 / 100_000
    fd = du / (gamma[2:] - gamma[:-2]) * 2
    assert torch.allclose(fd[1000:-1000], density[1001:-1001], rtol=1e-3)
    a, b = torch.special.ndtr(torch.tensor(-10.9 / 2.4)), torch.special.ndtr(torch.tensor(7.4 / 2.4))
    for g in (-8.0, -2.4, 1.0):
        cdf = (torch.special.ndtr(torch.tensor((g + 2.4) / 2.4)) - a) / (b - a)
        assert abs(float((gamma < g).double().mean()) - float(cdf)) < 2e-5
    assert abs(float(gamma.mean()) - (-2.4)) < 0.05  # barely truncated


def test_lognormal_sampled_elbo_matches_closed_form():
    model = gaussian_vdm(M, S)
    gen = torch.Generator().manual_seed(7)
    n = 20000
    x = sample_data(n, gen)
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    eps = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    model.loss_recon = lambda x, eps_0: torch.zeros(x.shape[0], dtype=x.dtype)  # (defined for pixels only)
    with torch.no_grad():
        terms = training_terms(model, x, u, eps, eps, ObjectiveConfig(t_sampling="lognormal"))
    vals = terms.elbo_diff.double()
    est, se = vals.mean().item(), vals.std().item() / math.sqrt(n)
    assert abs(est - analytic_continuous(-10.0, 6.0)) < 4 * se + 1e-3


# ---- learned variance -----------------------------------------------------------------
def lv_model(seed=0, precond=Preconditioning.vdm) -> VDM:
    torch.manual_seed(seed)
    cfg = tiny_model_config()
    cfg = replace(cfg, precond=precond, network=replace(cfg.network, learned_variance=True))
    return randomised(VDM(cfg), seed)


def test_learned_p_std_lies_between_beta_tilde_and_beta():
    model = lv_model()
    z = torch.randn(5, 1, 6, 6)
    g_t, g_s = torch.full((5,), 1.0), torch.full((5,), -0.5)
    _, std = model.p_mean_std(z, g_t, g_s)
    a_s, s_s = alpha_sigma(g_s[0]); a_t, s_t = alpha_sigma(g_t[0])
    c = -math.expm1(float(g_s[0] - g_t[0]))
    small, large = float(s_s) * math.sqrt(c), float(s_t) * math.sqrt(c)
    assert std.min() >= small * (1 - 1e-6) and std.max() <= large * (1 + 1e-6)
    assert std.max() - std.min() > 1e-3 * small  # v varies per subpixel
    eps_hat, _ = model.eps_and_v(z, g_t)
    for v, ref in ((-1.0, small), (1.0, large)):
        _, s = model.p_mean_std(z, g_t, g_s, eps_hat=eps_hat, v=torch.full_like(z, v))
        assert torch.allclose(s, torch.full_like(s, ref), rtol=1e-5)
    with pytest.raises(ValueError, match="learned variances"):
        model.p_mean_std(z, g_t, g_s, eps_hat=eps_hat)


def test_discrete_elbo_uses_the_learned_variance_kl():
    model = lv_model(1)
    x, _, eps, _ = batch(2, n=3)
    T, i = 8, torch.tensor([1, 4, 8])
    with torch.no_grad():
        got = model.loss_step_discrete(x, i, T, eps)
        from vdmcodec.diffusion import scale_pixels

        g_t, g_s = model.gamma(i.float() / T), model.gamma((i.float() - 1) / T)
        x_s = scale_pixels(x)
        z_t = model.q_sample(x_s, g_t, eps)
        mean_p, std_p = model.p_mean_std(z_t, g_t, g_s)
        # q(z_s | z_t, x): p's formula with the true eps and v = -1 (beta-tilde)
        mean_q, std_q = model.p_mean_std(z_t, g_t, g_s, eps_hat=eps, v=-torch.ones_like(eps))
        ref = torch.distributions.kl_divergence(torch.distributions.Normal(mean_q, std_q),
                                                torch.distributions.Normal(mean_p, std_p)).flatten(1).sum(1)
    assert torch.allclose(got, ref, rtol=2e-3, atol=1e-4), (got, ref)
    # v = -1 everywhere is VDM's loss exactly
    eps_hat, _ = model.eps_and_v(z_t, g_t)
    vdm = 0.5 * torch.expm1(g_t - g_s) * (eps - eps_hat).square().flatten(1).sum(1)
    assert torch.allclose(kl_step(eps, eps_hat, -torch.ones_like(eps), g_t, g_s), vdm, rtol=1e-5)
    assert torch.all(log_variance_ratio(torch.ones(1), g_t, g_s) > 0)


def test_discrete_objective_is_T_times_the_step_kl_and_trains_the_schedule_interior():
    """discrete_steps = T: t picks step i = floor(t T) + 1, the loss is T KL of that step at
    the uniform levels (the T-step bound summed over i, once per step), and the schedule's
    interior gets a gradient (in discrete time it moves the bound)."""
    model = lv_model(4)
    T = 8
    x, _, eps, eps_0 = batch(5, n=T)
    t = (torch.arange(T, dtype=torch.float32) + 0.5) / T  # one example per step
    terms = training_terms(model, x, t, eps, eps_0, ObjectiveConfig(discrete_steps=T, hybrid_lambda=0.0))
    with torch.no_grad():
        ref = T * model.loss_step_discrete(x, torch.arange(1, T + 1), T, eps)
    assert torch.allclose(terms.loss.loss_diff.detach(), ref, rtol=1e-4)
    assert not terms.gamma_t.requires_grad and terms.extra is None
    interior = [p for n, p in model.gamma.named_parameters() if p not in set(model.gamma.endpoint_parameters())]
    grads = torch.autograd.grad(terms.loss.loss_diff.sum(), interior, allow_unused=True)
    assert any(g is not None and g.abs().max() > 0 for g in grads)
    # t = 0 is step 1 and t just below 1 is step T
    edge = training_terms(model, x[:2], torch.tensor([0.0, 1 - 1e-7]), eps[:2], eps_0[:2], ObjectiveConfig(discrete_steps=T))
    with torch.no_grad():
        ref = T * model.loss_step_discrete(x[:2], torch.tensor([1, T]), T, eps[:2])
    assert torch.allclose(edge.loss.loss_diff.detach(), ref, rtol=1e-4)


def test_discrete_objective_refuses_other_weightings():
    for bad in ({"t_sampling": "lognormal"}, {"loss_weighting": "edm"}, {"target": "stf"}):
        with pytest.raises(ValueError, match="discrete_steps"):
            ObjectiveConfig(discrete_steps=16, **bad)
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="discrete_steps"):
            ObjectiveConfig(discrete_steps=bad)


def test_hybrid_loss_trains_the_variance_only_through_l_vlb():
    model = lv_model(2)
    x, t, eps, eps_0 = batch(3)
    terms = training_terms(model, x, t, eps, eps_0, ObjectiveConfig(hybrid_lambda=0.001, vlb_steps=16))
    assert terms.extra is not None and torch.all(terms.extra > 0)
    (g,) = torch.autograd.grad(terms.extra.sum(), model.net.conv_out.weight, retain_graph=True)
    assert g[0].abs().max() == 0 and g[1].abs().max() > 0  # channel 0: eps (detached), 1: v
    (g,) = torch.autograd.grad(terms.loss.loss_diff.sum(), model.net.conv_out.weight)
    assert g[1].abs().max() == 0 and g[0].abs().max() > 0


def test_chain_codes_with_learned_variances(tmp_path):
    """The codec's p(z_{i-1} | z_i) uses the model's learned std, and still round-trips."""
    from vdmcodec.coding.ans import Message
    from vdmcodec.coding.chain import ChainConfig, DiffusionChain

    model = lv_model(3).eval()
    chain = DiffusionChain(model, ChainConfig(steps=3, grid_bits=6))
    z = np.random.default_rng(0).normal(size=(2, 1, 4, 4))
    mean, std = chain.p_mean_std(z, 2)
    g = torch.tensor(chain.grid.gamma, dtype=torch.float32)
    with torch.no_grad():
        m_ref, s_ref = model.p_mean_std(torch.from_numpy(z).float(), g[2].expand(2), g[1].expand(2))
    assert np.allclose(std, s_ref.numpy(), rtol=1e-4) and np.allclose(mean, m_ref.numpy(), atol=1e-4)
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (2, 1, 4, 4), dtype=np.uint8)
    bits = 2 * chain.initial_bits_per_dim() * x.size + 32 * 4 * 4 + 256
    init = rng.integers(1, 1 << 32, size=math.ceil(bits / 32), dtype=np.uint64).astype(np.uint32)
    msg = Message(init, sealed=True)
    chain.push(msg, x)
    fresh = Message(msg.words())
    np.testing.assert_array_equal(chain.pop(fresh, x.shape), x)


def test_sampler_learned_variance_agrees_with_the_model():
    """The ancestral sampler's `learned` std (VE units) times alpha_s is p_mean_std's std."""
    from vdmcodec.sampling.denoiser import VDMDenoiser

    model = lv_model(4, precond=Preconditioning.edm).eval()
    den = VDMDenoiser(model)
    sigma, sigma_next = 2.0, 0.5
    x = torch.randn(2, 1, 6, 6, dtype=torch.float64) * sigma
    denoised, v = den.denoise_and_v(x, torch.full((2,), sigma, dtype=torch.float64))
    one_minus = -math.expm1(2 * (math.log(sigma_next) - math.log(sigma)))
    log_small = math.log(sigma_next**2 * one_minus)
    log_large = math.log((1 + sigma_next**2) / (1 + sigma**2) * sigma**2 * one_minus)
    frac = (v + 1) / 2
    std_ve = torch.exp(0.5 * (frac * log_large + (1 - frac) * log_small))
    g_t, g_s = 2 * math.log(sigma), 2 * math.log(sigma_next)
    a_t, a_s = float(alpha_sigma(torch.tensor(g_t))[0]), float(alpha_sigma(torch.tensor(g_s))[0])
    with torch.no_grad():
        _, std = model.p_mean_std((a_t * x).float(), torch.full((2,), g_t), torch.full((2,), g_s))
    assert torch.allclose(a_s * std_ve.float(), std, rtol=1e-4)


# ---- STF ------------------------------------------------------------------------------
def test_stf_with_a_reference_batch_of_one_is_the_plain_target():
    x, t, eps, _ = batch(4, n=5)
    from vdmcodec.diffusion import scale_pixels

    x_s = scale_pixels(x)
    gamma = torch.linspace(-12, 4, 5)
    z = VDM.q_sample(x_s, gamma, eps)
    extra = scale_pixels(batch(5, n=7)[0])
    assert torch.equal(stf_eps_target(z, gamma, x_s, eps, extra, 1), eps)
    # and a larger reference batch changes the target at high noise only
    tgt = stf_eps_target(z, gamma, x_s, eps, extra, 12)
    assert torch.allclose(tgt[0], eps[0], atol=1e-5) and not torch.allclose(tgt[-1], eps[-1], atol=1e-2)


def test_stf_reference_windows_hold_the_example():
    m = reference_mask(4, 10, 3)
    assert m.sum(1).eq(3).all() and m[torch.arange(4), torch.arange(4)].all()
    assert reference_mask(4, 10, 10).all()
    with pytest.raises(ValueError):
        reference_mask(4, 3, 2)


def test_stf_tends_to_the_exact_posterior_mean():
    """Data: 3 points in 2-D, uniform. The exact E[eps | z] is a 3-term softmax; STF over a
    reference batch drawn from the data (the example first) converges to it."""
    data = torch.tensor([[-0.8, 0.3], [0.5, 0.5], [0.2, -0.9]], dtype=torch.float64).reshape(3, 1, 1, 2)
    gen = torch.Generator().manual_seed(0)
    n = 64
    idx = torch.randint(0, 3, (n,), generator=gen)
    x = data[idx]
    gamma = torch.full((n,), 0.5, dtype=torch.float64)
    alpha, sigma = alpha_sigma(gamma[0])
    eps = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    z = alpha * x + sigma * eps
    d2 = (z.flatten(1)[:, None, :] - alpha * data.flatten(1)[None]).square().sum(-1)
    w = torch.softmax(-d2 / (2 * sigma**2), dim=1)
    exact = ((z.flatten(1)[:, None, :] - alpha * data.flatten(1)[None]) / sigma * w[..., None]).sum(1).reshape(x.shape)
    errors = []
    for ref in (1, 16, 256, 8192):
        extra = data[torch.randint(0, 3, (max(ref - n, 0),), generator=gen)] if ref > n else None
        errors.append(float((stf_eps_target(z, gamma, x, eps, extra, ref) - exact).square().mean()))
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-3 * errors[0]


# ---- training with each option ----------------------------------------------------------
@pytest.mark.parametrize("name,model_kw,obj", [
    ("importance", {}, ObjectiveConfig(t_sampling="importance", is_bins=4, is_history=2)),
    ("hybrid", {"learned_variance": True}, ObjectiveConfig(vlb_steps=16)),
    ("edm", {"precond": "edm"}, ObjectiveConfig(t_sampling="lognormal", loss_weighting="edm")),
    ("stf", {}, ObjectiveConfig(target="stf", stf_reference=24)),
    ("discrete", {"learned_variance": True}, ObjectiveConfig(discrete_steps=4, hybrid_lambda=0.0)),
])
def test_each_option_trains_a_few_steps(tmp_path, mnist_path, name, model_kw, obj):
    from tests.test_training import TINY_TRAIN, write_npy
    from vdmcodec.training.trainer import DataSpec, Trainer

    data = write_npy(tmp_path / "train.npy", 64, mnist_path)
    mc = tiny_model_config()
    if "learned_variance" in model_kw:
        mc = replace(mc, network=replace(mc.network, learned_variance=True))
    if "precond" in model_kw:
        mc = replace(mc, precond=model_kw["precond"])
    cfg = RunConfig(model=mc, train=replace(TINY_TRAIN, batch_size=8, objective=obj))
    tr = Trainer(cfg, tmp_path / "run", DataSpec(data), progress=False)
    before = [p.detach().clone() for p in tr.model.parameters()]
    out = tr.fit(6)
    assert math.isfinite(out["loss_bpd"]) and math.isfinite(out["elbo_bpd"])
    assert any(not torch.equal(a, b) for a, b in zip(before, tr.model.parameters()))
    if name == "importance":
        assert tr.resampler.warm  # 4 bins x 2 losses: warm after a few batches of 8
    if name == "discrete":  # validation adds the T-step bound, which is above the continuous one
        tr.val_images = tr.images[:16]
        ev = tr.validate()
        assert ev["val_steps"] == 4 and ev["val_bpd_T"] > ev["val_bpd"] - 3 * ev["val_bpd_se"]


def test_resampler_state_survives_checkpoint_and_resume(tmp_path, mnist_path):
    """With importance sampling, 8 steps straight == 4 steps, save, resume, 4 more: the
    resampler's history is restored (a fresh one would draw other t once warm)."""
    from tests.test_training import TINY_TRAIN, write_npy
    from vdmcodec.training.trainer import DataSpec, Trainer

    data = write_npy(tmp_path / "train.npy", 64, mnist_path)
    obj = ObjectiveConfig(t_sampling="importance", is_bins=4, is_history=2)
    cfg = RunConfig(model=tiny_model_config(), train=replace(TINY_TRAIN, batch_size=8, objective=obj))
    a = Trainer(cfg, tmp_path / "a", DataSpec(data), progress=False)
    a.fit(8)
    b = Trainer(cfg, tmp_path / "b", DataSpec(data), progress=False)
    b.fit(4)
    assert b.resampler.warm
    b2 = Trainer(cfg, tmp_path / "b", DataSpec(data), resume=True, progress=False)
    assert np.array_equal(b2.resampler.history, b.resampler.history)
    assert np.array_equal(b2.resampler.counts, b.resampler.counts)
    b2.fit(8)
    assert np.allclose(a.resampler.history, b2.resampler.history, rtol=1e-5)
    for p, q in zip(a.model.parameters(), b2.model.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_shipped_raw_weights_resume(tmp_path):
    """models/mnist/raw.safetensors continues in today's trainer with the config it was
    trained with (configs/mnist_T32.json: learned variances, VDM's discrete-time loss at T =
    32) and with the continuous-time L_hybrid of configs/mnist_lv.json under importance
    sampling: the step count goes on from the shipped one, the EMA is the shipped EMA (the
    raw weights are of its step), and no optimiser state is needed."""
    from pathlib import Path

    from safetensors.torch import load_file

    from tests.conftest import MNIST
    from vdmcodec.training.trainer import DataSpec, Trainer
    from vdmcodec.training.warmstart import RAW_WEIGHTS, restart_from_weights

    root = Path(__file__).resolve().parent.parent
    shipped = root / "models" / "mnist"
    if not (shipped / RAW_WEIGHTS).exists() or not MNIST.exists():
        pytest.skip("shipped raw weights or MNIST data not present")
    assert not (shipped / "checkpoint.pt").exists()
    cfg = load_config(root / "configs" / "mnist_T32.json")
    lv = load_config(root / "configs" / "mnist_lv.json")
    assert cfg.model.network.learned_variance and cfg.train.objective.discrete_steps == 32
    small = np.zeros((4, 28, 28, 1), dtype=np.uint8)
    np.save(tmp_path / "d.npy", small)
    ema = load_file(str(shipped / "model.safetensors"))
    card_steps = json.loads((shipped / "model.json").read_text())["card"]["steps"]
    for obj in (cfg.train.objective, replace(lv.train.objective, t_sampling="importance")):
        c = replace(cfg, train=replace(cfg.train, batch_size=2, bf16=False, objective=obj))
        tr = Trainer(c, tmp_path / f"{obj.t_sampling.value}-{obj.discrete_steps}", DataSpec(tmp_path / "d.npy"), progress=False)
        rec = restart_from_weights(tr, shipped)
        assert rec["ema"] == "shipped" and tr.step == card_steps
        assert all(torch.equal(tr.ema.state_dict()[k], v) for k, v in ema.items())
        out = tr.fit(tr.step + 1)
        assert out["step"] == card_steps + 1 and math.isfinite(out["loss_bpd"])
        assert out["lr"] < cfg.train.lr  # the first step after a restart is in the warm-up
