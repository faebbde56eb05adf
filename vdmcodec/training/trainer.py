"""The resumable VDM trainer: AdamW, EMA, gradient clipping, VDM's variance-minimising
schedule update, periodic validation bpd, checkpoints, and DistributedDataParallel.

Devices: ``device`` (devices.py: auto, cpu, cuda, cuda:N) runs the network; under torchrun
each rank takes cuda:LOCAL_RANK with nccl, or the CPU with gloo, and every tensor a
collective sees lives on that device (nccl has no CPU tensors). A checkpoint is device-free:
it is loaded onto the CPU (map_location="cpu") and what must move is moved, so a run
resumes on a CPU or a GPU whichever wrote it. It holds every rank's random state (torch,
CUDA, the noise generator, the crop sampler), and each rank restores its own. Validation
runs on rank 0 only (the EMA weights are the same on every rank). The card records the
device kind and its hours: CPU time on a CPU (``cpu_hours``, summed over ranks) and
wall-clock time x devices on a GPU (``gpu_hours``).

Output directory layout:
  checkpoint.pt          full training state (model, EMA, optimiser, step, RNG states)
  model.safetensors      EMA weights, with model.json (config + card): a model directory
  train.log              one JSON line per log/eval event
  run.json               the RunConfig used
"""
from __future__ import annotations

import copy
import gc
import io
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from ..data import PatchSampler, to_tensor
from ..devices import device_name, parse_device
from ..diffusion import VDM, low_discrepancy_t
from ..errors import DataError
from ..hardware import native_bf16
from ..likelihood import bpd_continuous, bpd_discrete, mean_and_stderr
from ..objective import Target, TimeSampling
from ..zoo import atomic_write_bytes, save_model
from .config import RunConfig
from .datasets import DataSpec, as_specs, check_disjoint, load_images, load_validation, parse_range  # noqa: F401  (re-exported)
from .augment import Augmenter
from .lr_schedule import learning_rate
from .resampler import LossSecondMomentResampler
from .warmstart import rewarm_factor, warm_start


class Distributed:
    """torchrun environment: rank/world from env vars; gloo on CPU, nccl on CUDA. Every
    collective goes through this class, on tensors on ``self.device``."""

    def __init__(self, device: str | torch.device | None = "auto"):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        self.device = parse_device(device, self.local_rank if self.enabled else None)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if self.enabled and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.enabled:
            dist.barrier()

    def mean(self, v: float) -> float:
        if not self.enabled:
            return v
        t = torch.tensor([v], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t) / self.world

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on one."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t)
        return bool(t.item() > 0)

    def average_(self, t: torch.Tensor) -> None:
        """Average a tensor over ranks in place (it must live on ``self.device``)."""
        if self.enabled:
            if t.device != self.device:
                raise RuntimeError(f"a collective on a {t.device} tensor; the backend's device is {self.device}")
            dist.all_reduce(t)
            t /= self.world

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's ``t`` (on ``self.device``), concatenated in rank order."""
        if not self.enabled:
            return t
        if t.device != self.device:
            raise RuntimeError(f"a collective on a {t.device} tensor; the backend's device is {self.device}")
        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    def gather_objects(self, obj) -> list:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def close(self):
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


