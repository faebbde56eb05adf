"""Fit the coding chain's level times to a shipped model and store them in its card
(coding/levels.py: the times that minimise the measured T-step bound on training crops).

python -m vdmcodec.training.fit_levels --model models/natural --data DIR [--data DIR ...] [--device D]
    [--range START:STOP] [--steps T[,T...]] [--crops 16] [--size 128] [--points 257] [--write [--keep-times]]

Without --steps it fits the card's coding T (``coding_times``); with another T it stores
those times beside them (``coding_times_more``), for ``compress --steps T``. Several T
(``--steps 32,48``) share one measurement: the network passes are the cost, not the fit. Run it after
``ship`` of new weights (a re-ship keeps the card's times only for the weights
they were fitted to), on training data only. Prints the T-step diffusion term (bits per dimension) at
uniform and at fitted times, and the continuous-time term, on the crops it measured.

For three-channel models the same pass measures the network error's correlation between
colour channels at each candidate time; --write stores it too (``coding_corr``, levels.py),
which the chain then uses for every T. --keep-times writes only that table and leaves the
card's times alone (files already coded at them keep decoding).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from ..coding.arithmetic import apply_arithmetic
from ..coding.codec import coding_defaults
from ..coding.levels import corr_table, fit, measure
from ..data import PatchSampler
from ..devices import HELP, parse_device
from ..errors import ModelError, VdmcodecError
from ..zoo import CARD, atomic_write_bytes, load_model
from .datasets import DataSpec, load_images, parse_range


def training_crops(paths: list[Path], count: int, size: int, channels: int, seed: int,
                   span: tuple[int, int | None] = (0, None)) -> np.ndarray:
    """``count`` random ``size`` x ``size`` crops (whole images when they are no larger) of the
    images ``span`` (start, stop) of each path."""
    images = load_images([DataSpec(Path(p), *span) for p in paths], size)
    if isinstance(images, np.ndarray) and max(images.shape[1:3]) <= size:
        sampler = PatchSampler(images, None, seed=seed)
    else:
        sampler = PatchSampler(images, size, seed=seed, multiple=32)
    crops = sampler.batch(count)
    if crops.shape[-1] != channels:
        raise ModelError(f"the data has {crops.shape[-1]} channels, the model {channels}")
    return crops


def parse_steps(text: str) -> list[int]:
    """'32,48' -> [32, 48]: distinct positive integers, in the order given."""
    try:
        out = [int(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--steps must be integers separated by commas, got {text!r}") from None
    if any(T < 1 for T in out) or len(set(out)) != len(out):
        raise ValueError(f"--steps must be distinct positive integers, got {text!r}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Fit the coding chain's level times to a model (training data only).")
    ap.add_argument("--model", required=True, help="shipped name or model directory")
    ap.add_argument("--data", action="append", required=True, type=Path, help="training images (repeatable)")
    ap.add_argument("--range", default=None, help="START:STOP: the training images of each --data (e.g. 0:8000)")
    ap.add_argument("--steps", default=None, help="T, or several comma-separated (default: the card's coding_steps)")
    ap.add_argument("--crops", type=int, default=16)
    ap.add_argument("--size", type=int, default=128, help="crop side")
    ap.add_argument("--points", type=int, default=257, help="candidate times K (uniform in t)")
    ap.add_argument("--samples", type=int, default=60_000, help="subpixels whose statistics are kept")
    ap.add_argument("--max-jump", type=int, default=48, help="longest step, in candidates")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu", help=HELP + " Default: cpu.")
    ap.add_argument("--write", action="store_true", help="store the times in the model card (coding_times)")
    ap.add_argument("--keep-times", action="store_true",
                    help="with --write: store only the channel correlations (coding_corr), not the times")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        requested = [None] if args.steps is None else parse_steps(args.steps)
        device = parse_device(args.device)
        model, info = load_model(args.model, device=device)
        arithmetic = coding_defaults(info, device=device)[1]
        steps_list = [coding_defaults(info, T)[0] for T in requested]
        apply_arithmetic(model, arithmetic)
        crops = training_crops(args.data, args.crops, args.size, model.cfg.network.image_channels, args.seed,
                               parse_range(args.range))
        from tqdm import tqdm

        with tqdm(total=args.points, unit="t", desc="levels", dynamic_ncols=True, disable=None) as bar:
            stats = measure(model, crops, args.points, args.samples, args.seed, bar.update)
        results = [fit(stats, steps, args.max_jump) for steps in steps_list]
    except (VdmcodecError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    reports = []
    for steps, result in zip(steps_list, results):
        reports.append({"steps": steps, "uniform_bpd": result["uniform_bpd"], "fitted_bpd": result["fitted_bpd"],
                        "continuous_bpd": result["continuous_bpd"], "crops": int(crops.shape[0]),
                        "size": list(crops.shape[1:3]), "points": args.points, "samples": args.samples, "seed": args.seed,
                        "arithmetic": arithmetic, "data": [Path(p).name for p in args.data], "range": args.range or "all",
                        "weights_sha256": info["sha256"][:16], "model_steps": info["card"].get("steps")})
        print(json.dumps(reports[-1]))
    if args.write:
        meta = json.loads((Path(info["dir"]) / CARD).read_text())
        card = meta["card"]
        if stats.corr is not None:
            fit_info = {k: reports[0][k] for k in ("crops", "size", "points", "seed", "arithmetic", "data", "range",
                                                   "weights_sha256", "model_steps")}
            card["coding_corr"] = {"table": corr_table(stats), "fit": fit_info}
        for steps, result, report in ([] if args.keep_times else zip(steps_list, results, reports)):
            if steps == card.get("coding_steps", steps):
                card["coding_times"] = list(result["times"])
                card["coding_times_fit"] = report
            else:  # another T than the card's default: kept beside it
                card.setdefault("coding_times_more", {})[str(steps)] = {"times": list(result["times"]), "fit": report}
        atomic_write_bytes(Path(info["dir"]) / CARD, (json.dumps(meta, indent=2) + "\n").encode())
        wrote = [] if args.keep_times else [f"the level times for T = {', '.join(map(str, steps_list))}"]
        wrote += ["the channel correlations"] if stats.corr is not None else []
        print(f"wrote {' and '.join(wrote) or 'nothing'} to {Path(info['dir']) / CARD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
