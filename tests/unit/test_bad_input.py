"""Bad input: exit code 2, one line naming the problem and the fix, and nothing changed.

Every refusal is checked for ``plan`` and for ``apply --yes`` (the one that would do damage):
the runner may have seen only read-only probes, and no file in the target may differ.
"""

from __future__ import annotations

import io
import json

import pytest
from conftest import GIB, MIB, USER_FSTAB, Machine, ToolsExcept, assert_only_read, json_commands, starting

from esp_mirror_plugin.pipeline.bootloaders import BootloaderKind

ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"


def two(m: Machine, sector_b: int = 512, size: int = 20 * GIB) -> None:
    m.add_disk("sda", serial="A", size=size)
    m.add_disk("sdb", serial="B", size=size, sector=sector_b)


# Each case builds the machine and returns (arguments after the command, the exact message).


def one_disk_without_degraded(m):
    two(m)
    return m.args("/dev/sda"), (
        "only one disk given (/dev/sda): a mirror needs 2 to 8; add another --disk, "
        "or pass --degraded to build a one-disk mirror to grow later"
    )


def nine_disks(m):
    for letter in "abcdefghi":
        m.add_disk(f"sd{letter}")
    return m.args(), "9 disks given: esp-mirror mirrors 2 to 8 disks; pass fewer --disk"


def same_disk_twice(m):
    two(m)
    return m.args("/dev/sda", "/dev/sda"), "disk /dev/sda is the same device as /dev/sda: list each disk once"


def same_disk_by_id_and_by_name(m):
    two(m)
    m.link("/dev/disk/by-id/ata-WDC_WD10EZEX_WD-A", "/dev/sda")
    return (
        m.args("/dev/sda", "/dev/disk/by-id/ata-WDC_WD10EZEX_WD-A"),
        "disk /dev/disk/by-id/ata-WDC_WD10EZEX_WD-A is the same device as /dev/sda: list each disk once",
    )


def same_image_through_a_symlink(m):
    m.add_image("a.img")
    m.link("/images/alias.img", "/images/a.img")
    return (
        m.args("/images/a.img", "/images/alias.img"),
        "disk /images/alias.img is the same device as /images/a.img: list each disk once",
    )


def nonexistent_disk(m):
    two(m)
    return m.args("/dev/sda", "/dev/sdz"), "disk /dev/sdz does not exist: check the path (lsblk lists disks)"


def partition_instead_of_disk(m):
    two(m)
    m.add_partition(m.disks["/dev/sda"], 1, 2048, 409600)
    return m.args("/dev/sda1", "/dev/sdb"), (
        "/dev/sda1 is a partition, not a whole disk: pass the disk it is on "
        "(esp-mirror creates the ESP partition itself)"
    )


def disk_with_mounted_partition(m):
    two(m)
    m.add_partition(m.disks["/dev/sdb"], 1, 2048, 409600)
    m.mount(m.partition_devnum(m.disks["/dev/sdb"], 1), "/srv/data", "xfs", "/dev/sdb1")
    return m.args(), (
        "disk /dev/sdb has no ESP partition and no room for one of 512 MiB at 1 MiB: sdb1 (200 MiB, Linux file "
        "system (8300), no file system blkid knows, mounted at /srv/data) is there, and esp-mirror never moves a "
        "partition in use; choose another disk"
    )


def active_md_member(m):
    two(m)
    m.add_partition(
        m.disks["/dev/sdb"], 1, 2048, 409600, type_guid="A19D880F-05FC-4D3B-A006-743F0F84911E", holders=("md0",)
    )
    return m.args(), (
        "disk /dev/sdb has no ESP partition and no room for one of 512 MiB at 1 MiB: sdb1 (200 MiB, Linux RAID "
        "(FD00), no file system blkid knows, in use by md0) is there, and esp-mirror never moves a partition in "
        "use; choose another disk"
    )


def lvm_physical_volume(m):
    m.add_disk("sda")
    m.add_disk(
        "sdb",
        whole={
            "UUID": "dU3ZgS-hYcE-Y1bX-2Ghb-3kpN-YjL3-6aKbZq",
            "VERSION": "LVM2 001",
            "TYPE": "LVM2_member",
            "USAGE": "raid",
        },
    )
    return m.args(), (
        "disk /dev/sdb holds an LVM physical volume: make sure it is unused, then pass --wipe to erase it"
    )


def active_swap(m):
    two(m)
    m.add_partition(
        m.disks["/dev/sdb"],
        2,
        2048,
        16777216,
        type_guid="0657FD6D-A4AB-43C4-84E5-0933C84B4F4F",
        probe={"TYPE": "swap", "UUID": "5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9"},
    )
    m.add_swap("/dev/sdb2")
    return m.args(), (
        "disk /dev/sdb has no ESP partition and no room for one of 512 MiB at 1 MiB: sdb2 (8 GiB, Linux swap "
        "(8200), swap space, active swap) is there, and esp-mirror never moves a partition in use; choose another disk"
    )


