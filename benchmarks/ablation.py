"""Equal-budget ablation of the training techniques of issue 6 (iDDPM, EDM, STF) against plain
VDM training on MNIST: same data (images 0-7999), steps, batch, seed and network for every
technique; validation bpd on a fixed subset of images 8000-8999.

python -m benchmarks.ablation --out runs/ablation [--steps 2000] [--batch 64] [--model-size unet-16]
    [--techniques baseline,importance,...] [--val-images 500] [--T 128] [--fid-samples 400]
    [--threads 1] [--quick] [--estimate-only] [--report benchmarks/results/ablation.md]

Each technique trains in its own run directory OUT/NAME (resumable: an interrupted run
continues from its checkpoint; a run with OUT/NAME/result.json, or with a finished row of the same config
and measurement settings under benchmarks/results/runs/ablation/ (committed: a run may start on a
fresh machine), is not redone), then is measured
with its EMA weights: the continuous-time and the T-step negative ELBO (bpd, the unweighted VDM
bound whatever the technique trains), the spread of the technique's own loss estimator (std over
many (t, eps) draws of the per-image estimate on a fixed batch, averaged over the batch: the
quantity importance sampling and STF claim to reduce) and, with --fid-samples, MNIST FID of
Heun/EDM samples (the samplers benchmark's classifier). Writes the report (markdown, with the
command and machine) and a plot beside it. --quick: a smoke test (tiny network, 20 steps, report
under OUT). --estimate-only: time a few steps of each technique and print the cost of the run.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from benchmarks.mnist import machine, resolve_data
from vdmcodec.data import load_array, to_tensor
from vdmcodec.diffusion import low_discrepancy_t, training_terms
from vdmcodec.likelihood import bpd_continuous, bpd_discrete, mean_and_stderr
from vdmcodec.networks import NetworkConfig
from vdmcodec.objective import ObjectiveConfig, Target
from vdmcodec.preconditioning import Preconditioning
from vdmcodec.schedules import ScheduleKind
from vdmcodec.training.config import RunConfig, load_config
from vdmcodec.training.trainer import DataSpec, Trainer

ROOT = Path(__file__).resolve().parent.parent
STORE = ROOT / "benchmarks" / "results" / "runs"  # finished rows, committed: a run may start on a fresh machine
DATA = Path("../shared/data/mnist/mnist9k-images-idx3-ubyte.gz")
LABELS = Path("../shared/data/mnist/mnist9k-labels-idx1-ubyte.gz")
TRAIN, VAL = slice(0, 8000), slice(8000, 9000)


@dataclass(frozen=True)
class Technique:
    """One row: what changes relative to the base config (everything else equal)."""

    description: str
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    learned_variance: bool = False
    precond: Preconditioning = Preconditioning.vdm
    schedule: ScheduleKind | None = None  # None: the base config's


EDM_TRAINING = dict(t_sampling="lognormal", loss_weighting="edm")
TECHNIQUES: dict[str, Technique] = {
    "baseline": Technique("VDM: learned schedule, low-discrepancy t, ELBO"),
    "importance": Technique("iDDPM loss-second-moment importance sampling of t (128 bins, history 10)",
                            ObjectiveConfig(t_sampling="importance")),
    "cosine": Technique("iDDPM cosine schedule (fixed) instead of VDM's learned one", schedule=ScheduleKind.cosine),
    "learned_variance": Technique("iDDPM learned reverse variance, L_hybrid (lambda 0.001, T 128)", learned_variance=True),
    "edm_precond": Technique("EDM preconditioning (c_skip, c_out, c_in), ELBO training", precond=Preconditioning.edm),
    "edm": Technique("EDM preconditioning + lognormal sigma + lambda(sigma) weighting",
                     ObjectiveConfig(**EDM_TRAINING), precond=Preconditioning.edm),
    "stf": Technique("Stable Target Field, reference batch 1024", ObjectiveConfig(target="stf", stf_reference=1024)),
    "importance+learned_variance": Technique("iDDPM: importance sampling + learned variance (L_hybrid)",
                                             ObjectiveConfig(t_sampling="importance"), learned_variance=True),
    "importance+stf": Technique("importance sampling + STF",
                                ObjectiveConfig(t_sampling="importance", target="stf", stf_reference=1024)),
    "edm+stf": Technique("EDM (preconditioning, lognormal, weighting) + STF",
                         ObjectiveConfig(**EDM_TRAINING, target="stf", stf_reference=1024), precond=Preconditioning.edm),
}

MODEL_SIZES = {
    "tiny": NetworkConfig(channels=8, channel_mult=(1, 2), num_res_blocks=1),
    "unet-16": NetworkConfig(channels=16, channel_mult=(1, 2, 2), num_res_blocks=2, dropout=0.1),
    "unet-32": NetworkConfig(channels=32, channel_mult=(1, 2, 2), num_res_blocks=2, dropout=0.1),  # the shipped size
}


def run_config(base: RunConfig, tech: Technique, size: str, steps: int, batch: int, seed: int) -> RunConfig:
    net = replace(MODEL_SIZES[size], learned_variance=tech.learned_variance)
    sched = base.model.schedule if tech.schedule is None else replace(base.model.schedule, kind=tech.schedule)
    if size == "tiny":
        sched = replace(sched, hidden=16)
    obj = tech.objective
    if obj.target is Target.stf and obj.stf_reference < batch:
        obj = replace(obj, stf_reference=batch)
    model = replace(base.model, network=net, schedule=sched, precond=tech.precond)
    train = replace(base.train, steps=steps, batch_size=batch, seed=seed, eval_every=0, log_every=max(1, min(50, steps // 10)),
                    ckpt_every=max(1, min(250, steps // 4)), lr_warmup=min(base.train.lr_warmup, max(1, steps // 10)),
                    objective=obj)
    return RunConfig(model=model, train=train)


# ---- measurements -----------------------------------------------------------------------------
@torch.no_grad()
def validation_bpd(model, images: np.ndarray, T: int | None, seed: int, batch: int = 100) -> dict:
    """Continuous-time -ELBO (4 stratified t per image) and, unless T is None, the T-step one."""
    cont, disc = [], []
    for i in range(0, len(images), batch):
        x = to_tensor(images[i : i + batch])
        g = torch.Generator().manual_seed(seed + i)
        cont.append(bpd_continuous(model, x, g, t_samples=4).total)
        if T is not None:
            g = torch.Generator().manual_seed(seed + i)
            disc.append(bpd_discrete(model, x, T, g).total)
    c, c_se = mean_and_stderr(torch.cat(cont))
    row = {"bpd_continuous": c, "bpd_continuous_se": c_se, "T": T, "images": len(images)}
    if T is not None:
        d, d_se = mean_and_stderr(torch.cat(disc))
        row.update({f"bpd_T{T}": d, f"bpd_T{T}_se": d_se})
    return row


@torch.no_grad()
def estimator_spread(trainer: Trainer, images: np.ndarray, draws: int, seed: int) -> dict:
    """Std (bpd) over ``draws`` draws of (t, eps) of each image's one-sample estimate, averaged
    over the fixed batch ``images``: of the ELBO estimate and of the trained loss."""
    model, obj = trainer.ema, trainer.cfg.train.objective
    x = to_tensor(images)
    B, dims = x.shape[0], x[0].numel()
    scale = 1.0 / (dims * math.log(2.0))
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    elbo, trained = [], []
    for _ in range(draws):
        t = low_discrepancy_t(B, g, "cpu")
        eps, eps_0 = torch.randn(x.shape, generator=g), torch.randn(x.shape, generator=g)
        w = None
        if trainer.resampler is not None:
            t, w = trainer.resampler.sample(t)
        x_extra = None
        if obj.target is Target.stf and obj.stf_reference > B:
            x_extra = to_tensor(trainer.images[rng.integers(0, len(trainer.images), obj.stf_reference - B)])
        terms = training_terms(model, x, t, eps, eps_0, obj, w, x_extra)
        elbo.append(terms.elbo_diff * scale)
        trained.append(terms.objective.detach() * scale - (terms.loss.loss_recon + terms.loss.loss_prior) * scale)
    e, tr = torch.stack(elbo), torch.stack(trained)
    return {"elbo_estimator_std": float(e.std(0).mean()), "trained_loss_std": float(tr.std(0).mean()),
            "elbo_estimate_mean": float(e.mean()), "draws": draws, "batch": B}


def fid(model, classifier, reference, samples: int, nfe_steps: int, seed: int) -> float:
    from vdmcodec.metrics import extract_features, frechet_distance, gaussian_stats
    from vdmcodec.sampling import VDMDenoiser, generate, karras_sigmas
    from vdmcodec.sampling.generate import to_pixels

    den = VDMDenoiser(model)
    x = generate(den, "heun", karras_sigmas(nfe_steps, den.sigma_min, den.sigma_max),
                 (model.cfg.network.image_channels, 28, 28), count=samples, seed=seed, batch_size=100)
    pixels = np.ascontiguousarray(to_pixels(x).transpose(0, 2, 3, 1))
    return frechet_distance(gaussian_stats(extract_features(classifier, pixels)), reference)


# ---- finished rows, kept in the repository ---------------------------------------------------
def stored(kind: str, name: str, cfg: RunConfig, extra: dict | None = None, root: Path = STORE) -> dict | None:
    """A finished row of benchmark ``kind`` with this exact run config (and these measurement
    settings, ``extra``), from ROOT/KIND/NAME.json; None if there is none or it differs."""
    p = root / kind / f"{name}.json"
    if not p.exists():
        return None
    row = json.loads(p.read_text())
    same = json.loads(json.dumps({"config": cfg.to_dict(), "measured_with": extra or {}}))  # tuples as JSON lists
    if row.get("config") != same["config"] or row.get("measured_with", {}) != same["measured_with"]:
        return None
    return row


def store(kind: str, name: str, row: dict, extra: dict | None = None, root: Path = STORE) -> None:
    p = root / kind / f"{name}.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({**row, "measured_with": extra or {}}, indent=1) + "\n")


def _measured_with(args) -> dict:
    return {"val_images": args.val_images, "T": args.T, "seed": args.seed, "spread_batch": args.spread_batch,
            "spread_draws": args.spread_draws, "fid_samples": args.fid_samples, "fid_steps": args.fid_steps}


# ---- one technique ----------------------------------------------------------------------------
def run_technique(name: str, cfg: RunConfig, out: Path, data: DataSpec, val: np.ndarray, args, fid_ctx) -> dict:
    d = out / name
    done = d / "result.json"
    if done.exists():
        print(f"{name}: done already ({done})", flush=True)
        return json.loads(done.read_text())
    kept = None if args.quick else stored("ablation", name, cfg, _measured_with(args))
    if kept is not None:
        print(f"{name}: done by an earlier run ({STORE / 'ablation' / (name + '.json')})", flush=True)
        return kept
    resume = (d / "checkpoint.pt").exists()
    if resume:
        saved = RunConfig.from_dict(json.loads((d / "run.json").read_text()))
        if saved != cfg:
            raise SystemExit(f"{d}: holds a run with another config; remove it or choose another --out")
    trainer = Trainer(cfg, d, data, resume=resume, progress=not args.no_progress, card={"name": f"ablation-{name}"})
    start_step, wall0 = trainer.step, time.perf_counter()
    trainer.fit(cfg.train.steps)
    if trainer.step < cfg.train.steps:  # stopped by a signal: saved, never measured half-trained
        raise SystemExit(f"{name}: interrupted at step {trainer.step} of {cfg.train.steps} (saved; run again to resume)")
    train_wall = time.perf_counter() - wall0
    trainer.ema.eval()
    t0 = time.perf_counter()
    result = {"name": name, "description": TECHNIQUES[name].description, "config": cfg.to_dict(),
              "steps": trainer.step, "cpu_hours": trainer.cpu_seconds / 3600,
              "seconds_per_step": train_wall / max(1, trainer.step - start_step) if trainer.step > start_step else None,
              **validation_bpd(trainer.ema, val, args.T, args.seed)}
    result.update(estimator_spread(trainer, val[: args.spread_batch], args.spread_draws, args.seed))
    if fid_ctx is not None:
        result["fid"] = fid(trainer.ema, *fid_ctx, args.fid_samples, args.fid_steps, args.seed)
        result["fid_samples"], result["fid_nfe"] = args.fid_samples, 2 * args.fid_steps - 1
    result["eval_seconds"] = time.perf_counter() - t0
    done.write_text(json.dumps(result, indent=1) + "\n")
    if not args.quick:
        store("ablation", name, result, _measured_with(args))
    print(f"{name}: bpd {result['bpd_continuous']:.4f} (continuous), {result[f'bpd_T{args.T}']:.4f} (T={args.T}); "
          f"ELBO-estimator std {result['elbo_estimator_std']:.4f}", flush=True)
    return result


def estimate(cfgs: dict[str, RunConfig], data: DataSpec, args, repeats: int = 3) -> list[dict]:
    """Seconds per training step of each technique (median of ``repeats`` after one warm-up)
    and of one network evaluation per image (for the T-step bpd)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in cfgs.items():
            tr = Trainer(cfg, Path(tmp) / name, data, progress=False)
            times = []
            for k in range(repeats + 1):
                t0 = time.perf_counter()
                tr.fit(k + 1)
                if k:
                    times.append(time.perf_counter() - t0)
            x = to_tensor(tr.images[:100])
            g = torch.Generator().manual_seed(0)
            t0 = time.perf_counter()
            with torch.no_grad():
                bpd_discrete(tr.ema, x, 2, g)
            per_eval = (time.perf_counter() - t0) / (2 * len(x))
            step = sorted(times)[len(times) // 2]
            train_h = step * cfg.train.steps / 3600
            eval_h = per_eval * (args.T + 8) * args.val_images / 3600
            rows.append({"name": name, "seconds_per_step": step, "train_hours": train_h, "eval_hours": eval_h})
            print(f"{name}: {step:.2f} s/step -> {train_h:.2f} h for {cfg.train.steps} steps; evaluation "
                  f"~{eval_h:.2f} h", flush=True)
    return rows


# ---- report -----------------------------------------------------------------------------------
def _f(v, spec=".4f"):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def report(results: list[dict], args, meta: dict, plot_path: Path) -> list[str]:
    T = args.T
    base = next((r for r in results if r["name"] == "baseline"), None)
    lines = [
        "# Training techniques: equal-budget ablation on MNIST", "",
        f"Command: `{meta['command']}`", "",
        f"Started {meta['started']}; git {meta['git']}. Machine: {meta['machine']['cpu']}, "
        f"{meta['machine']['torch_threads']} torch thread(s), torch {meta['machine']['torch']}, "
        f"load average {_f(meta['machine']['load_average_1min'], '.2f')} at the start. Rows measured by earlier runs of "
        "this command are reused (from OUT or the committed store, benchmarks/results/runs/ablation/), so the rows may "
        "come from several runs; s/step is each row's own training, on a machine other work shared.", "",
        f"Budget, the same for every row: {args.steps} steps x batch {args.batch}, network {args.model_size}, seed "
        f"{args.seed}, training images 0-7999; base config `{args.config}` otherwise. Measured with the EMA weights on "
        f"validation images 8000-{8000 + args.val_images - 1} ({args.val_images} images, fixed noise seeds): "
        f"bpd is the unweighted VDM bound (continuous: 4 stratified t per image; T={T}: every step), "
        f"mean +- standard error over images. Estimator std: std of one image's one-sample estimate over "
        f"{args.spread_draws} draws of (t, eps), averaged over {args.spread_batch} validation images, in bpd: of the "
        "unbiased ELBO estimate the technique's sampler gives, and of the diffusion loss it trains.", "",
        "| technique | what changes | val bpd (continuous) | val bpd (T=%d) | vs baseline (T=%d) | ELBO-estimator std | trained-loss std | FID | s/step |" % (T, T),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        delta = r[f"bpd_T{T}"] - base[f"bpd_T{T}"] if base else None
        lines.append(
            f"| {r['name']} | {r['description']} | {r['bpd_continuous']:.4f} +- {r['bpd_continuous_se']:.4f} | "
            f"{r[f'bpd_T{T}']:.4f} +- {r[f'bpd_T{T}_se']:.4f} | {_f(delta, '+.4f')} | {r['elbo_estimator_std']:.4f} | "
            f"{r['trained_loss_std']:.4f} | {_f(r.get('fid'), '.2f')} | {_f(r.get('seconds_per_step'), '.2f')} |")
    lines += ["", f"![bpd per technique]({plot_path.name})", ""]
    if args.fid_samples:
        lines += [f"FID: {args.fid_samples} samples, Heun on Karras sigmas with {args.fid_steps} steps "
                  f"({2 * args.fid_steps - 1} NFE), features of the samplers benchmark's MNIST classifier against "
                  "validation images 8000-8999.", ""]
    lines += ["Differences between rows smaller than about twice the standard errors are not resolved; the "
              "standard errors are over images, while the rows share the images (paired), so differences are "
              "better resolved than the per-row errors suggest.", ""]
    return lines


def plot(results: list[dict], T: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["name"] for r in results]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6.4, 0.8 * len(names) + 2), 4.2), dpi=120)
    ax.errorbar(x - 0.1, [r["bpd_continuous"] for r in results], yerr=[r["bpd_continuous_se"] for r in results],
                fmt="o", label="continuous")
    ax.errorbar(x + 0.1, [r[f"bpd_T{T}"] for r in results], yerr=[r[f"bpd_T{T}_se"] for r in results],
                fmt="s", label=f"T = {T}")
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("validation bpd (lower is better)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ablation", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="directory of the run directories (one per technique)")
    ap.add_argument("--steps", type=int, help="training steps per technique (default 2000; quick 20)")
    ap.add_argument("--batch", type=int, help="batch size (default 64; quick 8)")
    ap.add_argument("--model-size", choices=sorted(MODEL_SIZES), help="network (default unet-16; quick tiny)")
    ap.add_argument("--techniques", default=",".join(TECHNIQUES),
                    help=f"comma-separated subset of: {', '.join(TECHNIQUES)}")
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "mnist.json",
                    help="base run config (optimiser, EMA, schedule, bf16); steps, batch and network are overridden")
    ap.add_argument("--val-images", type=int, help="validation images from 8000 on (default 500; quick 20)")
    ap.add_argument("--T", type=int, default=128, help="discrete steps of the T-step bpd (default 128, the codec's)")
    ap.add_argument("--spread-batch", type=int, help="images of the estimator-spread batch (default 64; quick 8)")
    ap.add_argument("--spread-draws", type=int, help="(t, eps) draws for the estimator spread (default 64; quick 8)")
    ap.add_argument("--fid-samples", type=int, help="samples per FID (default 400; quick 0 = no FID)")
    ap.add_argument("--fid-steps", type=int, default=18, help="Heun steps for FID samples (default 18 = 35 NFE)")
    ap.add_argument("--seed", type=int, default=0, help="training seed (the same for every technique)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    ap.add_argument("--data", type=Path, default=DATA, help="MNIST images (IDX)")
    ap.add_argument("--labels", type=Path, default=LABELS, help="MNIST labels (IDX), for the FID classifier")
    ap.add_argument("--report", type=Path, help="markdown output (default benchmarks/results/ablation.md; quick: OUT/ablation.md)")
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny network, 20 steps, 20 validation images")
    ap.add_argument("--estimate-only", action="store_true", help="time a few steps per technique and print the run's cost")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    q = args.quick
    defaults = dict(steps=(20, 2000), batch=(8, 64), model_size=("tiny", "unet-16"), val_images=(20, 500),
                    spread_batch=(8, 64), spread_draws=(8, 64), fid_samples=(0, 400))
    for k, (quick, full) in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, quick if q else full)
    unknown = [t for t in args.techniques.split(",") if t not in TECHNIQUES]
    if unknown:
        ap.error(f"unknown techniques {unknown}; choose from {', '.join(TECHNIQUES)}")
    if not 1 <= args.val_images <= 1000 or args.spread_batch > args.val_images:
        ap.error("need 1 <= --val-images <= 1000 and --spread-batch <= --val-images")
    return args


