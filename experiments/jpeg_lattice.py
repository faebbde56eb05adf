"""Which photos are decoded JPEGs at their own block phase? The quantisation lattice of the
8x8 DCT coefficients of their luma.

python -m experiments.jpeg_lattice [--sets CSet14,CSet5] [--out experiments/results/jpeg_lattice.md]

A JPEG decoder's luma is the inverse DCT of integer multiples of the quantisation table's
entries q_uv, rounded; the RGB it writes rounds once more. So the orthonormal 8x8 DCT of the
luma recomputed from the RGB (JFIF weights, level-shifted by 128) on the JPEG's block grid
lies within about half a unit of the lattice q_uv Z, for every coefficient, while on a grid
shifted by (4, 4) it does not. A codec that knew each q_uv could code each such coefficient
with a prior comb instead of the smooth distribution the network predicts (the same
posterior-mean correction as the chroma-structure priors, over DCT coefficients): this
measures how much of that structure the validation photos hold, not what it would save.

Per photo and for the first AC coefficients in zigzag order: the step q in 2..64 that puts
the coefficients farthest from the origin's cell (|c| > q / 2) nearest to multiples of q,
and their mean |c / q - round(c / q)| on the aligned grid and on the (4, 4)-shifted one
(0.25 for values with no lattice; 0 for an exact one).
"""
from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.mnist import machine, resolve_data
from vdmcodec.coding.priors.jpeg_prior import block_dct, dct_matrix, luma  # noqa: F401 (dct_matrix: re-exported)

DATA = Path("../shared/data/natural")
ZIGZAG = [(0, 1), (1, 0), (2, 0), (1, 1), (0, 2), (0, 3), (1, 2), (2, 1), (3, 0)]
MIN_VALUES = 50


def lattice_residual(values: np.ndarray, q: int) -> float | None:
    """Mean |v / q - round(v / q)| over the values outside the origin's cell, None if few."""
    keep = np.abs(values) > q / 2
    if keep.sum() < MIN_VALUES:
        return None
    r = values[keep] / q
    return float(np.abs(r - np.round(r)).mean())


def analyse(pixels: np.ndarray) -> list[dict]:
    y = luma(pixels)
    aligned, shifted = block_dct(y, 0, 0), block_dct(y, 4, 4)
    out = []
    for u, v in ZIGZAG:
        scored = [(r, q) for q in range(2, 65) if (r := lattice_residual(aligned[:, u, v], q)) is not None]
        if not scored:
            out.append({"uv": [u, v], "q": None})
            continue
        r, q = min(scored)
        out.append({"uv": [u, v], "q": q, "aligned": r, "shifted": lattice_residual(shifted[:, u, v], q),
                    "outside_origin_cell": float((np.abs(aligned[:, u, v]) > q / 2).mean())})
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", default="CSet14,CSet5")
    ap.add_argument("--out", type=Path, default=Path("experiments/results/jpeg_lattice.md"))
    args = ap.parse_args(argv)
    rows = []
    for s in args.sets.split(","):
        for path in sorted(resolve_data(DATA / s).glob("*.png")):
            coeffs = analyse(np.asarray(Image.open(path)))
            valid = [c for c in coeffs if c["q"] is not None and c["shifted"] is not None]
            mean_a = float(np.mean([c["aligned"] for c in valid])) if valid else None
            mean_s = float(np.mean([c["shifted"] for c in valid])) if valid else None
            rows.append({"image": f"{s}/{path.name}", "coefficients": coeffs, "aligned": mean_a, "shifted": mean_s})
            print(json.dumps({k: rows[-1][k] for k in ("image", "aligned", "shifted")}), flush=True)
    result = {"command": "python -m experiments.jpeg_lattice " + shlex.join(sys.argv[1:] if argv is None else argv),
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": machine(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    lines = ["# Decoded JPEGs among the validation photos: the DCT quantisation lattice of their luma", "",
             f"Command: `{result['command']}`", "", f"Date: {result['date']}.", "",
             "Luma = JFIF weights of the RGB, minus 128; orthonormal 8x8 DCT on the photo's own block grid ('aligned') "
             "and on the grid shifted by (4, 4). Per AC coefficient (zigzag order): the step q (2..64) whose multiples "
             "the coefficients outside the origin's cell (|c| > q/2) sit nearest to, and their mean distance "
             "|c/q - round(c/q)| (0.25: no lattice; 0: exact). 'mean' averages the coefficients shown. A photo whose "
             "aligned distance is far below its shifted one is a decoded JPEG (or a frame of a DCT video codec) at its "
             "own block phase.", "",
             "| photo | mean aligned | mean shifted | " + " | ".join(f"({u},{v}) q: aligned / shifted" for u, v in ZIGZAG) + " |",
             "|---|---:|---:|" + "---:|" * len(ZIGZAG)]
    for r in rows:
        cells = [("-" if c["q"] is None or c["shifted"] is None else f"{c['q']}: {c['aligned']:.3f} / {c['shifted']:.3f}")
                 for c in r["coefficients"]]
        fmt = (lambda v: "-" if v is None else f"{v:.3f}")
        lines.append(f"| {r['image']} | {fmt(r['aligned'])} | {fmt(r['shifted'])} | " + " | ".join(cells) + " |")
    args.out.write_text("\n".join(lines) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
