"""Files at uniform vs fitted level times, side by side (coding/levels.py).

python -m benchmarks.levels [--model natural] [--threads 1] [--out benchmarks/results/levels.md] [IMAGE ...]

Each photo is compressed twice by the same codec, through the chain (force_model, no
preflight), at T = the card's coding_steps: once at uniform times t_i = i / T and once at the
card's fitted coding_times; the fitted file is decoded and compared with the photo. The model
card must list fitted times for its T (python -m vdmcodec.training.fit_levels --write).
Default photos: the validation photos the codec writes model-coded and that code in under
a minute, to keep the run short.
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
from vdmcodec.coding.codec import load_codec

DATA = Path("../shared/data/natural")
DEFAULT_PHOTOS = ([DATA / "CSet5" / f"{n}.png" for n in ("woman", "bird", "butterfly")]
                  + [DATA / "CSet14" / f"{n}.png" for n in ("comic", "coastguard", "foreman")])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("images", nargs="*", type=Path)
    ap.add_argument("--model", default="natural")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/levels.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    fitted = load_codec(args.model, preflight=None)
    if fitted.level_times(fitted.steps) is None:
        raise SystemExit(f"{args.model}: the card lists no fitted coding_times for T = {fitted.steps}")
    uniform = load_codec(args.model, preflight=None)
    uniform.fitted_levels = False
    rows = []
    for path in args.images or DEFAULT_PHOTOS:
        px = np.array(Image.open(resolve_data(path)).convert("RGB"))
        row = {"image": path.name, "size": f"{px.shape[1]}x{px.shape[0]}"}
        for name, codec in (("uniform", uniform), ("fitted", fitted)):
            t0 = time.perf_counter()
            blob = codec.compress([px], force_model=True)
            row[name] = 8 * len(blob) / px.size
            row[name + "_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        row["exact"] = bool(np.array_equal(fitted.decompress(blob)[0], px))
        row["decompress_s"] = time.perf_counter() - t0
        row["subpixels"] = int(px.size)
        rows.append(row)
        print(json.dumps(row), flush=True)
    n = sum(r["subpixels"] for r in rows)
    pooled = {k: sum(r[k] * r["subpixels"] for r in rows) / n for k in ("uniform", "fitted")}
    info = fitted.info
    fit = info["card"].get("coding_times_fit", {})
    result = {"command": "python -m benchmarks.levels " + shlex.join(sys.argv[1:] if argv is None else argv),
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": machine(), "model": info["name"], "sha256": info["sha256"][:16], "steps": fitted.steps,
              "arithmetic": fitted.arithmetic, "fit": fit, "rows": rows, "pooled": pooled}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    m = result["machine"]
    lines = ["# Uniform vs fitted level times: file sizes, side by side", "",
             f"Command: `{result['command']}`", "",
             f"Date: {result['date']}; machine: {m['cpu']} ({m['cpu_count']} logical CPUs), {m['torch_threads']} torch "
             f"thread(s), torch {m['torch']}, 1-minute load {m['load_average_1min']:.2f} at the end.", "",
             f"Model `{info['name']}` (weights {result['sha256']}..., card steps {info['card'].get('steps')}), "
             f"T = {fitted.steps}, {fitted.arithmetic}. Both files of a photo come from the same codec, one at uniform "
             "times and one at the card's fitted `coding_times`; bits per subpixel of the whole file.", ""]
    if fit:
        lines += [f"The fit (`python -m vdmcodec.training.fit_levels`): {fit.get('crops')} training crops of "
                  f"{fit.get('size')}, {fit.get('points')} candidate times; T-step diffusion term on those crops "
                  f"{fit.get('uniform_bpd', float('nan')):.4f} (uniform) -> {fit.get('fitted_bpd', float('nan')):.4f} "
                  f"(fitted), continuous-time {fit.get('continuous_bpd', float('nan')):.4f}.", ""]
    lines += ["| photo | size | uniform | fitted | change | compress s (uniform / fitted) | decompress s | exact |",
              "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['image']} | {r['size']} | {r['uniform']:.4f} | {r['fitted']:.4f} | "
                     f"{r['fitted'] / r['uniform'] - 1:+.2%} | {r['uniform_s']:.1f} / {r['fitted_s']:.1f} | "
                     f"{r['decompress_s']:.1f} | {'yes' if r['exact'] else 'NO'} |")
    lines.append(f"| **pooled** | | **{pooled['uniform']:.4f}** | **{pooled['fitted']:.4f}** | "
                 f"**{pooled['fitted'] / pooled['uniform'] - 1:+.2%}** | | | |")
    args.out.write_text("\n".join(lines) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
