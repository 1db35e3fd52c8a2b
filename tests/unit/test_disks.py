"""Disks: partition node names, /dev/disk/by-id links, derived identifiers, FAT32 sizes, and what
discovery reads from the real tools' output (data/captured, from util-linux 2.38.1)."""

from __future__ import annotations

import json
import re

import pytest
from conftest import DATA, ESP_TYPE, MIB, Machine, assert_only_read, json_commands, starting

from esp_mirror_plugin.pipeline import fat, naming
from esp_mirror_plugin.pipeline.profiles import load_profile
from esp_mirror_plugin.pipeline.request import Request
from esp_mirror_plugin.pipeline.steps import Var
from esp_mirror_plugin.system.discovery import Partition, discover

CAPTURED = DATA / "captured"


@pytest.mark.parametrize(
    ("disk", "node"),
    [
        ("/dev/sda", "/dev/sda1"),
        ("/dev/vdb", "/dev/vdb1"),
        ("/dev/nvme0n1", "/dev/nvme0n1p1"),
        ("/dev/mmcblk0", "/dev/mmcblk0p1"),
        ("/dev/loop0", "/dev/loop0p1"),
        ("/dev/md126", "/dev/md126p1"),
    ],
)
def test_partition_node_appends_p_after_a_trailing_digit(disk, node):
    assert naming.partition_node(disk, 1) == node


def test_partition_node_of_a_loop_variable_is_resolved_at_apply_time():
    node = naming.partition_node(Var("LOOP_2"), 1)
    assert node == Var("LOOP_2", "p1") and node.render() == '"${LOOP_2}p1"'


@pytest.mark.parametrize(
    ("name", "serial"), [("nvme0n1", "S6B0NL0T000001"), ("sda", "WD-WCC4N0AAAAAA"), ("mmcblk0", "0x1a2b3c4d")]
)
def test_by_id_links_are_resolved_to_the_kernel_node_before_naming_partitions(machine, name, serial):
    first = machine.add_disk(name, serial=serial)
    machine.add_disk("sdz", serial="OTHER")
    link = f"/dev/disk/by-id/disk-{serial}"
    machine.link(link, first.path)
    assert machine.host.realpath(link) == first.path
    outcome = machine.cli("plan", "--json", *machine.args(link, "/dev/sdz"), "--no-nvram")
    assert outcome.code == 0, outcome.err
    plan = json.loads(outcome.out)
    [create] = starting(json_commands(plan), "mdadm", "--create")
    assert create[-2:] == (first.node(1), "/dev/sdz1")
    assert starting(json_commands(plan), "sgdisk")[0][-1] == first.path


def test_identifiers_are_derived_from_identities_and_differ_per_disk():
    a, b = naming.partition_guid("serial:A"), naming.partition_guid("serial:B")
    assert a == naming.partition_guid("serial:A") and a != b
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", a)
    array = naming.array_uuid(["serial:B", "serial:A"], "esp")
    assert array == naming.array_uuid(["serial:A", "serial:B"], "esp") != naming.array_uuid(["serial:A"], "esp")
    assert re.fullmatch(r"[0-9a-f]{8}(:[0-9a-f]{8}){3}", naming.mdadm_uuid(array))
    assert naming.mdadm_uuid("3A8D2F6E-1C4B-5D7E-9F0A-1B2C3D4E5F60") == "3a8d2f6e:1c4b5d7e:9f0a1b2c:3d4e5f60"
    assert naming.mdadm_uuid("3a8d2f6e:1c4b5d7e:9f0a1b2c:3d4e5f60") == "3a8d2f6e:1c4b5d7e:9f0a1b2c:3d4e5f60"
    volume = naming.volume_id(array)
    assert re.fullmatch(r"[0-9A-F]{8}", volume)
    assert naming.fstab_uuid(volume) == f"{volume[:4]}-{volume[4:]}"


