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
