"""Does a model exploit the structure photo pipelines leave in images? Chroma subsampling
(JPEG / video 4:2:0 and 4:2:2) and gray stored as RGB make an image cheaper to code for a
codec that notices; this measures how much cheaper, for models and classical codecs side by
side, on crops of the validation photos.

python -m experiments.structure [--models natural,DIR...] [--sets CSet14,CSet5] [--crop 128]
    [--draws 32] [--threads K] [--out experiments/results/structure.md]

Every RGB photo of the sets gives one central crop (even offsets), turned into each variant
with the training augmentations' own functions (vdmcodec/training/augment.py): as is,
4:2:0 replicated (JFIF), 4:2:0 linearly interpolated (JFIF), 4:2:2 replicated (BT.601
studio range), gray as RGB. Per variant: each model's continuous-time -ELBO (``--draws``
stratified t, the same seed for every model) and each classical codec's file size, in bits
per subpixel, as means over the crops. Writes OUT (markdown) and OUT with suffix .json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from benchmarks.mnist import machine, resolve_data
from benchmarks.natural import DATA, continuous_bpd
from vdmcodec.bench import image_codecs
from vdmcodec.data import load_items
from vdmcodec.files import atomic_write_bytes
from vdmcodec.training.augment import gray_rgb, subsample_chroma
from vdmcodec.zoo import load_model

VARIANTS = {
    "as is": lambda x: x,
    "4:2:0 replicated (JFIF)": lambda x: subsample_chroma(x, (2, 2), "replicate", "jfif"),
    "4:2:0 interpolated (JFIF)": lambda x: subsample_chroma(x, (2, 2), "linear", "jfif"),
    "4:2:2 replicated (BT.601 studio)": lambda x: subsample_chroma(x, (1, 2), "replicate", "bt601"),
    "gray as RGB": gray_rgb,
}
CLASSICAL = ("PNG", "WebP lossless", "JPEG XL")


def central_crop(im: np.ndarray, side: int) -> np.ndarray:
    h, w = im.shape[:2]
    ch, cw = min(side, h) // 2 * 2, min(side, w) // 2 * 2
    y0, x0 = (h - ch) // 2 // 2 * 2, (w - cw) // 2 // 2 * 2
    return np.ascontiguousarray(im[y0 : y0 + ch, x0 : x0 + cw])


def report(meta: dict, rows: list[dict], models: list[str], classical: list[str]) -> str:
    cols = models + classical
    lines = ["# How much photo-pipeline structure each codec exploits", "",
             f"Command: `{meta['command']}`", "", f"Date: {meta['date']}", "",
             f"Machine: {meta['machine']['cpu']} ({meta['machine']['cpu_count']} logical CPUs), "
             f"{meta['machine']['torch_threads']} torch threads, torch {meta['machine']['torch']}, "
             f"imagecodecs {meta['machine']['imagecodecs']}.", "",
             "Models (continuous-time -ELBO, " f"{meta['draws']} stratified draws of t, seed {meta['seed']}):", ""]
    lines += [f"- `{m['label']}`: weights sha256 {m['sha256'][:16]}..., card steps {m['card'].get('steps')}, "
              f"{m['card'].get('cpu_hours')} CPU-h" for m in meta["models"]]
    lines += ["", f"Crops: the central {meta['crop']} x {meta['crop']} (even offsets) of each RGB photo of "
              f"{', '.join(meta['sets'])} ({len(rows)} crops). Variants made with vdmcodec/training/augment.py. "
              "Bits per subpixel, mean over the crops; in brackets the change against the same codec on the "
              "crops as they are.", "",
              "| variant | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    base = {c: np.mean([r["as is"][c] for r in rows]) for c in cols}
    for v in VARIANTS:
        cells = []
        for c in cols:
            m = float(np.mean([r[v][c] for r in rows]))
            cells.append(f"{m:.3f}" if v == "as is" else f"{m:.3f} ({100 * (m / base[c] - 1):+.0f}%)")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    lines += ["", "## Per crop", "", "| crop | variant | " + " | ".join(cols) + " |", "|---|---|" + "---:|" * len(cols)]
    for r in rows:
        for v in VARIANTS:
            lines.append(f"| {r['name']} | {v} | " + " | ".join(f"{r[v][c]:.3f}" for c in cols) + " |")
    lines += ["", "Raw numbers: `" + meta["json"] + "`.", ""]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--models", default="natural", help="comma-separated shipped model names or model directories")
    ap.add_argument("--labels", default=None, help="comma-separated column labels for the models (default: as given)")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--sets", default="CSet14,CSet5")
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--draws", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path("experiments/results/structure.md"))
    args = ap.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    names = [m for m in args.models.split(",") if m]
    labels = args.labels.split(",") if args.labels else names
    if len(labels) != len(names):
        ap.error(f"{len(labels)} labels for {len(names)} models")
    models = [load_model(n) for n in names]
    codecs = [c for c in image_codecs()[0] if c.name in CLASSICAL]
    crops = []
    for s in [s for s in args.sets.split(",") if s]:
        for it in load_items([resolve_data(args.data / s)]):
            if it.pixels.shape[-1] == 3:
                crops.append((f"{s}/{Path(it.name).name}", central_crop(it.pixels, args.crop)))
    from tqdm import tqdm

    rows = []
    with tqdm(total=len(crops) * len(VARIANTS), unit="variant", desc="structure", dynamic_ncols=True) as bar:
        for name, crop in crops:
            row = {"name": name, "shape": list(crop.shape)}
            for v, make in VARIANTS.items():
                x = make(crop)
                cell = {lab: continuous_bpd(m.eval(), x, args.seed, args.draws) for lab, (m, _) in zip(labels, models)}
                cell.update({c.name: 8 * len(c.encode(x)) / x.size for c in codecs})
                row[v] = cell
                bar.update(1)
            rows.append(row)
    meta = {"command": "python -m experiments.structure " + shlex.join(sys.argv[1:] if argv is None else argv),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
            "models": [{"label": lab, "sha256": info["sha256"], "card": info["card"]} for lab, (_, info) in zip(labels, models)],
            "crop": args.crop, "draws": args.draws, "seed": args.seed, "sets": args.sets.split(","),
            "json": str(args.out.with_suffix(".json"))}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out.with_suffix(".json"), (json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n").encode())
    atomic_write_bytes(args.out, report(meta, rows, labels, [c.name for c in codecs]).encode())
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
