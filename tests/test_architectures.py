"""benchmarks/architectures.py end to end at a tiny budget: trains to a CPU-time budget,
measures along it, reports, keeps finished rows and reuses them only for the same settings."""
import json
from pathlib import Path

import pytest

from benchmarks.architectures import ARCHS, arch_config, main
from vdmcodec.training.config import load_config

pytestmark = pytest.mark.usefixtures("one_thread")


def _argv(tmp_path, mnist_path, out, minutes="0.01"):
    return ["--out", str(tmp_path / out), "--cpu-minutes", minutes, "--points", "2", "--archs", "unet-16,unet-32-cosine",
            "--batch", "4", "--val-images", "4", "--data", str(mnist_path), "--store", str(tmp_path / "store"),
            "--report", str(tmp_path / out / "arch.md")]


def test_architectures_budget_report_and_store(tmp_path, mnist_path):
    first = main(_argv(tmp_path, mnist_path, "a"))
    assert [r["name"] for r in first] == ["unet-16", "unet-32-cosine"]
    for r in first:
        pts = r["points"]
        assert len(pts) == 2 and pts[0]["step"] >= 1 and pts[1]["step"] >= pts[0]["step"]
        assert pts[-1]["cpu_hours"] * 60 >= 0.01 and all(p["bpd"] > 0 for p in pts)
    assert first[1]["config"]["model"]["schedule"]["kind"] == "cosine"
    text = (tmp_path / "a" / "arch.md").read_text()
    assert "| unet-16 |" in text and "| unet-32-cosine |" in text and "--cpu-minutes 0.01" in text
    assert (tmp_path / "a" / "arch.png").stat().st_size > 0
    assert (tmp_path / "store" / "architectures" / "unet-16.json").exists()
    # a fresh run directory (a new machine) takes the stored rows instead of training again
    again = main(_argv(tmp_path, mnist_path, "b"))
    assert not (tmp_path / "b" / "unet-16" / "checkpoint.pt").exists()
    assert [r["points"] for r in again] == [r["points"] for r in first]
    # another budget is another measurement: trained anew
    main(_argv(tmp_path, mnist_path, "c", minutes="0.012"))
    assert (tmp_path / "c" / "unet-16" / "checkpoint.pt").exists()
    kept = json.loads((tmp_path / "store" / "architectures" / "unet-16.json").read_text())
    assert kept["measured_with"]["cpu_minutes"] == 0.012


def test_each_architecture_changes_only_the_network_or_schedule():
    base = load_config(Path(__file__).resolve().parent.parent / "configs" / "mnist.json")  # the shipped config
    ref = arch_config(base, ARCHS["unet-32"], 64)
    for name, arch in ARCHS.items():
        cfg = arch_config(base, arch, 64)
        assert cfg.train == ref.train, name
        assert name == "unet-32" or cfg.model != ref.model, name
