"""Record in a model card how fast it codes, from a benchmark run on its weights: the photos
benchmark (a model-coded photo's seconds each way) or the digits benchmark (images per
second each way), with the CPU, threads, T and arithmetic they ran with.

    python -m benchmarks.photos --threads 2
    python -m vdmcodec.training.fit_speed --model models/natural --results benchmarks/results/photos.json --write
    python -m benchmarks.mnist --threads 1 --limit 1000 --sweep ''
    python -m vdmcodec.training.fit_speed --model models/mnist --results benchmarks/results/digits.json --write

The card's ``coding_speed`` holds one entry per arithmetic (a CPU with native bfloat16 runs
another than one without); `vdmcodec models` shows them. `ship` keeps them only for the weights
they were measured on.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

from ..errors import VdmcodecError
from ..zoo import CARD, atomic_write_bytes, load_model

REFERENCE_SUBPIXELS = 768 * 512 * 3  # the photo size the speed goal names


def _load(machine: dict) -> float | None:
    """The run's 1-minute load average, rounded, or None where it did not record one."""
    v = machine.get("load_average_1min")
    return round(v, 2) if isinstance(v, (int, float)) else None


def photo_speed(data: dict) -> tuple[str, str, dict]:
    """(weights sha256, arithmetic, entry) from a photos benchmark result (the .json that
    benchmarks.photos writes beside its report): the seconds each way of the model-coded photo
    closest in size to 768x512, and their median over all model-coded photos scaled to
    768x512."""
    model, rows = data["model"], [r for r in data["rows"] if r.get("model_coded")]
    if not rows:
        raise ValueError("no photo in these results has a model-coded result (run without --no-model-coded)")
    big = min(rows, key=lambda r: abs(r["subpixels"] - REFERENCE_SUBPIXELS))
    scale = [REFERENCE_SUBPIXELS / r["subpixels"] for r in rows]
    entry = {
        "photo": f"{big['set']}/{big['image']}", "megapixels": round(big["subpixels"] / 3e6, 3),
        "steps": big["model_coded"]["steps"],
        "compress_s": round(big["model_coded"]["encode_s"], 1), "decompress_s": round(big["model_coded"]["decode_s"], 1),
        "median_768x512_s": [round(statistics.median(r["model_coded"][k] * s for r, s in zip(rows, scale)), 1)
                             for k in ("encode_s", "decode_s")],
        "photos": len(rows),
        "threads": data["machine"]["torch_threads"], "cpu": data["machine"]["cpu"],
        "load_average_1min": _load(data["machine"]),
    }
    return model["sha256"], model["arithmetic"], entry


def digit_speed(data: dict) -> tuple[str, str, dict]:
    """(weights sha256, arithmetic, entry) from a digits benchmark result (benchmarks.mnist):
    the model-coded archive's images per second each way."""
    speed, comparison, machine = data["speed"], data["comparison"], data["meta"]["machine"]
    settings = next(r["settings"] for r in comparison["rows"] if r["method"].endswith("(model-coded)"))
    entry = {
        "images": speed["images"], "steps": speed["steps"],
        "compress_images_per_s": round(speed["compress_img_s"], 2),
        "decompress_images_per_s": round(speed["images"] / speed["decompress_s"], 2),
        "threads": machine["torch_threads"], "cpu": machine["cpu"],
        "load_average_1min": _load(machine),
    }
    return comparison["model_sha256"], settings.rsplit(", ", 1)[-1], entry


def speed_entry(data: dict) -> tuple[str, str, dict]:
    """``photo_speed`` or ``digit_speed``, by the result's layout."""
    if "rows" in data and "model" in data:
        return photo_speed(data)
    if "speed" in data and "comparison" in data:
        return digit_speed(data)
    raise ValueError("not a result of benchmarks.photos or benchmarks.mnist")


def describe(speed: dict | None) -> str:
    """A card's ``coding_speed`` in a few words per arithmetic ("" without one)."""
    out = []
    for arithmetic, e in sorted((speed if isinstance(speed, dict) else {}).items()):
        if not isinstance(e, dict):
            continue
        if "compress_s" in e:
            out.append(f"{e.get('megapixels')} MP ({e.get('photo')}) T={e.get('steps')} in {e['compress_s']} s, "
                       f"out {e.get('decompress_s')} s ({arithmetic}, {e.get('threads')} threads)")
        elif "compress_images_per_s" in e:
            out.append(f"T={e.get('steps')} in {e['compress_images_per_s']}, out {e.get('decompress_images_per_s')} "
                       f"images/s ({arithmetic}, {e.get('threads')} thread{'s' if e.get('threads') != 1 else ''})")
    return "; ".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Record in a model card the coding speed a benchmark measured.")
    ap.add_argument("--model", required=True, help="shipped name or model directory")
    ap.add_argument("--results", type=Path, required=True,
                    help="benchmarks/results/photos.json (or another photos run) or digits.json")
    ap.add_argument("--write", action="store_true", help="store the entry in the model card")
    args = ap.parse_args(argv)
    try:
        _, info = load_model(args.model)
        measured, arithmetic, entry = speed_entry(json.loads(args.results.read_text()))
        if not measured or len(measured) < 16 or not info["sha256"].startswith(measured[:16]):
            raise ValueError(f"{args.results} measured weights {str(measured)[:16]}..., the model has {info['sha256'][:16]}...")
    except (VdmcodecError, ValueError, OSError, KeyError, StopIteration, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    entry.update({"weights_sha256": info["sha256"][:16], "results": str(args.results),
                  "fitted": datetime.now(timezone.utc).strftime("%Y-%m-%d")})
    print(json.dumps({arithmetic: entry}))
    if args.write:
        path = Path(info["dir"]) / CARD
        meta = json.loads(path.read_text())
        meta["card"].setdefault("coding_speed", {})[arithmetic] = entry
        atomic_write_bytes(path, (json.dumps(meta, indent=2) + "\n").encode())
        print(f"wrote coding_speed[{arithmetic!r}] to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
