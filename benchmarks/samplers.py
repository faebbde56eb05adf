"""Samplers measured: convergence orders on a Gaussian mixture, the score-optimal schedule
against EDM's rho = 7, the start distribution, and sample quality on the shipped MNIST model.

    nice -n 10 python -m benchmarks.samplers [--parts orders,adaptive,start,fid,reference]
        [--fid-samples 5000] [--reference-samples 500] [--start-samples 500] [--ode-samples 8]
        [--fid-samplers dpmpp-2m-sde,heun,...] [--threads 1] [--report-only]

One command, resumable per cell: every finished cell is written at once to the partial-results
JSON (benchmarks/results/samplers_cells.json), and the samples of the sample-quality cells
are kept in chunks of --batch-size under benchmarks/results/cache/samplers/ (not in git), so
an interrupted run continues where it stopped. Each run rewrites benchmarks/results/samplers.md
from all cells done so far and names the ones still to run.

Parts:
- orders: on the 2-D mixture with its exact denoiser (``vdmcodec.sampling.mixture``), every
  deterministic sampler on EDM's rho = 7 schedule at 32-256 steps; error = median over 1000
  samples of |x - x_ref| against a 4096-step ``lms`` solution (cross-checked with 8192 Heun
  steps); the slope of log error against log steps is the measured order. The SDE samplers
  (eta = 1) are measured on 200 samples against their own 4096-step solution on the same
  Brownian paths.
- adaptive: ODE error of the score-optimal schedule (``vdmcodec.sampling.adaptive``, cost on
  forward-noised data: mixture samples / MNIST training images 0-7999) and of rho = 7 at 10, 16
  and 35 evaluations, on the mixture (1000 trajectories) and on the shipped mnist model
  (float32; reference Heun with 256 steps; error = median over trajectories of the RMS).
- start: Heun at 35 evaluations from the model's prior (N(0, (1 + sigma_max^2) I)) and from
  EDM's N(0, sigma_max^2 I), same noises: median pixel, ink fraction, FID, KID.
- fid: every sampler at 35 evaluations (rho = 7, prior start, bfloat16 autocast on CPUs with
  native bf16), --fid-samples samples: FID and KID on the features of the in-project MNIST
  classifier (``vdmcodec.metrics``) against validation images 8000-8999.
- reference: ancestral sampling (small variance) with 1000 steps uniform in t under the
  model's own gamma, --reference-samples samples.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.mnist import machine, resolve_data
from vdmcodec.data import load_array
from vdmcodec.hardware import cpu_capability, native_bf16
from vdmcodec.metrics import (ClassifierConfig, accuracy, extract_features, frechet_distance, gaussian_stats,
                              load_or_train, read_idx_labels)
from vdmcodec.sampling import (AdaptiveConfig, Denoiser, VDMDenoiser, adaptive_sigmas, evaluations, generate,
                               karras_sigmas, make_mixture, model_sigmas, score_optimal_cost, steps_for, to_pixels)
from vdmcodec.zoo import atomic_write_bytes, load_model

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CELLS = RESULTS / "samplers_cells.json"
CACHE = RESULTS / "cache"
DATA = Path("../shared/data/mnist/mnist9k-images-idx3-ubyte.gz")
LABELS = Path("../shared/data/mnist/mnist9k-labels-idx1-ubyte.gz")
TRAIN, VAL = slice(0, 8000), slice(8000, 9000)

# (label, sampler, options): the deterministic samplers whose order is measured
ORDER_CASES = [
    ("euler", "euler", {}), ("ddim", "ddim", {"eta": 0.0}), ("heun", "heun", {}), ("dpmpp-2m", "dpmpp-2m", {}),
    ("dpmpp-2s (eta=0)", "dpmpp-2s-ancestral", {"eta": 0.0}),
    ("dpmpp-2m-sde (eta=0, heun)", "dpmpp-2m-sde", {"eta": 0.0, "solver_type": "heun"}),
    ("dpmpp-3m-sde (eta=0)", "dpmpp-3m-sde", {"eta": 0.0}), ("unipc (order 2)", "unipc", {"order": 2}),
    ("unipc (order 3)", "unipc", {"order": 3}), ("unipc (order 2, no corrector)", "unipc", {"corrector": False}),
    ("lms (order 4)", "lms", {"order": 4}), ("ipndm (order 4)", "ipndm", {"order": 4}),
]
SDE_CASES = [("dpmpp-2m-sde (eta=1)", "dpmpp-2m-sde", {}), ("dpmpp-3m-sde (eta=1)", "dpmpp-3m-sde", {})]
EXPECTED_ORDER = {"euler": 1, "ddim": 1, "heun": 2, "dpmpp-2m": 2, "dpmpp-2s (eta=0)": 2,
                  "dpmpp-2m-sde (eta=0, heun)": 2, "dpmpp-3m-sde (eta=0)": 3, "unipc (order 2)": 3,
                  "unipc (order 3)": 4, "unipc (order 2, no corrector)": 2, "lms (order 4)": 4, "ipndm (order 4)": 2}
ORDER_STEPS = (32, 64, 128, 256)
ADAPTIVE_SAMPLERS = ("euler", "heun", "dpmpp-2m", "unipc")
ADAPTIVE_NFE = (10, 16, 35)
FID_NFE = 35
# sample-quality cells in the order they run (the first ones matter most)
FID_SAMPLERS = ("dpmpp-2m-sde", "heun", "edm", "euler-ancestral", "dpmpp-2s-ancestral", "dpmpp-3m-sde", "unipc",
                "dpmpp-2m", "ancestral", "euler", "lms", "ipndm")
# ancestral with the model's learned variances: with the small variance it is euler-ancestral
# exactly (the same samples to 1e-14; experiments/results/ode_background.md)
FID_OPTIONS = {"edm": {"S_churn": 40.0, "S_tmin": 0.05, "S_tmax": 50.0, "S_noise": 1.003},
               "ancestral": {"variance": "learned"}}
INK = 128  # ink fraction: share of pixels >= this value


# ---- cells ---------------------------------------------------------------------------------
def load_cells(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def save_cell(path: Path, key: str, value: dict) -> None:
    cells = load_cells(path)
    cells[key] = value
    atomic_write_bytes(path, (json.dumps(cells, indent=1, default=float) + "\n").encode())


class Counting(Denoiser):
    """Forwards to ``inner`` and counts calls (one call = one evaluation of the batch)."""

    def __init__(self, inner: Denoiser):
        self.inner, self.calls = inner, 0
        self.sigma_min, self.sigma_max, self.learned_variance = inner.sigma_min, inner.sigma_max, inner.learned_variance

    def denoise_and_v(self, x, sigma):
        self.calls += 1
        return self.inner.denoise_and_v(x, sigma)

    def gamma(self, t):
        return self.inner.gamma(t)

    def prior_std(self, sigma):
        return self.inner.prior_std(sigma)


def run(denoiser, sampler, sigmas, shape, count, seed=0, options=None, batch_size=None, first_index=0):
    """Samples with a check of the evaluation count."""
    counter = Counting(denoiser)
    bs = batch_size or count
    x = generate(counter, sampler, sigmas, shape, count=count, seed=seed, batch_size=bs, options=options,
                 first_index=first_index)
    expected = -(-count // bs) * evaluations(sampler, len(sigmas) - 1)
    if counter.calls != expected:
        raise RuntimeError(f"{sampler}: {counter.calls} denoiser calls, expected {expected}")
    return x


def median_error(x, ref) -> float:
    """Median over samples of the per-sample RMS difference."""
    return float((x - ref).flatten(1).square().mean(1).sqrt().median())


# ---- orders ----------------------------------------------------------------------------------
def part_orders(cells_path: Path, log) -> None:
    mix = make_mixture()
    lo, hi = mix.sigma_min, mix.sigma_max
    n = 1000
    ref = run(mix, "lms", karras_sigmas(4096, lo, hi), (2,), n)
    heun_ref = run(mix, "heun", karras_sigmas(8192, lo, hi), (2,), n)
    save_cell(cells_path, "orders/reference", {"sampler": "lms", "steps": 4096, "samples": n,
                                               "heun_8192_median_error": median_error(heun_ref, ref)})
    for label, sampler, options in ORDER_CASES + SDE_CASES:
        key = f"orders/{label}"
        if key in load_cells(cells_path):
            continue
        sde = (label, sampler, options) in SDE_CASES
        k = 200 if sde else n   # the Brownian trees are per sample Python objects: fewer samples
        own = run(mix, sampler, karras_sigmas(4096, lo, hi), (2,), k, options=options) if sde else ref
        errors = [median_error(run(mix, sampler, karras_sigmas(s, lo, hi), (2,), k, options=options), own)
                  for s in ORDER_STEPS]
        slope = -float(np.polyfit(np.log(ORDER_STEPS), np.log(errors), 1)[0])
        local = [float(-np.log(errors[i + 1] / errors[i]) / np.log(ORDER_STEPS[i + 1] / ORDER_STEPS[i]))
                 for i in range(len(errors) - 1)]
        save_cell(cells_path, key, {"sampler": sampler, "options": options, "steps": list(ORDER_STEPS),
                                    "nfe": [evaluations(sampler, s) for s in ORDER_STEPS], "errors": errors,
                                    "order": slope, "local_orders": local, "expected": EXPECTED_ORDER.get(label),
                                    "against": "own 4096-step solution" if own is not ref else "lms 4096"})
        log(f"order {label}: {slope:.2f} (local {', '.join(f'{v:.2f}' for v in local)})")


# ---- adaptive vs rho = 7 -----------------------------------------------------------------------
def adaptive_cells(cells_path, target, denoiser, data, shape, count, ref_steps, config, log, ode_batch):
    prefix = f"adaptive/{target}"
    cells = load_cells(cells_path)
    t0 = time.perf_counter()
    if f"{prefix}/cost" in cells:
        from vdmcodec.sampling import ScoreOptimalCost
        cost = ScoreOptimalCost.from_dict(cells[f"{prefix}/cost"]["cost"])
    else:
        history: list = []
        cost = score_optimal_cost(denoiser, data, config, history=history)
        save_cell(cells_path, f"{prefix}/cost", {"cost": cost.to_dict(), "config": config.__dict__,
                                                 "data_points": len(data), "seconds": time.perf_counter() - t0,
                                                 "first_grid": history[0]["sigmas"],
                                                 "first_increments": history[0]["increments"]})
        log(f"adaptive cost ({target}): {time.perf_counter() - t0:.0f} s")
    lo, hi = denoiser.sigma_min, denoiser.sigma_max
    if f"{prefix}/reference" not in load_cells(cells_path):
        t0 = time.perf_counter()
        ref = run(denoiser, "heun", karras_sigmas(ref_steps, lo, hi), shape, count, batch_size=ode_batch)
        k = min(count, 4)
        half = run(denoiser, "heun", karras_sigmas(ref_steps // 2, lo, hi), shape, k, batch_size=ode_batch)
        save_cell(cells_path, f"{prefix}/reference", {"sampler": "heun", "steps": ref_steps, "samples": count,
                                                      "half_steps_median_error": median_error(half, ref[:k]),
                                                      "seconds": time.perf_counter() - t0})
        torch.save(ref, CACHE / f"samplers-adaptive-{target}-ref.pt")
    ref = torch.load(CACHE / f"samplers-adaptive-{target}-ref.pt")
    for sampler in ADAPTIVE_SAMPLERS:
        for nfe in ADAPTIVE_NFE:
            for schedule in ("karras", "adaptive"):
                key = f"{prefix}/{sampler}/{schedule}/{nfe}"
                if key in load_cells(cells_path):
                    continue
                steps = steps_for(sampler, nfe)
                sig = karras_sigmas(steps, lo, hi) if schedule == "karras" else adaptive_sigmas(None, steps, cost=cost)
                x = run(denoiser, sampler, sig, shape, count, batch_size=ode_batch)
                save_cell(cells_path, key, {"sampler": sampler, "schedule": schedule, "target": nfe, "steps": steps,
                                            "nfe": evaluations(sampler, steps), "error": median_error(x, ref),
                                            "sigmas": sig.tolist()})
        log(f"adaptive {target} {sampler} done")


# ---- sample quality -----------------------------------------------------------------------------
def poly_kid(a: np.ndarray, b: np.ndarray, subsets: int = 50, size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID (Binkowski et al. 2018): unbiased MMD^2 with the kernel (x.y / d + 1)^3, mean and sd
    over ``subsets`` random subsets of min(size, len) of each set."""
    rng = np.random.default_rng(seed)
    d = a.shape[1]
    m = min(size, len(a), len(b))
    vals = []
    for _ in range(subsets):
        x, y = a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
        vals.append((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                    - 2 * kxy.mean())
    return float(np.mean(vals)), float(np.std(vals, ddof=1))


class Quality:
    """Classifier, reference statistics and the metrics of a set of 8-bit samples."""

    def __init__(self, args, log):
        images = load_array(resolve_data(args.data))
        labels = read_idx_labels(resolve_data(args.labels))
        self.classifier, self.info = load_or_train(CACHE, images[TRAIN], labels[TRAIN], ClassifierConfig())
        self.info["val_accuracy"] = accuracy(self.classifier, images[VAL], labels[VAL])
        self.val_feats = extract_features(self.classifier, images[VAL])
        self.val_stats = gaussian_stats(self.val_feats)
        self.val_pixels = images[VAL]
        self.train_images = images[TRAIN]
        log(f"classifier: validation accuracy {self.info['val_accuracy']:.4f}")

    def metrics(self, pixels_nhwc: np.ndarray, matched: int | None = None) -> dict:
        feats = extract_features(self.classifier, pixels_nhwc)
        out = {"samples": len(pixels_nhwc), "fid": frechet_distance(gaussian_stats(feats), self.val_stats),
               "median_pixel": float(np.median(pixels_nhwc)), "ink_fraction": float((pixels_nhwc >= INK).mean())}
        out["kid"], out["kid_sd"] = poly_kid(feats, self.val_feats)
        if matched and matched < len(feats):
            out[f"fid_first_{matched}"] = frechet_distance(gaussian_stats(feats[:matched]), self.val_stats)
        return out

    def floor(self, n: int) -> dict:
        """Metrics of held training images at count n (the value a perfect sampler would get)."""
        return self.metrics(self.train_images[:n])


def sample_cell(denoiser, sampler, sigmas, shape, count, seed, options, batch, chunk_dir: Path, log, start="prior",
                call_batch=None):
    """uint8 NHWC samples, generated in chunks of ``batch`` kept on disk (resumable), ``call_batch``
    samples per network call (the samples do not depend on it)."""
    chunk_dir.mkdir(parents=True, exist_ok=True)
    parts = []
    for first in range(0, count, batch):
        n = min(batch, count - first)
        path = chunk_dir / f"{first:06d}-{n}.npy"
        if not path.exists():
            t0 = time.perf_counter()
            x = generate(denoiser, sampler, sigmas, shape, count=n, seed=seed, first_index=first,
                         batch_size=min(n, call_batch or n),
                         options=options, start=start)
            np.save(path.with_suffix(".tmp.npy"), np.ascontiguousarray(to_pixels(x).transpose(0, 2, 3, 1)))
            path.with_suffix(".tmp.npy").replace(path)
            log(f"  {chunk_dir.name}: samples {first}-{first + n - 1} in {time.perf_counter() - t0:.0f} s")
        parts.append(np.load(path))
    return np.concatenate(parts)


def quality_cell(cells_path, key, quality, denoiser, sampler, sigmas, shape, count, seed, options, batch, log,
                 start="prior", matched=None, extra=None, call_batch=None):
    if key in load_cells(cells_path):
        return
    t0 = time.perf_counter()
    chunk_dir = CACHE / "samplers" / key.replace("/", "-")
    pixels = sample_cell(denoiser, sampler, sigmas, shape, count, seed, options, batch, chunk_dir, log, start,
                         call_batch)
    np.save(CACHE / "samplers" / f"{key.replace('/', '-')}-grid.npy", pixels[:64])
    cell = {"sampler": sampler, "options": options or {}, "steps": len(sigmas) - 1,
            "nfe": evaluations(sampler, len(sigmas) - 1), "start": start, "seed": seed,
            **quality.metrics(pixels, matched), "seconds": time.perf_counter() - t0, **(extra or {})}
    save_cell(cells_path, key, cell)
    log(f"{key}: FID {cell['fid']:.2f}, KID {cell['kid']:.1f}, median {cell['median_pixel']:.0f}, "
        f"ink {cell['ink_fraction']:.3f}")


# ---- main -----------------------------------------------------------------------------------------
def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.samplers", description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", default="orders,adaptive,start,fid,reference",
                    help="comma-separated parts to run, in this order")
    ap.add_argument("--fid-samples", type=int, default=5000, help="samples per sample-quality cell (default 5000)")
    ap.add_argument("--fid-samplers", default=",".join(FID_SAMPLERS), help="samplers of the fid part, in order")
    ap.add_argument("--reference-samples", type=int, default=500, help="samples of the 1000-step ancestral reference")
    ap.add_argument("--start-samples", type=int, default=500, help="samples per start-distribution cell")
    ap.add_argument("--ode-samples", type=int, default=8, help="MNIST trajectories of the adaptive part")
    ap.add_argument("--batch-size", type=int, default=500, help="samples per saved chunk")
    ap.add_argument("--call-batch", type=int, default=128,
                    help="samples per network call (the samples do not depend on it; 128 ran 1.47x faster than 500 "
                         "per image-evaluation on one AVX-512 thread)")
    ap.add_argument("--model", default="mnist-v2", help="shipped model name or model directory (default: mnist-v2, "
                    "the continuous-time weights; `mnist` is their discrete-time T = 32 fine-tune for coding). "
                    "Every run on one cells file must measure the same weights")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--labels", type=Path, default=LABELS)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cells", type=Path, default=CELLS, help="the partial-results JSON")
    ap.add_argument("--out", type=Path, default=RESULTS / "samplers.md")
    ap.add_argument("--report-only", action="store_true", help="only rewrite the report from the cells")
    return ap.parse_args(argv)


