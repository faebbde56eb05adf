import math
import pytest
import torch

from vdmcodec.diffusion import low_discrepancy_t
from vdmcodec.schedules import ScheduleConfig, ScheduleKind, make_schedule

T_GRID = torch.linspace(0, 1, 1001)


@pytest.mark.parametrize("kind", list(ScheduleKind))
def test_monotone_with_config_endpoints(kind):
    sched = make_schedule(ScheduleConfig(kind=kind, hidden=32))
    g = sched(T_GRID).detach()
    assert (g[1:] >= g[:-1]).all()
    if kind is not ScheduleKind.linear_beta:
        assert g[0].item() == pytest.approx(-13.3, abs=1e-4)
        assert g[-1].item() == pytest.approx(5.0, abs=1e-4)
    else:
        # gamma(0) = log(expm1(beta_0 + (beta_1 - beta_0) / (2 N))): the integral over the first step
        assert g[0].item() == pytest.approx(math.log(math.expm1(1e-4 + 0.0199 / 2000)), abs=1e-3)
    _, dg = sched.gamma_and_derivative(T_GRID)
    assert (dg >= 0).all() and torch.isfinite(dg).all()


def test_unknown_schedule_lists_choices():
    with pytest.raises(ValueError, match="learned"):
        make_schedule(ScheduleConfig(kind="nope"))


@pytest.mark.parametrize("kind", [ScheduleKind.learned, ScheduleKind.learned_linear])
def test_learned_schedule_stays_monotone_through_training(kind):
    """Aggressive updates of the schedule's parameters cannot break monotonicity or the
    link between the learnable endpoints and gamma(0), gamma(1)."""
    sched = make_schedule(ScheduleConfig(kind=kind, hidden=32))
    opt = torch.optim.SGD(sched.parameters(), lr=5.0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        t = torch.rand(64, generator=gen)
        g, dg = sched.gamma_and_derivative(t)
        loss = (torch.randn(64, generator=gen) * g).sum() + (torch.randn(64, generator=gen) * dg).sum()
        opt.zero_grad(); loss.backward(); opt.step()
        with torch.no_grad():
            grid = sched(T_GRID)
        assert (grid[1:] >= grid[:-1] - 1e-5).all()
        assert torch.isfinite(grid).all()
    if kind is ScheduleKind.learned:
        assert sched(torch.zeros(1)).item() == pytest.approx(sched.gamma_0_param.item(), abs=1e-5)


def test_low_discrepancy_times_cover_unit_interval():
    g = torch.Generator().manual_seed(0)
    t = low_discrepancy_t(8, g, "cpu")
    s = torch.sort(t).values
    assert torch.allclose(s[1:] - s[:-1], torch.full((7,), 1 / 8), atol=1e-6)
    # two ranks interleave without overlap
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = low_discrepancy_t(4, g1, "cpu", offset=0, world=2)
    b = low_discrepancy_t(4, g2, "cpu", offset=1, world=2)
    both = torch.sort(torch.cat([a, b])).values
    assert torch.allclose(both[1:] - both[:-1], torch.full((7,), 1 / 8), atol=1e-6)
