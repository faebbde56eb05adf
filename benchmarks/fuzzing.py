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

Structured forgeries (``forgeries``) complement the random campaign: every field the header
parser reads (container.parse_header's trace) set to the extremes of its type and its limit
(0, 1, limit - 1, limit, limit + 1, 2^32, 2^40, 2^64 - 1; raw bytes to 0x00 / 0xFF), the
frame's version byte and header length, the payload truncated, extended and with its words
set to extremes, segments, bands, chunks and payloads swapped, each under a correct CRC-32.

Run the whole campaign (>= 10,000 inputs) and write benchmarks/results/fuzzing.md:

    OMP_NUM_THREADS=1 nice -n 10 python -m benchmarks.fuzzing [--random 4000] [--timeout 30]
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
from vdmcodec.coding.archive import DecodeLimits, model_digest
from vdmcodec.errors import VdmcodecError

from vdmcodec.coding.tilegrid import SEGMENT_METHODS, Band, TileLayout

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
        r = container.Reader(blob)
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
        b[p : p + rng.randint(0, 2)] = container.encode_varint(rng.choice(INTERESTING_INTS))
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
    version, hb, payload = _parts(seed.blob)
    out += [FuzzInput(seed.name, f"payload-cut@{k},crc", _frame_raw(version, hb, payload[:k])) for k in range(len(payload))]
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



# ---- structured forgeries ----------------------------------------------------------------------
EXTREME_INTS = (0, 1, 2, 2**32 - 1, 2**32, 2**40, 2**63 - 1, 2**64 - 1)
EXTREME_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF)
OVERLONG_VARINT = b"\xff" * 10 + b"\x01"  # 11 bytes: past the 64 bits a varint may hold


def _frame_raw(version: int, header: bytes, payload: bytes, hlen: int | None = None) -> bytes:
    """A frame with any version byte and header length, under a correct CRC-32."""
    body = container.MAGIC + bytes([version]) + container.encode_varint(len(header) if hlen is None else hlen) + header + payload
    return fix_crc(body + b"\0\0\0\0")


def _parts(blob: bytes) -> tuple[int, bytes, bytes]:
    """(version, header bytes, payload) of a framed archive."""
    start, end = _header_span(blob)
    return blob[4], blob[start:end], blob[end:-4]


def header_fields(blob: bytes) -> list:
    """The container.Field of every field of the archive's header, in reading order."""
    version, hb, _ = _parts(blob)
    trace: list = []
    container.parse_header(hb, version, trace)
    return trace


def field_forgeries(seed: Seed) -> list[FuzzInput]:
    """Every header field set to extremes (varints: 0, 1, 2, the value +-1, the limit -1, the
    limit, the limit + 1 and EXTREME_INTS; an overlong varint; single bytes: EXTREME_BYTES and
    the value +-1; longer byte strings: all 0x00, all 0xFF, reversed, cut to nothing)."""
    version, hb, payload = _parts(seed.blob)
    out = []
    for f in header_fields(seed.blob):
        old = hb[f.start : f.end]
        if f.limit is not None:
            v0 = container.Reader(old).varint(f.what, 1 << 64)
            values = sorted({v for v in (0, 1, 2, v0 - 1, v0 + 1, f.limit - 1, f.limit, f.limit + 1, *EXTREME_INTS)
                             if 0 <= v < 1 << 64 and v != v0})
            reps = [(str(v), container.encode_varint(v)) for v in values] + [("overlong", OVERLONG_VARINT)]
        elif len(old) == 1:
            reps = [(f"0x{v:02x}", bytes([v])) for v in sorted({*EXTREME_BYTES, (old[0] + 1) % 256, (old[0] - 1) % 256})
                    if v != old[0]]
        else:
            reps = [("zeros", b"\0" * len(old)), ("ones", b"\xff" * len(old)), ("reversed", old[::-1]), ("empty", b"")]
        for name, new in reps:
            out.append(FuzzInput(seed.name, f"field:{f.what}@{f.start}={name}",
                                 _frame_raw(version, hb[: f.start] + new + hb[f.end :], payload)))
    return out


