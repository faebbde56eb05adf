"""A quick look before the chain: run the model only on images it can win.

Compress writes, per image, the model-coded result or the best classical one, whichever is
smaller; the model's way costs T network passes over the image (about a minute for a
768x512 photo at T = 64 here), also on images where the classical file is several times
smaller (screenshots, palette and gray images: the model knows photographs). The
preflight estimates the model's rate from the continuous-time negative ELBO on a few
crops of the image, ``crops`` crops of ``crop`` x ``crop`` pixels on a regular grid (the
corners included), each at ``draws`` low-discrepancy draws of t: ``crops x draws`` network
passes over ``crop``-sized inputs, about 1% of the chain's work on a 768x512 photo. The
chain runs on a photo without a JPEG lattice only when even the estimate times
``clean_margin`` is below the classical bits (the model wins on any reading of the estimate).

Measured at T = 64 (step-24152 model, 2026-12-05, benchmarks/results/natural.md at commit 9672d8a): on the 15
photos without a JPEG lattice,
the model-coded file is 0.88-1.07 times the estimate and never below the best classical
file (it lost by 1-10%), so the chain ran minutes for nothing on them; ``clean_margin``
1.13 is the largest ratio seen, so that on such photos the chain runs only where it wins
whatever the estimate's error. Only the encoder's choice depends on it (the file records
each image's method), so it never touches losslessness.

Decoded JPEGs (jpeg_prior.has_lattice, a few hundredths of a second) skip that estimate. A
quick probe (planner.QUICK_PROBE: 16 crops of 48x48 at 2 levels, its rate alone) runs beside the
classical codecs and gives up those that would lose even if their prior saved the most seen
(``loses_before_prior``); on the others, the one probe of the chain's network that chooses
their prior (``Probe``: 16 crops at 4 levels) also estimates their rate, and
``loses_with_prior`` decides.

On photos without a JPEG lattice the
network estimate itself costs 1-3 s, as much as JPEG XL e9's whole encode of a small photo.
The card's calibration (``coding_preflight``, fitted by vdmcodec.training.fit_preflight
from the photos benchmark) records the least ratio of the model-coded file to the best
classical one over the validation photos without a lattice; where it is at least
``plain_floor`` (the model lost on every such photo), compress gives those photos to the
classical codecs without asking the network, except at effort 8-9 (effort.py). The shipped
``natural`` card's value: 1.0074 (CSet14 comic, T = 32; fitted 2026-12-08).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..diffusion import VDM, low_discrepancy_t, scale_pixels
from ..likelihood import nats_to_bpd
from .priors import TilePrior


@dataclass(frozen=True)
class PreflightConfig:
    crops: int = 16        # crops per image (fewer on images smaller than crops x crop^2 pixels)
    crop: int = 64         # their side: the photo model's training crop
    draws: int = 4         # low-discrepancy draws of t per crop
    clean_margin: float = 1.13  # without a JPEG lattice, run only when estimate x this < classical
    min_pixels: int = 256 * 256  # smaller images go through the chain without a preflight
    plain_floor: float = 1.0  # photos without a JPEG lattice skip the estimate where the card's calibration is >= this
    prior_margin: float = 1.13  # after the probe: skip when (its rate - its choice's saving) / this >= classical
    prior_saving_max: float = 0.25  # before it: skip when the quick rate x (1 - this) / prior_margin >= classical
    seed: int = 0          # the estimate's noise: fixed, so compress is deterministic

    def __post_init__(self):
        if self.crops < 1 or self.crop < 1 or self.draws < 1:
            raise ValueError("preflight crops, crop and draws must be >= 1")
        if not (self.clean_margin >= 1.0 and self.prior_margin >= 1.0):
            raise ValueError(f"preflight margins must be >= 1, got {self.clean_margin}, {self.prior_margin}")
        if not 0.0 <= self.prior_saving_max < 1.0:
            raise ValueError(f"preflight prior_saving_max must be in [0, 1), got {self.prior_saving_max}")


def calibrated_floor(card: dict, where: str = "model") -> float | None:
    """The card's least model-coded / best classical ratio over validation photos without a
    JPEG lattice (``coding_preflight.plain_floor``), or None where it has none."""
    cal = card.get("coding_preflight")
    if cal is None:
        return None
    floor = cal.get("plain_floor") if isinstance(cal, dict) else None
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not math.isfinite(floor) or floor <= 0:
        from ..errors import ModelError

        raise ModelError(f"{where}: card's coding_preflight.plain_floor must be a positive number, got {cal!r}")
    return float(floor)


def plain_photos_lose(card: dict, cfg: PreflightConfig, where: str = "model") -> bool:
    """Whether the card's calibration says the model lost on every validation photo without a
    JPEG lattice by at least ``cfg.plain_floor`` (then compress skips the network estimate
    on such photos at efforts below 8)."""
    floor = calibrated_floor(card, where)
    return floor is not None and floor >= cfg.plain_floor


def crop_origins(h: int, w: int, n: int, side: int) -> list[tuple[int, int]]:
    """Top-left corners of about ``n`` crops of ``side`` (clipped to the image) on a grid
    of rows x cols spread evenly over an h x w image, the four corners included."""
    sh, sw = min(side, h), min(side, w)
    rows = max(1, min(n, round(math.sqrt(n * h / w))))
    cols = max(1, -(-n // rows))
    ys = np.linspace(0, h - sh, rows).round().astype(int)
    xs = np.linspace(0, w - sw, cols).round().astype(int)
    return [(int(y), int(x)) for y in ys for x in xs]


PROBE_ALIGN = 16  # the probe's crops start on multiples of JPEG's largest block (a 4:2:0 MCU)


def cell_origins(h: int, w: int, n: int, side: int, align: int = 1) -> list[tuple[int, int]]:
    """Top-left corners of about ``n`` crops of ``side`` (clipped to the image), each centred
    in its cell of a grid of rows x cols equal cells over an h x w image, then moved up and
    left to a multiple of ``align``: every crop stands for an equal share of the image
    (``crop_origins`` puts a crop in each corner, so that the border is drawn more often than
    the inside)."""
    sh, sw = min(side, h), min(side, w)
    rows = max(1, min(n, round(math.sqrt(n * h / w))))
    cols = max(1, -(-n // rows))
    ys = np.clip(((np.arange(rows) + 0.5) * h / rows - sh / 2).round().astype(int), 0, h - sh) // align * align
    xs = np.clip(((np.arange(cols) + 0.5) * w / cols - sw / 2).round().astype(int), 0, w - sw) // align * align
    return [(int(y), int(x)) for y in ys for x in xs]


def probe_origins(h: int, w: int, n: int, side: int) -> list[tuple[int, int]]:
    """The probe's crops: ``cell_origins`` on multiples of PROBE_ALIGN, so that every
    structure prior sees all crops of a level at one block phase (one call per level)."""
    return cell_origins(h, w, n, side, PROBE_ALIGN)


def preflight_crops(pixels: np.ndarray, cfg: PreflightConfig, place=crop_origins) -> tuple[list[tuple[int, int]], np.ndarray]:
    """The crops' origins (``place``) and the crops (uint8 [N, h, w, C]) of ``cfg`` on an image."""
    h, w, _ = pixels.shape
    origins = place(h, w, max(1, min(cfg.crops, math.ceil(h * w / cfg.crop**2))), cfg.crop)
    side_h, side_w = min(cfg.crop, h), min(cfg.crop, w)
    return origins, np.stack([pixels[y : y + side_h, x : x + side_w] for y, x in origins])


