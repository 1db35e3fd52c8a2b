"""Re-running converges: file edits are idempotent and a plan from a finished state changes nothing."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from conftest import ESP_TYPE, Machine, bootorder_after, json_commands, plan_of, starting

from esp_mirror_plugin.system import files, nvram

BEGIN = "# BEGIN esp-mirror (managed block: esp-mirror rewrites what is between these lines)"
END = "# END esp-mirror"


# -- files ------------------------------------------------------------------------------------


def test_write_atomic_twice_writes_once(tmp_path):
    path = tmp_path / "etc/dracut.conf.d/90-esp-mirror.conf"
    assert files.write_atomic(path, 'mdadmconf="yes"\n') is True
    assert files.write_atomic(path, 'mdadmconf="yes"\n') is False
    assert path.read_text() == 'mdadmconf="yes"\n'
    assert oct(path.stat().st_mode & 0o7777) == oct(0o644)
    assert not path.with_name(path.name + "~").exists()  # nothing was replaced, so no backup
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind


def test_write_atomic_keeps_mode_and_owner_and_one_backup(tmp_path):
    path = tmp_path / "fstab"
    path.write_text("old\n")
    os.chmod(path, 0o640)
    os.chown(path, 1234, 5678)
    assert files.write_atomic(path, "new\n") is True
    st = path.stat()
    assert (path.read_text(), st.st_mode & 0o7777, st.st_uid, st.st_gid) == ("new\n", 0o640, 1234, 5678)
    assert (tmp_path / "fstab~").read_text() == "old\n"
    files.write_atomic(path, "newer\n")
    assert (tmp_path / "fstab~").read_text() == "new\n"  # one backup: the previous content


def test_edit_block_appends_once_and_leaves_the_users_lines_alone(tmp_path):
    path = tmp_path / "mdadm.conf"
    path.write_text("HOMEHOST <system>\nMAILADDR root")  # no newline at the end
    assert files.edit_block(path, "ARRAY /dev/md/esp metadata=1.0 UUID=1:2:3:4 name=any:esp") is True
    expected = (
        f"HOMEHOST <system>\nMAILADDR root\n{BEGIN}\nARRAY /dev/md/esp metadata=1.0 UUID=1:2:3:4 name=any:esp\n{END}\n"
    )
    assert path.read_text() == expected
    assert files.edit_block(path, "ARRAY /dev/md/esp metadata=1.0 UUID=1:2:3:4 name=any:esp") is False
    assert path.read_text() == expected


def test_edit_block_replaces_the_block_in_place_between_the_users_lines(tmp_path):
    path = tmp_path / "fstab"
    path.write_text(
        f"# root\nUUID=a / ext4 defaults 0 1\n{BEGIN}\nold line\n{END}\n# swap, added later\nUUID=b none swap sw 0 0\n"
    )
    assert files.edit_block(path, "UUID=C982-96CB\t/boot/efi\tvfat\tumask=0077\t0\t2\n") is True
    assert path.read_text() == (
        f"# root\nUUID=a / ext4 defaults 0 1\n{BEGIN}\n"
        f"UUID=C982-96CB\t/boot/efi\tvfat\tumask=0077\t0\t2\n{END}\n"
        "# swap, added later\nUUID=b none swap sw 0 0\n"
    )


def test_edit_block_creates_a_missing_file_with_the_given_mode(tmp_path):
    path = tmp_path / "etc/mkinitfs/mkinitfs.conf"
    assert files.edit_block(path, "features=raid", mode=0o600) is True
    assert path.read_text() == f"{BEGIN}\nfeatures=raid\n{END}\n"
    assert path.stat().st_mode & 0o7777 == 0o600


# -- a plan from the state a finished apply leaves ---------------------------------------------


def dashed(mdadm_uuid: str) -> str:
    h = mdadm_uuid.replace(":", "")
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def build_members(machine: Machine, plan: dict, *, inner_fs: bool, holders: tuple[str, ...] = ()) -> None:
    """The ESP partitions as the first apply made them: md 1.0 members, a FAT at offset 0 if made."""
    fs_uuid = plan["filesystem"]["uuid"]
    for member, path in zip(plan["members"], ("/dev/sda", "/dev/sdb"), strict=False):
        disk = machine.disks[path]
        disk.whole = {"PTUUID": "4036c74b-6fbb-4d6d-93eb-340347341541", "PTTYPE": "gpt"}
        machine.add_partition(
            disk,
            1,
            2048,
            1048576,
            type_guid=ESP_TYPE,
            uuid=member["partition_guid"],
            name="esp-mirror",
            probe={
                "UUID": dashed(plan["array"]["uuid"]),
                "UUID_SUB": "9a1b7d64-2b1c-4f0e-8d2a-5c3b1e7f9a00",
                "LABEL": "any:esp",
                "VERSION": "1.0",
                "TYPE": "linux_raid_member",
                "USAGE": "raid",
            },
            inner={
                "LABEL_FATBOOT": "ESP",
                "LABEL": "ESP",
                "UUID": fs_uuid,
                "VERSION": "FAT32",
                "BLOCK_SIZE": "512",
                "TYPE": "vfat",
                "USAGE": "filesystem",
            }
            if inner_fs
            else {},
            holders=holders,
        )


def finish(machine: Machine, plan: dict, *, holders: tuple[str, ...] = ()) -> None:
    """Turn the machine into what applying ``plan`` leaves behind: array running and mounted, files
    written, NVRAM as the plan's efibootmgr commands leave it (one boot entry per disk; BootOrder as
    efibootmgr itself changes it, see ``conftest.bootorder_after``)."""
    build_members(machine, plan, inner_fs=True, holders=holders)
    machine.add_array(
        "/dev/md/esp",
        "md127",
        uuid=plan["array"]["uuid"],
        members=("/dev/sda1", "/dev/sdb1"),
        fs={
            "LABEL_FATBOOT": "ESP",
            "LABEL": "ESP",
            "UUID": plan["filesystem"]["uuid"],
            "VERSION": "FAT32",
            "BLOCK_SIZE": "512",
            "TYPE": "vfat",
            "USAGE": "filesystem",
        },
    )
    machine.mount("9:127", f"{machine.target}/boot/efi", "vfat", "/dev/md127")
    for group in plan["groups"]:
        for step in group["steps"]:
            if step["kind"] == "edit-block":
                files.edit_block(Path(step["path"]), step["block"])
    efibootmgr = starting(json_commands(plan), "efibootmgr")
    deleted = {argv[3] for argv in starting(efibootmgr, "efibootmgr", "--quiet", "--bootnum")}
    order = bootorder_after(nvram.parse(machine.efibootmgr).order, efibootmgr)
    lines = [
        line
        for line in machine.efibootmgr.splitlines()
        if not line.startswith("BootOrder:")
        and not ((entry := re.match(r"Boot([0-9A-F]{4})[* ]", line)) and entry[1] in deleted)
    ]
    lines.insert(2, f"BootOrder: {','.join(order)}")
    for argv in starting(efibootmgr, "efibootmgr", "--quiet", "--create"):
        number, disk, label, loader = argv[4], argv[6], argv[10], argv[12]
        guid = next(m["partition_guid"] for m in plan["members"] if m["disk"] == disk)
        lines.append(f"Boot{number}* {label}\tHD(1,GPT,{guid},0x800,0x100000)/File({loader})")
    machine.efibootmgr = "\n".join(lines) + "\n"


CHANGING = [
    ("sgdisk",),
    ("wipefs",),
    ("mdadm", "--create"),
    ("mdadm", "--assemble"),
    ("mkfs.vfat",),
    ("mount", "-t"),
    ("efibootmgr",),
]


def changing(plan: dict) -> list[tuple[str, ...]]:
    cmds = json_commands(plan)
    return [c for prefix in CHANGING for c in starting(cmds, *prefix)]


def test_plan_after_a_finished_apply_creates_and_formats_nothing(two_disks):
    first = plan_of(two_disks)
    finish(two_disks, first)
    again = plan_of(two_disks)
    assert changing(again) == []
    assert again["array"] == {**first["array"], "action": "keep"}
    assert again["filesystem"] == {"uuid": first["filesystem"]["uuid"], "mkfs": False}
    assert [m["exists"] for m in again["members"]] == [True, True]
    for step in (s for g in again["groups"] for s in g["steps"] if s["kind"] == "edit-block"):
        assert files.edit_block(Path(step["path"]), step["block"]) is False, step["path"]


def test_our_running_array_holding_the_members_does_not_make_the_disks_busy(two_disks):
    """As on a booted system: /sys/class/block/sda/sda1/holders/md127 with md127 = /dev/md/esp."""
    first = plan_of(two_disks)
    finish(two_disks, first, holders=("md127",))
    assert changing(plan_of(two_disks)) == []


def test_another_array_holding_a_member_still_makes_the_disk_busy(two_disks):
    first = plan_of(two_disks)
    finish(two_disks, first, holders=("md3",))
    outcome = two_disks.cli("plan", *two_disks.args())
    assert (outcome.code, outcome.error) == (
        2,
        "disk /dev/sda is in use: sda1 is in use by md3; choose a disk that nothing uses",
    )


def test_rerun_after_a_failure_after_mdadm_create_continues_with_mkfs(two_disks):
    first = plan_of(two_disks)
    build_members(two_disks, first, inner_fs=False, holders=("md127",))
    two_disks.add_array("/dev/md/esp", "md127", uuid=first["array"]["uuid"], members=("/dev/sda1", "/dev/sdb1"))
    again = plan_of(two_disks)
    assert starting(json_commands(again), "mdadm", "--create") == []
    assert len(starting(json_commands(again), "mkfs.vfat")) == 1


def test_a_rerun_makes_the_missing_partition_and_wipes_every_esp_partition_before_the_create(two_disks):
    """sda already carries our ESP partition (a first run stopped before making sdb1, maybe before
    its wipefs, maybe before the kernel re-read sda's table): only sdb1 is made, both are waited for
    (sda1's node is made when the kernel lacks it), and both are wiped before mdadm --create."""
    first = plan_of(two_disks)
    guid_a, guid_b = (m["partition_guid"] for m in first["members"])
    two_disks.add_partition(
        two_disks.disks["/dev/sda"], 1, 2048, 1048576, type_guid=ESP_TYPE, uuid=guid_a, name="esp-mirror"
    )
    again = plan_of(two_disks)
    assert [m["exists"] for m in again["members"]] == [True, False]
    [group] = [g for g in again["groups"] if g["name"] == "pre_partition"]
    steps = [tuple(s["argv"]) if s["kind"] == "command" else (s["kind"], s.get("node", "")) for s in group["steps"]]
    assert steps == [
        ("wait-for-partition", "/dev/sda1"),
        ("sgdisk", "--zap-all", "/dev/sdb"),
        (
            "sgdisk",
            "--new=1:2048:1050623",
            "--typecode=1:EF00",
            f"--partition-guid=1:{guid_b}",
            "--change-name=1:esp-mirror",
            "/dev/sdb",
        ),
        ("wait-for-partition", "/dev/sdb1"),
        ("settle", ""),
        ("wipefs", "--all", "/dev/sda1", "/dev/sdb1"),
    ]
    assert starting(json_commands(again), "mdadm", "--create")[0][-2:] == ("/dev/sda1", "/dev/sdb1")


def test_members_without_a_running_array_are_assembled_not_recreated(two_disks):
    first = plan_of(two_disks)
    build_members(two_disks, first, inner_fs=True)
    again = plan_of(two_disks)
    cmds = json_commands(again)
    assert starting(cmds, "mdadm", "--assemble") == [
        ("mdadm", "--assemble", "/dev/md/esp", "--run", f"--uuid={first['array']['uuid']}", "/dev/sda1", "/dev/sdb1")
    ]
    assert starting(cmds, "mdadm", "--create") == [] and starting(cmds, "mkfs.vfat") == []
    assert starting(cmds, "sgdisk") == [] and starting(cmds, "wipefs") == []
    assert again["filesystem"]["uuid"] == first["filesystem"]["uuid"]


def test_assembled_members_without_a_filesystem_get_one(two_disks):
    first = plan_of(two_disks)
    build_members(two_disks, first, inner_fs=False)
    cmds = json_commands(plan_of(two_disks))
    assert len(starting(cmds, "mdadm", "--assemble")) == 1
    assert starting(cmds, "mkfs.vfat") == [
        (
            "mkfs.vfat",
            "-F",
            "32",
            "-S",
            "512",
            "-s",
            "8",
            "-n",
            "ESP",
            "-i",
            first["filesystem"]["uuid"].replace("-", ""),
            "/dev/md/esp",
        )
    ]


def test_an_array_line_written_by_mkconf_is_not_written_again(two_disks):
    first = plan_of(two_disks)
    conf = two_disks.target / "etc/mdadm/mdadm.conf"
    conf.write_text(conf.read_text() + f"ARRAY /dev/md/esp metadata=1.0 UUID={first['array']['uuid']} name=any:esp\n")
    edits = [s["path"] for g in plan_of(two_disks)["groups"] for s in g["steps"] if s["kind"] == "edit-block"]
    assert edits == [f"{two_disks.target}/etc/fstab"]


def test_the_same_machine_always_gets_the_same_identifiers(two_disks):
    first, second = plan_of(two_disks), plan_of(two_disks)
    assert (first["array"], first["filesystem"], first["members"]) == (
        second["array"],
        second["filesystem"],
        second["members"],
    )


# -- re-runs with another set of disks ------------------------------------------------------------


def test_a_new_disk_next_to_the_running_array_is_added_or_refused(two_disks):
    finish(two_disks, plan_of(two_disks))
    two_disks.add_disk("sdc", serial="WD-WCC4N0CCCCCC")
    outcome = two_disks.cli(
        "plan", "--json", *two_disks.disk_args("/dev/sda", "/dev/sdc"), "--target", str(two_disks.target)
    )
    if outcome.code == 0:
        cmds = json_commands(json.loads(outcome.out))
        assert ("mdadm", "--add", "/dev/md/esp", "/dev/sdc1") in cmds or any(c[:2] == ("mdadm", "--grow") for c in cmds)
    else:
        assert outcome.code == 2 and "/dev/sdc" in outcome.error


def test_the_command_suggested_for_a_new_disk_exists(two_disks, capsys):
    build_members(two_disks, plan_of(two_disks), inner_fs=True)
    two_disks.add_disk("sdc", serial="WD-WCC4N0CCCCCC")
    outcome = two_disks.cli("plan", *two_disks.args("/dev/sda", "/dev/sdb", "/dev/sdc"))
    assert outcome.code == 2
    [suggested] = re.findall(r"`esp-mirror (\w+)`", outcome.error)
    with pytest.raises(SystemExit) as exit_:
        two_disks.cli(suggested, "--help")
    assert exit_.value.code == 0


RAID_TYPE = "A19D880F-05FC-4D3B-A006-743F0F84911E"


def root_on_md_raid(machine: Machine) -> None:
    for path in ("/dev/sda", "/dev/sdb"):
        machine.add_partition(
            machine.disks[path],
            2,
            1050624,
            40000000,
            type_guid=RAID_TYPE,
            holders=("md0",),
            probe={
                "TYPE": "linux_raid_member",
                "UUID": "11111111-2222-3333-4444-555555555555",
                "LABEL": "host:root",
                "VERSION": "1.2",
            },
        )
    machine.set_root("9:0", "/dev/md0")


def root_on_a_plain_partition(machine: Machine) -> None:
    sda = machine.disks["/dev/sda"]
    machine.add_partition(
        sda, 2, 1050624, 40000000, probe={"TYPE": "ext4", "UUID": "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"}
    )
    machine.set_root(machine.partition_devnum(sda, 2), "/dev/sda2")


@pytest.mark.parametrize("root", [root_on_md_raid, root_on_a_plain_partition], ids=lambda f: f.__name__)
def test_rerun_on_the_installed_system_whose_root_shares_the_disks(two_disks, root):
    first = plan_of(two_disks)
    finish(two_disks, first, holders=("md127",))
    root(two_disks)
    outcome = two_disks.cli("plan", "--json", *two_disks.args())
    assert outcome.code == 0, outcome.err
    assert changing(json.loads(outcome.out)) == []


@pytest.mark.parametrize(
    ("outside", "monitor"),
    [("", True), ("MAILADDR ops@example.com\n", False), ("PROGRAM /usr/local/bin/page-me\n", False)],
)
def test_mdadm_conf_gets_the_monitors_default_address_only_while_it_names_none(outside, monitor):
    """Written before the mdadm package (an installer), mdadm.conf would leave mdmonitor.service
    failing at every boot; the default goes into our block until the file has its own."""
    from esp_mirror_plugin.hooks.raid import mdadm_conf_block
    from esp_mirror_plugin.pipeline.request import Request
    from esp_mirror_plugin.system import files

    layout = type("L", (), {"array_uuid": "11111111:22222222:33333333:44444444"})()
    request = Request(disks=())
    first = mdadm_conf_block(request, layout, outside)
    assert first.endswith("\nMAILADDR root") is monitor
    again = mdadm_conf_block(request, layout, files.with_block(outside, first))  # a re-run sees our block
    assert again == first
