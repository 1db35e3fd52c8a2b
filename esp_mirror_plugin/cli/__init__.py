"""esp-mirror command line: plan, apply, profiles and the upkeep commands.

The exit codes are :class:`~esp_mirror_plugin.errors.ExitCode`'s, as :data:`EPILOG` shows them.
This module only parses: the module that carries a
command out (:mod:`.install` or :mod:`.upkeep`) is imported once the command is known, so
``--version`` or ``plan`` load no more than they need.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
import textwrap
import traceback
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from esp_mirror_plugin import __version__
from esp_mirror_plugin.errors import MEANINGS, BadInput, ExitCode, StepFailed
from esp_mirror_plugin.pipeline.request import Kind, choices, default_of, settings
from esp_mirror_plugin.system.state import ADOPT_BACKUPS
from esp_mirror_plugin.upkeep.table import CHANGING, UPKEEP, Option

if TYPE_CHECKING:
    from esp_mirror_plugin.system.discovery import HostView
    from esp_mirror_plugin.system.runner import Runner

AGAIN = "Fix the cause and run the same `esp-mirror {command}` again: it continues from here."
DESCRIPTION = """\
esp-mirror puts an EFI System Partition on every disk it is given and mirrors
them with md RAID1 (metadata 1.0: the superblock at the end, so the firmware
sees a plain FAT32 on each disk), with one firmware boot entry per disk: the
machine boots from any of its disks alone. plan shows every command and file
write; apply carries out the very same steps."""
EXAMPLES = """\
examples:
  esp-mirror plan --disk /dev/sda --disk /dev/sdb
      what would be done (changes nothing; root is not needed)
  sudo esp-mirror apply --disk /dev/sda --disk /dev/sdb
      do it (shows the plan and asks first)
  sudo esp-mirror status
      the mirror's health"""


def _exit_codes() -> str:
    """The epilog's "exit codes:" block: each code with its meaning (errors.MEANINGS), wrapped."""
    lines = ["exit codes:"]
    for code, meaning in MEANINGS.items():
        lines += textwrap.wrap(
            meaning,
            width=76,
            initial_indent=f"  {code:<4} ",
            subsequent_indent=" " * 7,
            break_on_hyphens=False,
            break_long_words=False,
        )
    return "\n".join(lines)


EPILOG = f"{EXAMPLES}\n\n{_exit_codes()}"


def is_root() -> bool:
    return os.geteuid() == 0


def install_options(parser: argparse.ArgumentParser, command: str = "apply") -> None:
    """The options of plan, apply and adopt, one per setting of
    :class:`~esp_mirror_plugin.pipeline.request.Request` (adopt's: those it takes)."""
    parser.add_argument(
        "--config", metavar="FILE.yaml", help="settings file (the same settings as YAML keys, e.g. esp_size: 512M)"
    )
    for name, setting in settings().items():
        if setting.option is None or (command == "adopt" and not setting.adopt):
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


_COMMANDS: dict[str, str] = {
    "plan": "print every command and file write apply would make, change nothing (root is not needed)",
    "apply": "carry out the plan: partition the disks, build the mirror, install the bootloader, make the "
    "boot entries (shows the plan and asks first, unless --yes)",
    "adopt": "take a running system's ESP into the mirror: no reinstall, no moment without a bootable ESP",
    "profiles": "list the built-in profiles, or show one (a built-in name or a YAML file) as the planner uses it",
    **{name: command.help for name, command in UPKEEP.items()},
}


def _options(name: str, p: argparse.ArgumentParser) -> None:
    """The options of one command."""
    if name in ("plan", "apply", "adopt"):
        install_options(p, name)
    if name == "plan":
        p.add_argument("--json", action="store_true", help="the plan as JSON")
    elif name == "apply":
        p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
        p.add_argument(
            "--json", action="store_true",
            help="print a report instead of progress: the plan (as plan --json) and what each step changed",
        )  # fmt: skip
        _expect_plan(p, "the `# digest` line of plan, or plan --json's digest")
    elif name == "adopt":
        p.add_argument(
            "--esp", metavar="PARTITION",
            help="the live ESP, when nothing is mounted at the mount point and fstab does not name it",
        )  # fmt: skip
        _expect_plan(p, "the `# digest` line of adopt --dry-run, or its --json digest")
        upkeep_options(p, CHANGING)
    elif name == "profiles":
        p.add_argument("name", nargs="?", help="a built-in profile name or a YAML file")
    elif name in UPKEEP:
        upkeep_options(p, UPKEEP[name].options)


def _expect_plan(parser: argparse.ArgumentParser, where: str) -> None:
    parser.add_argument(
        "--expect-plan",
        metavar="DIGEST",
        help=f"refuse unless the plan is still the one with this digest ({where})",
    )


