"""Crash safety of `vdmcodec compress` / `decompress`: kill the CLI part-way (SIGKILL) or
interrupt it (SIGINT, as Ctrl-C does) and inspect what it left.

The CLI runs in a child process (``python -m benchmarks.crashsafety child ...``) that can
pause at a chosen point so that the signal lands exactly there:

- ``fsync:N``: right after the N-th ``os.fsync`` (the N-th file's bytes are written and
  flushed, not yet given their name);
- ``push`` / ``pop``: inside the first call of the chain's encoder / decoder.

The child prints ``PAUSED`` and sleeps; the parent sends the signal and then checks that
the output location holds nothing new (no output, no temporary file, an overwritten
archive unchanged) and that the inputs are byte-for-byte what they were. Without a pause
point the signal lands after a given delay (a kill at an arbitrary moment).
"""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def tree_state(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``folder`` (hidden ones included), and
    folders as "<dir>"."""
    folder = Path(folder)
    if not folder.exists():
        return {}
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        out[rel] = "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@dataclass(frozen=True)
class Interrupted:
    """What an interrupted CLI run returned and left."""

    returncode: int
    stderr: str
    paused: bool          # the child reached its pause point before the signal
    seconds: float        # from start to exit


def run_interrupted(cli_args: list[str], sig: int, pause: str | None = None, delay: float = 0.0,
                    timeout: float = 300.0, env: dict | None = None) -> Interrupted:
    """Run ``vdmcodec CLI_ARGS`` in a child, send ``sig`` at its pause point (or after
    ``delay`` seconds), wait for it to exit."""
    cmd = [sys.executable, "-m", "benchmarks.crashsafety", "child", pause or "none", "--", *cli_args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    paused = False
    try:
        if pause is not None:
            line = proc.stdout.readline()  # blocks until PAUSED (or the child exits)
            paused = line.strip() == "PAUSED"
        else:
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                pass
        if proc.poll() is None:
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=timeout)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return Interrupted(proc.returncode, err, paused, time.perf_counter() - t0)


@dataclass(frozen=True)
class Scenario:
    name: str
    command: str                 # "compress" | "decompress"
    sig: int                     # signal.SIGKILL | signal.SIGINT
    pause: str | None = None     # pause point, or None: the signal lands after ``delay``
    delay: float = 0.0
    overwrite: bool = False      # compress --force over an existing archive


@dataclass(frozen=True)
class ScenarioResult:
    scenario: Scenario
    returncode: int
    last_line: str               # the last line on stderr
    paused: bool
    completed: bool              # the run exited 0 (the signal came after it finished)
    leftovers: tuple             # entries of the output location that differ from before
    inputs_unchanged: bool
    ok: bool
    note: str
    seconds: float               # from start to exit


def standard_scenarios() -> list[Scenario]:
    K, I = signal.SIGKILL, signal.SIGINT
    return [
        Scenario("compress killed while its archive is written", "compress", K, "fsync:1"),
        Scenario("compress --force killed while replacing an archive", "compress", K, "fsync:1", overwrite=True),
        Scenario("compress killed while encoding", "compress", K, "push"),
        Scenario("decompress killed while writing its images (2 staged)", "decompress", K, "fsync:2"),
        Scenario("decompress killed while decoding", "decompress", K, "pop"),
        Scenario("compress Ctrl-C while encoding", "compress", I, "push"),
        Scenario("compress Ctrl-C while its archive is written", "compress", I, "fsync:1"),
        Scenario("decompress Ctrl-C while decoding", "decompress", I, "pop"),
        Scenario("decompress Ctrl-C while writing its images", "decompress", I, "fsync:2"),
    ]


def run_scenario(sc: Scenario, work: Path, inputs: Path, archive: Path, model_dir: Path, steps: int,
                 expected: dict[str, "object"] | None = None) -> ScenarioResult:
    """Run one scenario in ``work`` (a fresh sub-folder per call). ``inputs``: a folder of
    images; ``archive``: a valid archive of them; ``expected``: {name: pixels}, the
    archive's images in order. With a pause point nothing may change in the output
    location; after a delayed kill, whatever output exists must be complete and exact."""
    import numpy as np
    from PIL import Image

    out = work / f"out-{len(list(work.glob('out-*')))}"
    out.mkdir()
    if sc.command == "compress":
        target = out / "a.vdmc"
        if sc.overwrite:
            target.write_bytes(b"the previous archive")
        args = ["compress", str(inputs), "-o", str(target), "--model", str(model_dir), "--steps", str(steps), "--no-progress"]
        args += ["--force"] if sc.overwrite else []
        watched, location = inputs, out
    else:
        target = out / "images"
        args = ["decompress", str(archive), "-o", str(target), "--model", str(model_dir), "--no-progress"]
        watched, location = archive.parent, out
    before_in, before_out = tree_state(watched), tree_state(location)
    res = run_interrupted(args, sc.sig, sc.pause, sc.delay)
    after_out = tree_state(location)
    lines = [ln for ln in res.stderr.replace("\r", "\n").splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    completed = res.returncode == 0
    notes = []
    changed = sorted(k for k in set(after_out) | set(before_out) if after_out.get(k) != before_out.get(k))
    ok_out = True
    if sc.pause is None and changed:
        # a kill at an arbitrary moment may land after the output was committed (the CLI then
        # still prints its summary): whatever is there must be complete and exact
        if sc.command == "compress":
            ok_out = _archive_exact(target, model_dir, expected)
            changed = [k for k in changed if k != "a.vdmc"]
            notes.append("the archive was complete, it decodes exactly" if ok_out else "the archive is WRONG")
        else:
            names = {str(Path("images") / n): px for n, px in (expected or {}).items()}
            present = [k for k in changed if k in names]
            ok_out = all(np.array_equal(np.asarray(Image.open(out / k)), names[k]) for k in present)
            changed = [k for k in changed if k not in names and after_out.get(k) != "<dir>"]
            notes.append(f"{len(present)} of {len(names)} images written, each exact" if ok_out else "written images WRONG")
    leftovers = tuple(changed)
    inputs_unchanged = tree_state(watched) == before_in
    ok = ok_out and not leftovers and inputs_unchanged
    if sc.pause is not None and not res.paused:
        ok, notes = False, notes + ["never reached its pause point"]
    if sc.sig == signal.SIGINT and not completed:
        one_line = sum(ln.startswith("error:") for ln in lines) == 1 and "Traceback" not in res.stderr
        good = res.returncode == 130 and last == "error: interrupted" and one_line
        ok = ok and good
        if not good:
            notes.append(f"exit {res.returncode}, stderr ends {last!r}")
    elif sc.sig == signal.SIGKILL and not completed and res.returncode != -signal.SIGKILL:
        notes.append(f"exit {res.returncode}")
    return ScenarioResult(sc, res.returncode, last, res.paused, completed, leftovers, inputs_unchanged, ok, "; ".join(notes),
                          res.seconds)


def _archive_exact(path: Path, model_dir: Path, expected) -> bool:
    import numpy as np

    from vdmcodec.coding.codec import decompress_file_bytes
    from vdmcodec.errors import VdmcodecError

    if not path.exists() or expected is None:
        return False
    try:
        got = {name: im for im, name in decompress_file_bytes(path.read_bytes(), model=model_dir)}
    except VdmcodecError:
        return False
    hwc = lambda a: a[..., None] if a.ndim == 2 else a  # noqa: E731 - a PNG read back as (H, W, 1)
    return got.keys() == expected.keys() and all(np.array_equal(hwc(got[k]), hwc(expected[k])) for k in got)


def _child(pause: str, cli_args: list[str]) -> None:
    """Run the CLI, pausing at ``pause`` (see the module docstring)."""
    # as in a terminal: SIGINT raises KeyboardInterrupt. A child of a background job (`cmd &`
    # in a script, as CI may run the tests) starts with SIGINT ignored and would never see it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    def hold():
        sys.stdout.write("PAUSED\n")
        sys.stdout.flush()
        time.sleep(3600)

    if pause.startswith("fsync:"):
        target, real, calls = int(pause.split(":")[1]), os.fsync, [0]

        def fsync(fd):
            real(fd)
            calls[0] += 1
            if calls[0] == target:
                hold()

        os.fsync = fsync
    elif pause in ("push", "pop"):
        from vdmcodec.coding.chain import DiffusionChain

        inner = getattr(DiffusionChain, pause)

        def paused(self, *a, **k):
            hold()
            return inner(self, *a, **k)

        setattr(DiffusionChain, pause, paused)
    elif pause != "none":
        raise SystemExit(f"unknown pause point {pause!r}")
    from cli.main import app

    app(cli_args, prog_name="vdmcodec")


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "child" and sys.argv[3] == "--":
        _child(sys.argv[2], sys.argv[4:])
    else:
        raise SystemExit("usage: python -m benchmarks.crashsafety child PAUSE -- CLI-ARGS...")
