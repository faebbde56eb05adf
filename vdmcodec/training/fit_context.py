"""Fit the container's ``ctx`` table (coding/context_model.py) on the MNIST training split and
report its rate on the validation split beside WebP lossless:

    python -m vdmcodec.training.fit_context --data ../shared/data/mnist/mnist9k-images-idx3-ubyte.gz \
        --train 0:8000 --val 8000:9000 [--write]

``--write`` replaces the shipped table (vdmcodec/coding/tables/context_mnist.npz). The table
is part of the format: files written with one table decode only with the same counts, so a
refit needs a new method code or format version, never an overwrite of a released table.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ..data import load_array


def _range(text: str) -> tuple[int, int]:
    a, b = text.split(":")
    return int(a), int(b)


def main(argv=None) -> int:
    from ..coding import classical, context_model as cm

    ap = argparse.ArgumentParser(prog="python -m vdmcodec.training.fit_context", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="MNIST IDX images")
    ap.add_argument("--train", type=_range, default=(0, 8000), help="training images START:STOP")
    ap.add_argument("--val", type=_range, default=(8000, 9000), help="validation images START:STOP")
    ap.add_argument("--write", action="store_true", help="replace the shipped table")
    args = ap.parse_args(argv)
    train = load_array(args.data, *args.train)[..., 0]
    val = load_array(args.data, *args.val)[..., 0]
    model = cm.ContextModel(cm.fit_counts(train))
    ideal = np.array([model.bits(x) for x in val]) / val[0].size
    streams = [model.encode(x) for x in val[:100]]
    webp = [len(classical.encode(x[..., None], "webp")) for x in val[:100]]
    report = {"train": list(args.train), "val": list(args.val), "contexts": cm.CONTEXTS,
              "nonzero_counts": int((model.counts > 0).sum()), "val_ideal_bpd": round(float(ideal.mean()), 4),
              "val_ideal_bpd_max": round(float(ideal.max()), 4),
              "first_100_stream_bpd": round(8 * sum(map(len, streams)) / (100 * val[0].size), 4),
              "first_100_webp_bpd": round(8 * sum(webp) / (100 * val[0].size), 4)}
    print(json.dumps(report))
    if args.write:
        out = Path(cm.__file__).parent / "tables" / cm.TABLE
        out.parent.mkdir(exist_ok=True)
        np.savez_compressed(out, counts=model.counts.astype(np.uint32))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
