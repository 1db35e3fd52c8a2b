"""An installed Debian 12 (not a payload) on two disks comes up from either disk alone.

The install (ci/installed.py) is the README's installer example, run as written in a guest: the
four hooks through the Python API, with the installer's own steps between them (a RAID1 root on
partition 2 of both disks, Debian from mmdebstrap unpacked in two parts), then update-grub.
Before it, in the same guest, two disks that report one serial and two loop devices on one
image file are refused. Then OVMF boots the disks with the install's NVRAM: GRUB from the
mirrored ESP, the kernel and initramfs from the RAID1 root, systemd up to multi-user.target,
where a test unit prints the state to the serial port and powers off.

Boot order matters and is fixed by the fixtures: both disks, where the test unit runs what a
grub-efi-amd64 upgrade runs and the installed esp-mirror's check; disk B alone (for real: B's
arrays move ahead of A's; disk A alone boots through its own entry in tests/vm/test_install.py,
whose firmware-level boots are cheaper than a whole OS boot under TCG);
then both again, where nobody runs a command: the installed system's heal brings A's stale ESP
member back, and then the live system moves to systemd-boot and runs what systemd-boot's and a
kernel's packages run on their own.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from ci import roots
from ci.installed import (
    HEAL_ACTION,
    ROOT_FS_UUID,
    UPGRADE_ACTION,
    Installed,
    InstalledBoot,
    boot_installed,
    build_target_archives,
    install,
)
from ci.measure import measurements
from ci.vm import (
    ESP_OFFSET,
    Assets,
    fresh_vars,
    list_member,
    partition_uuid,
    read_member,
)
from esp_mirror_plugin import __version__

pytestmark = [pytest.mark.vm, pytest.mark.installed]


@dataclass(frozen=True)
class Scenario:
    work: Path
    disks: list[Path]  # disk-a.img, disk-b.img
    nvram: Path  # the NVRAM the install left: one entry per disk
    result: Installed


@pytest.fixture(scope="module")
def installed(vm_assets: Assets, module_dir: Path, request: pytest.FixtureRequest) -> Scenario:
    measured = measurements(request.config)
    root = roots.ensure_root(roots.INITRAMFS_TOOLS)
    measured.record(
        "root build",
        "initramfs-tools (mmdebstrap)",
        root.build_seconds,
        "built now" if root.built_now else "cached, built earlier",
    )
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
    readme = result.phases["update_grub"] - result.phases["pre_partition"]
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


def _step_seconds(result: Installed, command: str) -> float:
    lines = result.sections["install"].splitlines()
    index = next(i for i, line in enumerate(lines) if command in line and "] chroot " in line)
    return float(re.search(r"\(([\d.]+) s\)", lines[index + 1]).group(1))


def _boot(scenario: Scenario, name: str, disks: list[Path], **kwargs) -> InstalledBoot:
    vars_file = shutil.copyfile(scenario.nvram, scenario.work / f"{name}-vars.fd")
    return boot_installed(disks, vars_file, scenario.work, name=name, **kwargs)


@pytest.fixture(scope="module")
def both_disks(installed: Scenario, vm_assets: Assets, request: pytest.FixtureRequest) -> InstalledBoot:
    boot = _boot(installed, "both", installed.disks, assets=vm_assets, action=UPGRADE_ACTION)
    _record(request, "both disks", boot)
    measured = measurements(request.config)
    for section, what in (("upgrade", "dpkg-reconfigure grub-efi-amd64 (the upgrade's postinst)"),
                          ("installed-check", "esp-mirror check, the installed copy")):  # fmt: skip
        seconds = _seconds(boot.section(section))
        if seconds is not None:
            measured.record("upgrade", what, seconds, "in the TCG guest, both disks")
    return boot


@pytest.fixture(scope="module")
def disk_b_alone(
    installed: Scenario,
    both_disks: InstalledBoot,
    vm_assets: Assets,
    request: pytest.FixtureRequest,
) -> InstalledBoot:
    boot = _boot(installed, "b-alone", installed.disks[1:], assets=vm_assets)  # for real: B moves ahead
    _record(request, "disk B alone", boot, both_disks)
    return boot


@pytest.fixture(scope="module")
def reattached(
    installed: Scenario, disk_b_alone: InstalledBoot, vm_assets: Assets, request: pytest.FixtureRequest
) -> InstalledBoot:
    boot = _boot(installed, "reattached", installed.disks, assets=vm_assets, action=HEAL_ACTION)
    _record(request, "both again, heal", boot)
    measured = measurements(request.config)
    healthy = re.search(r"^healthy after multi-user: (-?[\d.]+) s$", boot.section("heal"), re.MULTILINE)
    if healthy:
        measured.record("heal", "stale ESP member: esp-mirror status healthy, after multi-user.target",
                        float(healthy.group(1)), "no command run; 512 MiB ESP, no bitmap (full copy)")  # fmt: skip
    sdboot = boot.section("sdboot")
    for label, what in (("apply", "esp-mirror apply --bootloader systemd-boot, on the live system"),
                        ("update", "systemctl restart systemd-boot-update.service (bootctl update)"),
                        ("kernel hook", "/etc/kernel/postinst.d/zz-systemd-boot (kernel-install add)")):  # fmt: skip
        found = re.search(rf"^{label} exit \d+ seconds ([\d.]+)$", sdboot, re.MULTILINE)
        if found:
            measured.record("upgrade", what, float(found.group(1)), "in the TCG guest, both disks")
    return boot


def _seconds(text: str) -> float | None:
    found = re.search(r"^seconds ([\d.]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


def _record(
    request: pytest.FixtureRequest, what: str, boot: InstalledBoot, baseline: InstalledBoot | None = None
) -> None:
    measured = measurements(request.config)
    times = boot.times()
    measured.record("boot", f"{what}: power on to power off (host)", boot.seconds, str(boot.serial_log))
    if "MultiUser" in times:
        measured.record("boot", f"{what}: kernel start to multi-user.target", times["MultiUser"])
    if baseline is not None and "MultiUser" in times and "MultiUser" in baseline.times():
        measured.record(
            "degraded boot",
            f"{what}: multi-user.target later than with both disks",
            times["MultiUser"] - baseline.times()["MultiUser"],
        )
        started, usual = _arrays_started(boot), _arrays_started(baseline)
        if started and usual:
            measured.record(
                "degraded boot",
                f"{what}: initramfs waited for the missing member",
                started - usual,
                f"arrays started (degraded) at {started:.1f} s after kernel start, with both disks at {usual:.1f} s",
            )


def _arrays_started(boot: InstalledBoot) -> float | None:
    """Kernel time at which md started the last of the arrays (from dmesg)."""
    found = re.findall(r"\[\s*([\d.]+)\] md/raid1:md\d+: active with \d out of 2 mirrors", boot.section("md-kernel"))
    return max(map(float, found)) if found else None


def _booted_entry(boot: InstalledBoot) -> str:
    """The label of the entry the firmware started (BootCurrent), from efibootmgr in the system."""
    text = boot.section("efibootmgr")
    current = re.search(r"^BootCurrent: (\w{4})$", text, re.MULTILINE).group(1)
    return re.search(rf"^Boot{current}\*? (.+?)(\t.*)?$", text, re.MULTILINE).group(1)


def _assert_multi_user_with_esp_from_md(boot: InstalledBoot) -> None:
    assert boot.section("multi-user").strip() == "active", boot.serial_log
    source, fstype, _options = boot.section("esp-mount").split()
    assert re.fullmatch(r"/dev/md\d+", source) and fstype == "vfat", f"/boot/efi from {source}: {boot.serial_log}"
    assert boot.section("root-mount").split()[0].startswith("/dev/md"), boot.section("root-mount")
    detail = boot.detail("esp")
    assert (detail["MD_LEVEL"], detail["MD_METADATA"], detail["MD_NAME"]) == ("raid1", "1.0", "any:esp")


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


# --- the boots -------------------------------------------------------------------------------


def test_both_disks_boot_to_multi_user_with_both_members_active(both_disks: InstalledBoot) -> None:
    _assert_multi_user_with_esp_from_md(both_disks)
    for array in ("esp", "root"):
        assert "[2/2] [UU]" in both_disks.mdstat_line(array), both_disks.section("mdstat")
    assert both_disks.section("failed").strip() == "", both_disks.section("failed")


def test_disk_b_alone_boots_to_multi_user_with_the_esp_degraded(
    installed: Scenario, both_disks: InstalledBoot, disk_b_alone: InstalledBoot
) -> None:
    boot = disk_b_alone
    _assert_multi_user_with_esp_from_md(boot)
    # the only disk attached is the first virtio disk; its member keeps its role (B is slot 1)
    for array, slot in (("esp", "[_U]"), ("root", None)):
        line = boot.mdstat_line(array)
        assert "[2/1]" in line and (slot is None or slot in line), boot.section("mdstat")
    # the firmware started this disk's own entry
    assert _booted_entry(boot) == "Debian (esp-mirror espvm-B)", boot.section("efibootmgr")
    # boot did not hang on the missing member: multi-user came within the ESP's fstab timeout
    # (45 s) plus what the initramfs waits for the degraded root (Debian: 2/3 of 30 s)
    baseline = both_disks.times()["MultiUser"]
    assert boot.times()["MultiUser"] - baseline < 45 + 20 + 15, (boot.times(), baseline)


# --- the machine's life: an upgrade, a stale member, systemd-boot and a kernel -------------------


def test_the_install_put_this_esp_mirror_on_the_installed_system(
    installed: Scenario, both_disks: InstalledBoot
) -> None:
    install = installed.result.sections["install"]
    assert "[installed-system] install /target/usr/local/sbin/esp-mirror (mode 0755)" in install, install
    assert both_disks.section("installed-version").strip() == f"esp-mirror {__version__}"


def test_a_grub_upgrade_keeps_nvram_refreshes_the_fallback_and_members_stay_equal(both_disks: InstalledBoot) -> None:
    upgrade = both_disks.section("upgrade")
    assert upgrade.startswith("exit 0\n"), upgrade
    assert "Installing for x86_64-efi platform." in upgrade and "Installation finished. No error reported." in upgrade
    assert "nvram unchanged" in upgrade, upgrade  # the entry set and BootOrder as esp-mirror made them
    assert "fallback is the loader" in upgrade, upgrade  # \EFI\BOOT\BOOTX64.EFI is the new GRUB
    debconf = both_disks.section("debconf")
    assert re.search(r"grub2/update_nvram: false", debconf) and re.search(r"force_efi_extra_removable: true", debconf)
    check = both_disks.section("installed-check")
    assert "exit 0" in check and "member files: identical" in check and "mismatch_cnt 0" in check, check
    assert both_disks.section("failed").strip() == "", both_disks.section("failed")


def test_a_stale_member_is_healed_by_itself_within_a_minute_of_multi_user(reattached: InstalledBoot) -> None:
    _assert_multi_user_with_esp_from_md(reattached)
    # disk B ran alone last: both arrays started without A's stale members (md kicks them, or
    # incremental assembly leaves them out); nobody ran a command since
    kernel = reattached.section("md-kernel")
    assert len(re.findall(r"md/raid1:md\d+: active with 1 out of 2 mirrors", kernel)) == 2, kernel
    heal = reattached.section("heal")
    healthy = float(re.search(r"^healthy after multi-user: (-?[\d.]+) s$", heal, re.MULTILINE).group(1))
    assert healthy <= 60, heal
    status = reattached.section("status")
    assert status.rstrip().endswith("healthy\nexit 0"), status
    event = r"^last event: \S+ healed at boot: /dev/vda1 \(/dev/vda\) back in /dev/md/esp"
    assert re.search(event, status, re.MULTILINE), status
    assert "[2/2] [UU]" in reattached.mdstat_line("esp", after=True), reattached.section("mdstat-after")
    assert reattached.detail("esp", after=True).get("MD_DEVICES") == "2"
    # heal touched the ESP's array only: the root array's stale member is not its business
    journal = reattached.section("heal-journal")
    assert "/dev/md/esp" in journal and "md/root" not in journal and "vda2" not in journal, journal


def test_systemd_boot_updates_and_kernel_install_work_on_the_md_esp(reattached: InstalledBoot) -> None:
    sdboot = reattached.section("sdboot")
    assert "environment: SYSTEMD_RELAX_ESP_CHECKS=1" in sdboot, sdboot  # services get it (system.conf.d)
    assert re.search(r"^apply exit 0 ", sdboot, re.MULTILINE), sdboot
    assert re.search(r"^update exit 0 ", sdboot, re.MULTILINE), sdboot
    assert "sd-boot updated" in sdboot and "fallback updated" in sdboot, sdboot
    assert re.search(r"^kernel hook exit 0 ", sdboot, re.MULTILINE), sdboot
    files = re.search(r"^kernel files: (.*)$", sdboot, re.MULTILINE).group(1).split()
    # kernel-install's BLS layout on the ESP: $ESP/<machine-id>/<kver>/linux and Debian's initrd name
    assert any(f.endswith("/linux") for f in files), sdboot
    assert any(re.search(r"/initrd(\.img-[^/]+)?$", f) for f in files), sdboot
    assert re.search(r"^entries: \S+\.conf", sdboot, re.MULTILINE), sdboot
    check = reattached.section("sdboot-check")
    assert "exit 0" in check and "member files: identical" in check and "mismatch_cnt 0" in check, check
