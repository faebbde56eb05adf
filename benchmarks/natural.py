"""vdmcodec on full-size photographs (CSet14, CSet5) against classical lossless codecs and
the model's negative ELBO: every image its own file, per image and mean; compress and
decompress speed in seconds per megapixel; peak memory against image size.

python -m benchmarks.natural [--model natural] [--steps T] [--sets CSet14,CSet5] [--limit N] [--images a.png,...]
    [--elbo both|continuous|none] [--threads K] [--memory-sizes 384x512,768x1024,1536x2048]
    [--out benchmarks/results/natural.md]

Writes OUT (markdown), OUT's stem + ".png" (per-image bpd plot) and OUT with suffix .json
(every raw number). All rows are measured on the same images in this run; the classical
codecs are vdmcodec.bench's (Pillow, imagecodecs). A run takes hours on a CPU: each image's
row is kept in OUT with suffix .partial.json as soon as it is measured, and the same command
run again (same model weights, T, seed, ELBO mode and threads) continues from there; the
file goes when OUT is written.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.mnist import machine, resolve_data
from vdmcodec.bench import _same, image_codecs, tiled_seeds
from vdmcodec.coding import classical
from vdmcodec.coding.archive import coded_pixels
from vdmcodec.coding.codec import load_codec
from vdmcodec.coding.container import MODEL_METHODS, TILED_METHODS, unpack
from vdmcodec.coding.priors import describe
from vdmcodec.data import ImageItem, load_items, to_tensor
from vdmcodec.evaluate import evaluate
from vdmcodec.files import atomic_write_bytes
from vdmcodec.likelihood import nats_to_bpd

DATA = Path("../shared/data/natural")
# the data README's figures (bits per subpixel, each image its own file): the targets
TARGETS = {"CSet14": {"WebP lossless": 2.825, "JPEG XL": 2.633}, "CSet5": {"WebP lossless": 2.595, "JPEG XL": 2.344}}
PHOTO_MP = 768 * 512 / 1e6


# ---- one image -------------------------------------------------------------------------------
def measure_vdmcodec(codec, im: np.ndarray, T: int, decode: str = "all") -> dict:
    """The model-coded file of this image alone (``force_model``), decoded and compared
    (``decode`` "all"; "written": only where compress writes it), and
    what `vdmcodec compress` writes: the all-classical file where the preflight gives the
    model up (that compress is run, timed and checked against the prediction), else the
    smaller of the model-coded and the all-classical file (compress builds both), decoded
    and compared. Where the model-coded file's bytes go."""
    t0 = time.perf_counter()
    blob = codec.compress([im], steps=T, force_model=True)
    enc = time.perf_counter() - t0
    fallback = codec.compress([im], steps=T, classical_only=True)
    no_jxl = min(len(blob), without_jxl(fallback, im))
    header, payload = unpack(blob)
    method = header.image_methods()[0]
    t0 = time.perf_counter()
    classical_bits = 8 * sum(unpack(fallback)[0].classical_sizes)
    est, skip = codec.preflight_check(im, method, classical_bits) if method in TILED_METHODS else (None, False)
    pre_s = time.perf_counter() - t0
    if skip:
        t0 = time.perf_counter()
        written = codec.compress([im], steps=T)
        compress_s = time.perf_counter() - t0
        if written != fallback:
            raise AssertionError(f"compress did not write the classical file the preflight predicted ({len(written)} bytes)")
    else:
        written = blob if len(blob) < len(fallback) else fallback
        compress_s = enc + pre_s  # compress runs the preflight, then what force_model runs
    back, dec = None, None
    if decode == "all" or written is blob:
        t0 = time.perf_counter()
        back = codec.decompress(blob)
        dec = time.perf_counter() - t0
    t0 = time.perf_counter()
    written_back = back if written is blob else codec.decompress(written)
    written_dec = dec if written is blob else time.perf_counter() - t0
    row = {"bytes": len(written), "bpd": 8 * len(written) / im.size,
           "method": method if written is blob else unpack(fallback)[0].image_methods()[0],
           "model_bytes": len(blob), "model_bpd": 8 * len(blob) / im.size, "model_method": method,
           "no_jxl_bpd": 8 * no_jxl / im.size,
           "encode_s": enc, "decode_s": dec, "roundtrip": (back is None or _same(back, [im])) and _same(written_back, [im]),
           "model_decoded": back is not None,
           "container_bytes": len(blob) - len(payload), "preflight_bpd": est, "preflight_s": pre_s,
           "preflight_skip": skip, "compress_s": compress_s, "written_decode_s": written_dec,
           "structure": describe(header.structures[0] if header.structures else None)}
    if method in MODEL_METHODS:
        seed_bytes, seed_dims = tiled_seeds(header)
        row.update(seed_bytes=seed_bytes, seed_subpixels=seed_dims,
                   chain_bpd=8 * (len(payload) - seed_bytes - sum(header.classical_sizes) - header.init_pad)
                   / max(1, im.size - seed_dims),
                   segments=[[s.width * b.rows, s.method] for lay in header.tiled for b in lay.bands for s in b.segments])
    return row


