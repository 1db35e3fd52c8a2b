"""A periodic consistency check of the mirror in the installed system.

Where the distribution ships an md check (Debian's checkarray cron job, mdcheck timers, Fedora's
raid-check.timer) it is enabled; elsewhere esp-mirror installs its own weekly `esp-mirror check`,
which also compares the members' files and exits non-zero on drift (a failed unit, a syslog line).
It runs the esp-mirror that apply put on the installed system (:mod:`.installed`).
"""

from __future__ import annotations

from esp_mirror_plugin.hooks.heal import PROGRAM
from esp_mirror_plugin.pipeline.kinds import OwnCheck
from esp_mirror_plugin.pipeline.profiles import Profile
from esp_mirror_plugin.pipeline.steps import Command, Step, WriteFile
from esp_mirror_plugin.system.target import Target

SERVICE = f"""\
[Unit]
Description=Check the mirrored EFI System Partition (md consistency and member files)
Documentation=man:mdadm(8)

[Service]
Type=oneshot
ExecStart={PROGRAM} check
"""

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

CRON = f"""\
#!/bin/sh
# esp-mirror: weekly check of the mirrored EFI System Partition; drift is logged to syslog.
{PROGRAM} check 2>&1 | logger -t esp-mirror
"""

_CRON_DIRS = {OwnCheck.CRON_WEEKLY: "etc/cron.weekly", OwnCheck.PERIODIC_WEEKLY: "etc/periodic/weekly"}


def plan(profile: Profile, target: Target) -> tuple[Step, ...]:
    steps: list[Step] = [
        Command(argv, root=target.root, why="the distribution's periodic md check") for argv in profile.periodic_check
    ]
    why = "esp-mirror's own weekly check (the distribution ships none)"
    if profile.own_check is OwnCheck.SYSTEMD_TIMER:
        steps += [
            WriteFile(target.path(f"etc/systemd/system/{name}"), text, why=why, root=target.root)
            for name, text in (("esp-mirror-check.service", SERVICE), ("esp-mirror-check.timer", TIMER))
        ]
        steps.append(Command(("systemctl", "enable", "esp-mirror-check.timer"), root=target.root, why=why))
    elif profile.own_check in _CRON_DIRS:
        steps.append(
            WriteFile(
                target.path(f"{_CRON_DIRS[profile.own_check]}/esp-mirror-check"),
                CRON,
                mode=0o755,
                why=why,
                root=target.root,
            )
        )
    return tuple(steps)
