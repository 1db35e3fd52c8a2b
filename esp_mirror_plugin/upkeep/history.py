"""What happened to the mirror without anyone at the console: one line per event, newest last,
in /var/lib/esp-mirror/history ("2026-11-30T03:12:09Z healed at boot: ..."). heal writes it;
status shows the last line."""

from __future__ import annotations

import os
import time
from pathlib import Path

from esp_mirror_plugin.system import files
from esp_mirror_plugin.system.state import HISTORY as PATH

KEEP = 200  # lines; older ones are dropped when a new one is written


def path_in(root: str) -> str:
    return os.path.join(root, PATH)


def append(root: str, event: str, now: float | None = None) -> str:
    """Add ``event`` with a UTC time stamp (atomically, synced); returns the line written."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if now is None else now))
    line = f"{stamp} {event}"
    lines = [*read(root)[-(KEEP - 1) :], line]
    files.write_atomic(Path(path_in(root)), "".join(f"{x}\n" for x in lines), 0o644, preserve=False)
    return line


def read(root: str) -> list[str]:
    """The lines, oldest first; [] when nothing happened yet.

    :raises OSError: the file exists but cannot be read.
    """
    try:
        with open(path_in(root)) as handle:
            return [line.rstrip("\n") for line in handle if line.strip()]
    except FileNotFoundError:
        return []