def test_a_disk_without_serial_is_named_by_its_path_in_entry_labels(two_disks):
    two_disks.add_disk("vdc")
    two_disks.add_disk("vdd")
    outcome = two_disks.cli("plan", *two_disks.args("/dev/vdc", "/dev/vdd"))
    assert outcome.code == 0, outcome.err
    assert "--label 'Debian (esp-mirror vdc)'" in outcome.out and "--label 'Debian (esp-mirror vdd)'" in outcome.out


@pytest.mark.parametrize(("sector", "minimum_mib"), [(512, 34), (4096, 258)])
def test_smallest_fat32_esp_per_sector_size(sector, minimum_mib):
    # 65541 clusters of one sector after the md superblock (1 MiB), 32 reserved sectors and two FATs
    assert fat.minimum_size(sector) == minimum_mib * MIB
    assert fat.sectors_per_cluster(minimum_mib * MIB, sector) == 1
    assert fat.sectors_per_cluster((minimum_mib - 1) * MIB, sector) is None


# -- discovery on real tool output -------------------------------------------------------------


def discovered(machine: Machine, *disks: str):
    request = Request(disks=disks, target=str(machine.target), arch="x86_64").resolve(load_profile("debian"))
    return discover(request.disks, request.device, machine.runner, machine.host)


@pytest.mark.parametrize(
    ("capture", "sector", "start", "size"),
    [("sfdisk-json-gpt-esp-512.json", 512, 2048, 1048576), ("sfdisk-json-gpt-esp-4096.json", 4096, 256, 131072)],
)
def test_discovery_reads_an_esp_partition_from_sfdisk_json(machine, capture, sector, start, size):
    machine.add_disk("sda", sector=sector)
    machine.runner.script(("sfdisk", "--json", "/dev/sda"), (CAPTURED / capture).read_text())
    machine.runner.script(("blkid", "-p", "-o", "export", "/dev/sda"), (CAPTURED / "blkid-p-gpt-disk.txt").read_text())
    machine.runner.script(
        ("blkid", "-p", "-o", "export", "-O", str(start * sector), "-S", str(size * sector), "/dev/sda"), returncode=2
    )
    [disk] = discovered(machine, "/dev/sda").disks
    assert (disk.kind, disk.pttype, disk.signatures, disk.sector_size) == ("block", "gpt", ("gpt",), sector)
    assert disk.partitions == (
        Partition(
            number=1,
            start=start,
            size=size,
            type_guid=ESP_TYPE,
            guid="0b5e3c2a-1111-5222-8333-444455556666",
            name="esp-mirror",
        ),
    )


def test_discovery_reads_a_dos_table_and_its_signature(machine):
    machine.add_disk("sdb", size=4 * 1024 * MIB)
    machine.runner.script(("sfdisk", "--json", "/dev/sdb"), (CAPTURED / "sfdisk-json-dos.json").read_text())
    machine.runner.script(("blkid", "-p", "-o", "export", "/dev/sdb"), (CAPTURED / "blkid-p-dos-disk.txt").read_text())
    for start, size in ((2048, 2097152), (2099200, 6289408)):
        machine.runner.script(
            ("blkid", "-p", "-o", "export", "-O", str(start * 512), "-S", str(size * 512), "/dev/sdb"), returncode=2
        )
    [disk] = discovered(machine, "/dev/sdb").disks
    assert (disk.pttype, disk.signatures) == ("dos", ("dos",))
    assert [(p.number, p.start, p.size, p.type_guid, p.guid) for p in disk.partitions] == [
        (1, 2048, 2097152, "83", ""),
        (2, 2099200, 6289408, "83", ""),
    ]


