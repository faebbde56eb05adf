"""The GPU suite: run with `python -m pytest -q -m cuda tests/test_cuda.py` on a machine with
a CUDA device (skipped elsewhere; docs/gpu.md says what it has been run on).

What it checks: the portable arithmetic gives the CPU's bits on the GPU (network output and
whole files); float files coded on the GPU decode there, in a fresh process too, and are
refused on the CPU; training resumes across devices; DDP under nccl with two GPUs."""
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import tiny_model_config

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
ROOT = Path(__file__).resolve().parent.parent


def _images(n=4, side=12, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    shape = (side, side) if channels == 1 else (side, side, channels)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]


def test_portable_network_on_the_gpu_gives_the_cpu_bits(tiny_model_dir):
    from vdmcodec.coding import exact
    from vdmcodec.zoo import load_model

    model, _ = load_model(tiny_model_dir)
    cpu_net, gpu_net = exact.network_for(model), exact.network_for(model, torch.device("cuda"))
    g = torch.Generator().manual_seed(0)
    for shape in ((3, 1, 28, 28), (2, 1, 13, 17)):
        z = torch.randn(shape, generator=g, dtype=torch.float64)
        t = torch.rand(shape[0], generator=g, dtype=torch.float64)
        assert torch.equal(gpu_net(z, t), cpu_net(z, t)), shape


@pytest.mark.parametrize("model_name", ["tiny", "mnist"])
def test_portable_file_coded_on_the_gpu_is_the_cpu_file(model_name, tiny_model_dir):
    from vdmcodec.coding.codec import load_codec
    from vdmcodec.coding.container import unpack

    model = tiny_model_dir if model_name == "tiny" else "mnist"
    images = _images(side=28)
    gpu = load_codec(model, steps=4, arithmetic="portable", device="cuda").compress(images, force_model=True)
    cpu_codec = load_codec(model, steps=4, arithmetic="portable", device="cpu")
    assert unpack(gpu)[0].device is None
    assert gpu == cpu_codec.compress(images, force_model=True)
    assert all(np.array_equal(a, b) for a, b in zip(cpu_codec.decompress(gpu), images))


@pytest.mark.parametrize("arithmetic", ["float32", "float32-nhwc", "bfloat16-nhwc"])
def test_float_file_on_the_gpu_decodes_there_and_is_refused_on_the_cpu(arithmetic, tiny_model_dir, tmp_path):
    from vdmcodec.coding.codec import decompress_file_bytes, load_codec
    from vdmcodec.coding.container import unpack
    from vdmcodec.errors import RuntimeMismatchError
    from vdmcodec.hardware import native_bf16

    if arithmetic.startswith("bfloat16") and not native_bf16("cuda"):
        pytest.skip("this GPU has no native bfloat16")
    images = _images(side=28, seed=1)
    codec = load_codec(tiny_model_dir, steps=4, arithmetic=arithmetic, device="cuda")
    blob = codec.compress(images, force_model=True)
    header = unpack(blob)[0]
    assert header.device == codec.device_record(arithmetic) and torch.cuda.get_device_name() in header.device
    assert all(np.array_equal(a, b) for a, b in zip(codec.decompress(blob), images))
    # a fresh process on the same GPU
    path = tmp_path / "a.vdmc"
    path.write_bytes(blob)
    code = ("import sys, numpy as np; from vdmcodec.coding.codec import decompress_file_bytes; "
            f"out = decompress_file_bytes(open({str(path)!r}, 'rb').read(), model={str(tiny_model_dir)!r}, device='cuda'); "
            "np.save(sys.argv[1], np.stack([im for im, _ in out]))")
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out.npy")], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert np.array_equal(np.load(tmp_path / "out.npy"), np.stack(images))
    with pytest.raises(RuntimeMismatchError, match="decoder runs on the CPU"):
        decompress_file_bytes(blob, model=tiny_model_dir, device="cpu")


