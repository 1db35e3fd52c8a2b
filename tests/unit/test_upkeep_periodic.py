"""What apply leaves for the upkeep commands: a periodic check per distribution with a frequent
refresh of the metrics beside it, and the record (/etc/esp-mirror/esp-mirror.yaml) that status,
check, repair, replace, add and entries read."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import stat
import subprocess

import pytest
from conftest import MIB, PROFILES, Machine, isolate_upkeep, json_commands

from esp_mirror_plugin.errors import BadInput
from esp_mirror_plugin.hooks import periodic
from esp_mirror_plugin.pipeline import profiles
from esp_mirror_plugin.pipeline import record as records
from esp_mirror_plugin.pipeline.execute import Applier
from esp_mirror_plugin.pipeline.kinds import Init
from esp_mirror_plugin.pipeline.record import Record
from esp_mirror_plugin.pipeline.steps import Command, Group, WriteFile
from esp_mirror_plugin.system.recording import RecordingRunner
from esp_mirror_plugin.system.runner import Result
from esp_mirror_plugin.system.target import Target

METRICS_DIR = "/var/lib/prometheus/node-exporter"
SERVICE = """\
[Unit]
Description=Check the mirrored EFI System Partition (md consistency and member files)
Documentation=man:mdadm(8)

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/esp-mirror check --metrics-dir /var/lib/prometheus/node-exporter
"""
# own_check none: the distribution's md check runs; esp-mirror's weekly run compares files, writes metrics
SERVICE_NO_MD_CHECK = """\
[Unit]
Description=Check the mirrored EFI System Partition (member files; md's check is the distribution's)
Documentation=man:mdadm(8)

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/esp-mirror check --no-md-check --metrics-dir /var/lib/prometheus/node-exporter
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
CRON = """\
#!/bin/sh
# esp-mirror: weekly check of the mirrored EFI System Partition; drift is logged to syslog.
/usr/local/sbin/esp-mirror check --metrics-dir /var/lib/prometheus/node-exporter 2>&1 | logger -t esp-mirror
"""
# the refresh of the metrics beside the weekly run
METRICS_SERVICE = """\
[Unit]
Description=Metrics of the mirrored EFI System Partition for node_exporter (esp-mirror status)

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/esp-mirror status --metrics-dir /var/lib/prometheus/node-exporter
# status exits 1 on a problem and 2 when not set up: a value in the metrics, not a failed unit
SuccessExitStatus=1 2
# the metrics file is what it is for; status's report every 5 minutes would only fill the journal
StandardOutput=null
"""
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
METRICS_CRON = """\
#!/bin/sh
# esp-mirror: refresh the metrics of the mirrored EFI System Partition for node_exporter.
# status exits 1 on a problem and 2 when not set up: a value in the metrics, not a failed job.
/usr/local/sbin/esp-mirror status --metrics-dir /var/lib/prometheus/node-exporter >/dev/null 2>&1
code=$?
[ "$code" -le 2 ] || exit "$code"
"""


def timers(service: str) -> list[tuple]:
    """The weekly check and the refresh of the metrics, each a service and a timer enabled."""
    return [
        ("write", "etc/systemd/system/esp-mirror-check.service", 0o644, service),
        ("write", "etc/systemd/system/esp-mirror-check.timer", 0o644, TIMER),
        ("run", "systemctl", "enable", "esp-mirror-check.timer"),
        ("write", "etc/systemd/system/esp-mirror-metrics.service", 0o644, METRICS_SERVICE),
        ("write", "etc/systemd/system/esp-mirror-metrics.timer", 0o644, METRICS_TIMER),
        ("run", "systemctl", "enable", "esp-mirror-metrics.timer"),
    ]


