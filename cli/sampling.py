"""`vdmcodec sample` and `vdmcodec samplers`: thin commands over vdmcodec.sampling."""
from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Optional

import typer

from cli.device import device_option


def _parse_size(text: str) -> tuple[int, int]:
    from vdmcodec.errors import VdmcodecError

    parts = text.lower().replace("×", "x").split("x")
    try:
        h, w = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    except (ValueError, IndexError):
        raise VdmcodecError(f"--size must be N or HxW (got {text!r})") from None
    if len(parts) > 2 or h < 1 or w < 1:
        raise VdmcodecError(f"--size must be N or HxW with positive sides (got {text!r})")
    return h, w


def _card_size(card: dict, model_dir: str | None = None) -> tuple[int, int] | None:
    """The card's image_size, else the validation crop size of the model's training run
    (run.json train.val_patch_size, e.g. 64 for the photo model)."""
    size = card.get("image_size")
    if size is None and model_dir is not None:
        import json

        try:
            size = json.loads((Path(model_dir) / "run.json").read_text())["train"]["val_patch_size"]
        except (OSError, ValueError, KeyError, TypeError):
            size = None
    if isinstance(size, int):
        return size, size
    if isinstance(size, (list, tuple)) and len(size) >= 2:
        return int(size[-2]), int(size[-1])
    if isinstance(size, str):
        return _parse_size(size)
    return None


