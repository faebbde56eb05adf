"""Files with and without one of the chain's fitted parts, side by side (coding/levels.py):
level times (uniform vs fitted) or channel correlations (factorised vs correlated p).

python -m experiments.levels [--compare times|corr] [--model natural] [--threads 1] [--out FILE] [IMAGE ...]

Each photo is compressed twice by the same codec, through the chain (force_model, no
preflight), at T = the card's coding_steps (or --steps): --compare times, once at uniform
times t_i = i / T and once at the card's fitted coding_times; --compare corr, once with p
factorised over the colour channels and once correlated by the card's coding_corr (both at
the card's times). The second file is decoded and compared with the photo. The model card
must list what is compared (python -m vdmcodec.training.fit_levels --write).
Default photos: the validation photos the codec writes model-coded and that code in under
a minute, to keep the run short (on the CPU they were chosen on).
"""
from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.mnist import machine, resolve_data
from vdmcodec.coding import container
from vdmcodec.coding.codec import load_codec

DATA = Path("../shared/data/natural")
COMPARE = {"times": {"names": ("uniform", "fitted"), "out": "levels.md", "title": "Uniform vs fitted level times",
                     "what": "one at uniform times and one at the card's fitted `coding_times`"},
           "corr": {"names": ("factorised", "correlated"), "out": "channel_corr.md",
                    "title": "Factorised vs channel-correlated p(z_s | z_t)",
                    "what": "one with p factorised over the colour channels and one correlated across them by the "
                            "card's `coding_corr` (level_codecs.p_codec_corr) times the share compress estimated for the photo (column "
                            "share; Codec.choose)"}}
DEFAULT_PHOTOS = ([DATA / "CSet5" / f"{n}.png" for n in ("woman", "bird", "butterfly")]
                  + [DATA / "CSet14" / f"{n}.png" for n in ("comic", "coastguard", "foreman")])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("images", nargs="*", type=Path)
    ap.add_argument("--model", default="natural")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compare", choices=list(COMPARE), default="times")
    ap.add_argument("--steps", type=int, default=None, help="T (default: the card's coding_steps)")
    ap.add_argument("--out", type=Path, default=None,
                    help="default: experiments/results/levels.md (times), channel_corr.md (corr)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = args.out or Path("experiments/results") / COMPARE[args.compare]["out"]
    base_name, new_name = COMPARE[args.compare]["names"]
    fitted = load_codec(args.model, steps=args.steps, preflight=None)
    if args.compare == "times" and fitted.level_times(fitted.steps) is None:
        raise SystemExit(f"{args.model}: the card lists no fitted coding_times for T = {fitted.steps}")
    if args.compare == "corr" and fitted.corr_table() is None:
        raise SystemExit(f"{args.model}: the card lists no channel correlations (coding_corr)")
    uniform = load_codec(args.model, steps=args.steps, preflight=None)
    if args.compare == "times":
        uniform.fitted_levels = False
    else:
        uniform.channel_corr = False
    rows = []
    for path in args.images or DEFAULT_PHOTOS:
        px = np.array(Image.open(resolve_data(path)).convert("RGB"))
        row = {"image": path.name, "size": f"{px.shape[1]}x{px.shape[0]}"}
        for name, codec in ((base_name, uniform), (new_name, fitted)):
            t0 = time.perf_counter()
            blob = codec.compress([px], force_model=True)
            row[name] = 8 * len(blob) / px.size
            row[name + "_s"] = time.perf_counter() - t0
        if args.compare == "corr":  # the share of the correlations compress chose for the photo
            shares = container.unpack(blob)[0].corr_scales
            row["share"] = f"{shares[0] if shares else 0}/{container.CORR_SCALE_STEPS}"
        t0 = time.perf_counter()
        row["exact"] = bool(np.array_equal(fitted.decompress(blob)[0], px))
        row["decompress_s"] = time.perf_counter() - t0
        row["subpixels"] = int(px.size)
        rows.append(row)
        print(json.dumps(row), flush=True)
    n = sum(r["subpixels"] for r in rows)
    pooled = {k: sum(r[k] * r["subpixels"] for r in rows) / n for k in (base_name, new_name)}
    info = fitted.info
    fit = (info["card"].get("coding_times_fit", {}) if args.compare == "times"
           else info["card"].get("coding_corr", {}).get("fit", {}))
    result = {"command": "python -m experiments.levels " + shlex.join(sys.argv[1:] if argv is None else argv),
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": machine(), "model": info["name"], "sha256": info["sha256"][:16], "steps": fitted.steps,
              "arithmetic": fitted.arithmetic, "compare": args.compare, "fit": fit, "rows": rows, "pooled": pooled}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    m = result["machine"]
    lines = [f"# {COMPARE[args.compare]['title']}: file sizes, side by side", "",
             f"Command: `{result['command']}`", "",
             f"Date: {result['date']}; machine: {m['cpu']} ({m['cpu_count']} logical CPUs), {m['torch_threads']} torch "
             f"thread(s), torch {m['torch']}, 1-minute load {m['load_average_1min']:.2f} at the end.", "",
             f"Model `{info['name']}` (weights {result['sha256']}..., card steps {info['card'].get('steps')}), "
             f"T = {fitted.steps}, {fitted.arithmetic}. Both files of a photo come from the same codec, "
             f"{COMPARE[args.compare]['what']}; bits per subpixel of the whole file.", ""]
    if fit and args.compare == "corr":
        lines += [f"The correlations (`python -m vdmcodec.training.fit_levels --write`): {fit.get('crops')} training "
                  f"crops of {fit.get('size')}, {fit.get('points')} candidate times.", ""]
    elif fit:
        lines += [f"The fit (`python -m vdmcodec.training.fit_levels`): {fit.get('crops')} training crops of "
                  f"{fit.get('size')}, {fit.get('points')} candidate times; T-step diffusion term on those crops "
                  f"{fit.get('uniform_bpd', float('nan')):.4f} (uniform) -> {fit.get('fitted_bpd', float('nan')):.4f} "
                  f"(fitted), continuous-time {fit.get('continuous_bpd', float('nan')):.4f}.", ""]
    b, f = base_name, new_name
    lines += [f"| photo | size | {b} | {f} | change | compress s ({b} / {f}) | decompress s | exact |",
              "|---|---|---:|---:|---:|---:|---:|---|"]
    if args.compare == "corr":
        lines[-2:] = [lines[-2] + " share |", lines[-1] + "---|"]
    for r in rows:
        lines.append(f"| {r['image']} | {r['size']} | {r[b]:.4f} | {r[f]:.4f} | "
                     f"{r[f] / r[b] - 1:+.2%} | {r[b + '_s']:.1f} / {r[f + '_s']:.1f} | "
                     f"{r['decompress_s']:.1f} | {'yes' if r['exact'] else 'NO'} |" + (f" {r['share']} |" if 'share' in r else ""))
    lines.append(f"| **pooled** | | **{pooled[b]:.4f}** | **{pooled[f]:.4f}** | "
                 f"**{pooled[f] / pooled[b] - 1:+.2%}** | | | |" + (" |" if args.compare == "corr" else ""))
    out.write_text("\n".join(lines) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