def upkeep_options(parser: argparse.ArgumentParser, options: tuple[Option, ...]) -> None:
    """The options of an upkeep command, from its row in :mod:`esp_mirror_plugin.upkeep.table`
    (and adopt's ``--json``, ``--dry-run`` and ``--yes``, which are a changing upkeep command's)."""
    groups: dict[str, argparse._ActionsContainer] = {}
    for option in options:
        where: argparse._ActionsContainer = parser
        if option.exclusive is not None:
            if option.exclusive not in groups:
                groups[option.exclusive] = parser.add_mutually_exclusive_group()
            where = groups[option.exclusive]
        kwargs: dict[str, Any] = {"help": option.help}
        if option.switch:
            kwargs["action"] = "store_true"
        if option.required:
            kwargs["required"] = True
        if option.metavar is not None:
            kwargs["metavar"] = option.metavar
        if option.choices is not None:
            kwargs["choices"] = option.choices
        if option.type is not None:
            kwargs["type"] = option.type
        if option.default is not None:
            kwargs["default"] = option.default
        where.add_argument(option.flag, **kwargs)


class _Parser(argparse.ArgumentParser):
    """argparse with esp-mirror's bad input: a usage error is one line and exit code 2, on the
    error stream :func:`main` was given (argparse would print the usage and exit by itself)."""

    help_of: str = ""  # the command whose --help lists what it takes ("" when no command is named)

    def error(self, message: str) -> NoReturn:
        raise BadInput(f"{message} (see `{self.help_of or self.prog} --help`)")


def _parser(argv: list[str]) -> argparse.ArgumentParser:
    """The parser, with only the options of the command in ``argv`` when it names one (argparse
    builds every option object up front; one command's are enough to parse one command line).
    The commands' parsers are of the same class (argparse makes them so)."""
    parser = _Parser(
        prog="esp-mirror",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"esp-mirror {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an internal error")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", title="commands",
        help="`esp-mirror COMMAND --help` shows its options",
    )  # fmt: skip
    named = next((a for a in argv if not a.startswith("-")), None)
    if named in _COMMANDS:
        parser.help_of = f"esp-mirror {named}"
    for name, text in _COMMANDS.items():
        p = sub.add_parser(name, help=text, description=text)
        if named in (name, None) or named not in _COMMANDS:
            _options(name, p)
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
    try:
        args = _parser(argv).parse_args(argv)
    except BadInput as exc:
        print(f"esp-mirror: error: {exc}", file=err)
        return exc.exit_code
    args.command_line = shlex.join(["esp-mirror", *argv])  # who holds the lock, for a second run
    try:
        return _run(args, out, stdin, runner, host_view)
    except BadInput as exc:
        print(f"esp-mirror: error: {exc}", file=err)
        return exc.exit_code
    except BrokenPipeError:  # `esp-mirror plan ... | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.DONE
    except StepFailed as exc:
        print(
            f"esp-mirror: error: [{exc.group}] step failed: {exc.step}\n{exc.detail}\n"
            f"Nothing after this step was done. {_after_failure(args)}",
            file=err,
        )
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"esp-mirror: interrupted. {_after_failure(args)}", file=err)
        return ExitCode.INTERRUPTED
    except Exception as exc:  # a bug: one line, the traceback only when asked for
        if args.debug:
            traceback.print_exc(file=err)
        said = " ".join(str(exc).split())  # one line, whatever the exception's text holds
        print(
            f"esp-mirror: internal error: {type(exc).__name__}: {said} (this is a bug; run again with "
            "--debug for the traceback and report it)",
            file=err,
        )
        return ExitCode.INTERNAL_ERROR


def _after_failure(args: argparse.Namespace) -> str:
    if args.command == "adopt":
        backups = os.path.join(getattr(args, "target", None) or "/", ADOPT_BACKUPS)
        return (
            f"Run the same command again, it continues from here: {args.command_line}\n"
            f"What the ESPs held before the adoption is in {backups}: esp-<partition>.tar (the files), "
            "gpt-<disk>.bin (`sgdisk --load-backup=FILE DISK`), efibootmgr-v.txt and fstab.lines."
        )
    upkeep = UPKEEP.get(args.command)
    if upkeep is not None and upkeep.after_failure is not None:
        return upkeep.after_failure
    return AGAIN.format(command=args.command)


def _run(
    args: argparse.Namespace, out: TextIO, stdin: TextIO, runner: Runner | None, host_view: HostView | None
) -> int:
    if args.command in UPKEEP:
        if not is_root():
            raise BadInput(f"{args.command} reads md and EFI state and must run as root: run it with sudo")
        module = importlib.import_module("esp_mirror_plugin.cli.upkeep")
        return int(module.run(args, out, stdin, runner, host_view))
    if args.command in ("apply", "adopt") and not is_root():
        raise BadInput(f"{args.command} changes disks and must run as root: run it with sudo")
    module = importlib.import_module("esp_mirror_plugin.cli.install")
    return int(module.run(args, out, stdin, runner, host_view, lenient=not is_root()))