def frame_forgeries(seed: Seed) -> list[FuzzInput]:
    """The frame: every version byte; the header length at extremes; a bad CRC; no CRC."""
    version, hb, payload = _parts(seed.blob)
    out = [FuzzInput(seed.name, f"version={v}", _frame_raw(v, hb, payload)) for v in range(256) if v != version]
    for v in sorted({0, 1, len(hb) - 1, len(hb) + 1, len(hb) + len(payload), len(hb) + len(payload) + 4,
                     container.MAX_HEADER_BYTES, container.MAX_HEADER_BYTES + 1, *EXTREME_INTS}):
        out.append(FuzzInput(seed.name, f"header-length={v}", _frame_raw(version, hb, payload, hlen=v)))
    out.append(FuzzInput(seed.name, "crc-flipped", seed.blob[:-1] + bytes([seed.blob[-1] ^ 1])))
    out.append(FuzzInput(seed.name, "crc-missing", seed.blob[:-4]))
    return out


def payload_forgeries(seed: Seed, seeds: Sequence[Seed]) -> list[FuzzInput]:
    """The payload extended, its first and last words at extremes, its halves swapped, its
    words reversed, and every other seed's payload under this header."""
    version, hb, payload = _parts(seed.blob)
    out = []
    for n in (1, 2, 3, 4, 8, 64, 4096):
        for fill, name in ((b"\0", "zeros"), (b"\xff", "ones"), (b"\x01", "ones-low")):
            out.append(FuzzInput(seed.name, f"payload+{n}:{name}", _frame_raw(version, hb, payload + fill * n)))
        out.append(FuzzInput(seed.name, f"payload+{n}:copy", _frame_raw(version, hb, payload + (payload * (n // max(1, len(payload)) + 1))[:n])))
    for at, where in ((0, "first"), (max(0, len(payload) - 4), "last")):
        for word in (0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF):
            forged = payload[:at] + struct.pack("<I", word) + payload[at + 4 :]
            out.append(FuzzInput(seed.name, f"payload-{where}-word=0x{word:08x}", _frame_raw(version, hb, forged)))
    half = (len(payload) // 8) * 4
    out.append(FuzzInput(seed.name, "payload-halves-swapped", _frame_raw(version, hb, payload[half:] + payload[:half])))
    words = len(payload) // 4 * 4
    out.append(FuzzInput(seed.name, "payload-words-reversed",
                         _frame_raw(version, hb, b"".join(payload[k : k + 4] for k in range(words - 4, -1, -4)) + payload[words:])))
    out.append(FuzzInput(seed.name, "payload-empty", _frame_raw(version, hb, b"")))
    for other in seeds:
        if other.name != seed.name:
            out.append(FuzzInput(seed.name, f"payload-of:{other.name}", _frame_raw(version, hb, _parts(other.blob)[2])))
    return out


def _reframe(seed: Seed, h: container.Header) -> bytes:
    return container.frame(container.encode_header(h), _parts(seed.blob)[2])


def swap_forgeries(seed: Seed) -> list[FuzzInput]:
    """Header records swapped or permuted (re-encoded without validation): tile segments
    within a band reversed and rotated, bands reversed, a segment's method replaced by every
    other, classical sizes, shapes, methods and chunks reversed."""
    h, _ = container.unpack(seed.blob)
    r = dataclasses.replace
    out: list[tuple[str, container.Header]] = []
    for k, layout in enumerate(h.tiled):
        def with_layout(bands, k=k):
            return r(h, tiled=h.tiled[:k] + [TileLayout(tuple(bands))] + h.tiled[k + 1 :])

        out.append((f"tiled{k}:bands-reversed", with_layout(layout.bands[::-1])))
        for j, band in enumerate(layout.bands):
            segs = band.segments
            for name, new in (("reversed", segs[::-1]), ("rotated", segs[1:] + segs[:1])):
                if new != segs:
                    out.append((f"tiled{k}:band{j}:segments-{name}",
                                with_layout(layout.bands[:j] + (Band(band.rows, new),) + layout.bands[j + 1 :])))
            for i, seg in enumerate(segs):
                for method in SEGMENT_METHODS:
                    if method != seg.method:
                        new_seg = dataclasses.replace(seg, method=method, nbytes=seg.nbytes or 1)
                        new = segs[:i] + (new_seg,) + segs[i + 1 :]
                        out.append((f"tiled{k}:band{j}:seg{i}->{method}",
                                    with_layout(layout.bands[:j] + (Band(band.rows, new),) + layout.bands[j + 1 :])))
    for name, over in (("classical-sizes-reversed", dict(classical_sizes=h.classical_sizes[::-1])),
                       ("shapes-reversed", dict(shapes=h.shapes[::-1])), ("methods-reversed", dict(methods=h.methods[::-1])),
                       ("chunks-reversed", dict(chunks=[[0, s] for _, s in h.chunks[::-1]])),
                       ("structures-reversed", dict(structures=h.structures[::-1])),
                       ("corr-scales-reversed", dict(corr_scales=h.corr_scales[::-1]))):
        if getattr(h, next(iter(over))) != next(iter(over.values())):
            out.append((name, r(h, **over)))
    return [FuzzInput(seed.name, f"swap:{name}", _reframe(seed, forged)) for name, forged in out]


def forgeries(seeds: Sequence[Seed], truncate: Sequence[str] = ()) -> dict[str, list[FuzzInput]]:
    """Every structured forgery of every seed, by family; the seeds named in ``truncate``
    are also cut at every byte offset (``truncations``)."""
    fams: dict[str, list[FuzzInput]] = {"field": [], "frame": [], "payload": [], "swap": [], "truncation": []}
    for seed in seeds:
        fams["field"] += field_forgeries(seed)
        fams["frame"] += frame_forgeries(seed)
        fams["payload"] += payload_forgeries(seed, seeds)
        fams["swap"] += swap_forgeries(seed)
        if seed.name in truncate:
            fams["truncation"] += truncations(seed)
    return fams


# ---- the campaign: python -m benchmarks.fuzzing ----------------------------------------------------
SEED_STEPS = {"tiny": 2, "mnist": 4}  # T of the chain seeds: decoding a forged copy runs at most its chain
TRUNCATED = ("classical", "tiny-chain", "tiny-tiled", "mnist-chain")  # cut at every byte offset


def main(argv=None) -> None:
    import argparse
    import datetime
    import json
    import shlex
    import sys
    import tempfile
    from pathlib import Path

    import torch

    from vdmcodec.hardware import cpu_capability

    from . import hardening
    from .mnist import machine

    ap = argparse.ArgumentParser(description="Fuzz the .vdmc decoder with structured forgeries and random mutations "
                                             "(each input decoded in a worker process with a timeout).")
    ap.add_argument("--random", type=int, default=4000, help="random mutations (hypothesis) besides the structured forgeries")
    ap.add_argument("--hypothesis-seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per input before it counts as a hang")
    ap.add_argument("--mem-cap-mb", type=int, default=4096, help="address-space cap of the worker above its idle size")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/fuzzing.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t_start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t_start:7.1f} s] {msg}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="vdmc-fuzz-") as tmpd:
        tmp = Path(tmpd)
        dirs = {"tiny": str(hardening.tiny_model(tmp / "tiny")),
                "tiny-rgb": str(hardening.tiny_model(tmp / "tiny-rgb", image_channels=3)), "mnist": "mnist"}
        codecs = hardening.codecs_for(dirs, SEED_STEPS["mnist"])
        seeds = hardening.build_seeds(codecs, mnist_steps=SEED_STEPS["mnist"], tiny_steps=SEED_STEPS["tiny"])
        fams = forgeries(seeds, truncate=TRUNCATED)
        log("forgeries: " + ", ".join(f"{k} {len(v):,}" for k, v in fams.items()))
        records: dict[str, list[Record]] = {}
        seconds: dict[str, float] = {}
        with Runner(dirs, SEED_STEPS["mnist"], seeds, FUZZ_LIMITS, timeout=args.timeout, mem_cap_mb=args.mem_cap_mb) as run:
            for fam, inputs in fams.items():
                t0 = time.perf_counter()
                records[fam] = []
                for k, inp in enumerate(inputs):
                    records[fam].append(Record(inp, run(inp)))
                    if (k + 1) % 2000 == 0:
                        log(f"{fam}: {k + 1:,}/{len(inputs):,}")
                seconds[fam] = time.perf_counter() - t0
                log(f"{fam}: done in {seconds[fam]:.0f} s")
            t0 = time.perf_counter()
            records["random"] = campaign(args.random, seeds, run, args.hypothesis_seed)
            seconds["random"] = time.perf_counter() - t0
            restarts = run.restarts
        log(f"random: done in {seconds['random']:.0f} s")
    _write_report(args, argv, seeds, records, seconds, restarts, machine(), cpu_capability(), t_start)
    log(f"wrote {args.out}")


# a measurement of 2026-12-07 on the decoder of commit 9050cc2, not repeated by this script
BEFORE_NOTE = (
    "Not measured by this run: the decoder of commit 9050cc2 (before tiles._pop_raw_bytes checked a classical "
    "segment's byte count against the ANS stack), given the 13 `segment bytes` forgeries of tiny-tiled, each in a "
    "fresh process under a 6 GB address-space cap (`ulimit -v 6000000`), aborted on 4 of them with SIGABRT (exit "
    "134): 2^32 - 1 and 2^32 (\"memory allocation of 17179869184 bytes failed\"), 2^40 - 1 and 2^40 (\"memory "
    "allocation of 4398046511104 bytes failed\"); without the cap the 2^32 one was holding 2 GB and growing when "
    "it was stopped. This build refuses all four (\"a classical tile segment claims ... bytes; the ANS stack "
    "holds ...\").")


def _parses(blob: bytes) -> bool:
    try:
        container.unpack(blob)
        return True
    except VdmcodecError:
        return False


def _write_report(args, argv, seeds, records, seconds, restarts, m, cpu, t_start) -> None:
    import datetime
    import json
    import shlex
    import statistics
    import sys

    everything = [r for rs in records.values() for r in rs]
    total = summarize(everything)
    kinds = ["refused", "decoded-identical", *FAILURES]
    cmd = shlex.join(["python", "-m", "benchmarks.fuzzing"] + (sys.argv[1:] if argv is None else list(argv)))
    L = ["# Fuzzing the decoder: structured forgeries and random mutations", "",
         f"Command: `OMP_NUM_THREADS=1 nice -n 10 {cmd}`", "",
         f"Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}", "",
         f"Machine: {m['cpu']} ({m['cpu_count']} logical CPUs, shared with other work: load {m['load_average_1min']:.1f}), "
         f"torch {m['torch']} at 1 thread, Python {m['python']}, numpy {m['numpy']}, "
         f"Pillow {m['pillow']}, imagecodecs {m['imagecodecs']}, {m['platform']}", "",
         f"**{total['inputs']:,} inputs, {sum(total['by_kind'].get(k, 0) for k in FAILURES)} failures** (crash: the worker "
         "died, by a signal or otherwise; exception: a traceback of any type but the codec's own errors; "
         "multiline-message; timeout: a hang; decoded-different: pixels other than the seed's). "
         f"Each input decoded in one worker process (restarted {restarts} times) with a {args.timeout:g} s timeout, "
         f"an address-space cap of {args.mem_cap_mb} MB above its idle size and DecodeLimits(max_steps="
         f"{FUZZ_LIMITS.max_steps}, max_subpixels={FUZZ_LIMITS.max_subpixels:,}, max_threads={FUZZ_LIMITS.max_threads}).", "",
         "Seed archives (valid, written by this build; the two `-structure` / `-jpeg` ones carry a forged prior record):", ""]
    for sd in seeds:
        h = container.unpack(sd.blob)[0]
        L.append(f"- {sd.name}: {len(sd.blob):,} bytes, " + ", ".join(f"{meth} x{n}" for meth, n in h.methods)
                 + (f", T = {h.steps}, model {sd.model}" if h.model else ", no model")
                 + (f", tile side {h.tile}" if h.tiled else ""))
    L += ["", "Models: untrained tiny gray and RGB models (8 channels, the test suite's; made by the run) and the "
          "shipped MNIST model. Families (benchmarks/fuzzing.py): `field`: every field the header parser reads "
          "(its trace) set to 0, 1, 2, its value +-1, its limit -1, the limit, the limit + 1, 2^32 - 1, 2^32, 2^40, "
          "2^63 - 1, 2^64 - 1 and an 11-byte varint (single bytes: 0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF, the value "
          "+-1; hashes and strings: zeros, 0xFF, reversed, removed); `frame`: every version byte, the header length at "
          "extremes, a wrong or missing CRC; `payload`: extended by 1 to 4096 bytes, first and last words at 0, 1, "
          "2^31 - 1, 2^31, 2^32 - 1, halves swapped, words reversed, emptied, every other seed's payload; `swap`: "
          "tile segments reversed and rotated within bands, bands reversed, each segment's method replaced by "
          "every other, classical sizes, shapes, methods, chunks, structure records reversed; `truncation`: "
          f"the seeds {', '.join(TRUNCATED)} cut at every byte offset, and their payloads cut at every byte under a "
          "recomputed CRC; `random`: the hypothesis-driven mutations of benchmarks/reliability.py (bit flips, byte "
          f"edits, splices, field edits; hypothesis seed {args.hypothesis_seed}). All but the bad-CRC inputs carry "
          "a correct CRC-32, so that they reach the parser and the decoder. The format has no signed field; "
          "the nearest to a negative value is a varint of 2^63 or more and all-0xFF bytes.", "",
          "| family | inputs | " + " | ".join(kinds) + " | seconds |", "|---|---:|" + "---:|" * len(kinds) + "---:|"]
    for fam, rs in records.items():
        s = summarize(rs)
        L.append(f"| {fam} | {len(rs):,} | " + " | ".join(f"{s['by_kind'].get(k, 0):,}" for k in kinds)
                 + f" | {seconds[fam]:.0f} |")
    L.append(f"| **all** | **{len(everything):,}** | " + " | ".join(f"**{total['by_kind'].get(k, 0):,}**" for k in kinds)
             + f" | {sum(seconds.values()):.0f} |")
    L += ["", "Refusals by error type: " + ", ".join(f"{k} {v:,}" for k, v in sorted(total["by_error"].items(),
                                                                                       key=lambda kv: -kv[1])) + ".", ""]
    reached = [r for r in everything if r.outcome.kind == "refused" and _parses(r.input.blob)]
    L += [f"Refused after the container accepted the header (by the decoder: payload, ANS stack, chain, classical "
          f"streams, checksum): {len(reached):,}; the other refusals came from the container's parser and checks.", ""]
    msgs: dict[str, int] = {}
    for r in everything:
        if r.outcome.kind == "refused":
            key = r.outcome.message.split("(")[0].strip()[:70]
            msgs[key] = msgs.get(key, 0) + 1
    L += ["Most frequent refusal messages (up to the first parenthesis):", "", "| message | inputs |", "|---|---:|"]
    L += [f"| {msg} | {n:,} |" for msg, n in sorted(msgs.items(), key=lambda kv: -kv[1])[:15]]
    sl = total["slowest"]
    times = [r.outcome.seconds for r in everything]
    peaks = sorted(r.outcome.peak_mb for r in everything if r.outcome.peak_mb >= 0)
    L += ["", f"Time per input: median {statistics.median(times) * 1e3:.2f} ms, mean {statistics.fmean(times) * 1e3:.1f} ms, "
          f"slowest {sl.outcome.seconds:.2f} s ({sl.input.source}, `{sl.input.how}` -> {sl.outcome.kind}). "
          + (f"Peak resident memory above the worker's idle level: median {statistics.median(peaks):.1f} MB, "
             f"max {peaks[-1]:.1f} MB." if peaks else ""), ""]
    if total["failures"]:
        L += ["Failures:", ""] + [f"- {r.input.source} `{r.input.how}`: {r.outcome.kind} {r.outcome.error}: "
                                  f"{r.outcome.message[:160]}" for r in total["failures"][:50]]
    else:
        L += ["No crash, no signal, no traceback, no hang, no wrong pixels."]
    L += ["", BEFORE_NOTE, "", f"Total: {(time.perf_counter() - t_start) / 60:.1f} min."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(L) + "\n")
    raw = {"machine": m, "cpu": cpu, "args": {k: str(v) for k, v in vars(args).items()},
           "families": {fam: {"inputs": len(rs), "by_kind": summarize(rs)["by_kind"], "seconds": seconds[fam]}
                        for fam, rs in records.items()},
           "failures": [dataclasses.asdict(r.outcome) | {"how": r.input.how, "source": r.input.source}
                        for r in total["failures"]]}
    args.out.with_suffix(".json").write_text(json.dumps(raw, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