def disk_holding_the_running_root(m):
    two(m)
    m.add_partition(m.disks["/dev/sda"], 2, 2048, 16777216)
    m.set_root(m.partition_devnum(m.disks["/dev/sda"], 2), "/dev/sda2")
    return m.args(), (
        "disk /dev/sda has no ESP partition and no room for one of 512 MiB at 1 MiB: sda2 (8 GiB, Linux file "
        "system (8300), no file system blkid knows, holds the running root filesystem) is there, and esp-mirror "
        "never moves a partition in use; choose another disk"
    )


def disk_under_the_running_root_on_lvm(m):
    two(m)
    m.add_partition(
        m.disks["/dev/sda"], 2, 2048, 16777216, type_guid="E6D6D379-F507-44C2-A23C-238F2A3DF928", holders=("dm-0",)
    )
    return m.args(), (
        "disk /dev/sda has no ESP partition and no room for one of 512 MiB at 1 MiB: sda2 (8 GiB, Linux LVM "
        "(8E00), no file system blkid knows, in use by dm-0) is there, and esp-mirror never moves a partition in "
        "use; choose another disk"
    )


def different_sector_sizes(m):
    two(m, sector_b=4096)
    return m.args(), (
        "disks have different logical sector sizes (/dev/sda=512, /dev/sdb=4096): a RAID1 ESP "
        "needs members with one sector size; pick matching disks"
    )


def esp_too_small_for_fat32_at_512(m):
    two(m)
    return [*m.args(), "--esp-size", "33M"], (
        "ESP size 33 MiB is too small for FAT32 with 512-byte sectors: use --esp-size 34M or more"
    )


def esp_too_small_for_fat32_at_4096(m):
    m.add_disk("sda", sector=4096)
    m.add_disk("sdb", sector=4096)
    return [*m.args(), "--esp-size", "257M"], (
        "ESP size 257 MiB is too small for FAT32 with 4096-byte sectors: use --esp-size 258M or more"
    )


def esp_larger_than_the_disk(m):
    two(m, size=1 * GIB)
    return [*m.args(), "--esp-size", "1G"], (
        "ESP of 1 GiB does not fit on /dev/sda (1 GiB): use --esp-size 1022M or less"
    )


def esp_size_in_terabytes(m):
    two(m)
    return [*m.args(), "--esp-size", "100T"], (
        "ESP of 100 TiB does not fit on /dev/sda (20 GiB): use --esp-size 20478M or less"
    )


def esp_size_not_in_whole_mib(m):
    two(m)
    return [*m.args(), "--esp-size", "1537K"], (
        "--esp-size 1537K is not a whole number of MiB (partitions are aligned to 1 MiB): use e.g. 512M"
    )


def disk_too_small_for_any_esp(m):
    two(m, size=16 * MIB)
    return [*m.args(), "--esp-size", "34M"], "ESP of 34 MiB does not fit on /dev/sda (16 MiB): use a larger disk"


def metadata(version):
    def case(m):
        two(m)
        return [*m.args(), "--metadata", version], (
            f"metadata {version} is not supported: the ESP must use md metadata 1.0 (superblock at the end, "
            "so firmware sees a plain FAT32); drop --metadata"
        )

    case.__name__ = f"metadata_{version.replace('.', '_')}"
    return case


def missing_tool(profile, tool, hint, where=""):
    def case(m):
        two(m)
        m.runner.tools = ToolsExcept(tool)
        message = f"{tool} is not installed{where.format(m=m)}: install it with `{hint}`"
        return [*m.args(), "--profile", profile], message

    case.__name__ = f"missing_{tool}_on_{profile}"
    return case


def unknown_profile(m):
    two(m)
    return [*m.args(), "--profile", "slackware"], (
        "unknown profile 'slackware': use one of alpine, arch, debian, fedora, gentoo, opensuse, rhel, ubuntu, void "
        "or a path to a YAML file (see `esp-mirror profiles`)"
    )


def missing_efi_image(kind):
    def case(m):
        two(m)
        return [*m.args(), "--bootloader", kind], (
            f"bootloader {kind} needs the EFI image to install: pass --efi-image PATH"
        )

    case.__name__ = f"{kind.replace('-', '_')}_without_efi_image"
    return case


def efi_image_that_does_not_exist(m):
    two(m)
    return [*m.args(), "--bootloader", "efi", "--efi-image", "/nonexistent/linux.efi"], (
        "EFI image /nonexistent/linux.efi does not exist: pass the path of an EFI binary"
    )


