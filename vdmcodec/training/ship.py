"""Copy a training run's EMA weights and card into a shipped model directory.

python -m vdmcodec.training.ship --run runs/mnist --out models/mnist [--checkpoint]
The card gains the image size and, with --checkpoint, the full training state is copied
too (checkpoint.pt), so that a fresh machine can resume the run from the repository.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from ..zoo import CARD, WEIGHTS, atomic_write_bytes


def ship(run: Path, out: Path, image_size: list[int] | None, checkpoint: bool, notes: str | None) -> dict:
    run, out = Path(run), Path(out)
    meta = json.loads((run / CARD).read_text())
    card = meta["card"]
    if image_size:
        card["image_size"] = image_size
    if notes:
        card["notes"] = notes
    log = run / "train.log"
    if log.exists():
        evals = [json.loads(line) for line in log.read_text().splitlines() if '"eval"' in line]
        card["eval_history"] = [{k: e[k] for k in ("step", "cpu_hours", "val_bpd", "val_bpd_se")} for e in evals]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / WEIGHTS, (run / WEIGHTS).read_bytes())
    atomic_write_bytes(out / CARD, (json.dumps({"config": meta["config"], "card": card}, indent=2) + "\n").encode())
    if (run / "run.json").exists():
        shutil.copyfile(run / "run.json", out / "run.json")
    if checkpoint:
        atomic_write_bytes(out / "checkpoint.pt", (run / "checkpoint.pt").read_bytes())
    return card


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--image-size", type=int, nargs=2, default=None)
    ap.add_argument("--checkpoint", action="store_true")
    ap.add_argument("--notes", default=None)
    args = ap.parse_args(argv)
    card = ship(args.run, args.out, args.image_size, args.checkpoint, args.notes)
    print(json.dumps({k: card.get(k) for k in ("name", "steps", "cpu_hours", "val_bpd_continuous")}))


if __name__ == "__main__":
    main()
