"""Fuzzing the .vdmc parser and decoder (hypothesis-driven), and the truncation sweep.

Inputs are mutations of valid seed archives (benchmarks.hardening.build_seeds) and random
bytes. A hypothesis ``Random`` (``st.randoms``) makes every choice, so a campaign is
reproducible from its hypothesis seed and the test suite can run the same generator under
``@given``. Mutations: byte-level edits (bit flips, byte sets, boundary values, inserts,
deletes, duplicated ranges, truncation, extension, varints written into the header,
splices of two seeds), most often inside the header, and field-level edits of the parsed
header re-encoded without validation (a forger's file). 80% of inputs get a correct CRC-32
so that they reach the parser and the decoder rather than the checksum.

Each input is decoded in a worker process (the models loaded once) under a per-input
timeout; the worker reports the outcome, the time and the peak resident memory above its
idle level (Linux VmHWM, reset per input through /proc/self/clear_refs). A worker that dies
or overruns is killed, restarted, and the input recorded as a crash or a timeout.

Outcome classes: ``refused`` (the codec's own error type, one-line message: the class name
is kept), ``decoded-identical`` (a harmless edit: names, ignored bits; the pixels are the
seed's), and the failures ``decoded-different``, ``exception`` (any other exception type),
``multiline-message``, ``timeout``, ``crash``.
"""
from __future__ import annotations

import dataclasses
import multiprocessing as mp
import random
import resource
import struct
import time
import zlib
from dataclasses import dataclass
from typing import Callable, Sequence

from vdmcodec.coding import container
from vdmcodec.coding.codec import DecodeLimits, model_digest
from vdmcodec.errors import VdmcodecError

from .hardening import Seed, as_hwc

# the decoder's limits in a campaign (like libjxl's fuzzers, which cap image sizes): steps and
# subpixels bounded so that no input's claimed work exceeds the per-input timeout, and one
# thread (the worker has one core; a forged thread count over it is refused up front)
FUZZ_LIMITS = DecodeLimits(max_steps=256, max_subpixels=1 << 22, max_threads=1)
FAILURES = ("decoded-different", "exception", "multiline-message", "timeout", "crash")
INTERESTING_BYTES = (0x00, 0x01, 0x02, 0x7F, 0x80, 0x81, 0xFE, 0xFF)
INTERESTING_INTS = (0, 1, 2, 3, 4, 63, 64, 65, 127, 128, 255, 256, 1023, 1024, 1025, 4096, 16383, 16384, 65535, 65536,
                    65537, 100_000, 100_001, 10**6, 10**7, 10**7 + 1, 2**31 - 1, 2**32, 2**40, 2**63 - 1)


@dataclass(frozen=True)
class FuzzInput:
    source: str      # the seed's name, or "random"
    how: str         # the edits, e.g. "header:flip@12,crc"
    blob: bytes


@dataclass(frozen=True)
class Outcome:
    kind: str        # refused | decoded-identical | one of FAILURES
    error: str       # exception class ("" when decoded)
    message: str
    seconds: float
    peak_mb: float   # resident memory above the worker's idle level, MB (-1: unknown)


# ---- building inputs ----------------------------------------------------------------------
def _header_span(blob: bytes) -> tuple[int, int]:
    """(start, end) of the header bytes of a framed archive (0, 0 when it does not parse)."""
    try:
        r = container._Reader(blob)
        r.pos = 5
        hlen = r.varint("header length", container.MAX_HEADER_BYTES)
        return r.pos, min(r.pos + hlen, len(blob))
    except VdmcodecError:
        return 0, 0


def fix_crc(blob: bytes) -> bytes:
    """Replace the last 4 bytes by the CRC-32 of the rest (what a forger would do)."""
    body = blob[:-4] if len(blob) >= 4 else b""
    return body + struct.pack("<I", zlib.crc32(body))


def _rand_bytes(rng: random.Random, n: int) -> bytes:
    return rng.getrandbits(8 * n).to_bytes(n, "little") if n > 0 else b""