def efi_image_that_is_a_directory(m):
    two(m)
    (m.root / "payload").mkdir()
    return [*m.args(), "--bootloader", "efi", "--efi-image", str(m.root / "payload")], (
        f"EFI image {m.root}/payload is a directory, not an EFI image: give the file"
    )


def config_file_that_is_a_directory(m):
    two(m)
    return [*m.args(), "--config", str(m.target / "etc")], (
        f"config file {m.target}/etc is a directory, not a YAML file: give the file"
    )


def profile_file_that_is_a_directory(m):
    two(m)
    return [*m.args(), "--profile", str(m.target / "etc")], (
        f"profile file {m.target}/etc is a directory, not a YAML file: give the file"
    )


def expect_plan_that_is_not_a_digest(m):
    two(m)
    return ["--expect-plan", "abc", *m.args()], (
        "--expect-plan 'abc' is not a plan digest (64 hexadecimal digits): copy the digest line of "
        "`esp-mirror plan` (or plan --json's digest)"
    )


def existing_partition_table_without_wipe(m):
    m.add_disk("sda")
    sdb = m.add_disk("sdb", pttype="dos", whole={"PTUUID": "c3564199", "PTTYPE": "dos"})
    m.add_partition(sdb, 1, 2048, 2097152)
    return m.args(), (
        "disk /dev/sdb holds an MBR (dos) partition table: make sure it is unused, then pass --wipe to erase it"
    )


def fstab_already_mounting_the_esp(m):
    two(m)
    with open(m.target / "etc/fstab", "a") as fstab:
        fstab.write("UUID=ABCD-1234  /boot/efi  vfat  umask=0077  0  1\n")
    return m.args(), (
        f"{m.target}/etc/fstab already mounts /boot/efi: 'UUID=ABCD-1234  /boot/efi  vfat  "
        "umask=0077  0  1'; remove or comment out that line, esp-mirror adds its own"
    )


def esp_mountpoint_mounted_from_elsewhere(m):
    two(m)
    m.mount("8:33", f"{m.target}/boot/efi", "vfat", "/dev/sdc1")
    esp = f"{m.target}/boot/efi"
    return m.args(), (
        f"{esp} is already mounted from /dev/sdc1: unmount it first (umount {esp}); esp-mirror mounts /dev/md/esp there"
    )


def disks_mixed_with_image_files(m):
    m.add_disk("sda")
    m.add_image("b.img")
    return m.args(), "mix of block devices and image files: give only disks, or only image files"


def label_too_long_for_fat(m):
    two(m)
    return [*m.args(), "--label", "EFI-SYSTEM-MIRROR"], (
        "label 'EFI-SYSTEM-MIRROR' is not a valid FAT label: FAT labels are at most 11 ASCII characters; use e.g. ESP"
    )


def esp_size_that_is_not_a_size(m):
    two(m)
    return [*m.args(), "--esp-size", "lots"], "command line: esp-size 'lots' is not a size: use e.g. 512M or 1G"


def target_that_is_not_a_directory(m):
    two(m)
    return [*m.disk_args("/dev/sda", "/dev/sdb"), "--target", str(m.root / "nowhere")], (
        f"target {m.root}/nowhere is not a directory: pass the root of the system being installed (default /)"
    )


def array_name_taken_by_another_array(m):
    two(m)
    m.add_array("/dev/md/esp", "md126", uuid="11111111:22222222:33333333:44444444", members=("/dev/sdc1", "/dev/sdd1"))
    return m.args(), (
        "/dev/md/esp already exists and is not on these disks: pass --array-name NAME to choose another name"
    )


BOTH = ("plan", "apply")


# -- names that would break later ----------------------------------------------------------------


def label_with_a_character_fat_refuses(m):
    two(m)
    return [*m.args(), "--label", "ESP*1"], (
        "label 'ESP*1' is not a valid FAT label: FAT labels cannot contain *; use e.g. ESP"
    )


def lower_case_label(m):
    two(m)
    return [
        *m.args(),
        "--label",
        "esp",
    ], "label 'esp' is not a valid FAT label: FAT labels are upper case; use e.g. ESP"


def loader_id_that_is_a_path(m):
    two(m)
    return [*m.args(), "--loader-id", "bad/id"], (
        "loader id 'bad/id' is not one directory name under \\EFI\\: it contains /; use e.g. debian"
    )


def metrics_dir_that_is_relative(m):
    two(m)
    return [*m.args(), "--metrics-dir", "node-exporter"], (
        "metrics dir 'node-exporter' must be an absolute path of letters, digits and ._+,:@=/- "
        "(no spaces or quotes): use e.g. /var/lib/prometheus/node-exporter"
    )


