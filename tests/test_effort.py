"""The effort dial: what each level runs, from the card's table or the default rule."""
import pytest

from vdmcodec.coding.effort import DEFAULT_EFFORT, effort_choice
from vdmcodec.errors import ModelError


def test_default_rule_from_coding_steps():
    steps = {e: effort_choice(e, {}, 32).steps for e in range(1, 10)}
    assert steps == {1: None, 2: None, 3: None, 4: 16, 5: 16, 6: 16, 7: 32, 8: 64, 9: 128}
    assert effort_choice(DEFAULT_EFFORT, {}, 32).classical.jxl == 9  # the default writes JPEG XL e9
    assert effort_choice(1, {}, 32).classical.jxl == 3 and effort_choice(1, {}, 32).classical.webp == 0


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