def main(argv=None):
    from benchmarks.samplers_report import write_report

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / ".gitignore").write_text("*\n")
    command = ("python -m benchmarks.samplers " + shlex.join(sys.argv[1:] if argv is None else argv)).rstrip()

    def log(msg):
        print(f"[{datetime.datetime.now():%H:%M:%S}] {msg}", flush=True)

    model, minfo = load_model(args.model)
    shape = (model.cfg.network.image_channels, 28, 28)
    meta = {"command": command, "machine": machine(), "cpu_capability": cpu_capability(),
            "model": {"name": minfo["name"], "sha256": minfo["sha256"], "steps": minfo["card"].get("steps")},
            "fid_samples": args.fid_samples, "reference_samples": args.reference_samples,
            "start_samples": args.start_samples, "ode_samples": args.ode_samples,
            "fid_samplers": args.fid_samplers.split(",")}
    parts = [p for p in args.parts.split(",") if p]
    other = {v["model"]["sha256"] for k, v in load_cells(args.cells).items() if k.startswith("run/")} - {minfo["sha256"]}
    if other and not args.report_only:
        sys.exit(f"{args.cells} holds cells of other weights (sha256 {', '.join(sorted(h[:16] for h in other))}...) than "
                 f"{minfo['name']}'s ({minfo['sha256'][:16]}...): pass that model, or --cells with a new file")
    if not args.report_only:
        save_cell(args.cells, f"run/{datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
                  {**meta, "parts": parts, "omp_num_threads": os.environ.get("OMP_NUM_THREADS")})
        vdm = VDMDenoiser(model)
        if "orders" in parts:
            part_orders(args.cells, log)
        if "adaptive" in parts:
            mix = make_mixture()
            adaptive_cells(args.cells, "mixture", mix, mix.sample(4096, torch.Generator().manual_seed(1)), (2,), 1000,
                           4096, AdaptiveConfig(levels=48, batch=256, iterations=6), log, 1000)
            images = load_array(resolve_data(args.data))[TRAIN]
            data = (torch.from_numpy(images.astype(np.float64)).permute(0, 3, 1, 2) + 0.5) * (2 / 256) - 1
            adaptive_cells(args.cells, "mnist", vdm, data, shape, args.ode_samples, 256,
                           AdaptiveConfig(levels=32, batch=16, iterations=4), log, args.ode_samples)
        quality = None
        if any(p in parts for p in ("start", "fid", "reference")):
            quality = Quality(args, log)
            if "quality/floor" not in load_cells(args.cells):
                save_cell(args.cells, "quality/floor", {"train_images": quality.floor(len(quality.train_images)),
                                                        "train_first_500": quality.floor(500),
                                                        "classifier": {k: v for k, v in quality.info.items()
                                                                       if k != "path"}})
            if native_bf16("cpu"):
                model.amp_dtype = torch.bfloat16   # the arithmetic the model was trained under; 2x faster here
        lo, hi = vdm.sigma_min, vdm.sigma_max
        if "start" in parts:
            sig = karras_sigmas(steps_for("heun", FID_NFE), lo, hi)
            for start in ("prior", "edm"):
                quality_cell(args.cells, f"start/heun/{start}", quality, vdm, "heun", sig, shape, args.start_samples,
                             2, None, args.batch_size, log, start=start,
                             call_batch=args.call_batch)
        if "fid" in parts:
            for sampler in meta["fid_samplers"]:
                sig = karras_sigmas(steps_for(sampler, FID_NFE), lo, hi)
                quality_cell(args.cells, f"fid/{sampler}/{FID_NFE}", quality, vdm, sampler, sig, shape,
                             args.fid_samples, 1, FID_OPTIONS.get(sampler), args.batch_size, log,
                             matched=args.reference_samples, call_batch=args.call_batch)
        if "reference" in parts:
            sig = model_sigmas(vdm, 1000)
            quality_cell(args.cells, "reference/ancestral/1000", quality, vdm, "ancestral", sig, shape,
                         args.reference_samples, 1, {"variance": "small"}, args.batch_size, log,
                         call_batch=args.call_batch)
    write_report(load_cells(args.cells), meta, args.out)
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