def metrics_dir_with_a_space(m):
    two(m)
    return [*m.args(), "--metrics-dir", "/var/lib/node exporter"], (
        "metrics dir '/var/lib/node exporter' must be an absolute path of letters, digits and ._+,:@=/- "
        "(no spaces or quotes): use e.g. /var/lib/prometheus/node-exporter"
    )


# -- the same storage under two names ------------------------------------------------------------


def two_loop_devices_on_one_image_file(m):
    m.add_image("a.img")
    m.add_disk("loop0", backing_file="/images/a.img")
    m.add_disk("loop1", backing_file="/images/a.img")
    return m.args("/dev/loop0", "/dev/loop1"), (
        "disk /dev/loop1 is the same storage as /dev/loop0 (both are the same image file): list each image once "
        "(detach the extra loop device with losetup --detach)"
    )


def an_image_file_and_its_own_loop_device(m):
    m.add_image("a.img")
    m.add_disk("loop0", backing_file="/images/a.img")
    return m.args("/images/a.img", "/dev/loop0"), (
        "disk /dev/loop0 is the same storage as /images/a.img (both are the same image file): list each image "
        "once (detach the extra loop device with losetup --detach)"
    )


MULTIPATH_FIX = (
    "multipath or dual-path SAS shows one disk under two names; pass each physical disk once "
    "(lsblk -o NAME,WWN,SERIAL shows which names share a disk)"
)


def two_paths_to_one_sas_disk(m):
    m.add_disk("sda", serial="ZA1B2C3D", wwid="naa.5000c500a1b2c3d4")
    m.add_disk("sdb", serial="ZA1B2C3D", wwid="naa.5000c500a1b2c3d4")
    return m.args(), f"disk /dev/sdb is the same storage as /dev/sda (same WWN naa.5000c500a1b2c3d4): {MULTIPATH_FIX}"


def two_disks_reporting_one_serial(m):
    m.add_disk("vda", serial="espvm-A")
    m.add_disk("vdb", serial="espvm-A")
    return m.args(), f"disk /dev/vdb is the same storage as /dev/vda (same serial number espvm-A): {MULTIPATH_FIX}"


# -- what apply would trip on after the disks were changed ----------------------------------------


def target_without_mdadm(profile, fix):
    def case(m):
        two(m)
        (m.target / "usr/sbin/mdadm").unlink()
        return [*m.args(), "--profile", profile], (
            f"mdadm is not installed in the target {m.target}, so the installed system could not assemble the "
            f"mirrored ESP at boot: install it with `{fix}`"
        )

    case.__name__ = f"{profile}_target_without_mdadm"
    return case


def fedora_target_without_raid_check_timer(m):
    two(m)
    (m.target / "usr/lib/systemd/system/raid-check.timer").unlink()
    return [*m.args(), "--profile", "fedora"], (
        f"the unit raid-check.timer is not installed in the target {m.target}, so `systemctl enable "
        "raid-check.timer` would fail after the disks were changed: install the package that ships it, or use a "
        "profile without it"
    )


def gentoo_target_without_the_mdraid_service(m):
    two(m)
    (m.target / "etc/init.d/mdraid").unlink()
    return [*m.args(), "--profile", "gentoo"], (
        f"the OpenRC service mdraid is not installed in the target {m.target} (no /etc/init.d/mdraid), so "
        "`rc-update add mdraid` would fail: install the package that ships it first"
    )


BROKEN_BLOCK = "# BEGIN esp-mirror (managed block: esp-mirror rewrites what is between these lines)\nfoo\n"


def broken_block_in_mkinitfs_conf(m):
    two(m)
    (m.target / "etc/mkinitfs").mkdir()
    (m.target / "etc/mkinitfs/mkinitfs.conf").write_text('features="ata base"\n' + BROKEN_BLOCK)
    return [*m.args(), "--profile", "alpine"], (
        f"{m.target}/etc/mkinitfs/mkinitfs.conf has '# BEGIN esp-mirror (managed block: esp-mirror rewrites what "
        "is between these lines)' without '# END esp-mirror': repair the file by hand"
    )


def broken_block_in_mkinitcpio_conf(m):
    two(m)
    profile = m.root / "arch-old.yaml"
    profile.write_text("extends: arch\ninitramfs:\n  dropin_dir: false\n")
    (m.target / "etc/mkinitcpio.conf").write_text(
        "HOOKS=(base udev block filesystems)\n" + BROKEN_BLOCK * 2 + "# END esp-mirror\n"
    )
    return [*m.args(), "--profile", str(profile)], (
        f"{m.target}/etc/mkinitcpio.conf has 2 blocks marked '# BEGIN esp-mirror (managed block: esp-mirror "
        "rewrites what is between these lines)': keep one, delete the others"
    )


