"""A runner that records and answers instead of running: for tests and dry tooling.

Kept apart from :mod:`esp_mirror_plugin.system.runner` so that esp-mirror itself never loads it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from esp_mirror_plugin.system.runner import CheckedRunner, Result


class UnexpectedCommand(AssertionError):
    """A test ran a command it did not script: tests never reach the real machine."""


Responder = Callable[[tuple[str, ...]], "Result | None"]


@dataclass
class RecordingRunner(CheckedRunner):
    """A runner for tests and dry tooling: records every argv and answers from a script.

    ``responses`` maps an exact (chroot-prefixed) argv to its result; ``responders`` are tried in
    order for argv not in the map. Anything else raises :class:`UnexpectedCommand`.
    ``tools`` is the set of programs :meth:`which` pretends exist (None: all of them).
    """

    responses: dict[tuple[str, ...], Result] = field(default_factory=dict)
    responders: list[Responder] = field(default_factory=list)
    tools: set[str] | None = None
    calls: list[tuple[str, ...]] = field(default_factory=list)

    def script(self, argv: Sequence[str], stdout: str = "", returncode: int = 0, stderr: str = "") -> None:
        argv = tuple(argv)
        self.responses[argv] = Result(argv, returncode, stdout, stderr)

    def _run(self, real: tuple[str, ...], env: Mapping[str, str] | None, timeout: float | None) -> Result:
        self.calls.append(real)
        return self._answer(real)

    def _answer(self, real: tuple[str, ...]) -> Result:
        if real in self.responses:
            return self.responses[real]
        for responder in self.responders:
            result = responder(real)
            if result is not None:
                return result
        raise UnexpectedCommand(f"unscripted command: {real!r}")

    def which(self, tool: str, root: str = "/") -> str | None:
        if self.tools is None or tool in self.tools:
            return f"/usr/sbin/{tool}"
        return None
