"""`esp-mirror adopt`: a running system's ESP taken into the mirror (pipeline/adoption.py, hooks/adopt.py).

The machines here are what the issue names as starting points: a Debian installed on one disk
with the ESP its grub-install made, and a blank second disk; an ESP partition on every disk with
the other partitions in use (an md root); a disk that has no room for an ESP. Each plan is read
step by step; the resume cases are machines in the state an interrupted adopt leaves.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from esp_mirror_plugin.pipeline import naming
from tests.unit.conftest import (
    ESP_TYPE,
    GIB,
    LINUX_TYPE,
    MIB,
    SHELL,
    UIAPP,
    Machine,
    assert_only_read,
    serial_of,
    starting,
)

LIVE_UUID = "ABCD-1234"  # the FAT volume id Debian's installer gave the ESP
LIVE_GUID = "0d1f0e2c-55aa-4b11-9c2d-3e4f5a6b7c8d"
ROOT_FSTAB_LINE = "UUID=0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d /    ext4 errors=remount-ro 0 1"
LIVE_FSTAB_LINE = f"UUID={LIVE_UUID}  /boot/efi       vfat    umask=0077      0       1"
DEBIAN_ENTRY = f"HD(1,GPT,{LIVE_GUID},0x800,0x100000)/File(\\EFI\\debian\\grubx64.efi)"
NVRAM = (
    "BootCurrent: 0004\nTimeout: 0 seconds\nBootOrder: 0004,0000,0001\n"
    f"Boot0000* UiApp\t{UIAPP}\n"
    f"Boot0001* EFI Internal Shell\t{SHELL}\n"
    f"Boot0004* debian\t{DEBIAN_ENTRY}\n"
)
FSCK_LIVE = "fsck.fat 4.2 (2021-01-31)\n/dev/vda1: 12 files, 1043/130812 clusters\n"


class LiveEsp(Machine):
    """Debian installed on /dev/vda (ESP vda1 with its files, mounted at /boot/efi; root on vda2),
    and blank disks for the mirror. ``fsck.fat -n`` answers come from ``fats``."""

    def __init__(self, root: Path, blank: tuple[str, ...] = ("vdb",), stale: tuple[str, ...] = ()) -> None:
        """``stale``: more disks like vda, each with an ESP (a stale copy) and a member of the md
        root on partition 2; vda's partition 2 is then a member of the root array too."""
        super().__init__(root)
        self.fats: dict[str, tuple[int, str]] = {}
        self.runner.responders.insert(0, self._fsck)
        self.esp = self.target / "boot/efi"
        disk = self.add_disk("vda", size=20 * GIB, serial=serial_of("vda"))
        self.live = self.add_partition(
            disk,
            1,
            2048,
            512 * MIB // 512,
            type_guid=ESP_TYPE,
            uuid=LIVE_GUID,
            name="EFI System Partition",
            probe={"UUID": LIVE_UUID, "LABEL": "EFI", "VERSION": "FAT32", "TYPE": "vfat", "USAGE": "filesystem"},
        )
        if stale:
            self._root_member(disk)
            self.set_root("9:0", "/dev/md0")
        else:
            root = self.add_partition(disk, 2, 2048 + 512 * MIB // 512, 10 * GIB // 512, type_guid=LINUX_TYPE)
            self.set_root(self.partition_devnum(disk, 2), root)
        self.mount(self.partition_devnum(disk, 1), str(self.esp), "vfat", self.live)
        self.fats[self.live] = (1, FSCK_LIVE)  # mounted: the dirty bit, which is no damage
        for name in stale:
            other = self.add_disk(name, size=20 * GIB, serial=serial_of(name))
            copy = self.add_partition(
                other,
                1,
                2048,
                512 * MIB // 512,
                type_guid=ESP_TYPE,
                name="EFI System Partition",
                probe={"UUID": f"BEEF-000{name[-1]}", "LABEL": "EFI", "TYPE": "vfat", "USAGE": "filesystem"},
            )
            self.fats[copy] = (0, FSCK_LIVE.replace("/dev/vda1", copy))
            self._root_member(other)
        for name in blank:
            self.add_disk(name, size=20 * GIB, serial=serial_of(name))
        (self.target / "etc/fstab").write_text(f"{ROOT_FSTAB_LINE}\n{LIVE_FSTAB_LINE}\n")
        (self.target / "etc/mdadm").mkdir()
        (self.target / "etc/mdadm/mdadm.conf").write_text("HOMEHOST <system>\nMAILADDR root\n")
        for path, data in {"EFI/debian/grubx64.efi": b"MZ grub\n", "EFI/debian/grub.cfg": b"search\n"}.items():
            (self.esp / path).parent.mkdir(parents=True, exist_ok=True)
            (self.esp / path).write_bytes(data)
        self.add_target_programs("grub-install", "update-initramfs", "tar", "cp")
        self.set_efivars(efibootmgr=NVRAM)

    def _root_member(self, disk) -> None:
        probe = {"UUID": "11111111-2222-3333-4444-555555555555", "LABEL": "any:root", "TYPE": "linux_raid_member"}
        self.add_partition(disk, 2, 2048 + 512 * MIB // 512, 10 * GIB // 512, probe=probe, holders=("md0",))

    def _fsck(self, argv: tuple[str, ...]) -> object:
        if argv[:2] == ("fsck.fat", "-n") and argv[2] in self.fats:
            from esp_mirror_plugin.system.runner import Result

            code, text = self.fats[argv[2]]
            return Result(argv, code, text)
        return None

    def adopt(self, *more: str):
        return self.cli("adopt", *self.disk_args(*self.disks), "--target", str(self.target), *more)


@pytest.fixture
def live(tmp_path: Path) -> LiveEsp:
    return LiveEsp(tmp_path)


def _plan(machine: LiveEsp, *more: str) -> dict:
    done = machine.adopt("--dry-run", "--json", *more)
    assert done.code == 0, done.err
    assert_only_read(done.calls)
    return json.loads(done.out)


def _argv(plan: dict, group: str | None = None) -> list[tuple[str, ...]]:
    return [
        tuple(s["argv"])
        for g in plan["groups"]
        if group is None or g["name"] == group
        for s in g["steps"]
        if s["kind"] == "command"
    ]


def _kinds(plan: dict) -> list[tuple[str, str]]:
    """(group, what) for every step: a command's argv joined, a file step's kind and path."""
    out = []
    for g in plan["groups"]:
        for s in g["steps"]:
            what = " ".join(s["argv"]) if s["kind"] == "command" else f"{s['kind']} {s.get('path', s.get('dest', ''))}"
            out.append((g["name"], what))
    return out


def _index(steps: list[tuple[str, str]], pattern: str) -> int:
    found = [i for i, (_, what) in enumerate(steps) if re.search(pattern, what)]
    assert len(found) == 1, (pattern, found, steps)
    return found[0]


# -- one live ESP and a blank disk ----------------------------------------------------------------


def test_backups_come_before_the_first_change_and_the_live_esp_is_wiped_last(live: LiveEsp) -> None:
    steps = _kinds(_plan(live))
    tar = _index(steps, r"^tar --create --file=\S+/var/lib/esp-mirror/adopt/esp-vda1.tar --directory=\S+/boot/efi \.$")
    # the tar is read back and compared with the live ESP, file by file, before the first change
    assert steps[tar + 1][1].startswith("verify-copy ") and steps[tar + 1][1].endswith("/adopt/esp-vda1.tar")
    gpt = _index(steps, r"^sgdisk --backup=\S+/adopt/gpt-vda.bin /dev/vda$")
    entries = _index(steps, r"^write-file \S+/adopt/efibootmgr-v.txt$")
    fstab_lines = _index(steps, r"^write-file \S+/adopt/fstab.lines$")
    journal = [i for i, (_, what) in enumerate(steps) if what.endswith("/var/lib/esp-mirror/adopt.json")]
    first_change = _index(steps, r"^sgdisk --zap-all /dev/vdb$")
    assert max(tar, gpt, entries, fstab_lines) < journal[0] < first_change
    # the array is made degraded on the new disk only: the live ESP's slot is "missing"
    create = _index(steps, r"^mdadm --create /dev/md/esp ")
    assert steps[create][1].endswith(" --size=523264 missing /dev/vdb1"), steps[create]
    copy = _index(
        steps, r"^cp --recursive --preserve=timestamps --no-target-directory \S+/boot/efi /run/esp-mirror/adopt$"
    )
    verify = _index(steps, r"^verify-copy /run/esp-mirror/adopt$")
    fstab = _index(steps, r"^edit-block \S+/etc/fstab$")
    unmount = _index(steps, r"^umount \S+/target/boot/efi$")
    mount = _index(steps, r"^mount -t vfat -o umask=0077 /dev/md/esp \S+/target/boot/efi$")
    assert create < copy < verify < fstab < unmount < mount < journal[1]
    # every entry is made before the live ESP's partition is touched, and that is the last change
    creates = [i for i, (_, what) in enumerate(steps) if what.startswith("efibootmgr --quiet --create")]
    wipe = _index(steps, r"^wipefs --all /dev/vda1$")
    add = _index(steps, r"^mdadm /dev/md/esp --add /dev/vda1$")
    assert journal[1] < min(creates) and max(creates) < wipe < add
    # the array's files are on its disk before the only other copy goes: a power cut may follow
    assert steps[wipe - 1] == ("adopt-finish", f"sync --file-system {live.target}/boot/efi")
    assert steps[add + 1 : add + 4] == [
        ("adopt-finish", "wait-for-sync "),
        ("adopt-finish", "efibootmgr --quiet --bootorder 0002,0003,0000,0001"),  # now A, the first disk, leads
        ("adopt-finish", f"rm -- {live.target}/var/lib/esp-mirror/adopt.json"),
    ]
    assert {group for group, _ in steps[add + 4 :]} == {"cleanup"}


def test_the_mirror_keeps_the_live_esps_label_and_gets_a_volume_id_of_its_own(live: LiveEsp) -> None:
    plan = _plan(live)
    (mkfs,) = starting(_argv(plan), "mkfs.vfat")
    assert mkfs[mkfs.index("-n") + 1] == "EFI"  # what blkid says of the live ESP
    volume = mkfs[mkfs.index("-i") + 1]
    assert volume == naming.volume_id(plan["array"]["uuid"]) and f"{volume[:4]}-{volume[4:]}" != LIVE_UUID
    # the live ESP's UUID would be on two FATs while both exist; the mirror's never is
    assert plan["filesystem"]["uuid"] == f"{volume[:4]}-{volume[4:]}"


def test_the_distributions_entry_for_the_live_esp_is_folded_into_ours_and_its_disk_boots_last(
    live: LiveEsp,
) -> None:
    argv = _argv(_plan(live), "bootloader")
    efibootmgr = starting(argv, "efibootmgr")
    assert efibootmgr[0] == ("efibootmgr", "--quiet", "--bootnum", "0004", "--delete-bootnum")
    created = [
        (c[c.index("--disk") + 1], c[c.index("--part") + 1], c[c.index("--bootnum") + 1]) for c in efibootmgr[1:3]
    ]
    assert sorted(created) == [("/dev/vda", "1", "0002"), ("/dev/vdb", "1", "0003")]
    # until the live ESP's partition is a whole member, the new disk's entry leads
    assert efibootmgr[-1] == ("efibootmgr", "--quiet", "--bootorder", "0003,0002,0000,0001")


def test_the_old_fstab_line_is_commented_out_in_the_same_write_as_the_mirrors(live: LiveEsp) -> None:
    from esp_mirror_plugin.system import files

    plan = _plan(live)
    (edit,) = [
        s for g in plan["groups"] for s in g["steps"] if s["kind"] == "edit-block" and s["path"].endswith("fstab")
    ]
    assert edit["retire"] == [LIVE_FSTAB_LINE]
    fstab = live.target / "etc/fstab"
    files.edit_block(fstab, edit["block"], retire=tuple(edit["retire"]))
    lines = [line for line in fstab.read_text().splitlines() if line and not line.startswith("#")]
    assert [line.split()[1] for line in lines] == ["/", "/boot/efi"]
    assert lines[1].startswith(f"UUID={plan['filesystem']['uuid']}\t")
    assert f"# esp-mirror: {LIVE_FSTAB_LINE}" in fstab.read_text().splitlines()
    # a second edit changes nothing
    assert not files.edit_block(fstab, edit["block"], retire=tuple(edit["retire"]))


def test_the_journal_records_the_command_to_run_again(live: LiveEsp) -> None:
    plan = _plan(live)
    (journal,) = [
        s
        for g in plan["groups"]
        if g["name"] == "adopt-backup"
        for s in g["steps"]
        if s.get("path", "").endswith("adopt.json")
    ]
    body = json.loads(journal["content"])
    assert body["live"] == LIVE_GUID and body["phase"] == "copy" and body["disks"] == ["/dev/vda", "/dev/vdb"]
    assert "--dry-run" not in body["command"] and body["command"].startswith("esp-mirror adopt --disk /dev/vda")


def test_the_record_gives_a_replacement_disk_the_smallest_members_size(live: LiveEsp) -> None:
    plan = _plan(live, "--esp-size", "1G")
    (record,) = [s for g in plan["groups"] for s in g["steps"] if s.get("path", "").endswith("esp-mirror.yaml")]
    assert "esp_size: 536870912\n" in record["content"]  # the live ESP's 512 MiB, not the new disk's 1 GiB
    (create,) = starting(_argv(plan), "mdadm", "--create")
    assert "--size=523264" in create


def test_a_script_that_copies_between_esps_gets_a_note(live: LiveEsp) -> None:
    hook = live.target / "etc/zfsbootmenu/generate-zbm.post.d/sync-esps.sh"
    hook.parent.mkdir(parents=True)
    hook.write_text("#!/bin/sh\nrsync -a /boot/efi/ /boot/efi2/\n")
    notes = [n for g in _plan(live)["groups"] if g["name"] == "adopt-finish" for n in g["notes"]]
    assert any(str(hook) in n and "no longer needed" in n for n in notes), notes


def test_only_hooks_that_copy_onto_an_esp_path_get_the_note(live: LiveEsp) -> None:
    """A kernel hook that copies onto a second ESP gets the note; Debian's own GRUB theme script
    (a cp, and "user-defined" with "efi" in it) and a hook that only runs efibootmgr do not."""
    scripts = {
        "etc/kernel/postinst.d/zz-sync-esp": "#!/bin/sh\nfor esp in /efi /efi2; do cp -r /boot/EFI $esp/; done\n",
        "etc/grub.d/05_debian_theme": '#!/bin/sh\n# desktop-base specified. If user-defined, use\nelif cp "${1}" x\n',
        "etc/kernel/postinst.d/entries": "#!/bin/sh\nefibootmgr --create --label x\ncp /etc/a /etc/b\n",
    }
    for rel, text in scripts.items():
        (live.target / rel).parent.mkdir(parents=True, exist_ok=True)
        (live.target / rel).write_text(text)
    notes = [n for g in _plan(live)["groups"] if g["name"] == "adopt-finish" for n in g["notes"]]
    named = [rel for rel in scripts if any(f"{live.target}/{rel} " in n for n in notes)]
    assert named == ["etc/kernel/postinst.d/zz-sync-esp"], notes


# -- an ESP partition on every disk, the rest in use ----------------------------------------------


@pytest.fixture
def every_disk(tmp_path: Path) -> LiveEsp:
    """ZFSBootMenu's or Proxmox's layout: partition 1 an ESP on each disk (vdb1 a stale copy),
    partition 2 a member of an md RAID1 root."""
    return LiveEsp(tmp_path, blank=(), stale=("vdb",))


def test_esps_on_every_disk_become_members_where_they_are_and_nothing_else_is_touched(every_disk: LiveEsp) -> None:
    plan = _plan(every_disk)
    argv = _argv(plan)
    assert not [c for c in argv if c[0] == "sgdisk" and not c[1].startswith("--backup=")], argv  # no table changes
    touched = {a for c in argv for a in c if re.fullmatch(r"/dev/vd[ab]\d", a)}
    assert touched == {"/dev/vda1", "/dev/vdb1"}, touched
    (create,) = starting(argv, "mdadm", "--create")
    assert create[-2:] == ("missing", "/dev/vdb1")
    assert ("wipefs", "--all", "/dev/vdb1") in argv and argv.index(("wipefs", "--all", "/dev/vdb1")) < argv.index(
        create
    )
    # the stale copy's files are backed up too: mounted read-only for it, then unmounted
    backup = _argv(plan, "adopt-backup")
    backups = every_disk.target / "var/lib/esp-mirror/adopt"
    reading = "/run/esp-mirror/adopt-read-vdb1"
    assert backup[1:4] == [
        ("mount", "-t", "vfat", "-o", "ro,umask=0077", "/dev/vdb1", reading),
        ("tar", "--create", f"--file={backups}/esp-vdb1.tar", f"--directory={reading}", "."),
        ("umount", reading),
    ], backup
    assert [c[1] for c in starting(backup, "sgdisk")] == [
        f"--backup={every_disk.target}/var/lib/esp-mirror/adopt/gpt-vda.bin",
        f"--backup={every_disk.target}/var/lib/esp-mirror/adopt/gpt-vdb.bin",
    ]
    # the adopted partitions keep their GUIDs, so the entries name them
    creates = starting(argv, "efibootmgr", "--quiet", "--create")
    assert {c[c.index("--disk") + 1]: c[c.index("--part") + 1] for c in creates} == {"/dev/vda": "1", "/dev/vdb": "1"}


def test_a_backup_killed_while_the_stale_copy_was_mounted_for_it_is_unmounted_before_the_wipe(
    every_disk: LiveEsp,
) -> None:
    """The kill loop's finding: killed during the tar of vdb1 (mounted read-only for it), the run
    again read the backup from that mount, never unmounted it, and wipefs found vdb1 busy."""
    reading = "/run/esp-mirror/adopt-read-vdb1"
    every_disk.mount(every_disk.partition_devnum(every_disk.disks["/dev/vdb"], 1), reading, "vfat", "/dev/vdb1")
    plan = _plan(every_disk)
    backup = _argv(plan, "adopt-backup")
    assert ("tar", "--create", f"--file={every_disk.target}/var/lib/esp-mirror/adopt/esp-vdb1.tar",
            f"--directory={reading}", ".") in backup  # fmt: skip
    assert not starting(backup, "mount")  # it is mounted already
    argv = _argv(plan)
    assert ("umount", reading) in argv
    assert argv.index(("umount", reading)) < argv.index(("wipefs", "--all", "/dev/vdb1"))


def test_dry_run_plan_of_one_live_esp_and_a_blank_disk(live: LiveEsp) -> None:
    done = live.adopt("--dry-run")
    assert done.code == 0, done.err
    print(live.normalize(done.out))
    assert_only_read(done.calls)


# -- refusals: one line, exit 2, nothing changed ---------------------------------------------------


def _refused(machine: LiveEsp, *more: str) -> str:
    before = machine.target_state()
    done = machine.adopt("--yes", *more)
    assert done.code == 2, (done.out, done.err)
    assert_only_read(done.calls)
    assert machine.target_state() == before
    return done.error


def test_a_live_esp_that_is_not_fat_is_refused(live: LiveEsp) -> None:
    live.disks["/dev/vda"].partitions[0].probe["TYPE"] = "ext4"
    assert _refused(live) == "the live ESP /dev/vda1 holds ext4, not FAT: esp-mirror adopts a FAT ESP only"


def test_a_live_esp_with_damage_is_refused_naming_the_repair(live: LiveEsp) -> None:
    live.fats[live.live] = (
        1,
        "fsck.fat 4.2\nFAT 1 differs from FAT 2 at cluster 4\n/dev/vda1: 12 files, 1/2 clusters\n",
    )
    error = _refused(live)
    assert error.startswith(
        "fsck.fat -n finds damage on the live ESP /dev/vda1 (FAT 1 differs from FAT 2 at cluster 4)"
    )
    assert "fsck.fat -a /dev/vda1" in error


def test_an_esp_partition_too_small_for_fat32_and_the_md_superblock_is_refused(tmp_path: Path) -> None:
    machine = LiveEsp(tmp_path)
    machine.disks["/dev/vda"].partitions[0].size = 32 * MIB // 512
    assert _refused(machine) == (
        "the ESP partition /dev/vda1 (32 MiB) is too small for FAT32 plus the md superblock with 512-byte "
        "sectors: it needs 34 MiB; leave that disk out or make its ESP larger first"
    )


def test_disks_with_different_logical_sector_sizes_are_refused(tmp_path: Path) -> None:
    machine = LiveEsp(tmp_path, blank=())
    machine.add_disk("vdb", size=20 * GIB, serial=serial_of("vdb"), sector=4096)
    assert _refused(machine).startswith(
        "disks have different logical sector sizes (/dev/vda=512, /dev/vdb=4096): a RAID1 ESP needs members"
    )


def test_a_live_esp_mounted_twice_is_refused(live: LiveEsp) -> None:
    live.mount(live.partition_devnum(live.disks["/dev/vda"], 1), "/efi", "vfat", live.live)
    assert _refused(live).startswith(f"the live ESP /dev/vda1 is mounted twice ({live.esp} and /efi): unmount")


def test_a_live_esp_held_by_another_array_is_refused(live: LiveEsp) -> None:
    (live.sysroot / "sys/class/block/vda/vda1/holders/md5").touch()
    assert _refused(live).startswith("the live ESP /dev/vda1 is held by md5 (another md array or device-mapper)")


def test_adopt_must_run_as_root(live: LiveEsp, monkeypatch: pytest.MonkeyPatch) -> None:
    from esp_mirror_plugin import cli

    monkeypatch.setattr(cli, "is_root", lambda: False)
    assert _refused(live) == "adopt changes disks and must run as root: run it with sudo"


def test_a_disk_without_an_esp_and_no_room_at_1_mib_is_refused_naming_what_is_missing(tmp_path: Path) -> None:
    machine = LiveEsp(tmp_path, blank=())
    disk = machine.add_disk("vdb", size=20 * GIB, serial=serial_of("vdb"))
    machine.add_partition(disk, 1, 2048, 10 * GIB // 512, type_guid=LINUX_TYPE)
    assert _refused(machine) == (
        "disk /dev/vdb has no ESP partition and no room for one of 512 MiB at 1 MiB (sectors 2048-1050623 are "
        "vdb1's): give it an EF00 partition of that size there (sgdisk --new=1:2048:+512M --typecode=1:EF00 "
        "/dev/vdb), or leave it out"
    )


def test_a_disk_with_room_at_1_mib_gets_partition_1_in_its_table(tmp_path: Path) -> None:
    machine = LiveEsp(tmp_path, blank=())
    disk = machine.add_disk("vdb", size=20 * GIB, serial=serial_of("vdb"))
    machine.add_partition(disk, 2, 2048 + 512 * MIB // 512, 10 * GIB // 512, type_guid=LINUX_TYPE)
    argv = _argv(_plan(machine), "pre_partition")
    assert [c[:2] for c in starting(argv, "sgdisk")] == [("sgdisk", "--new=1:2048:1050623")]  # no --zap-all


def test_wipe_one_disk_and_no_esp_at_all_are_refused(live: LiveEsp) -> None:
    # adopt takes no --wipe (its --help lists only what it takes); a config file's wipe: true is refused
    assert _refused(live, "--wipe") == "unrecognized arguments: --wipe (see `esp-mirror adopt --help`)"
    config = live.root / "wipe.yaml"
    config.write_text("wipe: true\n")
    assert _refused(live, "--config", str(config)).startswith("adopt never wipes a disk: leave out --wipe")
    one = live.cli("adopt", "--yes", "--disk", "/dev/vda", "--target", str(live.target))
    assert one.code == 2 and one.error.startswith("adopt needs the disk of the live ESP and at least one more")
    live.mountinfo = [line for line in live.mountinfo if str(live.esp) not in line]
    live._write_proc()
    (live.target / "etc/fstab").write_text(f"{ROOT_FSTAB_LINE}\n")
    assert _refused(live).startswith("no ESP to adopt: nothing is mounted at")


def test_no_room_for_the_backups_is_refused(live: LiveEsp, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from esp_mirror_plugin.pipeline import adoption

    real = os.statvfs
    monkeypatch.setattr(
        adoption.os,
        "statvfs",
        lambda path: (
            os.statvfs_result((4096, 4096, 100, 10, 10, 0, 0, 0, 0, 255)) if "target" in str(path) else real(path)
        ),
    )
    error = _refused(live)
    assert re.match(
        r"no room for the backups: \S+/var/lib/esp-mirror/adopt needs about [\d.]+ MiB .* has 40 KiB free", error
    ), error


def test_a_live_esp_that_boots_another_bootloader_is_not_switched_silently(live: LiveEsp) -> None:
    (live.esp / "EFI/debian/grubx64.efi").unlink()
    (live.esp / "EFI/systemd").mkdir()
    (live.esp / "EFI/systemd/systemd-bootx64.efi").write_bytes(b"MZ")
    assert "pass the bootloader it boots (--bootloader and --loader-id)" in _refused(live)
    assert _plan(live, "--bootloader", "systemd-boot")["groups"]


def test_an_mbr_disk_is_refused(tmp_path: Path) -> None:
    machine = LiveEsp(tmp_path, blank=())
    machine.add_disk("vdb", size=20 * GIB, serial=serial_of("vdb"), pttype="dos")
    assert _refused(machine).startswith("disk /dev/vdb has an MBR (dos) partition table")


# -- run again after an interruption -------------------------------------------------------------

DERIVED = naming.mdadm_uuid(naming.array_uuid(["serial:espvm-A", "serial:espvm-B"], "esp"))


def _interrupted(machine: LiveEsp, phase: str) -> None:
    """What an adopt killed after it made the array leaves: the journal, vdb1 made and a member of
    the running array (mounted at the staging directory, or, once switched, at the mount point)."""
    from esp_mirror_plugin.pipeline.adoption import STAGING, AdoptJournal, journal_path

    journal = AdoptJournal(
        "esp-mirror adopt --disk /dev/vda --disk /dev/vdb --yes", LIVE_GUID, ("/dev/vda", "/dev/vdb")
    )
    path = Path(journal_path(str(machine.target)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(AdoptJournal(journal.command, journal.live, journal.disks, phase).text())
    disk = machine.disks["/dev/vdb"]
    member = {
        "UUID": str(__import__("uuid").UUID(DERIVED.replace(":", ""))),
        "LABEL": "any:esp",
        "TYPE": "linux_raid_member",
    }
    machine.add_partition(
        disk,
        1,
        2048,
        512 * MIB // 512,
        type_guid=ESP_TYPE,
        uuid=naming.partition_guid("serial:espvm-B"),
        name=naming.PARTITION_NAME,
        probe=member,
        inner={"TYPE": "vfat", "UUID": "932D-8E71"},
        holders=("md127",),
    )
    machine.add_array(
        "/dev/md/esp", "md127", uuid=DERIVED, members=("/dev/vdb1",), fs={"TYPE": "vfat", "UUID": "932D-8E71"}
    )
    if phase == "copy":
        machine.mount("9:127", STAGING, "vfat", "/dev/md127")
    else:  # fstab and the mount switched
        from esp_mirror_plugin.hooks import fstab
        from esp_mirror_plugin.system import files

        files.edit_block(machine.target / "etc/fstab", fstab.line("932D-8E71", "/boot/efi"), retire=(LIVE_FSTAB_LINE,))
        machine.mountinfo = [line for line in machine.mountinfo if str(machine.esp) not in line]
        machine.mount("9:127", str(machine.esp), "vfat", "/dev/md127")


def test_run_again_before_the_switch_makes_the_array_and_its_copy_again(live: LiveEsp) -> None:
    _interrupted(live, "copy")
    plan = _plan(live)
    groups = [g["name"] for g in plan["groups"]]
    assert "adopt-backup" not in groups  # the backups are of the machine before the first change
    argv = _argv(plan, "pre_partition")
    assert argv[:2] == [("umount", "/run/esp-mirror/adopt"), ("mdadm", "--stop", "/dev/md127")]
    assert ("wipefs", "--all", "/dev/vdb1") in argv and not starting(argv, "sgdisk")  # vdb1 is made already
    post = _argv(plan, "post_format")
    assert starting(post, "mdadm", "--create") and starting(post, "mkfs.vfat") and starting(post, "cp")
    assert ("wipefs", "--all", "/dev/vda1") in _argv(plan, "adopt-finish")


def test_run_again_after_the_switch_goes_on_without_touching_the_array_or_its_files(live: LiveEsp) -> None:
    _interrupted(live, "switched")
    plan = _plan(live)
    argv = _argv(plan)
    for forbidden in ("mkfs.vfat", "cp", "tar", "sgdisk"):
        assert not starting(argv, forbidden), forbidden
    assert not starting(argv, "mdadm", "--create") and not starting(argv, "mdadm", "--stop")
    assert _argv(plan, "adopt-finish")[:3] == [
        ("sync", "--file-system", f"{live.target}/boot/efi"),
        ("wipefs", "--all", "/dev/vda1"),
        ("mdadm", "/dev/md/esp", "--add", "/dev/vda1"),
    ]
    # the array's FAT keeps its volume id: fstab's line is the one the switch wrote
    assert plan["filesystem"]["uuid"] == "932D-8E71"


def test_run_again_after_the_live_partition_joined_only_waits_and_finishes(live: LiveEsp) -> None:
    _interrupted(live, "switched")
    (live.sysroot / "sys/class/block/vda/vda1/holders/md127").touch()
    finish = _argv(_plan(live), "adopt-finish")
    assert not starting(finish, "wipefs") and not starting(finish, "mdadm") and not starting(finish, "sync")
    assert finish[-1] == ("rm", "--", f"{live.target}/var/lib/esp-mirror/adopt.json")


def test_a_run_again_with_other_disks_is_refused_naming_the_command_that_finishes(live: LiveEsp) -> None:
    _interrupted(live, "copy")
    live.add_disk("vdc", size=20 * GIB, serial=serial_of("vdc"))
    assert _refused(live).startswith(
        "an adoption of /dev/vda, /dev/vdb is not finished (" + str(live.target) + "/var/lib/esp-mirror/adopt.json): "
        "run it again as it was started: esp-mirror adopt --disk /dev/vda --disk /dev/vdb --yes"
    )


def test_apply_refuses_while_an_adoption_is_unfinished(live: LiveEsp) -> None:
    _interrupted(live, "switched")
    done = live.cli("apply", "--yes", *live.args())
    assert done.code == 2 and done.error.startswith("an adoption of this system's ESP is not finished")


def test_status_names_an_unfinished_adoption(live: LiveEsp) -> None:
    from esp_mirror_plugin.upkeep.mirror import read_mirror

    _interrupted(live, "switched")
    state = read_mirror(live.runner, None, type(live.host)(live.target, live.block))
    assert any("an adoption of the ESP on partition" in p and "after the switch" in p for p in state.problems())
    assert state.exit_code() == 1


def test_nothing_to_adopt_on_a_mirror(live: LiveEsp) -> None:
    record = live.target / "etc/esp-mirror/esp-mirror.yaml"
    record.parent.mkdir(parents=True)
    record.write_text("profile: debian\n")
    done = live.adopt("--yes")
    assert done.code == 0 and done.out.startswith("esp-mirror adopt: nothing to adopt: esp-mirror set this system up")
    assert_only_read(done.calls)


# -- after the adoption, apply with the same settings keeps it --------------------------------------


def test_apply_takes_adopted_members_as_they_are(live: LiveEsp) -> None:
    """vda1 (the live ESP, GPT name "EFI System Partition") and vdb1 are members: apply neither
    partitions, wipes nor refuses them, and records the smallest member for a replacement."""
    _interrupted(live, "switched")
    member = {
        "UUID": str(__import__("uuid").UUID(DERIVED.replace(":", ""))),
        "LABEL": "any:esp",
        "TYPE": "linux_raid_member",
    }
    part = live.disks["/dev/vda"].partitions[0]
    part.probe, part.inner = member, {"TYPE": "vfat", "UUID": "932D-8E71"}
    (live.sysroot / "sys/class/block/vda/vda1/holders/md127").touch()
    (live.target / "var/lib/esp-mirror/adopt.json").unlink()
    done = live.cli("plan", "--json", *live.args())
    assert done.code == 0, done.err
    plan = json.loads(done.out)
    argv = _argv(plan)
    assert not starting(argv, "sgdisk") and not starting(argv, "wipefs") and not starting(argv, "mdadm", "--create")
    assert [m["partition_guid"] for m in plan["members"]] == [LIVE_GUID, naming.partition_guid("serial:espvm-B")]
    assert plan["array"]["action"] == "keep"


@pytest.mark.parametrize("live_added", [False, True], ids=["live-not-added", "live-added-during-the-resync"])
def test_after_a_power_cut_past_the_switch_the_array_is_assembled_and_mounted_never_made_again(
    live: LiveEsp, live_added: bool
) -> None:
    """The machine was reset after the switch (or during the final resync): nothing assembled the
    array or mounted anything yet; the journal says "switched"."""
    _interrupted(live, "switched")
    (live.sysroot / "dev/md/esp").unlink()
    del live.arrays["/dev/md/esp"]
    shutil.rmtree(live.sysroot / "sys/block/md127")
    (live.sysroot / "sys/class/block/vdb/vdb1/holders/md127").unlink()
    live.mountinfo = [line for line in live.mountinfo if str(live.esp) not in line]
    live._write_proc()
    if live_added:
        part = live.disks["/dev/vda"].partitions[0]
        part.probe = dict(live.disks["/dev/vdb"].partitions[0].probe)
    plan = _plan(live)
    argv = _argv(plan)
    for forbidden in ("mkfs.vfat", "cp", "tar"):
        assert not starting(argv, forbidden), forbidden
    (assemble,) = starting(argv, "mdadm", "--assemble")
    assert assemble[-2 if live_added else -1 :] == (("/dev/vda1", "/dev/vdb1") if live_added else ("/dev/vdb1",))
    post = [s["kind"] for g in plan["groups"] if g["name"] == "post_format" for s in g["steps"]]
    assert post[:5] == ["command", "settle", "ensure-fat", "mkdir", "command"], post  # assemble, check, mount
    finish = _argv(plan, "adopt-finish")
    assert bool(starting(finish, "wipefs")) is not live_added and bool(starting(finish, "mdadm")) is not live_added
