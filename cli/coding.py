"""`vdmcodec compress`, `decompress` and `info`: thin commands over vdmcodec.coding."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from cli.device import device_option


def _note_slow_arithmetic(blob: bytes) -> None:
    """A file coded in bfloat16 must be decoded in bfloat16; say so where that is slow."""
    from vdmcodec.coding.chain import ARITHMETIC
    from vdmcodec.coding.container import unpack
    from vdmcodec.hardware import native_bf16

    header, _ = unpack(blob)
    if header.model is not None and ARITHMETIC[header.dtype].autocast is not None and not native_bf16():
        typer.echo(f"note: this file was coded in {header.dtype}, which this CPU runs without native bfloat16 "
                   "(about 100x slower than float32); decoding will take long", err=True)


def _png_bytes(pixels) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.ndim == 3 and pixels.shape[-1] == 1 else pixels).save(buf, format="PNG")
    return buf.getvalue()


def _set_threads(threads: Optional[int]) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def safe_relative(name: str) -> Path:
    """An archive's image name as a path inside the output folder (no escaping it)."""
    from vdmcodec.errors import FormatError

    p = Path(name)
    if p.is_absolute() or any(part in ("..", "") for part in p.parts) or not p.parts:
        raise FormatError(f"unsafe image name in archive: {name!r}")
    return p


