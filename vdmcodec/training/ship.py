"""Copy a training run's EMA weights and card into a shipped model directory.

python -m vdmcodec.training.ship --run runs/mnist --out models/mnist [--checkpoint]
The card gains the image size, the codec's defaults for this model (--coding-steps T,
--coding-arithmetic A: what `load_codec` uses when the caller names none) and, with
--checkpoint, the full training state is copied too (checkpoint.pt), so that a fresh machine
can resume the run from the repository; --checkpoint-from RUN2 ships RUN2's training state
instead (a decayed branch shipped from RUN, the constant-rate RUN2 to continue from:
lr_schedule.py), and the card says which step that state is at. Re-shipping over an earlier ship keeps what the run
cannot know: its image size, coding defaults and the evaluations of earlier sessions (a run
resumed on a fresh machine logs only its own). It keeps the card's fitted level times
(coding_times, coding_times_more) and channel correlations (coding_corr) only when the weights are the ones they were fitted to: after new weights, run
fit_levels again.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from ..zoo import CARD, WEIGHTS, atomic_write_bytes, file_sha256


KEPT = ("image_size", "coding_steps", "coding_arithmetic")  # card keys a re-ship carries over


def ship(run: Path, out: Path, image_size: list[int] | None, checkpoint: bool, notes: str | None,
         coding_steps: int | None = None, coding_arithmetic: str | None = None, name: str | None = None,
         checkpoint_from: Path | None = None) -> dict:
    run, out = Path(run), Path(out)
    meta = json.loads((run / CARD).read_text())
    card = meta["card"]
    state_run = Path(checkpoint_from) if checkpoint_from is not None else (run if checkpoint else None)
    if checkpoint_from is not None:
        other = json.loads((state_run / CARD).read_text())["card"]
        card["checkpoint"] = {"run": "another run of the same model (constant learning rate), to resume from",
                              "steps": other.get("steps"), "cpu_hours": other.get("cpu_hours")}
    earlier = json.loads((out / CARD).read_text()).get("card", {}) if (out / CARD).exists() else {}
    card.update({k: earlier[k] for k in KEPT if k in earlier and k not in card})
    fitted_for = earlier.get("coding_times_fit", {}).get("weights_sha256")
    weights = file_sha256(run / WEIGHTS)
    if "coding_times" in earlier and fitted_for and weights.startswith(fitted_for):
        card.update({k: earlier[k] for k in ("coding_times", "coding_times_fit")})
    more = {t: e for t, e in (earlier.get("coding_times_more") or {}).items()
            if weights.startswith(e.get("fit", {}).get("weights_sha256") or "-")}
    if more:
        card["coding_times_more"] = more
    corr_for = (earlier.get("coding_corr") or {}).get("fit", {}).get("weights_sha256")
    if corr_for and weights.startswith(corr_for):
        card["coding_corr"] = earlier["coding_corr"]
    if image_size:
        card["image_size"] = image_size
    if coding_steps is not None:
        if coding_steps < 1:
            raise ValueError(f"coding_steps must be >= 1, got {coding_steps}")
        card["coding_steps"] = coding_steps
    if coding_arithmetic is not None:
        from ..coding.chain import ARITHMETIC

        if coding_arithmetic not in ARITHMETIC:
            raise ValueError(f"coding_arithmetic must be one of {', '.join(ARITHMETIC)}, got {coding_arithmetic!r}")
        card["coding_arithmetic"] = coding_arithmetic
    if notes:
        card["notes"] = notes
    if name:  # the name files record and decoders resolve: keep it the directory's name
        card["name"] = name
    log = run / "train.log"
    evals = ([json.loads(line) for line in log.read_text().splitlines() if '"eval"' in line] if log.exists() else [])
    new = [{k: e[k] for k in ("step", "cpu_hours", "val_bpd", "val_bpd_se")} for e in evals]
    first = min((e["step"] for e in new), default=float("inf"))
    history = [e for e in earlier.get("eval_history", []) if e["step"] < first] + new
    if history:
        card["eval_history"] = history
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / WEIGHTS, (run / WEIGHTS).read_bytes())
    atomic_write_bytes(out / CARD, (json.dumps({"config": meta["config"], "card": card}, indent=2) + "\n").encode())
    if (run / "run.json").exists():
        shutil.copyfile(run / "run.json", out / "run.json")
    if state_run is not None:
        atomic_write_bytes(out / "checkpoint.pt", (state_run / "checkpoint.pt").read_bytes())
    return card


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--image-size", type=int, nargs=2, default=None)
    ap.add_argument("--checkpoint", action="store_true", help="ship the run's training state (checkpoint.pt) too")
    ap.add_argument("--checkpoint-from", type=Path, default=None,
                    help="ship this other run's training state instead (the run to continue from)")
    ap.add_argument("--notes", default=None)
    ap.add_argument("--name", default=None, help="the model name in the card (default: the run's)")
    ap.add_argument("--coding-steps", type=int, default=None, help="the codec's default T for this model")
    ap.add_argument("--coding-arithmetic", default=None, help="the codec's default network arithmetic for this model")
    args = ap.parse_args(argv)
    card = ship(args.run, args.out, args.image_size, args.checkpoint, args.notes, args.coding_steps, args.coding_arithmetic,
                args.name, args.checkpoint_from)
    print(json.dumps({k: card.get(k) for k in ("name", "steps", "cpu_hours", "val_bpd_continuous")}))


if __name__ == "__main__":
    main()
