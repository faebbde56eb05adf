import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
MNIST = ROOT.parent / "shared" / "data" / "mnist" / "mnist9k-images-idx3-ubyte.gz"
NATURAL = ROOT.parent / "shared" / "data" / "natural"


@pytest.fixture(scope="package", autouse=True)
def _threads():
    # the suite runs beside other work on a 2-core machine: keep torch to 2 threads
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: coding and sampling at 2 threads on this shared
    2-core machine were many times slower. Use: pytestmark = pytest.mark.usefixtures("one_thread")."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="package")
def mnist_path() -> Path:
    if not MNIST.exists():
        pytest.skip(f"shared MNIST data not found at {MNIST}")
    return MNIST


@pytest.fixture(scope="package")
def tiny_model_dir(tmp_path_factory) -> Path:
    """An untrained tiny grayscale model saved as a model directory."""
    from tests.helpers import tiny_model_config
    from vdmcodec.diffusion import VDM
    from vdmcodec.zoo import save_model

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny_model")
    save_model(d, VDM(tiny_model_config()), {"name": "tiny", "data": "none"})
    return d


@pytest.fixture(scope="package")
def natural_dir() -> Path:
    if not NATURAL.is_dir():
        pytest.skip(f"shared natural photos not found at {NATURAL}")
    return NATURAL
