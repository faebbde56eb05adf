"""`vdmcodec bench`: vdmcodec against classical lossless codecs on the user's images."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

from cli.device import device_option


def register(app: typer.Typer, run_guarded, fail) -> None:
    @app.command()
    def bench(
        data: Path = typer.Option(..., help="Images: files, folder (recursive), MNIST IDX, CIFAR batch, .npy/.npz."),
        model: Optional[str] = typer.Option(None, help="Shipped model name or model directory (default: the default model)."),
        steps: Optional[int] = typer.Option(None, min=1, max=100000, help="T, the diffusion steps to code with (default: the codec's)."),
        limit: Optional[int] = typer.Option(None, min=1, help="Use at most this many images (the first ones)."),
        seed: int = typer.Option(0, help="Noise seed of the ELBO estimate."),
        json_out: bool = typer.Option(False, "--json", help="End stdout with one JSON object (all raw numbers)."),
        device: str = device_option("cpu"),
        progress: bool = typer.Option(True, help="Show progress bars (on stderr)."),
    ):
        """Compress the same images with vdmcodec (one archive, and each image alone), the
        model's ELBO estimate, PNG, WebP, JPEG-LS, JPEG 2000, JPEG XL, lzma and bzip2;
        every codec is decoded and compared. Prints a table of bytes, bits per subpixel and
        speed. JPEG-LS / 2000 / XL need imagecodecs (a dependency) and are
        skipped with a note without it.

        Example: vdmcodec bench --data samples/mnist --steps 16
        """

        def go():
            from vdmcodec.bench import compare, format_speed, format_table, speed_summary
            from vdmcodec.coding.codec import load_codec
            from vdmcodec.data import load_items
            from vdmcodec.devices import parse_device

            dev = parse_device(device)
            items = load_items([data], limit=limit)
            t0 = time.perf_counter()
            codec = load_codec(model, device=dev)
            load_s = time.perf_counter() - t0
            res = compare(codec, [it.pixels for it in items], steps=steps, seed=seed, progress=progress)
            res["speed"] = speed_summary(res, load_s)
            res["data"] = str(data)
            for line in format_table(res) + [""] + format_speed(res["speed"]):
                typer.echo(line)
            for name, why in res["skipped"].items():
                typer.echo(f"note: {name} skipped: {why}", err=True)
            if json_out:
                typer.echo(json.dumps(res))
            failed = [r["method"] for r in res["rows"] if r.get("roundtrip") is False]
            if failed:
                fail(f"round trip failed for: {', '.join(failed)}")

        run_guarded(go)
