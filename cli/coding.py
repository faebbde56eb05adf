"""`vdmcodec compress`, `decompress` and `info`: thin commands over vdmcodec.coding."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from cli.device import device_option


def _note_slow_arithmetic(blob: bytes) -> None:
    """A file coded in bfloat16 must be decoded in bfloat16; say so where that is slow."""
    from vdmcodec.coding.arithmetic import ARITHMETIC
    from vdmcodec.coding.container import unpack
    from vdmcodec.hardware import native_bf16

    header, _ = unpack(blob)
    if header.model is not None and ARITHMETIC[header.dtype].autocast is not None and not native_bf16():
        typer.echo(f"note: this file was coded in {header.dtype}, which this CPU runs without native bfloat16 "
                   "(about 100x slower than float32); decoding will take long", err=True)


def _binary(stream):
    """The byte stream under a text stream (sys.stdin / sys.stdout, or a test runner's)."""
    return getattr(stream, "buffer", stream)


def _stdio(name: str, fail):
    """sys.stdin or sys.stdout, refused in one line where the process was started with it closed
    (Python then sets it to None)."""
    import sys

    stream = getattr(sys, name)
    if stream is None:
        fail(f"standard {name[3:]}put is closed")
    return stream


def _read_archive(archive: Path, fail) -> bytes:
    """An archive's bytes from its file, or from standard input for ``-``."""
    if str(archive) == STDIO:
        return _binary(_stdio("stdin", fail)).read()
    try:
        return archive.read_bytes()
    except OSError as e:
        fail(f"{archive}: {e.strerror}")


def write_all(stream, data: bytes) -> None:
    """Write every byte of ``data`` to a binary stream and flush it. A buffered write may
    report fewer bytes than it was given (a pipe whose reader closed mid-write); the rest
    is written again, so that a lost reader ends in the next write's BrokenPipeError, never
    in a silently truncated output and exit status 0."""
    view = memoryview(data)
    while view:
        n = stream.write(view)
        if n is None:  # a raw stream in non-blocking mode: nothing could be written
            raise BlockingIOError("standard output would block")
        if n <= 0:
            raise BrokenPipeError("standard output accepted no more bytes")
        view = view[n:]
    stream.flush()


def _shown(name) -> str:
    """A file name for a one-line message: as it is where every character prints, else with
    Python's escapes (a newline in a name would split the line)."""
    name = str(name)
    return name if name.isprintable() else repr(name)[1:-1]


def _set_threads(threads: Optional[int]) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def safe_relative(name: str) -> Path:
    """An archive's image name as a path inside the output folder (no escaping it)."""
    from vdmcodec.errors import FormatError

    p = Path(name)
    if "\0" in name or p.is_absolute() or any(part in ("..", "") for part in p.parts) or not p.parts:
        raise FormatError(f"unsafe image name in archive: {name!r}")
    return p



STDIO = "-"


def _show(quiet: bool, progress: bool, json_out: bool = False) -> bool:
    """Progress bars: asked for, not quiet, no JSON, and only on a terminal."""
    import sys

    return progress and not quiet and not json_out and sys.stderr is not None and sys.stderr.isatty()


def output_problem(path: Path, force: bool) -> str | None:
    """Why ``path`` may not be (re)written as a file, or None. A symbolic link or a special
    file (device, pipe, socket) is never replaced, even with --force."""
    if path.is_symlink():
        return f"{path}: is a symbolic link; vdmcodec never replaces one (to write to standard output use -o -)"
    if path.is_dir():
        return f"{path}: is a folder"
    if path.exists() and not path.is_file():
        return f"{path}: is not a regular file (a device, pipe or socket); to write to standard output use -o -"
    if path.exists() and not force:
        return f"{path}: exists (use --force to overwrite)"
    return None


def register(app: typer.Typer, run_guarded, fail) -> None:
    @app.command()
    def compress(
        inputs: List[Path] = typer.Argument(..., help="Image files, folders (recursive), MNIST IDX, CIFAR batches or "
                                            ".npy/.npz. - reads ONE image file (any format Pillow reads) from "
                                            "standard input."),
        output: Path = typer.Option(..., "-o", "--output", help="The .vdmc file to write; - writes the archive to "
                                    "standard output."),
        model: Optional[str] = typer.Option(None, help="Shipped model name or model directory (default: the default model)."),
        steps: Optional[int] = typer.Option(None, min=1, max=100000, help="T, the number of diffusion steps to code with "
                                            "(default: the model card's, see `vdmcodec models`; more steps: a smaller "
                                            "file in proportionally more time, e.g. 128 on natural)."),
        effort: int = typer.Option(7, "-e", "--effort", min=1, max=9, help="Speed against size, as cjxl's: 1 is the "
                                   "fastest (classical codecs only up to 3), 9 the smallest. Sets the classical "
                                   "codecs' efforts and the diffusion steps T (the model card's table; 7: its "
                                   "default T). --steps overrides T."),
        arithmetic: Optional[str] = typer.Option(None, help="The network's arithmetic: float32, float32-nhwc, "
                                                 "bfloat16-nhwc, bfloat16 or portable (default: the model card's). Float files "
                                                 "decode only on a CPU of the encoder's SIMD level; portable ones on "
                                                 "any CPU at any thread count, several times slower. The decoder "
                                                 "follows the file."),
        force: bool = typer.Option(False, "--force", help="Overwrite an existing output file (never an input, a "
                                   "symbolic link or a special file)."),
        threads: Optional[int] = typer.Option(1, min=1, max=1024, help="torch threads for the network; recorded in the "
                                              "file, whose decoder runs the same count. 1 (the default) decodes on "
                                              "any machine and was faster than 2 for the network's small batches here."),
        preflight: bool = typer.Option(True, help="Estimate the model's rate on a few crops of each large image "
                                       "first and code classically, without the diffusion chain, those whose "
                                       "classical file is far smaller (--no-preflight: run the chain on every image "
                                       "the model can code)."),
        strip: bool = typer.Option(False, "--strip", help="Drop metadata: EXIF, ICC profiles, XMP, comments and PNG "
                                   "ancillary chunks (kept and written back by default). Pixels, mode, palette, "
                                   "transparency and frames are always kept."),
        json_out: bool = typer.Option(False, "--json", help="Print one JSON document (what was written, the method "
                                      "of every image) instead of the summary line."),
        quiet: bool = typer.Option(False, "-q", "--quiet", help="Print nothing but errors."),
        verbose: bool = typer.Option(False, "-v", "--verbose", help="Also print one line per image on stderr: mode, "
                                     "frames, how it was coded."),
        device: str = device_option("cpu"),
        progress: bool = typer.Option(True, help="Show a progress bar (only when stderr is a terminal)."),
    ):
        """Compress images losslessly into one archive. The file appears only when complete
        (a kill or Ctrl-C leaves nothing, and an existing file stays as it was).

        Kept: every pixel, the mode (1, L, P with its palette, LA, RGB, RGBA, 16-bit), every
        frame of an animated GIF, PNG or WebP, and metadata (EXIF, ICC, XMP, comments, PNG
        chunks) unless --strip. Inputs that would be restored under one name are refused.

        Example: vdmcodec compress samples/mnist -o digits.vdmc
        """

        def go():
            import sys

            _set_threads(threads)
            from vdmcodec.coding.arithmetic import ARITHMETIC
            from vdmcodec.coding.codec import load_codec
            from vdmcodec.coding.envelope import attach
            from vdmcodec.coding.preflight import PreflightConfig
            from vdmcodec.data import iter_inputs
            from vdmcodec.imagefile import compress_report, read_inputs, records_for
            from vdmcodec.devices import parse_device

            dev = parse_device(device)
            if arithmetic is not None and arithmetic not in ARITHMETIC:
                fail(f"--arithmetic must be one of {', '.join(ARITHMETIC)}, got {arithmetic!r}")
            to_stdout = str(output) == STDIO
            if to_stdout:
                if json_out:
                    fail("--json prints to standard output, which -o - fills with the archive: use one of them")
                if _stdio("stdout", fail).isatty():
                    fail("refusing to write an archive to a terminal: redirect standard output, or give -o FILE")
            else:
                out = output.resolve()
                if any(out == f.resolve() for f, _ in iter_inputs([p for p in inputs if str(p) != STDIO])):
                    fail(f"{output}: is one of the inputs; refusing to overwrite an input")
                problem = output_problem(output, force)
                if problem:
                    fail(problem)
            stdin = _binary(_stdio("stdin", fail)).read() if any(str(p) == STDIO for p in inputs) else None
            sources, input_bytes = read_inputs(list(inputs), strip=strip, stdin=stdin)
            codec = load_codec(model, arithmetic=arithmetic, preflight=PreflightConfig() if preflight else None,
                               device=dev)
            planes = [p for s in sources for p in s.planes]
            names = [s.name for s in sources for _ in s.planes]
            blob = codec.compress(planes, steps=steps, names=names, progress=_show(quiet, progress, json_out), effort=effort)
            blob = attach(blob, records_for(sources))
            if to_stdout:
                write_all(_binary(sys.stdout), blob)
            else:
                from vdmcodec.files import atomic_write_bytes

                atomic_write_bytes(output, blob)
            res = compress_report(blob, sources, input_bytes, codec, "-" if to_stdout else str(output), strip)
            if json_out:
                typer.echo(json.dumps(res))
                return
            if quiet:
                return
            for note in res["notes"]:
                typer.echo(f"note: {note}", err=True)
            if verbose:
                for f in res["files"]:
                    extra = f" + {'/'.join(f['extra_planes'])} planes" if f["extra_planes"] else ""
                    meta = f"; metadata: {', '.join(f['metadata'])}" if f["metadata"] else ""
                    typer.echo(f"{_shown(f['name'])}: {f['format']} {f['mode']}, {f['frames']} frame{'s' * (f['frames'] != 1)}, "
                               f"{f['method']}{extra}{meta}", err=True)
            ratio = res["input_bytes"] / res["bytes"]
            size = f"{ratio:.2f}x smaller" if ratio >= 1 else f"{1 / ratio:.2f}x larger"
            formats = ", ".join(f"{n} {fmt}" for fmt, n in res["input_formats"].items())
            typer.echo(f"{res['images']} images -> {res['output']}: {res['bytes']} bytes, {res['bpd']:.4f} bpd "
                       f"(input files: {res['input_bytes']} bytes, {formats}; {size})", err=to_stdout)

        run_guarded(go)

    @app.command()
    def decompress(
        archive: Path = typer.Argument(..., help="A .vdmc file; - reads it from standard input."),
        output: Path = typer.Option(..., "-o", "--output", help="Folder to write the images into; - writes the ONE "
                                    "image of a one-image archive to standard output (PNG bytes)."),
        model: Optional[str] = typer.Option(None, help="Model name or directory (default: the one the file names)."),
        force: bool = typer.Option(False, "--force", help="Overwrite existing image files in the folder (never a "
                                   "symbolic link or a special file)."),
        rename_duplicates: bool = typer.Option(False, "--rename-duplicates", help="Restore images whose name an "
                                               "earlier image of the archive holds as NAME-2.png, NAME-3.png, ... "
                                               "(archives written before duplicate names were refused)."),
        threads: Optional[int] = typer.Option(None, min=1, max=1024, help="torch threads. A file decodes bit-exactly only at "
                                              "the count it was coded with, used by default when this machine has that many CPUs."),
        quiet: bool = typer.Option(False, "-q", "--quiet", help="Print nothing but errors."),
        verbose: bool = typer.Option(False, "-v", "--verbose", help="Also print one line per image written."),
        device: str = typer.Option("cpu", "--device", help="Torch device for the network (auto, cpu, cuda or cuda:N). "
                                   "A file coded on a GPU in a float arithmetic decodes only on the same GPU and "
                                   "software, a CPU-coded one only on a CPU (refused up front otherwise); portable "
                                   "files on any. Default: cpu."),
        progress: bool = typer.Option(True, help="Show a progress bar (only when stderr is a terminal)."),
    ):
        """Restore the exact images of an archive under their original names, as PNG files
        (APNG for animations), with their mode, palette, frames and metadata.

        Every image is decoded and verified before the first file is written; files appear
        only complete, and an error or Ctrl-C removes the ones already written."""

        def go():
            import sys

            _set_threads(threads)
            from vdmcodec.coding.codec import decompress_file_bytes
            from vdmcodec.coding.container import unpack
            from vdmcodec.devices import parse_device
            from vdmcodec.files import write_files
            from vdmcodec.imagefile import file_names, restore_files

            dev = parse_device(device)
            to_stdout = str(output) == STDIO
            if to_stdout and _stdio("stdout", fail).isatty():
                fail("refusing to write image data to a terminal: redirect standard output, or give -o FOLDER")
            if not to_stdout and output.exists() and not output.is_dir():
                fail(f"{output}: exists and is not a folder")
            blob = _read_archive(archive, fail)
            if not quiet and dev.type == "cpu":
                _note_slow_arithmetic(blob)
            header, _ = unpack(blob)
            names = file_names(header)  # every check on the names before the (long) decoding
            if to_stdout and len(names) != 1:
                fail(f"the archive holds {len(names)} images and -o - writes one: give a folder")
            names, renamed = unique_names(names, rename_duplicates)
            if renamed is None:
                fail(f"archive holds image names that clash ({names}: two images, or an image and another's "
                     "folder); restore them with --rename-duplicates; nothing was written")
            targets = [output / safe_relative(n) for n in names]
            for t in targets if not to_stdout else []:
                problem = output_problem(t, force)
                if problem:
                    fail(f"{problem}; nothing was written")
            images = decompress_file_bytes(blob, model=model, progress=_show(quiet, progress), device=dev)
            files = restore_files(header, images)
            if to_stdout:
                write_all(_binary(sys.stdout), files[0].data)
                return
            write_files([(t, f.data) for f, t in zip(files, targets)])
            if quiet:
                return
            for old, new in renamed:
                typer.echo(f"note: a second image named {old} was written as {new}", err=True)
            if verbose:
                for f, t in zip(files, targets):
                    was = f" (was {_shown(f.source)})" if f.source else ""
                    typer.echo(f"{_shown(t)}: {f.mode}, {f.frames} frame{'s' * (f.frames != 1)}, {len(f.data)} bytes{was}", err=True)
            typer.echo(f"{len(files)} images -> {output}")

        run_guarded(go)

    @app.command()
    def info(
        archive: Path = typer.Argument(..., help="A .vdmc file; - reads it from standard input."),
        json_out: bool = typer.Option(False, "--json", help="Print the header as JSON."),
    ):
        """Print an archive's header: model, steps, images and how each was coded."""

        def go():
            from collections import Counter
            from dataclasses import asdict

            from vdmcodec.coding.container import unpack
            from vdmcodec.coding.envelope import records_of
            from vdmcodec.coding.priors import describe

            blob = _read_archive(archive, fail)
            header, payload = unpack(blob)
            records = records_of(header)
            methods = Counter(header.image_methods())
            d = asdict(header)
            d.pop("envelope")
            d.update({"images": header.count, "bytes": len(blob), "payload_bytes": len(payload),
                      "method_counts": dict(methods), "version": blob[4],
                      "records": [{"start": r.start, "mode": r.mode, "frames": r.frames, "source": r.source,
                                   "animated": r.animation is not None, "extra_planes": [p.method for p in r.planes],
                                   "metadata": [m.chunk.decode("latin-1") if m.kind == "png" else m.kind for m in r.metadata]}
                                  for r in records]})
            if json_out:
                typer.echo(json.dumps(d))
                return
            dims = sum(h * w * c for h, w, c in header.image_shapes())
            typer.echo(f"{archive}: {header.count} images, {len(blob)} bytes, {8 * len(blob) / dims:.4f} bpd")
            if header.model is not None:
                typer.echo(f"model: {header.model} (weights {header.model_hash}...)  steps: {header.steps}  grid_bits: {header.grid_bits}")
                typer.echo("levels: " + ("uniform" if header.levels is None else
                                         f"the model card's fitted coding_times (sha256 {header.levels}...)"))
                typer.echo(f"coded with torch {header.torch}, {header.threads} threads, {header.dtype}"
                           + (f" on a GPU: {header.device}" if header.device else ""))
                if header.structures:
                    used = [describe(p) for p in header.structures if p is not None]
                    typer.echo(f"structure priors: {len(used)} of {len(header.structures)} tiled images ({'; '.join(sorted(set(used)))})")
            else:
                typer.echo("model: none (every image is coded classically)")
            typer.echo("methods: " + ", ".join(f"{m} x{n}" for m, n in methods.items()))
            if records:
                modes = Counter(r.mode for r in records)
                frames = sum(r.frames for r in records if r.animation is not None)
                typer.echo(f"image records: {len(records)} (modes {', '.join(f'{m} x{n}' for m, n in modes.items())}; "
                           f"{sum(r.animation is not None for r in records)} animations, {frames} frames; "
                           f"metadata on {sum(bool(r.metadata) for r in records)})")

        run_guarded(go)


def unique_names(names: list[str], rename: bool) -> tuple[list[str], list[tuple[str, str]] | None]:
    """(names, renames), each name as the relative path it is written to (``safe_relative``:
    ``./a.png`` and ``a.png`` are one file). Two images clash where they name the same file,
    or where one's file is a folder of another's (``q.png`` and ``q.png/z.png``). Without
    ``rename``: (the first clashing name, None). With it: each clashing image but the first of
    a name becomes STEM-2.SUFFIX, STEM-3.SUFFIX, ... (a name no image of the archive holds,
    nor any folder of one), listed in renames; a file that is another image's folder is
    renamed whichever comes first."""
    paths = [safe_relative(n).as_posix() for n in names]
    folders = {q.as_posix() for n in paths for q in Path(n).parents if q != Path(".")}
    taken, out, renamed = set(paths) | folders, [], []
    used: set[str] = set()
    for n in paths:
        if n in used or n in folders:
            if not rename:
                return n, None
            p = Path(n)
            k = 2
            while p.with_name(f"{p.stem}-{k}{p.suffix}").as_posix() in taken:
                k += 1
            new = p.with_name(f"{p.stem}-{k}{p.suffix}").as_posix()
            taken.add(new)
            renamed.append((n, new))
            n = new
        used.add(n)
        out.append(n)
    return out, renamed
