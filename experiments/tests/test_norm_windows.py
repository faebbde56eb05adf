"""experiments/norm_windows.py: windows cover the image exactly and, with a per-pixel
network, stitch back to the whole-image output."""
import torch

from experiments.norm_windows import eps_in_windows, window_spans


def test_window_spans_tile_the_side_and_stay_inside():
    for n in (1, 7, 64, 95, 96, 128, 391, 768):
        for core, halo in ((96, 16), (112, 8), (32, 16), (1, 0)):
            win = core + 2 * halo
            spans = window_spans(n, core, win)
            covered = []
            for start, c0, c1 in spans:
                w = min(win, n)
                assert 0 <= start and start + w <= n
                assert start <= c0 < c1 <= start + w
                covered += range(c0, c1)
            assert covered == list(range(n))


def test_windows_reproduce_a_pointwise_network():
    z = torch.randn(2, 3, 41, 70)  # batch of two: each window keeps its own image
    out = eps_in_windows(lambda v: v * 2 + 1, z, 16, 4)
    assert torch.equal(out, z * 2 + 1)


def test_windows_see_only_their_window():
    # a network whose output is the window's mean: cores in different windows differ
    z = torch.arange(64.0).repeat(1, 1, 8, 1)
    out = eps_in_windows(lambda v: v.mean(dim=(-2, -1), keepdim=True).expand_as(v), z, 16, 8)
    assert out[0, 0, 0, 0].item() == z[..., :32].mean().item()
    assert out[0, 0, 0, -1].item() == z[..., 32:].mean().item()


def test_block_phase_crops_leave_room_for_every_shift():
    from experiments.block_phase import crop_grid

    for h, w in ((64, 64), (100, 300), (512, 768), (72, 72)):
        for shift in (0, 4, 8):
            corners = crop_grid(h, w, 64, shift)
            assert all(y % 64 == 0 and x % 64 == 0 for y, x in corners)
            assert all(y + shift + 64 <= h and x + shift + 64 <= w for y, x in corners)
            assert len(corners) == ((h - 64 - shift) // 64 + 1) * ((w - 64 - shift) // 64 + 1)


def test_whole_photo_bits_paired_and_finite():
    import numpy as np

    from experiments.whole_photos import photo_bits
    from tests.helpers import tiny_model_config
    from vdmcodec.diffusion import VDM

    torch.manual_seed(0)
    cfg = tiny_model_config()
    model = VDM(cfg).eval()
    c = cfg.network.image_channels
    px = np.random.default_rng(0).integers(0, 256, (12, 20, c), dtype=np.uint8)
    a, b = photo_bits(model, px, 4, 3), photo_bits(model, px, 4, 3)
    assert a == b and np.isfinite(a) and a > 0  # same seed: same t and noise
    assert photo_bits(model, px, 4, 4) != a  # another photo index draws other noise


def test_in_codec_arithmetic_sets_the_cards_arithmetic():
    import pytest

    from experiments.norm_windows import in_codec_arithmetic
    from tests.helpers import tiny_model_config
    from vdmcodec.diffusion import VDM

    model = VDM(tiny_model_config())
    assert in_codec_arithmetic(model, {"card": {"coding_arithmetic": "float32-nhwc"}}) == "float32-nhwc"
    assert model.amp_dtype is None and not model.training
    conv = next(m for m in model.net.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert in_codec_arithmetic(model, {}, "float32") == "float32"
    with pytest.raises(SystemExit, match="arithmetic must be one of"):
        in_codec_arithmetic(model, {}, "int8")
    with pytest.raises(SystemExit, match="portable"):
        in_codec_arithmetic(model, {}, "portable")