OWN_TIMER = timers(SERVICE)
BESIDE = timers(SERVICE_NO_MD_CHECK)  # beside the distribution's md check
# cronie's 0hourly, Gentoo's run-crons and Void's snooze-hourly run nothing more often than cron.hourly
CRON_WEEKLY = [
    ("write", "etc/cron.weekly/esp-mirror-check", 0o755, CRON),
    ("write", "etc/cron.hourly/esp-mirror-metrics", 0o755, METRICS_CRON),
]
MDCHECK = [("run", "systemctl", "enable", "mdcheck_start.timer", "mdcheck_continue.timer")]
RAID_CHECK = [("run", "systemctl", "enable", "raid-check.timer")]
PERIODIC = {
    "opensuse": OWN_TIMER,
    "void": CRON_WEEKLY,
    "gentoo": CRON_WEEKLY,
    "alpine": [  # alpine-baselayout's root crontab runs periodic/15min every 15 minutes
        ("write", "etc/periodic/weekly/esp-mirror-check", 0o755, CRON),
        ("write", "etc/periodic/15min/esp-mirror-metrics", 0o755, METRICS_CRON),
    ],
    "debian": BESIDE,  # bookworm's /etc/cron.d/mdadm runs checkarray already
    "ubuntu": MDCHECK + BESIDE,
    "arch": MDCHECK + BESIDE,
    "fedora": RAID_CHECK + BESIDE,
    "rhel": RAID_CHECK + BESIDE,
}


def periodic_plan(name: str, root, metrics_dir: str = METRICS_DIR, installed: bool = True, **changes):
    profile = profiles.load_profile(name)
    if changes:
        profile = dataclasses.replace(profile, **changes)
    return periodic.plan(profile, Target(str(root)), metrics_dir, installed)


def described(steps, target: str) -> list[tuple]:
    out = []
    for s in steps:
        if isinstance(s, WriteFile):
            out.append(("write", os.path.relpath(s.path, target), s.mode, s.content))
        else:
            assert isinstance(s, Command) and s.root == target, s  # runs inside the target
            out.append(("run", *s.argv))
    return out


def test_every_profile_has_its_periodic_check_specified_here():
    assert sorted(PERIODIC) == sorted(PROFILES) == profiles.builtin_names()


@pytest.mark.parametrize("name", PERIODIC)
def test_periodic_check_per_profile(name, tmp_path):
    steps, notes = periodic_plan(name, tmp_path)
    assert (described(steps, str(tmp_path)), notes) == (PERIODIC[name], ())


MDCHECK_TIMER = """\
[Unit]
Description=MD array scrubbing

[Timer]
OnCalendar=Sun *-*-1..7 1:00:00

[Install]
WantedBy=mdmonitor.service
Also=mdcheck_continue.timer
"""


def test_the_distributions_timers_enabled_already_are_not_enabled_again(tmp_path):
    """Debian 13's mdadm enables its mdcheck timers (WantedBy=mdmonitor.service) in its postinst:
    apply's `systemctl enable` is planned only while a link is missing, so a second apply changes
    nothing (seen on the installed Debian 13: every apply again reported it changed)."""
    units = tmp_path / "usr/lib/systemd/system"
    units.mkdir(parents=True)
    (units / "mdcheck_start.timer").write_text(MDCHECK_TIMER)
    (units / "mdcheck_continue.timer").write_text(MDCHECK_TIMER.replace("\nAlso=mdcheck_continue.timer", ""))
    enable = ("run", "systemctl", "enable", "mdcheck_start.timer", "mdcheck_continue.timer")
    steps, _ = periodic_plan("arch", tmp_path)
    assert enable in described(steps, str(tmp_path))  # neither is enabled
    wants = tmp_path / "etc/systemd/system/mdmonitor.service.wants"
    wants.mkdir(parents=True)
    (wants / "mdcheck_start.timer").symlink_to("/usr/lib/systemd/system/mdcheck_start.timer")
    steps, _ = periodic_plan("arch", tmp_path)
    assert enable in described(steps, str(tmp_path))  # one of the two is not
    (wants / "mdcheck_continue.timer").symlink_to("/usr/lib/systemd/system/mdcheck_continue.timer")
    steps, _ = periodic_plan("arch", tmp_path)
    assert not [
        s for s in described(steps, str(tmp_path)) if s[:3] == ("run", "systemctl", "enable") and "mdcheck" in s[3]
    ]
    # a static unit (no [Install]) has nothing to enable; a unit that is not there is not enabled
    (units / "raid-check.timer").write_text("[Timer]\nOnCalendar=weekly\n")
    assert Target(str(tmp_path)).unit_enabled("raid-check.timer")
    assert not Target(str(tmp_path)).unit_enabled("missing.timer")


