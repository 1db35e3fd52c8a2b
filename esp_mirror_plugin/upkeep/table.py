"""The upkeep commands, one row each: what ``--help`` says, the options, the lock, what to say
after a failure, and the names of the function that does the work (in
:mod:`esp_mirror_plugin.upkeep.commands`) and of the one that shows its result (in
:mod:`esp_mirror_plugin.cli.upkeep`).

This is the one place a command is listed: the command line's parser is built from it
(:mod:`esp_mirror_plugin.cli`), and :func:`esp_mirror_plugin.upkeep.commands.run` carries a row
out. It is data only, so building the parser (``--version``, ``plan``) loads nothing else of
``upkeep/``; the two functions are looked up by name once the command is known.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from esp_mirror_plugin.system.state import REPAIR_BACKUPS

HEAL_LOCK_WAIT = 300.0  # at boot, heal may queue behind a check or another heal's recovery


@dataclass(frozen=True)
class Option:
    """One option of a command, as :meth:`argparse.ArgumentParser.add_argument` takes it (a value
    left at its default here is not passed on)."""

    flag: str
    help: str
    metavar: str | None = None
    required: bool = False
    default: Any = None
    choices: tuple[str, ...] | None = None
    type: type | None = None
    switch: bool = False  # store_true: given or not
    exclusive: str | None = None  # options with the same name here exclude each other


@dataclass(frozen=True)
class Lock:
    """The command holds the lock (:mod:`esp_mirror_plugin.system.lock`) from before it reads the
    mirror until it is done; ``wait``: seconds to queue behind another holder (None: refuse at once)."""

    wait: float | None = None


@dataclass(frozen=True)
class Command:
    """One upkeep command."""

    name: str
    help: str  # the line of ``esp-mirror --help``, and the description of ``esp-mirror NAME --help``
    work: str  # a function of upkeep/commands.py: (Call) -> exit code, run under ``lock``
    show: str  # a function of cli/upkeep.py: (args, result, out) prints what ``work`` hands to Call.show
    options: tuple[Option, ...] = ()
    lock: Lock | None = Lock()  # None: takes no lock (and only says who holds it)
    after_failure: str | None = None  # after a failed step or Ctrl-C; None: run the same command again


JSON = Option("--json", "machine-readable output", switch=True)
DRY_RUN = Option("--dry-run", "show what would be done, change nothing", switch=True)
YES = Option("--yes", "do not ask for confirmation", switch=True)
CHANGING = (JSON, DRY_RUN, YES)  # a command that carries out a plan (commands.carry_out)
WIPE = Option("--wipe", "erase an existing partition table on the new disk", switch=True)
METRICS = (
    Option(
        "--metrics",
        "also write the mirror's health as Prometheus metrics to FILE (atomically; its directory must exist)",
        metavar="FILE",
        exclusive="metrics",
    ),
    Option(
        "--metrics-dir",
        "write DIR/esp_mirror.prom when DIR exists (node_exporter's textfile directory); nothing when it does not",
        metavar="DIR",
        exclusive="metrics",
    ),
)

UPKEEP: dict[str, Command] = {
    c.name: c
    for c in (
        Command(
            "status",
            "the mirror's health: array, members, mount, boot entries",
            work="run_status",
            show="show_status",
            options=(JSON, *METRICS),
            lock=None,
        ),
        Command(
            "check",
            "md consistency check, then compare the members' files (read-only); the result is kept for status",
            work="run_check",
            show="show_check",
            options=(
                JSON,
                *METRICS,
                Option(
                    "--no-md-check",
                    "do not start md's check (the distribution's runs on its own schedule): compare the member "
                    "files, read mismatch_cnt as md's last check left it",
                    switch=True,
                ),
            ),
            after_failure="The mirror was not changed; run `esp-mirror check` again once the cause is fixed.",
        ),
        Command(
            "repair",
            "make every member equal to the chosen one (full rebuild from it)",
            work="run_repair",
            show="show_report",
            options=(
                Option(
                    "--source",
                    "the member to keep; auto: the disk the firmware booted from",
                    metavar="DISK|auto",
                    required=True,
                ),
                Option(
                    "--backup-dir",
                    f"where overwritten files are kept (default {REPAIR_BACKUPS})",
                    default=REPAIR_BACKUPS,
                ),
                *CHANGING,
            ),
        ),
        Command(
            "replace",
            "replace a failed or missing member with a new disk",
            work="run_replace",
            show="show_report",
            options=(
                Option("--old", "the member to replace, or missing", metavar="DISK|missing", required=True),
                Option("--new", "the new (blank) disk", metavar="DISK", required=True),
                WIPE,
                Option(
                    "--copy-table",
                    "give the new disk the partition table of a surviving member's disk (new GUIDs): for an ESP "
                    "beside an md root or a pool on the same disks; the other arrays' `mdadm --add` lines follow",
                    switch=True,
                ),
                Option(
                    "--add-others",
                    "with --copy-table: also run those `mdadm --add` lines once the ESP is whole",
                    switch=True,
                ),
                *CHANGING,
            ),
        ),
        Command(
            "add",
            "grow the mirror by one member",
            work="run_add",
            show="show_report",
            options=(Option("--disk", "the new (blank) disk", metavar="DISK", required=True), WIPE, *CHANGING),
        ),
        Command(
            "entries",
            "one firmware boot entry per member, ours first, stale ones removed",
            work="run_entries",
            show="show_report",
            options=CHANGING,
        ),
        Command(
            "heal",
            "put members of the array that are present but out of it back in (run at boot and on hot-plug)",
            work="run_heal",
            show="show_report",
            options=(
                Option(
                    "--why",
                    "what started it, for the history line (default: hand)",
                    choices=("boot", "hot-plug", "hand"),
                    default="hand",
                ),
                Option("--device", "look at this partition only (hot-plug)", metavar="PARTITION"),
                Option(
                    "--wait",
                    "wait this long for the array to be running (at boot; default 0)",
                    metavar="SECONDS",
                    type=float,
                    default=0.0,
                ),
                JSON,
                DRY_RUN,
            ),
            lock=Lock(wait=HEAL_LOCK_WAIT),
        ),
        Command(
            "release",
            "take a disk out of the mirror as a plain ESP that boots alone, or undo the mirror (--all)",
            work="run_release",
            show="show_report",
            options=(
                Option(
                    "--disk",
                    "the member disk to take out: its partition becomes a plain FAT ESP with a volume id of its "
                    "own and keeps a boot entry; the array shrinks by one",
                    metavar="DISK",
                    exclusive="release",
                ),
                Option(
                    "--all",
                    "undo the mirror: every member released, the array stopped, the first disk's partition mounted "
                    "as the machine's ESP, esp-mirror's units, hooks and settings removed",
                    switch=True,
                    exclusive="release",
                ),
                Option(
                    "--one-member",
                    "with --disk on a mirror of two disks: keep the other as an array of one member "
                    "(`esp-mirror add` grows it again) instead of refusing",
                    switch=True,
                ),
                *CHANGING,
            ),
        ),
        Command(
            "refresh",
            "write the installed system's esp-mirror, heal units and upgrade settings again",
            work="run_refresh",
            show="show_report",
            options=CHANGING,
        ),
    )
}
