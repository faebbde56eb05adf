"""Samplers x schedules: ODE error vs number of function evaluations (NFE) on a Gaussian
mixture and on the shipped MNIST model, and FID on MNIST at a few NFE budgets.

python -m benchmarks.samplers [--quick] [--threads 1] [--fid-samples 400] [--ode-samples 12]
    [--model mnist] [--out benchmarks/results/samplers.md]

Writes OUT (markdown), OUT's stem + "_ode_error.png", "_fid.png", "_samples.png" (plots and
a grid of samples) and OUT with suffix .json (every raw number). --quick is a smoke test
with tiny counts, written under benchmarks/results/cache/ unless --out is given.

ODE error: every deterministic sampler (DDIM eta=0, Euler, Heun, DPM-Solver++(2M)) on every
schedule integrates the probability-flow ODE from the same initial noise; the error is the
RMS difference (data scale) from a 1000-step Heun solution. NFE counts every denoiser call
(Heun: 2 per step except the last); a counting wrapper checks the count of every run.
FID: Fréchet distance between the features of a small CNN classifier trained here on the
shared MNIST training split (vdmcodec.metrics) for N generated samples and for the 1000
validation images; every cell uses the same N and the same noise seeds.
"""
from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from benchmarks.mnist import machine, resolve_data
from benchmarks.samplers_report import write_report
from vdmcodec.data import load_array
from vdmcodec.metrics import (ClassifierConfig, accuracy, extract_features, frechet_distance, gaussian_stats,
                              load_or_train, read_idx_labels)
from vdmcodec.sampling import (AdaptiveConfig, Denoiser, VDMDenoiser, adaptive_sigmas, generate, karras_sigmas,
                               make_mixture, make_sigmas, score_optimal_cost, to_pixels)
from vdmcodec.zoo import load_model

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CACHE = RESULTS / "cache"
DATA = Path("../shared/data/mnist/mnist9k-images-idx3-ubyte.gz")
LABELS = Path("../shared/data/mnist/mnist9k-labels-idx1-ubyte.gz")
TRAIN, VAL = slice(0, 8000), slice(8000, 9000)

ODE_SAMPLERS = ("ddim", "euler", "heun", "dpmpp-2m")
FID_SAMPLERS = ("ancestral", "ddim", "euler", "heun", "edm", "dpmpp-2m")
SCHEDULES = ("model", "karras", "loglinear", "adaptive")
EVALS_PER_STEP = {"ancestral": 1, "ddim": 1, "euler": 1, "dpmpp-2m": 1, "heun": 2, "edm": 2}
OPTIONS = {  # sampler options used throughout (the same in every cell)
    "ancestral": {"variance": "small"},
    "ddim": {"eta": 0.0},
    "edm": {"S_churn": 40.0, "S_tmin": 0.05, "S_tmax": 50.0, "S_noise": 1.003},  # EDM Table 5 (ImageNet-64)
}
# FID uses, per sampler and NFE, the schedule with the lowest MNIST ODE error of this
# deterministic sampler at that NFE (the stochastic samplers borrow their ODE relative's)
SCHEDULE_PROXY = {"ancestral": "euler", "ddim": "euler", "euler": "euler", "heun": "heun", "edm": "heun",
                  "dpmpp-2m": "dpmpp-2m"}


@dataclass(frozen=True)
class BenchConfig:
    ode_nfe: tuple[int, ...] = (5, 10, 20, 35, 50, 100)   # NFE budgets of the ODE-error sweep
    fid_nfe: tuple[int, ...] = (10, 20, 35, 100)         # NFE budgets of the FID table
    reference_steps: int = 1000                          # Heun steps of the reference ODE solution
    mixture_samples: int = 1000
    ode_samples: int = 12                                # MNIST trajectories for the ODE error
    fid_samples: int = 400                               # MNIST samples per FID cell
    batch_size: int = 100                                # samples per network call in the FID part
    seed: int = 0
    threads: int = 1
    classifier: ClassifierConfig = ClassifierConfig()

    def __post_init__(self):
        if min(self.ode_nfe + self.fid_nfe) < 1 or self.reference_steps < 2 or self.mixture_samples < 1 \
                or self.ode_samples < 1 or self.fid_samples < 2 or self.batch_size < 1 or self.threads < 1:
            raise ValueError(f"invalid benchmark config {self}")
        # every FID budget needs an ODE error to choose its schedule
        object.__setattr__(self, "ode_nfe", tuple(sorted(set(self.ode_nfe) | set(self.fid_nfe))))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["classifier"] = self.classifier.to_dict()
        return d