def test_discovery_of_a_blank_disk_does_not_ask_sfdisk_for_a_table_blkid_did_not_find(machine):
    """blkid -p finds nothing on a blank disk (exit code 2, no output); sfdisk could only say
    "does not contain a recognized partition table" (captured), so it is not run."""
    machine.add_disk("sdc")
    machine.runner.script(("blkid", "-p", "-o", "export", "/dev/sdc"), returncode=2)
    machine.runner.script(
        ("sfdisk", "--json", "/dev/sdc"), returncode=1, stderr=(CAPTURED / "sfdisk-json-blank.stderr").read_text()
    )
    [disk] = discovered(machine, "/dev/sdc").disks
    assert (disk.pttype, disk.signatures, disk.partitions) == ("", (), ())
    assert machine.runner.calls == [("blkid", "-p", "-o", "export", "/dev/sdc")]


def test_discovery_of_a_whole_disk_signature_without_a_table_does_not_ask_sfdisk(machine):
    machine.add_disk(
        "sdb",
        whole={
            "UUID": "dU3ZgS-hYcE-Y1bX-2Ghb-3kpN-YjL3-6aKbZq",
            "VERSION": "LVM2 001",
            "TYPE": "LVM2_member",
            "USAGE": "raid",
        },
    )
    [disk] = discovered(machine, "/dev/sdb").disks
    assert (disk.pttype, disk.signatures, disk.partitions) == ("", ("LVM2_member",), ())
    assert machine.runner.calls == [("blkid", "-p", "-o", "export", "/dev/sdb")]


def test_the_fake_machine_answers_blkid_like_util_linux(machine):
    """conftest.Machine: a disk with a GPT reports PTUUID and PTTYPE (as in blkid-p-gpt-disk.txt), a
    blank disk nothing at all (exit code 2), a DOS table its 8-digit id."""
    gpt = machine.add_disk("sda", pttype="gpt")
    machine.add_disk("sdb")
    dos = machine.add_disk("sdc", pttype="dos")
    answer = {
        d: machine.runner.run(("blkid", "-p", "-o", "export", d), ok=(0, 2))
        for d in ("/dev/sda", "/dev/sdb", "/dev/sdc")
    }
    captured = (CAPTURED / "blkid-p-gpt-disk.txt").read_text()
    assert answer["/dev/sda"].returncode == 0
    assert [line.split("=")[0] for line in answer["/dev/sda"].stdout.splitlines()] == [
        line.split("=")[0] for line in captured.splitlines()
    ]
    assert answer["/dev/sda"].stdout == f"DEVNAME=/dev/sda\nPTUUID={gpt.ptuuid}\nPTTYPE=gpt\n"
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", gpt.ptuuid)
    assert (answer["/dev/sdb"].returncode, answer["/dev/sdb"].stdout) == (2, "")
    assert answer["/dev/sdc"].stdout == f"DEVNAME=/dev/sdc\nPTUUID={dos.ptuuid}\nPTTYPE=dos\n"
    assert re.fullmatch(r"[0-9a-f]{8}", dos.ptuuid)
    sfdisk = json.loads(machine.runner.run(("sfdisk", "--json", "/dev/sda")).stdout)["partitiontable"]
    assert (sfdisk["label"], sfdisk["id"]) == ("gpt", gpt.ptuuid.upper())


def test_discovery_reads_the_inner_fat_of_an_md_member_from_blkid(machine):
    """blkid -p sees the md 1.0 superblock; -u filesystem finds the FAT at offset 0 (captured vfat probe)."""
    disk = machine.add_disk("sda")
    vfat = dict(line.split("=", 1) for line in (CAPTURED / "blkid-p-vfat.txt").read_text().splitlines())
    vfat.pop("DEVNAME")
    machine.add_partition(
        disk,
        1,
        2048,
        1048576,
        type_guid=ESP_TYPE,
        name="esp-mirror",
        probe={
            "UUID": "3a8d2f6e-1c4b-5d7e-9f0a-1b2c3d4e5f60",
            "LABEL": "any:esp",
            "VERSION": "1.0",
            "TYPE": "linux_raid_member",
            "USAGE": "raid",
        },
        inner=vfat,
    )
    [facts] = discovered(machine, "/dev/sda").disks
    part = facts.partition(1)
    assert (part.fstype, part.md_uuid, part.md_name, part.inner_fstype, part.inner_uuid) == (
        "linux_raid_member",
        "3a8d2f6e-1c4b-5d7e-9f0a-1b2c3d4e5f60",
        "any:esp",
        "vfat",
        "1A2B-3C4D",
    )


