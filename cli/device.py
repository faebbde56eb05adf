"""The ``--device`` option, the same on every command that runs the network
(vdmcodec/devices.py parses it)."""
from __future__ import annotations

import typer


def device_option(default: str):
    """A typer option ``--device`` with this command's default."""
    from vdmcodec.devices import HELP

    return typer.Option(default, "--device", help=f"{HELP} Default: {default}.")
