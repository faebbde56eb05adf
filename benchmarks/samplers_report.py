"""The markdown report and plots of ``benchmarks/samplers.py`` (everything from its results dict)."""
from __future__ import annotations

import json
import math
from pathlib import Path


SCHEDULE_ORDER = ("model", "karras", "loglinear", "adaptive")
SAMPLER_LABEL = {"ancestral": "ancestral (small variance)", "ddim": "ddim (eta=0)", "euler": "euler",
                 "heun": "heun", "edm": "edm (S_churn=40, S_tmin=0.05, S_tmax=50, S_noise=1.003)",
                 "dpmpp-2m": "dpmpp-2m"}


def _sig(v: float, digits: int = 3) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.{digits}g}" if abs(v) >= 1e-3 else f"{v:.2e}"


def _cell(cells, **key):
    found = [c for c in cells if all(c[k] == v for k, v in key.items())]
    return found[0] if found else None


def _ode_table(ode: dict, nfes, samplers) -> list[str]:
    cells = ode["cells"]
    best = {n: min((c for c in cells if c["target"] == n), key=lambda c: c["rmse"]) for n in nfes}
    lines = ["| sampler | schedule | " + " | ".join(f"{n} NFE" for n in nfes) + " |",
             "|---|---|" + "---|" * len(nfes)]
    for sampler in samplers:
        for schedule in SCHEDULE_ORDER:
            row = []
            for n in nfes:
                c = _cell(cells, sampler=sampler, schedule=schedule, target=n)
                text = _sig(c["rmse"]) + ("" if c["nfe"] == n else f" ({c['nfe']})")
                row.append(f"**{text}**" if c is best[n] else text)
            lines.append(f"| {sampler} | {schedule} | " + " | ".join(row) + " |")
    return lines


def best_ode(ode: dict, nfe: int) -> dict:
    return min((c for c in ode["cells"] if c["target"] == nfe), key=lambda c: c["rmse"])


def _fid_table(fid: dict, nfes) -> list[str]:
    cells = fid["cells"]
    best = {n: min((c for c in cells if c["target"] == n), key=lambda c: c["fid"]) for n in nfes}
    lines = ["| sampler | " + " | ".join(f"{n} NFE" for n in nfes) + " |", "|---|" + "---|" * len(nfes)]
    for sampler in SAMPLER_LABEL:
        row = []
        for n in nfes:
            c = _cell(cells, sampler=sampler, target=n)
            nfe = "" if c["nfe"] == n else f", {c['nfe']} NFE"
            text = f"{c['fid']:.2f} ({c['schedule']}{nfe})"
            row.append(f"**{text}**" if c["fid"] == best[n]["fid"] else text)
        label = SAMPLER_LABEL[sampler] + (" = euler" if sampler == "ddim" else "")
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    fl = fid["floor"]
    lines.append(f"| floor: {fl['samples']} held training images (mean ± sd over {fl['sets']} disjoint sets) | "
                 + " | ".join(f"{fl['mean']:.2f} ± {fl['sd']:.2f}" for _ in nfes) + " |")
    return lines


def _within_noise(fid: dict, nfe: int) -> list[str]:
    cells = [c for c in fid["cells"] if c["target"] == nfe and c["sampler"] != "ddim"]
    best = min(c["fid"] for c in cells)
    return sorted(c["sampler"] for c in cells if c["fid"] - best <= 2 * fid["floor"]["sd"])


def _summary(results: dict) -> list[str]:
    ode, fid = results["ode"], results["fid"]
    lines = []
    for nfe in (10, 35):
        if nfe not in results["config"]["fid_nfe"]:
            continue
        mn, mx = best_ode(ode["mnist"], nfe), best_ode(ode["mixture"], nfe)
        cells = [c for c in fid["cells"] if c["target"] == nfe and c["sampler"] != "ddim"]
        bf = min(cells, key=lambda c: c["fid"])
        tied = [s for s in _within_noise(fid, nfe) if s != bf["sampler"]]
        at = "" if bf["nfe"] == nfe else f", {bf['nfe']} NFE"
        lines.append(
            f"- **{nfe} NFE.** Lowest ODE error on MNIST: {mn['sampler']} / {mn['schedule']} "
            f"({_sig(mn['rmse'])} RMS at {mn['nfe']} NFE); on the mixture: {mx['sampler']} / {mx['schedule']} "
            f"({_sig(mx['rmse'])}). Lowest FID: {bf['sampler']} / {bf['schedule']} ({bf['fid']:.2f}{at})"
            + (f"; within 2 sd of the floor's sampling noise of it: {', '.join(tied)}." if tied else
               "; no other sampler within 2 sd of the floor's sampling noise."))
    return lines