def _byte_edit(rng: random.Random, b: bytearray, lo: int, hi: int, other: bytes) -> str:
    """One byte-level edit of b at a position in [lo, hi); returns its description."""
    if not b:
        b.extend(_rand_bytes(rng, rng.randint(1, 16)))
        return "fill"
    hi = max(lo + 1, min(hi, len(b)))
    p = rng.randrange(lo, hi) if lo < len(b) else rng.randrange(len(b))
    op = rng.choice(("flip", "set", "interesting", "insert", "delete", "dup", "truncate", "extend", "varint", "splice"))
    if op == "flip":
        b[p] ^= 1 << rng.randrange(8)
    elif op == "set":
        b[p] = rng.randrange(256)
    elif op == "interesting":
        b[p] = rng.choice(INTERESTING_BYTES)
    elif op == "insert":
        b[p:p] = _rand_bytes(rng, rng.randint(1, 8))
    elif op == "delete":
        del b[p : p + rng.randint(1, 8)]
    elif op == "dup":
        a = rng.randrange(len(b))
        b[p:p] = b[a : a + rng.randint(1, 16)]
    elif op == "truncate":
        del b[p:]
    elif op == "extend":
        b.extend(_rand_bytes(rng, rng.randint(1, 32)))
    elif op == "varint":
        b[p : p + rng.randint(0, 2)] = container._varint(rng.choice(INTERESTING_INTS))
    else:  # splice: this file's start, another's end
        q = rng.randrange(len(other)) if other else 0
        b[p:] = other[q:]
    return f"{op}@{p}"


def _field_edit(rng: random.Random, h: container.Header) -> tuple[container.Header, str]:
    """One field of the parsed header set to a boundary or random value."""
    r = dataclasses.replace
    val = lambda old: rng.choice([old - 1, old + 1, 2 * old, rng.choice(INTERESTING_INTS), rng.randrange(1 << rng.randrange(1, 33))])  # noqa: E731
    field = rng.choice(("steps", "grid_bits", "threads", "shape", "method", "classical_size", "chunks", "names", "squeeze",
                        "init_pad", "pixels_hash", "model_hash", "model", "torch"))
    if field == "steps":
        h = r(h, steps=max(0, val(h.steps)))
    elif field == "grid_bits":
        h = r(h, grid_bits=rng.choice([0, 1, 5, 7, 15, 16, 17, 255]))
    elif field == "threads":
        h = r(h, threads=max(0, val(h.threads)))
    elif field == "shape":
        shapes = [list(s) for s in h.shapes]
        run, j = rng.randrange(len(shapes)), rng.randrange(4)
        shapes[run][j] = max(0, val(shapes[run][j]))
        h = r(h, shapes=shapes)
    elif field == "method":
        methods = [list(m) for m in h.methods]
        k = rng.randrange(len(methods))
        if rng.random() < 0.5:
            methods[k][0] = rng.choice(container.METHODS)
        else:
            methods[k][1] = max(0, val(methods[k][1]))
        h = r(h, methods=methods)
    elif field == "classical_size" and h.classical_sizes:
        sizes = list(h.classical_sizes)
        k = rng.randrange(len(sizes))
        sizes[k] = max(0, val(sizes[k]))
        h = r(h, classical_sizes=sizes)
    elif field == "chunks":
        sizes = [s for _, s in h.chunks] or [1]
        k = rng.randrange(len(sizes))
        choice = rng.randrange(3)
        if choice == 0:
            sizes[k] = max(0, val(sizes[k]))
        elif choice == 1 and len(sizes) > 1:
            sizes[k : k + 2] = [sizes[k] + sizes[min(k + 1, len(sizes) - 1)]]
        else:
            sizes[k : k + 1] = [1, max(0, sizes[k] - 1)]
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        h = r(h, chunks=[[a, s] for a, s in zip(starts, sizes)])
    elif field == "names":
        names = rng.choice([{"sequence": ["", rng.choice([0, 1, 12, 13]), ".png"]}, {"list": [""] * h.count},
                            {"list": ["../escape.png"] + [f"{k}.png" for k in range(1, h.count)]},
                            {"list": ["x" * 4096] * h.count}, {"list": ["same.png"] * h.count},
                            {"sequence": ["/abs/", 3, ".png"]}])
        h = r(h, names=names)
    elif field == "squeeze":
        h = r(h, squeeze=rng.choice([[], [[1, h.count]], [[0, h.count]], [[2, h.count]], [[1, max(0, h.count - 1)]],
                                     [[1, 10**12]]]))
    elif field == "init_pad":
        h = r(h, init_pad=rng.randrange(4))
    elif field == "pixels_hash":
        h = r(h, pixels_hash=_rand_bytes(rng, 8).hex())
    elif field == "model_hash":
        h = r(h, model_hash=_rand_bytes(rng, 8).hex(), model=h.model or "mnist", steps=h.steps or 4, grid_bits=h.grid_bits or 6)
    elif field == "model":
        h = r(h, model=rng.choice([None, "", "mnist", "tiny", "../../etc", "x" * 255]))
    elif field == "torch":
        h = r(h, torch=rng.choice(["", "1.0", "9.9.9+cu999"]))
    return h, field