def sample(
    sampler: str = typer.Option(..., "--sampler", help="Sampler name (see `vdmcodec samplers`)."),
    steps: int = typer.Option(..., "--steps", min=1, help="Number of steps (noise levels visited; the last one goes to sigma=0)."),
    n: int = typer.Option(..., "-n", "--num", min=1, help="Number of samples."),
    out: Path = typer.Option(..., "-o", "--out", help="Output PNG: a grid of the samples."),
    model: Optional[str] = typer.Option(None, help="Shipped model name or model directory (default: the default model)."),
    schedule: str = typer.Option("karras", help="Noise-level schedule: model, karras, loglinear, exponential, vp or adaptive."),
    seed: int = typer.Option(0, min=0, help="Seed; sample i uses the noise keyed by (seed, i), whatever the batch size."),
    npz: Optional[Path] = typer.Option(None, help="Also write the raw samples (float64, data scale (-1, 1)) and pixels as .npz."),
    eta: Optional[float] = typer.Option(
        None, min=0.0, help="ddim: eta in [0, 1] (default 0); euler-ancestral, dpmpp-2s-ancestral, dpmpp-2m-sde, "
                            "dpmpp-3m-sde: noise scale eta >= 0 (default 1)."),
    s_noise_k: Optional[float] = typer.Option(None, "--noise-scale", min=0.0,
                                              help="k-diffusion samplers' s_noise (default 1)."),
    solver_type: Optional[str] = typer.Option(None, "--solver-type", help="dpmpp-2m-sde: midpoint|heun (default midpoint)."),
    order: Optional[int] = typer.Option(None, min=1, max=4, help="lms, ipndm: order 1-4 (default 4); unipc: 1-3 (default 2)."),
    variant: Optional[str] = typer.Option(None, help="unipc: B(h) variant bh1|bh2 (default bh2)."),
    corrector: Optional[bool] = typer.Option(None, "--corrector/--no-corrector", help="unipc: run the corrector UniC (default on)."),
    sigma_min: Optional[float] = typer.Option(None, "--sigma-min", min=0.0, help="Schedule's lowest noise level (default: the model's)."),
    sigma_max: Optional[float] = typer.Option(None, "--sigma-max", min=0.0, help="Schedule's highest noise level (default: the model's)."),
    start: str = typer.Option("prior", help="Start distribution: prior (the model's own N(0, I) prior, in VE x = z/alpha) or edm (N(0, sigma_max^2))."),
    variance: Optional[str] = typer.Option(None, help="ancestral: reverse variance small|large|learned (default small)."),
    s_churn: Optional[float] = typer.Option(None, "--s-churn", min=0.0, help="edm: S_churn (default 0)."),
    s_tmin: Optional[float] = typer.Option(None, "--s-tmin", min=0.0, help="edm: S_tmin (default 0)."),
    s_tmax: Optional[float] = typer.Option(None, "--s-tmax", min=0.0, help="edm: S_tmax (default inf)."),
    s_noise: Optional[float] = typer.Option(None, "--s-noise", min=0.0, help="edm: S_noise (default 1)."),
    rho: Optional[float] = typer.Option(None, min=0.0, help="karras schedule: rho (default 7)."),
    trained_steps: Optional[int] = typer.Option(
        None, "--trained-steps", min=1,
        help="model schedule: pick STEPS of the T+1 levels of a T-step model (iDDPM respacing; "
             "--steps T+1 is the full chain)."),
    size: Optional[str] = typer.Option(None, help="Image size N or HxW (default: the model card's image_size, else the "
                                                  "training run's validation crop, else 28x28)."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Samples per network call."),
    device: str = device_option("cpu"),
    force: bool = typer.Option(False, "--force", help="Overwrite existing output files."),
    progress: bool = typer.Option(True, help="Show a progress bar over the steps."),
):
    """Draw samples from a model and write them as a PNG grid (and optionally .npz).

    Examples:

      vdmcodec sample --sampler heun --steps 18 -n 16 -o samples.png

      vdmcodec sample --model runs/mnist --sampler ancestral --schedule model --steps 1001 --trained-steps 1000 --variance large -n 64 -o ddpm.png --npz ddpm.npz

      vdmcodec sample --sampler edm --s-churn 40 --s-tmin 0.05 --s-tmax 50 --s-noise 1.003 --steps 32 -n 16 -o edm.png

      vdmcodec sample --sampler dpmpp-2m --schedule adaptive --steps 12 -n 16 -o dpm.png

      vdmcodec sample --sampler dpmpp-2m-sde --steps 35 -n 64 -o sde.png

      vdmcodec sample --model natural --sampler dpmpp-2m-sde --steps 35 -n 16 -o photos.png
    """
    from cli.main import run_guarded

    def go():
        import numpy as np
        from PIL import Image
        from tqdm.auto import tqdm

        from vdmcodec.devices import parse_device
        from vdmcodec.errors import VdmcodecError
        from vdmcodec.sampling import (SCHEDULES, START_DISTRIBUTIONS, VDMDenoiser, adaptive_sigmas,
                                       cached_score_optimal_cost, generate, get_sampler, image_grid, make_sigmas,
                                       to_pixels)
        from vdmcodec.sampling.registry import lookup, make_options
        from vdmcodec.zoo import atomic_write_bytes, load_model

        # validate everything cheap before loading the model
        info = get_sampler(sampler)
        lookup(SCHEDULES, schedule, "schedule")
        options = {k: v for k, v in {"eta": eta, "variance": variance, "S_churn": s_churn, "S_tmin": s_tmin,
                                     "S_tmax": s_tmax, "S_noise": s_noise, "s_noise": s_noise_k,
                                     "solver_type": solver_type, "order": order, "variant": variant,
                                     "corrector": corrector}.items() if v is not None}
        make_options(info.options, options, f"sampler {info.name!r}")
        if start not in START_DISTRIBUTIONS:
            raise VdmcodecError(f"unknown --start {start!r}; choose one of: {', '.join(START_DISTRIBUTIONS)}")
        schedule_options = {}
        if sigma_min is not None or sigma_max is not None:
            if schedule == "model":
                raise VdmcodecError("--sigma-min/--sigma-max do not apply to --schedule model")
            schedule_options.update({k: v for k, v in {"sigma_min": sigma_min, "sigma_max": sigma_max}.items()
                                     if v is not None})
        if rho is not None:
            if schedule != "karras":
                raise VdmcodecError("--rho applies to --schedule karras only")
            schedule_options["rho"] = rho
        if trained_steps is not None:
            if schedule != "model":
                raise VdmcodecError("--trained-steps applies to --schedule model only")
            schedule_options["trained_steps"] = trained_steps
        for path in (out, npz):
            if path is not None and path.exists() and not force:
                raise VdmcodecError(f"{path} exists (use --force to overwrite)")
        hw = _parse_size(size) if size is not None else None
        dev = parse_device(device)

        m, minfo = load_model(model, device=dev)
        hw = hw or _card_size(minfo["card"], minfo["dir"]) or (28, 28)
        shape = (m.cfg.network.image_channels, *hw)
        denoiser = VDMDenoiser(m)
        if schedule == "adaptive":
            cost, cache = cached_score_optimal_cost(minfo["name"], minfo["sha256"], denoiser, shape,
                                                    progress=progress)
            typer.echo(f"adaptive schedule: {'cached in ' + str(cache) if cache else 'not cached (no writable place)'}",
                       err=True)
            rng = None
            if schedule_options:
                rng = (schedule_options.get("sigma_min", denoiser.sigma_min),
                       schedule_options.get("sigma_max", denoiser.sigma_max))
            sigmas = adaptive_sigmas(denoiser, steps, cost=cost, sigma_range=rng)
        else:
            sigmas = make_sigmas(schedule, denoiser, steps, **schedule_options)

        batches = -(-n // batch_size)
        bar = tqdm(total=batches * (len(sigmas) - 1), desc="sampling", unit="step", disable=not progress,
                   file=sys.stderr)
        try:
            x = generate(denoiser, info.name, sigmas, shape, count=n, seed=seed, batch_size=batch_size,
                         options=options, callback=lambda _: bar.update(1), device=dev, start=start)
        finally:
            bar.close()
        pixels = to_pixels(x)
        buf = io.BytesIO()
        Image.fromarray(image_grid(pixels)).save(buf, format="PNG")
        atomic_write_bytes(out, buf.getvalue())
        if npz is not None:
            buf = io.BytesIO()
            np.savez(buf, x=x.cpu().numpy(), pixels=pixels, sigmas=sigmas.numpy(), seed=np.int64(seed),
                     sampler=np.str_(info.name), schedule=np.str_(schedule), start=np.str_(start))
            atomic_write_bytes(npz, buf.getvalue())
        typer.echo(f"wrote {out}" + (f" and {npz}" if npz is not None else "") +
                   f": {n} samples {shape[0]}x{shape[1]}x{shape[2]} from {minfo['name']}, sampler {info.name}, "
                   f"schedule {schedule}, {steps} steps, seed {seed}")

    run_guarded(go)


def samplers():
    """List the samplers and noise-level schedules, one line each."""
    from vdmcodec.sampling import SAMPLERS, SCHEDULES

    for info in SAMPLERS.values():
        typer.echo(f"sampler   {info.name:<18} {info.description}")
    for info in SCHEDULES.values():
        typer.echo(f"schedule  {info.name:<18} {info.description}")


def register(app: typer.Typer) -> None:
    """Add the sampling commands to the `vdmcodec` app."""
    app.command("sample")(sample)
    app.command("samplers")(samplers)
