"""Structure priors (coding/priors/structure.py: chroma subsampling; coding/priors/jpeg_prior.py: decoded
JPEGs): files with and without, side by side.

python -m experiments.structure_priors [--model natural] [--threads 1] [--out experiments/results/structure_priors.md] [IMAGE ...]

For every RGB photo: the candidate priors (chroma modes whose block differences fall on the
prior's grid for >= 90% of the blocks; JPEG lattices seen on >= 8 luma DCT coefficients, at
three (spread, tau) settings, luma only and, where the chroma shows a lattice, with chroma),
compress's estimated saving of each (preflight.Probe.prior_savings on its crops) and its choice. Where there is a candidate, the photo is compressed twice by the
same codec through the chain (force_model, no preflight): without a prior and with the
candidate of the largest estimated saving, chosen or not (so the table shows whether the
choice was right); the file with the prior is decoded and compared with the photo. Photos
without a candidate code the same either way and are not compressed. Default photos: the RGB
validation photos of CSet14 and CSet5.
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
from vdmcodec.coding.planner import PROBE, ImageChoice
from vdmcodec.coding.preflight import Probe
from vdmcodec.coding.priors import describe, jpeg_prior, structure

DATA = Path("../shared/data/natural")


def default_photos() -> list[Path]:
    return sorted(p for s in ("CSet14", "CSet5") for p in (resolve_data(DATA / s)).glob("*.png")
                  if Image.open(p).mode == "RGB")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("images", nargs="*", type=Path)
    ap.add_argument("--model", default="natural")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("experiments/results/structure_priors.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    codec = load_codec(args.model, preflight=None)
    chain = codec.chain(codec.steps, codec.grid_bits)
    rows = []
    for path in args.images or default_photos():
        px = np.array(Image.open(resolve_data(path)).convert("RGB"))
        row = {"image": path.name, "size": f"{px.shape[1]}x{px.shape[0]}", "subpixels": int(px.size)}
        priors = structure.candidates(px) + jpeg_prior.candidates(px)
        t0 = time.perf_counter()
        gains = Probe(chain, px, PROBE).prior_savings(priors)
        chosen = codec.choose(px, chain).prior
        row.update(estimate_s=time.perf_counter() - t0, candidates={describe(p): g for p, g in zip(priors, gains)},
                   chosen=describe(chosen))
        if priors:
            best = priors[int(np.argmax(gains))]
            row["tried"] = describe(best)
            for name, prior in (("without", None), ("with", best)):
                codec.choose = lambda pixels, chain, priors=None, prior=prior: ImageChoice(prior, 0, 0.0, 0.0)
                t0 = time.perf_counter()
                blob = codec.compress([px], force_model=True)
                row[name] = 8 * len(blob) / px.size
                row[name + "_s"] = time.perf_counter() - t0
            del codec.choose
            assert container.unpack(blob)[0].structures == [best]
            t0 = time.perf_counter()
            row["exact"] = bool(np.array_equal(codec.decompress(blob)[0], px))
            row["decompress_s"] = time.perf_counter() - t0
        rows.append(row)
        print(json.dumps(row), flush=True)
    coded = [r for r in rows if "with" in r]
    n_all = sum(r["subpixels"] for r in rows)
    chosen_saving = sum((r["without"] - r["with"]) * r["subpixels"] for r in coded if r["chosen"] != "none")
    info = codec.info
    result = {"command": "python -m experiments.structure_priors " + shlex.join(sys.argv[1:] if argv is None else argv),
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": machine(), "model": info["name"], "sha256": info["sha256"][:16], "steps": codec.steps,
              "arithmetic": codec.arithmetic, "probe": PROBE.__dict__, "rows": rows,
              "pooled_saving_bpd_all_photos": chosen_saving / n_all}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    m = result["machine"]
    lines = ["# Structure priors (chroma subsampling, decoded JPEGs): files with and without, side by side", "",
             f"Command: `{result['command']}`", "",
             f"Date: {result['date']}; machine: {m['cpu']} ({m['cpu_count']} logical CPUs), {m['torch_threads']} torch "
             f"thread(s), torch {m['torch']}, 1-minute load {m['load_average_1min']:.2f} at the end.", "",
             f"Model `{info['name']}` (weights {result['sha256']}..., card steps {info['card'].get('steps')}), "
             f"T = {codec.steps}, {codec.arithmetic}. Estimated saving: `preflight.Probe.prior_savings` on "
             f"{PROBE.crops} crops of {PROBE.crop} px at {PROBE.draws} stratified levels "
             "(bits per subpixel; compress keeps the best candidate when its saving beats the prior's header bytes). "
             "Files: bits per subpixel of the whole file, the same codec without a prior and with the best candidate. "
             "'estimate s' times both estimates of a photo (the table's and compress's own choice), so about twice what "
             "compress spends on it; the compress times here do not include it.", "",
             "| photo | size | candidates (estimated saving, bpd) | compress chooses | without | with | change | "
             "estimate s | compress s (without / with) | decompress s | exact |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        cands = ", ".join(f"{k.split(' (exact')[0]} {v:+.3f}" for k, v in r["candidates"].items()) or "none"
        if "with" in r:
            lines.append(f"| {r['image']} | {r['size']} | {cands} | {r['chosen']} | {r['without']:.4f} | {r['with']:.4f} | "
                         f"{r['with'] / r['without'] - 1:+.2%} | {r['estimate_s']:.1f} | {r['without_s']:.1f} / "
                         f"{r['with_s']:.1f} | {r['decompress_s']:.1f} | {'yes' if r['exact'] else 'NO'} |")
        else:
            lines.append(f"| {r['image']} | {r['size']} | {cands} | {r['chosen']} | - | - | - | {r['estimate_s']:.1f} | - | - | - |")
    lines += ["", f"Saving where compress chose a prior, pooled over all {len(rows)} photos: "
              f"{result['pooled_saving_bpd_all_photos']:.4f} bits per subpixel."]
    args.out.write_text("\n".join(lines) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