def start(prog: str, argv, threads: int) -> dict:
    """Set the torch threads and describe the run (command, start, machine, commit)."""
    torch.set_num_threads(threads)
    return {"command": f"python -m {prog} " + shlex.join(sys.argv[1:] if argv is None else argv),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "machine": machine(),
            "git": git_commit()}


def base_config(path: Path, threads: int) -> RunConfig:
    base = load_config(path)
    return replace(base, train=replace(base.train, threads=threads))


def write_raw(path: Path, meta: dict, args, results: list[dict]) -> None:
    path.write_text(json.dumps({"meta": meta, "args": {k: str(v) for k, v in vars(args).items()},
                                "results": results}, indent=1) + "\n")


def main(argv=None):
    args = parse_args(argv)
    meta = start("benchmarks.ablation", argv, args.threads)
    base = base_config(args.config, args.threads)
    names = args.techniques.split(",")
    cfgs = {n: run_config(base, TECHNIQUES[n], args.model_size, args.steps, args.batch, args.seed) for n in names}
    path = resolve_data(args.data)
    data = DataSpec(path, TRAIN.start, TRAIN.stop)
    if args.estimate_only:
        rows = estimate(cfgs, data, args)
        total = sum(r["train_hours"] + r["eval_hours"] for r in rows)
        print(f"total: {total:.1f} CPU-hours at {args.threads} thread(s) for {len(rows)} techniques", flush=True)
        return rows
    val = load_array(path, VAL.start, VAL.start + args.val_images)
    fid_ctx = None
    if args.fid_samples:
        from vdmcodec.metrics import extract_features, gaussian_stats, load_or_train
        from vdmcodec.metrics.classifier import read_idx_labels

        images, labels = load_array(path), read_idx_labels(resolve_data(args.labels))
        classifier, _ = load_or_train(ROOT / "benchmarks" / "results" / "cache", images[TRAIN], labels[TRAIN])
        fid_ctx = (classifier, gaussian_stats(extract_features(classifier, images[VAL])))
    args.out.mkdir(parents=True, exist_ok=True)
    results = [run_technique(n, cfgs[n], args.out, data, val, args, fid_ctx) for n in names]
    out = args.report or (args.out / "ablation.md" if args.quick else ROOT / "benchmarks" / "results" / "ablation.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_path = out.with_suffix(".png")
    plot(results, args.T, plot_path)
    out.write_text("\n".join(report(results, args, meta, plot_path)))
    write_raw(out.with_suffix(".json"), meta, args, results)
    print(f"wrote {out}", flush=True)
    return results


if __name__ == "__main__":
    main()
