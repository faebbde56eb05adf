"""Training configuration as frozen dataclasses, loadable from a JSON or TOML file of the
form {"model": {"schedule": {...}, "network": {...}}, "train": {...}}."""
from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..diffusion import ModelConfig
from ..errors import DataError
from ..objective import ObjectiveConfig
from .augment import AugmentConfig
from .lr_schedule import DECAY_SHAPES


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 64
    lr: float = 5e-4
    lr_warmup: int = 200
    # optional decay after the constant phase (lr_schedule.py): from step lr_decay_start
    # the rate falls to lr_min over lr_decay_steps steps, then stays there
    lr_decay_start: int | None = None
    lr_decay_steps: int = 1000
    lr_min: float = 0.0
    lr_decay_shape: str = "1-sqrt"
    weight_decay: float = 0.01
    adam_betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    steps: int = 10_000
    eval_every: int = 1000
    eval_images: int = 1000
    ckpt_every: int = 500
    log_every: int = 50
    seed: int = 0
    bf16: bool = False
    patch_size: int | None = None  # random crops for folders of large images
    val_patch_size: int | None = None  # validation crops of images of mixed sizes (None: patch_size)
    crop_multiple: int = 1         # training crops' corners on multiples of this (8: the JPEG block grid)
    threads: int | None = None     # torch.set_num_threads; None keeps torch's default
    # training-objective options (vdmcodec/objective.py): t sampling, weighting, STF, L_hybrid
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    # training-crop augmentations (augment.py): chroma subsampling, gray stored as RGB
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self):
        positive = {"batch_size": self.batch_size, "crop_multiple": self.crop_multiple, "patch_size": self.patch_size,
                    "val_patch_size": self.val_patch_size, "threads": self.threads}
        bad = [f"{k} must be a positive integer, got {v!r}" for k, v in positive.items()
               if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1)]
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            bad.append(f"lr must be positive, got {self.lr!r}")
        if self.lr_decay_start is not None:
            if isinstance(self.lr_decay_start, bool) or not isinstance(self.lr_decay_start, int) or self.lr_decay_start < 0:
                bad.append(f"lr_decay_start must be a step (integer >= 0) or null, got {self.lr_decay_start!r}")
            if isinstance(self.lr_decay_steps, bool) or not isinstance(self.lr_decay_steps, int) or self.lr_decay_steps < 1:
                bad.append(f"lr_decay_steps must be a positive integer, got {self.lr_decay_steps!r}")
        if not (isinstance(self.lr_min, (int, float)) and 0 <= self.lr_min <= (self.lr if isinstance(self.lr, (int, float)) else 0)):
            bad.append(f"lr_min must be in [0, lr], got {self.lr_min!r}")
        if self.lr_decay_shape not in DECAY_SHAPES:
            bad.append(f"lr_decay_shape must be one of {list(DECAY_SHAPES)}, got {self.lr_decay_shape!r}")
        if not (isinstance(self.ema_decay, (int, float)) and 0 <= self.ema_decay < 1):
            bad.append(f"ema_decay must be in [0, 1), got {self.ema_decay!r}")
        if bad:
            raise ValueError("; ".join(bad))


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        train = asdict(self.train)
        train["objective"] = self.train.objective.to_dict()
        return {"model": self.model.to_dict(), "train": train}

    @staticmethod
    def from_dict(d: dict) -> "RunConfig":
        unknown = set(d) - {"model", "train"}
        if unknown:
            raise DataError(f"config: unknown sections {sorted(unknown)}; expected 'model' and 'train'")
        t = dict(d.get("train", {}))
        names = {f.name for f in fields(TrainConfig)}
        bad = set(t) - names
        if bad:
            raise DataError(f"config: unknown train options {sorted(bad)}; valid: {sorted(names)}")
        if "adam_betas" in t:
            t["adam_betas"] = tuple(t["adam_betas"])
        for key, cls in (("augment", AugmentConfig), ("objective", ObjectiveConfig)):
            if key in t:
                t[key] = _sub_config(key, cls, t[key])
        try:
            model = ModelConfig.from_dict(d.get("model", {}))
        except (TypeError, ValueError) as e:
            raise DataError(f"config: bad model section ({e})") from None
        try:
            train = TrainConfig(**t)
        except (TypeError, ValueError) as e:
            raise DataError(f"config: bad train section ({e})") from None
        return RunConfig(model=model, train=train)


def _sub_config(key: str, cls, values: dict):
    """train.<key> as a ``cls``; unknown or bad options give a one-line DataError."""
    if not isinstance(values, dict):
        raise DataError(f"config: train.{key} must be a table of options, got {values!r}")
    names = {f.name for f in fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise DataError(f"config: unknown train.{key} options {sorted(unknown)}; valid: {sorted(names)}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise DataError(f"config: bad train.{key} ({e})") from None


def load_config(path: Path | None) -> RunConfig:
    if path is None:
        return RunConfig()
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise DataError(f"{path}: cannot read config ({e.strerror})") from None
    try:
        d = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise DataError(f"{path}: not valid {'TOML' if path.suffix == '.toml' else 'JSON'} ({e})") from None
    return RunConfig.from_dict(d)
