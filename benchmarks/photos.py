"""vdmcodec on the validation photographs (CSet14, CSet5), side by side with JPEG XL e9 and
WebP in the same run: what `compress` writes and how long it takes each way, against JPEG
XL's own encode and decode time on the same photo; and the model-coded candidate (the
chain's file, written or not) with its seconds each way.

python -m benchmarks.photos [--model natural] [--effort E] [--steps T] [--arithmetic A]
    [--sets CSet14,CSet5] [--images a.png,...] [--threads 2] [--no-model-coded]
    [--out benchmarks/results/photos.md]

Each photo is its own file. bpd = 8 x bytes / subpixels. "prior" says which photos have a
JPEG lattice the chain's prior can use (decoded JPEGs: jpeg_prior.candidates) and which are
palette images (at most 256 distinct colours); the others are the clean photos. Times are wall-clock seconds in this process with the model loaded
(the start-up of a fresh `vdmcodec` process, import and model load, is measured once and
reported apart). Writes OUT (markdown) and OUT with suffix .json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.mnist import machine, resolve_data
from vdmcodec.coding import classical
from vdmcodec.coding.container import MODEL_METHODS
from vdmcodec.coding.codec import load_codec
from vdmcodec.coding.container import unpack
from vdmcodec.coding.priors import jpeg_prior
from vdmcodec.data import load_items
from vdmcodec.hardware import cpu_capability

DATA = Path("../shared/data/natural")


def timed(fn, *args, **kw):
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t0


def measure(codec, im: np.ndarray, effort: int | None, steps: int | None, model_coded: bool) -> dict:
    """One photo: JPEG XL e9 and WebP m6 (bytes, seconds each way), what compress writes
    (bytes, method, seconds each way, exact), and the model-coded candidate."""
    row = {"subpixels": im.size, "prior": bool(jpeg_prior.candidates(im)) if im.shape[-1] == 3 else False,
           "palette": palette(im)}
    for name, method, effort_c in (("jxl", "jxl", 9), ("webp", "webp", 6)):
        data, enc = timed(classical.encode, im, method, effort_c)
        back, dec = timed(classical.decode, data, method, im.shape)
        row[name] = {"bpd": 8 * len(data) / im.size, "encode_s": enc, "decode_s": dec, "exact": bool(np.array_equal(back, im))}
    blob, enc = timed(codec.compress, [im], steps=steps, effort=effort)
    back, dec = timed(codec.decompress, blob)
    header = unpack(blob)[0]
    row["written"] = {"bpd": 8 * len(blob) / im.size, "method": header.image_methods()[0], "steps": header.steps,
                      "encode_s": enc, "decode_s": dec, "exact": bool(np.array_equal(back[0], im))}
    if model_coded and im.shape[-1] in (1, 3):
        T = steps or codec.effort_choice(effort).steps or codec.steps
        blob_m, enc_m = timed(codec.compress, [im], steps=T, force_model=True)
        back_m, dec_m = timed(codec.decompress, blob_m)
        row["model_coded"] = {"bpd": 8 * len(blob_m) / im.size, "steps": T, "encode_s": enc_m, "decode_s": dec_m,
                              "exact": bool(np.array_equal(back_m[0], im)), "method": unpack(blob_m)[0].image_methods()[0]}
    return row


def palette(im: np.ndarray) -> bool:
    """At most 256 distinct colours (or grey levels)."""
    return len(np.unique(im.reshape(-1, im.shape[-1]), axis=0)) <= 256


def startup_seconds(model: str) -> float:
    """A fresh process's import of the codec and load of ``model`` (what every CLI call pays)."""
    code = f"from vdmcodec.coding.codec import load_codec; load_codec({model!r})"
    _, s = timed(subprocess.run, [sys.executable, "-c", code], check=True)
    return s


