"""The README's first command runs (without its install part) and restores the sample."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def first_command() -> str:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)\n```", text, re.S).group(1).strip()
    parts = [p.strip() for p in block.split("&&")]
    # drop the environment and install steps: this test runs inside the installed package
    return " && ".join(p for p in parts if not p.startswith(("python3 -m venv", ". .venv", "pip install")))


def test_readme_starts_with_install_and_main_job():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", text, re.S)
    assert "pip install torch==2.13.0" in blocks[0] and "vdmcodec compress" in blocks[0]
    assert "pytest" in blocks[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pytest -q tests" in ci and "torch==2.13.0" in ci


def test_readme_first_command_runs(tmp_path):
    (tmp_path / "samples").symlink_to(ROOT / "samples")
    cmd = first_command()
    assert cmd.startswith("vdmcodec compress")
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    res = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=1500)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "bpd" in res.stdout and "PNG" in res.stdout
    for f in sorted((ROOT / "samples" / "mnist").glob("*.png")):
        a = np.asarray(Image.open(f))
        b = np.asarray(Image.open(tmp_path / "digits" / f.name))
        assert np.array_equal(a, b), f.name
