"""Drawing samples end to end, and turning them into 8-bit pixels and a grid image."""
from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import torch

from ..diffusion import VOCAB
from .denoiser import Denoiser
from .noise import NoiseSource
from .registry import SamplingError
from .samplers import get_sampler


START_DISTRIBUTIONS = ("prior", "edm")


def generate(denoiser: Denoiser, sampler: str, sigmas: torch.Tensor, shape: Sequence[int], *, count: int,
             seed: int = 0, first_index: int = 0, batch_size: int = 64, options: Mapping[str, object] | None = None,
             progress: bool = False, callback: Optional[Callable[[dict], None]] = None,
             device: str | torch.device = "cpu", start: str = "prior") -> torch.Tensor:
    """``count`` samples (indices first_index, first_index + 1, ...) of ``shape`` drawn with
    sampler ``sampler`` on ``sigmas``, float64 ``[count, *shape]`` in the data scale.
    Sample i starts from ``prior_std(sigmas[0]) * n_i`` and uses only the noise keyed by
    (seed, i), so the result does not depend on ``batch_size``. ``start``: "prior" (the
    denoiser's own prior at sigmas[0], ``Denoiser.prior_std``: N(0, I) of a VDM's chain mapped
    to VE) or "edm" (N(0, sigmas[0]^2 I), EDM's start; kept for comparison)."""
    info = get_sampler(sampler)
    if count < 1 or batch_size < 1:
        raise SamplingError(f"count and batch_size must be positive (got {count}, {batch_size})")
    if start not in START_DISTRIBUTIONS:
        raise SamplingError(f"unknown start {start!r}; choose one of: {', '.join(START_DISTRIBUTIONS)}")
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    std = denoiser.prior_std(float(sigmas[0])) if start == "prior" else float(sigmas[0])
    out = []
    for first in range(first_index, first_index + count, batch_size):
        stop = min(first + batch_size, first_index + count)
        noise = NoiseSource(seed, range(first, stop), device=device)
        x = std * noise.randn(shape)
        out.append(info.fn(denoiser, x, sigmas, noise=noise, callback=callback, progress=progress,
                           **dict(options or {})))
    return torch.cat(out)


def to_pixels(x: torch.Tensor) -> np.ndarray:
    """Data scale (-1, 1) -> uint8 {0..255}: the inverse of ``diffusion.scale_pixels``
    (x_s = 2 (x + 1/2) / 256 - 1), rounded to the nearest bin and clipped."""
    pixels = torch.round((x.to(torch.float64) + 1) * (VOCAB / 2) - 0.5).clamp(0, VOCAB - 1)
    return pixels.to(torch.uint8).cpu().numpy()


def image_grid(pixels: np.ndarray, columns: int | None = None) -> np.ndarray:
    """[K, C, H, W] uint8 -> one [rows H, columns W] (C = 1) or [rows H, columns W, C] image,
    samples in row-major order, unused cells black. columns defaults to ceil(sqrt(K))."""
    if pixels.ndim != 4:
        raise SamplingError(f"expected samples of shape [K, C, H, W] (got {tuple(pixels.shape)})")
    k, c, h, w = pixels.shape
    cols = columns or int(np.ceil(np.sqrt(k)))
    rows = -(-k // cols)
    grid = np.zeros((c, rows * h, cols * w), dtype=np.uint8)
    for i in range(k):
        r, q = divmod(i, cols)
        grid[:, r * h:(r + 1) * h, q * w:(q + 1) * w] = pixels[i]
    return grid[0] if c == 1 else grid.transpose(1, 2, 0)
