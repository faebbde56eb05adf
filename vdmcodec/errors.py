"""The codec's own error types: every expected failure is one of these, with a one-line
message that names what was wrong (the CLI prints it and exits non-zero)."""


class VdmcodecError(Exception):
    """Base class for every error vdmcodec raises on bad input or a bad environment."""


class DataError(VdmcodecError):
    """An input file or folder cannot be read as 8-bit images."""


class ModelError(VdmcodecError):
    """A model cannot be found, loaded, or does not match what a file needs."""


class FormatError(VdmcodecError):
    """A compressed file is truncated, corrupted, or of an unknown format/version."""


class LimitError(FormatError):
    """A file claims more work or memory than the decoder's limits allow (DecodeLimits)."""


class RuntimeMismatchError(VdmcodecError):
    """This process cannot replay the encoder's arithmetic (e.g. another torch thread count)."""
