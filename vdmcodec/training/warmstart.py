"""Warm start: begin a run from a trained model's weights instead of a fresh network.

The use is a change of output head, not of architecture: a model trained without learned
variances (iDDPM) gains the v channels of ``conv_out`` and keeps everything it has learnt.
Every tensor of the new model must exist in the source with the same shape, except an
output tensor that grows along its first (output-channel) axis: its first rows come from
the source and the new rows keep their initial value (zero for ``conv_out``, so v = tanh(0)
= 0 at the start: the geometric mean of DDPM's two variances).

A U-Net with fewer residual blocks per level than the source (a cheaper network for the
same task) takes a subset of the source's blocks (``shrunk_keys``): on the way down the
first ones; on the way up the first ones and the source's last, the block that reads the
level's first skip (the one from the level above, or the input convolution). Every other
tensor must match as above. Anything else is an error.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from ..diffusion import VDM
from ..errors import DataError
from ..files import atomic_write_bytes
from ..zoo import WEIGHTS, file_sha256, load_model, read_card, resolve

GROWABLE = ("net.conv_out.weight", "net.conv_out.bias")


def shrunk_keys(dst_blocks: int, src_blocks: int, keys) -> dict[str, str]:
    """{key of the smaller network: key of the source} for U-Nets that differ only in
    residual blocks per level (``dst_blocks`` < ``src_blocks``): down blocks 0..n-1 from
    the source's 0..n-1; up blocks (n + 1 per level) 0..n-1 from the same and n from the
    source's last, src_blocks."""
    out = {}
    for k in keys:
        parts = k.split(".")
        if len(parts) > 3 and parts[0] == "net" and parts[1] in ("down", "up"):
            b = int(parts[3])
            if parts[1] == "up" and b == dst_blocks:
                parts[3] = str(src_blocks)
        out[k] = ".".join(parts)
    return out


def warm_start(model: VDM, source: str | Path) -> dict:
    """Copy the weights of ``source`` (a shipped model name or model directory) into
    ``model`` in place. Returns what the card records: the source's name, steps, CPU-hours,
    weights hash and the tensors that grew."""
    src_model, info = load_model(source)
    src, dst = src_model.state_dict(), model.state_dict()
    n_dst, n_src = model.net.cfg.num_res_blocks, src_model.net.cfg.num_res_blocks
    shrunk = None
    if n_dst < n_src and model.net.cfg == replace(src_model.net.cfg, num_res_blocks=n_dst):
        rename = shrunk_keys(n_dst, n_src, dst)
        src = {k: src[rename[k]] for k in dst if rename[k] in src}
        shrunk = [n_src, n_dst]
    missing = sorted(set(dst) - set(src))
    unexpected = sorted(set(src) - set(dst))
    if missing or unexpected:
        first = (missing or unexpected)[0]
        raise DataError(f"--init-from {info['name']}: its network differs from the config's "
                        f"({len(missing)} tensors missing, {len(unexpected)} extra, e.g. {first})")
    grown = []
    merged = {}
    for k, new in dst.items():
        old = src[k]
        if old.shape == new.shape:
            merged[k] = old.to(new.dtype)
        elif k in GROWABLE and old.shape[1:] == new.shape[1:] and old.shape[0] < new.shape[0]:
            t = new.detach().clone()
            t[: old.shape[0]] = old.to(t.dtype)
            merged[k] = t
            grown.append(k)
        else:
            raise DataError(f"--init-from {info['name']}: {k} has shape {tuple(old.shape)} there "
                            f"but {tuple(new.shape)} in the config")
    with torch.no_grad():
        model.load_state_dict(merged)
    card = info["card"]
    return {"model": info["name"], "sha256": info["sha256"], "steps": card.get("steps"),
            "cpu_hours": card.get("cpu_hours"), "grown": grown, **({"res_blocks": shrunk} if shrunk else {})}


# ---- resuming from the raw weights a model directory ships -----------------------------
#
# A model directory ships the EMA weights (model.safetensors) and, to go on training, the
# raw weights the optimiser was moving (raw.safetensors), with no optimiser moments: those
# are two-thirds of a full checkpoint and every shipped version stays in every clone. A
# restart loads the raw weights into the model, the EMA from the shipped EMA weights when
# they belong to the same step (else from the raw weights), starts AdamW afresh and
# ramps the learning rate up again over ``rewarm_steps`` steps, since fresh Adam moments
# take about 1 / (1 - beta2) steps to settle; the step count, CPU-hours and evaluation
# history go on from the source's.

RAW_WEIGHTS = "raw.safetensors"
RAW_FORMAT = "vdmcodec-raw-weights-1"
RAW_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
REWARM_STEPS = 100


def write_raw_weights(path: Path, state: dict, *, step: int, cpu_hours: float, ema_sha256: str | None = None,
                      dtype: str = "float32") -> int:
    """Write a model's raw (trainable, non-EMA) state dict as safetensors, in ``dtype``
    (float32 or bfloat16), with the step it was taken at, the CPU-hours spent to reach it
    and the hash of the EMA weights of the same step (when they are shipped beside it).
    Returns the file's size in bytes."""
    from safetensors.torch import save

    if dtype not in RAW_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(RAW_DTYPES)}, got {dtype!r}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    tensors = {k: (v.detach().to("cpu", RAW_DTYPES[dtype]) if v.is_floating_point() else v.detach().cpu()).contiguous()
               for k, v in state.items()}
    meta = {"format": RAW_FORMAT, "step": str(int(step)), "cpu_hours": repr(float(cpu_hours)), "dtype": dtype}
    if ema_sha256:
        meta["ema_sha256"] = ema_sha256
    blob = save(tensors, metadata=meta)
    atomic_write_bytes(Path(path), blob)
    return len(blob)


