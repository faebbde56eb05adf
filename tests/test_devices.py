"""--device: one parser for every command, checked with monkeypatched CUDA availability; the
device a command is given reaches the model it loads; hardware checks without emulation."""
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cli.main import app
from vdmcodec.devices import DeviceError, parse_device

runner = CliRunner()


@pytest.fixture
def two_gpus(monkeypatch):
    """torch believes it sees two CUDA devices (nothing runs on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def test_parse_without_a_gpu(no_gpu):
    assert parse_device("auto") == torch.device("cpu")
    assert parse_device(None) == torch.device("cpu")
    assert parse_device("cpu") == torch.device("cpu")
    assert parse_device(" CPU ") == torch.device("cpu")
    for spec in ("cuda", "cuda:0", "cuda:3"):
        with pytest.raises(DeviceError, match="use --device cpu") as e:
            parse_device(spec)
        assert "\n" not in str(e.value)
    for spec in ("gpu", "cpu:1", "auto:0", "mps", "cuda:x", ""):
        with pytest.raises(DeviceError, match="auto, cpu, cuda or cuda:N"):
            parse_device(spec)
    meta = torch.device("meta")
    assert parse_device(meta) is meta  # library callers pass any torch.device


def test_parse_with_two_gpus(two_gpus):
    assert parse_device("auto") == torch.device("cuda", 0)
    assert parse_device("cuda") == torch.device("cuda", 0)
    assert parse_device("cuda:1") == torch.device("cuda", 1)
    assert parse_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match="2 CUDA devices"):
        parse_device("cuda:2")
    # under torchrun each rank takes cuda:LOCAL_RANK; an explicit index would be shared
    assert parse_device("auto", local_rank=1) == torch.device("cuda", 1)
    assert parse_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert parse_device("cpu", local_rank=1) == torch.device("cpu")
    with pytest.raises(DeviceError, match="LOCAL_RANK"):
        parse_device("cuda:0", local_rank=1)


# every command that runs the network, with arguments that reach the model loader
NETWORK_COMMANDS = {
    "eval": ["eval", "--data", "{img}", "--model", "{model}", "--no-progress"],
    "compress": ["compress", "{img}", "-o", "{out}/a.vdmc", "--model", "{model}", "--no-progress"],
    "bench": ["bench", "--data", "{img}", "--model", "{model}", "--no-progress"],
    "sample": ["sample", "--sampler", "heun", "--steps", "2", "-n", "1", "-o", "{out}/s.png", "--model", "{model}",
               "--no-progress"],
}


def _fill(args, tmp_path, model):
    img = tmp_path / "g.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(img)
    (tmp_path / "o").mkdir(exist_ok=True)
    return [a.format(img=img, out=tmp_path / "o", model=model) for a in args]


def test_every_network_command_has_the_same_device_option():
    import typer.main

    for name in list(NETWORK_COMMANDS) + ["train", "decompress"]:
        res = runner.invoke(app, [name, "--help"])
        assert res.exit_code == 0 and "--device" in res.output, name
        assert "cuda:N" in res.output, name
    from vdmcodec.training.fit_levels import main as fit_levels

    with pytest.raises(SystemExit) as e:
        fit_levels(["--help"])
    assert e.value.code == 0
    assert "train" in typer.main.get_command(app).commands


@pytest.mark.parametrize("name", sorted(NETWORK_COMMANDS))
def test_device_reaches_the_model(name, tmp_path, tiny_model_dir, two_gpus, monkeypatch):
    """--device cuda:1 arrives at load_model as cuda:1 (the load is stopped there)."""
    import vdmcodec.zoo as zoo
    from vdmcodec.errors import ModelError

    seen = []

    def fake_load_model(name_or_dir=None, device="cpu"):
        seen.append(torch.device(device))
        raise ModelError("stopped after the device was chosen")

    monkeypatch.setattr(zoo, "load_model", fake_load_model)
    monkeypatch.setattr("vdmcodec.coding.codec.load_model", fake_load_model)
    res = runner.invoke(app, _fill(NETWORK_COMMANDS[name], tmp_path, tiny_model_dir) + ["--device", "cuda:1"])
    assert res.exit_code != 0 and "stopped after the device was chosen" in res.stderr, res.output
    assert seen == [torch.device("cuda", 1)]


@pytest.mark.parametrize("name", sorted(NETWORK_COMMANDS) + ["train"])
def test_cuda_without_a_gpu_is_one_line(name, tmp_path, tiny_model_dir, no_gpu):
    args = NETWORK_COMMANDS.get(name, ["train", "--data", "{img}", "--out", "{out}/run", "--no-progress"])
    res = runner.invoke(app, _fill(args, tmp_path, tiny_model_dir) + ["--device", "cuda"])
    assert res.exit_code != 0
    err = res.stderr.strip()
    assert err.startswith("error: --device cuda:") and "\n" not in err, err
    assert not list((tmp_path / "o").iterdir())  # nothing written


def test_train_passes_the_device(tmp_path, monkeypatch):
    import vdmcodec.training.trainer as trainer_mod
    from vdmcodec.errors import DataError

    seen = []

    class FakeTrainer:
        def __init__(self, *args, device=None, **kwargs):
            seen.append(device)
            raise DataError("stopped")

    monkeypatch.setattr(trainer_mod, "Trainer", FakeTrainer)
    res = runner.invoke(app, _fill(["train", "--data", "{img}", "--out", "{out}/run", "--device", "cuda:1"], tmp_path, "x"))
    assert res.exit_code != 0 and seen == ["cuda:1"]


def test_fit_levels_device_is_parsed(tmp_path, no_gpu, capsys):
    from vdmcodec.training.fit_levels import main as fit_levels

    assert fit_levels(["--model", "x", "--data", str(tmp_path), "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --device cuda:") and "\n" not in err


def test_model_and_codec_on_the_meta_device(tiny_model_dir):
    """Plumbing without a GPU: the model lands on the device asked for, and the codec
    reports it (a meta device records no GPU fingerprint)."""
    from vdmcodec.coding.codec import load_codec
    from vdmcodec.zoo import load_model

    meta = torch.device("meta")
    model, _ = load_model(tiny_model_dir, device=meta)
    assert {p.device for p in model.parameters()} == {meta}
    codec = load_codec(tiny_model_dir, device=meta)
    assert codec.device == meta and codec.device_record("float32") is None


def test_bf16_on_cuda_excludes_emulation(monkeypatch):
    """A GPU whose bfloat16 is only emulated (V100, T4) is not native: the check must ask
    without emulation."""
    import contextlib

    from vdmcodec import hardware

    asked = []

    def is_bf16_supported(including_emulation=True):
        asked.append(including_emulation)
        return including_emulation  # emulated only

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "device", lambda d: contextlib.nullcontext())
    assert hardware.native_bf16("cuda:0") is False
    assert asked == [False]
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert hardware.native_bf16("cuda:0") is True


def test_device_fingerprint_names_what_the_arithmetic_depends_on(monkeypatch):
    from vdmcodec import hardware

    assert hardware.device_fingerprint("cpu", "mode") is None
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (8, 6))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA GeForce RTX 3090")
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 90100)
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    fp = hardware.device_fingerprint("cuda:0", "tf32 off")
    assert fp == "NVIDIA GeForce RTX 3090; sm 8.6; CUDA 12.4; cuDNN 90100; tf32 off"
