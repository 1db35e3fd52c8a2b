"""The one place where the harness runs a host command (qemu has its own runner in qemu.py)."""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class CommandError(RuntimeError):
    """A host command failed; the message holds a copy-pasteable command line, exit code and stderr."""


def run_command(
    argv: Sequence[str],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    hint: str = "",
) -> bytes:
    """Run ``argv`` with a built environment (LANG=C.UTF-8, PATH with sbin, plus ``env``) and return stdout.

    :param hint: what to do about a failure, appended to the error message.
    :raises CommandError: when the command is missing or exits non-zero.
    """
    full_env = {"PATH": HOST_PATH, "LANG": "C.UTF-8", **(env or {})}
    try:
        proc = subprocess.run(list(argv), cwd=cwd, env=full_env, capture_output=True, check=False)
    except FileNotFoundError:
        raise CommandError(f"{argv[0]} is not installed (run `ci.vm.preflight()` to see what to install)") from None
    if proc.returncode != 0:
        stderr = proc.stderr.decode(errors="replace").strip()
        raise CommandError(f"`{shlex.join(argv)}` exited {proc.returncode}: {stderr}{' ' + hint if hint else ''}")
    return proc.stdout
