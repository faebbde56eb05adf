"""Determinism across processes and torch thread counts.

Every encode and decode runs in a fresh process (``python -m benchmarks.determinism
encode|decode ...``) with ``torch.set_num_threads(N)``; the matrix encodes at each thread
count and decodes every archive at each count, with the decoder's thread matching on (the
default: the network runs at the count the header records) and off (a mismatch must be
refused up front, naming the count to use). ``network_drift`` shows why the rule exists:
the network's float32 output for one batch at 1 and at 2 threads.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Cell:
    model: str
    encode_threads: int
    decode_threads: int
    match: bool
    result: str        # "exact" | "wrong pixels" | "refused: <Error>: <message>" | "failed: ..."
    seconds: float


def _child_env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run(args: list[str], timeout: float) -> dict:
    p = subprocess.run([sys.executable, "-m", "benchmarks.determinism", *args], cwd=ROOT, env=_child_env(),
                       capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or [""])[-1]
        return {"error": "process", "message": f"exit {p.returncode}: {tail}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


def encode_in_process(model: str, steps: int, threads: int, images: Path, out: Path, timeout: float = 1800) -> dict:
    return _run(["encode", model, str(steps), str(threads), str(images), str(out)], timeout)


def decode_in_process(model: str, threads: int, archive: Path, images: Path, match: bool = True,
                      timeout: float = 1800) -> dict:
    return _run(["decode", model, str(threads), str(archive), str(images), "match" if match else "nomatch"], timeout)


def matrix(model: str, steps: int, images: list[np.ndarray], work: Path, threads=(1, 2)) -> tuple[list[Cell], dict]:
    """Encode ``images`` at each thread count and decode each archive at each count (thread
    matching on and off), every step in a fresh process. Returns the cells and
    {threads: encode info}."""
    work.mkdir(parents=True, exist_ok=True)
    npz = work / "images.npz"
    np.savez(npz, *images)
    cells, enc = [], {}
    for te in threads:
        arc = work / f"enc{te}.vdmc"
        enc[te] = encode_in_process(model, steps, te, npz, arc)
        if "error" in enc[te]:
            cells += [Cell(model, te, td, m, f"failed: encode {enc[te]['message']}", 0.0) for td in threads for m in (True, False)]
            continue
        for td in threads:
            for match in (True, False):
                r = decode_in_process(model, td, arc, npz, match)
                res = ("exact" if r.get("exact") else "wrong pixels") if "exact" in r else \
                      f"refused: {r['error']}: {r['message']}" if r.get("error") != "process" else f"failed: {r['message']}"
                cells.append(Cell(model, te, td, match, res, r.get("seconds", 0.0)))
    return cells, enc


def network_drift(model_dir: str, images: list[np.ndarray], steps: int = 8, level: int | None = None) -> dict:
    """The network's float32 output on one batch (the chain's inputs at level ``level``) at
    1 and at 2 torch threads, in this process: how many values differ and by how much."""
    import torch

    from vdmcodec.coding.codec import load_codec
    from vdmcodec.diffusion import scale_pixels

    codec = load_codec(model_dir, steps=steps)
    chain = codec.chain(steps, codec.grid_bits)
    i = level if level is not None else steps // 2
    x = np.stack([im if im.ndim == 3 else im[..., None] for im in images]).transpose(0, 3, 1, 2)
    rng = np.random.default_rng(0)
    z = chain.grid.alpha[i] * scale_pixels(torch.from_numpy(x)).double().numpy() + chain.grid.sigma[i] * rng.standard_normal(x.shape)
    before = torch.get_num_threads()
    outs = {}
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            outs[t] = chain.p_mean_std(z, i)[0]
    finally:
        torch.set_num_threads(before)
    diff = np.abs(outs[1] - outs[2])
    return {"batch": list(x.shape), "level": i, "values": int(diff.size), "differing": int((diff > 0).sum()),
            "max_abs_diff": float(diff.max()), "grid_step": float(chain.grid.delta[i - 1])}


# ---- the child processes -------------------------------------------------------------------------
def _load(npz: str) -> list[np.ndarray]:
    with np.load(npz) as z:
        return [z[f"arr_{k}"] for k in range(len(z.files))]


def _encode(model: str, steps: str, threads: str, npz: str, out: str) -> dict:
    import torch

    torch.set_num_threads(int(threads))
    from vdmcodec.coding.codec import load_codec
    from vdmcodec.coding.container import unpack

    codec = load_codec(model, steps=int(steps))
    t0 = time.perf_counter()
    blob = codec.compress(_load(npz), force_model=True)
    dt = time.perf_counter() - t0
    Path(out).write_bytes(blob)
    h, _ = unpack(blob)
    return {"bytes": len(blob), "seconds": dt, "header_threads": h.threads, "methods": h.methods, "chunks": len(h.chunks)}


def _decode(model: str, threads: str, archive: str, npz: str, match: str) -> dict:
    import torch

    torch.set_num_threads(int(threads))
    from vdmcodec.coding.codec import DecodeLimits, load_codec
    from vdmcodec.errors import VdmcodecError

    codec = load_codec(model)
    t0 = time.perf_counter()
    try:
        out = codec.decompress(Path(archive).read_bytes(), limits=DecodeLimits(match_threads=match == "match"))
    except VdmcodecError as e:
        return {"error": type(e).__name__, "message": str(e), "seconds": time.perf_counter() - t0}
    ref = _load(npz)
    exact = len(out) == len(ref) and all(a.shape == b.shape and np.array_equal(a, b) for a, b in zip(out, ref))
    return {"exact": exact, "seconds": time.perf_counter() - t0, "threads_after": torch.get_num_threads()}


def main(argv=None):
    ap = argparse.ArgumentParser(description="child process of the determinism matrix")
    ap.add_argument("what", choices=["encode", "decode"])
    ap.add_argument("args", nargs="+")
    a = ap.parse_args(argv)
    res = _encode(*a.args) if a.what == "encode" else _decode(*a.args)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
