"""Learning rate by step: linear warmup, then constant, then an optional decay (a
warmup-stable-decay schedule, Hägele et al. 2024, "Scaling Laws and Compute-Optimal
Training Beyond Fixed Training Durations").

Why a decay that starts at a chosen step rather than a cosine over a fixed horizon: runs
here go on over many resumptions with no known end. The constant-rate run goes on; a model to
ship is a short decay branched from it (copy the run, resume it with ``lr_decay_start`` at
the current step), and the constant-rate checkpoint stays the one to continue from.

Shapes of the decay over ``u`` in [0, 1] (its fraction done), from ``lr`` to ``lr_min``:
``linear`` 1 - u; ``cosine`` (1 + cos(pi u)) / 2; ``1-sqrt`` 1 - sqrt(u) (the paper's
best: most of the drop early, then a long low tail).
"""
from __future__ import annotations

import math

DECAY_SHAPES = ("linear", "cosine", "1-sqrt")


def decay_factor(shape: str, u: float) -> float:
    """The fraction of the way from lr_min back to lr left at decay fraction u."""
    u = min(1.0, max(0.0, u))
    if shape == "linear":
        return 1.0 - u
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * u))
    if shape == "1-sqrt":
        return 1.0 - math.sqrt(u)
    raise ValueError(f"lr_decay_shape must be one of {DECAY_SHAPES}, got {shape!r}")


def learning_rate(lr: float, warmup: int, step: int, decay_start: int | None = None, decay_steps: int = 0,
                  lr_min: float = 0.0, shape: str = "linear") -> float:
    """The rate for the optimiser step taken at ``step`` (0-based)."""
    rate = lr * min(1.0, (step + 1) / max(1, warmup))
    if decay_start is None or step < decay_start:
        return rate
    u = (step - decay_start + 1) / max(1, decay_steps)
    return lr_min + (rate - lr_min) * decay_factor(shape, u)
