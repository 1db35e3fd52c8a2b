"""esp-mirror's exit codes, each with its one meaning, and the two ways it stops on purpose."""

from enum import IntEnum


class ExitCode(IntEnum):
    """What esp-mirror exits with. :data:`MEANINGS` says each once: ``--help`` (the parser's
    epilog), the manual page, README's table and the Ansible modules say the same words
    (tests/unit/test_cli_help.py, test_docs.py and test_ansible_modules.py hold them to it)."""

    DONE = 0
    PROBLEMS = 1  # problems found, or a step failed
    BAD_INPUT = 2
    INTERNAL_ERROR = 70  # EX_SOFTWARE of sysexits.h: distinct from every code esp-mirror means
    INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command Ctrl-C stopped


MEANINGS = {
    ExitCode.DONE: "done; status: the mirror is healthy; check: the members are identical",
    ExitCode.PROBLEMS: "problems found (status, check: they are listed; heal: a member was left out), or a step "
    "failed (the message names it): fix the cause and run the same command again, it continues from there",
    ExitCode.BAD_INPUT: "bad input, or the confirmation was not given: nothing was changed (one line names the "
    "problem and the fix); status: esp-mirror is not set up here",
    ExitCode.INTERNAL_ERROR: "internal error: a bug in esp-mirror, said in one line; run the command again with "
    "--debug for the traceback and report it",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C): run the same command again, it continues from where it stopped",
}


class BadInput(Exception):
    """The request cannot be carried out as given; nothing was changed. Exit code 2.

    The message is one line that names the problem and the fix.
    """

    exit_code = ExitCode.BAD_INPUT


class StepFailed(Exception):
    """A step of a running apply failed. Exit code 1.

    Everything before the step is done and everything after it is not; planning is idempotent,
    so running apply again continues from where this stopped.
    """

    exit_code = ExitCode.PROBLEMS

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
