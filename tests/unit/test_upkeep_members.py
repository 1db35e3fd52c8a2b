"""`esp-mirror replace` and `esp-mirror add`: a new disk partitioned like the others, added to the
array, recovered, and given its boot entry (the old disk's entry removed, ours first in BootOrder).
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml
from conftest import (
    GIB,
    LINUX_TYPE,
    MIB,
    assert_upkeep_only_read,
    bootorder_after,
    efibootmgr_create,
    fast_applier,
    guid_of,
    isolate_upkeep,
    upkeep_changes,
)

from esp_mirror_plugin.errors import size_text
from esp_mirror_plugin.pipeline import naming
from esp_mirror_plugin.pipeline import record as records
from esp_mirror_plugin.pipeline.steps import Command
from esp_mirror_plugin.system.discovery import describe_disks, read_mounts
from esp_mirror_plugin.upkeep import plans as upkeep
from esp_mirror_plugin.upkeep.mirror import read_mirror

C = guid_of("vdc")


def commands(group: dict) -> list[tuple[str, ...]]:
    return [tuple(s["argv"]) for s in group["steps"] if s["kind"] == "command"]


def partition(disk: str, guid: str) -> tuple[str, ...]:
    """sgdisk as apply runs it: sectors 2048..1050623 (1 MiB + 512 MiB, the record's geometry)."""
    return (
        "sgdisk",
        "--new=1:2048:1050623",
        "--typecode=1:EF00",
        f"--partition-guid=1:{guid}",
        "--change-name=1:esp-mirror",
        disk,
    )


def wait_for_partition(disk: str) -> dict:
    return {
        "kind": "wait-for-partition",
        "disk": disk,
        "number": 1,
        "node": f"{disk}1",
        "timeout": 15.0,
        "why": "the kernel must see the new partition",
        "would_change": True,  # no such node before sgdisk made the partition (partx --add if it does not appear)
    }


def wait_for_recovery(node: str) -> dict:
    return {
        "kind": "wait-for-sync",
        "device": "/dev/md/esp",
        "clean": True,
        "work": "recovery",
        "why": f"recovery copies the ESP onto {node}",
        "would_change": False,  # told from md as it is before the add: nothing to wait for yet
    }


# -- add ----------------------------------------------------------------------------------------


def test_add_partitions_the_new_disk_like_the_others_and_grows_the_array(mirror):
    mirror.add_new_disk("vdc")

    outcome = mirror.cli("add", "--disk", "/dev/vdc", "--dry-run", "--json")

    assert outcome.code == 0, outcome.err
    report = json.loads(outcome.out)
    add, entries = report["plan"]
    assert (add["name"], add["notes"]) == ("add", ["mdadm.conf names /dev/md/esp by UUID: it stays as it is"])
    assert add["steps"][2] == wait_for_partition("/dev/vdc")
    assert add["steps"][-1] == wait_for_recovery("/dev/vdc1")
    assert [s["kind"] for s in add["steps"]] == [
        "command",
        "command",
        "wait-for-partition",
        "settle",
        "command",
        "command",
        "command",
        "write-file",
        "wait-for-sync",
    ]
    assert add["steps"][-2]["path"] == str(mirror.sysroot / records.PATH)
    assert records.Record(**yaml.safe_load(add["steps"][-2]["content"])) == dataclasses.replace(
        mirror.record, members=3
    )
    assert commands(add) == [
        ("sgdisk", "--zap-all", "/dev/vdc"),
        partition("/dev/vdc", C),
        ("wipefs", "--all", "/dev/vdc1"),
        ("mdadm", "/dev/md/esp", "--add", "/dev/vdc1"),
        ("mdadm", "--grow", "/dev/md/esp", "--raid-devices=3"),
    ]
    assert {k: report[k] for k in ("applied", "new", "partition_guid", "old")} == {
        "applied": False,
        "new": "/dev/vdc",
        "partition_guid": C,
        "old": None,
    }
    assert entries["name"] == "entries"
    assert commands(entries) == [
        efibootmgr_create("0004", "/dev/vdc", "espvm-C"),
        ("efibootmgr", "--quiet", "--bootorder", "0001,0002,0004,0000,0003"),
    ]
    assert bootorder_after(("0001", "0002", "0000", "0003"), commands(entries)) == (
        "0001",
        "0002",
        "0004",
        "0000",
        "0003",
    )
    assert_upkeep_only_read(outcome.calls)


def test_the_new_partition_guid_comes_from_the_new_disks_identity(mirror):
    mirror.add_new_disk("vdc", serial="S6B0NL0T000042")
    report = json.loads(mirror.cli("add", "--disk", "/dev/vdc", "--dry-run", "--json").out)
    assert (
        report["partition_guid"]
        == naming.partition_guid("serial:S6B0NL0T000042")
        not in (guid_of("vda"), guid_of("vdb"))
    )


def test_add_with_wipe_erases_the_old_table_first(mirror):
    disk = mirror.add_new_disk("vdc", pttype="gpt")
    mirror.add_partition(disk, 1, 2048, 100_000, type_guid=LINUX_TYPE)

    report = json.loads(mirror.cli("add", "--disk", "/dev/vdc", "--wipe", "--dry-run", "--json").out)

    assert commands(report["plan"][0])[:3] == [
        ("wipefs", "--all", "/dev/vdc"),
        ("sgdisk", "--zap-all", "/dev/vdc"),
        partition("/dev/vdc", C),
    ]


def test_add_carried_out_leaves_three_in_sync_members_each_with_its_entry(mirror, monkeypatch):
    """As tests/vm/test_upkeep.py: add a third disk; afterwards status is healthy with 3 members."""
    mirror.add_new_disk("vdc")
    mirror.accept_changes()
    fast_applier(mirror, monkeypatch)

    outcome = mirror.cli("add", "--disk", "/dev/vdc", "--yes")

    assert (outcome.code, outcome.err) == (0, "")
    status = json.loads(mirror.cli("status", "--json").out)
    assert (status["exit_code"], status["problems"], status["array"]["raid_disks"]) == (0, [], 3)
    assert [(m["node"], m["slot"], m["state"]) for m in status["array"]["members"]] == [
        ("/dev/vda1", 0, "in_sync"),
        ("/dev/vdb1", 1, "in_sync"),
        ("/dev/vdc1", 2, "in_sync"),
    ]
    assert [(e["disk"], e["entry"], e["label"]) for e in status["entries"]] == [
        ("/dev/vda", "0001", "Debian (esp-mirror espvm-A)"),
        ("/dev/vdb", "0002", "Debian (esp-mirror espvm-B)"),
        ("/dev/vdc", "0004", "Debian (esp-mirror espvm-C)"),
    ]
    assert mirror.boot_order == ["0001", "0002", "0004", "0000", "0003"]
    assert records.load(str(mirror.sysroot)) == dataclasses.replace(mirror.record, members=3)


def test_add_fills_in_the_member_count_an_older_record_lacks(mirror):
    """A record written before esp-mirror counted members says nothing; add says 3 after it."""
    mirror.record = dataclasses.replace(mirror.record, members=None)
    (mirror.sysroot / records.PATH).write_text(mirror.record.render())
    mirror.add_new_disk("vdc")

    [add, _] = json.loads(mirror.cli("add", "--disk", "/dev/vdc", "--dry-run", "--json").out)["plan"]

    [write] = [s for s in add["steps"] if s["kind"] == "write-file"]
    assert yaml.safe_load(write["content"])["members"] == 3


def test_replace_keeps_the_record_as_it_is(mirror):
    mirror.add_new_disk("vdc")

    report = json.loads(mirror.cli("replace", "--old", "/dev/vdb", "--new", "/dev/vdc", "--dry-run", "--json").out)

    assert not [s for g in report["plan"] for s in g["steps"] if s["kind"] == "write-file"]


# -- replace ------------------------------------------------------------------------------------


def test_replace_missing_partitions_the_new_disk_adds_it_and_moves_the_boot_entry(mirror):
    """As tests/vm/test_upkeep.py: B died; the new disk (serial espvm-C) came up as /dev/vdb."""
    mirror.lose_disk("vdb")
    mirror.add_new_disk("vdb", serial="espvm-C")

    outcome = mirror.cli("replace", "--old", "missing", "--new", "/dev/vdb", "--dry-run", "--json")

    assert outcome.code == 0, outcome.err
    report = json.loads(outcome.out)
    replace, entries = report["plan"]
    assert replace["name"] == "replace"
    assert commands(replace) == [
        ("sgdisk", "--zap-all", "/dev/vdb"),  # no table on it: only what a killed sgdisk may have left
        partition("/dev/vdb", C),  # a fresh GUID: the new disk's, not B's
        ("wipefs", "--all", "/dev/vdb1"),
        ("mdadm", "/dev/md/esp", "--add", "/dev/vdb1"),
    ]  # no --grow
    assert replace["steps"][-1] == wait_for_recovery("/dev/vdb1")
    assert (report["partition_guid"], report["old"]) == (C, "missing")
    assert commands(entries) == [
        ("efibootmgr", "--quiet", "--bootnum", "0002", "--delete-bootnum"),  # B's
        efibootmgr_create("0004", "/dev/vdb", "espvm-C"),
        ("efibootmgr", "--quiet", "--bootorder", "0001,0004,0000,0003"),
    ]
    assert bootorder_after(("0001", "0002", "0000", "0003"), commands(entries))[:2] == ("0001", "0004")
    assert_upkeep_only_read(outcome.calls)


def test_replace_of_a_present_member_takes_it_out_first(mirror):
    mirror.add_new_disk("vdc")

    report = json.loads(mirror.cli("replace", "--old", "/dev/vdb", "--new", "/dev/vdc", "--dry-run", "--json").out)

    replace, entries = report["plan"]
    assert commands(replace) == [
        ("mdadm", "/dev/md/esp", "--fail", "/dev/vdb1", "--remove", "/dev/vdb1"),
        ("mdadm", "--zero-superblock", "/dev/vdb1"),
        ("sgdisk", "--zap-all", "/dev/vdc"),
        partition("/dev/vdc", C),
        ("wipefs", "--all", "/dev/vdc1"),
        ("mdadm", "/dev/md/esp", "--add", "/dev/vdc1"),
    ]
    assert report["old"] == "/dev/vdb1"
    assert commands(entries) == [
        ("efibootmgr", "--quiet", "--bootnum", "0002", "--delete-bootnum"),
        efibootmgr_create("0004", "/dev/vdc", "espvm-C"),
        ("efibootmgr", "--quiet", "--bootorder", "0001,0004,0000,0003"),
    ]


def test_zeroing_the_old_members_superblock_is_best_effort(mirror, monkeypatch):
    mirror.add_new_disk("vdc")
    mirror.accept_changes()
    fast_applier(mirror, monkeypatch)
    mirror.fail(
        ("mdadm", "--zero-superblock", "/dev/vdb1"), 1, "mdadm: Couldn't open /dev/vdb1 for write - not zeroing\n"
    )

    outcome = mirror.cli("replace", "--old", "/dev/vdb", "--new", "/dev/vdc", "--yes")

    assert (outcome.code, outcome.err) == (0, "")
    assert (
        "  [replace]   not needed or failed (cleanup goes on): "
        "stderr: mdadm: Couldn't open /dev/vdb1 for write - not zeroing\n"
    ) in outcome.out
    assert ("mdadm", "/dev/md/esp", "--add", "/dev/vdc1") in outcome.calls
    assert [(n, mirror.md_attr(f"dev-{n[5:]}/state")) for n in mirror.member_nodes()] == [
        ("/dev/vda1", "in_sync"),
        ("/dev/vdc1", "in_sync"),
    ]


def test_member_steps_mark_only_the_old_superblock_wipe_as_cleanup(mirror):
    mirror.add_new_disk("vdc")
    state = read_mirror(mirror.runner, mirror.record, mirror.host)
    [disk] = describe_disks(("/dev/vdc",), mirror.runner, mirror.host, read_mounts(mirror.host), "md127")

    member = upkeep.new_member(disk, state.array, state.record, 512, False, command="replace")
    steps = upkeep.member_steps(state, member, old=state.array.member("/dev/vdb"), grow=False)

    assert [s.argv for s in steps if isinstance(s, Command) and s.cleanup] == [
        ("mdadm", "--zero-superblock", "/dev/vdb1")
    ]
    assert (member.node, member.guid, member.exists) == ("/dev/vdc1", C, False)


def test_replace_without_efi_variables_leaves_a_note_instead_of_entries(mirror):
    mirror.add_new_disk("vdc")
    for var in (mirror.sysroot / "sys/firmware/efi/efivars").iterdir():
        var.unlink()

    report = json.loads(mirror.cli("replace", "--old", "/dev/vdb", "--new", "/dev/vdc", "--dry-run", "--json").out)

    assert report["plan"][1] == {
        "name": "entries",
        "steps": [],
        "notes": ["no EFI variables: run `esp-mirror entries` on the booted system"],
    }


# -- refusals -----------------------------------------------------------------------------------


def other_array_member(m) -> None:
    disk = m.add_new_disk("vdc", pttype="gpt")
    m.add_partition(
        disk,
        1,
        2048,
        1_048_576,
        type_guid=LINUX_TYPE,
        probe={"UUID": "1f2e3d4c-5b6a-7980-a1b2-c3d4e5f60718", "TYPE": "linux_raid_member"},
    )


REFUSALS = {
    "replacement-is-a-member": (
        lambda m: None,
        ("replace", "--old", "/dev/vdb", "--new", "/dev/vda"),
        "/dev/vda is already a member of /dev/md/esp: give a disk that is not in the mirror",
    ),
    "other-sector-size": (
        lambda m: m.add_new_disk("vdc", sector=4096),
        ("add", "--disk", "/dev/vdc"),
        "/dev/vdc has 4096-byte sectors, the members 512: a RAID1 ESP needs one sector size; use a matching disk",
    ),
    "too-small": (
        lambda m: m.add_new_disk("vdc", size=256 * MIB),
        ("add", "--disk", "/dev/vdc"),
        "/dev/vdc (256 MiB) is too small for the 512 MiB ESP: use a larger disk",
    ),
    "existing-table": (
        lambda m: m.add_partition(m.add_new_disk("vdc", pttype="gpt"), 1, 2048, 100_000, type_guid=LINUX_TYPE),
        ("replace", "--old", "/dev/vdb", "--new", "/dev/vdc"),
        "disk /dev/vdc has no ESP partition and no room for one of 512 MiB at 1 MiB (sectors 2048-1050623 are "
        "vdc1's): give it an EF00 partition of that size there (sgdisk --new=1:2048:+512M --typecode=1:EF00 "
        "/dev/vdc), or pass --wipe to erase the whole disk",
    ),
    "member-of-another-array": (
        other_array_member,
        ("add", "--disk", "/dev/vdc"),
        "disk /dev/vdc has no ESP partition and no room for one of 512 MiB at 1 MiB (sectors 2048-1050623 are "
        "vdc1's): give it an EF00 partition of that size there (sgdisk --new=1:2048:+512M --typecode=1:EF00 "
        "/dev/vdc), or pass --wipe to erase the whole disk",
    ),
    "new-disk-missing": (
        lambda m: None,
        ("add", "--disk", "/dev/vdz"),
        "disk /dev/vdz does not exist: check the path (lsblk lists disks)",
    ),
    "new-disk-is-a-partition": (
        lambda m: m.add_partition(m.add_new_disk("vdc"), 1, 2048, 100_000),
        ("add", "--disk", "/dev/vdc1"),
        "/dev/vdc1 is a partition, not a whole disk: pass the disk it is on (esp-mirror "
        "creates the ESP partition itself)",
    ),
    "missing-on-a-whole-array": (
        lambda m: m.add_new_disk("vdc"),
        ("replace", "--old", "missing", "--new", "/dev/vdc"),
        "no member of /dev/md/esp is missing: name the disk to replace with --old DISK",
    ),
    "old-is-not-a-member": (
        lambda m: m.add_new_disk("vdc"),
        ("replace", "--old", "/dev/sda", "--new", "/dev/vdc"),
        "/dev/sda is not a member of /dev/md/esp: members are /dev/vda, /dev/vdb; use --old "
        "missing for a disk that is gone",
    ),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_refuses_an_unfit_new_disk_or_old_member(mirror, case):
    prepare, argv, message = REFUSALS[case]
    prepare(mirror)

    outcome = mirror.cli(*argv, "--yes")

    assert (outcome.code, outcome.error) == (2, message)
    assert outcome.out == ""
    assert_upkeep_only_read(outcome.calls)


def test_add_refuses_a_ninth_member(mirror_of):
    mirror = mirror_of(*(f"vd{c}" for c in "abcdefgh"))
    mirror.add_new_disk("vdi")

    outcome = mirror.cli("add", "--disk", "/dev/vdi", "--yes")

    assert (outcome.code, outcome.error) == (
        2,
        "/dev/md/esp already has 8 members, the most esp-mirror mirrors: replace one instead "
        "(`esp-mirror replace --old DISK --new DISK`)",
    )
    assert outcome.calls == [
        ("mdadm", "--detail", "--export", "/dev/md/esp"),
        *(("blkid", "-p", "-o", "export", f"/dev/vd{c}1") for c in "abcdefgh"),
        ("efibootmgr", "-v"),
    ]


def test_replace_is_allowed_on_a_full_array(mirror_of):
    mirror = mirror_of(*(f"vd{c}" for c in "abcdefgh"))
    mirror.add_new_disk("vdi")
    outcome = mirror.cli("replace", "--old", "/dev/vdh", "--new", "/dev/vdi", "--dry-run")
    assert (outcome.code, outcome.err) == (0, "")


def test_replace_or_add_without_a_setup_is_refused(machine, monkeypatch):
    isolate_upkeep(machine, monkeypatch)
    machine.add_disk("vdc", size=GIB)
    outcome = machine.cli("add", "--disk", "/dev/vdc", "--yes")
    assert (outcome.code, outcome.error) == (
        2,
        "no esp-mirror setup here (/etc/esp-mirror/esp-mirror.yaml is missing): run `esp-mirror apply` (new disks) "
        "or `esp-mirror adopt` (a running system's ESP) first",
    )
    assert outcome.calls == []


def test_adding_a_disk_that_is_a_member_already_changes_no_disk_and_keeps_its_entry(mirror):
    """What a re-run of `add` finds after a kill during the boot entries: the disk is in, in sync."""
    mirror.accept_changes()
    outcome = mirror.cli("add", "--disk", "/dev/vda", "--yes")
    assert (outcome.code, outcome.err) == (0, "")
    assert "/dev/vda is an in-sync member already (an earlier add?): only the boot entries follow" in outcome.out
    assert not [c for c in upkeep_changes(outcome.calls) if c[0] in ("sgdisk", "wipefs", "mdadm")]
    status = json.loads(mirror.cli("status", "--json").out)
    assert status["exit_code"] == 0


# -- replace --copy-table: the ESP beside an md root on the same disks ---------------------------

ROOT = {"TYPE": "linux_raid_member", "UUID": "11111111-2222-3333-4444-555555555555", "LABEL": "any:root"}


def _root_beside(mirror, *names: str, degraded: int = 1) -> None:
    """Partition 2 of each disk NAME (after the ESP) is a member of the md root md126."""
    for name in names:
        mirror.add_partition(
            mirror.disks[f"/dev/{name}"], 2, 1050624, 1000000, type_guid=RAID_TYPE, probe=ROOT, holders=("md126",)
        )
    md = mirror.sysroot / "sys/block/md126/md"
    md.mkdir(parents=True)
    (md / "degraded").write_text(f"{degraded}\n")


RAID_TYPE = "A19D880F-05FC-4D3B-A006-743F0F84911E"


def test_replace_with_copy_table_gives_the_new_disk_the_survivors_table_then_prints_the_roots_add(mirror):
    """B died: its ESP member and its root member are gone. The new disk gets A's table with new
    GUIDs (partition 1 the one made from its identity), its partition 1 joins the ESP's array, and
    the root's line is printed for after the recovery."""
    mirror.lose_disk("vdb")
    _root_beside(mirror, "vda")
    mirror.add_new_disk("vdc", size=2 * GIB)

    outcome = mirror.cli("replace", "--old", "missing", "--new", "/dev/vdc", "--copy-table", "--dry-run", "--json")

    assert outcome.code == 0, outcome.err
    report = json.loads(outcome.out)
    replace, _ = report["plan"]
    disk_guid, guids = naming.table_guids(serial_of_disk(mirror, "vdc"), [1, 2], 1)
    assert commands(replace) == [
        ("sgdisk", "--replicate=/dev/vdc", "/dev/vda"),
        (
            "sgdisk",
            f"--disk-guid={disk_guid}",
            f"--partition-guid=1:{guids[1]}",
            f"--partition-guid=2:{guids[2]}",
            "/dev/vdc",
        ),
        ("wipefs", "--all", "/dev/vdc1"),
        ("mdadm", "/dev/md/esp", "--add", "/dev/vdc1"),
    ]
    assert guids[1] == C  # the ESP's GUID is the one a plain replace gives this disk: a run again finds it
    assert report["other_arrays"] == [
        {
            "device": "/dev/md126",
            "name": "any:root",
            "node": "/dev/vdc2",
            "commands": [["mdadm", "/dev/md126", "--add", "/dev/vdc2"]],
        }
    ]
    assert "then, for the other arrays on the disks: mdadm /dev/md126 --add /dev/vdc2" in replace["notes"]
    assert_upkeep_only_read(outcome.calls)


def test_replace_with_copy_table_and_add_others_runs_the_roots_add_after_the_esps_recovery(mirror):
    mirror.lose_disk("vdb")
    _root_beside(mirror, "vda")
    mirror.add_new_disk("vdc", size=2 * GIB)
    report = json.loads(
        mirror.cli(
            "replace", "--old", "missing", "--new", "/dev/vdc", "--copy-table", "--add-others", "--dry-run", "--json"
        ).out
    )
    replace, _ = report["plan"]
    kinds = [s["kind"] if s["kind"] != "command" else " ".join(s["argv"][:3]) for s in replace["steps"]]
    assert kinds.index("wait-for-sync") < kinds.index("mdadm /dev/md126 --add")


def test_replace_with_copy_table_takes_a_disk_the_size_of_the_survivor_whose_last_partition_runs_to_its_end(
    mirror,
):
    """The usual replacement: a disk of the same model. The survivor's root partition runs to its
    last usable sector (what an installer's "the rest of the disk" makes): the copy fits exactly,
    with the backup GPT's 33 sectors after it (a VM test found the bound 135 KiB too tight)."""
    mirror.lose_disk("vdb")
    survivor = mirror.disks["/dev/vda"]
    last = survivor.size // 512 - 34  # the last usable sector of a 512-byte-sector GPT disk
    mirror.add_partition(survivor, 2, 1050624, last - 1050624 + 1, type_guid=RAID_TYPE, probe=ROOT, holders=("md126",))
    (mirror.sysroot / "sys/block/md126/md").mkdir(parents=True)
    (mirror.sysroot / "sys/block/md126/md/degraded").write_text("1\n")
    mirror.add_new_disk("vdc", size=survivor.size)
    outcome = mirror.cli("replace", "--old", "missing", "--new", "/dev/vdc", "--copy-table", "--dry-run", "--json")
    assert outcome.code == 0, outcome.error
    smaller = mirror.add_new_disk("vdd", size=survivor.size - 512)
    outcome = mirror.cli("replace", "--old", "missing", "--new", smaller.path, "--copy-table", "--yes")
    need = (last + 1) * 512 + 128 * 128 + 512
    assert (outcome.code, outcome.error) == (
        2,
        f"/dev/vdd ({size_text(survivor.size - 512)}) is smaller than /dev/vda's partitions need ({size_text(need)}, "
        "512 bytes more than it has): use a disk at least as large",
    )


def test_replace_with_copy_table_refuses_a_disk_that_is_not_blank_or_too_small(mirror):
    mirror.lose_disk("vdb")
    _root_beside(mirror, "vda")
    mirror.add_new_disk("vdc", size=768 * MIB)  # A's partitions end past 1000 MiB
    outcome = mirror.cli("replace", "--old", "missing", "--new", "/dev/vdc", "--copy-table", "--yes")
    assert (outcome.code, outcome.error) == (
        2,
        "/dev/vdc (768 MiB) is smaller than /dev/vda's partitions need (1001.2 MiB, 233.2 MiB more than it has): "
        "use a disk at least as large",
    )
    mirror.disks.pop("/dev/vdc")
    other = mirror.add_new_disk("vdd", size=2 * GIB)
    mirror.add_partition(other, 3, 2048, 100000, type_guid=LINUX_TYPE)
    outcome = mirror.cli("replace", "--old", "missing", "--new", "/dev/vdd", "--copy-table", "--yes")
    assert outcome.code == 2 and outcome.error.startswith("disk /dev/vdd is not blank (vdd3 ("), outcome.error
    assert_upkeep_only_read(outcome.calls)


def test_a_run_again_after_the_table_was_copied_does_not_copy_it_again(mirror):
    mirror.lose_disk("vdb")
    _root_beside(mirror, "vda")
    new = mirror.add_new_disk("vdc", size=2 * GIB)
    _, guids = naming.table_guids(serial_of_disk(mirror, "vdc"), [1, 2], 1)
    for part in mirror.disks["/dev/vda"].partitions:  # what the killed run's sgdisk left
        mirror.add_partition(new, part.number, part.start, part.size, type_guid=part.type_guid, uuid=guids[part.number])
    report = json.loads(
        mirror.cli("replace", "--old", "missing", "--new", "/dev/vdc", "--copy-table", "--dry-run", "--json").out
    )
    assert commands(report["plan"][0]) == [
        ("wipefs", "--all", "/dev/vdc1"),
        ("mdadm", "/dev/md/esp", "--add", "/dev/vdc1"),
    ]


def serial_of_disk(mirror, name: str) -> str:
    from esp_mirror_plugin.system.discovery import describe_disks, read_mounts

    [facts] = describe_disks((f"/dev/{name}",), mirror.runner, mirror.host, read_mounts(mirror.host))
    return facts.identity
