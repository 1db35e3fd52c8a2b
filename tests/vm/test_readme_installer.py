"""The README's installer example, run as written in a guest, installs a Debian 12 onto two disks;
then the firmware boots it, and a dead disk is replaced (Debian 12's proof; Debian 13's is
tests/vm/test_installed_system.py's).

The install (ci/installed.py) drives the four hooks through the Python API, with the installer's
own steps between them (a RAID1 root on partition 2 of both disks, Debian from mmdebstrap
unpacked in two parts); the bootloader hook writes GRUB's configuration, and the installer runs
nothing after the hooks. Before it, in the same guest, two disks that report one serial and two
loop devices on one image file are refused. What the install left is read back in the same guest
and from the disk images. Then the firmware boots:

1. disk A alone, then disk B alone, each through its own entry (their writes discarded);
2. disk A with a blank disk C where B was (B died): A boots degraded;
   ``esp-mirror replace --old missing --new /dev/vdb --copy-table`` gives C A's partition table
   and the ESP's member, and prints the ``mdadm --add`` line for the installer's root array,
   which the test runs as printed (the README's runbook);
3. disk C alone, through the entry replace made for it.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ci import roots
from ci.installed import (
    REPLACE_ACTION,
    ROOT_FS_UUID,
    Installed,
    InstalledBoot,
    boot_installed,
    build_target_archives,
    install,
)
from ci.measure import measurements
from ci.vm import ESP_OFFSET, Assets, blank_disk, fresh_vars, list_member, member_files, partition_uuid, read_member

pytestmark = [pytest.mark.vm, pytest.mark.installed]


@dataclass(frozen=True)
class Scenario:
    work: Path
    disks: list[Path]  # disk-a.img, disk-b.img
    nvram: Path  # the NVRAM the install left: one entry per disk
    result: Installed


@pytest.fixture(scope="module")
def installed(
    vm_assets: Assets, initramfs_tools_root: roots.Root, module_dir: Path, request: pytest.FixtureRequest
) -> Scenario:
    measured = measurements(request.config)
    root = initramfs_tools_root
    work = module_dir
    archives = build_target_archives(root, work)
    measured.record("installed system", "the root split into two archives (host)", archives.seconds)
    nvram = fresh_vars(work / "install-vars.fd", vm_assets)
    disks, result = install(work, archives, nvram, assets=vm_assets)
    assert result.guest.rc == 0, (
        f"install failed:\n{result.guest.stdout[-4000:]}\n{result.guest.stderr[-4000:]}"
        f"\nserial log: {result.guest.serial_log}"
    )
    measured.record("installed system", "install in the guest (qemu start to power off)", result.guest.seconds)
    readme = result.phases["report"] - result.phases["pre_partition"]
    measured.record(
        "installed system",
        "README install() in the guest",
        readme,
        "4 hooks; root array, ext4 and Debian unpacked between them",
    )
    for phase in ("root_filesystem", "base_system", "kernel_and_mdadm"):
        measured.record("installed system", f"installer step: {phase.replace('_', ' ')}", result.phase_seconds(phase))
    measured.record(
        "regeneration",
        "debian: update-initramfs -u -k all",
        _step_seconds(result, "update-initramfs"),
        "in the TCG guest, root on virtio md RAID1, MODULES=dep",
    )
    return Scenario(work, disks, nvram, result)


@pytest.fixture(scope="module")
def alone(installed: Scenario, vm_assets: Assets, request: pytest.FixtureRequest) -> dict[str, InstalledBoot]:
    """Each disk alone, through the entry the install made for it (writes discarded: the disks stay
    as the install left them)."""
    boots = {}
    for index, name in enumerate("ab"):
        disk = installed.disks[index : index + 1]
        boots[name], _ = _boot(installed.work, f"{name}-alone", disk, installed.nvram, vm_assets, snapshot=True)
        _record(request, f"Debian 12, disk {name.upper()} alone", boots[name])
    return boots


@dataclass(frozen=True)
class Replaced:
    boot: InstalledBoot  # disk A and the blank disk C, replace run
    disk: Path  # disk-c.img
    nvram: Path  # what replace left: A's entry and C's


@pytest.fixture(scope="module")
def replaced(
    installed: Scenario, alone: dict[str, InstalledBoot], vm_assets: Assets, request: pytest.FixtureRequest
) -> Replaced:
    new = blank_disk(installed.work / "disk-c.img", 2048)
    disks = [installed.disks[0], new]
    boot, vars_file = _boot(installed.work, "replace", disks, installed.nvram, vm_assets, action=REPLACE_ACTION)
    _record(request, "Debian 12, disk A and a blank disk: replace", boot)
    found = re.search(r"^replace exit \d+ seconds ([\d.]+)$", boot.section("replace"), re.MULTILINE)
    if found:
        measured = measurements(request.config)
        measured.record("upkeep", "replace --copy-table (the ESP whole; the root resyncs after)", float(found[1]))
    return Replaced(boot, new, vars_file)


@pytest.fixture(scope="module")
def c_alone(replaced: Replaced, vm_assets: Assets, request: pytest.FixtureRequest) -> InstalledBoot:
    boot, _ = _boot(replaced.disk.parent, "c-alone", [replaced.disk], replaced.nvram, vm_assets, snapshot=True)
    _record(request, "Debian 12, the new disk C alone", boot)
    return boot


def _boot(
    work: Path, name: str, disks: list[Path], nvram: Path, assets: Assets, **kwargs: Any
) -> tuple[InstalledBoot, Path]:
    """Boot ``disks`` with a copy of ``nvram``; the copy is returned with the boot's report."""
    vars_file = shutil.copyfile(nvram, work / f"{name}-vars.fd")
    return boot_installed(disks, vars_file, work, name=name, assets=assets, **kwargs), vars_file