@pytest.mark.parametrize(
    ("name", "line"),
    [
        ("opensuse", "ExecStart=/usr/local/sbin/esp-mirror check --metrics-dir /srv/textfile"),
        ("debian", "ExecStart=/usr/local/sbin/esp-mirror check --no-md-check --metrics-dir /srv/textfile"),
        ("void", "/usr/local/sbin/esp-mirror check --metrics-dir /srv/textfile 2>&1 | logger -t esp-mirror"),
    ],
)
def test_the_weekly_run_gets_the_metrics_dir_as_given(name, line, tmp_path):
    steps, _ = periodic_plan(name, tmp_path, "/srv/textfile")
    [script] = [
        s for s in steps if isinstance(s, WriteFile) and "esp-mirror-check" in s.path and ".timer" not in s.path
    ]
    assert line in script.content.splitlines()


@pytest.mark.parametrize(
    ("name", "line"),
    [
        ("opensuse", "ExecStart=/usr/local/sbin/esp-mirror status --metrics-dir /srv/textfile"),
        ("debian", "ExecStart=/usr/local/sbin/esp-mirror status --metrics-dir /srv/textfile"),
        ("void", "/usr/local/sbin/esp-mirror status --metrics-dir /srv/textfile >/dev/null 2>&1"),
        ("alpine", "/usr/local/sbin/esp-mirror status --metrics-dir /srv/textfile >/dev/null 2>&1"),
    ],
)
def test_the_refresh_of_the_metrics_gets_the_metrics_dir_as_given(name, line, tmp_path):
    steps, _ = periodic_plan(name, tmp_path, "/srv/textfile")
    [script] = [
        s for s in steps if isinstance(s, WriteFile) and "esp-mirror-metrics" in s.path and ".timer" not in s.path
    ]
    assert line in script.content.splitlines()


def test_apply_records_the_metrics_dir_and_the_weekly_run_uses_it(images):
    outcome = images.cli("apply", "--yes", *images.args(), "--metrics-dir", "/srv/textfile")

    assert outcome.code == 0, outcome.err
    assert records.load(str(images.target)).metrics_dir == "/srv/textfile"
    service = (images.target / "etc/systemd/system/esp-mirror-check.service").read_text()
    assert "ExecStart=/usr/local/sbin/esp-mirror check --no-md-check --metrics-dir /srv/textfile\n" in service


def test_the_metrics_dir_is_a_config_file_key_too(images, tmp_path):
    config = tmp_path / "esp-mirror.yaml"
    config.write_text("metrics_dir: /srv/textfile\n")
    plan = json.loads(images.cli("plan", "--json", *images.args(), "--config", str(config)).out)
    [record] = [s for g in plan["groups"] for s in g["steps"] if s.get("path", "").endswith(records.PATH)]
    assert "metrics_dir: /srv/textfile\n" in record["content"]


@pytest.mark.parametrize("name", ["debian", "fedora"])
def test_without_esp_mirror_on_the_installed_system_only_the_distributions_check_is_enabled(name, tmp_path):
    steps, notes = periodic_plan(name, tmp_path, installed=False)
    assert (described(steps, str(tmp_path)), notes) == ({"debian": [], "fedora": RAID_CHECK}[name], ())


