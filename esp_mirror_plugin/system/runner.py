"""The one chokepoint that runs system commands, and a recording stand-in for tests.

Commands are argv tuples, never shell strings. The environment is built, not inherited: a fixed
locale and a PATH that includes the sbin directories. In-target commands get their ``chroot``
prefix here (:func:`full_argv`), so the plan prints exactly the argv that apply runs.

A command that exits with a code its caller did not name as acceptable raises
:class:`CommandFailed`: a probe that fails is never read as "nothing there" (mkosi's ``run()``
does the same). Callers that expect other codes say so with ``ok=``.
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

A = TypeVar("A")  # an argument: a string, or a planned value (steps.Var)

SEARCH_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BASE_ENV = {"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PATH": SEARCH_PATH}
NOT_INSTALLED = 127


def full_argv(argv: Sequence[A], root: str = "/") -> tuple[A | str, ...]:
    """The argv that really runs: ``chroot ROOT …`` for a command meant for a target root."""
    if os.path.normpath(root) == "/":
        return tuple(argv)
    return ("chroot", root, *argv)


@dataclass(frozen=True)
class Result:
    """What a finished command gave back."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str = ""
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def program(self) -> str:
        """The program that ran (the one inside ``chroot ROOT ...``)."""
        return self.argv[2] if self.argv[:1] == ("chroot",) and len(self.argv) > 2 else self.argv[0]

    def describe(self) -> str:
        """A copy-pasteable command line, its exit code and stderr: what a failure report shows."""
        text = f"command: {shlex.join(self.argv)}\nexit code: {self.returncode}"
        if self.returncode == NOT_INSTALLED:
            text += f" ({self.program} is not installed)"
        if self.stderr.strip():
            text += f"\nstderr: {self.stderr.strip()}"
        return text


class CommandFailed(Exception):
    """A command exited with a code its caller did not accept. ``result`` says how."""

    def __init__(self, result: Result) -> None:
        self.result = result
        super().__init__(result.describe())

    @property
    def stderr_line(self) -> str:
        """The last line of stderr (or the exit code), for one-line messages."""
        lines = self.result.stderr.strip().splitlines()
        return lines[-1] if lines else f"exit code {self.result.returncode}"


def checked(result: Result, ok: Sequence[int]) -> Result:
    """``result``, or :class:`CommandFailed` when its exit code is not in ``ok``."""
    if result.returncode not in ok:
        raise CommandFailed(result)
    return result


class Runner(Protocol):
    """Runs commands and answers where tools are. Injected everywhere; faked in tests."""

    def run(
        self,
        argv: Sequence[str],
        *,
        root: str = "/",
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        ok: Sequence[int] = (0,),
    ) -> Result:
        """Run ``argv`` (chrooted into ``root`` unless it is ``/``) and return its result.

        :param ok: the exit codes the caller accepts; any other raises :class:`CommandFailed`.
            A missing program exits 127, a timeout 124.
        """
        ...

    def which(self, tool: str, root: str = "/") -> str | None:
        """The path of ``tool`` on the built PATH inside ``root``, or None."""
        ...


def which_in_root(tool: str, root: str = "/") -> str | None:
    """Find ``tool`` on :data:`SEARCH_PATH` as seen from inside ``root`` (links resolved there)."""
    if os.path.normpath(root) == "/":
        found = shutil.which(tool, path=SEARCH_PATH)
        return os.path.join(os.path.dirname(found), tool) if found else None
    from esp_mirror_plugin.system.files import resolve_in_root

    for directory in SEARCH_PATH.split(":"):
        candidate = resolve_in_root(root, os.path.join(directory, tool))
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return os.path.join(directory, tool)
    return None


class CheckedRunner:
    """What every runner shares: the chroot prefix and the check of the exit code against ``ok``.
    A subclass says how a full argv is carried out (:meth:`_run`) and where programs are."""

    def run(
        self,
        argv: Sequence[str],
        *,
        root: str = "/",
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        ok: Sequence[int] = (0,),
    ) -> Result:
        return checked(self._run(full_argv(argv, root), env, timeout), ok)

    def _run(self, real: tuple[str, ...], env: Mapping[str, str] | None, timeout: float | None) -> Result:
        raise NotImplementedError


class ShRunner(CheckedRunner):
    """Runs commands for real through the ``sh`` library. The only place a process is started."""

    def _run(self, real: tuple[str, ...], env: Mapping[str, str] | None, timeout: float | None) -> Result:
        import sh  # imported here: plan and unit tests never need it

        program = shutil.which(real[0], path=SEARCH_PATH)
        if program is None:
            return Result(real, NOT_INSTALLED, "", f"{real[0]}: command not found")
        try:
            proc = sh.Command(program)(
                *real[1:],
                _ok_code=list(range(256)),
                _env={**BASE_ENV, **(env or {})},
                _tty_out=False,
                _return_cmd=True,
                _timeout=timeout,
                _in=None,
            )
        except sh.TimeoutException:
            return Result(real, 124, "", f"timed out after {timeout} s")
        except sh.SignalException as exc:
            return Result(real, 128 + abs(exc.exit_code), _text(exc.stdout), _text(exc.stderr))
        return Result(real, proc.exit_code, _text(proc.stdout), _text(proc.stderr))

    def which(self, tool: str, root: str = "/") -> str | None:
        return which_in_root(tool, root)


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data
