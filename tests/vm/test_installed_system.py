"""An installed Debian's life under esp-mirror, on real firmware: adopted, upgraded, booted from
each disk alone, healed, moved to systemd-boot, a kernel installed whoever runs apt.

The machine (ci/adopted.py) is what Debian's installer leaves with a RAID1 root: disk A holds the
ESP its own grub-install made (shim, the signed GRUB, its "debian" entry, its fstab line by UUID),
disk B only the root's member. Its NVRAM has Microsoft's keys enrolled: Secure Boot is enforced
in every boot through GRUB (OVMF's plain build enforces it too, without SMM; boots 2 to 4 run
its Secure Boot build). OVMF boots it through shim and GRUB, the kernel and initramfs from the
RAID1 root, and systemd up to multi-user.target, where a test unit (ci/installed.py) prints the
state to the serial port, runs the boot's action and powers off. The boots, in this order (each
later one starts from the NVRAM the adoption left, or fresh NVRAM):

1. both disks: the administrator runs the single-file esp-mirror's ``adopt``, then adopt again
   and apply with the same settings; then what upgrades of GRUB and shim run, and the installed
   esp-mirror's check;
2. disk A alone (its disk's writes discarded), 3. disk B alone, through their own entries (the
   ESP array and the root run degraded); 4. disk B alone with fresh NVRAM, through shim's
   fallback, whose entry heal folds into ours;
5. both again, where nobody runs a command: heal brings the stale ESP member back; then the live
   system moves to systemd-boot, runs what systemd-boot's package runs, installs a second kernel
   with apt from a login shell, removes it, installs it again from ``env -i chroot``, and tries a
   kernel's hooks and apt with the ESP's array stopped;
6. disk A alone and 7. disk B alone, with fresh NVRAM without keys (Debian 12's systemd-boot is
   unsigned): systemd-boot starts the second kernel.

The power cuts during an adoption, a stale ESP adopted where it is, the bytes outside the ESP
partitions and the bad input are tests/vm/test_interrupted.py's (ci/adoptable.py).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from ci import adopted, roots
from ci.installed import (
    ADOPT_ACTION,
    FALLBACK_ACTION,
    HEAL_ACTION,
    UPGRADE_ACTION,
    InstalledBoot,
    boot_installed,
    build_target_archives,
)
from ci.measure import measurements
from ci.vm import ESP_OFFSET, Assets, fresh_vars, list_member, member_files, partition_uuid, read_member
from ci.vm.assets import package_file, second_kernel_package
from esp_mirror_plugin import __version__
from esp_mirror_plugin.system import zipapp

pytestmark = [pytest.mark.vm, pytest.mark.installed]


@dataclass(frozen=True)
class Scene:
    work: Path
    machine: adopted.Machine
    nvram: Path  # what the adoption left in NVRAM: one entry per disk
    adopt: InstalledBoot  # boot 1, in which adopt ran


@pytest.fixture(scope="module")
def scene(
    vm_assets: Assets, initramfs_tools_root: roots.Root, module_dir: Path, request: pytest.FixtureRequest
) -> Scene:
    measured = measurements(request.config)
    work = module_dir
    root = initramfs_tools_root
    archives = build_target_archives(root, work)
    program = work / "esp-mirror"
    program.write_bytes(zipapp.build().data)
    # Microsoft's keys enrolled, as on a server: the boots with OVMF's Secure Boot build enforce it
    nvram = fresh_vars(work / "install-vars.fd", vm_assets, keys="ms")
    second_kernel = package_file(second_kernel_package(), vm_assets.cache_dir)
    machine = adopted.install(work, archives, program, second_kernel, nvram, assets=vm_assets)
    guest = machine.result.guest
    assert guest.rc == 0, f"{guest.stdout[-4000:]}\n{guest.stderr[-3000:]}\nserial log: {guest.serial_log}"
    measured.record("installed system", "Debian set up as its installer does (guest)", guest.seconds)
    adopted_nvram = shutil.copyfile(nvram, work / "adopted-vars.fd")  # boot 1 writes the entries here
    actions = (ADOPT_ACTION, UPGRADE_ACTION)
    boot = boot_installed(machine.disks, adopted_nvram, work, name="adopt", assets=vm_assets, action=actions)
    _record(request, "both disks, adopt and upgrade", boot)
    seconds = re.search(r"^seconds ([\d.]+)$", boot.section("adopt"), re.MULTILINE)
    if seconds:
        measured.record("adopt", "esp-mirror adopt on the running system", float(seconds.group(1)), "TCG guest")
    window = _one_copy_window(boot.section("adopt"))
    if window is not None:
        measured.record("adopt", "window with one ESP copy: the old ESP's wipe to the end of the recovery", window)
    for section, what in (("upgrade", "dpkg-reconfigure grub-efi-amd64 (the upgrade's postinst)"),
                          ("installed-check", "esp-mirror check, the installed copy")):  # fmt: skip
        found = re.search(r"^seconds ([\d.]+)$", boot.section(section), re.MULTILINE)
        if found:
            measured.record("upgrade", what, float(found.group(1)), "in the TCG guest, both disks")
    return Scene(work, machine, adopted_nvram, boot)


def _one_copy_window(log: str) -> float | None:
    """Seconds from the wipe of the old ESP to the end of the recovery onto it: the times adopt
    printed for those three steps (each step's "done (N s)" line)."""
    finish = log[log.find("] wipefs --all /dev/vda1") :]
    done = re.findall(r"^\s+\[adopt-finish\]\s+(?:done|unchanged) \(([\d.]+) s\)$", finish, re.MULTILINE)
    return sum(float(t) for t in done[:3]) if len(done) >= 3 else None


def _boot(
    scene: Scene,
    name: str,
    disks: list[Path],
    *,
    fresh: bool = False,
    keys: str = "ms",
    nvram: Path | None = None,
    **kwargs,
) -> InstalledBoot:
    """Boot with a copy of ``nvram`` (default: what the adoption left), or fresh NVRAM with ``keys``."""
    vars_file = scene.work / f"{name}-vars.fd"
    if fresh:
        fresh_vars(vars_file, keys=keys)
    else:
        shutil.copyfile(nvram or scene.nvram, vars_file)
    return boot_installed(disks, vars_file, scene.work, name=name, **kwargs)


@pytest.fixture(scope="module")
def disk_a_alone(scene: Scene, vm_assets: Assets, request: pytest.FixtureRequest) -> InstalledBoot:
    # qemu -snapshot: disk A's members stay as the adoption left them, only behind, while B's
    # boot moves B ahead for real. Were A's boot kept, A and B would each have moved on alone (a
    # split brain), and md takes a diverged member back as in step, with no copy, when its event
    # count is not below the array's: the root's ext4 then reads two histories (CI saw it go
    # read-only). (Two TCG guests side by side each take twice as long: no time is won.)
    boot = _boot(scene, "a-alone", scene.machine.disks[:1], assets=vm_assets, snapshot=True, secure_boot=True)
    _record(request, "disk A alone", boot, scene.adopt)
    return boot


@pytest.fixture(scope="module")
def disk_b_alone(
    scene: Scene, disk_a_alone: InstalledBoot, vm_assets: Assets, request: pytest.FixtureRequest
) -> InstalledBoot:
    boot = _boot(scene, "b-alone", scene.machine.disks[1:], assets=vm_assets, secure_boot=True)  # B moves ahead
    _record(request, "disk B alone", boot, scene.adopt)
    return boot


@pytest.fixture(scope="module")
def disk_b_fresh(
    scene: Scene, disk_b_alone: InstalledBoot, vm_assets: Assets, request: pytest.FixtureRequest
) -> InstalledBoot:
    # shim's fallback (fbx64.efi) makes an entry and resets the machine; then esp-mirror entries
    boot = _boot(
        scene, "b-fresh", scene.machine.disks[1:], fresh=True, assets=vm_assets, secure_boot=True, resets=1,
        action=FALLBACK_ACTION,
    )  # fmt: skip
    _record(request, "disk B alone, fresh NVRAM", boot, scene.adopt)
    return boot


@pytest.fixture(scope="module")
def reattached(
    scene: Scene, disk_b_fresh: InstalledBoot, vm_assets: Assets, request: pytest.FixtureRequest
) -> InstalledBoot:
    boot = _boot(scene, "reattached", scene.machine.disks, assets=vm_assets, action=HEAL_ACTION, timeout=1200)
    _record(request, "both again, heal", boot)
    measured = measurements(request.config)
    healthy = re.search(r"^healthy after multi-user: (-?[\d.]+) s$", boot.section("heal"), re.MULTILINE)
    if healthy:
        measured.record("heal", "stale ESP member: esp-mirror status healthy, after multi-user.target",
                        float(healthy.group(1)), "no command run; 512 MiB ESP, no bitmap (full copy)")  # fmt: skip
    sdboot = boot.section("sdboot")
    for label, what in (("apply", "esp-mirror apply --bootloader systemd-boot, on the live system"),
                        ("update", "systemctl restart systemd-boot-update.service (bootctl update)")):  # fmt: skip
        found = re.search(rf"^{label} exit \d+ seconds ([\d.]+)$", sdboot, re.MULTILINE)
        if found:
            measured.record("upgrade", what, float(found.group(1)), "in the TCG guest, both disks")
    for section, what in (("kernel-login", "apt-get install of a second kernel, from a login shell"),
                          ("kernel-remove", "apt-get remove of it, from a login shell"),
                          ("kernel-clean", "apt-get install of it, from env -i chroot")):  # fmt: skip
        found = re.search(r"^exit \d+ seconds ([\d.]+)$", boot.section(section), re.MULTILINE)
        if found:
            measured.record("upgrade", what, float(found.group(1)), "in the TCG guest, systemd-boot, both disks")
    return boot


@pytest.fixture(scope="module")
def sdboot_each_disk_alone(
    scene: Scene, reattached: InstalledBoot, vm_assets: Assets, request: pytest.FixtureRequest
) -> dict[str, InstalledBoot]:
    # Debian 12's systemd-boot is unsigned: OVMF refuses it with Microsoft's keys enrolled (its
    # plain build enforces Secure Boot too, without SMM), so these two boots run with NVRAM that
    # has no keys, fresh: the firmware starts \EFI\BOOT\BOOTX64.EFI, systemd-boot, from the disk.
    # Disk A's boot is kept, for the members compared after it; B's discards its writes
    a = _boot(scene, "sdboot-a-alone", scene.machine.disks[:1], fresh=True, keys="", assets=vm_assets)
    _record(request, "systemd-boot, disk A alone", a)
    b = _boot(scene, "sdboot-b-alone", scene.machine.disks[1:], fresh=True, keys="", assets=vm_assets, snapshot=True)
    _record(request, "systemd-boot, disk B alone", b)
    return {"a": a, "b": b}


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


def _booted_entry(boot: InstalledBoot) -> str:
    """The label of the entry the firmware started (BootCurrent), from efibootmgr in the system."""
    text = boot.section("efibootmgr")
    current = re.search(r"^BootCurrent: (\w{4})$", text, re.MULTILINE).group(1)
    return re.search(rf"^Boot{current}\*? (.+?)(\t.*)?$", text, re.MULTILINE).group(1)


def _assert_secure_boot(boot: InstalledBoot) -> None:
    """The firmware enforced Secure Boot (OVMF's Secure Boot build with Microsoft's keys) and the
    chain shim → signed GRUB → signed kernel started this system: the kernel says so too."""
    section = boot.section("secure-boot")
    assert "SecureBoot enabled" in section and "secureboot: Secure boot enabled" in section, section
    status = boot.section("status") or boot.section("fallback")
    if status:
        assert "Secure Boot: on" in status, status


def _assert_multi_user_with_esp_from_md(boot: InstalledBoot) -> None:
    assert boot.section("multi-user").strip() == "active", boot.serial_log
    mount = boot.section("esp-mount").split()
    assert len(mount) == 3, ("/boot/efi is not mounted", boot.section("md-journal"), boot.section("heal-boot"))
    source, fstype, _options = mount
    assert re.fullmatch(r"/dev/md\d+", source) and fstype == "vfat", f"/boot/efi from {source}: {boot.serial_log}"
    root_source, _root_type, root_options = boot.section("root-mount").split()
    assert root_source.startswith("/dev/md"), boot.section("root-mount")
    # a root that went read-only (ext4's errors=remount-ro) fails every later step: say why here
    assert root_options.split(",")[0] == "rw", (root_options, boot.section("fs-kernel"), boot.section("md-kernel"))
    detail = boot.detail("esp")
    assert (detail["MD_LEVEL"], detail["MD_METADATA"], detail["MD_NAME"]) == ("raid1", "1.0", "any:esp")


# --- the machine before, and the adoption in the running system ---------------------------------


def test_the_machine_starts_as_debians_installer_left_it(scene: Scene) -> None:
    sections = scene.machine.result.sections
    entries = re.findall(r"^Boot[0-9A-F]{4}\* (\S+)\t", sections["efibootmgr"], re.MULTILINE)
    assert "debian" in entries, sections["efibootmgr"]
    (esp_line,) = [line for line in sections["fstab"].splitlines() if "/boot/efi" in line]
    assert re.match(r"UUID=[0-9A-F]{4}-[0-9A-F]{4}\s", esp_line), esp_line
    assert "EFI/debian/grubx64.efi" in sections["esp-files"]
    # Debian's installer sets up the signed chain: its entry starts shim
    assert re.search(r"^Boot[0-9A-F]{4}\* debian\t.*\\EFI\\debian\\shimx64\.efi", sections["efibootmgr"], re.MULTILINE)
    # booted, before the adoption: /boot/efi is disk A's partition, no esp-mirror anywhere
    assert scene.adopt.section("esp-mount").split()[0] == "/dev/vda1", scene.adopt.section("esp-mount")


def test_adopt_runs_on_the_live_system_in_the_order_that_keeps_a_bootable_esp(scene: Scene) -> None:
    log = scene.adopt.section("adopt")
    assert log.startswith("program: /root/esp-mirror\nexit 0\n"), log[-3000:]
    # the files copied and checked before the switch, every entry made and the array's files on
    # its disks before the old ESP is wiped, the wipe before the add
    order = [
        "] tar --create",
        "] mdadm --create /dev/md/esp",
        "] verify: every directory and file of /boot/efi is in",
        "] umount /boot/efi",
        "] mount -t vfat -o umask=0077 /dev/md/esp /boot/efi",
        "] efibootmgr --quiet --create",
        "] sync --file-system /boot/efi",
        "] wipefs --all /dev/vda1",
        "] mdadm /dev/md/esp --add /dev/vda1",
    ]
    positions = [log.find(text) for text in order]
    assert -1 not in positions and positions == sorted(positions), list(zip(order, positions, strict=True))
    assert "byte for byte" in log
    assert "copies between ESPs" not in log, log  # Debian's own scripts (grub.d, kernel hooks) sync nothing
    status = scene.adopt.section("status")
    assert status.rstrip().endswith("healthy\nexit 0"), status
    assert re.search(r"^ESP: /boot/efi mounted from /dev/md\d+$", status, re.MULTILINE), status


def test_the_new_disk_gets_partition_1_and_nothing_else_of_either_table_changes(scene: Scene) -> None:
    """B's partition 1 is made in its table at 1 MiB; A's ESP keeps its partition GUID (its entry
    stays valid); the root's members, partition 2 of both disks, are where they were."""
    before = scene.machine.result.sections["gpt"].lower()
    for disk in scene.machine.disks:
        assert partition_uuid(disk, 2) in before
    assert partition_uuid(scene.machine.disks[0], 1) in before
    log = scene.adopt.section("adopt")
    made = (
        r"\] sgdisk --new=1:2048:1050623 --typecode=1:EF00 --partition-guid=1:\S+ --change-name=1:esp-mirror /dev/vdb\n"
    )
    assert re.search(made, log), log
    assert "sgdisk --zap-all" not in log and "vda2" not in log and "vdb2" not in log


def test_a_second_adopt_and_apply_with_the_same_settings_change_nothing(scene: Scene) -> None:
    again = scene.adopt.section("adopted-again")
    assert "esp-mirror adopt: nothing to adopt" in again and "adopt exit 0" in again, again
    assert "apply exit 0" in again, again
    changed = re.findall(r"^changed: (.*)$", again, re.MULTILINE)
    assert changed == [  # what always runs: GRUB's installer
        "bootloader grub-install --target=x86_64-efi --efi-directory=/boot/efi --no-nvram --bootloader-id=debian",
        "bootloader grub-install --target=x86_64-efi --efi-directory=/boot/efi --no-nvram --removable",
    ], again


def test_every_file_of_the_old_esp_is_on_every_member_and_in_the_backup(scene: Scene) -> None:
    # the sha256 of every file as Debian's installer left the ESP, checked on the mounted array
    assert scene.adopt.section("old-files").strip() == "exit 0", scene.adopt.section("old-files")
    backups = scene.adopt.section("backups")
    for name in ("efibootmgr-v.txt", "esp-vda1.tar", "fstab.lines", "gpt-vda.bin", "gpt-vdb.bin"):
        assert name in backups.split(), backups
    listings = [list_member(disk, ESP_OFFSET) for disk in scene.machine.disks]
    assert listings[0] == listings[1]
    for rel in adopted.EXTRA_FILES:
        assert f"./{rel}" in backups
        # read from each disk's member on the host, as the firmware reads it
        assert read_member(scene.machine.disks[0], ESP_OFFSET, rel) == read_member(
            scene.machine.disks[1], ESP_OFFSET, rel
        )


def test_debians_entry_is_folded_into_ours_and_fstab_has_one_esp_line(scene: Scene) -> None:
    after = scene.adopt.section("efibootmgr-after")
    labels = re.findall(r"^Boot[0-9A-F]{4}\* (.+?)\t", after, re.MULTILINE)
    firmware = ("UiApp", "EFI Internal Shell", "UEFI Misc Device")  # OVMF's own
    assert [x for x in labels if not x.startswith(firmware)] == [
        "Debian (esp-mirror espvm-A)",
        "Debian (esp-mirror espvm-B)",
    ], after
    order = re.search(r"^BootOrder: (.*)$", after, re.MULTILINE).group(1).split(",")
    numbers = {label: n for n, label in re.findall(r"^Boot([0-9A-F]{4})\* (.+?)\t", after, re.MULTILINE)}
    assert order[:2] == [numbers["Debian (esp-mirror espvm-A)"], numbers["Debian (esp-mirror espvm-B)"]]
    fstab = scene.adopt.section("fstab-after")
    live = [line for line in fstab.splitlines() if "/boot/efi" in line and not line.startswith("#")]
    assert len(live) == 1 and "nofail" in live[0], fstab
    assert re.search(r"^# esp-mirror: UUID=\S+\s+/boot/efi\s", fstab, re.MULTILINE), fstab


def test_the_adoption_put_this_esp_mirror_on_the_installed_system(scene: Scene) -> None:
    assert scene.adopt.section("installed-version").strip() == f"esp-mirror {__version__}"


def test_a_grub_upgrade_keeps_nvram_refreshes_the_fallback_and_members_stay_equal(scene: Scene) -> None:
    upgrade = scene.adopt.section("upgrade")
    assert upgrade.startswith("exit 0\n"), upgrade
    assert "Installing for x86_64-efi platform." in upgrade and "Installation finished. No error reported." in upgrade
    # from env -i chroot: no variable of a login or of systemd reached it
    assert "update-grub exit 0" in upgrade, upgrade
    assert "nvram unchanged" in upgrade, upgrade  # the entry set and BootOrder as esp-mirror made them
    # shim's postinst too (what its upgrades run), and the signed GRUB's package
    assert "shim-signed exit 0" in upgrade and "grub-efi-amd64-signed exit 0" in upgrade, upgrade
    # \EFI\BOOT holds what a boot with no entry needs: shim as BOOTX64.EFI (refreshed over a stale
    # one), its GRUB, MokManager and the fallback (fbx64.efi, put there by esp-mirror); the vendor
    # directory's BOOTX64.CSV names shim, for the entry the fallback makes
    assert "fallback is shim" in upgrade, upgrade
    for line in (
        "fallback has grubx64.efi (the loader's)",
        "fallback has mmx64.efi (shim's)",
        "fallback has fbx64.efi (shim's)",
        "csv: shimx64.efi,debian,,This is the boot entry for debian",
    ):
        assert line in upgrade, (line, upgrade)
    debconf = scene.adopt.section("debconf")
    assert re.search(r"grub2/update_nvram: false", debconf) and re.search(r"force_efi_extra_removable: true", debconf)
    check = scene.adopt.section("installed-check")
    assert "exit 0" in check and "member files: identical" in check and "mismatch_cnt 0" in check, check


# --- the boots ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["A", "B"])
def test_each_disk_alone_boots_to_multi_user_through_its_own_entry_with_the_esp_degraded(
    name: str, disk_a_alone: InstalledBoot, disk_b_alone: InstalledBoot, scene: Scene
) -> None:
    boot = {"A": disk_a_alone, "B": disk_b_alone}[name]
    _assert_multi_user_with_esp_from_md(boot)
    _assert_secure_boot(boot)
    assert _booted_entry(boot) == f"Debian (esp-mirror espvm-{name})", boot.section("efibootmgr")
    for array in ("esp", "root"):
        assert "[2/1]" in boot.mdstat_line(array), boot.section("mdstat")
    # boot did not hang on the missing member: multi-user came within the ESP's fstab timeout
    # (45 s) plus what the initramfs waits for the degraded root (Debian: 2/3 of 30 s)
    baseline = scene.adopt.times()["MultiUser"]
    assert boot.times()["MultiUser"] - baseline < 45 + 20 + 15, (boot.times(), baseline)


def test_the_new_disk_alone_boots_with_fresh_secure_boot_nvram_through_shims_fallback(
    disk_b_fresh: InstalledBoot,
) -> None:
    """No entry in NVRAM: the firmware starts \\EFI\\BOOT\\BOOTX64.EFI (shim) from disk B's member,
    shim its fallback, which makes an entry from \\EFI\\debian\\BOOTX64.CSV for that partition
    (heal then finds it: the next test) and starts it (shim 16 starts it at once; older ones reset
    first); Secure Boot enforced all along."""
    boot = disk_b_fresh
    _assert_multi_user_with_esp_from_md(boot)
    _assert_secure_boot(boot)
    assert boot.resets in (0, 1), boot.serial_log
    logs = [boot.serial_log.parent / "serial-before-reset-1.log"] if boot.resets else []
    firmware = "".join(log.read_text(errors="replace") for log in [*logs, boot.serial_log])
    started = re.findall(r'^BdsDxe: starting Boot\w{4} "([^"]+)"', firmware, re.MULTILINE)
    assert started and started[0].startswith("UEFI Misc Device"), started  # the disk itself, no entry
    assert "[2/1]" in boot.mdstat_line("esp"), boot.section("mdstat")


def test_after_the_fallback_heal_at_boot_folds_its_entry_into_ours(disk_b_fresh: InstalledBoot) -> None:
    """Nobody ran a command: esp-mirror-heal.service saw the entry shim's fallback made on a
    member and set the entries as `esp-mirror entries` does (status names such an entry when
    heal did not run: unit tests); `esp-mirror entries` then finds nothing to do."""
    section = disk_b_fresh.section("fallback")
    event = (
        r"^last event: \S+ boot entries set at boot: [0-9A-F]{4} 'debian' \(made by shim's fallback\) folded into ours"
    )
    assert re.search(event, section, re.MULTILINE), (section, disk_b_fresh.section("heal-boot"))
    assert "entries exit 0 changed 0" in section and "entries again exit 0 changed 0" in section, section
    after = section[section.index("entries again") :]
    labels = re.findall(r"^Boot([0-9A-F]{4})\* (.+?)\t", after, re.MULTILINE)
    assert [label for _, label in labels if label == "debian"] == [], after  # folded: same partition and loader
    ours = [n for n, label in labels if "(esp-mirror " in label]
    assert [label for _, label in labels if "(esp-mirror " in label] == ["Debian (esp-mirror espvm-B)"], after
    order = re.search(r"^BootOrder: (.*)$", after, re.MULTILINE).group(1).split(",")
    assert order[0] == ours[0], after


def test_a_stale_member_is_healed_by_itself_within_a_minute_of_multi_user(reattached: InstalledBoot) -> None:
    _assert_multi_user_with_esp_from_md(reattached)
    # disk B ran alone since the last boot with both: md starts the arrays without disk A's
    # members, which are behind (it kicks them, or incremental assembly leaves them out); nobody
    # ran a command since
    kernel = reattached.section("md-kernel")
    assert len(re.findall(r"md/raid1:md\d+: active with 1 out of 2 mirrors", kernel)) == 2, kernel
    heal = reattached.section("heal")
    healthy = float(re.search(r"^healthy after multi-user: (-?[\d.]+) s$", heal, re.MULTILINE).group(1))
    assert healthy <= 60, heal
    status = reattached.section("status")
    assert status.rstrip().endswith("healthy\nexit 0"), status
    # who took it back: esp-mirror heal (its history line), or, quicker, mdadm's incremental
    # assembly once the real root's udev saw the member again (heal then finds nothing to do)
    journal = reattached.section("heal-journal")
    event = r"^last event: \S+ healed at boot: /dev/vd[ab]1 \(/dev/vd[ab]\) back in /dev/md/esp"
    assert re.search(event, status, re.MULTILINE) or (
        "nothing to heal: /dev/md/esp has 2 of 2 members" in journal and "md: recovery of RAID array" in kernel
    ), (status, journal, kernel)
    assert "[2/2] [UU]" in reattached.mdstat_line("esp", after=True), reattached.section("mdstat-after")
    assert reattached.detail("esp", after=True).get("MD_DEVICES") == "2"
    # heal touched the ESP's array only: the root array's stale member is not its business
    assert "/dev/md/esp" in journal and "md/root" not in journal and "vda2" not in journal, journal


def test_the_roots_member_left_behind_is_back_before_the_kernels(reattached: InstalledBoot) -> None:
    # not esp-mirror's business (the test does it by hand): without it disk A's root lacks the
    # new kernel's modules (its boot alone then found no vfat)
    assert "[2/2] [UU]" in reattached.section("root-back"), reattached.section("root-back")


def test_systemd_boot_updates_work_on_the_md_esp_and_bootctl_is_wrapped(reattached: InstalledBoot) -> None:
    sdboot = reattached.section("sdboot")
    assert "environment: SYSTEMD_RELAX_ESP_CHECKS=1" in sdboot, sdboot  # services get it (system.conf.d)
    assert re.search(r"^apply exit 0 ", sdboot, re.MULTILINE), sdboot
    assert re.search(r"^update exit 0 ", sdboot, re.MULTILINE), sdboot
    assert "sd-boot updated" in sdboot and "fallback updated" in sdboot, sdboot
    # packages put the real bootctl beside the wrapper, which every caller runs
    assert "local diversion of /usr/bin/bootctl to /usr/bin/bootctl.esp-mirror" in sdboot, sdboot
    assert "seed writer: /dev/null" in sdboot, sdboot  # systemd-boot-random-seed.service masked


def _kernel_on_the_esp(section: str) -> tuple[list[str], list[str]]:
    """The second kernel's files on the ESP and the loader entries that name it."""
    files = re.search(r"^kernel files: (.*)$", section, re.MULTILINE).group(1).split()
    entries = re.search(r"^entries: (.*)$", section, re.MULTILINE).group(1).split()
    return files, entries


@pytest.mark.parametrize("how", ["login", "clean"])
def test_a_kernel_installed_with_apt_gets_its_entry_on_every_member_whoever_runs_apt(
    reattached: InstalledBoot, how: str
) -> None:
    """From a login shell (pam_env) and from ``env -i chroot`` (a rescue system, an agent without
    PAM): the same loader entry and the kernel in kernel-install's layout on the mirror."""
    section = reattached.section(f"kernel-{how}")
    assert re.search(r"^exit 0 seconds ", section, re.MULTILINE), section
    assert "Couldn't find EFI system partition" not in section, section
    files, entries = _kernel_on_the_esp(section)
    # $ESP/<machine-id>/<kver>/linux and Debian's initrd name
    assert any(f.endswith("/linux") for f in files), section
    assert any(re.search(r"/initrd(\.img-[^/]+)?$", f) for f in files), section
    assert len(entries) == 1 and entries[0].startswith("/boot/efi/loader/entries/"), section
    check = reattached.section("kernel-login-check" if how == "login" else "sdboot-check")
    assert "exit 0" in check and "member files: identical" in check and "mismatch_cnt 0" in check, check


def test_apt_remove_of_the_kernel_takes_its_entry_and_files_off_the_mirror(reattached: InstalledBoot) -> None:
    section = reattached.section("kernel-remove")
    assert re.search(r"^exit 0 seconds ", section, re.MULTILINE), section
    assert _kernel_on_the_esp(section) == ([], []), section


def test_with_the_array_stopped_a_kernel_hook_and_apt_stop_and_name_the_fix(reattached: InstalledBoot) -> None:
    section = reattached.section("stopped")
    hooks = re.search(r"^kernel hooks exit (\d+)$", section, re.MULTILINE)
    apt = re.search(r"^apt exit (\d+)$", section, re.MULTILINE)
    assert hooks and hooks.group(1) != "0" and apt and apt.group(1) != "0", section
    message = "esp-mirror: the mirrored ESP (/dev/md/esp"
    assert section.count(message) >= 2 and "mdadm --assemble --scan; mount /boot/efi" in section, section
    # apt stopped before it unpacked anything: the package is as it was, and so are the ESP and NVRAM
    assert "package: ii " in section, section
    assert "entries untouched" in section and "nvram untouched" in section, section


def test_status_names_a_zero_path_entry_and_entries_removes_it_once(reattached: InstalledBoot) -> None:
    section = reattached.section("stray")
    assert "bootctl update exit 0" in section and "made: 1" in section, section
    assert re.search(r"^status exit [1-9]", section, re.MULTILINE), section
    assert "Linux Boot Manager" in section.split("status exit", 1)[1], section
    assert re.search(r"^entries exit 0 changed [1-9]", section, re.MULTILINE), section
    assert "entries again exit 0 changed 0" in section and "left: 0" in section, section


@pytest.mark.parametrize("disk", ["a", "b"])
def test_the_new_kernel_boots_through_systemd_boot_from_each_disk_alone(
    sdboot_each_disk_alone: dict[str, InstalledBoot], reattached: InstalledBoot, disk: str
) -> None:
    boot = sdboot_each_disk_alone[disk]
    second = re.search(r"^kernel files: \S*/([^/\s]+-cloud-amd64)/", reattached.section("kernel-clean"), re.MULTILINE)
    assert second and boot.section("kernel").strip() == second.group(1), (boot.section("kernel"), boot.serial_log)
    assert "BOOT_IMAGE=" not in boot.section("cmdline"), boot.section("cmdline")  # systemd-boot, not GRUB
    assert _booted_entry(boot).startswith("UEFI Misc Device"), boot.section("efibootmgr")  # the fallback path
    _assert_multi_user_with_esp_from_md(boot)
    assert "[2/1]" in boot.mdstat_line("esp"), boot.section("mdstat")


def test_systemd_boot_starting_disk_a_alone_wrote_nothing_on_its_member_behind_md(
    sdboot_each_disk_alone: dict[str, InstalledBoot], scene: Scene
) -> None:
    """systemd-boot writes \\loader\\random-seed from UEFI when it exists, on the one disk it
    started from; esp-mirror keeps the file away (tests/vm/test_systemd_boot.py, extended, shows
    what it would do). After a whole boot of disk A alone through systemd-boot and the new kernel,
    the members, read on the host as the firmware reads them, hold the same files."""
    a, b = (member_files(disk, ESP_OFFSET) for disk in scene.machine.disks)
    assert sorted(a) == sorted(b), (sorted(a), sorted(b))
    assert "loader/random-seed" not in a
    assert any(path.endswith("-cloud-amd64/linux") for path in a), sorted(a)  # the kernel systemd-boot started
    assert [path for path in a if a[path] != b[path]] == []