def mutate(rng: random.Random, seed: Seed, seeds: Sequence[Seed]) -> FuzzInput:
    """A mutated copy of ``seed`` (see the module docstring)."""
    other = rng.choice(seeds).blob
    if rng.random() < 0.25:  # a forged header: one or two fields
        try:
            h, payload = container.unpack(seed.blob)
            fields = []
            for _ in range(rng.randint(1, 2)):
                h, f = _field_edit(rng, h)
                fields.append(f)
            return FuzzInput(seed.name, "field:" + "+".join(fields), container.frame(container.encode_header(h), payload))
        except (ValueError, TypeError, OverflowError, VdmcodecError):
            pass  # a value encode_header cannot write: fall through to byte edits
    b = bytearray(seed.blob)
    lo, hi = _header_span(seed.blob)
    in_header = rng.random() < 0.6 and hi > lo
    edits = [_byte_edit(rng, b, lo, hi, other) if in_header else _byte_edit(rng, b, 0, len(b), other)
             for _ in range(rng.choice((1, 1, 1, 2, 3, 8)))]
    crc = rng.random() < 0.8
    blob = fix_crc(bytes(b)) if crc else bytes(b)
    return FuzzInput(seed.name, ("header:" if in_header else "any:") + ",".join(edits) + (",crc" if crc else ""), blob)


def random_input(rng: random.Random) -> FuzzInput:
    """Random bytes: bare, behind the magic and version, or in a well-formed frame."""
    kind = rng.choice(("bytes", "magic", "frame"))
    if kind == "bytes":
        blob = _rand_bytes(rng, rng.randint(0, 300))
    elif kind == "magic":
        blob = container.MAGIC + bytes([rng.choice((2, 2, 2, rng.randrange(256)))]) + _rand_bytes(rng, rng.randint(0, 300))
        if rng.random() < 0.5:
            blob = fix_crc(blob)
    else:
        header = _rand_bytes(rng, rng.randint(0, 64))
        blob = container.frame(header, _rand_bytes(rng, rng.randint(0, 256)))
    return FuzzInput("random", kind, blob)


def make_input(rng: random.Random, seeds: Sequence[Seed]) -> FuzzInput:
    if rng.random() < 0.1:
        return random_input(rng)
    return mutate(rng, rng.choice(seeds), seeds)


# ---- decoding one input ------------------------------------------------------------------
def decode_outcome(blob: bytes, codecs: dict, seed: Seed | None, limits: DecodeLimits) -> tuple[str, str, str]:
    """(kind, error class, message) of decoding ``blob`` with the codec whose weights the
    header names (else the seed's, else any: the library then refuses the model)."""
    codec = next(iter(codecs.values()))
    if seed is not None and seed.model in codecs:
        codec = codecs[seed.model]
    try:
        try:
            header, _ = container.unpack(blob)
            codec = next((c for c in codecs.values() if model_digest(c.info) == header.model_hash), codec)
        except VdmcodecError:
            pass  # decompress_named raises it again
        out = codec.decompress_named(blob, limits=limits)
    except VdmcodecError as e:
        msg = str(e)
        if not msg.strip() or "\n" in msg:
            return "multiline-message", type(e).__name__, msg[:300]
        return "refused", type(e).__name__, msg[:300]
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: BLE001 - classifying every escape (a Rust panic too) is the point
        return "exception", type(e).__name__, str(e).splitlines()[0][:300] if str(e) else ""
    if seed is not None and len(out) == len(seed.images) and all(
            as_hwc(a).shape == as_hwc(b).shape and (as_hwc(a) == as_hwc(b)).all() for (a, _), b in zip(out, seed.images)):
        return "decoded-identical", "", ""
    return "decoded-different", "", f"{len(out)} images"


