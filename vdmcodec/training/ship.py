"""Copy a training run's EMA weights and card into a shipped model directory.

python -m vdmcodec.training.ship --run runs/mnist --out models/mnist [--checkpoint]
The card gains the image size, the codec's defaults for this model (--coding-steps T,
--coding-arithmetic A: what `load_codec` uses when the caller names none) and, with
--checkpoint, the raw (non-EMA) weights of the run's checkpoint are written beside the EMA
weights (raw.safetensors, no optimiser moments: warmstart.py), so that a fresh machine can
continue the run from the repository (vdmcodec train --init-from DIR --init-weights raw);
--checkpoint-from RUN2 ships RUN2's raw weights instead (a decayed branch shipped from RUN,
the constant-rate RUN2 to continue from: lr_schedule.py), and the card's "checkpoint" key
says which step they are at. Ship rarely: every shipped file stays in every clone.
Re-shipping over an earlier ship keeps what the run
cannot know: its image size, coding defaults and the evaluations of earlier runs (a run
resumed on a fresh machine logs only its own). It keeps the card's fitted level times
(coding_times, coding_times_more), channel correlations (coding_corr), preflight
calibration (coding_preflight) and measured speed (coding_speed) only when the weights are
the ones they were fitted to: after new weights, run fit_levels, fit_preflight and fit_speed
again.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from ..zoo import CARD, WEIGHTS, atomic_write_bytes, file_sha256
from .warmstart import RAW_DTYPES, RAW_WEIGHTS, raw_weights_from_checkpoint, read_raw_weights


KEPT = ("image_size", "coding_steps", "coding_arithmetic", "coding_efforts")  # card keys a re-ship carries over


def ship(run: Path, out: Path, image_size: list[int] | None, checkpoint: bool, notes: str | None,
         coding_steps: int | None = None, coding_arithmetic: str | None = None, name: str | None = None,
         checkpoint_from: Path | None = None, raw_dtype: str = "float32") -> dict:
    run, out = Path(run), Path(out)
    meta = json.loads((run / CARD).read_text())
    card = meta["card"]
    state_run = Path(checkpoint_from) if checkpoint_from is not None else (run if checkpoint else None)
    earlier = json.loads((out / CARD).read_text()).get("card", {}) if (out / CARD).exists() else {}
    if state_run is None and (out / RAW_WEIGHTS).exists() and "checkpoint" in earlier:
        card["checkpoint"] = earlier["checkpoint"]  # the raw weights shipped earlier stay, and their record
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
    preflight_for = (earlier.get("coding_preflight") or {}).get("weights_sha256")
    if preflight_for and weights.startswith(preflight_for):
        card["coding_preflight"] = earlier["coding_preflight"]
    speed = {a: e for a, e in (earlier.get("coding_speed") or {}).items()
             if isinstance(e, dict) and weights.startswith(e.get("weights_sha256") or "-")}
    if speed:
        card["coding_speed"] = speed
    if image_size:
        card["image_size"] = image_size
    if coding_steps is not None:
        if coding_steps < 1:
            raise ValueError(f"coding_steps must be >= 1, got {coding_steps}")
        card["coding_steps"] = coding_steps
    if coding_arithmetic is not None:
        from ..coding.arithmetic import ARITHMETIC

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
        raw_weights_from_checkpoint(state_run / "checkpoint.pt", out, raw_dtype)
        _, raw = read_raw_weights(out / RAW_WEIGHTS)
        whose = "another run of the same model (constant learning rate)" if checkpoint_from is not None else "this run"
        card["checkpoint"] = {"raw_weights": RAW_WEIGHTS, "run": f"{whose}, to continue with vdmcodec train "
                              f"--init-from DIR --init-weights raw", "steps": raw["step"],
                              "cpu_hours": round(raw["cpu_hours"], 3), "dtype": raw["dtype"]}
        atomic_write_bytes(out / CARD, (json.dumps({"config": meta["config"], "card": card}, indent=2) + "\n").encode())
    return card


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--image-size", type=int, nargs=2, default=None)
    ap.add_argument("--checkpoint", action="store_true", help="ship the run's raw weights (raw.safetensors) too")
    ap.add_argument("--checkpoint-from", type=Path, default=None,
                    help="ship this other run's raw weights instead (the run to continue from)")
    ap.add_argument("--raw-dtype", default="float32", choices=sorted(RAW_DTYPES), help="the raw weights' dtype")
    ap.add_argument("--notes", default=None)
    ap.add_argument("--name", default=None, help="the model name in the card (default: the run's)")
    ap.add_argument("--coding-steps", type=int, default=None, help="the codec's default T for this model")
    ap.add_argument("--coding-arithmetic", default=None, help="the codec's default network arithmetic for this model")
    args = ap.parse_args(argv)
    card = ship(args.run, args.out, args.image_size, args.checkpoint, args.notes, args.coding_steps, args.coding_arithmetic,
                args.name, args.checkpoint_from, args.raw_dtype)
    print(json.dumps({k: card.get(k) for k in ("name", "steps", "cpu_hours", "val_bpd_continuous")}))


if __name__ == "__main__":
    main()
