"""Name -> thing tables shared by the samplers and the schedules, and their error type."""
from __future__ import annotations

import dataclasses
from typing import Mapping, TypeVar

from ..errors import VdmcodecError

T = TypeVar("T")


class SamplingError(VdmcodecError, ValueError):
    """Bad sampler input (unknown name, option out of range, missing noise source).

    A ``ValueError`` for library callers and a ``VdmcodecError`` for the CLI, which turns it
    into a one-line message and a non-zero exit."""


def lookup(table: Mapping[str, T], name: str, what: str) -> T:
    """table[name], or a SamplingError that lists the valid names."""
    try:
        return table[name]
    except KeyError:
        raise SamplingError(f"unknown {what} {name!r}; choose one of: {', '.join(table)}") from None


def make_options(cls: type[T], options: Mapping[str, object], owner: str) -> T:
    """Build a frozen options dataclass from keyword options, naming the valid ones on error."""
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in options if k not in fields]
    if unknown:
        valid = ", ".join(fields) if fields else "none"
        raise SamplingError(f"{owner} does not take option(s) {', '.join(unknown)}; valid: {valid}")
    return cls(**options)
