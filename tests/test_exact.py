"""The portable arithmetic (vdmcodec/coding/exact.py): functions built from basic
operations, exact integer sums, and files that decode under another SIMD level."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.helpers import tiny_model_config
from vdmcodec.coding import exact as E
from vdmcodec.diffusion import VDM
from vdmcodec.schedules import ScheduleConfig, ScheduleKind, make_schedule

F64 = torch.float64


def test_functions_match_torch():
    x = torch.linspace(-40, 40, 20001, dtype=F64)
    np.testing.assert_allclose(E.exp(x), torch.exp(x), rtol=1e-15)
    np.testing.assert_allclose(E.sigmoid(x), torch.sigmoid(x), rtol=1e-14, atol=1e-300)
    np.testing.assert_allclose(E.tanh(x), torch.tanh(x), atol=1e-15)
    np.testing.assert_allclose(E.softplus(x), F.softplus(x), rtol=1e-14, atol=1e-300)
    small = torch.linspace(-2, 2, 4001, dtype=F64)
    np.testing.assert_allclose(E.expm1(small), torch.expm1(small), rtol=1e-15, atol=1e-300)
    pos = torch.logspace(-300, 300, 6001, dtype=F64)
    np.testing.assert_allclose(E.log(pos), torch.log(pos), rtol=1e-15)
    assert E.log(torch.tensor([1.0], dtype=F64)).item() == 0.0
    u = torch.linspace(-50, 50, 20001, dtype=F64)
    np.testing.assert_allclose(E.sin_2pi(u), torch.sin(2 * math.pi * u), atol=1e-13)
    np.testing.assert_allclose(E.cos_2pi(u), torch.cos(2 * math.pi * u), atol=1e-13)
    k = torch.arange(-1022, 1024, dtype=F64)
    assert torch.equal(E.pow2(k), torch.tensor([math.ldexp(1.0, int(v)) for v in k], dtype=F64))


def test_det_sum_has_a_fixed_order():
    x = torch.randn(3, 37, dtype=F64) * torch.logspace(-8, 8, 37, dtype=F64)
    pad = F.pad(x, (0, 64 - 37))
    while pad.shape[-1] > 1:  # the documented order: halves added pairwise
        pad = pad[:, : pad.shape[-1] // 2] + pad[:, pad.shape[-1] // 2:]
    assert torch.equal(E.det_sum(x), pad[:, 0])
    np.testing.assert_allclose(E.det_sum(x), [math.fsum(r) for r in x.tolist()], rtol=1e-12)


@pytest.mark.parametrize("stride", [1, 2])
def test_affine_sums_are_exact_at_the_bit_budget(stride):
    """Inputs at the clamp and weights at their widest: the float64 convolution equals the
    integer one, so summation order cannot matter."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(128, 8, 3, stride=stride, padding=1)
    with torch.no_grad():
        conv.weight.copy_(0.75 * torch.sign(torch.randn_like(conv.weight)))  # every weight at the widest
    layer = E.ExactAffine(conv, E.ACT_FRAC_BITS, E.ACT_INT_BITS)
    lim = 2 ** (E.ACT_FRAC_BITS + E.ACT_INT_BITS)
    w = layer.weight
    # inputs at the clamp, with the signs of output channel 0's weights repeating every 3
    # pixels, so that some output sums every product with one sign
    u = lim * torch.sign(w[0]).repeat(1, 4, 4)[None, :, :11, :11].expand(2, -1, -1, -1).clone()
    u[1] = -u[1]
    y = F.conv2d(u, w, None, stride, 1)
    cols = F.unfold(u, 3, padding=1, stride=stride).to(torch.int64)  # [B, 128*9, L]: an exact copy
    ref = torch.einsum("ok,bkl->bol", w.reshape(8, -1).to(torch.int64), cols)
    assert ref.abs().max() >= 2**50  # really near the budget (2^52)
    assert torch.equal(y.reshape(2, 8, -1).to(torch.int64), ref)
    assert (y.reshape(2, 8, -1) == ref.to(F64)).all()


def _random_model(channels=8, learned_variance=False, seed=0) -> VDM:
    from dataclasses import replace

    cfg = tiny_model_config(channels=channels)
    cfg = replace(cfg, network=replace(cfg.network, learned_variance=learned_variance))
    torch.manual_seed(seed)
    m = VDM(cfg).eval()
    with torch.no_grad():  # the untrained output layers are zero: give every weight a value
        for p in m.net.parameters():
            p.copy_(0.2 * torch.randn_like(p))
    return m


