"""The markdown report and plots of ``benchmarks/samplers.py``, from its partial-results JSON
(every cell done so far); cells not yet run are named with the command that runs them."""
from __future__ import annotations

import datetime
import math
from pathlib import Path

import numpy as np

from benchmarks.samplers import FID_SAMPLERS

RESUME = "OMP_NUM_THREADS=1 nohup nice -n 10 python -m benchmarks.samplers > samplers.log 2>&1 &"


def _g(v, digits=3) -> str:
    return "-" if v is None or not math.isfinite(v) else (f"{v:.{digits}g}" if abs(v) >= 1e-3 else f"{v:.2e}")


def _orders(cells) -> list[str]:
    rows = [(k[len("orders/"):], v) for k, v in cells.items() if k.startswith("orders/") and k != "orders/reference"]
    if not rows:
        return ["(not run yet)"]
    ref = cells.get("orders/reference", {})
    steps = rows[0][1]["steps"]
    lines = [f"Reference: `lms` (order 4) with {ref.get('steps')} steps; 8192 Heun steps differ from it by "
             f"{_g(ref.get('heun_8192_median_error'))} (median), below every error in the table. "
             "Error = median over 1000 samples of the RMS difference; order = slope of log error against log "
             "steps over the four step counts (local slopes between neighbours in brackets).", "",
             "| sampler | expected | measured order (local) | " + " | ".join(f"{s} steps" for s in steps) + " |",
             "|---|---|---|" + "---|" * len(steps)]
    from benchmarks.samplers import EXPECTED_ORDER

    for label, c in rows:
        c = {**c, "expected": EXPECTED_ORDER.get(label, c["expected"])}
        local = ", ".join(f"{v:.2f}" for v in c["local_orders"])
        against = "" if c["against"] == "lms 4096" else " (vs own 4096-step solution, same Brownian paths)"
        lines.append(f"| {label}{against} | {c['expected'] or '-'} | **{c['order']:.2f}** ({local}) | "
                     + " | ".join(_g(e) for e in c["errors"]) + " |")
    return lines


def _adaptive(cells, target) -> list[str]:
    prefix = f"adaptive/{target}/"
    data = {k[len(prefix):]: v for k, v in cells.items() if k.startswith(prefix)}
    if "reference" not in data:
        return ["(not run yet)"]
    ref, cost = data["reference"], data.get("cost", {})
    nfes = sorted({v["target"] for k, v in data.items() if "target" in v})
    samplers = list(dict.fromkeys(v["sampler"] for k, v in data.items() if "target" in v))
    lines = [f"Reference: Heun, {ref['steps']} steps on rho = 7, {ref['samples']} trajectories (Heun with half the "
             f"steps differs from it by {_g(ref['half_steps_median_error'])}). Cost estimated with "
             f"{cost.get('config')} on {cost.get('data_points')} data points in {cost.get('seconds', 0):.0f} s. "
             "Cells: median error (RMS per trajectory, data scale); ratio = adaptive / rho 7 (goal <= 0.7 at 16).", "",
             "| sampler | " + " | ".join(f"{n}: rho 7 | {n}: adaptive | {n}: ratio" for n in nfes) + " |",
             "|---|" + "---|---|---|" * len(nfes)]
    for s in samplers:
        row = []
        for n in nfes:
            k, a = data.get(f"{s}/karras/{n}"), data.get(f"{s}/adaptive/{n}")
            if k and a:
                ratio = a["error"] / k["error"]
                row += [_g(k["error"]), _g(a["error"]), (f"**{ratio:.2f}**" if ratio <= 0.7 else f"{ratio:.2f}")]
            else:
                row += ["-", "-", "-"]
        lines.append(f"| {s} | " + " | ".join(row) + " |")
    return lines


def _quality_row(label, c) -> str:
    fm = [k for k in c if k.startswith("fid_first_")]
    matched = f"{c[fm[0]]:.2f}" if fm else "-"
    return (f"| {label} | {c['nfe']} | {c['samples']} | {c['fid']:.2f} | {matched} | "
            f"{c['kid']:.1f} ± {c['kid_sd']:.1f} | {c['median_pixel']:.0f} | {c['ink_fraction']:.3f} |")


