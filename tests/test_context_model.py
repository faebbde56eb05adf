"""The ctx method's static context model (coding/context_model.py): exact round trips, the
shipped table's rate on validation digits against WebP, and refusal of streams that are not
one image's."""
from __future__ import annotations

import numpy as np
import pytest

from vdmcodec.coding import classical, context_model as cm
from vdmcodec.data import load_array
from vdmcodec.errors import FormatError


def test_contexts_read_the_four_causal_neighbours():
    img = np.zeros((3, 4), np.uint8)
    img[0, 2] = 255  # N of (1, 2), NW of (1, 3), NE of (1, 1)
    c = cm.contexts(img[None])[0]
    top = cm.BINS - 1
    assert c[1, 2] == top * cm.BINS ** 2 and c[1, 3] == top * cm.BINS and c[1, 1] == top
    assert c[0, 3] == top * cm.BINS ** 3  # W
    assert c[2].max() == 0 and c[0, :3].max() == 0


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 1), (28, 28), (64, 64)])
def test_round_trip_is_exact(shape):
    rng = np.random.default_rng(sum(shape))
    model = cm.load_table()
    for img in (rng.integers(0, 256, shape, dtype=np.uint8), np.full(shape, 255, np.uint8)):
        data = model.encode(img)
        np.testing.assert_array_equal(model.decode(data, shape), img)
        assert len(data) % 4 == 0
    blank = np.zeros(shape, np.uint8)  # costs less than a word: no stream, and encode_best passes
    assert model.encode(blank) == b"" and classical.encode_best(blank[..., None], context=True)[0] != "ctx"


def test_probabilities_are_exact_functions_of_the_counts():
    """Rows sum to 1 within rounding and give every value some mass; a table built from the
    same counts gives the same floats bit for bit."""
    model = cm.load_table()
    p = model.probabilities
    assert p.shape == (cm.CONTEXTS, 256) and p.min() > 0
    np.testing.assert_allclose(p.sum(1), 1, rtol=1e-12)
    assert np.array_equal(cm.ContextModel(model.counts.copy()).probabilities, p)
    with pytest.raises(ValueError):
        cm.ContextModel(np.zeros((cm.CONTEXTS, 255), np.int64))


def test_validation_digits_cost_less_than_webp(mnist_path):
    """The shipped table on 20 validation digits: the streams within 1% of the ideal code
    length, and at most 0.7 of WebP lossless's bytes."""
    digits = load_array(mnist_path, 8000, 8020)
    model = cm.load_table()
    streams = sum(len(model.encode(d[..., 0])) for d in digits)
    ideal = sum(model.bits(d[..., 0]) for d in digits) / 8
    webp = sum(len(classical.encode(d, "webp")) for d in digits)
    assert ideal <= streams <= 1.01 * ideal + 4 * len(digits)
    assert streams <= 0.7 * webp


def test_encode_best_offers_ctx_only_where_asked_and_eligible(mnist_path):
    digit = load_array(mnist_path, 8000, 8001)[0]
    assert classical.encode_best(digit)[0] != "ctx"
    method, data = classical.encode_best(digit, context=True)
    assert method == "ctx"
    np.testing.assert_array_equal(classical.decode(data, "ctx", digit.shape), digit)
    rgb = np.repeat(digit, 3, axis=2)
    assert classical.encode_best(rgb, context=True)[0] != "ctx"
    big = np.zeros((65, 64, 1), np.uint8)
    assert not classical.context_eligible(big) and classical.context_eligible(big[:64])


def test_streams_that_are_not_one_image_are_refused(mnist_path):
    model = cm.load_table()
    img = load_array(mnist_path, 8000, 8001)[0, ..., 0]
    data = model.encode(img)
    for bad in (data[:-1], data + b"\0\0\0\1", data[4:], b"", bytes(range(40))):
        with pytest.raises(FormatError):
            model.decode(bad, img.shape)
    with pytest.raises(FormatError):
        model.decode(data, (65, 64))
    with pytest.raises(FormatError):
        classical.decode(data, "ctx", (28, 28, 3))


def test_the_shipped_table_and_its_streams_never_drift():
    """The table is part of format version 10: its counts, the probabilities made from them and
    the stream of a fixed image are pinned. A refit needs a new method code or version."""
    import hashlib

    model = cm.load_table()
    assert hashlib.sha256(model.counts.astype("<i8").tobytes()).hexdigest() == (
        "3386ff1f6e0d18ba96d7bf37414d297438fe58524f5b030aef40e347bd8500b0")
    assert hashlib.sha256(model.probabilities.tobytes()).hexdigest() == (
        "70395053bdd173d7125a95acd4a3e6c137cc712d20c6f4f93f312119283f2802")
    img = np.zeros((28, 28), np.uint8)
    img[8:20, 12:16] = 255
    img[6:8, 10:18] = np.random.default_rng(0).integers(0, 256, (2, 8))
    data = model.encode(img)
    assert len(data) == 48 and hashlib.sha256(data).hexdigest() == (
        "4d11857f4ba90ce22942ffe4c623b27e5ac4abefddc64b096bd12aff64c2a620")