def test_exact_network_is_close_to_float_and_the_same_at_any_thread_count_and_batch():
    m = _random_model(learned_variance=True)
    net = E.network_for(m)
    z = torch.randn(3, 1, 13, 10, dtype=F64)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=F64)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = net(z, t)
        torch.set_num_threads(2)
        two = net(z, t)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)
    assert torch.equal(net(z[1:2], t[1:2]), one[1:2])  # exact sums: no dependence on the batch
    ref = m.net(z.float(), t.float()).double()
    assert one.shape == ref.shape
    err = (one - ref).abs().max().item()
    assert 0 < err < 1e-3 * max(1.0, ref.abs().max().item())


@pytest.mark.parametrize("kind", [ScheduleKind.learned, ScheduleKind.learned_linear, ScheduleKind.fixed_linear])
def test_schedule_gamma_matches_the_module(kind):
    torch.manual_seed(1)
    sched = make_schedule(ScheduleConfig(kind=kind, hidden=64))
    with torch.no_grad():
        for p in sched.parameters():
            p.add_(0.1 * torch.randn_like(p))
    t = torch.arange(65, dtype=F64) / 64
    import copy

    ref = copy.deepcopy(sched).double()(t).detach()
    np.testing.assert_allclose(E.schedule_gamma(sched, t), ref, rtol=1e-13, atol=1e-12)


def test_unsupported_models_are_refused():
    with pytest.raises(ValueError, match="Cosine"):
        E.schedule_gamma(make_schedule(ScheduleConfig(kind=ScheduleKind.cosine)), torch.zeros(2, dtype=F64))
    from dataclasses import replace

    cfg = tiny_model_config()
    with pytest.raises(ValueError, match="attention"):
        E.network_for(VDM(replace(cfg, network=replace(cfg.network, attention=True))))
    with pytest.raises(ValueError, match="VDM-preconditioned"):
        E.network_for(VDM(replace(cfg, precond="edm")))


DECODE = """
import sys
import numpy as np
import torch
from vdmcodec.coding.codec import load_codec
torch.set_num_threads(int(sys.argv[3]))
out = load_codec(sys.argv[1]).decompress(open(sys.argv[2], "rb").read())
np.save(sys.argv[2] + ".npy", np.stack(out))
print(torch.backends.cpu.get_cpu_capability())
"""


def test_a_portable_file_decodes_at_another_simd_level_and_thread_count(tmp_path):
    """The decoder runs in a fresh process with ATen's kernels held to no SIMD at all,
    oneDNN to SSE4.1 and glibc's libm to its plain variants, at another thread count: a
    portable file still decodes bit-exactly (float32 files fail this on an AVX-512 CPU)."""
    from vdmcodec.coding.codec import load_codec
    from vdmcodec.zoo import save_model

    d = tmp_path / "model"
    save_model(d, _random_model(learned_variance=True, seed=3), {"name": "rand", "data": "none"})
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (12, 10), dtype=np.uint8) for _ in range(3)]
    blob = load_codec(d, steps=4, arithmetic="portable").compress(images, force_model=True)
    f = tmp_path / "a.vdmc"
    f.write_bytes(blob)
    threads = 2 if torch.get_num_threads() == 1 else 1
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "OMP_NUM_THREADS": str(threads),
           # glibc's libm (which constriction's Gaussian may use) without its FMA / AVX variants; ignored elsewhere
           "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2_Usable,-FMA_Usable,-AVX512F_Usable,-AVX_Usable"}
    r = subprocess.run([sys.executable, "-c", DECODE, str(d), str(f), str(threads)], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "DEFAULT"  # really another SIMD level than this process's
    np.testing.assert_array_equal(np.load(str(f) + ".npy"), np.stack(images))


def test_group_norm_matches_torch_on_large_groups():
    """Groups far beyond 2^14 values (a photo tile with context) keep exact int64 sums."""
    torch.manual_seed(4)
    gn = torch.nn.GroupNorm(2, 4)
    with torch.no_grad():
        gn.weight.normal_()
        gn.bias.normal_()
    x = torch.round(torch.randn(1, 4, 160, 160, dtype=F64) * 40 * 2**16) / 2**16  # groups of 51,200 grid values
    np.testing.assert_allclose(E.ExactGroupNorm(gn)(x), gn.double()(x).detach(), atol=1e-12)


def test_written_out_constants():
    from vdmcodec.coding.grid import LOG2_SQRT_2PI_E

    assert LOG2_SQRT_2PI_E == pytest.approx(0.5 * math.log2(2 * math.pi * math.e), rel=1e-15)
    assert E.LN2 == pytest.approx(math.log(2), rel=1e-16) and E.LN2_HI + E.LN2_LO == pytest.approx(math.log(2), rel=1e-16)
    assert E.LN_10000 == pytest.approx(math.log(10000.0), rel=1e-16)
    assert math.ldexp(math.frexp(E.LN2_HI)[0], 53) % 2**20 == 0  # at most 33 significant bits: k * LN2_HI exact for |k| < 2^20
