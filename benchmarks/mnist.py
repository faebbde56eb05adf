"""vdmcodec on the MNIST validation images against classical codecs, the model's ELBO, and
published figures; bpd as a function of T; compress / decompress speed.

python -m benchmarks.mnist [--model mnist] [--data ../shared/data/mnist/mnist9k-images-idx3-ubyte.gz]
    [--range 8000:9000] [--limit N] [--steps T] [--sweep 8,16,32,64,128,256,1024]
    [--sweep-limit 100] [--sweep-archive-max 256] [--threads K] [--out benchmarks/results/digits.md]

Writes OUT (markdown), OUT's stem + "_bpd_vs_T.png" (plot) and OUT with suffix .json (every
raw number). All rows of the main table are measured on the same images in this run; the
measuring code is vdmcodec.bench (shared with `vdmcodec bench`).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vdmcodec.bench import compare, format_speed, format_table, measure_archive, measure_elbo, speed_summary
from vdmcodec.coding.codec import load_codec
from vdmcodec.data import load_array
from vdmcodec.training.trainer import parse_range

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = Path("../shared/data/mnist/mnist9k-images-idx3-ubyte.gz")

# not measured here: figures as published (MNIST test set, models trained on the 60,000
# MNIST training images); reported in the Bit-Swap paper (Kingma, Abbeel & Ho, ICML 2019)
PUBLISHED = [
    ("Bit-Swap (hierarchical latent model, bits-back ANS)", 1.29, "60,000 MNIST training images"),
    ("BB-ANS (VAE, bits-back ANS)", 1.48, "60,000 MNIST training images"),
]


def cpu_model() -> str:
    """The CPU's name and what torch runs on it (SIMD level, native bfloat16 or not)."""
    from vdmcodec.hardware import cpu_capability

    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({cpu_capability()})"