QUICK = BenchConfig(ode_nfe=(5, 10), fid_nfe=(10,), reference_steps=200, mixture_samples=200, ode_samples=4,
                    fid_samples=50, batch_size=50)


# ---- NFE bookkeeping ------------------------------------------------------------------------
def steps_for(sampler: str, nfe: int) -> int:
    """The most steps whose NFE stays within ``nfe`` (Heun/EDM: 2 steps - 1 evaluations)."""
    return nfe if EVALS_PER_STEP[sampler] == 1 else (nfe + 1) // 2


def nfe_of(sampler: str, steps: int) -> int:
    return steps if EVALS_PER_STEP[sampler] == 1 else 2 * steps - 1


class CountingDenoiser(Denoiser):
    """Forwards to ``inner`` and counts calls (one call = one function evaluation of the batch)."""

    def __init__(self, inner: Denoiser):
        self.inner = inner
        self.sigma_min, self.sigma_max = inner.sigma_min, inner.sigma_max
        self.learned_variance = inner.learned_variance
        self.calls = 0

    def denoise_and_v(self, x, sigma):
        self.calls += 1
        return self.inner.denoise_and_v(x, sigma)

    def gamma(self, t):
        return self.inner.gamma(t)


@dataclass(frozen=True)
class Target:
    """A denoiser and what the sweep needs of it."""

    name: str
    denoiser: Denoiser
    shape: tuple[int, ...]
    samples: int          # trajectories for the ODE error
    cost: object          # ScoreOptimalCost of the adaptive schedule

    def sigmas(self, schedule: str, steps: int) -> torch.Tensor:
        if schedule == "adaptive":
            return adaptive_sigmas(self.denoiser, steps, cost=self.cost)
        return make_sigmas(schedule, self.denoiser, steps)


def run(target: Target, sampler: str, sigmas: torch.Tensor, count: int, seed: int, batch_size: int,
        callback=None) -> torch.Tensor:
    """``count`` samples (noise indices 0..count-1 under ``seed``); checks the NFE count."""
    counter = CountingDenoiser(target.denoiser)
    x = generate(counter, sampler, sigmas, target.shape, count=count, seed=seed, batch_size=batch_size,
                 options=OPTIONS.get(sampler), callback=callback)
    expected = -(-count // batch_size) * nfe_of(sampler, len(sigmas) - 1)
    if counter.calls != expected:
        raise RuntimeError(f"{sampler}: {counter.calls} denoiser calls, expected {expected}")
    return x


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).square().mean().sqrt())


# ---- ODE error ------------------------------------------------------------------------------------
def ode_sweep(target: Target, cfg: BenchConfig, samplers=ODE_SAMPLERS, progress: bool = True) -> dict:
    """Reference solution, its self-check, and the error of every sampler x schedule x NFE."""
    t0 = time.perf_counter()
    ref_sigmas = karras_sigmas(cfg.reference_steps, target.denoiser.sigma_min, target.denoiser.sigma_max)
    M = target.samples
    reference = run(target, "heun", ref_sigmas, M, cfg.seed, M)
    # self-check: Heun with half the steps on (at most 4 of) the same trajectories; for a
    # second-order method the reference's own error is about a third of this difference
    k = min(M, 4 if target.name == "mnist" else M)
    half = run(target, "heun", karras_sigmas(cfg.reference_steps // 2, target.denoiser.sigma_min,
                                             target.denoiser.sigma_max), k, cfg.seed, k)
    ref_info = {"sampler": "heun", "schedule": "karras", "steps": cfg.reference_steps,
                "nfe": nfe_of("heun", cfg.reference_steps), "samples": M,
                "half_steps_rmse": rmse(half, reference[:k]), "half_steps_samples": k,
                "seconds": time.perf_counter() - t0}
    cells = []
    jobs = [(s, sch, n) for s in samplers for sch in SCHEDULES for n in cfg.ode_nfe]
    for sampler, schedule, nfe in tqdm(jobs, desc=f"ODE error ({target.name})", unit="run", disable=not progress):
        steps = steps_for(sampler, nfe)
        t1 = time.perf_counter()
        x = run(target, sampler, target.sigmas(schedule, steps), M, cfg.seed, M)
        cells.append({"sampler": sampler, "schedule": schedule, "target": nfe, "steps": steps,
                      "nfe": nfe_of(sampler, steps), "rmse": rmse(x, reference),
                      "seconds": time.perf_counter() - t1})
    return {"reference": ref_info, "samples": M, "cells": cells}