def test_own_check_none_without_systemd_says_nothing_runs_weekly_or_refreshes_the_metrics(tmp_path):
    steps, notes = periodic_plan("debian", tmp_path, init=Init.OPENRC)
    assert described(steps, str(tmp_path)) == []
    assert notes == (
        "no weekly esp-mirror run and no refresh of its metrics: own_check none installs systemd timers, and this "
        "profile's init is openrc; set own_check to cron-weekly or periodic-weekly to have them",
    )


@pytest.mark.parametrize("enabled", ["esp-mirror-check.timer", "esp-mirror-metrics.timer"])
def test_a_timer_enabled_already_is_not_enabled_again(tmp_path, enabled):
    """systemctl enable runs (and counts as a change on a second apply) only while its link is
    missing, for each timer on its own."""
    wants = tmp_path / "etc/systemd/system/timers.target.wants"
    wants.mkdir(parents=True)
    (wants / enabled).symlink_to(f"/etc/systemd/system/{enabled}")
    other = ({"esp-mirror-check.timer", "esp-mirror-metrics.timer"} - {enabled}).pop()
    for name in ("debian", "opensuse"):
        steps, _ = periodic_plan(name, tmp_path)
        assert [s.argv for s in steps if isinstance(s, Command)] == [("systemctl", "enable", other)]


def enable_as_systemctl_does(root):
    """A runner answer for `chroot ROOT systemctl enable UNIT...`: the links [Install] WantedBy= makes."""

    def answer(argv: tuple[str, ...]) -> Result | None:
        if argv[:4] != ("chroot", str(root), "systemctl", "enable"):
            return None
        for unit in argv[4:]:
            wants = root / "etc/systemd/system/timers.target.wants"
            wants.mkdir(parents=True, exist_ok=True)
            (wants / unit).symlink_to(f"/etc/systemd/system/{unit}")
        return Result(argv, 0)

    return answer


@pytest.mark.parametrize("name", ["opensuse", "debian", "gentoo", "alpine"])
def test_a_second_plan_on_an_installed_target_enables_nothing_and_changes_nothing(name, tmp_path):
    runner = RecordingRunner(responders=[enable_as_systemctl_does(tmp_path)])
    first, _ = periodic_plan(name, tmp_path)
    Applier(runner, io.StringIO()).execute(Group("installed-system", first))
    calls = len(runner.calls)

    second, _ = periodic_plan(name, tmp_path)
    applier = Applier(runner, io.StringIO())
    applier.execute(Group("installed-system", second))

    assert [s for s in second if isinstance(s, Command)] == []
    assert (applier.changed, runner.calls[calls:]) == (0, [])


@pytest.mark.parametrize(
    ("name", "path", "content"),
    [
        ("void", "etc/cron.weekly/esp-mirror-check", CRON),
        ("void", "etc/cron.hourly/esp-mirror-metrics", METRICS_CRON),
        ("alpine", "etc/periodic/weekly/esp-mirror-check", CRON),
        ("alpine", "etc/periodic/15min/esp-mirror-metrics", METRICS_CRON),
    ],
)
def test_the_cron_job_is_written_executable(name, path, content, tmp_path):
    steps, _ = periodic_plan(name, tmp_path)

    Applier(RecordingRunner(), io.StringIO()).execute(Group("post_format", steps))

    written = tmp_path / path
    assert (written.read_text(), stat.S_IMODE(written.stat().st_mode)) == (content, 0o755)


def test_the_systemd_timers_are_written_and_enabled_in_the_target(tmp_path):
    runner = RecordingRunner(responders=[lambda argv: Result(argv, 0)])
    steps, _ = periodic_plan("opensuse", tmp_path)

    Applier(runner, io.StringIO()).execute(Group("post_format", steps))

    unit = tmp_path / "etc/systemd/system"
    assert {f.name: f.read_text() for f in unit.iterdir()} == {
        "esp-mirror-check.service": SERVICE,
        "esp-mirror-check.timer": TIMER,
        "esp-mirror-metrics.service": METRICS_SERVICE,
        "esp-mirror-metrics.timer": METRICS_TIMER,
    }
    assert runner.calls == [
        ("chroot", str(tmp_path), "systemctl", "enable", "esp-mirror-check.timer"),
        ("chroot", str(tmp_path), "systemctl", "enable", "esp-mirror-metrics.timer"),
    ]


