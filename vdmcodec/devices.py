"""Which torch device runs the network: one parser for every command's ``--device``.

    auto      the first CUDA device when torch sees one, else the CPU
    cpu       the CPU
    cuda      the current CUDA device (cuda:0 unless the process chose another)
    cuda:N    CUDA device N

Training under torchrun maps ``auto`` and ``cuda`` to cuda:LOCAL_RANK (``for_rank``): each
rank takes its own GPU. A request this machine cannot serve (no CUDA build, no GPU
visible, an index past the last device) is a DeviceError with one line, before any model is
loaded. Library functions take any ``torch.device`` (tests use ``meta``); only the command
line is limited to these spellings.
"""
from __future__ import annotations

import re

import torch

from .errors import VdmcodecError

CHOICES = "auto, cpu, cuda or cuda:N"
HELP = ("Torch device for the network: auto (the first GPU if torch sees one, else the CPU), cpu, cuda or "
        "cuda:N.")
_SPEC = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


class DeviceError(VdmcodecError):
    """A --device this machine cannot serve, or a spelling outside CHOICES."""


def cuda_count() -> int:
    """CUDA devices torch can use here (0 on a CPU build or without a visible GPU)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _no_cuda(spec: str) -> DeviceError:
    why = ("this torch is a CPU build" if torch.version.cuda is None
           else "no CUDA device is visible (check CUDA_VISIBLE_DEVICES and the driver)")
    return DeviceError(f"--device {spec}: {why}; use --device cpu")


def parse_device(spec: str | torch.device | None, local_rank: int | None = None) -> torch.device:
    """``spec`` (CHOICES; None is auto) as a torch.device this machine has. ``local_rank``:
    the process's rank on its node under torchrun, which ``auto`` and ``cuda`` then take
    (an explicit cuda:N is refused there, since every rank would share it)."""
    if isinstance(spec, torch.device):
        return spec
    text = "auto" if spec is None else str(spec).strip().lower()
    m = _SPEC.match(text)
    if m is None or (m.group(2) is not None and m.group(1) != "cuda"):
        raise DeviceError(f"--device must be {CHOICES}, got {spec!r}")
    kind, index = m.group(1), m.group(2)
    count = cuda_count()
    if kind == "cpu" or (kind == "auto" and count == 0):
        return torch.device("cpu")
    if count == 0:
        raise _no_cuda(text)
    if local_rank is not None:
        if index is not None:
            raise DeviceError(f"--device {text}: under torchrun each rank takes cuda:LOCAL_RANK; pass --device cuda")
        index = local_rank
    elif index is None:
        index = torch.cuda.current_device() if kind == "cuda" else 0
    index = int(index)
    if index >= count:
        raise DeviceError(f"--device {text}: this machine has {count} CUDA device{'s' * (count != 1)} "
                          f"(cuda:0..cuda:{count - 1})")
    return torch.device("cuda", index)


def device_kind(device: torch.device | str) -> str:
    """'cpu' or 'cuda' (what a model card records)."""
    return torch.device(device).type


def device_name(device: torch.device | str) -> str:
    """A human name: the GPU's product name, or 'cpu'."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type