def read_raw_weights(path: Path) -> tuple[dict, dict]:
    """(state dict, metadata) of a raw-weights file; DataError if it is not one."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise DataError(f"{path}: no raw weights to resume from") from None
    except Exception as e:  # safetensors raises its own error types for truncated or bad headers
        raise DataError(f"{path}: unreadable raw weights ({type(e).__name__}: {str(e)[:120]})") from None
    if meta.get("format") != RAW_FORMAT:
        raise DataError(f"{path}: not a raw-weights file (format {meta.get('format')!r})")
    try:
        meta["step"] = int(meta["step"])
        meta["cpu_hours"] = float(meta["cpu_hours"])
    except (KeyError, ValueError):
        raise DataError(f"{path}: raw weights without a valid step / cpu_hours record") from None
    if meta["step"] < 0:
        raise DataError(f"{path}: negative step {meta['step']}")
    return state, meta


def raw_weights_from_checkpoint(checkpoint: Path, model_dir: Path, dtype: str = "float32") -> int:
    """Write ``model_dir/raw.safetensors`` from a training checkpoint's raw weights (its
    "model" state), recording its step and CPU-hours (a warm start's source included), and
    pairing it with ``model_dir``'s EMA weights when they are the checkpoint's own EMA.
    Returns the file's size in bytes."""
    from safetensors.torch import load_file

    st = torch.load(Path(checkpoint), map_location="cpu", weights_only=False)
    hours = st.get("cpu_seconds", 0.0) / 3600.0 + ((st.get("init_from") or {}).get("cpu_hours") or 0.0)
    ema_sha = None
    shipped = Path(model_dir) / WEIGHTS
    if shipped.is_file():
        ema = load_file(str(shipped))
        same = set(ema) == set(st["ema"]) and all(torch.equal(ema[k], st["ema"][k].float()) for k in ema)
        ema_sha = file_sha256(shipped) if same else None
    return write_raw_weights(Path(model_dir) / RAW_WEIGHTS, st["model"], step=st["step"], cpu_hours=hours,
                             ema_sha256=ema_sha, dtype=dtype)


def rewarm_factor(init_from: dict | None, step: int) -> float:
    """The learning-rate factor at ``step`` after a restart from raw weights: a linear ramp
    from 1 / rewarm_steps to 1 over the first ``rewarm_steps`` steps after the restart; 1 for
    any other run."""
    if not init_from or init_from.get("weights") != "raw":
        return 1.0
    n = int(init_from.get("rewarm_steps") or 0)
    done = step - int(init_from["steps"])
    return 1.0 if n <= 0 else min(1.0, max(0, done + 1) / n)


def restart_from_weights(trainer, source: str | Path, rewarm_steps: int = REWARM_STEPS) -> dict:
    """Continue a model's training from the raw weights its directory ships (see above), in
    a freshly constructed ``Trainer`` (not a resumed one). Returns the record the card keeps
    under ``init_from`` (the source's name, raw-weights hash, step, CPU-hours and warm-up)."""
    from safetensors.torch import load_file

    if rewarm_steps < 0:
        raise ValueError(f"rewarm_steps must be >= 0, got {rewarm_steps}")
    if trainer.step != 0 or trainer.init_from is not None:
        raise DataError("--init-weights raw starts a run; a resumed or warm-started run continues its own weights")
    model_dir = resolve(source)
    raw_path = model_dir / RAW_WEIGHTS
    state, meta = read_raw_weights(raw_path)
    dst = trainer.model.state_dict()
    if set(state) != set(dst):
        diff = sorted(set(state) ^ set(dst))
        raise DataError(f"{raw_path}: its network differs from the config's ({len(diff)} tensors differ, e.g. {diff[0]})")
    for k, v in dst.items():
        if state[k].shape != v.shape:
            raise DataError(f"{raw_path}: {k} has shape {tuple(state[k].shape)} there but {tuple(v.shape)} in the config")
    ema_path = model_dir / WEIGHTS
    paired = bool(meta.get("ema_sha256")) and file_sha256(ema_path) == meta["ema_sha256"]
    with torch.no_grad():
        trainer.model.load_state_dict({k: state[k].to(dst[k].dtype) for k in dst})
        ema_state = load_file(str(ema_path)) if paired else trainer.model.state_dict()
        trainer.ema.load_state_dict({k: ema_state[k].to(dst[k].dtype) for k in dst})
    card = read_card(model_dir).get("card", {})
    trainer.step = meta["step"]
    trainer.cpu_seconds = 0.0  # this run's own; the card adds the source's hours below
    trainer.eval_history = [e for e in card.get("eval_history", []) if e.get("step", 0) <= meta["step"]]
    trainer.init_from = {"model": card.get("name", model_dir.name), "weights": "raw",
                         "sha256": file_sha256(raw_path), "steps": meta["step"],
                         "cpu_hours": round(meta["cpu_hours"], 3), "ema": "shipped" if paired else "raw",
                         "rewarm_steps": int(rewarm_steps)}
    return trainer.init_from
