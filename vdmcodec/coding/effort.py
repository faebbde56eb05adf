"""The user's speed/size dial: ``effort`` 1 (fastest) to 9 (smallest), as cjxl's -e, and what
each level runs.

- classical candidates (classical.ClassicalEffort): JPEG XL at libjxl effort min(9, e + 2),
  WebP at method ``WEBP_METHODS[e]`` after a quick probe at method min(2, that) (levels 1-7
  stay within about half of JPEG XL e9's time; methods 5 and 6 cost 2-20 times as much and
  save 1-3% where WebP is written);
- the network preflight (preflight.py) on photos without a JPEG lattice: at levels 8-9
  always, at 1-7 only where the card's calibration says the model can win on such photos
  (``probe_plain``);
- the chain's T: the model card's ``coding_efforts`` table ({"4": T, ..., "9": T}; a level it
  leaves out or maps to null is classical only) where the card has one, else levels 1-3 are
  classical only, 4-6 run T = coding_steps / 2, 7 (the default) coding_steps, 8 twice and 9
  four times that.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ModelError
from .classical import ClassicalEffort
from .container import MAX_STEPS

DEFAULT_EFFORT = 7
EFFORTS = range(1, 10)
WEBP_METHODS = {1: 0, 2: 1, 3: 2, 4: 3, 5: 4, 6: 4, 7: 4, 8: 5, 9: 6}
PROBE_PLAIN_FROM = 8  # effort levels that run the network preflight on every photo


@dataclass(frozen=True)
class EffortChoice:
    effort: int
    classical: ClassicalEffort
    steps: int | None  # the chain's T; None: every image classical
    probe_plain: bool = True  # run the network preflight on photos without a JPEG lattice regardless of the card


def check_effort(effort: int) -> int:
    if isinstance(effort, bool) or not isinstance(effort, int) or effort not in EFFORTS:
        raise ValueError(f"effort must be an integer from 1 (fastest) to 9 (smallest), got {effort!r}")
    return effort


def effort_choice(effort: int, card: dict, coding_steps: int, where: str = "model") -> EffortChoice:
    """What ``effort`` runs for a model whose card is ``card`` and whose default T is
    ``coding_steps`` (module docstring)."""
    e = check_effort(effort)
    webp = WEBP_METHODS[e]
    classical = ClassicalEffort(jxl=min(9, e + 2), webp=webp, webp_probe=min(2, webp))
    table = card.get("coding_efforts")
    if table is not None:
        if not isinstance(table, dict) or not set(table) <= {str(k) for k in EFFORTS}:
            raise ModelError(f"{where}: card's coding_efforts must map effort levels '1'..'9' to T or null, got {table!r}")
        steps = table.get(str(e))
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS):
            raise ModelError(f"{where}: card's coding_efforts[{e!r}] must be null or an integer in [1, {MAX_STEPS}], got {steps!r}")
    elif e <= 3:
        steps = None
    else:
        steps = min(MAX_STEPS, max(1, coding_steps // 2) if e <= 6 else coding_steps * {7: 1, 8: 2, 9: 4}[e])
    return EffortChoice(e, classical, steps, probe_plain=e >= PROBE_PLAIN_FROM)
