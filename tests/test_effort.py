"""The effort dial: what each level runs, from the card's table or the default rule."""
import pytest

from vdmcodec.coding.effort import DEFAULT_EFFORT, effort_choice
from vdmcodec.errors import ModelError


def test_default_rule_from_coding_steps():
    steps = {e: effort_choice(e, {}, 32).steps for e in range(1, 10)}
    assert steps == {1: None, 2: None, 3: None, 4: 16, 5: 16, 6: 16, 7: 32, 8: 64, 9: 128}
    assert effort_choice(DEFAULT_EFFORT, {}, 32).classical.jxl == 9  # the default writes JPEG XL e9
    assert effort_choice(1, {}, 32).classical.jxl == 3 and effort_choice(1, {}, 32).classical.webp == 0


def test_classical_candidates_and_the_plain_photo_estimate_per_level():
    """Levels up to 7 keep WebP at method 4 at most after a method-2 probe (methods 5-6 cost
    2-20 times JPEG XL e9's time); 8 and 9 run methods 5 and 6, and the network estimate on
    every photo whatever the card's calibration."""
    got = {e: effort_choice(e, {}, 32) for e in range(1, 10)}
    assert [got[e].classical.webp for e in range(1, 10)] == [0, 1, 2, 3, 4, 4, 4, 5, 6]
    assert all(got[e].classical.webp_probe == min(2, got[e].classical.webp) for e in got)
    assert [e for e in got if got[e].probe_plain] == [8, 9]


def test_card_table_wins_and_is_checked():
    card = {"coding_efforts": {"5": 24, "7": 32, "9": None}}
    assert effort_choice(5, card, 64).steps == 24 and effort_choice(7, card, 64).steps == 32
    assert effort_choice(9, card, 64).steps is None and effort_choice(4, card, 64).steps is None
    for bad in ({"10": 3}, {"7": 0}, {"7": "32"}, [32]):
        with pytest.raises(ModelError, match="coding_efforts"):
            effort_choice(7, {"coding_efforts": bad}, 64)
    for bad in (0, 10, 7.0, True):
        with pytest.raises(ValueError, match="effort"):
            effort_choice(bad, {}, 64)


def test_a_callers_T_wins_over_the_cards_effort_table():
    """The card's coding_efforts sets T when the caller gave none (load_codec without steps);
    a T the caller chose stands."""
    import numpy as np
    import torch

    from tests.helpers import tiny_model_config
    from vdmcodec.coding import container
    from vdmcodec.coding.codec import Codec
    from vdmcodec.diffusion import VDM

    torch.manual_seed(0)
    model = VDM(tiny_model_config()).eval()
    info = {"name": "tiny", "sha256": "0" * 64, "card": {"coding_efforts": {"7": 3}}}
    digits = np.random.default_rng(0).integers(0, 256, (6, 8, 8), dtype=np.uint8)
    for fixed, T in ((False, 3), (True, 2)):
        codec = Codec(model, info, steps=2, steps_fixed=fixed, preflight=None)
        header = container.unpack(codec.compress(list(digits), force_model=True))[0]
        assert header.steps == T
