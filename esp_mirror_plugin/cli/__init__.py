"""esp-mirror command line: plan, apply, profiles and the upkeep commands.

Exit codes: 0 done, 1 a step failed (running the same command again continues) or an internal
error, 2 bad input (nothing changed). This module only parses: the module that carries a
command out (:mod:`.install` or :mod:`.upkeep`) is imported once the command is known, so
``--version`` or ``plan`` load no more than they need.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
import traceback
from typing import TYPE_CHECKING, Any, TextIO

from esp_mirror_plugin import __version__
from esp_mirror_plugin.errors import BadInput, StepFailed
from esp_mirror_plugin.pipeline.request import Kind, choices, default_of, settings

if TYPE_CHECKING:
    from esp_mirror_plugin.system.discovery import HostView
    from esp_mirror_plugin.system.runner import Runner

BACKUP_DIR = "/var/lib/esp-mirror"
UPKEEP = ("status", "check", "repair", "replace", "add", "entries")
AFTER_FAILURE = {
    "check": "The mirror was not changed; run `esp-mirror check` again once the cause is fixed.",
}
AGAIN = "Fix the cause and run the same `esp-mirror {command}` again: it continues from here."


def is_root() -> bool:
    return os.geteuid() == 0


def install_options(parser: argparse.ArgumentParser) -> None:
    """The options of plan and apply, one per setting of :class:`~esp_mirror_plugin.pipeline.request.Request`."""
    parser.add_argument(
        "--config", metavar="FILE.yaml", help="settings file (the same settings as YAML keys, e.g. esp_size: 512M)"
    )
    for name, setting in settings().items():
        if setting.option is None:
            continue
        default = setting.shown_default or default_of(name)
        shown = f" (default: {default})" if default not in ((), None, False) and setting.kind is not Kind.FLAG else ""
        kwargs: dict[str, Any] = {"dest": name, "help": setting.help + shown}
        if setting.kind is Kind.FLAG:
            kwargs.update(action="store_const", const=True)
        elif setting.kind is Kind.PATHS:
            kwargs.update(action="append", metavar=setting.metavar)
        elif setting.kind is Kind.CHOICE:
            kwargs.update(choices=choices(name))
        elif setting.metavar:
            kwargs.update(metavar=setting.metavar)
        parser.add_argument(setting.option or f"--{name.replace('_', '-')}", **kwargs)


def _changing(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--dry-run", action="store_true", help="show what would be done, change nothing")
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="esp-mirror", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--version", action="version", version=f"esp-mirror {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an internal error")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan", help="print every command and file write, change nothing")
    install_options(p)
    p.add_argument("--json", action="store_true", help="the plan as JSON")
    p = sub.add_parser("apply", help="carry out the plan")
    install_options(p)
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument(
        "--expect-plan",
        metavar="DIGEST",
        help="refuse unless the plan is still the one with this digest (from plan --json)",
    )
    p = sub.add_parser("profiles", help="list the built-in profiles, or show one")
    p.add_argument("name", nargs="?")

    p = sub.add_parser("status", help="the mirror's health: array, members, mount, boot entries")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("check", help="md consistency check, then compare the members' files (read-only)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("repair", help="make every member equal to the chosen one (full rebuild from it)")
    p.add_argument(
        "--source",
        required=True,
        metavar="DISK|auto",
        help="the member to keep; auto: the disk the firmware booted from",
    )
    p.add_argument("--backup-dir", default=BACKUP_DIR, help=f"where overwritten files are kept (default {BACKUP_DIR})")
    _changing(p)
    p = sub.add_parser("replace", help="replace a failed or missing member with a new disk")
    p.add_argument("--old", required=True, metavar="DISK|missing", help="the member to replace, or missing")
    p.add_argument("--new", required=True, metavar="DISK", help="the new (blank) disk")
    p.add_argument("--wipe", action="store_true", help="erase an existing partition table on the new disk")
    _changing(p)
    p = sub.add_parser("add", help="grow the mirror by one member")
    p.add_argument("--disk", required=True, metavar="DISK", help="the new (blank) disk")
    p.add_argument("--wipe", action="store_true", help="erase an existing partition table on the disk")
    _changing(p)
    p = sub.add_parser("entries", help="one firmware boot entry per member, ours first, stale ones removed")
    _changing(p)
    return parser


def main(
    argv: list[str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    runner: Runner | None = None,
    host_view: HostView | None = None,
    stdin: TextIO | None = None,
) -> int:
    out, err, stdin = out or sys.stdout, err or sys.stderr, stdin or sys.stdin
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    args.command_line = shlex.join(["esp-mirror", *argv])  # who holds the lock, for a second run
    try:
        return _run(args, out, stdin, runner, host_view)
    except BadInput as exc:
        print(f"esp-mirror: error: {exc}", file=err)
        return exc.exit_code
    except BrokenPipeError:  # `esp-mirror plan ... | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except StepFailed as exc:
        print(
            f"esp-mirror: error: [{exc.group}] step failed: {exc.step}\n{exc.detail}\n"
            f"Nothing after this step was done. {_after_failure(args.command)}",
            file=err,
        )
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"esp-mirror: interrupted. {_after_failure(args.command)}", file=err)
        return 130
    except Exception as exc:  # a bug: one line, the traceback only when asked for
        if args.debug:
            traceback.print_exc(file=err)
        print(
            f"esp-mirror: internal error: {type(exc).__name__}: {exc} (this is a bug; run again with "
            "--debug for the traceback and report it)",
            file=err,
        )
        return 1


def _after_failure(command: str) -> str:
    return AFTER_FAILURE.get(command, AGAIN.format(command=command))


def _run(
    args: argparse.Namespace, out: TextIO, stdin: TextIO, runner: Runner | None, host_view: HostView | None
) -> int:
    if args.command in UPKEEP:
        if not is_root():
            raise BadInput(f"{args.command} reads md and EFI state and must run as root: run it with sudo")
        module = importlib.import_module("esp_mirror_plugin.cli.upkeep")
        return int(module.run(args, out, stdin, runner, host_view))
    if args.command == "apply" and not is_root():
        raise BadInput("apply changes disks and must run as root: run it with sudo")
    module = importlib.import_module("esp_mirror_plugin.cli.install")
    return int(module.run(args, out, stdin, runner, host_view, lenient=not is_root()))