def _record(request: pytest.FixtureRequest, what: str, boot: InstalledBoot) -> None:
    measured = measurements(request.config)
    measured.record("boot", f"{what}: power on to power off (host)", boot.seconds, str(boot.serial_log))
    if "MultiUser" in boot.times():
        measured.record("boot", f"{what}: kernel start to multi-user.target", boot.times()["MultiUser"])


def _booted_entry(boot: InstalledBoot) -> str:
    text = boot.section("efibootmgr-v")
    current = re.search(r"^BootCurrent: (\w{4})$", text, re.MULTILINE)
    assert current, text
    entry = re.search(rf"^Boot{current[1]}\*? (.+?)\t", text, re.MULTILINE)
    assert entry, text
    return entry[1]


def _assert_up_with_esp_from_md(boot: InstalledBoot) -> None:
    assert boot.section("multi-user").strip() == "active", boot.serial_log
    source, fstype, _options = boot.section("esp-mount").split()
    assert fstype == "vfat" and re.fullmatch(r"/dev/md\d+", source), (source, boot.serial_log)
    root_source, _root_type, root_options = boot.section("root-mount").split()
    assert root_source.startswith("/dev/md") and root_options.split(",")[0] == "rw", boot.section("root-mount")


def _step_seconds(result: Installed, command: str) -> float:
    lines = result.sections["install"].splitlines()
    index = next(i for i, line in enumerate(lines) if command in line and "] chroot " in line)
    return float(re.search(r"\(([\d.]+) s\)", lines[index + 1]).group(1))


# --- the install -----------------------------------------------------------------------------


def test_two_disks_reporting_one_serial_are_refused_and_left_as_they_were(installed: Scenario) -> None:
    sections = installed.result.sections
    assert sections["twin-serials"].split() == ["espvm-TWIN", "espvm-TWIN"]
    twins = sections["twins"]
    assert (
        "esp-mirror: error: disk /dev/vdf is the same storage as /dev/vde (same serial number espvm-TWIN)" in twins
    ), twins
    assert twins.rstrip().endswith("exit=2\nunchanged"), twins


