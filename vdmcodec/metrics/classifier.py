"""A small MNIST classifier whose penultimate features define a Fréchet distance on MNIST.

FID proper uses Inception-v3 features of ImageNet photographs; for 28x28 digits this project
trains its own feature extractor instead: a two-layer CNN (conv 3x3 -> ReLU -> max-pool,
twice, then a fully connected layer of ``features`` units with ReLU = the features, then a
linear 10-way head), trained with cross-entropy on the shared MNIST training split. FID
figures computed with it are comparable only with figures from the same classifier (same
config and training data), never with published MNIST "FID" numbers.

Training is deterministic for a given config, data, torch version and thread count: the
initial weights come from a forked, seeded RNG (the global RNG state is restored) and the
shuffling and augmentation (random shifts of up to ``shift`` pixels) from explicit seeded
generators. ``load_or_train`` caches the weights by a hash of config and data.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import struct
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

CACHE_VERSION = 1
CLASSES = 10


@dataclass(frozen=True)
class ClassifierConfig:
    channels: tuple[int, int] = (32, 64)  # conv widths
    features: int = 64                    # penultimate width: the FID feature dimension
    epochs: int = 8
    batch_size: int = 64
    lr: float = 2e-3                      # Adam, cosine decay to 0
    weight_decay: float = 1e-4
    shift: int = 2                        # augmentation: random translation by up to this many pixels
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if len(self.channels) != 2 or min(self.channels) < 1 or self.features < 1 or self.epochs < 1 \
                or self.batch_size < 1 or self.lr <= 0 or self.weight_decay < 0 or self.shift < 0 or self.seed < 0:
            raise ValueError(f"invalid classifier config {self}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d


class MNISTClassifier(nn.Module):
    """28x28 grayscale -> logits [N, 10]; ``features`` gives the penultimate activations."""

    def __init__(self, config: ClassifierConfig = ClassifierConfig()):
        super().__init__()
        self.config = config
        c1, c2 = config.channels
        self.body = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),      # 28 -> 14
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),     # 14 -> 7
            nn.Flatten(), nn.Linear(c2 * 7 * 7, config.features), nn.ReLU(),
        )
        self.head = nn.Linear(config.features, CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def to_input(pixels: np.ndarray) -> torch.Tensor:
    """uint8 [N, 28, 28, 1] (vdmcodec.data's layout) or [N, 28, 28] -> float32 [N, 1, 28, 28] in [0, 1]."""
    p = np.asarray(pixels)
    if p.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels (got {p.dtype})")
    if p.ndim == 4 and p.shape[-1] == 1:
        p = p[..., 0]
    if p.ndim != 3 or p.shape[1:] != (28, 28):
        raise ValueError(f"expected MNIST-shaped pixels [N, 28, 28(, 1)] (got {tuple(np.shape(pixels))})")
    return torch.from_numpy(p.astype(np.float32) / 255.0)[:, None]


def read_idx_labels(path: Path) -> np.ndarray:
    """MNIST IDX label file (ubyte, 1-d; .gz or raw) -> uint8 [N]."""
    path = Path(path)
    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
        data = f.read()
    if len(data) < 8 or data[:4] != b"\x00\x00\x08\x01":
        raise ValueError(f"{path}: not an IDX ubyte label file (bad magic)")
    (n,) = struct.unpack(">I", data[4:8])
    if len(data) - 8 != n:
        raise ValueError(f"{path}: IDX header promises {n} labels, file holds {len(data) - 8}")
    return np.frombuffer(data[8:], dtype=np.uint8).copy()


def _shift(x: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by an integer offset in [-shift, shift]^2, filling with 0."""
    if shift == 0:
        return x
    n, _, h, w = x.shape
    padded = nn.functional.pad(x, (shift, shift, shift, shift))
    off = torch.randint(0, 2 * shift + 1, (n, 2), generator=generator)
    return torch.stack([padded[i, :, off[i, 0]:off[i, 0] + h, off[i, 1]:off[i, 1] + w] for i in range(n)])


def train_classifier(pixels: np.ndarray, labels: np.ndarray, config: ClassifierConfig = ClassifierConfig(),
                     progress: bool = False) -> MNISTClassifier:
    """Train on uint8 pixels [N, 28, 28(, 1)] and labels [N] in 0..9; returns the model in eval mode."""
    x, y = to_input(pixels), torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if len(x) != len(y) or len(y) == 0 or int(y.min()) < 0 or int(y.max()) >= CLASSES:
        raise ValueError(f"need as many labels in 0..9 as images (got {len(x)} images, {len(y)} labels)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = MNISTClassifier(config)
    g = torch.Generator().manual_seed(config.seed + 1)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = -(-len(x) // config.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs * steps_per_epoch)
    model.train()
    bar = tqdm(total=config.epochs * steps_per_epoch, desc="classifier", unit="step", disable=not progress, leave=False)
    for _ in range(config.epochs):
        order = torch.randperm(len(x), generator=g)
        for start in range(0, len(x), config.batch_size):
            idx = order[start:start + config.batch_size]
            loss = nn.functional.cross_entropy(model(_shift(x[idx], config.shift, g)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    return model.eval().requires_grad_(False)


@torch.no_grad()
def _batched(fn, pixels: np.ndarray, batch_size: int) -> torch.Tensor:
    x = to_input(pixels)
    return torch.cat([fn(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def extract_features(model: MNISTClassifier, pixels: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """Penultimate features, float64 [N, features], of uint8 pixels [N, 28, 28(, 1)]."""
    model.eval()
    return _batched(model.features, pixels, batch_size).to(torch.float64).numpy()


def accuracy(model: MNISTClassifier, pixels: np.ndarray, labels: np.ndarray, batch_size: int = 500) -> float:
    model.eval()
    pred = _batched(model, pixels, batch_size).argmax(1).numpy()
    return float((pred == np.asarray(labels)).mean())


def _key(config: ClassifierConfig, pixels: np.ndarray, labels: np.ndarray) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}:{json.dumps(config.to_dict(), sort_keys=True)}:{torch.__version__}".encode())
    h.update(np.ascontiguousarray(pixels).tobytes())
    h.update(np.ascontiguousarray(labels).astype(np.uint8).tobytes())
    return h.hexdigest()[:16]


def load_or_train(cache_dir: Path, pixels: np.ndarray, labels: np.ndarray,
                  config: ClassifierConfig = ClassifierConfig(), progress: bool = False
                  ) -> tuple[MNISTClassifier, dict]:
    """The classifier for this config and training data: loaded from ``cache_dir`` when a
    file with the same key (config, data, torch version) is there, else trained and saved.
    Returns (model, info) with info = {"key", "path", "cached", "train_seconds", "config", ...}."""
    from safetensors.torch import load_file, save_file

    from ..zoo import atomic_write_bytes

    cache_dir = Path(cache_dir)
    key = _key(config, pixels, labels)
    weights, card = cache_dir / f"mnist-classifier-{key}.safetensors", cache_dir / f"mnist-classifier-{key}.json"
    model = MNISTClassifier(config)
    if weights.is_file() and card.is_file():
        try:
            model.load_state_dict(load_file(str(weights)))
            info = json.loads(card.read_text())
            return model.eval().requires_grad_(False), {**info, "path": str(weights), "cached": True}
        except Exception:  # a damaged cache entry is retrained and overwritten
            pass
    t0 = time.perf_counter()
    model = train_classifier(pixels, labels, config, progress)
    info = {"key": key, "config": config.to_dict(), "train_images": int(len(labels)),
            "train_seconds": time.perf_counter() - t0, "torch": torch.__version__,
            "threads": torch.get_num_threads()}
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = weights.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(weights)
    atomic_write_bytes(card, (json.dumps(info, indent=1) + "\n").encode())
    return model, {**info, "path": str(weights), "cached": False}
