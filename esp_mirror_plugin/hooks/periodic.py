"""A periodic check of the mirror in the installed system, and its metrics.

Where the distribution ships an md check (Debian's checkarray cron job, mdcheck timers, Fedora's
raid-check.timer) it is enabled, and esp-mirror's weekly run (``esp-mirror-check.timer``) leaves
md's check to it: ``esp-mirror check --no-md-check`` compares the members' files and reads
mismatch_cnt as that check left it. Elsewhere esp-mirror's weekly ``esp-mirror check`` runs md's
check too (profile key ``own_check``: a systemd timer, a cron.weekly or periodic/weekly script).
Either way it exits non-zero on drift (a failed unit, a syslog line) and writes
``esp_mirror.prom`` into the node_exporter textfile directory ``metrics_dir`` when that exists.

Beside it, the metrics are refreshed often, so a member md fails on a Tuesday is in them within
minutes, not a week later: ``esp-mirror status --metrics-dir DIR`` (which keeps the last check's
result) from ``esp-mirror-metrics.timer`` every 5 minutes, or from the cron directory the
distribution runs most often (:data:`REFRESH_DIRS`), scheduled the way the weekly run is.
Both run the esp-mirror that apply put on the installed system (:mod:`.installed`).
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

CRON_DIRS = {OwnCheck.CRON_WEEKLY: "etc/cron.weekly", OwnCheck.PERIODIC_WEEKLY: "etc/periodic/weekly"}

METRICS_UNIT = "esp-mirror-metrics"

METRICS_TIMER = """\
[Unit]
Description=Refresh the metrics of the mirrored EFI System Partition every 5 minutes

[Timer]
OnBootSec=1min
OnUnitActiveSec=5min
AccuracySec=30s

[Install]
WantedBy=timers.target
"""

# Where the refresh goes without systemd: the directory of scripts the distribution's cron runs
# most often, beside the weekly one of the same kind.
# - Alpine: busybox crond runs root's crontab, which alpine-baselayout installs as
#   /etc/crontabs/root with `*/15 * * * * run-parts /etc/periodic/15min` (aports
#   main/alpine-baselayout, APKBUILD and crontab): every 15 minutes.
# - Gentoo and Void: nothing runs a directory more often than /etc/cron.hourly. cronie (the first
#   choice of Gentoo's virtual/cron, one of the crons Void packages) installs /etc/cron.d/0hourly,
#   `01 * * * * root run-parts /etc/cron.hourly` (cronie contrib/0hourly; gentoo
#   sys-process/cronie ebuild, void-packages srcpkgs/cronie/template); Gentoo's other crons run
#   cronbase's run-crons every 10 or 15 minutes, which runs cron.hourly once an hour has passed
#   (gentoo sys-process/cronbase files/run-crons); Void's snooze-hourly service runs it too
#   (void-docs src/config/cron.md, snooze sv/snooze-hourly/run). Hourly, then.
# run-parts runs only names of letters, digits, - and _ (debianutils, busybox): esp-mirror-metrics.
REFRESH_DIRS = {
    OwnCheck.CRON_WEEKLY: ("etc/cron.hourly", "hourly"),
    OwnCheck.PERIODIC_WEEKLY: ("etc/periodic/15min", "every 15 minutes"),
}


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


def metrics_argv(metrics_dir: str) -> tuple[str, ...]:
    """The frequent refresh: status writes DIR/esp_mirror.prom when DIR exists, nothing otherwise."""
    return (PROGRAM, "status", "--metrics-dir", metrics_dir)


def metrics_service(argv: tuple[str, ...]) -> str:
    return f"""\
[Unit]
Description=Metrics of the mirrored EFI System Partition for node_exporter (esp-mirror status)

[Service]
Type=oneshot
ExecStart={shlex.join(argv)}
# status exits 1 on a problem and 2 when not set up: a value in the metrics, not a failed unit
SuccessExitStatus=1 2
# the metrics file is what it is for; status's report every 5 minutes would only fill the journal
StandardOutput=null
"""


def metrics_cron(argv: tuple[str, ...]) -> str:
    return f"""\
