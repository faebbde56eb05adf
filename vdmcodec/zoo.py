"""Model directories and the shipped models under models/.

A model directory holds ``model.safetensors`` (EMA weights) and ``model.json``: the model
configuration under "config" and a model card (data, split, steps, CPU-hours, validation
bpd) under "card". Shipped models are found by name in the repository's ``models/``.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from .diffusion import VDM, ModelConfig
from .errors import ModelError
from .files import atomic_write_bytes  # noqa: F401  (re-exported: callers import it from here)

DEFAULT_MODEL = "mnist"
WEIGHTS = "model.safetensors"
CARD = "model.json"


def models_root() -> Path:
    """Where shipped models live: $VDMCODEC_MODELS, else models/ beside the package."""
    env = os.environ.get("VDMCODEC_MODELS")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "models"


def shipped_models() -> list[Path]:
    root = models_root()
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / WEIGHTS).is_file() and (p / CARD).is_file())


def resolve(name_or_dir: str | Path | None) -> Path:
    """A model name (shipped) or a directory -> the model directory."""
    if name_or_dir is None:
        name_or_dir = DEFAULT_MODEL
    p = Path(name_or_dir)
    if (p / WEIGHTS).is_file():
        return p
    shipped = models_root() / str(name_or_dir)
    if (shipped / WEIGHTS).is_file():
        return shipped
    names = [m.name for m in shipped_models()]
    raise ModelError(f"model {str(name_or_dir)!r} not found (not a model directory; shipped: {', '.join(names) or 'none'})")


def resolve_for_file(name: str | None, digest: str) -> Path:
    """The model directory a file needs: the model it names when that model's weights match
    the file's hash (``digest``: the hash's leading hex digits), else any shipped model whose
    weights do, so that files written by a default model that was later replaced (and kept
    under another name) still decode. With no match, the named model: the decoder reports
    the mismatch."""
    try:
        named = resolve(name)
    except ModelError:
        named = None
    if named is not None and file_sha256(named / WEIGHTS).startswith(digest):
        return named
    for m in shipped_models():
        if m != named and file_sha256(m / WEIGHTS).startswith(digest):
            return m
    if named is None:
        names = [m.name for m in shipped_models()]
        raise ModelError(f"this file needs model {name!r} (weights sha256 {digest}...), which is not here "
                         f"(shipped: {', '.join(names) or 'none'}; pass --model DIR)")
    return named


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_card(model_dir: Path) -> dict:
    try:
        return json.loads((Path(model_dir) / CARD).read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"{model_dir}: unreadable {CARD} ({e})") from None


def load_model(name_or_dir: str | Path | None = None, device: str | torch.device = "cpu") -> tuple[VDM, dict]:
    """Load a model for evaluation (float32, eval mode). Returns (model, info) where info
    has the card, config, directory, name and weights hash."""
    from safetensors.torch import load_file

    model_dir = resolve(name_or_dir)
    meta = read_card(model_dir)
    try:
        cfg = ModelConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise ModelError(f"{model_dir}: bad model config in {CARD} ({e})") from None
    model = VDM(cfg)
    try:
        state = load_file(str(model_dir / WEIGHTS))
        model.load_state_dict(state)
    except Exception as e:
        raise ModelError(f"{model_dir}: cannot load weights ({type(e).__name__}: {str(e)[:200]})") from None
    model.to(device).eval().requires_grad_(False)
    info = {
        "dir": str(model_dir),
        "name": meta.get("card", {}).get("name", model_dir.name),
        "sha256": file_sha256(model_dir / WEIGHTS),
        "card": meta.get("card", {}),
        "config": meta["config"],
    }
    return model, info


def save_model(model_dir: Path, model: VDM, card: dict) -> None:
    """Write weights (safetensors) and model.json atomically."""
    from safetensors.torch import save

    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(Path(model_dir) / WEIGHTS, save(state))
    meta = {"config": model.cfg.to_dict(), "card": card}
    atomic_write_bytes(Path(model_dir) / CARD, (json.dumps(meta, indent=2) + "\n").encode())