def report(args, rows: dict, startup: float, codec) -> str:
    info = codec.info
    card = info.get("card", {})
    lines = [
        "# vdmcodec on the validation photos, side by side with JPEG XL e9",
        "",
        f"Command: `{' '.join(shlex.quote(a) for a in ['python', '-m', 'benchmarks.photos'] + sys.argv[1:])}`",
        "",
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        "",
        f"Machine: {machine()['cpu']}, {torch.get_num_threads()} torch threads, torch {torch.__version__}; "
        f"1-minute load average {machine()['load_average_1min']:.2f} at the end (other work may share the CPUs).",
        "",
        f"Model: `{info['name']}` (weights sha256 {info['sha256'][:16]}..., steps {card.get('steps')}), "
        f"effort {args.effort or codec.effort}, arithmetic {codec.arithmetic}. Start-up of a fresh process "
        f"(import, model load): {startup:.1f} s, not in the times below.",
        "",
        "bpd = 8 x bytes / subpixels. 'written' is what `vdmcodec compress` writes; 'x JXL' is its time over JPEG XL "
        "e9's own on the same photo, measured just before it. 'model-coded' is the chain's file (written or not).",
        "",
        "| set | photo | prior | written as | bpd | JPEG XL e9 | WebP m6 | model-coded (T) | compress s | x JXL | "
        "decompress s | x djxl | model-coded compress s | model-coded decompress s | exact |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for (s, name), r in rows.items():
        w, j, m = r["written"], r["jxl"], r.get("model_coded")
        mc = (f"{m['bpd']:.3f} ({m['steps']})", f"{m['encode_s']:.1f}", f"{m['decode_s']:.1f}") if m else ("-", "-", "-")
        lines.append(
            f"| {s} | {name} | {'JPEG lattice' if r['prior'] else 'palette' if r.get('palette') else ''} | {w['method']} | {w['bpd']:.3f} | {j['bpd']:.3f} | "
            f"{r['webp']['bpd']:.3f} | {mc[0]} | {w['encode_s']:.2f} | {w['encode_s'] / j['encode_s']:.2f} | "
            f"{w['decode_s']:.2f} | {w['decode_s'] / j['decode_s']:.1f} | {mc[1]} | {mc[2]} | ")
        lines[-1] += "yes" if w["exact"] and (m is None or m["exact"]) else "**NO**"
    lines += ["", "## Summary", ""]
    for label, keep in (("all photos", lambda r: True), ("no JPEG lattice", lambda r: not r["prior"]),
                        ("clean photos (no JPEG lattice, not palette)", lambda r: not r["prior"] and not r.get("palette")),
                        ("decoded JPEGs", lambda r: r["prior"])):
        sel = [r for r in rows.values() if keep(r)]
        if not sel:
            continue
        dims = sum(r["subpixels"] for r in sel)
        pooled = {k: sum(r[k]["bpd"] * r["subpixels"] for r in sel) / dims for k in ("written", "jxl", "webp")}
        lose = [r for r in sel if r["written"]["method"] not in MODEL_METHODS]
        worst = max((r["written"]["encode_s"] / r["jxl"]["encode_s"] for r in lose), default=None)
        worst_d = max((r["written"]["decode_s"] / r["jxl"]["decode_s"] for r in lose), default=None)
        within = sum(1 for r in lose if r["written"]["encode_s"] <= 1.5 * r["jxl"]["encode_s"])
        won = [r for r in sel if r.get("model_coded") and r["model_coded"]["bpd"] < r["jxl"]["bpd"]]
        mc = [r for r in sel if r.get("model_coded")]
        lines.append(f"- {label} ({len(sel)}): pooled written {pooled['written']:.3f} bpd, JPEG XL e9 {pooled['jxl']:.3f}, "
                     f"WebP {pooled['webp']:.3f}; model-coded below JPEG XL on {len(won)} of {len(mc)}"
                     + (f"; written classically: {len(lose)}, compress within 1.5x JPEG XL e9's encode time on {within}, "
                        f"at most {worst:.2f}x, "
                        f"decompress at most {worst_d:.1f}x its decode time" if lose else "")
                     + (f"; model-coded 768x512-equivalent seconds (median): compress "
                        f"{np.median([r['model_coded']['encode_s'] * 768 * 512 * 3 / r['subpixels'] for r in mc]):.1f}, "
                        f"decompress {np.median([r['model_coded']['decode_s'] * 768 * 512 * 3 / r['subpixels'] for r in mc]):.1f}"
                        if mc else ""))
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="natural")
    ap.add_argument("--effort", type=int, default=None, help="compress's effort (default: the codec's)")
    ap.add_argument("--steps", type=int, default=None, help="T (default: what the effort chooses)")
    ap.add_argument("--arithmetic", default=None, help="coding arithmetic (default: the card's where native)")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--sets", default="CSet14,CSet5")
    ap.add_argument("--images", default=None, help="only these file names (comma-separated)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-model-coded", dest="model_coded", action="store_false",
                    help="skip the model-coded candidate of photos written classically")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/photos.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    codec = load_codec(args.model, arithmetic=args.arithmetic)
    startup = startup_seconds(args.model)
    only = set(args.images.split(",")) if args.images else None
    rows = {}
    for s in args.sets.split(","):
        for item in load_items([resolve_data(args.data / s)]):
            if only and item.name not in only:
                continue
            rows[(s, item.name)] = r = measure(codec, item.pixels, args.effort, args.steps, args.model_coded)
            print(f"{s}/{item.name}: {r['written']['method']} {r['written']['bpd']:.3f} (JPEG XL {r['jxl']['bpd']:.3f}) "
                  f"{r['written']['encode_s']:.1f}/{r['written']['decode_s']:.1f} s", file=sys.stderr, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report(args, rows, startup, codec))
    args.out.with_suffix(".json").write_text(json.dumps(
        {"argv": sys.argv, "machine": machine(), "cpu": cpu_capability(), "startup_s": startup,
         "model": {"name": codec.info["name"], "sha256": codec.info["sha256"], "steps": codec.info.get("card", {}).get("steps"),
                   "effort": args.effort or codec.effort, "arithmetic": codec.arithmetic},
         "rows": [{"set": s, "image": n, **r} for (s, n), r in rows.items()]}, indent=1))
    print(args.out)


if __name__ == "__main__":
    main()
