"""Asking before a change: the one confirmation every changing command uses."""

from __future__ import annotations

from typing import TextIO

from esp_mirror_plugin.errors import BadInput


def confirmed(what: str, yes: bool, stdin: TextIO, out: TextIO, *, dry_run_hint: bool = False) -> bool:
    """True when the plan shown above may be carried out: ``--yes``, or "yes" typed on a terminal.

    :raises BadInput: no ``--yes`` and no terminal to ask on.
    """
    if yes:
        return True
    if not stdin.isatty():
        also = ", or --dry-run to only look" if dry_run_hint else ""
        raise BadInput(f"{what} changes disks: pass --yes to confirm (there is no terminal to ask on){also}")
    print("\nType 'yes' to carry out this plan: ", end="", file=out, flush=True)
    if stdin.readline().strip() == "yes":
        return True
    print("Nothing done.", file=out)
    return False
