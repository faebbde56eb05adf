"""Which network arithmetic the codec should run: float32 on NCHW activations, on
channels_last (NHWC) ones, bfloat16 autocast on NHWC, or the portable arithmetic (exact sums
in float64, the same bits on every CPU: coding/exact.py) (coding/arithmetic.py: ARITHMETIC), timed
end to end, with what each costs in file size.

python -m benchmarks.coding_arithmetic [--steps 16] [--repeats 2] [--threads 1]
    [--photo ../shared/data/natural/CSet14/baboon.png] [--crop 256] [--digits 32]
    [--out benchmarks/results/coding_arithmetic.md]

Two cases, each with its shipped model: a photo crop (the natural model; tiled coding) and an
archive of MNIST validation digits (the MNIST model). For every case, every arithmetic
compresses and then decompresses the same images, alternating arithmetic within each repeat so
that a shared machine's load falls on all alike; every decode is checked bit-exact, and the
file sizes are reported (the float32 files differ only by the network's last-bit differences;
bfloat16 moves the network's output by about 2^-8 of itself; portable rounds activations
to 2^-16). Timings are wall-clock seconds,
the minimum over repeats, model loading excluded, with the share spent in the network calls
(vdmcodec.bench.network_timer); a time ratio float32 NCHW / other above 1 means the other is
faster. Writes OUT (markdown)
and OUT with suffix .json (the raw numbers).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.ablation import start
from benchmarks.mnist import resolve_data
from vdmcodec.bench import _same, network_timer
from vdmcodec.coding.arithmetic import ARITHMETIC
from vdmcodec.coding.codec import load_codec
from vdmcodec.data import load_array
from vdmcodec.hardware import native_bf16

ROOT = Path(__file__).resolve().parent.parent
MNIST = Path("../shared/data/mnist/mnist9k-images-idx3-ubyte.gz")
PHOTO = Path("../shared/data/natural/CSet14/baboon.png")


def photo_crop(path: Path, side: int) -> np.ndarray:
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"))
    h, w = arr.shape[:2]
    top, left = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return np.ascontiguousarray(arr[top : top + side, left : left + side])


def time_case(model: str, images: list[np.ndarray], steps: int, repeats: int) -> dict:
    # bfloat16 only where native (hardware.py): emulated it is ~100x slower and not a candidate
    measured = [a for a in ARITHMETIC if ARITHMETIC[a].autocast is None or native_bf16()]
    codecs = {a: load_codec(model, steps=steps, arithmetic=a) for a in measured}
    keys = ("compress_s", "decompress_s", "compress_network_s", "decompress_network_s")
    row = {a: {**{k: [] for k in keys}, "bytes": None} for a in measured}
    for _ in range(repeats):
        for a, codec in codecs.items():
            with network_timer(codec, steps, codec.grid_bits_for(images)) as net_c:
                t0 = time.perf_counter()
                blob = codec.compress(images, force_model=True)
                t1 = time.perf_counter()
            with network_timer(codec, steps, codec.grid_bits_for(images)) as net_d:
                out = codec.decompress(blob)
                t2 = time.perf_counter()
            if not _same(out, images):
                raise SystemExit(f"{model}, {a}: the round trip is not exact")
            for k, v in zip(keys, (t1 - t0, t2 - t1, net_c.seconds, net_d.seconds)):
                row[a][k].append(v)
            row[a]["bytes"] = len(blob)
    return row


def report(cases: dict, args, meta: dict) -> list[str]:
    m = meta["machine"]
    lines = ["# Coding arithmetic: float32 NCHW vs channels_last (NHWC) vs bfloat16 NHWC vs portable", "",
             f"Command: `{meta['command']}`", "",
             f"Date: {meta['started']}; commit {meta['git']}; machine: {m['cpu']} ({m['cpu_count']} logical CPUs), "
             f"{args.threads} torch thread(s), torch {m['torch']}; 1-minute load average at the start "
             f"{m['load_average_1min']:.2f} (shared machine: the ratio, measured side by side, is the result).", "",
             f"T = {args.steps}; wall-clock seconds, the minimum of {args.repeats} repeats, arithmetics alternated "
             "within each repeat; every decode verified bit-exact.", "",
             "| case | subpixels | arithmetic | compress s | of which network | decompress s | of which network | "
             "file bytes | bpd |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for name, c in cases.items():
        for a, r in c["row"].items():
            lines.append(f"| {name} | {c['subpixels']:,} | {a} | {min(r['compress_s']):.2f} | "
                         f"{min(r['compress_network_s']):.2f} | {min(r['decompress_s']):.2f} | "
                         f"{min(r['decompress_network_s']):.2f} | {r['bytes']:,} | "
                         f"{8 * r['bytes'] / c['subpixels']:.4f} |")
    lines += ["", "Time ratios float32 (NCHW) / arithmetic of the minima (above 1: faster than float32 NCHW), "
              "and file size relative to float32 NCHW's:", "",
              "| case | arithmetic | compress | decompress | network in compress | network in decompress | file size |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for name, c in cases.items():
        a = c["row"]["float32"]
        for other, b in c["row"].items():
            if other == "float32":
                continue
            lines.append(f"| {name} | {other} | " + " | ".join(f"{min(a[k]) / min(b[k]):.2f}" for k in (
                "compress_s", "decompress_s", "compress_network_s", "decompress_network_s"))
                + f" | {b['bytes'] / a['bytes'] - 1:+.2%} |")
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.coding_arithmetic", description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=16, help="T (the per-step cost is what differs; T scales both)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--photo", type=Path, default=PHOTO)
    ap.add_argument("--crop", type=int, default=256, help="side of the centre crop of the photo")
    ap.add_argument("--digits", type=int, default=32, help="MNIST validation digits in the archive (from 8000)")
    ap.add_argument("--mnist", type=Path, default=MNIST)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "coding_arithmetic.md")
    args = ap.parse_args(argv)
    meta = start("benchmarks.coding_arithmetic", argv, args.threads)
    photo = photo_crop(args.photo, args.crop)
    digits = list(load_array(resolve_data(args.mnist), 8000, 8000 + args.digits))
    cases = {}
    for name, model, images in ((f"natural, {args.photo.name} {photo.shape[0]}x{photo.shape[1]} crop", "natural", [photo]),
                                (f"mnist, {len(digits)} digits (one archive)", "mnist", digits)):
        print(f"{name} ...", flush=True)
        cases[name] = {"model": model, "subpixels": int(sum(im.size for im in images)),
                       "row": time_case(model, images, args.steps, args.repeats)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(report(cases, args, meta)) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "args": {k: str(v) for k, v in vars(args).items()},
                                                         "cases": cases}, indent=1) + "\n")
    print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