def _rss_kb(field: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _worker(conn, model_dirs: dict, steps: int, seeds: list[Seed], limits: DecodeLimits, mem_cap_mb: int) -> None:
    import torch

    from .hardening import codecs_for

    torch.set_num_threads(1)
    codecs = codecs_for(model_dirs, steps)
    by_name = {s.name: s for s in seeds}
    if mem_cap_mb > 0:  # a hard stop for runaway allocations: they fail with MemoryError
        vm = _rss_kb("VmSize")
        if vm > 0:
            cap = vm * 1024 + mem_cap_mb * (1 << 20)
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    conn.send("ready")
    while True:
        try:
            source, blob = conn.recv()
        except EOFError:
            return
        before = _rss_kb("VmRSS")
        measured = _reset_peak() and before > 0
        t0 = time.perf_counter()
        kind, err, msg = decode_outcome(blob, codecs, by_name.get(source), limits)
        dt = time.perf_counter() - t0
        peak = (_rss_kb("VmHWM") - before) / 1024 if measured else -1.0
        conn.send(Outcome(kind, err, msg, dt, peak))


class Runner:
    """Decodes inputs in a worker process with a per-input timeout (restarting the worker
    after a timeout or a crash). Use as a context manager."""

    def __init__(self, model_dirs: dict, steps: int, seeds: list[Seed], limits: DecodeLimits,
                 timeout: float = 30.0, mem_cap_mb: int = 4096):
        self.args = (model_dirs, steps, seeds, limits, mem_cap_mb)
        self.timeout = timeout
        self.proc = self.conn = None
        self.restarts = 0

    def _start(self):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, *self.args), daemon=True)
        self.proc.start()
        child.close()
        if not self.conn.poll(600) or self.conn.recv() != "ready":
            raise RuntimeError("fuzz worker did not start")

    def _stop(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.join()
            self.conn.close()
            self.proc = self.conn = None

    def __enter__(self):
        self._start()
        return self

    def __exit__(self, *exc):
        self._stop()

    def __call__(self, inp: FuzzInput, timeout: float | None = None) -> Outcome:
        if self.proc is None:
            self._start()
            self.restarts += 1
        t0 = time.perf_counter()
        self.conn.send((inp.source, inp.blob))
        try:
            if self.conn.poll(self.timeout if timeout is None else timeout):
                return self.conn.recv()
            kind = "timeout"
        except (EOFError, OSError):
            kind = "crash"
        code = self.proc.exitcode
        self._stop()
        return Outcome(kind, "", "" if code is None else f"worker exit code {code}", time.perf_counter() - t0, -1.0)


# ---- campaigns -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Record:
    input: FuzzInput
    outcome: Outcome


def campaign(n: int, seeds: list[Seed], run: Callable[[FuzzInput], Outcome], hypothesis_seed: int = 0,
             progress: Callable[[int], None] | None = None) -> list[Record]:
    """``n`` inputs from ``make_input``, every random choice made by hypothesis
    (``st.randoms``; generation only: nothing is shrunk, every outcome is kept)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed
    from hypothesis import strategies as st

    records: list[Record] = []

    @settings(max_examples=n, phases=[Phase.generate], database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(st.randoms(use_true_random=False))
    def one(rng):
        if len(records) >= n:
            return
        inp = make_input(rng, seeds)
        records.append(Record(inp, run(inp)))
        if progress is not None:
            progress(len(records))

    k = 0
    while len(records) < n:  # hypothesis may stop early (e.g. on repeated inputs): go on with another seed
        hseed(hypothesis_seed + k)(one)()
        k += 1
    return records


def truncations(seed: Seed) -> list[FuzzInput]:
    """The seed cut at every byte offset (a damaged file), and its payload cut at every
    byte under a recomputed CRC (a forged one)."""
    out = [FuzzInput(seed.name, f"cut@{k}", seed.blob[:k]) for k in range(len(seed.blob))]
    h, payload = container.unpack(seed.blob)
    hb = container.encode_header(h)
    out += [FuzzInput(seed.name, f"payload-cut@{k},crc", container.frame(hb, payload[:k])) for k in range(len(payload))]
    return out


def summarize(records: Sequence[Record]) -> dict:
    """Counts per outcome class and error type, the slowest input, the largest memory peak."""
    by_kind: dict[str, int] = {}
    by_error: dict[str, int] = {}
    for r in records:
        by_kind[r.outcome.kind] = by_kind.get(r.outcome.kind, 0) + 1
        if r.outcome.kind == "refused":
            by_error[r.outcome.error] = by_error.get(r.outcome.error, 0) + 1
    slowest = max(records, key=lambda r: r.outcome.seconds) if records else None
    biggest = max(records, key=lambda r: r.outcome.peak_mb) if records else None
    return {"inputs": len(records), "by_kind": by_kind, "by_error": by_error,
            "failures": [r for r in records if r.outcome.kind in FAILURES],
            "slowest": slowest, "biggest": biggest,
            "by_source": {s: sum(r.input.source == s for r in records) for s in sorted({r.input.source for r in records})}}