def fstab_that_is_not_utf8(m):
    two(m)
    (m.target / "etc/fstab").write_bytes(b"# Ger\xe4te\n" + USER_FSTAB.encode())
    return m.args(), (
        f"{m.target}/etc/fstab is not UTF-8 text (byte 5): esp-mirror edits text files only; "
        "convert it (iconv -t UTF-8) and run again"
    )


def mdadm_conf_that_is_a_directory(m):
    two(m)
    (m.target / "etc/mdadm/mdadm.conf").mkdir(parents=True)
    return m.args(), (
        f"{m.target}/etc/mdadm/mdadm.conf is a directory, not a file: move it away; esp-mirror writes a file there"
    )


# -- facts that cannot be read are not "nothing there" --------------------------------------------


def disk_that_cannot_be_opened(m):
    two(m)
    m.host.unreadable.add("/dev/sdb")
    return m.args(), "cannot read disk /dev/sdb (Permission denied): run esp-mirror as root"


def disk_whose_blkid_probe_is_denied(m):
    two(m)
    m.fail(("blkid", "-p", "-o", "export", "/dev/sdb"), 2, "blkid: error: /dev/sdb: Permission denied\n")
    return m.args(), "cannot read disk /dev/sdb (blkid: error: /dev/sdb: Permission denied): run esp-mirror as root"


def array_that_mdadm_cannot_read(m):
    two(m)
    m.add_array("/dev/md/esp", "md127", uuid="11111111:22222222:33333333:44444444", members=("/dev/sdc1",))
    m.fail(("mdadm", "--detail", "--export", "/dev/md/esp"), 1, "mdadm: cannot open /dev/md/esp: Permission denied\n")
    return m.args(), (
        "cannot read the array /dev/md/esp (mdadm: cannot open /dev/md/esp: Permission denied): run esp-mirror as root"
    )


# -- the disks a server really has: the ESP beside other partitions -----------------------------

RAID = "A19D880F-05FC-4D3B-A006-743F0F84911E"


def esp_partitions_of_different_sizes(m):
    two(m)
    m.add_partition(m.disks["/dev/sda"], 1, 2048, 1048576, type_guid=ESP, name="EFI system partition")
    m.add_partition(m.disks["/dev/sdb"], 1, 2048, 524288, type_guid=ESP, name="EFI system partition")
    return m.args(), (
        "the ESP partitions differ (/dev/sda: sda1 (512 MiB at 1 MiB, no file system); /dev/sdb: sdb1 (256 MiB at "
        "1 MiB, no file system)): a mirror takes ESP partitions of one size at one place on every disk; make them "
        "alike (or erase the odd one with `wipefs --all` and delete it, and esp-mirror makes partition 1), "
        "then run again"
    )


def no_room_at_1_mib(m):
    two(m)
    for path in ("/dev/sda", "/dev/sdb"):
        m.add_partition(m.disks[path], 1, 2048, 16777216, type_guid=RAID, name="root")
    return m.args(), (
        "disk /dev/sda has no ESP partition and no room for one of 512 MiB at 1 MiB (sectors 2048-1050623 are "
        "sda1's): give it an EF00 partition of that size there (sgdisk --new=1:2048:+512M --typecode=1:EF00 "
        "/dev/sda), or pass --wipe to erase the whole disk"
    )


def esp_partition_with_files(m):
    two(m)
    for path in ("/dev/sda", "/dev/sdb"):
        m.add_partition(
            m.disks[path], 1, 2048, 1048576, type_guid=ESP, probe={"TYPE": "vfat", "UUID": "ABCD-1234"},
            files=("EFI/debian/grubx64.efi", "EFI/debian/grub.cfg"),
        )  # fmt: skip
    return m.args(), (
        "disk /dev/sda's ESP partition sda1 (512 MiB at 1 MiB, a FAT with 2 files) holds files, which apply never "
        "overwrites: take it into the mirror with its files with `esp-mirror adopt`, or, if they are not needed, "
        "erase it first (`wipefs --all /dev/sda1`)"
    )


def small_esp_partition_with_files_on_small_disks(m):
    """What the partition holds is named before the default 512 MiB's room (the VM's 256 MiB disks)."""
    two(m, size=256 * MIB)
    for path in ("/dev/sda", "/dev/sdb"):
        m.add_partition(
            m.disks[path], 1, 2048, 131072, type_guid=ESP, probe={"TYPE": "vfat", "UUID": "ABCD-1234"},
            files=("grub.cfg",),
        )  # fmt: skip
    return m.args(), (
        "disk /dev/sda's ESP partition sda1 (64 MiB at 1 MiB, a FAT with 1 file) holds files, which apply never "
        "overwrites: take it into the mirror with its files with `esp-mirror adopt`, or, if they are not needed, "
        "erase it first (`wipefs --all /dev/sda1`)"
    )


