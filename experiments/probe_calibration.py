"""How well compress's probe (preflight.Probe at planner.PROBE) predicts the model-coded file,
per validation photo: the probe's rate, the saving of the prior or correlation share
``Planner.choose`` keeps, their difference (the estimate ``preflight.loses_with_prior`` gates
on), and the model-coded file from the photos benchmark (benchmarks/results/photos.json, the
same model and T). Also the preflight's continuous-time estimate on its own crops, for
comparison. The ratio file / estimate is what ``PreflightConfig.prior_margin`` is set from.

python -m experiments.probe_calibration [--model natural] [--steps 32] [--threads 2]
    [--photos benchmarks/results/photos.json] [--data ../shared/data/natural]
    [--crops 16] [--draws 8] [--seed 0]
    [--out experiments/results/probe_calibration.md]
"""
from __future__ import annotations

import argparse
import dataclasses
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
from vdmcodec.coding.container import CORR_SCALE_STEPS
from vdmcodec.coding.planner import PROBE

DATA = Path("../shared/data/natural")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="natural")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--photos", type=Path, default=Path("benchmarks/results/photos.json"))
    ap.add_argument("--data", type=Path, default=DATA, help="the photos' sets (the benchmark's rows name set and image)")
    ap.add_argument("--crops", type=int, default=PROBE.crops, help="the probe's crops (default compress's)")
    ap.add_argument("--draws", type=int, default=PROBE.draws, help="the probe's strata of levels (default compress's)")
    ap.add_argument("--seed", type=int, default=PROBE.seed)
    ap.add_argument("--out", type=Path, default=Path("experiments/results/probe_calibration.md"))
    args = ap.parse_args(argv)
    probe = dataclasses.replace(PROBE, crops=args.crops, draws=args.draws, seed=args.seed)
    torch.set_num_threads(args.threads)
    bench = json.loads(args.photos.read_text())
    codec = load_codec(args.model)
    if not codec.info["sha256"].startswith(str(bench["model"].get("sha256", ""))[:16]):
        sys.exit(f"{args.photos} measured other weights than {args.model}'s")
    chain = codec.chain(args.steps, codec.grid_bits)
    rows = []
    for r in bench["rows"]:
        coded = r.get("model_coded") or {}
        if coded.get("bpd") is None or coded.get("steps") != args.steps:
            continue
        path = resolve_data(args.data / r["set"] / r["image"])
        px = np.asarray(Image.open(path))
        if px.ndim != 3 or px.shape[-1] != 3:
            continue  # gray photos are coded as R = G = B without a probe
        t0 = time.perf_counter()
        choice = codec.planner.choose(px, chain, probe=probe)
        seconds = time.perf_counter() - t0
        best = min(r["jxl"]["bpd"], r["webp"]["bpd"])
        estimate = choice.rate - choice.saving
        cont = codec.preflight_estimate(px)  # None below the preflight's min_pixels
        kept = "none" if choice.prior is None and not choice.corr_share else (
            f"correlations {choice.corr_share}/{CORR_SCALE_STEPS}" if choice.prior is None else type(choice.prior).__name__)
        rows.append({"set": r["set"], "photo": r["image"], "kept": kept, "rate": choice.rate,
                     "saving": choice.saving, "estimate": estimate, "continuous": cont, "file": coded["bpd"],
                     "best_classical": best, "probe_s": seconds})
        print(json.dumps(rows[-1]), flush=True)
    result = {"command": "python -m experiments.probe_calibration " + shlex.join(sys.argv[1:] if argv is None else argv),
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": machine(), "model": codec.info["name"], "sha256": codec.info["sha256"][:16],
              "steps": args.steps, "probe": probe.__dict__, "prior_margin": codec.preflight.prior_margin, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    m = result["machine"]
    lines = ["# The probe's estimate against the model-coded file", "",
             f"Command: `{result['command']}`", "",
             f"Date: {result['date']}; machine: {m['cpu']}, {m['torch_threads']} torch threads, torch {m['torch']}.", "",
             f"Model `{result['model']}` (weights {result['sha256']}...), T = {args.steps}. Probe: {probe.crops} crops of "
             f"{probe.crop} px on a grid of equal cells, {probe.draws} strata of levels, seed {probe.seed} (preflight.Probe). Model-coded "
             f"files: `{args.photos}`. bpd = bits per subpixel.", "",
             "| set | photo | kept | probe rate | saving | estimate | continuous (preflight) | model-coded file | "
             "file / estimate | estimate / best classical | file / best classical | probe s |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['set']} | {r['photo']} | {r['kept']} | {r['rate']:.3f} | {r['saving']:.3f} | "
                     f"{r['estimate']:.3f} | {'-' if r['continuous'] is None else format(r['continuous'], '.3f')} | {r['file']:.3f} | {r['file'] / r['estimate']:.3f} | "
                     f"{r['estimate'] / r['best_classical']:.3f} | {r['file'] / r['best_classical']:.3f} | {r['probe_s']:.1f} |")
    ratios = sorted(r["file"] / r["estimate"] for r in rows)
    lines += ["", f"file / estimate over {len(rows)} RGB photos: {ratios[0]:.3f} to {ratios[-1]:.3f}, median "
              f"{ratios[len(ratios) // 2]:.3f}. compress gives the chain up where estimate / {result['prior_margin']} "
              "is not below the best classical file (preflight.loses_with_prior).", ""]
    args.out.write_text("\n".join(lines))
    print(args.out)


if __name__ == "__main__":
    main()
