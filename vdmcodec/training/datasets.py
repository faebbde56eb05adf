"""Training and validation data from one or several paths.

A ``DataSpec`` is a path (dataset file, image folder or image file) with an optional
START:STOP slice. A run trains on the union of its training specs and validates on the
union of its validation specs, and refuses to start when the two share an image:
dataset files are compared by file and index range, image files by file and by their
pixels (so that a copy of a validation photo in a training folder is caught too).

Images of different sizes train on random crops (``PatchSampler``, crops drawn in
proportion to image area); they validate on a fixed set of crops (seeded, so that every
evaluation of a run sees the same pixels), or whole when they share one size.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..data import PatchSampler, _is_dataset_file, iter_inputs, load_array, load_items
from ..errors import DataError

VAL_CROP_SEED = 12345


@dataclass(frozen=True)
class DataSpec:
    path: Path
    start: int = 0
    stop: int | None = None

    def range_text(self) -> str:
        """'0:8000', or 'all' for the whole path."""
        if self.start == 0 and self.stop is None:
            return "all"
        return f"{self.start}:{'' if self.stop is None else self.stop}"

    def describe(self) -> str:
        return f"{self.path.name} {self.range_text()}"


def parse_range(text: str | None) -> tuple[int, int | None]:
    """'0:8000' -> (0, 8000); None -> (0, None)."""
    if not text:
        return 0, None
    try:
        a, b = text.split(":")
        return int(a or 0), (int(b) if b else None)
    except ValueError:
        raise DataError(f"bad range {text!r}; expected START:STOP, e.g. 0:8000") from None


def as_specs(specs: DataSpec | Sequence[DataSpec] | None) -> list[DataSpec]:
    if specs is None:
        return []
    return [specs] if isinstance(specs, DataSpec) else list(specs)


def describe(specs: Sequence[DataSpec]) -> str:
    return " + ".join(s.describe() for s in specs)


def _load_one(spec: DataSpec, patch: int | None):
    """An equal-size array for dataset files and uniform folders, else a list of images."""
    try:
        return load_array(spec.path, spec.start, spec.stop)
    except DataError as e:
        if "differ in size" not in str(e):
            raise
    if patch is None:
        raise DataError(f"{spec.path}: images differ in size; pass a patch size (train.patch_size)")
    items = load_items([spec.path])[spec.start : spec.stop]
    if not items:
        raise DataError(f"{spec.path}: selection [{spec.start}:{spec.stop}] holds no images")
    return [it.pixels for it in items]


def load_images(specs: Sequence[DataSpec], patch: int | None):
    """The union of the specs: one uint8 array [N, H, W, C] when every image has the same
    shape, else a list of [H, W, C] arrays (which then needs a patch size)."""
    specs = as_specs(specs)
    if not specs:
        raise DataError("no data paths given")
    parts = [_load_one(s, patch) for s in specs]
    if len(parts) == 1:
        return parts[0]
    images = [im for p in parts for im in p]
    channels = {im.shape[-1] for im in images}
    if len(channels) > 1:
        raise DataError(f"{describe(specs)}: images have {sorted(channels)} channels; a model needs one count")
    if len({im.shape for im in images}) == 1:
        return np.stack(images)
    if patch is None:
        raise DataError(f"{describe(specs)}: images differ in size; pass a patch size (train.patch_size)")
    return images


def load_validation(specs: Sequence[DataSpec], patch: int | None, count: int, channels: int) -> tuple[np.ndarray, int]:
    """Up to ``count`` validation images with the model's channel count: whole images when
    they share one shape, else ``count`` fixed crops of ``patch`` x ``patch`` (seeded by
    VAL_CROP_SEED). Returns them and how many images were left out for their channel
    count (the codec stores those classically: e.g. the grayscale photo of CSet14 for an
    RGB model)."""
    images = [im for s in as_specs(specs) for im in _load_one(s, patch)]
    kept = [im for im in images if im.shape[-1] == channels]
    if not kept:
        raise DataError(f"{describe(specs)}: no {channels}-channel images to validate on")
    if len({im.shape for im in kept}) == 1:
        return np.stack(kept[:count]), len(images) - len(kept)
    if patch is None:
        raise DataError(f"{describe(specs)}: images differ in size; pass a patch size (train.patch_size)")
    return PatchSampler(kept, patch, seed=VAL_CROP_SEED).batch(count), len(images) - len(kept)


# ---- train / validation overlap ------------------------------------------------------------
def _members(spec: DataSpec) -> tuple[list[tuple[Path, int, int | None]], list[Path]]:
    """(dataset-file ranges, image files) that a spec selects."""
    path = Path(spec.path)
    if path.is_file() and _is_dataset_file(path):
        return [(path.resolve(), spec.start, spec.stop)], []
    files = [f.resolve() for f, _ in iter_inputs([path])]
    return [], files[spec.start : spec.stop]


def _pixels_digest(path: Path) -> str:
    from ..data import read_image

    im = read_image(path)
    return hashlib.sha256(np.asarray(im.shape, dtype="<u4").tobytes() + im.tobytes()).hexdigest()


def check_disjoint(train: Sequence[DataSpec], val: Sequence[DataSpec]) -> None:
    """Refuse validation data that shares an image with the training data."""
    t_ranges, t_files = [], []
    for s in as_specs(train):
        r, f = _members(s)
        t_ranges += r
        t_files += f
    v_ranges, v_files = [], []
    for s in as_specs(val):
        r, f = _members(s)
        v_ranges += r
        v_files += f
    for path, a, b in v_ranges:
        for tpath, ta, tb in t_ranges:
            hi = min(x for x in (b, tb) if x is not None) if (b is not None or tb is not None) else None
            if path == tpath and (hi is None or max(a, ta) < hi):
                raise DataError(f"validation range {a}:{b or ''} of {path.name} overlaps the training range "
                                f"{ta}:{tb or ''}; validation images must never be trained on")
    same = set(t_files) & set(v_files)
    if same:
        raise DataError(f"{sorted(same)[0]}: is both a training and a validation image")
    if t_files and v_files:
        t_hash = {_pixels_digest(f): f for f in t_files}
        for f in v_files:
            h = _pixels_digest(f)
            if h in t_hash:
                raise DataError(f"validation image {f} has the same pixels as training image {t_hash[h]}")
