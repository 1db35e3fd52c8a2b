"""`esp-mirror release`: a member disk out of the mirror as a plain ESP that boots alone
(``--disk``), or the mirror undone (``--all``); the refusals; a run cut at any step and run again.

The machine is :class:`conftest.Mirror`: /dev/vda1, /dev/vdb1 (and /dev/vdc1) in /dev/md/esp,
the array's FAT C982-96CB mounted at /boot/efi, one boot entry of ours per disk, fstab and
mdadm.conf with esp-mirror's blocks, and the installed-system group's files.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import yaml
from conftest import (
    ARRAY_UUID,
    FSCK_CLEAN,
    GRUB_LOADER,
    USER_FSTAB,
    Mirror,
    ToolsExcept,
    assert_upkeep_only_read,
    fast_applier,
    guid_of,
    hd_path,
    isolate_upkeep,
    serial_of,
    superblock,
    upkeep_changes,
)

from esp_mirror_plugin.pipeline import naming
from esp_mirror_plugin.pipeline import record as records
from esp_mirror_plugin.system import files
from esp_mirror_plugin.system.runner import Result
from esp_mirror_plugin.upkeep import journal as journal_file

FAT = "C982-96CB"  # the array's FAT: what fstab names
B_ID = naming.fstab_uuid(naming.released_volume_id(guid_of("vdb"), taken=FAT))
C_ID = naming.fstab_uuid(naming.released_volume_id(guid_of("vdc"), taken=FAT))
ARRAY_LINE = f"ARRAY /dev/md/esp metadata=1.0 UUID={ARRAY_UUID} name=any:esp"
PLAIN_LINE = f"UUID={FAT}\t/boot/efi\tvfat\tumask=0077,nofail\t0\t2"
DAMAGE = "/EFI/BOOT/BOOTX64.EFI  Contains a free cluster (1234). Assuming EOF."


def plan_commands(report: dict, group: str | None = None) -> list[tuple[str, ...]]:
    return [
        tuple(s["argv"])
        for g in report["plan"]
        if group is None or g["name"] == group
        for s in g["steps"]
        if s["kind"] == "command"
    ]


def journal_of(mirror: Mirror) -> Path:
    return mirror.sysroot / "var/lib/esp-mirror/release.json"


def entry_create(number: str, disk: str, label: str) -> tuple[str, ...]:
    head = ("efibootmgr", "--quiet", "--create", "--bootnum", number, "--disk", disk, "--part", "1")
    return (*head, "--label", label, "--loader", GRUB_LOADER)


def delete(number: str) -> tuple[str, ...]:
    return ("efibootmgr", "--quiet", "--bootnum", number, "--delete-bootnum")


def mounted_from(mirror: Mirror) -> str | None:
    """What /boot/efi is mounted from (mountinfo's source), or None; two mounts there fail the test."""
    sources = [x.split(" - ")[1].split()[1] for x in mirror.mountinfo if f" {mirror.esp} " in x]
    assert len(sources) <= 1, f"mounted twice at {mirror.esp}: {sources}"
    return sources[0] if sources else None


def release_b(mirror: Mirror) -> list[tuple[str, ...]]:
    """What `release --disk /dev/vdb` runs on a mirror of vda, vdb and vdc."""
    return [
        ("umount", "/boot/efi"),
        ("mdadm", "/dev/md/esp", "--fail", "/dev/vdb1", "--remove", "/dev/vdb1"),
        ("mount", "-t", "vfat", "-o", "umask=0077", "/dev/md/esp", "/boot/efi"),
        ("fatlabel", "-i", "/dev/vdb1", B_ID.replace("-", "")),
        ("mdadm", "--zero-superblock", "/dev/vdb1"),
        ("mdadm", "--grow", "/dev/md/esp", "--raid-devices=2"),
        entry_create("0005", "/dev/vdb", "Debian (espvm-B)"),  # made before ours goes
        delete("0002"),
        ("efibootmgr", "--quiet", "--bootorder", "0001,0003,0005,0000,0004"),
        ("rm", "-f", "--", str(journal_of(mirror))),
    ]


@pytest.fixture
def three(mirror_of, monkeypatch) -> Mirror:
    mirror = mirror_of("vda", "vdb", "vdc")
    fast_applier(mirror, monkeypatch)
    return mirror


# -- --disk: the plan ---------------------------------------------------------------------------


def test_release_of_a_disk_plans_it_out_relabelled_rid_of_its_superblock_checked_and_the_array_shrunk(three):
    outcome = three.cli("release", "--disk", "/dev/vdb", "--dry-run", "--json")

    assert outcome.code == 0, outcome.err
    report = json.loads(outcome.out)
    assert [g["name"] for g in report["plan"]] == ["release", "entries", "finish"]
    assert plan_commands(report) == release_b(three)
    release = report["plan"][0]
    assert [s["kind"] for s in release["steps"]] == [
        "write-file",  # the journal, before the first change
        "command",
        "command",
        "command",  # the ESP back on the members that stay, at once
        "command",  # its own FAT id while its superblock still hides it from blkid
        "command",
        "verify-fat",  # fsck.fat -n once it is plain: a damaged one stops the run
        "write-file",  # the journal's "finish"
        "command",
        "write-file",  # the record counts 2 members
    ]
    assert release["notes"] == [
        f"/dev/vdb1 (/dev/vdb): fsck.fat -n found no damage; FAT volume id {B_ID} (its own)",
        f"/dev/md/esp keeps 2 members and its FAT id {FAT}, which fstab names",
    ]
    journal = json.loads(release["steps"][0]["content"])
    assert {k: journal[k] for k in ("command", "all", "members", "mountpoint", "fs_uuid", "phase")} == {
        "command": "esp-mirror release --disk /dev/vdb",
        "all": False,
        "members": 2,
        "mountpoint": "/boot/efi",
        "fs_uuid": FAT,
        "phase": "take-out",
    }
    assert journal["release"] == [
        {"node": "/dev/vdb1", "disk": "/dev/vdb", "partuuid": guid_of("vdb"), "tag": "espvm-B", "volume_id": B_ID}
    ]
    assert json.loads(release["steps"][7]["content"])["phase"] == "finish"
    assert yaml.safe_load(release["steps"][-1]["content"])["members"] == 2
    assert {k: report[k] for k in ("applied", "all", "release", "keep", "volume_ids", "members")} == {
        "applied": False,
        "all": False,
        "release": ["/dev/vdb1"],
        "keep": None,
        "volume_ids": {"/dev/vdb1": B_ID},
        "members": 2,
    }
    assert B_ID != FAT
    assert_upkeep_only_read(outcome.calls)


def test_a_mirror_of_two_released_to_one_member_asks_for_it_and_mdadm_gets_force(mirror):
    report = json.loads(mirror.cli("release", "--disk", "/dev/vdb", "--one-member", "--dry-run", "--json").out)

    assert ("mdadm", "--grow", "/dev/md/esp", "--raid-devices=1", "--force") in plan_commands(report)
    assert report["plan"][0]["notes"][-1] == (
        f"/dev/md/esp keeps 1 member and its FAT id {FAT}, which fstab names; a one-member array mirrors nothing "
        "until `esp-mirror add --disk DISK`"
    )


def test_release_with_the_esp_unmounted_does_not_mount_it(three):
    three.mountinfo = [line for line in three.mountinfo if f" {three.esp} " not in line]
    three._write_proc()
    report = json.loads(three.cli("release", "--disk", "/dev/vdb", "--dry-run", "--json").out)
    assert plan_commands(report)[:2] == [
        ("mdadm", "/dev/md/esp", "--fail", "/dev/vdb1", "--remove", "/dev/vdb1"),
        ("fatlabel", "-i", "/dev/vdb1", B_ID.replace("-", "")),
    ]


def test_the_dry_run_text_shows_the_plan_and_changes_nothing(three):
    outcome = three.cli("release", "--disk", "/dev/vdb", "--dry-run")

    assert outcome.code == 0
    text = three.normalize(outcome.out)
    assert text.startswith("# == release ==\n# note: /dev/vdb1 (/dev/vdb): fsck.fat -n found no damage")
    assert "fatlabel -i /dev/vdb1 " in text and "fsck.fat -n /dev/vdb1   (stop when it finds damage)\n" in text
    assert "# == entries ==\n" in text and text.endswith("rm -f -- @TMP@/host/var/lib/esp-mirror/release.json\n")
    assert not journal_of(three).exists()
    assert_upkeep_only_read(outcome.calls)


# -- --disk: carried out ------------------------------------------------------------------------


def test_release_of_a_disk_leaves_a_whole_mirror_and_a_plain_esp_with_its_own_id_and_entry(three):
    three.accept_changes()
    planned = plan_commands(json.loads(three.cli("release", "--disk", "/dev/vdb", "--dry-run", "--json").out))

    outcome = three.cli("release", "--disk", "/dev/vdb", "--yes")

    assert (outcome.code, outcome.err) == (0, "")
    assert upkeep_changes(outcome.calls) == planned == release_b(three)
    assert outcome.out.endswith(
        f"esp-mirror: /dev/vdb1 is a plain ESP (FAT volume id {B_ID}) that boots alone from its entry "
        "'Debian (espvm-B)'; /dev/md/esp has 2 members\n"
    )
    status = json.loads(three.cli("status", "--json").out)
    assert (status["exit_code"], status["problems"]) == (0, [])
    assert [(m["node"], m["slot"], m["state"]) for m in status["array"]["members"]] == [
        ("/dev/vda1", 0, "in_sync"),
        ("/dev/vdc1", 1, "in_sync"),
    ]
    assert (status["array"]["raid_disks"], status["array"]["degraded"]) == (2, 0)
    assert records.load(str(three.sysroot)) == dataclasses.replace(three.record, members=2)
    # the partition: no superblock, the FAT at its start with an id of its own (what blkid shows)
    assert "/dev/vdb1" not in three.superblocks
    [part] = [p for p in three.disks["/dev/vdb"].partitions if p.number == 1]
    assert (part.probe["TYPE"], part.probe["UUID"]) == ("vfat", B_ID)
    # NVRAM: the released disk keeps an entry, not one of ours; ours first
    order, entries = three.nvram()
    assert order == ("0001", "0003", "0005", "0000", "0004")
    assert ("0005", "Debian (espvm-B)", hd_path(guid_of("vdb")), True) in entries
    assert not [e for e in entries if e[1] == f"Debian (esp-mirror {serial_of('vdb')})"]
    # fstab and mdadm.conf name the array by UUID: unchanged; the journal is gone
    assert files.split_block((three.sysroot / "etc/fstab").read_text())[1] == f"UUID={FAT}\t/boot/efi\tvfat\t" + (
        "umask=0077,nofail,x-systemd.device-timeout=45s\t0\t2\n"
    )
    assert ARRAY_LINE in (three.sysroot / "etc/mdadm/mdadm.conf").read_text()
    assert mounted_from(three) == "/dev/md127"
    assert not journal_of(three).exists()


def test_heal_never_takes_a_released_member_back(three):
    """heal adds partitions whose superblock is the array's: the released one has none any more."""
    three.accept_changes()
    assert three.cli("release", "--disk", "/dev/vdb", "--yes").code == 0

    for argv in (("heal", "--why", "boot"), ("heal", "--why", "hot-plug", "--device", "/dev/vdb1")):
        outcome = three.cli(*argv)
        assert (outcome.code, outcome.out) == (0, "nothing to heal: /dev/md/esp has 2 of 2 members\n"), argv
        assert upkeep_changes(outcome.calls) == []
    assert ("mdadm", "--examine", "--export", "/dev/vdb1") in outcome.calls  # looked at, and passed over


def test_heal_takes_back_a_partition_that_still_carries_the_superblock(three):
    """The counterpart: cut after the member was taken out, before its superblock went, heal at
    boot takes it back (older events), and the release run again takes it out again."""
    three.accept_changes()
    three.fail(("fatlabel",), 1, "fatlabel: interrupted\n")
    assert three.cli("release", "--disk", "/dev/vdb", "--yes").code == 1
    three.failures.clear()
    three.superblocks["/dev/vdb1"] = superblock(ARRAY_UUID, events=100)  # md's events moved on without it

    healed = three.cli("heal", "--why", "boot")
    assert upkeep_changes(healed.calls)[-1] == ("mdadm", "/dev/md/esp", "--add", "/dev/vdb1")

    again = three.cli("release", "--disk", "/dev/vdb", "--yes")
    assert again.code == 0, again.err
    assert upkeep_changes(again.calls)[:2] == [
        ("umount", "/boot/efi"),
        ("mdadm", "/dev/md/esp", "--fail", "/dev/vdb1", "--remove", "/dev/vdb1"),
    ]
    assert "/dev/vdb1" not in three.superblocks


def test_esp_mirror_entries_leaves_the_released_disks_entry_alone(three):
    three.accept_changes()
    assert three.cli("release", "--disk", "/dev/vdb", "--yes").code == 0

    outcome = three.cli("entries", "--dry-run", "--json")

    assert json.loads(outcome.out)["would_change"] == 0
    assert plan_commands(json.loads(outcome.out)) == []


def test_a_released_disk_goes_back_with_its_copy_erased_and_add_folding_its_entry_into_ours(three):
    """As docs/operating.md says: `wipefs --all /dev/vdb1`, then `esp-mirror add --disk /dev/vdb`."""
    three.accept_changes()
    assert three.cli("release", "--disk", "/dev/vdb", "--yes").code == 0
    refused = three.cli("add", "--disk", "/dev/vdb", "--yes")
    assert refused.code == 2 and "holds files, which add never overwrites" in refused.error
    part = next(p for p in three.disks["/dev/vdb"].partitions if p.number == 1)
    part.probe, part.inner = {}, {}  # what wipefs --all leaves

    report = json.loads(three.cli("add", "--disk", "/dev/vdb", "--dry-run", "--json").out)

    assert ("mdadm", "/dev/md/esp", "--add", "/dev/vdb1") in plan_commands(report)
    assert plan_commands(report, "entries")[:2] == [
        delete("0005"),  # its own entry, a duplicate of ours once its partition is a member again
        entry_create("0002", "/dev/vdb", f"Debian (esp-mirror {serial_of('vdb')})"),
    ]


def test_released_to_one_member_the_array_is_whole_and_the_last_one_needs_all(mirror, monkeypatch):
    fast_applier(mirror, monkeypatch)
    mirror.accept_changes()
    assert mirror.cli("release", "--disk", "/dev/vdb", "--one-member", "--yes").code == 0
    status = json.loads(mirror.cli("status", "--json").out)
    assert (status["exit_code"], status["array"]["raid_disks"], status["array"]["degraded"]) == (0, 1, 0)

    outcome = mirror.cli("release", "--disk", "/dev/vda", "--yes")

    assert (outcome.code, outcome.error) == (
        2,
        "/dev/vda holds the last member of /dev/md/esp: `esp-mirror release --all` undoes the mirror and leaves "
        "/dev/vda1 the machine's ESP",
    )


# -- --all ------------------------------------------------------------------------------------------


def release_all(mirror: Mirror) -> list[tuple[str, ...]]:
    """What `release --all` runs on the mirror of vda and vdb (the timers stopped and systemd
    reloaded only where systemd runs the machine: not in a rescue system)."""
    host = str(mirror.sysroot)
    systemd = f"{host}/etc/systemd/system"
    running = (mirror.sysroot / "run/systemd/system").is_dir()
    now = ("--now",) if running else ()
    return [
        ("umount", "/boot/efi"),
        ("mdadm", "--stop", "/dev/md/esp"),
        ("fatlabel", "-i", "/dev/vdb1", B_ID.replace("-", "")),  # the other disks first
        ("mdadm", "--zero-superblock", "/dev/vdb1"),
        ("fatlabel", "-i", "/dev/vda1", FAT.replace("-", "")),  # the first keeps the array's id
        ("mdadm", "--zero-superblock", "/dev/vda1"),
        ("mount", "-t", "vfat", "-o", "umask=0077", "/dev/vda1", "/boot/efi"),
        entry_create("0005", "/dev/vdb", "Debian (espvm-B)"),
        entry_create("0004", "/dev/vda", "Debian (espvm-A)"),
        delete("0001"),
        delete("0002"),
        ("rm", "-f", "--", f"{host}/etc/apt/apt.conf.d/90esp-mirror"),  # callers of the guard first
        ("rm", "-f", "--", f"{host}/usr/local/lib/esp-mirror/esp-mounted"),
        ("rm", "-f", "--", f"{systemd}/esp-mirror-heal.service"),
        ("rm", "-f", "--", f"{systemd}/esp-mirror-heal@.service"),
        ("rm", "-f", "--", f"{host}/etc/udev/rules.d/65-esp-mirror-heal.rules"),
        ("chroot", host, "systemctl", "disable", *now, "esp-mirror-check.timer"),
        ("chroot", host, "systemctl", "disable", *now, "esp-mirror-metrics.timer"),
        ("rm", "-f", "--", f"{systemd}/esp-mirror-check.timer"),
        ("rm", "-f", "--", f"{systemd}/esp-mirror-check.service"),
        ("rm", "-f", "--", f"{systemd}/esp-mirror-metrics.timer"),
        ("rm", "-f", "--", f"{systemd}/esp-mirror-metrics.service"),
        ("rm", "-f", "--", f"{host}/etc/esp-mirror/debconf.preseed"),
        *([("chroot", host, "systemctl", "daemon-reload")] if running else []),
        ("rm", "-f", "--", f"{host}/etc/esp-mirror/esp-mirror.yaml"),  # the record, last but the journal
        ("rm", "-f", "--", str(journal_of(mirror))),
    ]


@pytest.fixture
def two(mirror, monkeypatch) -> Mirror:
    fast_applier(mirror, monkeypatch)
    (mirror.sysroot / "run/systemd/system").mkdir(parents=True, exist_ok=True)  # booted with systemd
    return mirror


def test_release_all_plans_the_array_stopped_each_member_plain_the_first_one_the_esp(two):
    outcome = two.cli("release", "--all", "--dry-run", "--json")

    assert outcome.code == 0, outcome.err
    report = json.loads(outcome.out)
    assert [g["name"] for g in report["plan"]] == ["release", "entries", "installed-system", "finish"]
    assert plan_commands(report) == release_all(two)
    release = report["plan"][0]
    edits = [s for s in release["steps"] if s["kind"] == "remove-block"]
    assert [(os.path.relpath(s["path"], two.sysroot), s["keep"]) for s in edits] == [
        ("etc/mdadm/mdadm.conf", "MAILADDR root"),  # the monitor's address the block carried stays
        ("etc/fstab", PLAIN_LINE),
    ]
    assert [s["kind"] for s in release["steps"]].count("verify-fat") == 2
    assert release["notes"] == [
        f"/dev/vda1 (/dev/vda): fsck.fat -n found no damage; FAT volume id {FAT} (the array's: fstab names it)",
        f"/dev/vdb1 (/dev/vdb): fsck.fat -n found no damage; FAT volume id {B_ID} (its own)",
        "/dev/vda1 is the machine's ESP at /boot/efi afterwards",
        "/dev/vdb keeps an entry of its own: a copy of the ESP as it is now, which upgrades no longer update (they "
        "write to /dev/vda1); remove such an entry with `efibootmgr -b NNNN -B` when it should not be a fallback",
        "the initramfs keeps the old mdadm.conf until it is rebuilt (the next kernel update, or by hand): its ARRAY "
        "line then finds no member and is passed over",
    ]
    assert report["plan"][2]["notes"][-1] == (
        "/usr/local/sbin/esp-mirror and its manual page stay: `esp-mirror adopt` mirrors the ESP again; remove them "
        "by hand if you will not"
    )
    assert {k: report[k] for k in ("all", "release", "keep", "members")} == {
        "all": True,
        "release": ["/dev/vda1", "/dev/vdb1"],
        "keep": "/dev/vda1",
        "members": 0,
    }
    assert_upkeep_only_read(outcome.calls)


def test_release_all_in_a_rescue_system_only_disables_the_timers_and_leaves_systemd_alone(mirror, monkeypatch):
    fast_applier(mirror, monkeypatch)  # no /run/systemd/system: systemctl --now and daemon-reload would fail
    mirror.accept_changes()

    outcome = mirror.cli("release", "--all", "--yes")

    assert (outcome.code, outcome.err) == (0, "")
    changes = upkeep_changes(outcome.calls)
    assert changes == release_all(mirror)
    assert [c[2:] for c in changes if c[2:3] == ("systemctl",)] == [
        ("systemctl", "disable", "esp-mirror-check.timer"),
        ("systemctl", "disable", "esp-mirror-metrics.timer"),
    ]


def test_release_all_leaves_the_first_disks_partition_the_machines_esp_and_nothing_of_the_mirror(two):
    two.accept_changes()
    mdadm_conf = (two.sysroot / "etc/mdadm/mdadm.conf").read_text()

    outcome = two.cli("release", "--all", "--yes")

    assert (outcome.code, outcome.err) == (0, "")
    assert upkeep_changes(outcome.calls) == release_all(two)
    assert outcome.out.endswith(
        f"esp-mirror: the mirror is undone: /dev/vda1 is the ESP at /boot/efi (UUID={FAT}); each disk keeps a plain "
        "ESP and its own boot entry; `esp-mirror adopt` mirrors the ESP again\n"
    )
    assert (two.sysroot / "etc/fstab").read_text() == USER_FSTAB + PLAIN_LINE + "\n"
    assert (two.sysroot / "etc/mdadm/mdadm.conf").read_text() == files.without_block(mdadm_conf) + "MAILADDR root\n"
    assert mounted_from(two) == "/dev/vda1"
    assert two.superblocks == {}
    probes = {p: next(x for x in two.disks[p].partitions if x.number == 1).probe for p in ("/dev/vda", "/dev/vdb")}
    assert {p: (x["TYPE"], x["UUID"]) for p, x in probes.items()} == {
        "/dev/vda": ("vfat", FAT),
        "/dev/vdb": ("vfat", B_ID),
    }
    order, entries = two.nvram()
    assert order == ("0004", "0005", "0000", "0003")  # the ESP's disk first
    assert [e[1] for e in entries if e[0] in order[:2]] == ["Debian (espvm-A)", "Debian (espvm-B)"]
    assert not (two.sysroot / records.PATH).exists() and not journal_of(two).exists()
    left = sorted(
        str(p.relative_to(two.sysroot))
        for p in two.sysroot.rglob("*")
        if "esp-mirror" in p.name and p.is_file() and not p.name.endswith("~")
    )
    assert left == [
        "usr/local/sbin/esp-mirror",
        "usr/local/share/bash-completion/completions/esp-mirror",
        "usr/local/share/man/man8/esp-mirror.8",
    ]
    status = two.cli("status")
    assert status.code == 2  # not set up: no record, no array


def test_release_all_of_a_degraded_mirror_releases_the_members_that_are_here(two):
    two.lose_disk("vdb")
    report = json.loads(two.cli("release", "--all", "--dry-run", "--json").out)

    assert report["release"] == ["/dev/vda1"]
    assert plan_commands(report, "entries") == [
        entry_create("0004", "/dev/vda", "Debian (espvm-A)"),
        delete("0001"),
        delete("0002"),  # esp-mirror's entry for the disk that is gone
    ]
    assert report["plan"][0]["notes"][2].startswith(
        "1 member of /dev/md/esp is not here and keeps the array's superblock: zero it"
    )


# -- refusals: one line, exit 2, nothing changed -------------------------------------------------------


def damaged(m: Mirror) -> None:
    m.fsck["/dev/vdb1"] = (1, FSCK_CLEAN.replace("{node}:", f"{DAMAGE}\n{{node}}:"))


def interrupted_repair(m: Mirror) -> None:
    path = m.sysroot / "var/lib/esp-mirror/repair.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({"source": "/dev/vda1", "rebuild": ["/dev/vdb1"], "mountpoint": None, "phase": "take-out"})
    )


