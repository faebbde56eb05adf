"""Training photos without JPEG history: every training photo downsampled by 2 and by 3
(Lanczos, rounded to 8 bits), plus each downsampled photo mirrored left-right, written as
PNG to a folder outside the repository.

The training photos in ../shared/data/natural passed through JPEG; a model trained on them
learns the 8x8 block statistics. Downsampling by 2 leaves a 4-pixel residue of the block
grid, by 3 no phase-locked one; Lanczos mixes pixels across block edges. The question
(issue "photos", lever "training data without JPEG history"): does fine-tuning on such
crops, mixed with the originals, lower the bound on the validation photos that have no
JPEG history?

    python -m experiments.jpeg_free_data --out ../derived/natural_jpeg_free

then train with --data on the original folders and on OUT.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

SOURCES = ("CBSD68", "CUrban100")


def downsampled(img: Image.Image, factor: int) -> Image.Image:
    w, h = img.size
    return img.resize((w // factor, h // factor), Image.Resampling.LANCZOS)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=Path("../shared/data/natural"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--factors", type=int, nargs="+", default=[2, 3])
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    n = 0
    for src in SOURCES:
        for path in sorted((args.root / src).glob("*.png")):
            img = Image.open(path).convert("RGB")
            for f in args.factors:
                small = downsampled(img, f)
                small.save(args.out / f"{src}_{path.stem}_d{f}.png")
                Image.fromarray(np.ascontiguousarray(np.asarray(small)[:, ::-1])).save(
                    args.out / f"{src}_{path.stem}_d{f}_m.png")
                n += 2
    print(f"{n} images in {args.out}")


if __name__ == "__main__":
    main()
