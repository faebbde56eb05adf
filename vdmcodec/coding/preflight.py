"""A quick look before the chain: run the model only on images it can win.

Compress writes, per image, the model-coded result or the best classical one, whichever is
smaller; the model's way costs T network passes over the image (about a minute for a
768x512 photo at T = 64 here), also on images where the classical file is several times
smaller (screenshots, palette and gray images: the model knows photographs). The
preflight estimates the model's rate from the continuous-time negative ELBO on a few
crops of the image, ``crops`` crops of ``crop`` x ``crop`` pixels on a regular grid (the
corners included), each at ``draws`` low-discrepancy draws of t: ``crops x draws`` network
passes over ``crop``-sized inputs, about 1% of the chain's work on a 768x512 photo. The
chain runs when even the estimate times ``clean_margin`` is below the classical bits (the
model wins on any reading of the estimate); it never runs when even the estimate divided by
``margin`` is above them; in between it runs only on decoded JPEGs (a JPEG lattice the
chain's prior can use, priors/jpeg_prior.py), where the model wins by 10-20%.

Measured (the step-12667 photo model, CSet14 and CSet5, 16 crops of 64 px, 4 draws, three
noise seeds): estimate / model-coded file between 0.84 and 1.13 over the 19 photos, where
the model-coded file is between 0.91 and 3.5 times the classical one. The default margin
1.25 leaves room above the largest overestimate seen (1.13). Measured at T = 64 (step-24152
model, 2026-12-05, benchmarks/results/natural.md): on the 15 photos without a JPEG lattice,
the model-coded file is 0.88-1.07 times the estimate and never below the best classical
file (it lost by 1-10%), so the chain ran minutes for nothing on them; ``clean_margin``
1.13 is the largest ratio seen, so that on such photos the chain runs only where it wins
whatever the estimate's error. Only the encoder's choice depends on it (the file records
each image's method), so it never touches losslessness.

On photos without a JPEG lattice (jpeg_prior.has_lattice, a few hundredths of a second) the
network estimate itself costs 1-3 s, as much as JPEG XL e9's whole encode of a small photo.
The card's calibration (``coding_preflight``, fitted by vdmcodec.training.fit_preflight
from the photos benchmark) records the least ratio of the model-coded file to the best
classical one over the validation photos without a lattice; where it is at least
``plain_floor`` (the model lost on every such photo), compress gives those photos to the
classical codecs without asking the network, except at effort 8-9 (effort.py). The shipped
``natural`` card's value: 1.034 (CSet5 butterfly, T = 32; 2026-12-07).
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
    margin: float = 1.25   # skip when estimate / margin > classical bits per subpixel
    clean_margin: float = 1.13  # without a JPEG lattice, run only when estimate x this < classical
    min_pixels: int = 256 * 256  # smaller images go through the chain without a preflight
    plain_floor: float = 1.0  # photos without a JPEG lattice skip the estimate where the card's calibration is >= this
    prior_margin: float = 1.0  # after the structure probe: skip when (estimate - prior's saving) / this >= classical
    seed: int = 0          # the estimate's noise: fixed, so compress is deterministic

    def __post_init__(self):
        if self.crops < 1 or self.crop < 1 or self.draws < 1:
            raise ValueError("preflight crops, crop and draws must be >= 1")
        if not (self.margin >= 1.0 and self.clean_margin >= 1.0 and self.prior_margin >= 1.0):
            raise ValueError(f"preflight margins must be >= 1, got {self.margin}, {self.clean_margin}, "
                             f"{self.prior_margin}")


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


def preflight_crops(pixels: np.ndarray, cfg: PreflightConfig) -> tuple[list[tuple[int, int]], np.ndarray]:
    """The crops' origins and the crops (uint8 [N, h, w, C]) of ``cfg`` on an image."""
    h, w, _ = pixels.shape
    origins = crop_origins(h, w, max(1, min(cfg.crops, math.ceil(h * w / cfg.crop**2))), cfg.crop)
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


def hopeless(estimate: float, classical_bits: float, subpixels: int, cfg: PreflightConfig = PreflightConfig()) -> bool:
    """The classical file (``classical_bits`` for ``subpixels``) beats even the optimistic
    reading of the model's estimate (bits per the chain's subpixels, already scaled to the
    image's)."""
    return estimate / cfg.margin > classical_bits / subpixels


def loses_with_prior(estimate: float, saving: float, classical_bits: float, subpixels: int,
                     cfg: PreflightConfig = PreflightConfig()) -> bool:
    """After the structure probe: the estimate less its structure prior's estimated saving
    (bits per subpixel; 0 without a prior), over ``prior_margin``, is not below the classical
    file. The estimate was below the model-coded file on every validation decoded JPEG
    (`natural`, T = 32, 2026-12-07: by 3% on foreman to 16% on zebra), so a photo where even
    it loses would lose: ppt3, a screen capture (estimate less saving 1.011 x the classical
    file, model-coded file 1.147 x), where the four decoded JPEGs the model wins on are at
    0.77-0.94."""
    return (estimate - saving) / cfg.prior_margin >= classical_bits / subpixels


def sure_win(estimate: float, classical_bits: float, subpixels: int, cfg: PreflightConfig = PreflightConfig()) -> bool:
    """Even the pessimistic reading of the estimate (times ``clean_margin``) is below the
    classical file: the chain runs without asking for a JPEG lattice."""
    return estimate * cfg.clean_margin < classical_bits / subpixels