def without_jxl(fallback: bytes, im: np.ndarray) -> int:
    """The all-classical file's size had the writer no JPEG XL (as before format 7): its
    JPEG XL stream swapped for the smaller of PNG and WebP (the header's size field may
    differ by a byte: a measurement, not a file)."""
    header = unpack(fallback)[0]
    if header.image_methods()[0] != "jxl":
        return len(fallback)
    alt = min(len(classical.encode(im, "png")), len(classical.encode(im, "webp")))
    return len(fallback) - header.classical_sizes[0] + alt


def measure_classical(codecs, im: np.ndarray) -> dict:
    out = {}
    for c in codecs:
        t0 = time.perf_counter()
        data = c.encode(im)
        t1 = time.perf_counter()
        back = c.decode(data, im.shape)
        t2 = time.perf_counter()
        out[c.name] = {"bytes": len(data), "bpd": 8 * len(data) / im.size, "encode_s": t1 - t0, "decode_s": t2 - t1,
                       "roundtrip": bool(np.array_equal(np.asarray(back).reshape(im.shape), im))}
    return out


CONTINUOUS_DRAWS = 32  # stratified t draws of the continuous-time estimate of one image


def measure_elbo(codec, im: np.ndarray, T: int, seed: int, discrete: bool = True) -> dict | None:
    """The T-step -ELBO (every step evaluated at the chain's level times, one noise draw
    each: what the chain should cost; None when not ``discrete``, which saves T network
    calls over the image) and the continuous-time one (CONTINUOUS_DRAWS draws of t) of one
    image."""
    gray = im.shape[-1] == 1 and codec.channels == 3  # coded as R = G = B ("tiled-gray"): 3x the bits per pixel
    if im.shape[-1] != codec.channels and not gray:
        return None
    x, k = (coded_pixels(im, "tiled-gray"), 3) if gray else (im, 1)
    t0 = time.perf_counter()
    d = None
    if discrete:
        d = k * evaluate(codec.model, [ImageItem(x, "x.png")], steps=T, seed=seed, progress=False,
                         times=codec.level_times(T))["bpd_discrete"]
    return {"continuous": k * continuous_bpd(codec.model, x, seed), "discrete": d, "seconds": time.perf_counter() - t0}


@torch.no_grad()
def continuous_bpd(model, im: np.ndarray, seed: int, draws: int = CONTINUOUS_DRAWS) -> float:
    """The continuous-time -ELBO of one image with t stratified over ``draws`` strata
    (t_k = (k + u) / draws): one image has a single t per network call, and independent
    draws of t leave the estimate's error at about 0.5 bpd for 32 draws on a photo."""
    x = to_tensor(im[None])
    g = torch.Generator().manual_seed(seed)
    dims = x[0].numel()
    eps_0 = torch.randn(x.shape, generator=g)
    nats = float(model.loss_recon(x, eps_0)[0] + model.loss_prior(x)[0])
    u = float(torch.rand((), generator=g))
    for k in range(draws):
        t = torch.tensor([(k + u) / draws])
        nats += float(model.loss_diff_continuous(x, t, torch.randn(x.shape, generator=g))[0]) / draws
    return nats_to_bpd(nats, dims)


