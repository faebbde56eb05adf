"""The `vdmcodec` command line: a thin typer shell over the library."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from cli.device import device_option

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="vdmcodec: lossless image compression with a Variational Diffusion Model.")


def _fail(msg: str, code: int = 1):
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def run_guarded(fn):
    """Run fn, turning the library's errors into a one-line message and exit code."""
    from vdmcodec.errors import VdmcodecError

    try:
        return fn()
    except (typer.Exit, typer.Abort):
        raise
    except VdmcodecError as e:
        _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except MemoryError:
        _fail("out of memory")
    except OSError as e:
        _fail(f"{e.filename or ''}: {e.strerror or e}".lstrip(": "))
    except Exception as e:  # a bug, not bad input: still one line (VDMCODEC_DEBUG=1 for the traceback)
        if os.environ.get("VDMCODEC_DEBUG"):
            raise
        _fail(f"internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} (set VDMCODEC_DEBUG=1 for details)")


def _print_version(value: bool) -> None:
    if value:
        from vdmcodec import __version__

        typer.echo(f"vdmcodec {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")):
    """vdmcodec: lossless image compression with a Variational Diffusion Model."""


@app.command()
def train(
    data: List[Path] = typer.Option(..., help="Training data: MNIST IDX, CIFAR batch, .npy/.npz, or an image folder; repeat for several."),
    out: Path = typer.Option(..., help="Output directory (checkpoint, weights, log)."),
    val: Optional[List[Path]] = typer.Option(None, help="Validation data (same formats); repeat for several. Must not share an image with --data."),
    data_range: Optional[str] = typer.Option(None, help="Slice of the training data, START:STOP (e.g. 0:8000); only with one --data."),
    val_range: Optional[str] = typer.Option(None, help="Slice of the validation data, e.g. 8000:9000; only with one --val."),
    steps: Optional[int] = typer.Option(None, min=1, help="Train until this many steps in total (default: config)."),
    config: Optional[Path] = typer.Option(None, help="Run config file (JSON or TOML) with 'model' and 'train' sections."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/checkpoint.pt."),
    init_from: Optional[str] = typer.Option(None, help="Start from this model's weights (shipped name or model directory); "
                                            "the config may add learned-variance outputs to it."),
    init_weights: str = typer.Option("ema", help="With --init-from: 'ema' starts a new run from its EMA weights; 'raw' continues "
                                     "its training from the raw weights it ships (raw.safetensors): same step count, fresh AdamW."),
    rewarm_steps: int = typer.Option(100, min=0, help="With --init-weights raw: learning-rate warm-up steps for the fresh optimiser."),
    name: Optional[str] = typer.Option(None, help="Model name recorded in the model card."),
    device: str = device_option("auto"),
    progress: bool = typer.Option(True, help="Show a progress bar."),
):
    """Train a VDM; resumable after a kill (--resume), also on another device than the one
    that wrote the checkpoint. Works under torchrun (DDP: gloo on CPU, nccl on CUDA, each rank
    on cuda:LOCAL_RANK).

    Example: vdmcodec train --data ../shared/data/mnist/mnist9k-images-idx3-ubyte.gz
    --data-range 0:8000 --val ../shared/data/mnist/mnist9k-images-idx3-ubyte.gz
    --val-range 8000:9000 --out runs/mnist --steps 20000

    Several paths: vdmcodec train --data ../shared/data/natural/CBSD68
    --data ../shared/data/natural/CUrban100 --val ../shared/data/natural/CSet14
    --val ../shared/data/natural/CSet5 --config configs/natural.json --out runs/natural
    """

    def go():
        from vdmcodec.training.config import load_config
        from vdmcodec.training.trainer import DataSpec, Trainer, parse_range

        cfg = load_config(config)
        if data_range and len(data) > 1:
            _fail("--data-range needs exactly one --data")
        if val_range and len(val or []) != 1:
            _fail("--val-range needs exactly one --val")
        a, b = parse_range(data_range)
        va, vb = parse_range(val_range)
        specs = [DataSpec(p, a, b) for p in data]
        vspecs = [DataSpec(p, va, vb) for p in val or []]
        if init_weights not in ("ema", "raw") or (init_weights == "raw" and not init_from):
            _fail("--init-weights is 'ema' or 'raw', and 'raw' needs --init-from")
        raw = init_weights == "raw"
        trainer = Trainer(cfg, out, specs, vspecs or None, resume=resume, progress=progress,
                          card={"name": name or out.name}, init_from=None if raw else init_from, device=device)
        if raw:
            from vdmcodec.training.warmstart import restart_from_weights

            restart_from_weights(trainer, init_from, rewarm_steps)
        res = trainer.fit(steps)
        if trainer.dist.main:
            typer.echo(json.dumps({"step": res["step"], "out": str(out), "card": trainer.card()}))
        trainer.close()

    run_guarded(go)


@app.command("eval")
def eval_cmd(
    data: Path = typer.Option(..., help="Images: files, folder, MNIST IDX, CIFAR batch, .npy/.npz."),
    model: Optional[str] = typer.Option(None, help="Shipped model name or model directory (default: the default model)."),
    steps: Optional[int] = typer.Option(None, min=1, help="Also report the discrete-time bpd for T steps "
                                        "(at the level times compress uses for T: the card's, else uniform)."),
    limit: Optional[int] = typer.Option(None, min=1, help="Evaluate at most this many images."),
    data_range: Optional[str] = typer.Option(None, help="Slice of a dataset file, START:STOP."),
    t_samples: Optional[int] = typer.Option(None, min=1, help="With --steps: Monte-Carlo steps per image instead of all T."),
    seed: int = typer.Option(0, help="Noise seed."),
    batch_size: int = typer.Option(100, min=1, help="Images per network call."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of the summary lines."),
    device: str = device_option("cpu"),
    progress: bool = typer.Option(True, help="Show a progress bar (only when stderr is a terminal)."),
):
    """Negative ELBO in bits per dimension (mean +- standard error over images)."""

    def go():
        from vdmcodec.coding.levels import card_times
        from vdmcodec.data import load_items
        from vdmcodec.devices import parse_device
        from vdmcodec.evaluate import evaluate
        from vdmcodec.training.trainer import parse_range
        from vdmcodec.zoo import load_model

        m, info = load_model(model, device=parse_device(device))
        times = None if steps is None else card_times(info["card"], steps, info["dir"])
        a, b = parse_range(data_range)
        items = load_items([data])[a:b]
        if limit is not None:
            items = items[:limit]
        if not items:
            _fail(f"{data}: no images in the selection")
        bar = progress and not json_out and sys.stderr.isatty()
        res = evaluate(m, items, steps=steps, batch_size=batch_size, seed=seed, t_samples=t_samples, progress=bar,
                       times=times)
        res["model"] = info["name"]
        if steps is not None:
            res["level_times"] = "uniform" if times is None else "card"
        if json_out:
            typer.echo(json.dumps(res))
            return
        typer.echo(f"model {info['name']}: {res['images']} images, continuous {res['bpd_continuous']:.4f} +- {res['bpd_continuous_se']:.4f} bpd")
        if steps is not None:
            typer.echo(f"discrete T={steps} ({'uniform level times' if times is None else 'the card level times'}): "
                       f"{res['bpd_discrete']:.4f} +- {res['bpd_discrete_se']:.4f} bpd")

    run_guarded(go)


@app.command()
def models(json_out: bool = typer.Option(False, "--json", help="Print JSON.")):
    """List the shipped models (name, data, validation bpd, training steps, coding defaults, size)."""
    from vdmcodec.coding.codec import coding_defaults
    from vdmcodec.errors import ModelError
    from vdmcodec.zoo import read_card, shipped_models

    rows = []
    for d in shipped_models():
        card = read_card(d).get("card", {})
        size = sum(f.stat().st_size for f in d.iterdir() if f.is_file())
        try:
            coding_steps, arithmetic = coding_defaults({"dir": str(d), "card": card})
        except ModelError:  # a bad card: listed, and load_codec names the problem
            coding_steps, arithmetic = None, None
        rows.append({"name": d.name, "data": card.get("data"), "val_bpd": card.get("val_bpd_continuous"),
                     "steps": card.get("steps"), "coding_steps": coding_steps, "coding_arithmetic": arithmetic,
                     "fitted_levels": fitted_steps(card), "speed": card.get("coding_speed") or {}, "bytes": size})
    if json_out:
        typer.echo(json.dumps(rows))
        return
    if not rows:
        typer.echo("no shipped models")
    for r in rows:
        bpd = f"{r['val_bpd']:.4f}" if isinstance(r["val_bpd"], (int, float)) else "n/a"
        fitted = ",".join(map(str, r["fitted_levels"])) or "none"
        typer.echo(f"{r['name']:<12} data={r['data']}  val_bpd={bpd}  steps={r['steps']}  "
                   f"codes with T={r['coding_steps']} {r['coding_arithmetic']}  fitted levels for T={fitted}  "
                   f"size={r['bytes'] / 1e6:.1f} MB" + (f"  speed: {speed}" if (speed := describe_speed(r)) else ""))


def describe_speed(row: dict) -> str:
    """The card's measured coding speed (training.fit_speed), or ""."""
    from vdmcodec.training.fit_speed import describe

    return describe(row["speed"])


def fitted_steps(card: dict) -> list[int]:
    """The T for which a card lists fitted level times (compress --steps T uses them)."""
    found = set()
    if isinstance(card.get("coding_times"), list) and len(card["coding_times"]) > 1:
        found.add(len(card["coding_times"]) - 1)
    more = card.get("coding_times_more")
    found |= {int(t) for t in (more if isinstance(more, dict) else {}) if str(t).isdigit()}
    return sorted(found)


from cli.sampling import register as _register_sampling; _register_sampling(app)  # noqa: E402,E702


from cli.coding import register as _register_coding  # noqa: E402

_register_coding(app, run_guarded, _fail)
from cli.bench import register as _register_bench; _register_bench(app, run_guarded, _fail)  # noqa: E402,E702


def main():
    app()


if __name__ == "__main__":
    main()
