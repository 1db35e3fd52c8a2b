"""A periodic check of the mirror in the installed system, and its metrics.

Where the distribution ships an md check (Debian's checkarray cron job, mdcheck timers, Fedora's
raid-check.timer) it is enabled, and esp-mirror's weekly run (``esp-mirror-check.timer``) leaves
md's check to it: ``esp-mirror check --no-md-check`` compares the members' files and reads
mismatch_cnt as that check left it. Elsewhere esp-mirror's weekly ``esp-mirror check`` runs md's
check too (profile key ``own_check``: a systemd timer, a cron.weekly or periodic/weekly script).
Either way it exits non-zero on drift (a failed unit, a syslog line) and writes
``esp_mirror.prom`` into the node_exporter textfile directory ``metrics_dir`` when that exists.
It runs the esp-mirror that apply put on the installed system (:mod:`.installed`).
"""

from __future__ import annotations

import os
import shlex

from esp_mirror_plugin.hooks.heal import PROGRAM
from esp_mirror_plugin.pipeline.kinds import Init, OwnCheck
from esp_mirror_plugin.pipeline.profiles import Profile
from esp_mirror_plugin.pipeline.steps import Command, Step, WriteFile
from esp_mirror_plugin.system.target import Target

UNIT = "esp-mirror-check"

TIMER = """\
[Unit]
Description=Weekly check of the mirrored EFI System Partition

[Timer]
OnCalendar=weekly
RandomizedDelaySec=1h
Persistent=true

[Install]
WantedBy=timers.target
"""

_CRON_DIRS = {OwnCheck.CRON_WEEKLY: "etc/cron.weekly", OwnCheck.PERIODIC_WEEKLY: "etc/periodic/weekly"}


def check_argv(own_check: OwnCheck, metrics_dir: str) -> tuple[str, ...]:
    """The weekly run: md's check too unless the distribution runs its own (``own_check: none``)."""
    no_md = ("--no-md-check",) if own_check is OwnCheck.NONE else ()
    return (PROGRAM, "check", *no_md, "--metrics-dir", metrics_dir)


def service(argv: tuple[str, ...]) -> str:
    what = (
        "member files; md's check is the distribution's"
        if "--no-md-check" in argv
        else "md consistency and member files"
    )
    return f"""\
[Unit]
Description=Check the mirrored EFI System Partition ({what})
Documentation=man:mdadm(8)

[Service]
Type=oneshot
ExecStart={shlex.join(argv)}
"""


def cron(argv: tuple[str, ...]) -> str:
    return f"""\
#!/bin/sh
# esp-mirror: weekly check of the mirrored EFI System Partition; drift is logged to syslog.
{shlex.join(argv)} 2>&1 | logger -t esp-mirror
"""


def plan(
    profile: Profile, target: Target, metrics_dir: str, esp_mirror_installed: bool
) -> tuple[tuple[Step, ...], tuple[str, ...]]:
    """(steps, notes). ``metrics_dir`` is checked already (``metrics_dir_problem``); without
    ``esp_mirror_installed`` only the distribution's check is enabled (the installed-system
    group says why esp-mirror is not there)."""
    steps: list[Step] = [
        Command(argv, root=target.root, why="the distribution's periodic md check") for argv in profile.periodic_check
    ]
    argv = check_argv(profile.own_check, metrics_dir)
    if profile.own_check is OwnCheck.NONE:
        why = "esp-mirror's weekly comparison of the member files and its metrics (md's check is the distribution's)"
        if not esp_mirror_installed:
            return tuple(steps), ()
        if profile.init is not Init.SYSTEMD:
            return tuple(steps), (
                f"no weekly esp-mirror run: own_check none installs a systemd timer, and this profile's init is "
                f"{profile.init}; set own_check to cron-weekly or periodic-weekly to have one",
            )
    else:
        why = "esp-mirror's own weekly check (the distribution ships none)"
    if profile.own_check in (OwnCheck.NONE, OwnCheck.SYSTEMD_TIMER):
        steps += [
            WriteFile(target.path(f"etc/systemd/system/{UNIT}.service"), service(argv), why=why, root=target.root),
            WriteFile(target.path(f"etc/systemd/system/{UNIT}.timer"), TIMER, why=why, root=target.root),
        ]
        # enabled already (the link systemctl enable makes): a second apply changes nothing
        if not os.path.lexists(target.path(f"etc/systemd/system/timers.target.wants/{UNIT}.timer")):
            steps.append(Command(("systemctl", "enable", f"{UNIT}.timer"), root=target.root, why=why))
    else:
        path = target.path(f"{_CRON_DIRS[profile.own_check]}/{UNIT}")
        steps.append(WriteFile(path, cron(argv), mode=0o755, why=why, root=target.root))
    return tuple(steps), ()