@pytest.mark.real_processes  # /bin/sh runs the script, with a fake esp-mirror
@pytest.mark.parametrize("code", [0, 1, 2])
def test_the_refresh_script_succeeds_whatever_status_says_about_the_mirror(code, tmp_path):
    """status exits 1 on a problem and 2 when not set up: values in the metrics, so run-parts and
    cron report no failure, as SuccessExitStatus=1 2 keeps the systemd unit from failing."""
    assert run_refresh_script(tmp_path, f"exit {code}") == 0


@pytest.mark.real_processes
@pytest.mark.parametrize("code", [127, 130])
def test_the_refresh_script_fails_when_esp_mirror_cannot_run(code, tmp_path):
    """Not installed (127) or interrupted (130): a failure cron reports, beside the stale metrics alert."""
    assert run_refresh_script(tmp_path, f"exit {code}") == code


def run_refresh_script(tmp_path, body: str) -> int:
    """Run the refresh script with /usr/local/sbin/esp-mirror replaced by a script doing ``body``."""
    fake = tmp_path / "esp-mirror"
    fake.write_text(f"#!/bin/sh\n{body}\n")
    fake.chmod(0o755)
    script = tmp_path / "esp-mirror-metrics"
    script.write_text(periodic.metrics_cron((str(fake), "status", "--metrics-dir", str(tmp_path))))
    return subprocess.run(["/bin/sh", str(script)], check=False).returncode


def test_the_periodic_check_is_planned_last_with_the_installed_system_not_in_post_format(two_disks):
    """An installer's target has no packages yet at post_format: the timers are enabled once it is
    complete (the bootloader hook), in the installed-system group."""
    plan = json.loads(two_disks.cli("plan", "--json", *two_disks.args(), "--profile", "fedora").out)
    enable = ("chroot", str(two_disks.target), "systemctl", "enable", "raid-check.timer")
    assert enable in json_commands(plan, "installed-system")
    assert enable not in json_commands(plan, "post_format")


# -- the record ---------------------------------------------------------------------------------


@pytest.fixture
def images(machine: Machine) -> Machine:
    machine.add_image("a.img")
    machine.add_image("b.img")
    (machine.target / "etc/mdadm").mkdir()
    machine.accept_changes()
    return machine


def test_the_record_apply_writes_loads_back_as_what_was_set_up(images):
    fat = json.loads(images.cli("plan", "--json", *images.args()).out)["filesystem"]["uuid"]
    outcome = images.cli("apply", "--yes", *images.args())

    assert outcome.code == 0, outcome.err
    assert records.load(str(images.target)) == Record(
        profile="debian",
        array="/dev/md/esp",
        mountpoint="/boot/efi",
        loader="\\EFI\\debian\\grubx64.efi",
        entry_label="Debian",
        esp_start=MIB,
        esp_size=512 * MIB,
        members=2,
        metrics_dir=METRICS_DIR,
        fs_uuid=fat,
        bootloader="grub",
        loader_id="debian",
    )
    text = (images.target / records.PATH).read_text()
    assert text.startswith("# Written by esp-mirror apply: what it set up.")
    assert stat.S_IMODE((images.target / records.PATH).stat().st_mode) == 0o644


def test_the_record_is_written_by_the_bootloader_hook(two_disks):
    plan = json.loads(two_disks.cli("plan", "--json", *two_disks.args()).out)
    [group] = [
        g for g in plan["groups"] if any(s.get("path") == f"{two_disks.target}/{records.PATH}" for s in g["steps"])
    ]
    assert group["name"] == "bootloader"