def wipe_while_partition_2_is_mounted(m):
    two(m)
    root = m.add_partition(m.disks["/dev/sdb"], 2, 1050624, 16777216, probe={"TYPE": "ext4"})
    m.mount(m.partition_devnum(m.disks["/dev/sdb"], 2), "/mnt", "ext4", root)
    return [*m.args(), "--wipe"], (
        "--wipe would erase all of /dev/sdb, and the running system uses sdb2 (8 GiB, Linux file system (8300), "
        "ext4, mounted at /mnt): leave out --wipe (esp-mirror adds its ESP beside partitions in use), "
        "or free them first"
    )


def image_files_without_target(m):
    m.add_image("a.img")
    m.add_image("b.img")
    return m.disk_args("/images/a.img", "/images/b.img"), (
        "image files are not this machine's disks: pass --target ROOT, the image's root (or --target / to set up "
        "this machine's own /etc for them)"
    )


CASES = [
    (one_disk_without_degraded, BOTH),
    (nine_disks, BOTH),
    (same_disk_twice, BOTH),
    (same_disk_by_id_and_by_name, BOTH),
    (same_image_through_a_symlink, BOTH),
    (nonexistent_disk, BOTH),
    (partition_instead_of_disk, BOTH),
    (disk_with_mounted_partition, BOTH),
    (active_md_member, BOTH),
    (lvm_physical_volume, BOTH),
    (active_swap, BOTH),
    (disk_holding_the_running_root, BOTH),
    (disk_under_the_running_root_on_lvm, BOTH),
    (different_sector_sizes, BOTH),
    (esp_too_small_for_fat32_at_512, BOTH),
    (esp_too_small_for_fat32_at_4096, BOTH),
    (esp_larger_than_the_disk, BOTH),
    (metadata("0.90"), BOTH),
    (metadata("1.2"), BOTH),
    (missing_tool("debian", "sgdisk", "apt-get install --yes gdisk"), BOTH),
    (missing_tool("arch", "sgdisk", "pacman -S --needed --noconfirm gptfdisk"), BOTH),
    (missing_tool("debian", "mkfs.vfat", "apt-get install --yes dosfstools"), BOTH),
    (missing_tool("fedora", "efibootmgr", "dnf install --assumeyes efibootmgr"), BOTH),
    (
        missing_tool("debian", "grub-install", "apt-get install --yes grub-efi-amd64-bin", " in the target {m.target}"),
        BOTH,
    ),
    (
        missing_tool("arch", "mkinitcpio", "pacman -S --needed --noconfirm mkinitcpio", " in the target {m.target}"),
        BOTH,
    ),
    (unknown_profile, BOTH),
    (missing_efi_image("efi"), BOTH),
    (missing_efi_image("zfsbootmenu"), BOTH),
    (efi_image_that_does_not_exist, BOTH),
    (efi_image_that_is_a_directory, BOTH),
    (config_file_that_is_a_directory, BOTH),
    (profile_file_that_is_a_directory, BOTH),
    (expect_plan_that_is_not_a_digest, ("apply",)),
    (esp_size_in_terabytes, BOTH),
    (esp_size_not_in_whole_mib, BOTH),
    (disk_too_small_for_any_esp, BOTH),
    (existing_partition_table_without_wipe, BOTH),
    (fstab_already_mounting_the_esp, BOTH),
    (esp_mountpoint_mounted_from_elsewhere, BOTH),
    (disks_mixed_with_image_files, BOTH),
    (label_too_long_for_fat, BOTH),
    (esp_size_that_is_not_a_size, BOTH),
    (target_that_is_not_a_directory, BOTH),
    (array_name_taken_by_another_array, BOTH),
    (label_with_a_character_fat_refuses, BOTH),
    (lower_case_label, BOTH),
    (loader_id_that_is_a_path, BOTH),
    (metrics_dir_that_is_relative, BOTH),
    (metrics_dir_with_a_space, BOTH),
    (two_loop_devices_on_one_image_file, BOTH),
    (an_image_file_and_its_own_loop_device, BOTH),
    (two_paths_to_one_sas_disk, BOTH),
    (two_disks_reporting_one_serial, BOTH),
    (target_without_mdadm("debian", "apt-get install --yes mdadm"), BOTH),
    (target_without_mdadm("fedora", "dnf install --assumeyes mdadm"), BOTH),
    (fedora_target_without_raid_check_timer, BOTH),
    (gentoo_target_without_the_mdraid_service, BOTH),
    (broken_block_in_mkinitfs_conf, BOTH),
    (broken_block_in_mkinitcpio_conf, BOTH),
    (fstab_that_is_not_utf8, BOTH),
    (mdadm_conf_that_is_a_directory, BOTH),
    (disk_that_cannot_be_opened, BOTH),
    (disk_whose_blkid_probe_is_denied, BOTH),
    (array_that_mdadm_cannot_read, BOTH),
    (esp_partitions_of_different_sizes, BOTH),
    (no_room_at_1_mib, BOTH),
    (esp_partition_with_files, BOTH),
    (small_esp_partition_with_files_on_small_disks, BOTH),
    (wipe_while_partition_2_is_mounted, BOTH),
    (image_files_without_target, BOTH),
]
PARAMS = [
    pytest.param(case, command, id=f"{command}-{case.__name__}") for case, commands in CASES for command in commands
]