# ---- memory ----------------------------------------------------------------------------------
def memory_probe(model: str, h: int, w: int, T: int) -> dict:
    """Peak RSS of compress + decompress of one h x w RGB photo-like image (a real photo
    tiled to size), against the RSS after loading the model (run in a fresh process)."""
    photo = load_items([resolve_data(DATA / "CSet5")])[0].pixels
    reps = (-(-h // photo.shape[0]), -(-w // photo.shape[1]), 1)
    im = np.ascontiguousarray(np.tile(photo, reps)[:h, :w])
    codec = load_codec(model, steps=T)
    base = peak_rss_mb()
    t0 = time.perf_counter()
    blob = codec.compress([im], steps=T, force_model=True)
    back = codec.decompress(blob)
    peak = peak_rss_mb()
    return {"height": h, "width": w, "subpixels": im.size, "steps": T, "rss_after_load_mb": base,
            "peak_rss_mb": peak, "coding_mb": peak - base, "seconds": time.perf_counter() - t0,
            "roundtrip": _same(back, [im]), "method": unpack(blob)[0].image_methods()[0]}


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: reset by exec, unlike getrusage's
    ru_maxrss, which a child inherits from the process that forked it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_memory(args) -> list[dict]:
    rows = []
    for size in [s for s in args.memory_sizes.split(",") if s]:
        h, w = (int(v) for v in size.lower().split("x"))
        cmd = [sys.executable, "-m", "benchmarks.natural", "--probe-memory", f"{h}x{w}", "--model", args.model,
               "--steps", str(args.memory_steps)] + (["--threads", str(args.threads)] if args.threads else [])
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(f"memory {size}: {rows[-1]}", file=sys.stderr, flush=True)
    return rows


# ---- report ----------------------------------------------------------------------------------
def discrete(e: dict | None) -> float | None:
    """An image's T-step -ELBO, or None (not run, or an image the model does not code)."""
    return e["discrete"] if e else None


def mean(v) -> float:
    v = [x for x in v if x is not None]
    return float(np.mean(v)) if v else float("nan")


def set_table(name: str, rows: list[dict], codec_names: list[str], T: int) -> list[str]:
    cols = ["vdmcodec", "model-coded", "preflight est.", f"-ELBO T={T}", "-ELBO cont."] + codec_names
    lines = [f"### {name} ({len(rows)} images)", "",
             "| image | size | " + " | ".join(cols) + " | written as | model-coded vs -ELBO T | compress s | decompress s "
             "| model-coded compress s | model-coded decompress s |",
             "|---|---|" + "---:|" * len(cols) + "---|---:|---:|---:|---:|---:|"]
    for r in rows:
        v, e = r["vdmcodec"], r["elbo"]
        est = v.get("preflight_bpd")
        cells = [f"{v['bpd']:.3f}", f"{v['model_bpd']:.3f}" if v["model_method"] in MODEL_METHODS else "-",
                 "-" if est is None else f"{est:.3f}",
                 f"{discrete(e):.3f}" if discrete(e) is not None else "-", f"{e['continuous']:.3f}" if e else "-"]
        cells += [f"{r['classical'][c]['bpd']:.3f}" for c in codec_names]
        gap = (f"{v['model_bpd'] / discrete(e) - 1:+.1%}" if discrete(e) is not None
               and v["model_method"] in MODEL_METHODS else "-")
        written = v["method"] + (" (preflight)" if v.get("preflight_skip") else "")
        if v["method"] in MODEL_METHODS and v.get("structure", "none") != "none":
            written += f" with a {v['structure'].split(' (')[0]} prior"
        lines.append(f"| {r['name']} | {r['shape'][1]}x{r['shape'][0]}x{r['shape'][2]} | " + " | ".join(cells)
                     + f" | {written} | {gap} | {v.get('compress_s', float('nan')):.1f} | "
                     f"{v.get('written_decode_s', float('nan')):.1f} | {v['encode_s']:.1f} | "
                     + (f"{v['decode_s']:.1f} |" if v["decode_s"] is not None else "not decoded |"))
    means = [mean(r["vdmcodec"]["bpd"] for r in rows),
             mean(r["vdmcodec"]["model_bpd"] if r["vdmcodec"]["model_method"] in MODEL_METHODS else None for r in rows),
             mean(r["elbo"]["discrete"] if r["elbo"] else None for r in rows),
             mean(r["elbo"]["continuous"] if r["elbo"] else None for r in rows)]
    means.insert(2, None)  # the preflight estimates are on crops: no mean
    means_txt = ["-" if m is None or np.isnan(m) else f"**{m:.3f}**" for m in means]
    means_txt += [f"**{mean(r['classical'][c]['bpd'] for r in rows):.3f}**" for c in codec_names]
    lines.append("| **mean** | | " + " | ".join(means_txt) + " | | | | | | |")
    pools = [pooled(rows, lambda r: r["vdmcodec"]["bpd"]), None, None, None, None]
    pools += [pooled(rows, lambda r, c=c: r["classical"][c]["bpd"]) for c in codec_names]
    lines.append("| pooled (all bytes / all subpixels) | | " + " | ".join("-" if p is None else f"{p:.3f}" for p in pools)
                 + " | | | | | | |")
    gray = [r["name"] for r in rows if r["vdmcodec"]["model_method"] not in MODEL_METHODS]
    if gray:
        lines += ["", f"The -ELBO means are over the {len(rows) - len(gray)} images the model codes; "
                      f"{', '.join(gray)} (a channel count the model cannot code) is stored classically by vdmcodec."]
    return lines


def pooled(rows: list[dict], value) -> float:
    """All bits over all subpixels of the rows where ``value(row)`` (bits per subpixel) exists."""
    pairs = [(value(r), int(np.prod(r["shape"]))) for r in rows]
    pairs = [(v, d) for v, d in pairs if v is not None]
    return sum(v * d for v, d in pairs) / sum(d for _, d in pairs) if pairs else float("nan")


def summary_table(sets: dict, codec_names: list[str], T: int, complete: bool) -> list[str]:
    """Per set, the pooled figure (all bytes / all subpixels: how the data README's targets were
    measured, so the target cells compare it) and the mean of the per-image figures."""
    lines = ["| set | figure | vdmcodec | -ELBO T=%d | -ELBO cont. | " % T + " | ".join(codec_names)
             + " | target: WebP | target: JPEG XL |",
             "|---|---|---:|---:|---:|" + "---:|" * len(codec_names) + "---:|---:|"]
    fmt = lambda x: "-" if np.isnan(x) else f"{x:.3f}"  # noqa: E731
    for name, rows in sets.items():
        t = TARGETS.get(name, {}) if complete else {}  # the targets are whole-set figures
        figures = [("pooled", "bpd", lambda f: pooled(rows, f)), ("mean per image", "bpd", lambda f: mean(f(r) for r in rows))]
        if all("no_jxl_bpd" in r["vdmcodec"] for r in rows):
            figures.append(("pooled, no JPEG XL fallback", "no_jxl_bpd", lambda f: pooled(rows, f)))
        for figure, key, agg in figures:
            v = agg(lambda r, key=key: r["vdmcodec"][key])
            e = agg(lambda r: r["elbo"]["discrete"] if r["elbo"] else None)
            ec = agg(lambda r: r["elbo"]["continuous"] if r["elbo"] else None)
            here = {c: agg(lambda r, c=c: r["classical"][c]["bpd"]) for c in codec_names}

            def beat(codec):  # beaten: below the README's figure and below the codec measured in this run
                ref = t.get(codec) if figure.startswith("pooled") else None
                if ref is None:
                    return "-"
                m = here.get(codec, ref)
                return f"{ref:.3f} ({'beaten' if v < min(ref, m) else 'not yet'}; {m:.3f} here)"
            lines.append(f"| {name} | {figure} | **{v:.3f}** | {fmt(e)} | {fmt(ec)} | "
                         + " | ".join(f"{here[c]:.3f}" for c in codec_names)
                         + f" | {beat('WebP lossless')} | {beat('JPEG XL')} |")
    return lines


def speed_lines(sets: dict, codec_names: list[str], load_s: float) -> list[str]:
    rows = [r for rs in sets.values() for r in rs]
    model_rows = [r for r in rows if r["vdmcodec"]["model_method"] in MODEL_METHODS]
    lines = ["| codec | images | megapixels | compress s/MP | decompress s/MP | compress s per 768x512 | "
             "decompress s per 768x512 |", "|---|---:|---:|---:|---:|---:|---:|"]

    def line(name, enc, dec, n, mp, dec_mp=None):
        dec_mp = mp if dec_mp is None else dec_mp
        d = (f"{dec / dec_mp:.2f}", f"{dec / dec_mp * PHOTO_MP:.1f}") if dec_mp else ("-", "-")
        lines.append(f"| {name} | {n} | {mp:.2f} | {enc / mp:.2f} | {d[0]} | {enc / mp * PHOTO_MP:.1f} | {d[1]} |")

    def megapixels(rs):
        return sum(r["shape"][0] * r["shape"][1] for r in rs) / 1e6

    if model_rows:
        decoded = [r for r in model_rows if r["vdmcodec"]["decode_s"] is not None]
        line("vdmcodec, model-coded files" + (f" (decompress: the {len(decoded)} decoded)" if len(decoded) < len(model_rows) else ""),
             sum(r["vdmcodec"]["encode_s"] for r in model_rows), sum(r["vdmcodec"]["decode_s"] for r in decoded),
             len(model_rows), megapixels(model_rows), megapixels(decoded))
        written = [r for r in model_rows if r["vdmcodec"]["method"] in MODEL_METHODS]
        if written:
            line("vdmcodec, model-coded files where written so", sum(r["vdmcodec"]["compress_s"] for r in written),
                 sum(r["vdmcodec"]["written_decode_s"] for r in written), len(written), megapixels(written))
    mp = megapixels(rows)
    if rows and all("compress_s" in r["vdmcodec"] for r in rows):
        line("vdmcodec as written (preflight, then the chain where run), every image",
             sum(r["vdmcodec"]["compress_s"] for r in rows), sum(r["vdmcodec"]["written_decode_s"] for r in rows),
             len(rows), mp)
        line("vdmcodec without the preflight (chain on every image), every image",
             sum(r["vdmcodec"]["encode_s"] for r in rows),
             sum(r["vdmcodec"]["decode_s"] if r["vdmcodec"]["method"] in MODEL_METHODS else r["vdmcodec"]["written_decode_s"]
                 for r in rows), len(rows), mp)
    for c in codec_names:
        line(c, sum(r["classical"][c]["encode_s"] for r in rows), sum(r["classical"][c]["decode_s"] for r in rows), len(rows), mp)
    lines += ["", f"Model loading (once per process, not in the figures above): {load_s:.2f} s. vdmcodec's compress "
              "includes its PNG and WebP encodings of the whole image (it writes the smaller of model-coded and "
              "classical). 'model-coded files': the chain's compress (no preflight) and decompress of every image "
              "the model can code; 'as written': what `vdmcodec compress` costs (the preflight's crops, then the "
              "chain unless the preflight gave the model up) and the decompress of the file it writes."]
    return lines


def memory_lines(rows: list[dict]) -> list[str]:
    if not rows:
        return ["(not measured: --memory-sizes '')"]
    lines = ["| image | subpixels | T | RSS after loading the model (MB) | peak RSS (MB) | peak - loaded (MB) | "
             "seconds | method | round trip |", "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r['width']}x{r['height']}x3 | {r['subpixels']:,} | {r['steps']} | {r['rss_after_load_mb']:.0f} | "
                     f"{r['peak_rss_mb']:.0f} | {r['coding_mb']:.0f} | {r['seconds']:.1f} | {r['method']} | "
                     f"{'yes' if r['roundtrip'] else '**FAILED**'} |")
    return lines


def plot(sets: dict, codec_names: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(sets), 1, figsize=(10, 3.6 * len(sets)), dpi=110, squeeze=False)
    rows_all = [r for rs in sets.values() for r in rs if r["elbo"]]
    kind = "discrete" if any(discrete(r["elbo"]) is not None for r in rows_all) else "continuous"
    series = ["vdmcodec", "-ELBO (T steps)" if kind == "discrete" else "-ELBO (continuous)"] + codec_names
    for ax, (name, rows) in zip(axes[:, 0], sets.items()):
        x = np.arange(len(rows))
        width = 0.8 / len(series)
        files = [r["vdmcodec"]["bpd"] for r in rows] + [r["classical"][c]["bpd"] for r in rows for c in codec_names]
        ax.set_ylim(0, 1.4 * max(files))  # a weak model's ELBO bars are cut off, not allowed to flatten the rest
        for j, s in enumerate(series):
            if s == "vdmcodec":
                vals = [r["vdmcodec"]["bpd"] for r in rows]
            elif s.startswith("-ELBO"):
                vals = [np.nan if not r["elbo"] or r["elbo"][kind] is None else r["elbo"][kind] for r in rows]
            else:
                vals = [r["classical"][s]["bpd"] for r in rows]
            ax.bar(x + (j - len(series) / 2 + 0.5) * width, vals, width, label=s)
        ax.set_xticks(x, [r["name"].rsplit(".", 1)[0] for r in rows], rotation=30, fontsize=8)
        ax.set_ylabel("bits per subpixel")
        ax.set_title(f"{name}: {title}", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def report(meta: dict, sets: dict, codec_names: list[str], missing: dict, mem: list[dict], T: int, plot_path: Path) -> list[str]:
    m = meta["machine"]
    card = meta["model_card"]
    rows = [r for rs in sets.values() for r in rs]
    failed = [r["name"] for r in rows if not r["vdmcodec"]["roundtrip"]]
    failed += [f"{r['name']} ({c})" for r in rows for c in codec_names if not r["classical"][c]["roundtrip"]]
    lines = [
        "# vdmcodec on full-size photographs (CSet14, CSet5)", "",
        f"Command: `{meta['command']}`", "",
        f"Date: {meta['date']}", "",
        f"Machine: {m['cpu']} ({m['cpu_count']} logical CPUs), {m['torch_threads']} torch threads, torch {m['torch']}, "
        f"Python {m['python']}, Pillow {m['pillow']}, imagecodecs {m['imagecodecs'] or 'not installed'}; 1-minute load "
        f"average {m['load_average_1min']:.2f} at the start, {meta['load_average_end']:.2f} at the end (other work shares the "
        "CPUs: timings are upper bounds of an idle machine's).", "",
        f"Model: `{meta['model']}` (weights sha256 {meta['model_sha256'][:16]}...; card: "
        + ", ".join(f"{k} {card[k]}" for k in ("data", "steps", "cpu_hours", "val_bpd_continuous") if card.get(k) is not None)
        + f"), T = {T} steps at {meta.get('levels', 'uniform')} level times, tile side {meta['tile']}.", "",
        "Every image is its own file. bpd = 8 x bytes / subpixels of that image; **mean** = the mean of the per-image "
        "figures, pooled = all bytes over all subpixels (how the data README measured its figures, so the targets "
        "compare pooled figures; the -ELBO pools weight each model-coded image by its subpixels). vdmcodec is "
        "what `vdmcodec compress` writes (the smaller of the model-coded and the all-classical file: 'written as' says "
        "which; '(preflight)': compress estimated the model's rate on crops first and, the classical file being far "
        "smaller, never ran the chain; 'with a 4:2:2 prior': the chain used a chroma-structure prior, "
        "coding/priors/structure.py; 'preflight est.' is that estimate); model-coded is that file's model-coded candidate, header and seeds included. "
        "Since format version 7 the classical candidates are PNG, WebP and JPEG XL (its libjxl at effort 9, the "
        "same as the JPEG XL column): 'pooled, no JPEG XL fallback' is the writer's choice between the model-coded "
        "file and PNG / WebP only, as before (seeds may still be JPEG XL). The -ELBO columns are the model's estimates on the same image, not files: T-step "
        f"(every step evaluated at the chain's level times, seed {meta['seed']}) is what the chain should cost; continuous time is the T -> infinity "
        f"bound ({CONTINUOUS_DRAWS} stratified draws of t)"
        + ("; the T-step one was not run here (--elbo continuous: it costs as much as a compress)" if meta.get("elbo") == "continuous" else "")
        + ("; no -ELBO was run here (--elbo none)" if meta.get("elbo") == "none" else "") + ".", "",
        *([f"Resumed: {len(meta['resumed'])} image rows were measured by an earlier process of this command "
           f"({meta['resumed_from']}), the rest by this one; their timings are that process's."] if meta.get("resumed") else []),
        *([""] if meta.get("resumed") else []),
        "Classical codecs: " + "; ".join(f"{c['name']}: {c['settings']}" for c in meta["codecs"]) + ".", "",
        "## Summary (bpd)", "",
    ]
    lines += summary_table(sets, codec_names, T, meta["limit"] is None and not meta.get("images"))
    undecoded = [r["name"] for r in rows if r["vdmcodec"].get("model_decoded") is False]
    lines += ["", "Round trip: every file " + ("compress writes (and every classical codec's) " if undecoded else "")
              + "was decoded and compared with the original pixels: "
              + ("all exact." if not failed else f"**FAILED for {', '.join(failed)}**.")
              + (f" The model-coded candidates of {', '.join(undecoded)} (written classically) were not decoded "
                 "(--decode written): their sizes are the encoder's." if undecoded else "")]
    for name, why in missing.items():
        lines.append(f"Skipped {name}: {why}.")
    lines += ["", "## Per image", ""]
    for name, rs in sets.items():
        lines += set_table(name, rs, codec_names, T) + [""]
    lines += [f"![per-image bpd]({plot_path.name})", "", "## Where a single photo's bytes go", "",
              "For model-coded files: the container, the classical seed segments (PNG/WebP bytes pushed onto the ANS stack "
              "to start the chain; their subpixels are not chain-coded) and the chain's own rate on the rest.", "",
              "| image | file bpd | -ELBO T | file / -ELBO | container bytes | seed bytes | seed share of subpixels | "
              "chain bpd (rest) | segments |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        v, e = r["vdmcodec"], r["elbo"]
        if v["model_method"] not in MODEL_METHODS:
            continue
        et, eg = ((f"{discrete(e):.3f}", f"{v['model_bpd'] / discrete(e) - 1:+.2%}") if discrete(e) is not None
                  else ("-", "-"))
        lines.append(f"| {r['name']} | {v['model_bpd']:.3f} | {et} | {eg} | "
                     f"{v['container_bytes']} | {v['seed_bytes']:,} | {v['seed_subpixels'] / np.prod(r['shape']):.2%} | "
                     f"{v['chain_bpd']:.3f} | {len(v['segments'])} |")
    lines += ["", "## Speed", "", "Wall-clock seconds, one process, each image compressed then decompressed alone.", ""]
    lines += speed_lines(sets, codec_names, meta["load_s"])
    lines += ["", f"## Memory (T = {meta['memory_steps']}; one fresh process per size)", "",
              "Peak resident memory of compress + decompress of one RGB image (a CSet5 photo tiled to the size), against "
              "the process after loading the model. The chain codes one segment of at most 2^20 subpixels at a time, so "
              "the coding memory stays bounded while the image grows; what does grow is the image, its classical "
              "encodings and the compressed stack.", ""]
    lines += memory_lines(mem)
    lines += ["", f"Raw numbers: `{plot_path.with_suffix('.json').name}`."]
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", default="natural", help="shipped model name or model directory")
    ap.add_argument("--steps", type=int, default=None, help="T (default: the model card's coding_steps, else the codec's)")
    ap.add_argument("--data", type=Path, default=DATA, help="folder holding the sets")
    ap.add_argument("--sets", default="CSet14,CSet5", help="comma-separated set folders under --data")
    ap.add_argument("--limit", type=int, default=None, help="only the first N images of each set")
    ap.add_argument("--images", default=None, help="only these file names (comma-separated), e.g. monarch.png")
    ap.add_argument("--elbo", choices=["both", "continuous", "none"], default="both",
                    help="which -ELBO estimates: the T-step one (as costly as a compress) and the continuous one, "
                         "the continuous one only, or none (a speed-only run)")
    ap.add_argument("--skip-elbo", action="store_true", help="the same as --elbo none")
    ap.add_argument("--decode", choices=["all", "written"], default="all",
                    help="decompress and compare every model-coded file, or only the files compress writes "
                         "(the model-coded candidate of an image written classically is then measured in size only)")
    ap.add_argument("--seed", type=int, default=0, help="noise seed of the ELBO estimates")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--memory-sizes", default="384x512,768x1024,1536x2048", help="HxW list for the memory table ('' for none)")
    ap.add_argument("--memory-steps", type=int, default=2, help="T of the memory probes (memory does not depend on T)")
    ap.add_argument("--probe-memory", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/natural.md"))
    args = ap.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.probe_memory:
        h, w = (int(v) for v in args.probe_memory.split("x"))
        print(json.dumps(memory_probe(args.model, h, w, args.steps or 2)))
        return
    t0 = time.perf_counter()
    codec = load_codec(args.model, steps=args.steps)
    load_s = time.perf_counter() - t0
    T = codec.steps
    codecs, missing = image_codecs()
    names = [c.name for c in codecs]
    meta = {"command": "python -m benchmarks.natural " + shlex.join(sys.argv[1:] if argv is None else argv),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(), "limit": args.limit, "images": args.images, "model": codec.info["name"], "model_sha256": codec.info["sha256"],
            "model_card": codec.info["card"], "tile": codec.tile,
            "levels": "fitted (the card's coding_times)" if codec.level_times(codec.steps) else "uniform", "seed": args.seed, "load_s": load_s,
            "memory_steps": args.memory_steps, "codecs": [{"name": c.name, "settings": c.settings} for c in codecs]}
    elbo_mode = "none" if args.skip_elbo else args.elbo
    meta["elbo"] = elbo_mode
    partial_path = args.out.with_suffix(".partial.json")
    key = {"model_sha256": codec.info["sha256"], "steps": T, "seed": args.seed, "elbo": elbo_mode,
           "threads": torch.get_num_threads(), "codecs": meta["codecs"]}
    done = {}
    if partial_path.exists():
        try:
            part = json.loads(partial_path.read_text())
        except (OSError, ValueError):
            part = {}
        if part.get("key") == key:
            done = part["rows"]
            print(f"continuing: {len(done)} image rows measured earlier, from {partial_path}", file=sys.stderr)
        else:
            print(f"{partial_path}: from another model or settings; starting over", file=sys.stderr)
    resumed = sorted(done)
    sets = {}
    only = set(args.images.split(",")) if args.images else None
    for name in [s for s in args.sets.split(",") if s]:
        items = load_items([resolve_data(args.data / name)])
        if only:
            items = [it for it in items if Path(it.name).name in only]
        items = items[: args.limit]
        rows = []
        for it in items:
            im = it.pixels
            tag = f"{name}/{it.name}"
            if tag in done and done[tag]["shape"] == list(im.shape):
                rows.append(done[tag])
                continue
            r = {"name": it.name, "shape": list(im.shape), "classical": measure_classical(codecs, im),
                 "vdmcodec": measure_vdmcodec(codec, im, T, args.decode),
                 "elbo": None if elbo_mode == "none" else measure_elbo(codec, im, T, args.seed, discrete=elbo_mode == "both")}
            rows.append(r)
            done[tag] = r
            partial_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(partial_path, json.dumps({"key": key, "rows": done}).encode())
            e = r["elbo"]
            print(f"{name}/{it.name} {im.shape}: vdmcodec {r['vdmcodec']['bpd']:.3f} ({r['vdmcodec']['method']}, "
                  f"{r['vdmcodec']['encode_s']:.1f}+{r['vdmcodec']['written_decode_s']:.1f} s), -ELBO "
                  + (f"{e['discrete'] if e['discrete'] is not None else e['continuous']:.3f}" if e else "-") + ", "
                  + ", ".join(f"{c} {r['classical'][c]['bpd']:.3f}" for c in names), file=sys.stderr, flush=True)
        if rows:  # --images may select nothing from a set
            sets[name] = rows
    used = {f"{n}/{r['name']}" for n, rs in sets.items() for r in rs}
    meta["resumed"] = [t for t in resumed if t in used]
    meta["resumed_from"] = str(partial_path)
    mem = run_memory(args)
    meta["load_average_end"] = os.getloadavg()[0]
    out = args.out
    plot_path = out.with_suffix(".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(sets, names, plot_path, f"{codec.info['name']}, T = {T}")
    atomic_write_bytes(out, ("\n".join(report(meta, sets, names, missing, mem, T, plot_path)) + "\n").encode())
    atomic_write_bytes(out.with_suffix(".json"), (json.dumps({"meta": meta, "sets": sets, "memory": mem, "skipped": missing,
                                                              "targets": TARGETS}, indent=1) + "\n").encode())
    partial_path.unlink(missing_ok=True)
    print(f"wrote {out}, {plot_path}, {out.with_suffix('.json')}", file=sys.stderr)


if __name__ == "__main__":
    main()
