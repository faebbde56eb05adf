"""Warm start: begin a run from a trained model's weights instead of a fresh network.

The use is a change of output head, not of architecture: a model trained without learned
variances (iDDPM) gains the v channels of ``conv_out`` and keeps everything it has learnt.
Every tensor of the new model must exist in the source with the same shape, except an
output tensor that grows along its first (output-channel) axis: its first rows come from
the source and the new rows keep their initial value (zero for ``conv_out``, so v = tanh(0)
= 0 at the start: the geometric mean of DDPM's two variances). Anything else is an error.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..diffusion import VDM
from ..errors import DataError
from ..zoo import load_model

GROWABLE = ("net.conv_out.weight", "net.conv_out.bias")


def warm_start(model: VDM, source: str | Path) -> dict:
    """Copy the weights of ``source`` (a shipped model name or model directory) into
    ``model`` in place. Returns what the card records: the source's name, steps, CPU-hours,
    weights hash and the tensors that grew."""
    src_model, info = load_model(source)
    src, dst = src_model.state_dict(), model.state_dict()
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
            "cpu_hours": card.get("cpu_hours"), "grown": grown}
