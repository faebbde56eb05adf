"""networks.ConditioningCache: the codec's reuse of the time conditioning across segments
coded at the same noise level is bit-identical to recomputing it, keyed on everything the
conditioning depends on, bounded, and off where autograd records."""
from __future__ import annotations

import copy

import pytest
import torch

from tests.helpers import tiny_model_config
from vdmcodec.diffusion import VDM
from vdmcodec.networks import ConditioningCache, ResBlock

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = VDM(tiny_model_config(image_channels=3)).eval()
    with torch.no_grad():  # non-zero output layers, so that FiLM reaches the output
        for p in m.net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def count_film(monkeypatch) -> list:
    calls = []
    orig = ResBlock.film

    def spy(self, emb):
        calls.append(emb.shape[0])
        return orig(self, emb)

    monkeypatch.setattr(ResBlock, "film", spy)
    return calls


@pytest.mark.parametrize("amp", [None, torch.bfloat16])
def test_cached_conditioning_gives_the_same_bits(model, monkeypatch, amp):
    model.amp_dtype = amp
    cache = ConditioningCache()
    calls = count_film(monkeypatch)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for shape in [(1, 3, 16, 24), (1, 3, 8, 40), (2, 3, 16, 16)]:
            for g in (-5.0, 2.0):
                z = torch.randn(shape, generator=gen)
                gam = torch.full((shape[0],), g)
                ref = model.eps_and_v(z, gam)
                for _ in range(2):
                    got = model.eps_and_v(z, gam, cache)
                    assert torch.equal(got[0], ref[0])
                    assert (got[1] is None and ref[1] is None) or torch.equal(got[1], ref[1])
    blocks = sum(isinstance(m, ResBlock) for m in model.net.modules())
    # uncached calls: 6 references; cached: one miss per (batch, gamma) key = 4 keys
    assert len(calls) == (6 + 4) * blocks
    model.amp_dtype = None


def test_the_key_separates_t_batch_autocast_network_and_weights(model):
    net = model.net
    t = torch.tensor([0.5])
    k = ConditioningCache.key(net, t, torch.float32)
    assert k != ConditioningCache.key(net, torch.tensor([0.25]), torch.float32)
    assert k != ConditioningCache.key(net, torch.tensor([0.5, 0.5]), torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert k != ConditioningCache.key(net, t, torch.float32)
    assert k == ConditioningCache.key(net, torch.tensor([0.5]), torch.float32)
    other = copy.deepcopy(net)
    assert k != ConditioningCache.key(other, t, torch.float32)
    with torch.no_grad():
        other.emb[0].weight.mul_(1.0)  # an in-place update, even one that changes no value
    k_other = ConditioningCache.key(other, t, torch.float32)
    with torch.no_grad():
        other.mid1.emb.bias.add_(1.0)
    assert k_other != ConditioningCache.key(other, t, torch.float32)


def test_a_weight_update_is_not_served_stale_conditioning(model):
    net = copy.deepcopy(model.net).eval()
    cache = ConditioningCache()
    z, t = torch.randn(1, 3, 8, 8), torch.tensor([0.3])
    with torch.no_grad():
        net(z, t, cache)
        net.mid1.emb.bias.add_(0.5)
        assert torch.equal(net(z, t, cache), net(z, t))


def test_the_cache_is_bounded_and_unused_under_autograd(model, monkeypatch):
    model.amp_dtype = None
    z = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        small = ConditioningCache(max_elements=10**9)
        model.eps_and_v(z, torch.tensor([0.0]), small)
    per_entry = small._elements
    assert per_entry > 0
    cache = ConditioningCache(max_elements=2 * per_entry)
    with torch.no_grad():
        for g in range(5):
            model.eps_and_v(z, torch.tensor([float(g)]), cache)
    assert len(cache._entries) == 2 and cache._elements <= cache.max_elements
    calls = count_film(monkeypatch)
    grad_cache = ConditioningCache()
    for _ in range(2):
        model.eps_and_v(z, torch.tensor([0.0]), grad_cache)
    assert not grad_cache._entries and len(calls) == 2 * sum(isinstance(m, ResBlock) for m in model.net.modules())