@pytest.mark.parametrize(
    "record",
    [
        Record(
            "rhel", "/dev/md/esp", "/boot/efi", "\\EFI\\redhat\\shimx64.efi", "Red Hat Enterprise Linux", MIB, 600 * MIB
        ),
        Record(
            "arch",
            "/dev/md/boot-esp",
            "/efi",
            "\\EFI\\systemd\\systemd-bootx64.efi",
            "Arch: #1 'esp'",
            2 * MIB,
            1024 * MIB,
        ),
    ],
    ids=["rhel-shim", "odd-label"],
)
def test_a_record_round_trips_through_its_yaml(record, tmp_path):
    path = tmp_path / records.PATH
    path.parent.mkdir(parents=True)
    path.write_text(record.render())
    assert records.load(str(tmp_path)) == record


def test_a_record_an_older_esp_mirror_wrote_loads_without_a_member_count(tmp_path):
    path = tmp_path / records.PATH
    path.parent.mkdir(parents=True)
    path.write_text(
        "profile: debian\narray: /dev/md/esp\nmountpoint: /boot/efi\nloader: \\EFI\\debian\\grubx64.efi\n"
        "entry_label: Debian\nesp_start: 1048576\nesp_size: 536870912\n"
    )
    assert records.load(str(tmp_path)) == Record(
        "debian", "/dev/md/esp", "/boot/efi", "\\EFI\\debian\\grubx64.efi", "Debian", MIB, 512 * MIB, members=None
    )


def test_no_record_means_not_set_up(tmp_path):
    assert records.load(str(tmp_path)) is None


def test_a_record_with_a_metrics_dir_no_unit_can_hold_is_bad_input(tmp_path):
    path = tmp_path / records.PATH
    path.parent.mkdir(parents=True)
    record = Record("debian", "/dev/md/esp", "/boot/efi", "\\EFI\\debian\\grubx64.efi", "Debian", MIB, 512 * MIB, 2)
    path.write_text(dataclasses.replace(record, metrics_dir="/srv/text file").render())
    with pytest.raises(BadInput) as error:
        records.load(str(tmp_path))
    assert str(error.value) == (
        f"{path}: metrics_dir '/srv/text file' must be an absolute path of letters, digits and ._+,:@=/- "
        "(no spaces or quotes): run `esp-mirror apply` again"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("profile: [debian\n", "cannot be read (while parsing a flow sequence"),
        (
            "profile: debian\narray: /dev/md/esp\n",
            "is not an esp-mirror record (keys array, entry_label, esp_size, "
            "esp_start, loader, mountpoint, profile; optional bootloader, fs_uuid, loader_args, loader_id, members, "
            "metrics_dir): "
            "run `esp-mirror apply` again to rewrite it",
        ),
        ("- a list\n", "is not an esp-mirror record"),
        (
            "profile: debian\narray: /dev/md/esp\nmountpoint: /boot/efi\nloader: x\nentry_label: D\n"
            "esp_start: 1\nesp_size: 2\ndisks: 2\n",
            "is not an esp-mirror record",
        ),
    ],
    ids=["broken-yaml", "missing-keys", "not-a-mapping", "unknown-key"],
)
def test_a_broken_record_is_bad_input_that_says_to_rerun_apply(content, message, tmp_path):
    path = tmp_path / records.PATH
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(BadInput) as error:
        records.load(str(tmp_path))
    assert str(error.value).startswith(f"{path} ")
    assert message in str(error.value) and str(error.value).endswith("run `esp-mirror apply` again to rewrite it")


def test_status_with_a_broken_record_exits_2_naming_the_file(machine, monkeypatch):
    isolate_upkeep(machine, monkeypatch)
    path = machine.sysroot / records.PATH
    path.parent.mkdir(parents=True)
    path.write_text("profile: debian\n")

    outcome = machine.cli("status")

    assert outcome.code == 2
    assert outcome.error.startswith(f"{path} is not an esp-mirror record (keys ")