def _probe_levels(chain, pixels: np.ndarray, cfg: PreflightConfig):
    """The draws of the chain-rate estimates on the crops of ``cfg``: per level i (``cfg.draws``
    of them stratified over 1..T, all when draws >= T), z_i ~ q(z_i | x) and the network's p.
    Yields (crop origins, scaled crops x, i, eps, z_i, p's mean, p's std or None, T / draws)."""
    origins, crops = preflight_crops(pixels, cfg)
    x = scale_pixels(torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous()).double().numpy()
    rng = np.random.default_rng(cfg.seed)
    T, grid = chain.cfg.steps, chain.grid
    draws = min(T, cfg.draws)
    for i in (np.arange(draws) * T // draws + rng.integers(0, T // draws) + 1 if draws < T else range(1, T + 1)):
        i = int(i)
        eps = rng.standard_normal(x.shape)
        z = grid.alpha[i] * x + grid.sigma[i] * eps
        mean, std = chain.p_mean_std(z, i)
        yield origins, x, i, eps, z, mean, std, T / draws


@torch.no_grad()
def structure_gains(chain, pixels: np.ndarray, priors: list, cfg: PreflightConfig = PreflightConfig()) -> list[float]:
    """For each structure prior (priors/structure.py, priors/jpeg_prior.py), the estimated saving in bits per
    subpixel of ``pixels`` (uint8 [H, W, 3]) when ``chain`` (a coding.chain.DiffusionChain)
    codes them with it. What the chain pays at level i is the KL between q(z_{i-1} | z_i, x)
    and p(z_{i-1} | z_i), whose means differ by a known factor times (eps_hat - eps) and
    whose std is the network's learned one; the prior changes only eps_hat. Estimated on the
    crops of ``cfg``, each at ``cfg.draws`` levels stratified over 1..T (all of them when
    draws >= T) with z_i drawn from q(z_i | x), with and without each prior at the same draws
    (a paired difference). The continuous-time
    bound would not do here: it weights every direction alike, while the chain's learned
    stds make errors cost more where the network is sure."""
    if not priors:
        return []
    saved, grid = np.zeros(len(priors)), chain.grid
    for origins, x, i, eps, z, mean, std, per_draw in _probe_levels(chain, pixels, cfg):
        std = grid.std_p[i - 1] if std is None else std
        # mean_q - mean_p = scale * (eps_hat - eps): recover eps_hat from the mean
        scale = grid.alpha[i - 1] / grid.alpha[i] * -math.expm1(grid.gamma[i - 1] - grid.gamma[i]) * grid.sigma[i]
        eps_hat = (grid.alpha[i - 1] / grid.alpha[i] * z - mean) / scale
        weight = np.broadcast_to(scale**2 / (2.0 * np.square(std)), x.shape)
        base = weight * np.square(eps_hat - eps)
        for n, (y0, x0) in enumerate(origins):
            for j, prior in enumerate(priors):
                adj = TilePrior(prior, (y0, x0)).adjust_eps(eps_hat[n : n + 1], z[n : n + 1], float(grid.alpha[i]),
                                                            float(grid.sigma[i]))
                saved[j] += per_draw * float((base[n] - weight[n] * np.square(adj[0] - eps[n])).sum())
    return [float(nats_to_bpd(s / len(origins), x[0].size)) for s in saved]


@torch.no_grad()
def corr_scale_gains(chain, pixels: np.ndarray, scales, cfg: PreflightConfig = PreflightConfig()) -> list[float]:
    """For each share ``scale`` of ``chain``'s channel correlations (chain._corr), the
    estimated saving in bits per subpixel of ``pixels`` (uint8 [H, W, 3]) over a factorised
    p: the chain's per-level KL between q(z_{i-1} | z_i, x) = N(mean_q, b I) and p = N(mean,
    b I + S (scale R) S) per pixel (S: the learned extra std; level_codecs.p_codec_corr), on the
    crops and stratified levels of ``cfg`` (as ``structure_gains``), with the factorised p at
    the same draws (a paired difference). The table is an average over training crops; a
    photo's own correlations run from about none to more than it (measured: the best share
    on validation crops ranged over 0 to 1)."""
    if chain.corr is None or not scales:
        return [0.0] * len(scales)
    saved, grid = np.zeros(len(scales)), chain.grid
    for origins, x, i, eps, z, mean, std, per_draw in _probe_levels(chain, pixels, cfg):
        if std is None:
            return [0.0] * len(scales)
        c = -math.expm1(grid.gamma[i - 1] - grid.gamma[i])
        r = (grid.alpha[i - 1] / grid.alpha[i] * (z - c * grid.sigma[i] * eps) - mean).transpose(0, 2, 3, 1)
        var = np.square(std).transpose(0, 2, 3, 1)
        b = grid.std_p[i - 1] ** 2
        s = np.sqrt(np.maximum(var - b, 0.0))
        base = 0.5 * (b / var - 1 + np.log(var / b) + np.square(r) / var).sum()
        r01, r02, r12 = chain.corr[i]
        R = np.array([[1.0, r01, r02], [r01, 1.0, r12], [r02, r12, 1.0]])
        for j, scale in enumerate(scales):
            Rs = np.eye(3) + scale * (R - np.eye(3))
            sig = b * np.eye(3) + s[..., :, None] * Rs * s[..., None, :]
            inv = np.linalg.inv(sig)
            kl = 0.5 * (b * np.trace(inv, axis1=-2, axis2=-1) - 3 + np.linalg.slogdet(sig)[1] - 3 * math.log(b)
                        + np.einsum("...i,...ij,...j->...", r, inv, r)).sum()
            saved[j] += per_draw * float(base - kl)
    return [float(nats_to_bpd(v / len(origins), x[0].size)) for v in saved]