class Trainer:
    def __init__(self, cfg: RunConfig, out: Path, data: DataSpec | list[DataSpec], val: DataSpec | list[DataSpec] | None = None,
                 resume: bool = False, progress: bool = True, card: dict | None = None,
                 init_from: str | Path | None = None, device: str | torch.device | None = "auto"):
        self.cfg, self.out, self.progress = cfg, Path(out), progress
        self.card_extra = card or {}
        self.dist = Distributed(device)
        tc = cfg.train
        if tc.threads:
            torch.set_num_threads(tc.threads)
        torch.manual_seed(tc.seed)
        self.device = self.dist.device
        # bf16 autocast where the hardware has it (hardware.py); float32 elsewhere
        self.bf16 = bool(tc.bf16 and native_bf16(self.device))
        if tc.bf16 and not self.bf16 and self.dist.main:
            print(f"note: config asks for bf16 but {self.device.type} here has no native bfloat16; training in float32",
                  file=sys.stderr, flush=True)
        # one or several training / validation paths (datasets.py); never overlapping
        self.data_specs, self.val_specs = as_specs(data), as_specs(val)
        check_disjoint(self.data_specs, self.val_specs)
        self.images = load_images(self.data_specs, tc.patch_size)
        self.sampler = PatchSampler(self.images, tc.patch_size, seed=tc.seed * 1000 + self.dist.rank,
                                    multiple=tc.crop_multiple)
        self.augment = Augmenter(tc.augment, tc.seed)
        self.val_images = None
        self.val_skipped = 0
        if self.val_specs and self.dist.main:  # validation runs on rank 0 only
            self.val_images, self.val_skipped = load_validation(self.val_specs, tc.val_patch_size or tc.patch_size,
                                                                tc.eval_images, cfg.model.network.image_channels)
        self.model = VDM(cfg.model).to(self.device)
        if self.dist.rank:  # the same initial weights on every rank, then each its own dropout stream
            torch.manual_seed(tc.seed * 1_000_003 + self.dist.rank)
        self.init_from: dict | None = None  # warm start (warmstart.py): the source model's record
        if init_from is not None:
            if resume:
                raise DataError("--init-from starts a run; a resumed run continues its own weights")
            self.init_from = warm_start(self.model, init_from)
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=tc.lr, betas=tc.adam_betas, weight_decay=tc.weight_decay)
        self.step = 0
        self.cpu_seconds = 0.0  # CPU time of the steps run on CPUs, summed over ranks
        self.gpu_seconds = 0.0  # wall-clock time x devices of the steps run on GPUs
        self.generator = torch.Generator().manual_seed(tc.seed * 7919 + self.dist.rank)
        self.eval_history: list[dict] = []
        obj = tc.objective
        self.resampler = (LossSecondMomentResampler(obj.is_bins, obj.is_history, obj.is_uniform_prob)
                          if obj.t_sampling is TimeSampling.importance else None)
        if resume:
            self._load_checkpoint()
        elif (self.out / "checkpoint.pt").exists():
            raise DataError(f"{self.out}: holds a checkpoint already; pass --resume to continue it, or choose another --out")
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.out / "run.json", (json.dumps(cfg.to_dict(), indent=2) + "\n").encode())
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        self.ddp = DDP(self.model, device_ids=device_ids) if self.dist.enabled else self.model
        self._stop = False

    # ---- state ------------------------------------------------------------------
    def _rng_state(self) -> dict:
        """This rank's random state: torch's CPU and CUDA generators, the noise generator
        and the crop sampler (CPU tensors and plain values only)."""
        return {"torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(self.device).cpu() if self.device.type == "cuda" else None,
                "generator": self.generator.get_state(), "sampler": self.sampler.state()}

    def _set_rng_state(self, st: dict) -> None:
        torch.set_rng_state(st["torch_rng"].cpu())
        if self.device.type == "cuda" and st.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(st["cuda_rng"].cpu(), self.device)
        self.generator.set_state(st["generator"].cpu())
        self.sampler.set_state(st["sampler"])

    def _state(self, ranks: list[dict] | None = None) -> dict:
        """The checkpoint: rank 0's random state at the top level (as checkpoints before
        per-rank states had it) and every rank's in ``rank_rng``."""
        mine = self._rng_state()
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "opt": self.opt.state_dict(),
            "generator": mine["generator"],
            "torch_rng": mine["torch_rng"],
            "sampler": mine["sampler"],
            "rank_rng": ranks if ranks is not None else [mine],
            "device": self.device.type,
            "cpu_seconds": self.cpu_seconds,
            "gpu_seconds": self.gpu_seconds,
            "eval_history": self.eval_history,
            "config": self.cfg.to_dict(),
            **({"init_from": self.init_from} if self.init_from else {}),
            **({"resampler": self.resampler.state_dict()} if self.resampler is not None else {}),
        }

    def _load_checkpoint(self):
        path = self.out / "checkpoint.pt"
        if not path.exists():
            raise DataError(f"{path}: no checkpoint to resume from")
        # onto the CPU whatever device wrote it: load_state_dict copies onto the parameters'
        # device (the optimiser's state follows its parameters), RNG states are CPU tensors
        st = torch.load(path, map_location="cpu", weights_only=False)
        self.model.load_state_dict(st["model"])
        self.ema.load_state_dict(st["ema"])
        self.opt.load_state_dict(st["opt"])
        self.step = st["step"]
        ranks = st.get("rank_rng") or [{k: st[k] for k in ("torch_rng", "generator", "sampler")}]
        if self.dist.rank < len(ranks):
            self._set_rng_state(ranks[self.dist.rank])
        else:  # a rank the checkpoint's run did not have (or a checkpoint from before per-rank states)
            tc = self.cfg.train
            self.sampler = PatchSampler(self.images, tc.patch_size, seed=self.step * 7 + self.dist.rank,
                                        multiple=tc.crop_multiple)
            self.generator.manual_seed(tc.seed * 7919 + self.dist.rank + 104_729 * self.step)
            torch.manual_seed(tc.seed * 1_000_003 + self.dist.rank + 104_729 * self.step)
        self.cpu_seconds = st.get("cpu_seconds", 0.0)
        self.gpu_seconds = st.get("gpu_seconds", 0.0)
        self.eval_history = st.get("eval_history", [])
        self.init_from = st.get("init_from")
        if self.resampler is not None and "resampler" in st:
            # (a checkpoint of a run without importance sampling starts a fresh, uniform one)
            self.resampler.load_state_dict(st["resampler"])

    def save(self):
        """Write the checkpoint and model directory (rank 0); every rank must call it, since
        it gathers the ranks' random states."""
        ranks = self.dist.gather_objects(self._rng_state())
        if not self.dist.main:
            return
        buf = io.BytesIO()
        torch.save(self._state(ranks), buf)
        atomic_write_bytes(self.out / "checkpoint.pt", buf.getvalue())
        save_model(self.out, self.ema, self.card())

    def card(self) -> dict:
        last = self.eval_history[-1] if self.eval_history else {}
        own_hours = self.cpu_seconds / 3600.0
        # a warm-started model's CPU-hours include its source's; steps are this run's own
        warm = {"init_from": self.init_from} if self.init_from else {}
        total_hours = own_hours + ((self.init_from or {}).get("cpu_hours") or 0.0)
        # device-hours: CPU time on CPUs (cpu_hours, as cards always had it), wall-clock x
        # devices on GPUs (gpu_hours, only once a GPU trained); "device" names this run's
        gpu = ({"gpu_hours": round(self.gpu_seconds / 3600.0, 3)} if self.gpu_seconds or self.device.type == "cuda"
               else {})
        if self.device.type == "cuda":
            gpu["gpu"] = device_name(self.device)
        return {
            **self.card_extra,
            "data": " + ".join(s.path.name for s in self.data_specs),
            "train_split": " + ".join(s.range_text() for s in self.data_specs),
            "val_split": " + ".join(s.describe() for s in self.val_specs) if self.val_specs else None,
            **({"val_skipped_images": self.val_skipped} if self.val_skipped else {}),
            "steps": self.step,
            "batch_size": self.cfg.train.batch_size * self.dist.world,
            "device": self.device.type,
            "cpu_hours": round(total_hours, 3),
            **gpu,
            **warm,
            "val_bpd_continuous": last.get("val_bpd"),
            "val_bpd_stderr": last.get("val_bpd_se"),
            "val_images": last.get("val_images"),
            "params": sum(p.numel() for p in self.model.parameters()),
        }

    def log(self, record: dict):
        if not self.dist.main:
            return
        with open(self.out / "train.log", "a") as f:
            f.write(json.dumps(record) + "\n")

    # ---- one step -----------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        tc = self.cfg.train
        return learning_rate(tc.lr, tc.lr_warmup, step, tc.lr_decay_start, tc.lr_decay_steps, tc.lr_min, tc.lr_decay_shape) * rewarm_factor(self.init_from, step)

    def train_step(self, x: torch.Tensor) -> dict:
        tc = self.cfg.train
        B = x.shape[0]
        dims = x[0].numel()
        obj = tc.objective
        t = low_discrepancy_t(B, self.generator, self.device, offset=self.dist.rank, world=self.dist.world)
        eps = torch.randn(x.shape, generator=self.generator).to(self.device)
        eps_0 = torch.randn(x.shape, generator=self.generator).to(self.device)
        is_weight = None
        if self.resampler is not None:
            t, is_weight = self.resampler.sample(t)
        x_extra = None
        if obj.target is Target.stf and obj.stf_reference > B:
            x_extra = to_tensor(self.augment(self.sampler.batch(obj.stf_reference - B), self.step,
                                             self.dist.world + self.dist.rank)).to(self.device)
        self.model.amp_dtype = torch.bfloat16 if self.bf16 else None
        terms = self.ddp(x, t, eps, eps_0, obj, is_weight, x_extra)
        L = terms.loss
        # optimise bpd (nats / dims / ln 2) so that the learning rate does not depend on size
        scale = 1.0 / (dims * math.log(2.0))
        loss = terms.objective.mean() * scale
        roots, grads = [loss], [None]
        ends, endpoint_fix = [], []
        if terms.gamma_t.requires_grad:
            # VDM: the schedule's interior minimises the variance of the diffusion loss
            # estimate, d E[L^2] / d eta = E[2 L dL/d eta]; the net and the endpoints
            # minimise the VLB (the endpoints' share of dL/d eta is not zero, the interior's is
            # in expectation).
            g_gamma, g_dgamma = torch.autograd.grad(loss, [terms.gamma_leaf, terms.dgamma_leaf], retain_graph=True)
            w = 2.0 * (L.loss_diff.detach() * scale)
            roots += [terms.gamma_t, terms.dgamma_dt]
            grads += [g_gamma * w, g_dgamma * w]
            # the endpoints get the VLB's gradient instead: add (VLB - variance) gradient
            ends = [p for p in self.model.gamma.endpoint_parameters() if p.requires_grad]
            if ends:
                endpoint_fix = torch.autograd.grad([terms.gamma_t, terms.dgamma_dt], ends,
                                                   [g_gamma * (1.0 - w), g_dgamma * (1.0 - w)],
                                                   retain_graph=True, allow_unused=True)
        self.opt.zero_grad(set_to_none=True)
        torch.autograd.backward(roots, grads)
        for p, fix in zip(ends, endpoint_fix):
            if fix is not None:
                self.dist.average_(fix)  # DDP averaged the backward's gradients: average this too
                p.grad = fix if p.grad is None else p.grad + fix
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        lr = self.lr_at(self.step)
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.opt.step()
        self._ema_update()
        self.model.amp_dtype = None
        if self.resampler is not None:
            trained = L.loss_diff.detach() + (terms.extra.detach() if terms.extra is not None else 0.0)
            self._update_resampler(t, trained if is_weight is None else trained / is_weight)
        elbo_diff = terms.elbo_diff * scale
        out = {
            "loss_bpd": float(loss.detach()),
            "recon_bpd": float(L.loss_recon.detach().mean() * scale),
            "prior_bpd": float(L.loss_prior.detach().mean() * scale),
            "diff_bpd": float(L.loss_diff.detach().mean() * scale),
            "diff_bpd_var": float(elbo_diff.var()),
            "grad_norm": float(gnorm),
            "lr": lr,
        }
        if not obj.is_default or terms.extra is not None:
            # the unweighted ELBO estimate beside the trained objective
            out["elbo_bpd"] = float((L.loss_recon.detach() + L.loss_prior.detach()).mean() * scale + elbo_diff.mean())
        if terms.extra is not None:
            out["extra_bpd"] = float(terms.extra.detach().mean() * scale)
        return out

    def _update_resampler(self, t: torch.Tensor, losses: torch.Tensor):
        """Every rank records every rank's losses (iDDPM's update_with_all_losses)."""
        self.resampler.update(self.dist.all_gather(t.to(self.device)), self.dist.all_gather(losses.to(self.device)))

    @torch.no_grad()
    def _ema_update(self):
        decay = min(self.cfg.train.ema_decay, (1 + self.step) / (10 + self.step))
        for pe, pm in zip(self.ema.parameters(), self.model.parameters()):
            pe.lerp_(pm.detach(), 1.0 - decay)
        for be, bm in zip(self.ema.buffers(), self.model.buffers()):
            be.copy_(bm)

    @torch.no_grad()
    def validate(self) -> dict:
        """Continuous-time validation bpd of the EMA model (fixed noise seed each time); a run
        that trains the discrete-time loss also reports its T-step bound at the uniform levels
        it trains (``val_bpd_T``: 4 stratified steps per image, so it costs 4 passes)."""
        if self.val_images is None:
            return {}
        T = self.cfg.train.objective.discrete_steps
        g = torch.Generator().manual_seed(12345)
        g_T = torch.Generator().manual_seed(12346)
        vals, vals_T = [], []
        for i in range(0, len(self.val_images), 100):
            x = to_tensor(self.val_images[i : i + 100]).to(self.device)
            vals.append(bpd_continuous(self.ema, x, g).total.cpu())
            if T:
                vals_T.append(bpd_discrete(self.ema, x, T, g_T, t_samples=min(4, T)).total.cpu())
        m, se = mean_and_stderr(torch.cat(vals))
        gamma_0, gamma_1 = float(self.ema.gamma.gamma_0), float(self.ema.gamma.gamma_1)
        out = {"val_bpd": m, "val_bpd_se": se, "val_images": len(self.val_images), "gamma_0": gamma_0, "gamma_1": gamma_1}
        if T:
            m_T, se_T = mean_and_stderr(torch.cat(vals_T))
            out.update({"val_steps": T, "val_bpd_T": m_T, "val_bpd_T_se": se_T})
        return out

    # ---- the loop -----------------------------------------------------------------
    def _on_signal(self, signum, frame):
        self._stop = True

    def fit(self, steps: int | None = None) -> dict:
        tc = self.cfg.train
        target = steps if steps is not None else tc.steps
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)} if self.dist.main else {}
        bar = None
        if self.dist.main and self.progress:
            from tqdm import tqdm

            bar = tqdm(total=target, initial=self.step, unit="step", dynamic_ncols=True, desc="train")
        self.model.train()
        last = {}
        t_start = self._clock()
        wall0 = time.time()
        try:
            while self.step < target and not self._stop_all():
                x = to_tensor(self.augment(self.sampler.batch(tc.batch_size), self.step, self.dist.rank)).to(self.device)
                last = self.train_step(x)
                self.step += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{last['loss_bpd']:.3f}", img_s=f"{bar.format_dict['rate'] * tc.batch_size if bar.format_dict.get('rate') else 0:.0f}")
                if self.step % tc.log_every == 0:
                    self.log({"step": self.step, "time": time.time(), "bf16": self.bf16, **last})
                if tc.eval_every and self.step % tc.eval_every == 0:
                    self._account(t_start)
                    t_start = self._clock()
                    ev = self.validate()
                    if ev:
                        gpu = {"gpu_hours": round(self.gpu_seconds / 3600, 4)} if self.gpu_seconds else {}
                        ev = {"step": self.step, "cpu_hours": round(self.cpu_seconds / 3600, 4), **gpu, **ev}
                        self.eval_history.append(ev)
                        self.log({"eval": True, **ev})
                        if bar is not None:
                            T_text = f", T = {ev['val_steps']}: {ev['val_bpd_T']:.4f}" if "val_steps" in ev else ""
                            bar.write(f"step {self.step}: val bpd {ev['val_bpd']:.4f} +- {ev['val_bpd_se']:.4f}{T_text}")
                if self.step % tc.ckpt_every == 0:
                    self._account(t_start)
                    t_start = self._clock()
                    self.save()
        finally:
            self._account(t_start)
            if bar is not None:
                bar.close()
            for s, h in old.items():
                signal.signal(s, h)
        self.save()
        self.dist.barrier()
        return {"step": self.step, "wall_seconds": time.time() - wall0, **last}

    def close(self) -> None:
        """End the run's part in the process group; every rank calls it. The DDP wrapper is
        released first: its reducer holds the process group and its last collectives, and a
        gloo group destroyed only at interpreter exit can abort the process (SIGABRT)."""
        self.ddp = self.model
        gc.collect()
        self.dist.barrier()
        self.dist.close()

    @staticmethod
    def _clock() -> tuple[float, float]:
        return time.process_time(), time.time()

    def _account(self, start: tuple[float, float]):
        """Add the time since ``start`` (``_clock``): on a CPU the CPU time of this process (all
        its threads), summed over ranks; on a GPU the wall-clock time times the devices."""
        cpu, wall = time.process_time() - start[0], time.time() - start[1]
        if self.device.type == "cuda":
            self.gpu_seconds += self.dist.mean(wall) * self.dist.world
        else:
            self.cpu_seconds += self.dist.mean(cpu) * self.dist.world

    def _stop_all(self) -> bool:
        return self.dist.any(self._stop)