def _against_reference(fid_done: dict, ref: dict | None, n_ref: int) -> list[str]:
    """The goal's comparison: the best 35-evaluation cell against the 1000-step reference, both
    at the reference's sample count (FID@n) and by KID (unbiased at any count)."""
    key = f"fid_first_{n_ref}"
    cells = {s: v for s, v in fid_done.items() if key in v}
    if not ref or not cells:
        return []
    best = min(cells, key=lambda s: cells[s][key])
    b = cells[best]
    return [f"Best at 35 evaluations: `{best}`, FID@{n_ref} {b[key]:.2f} against the reference's {ref['fid']:.2f} "
            f"({b[key] / ref['fid']:.2f}x; the goal: within 1.05x), KID {b['kid']:.0f} ± {b['kid_sd']:.0f} against "
            f"{ref['kid']:.0f} ± {ref['kid_sd']:.0f}.", ""]


def _plot_errors(cells, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    orders = [(k[len("orders/"):], v) for k, v in cells.items() if k.startswith("orders/") and "errors" in v]
    mn = [v for k, v in cells.items() if k.startswith("adaptive/mnist/") and "target" in v]
    if not orders and not mn:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for label, c in orders:
        axes[0].loglog(c["nfe"], c["errors"], "o-", ms=3, label=label)
    axes[0].set_title("Gaussian mixture (exact denoiser), rho = 7", fontsize=10)
    axes[0].set_xlabel("denoiser evaluations")
    axes[0].set_ylabel("median error vs converged solution")
    axes[0].legend(fontsize=7)
    for s in dict.fromkeys(v["sampler"] for v in mn):
        for sch, ls in (("karras", "-"), ("adaptive", "--")):
            cs = sorted((v for v in mn if v["sampler"] == s and v["schedule"] == sch), key=lambda v: v["nfe"])
            axes[1].loglog([v["nfe"] for v in cs], [v["error"] for v in cs], "o" + ls, ms=3,
                           label=f"{s} ({'rho 7' if sch == 'karras' else 'adaptive'})")
    axes[1].set_title("shipped mnist model (float32)", fontsize=10)
    axes[1].set_xlabel("denoiser evaluations")
    axes[1].legend(fontsize=7)
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _grids(cells, cache: Path, path: Path) -> bool:
    from PIL import Image, ImageDraw

    keys = [k for k in cells if k.split("/")[0] in ("fid", "reference", "start")
            and (cache / f"{k.replace('/', '-')}-grid.npy").exists()]
    if not keys:
        return False
    label_w, size, per_row = 190, 28, 16
    img = Image.new("L", (label_w + per_row * size, len(keys) * size), 255)
    draw = ImageDraw.Draw(img)
    for r, k in enumerate(keys):
        pixels = np.load(cache / f"{k.replace('/', '-')}-grid.npy")[:per_row, ..., 0]
        draw.text((4, r * size + 8), k, fill=0)
        for j, p in enumerate(pixels):
            img.paste(Image.fromarray(p), (label_w + j * size, r * size))
    img.save(path)
    return True


def write_report(cells: dict, meta: dict, out: Path) -> None:
    out = Path(out)
    cache = out.parent / "cache" / "samplers"
    err_png, grid_png = out.with_name(out.stem + "_error.png"), out.with_name(out.stem + "_samples.png")
    has_plot, has_grid = _plot_errors(cells, err_png), _grids(cells, cache, grid_png)
    runs = sorted(k for k in cells if k.startswith("run/"))
    m = meta["machine"]
    n_fid, n_ref = meta["fid_samples"], meta["reference_samples"]
    fid_done = {k.split("/")[1]: v for k, v in cells.items() if k.startswith("fid/")}
    full = [s for s, v in fid_done.items() if v["samples"] >= 5000]
    todo = [s for s in FID_SAMPLERS if s not in full]
    ref = cells.get("reference/ancestral/1000")
    floor = cells.get("quality/floor", {})
    lines = [
        "# Samplers on the shipped models: orders, the score-optimal schedule, the start, sample quality", "",
        "Command: `python -m benchmarks.samplers` (resumable: each run adds the cells it finishes to "
        "[`samplers_cells.json`](samplers_cells.json), which records each run's command; `--parts` and `--fid-samplers` "
        "split the cells between processes); runs so far: "
        + ", ".join(r[len('run/'):] for r in runs) + f". Report written {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}.", "",
        f"Machine: {m['cpu']}, {m['cpu_count']} CPUs (shared: other jobs may have run beside it), "
        f"1 torch thread, torch {m['torch']}; 1-minute load average {m['load_average_1min']:.2f} at the "
        "start of the last run. Errors and sample statistics do not depend on the load; times do.", "",
        f"Model: shipped `{meta['model']['name']}`, weights sha256 `{meta['model']['sha256']}`"
        + (" (the continuous-time weights; the default `mnist` is their fine-tune on VDM's discrete-time loss at "
           "T = 32, for coding)" if meta["model"]["name"] == "mnist-v2" else "") + ".", "",
        "## Status", "",
        f"- Sample-quality cells at full size (>= 5000 samples): {', '.join(full) or 'none yet'}.",
        f"- Still to run: {', '.join(todo) or 'none'} (fid part, {n_fid} samples each)"
        + ("" if ref else f"; the 1000-step ancestral reference ({n_ref} samples)") + ".",
        f"- {'Complete them' if todo or not ref else 'Rerun (after removing the JSON)'} with `{RESUME}` from the "
        "project root (it skips every cell already in the JSON). "
        "One sample-quality cell of 5000 samples at 35 evaluations costs about 175,000 image-evaluations, "
        "4.4-6 ms each in bfloat16 on one AVX-512 thread at 128 samples per call (15-20 min; 2026-12-07).", "",
        "## Convergence order on the Gaussian mixture", "",
        *_orders(cells), "",
        "ipndm uses the constant-step Adams-Bashforth coefficients on steps that vary: second order, as "
        "expected (lms, with the variable-step coefficients, reaches 4). dpmpp-3m-sde (eta = 0) starts with a "
        "first- and a second-order step; the local slopes fall from 4 to about 2 as the steps shrink, which is "
        "what a first-order first step (local error O(h^2)) does once the third-order steps' error is below it "
        "(not verified further). UniPC gains one order from its corrector, as its paper states.", "",
        "## Score-optimal schedule (Williams et al. 2024) against rho = 7", "",
        "The schedule now follows the paper: corrector-optimised cost (Fisher divergence of neighbouring marginals, "
        "velocity v = sigma) on forward-noised data, the grid re-equalised in damped iterations, no density floor "
        "(`vdmcodec/sampling/adaptive.py`).", "",
        "### Gaussian mixture", "", *_adaptive(cells, "mixture"), "",
        "### Shipped mnist model", "", *_adaptive(cells, "mnist"), "",
        *([f"![error against evaluations]({err_png.name})", ""] if has_plot else []),
        "## Start distribution (Heun, 35 evaluations, rho = 7)", "",
        "`prior`: the VP chain's own prior N(0, I) mapped to VE, x = z / alpha_1, std sqrt(1 + sigma_max^2); "
        "`edm`: N(0, sigma_max^2 I). Same noises. Ink fraction = share of pixels >= 128.", "",
        "| start | evaluations | samples | FID | - | KID (± sd over 50 subsets; the features are not normalised, so it is not on Inception's scale) | median pixel | ink fraction |",
        "|---|---|---|---|---|---|---|---|",
        *[_quality_row(k.split("/")[2], v) for k, v in cells.items() if k.startswith("start/")], "",
        "Neither start removes the ODE samplers' grey background: the converged probability-flow ODE of these "
        "weights has it (Heun 128 and Euler 512 steps: median 14), the SDE samplers do not "
        "(experiments/results/ode_background.md).", "",
        "## Sample quality at 35 evaluations (rho = 7, prior start, bfloat16 autocast)", "",
        "FID and KID on the 64-d penultimate features of the in-project MNIST classifier (`vdmcodec.metrics`, "
        f"validation accuracy {100 * floor.get('classifier', {}).get('val_accuracy', float('nan')):.2f}%) against "
        "validation images 8000-8999 (1000 images). FID is biased upwards at small counts, so it is compared only "
        f"at equal counts: the column `FID@{n_ref}` is the FID of the first {n_ref} samples of a cell, comparable "
        f"with the reference's. KID is unbiased: mean ± sd over 50 random subsets of 1000 (or of all, if fewer).", "",
        f"| sampler | evaluations | samples | FID | FID@{n_ref} | KID (± sd) | median pixel | ink fraction |",
        "|---|---|---|---|---|---|---|---|",
        *[_quality_row(s, v) for s, v in fid_done.items()],
        *([_quality_row("**reference: ancestral, 1000 steps**", ref)] if ref else []),
        *([_quality_row("held training images (all 8000)", {**floor['train_images'], 'nfe': '-'}),
           _quality_row("held training images (first 500)", {**floor['train_first_500'], 'nfe': '-'})]
          if floor else []), "",
        *_against_reference(fid_done, ref, n_ref),
        *([f"First 16 samples of each cell: ![samples]({grid_png.name})", ""] if has_grid else []),
    ]
    out.write_text("\n".join(lines) + "\n")
