"""Dataset-level bpd evaluation (what `vdmcodec eval` prints)."""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from .data import ImageItem, to_tensor
from .errors import DataError
from .diffusion import VDM
from .likelihood import bpd_continuous, bpd_discrete, mean_and_stderr


def group_by_shape(items: list[ImageItem]) -> dict[tuple, list[int]]:
    groups: dict[tuple, list[int]] = defaultdict(list)
    for k, it in enumerate(items):
        groups[it.pixels.shape].append(k)
    return groups


@torch.no_grad()
def evaluate(model: VDM, items: list[ImageItem], steps: int | None = None, batch_size: int = 100,
             seed: int = 0, t_samples: int | None = None, progress: bool = True, times=None) -> dict:
    """Negative ELBO in bits per dimension over images (mean and standard error over
    images, each image weighted equally), continuous-time and with ``steps`` discrete
    (at level ``times``, a chain's: likelihood.bpd_discrete; None: uniform)."""
    channels = model.cfg.network.image_channels
    for it in items:
        if it.pixels.shape[-1] != channels:
            kind = {1: "grayscale", 3: "RGB"}
            raise DataError(f"{it.name}: a {kind.get(it.pixels.shape[-1], 'multi-channel')} image, and this model takes "
                            f"{kind.get(channels, f'{channels}-channel')} images (see `vdmcodec models`)")
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    cont = np.zeros(len(items))
    disc = np.zeros(len(items))
    terms = {"recon": np.zeros(len(items)), "prior": np.zeros(len(items))}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(items), unit="img", desc="eval", dynamic_ncols=True)
    for shape, idx in group_by_shape(items).items():
        for i in range(0, len(idx), batch_size):
            sel = idx[i : i + batch_size]
            x = to_tensor(np.stack([items[k].pixels for k in sel])).to(device)
            c = bpd_continuous(model, x, g)
            cont[sel] = c.total.cpu().numpy()
            terms["recon"][sel] = c.recon.cpu().numpy()
            terms["prior"][sel] = c.prior.cpu().numpy()
            if steps is not None:
                d = bpd_discrete(model, x, steps, g, t_samples=t_samples, times=times)
                disc[sel] = d.total.cpu().numpy()
            if bar is not None:
                bar.update(len(sel))
    if bar is not None:
        bar.close()
    m, se = mean_and_stderr(torch.from_numpy(cont))
    out = {"images": len(items), "bpd_continuous": m, "bpd_continuous_se": se,
           "bpd_recon": float(terms["recon"].mean()), "bpd_prior": float(terms["prior"].mean())}
    if steps is not None:
        md, sed = mean_and_stderr(torch.from_numpy(disc))
        out.update({"steps": steps, "bpd_discrete": md, "bpd_discrete_se": sed})
    # the archive-level figure (all subpixels pooled) differs from the per-image mean
    # when images differ in size; report it too
    dims = np.array([it.pixels.size for it in items], dtype=np.float64)
    out["bpd_continuous_pooled"] = float((cont * dims).sum() / dims.sum())
    if steps is not None:
        out["bpd_discrete_pooled"] = float((disc * dims).sum() / dims.sum())
    return out