def interrupted_adoption(m: Mirror) -> None:
    path = m.sysroot / "var/lib/esp-mirror/adopt.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"command": "esp-mirror adopt --disk /dev/vda --disk /dev/vdb", "live": "x", "disks": [], "phase": "copy"}
    path.write_text(json.dumps(body))


def interrupted_release_of_c(m: Mirror) -> None:
    m.accept_changes()
    m.fail(("fatlabel",), 1, "fatlabel: interrupted\n")
    assert m.cli("release", "--disk", "/dev/vdc", "--yes").code == 1
    m.failures.clear()


REFUSALS = {
    "not-a-member": (
        lambda m: m.add_new_disk("vdd"),
        ("--disk", "/dev/vdd"),
        "/dev/vdd is not a member of /dev/md/esp: its members are /dev/vda, /dev/vdb, /dev/vdc; release one of "
        "them, or undo the mirror with --all",
    ),
    "nothing-named": (lambda m: None, (), "name what to release: --disk DISK (one member), or --all (undo the mirror)"),
    "one-member-with-all": (
        lambda m: None,
        ("--all", "--one-member"),
        "--one-member keeps a mirror of one disk, --all undoes the mirror: pass one of them",
    ),
    "one-member-of-three": (
        lambda m: None,
        ("--disk", "/dev/vdb", "--one-member"),
        "--one-member is for a mirror of two disks; /dev/md/esp keeps 2 members: leave it out",
    ),
    "degraded": (
        lambda m: m.lose_disk("vdc"),
        ("--disk", "/dev/vdb"),
        "/dev/md/esp is degraded (1 of 3 members missing): release takes a disk out of a whole mirror; put the "
        "missing one back first (`esp-mirror replace --old missing --new DISK`), or undo the mirror with "
        "`esp-mirror release --all`",
    ),
    "recovering": (
        lambda m: (m.set_member("/dev/vdc1", "spare", None), m.set_md(sync_action="recover", sync_completed="8 / 9")),
        ("--all",),
        "/dev/md/esp is not at rest (md: recover 8 / 9; members /dev/vda1 in_sync, /dev/vdb1 in_sync, /dev/vdc1 "
        "spare): every member must be in sync; wait for md (`esp-mirror status`), or take a failed member out first "
        "(`esp-mirror replace`)",
    ),
    "damaged-fat": (
        damaged,
        ("--disk", "/dev/vdb"),
        f"/dev/vdb1 cannot be released: its FAT is damaged ({DAMAGE}); `esp-mirror repair --source DISK` with a "
        "good member makes it whole again",
    ),
    "array-not-running": (
        lambda m: m.stop_array(),
        ("--disk", "/dev/vdb"),
        "/dev/md/esp is not running: assemble it first (mdadm --assemble --scan --run) or boot the installed system",
    ),
    "all-array-not-running": (
        lambda m: m.stop_array(),
        ("--all",),
        "/dev/md/esp is not running: assemble it first (mdadm --assemble --scan --run) or boot the installed system",
    ),
    "not-set-up": (
        lambda m: (m.sysroot / records.PATH).unlink(),
        ("--all",),
        "no esp-mirror setup here (/etc/esp-mirror/esp-mirror.yaml is missing): run `esp-mirror apply` (new disks) "
        "or `esp-mirror adopt` (a running system's ESP) first",
    ),
    "unfinished-repair": (
        interrupted_repair,
        ("--disk", "/dev/vdb"),
        "a repair was interrupted: finish it first (`esp-mirror repair --source auto`), then release",
    ),
    "unfinished-adoption": (
        interrupted_adoption,
        ("--all",),
        "an adoption is not finished: finish it first by running it again (esp-mirror adopt --disk /dev/vda --disk "
        "/dev/vdb)",
    ),
    "another-release": (
        interrupted_release_of_c,
        ("--disk", "/dev/vdb"),
        "an interrupted release is not finished: run it again to finish it first: esp-mirror release --disk /dev/vdc",
    ),
    "broken-fstab-block": (
        lambda m: (m.sysroot / "etc/fstab").write_text(f"{USER_FSTAB}{files.BEGIN}\nUUID={FAT} /boot/efi vfat\n"),
        ("--all",),
        f"{'{HOST}'}/etc/fstab has {files.BEGIN!r} without {files.END!r}: repair the file by hand",
    ),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_refusals_name_the_problem_and_the_fix_and_change_nothing(three, case):
    prepare, argv, message = REFUSALS[case]
    prepare(three)
    before = len(three.runner.calls)

    outcome = three.cli("release", *argv, "--yes")

    assert (outcome.code, outcome.error) == (2, message.replace("{HOST}", str(three.sysroot)))
    assert_upkeep_only_read(three.runner.calls[before:])


def test_a_mirror_of_two_is_not_released_to_one_member_without_asking(mirror):
    outcome = mirror.cli("release", "--disk", "/dev/vdb", "--yes")
    assert (outcome.code, outcome.error) == (
        2,
        "releasing /dev/vdb leaves /dev/md/esp one member (/dev/vda1), a mirror of nothing: `esp-mirror release "
        "--all` undoes the mirror (each disk keeps a plain ESP that boots, /dev/vda's mounted); --one-member keeps "
        "the array of one, for `esp-mirror add` to grow again",
    )
    assert_upkeep_only_read(outcome.calls)


def test_without_fatlabel_nothing_is_released_and_the_package_is_named(three):
    three.runner.tools = ToolsExcept("fatlabel")
    outcome = three.cli("release", "--disk", "/dev/vdb", "--yes")
    assert (outcome.code, outcome.error) == (
        2,
        "fatlabel is not installed: install it with `apt-get install --yes dosfstools`",
    )
    assert_upkeep_only_read(outcome.calls)


def test_disk_and_all_exclude_each_other(mirror):
    outcome = mirror.cli("release", "--disk", "/dev/vdb", "--all")
    assert outcome.code == 2
    assert "not allowed with argument" in outcome.error and outcome.calls == []


def test_without_yes_and_without_a_terminal_nothing_is_released(three):
    outcome = three.cli("release", "--disk", "/dev/vdb")
    assert outcome.code == 2
    assert "mdadm /dev/md/esp --fail /dev/vdb1 --remove /dev/vdb1" in outcome.out  # the plan was shown
    assert not journal_of(three).exists()
    assert_upkeep_only_read(outcome.calls)


# -- cut and run again: the journal ---------------------------------------------------------------------


def state_of(mirror: Mirror) -> dict:
    """What a release leaves, as a second machine's can be compared with it: the files of the
    installed system, NVRAM, md, the partitions' superblocks and FAT ids, the ESP's mount."""
    tree = {
        str(p.relative_to(mirror.sysroot)): p.read_bytes() if p.is_file() else os.readlink(p)
        for top in ("etc", "var/lib/esp-mirror", "usr/local")
        for p in sorted((mirror.sysroot / top).rglob("*"))
        if (p.is_file() or p.is_symlink()) and not p.name.endswith("~")
    }
    text = {k: v.replace(str(mirror.root).encode(), b"@TMP@") if isinstance(v, bytes) else v for k, v in tree.items()}
    md = None
    if mirror.md.exists():
        md = (mirror.md_attr("raid_disks"), mirror.md_attr("degraded"), mirror.member_nodes())
    probes = {d.path: dict(next(p for p in d.partitions if p.number == 1).probe) for d in mirror.disks.values()}
    return {
        "files": text,
        "nvram": mirror.nvram(),
        "md": md,
        "superblocks": sorted(mirror.superblocks),
        "probes": probes,
        "mount": mounted_from(mirror),
    }


@pytest.mark.parametrize(
    ("disks", "argv", "udev"),
    [
        (("vda", "vdb", "vdc"), ("--disk", "/dev/vdb"), True),
        (("vda", "vdb"), ("--all",), True),
        (("vda", "vdb"), ("--all",), False),
    ],
    ids=["disk-of-three", "all-of-two", "all-of-two-without-udev"],
)
def test_a_release_cut_at_any_command_finishes_when_run_again(tmp_path, monkeypatch, disks, argv, udev):
    """The kill loop in a unit test: cut at each command in turn (it fails; what came before it
    is done), then the same command again must leave exactly what an uninterrupted run leaves.
    Without udev (a rescue system) the stopped array's /dev/md/esp link and node stay behind."""

    def machine(name: str) -> Mirror:
        m = Mirror(tmp_path / name, disks)
        m.udev = udev
        isolate_upkeep(m, monkeypatch)
        m.accept_changes()
        return m

    reference = machine("whole")
    planned = plan_commands(json.loads(reference.cli("release", *argv, "--dry-run", "--json").out))
    assert reference.cli("release", *argv, "--yes").code == 0
    expected = state_of(reference)
    assert len(planned) > 8
    for n, command in enumerate(planned):
        cut = machine(f"cut-{n}")
        at = tuple(a.replace(str(reference.root), str(cut.root)) for a in command)
        cut.fail(at, 1, "esp-mirror test: cut here\n")
        first = cut.cli("release", *argv, "--yes")
        assert (first.code, "step failed" in first.err) == (1, True), (n, command, first.err)
        assert journal_of(cut).exists(), (n, command)  # the journal says what was going on
        cut.failures.clear()

        again = cut.cli("release", *argv, "--yes")

        assert (again.code, again.err) == (0, ""), (n, command)
        assert state_of(cut) == expected, (n, command)
        redone = [c for c in upkeep_changes(again.calls) if c[:2] in (("mdadm", "/dev/md/esp"), ("mdadm", "--stop"))]
        assert len(redone) <= 1, (n, command, redone)  # a member is taken out (or the array stopped) once


def test_cut_after_the_member_went_out_the_run_again_mounts_the_esp_and_goes_on_from_its_superblock(three):
    three.accept_changes()
    three.fail(("mount", "-t", "vfat", "-o", "umask=0077", "/dev/md/esp"), 32, "mount: interrupted\n")
    assert three.cli("release", "--disk", "/dev/vdb", "--yes").code == 1
    three.failures.clear()
    assert mounted_from(three) is None and "/dev/vdb1" not in three.member_nodes()

    outcome = three.cli("release", "--disk", "/dev/vdb", "--yes")

    assert (outcome.code, outcome.err) == (0, "")
    assert upkeep_changes(outcome.calls) == release_b(three)[2:]  # from the mount on
    assert "  [release] note: an interrupted release (" in outcome.out


def test_cut_in_the_finish_phase_the_run_again_only_finishes(three):
    three.accept_changes()
    three.fail(("efibootmgr", "--quiet", "--create"), 5, "efibootmgr: interrupted\n")
    assert three.cli("release", "--disk", "/dev/vdb", "--yes").code == 1
    three.failures.clear()
    assert json.loads(journal_of(three).read_text())["phase"] == "finish"

    report = json.loads(three.cli("release", "--disk", "/dev/vdb", "--dry-run", "--json").out)

    assert plan_commands(report) == release_b(three)[6:]  # the entries and the journal
    assert report["plan"][0]["steps"] == []


def test_a_release_all_cut_after_the_stop_and_booted_again_takes_the_array_apart_again(two):
    """Cut after the stop, and rebooted before the run again: md assembled the old mirror from the
    superblocks and fstab mounted it. The journal (take-out) makes the run again stop it again."""
    two.accept_changes()
    two.fail(("fatlabel",), 1, "fatlabel: interrupted\n")
    assert two.cli("release", "--all", "--yes").code == 1
    two.failures.clear()
    two.start_array(["/dev/vda1", "/dev/vdb1"])  # the boot

    outcome = two.cli("release", "--all", "--yes")

    assert (outcome.code, outcome.err) == (0, "")
    assert upkeep_changes(outcome.calls)[:3] == [
        ("umount", "/boot/efi"),
        ("mdadm", "--stop", "/dev/md/esp"),
        ("fatlabel", "-i", "/dev/vdb1", B_ID.replace("-", "")),
    ]
    assert (mounted_from(two), two.superblocks) == ("/dev/vda1", {})


def test_a_release_all_cut_after_its_record_went_is_finished_from_the_journal(two):
    two.accept_changes()
    two.fail(("rm", "-f", "--", str(journal_of(two))), 1, "rm: interrupted\n")
    assert two.cli("release", "--all", "--yes").code == 1
    two.failures.clear()
    assert not (two.sysroot / records.PATH).exists()
    status = json.loads(two.cli("status", "--json").out)
    assert status["problems"] == [
        "a release was interrupted (finish): run it again to finish it: esp-mirror release --all"
    ]

    outcome = two.cli("release", "--all", "--yes")

    assert (outcome.code, outcome.err) == (0, "")
    assert upkeep_changes(outcome.calls) == [("rm", "-f", "--", str(journal_of(two)))]


def test_a_fat_found_damaged_once_plain_stops_the_run_and_the_same_command_finishes_after_the_repair(three):
    three.accept_changes()

    def damaged_once_plain(argv: tuple[str, ...]) -> Result | None:
        if argv == ("fsck.fat", "-n", "/dev/vdb1") and "/dev/vdb1" not in three.superblocks:
            return Result(argv, 1, FSCK_CLEAN.format(node="/dev/vdb1").replace("/dev/vdb1:", f"{DAMAGE}\n/dev/vdb1:"))
        return None

    three.runner.responders.insert(0, damaged_once_plain)
    outcome = three.cli("release", "--disk", "/dev/vdb", "--yes")

    assert outcome.code == 1
    assert f"the FAT on /dev/vdb1 is damaged ({DAMAGE}): repair it with `fsck.fat -a /dev/vdb1`" in outcome.err
    assert json.loads(journal_of(three).read_text())["phase"] == "take-out"
    three.runner.responders.remove(damaged_once_plain)  # fsck.fat -a repaired it

    again = three.cli("release", "--disk", "/dev/vdb", "--yes")

    assert (again.code, again.err) == (0, "")
    assert upkeep_changes(again.calls)[:2] == [
        ("fatlabel", "-i", "/dev/vdb1", B_ID.replace("-", "")),  # the same id again
        ("mdadm", "--grow", "/dev/md/esp", "--raid-devices=2"),  # no superblock to zero any more
    ]


def test_status_names_an_interrupted_release_and_how_to_finish_it(three):
    three.accept_changes()
    three.fail(("fatlabel",), 1, "fatlabel: interrupted\n")
    three.cli("release", "--disk", "/dev/vdb", "--yes")
    three.failures.clear()

    outcome = three.cli("status", "--json")

    assert outcome.code == 1
    assert (
        "a release was interrupted (take-out): run it again to finish it: esp-mirror release --disk /dev/vdb"
        in json.loads(outcome.out)["problems"]
    )


def test_a_broken_journal_is_refused_with_the_file_to_remove(three):
    journal_of(three).parent.mkdir(parents=True, exist_ok=True)
    journal_of(three).write_text("{half")
    outcome = three.cli("release", "--disk", "/dev/vdb", "--yes")
    assert outcome.code == 2
    assert outcome.error.startswith(f"cannot read the journal of an interrupted release {journal_of(three)} (")
    assert outcome.error.endswith("then remove the file and run the release again")
    assert_upkeep_only_read(outcome.calls)


def test_the_journal_keeps_what_a_run_again_needs_when_the_record_is_gone(three):
    three.accept_changes()
    three.fail(("fatlabel",), 1, "fatlabel: interrupted\n")
    three.cli("release", "--disk", "/dev/vdb", "--yes")
    journal = journal_file.load_release(str(three.sysroot))
    assert journal is not None
    assert (journal.record, journal.phase, journal.release[0].volume_id) == (three.record, "take-out", B_ID)


def test_release_all_run_again_once_undone_changes_nothing_and_says_so(two):
    two.accept_changes()
    assert two.cli("release", "--all", "--yes").code == 0

    again = two.cli("release", "--all", "--yes")
    dry = two.cli("release", "--all", "--dry-run", "--json")
    one = two.cli("release", "--disk", "/dev/vdb", "--yes")

    assert (again.code, again.err, upkeep_changes(again.calls)) == (0, "", [])
    assert again.out == (
        "esp-mirror: nothing to undo: no mirror of esp-mirror's here (no /etc/esp-mirror/esp-mirror.yaml, no "
        "/dev/md/esp, no unfinished release); `esp-mirror adopt` mirrors the ESP again\n"
    )
    assert dry.code == 0
    assert {k: v for k, v in json.loads(dry.out).items() if k in ("plan", "would_change", "applied")} == {
        "plan": [],
        "would_change": 0,
        "applied": False,
    }
    assert (one.code, one.error.startswith("no esp-mirror setup here")) == (2, True)  # one disk needs a mirror
