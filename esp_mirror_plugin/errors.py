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
