"""One esp-mirror at a time: apply and every upkeep command that reads or changes the mirror
hold an exclusive ``flock`` on one file (the weekly check must not run into a repair).

A second run waits a bounded time, then refuses (exit 2) naming the holder, which writes its
pid, command line and start time into the lock file. The kernel drops the lock when the holder
dies, so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator

from esp_mirror_plugin.errors import BadInput

PATH = "/run/lock/esp-mirror.lock"
WAIT_SECONDS = 30.0


def holder(path: str | None = None) -> str | None:
    """Who holds the lock now ("pid 123: esp-mirror repair ..., since ..."), or None."""
    path = path or PATH
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another esp-mirror"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


@contextlib.contextmanager
def held(
    what: str,
    path: str | None = None,
    wait: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[None]:
    """Hold the lock for ``what`` (the command line); wait up to ``wait`` seconds for it.

    :raises BadInput: another esp-mirror still holds it after ``wait`` seconds.
    """
    path = path or PATH
    wait = WAIT_SECONDS if wait is None else wait
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = clock() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if clock() >= deadline:
                    who = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another esp-mirror"
                    raise BadInput(
                        f"another esp-mirror is running ({who}) and still holds {path} after "
                        f"{wait:g} s: let it finish, then run this again"
                    ) from None
                sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {what}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing drops the lock