def register(app: typer.Typer, run_guarded, fail) -> None:
    @app.command()
    def compress(
        inputs: List[Path] = typer.Argument(..., help="Image files, folders (recursive), MNIST IDX, CIFAR batches or .npy/.npz."),
        output: Path = typer.Option(..., "-o", "--output", help="The .vdmc file to write."),
        model: Optional[str] = typer.Option(None, help="Shipped model name or model directory (default: the default model)."),
        steps: Optional[int] = typer.Option(None, min=1, max=100000, help="T, the number of diffusion steps to code with "
                                            "(default: the model card's, see `vdmcodec models`; more steps: a smaller "
                                            "file in proportionally more time, e.g. 128 on natural)."),
        arithmetic: Optional[str] = typer.Option(None, help="The network's arithmetic: float32, float32-nhwc, "
                                                 "bfloat16-nhwc or portable (default: the model card's). Float files "
                                                 "decode only on a CPU of the encoder's SIMD level; portable ones on "
                                                 "any CPU at any thread count, several times slower. The decoder "
                                                 "follows the file."),
        force: bool = typer.Option(False, "--force", help="Overwrite an existing output file (never an input)."),
        threads: Optional[int] = typer.Option(1, min=1, max=1024, help="torch threads for the network; recorded in the "
                                              "file, whose decoder runs the same count. 1 (the default) decodes on "
                                              "any machine and was faster than 2 for the network's small batches here."),
        preflight: bool = typer.Option(True, help="Estimate the model's rate on a few crops of each large image "
                                       "first and code classically, without the diffusion chain, those whose "
                                       "classical file is far smaller (--no-preflight: run the chain on every image "
                                       "the model can code)."),
        json_out: bool = typer.Option(False, "--json", help="End stdout with one JSON object."),
        device: str = device_option("cpu"),
        progress: bool = typer.Option(True, help="Show a progress bar."),
    ):
        """Compress images losslessly into one archive. The file appears only when complete
        (a kill or Ctrl-C leaves nothing, and an existing file stays as it was).

        Example: vdmcodec compress samples/mnist -o digits.vdmc
        """

        def go():
            _set_threads(threads)
            from vdmcodec.coding import classical
            from vdmcodec.coding.chain import ARITHMETIC
            from vdmcodec.coding.codec import load_codec
            from vdmcodec.data import iter_inputs, load_items
            from vdmcodec.devices import parse_device

            dev = parse_device(device)
            if arithmetic is not None and arithmetic not in ARITHMETIC:
                fail(f"--arithmetic must be one of {', '.join(ARITHMETIC)}, got {arithmetic!r}")
            out = output.resolve()
            if any(out == f.resolve() for f, _ in iter_inputs(list(inputs))):
                fail(f"{output}: is one of the inputs; refusing to overwrite an input")
            if output.exists() and not force:
                fail(f"{output}: exists (use --force to overwrite)")
            if output.exists() and output.is_dir():
                fail(f"{output}: is a folder")
            items = load_items(list(inputs))
            from vdmcodec.coding.preflight import PreflightConfig

            codec = load_codec(model, arithmetic=arithmetic, preflight=PreflightConfig() if preflight else None,
                               device=dev)
            blob = codec.compress([it.pixels for it in items], steps=steps, names=[it.name for it in items], progress=progress)
            from vdmcodec.zoo import atomic_write_bytes

            atomic_write_bytes(output, blob)
            dims = sum(it.pixels.size for it in items)
            png = sum(len(classical.encode(it.pixels, "png")) for it in items)
            res = {"images": len(items), "bytes": len(blob), "bpd": 8 * len(blob) / dims,
                   "png_bytes": png, "png_bpd": 8 * png / dims, "steps": steps or codec.steps,
                   "arithmetic": codec.arithmetic, "model": codec.info["name"], "output": str(output)}
            typer.echo(f"{len(items)} images -> {output}: {len(blob)} bytes, {res['bpd']:.4f} bpd "
                       f"(PNG: {png} bytes, {res['png_bpd']:.4f} bpd; {png / len(blob):.2f}x)")
            if json_out:
                typer.echo(json.dumps(res))

        run_guarded(go)

    @app.command()
    def decompress(
        archive: Path = typer.Argument(..., help="A .vdmc file."),
        output: Path = typer.Option(..., "-o", "--output", help="Folder to write PNG images into."),
        model: Optional[str] = typer.Option(None, help="Model name or directory (default: the one the file names)."),
        force: bool = typer.Option(False, "--force", help="Overwrite existing image files in the folder."),
        threads: Optional[int] = typer.Option(None, min=1, max=1024, help="torch threads. A file decodes bit-exactly only at "
                                              "the count it was coded with, used by default when this machine has that many CPUs."),
        device: str = typer.Option("cpu", "--device", help="Torch device for the network (auto, cpu, cuda or cuda:N). "
                                   "A file coded on a GPU in a float arithmetic decodes only on the same GPU and "
                                   "software, a CPU-coded one only on a CPU (refused up front otherwise); portable "
                                   "files on any. Default: cpu."),
        progress: bool = typer.Option(True, help="Show a progress bar."),
    ):
        """Restore the exact images of an archive as PNG files under their original names.

        Every image is decoded and verified before the first file is written; files appear
        only complete, and an error or Ctrl-C removes the ones already written."""

        def go():
            _set_threads(threads)
            from vdmcodec.coding.codec import decompress_file_bytes
            from vdmcodec.devices import parse_device
            from vdmcodec.files import write_files

            dev = parse_device(device)

            try:
                blob = archive.read_bytes()
            except OSError as e:
                fail(f"{archive}: {e.strerror}")
            if dev.type == "cpu":
                _note_slow_arithmetic(blob)
            images = decompress_file_bytes(blob, model=model, progress=progress, device=dev)
            targets = [output / safe_relative(name) for _, name in images]
            if output.exists() and not output.is_dir():
                fail(f"{output}: exists and is not a folder")
            clash = [t for t in targets if t.exists()]
            if clash and not force:
                fail(f"{clash[0]}: exists (use --force to overwrite); nothing was written")
            if len(set(targets)) != len(targets):
                fail("archive holds duplicate image names")
            write_files([(t, _png_bytes(pixels)) for (pixels, _), t in zip(images, targets)])
            typer.echo(f"{len(images)} images -> {output}")

        run_guarded(go)

    @app.command()
    def info(
        archive: Path = typer.Argument(..., help="A .vdmc file."),
        json_out: bool = typer.Option(False, "--json", help="Print the header as JSON."),
    ):
        """Print an archive's header: model, steps, images and how each was coded."""

        def go():
            from collections import Counter
            from dataclasses import asdict

            from vdmcodec.coding.container import unpack
            from vdmcodec.coding.structure import describe

            try:
                blob = archive.read_bytes()
            except OSError as e:
                fail(f"{archive}: {e.strerror}")
            header, payload = unpack(blob)
            methods = Counter(header.image_methods())
            d = asdict(header)
            d.update({"images": header.count, "bytes": len(blob), "payload_bytes": len(payload),
                      "method_counts": dict(methods)})
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

        run_guarded(go)
