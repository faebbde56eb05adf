"""Stable Target Field (Xu, Tong & Jaakkola 2023), in the VP/VDM form (docs/training.md).

For a training example x_i with z_t = alpha_t x_i + sigma_t eps, the plain target of the
eps-prediction loss is eps. STF replaces it by the self-normalised estimate of E[eps | z_t]
over a reference batch {x_j} that contains x_i:

    w_j = softmax_j( -||z_t - alpha_t x_j||^2 / (2 sigma_t^2) )          (STF eq. 6)
    eps_STF = sum_j w_j (z_t - alpha_t x_j) / sigma_t = eps + (alpha_t / sigma_t) (x_i - sum_j w_j x_j)

With a reference batch of one (x_i only) this is eps; as the batch grows it tends to the
exact posterior mean over the data distribution the references are drawn from.
"""
from __future__ import annotations

import torch

from .schedules import alpha_sigma


def reference_mask(batch: int, pool: int, reference_size: int, device=None) -> torch.Tensor:
    """[batch, pool] boolean: example i's reference set is the window of ``reference_size``
    pool entries starting at i (cyclically), so it always holds the example itself (pool
    entry i) and, when reference_size == pool, the whole pool."""
    if not 1 <= reference_size <= pool or batch > pool:
        raise ValueError(f"need 1 <= reference_size <= pool and batch <= pool (got reference_size={reference_size}, "
                         f"pool={pool}, batch={batch})")
    i = torch.arange(batch, device=device)[:, None]
    j = torch.arange(pool, device=device)[None, :]
    return (j - i) % pool < reference_size


@torch.no_grad()
def stf_eps_target(z_t: torch.Tensor, gamma_t: torch.Tensor, x: torch.Tensor, eps: torch.Tensor,
                   x_extra: torch.Tensor | None, reference_size: int) -> torch.Tensor:
    """The STF target for eps. z_t, x, eps: [B, ...] (x at data scale, z_t = alpha x + sigma
    eps); gamma_t: [B]; x_extra: [M, ...] further reference examples (or None). The pool is
    the batch followed by x_extra; each example uses ``reference_size`` entries of it,
    itself included. Distances in float64: at gamma = -13 the logits are differences of
    order 1e-3 divided by 2 sigma_t^2 ~ 3e-6."""
    pool = x if x_extra is None else torch.cat([x, x_extra.to(x.dtype)])
    B, P = x.shape[0], pool.shape[0]
    mask = reference_mask(B, P, reference_size, x.device)
    zf, pf = z_t.flatten(1).double(), pool.flatten(1).double()
    alpha_t, sigma_t = alpha_sigma(gamma_t.double())
    # ||z_i - alpha_i x_j||^2 = ||z_i||^2 - 2 alpha_i <z_i, x_j> + alpha_i^2 ||x_j||^2
    d2 = (zf.square().sum(1, keepdim=True) - 2 * alpha_t[:, None] * (zf @ pf.T)
          + alpha_t.square()[:, None] * pf.square().sum(1)[None, :])
    logits = (-d2 / (2 * sigma_t.square()[:, None])).masked_fill(~mask, float("-inf"))
    w = torch.softmax(logits, dim=1)
    x_hat = w @ pf
    target = eps.flatten(1).double() + (alpha_t / sigma_t)[:, None] * (x.flatten(1).double() - x_hat)
    return target.to(eps.dtype).reshape(eps.shape)
