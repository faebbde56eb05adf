"""Coding on a device: the device record in the header, the decoder's refusal up front,
torch's switches pinned while coding and restored after, and the portable network's
independence from how a device divides by a scalar."""
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from vdmcodec.coding import determinism
from vdmcodec.coding.archive import check_device
from vdmcodec.coding.codec import decompress_file_bytes, load_codec
from vdmcodec.coding.container import Header, encode_header, pack, parse_header, unpack
from vdmcodec.errors import FormatError, RuntimeMismatchError

pytestmark = pytest.mark.usefixtures("one_thread")
FAKE_GPU = "Fake GPU; sm 8.0; CUDA 12.4; cuDNN 90100"


def _digits(n=3, side=8, seed=0):
    return [np.random.default_rng(seed + k).integers(0, 256, (side, side), dtype=np.uint8) for k in range(n)]


def _coded(codec, images):
    blob = codec.compress(images, steps=2, force_model=True)
    assert unpack(blob)[0].model is not None
    return blob


@pytest.fixture
def as_if_on_a_gpu(monkeypatch):
    """The codec believes its device has FAKE_GPU's fingerprint (it computes on the CPU)."""
    monkeypatch.setattr("vdmcodec.coding.archive.device_fingerprint", lambda device, mode: f"{FAKE_GPU}; {mode}")


def _header(**kw) -> Header:
    base = dict(model="m", model_hash="00" * 8, steps=2, grid_bits=2, torch="2.13.0", dtype="float32", threads=1,
                shapes=[[8, 8, 1, 1]], names={"sequence": ["", 5, ".png"]}, methods=[["vdm", 1]], classical_sizes=[],
                chunks=[[0, 1]], init_pad=0, pixels_hash="11" * 8)
    return Header(**{**base, **kw})


def test_device_record_round_trips_and_cpu_headers_keep_their_bytes():
    cpu = _header()
    gpu = _header(device=FAKE_GPU)
    assert parse_header(encode_header(gpu)) == gpu
    assert parse_header(encode_header(cpu)) == cpu and cpu.device is None
    # the record is an optional tail of the model section: a CPU header's bytes are the
    # same as before it existed (kind byte 0, nothing appended)
    a, b = encode_header(cpu), encode_header(gpu)
    assert len(b) == len(a) + 1 + len(FAKE_GPU.encode())
    kind_at = 1 + 1 + len(b"m") + 8 + 1 + 2 + 1 + 1 + len(b"2.13.0")
    assert a[kind_at] == 0 and b[kind_at] == 4
    assert a[:kind_at] == b[:kind_at] and a[kind_at + 1:] == b[kind_at + 1 + 1 + len(FAKE_GPU.encode()):]
    # a device record only on a float model arithmetic
    with pytest.raises(FormatError, match="device record"):
        pack(_header(device=FAKE_GPU, dtype="portable"), b"\0" * 4)
    with pytest.raises(FormatError, match="device record"):
        pack(_header(device=""), b"\0" * 4)
    # a version 6 file cannot carry one
    with pytest.raises(FormatError, match="unknown level times kind 4"):
        parse_header(b, version=6)


def test_gpu_file_decodes_on_its_device_and_is_refused_elsewhere(tiny_model_dir, as_if_on_a_gpu, monkeypatch):
    codec = load_codec(tiny_model_dir, steps=2)
    images = _digits()
    blob = _coded(codec, images)
    header = unpack(blob)[0]
    assert header.device == f"{FAKE_GPU}; {determinism.PRECISION_MODE}"
    assert all(np.array_equal(a, b) for a, b in zip(codec.decompress(blob), images))
    # on "another GPU" (another fingerprint) and on the CPU: refused before any work
    monkeypatch.setattr("vdmcodec.coding.archive.device_fingerprint", lambda device, mode: f"Other GPU; {mode}")
    with pytest.raises(RuntimeMismatchError, match="this one is Other GPU") as e:
        codec.decompress(blob)
    assert "\n" not in str(e.value) and "portable" in str(e.value)
    monkeypatch.setattr("vdmcodec.coding.archive.device_fingerprint", lambda device, mode: None)
    with pytest.raises(RuntimeMismatchError, match="coded on a GPU .* decoder runs on the CPU .*--device cuda"):
        codec.decompress(blob)
    # the file-level entry refuses before it loads the model
    monkeypatch.setattr("vdmcodec.coding.codec.load_model", lambda *a, **k: pytest.fail("loaded the model"))
    with pytest.raises(RuntimeMismatchError, match="decoder runs on the CPU"):
        decompress_file_bytes(blob, model=tiny_model_dir)


def test_cpu_file_is_refused_on_a_gpu(tiny_model_dir, monkeypatch):
    codec = load_codec(tiny_model_dir, steps=2)
    blob = _coded(codec, _digits())
    header = unpack(blob)[0]
    assert header.device is None
    check_device(header, torch.device("cpu"))
    monkeypatch.setattr("vdmcodec.coding.archive.device_fingerprint", lambda device, mode: f"{FAKE_GPU}; {mode}")
    with pytest.raises(RuntimeMismatchError, match=r"coded on a CPU .*\(use --device cpu"):
        check_device(header, torch.device("cuda", 0))


def test_portable_files_record_no_device_and_decode_anywhere(tiny_model_dir, as_if_on_a_gpu):
    codec = load_codec(tiny_model_dir, steps=2, arithmetic="portable")
    images = _digits(seed=5)
    blob = _coded(codec, images)
    header = unpack(blob)[0]
    assert header.device is None and header.dtype == "portable"
    check_device(header, torch.device("cuda", 0))  # any device
    assert all(np.array_equal(a, b) for a, b in zip(codec.decompress(blob), images))