def test_coding_on_the_gpu_leaves_no_global_state(tiny_model_dir):
    from vdmcodec.coding import determinism
    from vdmcodec.coding.codec import load_codec

    before = determinism._switches()
    codec = load_codec(tiny_model_dir, steps=2, device="cuda")
    codec.decompress(codec.compress(_images(side=28), force_model=True))
    assert determinism._switches() == before


def test_training_resumes_across_devices(tmp_path):
    from vdmcodec.training.config import RunConfig, TrainConfig
    from vdmcodec.training.trainer import DataSpec, Trainer

    np.save(tmp_path / "d.npy", np.stack(_images(n=32, side=16)))
    cfg = RunConfig(model=tiny_model_config(), train=TrainConfig(batch_size=8, eval_every=0, ckpt_every=1000, seed=0))
    out = tmp_path / "run"
    tr = Trainer(cfg, out, DataSpec(tmp_path / "d.npy"), progress=False, device="cuda")
    tr.fit(3)
    card = tr.card()
    assert card["device"] == "cuda" and card["gpu_hours"] > 0 and card["gpu"]
    st = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert st["rank_rng"][0]["cuda_rng"] is not None
    cpu = Trainer(cfg, out, DataSpec(tmp_path / "d.npy"), resume=True, progress=False, device="cpu")
    assert cpu.step == 3 and torch.equal(cpu.generator.get_state(), tr.generator.get_state())
    cpu.fit(4)
    gpu = Trainer(cfg, out, DataSpec(tmp_path / "d.npy"), resume=True, progress=False, device="cuda")
    assert gpu.step == 4
    gpu.fit(5)
    card = json.loads((out / "model.json").read_text())["card"]
    assert card["steps"] == 5 and card["gpu_hours"] > 0 and card["cpu_hours"] > 0


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_nccl_two_ranks_train_and_resume(tmp_path):
    from vdmcodec.training.config import RunConfig, TrainConfig

    np.save(tmp_path / "d.npy", np.stack(_images(n=32, side=16)))
    cfg = RunConfig(model=tiny_model_config(), train=TrainConfig(batch_size=8, eval_every=0, ckpt_every=1000, seed=0))
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    torchrun = Path(sys.executable).parent / "torchrun"
    for steps, extra in ((3, []), (5, ["--resume"])):
        cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "cli.main", "train", "--data",
               str(tmp_path / "d.npy"), "--out", str(tmp_path / "ddp"), "--steps", str(steps), "--config",
               str(tmp_path / "cfg.json"), "--device", "cuda", "--no-progress", *extra]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
        assert res.returncode == 0, res.stderr[-2000:]
    st = torch.load(tmp_path / "ddp" / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert st["step"] == 5 and len(st["rank_rng"]) == 2
    assert not torch.equal(st["rank_rng"][0]["cuda_rng"], st["rank_rng"][1]["cuda_rng"])


def test_sampling_and_eval_on_the_gpu(tiny_model_dir):
    from vdmcodec.data import ImageItem
    from vdmcodec.evaluate import evaluate
    from vdmcodec.sampling import SAMPLERS, VDMDenoiser, generate, make_sigmas
    from vdmcodec.zoo import load_model

    model, _ = load_model(tiny_model_dir, device="cuda")
    den = VDMDenoiser(model)
    sigmas = make_sigmas("karras", den, 4)
    for name in SAMPLERS:
        x = generate(den, name, sigmas, (1, 8, 8), count=2, seed=0, device="cuda")
        assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all(), name
    items = [ImageItem(im[..., None], f"{k}") for k, im in enumerate(_images(side=16))]
    cpu_model, _ = load_model(tiny_model_dir)
    a = evaluate(model, items, steps=4, progress=False)
    b = evaluate(cpu_model, items, steps=4, progress=False)
    assert a["bpd_continuous"] == pytest.approx(b["bpd_continuous"], rel=1e-3)
