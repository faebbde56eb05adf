"""The coder's constants are versioned with the format (coding/spec.py): the current record
is pinned here, so that retuning a window, a limit, the mask or the grid rule fails this test
unless it comes with a new format version; every readable version has a coder; a version
without one is refused with one line; the bits the current coder writes are pinned too
(constriction's quantisation included), on inputs made here."""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
import torch

from tests.helpers import tiny_model_config
from vdmcodec.coding import container, spec
from vdmcodec.coding.ans import Message, categorical, uniform, whiten, windowed_gaussian
from vdmcodec.coding.chain import ChainConfig, DiffusionChain
from vdmcodec.coding.archive import decode_payload
from vdmcodec.coding.codec import Codec
from vdmcodec.diffusion import VDM
from vdmcodec.errors import FormatError

pytestmark = pytest.mark.usefixtures("one_thread")

# Format versions 3-7: the values of 2026-12-07 (commit 9050cc2). Never edit these: a new coder is a
# new CoderSpec under a new format version, with its own golden values.
GOLDEN_V3 = dict(p_window_stds=16.0, q_window_stds=6.0, x_window_stds=12.0, max_categorical_symbols=131072,
                 escape_digit_bits=16, whiten_digit_bits=16, whiten_extra_digits=2, whiten_mask="splitmix64-low16",
                 delta_rule="min-std", posterior_order="far", gaussian_model="leaky-quantized-gaussian-24",
                 categorical_model="leaky-categorical-24", raw_byte_model="uniform-256")
# sha256 of the words the coder writes for the inputs below, measured at commit 9050cc2
GOLDEN_ANS_WORDS = "6cbe83e3a55697ab60eb0beb12664d69f2dff6dc193c588ad66da2c3cf2f9b73"
GOLDEN_CHAIN_WORDS = "fda77384cd3392d542559f3fdf27c057fd0f3888d37081dcdf458e23c4c8dd07"


def test_the_current_coder_is_pinned():
    assert dataclasses.asdict(spec.CODER_V3) == GOLDEN_V3
    for v in (3, 4, 5, 6, 7):
        assert spec.coder_spec(v) == spec.CODER_V3


def test_every_readable_version_has_a_coder_and_the_written_one_is_current():
    assert set(container.READABLE_VERSIONS) <= set(spec.CODER_SPECS)
    assert spec.coder_spec(container.VERSION) is spec.CURRENT
    assert ChainConfig().spec is spec.CURRENT


@pytest.mark.parametrize("version", [0, 1, 2, 11, 255])
def test_a_version_without_a_coder_is_one_line(version):
    with pytest.raises(FormatError, match=f"format version {version} has no coder") as e:
        spec.coder_spec(version)
    assert "\n" not in str(e.value)


def test_a_coder_this_build_does_not_implement_is_refused():
    for over in (dict(whiten_mask="xorshift"), dict(delta_rule="max-std"), dict(escape_digit_bits=8),
                 dict(q_window_stds=0.0), dict(q_window_stds=20.0)):
        with pytest.raises(ValueError):
            ChainConfig(spec=dataclasses.replace(spec.CURRENT, **over))


def _ans_words() -> np.ndarray:
    n = 64
    k = np.arange(n)
    mean = (k * 37 % 101) / 7.0 - 7.0
    std = 0.5 + (k % 5) * 0.75
    msg = Message(np.array([0x9E3779B9, 0x7F4A7C15, 0xF39CC060, 0x5CEDC834], dtype=np.uint32), sealed=True)
    windowed_gaussian(mean, std, 16).push(msg, np.rint(mean + (k % 7) - 3).astype(np.int64))
    windowed_gaussian(mean, std, 4).push(msg, np.rint(mean).astype(np.int64) + np.where(k % 9 == 0, 40, 0))  # escapes
    probs = np.stack([np.exp(-0.5 * ((np.arange(9) - (k[j] % 9)) / 1.5) ** 2) for j in range(n)])
    categorical(probs).push(msg, (k * 5 % 9).astype(np.int32))
    whiten(msg, 20, key=3)
    uniform(256, 10).push(msg, np.arange(10) * 25)
    return msg.words()


def _sha(words: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(words).astype("<u4").tobytes()).hexdigest()


def test_the_leaf_codecs_write_the_pinned_bits():
    """Gaussians in windows with escapes, categorical rows, the whitening mask and raw bytes:
    the words are those the format's coder wrote on 2026-12-07 (a new constriction whose
    quantisation differs would fail here, before any file fails to decode)."""
    assert _sha(_ans_words()) == GOLDEN_ANS_WORDS


def test_the_chain_writes_the_pinned_bits():
    """A tiny model's chain (T = 2) in the portable arithmetic, whose bits do not depend on
    the CPU: the words equal those written before the coder's constants moved to spec.py."""
    torch.manual_seed(7)
    model = VDM(tiny_model_config()).eval().requires_grad_(False)
    chain = DiffusionChain(model, ChainConfig(steps=2, grid_bits=2, arithmetic="portable"))
    x = np.random.default_rng(5).integers(0, 256, (2, 1, 4, 3), dtype=np.uint8)
    init = np.random.default_rng(6).integers(1, 2**32, 256, dtype=np.uint64).astype(np.uint32)
    msg = Message(init, sealed=True)
    chain.push(msg, x)
    assert (chain.grid.x_half, chain.grid.x_width) == (4, 9)
    assert _sha(msg.words()) == GOLDEN_CHAIN_WORDS
    np.testing.assert_array_equal(chain.pop(Message(msg.words()), x.shape), x)


def test_the_decoder_uses_the_coder_of_the_file_s_version(monkeypatch):
    torch.manual_seed(0)
    codec = Codec(VDM(tiny_model_config()).eval().requires_grad_(False), {"name": "t", "sha256": "00" * 32}, steps=2)
    im = np.random.default_rng(0).integers(0, 256, (4, 4, 1), dtype=np.uint8)
    seed = np.random.default_rng(1).integers(0, 256, (24, 24, 3), dtype=np.uint8)  # classical: the chain's initial bits
    blob = codec.compress([seed, im], force_model=True)
    header, payload = container.unpack(blob)
    assert header.version == container.VERSION and header.model is not None
    for (out, _), ref in zip(decode_payload(header, payload, codec), [seed, im]):
        np.testing.assert_array_equal(out, ref)
    with pytest.raises(FormatError, match="format version 2 has no coder"):
        decode_payload(dataclasses.replace(header, version=2), payload, codec)
    # were version 7's coder another (a window retuned in place), its files would not decode
    monkeypatch.setitem(spec.CODER_SPECS, container.VERSION, dataclasses.replace(spec.CURRENT, p_window_stds=8.0))
    with pytest.raises(FormatError):
        decode_payload(header, payload, codec)