def machine() -> dict:
    import PIL

    try:
        import imagecodecs

        ic = imagecodecs.__version__
    except ImportError:
        ic = None
    return {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "numpy": np.__version__,
            "pillow": PIL.__version__, "imagecodecs": ic, "platform": platform.platform(),
            "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


def resolve_data(path: Path) -> Path:
    """Relative paths are tried from the working directory, then from the project root."""
    if path.is_absolute() or path.exists():
        return path
    return ROOT / path


def _model_bpd(row: dict) -> float | None:
    """The sweep row's model-coded archive bpd, if an archive was built and used the model."""
    m = row["archive"]["model"] if row["archive"] else None
    return m["bpd"] if m and m["bytes"] is not None and m["model_images"] else None


def sweep(codec, images: list[np.ndarray], steps: list[int], archive_max: int, seed: int) -> list[dict]:
    """Discrete ELBO and the real archive size (no decode) for each T on the same images."""
    from tqdm import tqdm

    n = len(images)
    # progress in image-steps; the chain (small batches at first) cost ~1.5 ELBO passes in our runs
    cost = {T: T * n * (1.0 + 1.5 * (T <= archive_max)) for T in steps}
    rows = []
    with tqdm(total=sum(cost.values()), desc="sweep (image-steps)", unit="", unit_scale=True, dynamic_ncols=True) as bar:
        for T in steps:
            bar.set_postfix_str(f"T={T}")
            elbo = measure_elbo(codec, images, T, seed=seed, progress=sys.stderr.isatty())
            row = {"steps": T, "images": n, "elbo": elbo, "archive": None}
            if T <= archive_max:
                t0 = time.perf_counter()
                row["archive"] = measure_archive(codec, images, T, progress=sys.stderr.isatty(), verify=False)
                row["archive_s"] = time.perf_counter() - t0
            rows.append(row)
            bar.update(cost[T])
            a = _model_bpd(row)
            bar.write(f"T={T}: -ELBO {elbo['bpd_discrete']:.4f} +- {elbo['bpd_discrete_se']:.4f} bpd"
                      + (f", archive {a:.4f} bpd" if a is not None else ", no model-coded archive"))
    return rows


def sweep_table(rows: list[dict], archive_max: int) -> list[str]:
    lines = ["| T | -ELBO, T steps (bpd, mean ± s.e.) | archive bytes | archive bpd | archive - ELBO | "
             "chain bpd (model-coded images) | model-coded / seed images | ELBO s | archive s |",
             "|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        e = r["elbo"]
        head = f"| {r['steps']} | {e['bpd_discrete']:.4f} ± {e['bpd_discrete_se']:.4f} "
        a = r["archive"]
        if a is None:
            lines.append(head + f"| not run (T > --sweep-archive-max {archive_max}) | - | - | - | - | {e['seconds']:.1f} | - |")
            continue
        m = a["model"]
        if m["bytes"] is None or not m["model_images"]:
            lines.append(head + f"| - | - | - | - | {m['note']} | {e['seconds']:.1f} | {r['archive_s']:.1f} |")
            continue
        lines.append(head + f"| {m['bytes']:,} | {m['bpd']:.4f} | {m['bpd'] - e['bpd_discrete']:+.4f} | {m['chain_bpd']:.4f} | "
                     f"{m['model_images']} / {m['classical_images']} | {e['seconds']:.1f} | {r['archive_s']:.1f} |")
    return lines


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    T = np.array([r["steps"] for r in rows])
    mean = np.array([r["elbo"]["bpd_discrete"] for r in rows])
    se = np.array([r["elbo"]["bpd_discrete_se"] for r in rows])
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    ax.errorbar(T, mean, yerr=se, marker="o", capsize=3, label="-ELBO, T steps (mean ± s.e.)")
    arch = [(r["steps"], _model_bpd(r)) for r in rows if _model_bpd(r) is not None]
    if arch:
        ax.plot(*zip(*arch), marker="s", linestyle="--", label="vdmcodec archive (real file, all images)")
        chain = [(r["steps"], r["archive"]["model"]["chain_bpd"]) for r in rows if _model_bpd(r) is not None]
        ax.plot(*zip(*chain), marker="^", linestyle=":", label="the chain alone (model-coded images)")
    cont = [r["elbo"]["bpd_continuous"] for r in rows]
    ax.axhline(float(np.mean(cont)), color="gray", linestyle=":", label="-ELBO, continuous time")
    fallback = [r["archive"]["fallback"]["bpd"] for r in rows if r["archive"]]
    if fallback:
        ax.axhline(fallback[0], color="tab:red", linestyle="-.", label="all-classical archive")
    ax.set_xscale("log", base=2)
    ax.set_xticks(T, [str(t) for t in T])
    ax.set_xlabel("T (diffusion steps)")
    ax.set_ylabel("bits per subpixel")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def report(args, meta: dict, result: dict, speed: dict, sweep_rows: list[dict], plot_path: Path) -> list[str]:
    n = result["images"]
    card = meta["model_card"]
    failed = [r["method"] for r in result["rows"] if r.get("roundtrip") is False]
    model_row = next(r for r in result["rows"] if r["method"].startswith("vdmcodec archive (model"))
    fallback_row = next(r for r in result["rows"] if r["method"].startswith("vdmcodec archive (all"))
    written = "model-coded" if model_row["bytes"] is not None and model_row["bytes"] < fallback_row["bytes"] else "all classical"
    m = meta["machine"]
    lines = [
        f"# vdmcodec on MNIST ({meta['data']} [{meta['range']}], {n} images)", "",
        f"Command: `{meta['command']}`", "",
        f"Date: {meta['date']}", "",
        f"Machine: {m['cpu']} ({m['cpu_count']} logical CPUs), {m['torch_threads']} torch threads, torch {m['torch']}, "
        f"Python {m['python']}, Pillow {m['pillow']}, imagecodecs {m['imagecodecs'] or 'not installed'}", "",
        f"Model: `{meta['model']}` (weights sha256 {meta['model_sha256'][:16]}...; card: "
        + ", ".join(f"{k} {card[k]}" for k in ("data", "train_split", "steps", "cpu_hours", "val_bpd_continuous") if card.get(k) is not None)
        + ")", "",
        "## Compression, measured here", "",
        "All rows: the same images in this run. bpd = 8 × bytes / subpixels over all images (784 subpixels per "
        "image). Image codecs store each image as its own file; lzma and bzip2 compress the raw pixel bytes of all "
        "images concatenated. The ELBO rows are the model's estimate, not files.", "",
    ]
    lines += format_table(result)
    lines += [""]
    if model_row["bytes"] is not None:
        lines.append(f"The model-coded archive's container (magic, binary header with chunk lengths, CRC-32; docs/format.md) is "
                     f"{model_row['container_bytes']} bytes; {model_row['classical_images']} images are stored classically and "
                     f"their bytes are the chain's initial bits. `vdmcodec compress` writes the smaller of the two archives "
                     f"(here: {written}).")
    single = next((r for r in result["rows"] if r["method"] == "vdmcodec single-image files"), None)
    if single is not None:
        lines.append(f"Single-image files: mean {single['bpd_mean']:.4f} bpd per file; {single['classical_images']} of {n} "
                     f"went classical (a lone image has no other image to supply the chain's initial bits).")
    lines.append("Round trip: every codec's output was decoded and compared with the original pixels: "
                 + ("all exact." if not failed else f"**FAILED for {', '.join(failed)}**."))
    for name, why in result["skipped"].items():
        lines.append(f"Skipped {name}: {why}.")
    lines += ["", "## Published figures (not measured here)", "",
              "MNIST test set, as reported in the Bit-Swap paper (Kingma, Abbeel & Ho, ICML 2019). Those models were trained "
              f"on the 60,000 MNIST training images; the model above on {card.get('train_split', '?')} of "
              f"{card.get('data', '?')} and is measured on other images, so the figures are context, not a like-for-like comparison.", "",
              "| method | bpd | trained on |", "|---|---:|---|"]
    lines += [f"| {name} | {bpd:.2f} | {data} |" for name, bpd, data in PUBLISHED]
    if sweep_rows:
        ns = sweep_rows[0]["images"]
        cont = sweep_rows[0]["elbo"]
        lines += ["", f"## bpd vs T (first {ns} of the images above)", "",
                  f"Each T: the model's T-step negative ELBO (all T steps evaluated per image, seed {args.seed}) and the "
                  f"real model-coded archive of the same {ns} images (not decoded here; container and seed images "
                  f"included, so a small set pays more overhead per image; 'chain bpd' is the payload's growth over "
                  f"the seeds' bytes per model-coded subpixel, the figure to hold against the ELBO). Archives are built only for "
                  f"T ≤ {args.sweep_archive_max} (--sweep-archive-max). Continuous-time -ELBO on these images: "
                  f"{cont['bpd_continuous']:.4f} ± {cont['bpd_continuous_se']:.4f} bpd.", ""]
        lines += sweep_table(sweep_rows, args.sweep_archive_max)
        fb = next((r["archive"]["fallback"] for r in sweep_rows if r["archive"]), None)
        if fb is not None:
            lines += ["", f"All-classical archive of the same {ns} images: {fb['bytes']:,} bytes, {fb['bpd']:.4f} bpd."]
        lines += ["", f"![bpd vs T]({plot_path.name})"]
    load = [meta["machine"].get("load_average_1min"), meta.get("load_average_end")]
    lines += ["", f"## Speed (T = {result['steps']}, {n} images, one process, {m['torch_threads']} torch threads)", "",
              "Wall-clock times; other work on the machine slows them (1-minute load average at the start / end of the "
              f"run: {' / '.join('?' if v is None else f'{v:.2f}' for v in load)}; {m['cpu_count']} logical CPUs).", ""]
    lines += format_speed(speed)
    lines += ["", f"Raw numbers: `{Path(args.out).with_suffix('.json').name}`."]
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", default="mnist", help="shipped model name or model directory")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="MNIST IDX file (or any dataset file / folder)")
    ap.add_argument("--range", default="8000:9000", help="START:STOP slice of the data (validation split)")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N images of the range")
    ap.add_argument("--steps", type=int, default=None,
                    help="T for the main table and the speed figures (default: the model card's coding_steps, else the codec's)")
    ap.add_argument("--sweep", default="8,16,32,64,128,256,1024", help="comma-separated T values ('' for none)")
    ap.add_argument("--sweep-limit", type=int, default=100, help="images used for the sweep (the first N)")
    ap.add_argument("--sweep-archive-max", type=int, default=256, help="build real archives in the sweep only up to this T")
    ap.add_argument("--seed", type=int, default=0, help="noise seed of the ELBO estimates")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's choice); on a machine shared with other work, 1 avoids "
                         "thread oversubscription, which slowed small network batches up to 100x in our tests")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/digits.md"))
    args = ap.parse_args(argv)
    for name in ("limit", "steps", "sweep_limit", "threads"):
        v = getattr(args, name)
        if v is not None and v < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    try:
        sweep_steps = sorted({int(s) for s in args.sweep.split(",") if s.strip()})
    except ValueError:
        ap.error(f"--sweep: expected comma-separated integers, got {args.sweep!r}")
    if any(T < 1 for T in sweep_steps):
        ap.error("--sweep: every T must be >= 1")

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    data = resolve_data(args.data)
    a, b = parse_range(args.range)
    arr = load_array(data, a, b)
    if args.limit is not None:
        arr = arr[: args.limit]
    images = [np.ascontiguousarray(im) for im in arr]
    t0 = time.perf_counter()
    codec = load_codec(args.model, steps=args.steps)
    args.steps = codec.steps
    load_s = time.perf_counter() - t0
    meta = {"command": "python -m benchmarks.mnist " + shlex.join(sys.argv[1:] if argv is None else argv),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(), "data": str(args.data), "range": args.range, "limit": args.limit,
            "model": codec.info["name"], "model_dir": codec.info["dir"], "model_sha256": codec.info["sha256"],
            "model_card": codec.info["card"]}
    print(f"{len(images)} images from {data} [{args.range}], model {codec.info['name']} loaded in {load_s:.2f} s, "
          f"T={args.steps}, {torch.get_num_threads()} torch threads", file=sys.stderr, flush=True)

    result = compare(codec, images, steps=args.steps, seed=args.seed, progress=sys.stderr.isatty())
    speed = speed_summary(result, load_s)
    print("\n".join(format_table(result)), file=sys.stderr, flush=True)
    # the main table is written at once (a long sweep may be cut short), then again with the sweep
    write_results(args, meta, result, speed, [], codec)
    sweep_rows = sweep(codec, images[: args.sweep_limit], sweep_steps, args.sweep_archive_max, args.seed) if sweep_steps else []
    if sweep_rows:
        write_results(args, meta, result, speed, sweep_rows, codec)


def write_results(args, meta: dict, result: dict, speed: dict, sweep_rows: list[dict], codec) -> None:
    meta = {**meta, "load_average_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    out = Path(args.out)
    plot_path = out.with_name(out.stem + "_bpd_vs_T.png")
    if sweep_rows:
        plot(sweep_rows, plot_path, f"{codec.info['name']} on MNIST [{args.range}], first {sweep_rows[0]['images']} images")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(report(args, meta, result, speed, sweep_rows, plot_path)) + "\n")
    raw = {"meta": meta, "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
           "comparison": result, "speed": speed, "sweep": sweep_rows,
           "published": [{"method": n, "bpd": v, "trained_on": d, "measured_here": False} for n, v, d in PUBLISHED]}
    out.with_suffix(".json").write_text(json.dumps(raw, indent=1) + "\n")
    print(f"wrote {out}, {out.with_suffix('.json')}" + (f", {plot_path}" if sweep_rows else ""), file=sys.stderr)


if __name__ == "__main__":
    main()
