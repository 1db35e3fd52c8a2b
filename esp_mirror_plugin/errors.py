"""The two ways esp-mirror stops, each with its own exit code."""


class BadInput(Exception):
    """The request cannot be carried out as given; nothing was changed. Exit code 2.

    The message is one line that names the problem and the fix.
    """

    exit_code = 2


class StepFailed(Exception):
    """A step of a running apply failed. Exit code 1.

    Everything before the step is done and everything after it is not; planning is idempotent,
    so running apply again continues from where this stopped.
    """

    exit_code = 1

    def __init__(self, group: str, step: str, detail: str) -> None:
        self.group = group
        self.step = step
        self.detail = detail
        super().__init__(f"[{group}] step failed: {step}\n{detail}")


_UNITS = (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10))


def size_text(size: int) -> str:
    """A size as a message shows it: in the largest binary unit it is at least one of, whole
    when it is, else with one decimal rounded down (a disk of 20 GiB less a little is "19.9 GiB",
    never "20 GiB"): 512 MiB, 1.5 GiB, 100 TiB, 300 bytes."""
    for unit, factor in _UNITS:
        if size >= factor:
            tenths = size * 10 // factor
            whole = size % factor == 0
            return f"{size // factor} {unit}" if whole else f"{tenths // 10}.{tenths % 10} {unit}"
    return f"{size} bytes"