@torch.no_grad()
def estimate_bpd(model: VDM, pixels: np.ndarray, cfg: PreflightConfig = PreflightConfig()) -> float:
    """The model's negative ELBO (continuous time) in bits per subpixel of ``pixels`` (uint8
    [H, W, C] with C the model's channels), estimated on crops. The crops' count shrinks on
    images smaller than ``crops`` crops and their draws grow to keep at least crops x draws
    network passes per crop-sized input."""
    origins, batch = preflight_crops(pixels, cfg)
    draws = math.ceil(cfg.crops * cfg.draws / len(origins))
    device = next(model.parameters()).device
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).to(device)  # channels_last, as the NHWC arithmetics run
    g = torch.Generator().manual_seed(cfg.seed)
    nats = model.loss_recon(x, torch.randn(x.shape, generator=g).to(device)) + model.loss_prior(x)
    for _ in range(draws):
        t = low_discrepancy_t(x.shape[0], g, device)
        nats = nats + model.loss_diff_continuous(x, t, torch.randn(x.shape, generator=g).to(device)) / draws
    return float(nats_to_bpd(nats.double(), x[0].numel()).mean())


def loses_with_prior(estimate: float, saving: float, classical_bits: float, subpixels: int,
                     cfg: PreflightConfig = PreflightConfig()) -> bool:
    """After the probe (``Probe``): its rate less its choice's saving (a structure prior's or
    a correlation share's; bits per subpixel), over ``prior_margin``, is not below the
    classical file. Measured (`natural`, T = 32, the probe of planner.PROBE, 2026-12-07,
    experiments/results/probe_calibration.md) on the 18 RGB validation photos: the
    model-coded file was 0.89-1.03 times the estimate (face and baby 0.89-0.90; the screen
    capture ppt3 0.82), so ``prior_margin`` 1.13 (above 1 / 0.89) gives up only photos that
    would lose on the most pessimistic estimate seen but ppt3's. The four decoded JPEGs the
    model wins on estimate at 0.85-0.94 times their classical file; ppt3 at 1.40 (its
    model-coded file: 1.15)."""
    return (estimate - saving) / cfg.prior_margin >= classical_bits / subpixels


