"""`esp-mirror heal`: members of the ESP array that are present but out of it go back in; and
`esp-mirror refresh` / status for the installed system's settings.

The machine is :class:`conftest.Mirror` (/dev/vda1 and /dev/vdb1 in /dev/md/esp, events 120);
``kick`` leaves a member out the way md does at assembly ("kicking non-fresh").
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil

import pytest
from conftest import ARRAY_UUID, Mirror, assert_only_read, fast_applier, superblock, upkeep_changes

from esp_mirror_plugin.pipeline import record as records
from esp_mirror_plugin.system.runner import Result
from esp_mirror_plugin.upkeep import history

OTHER_ARRAY = "0f0e0d0c:0b0a0908:07060504:03020100"


@pytest.fixture
def kicked(mirror: Mirror, monkeypatch: pytest.MonkeyPatch) -> Mirror:
    """vdb1 came back stale: md kept it out; its superblock still names the array (events 100)."""
    mirror.kick("/dev/vdb1", events=100)
    mirror.accept_changes()
    fast_applier(mirror, monkeypatch)
    return mirror


def test_a_kicked_member_goes_back_with_a_full_add_when_md_refuses_the_re_add(kicked):
    outcome = kicked.cli("heal", "--why", "boot")

    assert (outcome.code, outcome.err) == (0, "")
    assert upkeep_changes(outcome.calls) == [
        ("mdadm", "/dev/md/esp", "--re-add", "/dev/vdb1"),
        ("mdadm", "/dev/md/esp", "--add", "/dev/vdb1"),
    ]
    [line] = history.read(str(kicked.sysroot))
    # (the seconds are the host's: a loaded machine takes a tenth or two)
    assert re.search(r"healed at boot: /dev/vdb1 \(/dev/vdb\) back in /dev/md/esp, in sync after \d+\.\d s$", line), (
        line
    )
    assert line in outcome.out
    status = kicked.cli("status")
    assert status.code == 0 and f"last event: {line}\n" in status.out


def test_a_re_add_that_md_accepts_is_all_it_takes(kicked):
    kicked.readd.add("/dev/vdb1")
    outcome = kicked.cli("heal")
    assert outcome.code == 0
    assert upkeep_changes(outcome.calls) == [("mdadm", "/dev/md/esp", "--re-add", "/dev/vdb1")]
    assert "healed by hand: /dev/vdb1" in history.read(str(kicked.sysroot))[-1]


def test_a_healthy_mirror_needs_nothing_and_leaves_no_history(mirror):
    outcome = mirror.cli("heal", "--why", "boot")
    assert (outcome.code, outcome.out) == (0, "nothing to heal: /dev/md/esp has 2 of 2 members\n")
    assert_only_read([c for c in outcome.calls if c[:2] != ("mdadm", "--examine")])
    assert history.read(str(mirror.sysroot)) == []


def test_a_missing_member_whose_disk_is_gone_is_not_heals_business(mirror):
    mirror.lose_disk("vdb")
    outcome = mirror.cli("heal")
    assert outcome.code == 0
    assert outcome.out == (
        "nothing to heal: /dev/md/esp has 1 of 2 members and no partition here carries a missing one\n"
    )


def test_a_partition_of_another_array_is_never_touched(kicked):
    kicked.superblocks["/dev/vdb1"] = superblock(OTHER_ARRAY, events=10)
    outcome = kicked.cli("heal")
    assert outcome.code == 0 and upkeep_changes(outcome.calls) == []
    assert outcome.out.startswith("nothing to heal")


def test_a_member_with_newer_writes_than_the_array_is_left_for_a_person(kicked):
    kicked.superblocks["/dev/vdb1"] = superblock(ARRAY_UUID, events=130)

    outcome = kicked.cli("heal", "--why", "hot-plug", "--device", "/dev/vdb1")

    assert outcome.code == 1
    assert upkeep_changes(outcome.calls) == []
    reason = (
        "/dev/vdb1 (/dev/vdb) has newer writes than /dev/md/esp (events 130 > 120) and is not overwritten "
        "automatically: to keep the running array's copy, run `mdadm /dev/md/esp --add /dev/vdb1`"
    )
    assert history.read(str(kicked.sysroot))[-1].endswith(f"not healed on hot-plug: {reason}")


def test_a_member_another_array_holds_is_left_out_with_what_to_stop(kicked):
    (kicked.sysroot / "sys/class/block/vdb1/holders/md126").touch()
    outcome = kicked.cli("heal")
    assert outcome.code == 1 and upkeep_changes(outcome.calls) == []
    assert (
        "/dev/vdb1 carries a member of /dev/md/esp but md126 holds it: stop that (`mdadm --stop /dev/md126`"
        in (history.read(str(kicked.sysroot))[-1])
    )


def test_a_superblock_that_cannot_be_read_is_an_error_not_no_superblock(kicked):
    kicked.fail(("mdadm", "--examine", "--export", "/dev/vdb1"), 1, "mdadm: cannot open /dev/vdb1: Permission denied\n")
    outcome = kicked.cli("heal")
    assert (outcome.code, outcome.error) == (
        2,
        "cannot read the md superblock of /dev/vdb1 (mdadm: cannot open /dev/vdb1: Permission denied): "
        "run esp-mirror as root",
    )
    assert upkeep_changes(outcome.calls) == []


def test_heal_of_an_array_that_is_not_running_says_how_to_start_it(mirror):
    mirror.stop_array()
    outcome = mirror.cli("heal")
    assert (outcome.code, outcome.error) == (
        2,
        "/dev/md/esp is not running, so nothing can go back into it: assemble it (`mdadm --assemble --scan "
        "--run`), then run `esp-mirror heal`",
    )


def test_device_must_be_a_partition(mirror):
    outcome = mirror.cli("heal", "--device", "/dev/vdb")
    assert (outcome.code, outcome.error) == (
        2,
        "/dev/vdb is not a partition: give the partition that came back (e.g. /dev/sdb1)",
    )


def test_dry_run_shows_the_steps_and_changes_nothing(kicked):
    outcome = kicked.cli("heal", "--dry-run")
    assert outcome.code == 0 and upkeep_changes(outcome.calls) == []
    assert "mdadm /dev/md/esp --re-add /dev/vdb1 || mdadm /dev/md/esp --add /dev/vdb1" in outcome.out
    assert history.read(str(kicked.sysroot)) == []


def test_heal_json_reports_what_it_did(kicked):
    report = json.loads(kicked.cli("heal", "--json").out)
    assert (report["array"], report["add"], report["left_out"], report["applied"]) == (
        "/dev/md/esp",
        ["/dev/vdb1"],
        [],
        True,
    )
    assert report["event"] == history.read(str(kicked.sysroot))[-1]
    assert [s["kind"] for s in report["plan"]["steps"]] == ["add-member", "wait-for-sync"]


def test_heal_without_a_setup_is_bad_input(machine):
    outcome = machine.cli("heal")
    assert (outcome.code, outcome.error) == (
        2,
        "no esp-mirror setup here (/etc/esp-mirror/esp-mirror.yaml is missing): nothing to heal; `esp-mirror "
        "apply` (new disks) or `esp-mirror adopt` (a running system's ESP) sets one up",
    )


def test_the_history_keeps_the_newest_lines(tmp_path):
    for n in range(history.KEEP + 5):
        history.append(str(tmp_path), f"event {n}", now=0)
    lines = history.read(str(tmp_path))
    assert len(lines) == history.KEEP and lines[-1] == f"1970-01-01T00:00:00Z event {history.KEEP + 4}"


# -- refresh and status: the installed system's settings --------------------------------------------


def test_fwupd_installed_later_is_a_status_problem_that_refresh_fixes(mirror, monkeypatch):
    (mirror.sysroot / "etc/fwupd").mkdir(parents=True)
    (mirror.sysroot / "etc/fwupd/fwupd.conf").write_text("[fwupd]\nDisabledPlugins=test\n")

    status = mirror.cli("status", "--json")

    assert json.loads(status.out)["problems"] == [
        f"{mirror.sysroot}/etc/fwupd/fwupd.conf differ from what esp-mirror writes (a package replaced them, "
        "or something was installed later): run `esp-mirror refresh`"
    ]
    assert status.code == 1

    mirror.accept_changes()
    fast_applier(mirror, monkeypatch)
    refresh = mirror.cli("refresh", "--yes")
    assert (refresh.code, refresh.err) == (0, "")
    assert "EspLocation=/boot/efi" in (mirror.sysroot / "etc/fwupd/fwupd.conf").read_text()
    assert mirror.cli("status").code == 0


def test_refresh_dry_run_prints_the_group_and_changes_nothing(mirror):
    (mirror.sysroot / "etc/esp-mirror/debconf.preseed").unlink()
    outcome = mirror.cli("refresh", "--dry-run")
    assert outcome.code == 0 and outcome.out.startswith("# == installed-system ==\n")
    assert f"write {mirror.sysroot}/etc/esp-mirror/debconf.preseed (mode 0644):" in outcome.out
    assert upkeep_changes(outcome.calls) == []
    assert not (mirror.sysroot / "etc/esp-mirror/debconf.preseed").exists()


def test_a_replaced_heal_unit_is_reported_by_path(mirror):
    unit = mirror.sysroot / "etc/systemd/system/esp-mirror-heal.service"
    unit.write_text("[Service]\nExecStart=/bin/true\n")
    problems = json.loads(mirror.cli("status", "--json").out)["problems"]
    assert problems == [
        f"{unit} differ from what esp-mirror writes (a package replaced them, or something was installed "
        "later): run `esp-mirror refresh`"
    ]


def test_refresh_writes_the_weekly_run_and_the_metrics_refresh_with_the_recorded_metrics_dir(mirror, monkeypatch):
    """The record is what refresh plans from: a metrics_dir changed there reaches both units."""
    record = dataclasses.replace(mirror.record, metrics_dir="/srv/textfile")
    (mirror.sysroot / records.PATH).write_text(record.render())
    check = mirror.sysroot / "etc/systemd/system/esp-mirror-check.service"
    refresh = mirror.sysroot / "etc/systemd/system/esp-mirror-metrics.service"

    problems = json.loads(mirror.cli("status", "--json").out)["problems"]
    assert problems == [
        f"{check}, {refresh} differ from what esp-mirror writes (a package replaced them, or something was "
        "installed later): run `esp-mirror refresh`"
    ]
    mirror.accept_changes()
    fast_applier(mirror, monkeypatch)
    assert mirror.cli("refresh", "--yes").code == 0
    assert "ExecStart=/usr/local/sbin/esp-mirror check --no-md-check --metrics-dir /srv/textfile\n" in check.read_text()
    assert "ExecStart=/usr/local/sbin/esp-mirror status --metrics-dir /srv/textfile\n" in refresh.read_text()
    assert mirror.cli("status").code == 0


def _mount_argv(mirror: Mirror, systemd: bool) -> tuple[str, ...]:
    """How heal mounts the ESP at boot: through its mount unit where systemd is PID 1."""
    if systemd:
        (mirror.sysroot / "run/systemd/system").mkdir(parents=True, exist_ok=True)
        return ("systemctl", "start", "/boot/efi")
    return ("mount", "/boot/efi")


def _waiting_after_a_boot_without_vdb(
    mirror: Mirror, monkeypatch: pytest.MonkeyPatch, systemd: bool = False
) -> tuple[tuple[str, ...], ...]:
    """The machine booted with disk B gone: incremental assembly holds vda1 in md126, inactive,
    waiting for vdb1; /dev/md/esp does not exist and nothing is mounted at /boot/efi. ``mdadm
    --run /dev/md126`` starts it (degraded) and ``mount /boot/efi`` (under systemd: ``systemctl
    start /boot/efi``) mounts it, as the machine would have them; returns the calls that started
    and mounted it."""
    mount_argv = _mount_argv(mirror, systemd)
    saved = (mirror.arrays["/dev/md/esp"], list(mirror.mountinfo))
    md_copy = mirror.root / "md-copy"
    shutil.copytree(mirror.md, md_copy)
    (mirror.sysroot / "etc/mdadm").mkdir(parents=True, exist_ok=True)
    (mirror.sysroot / "etc/mdadm/mdadm.conf").write_text(
        f"HOMEHOST <system>\nARRAY /dev/md/esp metadata=1.0 UUID={ARRAY_UUID} name=any:esp\n"
    )
    mirror.stop_array()
    waiting = mirror.sysroot / "sys/block/md126/md"
    (waiting / "dev-vda1").mkdir(parents=True)
    (waiting / "array_state").write_text("inactive\n")
    fast_applier(mirror, monkeypatch)

    def start(argv: tuple[str, ...]):
        if argv == ("mdadm", "--run", "/dev/md126"):
            shutil.rmtree(waiting.parent)
            shutil.copytree(md_copy, mirror.md)
            mirror.arrays["/dev/md/esp"] = saved[0]
            (mirror.sysroot / "dev/md").mkdir(parents=True, exist_ok=True)
            (mirror.sysroot / "dev/md/esp").symlink_to("../md127")
            return Result(argv, 0)
        if argv == mount_argv:
            mirror.mountinfo = saved[1]
            mirror._write_proc()
            return Result(argv, 0)
        return None

    mirror.runner.responders.insert(0, start)
    return ("mdadm", "--run", "/dev/md126"), mount_argv


@pytest.mark.parametrize("systemd", [False, True], ids=["openrc-or-runit", "systemd"])
def test_at_boot_an_array_left_waiting_for_a_missing_disk_is_started_and_mounted(mirror, monkeypatch, systemd):
    """mdadm's last-resort timer should start it after 30 s and did not (mdadm #263): heal,
    which runs at boot anyway, does what the timer would have, and says so in the history."""
    started = _waiting_after_a_boot_without_vdb(mirror, monkeypatch, systemd)
    outcome = mirror.cli("heal", "--why", "boot")
    assert outcome.code == 0, outcome.error
    assert [c for c in upkeep_changes(outcome.calls) if c in started] == list(started)
    assert "] mdadm --run /dev/md126" in outcome.out and f"] {' '.join(started[1])}" in outcome.out  # as it runs
    [line] = history.read(str(mirror.sysroot))
    assert line.endswith("started at boot: /dev/md/esp (/dev/md126) without its missing members, mounted at /boot/efi")
    assert line in outcome.out


@pytest.mark.parametrize("why", ["hand", "hot-plug"])
def test_an_array_waiting_for_a_member_is_started_only_at_boot(mirror, monkeypatch, why):
    """By hand or on hot-plug the disk may be on its way: heal says how to start it, and runs nothing."""
    _waiting_after_a_boot_without_vdb(mirror, monkeypatch)
    outcome = mirror.cli("heal", "--why", why)
    assert outcome.code == 2 and "is not running" in outcome.error
    assert upkeep_changes(outcome.calls) == []


def test_an_inactive_array_of_another_uuid_is_not_started(mirror, monkeypatch):
    _waiting_after_a_boot_without_vdb(mirror, monkeypatch)
    mirror.superblocks["/dev/vda1"] = superblock(OTHER_ARRAY, events=120)
    outcome = mirror.cli("heal", "--why", "boot")
    assert outcome.code == 2 and upkeep_changes(outcome.calls) == []


@pytest.mark.parametrize("systemd", [False, True], ids=["openrc-or-runit", "systemd"])
def test_at_boot_a_running_array_that_nothing_mounted_is_mounted(mirror, monkeypatch, systemd):
    """The array runs (degraded) but its mount unit failed or gave up before it was ready (seen
    with systemd-boot starting a disk alone), or is still at work: heal, at boot, mounts it from
    fstab, under systemd through its mount unit (a job at work is joined: a plain mount beside
    it stacked a second mount of the ESP, seen on Debian 13), and says so."""
    mount_argv = _mount_argv(mirror, systemd)
    saved = list(mirror.mountinfo)
    mirror.mountinfo = [m for m in mirror.mountinfo if " /boot/efi " not in m]
    mirror._write_proc()
    fast_applier(mirror, monkeypatch)

    def mount(argv: tuple[str, ...]):
        if argv == mount_argv:
            mirror.mountinfo = saved
            mirror._write_proc()
            return Result(argv, 0)
        return None

    mirror.runner.responders.insert(0, mount)
    outcome = mirror.cli("heal", "--why", "boot")
    assert outcome.code == 0, outcome.error
    assert upkeep_changes(outcome.calls) == [mount_argv]
    [line] = history.read(str(mirror.sysroot))
    assert line.endswith("mounted at boot: /dev/md/esp at /boot/efi (its mount had not happened)"), line
    # by hand or on hot-plug, an unmounted ESP is the administrator's choice: heal leaves it
    mirror.mountinfo = [m for m in saved if " /boot/efi " not in m]
    mirror._write_proc()
    assert upkeep_changes(mirror.cli("heal", "--why", "hand").calls) == []