def test_discovery_only_runs_read_only_probes(two_disks):
    """Every probe discovery makes, on a blank disk (sda) and on a disk with a GPT holding an md member
    (sdb): blkid on the disk, sfdisk only where blkid saw a table, blkid per partition (and inside
    the md member), then efibootmgr."""
    sdb = two_disks.disks["/dev/sdb"]
    two_disks.add_partition(
        sdb,
        1,
        2048,
        1048576,
        type_guid=ESP_TYPE,
        name="esp-mirror",
        probe={
            "UUID": "3a8d2f6e-1c4b-5d7e-9f0a-1b2c3d4e5f60",
            "LABEL": "any:esp",
            "VERSION": "1.0",
            "TYPE": "linux_raid_member",
            "USAGE": "raid",
        },
    )
    discovered(two_disks, "/dev/sda", "/dev/sdb")
    member = ("-o", "export", "-O", str(2048 * 512), "-S", str(1048576 * 512), "/dev/sdb")
    assert two_disks.runner.calls == [
        ("blkid", "-p", "-o", "export", "/dev/sda"),
        ("blkid", "-p", "-o", "export", "/dev/sdb"),
        ("sfdisk", "--json", "/dev/sdb"),
        ("blkid", "-p", *member),
        ("blkid", "-p", "-u", "filesystem", *member),
        ("efibootmgr", "-v"),
    ]
    assert_only_read(two_disks.runner.calls)


def _empty_esps(machine, sectors: int = 614400) -> None:
    for name in ("sda", "sdb"):
        disk = machine.add_disk(name)
        machine.add_partition(disk, 1, 2048, sectors, type_guid=ESP_TYPE, name="EFI system partition")


def test_empty_esp_partitions_of_another_size_are_taken_as_they_are(machine):
    _empty_esps(machine)
    outcome = machine.cli("plan", "--json", *machine.args(), "--no-nvram")
    assert outcome.code == 0, outcome.err
    plan = json.loads(outcome.out)
    assert starting(json_commands(plan), "sgdisk") == []
    notes = next(g for g in plan["groups"] if g["name"] == "notes")["notes"]
    assert "the disks' ESP partitions are 300 MiB at 1 MiB: the mirror uses them" in notes


def test_an_esp_size_given_that_differs_from_the_disks_esp_partitions_is_refused_with_the_size_to_use(machine):
    _empty_esps(machine)
    outcome = machine.cli("plan", *machine.args(), "--no-nvram", "--esp-size", "1G")
    assert (outcome.code, outcome.error) == (
        2,
        "--esp-size 1 GiB differs from the ESP partitions the disks have (sda1 (300 MiB at 1 MiB, no file "
        "system)): re-run with --esp-size 300M (or leave it out), or --wipe to start over",
    )


def test_two_namespaces_of_one_controller_share_a_serial_but_still_get_unique_partition_guids(machine):
    """NVMe namespaces report their controller's serial; their WWIDs tell them apart."""
    machine.add_disk("nvme0n1", serial="S4EWNX0R123456", wwid="eui.0025385b71b0a001")
    machine.add_disk("nvme0n2", serial="S4EWNX0R123456", wwid="eui.0025385b71b0a002")
    outcome = machine.cli("plan", "--json", *machine.args(), "--no-nvram")
    assert outcome.code == 0, outcome.err
    guids = [m["partition_guid"] for m in json.loads(outcome.out)["members"]]
    assert len(set(guids)) == 2