def test_two_loop_devices_on_one_image_file_are_refused_and_left_as_they_were(installed: Scenario) -> None:
    sections = installed.result.sections
    first, second = sections["loop-devices"].split()
    loops = sections["loops"]
    assert f"esp-mirror: error: disk {second} is the same storage as {first} (both are the same image file)" in loops
    assert loops.rstrip().endswith("exit=2\nunchanged"), loops


def test_the_readme_installer_calls_the_hooks_around_its_own_steps(installed: Scenario) -> None:
    """The README's install(): each hook ran where the example puts it, and read the target then."""
    lines = installed.result.sections["install"].splitlines()
    events: list[str] = []
    for line in lines:
        hook = re.match(r"\s+\[(pre_partition|post_format|initramfs_config|bootloader|cleanup)\] ", line)
        if hook and (not events or events[-1] != hook.group(1)):
            events.append(hook.group(1))  # a hook's steps, once
        elif line.startswith("installer: "):
            events.append(line.split()[1])  # each of the installer's own commands
    assert events == [
        "pre_partition",
        "sgdisk",
        "sgdisk",
        "mdadm",
        "mkfs.ext4",
        "mount",
        "post_format",
        "tar",
        "tar",
        "initramfs_config",
        "bootloader",
        "cleanup",
    ], events
    # the bind mounts for chroot came right before the first command in the target, and went again
    install = installed.result.sections["install"]
    assert re.search(
        r"\[initramfs_config\] mount --bind /proc /target/proc\n.*\n.*\n.*\n.*\n.*\n"
        r"\s+\[initramfs_config\] chroot /target update-initramfs",
        install,
    ), install
    assert "[cleanup] umount /target/proc" in install


def test_fstab_has_exactly_one_esp_line_next_to_the_installers_root_line(installed: Scenario) -> None:
    lines = [line.split() for line in installed.result.sections["fstab"].splitlines() if line and line[0] != "#"]
    assert [line[1] for line in lines] == ["/boot/efi", "/"], lines
    assert lines[0][0] == f"UUID={_fs_uuid(installed.result.sections['esp-blkid'])}" and lines[0][2] == "vfat"
    assert lines[1][0] == f"UUID={ROOT_FS_UUID}"


def _fs_uuid(blkid: str) -> str:
    return dict(line.split("=", 1) for line in blkid.splitlines() if "=" in line)["UUID"]


def test_install_regenerates_once_and_the_image_carries_both_arrays(installed: Scenario) -> None:
    sections = installed.result.sections
    apply = sections["install"]
    assert len(re.findall(r"^\s+\[initramfs_config\] chroot /target update-initramfs", apply, re.MULTILINE)) == 1, apply
    uuid_esp, uuid_root = (_uuid(sections[f"detail-{a}"]) for a in ("esp", "root"))
    for name in ("mdadm.conf", "image-mdadm.conf"):  # the target's file, and the copy in the initramfs
        arrays = [line for line in sections[name].splitlines() if line.startswith("ARRAY ")]
        assert len(arrays) == 2 and any(uuid_esp in a for a in arrays) and any(uuid_root in a for a in arrays), name
    assert "usr/sbin/mdadm" in sections["initramfs"] and "raid1.ko" in sections["initramfs"]


def _uuid(detail: str) -> str:
    return dict(line.split("=", 1) for line in detail.splitlines() if "=" in line)["MD_UUID"]


def test_the_install_put_this_esp_mirror_on_the_installed_system(installed: Scenario) -> None:
    install = installed.result.sections["install"]
    assert "[installed-system] install /target/usr/local/sbin/esp-mirror (mode 0755)" in install, install


