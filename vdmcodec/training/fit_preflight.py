"""Calibrate compress's preflight on the validation photos: the least ratio of the
model-coded file to the best classical one over the photos without a JPEG lattice, from a
run of the photos benchmark on the same weights, stored in the card as ``coding_preflight``
(coding/preflight.py says how compress uses it).

    python -m benchmarks.photos --threads 2
    python -m vdmcodec.training.fit_preflight --model models/natural \
        --results benchmarks/results/photos.json --write

Only validation photos go in (the benchmark's sets, CSet14 and CSet5); `ship` drops the
calibration when the weights change.
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from ..errors import VdmcodecError
from ..zoo import CARD, atomic_write_bytes, load_model


def plain_floor(rows: list[dict]) -> dict:
    """The calibration from the benchmark's rows: each row's ``prior`` (a JPEG lattice),
    ``model_coded`` and best classical (``jxl``, ``webp``) bits per subpixel."""
    ratios = []
    for r in rows:
        if r.get("prior") or not r.get("model_coded"):
            continue
        classical = min(r[k]["bpd"] for k in ("jxl", "webp") if r.get(k))
        ratios.append((r["model_coded"]["bpd"] / classical, f"{r['set']}/{r['image']}", r["model_coded"]["steps"]))
    if not ratios:
        raise ValueError("no photo without a JPEG lattice has a model-coded result in these results")
    floor, where, steps = min(ratios)
    return {"plain_floor": round(floor, 4), "least_at": where, "photos": len(ratios), "steps": steps}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Calibrate compress's preflight from a photos benchmark run.")
    ap.add_argument("--model", required=True, help="shipped name or model directory")
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results/photos.json"))
    ap.add_argument("--weights", default=None,
                    help="the weights' sha256 prefix the results were measured on, where the results file does not say")
    ap.add_argument("--write", action="store_true", help="store the calibration in the model card")
    args = ap.parse_args(argv)
    try:
        _, info = load_model(args.model)
        data = json.loads(args.results.read_text())
        measured = (data.get("model") or {}).get("sha256") or args.weights
        if not measured:
            raise ValueError(f"{args.results} does not name the weights it measured; pass --weights")
        if not info["sha256"].startswith(measured[:16]) or len(measured) < 16:
            raise ValueError(f"{args.results} measured weights {measured[:16]}..., the model has {info['sha256'][:16]}...")
        cal = plain_floor(data["rows"])
    except (VdmcodecError, ValueError, OSError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cal.update({"weights_sha256": info["sha256"][:16], "results": str(args.results),
                "fitted": datetime.now(timezone.utc).strftime("%Y-%m-%d")})
    print(json.dumps(cal))
    if args.write:
        path = Path(info["dir"]) / CARD
        meta = json.loads(path.read_text())
        meta["card"]["coding_preflight"] = cal
        atomic_write_bytes(path, (json.dumps(meta, indent=2) + "\n").encode())
        print(f"wrote coding_preflight to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