@pytest.mark.parametrize(("case", "command"), PARAMS)
def test_refuses_with_exit_2_a_one_line_fix_and_no_change(machine, case, command):
    machine.set_efivars(efibootmgr="BootCurrent: 0000\nBootOrder: 0000\nBoot0000* UiApp\tFvVol(x)/FvFile(y)\n")
    tail, message = case(machine)
    before = machine.target_state()
    argv = ["plan", *tail] if command == "plan" else ["apply", "--yes", *tail]

    outcome = machine.cli(*argv)

    assert (outcome.code, outcome.error) == (2, message)
    assert outcome.out == ""
    assert_only_read(outcome.calls)
    assert machine.target_state() == before


def test_refuses_apply_without_yes_when_there_is_no_terminal_to_ask(two_disks):
    before = two_disks.target_state()
    outcome = two_disks.cli("apply", *two_disks.args(), stdin=io.StringIO("yes\n"))
    assert (outcome.code, outcome.error) == (
        2,
        "apply changes disks: pass --yes to confirm (there is no terminal to ask on)",
    )
    assert_only_read(outcome.calls)
    assert two_disks.target_state() == before


def test_apply_asks_on_a_terminal_and_does_nothing_unless_told_yes(two_disks):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    before = two_disks.target_state()
    outcome = two_disks.cli("apply", *two_disks.args(), stdin=Terminal("no\n"))
    assert outcome.code == 2
    assert "Type 'yes' to carry out this plan: " in outcome.out and outcome.out.endswith("Nothing done.\n")
    assert "mdadm --create /dev/md/esp" in outcome.out  # the plan was shown before the question
    assert_only_read(outcome.calls)
    assert two_disks.target_state() == before


def test_unknown_bootloader_is_a_usage_error_in_one_line_naming_the_help(two_disks):
    """argparse's errors are bad input like any other: one line on the error stream, exit 2."""
    outcome = two_disks.cli("plan", *two_disks.args(), "--bootloader", "lilo")
    assert (outcome.code, outcome.out, outcome.calls) == (2, "", [])
    kinds = ", ".join(f"'{k}'" for k in BootloaderKind)  # 'efi', 'zfsbootmenu', 'systemd-boot', 'grub'
    assert outcome.error == (
        f"argument --bootloader: invalid choice: 'lilo' (choose from {kinds}) (see `esp-mirror plan --help`)"
    )


def test_plan_refuses_a_missing_tool_as_apply_would(two_disks):
    two_disks.runner.tools = ToolsExcept("sgdisk")
    outcome = two_disks.cli("plan", *two_disks.args())
    assert (outcome.code, outcome.error) == (
        2,
        "sgdisk is not installed: install it with `apt-get install --yes gdisk`",
    )


# -- the accepted neighbours of the refusals --------------------------------------------------


def test_degraded_with_one_disk_plans_a_two_slot_mirror_with_a_missing_member(two_disks):
    outcome = two_disks.cli("plan", "--json", *two_disks.args("/dev/sda"), "--degraded")
    assert outcome.code == 0, outcome.err
    plan = json.loads(outcome.out)
    [create] = starting(json_commands(plan), "mdadm", "--create")
    assert "--raid-devices=2" in create and create[-2:] == ("/dev/sda1", "missing")


@pytest.mark.parametrize(("sector", "size"), [(512, "34M"), (4096, "258M")])
def test_smallest_esp_that_holds_a_fat32_is_accepted(machine, sector, size):
    machine.add_disk("sda", sector=sector)
    machine.add_disk("sdb", sector=sector)
    outcome = machine.cli("plan", *machine.args(), "--esp-size", size, "--no-nvram")
    assert outcome.code == 0, outcome.err
    assert f"mkfs.vfat -F 32 -S {sector} -s 1 " in outcome.out