def loses_before_prior(quick_rate: float, classical_bits: float, subpixels: int,
                       cfg: PreflightConfig = PreflightConfig()) -> bool:
    """Before the probe, from a quicker one (planner.QUICK_PROBE: half its draws on smaller
    crops, no prior tried): a decoded JPEG loses even if its prior saved ``prior_saving_max`` of the rate, more
    than any did on the validation photos (woman 0.22, the other three winners 0.13-0.16;
    ``loses_with_prior``'s margin on top). A prior that saved more would be missed: a larger
    file, never a wrong one. Measured (`natural`, T = 32, 2026-12-07) on the five decoded
    JPEGs, quick rate over the best classical file: zebra 0.99, woman 1.05, coastguard 1.12,
    foreman 1.14 (the full probe's: 1.03, 1.09, 1.11, 1.10), the screen capture ppt3 1.67
    (full 1.62; given up: 1.67 x 0.75 / 1.13 = 1.11). Giving ppt3 up here spares it the JPEG
    prior's candidates and the full probe: its compress went from 2.3 to 1.15-1.41 times JPEG
    XL e9's own encode (benchmarks.photos, two threads, two runs)."""
    return quick_rate * (1.0 - cfg.prior_saving_max) / cfg.prior_margin >= classical_bits / subpixels


def sure_win(estimate: float, classical_bits: float, subpixels: int, cfg: PreflightConfig = PreflightConfig()) -> bool:
    """Even the pessimistic reading of the estimate (times ``clean_margin``) is below the
    classical file: the chain runs without asking for a JPEG lattice."""
    return estimate * cfg.clean_margin < classical_bits / subpixels


