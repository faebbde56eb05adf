"""The coder's constants, one record per format version.

A file decodes only if the decoder replays the encoder's arithmetic exactly, and that
arithmetic is not only the network's: the windows the Gaussians are coded on, how many
probability rows go to one constriction call, the whitening mask, the latent grid rule, the
order of the posterior pops. Each of these changes the bits, so none may be retuned in
place: a change is a new ``CoderSpec`` under a new format version, the old version keeps its
record, and a file is decoded with the record of the version in its header
(``coder_spec``). A test pins the current record's values (tests/test_coder_spec.py).

Numbers are the constants themselves; rules whose code cannot be a number (the mask, the
grid rule, the pop order, the leaf models) are named, and ``check_spec`` (run by every
``chain.ChainConfig``) refuses a record naming a rule this build does not implement.

Format versions 3 to 7 share one record: their differences are in the container (level
times, structure priors, channel correlations, JPEG XL), not in the coder. Version 3 was
the first whose p(x | z_0) is coded on a window (``x_window_stds``); versions 1 and 2 are
not read.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import FormatError


@dataclass(frozen=True)
class CoderSpec:
    """What the bits-back chain's coder does at one format version (see coding/chain.py)."""

    p_window_stds: float      # p(z_{i-1} | z_i) coded within +-this many std of its mean, escapes beyond
    q_window_stds: float      # q(z_i | z_{i-1}) truncated at +-this many std (no escapes)
    x_window_stds: float      # p(x | z_0)'s window holds at least +-this many std of its mass
    max_categorical_symbols: int  # p(x | z_0)'s probability rows per constriction call (push order)
    escape_digit_bits: int    # an escaped latent: two uniform digits of this many bits (32-bit range)
    whiten_digit_bits: int    # the whitening mask works on digits of this many bits
    whiten_extra_digits: int  # digits masked before a pop of n latents: ceil(n h_q / digit bits) + this
    whiten_mask: str          # the mask's generator, keyed by (level, digit index)
    delta_rule: str           # the latent grid of level i
    posterior_order: str      # the element order of posterior pops
    gaussian_model: str       # constriction's model for the quantised Gaussians
    categorical_model: str    # constriction's model for p(x | z_0)'s rows
    raw_byte_model: str       # a classical tile segment's bytes on the stack


# names of the rules in CoderSpec (each is implemented in ans/ / grid.py / level_codecs.py / tiles.py):
# splitmix64-low16: ans/message.py _mask16, the low 16 bits of splitmix64(key * golden ratio + index);
# min-std: delta_i = 2^-grid_bits min(std of q(z_i | z_{i-1}), std of p(z_i | z_{i+1})) (grid.LevelGrid);
# far: level_codecs.far_order, the batch rolled by half its length;
# leaky-quantized-gaussian-24: constriction.stream.model.QuantizedGaussian (24-bit, leaky);
# leaky-categorical-24: constriction.stream.model.Categorical(perfect=False);
# uniform-256: constriction.stream.model.Uniform(256), exactly 8 bits per byte.
CODER_V3 = CoderSpec(
    p_window_stds=16.0,
    q_window_stds=6.0,
    x_window_stds=12.0,
    max_categorical_symbols=1 << 17,
    escape_digit_bits=16,
    whiten_digit_bits=16,
    whiten_extra_digits=2,
    whiten_mask="splitmix64-low16",
    delta_rule="min-std",
    posterior_order="far",
    gaussian_model="leaky-quantized-gaussian-24",
    categorical_model="leaky-categorical-24",
    raw_byte_model="uniform-256",
)

# {format version: its coder}. A new format version adds a line here (the same record when
# only the container changed, a new one when the coder did) and container.READABLE_VERSIONS
# lists it; the encoder writes container.VERSION, whose record is CURRENT.
CODER_SPECS: dict[int, CoderSpec] = {
    3: CODER_V3,
    4: CODER_V3,
    5: CODER_V3,
    6: CODER_V3,
    7: CODER_V3,
    8: CODER_V3,  # version 8 adds the image-record section (envelope.py); the coder is 7's
    9: CODER_V3,  # version 9 adds a latent grid per chunk (archive.push_chunks); the same grid rule
    10: CODER_V3,  # version 10 adds the ctx method (context_model.py), outside the chain
}
CURRENT = CODER_V3

# the rules of a CoderSpec this build implements (ans/, grid.py, level_codecs.py, tiles.py)
IMPLEMENTED_RULES = {"escape_digit_bits": 16, "whiten_digit_bits": 16, "whiten_mask": "splitmix64-low16",
                     "delta_rule": "min-std", "posterior_order": "far", "gaussian_model": "leaky-quantized-gaussian-24",
                     "categorical_model": "leaky-categorical-24", "raw_byte_model": "uniform-256"}


def coder_spec(version: int) -> CoderSpec:
    """The coder of format ``version``; a FormatError (one line) for a version without one."""
    try:
        return CODER_SPECS[version]
    except KeyError:
        raise FormatError(f"format version {version} has no coder in this build (it decodes versions "
                          f"{', '.join(map(str, sorted(CODER_SPECS)))})") from None


def check_spec(spec: CoderSpec) -> CoderSpec:
    """Refuse a coder record that names a rule this build does not implement, or whose
    numbers no coder can run."""
    for name, value in IMPLEMENTED_RULES.items():
        if getattr(spec, name) != value:
            raise ValueError(f"coder {name} = {getattr(spec, name)!r} is not implemented by this build (it has {value!r})")
    if not (0 < spec.q_window_stds <= spec.x_window_stds and 0 < spec.p_window_stds and spec.max_categorical_symbols >= 1
            and spec.whiten_extra_digits >= 0):
        raise ValueError(f"coder constants out of range: {spec}")
    return spec
