"""Paired comparison of photo models on what the codec codes: whole photographs.

python -m experiments.whole_photos --models natural,runs/natural_cool [--draws 32] [--repeats 1] [--threads 2] [--arithmetic A]
    [--out experiments/results/whole_photos.md] [IMAGE ...]

The continuous-time negative ELBO (reconstruction + prior + diffusion term) of each whole
validation photo, one network pass over the photo per t draw, in one network arithmetic for all
(--arithmetic, default the first model's card's: autocast dtype and memory format). Every model
sees the same t draws and noise for a photo (seeded by the photo's index), so the
differences are far more certain than the values. Default photos: the RGB photos of CSet14
and CSet5 that are not palette images (<= 256 colours: WebP's palette wins those by far).
The validation crops the trainer reports are 64x64: this measures the models at the size
the codec uses them.

Each photo's figure is itself noisy, because one photo gets one t per network pass:
--repeats K estimates it K times with other seeds and reports the mean and the standard
deviation of one estimate (on butterfly about 4% with 8 stratified draws and 0.4% with
32: results/whole_photos_draws8.md, whole_photos_draws32.md). Paired differences between
models are far more certain; comparing a figure with other codecs' sizes needs the 32
draws of the default (a table of 8-draw figures, withdrawn on 2026-12-05, had put clean
photos below JPEG XL that are not: benchmarks/results/natural_elbo.md at commit 9e8f8bb).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import shlex
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.mnist import machine, resolve_data
from experiments.norm_windows import in_codec_arithmetic
from vdmcodec.diffusion import scale_pixels
from vdmcodec.zoo import file_sha256, load_model, resolve

DATA = Path("../shared/data/natural")
DEFAULT_PHOTOS = ([DATA / "CSet14" / f"{n}.png" for n in "barbara coastguard comic flowers foreman monarch pepper ppt3 zebra".split()]
                  + [DATA / "CSet5" / f"{n}.png" for n in "baby bird butterfly woman".split()])


@torch.no_grad()
def photo_bits(model, pixels: np.ndarray, draws: int, seed: int) -> float:
    """The continuous-time -ELBO of one photo (uint8 [H, W, C]) in bits."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None]
    xd = scale_pixels(x)
    nats = float(model.loss_recon(x, torch.randn(x.shape, generator=gen)).sum() + model.loss_prior(x).sum())
    ts = (torch.arange(draws) + torch.rand(draws, generator=gen)) / draws
    for k in range(draws):
        eps = torch.randn(x.shape, generator=gen)
        gamma, dgamma = model.gamma.gamma_and_derivative(ts[k:k + 1])
        e = model.eps_and_v(model.q_sample(xd, gamma, eps), gamma.expand(1))[0]
        nats += float(0.5 * dgamma * (eps - e).float().square().sum()) / draws
    return nats / math.log(2)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("images", nargs="*", type=Path)
    ap.add_argument("--models", required=True, help="shipped names or model directories, comma-separated")
    ap.add_argument("--draws", type=int, default=32, help="stratified t draws per photo")
    ap.add_argument("--repeats", type=int, default=1, help="estimates per photo, each with its own seeds")
    ap.add_argument("--arithmetic", default=None, help="network arithmetic (default: the first model's card's)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("experiments/results/whole_photos.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    paths = args.images or DEFAULT_PHOTOS
    photos = [np.array(Image.open(resolve_data(p)).convert("RGB")) for p in paths]
    names = [m for m in args.models.split(",") if m]
    arith = args.arithmetic
    rows = []
    for name in names:
        model, info = load_model(name)
        arith = in_codec_arithmetic(model, info, arith)  # the first model's, then the same for all
        # estimate r of photo k is seeded k + r * photos (r = 0: the seeds of a single estimate)
        runs = np.array([[photo_bits(model, px, args.draws, k + r * len(photos)) for k, px in enumerate(photos)]
                         for r in range(args.repeats)])
        bits = runs.mean(0)
        sizes = np.array([px.size for px in photos])
        card = info.get("card", {})
        rows.append({"model": name, "sha256": file_sha256(resolve(name) / "model.safetensors")[:16],
                     "steps": card.get("steps"), "bpd": (bits / sizes).tolist(),
                     "bpd_sd": (runs.std(0, ddof=1) / sizes).tolist() if args.repeats > 1 else None,
                     "pooled": float(bits.sum() / sizes.sum())})
        print(name, f"pooled {rows[-1]['pooled']:.4f}", flush=True)
    result = {"command": "python -m experiments.whole_photos " + shlex.join(sys.argv[1:] if argv is None else argv),
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": machine(), "arithmetic": arith, "draws": args.draws, "repeats": args.repeats,
              "photos": [p.name for p in paths], "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    m = result["machine"]
    base = rows[0]
    lines = ["# Photo models on whole photographs: continuous-time -ELBO, paired", "",
             f"Command: `{result['command']}`", "",
             f"Date: {result['date']}; machine: {m['cpu']} ({m['cpu_count']} logical CPUs), {m['torch_threads']} torch thread(s), "
             f"torch {m['torch']}.", "",
             f"Network arithmetic {arith} for every model; {args.draws} stratified t draws per photo, the same t and noise "
             "for every model; bits per subpixel (reconstruction + prior + diffusion). Pooled: all bits over all "
             f"subpixels; in brackets the change against `{base['model']}`"
             + (f"; each figure the mean of {args.repeats} estimates with other seeds, +- the standard deviation of one "
                "estimate" if args.repeats > 1 else "; one estimate per photo (--repeats measures its spread)")
             + ". The paired differences between models are far more certain than the figures.", "",
             "| model | weights sha256 | steps | pooled | " + " | ".join(p.stem for p in paths) + " |",
             "|---|---|---:|---:|" + "---:|" * len(paths)]
    for r in rows:
        sd = r["bpd_sd"] or [None] * len(paths)
        cells = [(f"{v:.4f}" if r is base else f"{v:.4f} ({v / b - 1:+.2%})") + (f" ± {e:.4f}" if e is not None else "")
                 for v, b, e in zip(r["bpd"], base["bpd"], sd)]
        pooled = f"{r['pooled']:.4f}" if r is base else f"{r['pooled']:.4f} ({r['pooled'] / base['pooled'] - 1:+.2%})"
        lines.append(f"| `{r['model']}` | {r['sha256']}... | {r['steps']} | **{pooled}** | " + " | ".join(cells) + " |")
    args.out.write_text("\n".join(lines) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