def test_wipe_erases_old_signatures_and_tables_before_partitioning(machine):
    machine.add_disk("sda")
    sdb = machine.add_disk("sdb", pttype="dos", whole={"PTUUID": "c3564199", "PTTYPE": "dos"})
    machine.add_partition(sdb, 1, 2048, 2097152)
    outcome = machine.cli("plan", "--json", *machine.args(), "--wipe", "--no-nvram")
    assert outcome.code == 0, outcome.err
    plan = json.loads(outcome.out)
    guid_a, guid_b = (m["partition_guid"] for m in plan["members"])
    [group] = [g for g in plan["groups"] if g["name"] == "pre_partition"]
    steps = [tuple(s["argv"]) if s["kind"] == "command" else (s["kind"], s.get("node", "")) for s in group["steps"]]
    assert steps == [
        ("sgdisk", "--zap-all", "/dev/sda"),  # a blank disk: only what a killed sgdisk may have left
        (
            "sgdisk",
            "--new=1:2048:1050623",
            "--typecode=1:EF00",
            f"--partition-guid=1:{guid_a}",
            "--change-name=1:esp-mirror",
            "/dev/sda",
        ),  # a blank disk is not wiped
        ("wait-for-partition", "/dev/sda1"),
        ("wipefs", "--all", "/dev/sdb"),
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
        ("settle", ""),  # udev has seen both new partitions
        ("wipefs", "--all", "/dev/sda1", "/dev/sdb1"),  # inside the new partitions, once both are there
    ]


def test_an_empty_gpt_is_not_foreign_and_needs_no_wipe(machine):
    machine.add_disk("sda", pttype="gpt", whole={"PTUUID": "4036c74b-6fbb-4d6d-93eb-340347341541", "PTTYPE": "gpt"})
    machine.add_disk("sdb")
    outcome = machine.cli("plan", *machine.args(), "--no-nvram")
    assert outcome.code == 0, outcome.err
    assert "--zap-all /dev/sda" not in outcome.out  # its table stays; sdb has none, so its GPT areas are cleared


def test_a_commented_out_esp_line_in_fstab_is_not_a_conflict(two_disks):
    with open(two_disks.target / "etc/fstab", "a") as fstab:
        fstab.write("#UUID=ABCD-1234  /boot/efi  vfat  umask=0077  0  1\n")
    assert two_disks.cli("plan", *two_disks.args()).code == 0


def test_an_lvm_pv_with_wipe_is_accepted_and_wiped(machine):
    machine.add_disk("sda")
    machine.add_disk("sdb", whole={"TYPE": "LVM2_member", "VERSION": "LVM2 001"})
    outcome = machine.cli("plan", *machine.args(), "--wipe", "--no-nvram")
    assert outcome.code == 0, outcome.err
    assert "wipefs --all /dev/sdb\n" in outcome.out and "sgdisk --zap-all /dev/sdb\n" in outcome.out


# -- refusals that are missing (bugs) ---------------------------------------------------------


def test_a_managed_block_without_its_end_marker_is_bad_input_naming_the_file(two_disks):
    with open(two_disks.target / "etc/fstab", "a") as fstab:
        fstab.write(
            "# BEGIN esp-mirror (managed block: esp-mirror rewrites what is between these lines)\n"
            "UUID=C982-96CB\t/boot/efi\tvfat\tumask=0077\t0\t2\n"
        )
    outcome = two_disks.cli("plan", *two_disks.args())
    assert outcome.code == 2
    assert f"{two_disks.target}/etc/fstab" in outcome.error and "# END esp-mirror" in outcome.error


def test_unreadable_nvram_is_refused_rather_than_dropping_other_entries_from_bootorder(two_disks):
    two_disks.fail(("efibootmgr", "-v"), 2, "EFI variables are not supported on this system.\n")
    outcome = two_disks.cli("plan", *two_disks.args())
    assert outcome.code == 2
    assert "efibootmgr" in outcome.error and "--no-nvram" in outcome.error


def test_a_disk_whose_blkid_probe_is_ambivalent_is_not_taken_for_a_blank_disk(machine):
    machine.add_disk("sda")
    sdb = machine.add_disk("sdb", pttype="dos")
    machine.add_partition(sdb, 1, 2048, 65536)
    machine.runner.script(
        ("blkid", "-p", "-o", "export", "/dev/sdb"),
        returncode=8,
        stderr=(
            "blkid: /dev/sdb: ambivalent result (probably more filesystems on the device, use wipefs(8) to see more "
            "details)\n"
        ),
    )
    outcome = machine.cli("plan", *machine.args(), "--no-nvram")
    assert outcome.code == 2 and "/dev/sdb" in outcome.error
    assert_only_read(outcome.calls)