def test_cli_refuses_a_gpu_file_on_the_cpu_in_one_line(tmp_path, tiny_model_dir, monkeypatch):
    from PIL import Image

    d = tmp_path / "in"
    d.mkdir()
    for k, im in enumerate(_digits()):
        Image.fromarray(im).save(d / f"{k}.png")
    arc = tmp_path / "a.vdmc"
    monkeypatch.setattr("vdmcodec.coding.archive.device_fingerprint", lambda device, mode: f"{FAKE_GPU}; {mode}")
    blob = load_codec(tiny_model_dir, steps=2).compress([np.asarray(Image.open(f)) for f in sorted(d.iterdir())],
                                                        steps=2, force_model=True)
    arc.write_bytes(blob)
    runner = CliRunner()
    res = runner.invoke(app, ["info", str(arc)])
    assert res.exit_code == 0 and "on a GPU: Fake GPU" in res.output
    monkeypatch.setattr("vdmcodec.coding.archive.device_fingerprint", lambda device, mode: None)
    res = runner.invoke(app, ["decompress", str(arc), "-o", str(tmp_path / "out"), "--model", str(tiny_model_dir),
                              "--no-progress"])
    assert res.exit_code != 0
    err = res.stderr.strip()
    assert err.startswith("error: this file was coded on a GPU") and "\n" not in err, err
    assert not (tmp_path / "out").exists()


def test_pinned_sets_the_switches_and_restores_them(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = determinism._switches()
    with determinism.pinned():
        inside = determinism._switches()
        assert inside == {**determinism.PINNED, "cublas_workspace": determinism.CUBLAS_WORKSPACE}
    assert determinism._switches() == before
    # restored after an exception too, and a caller's own cuBLAS setting is kept
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    torch.backends.cudnn.benchmark = True
    try:
        before = determinism._switches()
        with pytest.raises(KeyError):
            with determinism.pinned():
                assert determinism._switches()["cublas_workspace"] == ":16:8"
                assert torch.backends.cudnn.benchmark is False
                raise KeyError("x")
        assert determinism._switches() == before
    finally:
        torch.backends.cudnn.benchmark = False


@pytest.mark.parametrize("arithmetic", ["float32", "portable"])
def test_coding_runs_pinned_and_leaves_no_global_state(tiny_model_dir, arithmetic, monkeypatch):
    from vdmcodec.coding.chain import DiffusionChain

    seen = []
    original = DiffusionChain.p_mean_std

    def spy(self, *a, **k):
        seen.append(determinism._switches())
        return original(self, *a, **k)

    monkeypatch.setattr(DiffusionChain, "p_mean_std", spy)
    codec = load_codec(tiny_model_dir, steps=2, arithmetic=arithmetic)
    before = determinism._switches()
    blob = _coded(codec, _digits(seed=9))
    assert determinism._switches() == before
    n_enc = len(seen)
    codec.decompress(blob)
    assert determinism._switches() == before
    assert n_enc and len(seen) > n_enc
    for s in seen:
        assert {k: s[k] for k in determinism.PINNED} == determinism.PINNED


def test_portable_network_does_not_depend_on_scalar_division(tiny_model_dir, monkeypatch):
    """CUDA divides a tensor by a Python scalar as a multiplication by its reciprocal (not
    correctly rounded); the CPU divides. The portable network must give the same bits under
    both rules: run it on the CPU with division by a scalar done the CUDA way."""
    from vdmcodec.coding import exact
    from vdmcodec.zoo import load_model

    model, _ = load_model(tiny_model_dir)
    net = exact.network_for(model)
    g = torch.Generator().manual_seed(3)
    z = torch.randn((2, 1, 12, 12), generator=g, dtype=torch.float64)
    t = torch.tensor([0.3, 0.8], dtype=torch.float64)
    want = net(z, t)
    true_div = torch.Tensor.__truediv__
    calls = []

    def cuda_like_div(a, b):
        if isinstance(b, (int, float)) and not isinstance(b, bool):
            calls.append(b)
            return a * (1.0 / b)
        return true_div(a, b)

    monkeypatch.setattr(torch.Tensor, "__truediv__", cuda_like_div)
    got = net(z, t)
    assert torch.equal(got, want)
    # (the rule is exercised: the forward does divide by scalars, only by powers of two)
    assert all(float(v) == 2.0 ** round(np.log2(abs(float(v)))) for v in calls)


def test_portable_network_runs_on_the_device_it_is_given(tiny_model_dir):
    """Plumbing on the meta device: every weight moves there, and the forward runs there
    without touching a CPU tensor (a device mix would raise)."""
    from vdmcodec.coding import exact
    from vdmcodec.zoo import load_model

    model, _ = load_model(tiny_model_dir)
    net = exact.network_for(model, torch.device("meta"))
    weights = [net.conv_in.weight, net.conv_out.weight, net.emb1.weight, net.norm_out.weight,
               net.down[0][0].conv1.weight, net.mid1.norm1.bias]
    assert {w.device.type for w in weights} == {"meta"}
    z = torch.zeros((2, 1, 12, 12), dtype=torch.float64)
    t = torch.tensor([0.3, 0.8], dtype=torch.float64)
    with pytest.raises(NotImplementedError, match="meta"):
        net(z, t)  # runs on meta to the end, then cannot copy a meta result back to the CPU