def test_grub_is_on_both_members_with_the_fallback_path_and_left_nvram_to_esp_mirror(installed: Scenario) -> None:
    files = installed.result.sections["esp-files"].split()
    assert {"/target/boot/efi/EFI/debian/grubx64.efi", "/target/boot/efi/EFI/BOOT/BOOTX64.EFI"} <= set(files)
    efi = installed.result.sections["efibootmgr"]
    entries = re.findall(r"^Boot[0-9A-F]{4}\* (.*?)\t", efi, re.MULTILINE)
    # grub-install ran with --no-nvram: its own "debian" entry does not exist; ours are per disk
    assert [e for e in entries if e != "UiApp"] == ["Debian (esp-mirror espvm-A)", "Debian (esp-mirror espvm-B)"], efi
    for disk in installed.disks:
        assert partition_uuid(disk) in efi.lower()
    # each member alone is a FAT with the same files: what the firmware reads from either disk
    listings = [list_member(disk, ESP_OFFSET) for disk in installed.disks]
    assert listings[0] == listings[1]
    for path in ("EFI/debian/grubx64.efi", "EFI/BOOT/BOOTX64.EFI"):
        assert read_member(installed.disks[0], ESP_OFFSET, path) == read_member(installed.disks[1], ESP_OFFSET, path)
    grub_cfg = installed.result.sections["grub.cfg"]
    assert "insmod mdraid1x" in grub_cfg  # GRUB reads the kernel from the RAID1 root
    assert f"root=UUID={ROOT_FS_UUID}" in grub_cfg  # never an md number, which the ESP array may get


# --- the firmware boots it, and a dead disk is replaced -------------------------------------------


@pytest.mark.parametrize("name", ["a", "b"])
def test_each_disk_alone_boots_through_its_own_entry_with_both_arrays_degraded(
    alone: dict[str, InstalledBoot], name: str
) -> None:
    boot = alone[name]
    _assert_up_with_esp_from_md(boot)
    assert _booted_entry(boot) == f"Debian (esp-mirror espvm-{name.upper()})"
    for array in ("esp", "root"):
        assert "[2/1]" in boot.mdstat_line(array), boot.section("mdstat")


def test_replace_gives_the_new_disk_the_table_the_esp_member_and_the_roots_member(
    replaced: Replaced, installed: Scenario
) -> None:
    boot = replaced.boot
    _assert_up_with_esp_from_md(boot)
    assert _booted_entry(boot) == "Debian (esp-mirror espvm-A)"  # A alone, before the replacement
    section = boot.section("replace")
    assert re.search(r"^replace exit 0 ", section, re.MULTILINE), section
    assert re.search(r"^root before: +State : \S+, degraded", section, re.MULTILINE), section
    added = r"^run: mdadm /dev/md\S+ --add /dev/vdb2\nmdadm: added /dev/vdb2\nexit 0$"  # the printed line, run
    assert re.search(added, section, re.MULTILINE), section
    assert re.search(r"^root after: +State : (clean|active) *$", section, re.MULTILINE), section
    assert "root members: /dev/vda2 /dev/vdb2 \n" in section, section
    assert "healthy\nstatus exit 0" in section, section
    # the same partitions (number, first and last sector, type), on a disk of its own (a new GUID)
    tables = dict(re.findall(r"^(vd[ab]): (.*)$", section, re.MULTILINE))
    assert tables["vda"] == tables["vdb"] and tables["vda"].count(";") == 2, tables
    guids = dict(re.findall(r"^(vd[ab]) guid: (\S+)$", section, re.MULTILINE))
    assert guids["vda"] != guids["vdb"], guids
    # NVRAM: A's entry and the new disk's; none for the disk that died
    entries = re.findall(r"^Boot[0-9A-F]{4}\* (Debian \(esp-mirror espvm-\w\))\t", section, re.MULTILINE)
    assert sorted(entries) == ["Debian (esp-mirror espvm-A)", "Debian (esp-mirror espvm-C)"], section
    a, c = (member_files(disk, ESP_OFFSET) for disk in (installed.disks[0], replaced.disk))
    assert a == c and "EFI/BOOT/BOOTX64.EFI" in a


def test_the_new_disk_alone_boots_through_the_entry_replace_made(c_alone: InstalledBoot) -> None:
    _assert_up_with_esp_from_md(c_alone)
    assert _booted_entry(c_alone) == "Debian (esp-mirror espvm-C)"
    for array in ("esp", "root"):
        assert "[2/1]" in c_alone.mdstat_line(array), c_alone.section("mdstat")