#!/bin/sh
# esp-mirror: refresh the metrics of the mirrored EFI System Partition for node_exporter.
# status exits 1 on a problem and 2 when not set up: a value in the metrics, not a failed job.
{shlex.join(argv)} >/dev/null 2>&1
code=$?
[ "$code" -le 2 ] || exit "$code"
"""


def plan(
    profile: Profile, target: Target, metrics_dir: str, esp_mirror_installed: bool
) -> tuple[tuple[Step, ...], tuple[str, ...]]:
    """(steps, notes). ``metrics_dir`` is checked already (``metrics_dir_problem``); without
    ``esp_mirror_installed`` only the distribution's check is enabled (the installed-system
    group says why esp-mirror is not there), and neither the weekly run nor the refresh of the
    metrics is installed."""
    steps: list[Step] = [
        Command(argv, root=target.root, why="the distribution's periodic md check")
        for argv in profile.periodic_check
        if not _enabled_already(argv, target)
    ]
    argv = check_argv(profile.own_check, metrics_dir)
    if profile.own_check is OwnCheck.NONE:
        why = "esp-mirror's weekly comparison of the member files and its metrics (md's check is the distribution's)"
        if not esp_mirror_installed:
            return tuple(steps), ()
        if profile.init is not Init.SYSTEMD:
            return tuple(steps), (
                f"no weekly esp-mirror run and no refresh of its metrics: own_check none installs systemd timers, "
                f"and this profile's init is {profile.init}; set own_check to cron-weekly or periodic-weekly to have "
                "them",
            )
    else:
        why = "esp-mirror's own weekly check (the distribution ships none)"
    refresh = metrics_argv(metrics_dir)
    if profile.own_check in (OwnCheck.NONE, OwnCheck.SYSTEMD_TIMER):
        steps += _timer(target, UNIT, service(argv), TIMER, why)
        steps += _timer(target, METRICS_UNIT, metrics_service(refresh), METRICS_TIMER, _refresh_why("every 5 minutes"))
    else:
        path = target.path(f"{CRON_DIRS[profile.own_check]}/{UNIT}")
        steps.append(WriteFile(path, cron(argv), mode=0o755, why=why, root=target.root))
        directory, how_often = REFRESH_DIRS[profile.own_check]
        path = target.path(f"{directory}/{METRICS_UNIT}")
        steps.append(WriteFile(path, metrics_cron(refresh), mode=0o755, why=_refresh_why(how_often), root=target.root))
    return tuple(steps), ()


def _enabled_already(argv: tuple[str, ...], target: Target) -> bool:
    """``systemctl enable UNIT...`` whose every unit is enabled in the target (a second apply, or
    the package's own postinst did it): nothing to run, so a re-run changes nothing."""
    return argv[:2] == ("systemctl", "enable") and len(argv) > 2 and all(target.unit_enabled(u) for u in argv[2:])


def _refresh_why(how_often: str) -> str:
    return f"esp-mirror's metrics refreshed {how_often} (esp-mirror status; the last check's result is kept)"


def _timer(target: Target, unit: str, service_text: str, timer_text: str, why: str) -> list[Step]:
    """A service, its timer, and ``systemctl enable`` of the timer while it is not enabled."""
    steps: list[Step] = [
        WriteFile(target.path(f"etc/systemd/system/{unit}.service"), service_text, why=why, root=target.root),
        WriteFile(target.path(f"etc/systemd/system/{unit}.timer"), timer_text, why=why, root=target.root),
    ]
    # enabled already (the link systemctl enable makes): a second apply changes nothing
    if not os.path.lexists(target.path(f"etc/systemd/system/timers.target.wants/{unit}.timer")):
        steps.append(Command(("systemctl", "enable", f"{unit}.timer"), root=target.root, why=why))
    return steps


def removal(profile: Profile, target: Target, *, running: bool) -> tuple[Step, ...]:
    """What :func:`plan` installed, taken away (``esp-mirror release --all``): esp-mirror's weekly
    run and the refresh of its metrics, disabled (systemd; stopped too where systemd runs the
    target: ``running``, or systemctl fails) and their files removed. The distribution's own md
    check stays enabled (other arrays, an md root, need it). Only what is there is planned, so a
    run again after an interruption plans what is left."""
    why = "no mirror is left to check, and no metrics to refresh"
    steps: list[Step] = []
    rels: list[str] = []
    for unit in (UNIT, METRICS_UNIT):
        timer = f"etc/systemd/system/{unit}.timer"
        if os.path.lexists(target.path(timer)):
            now = ("--now",) if running else ()
            steps.append(Command(("systemctl", "disable", *now, f"{unit}.timer"), root=target.root, why=why))
        rels += [timer, f"etc/systemd/system/{unit}.service"]
    if profile.own_check in CRON_DIRS:
        rels.append(f"{CRON_DIRS[profile.own_check]}/{UNIT}")
        rels.append(f"{REFRESH_DIRS[profile.own_check][0]}/{METRICS_UNIT}")
    steps += [Command(("rm", "-f", "--", p), why=why) for p in target.present(*rels)]
    return tuple(steps)
