"""The disks a server really has: the ESP beside the root on the same disks (issue 25).

An installer partitioned both disks before esp-mirror runs at chroot time: an empty ESP partition
1 and an md RAID1 root on partition 2 (taken: no table is written), or only the root on partition
2 with free space at 1 MiB (partition 1 added: one entry of the table). A ZFS pool's partition
stands in for any data esp-mirror cannot read. The plan touches no other partition and says so;
``--wipe`` lists what it destroys and refuses while any of it is in use; re-runs change nothing.
"""

from __future__ import annotations

import json

import pytest
from conftest import ESP_TYPE, GIB, MIB, Machine, assert_only_read, json_commands, plan_of, starting
from test_idempotency import changing, finish

RAID_TYPE = "A19D880F-05FC-4D3B-A006-743F0F84911E"
ZFS_TYPE = "6A898CC3-1DD2-11B2-99A6-080020736631"
ESP_SECTORS = 512 * MIB // 512
ROOT_START = 2048 + ESP_SECTORS
ROOT_PROBE = {"TYPE": "linux_raid_member", "UUID": "11111111-2222-3333-4444-555555555555", "LABEL": "any:root"}


def _root_member(m: Machine, path: str, *, in_use: bool = True) -> None:
    m.add_partition(
        m.disks[path],
        2,
        ROOT_START,
        10 * GIB // 512,
        type_guid=RAID_TYPE,
        name="root",
        probe=ROOT_PROBE,
        holders=("md0",) if in_use else (),
    )


def installer_partitioned(m: Machine, *, esp: bool) -> None:
    """What an installer leaves at chroot time: partition 2 of each disk in the md root, mounted as
    the target; partition 1 an empty ESP (``esp``), or free space at 1 MiB."""
    for path in ("/dev/sda", "/dev/sdb"):
        if esp:
            m.add_partition(m.disks[path], 1, 2048, ESP_SECTORS, type_guid=ESP_TYPE, name="EFI system partition")
        _root_member(m, path)
    m.mount("9:0", str(m.target), "ext4", "/dev/md0")


def _commands(plan: dict) -> list[tuple[str, ...]]:
    return json_commands(plan)


def _notes(plan: dict, group: str = "pre_partition") -> list[str]:
    return next(g for g in plan["groups"] if g["name"] == group)["notes"]


@pytest.mark.parametrize("esp", [True, False], ids=["empty-esp-partitions", "free-space-at-1-mib"])
def test_at_chroot_time_apply_takes_the_installers_partitions_and_touches_no_other(two_disks, esp):
    installer_partitioned(two_disks, esp=esp)
    outcome = two_disks.cli("plan", "--json", *two_disks.args())
    assert outcome.code == 0, outcome.err
    assert_only_read(outcome.calls)
    plan = json.loads(outcome.out)
    commands = _commands(plan)
    # nothing names the root's partitions, nothing erases or rewrites a whole table
    assert [c for c in commands if {"/dev/sda2", "/dev/sdb2"} & set(c)] == []
    assert starting(commands, "sgdisk", "--zap-all") == [] and starting(commands, "wipefs", "--all", "/dev/sda") == []
    sgdisk = starting(commands, "sgdisk")
    if esp:  # the empty ESP partitions are taken as they are: no table is written at all
        assert sgdisk == []
        taken = [two_disks.disks[d].partitions[0].uuid.lower() for d in ("/dev/sda", "/dev/sdb")]
        assert [m["partition_guid"] for m in plan["members"]] == taken
    else:  # partition 1 is added to each table: sgdisk on that entry only
        assert [c[:2] for c in sgdisk] == [("sgdisk", "--new=1:2048:1050623")] * 2
    assert starting(commands, "wipefs") == [("wipefs", "--all", "/dev/sda1", "/dev/sdb1")]
    notes = _notes(plan)
    assert len(notes) == 2 and all("left exactly as they are: " in n for n in notes), notes
    assert "sda2 (10 GiB, Linux RAID (FD00), an md RAID member 'any:root', in use by md0)" in notes[0], notes


def test_a_zfs_pools_partition_is_left_as_it_is_and_partition_1_is_added(two_disks):
    for path in ("/dev/sda", "/dev/sdb"):
        two_disks.add_partition(two_disks.disks[path], 2, ROOT_START, 10 * GIB // 512, type_guid=ZFS_TYPE, name="zfs")
    plan = plan_of(two_disks)
    commands = _commands(plan)
    assert [c for c in commands if {"/dev/sda2", "/dev/sdb2"} & set(c)] == []
    assert [c[:2] for c in starting(commands, "sgdisk")] == [("sgdisk", "--new=1:2048:1050623")] * 2
    assert "sdb2 (10 GiB, ZFS (BF00), no file system blkid knows)" in _notes(plan)[1]


def test_wipe_lists_every_partition_it_destroys(two_disks):
    for path in ("/dev/sda", "/dev/sdb"):
        _root_member(two_disks, path, in_use=False)
    plan = plan_of(two_disks, "--wipe")
    notes = _notes(plan)
    assert notes == [
        "--wipe erases all of /dev/sda: sda2 (10 GiB, Linux RAID (FD00), an md RAID member 'any:root')",
        "--wipe erases all of /dev/sdb: sdb2 (10 GiB, Linux RAID (FD00), an md RAID member 'any:root')",
    ]
    assert starting(_commands(plan), "sgdisk", "--zap-all") == [
        ("sgdisk", "--zap-all", "/dev/sda"),
        ("sgdisk", "--zap-all", "/dev/sdb"),
    ]


def test_apply_after_apply_on_disks_whose_other_partitions_are_in_use_changes_nothing(two_disks):
    installer_partitioned(two_disks, esp=False)
    first = plan_of(two_disks)
    # what the first apply left: its partition 1 with the array's members beside the root
    for disk in two_disks.disks.values():
        disk.partitions = [p for p in disk.partitions if p.number != 1]
    finish(two_disks, first, holders=("md127",))
    assert changing(plan_of(two_disks)) == []


def test_apply_after_adopt_changes_nothing(two_disks):
    """adopt keeps the live ESP where it was (Debian's installer named it, not esp-mirror), makes
    partition 1 on the other disk; the root's members on partition 2 of both are in use."""
    first = plan_of(two_disks)
    first["members"][0]["partition_guid"] = "0d1f0e2c-55aa-4b11-9c2d-3e4f5a6b7c8d"  # the live ESP's, kept
    finish(two_disks, first, holders=("md127",))
    adopted = two_disks.disks["/dev/sda"].partitions[0]
    adopted.name = "EFI System Partition"
    for path in ("/dev/sda", "/dev/sdb"):
        _root_member(two_disks, path)
    two_disks.set_root("9:0", "/dev/md0")
    again = plan_of(two_disks)
    assert [m["exists"] for m in again["members"]] == [True, True]
    assert again["members"][0]["partition_guid"] == adopted.uuid.lower()
    assert changing(again) == []


def test_adopt_after_apply_has_nothing_to_do(two_disks):
    first = plan_of(two_disks)
    finish(two_disks, first, holders=("md127",))
    (two_disks.target / "etc/esp-mirror").mkdir(parents=True, exist_ok=True)
    (two_disks.target / "etc/esp-mirror/esp-mirror.yaml").write_text("profile: debian\n")
    outcome = two_disks.cli("adopt", "--yes", *two_disks.args())
    assert outcome.code == 0, outcome.err
    assert "esp-mirror adopt: nothing to adopt: esp-mirror set this system up already" in outcome.out