def probe_design(crops: int, T: int, draws: int) -> list[tuple[int, list[int], int]]:
    """Which crops are drawn at which level: (level i, crops, weight) per level drawn. Levels
    1..T fall into ``draws`` strata of consecutive levels (each level its own stratum when
    draws >= T); in stratum k of m levels, crop n is drawn at its level (n + k) mod m, weighted
    m. Every crop is drawn once per stratum, and the crops share out each stratum's levels
    evenly: with one level per stratum for every crop, the estimate moved by 9% between level
    offsets (`natural`, CSet14 foreman, T = 32, 8 strata), because the per-level rates zigzag."""
    draws = min(T, draws)
    edges = [k * T // draws for k in range(draws + 1)]
    out = []
    for k in range(draws):
        m = edges[k + 1] - edges[k]
        for off in range(m):
            chosen = [n for n in range(crops) if (n + k) % m == off]
            if chosen:
                out.append((edges[k] + off + 1, chosen, m))
    return out


def _probe_levels(chain, origins: list[tuple[int, int]], crops: np.ndarray, cfg: PreflightConfig):
    """The draws of the chain-rate estimates on ``crops`` (uint8 [N, h, w, C] at ``origins``;
    ``probe_design``): per level i drawn, its crops' z_i ~ q(z_i | x) and the network's p.
    Yields (those crops' origins, their scaled pixels x, i, eps, z_i, p's mean, p's std or
    None, their weight)."""
    x_all = scale_pixels(torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous()).double().numpy()
    rng = np.random.default_rng(cfg.seed)
    grid = chain.grid
    draws = []
    for i, chosen, weight in probe_design(len(origins), chain.cfg.steps, cfg.draws):
        x = x_all[chosen]
        eps = rng.standard_normal(x.shape)
        draws.append(([origins[n] for n in chosen], x, i, eps, grid.alpha[i] * x + grid.sigma[i] * eps, float(weight)))
    p = chain.p_mean_std_levels([(z, i) for _, _, i, _, z, _ in draws])  # all levels in a few network calls
    for (chosen, x, i, eps, z, weight), (mean, std) in zip(draws, p):
        yield chosen, x, i, eps, z, mean, std, weight


def _ends_nats(grid, v: np.ndarray, rng: np.random.Generator) -> float:
    """The chain's two ends on subpixels ``v`` (uint8; nats, summed): -log p(x | z_0) with z_0
    drawn from q(z_0 | x) (p(x | z_0) as the chain codes it: the pixel values' Gaussians around
    z_0, normalised, over a window of neighbours), and KL(q(z_T | x) || N(0, 1))."""
    a0, s0, aT, sT = grid.alpha[0], grid.sigma[0], grid.alpha[-1], grid.sigma[-1]
    v = v.astype(np.int64)
    z0 = grid.x_means[v] + s0 * rng.standard_normal(v.shape)
    near = np.clip(v[..., None] + np.arange(-8, 9), 0, len(grid.x_means) - 1)
    logits = -np.square(z0[..., None] - grid.x_means[near]) / (2.0 * s0 * s0)
    top = logits.max(-1, keepdims=True)
    # duplicates at the clipped ends count once: the window's distinct values only
    distinct = np.concatenate([np.ones(near.shape[:-1] + (1,), bool), np.diff(near, axis=-1) != 0], -1)
    lse = top[..., 0] + np.log((np.exp(logits - top) * distinct).sum(-1))
    recon = float((lse + np.square(z0 - grid.x_means[v]) / (2.0 * s0 * s0)).sum())
    prior = float((0.5 * (sT * sT + np.square(aT / a0 * grid.x_means[v]) - 1.0 - 2.0 * math.log(sT))).sum())
    return recon + prior


class Probe:
    """One pass of a chain's network over the crops of ``cfg`` on an image, and what it says
    (bits per subpixel of the crops): the preflight's rate, and what each structure prior and
    each share of the channel correlations would save off it (planner.py chooses them all
    from this one pass).

    Each crop is drawn at ``cfg.draws`` levels stratified over 1..T (all of them when draws >=
    T), z_i from q(z_i | x); per level, q(z_{i-1} | z_i, x) = N(mean_q, b) against the
    network's p(z_{i-1} | z_i) = N(mean, s^2) with its learned std s."""

    def __init__(self, chain, pixels: np.ndarray, cfg: PreflightConfig = PreflightConfig()):
        self.chain, self.cfg = chain, cfg
        self.origins, crops = preflight_crops(pixels, cfg, probe_origins)
        self.subpixels = crops[0].size
        self.draws = list(_probe_levels(chain, self.origins, crops, cfg))
        grid, nats = chain.grid, _ends_nats(chain.grid, crops, np.random.default_rng([cfg.seed, 1]))
        for _, x, i, eps, z, mean, std, per_draw in self.draws:
            b = grid.std_p[i - 1] ** 2
            var = b if std is None else np.square(std)
            nats += per_draw * float((0.5 * (b / var - 1.0 + np.log(var / b) + np.square(self._offset(i, z, eps, mean))
                                             / var)).sum())
        self.rate = self._bits(nats)  # the chain's T-step rate: factorised p, no prior

    def _bits(self, nats: float) -> float:
        return float(nats_to_bpd(nats / len(self.origins), self.subpixels))

    def _offset(self, i: int, z: np.ndarray, eps: np.ndarray, mean: np.ndarray) -> np.ndarray:
        """mean_q - mean at level i."""
        grid = self.chain.grid
        c = -math.expm1(grid.gamma[i - 1] - grid.gamma[i])
        return grid.alpha[i - 1] / grid.alpha[i] * (z - c * grid.sigma[i] * eps) - mean

    def prior_savings(self, priors) -> tuple[float, ...]:
        """Per structure prior (priors/structure.py, priors/jpeg_prior.py): what it saves off
        ``rate`` where it replaces the network's eps_hat. mean_q - mean = scale * (eps_hat -
        eps), so only the KL's mean term changes (a paired difference at the same draws). The
        continuous-time bound would not do here: it weights every direction alike, while the
        learned stds make errors cost more where the network is sure."""
        saved, grid = np.zeros(len(priors)), self.chain.grid
        for origins, x, i, eps, z, mean, std, per_draw in self.draws if priors else ():
            std = grid.std_p[i - 1] if std is None else std
            scale = grid.alpha[i - 1] / grid.alpha[i] * -math.expm1(grid.gamma[i - 1] - grid.gamma[i]) * grid.sigma[i]
            eps_hat = (grid.alpha[i - 1] / grid.alpha[i] * z - mean) / scale
            weight = np.broadcast_to(scale**2 / (2.0 * np.square(std)), x.shape)
            base = weight * np.square(eps_hat - eps)
            phases = {}  # crops at one block phase are adjusted in one call (a prior sees origins modulo its block)
            for n, (y0, x0) in enumerate(origins):
                phases.setdefault((y0 % PROBE_ALIGN, x0 % PROBE_ALIGN), []).append(n)
            for phase, idx in phases.items():
                for j, prior in enumerate(priors):
                    adj = TilePrior(prior, phase).adjust_eps(eps_hat[idx], z[idx], float(grid.alpha[i]), float(grid.sigma[i]))
                    saved[j] += per_draw * float((base[idx] - weight[idx] * np.square(adj - eps[idx])).sum())
        return tuple(self._bits(v) for v in saved)

    def corr_savings(self, scales) -> tuple[float, ...]:
        """Per share ``scale`` of the chain's channel correlations (chain.corr): what p = N(mean,
        b I + S (scale R) S) per pixel (S: the learned extra std; level_codecs.p_codec_corr)
        saves off the factorised p. The card's table is an average over training crops; a
        photo's own correlations run from about none to more than it (the best share on
        validation crops ranged over 0 to 1). Zeros without a table or learned stds."""
        saved, corr = np.zeros(len(scales)), self.chain.corr
        for _, x, i, eps, z, mean, std, per_draw in self.draws if corr is not None and len(scales) else ():
            if std is None:
                return (0.0,) * len(scales)
            r = self._offset(i, z, eps, mean).transpose(0, 2, 3, 1)
            saved += per_draw * _corr_savings(corr[i], r, np.square(std).transpose(0, 2, 3, 1),
                                              self.chain.grid.std_p[i - 1] ** 2, scales)
        return tuple(self._bits(v) for v in saved)


def _corr_savings(rho, r: np.ndarray, var: np.ndarray, b: float, scales) -> np.ndarray:
    """Nats saved, per share of the channel correlations ``rho`` = (r01, r02, r12), by p =
    N(mean, b I + S (share R) S) over the factorised p = N(mean, var) on pixels whose q-mean
    offset is ``r`` and whose learned variance is ``var`` ([..., 3] each)."""
    s = np.sqrt(np.maximum(var - b, 0.0))
    base = 0.5 * (b / var - 1 + np.log(var / b) + np.square(r) / var).sum()
    r01, r02, r12 = rho
    R = np.array([[1.0, r01, r02], [r01, 1.0, r12], [r02, r12, 1.0]])
    out = np.zeros(len(scales))
    for j, scale in enumerate(scales):
        Rs = np.eye(3) + scale * (R - np.eye(3))
        sig = b * np.eye(3) + s[..., :, None] * Rs * s[..., None, :]
        inv = np.linalg.inv(sig)
        kl = 0.5 * (b * np.trace(inv, axis1=-2, axis2=-1) - 3 + np.linalg.slogdet(sig)[1] - 3 * math.log(b)
                    + np.einsum("...i,...ij,...j->...", r, inv, r)).sum()
        out[j] = base - kl
    return out