def _plot_ode(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samplers = ("euler", "heun", "dpmpp-2m")
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5), sharex=True, sharey="row")
    for r, name in enumerate(("mixture", "mnist")):
        cells = results["ode"][name]["cells"]
        for k, sampler in enumerate(samplers):
            ax = axes[r, k]
            for schedule in SCHEDULE_ORDER:
                cs = sorted((c for c in cells if c["sampler"] == sampler and c["schedule"] == schedule),
                            key=lambda c: c["nfe"])
                ax.loglog([c["nfe"] for c in cs], [c["rmse"] for c in cs], marker="o", ms=3, label=schedule,
                          ls="--" if schedule == "loglinear" else "-")
            title = "euler = ddim (eta=0)" if sampler == "euler" else sampler
            ax.set_title(f"{name}: {title}", fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
            if k == 0:
                ax.set_ylabel("RMS error vs 1000-step Heun")
            if r == 1:
                ax.set_xlabel("NFE")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("Probability-flow ODE error vs function evaluations", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_fid(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fid = results["fid"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for sampler in SAMPLER_LABEL:
        if sampler == "ddim":
            continue
        cs = sorted((c for c in fid["cells"] if c["sampler"] == sampler), key=lambda c: c["nfe"])
        label = "euler = ddim (eta=0)" if sampler == "euler" else sampler
        ax.plot([c["nfe"] for c in cs], [c["fid"] for c in cs], "o-", label=label)
    fl = fid["floor"]
    ax.axhspan(fl["mean"] - fl["sd"], fl["mean"] + fl["sd"], color="gray", alpha=0.3,
               label="floor: held training images (±1 sd)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("NFE")
    ax.set_ylabel(f"FID ({fid['samples']} samples, classifier features)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("MNIST sample quality (schedule: lowest ODE error per sampler and NFE)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _samples_image(grids: dict, nfes, path: Path) -> None:
    """Rows: sampler x NFE, 8 samples each."""
    from PIL import Image, ImageDraw

    rows = [(s, n) for s in SAMPLER_LABEL if s != "ddim" for n in nfes if (s, n) in grids]
    label_w, h, w = 150, 28, 28
    img = Image.new("L", (label_w + 8 * w, len(rows) * h), 255)
    draw = ImageDraw.Draw(img)
    for r, (s, n) in enumerate(rows):
        draw.text((4, r * h + 8), f"{s} {n} NFE", fill=0)
        for j, p in enumerate(grids[(s, n)][:8]):
            img.paste(Image.fromarray(p[..., 0]), (label_w + j * w, r * h))
    img.save(path)


def write_report(results: dict, grids: dict, out: Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stem = out.with_suffix("")
    ode_png, fid_png, samples_png = (Path(f"{stem}_{k}.png") for k in ("ode_error", "fid", "samples"))
    _plot_ode(results, ode_png)
    _plot_fid(results, fid_png)
    _samples_image(grids, results["config"]["fid_nfe"], samples_png)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str) + "\n")

    cfg, m, cl, fid, t = results["config"], results["machine"], results["classifier"], results["fid"], results["timing_s"]
    ode_m, ode_x = results["ode"]["mnist"], results["ode"]["mixture"]
    nfes, fnfes = cfg["ode_nfe"], cfg["fid_nfe"]
    cost = results["evaluation_cost_s"]
    lines = [
        "# Samplers: ODE error and sample quality vs function evaluations", "",
        f"Command: `{results['command']}`", "",
        f"Machine: {m['cpu']}, {m['cpu_count']} CPUs, {m['torch_threads']} torch thread(s) "
        f"(OMP_NUM_THREADS={results['omp_num_threads']}), torch {m['torch']}, Python {m['python']}, "
        f"1-minute load average {m['load_average_1min']:.2f} at the start and "
        f"{results['load_average_1min_end']:.2f} at the end"
        + (" (more runnable jobs than CPUs: timings are slower than on an idle machine). "
           if max(m["load_average_1min"], results["load_average_1min_end"]) > m["cpu_count"] else ". ") +
        f"Started {results['started']}; took {t['total'] / 60:.1f} min "
        f"(estimated {results['estimate_s'] / 60:.0f} min before the run).", "",
        f"Model: shipped `{results['model']['name']}` (sha256 {results['model']['sha256'][:12]}, "
        f"{results['model']['steps']} training steps), sigma in [{results['model']['sigma_min']:.4g}, "
        f"{results['model']['sigma_max']:.4g}]; one evaluation costs "
        + ", ".join(f"{1e3 * v:.2f} ms per image at batch {k.split('_')[1]}" for k, v in cost.items()) + ".", "",
        "All figures below are measured by this run; the raw numbers are in "
        f"[`{out.with_suffix('.json').name}`]({out.with_suffix('.json').name}).", "",
        "## Summary", "",
        *_summary(results), "",
        "NFE = denoiser (network) evaluations per sample. Heun and EDM use 2 per step except the last "
        "(to sigma = 0), so their cells hold the largest odd NFE within the budget (shown in brackets where "
        "it differs). Every sampler ends with the same final denoising step from sigma_min to 0.", "",
        "## ODE error vs NFE", "",
        "Error = RMS over all trajectories and dimensions of x_sampler - x_ref in the data scale "
        "(MNIST pixels in (-1, 1)), where x_ref solves the same probability-flow ODE from the same initial "
        f"noise with {ode_m['reference']['steps']} Heun steps on the karras schedule "
        f"({ode_m['reference']['nfe']} NFE). Bold: lowest per column.", "",
        f"### Gaussian mixture (2-D, {results['mixture']['components']} components, exact denoiser, "
        f"sigma in [{results['mixture']['sigma_min']}, {results['mixture']['sigma_max']}], "
        f"{ode_x['samples']} trajectories)", "",
        "The mixture's gamma is linear in t, so its `model` schedule is `loglinear`. Reference self-check: "
        f"Heun with {ode_x['reference']['steps'] // 2} steps differs from the reference by "
        f"{_sig(ode_x['reference']['half_steps_rmse'])} RMS (the reference's own error is about a third of that).",
        "", *_ode_table(ode_x, nfes, ("ddim", "euler", "heun", "dpmpp-2m")), "",
        f"### MNIST (shipped model, {ode_m['samples']} trajectories)", "",
        f"DDIM (eta=0) is Euler on the ODE (EDM sec. 3): measured, the two differ by at most "
        f"{_sig(ode_m['ddim_check']['max_abs_difference'])} on these trajectories (every schedule, "
        f"{ode_m['ddim_check']['nfe']} NFE), so DDIM is not listed separately. Reference self-check: Heun with "
        f"{ode_m['reference']['steps'] // 2} steps differs from the reference by "
        f"{_sig(ode_m['reference']['half_steps_rmse'])} RMS on {ode_m['reference']['half_steps_samples']} "
        "trajectories.", "",
        *_ode_table(ode_m, nfes, ("euler", "heun", "dpmpp-2m")), "",
        f"![ODE error vs NFE]({ode_png.name})", "",
        "## Sample quality on MNIST: FID on the features of this project's MNIST classifier", "",
        f"FID = Fréchet distance between Gaussian fits of the {fid['reference']['features']}-d penultimate "
        f"features of a small CNN classifier trained in this project on the shared MNIST training split "
        f"(images 0-7999; validation accuracy {100 * cl['val_accuracy']:.2f}% on 8000-8999) for "
        f"**{fid['samples']} samples per cell** and for the reference statistics of the "
        f"**{fid['reference']['count']} validation images 8000-8999**. These are not Inception FIDs and are "
        "not comparable with published MNIST figures. With so few samples FID is biased upwards; every cell "
        "uses the same count and the same noise seeds, and the floor row gives the value of held real "
        "training images at that count (its sd is the sampling noise of a cell).", "",
        "Schedule per cell: the one with the lowest MNIST ODE error for that sampler at that NFE (ancestral "
        "and ddim take Euler's, edm takes Heun's). Samples are rounded to 8-bit pixels before the classifier. "
        "Bold: lowest per column.", "",
        *_fid_table(fid, fnfes), "",
        f"All {fid['floor']['all_train_samples']} training images vs validation: FID "
        f"{fid['floor']['all_train']:.2f} (the bias at this larger count is smaller; the classifier was "
        "trained on these images, which may also pull their features apart from the validation images').", "",
        f"![FID vs NFE]({fid_png.name})", "",
        f"First 8 samples of every cell (the same noise in every row): ![samples]({samples_png.name})", "",
        "## The classifier", "",
        f"`vdmcodec.metrics.classifier`: conv {cl['config']['channels'][0]} -> pool -> conv "
        f"{cl['config']['channels'][1]} -> pool -> fc {cl['config']['features']} (features) -> fc 10; "
        f"{cl['config']['epochs']} epochs of Adam (lr {cl['config']['lr']}, cosine decay), random shifts "
        f"up to {cl['config']['shift']} px, seed {cl['config']['seed']}. Trained on {cl['train_images']} "
        f"images in {cl['train_seconds']:.0f} s ({cl['threads']} thread(s)); weights "
        f"{'loaded from' if cl['cached'] else 'written to'} the cache (`{Path(cl['path']).name}`, not in git; "
        "retrained deterministically when missing). Accuracy: training "
        f"{100 * cl['train_accuracy']:.2f}%, **validation (8000-8999) {100 * cl['val_accuracy']:.2f}%**.", "",
        "## Timing", "",
        "| part | seconds |", "|---|---|",
        *[f"| {k} | {v:.0f} |" for k, v in t.items()], "",
    ]
    out.write_text("\n".join(lines))