def ddim_euler_check(target: Target, cfg: BenchConfig, nfe: int) -> dict:
    """DDIM with eta = 0 is Euler on the ODE (EDM sec. 3): the largest difference of the two
    on the MNIST trajectories, on every schedule at ``nfe``."""
    worst = 0.0
    for schedule in SCHEDULES:
        sigmas = target.sigmas(schedule, nfe)
        a = run(target, "ddim", sigmas, target.samples, cfg.seed, target.samples)
        b = run(target, "euler", sigmas, target.samples, cfg.seed, target.samples)
        worst = max(worst, float((a - b).abs().max()))
    return {"nfe": nfe, "max_abs_difference": worst}


def best_schedules(ode: dict, fid_nfe) -> dict:
    """{(sampler, nfe target): schedule} with the lowest ODE error, for every FID sampler."""
    best = {}
    for sampler, proxy in SCHEDULE_PROXY.items():
        for nfe in fid_nfe:
            cells = [c for c in ode["cells"] if c["sampler"] == proxy and c["target"] == nfe]
            best[(sampler, nfe)] = min(cells, key=lambda c: c["rmse"])["schedule"]
    return best


# ---- FID ------------------------------------------------------------------------------------------
def nhwc(pixels_nchw: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(pixels_nchw.transpose(0, 2, 3, 1))


def fid_floor(classifier, reference, train_pixels: np.ndarray, n: int, max_sets: int = 20) -> dict:
    """FID of disjoint sets of ``n`` training images against the validation statistics: the
    value an ideal sampler would get at this sample count (mean, sd, min, max over sets),
    and of all training images."""
    feats = extract_features(classifier, train_pixels)
    sets = min(len(feats) // n, max_sets)
    values = [frechet_distance(gaussian_stats(feats[i * n:(i + 1) * n]), reference) for i in range(sets)]
    return {"samples": n, "sets": sets, "mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if sets > 1
            else float("nan"), "min": float(np.min(values)), "max": float(np.max(values)),
            "all_train": frechet_distance(gaussian_stats(feats), reference), "all_train_samples": len(feats)}


def fid_sweep(target: Target, cfg: BenchConfig, classifier, reference, best: dict, progress: bool = True) -> dict:
    """FID of ``cfg.fid_samples`` samples per sampler x NFE budget, on the chosen schedules.
    DDIM (eta = 0) gives the same samples as Euler and is not drawn again."""
    cells, grids = [], {}
    seed = cfg.seed + 1  # other noises than the ODE trajectories
    jobs = [(s, n) for s in FID_SAMPLERS if s != "ddim" for n in cfg.fid_nfe]
    total = sum(-(-cfg.fid_samples // cfg.batch_size) * steps_for(s, n) for s, n in jobs)
    bar = tqdm(total=total, desc="FID samples", unit="step", disable=not progress)
    for sampler, nfe in jobs:
        schedule, steps = best[(sampler, nfe)], steps_for(sampler, nfe)
        bar.set_postfix_str(f"{sampler} {nfe} NFE ({schedule})")
        t0 = time.perf_counter()
        x = run(target, sampler, target.sigmas(schedule, steps), cfg.fid_samples, seed, cfg.batch_size,
                callback=lambda _: bar.update(1))
        pixels = nhwc(to_pixels(x))
        fid = frechet_distance(gaussian_stats(extract_features(classifier, pixels)), reference)
        cells.append({"sampler": sampler, "schedule": schedule, "target": nfe, "steps": steps,
                      "nfe": nfe_of(sampler, steps), "fid": fid, "seconds": time.perf_counter() - t0})
        grids[(sampler, nfe)] = pixels[:8]
    bar.close()
    for c in [c for c in cells if c["sampler"] == "euler"]:
        cells.append({**c, "sampler": "ddim", "same_as": "euler"})
        grids[("ddim", c["target"])] = grids[("euler", c["target"])]
    return {"samples": cfg.fid_samples, "seed": seed, "cells": cells}, grids


# ---- main ---------------------------------------------------------------------------------------------
def nfe_cost(denoiser: Denoiser, shape, batch: int, repeats: int = 3) -> float:
    """Seconds per image per function evaluation at this batch size (median of ``repeats``)."""
    x = torch.zeros((batch, *shape), dtype=torch.float64)
    sigma = torch.ones(batch, dtype=torch.float64)
    denoiser(x, sigma)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        denoiser(x, sigma)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] / batch


def planned_evaluations(cfg: BenchConfig) -> dict:
    """Image-evaluations of the MNIST model, per part (for the time estimate)."""
    ode = sum(nfe_of(s, steps_for(s, n)) for s in ("euler", "heun", "dpmpp-2m") for n in cfg.ode_nfe) * len(SCHEDULES)
    ref = nfe_of("heun", cfg.reference_steps) * cfg.ode_samples + nfe_of("heun", cfg.reference_steps // 2) * min(
        cfg.ode_samples, 4)
    check = 2 * min(cfg.fid_nfe) * len(SCHEDULES) * cfg.ode_samples
    fid = sum(nfe_of(s, steps_for(s, n)) for s in FID_SAMPLERS if s != "ddim" for n in cfg.fid_nfe) * cfg.fid_samples
    adaptive = 3 * (AdaptiveConfig().levels - 1) * AdaptiveConfig().batch
    return {"ode": ode * cfg.ode_samples + ref + check, "fid": fid, "adaptive": adaptive}


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.samplers", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny counts (output under the cache dir)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    ap.add_argument("--model", default="mnist", help="shipped model name or model directory")
    ap.add_argument("--data", type=Path, default=DATA, help="MNIST images (IDX); 0-7999 train, 8000-8999 validation")
    ap.add_argument("--labels", type=Path, default=LABELS, help="MNIST labels (IDX) of the same images")
    ap.add_argument("--fid-samples", type=int, help="samples per FID cell (default 400; quick 50)")
    ap.add_argument("--ode-samples", type=int, help="MNIST trajectories for the ODE error (default 12; quick 4)")
    ap.add_argument("--seed", type=int, default=0, help="noise seed (ODE trajectories; FID uses seed + 1)")
    ap.add_argument("--cache-dir", type=Path, default=CACHE, help="classifier weights (not in git)")
    ap.add_argument("--out", type=Path, help="markdown output (default benchmarks/results/samplers.md)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = QUICK if args.quick else BenchConfig()
    cfg = replace(cfg, threads=args.threads, seed=args.seed,
                  fid_samples=args.fid_samples or cfg.fid_samples, ode_samples=args.ode_samples or cfg.ode_samples)
    out = args.out or (args.cache_dir / "samplers-quick.md" if args.quick else RESULTS / "samplers.md")
    progress = not args.no_progress
    torch.set_num_threads(cfg.threads)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    (args.cache_dir / ".gitignore").write_text("*\n")  # weights and quick runs stay out of git
    started, t_start = datetime.datetime.now().astimezone(), time.perf_counter()
    machine_info = machine()  # at the start: the load average is the one the timings ran under
    timing = {}

    # the MNIST model: per-evaluation cost first, and the plan's time estimate
    model, minfo = load_model(args.model)
    vdm = VDMDenoiser(model)
    shape = (model.cfg.network.image_channels, 28, 28)
    cost = {f"batch_{b}": nfe_cost(vdm, shape, b) for b in sorted({cfg.batch_size, cfg.ode_samples})}
    plan = planned_evaluations(cfg)
    estimate = (plan["ode"] * cost[f"batch_{cfg.ode_samples}"] + (plan["fid"] + plan["adaptive"]) *
                cost[f"batch_{cfg.batch_size}"])
    print(f"MNIST model: {1e3 * cost[f'batch_{cfg.batch_size}']:.2f} ms per image and evaluation at batch "
          f"{cfg.batch_size}; plan {sum(plan.values()):,} image-evaluations, about {estimate / 60:.0f} min "
          f"(+ classifier training if not cached)", flush=True)

    # the mixture
    t0 = time.perf_counter()
    mixture = make_mixture()
    mix_cost = score_optimal_cost(mixture, (2,), AdaptiveConfig(levels=64, batch=256, seed=0))
    mix = Target("mixture", mixture, (2,), cfg.mixture_samples, mix_cost)
    ode_mixture = ode_sweep(mix, cfg, progress=progress)
    timing["ode_mixture"] = time.perf_counter() - t0

    # MNIST ODE error
    t0 = time.perf_counter()
    mnist_cost = score_optimal_cost(vdm, shape, AdaptiveConfig(), progress=progress)
    mnist = Target("mnist", vdm, shape, cfg.ode_samples, mnist_cost)
    timing["adaptive_mnist"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ode_mnist = ode_sweep(mnist, cfg, samplers=("euler", "heun", "dpmpp-2m"), progress=progress)
    ode_mnist["ddim_check"] = ddim_euler_check(mnist, cfg, min(cfg.fid_nfe))
    timing["ode_mnist"] = time.perf_counter() - t0

    # classifier, reference statistics, floor
    t0 = time.perf_counter()
    images = load_array(resolve_data(args.data))
    labels = read_idx_labels(resolve_data(args.labels))
    if len(images) < VAL.stop or len(labels) < VAL.stop:
        raise SystemExit(f"need at least {VAL.stop} images and labels (got {len(images)}, {len(labels)})")
    classifier, cinfo = load_or_train(args.cache_dir, images[TRAIN], labels[TRAIN], cfg.classifier, progress)
    cinfo["val_accuracy"] = accuracy(classifier, images[VAL], labels[VAL])
    cinfo["train_accuracy"] = accuracy(classifier, images[TRAIN], labels[TRAIN])
    reference = gaussian_stats(extract_features(classifier, images[VAL]))
    floor = fid_floor(classifier, reference, images[TRAIN], cfg.fid_samples)
    timing["classifier"] = time.perf_counter() - t0
    print(f"classifier: validation accuracy {cinfo['val_accuracy']:.4f} "
          f"({'cached' if cinfo['cached'] else 'trained'}); FID floor {floor['mean']:.2f} +- {floor['sd']:.2f}", flush=True)

    # FID
    t0 = time.perf_counter()
    best = best_schedules(ode_mnist, cfg.fid_nfe)
    fid, grids = fid_sweep(mnist, cfg, classifier, reference, best, progress)
    fid["floor"] = floor
    fid["reference"] = {"images": "validation 8000-8999", "count": reference.count,
                        "features": cfg.classifier.features}
    timing["fid"] = time.perf_counter() - t0
    timing["total"] = time.perf_counter() - t_start

    results = {
        "command": ("python -m benchmarks.samplers " + shlex.join(sys.argv[1:] if argv is None else argv)).rstrip(),
        "started": started.isoformat(timespec="seconds"), "machine": machine_info,
        "load_average_1min_end": os.getloadavg()[0],
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "config": cfg.to_dict(),
        "options": OPTIONS, "schedule_proxy": SCHEDULE_PROXY,
        "model": {"name": minfo["name"], "sha256": minfo["sha256"], "sigma_min": vdm.sigma_min,
                  "sigma_max": vdm.sigma_max, "steps": minfo["card"].get("steps")},
        "mixture": {"sigma_min": mixture.sigma_min, "sigma_max": mixture.sigma_max, "components": len(mixture.stds)},
        "evaluation_cost_s": cost, "plan": plan, "estimate_s": estimate, "timing_s": timing,
        "ode": {"mixture": ode_mixture, "mnist": ode_mnist}, "classifier": cinfo, "fid": fid,
    }
    write_report(results, grids, out)
    print(f"wrote {out} ({timing['total'] / 60:.1f} min)", flush=True)


if __name__ == "__main__":
    main()
