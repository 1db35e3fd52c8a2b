"""Debian 13 installed on two disks, on real firmware with Microsoft's Secure Boot keys: installed
at chroot time beside an md root, booted from each disk alone, healed, upgraded, taken back to one
ESP and adopted again, moved to systemd-boot behind shim, a kernel installed whoever runs apt
(issues 25, 26 and 24's release --all).

The machine (ci/chroot_install.py): the installer partitioned both disks first (disk A: an empty
ESP partition and the root's member; disk B: the root's member and free space at 1 MiB), unpacked
Debian 13 onto an md RAID1 root, and ran ``esp-mirror apply --target`` from outside the chroot;
nothing else. It has shim-signed, grub-efi-amd64-signed and systemd-boot-efi-amd64-signed, as
Debian's installer sets a Secure Boot server up. OVMF boots it through shim, the signed GRUB and
the signed kernel, up to multi-user.target, where a test unit (ci/installed.py) prints the state
to the serial port, runs the boot's actions and powers off. The boots, in order:

1. disk A alone under Secure Boot, through its own entry (its writes discarded: A comes back
   behind, as a pulled disk does);
2. disk B alone with fresh Secure Boot NVRAM: shim's fallback makes an entry, heal folds it;
3. both: heal brings A's ESP member back by itself; GRUB's and shim's package scripts from a
   clean environment keep NVRAM; ``esp-mirror release --all`` leaves disk A's partition the
   machine's ESP and the machine reboots from it; then, the ESP unmounted, ``esp-mirror adopt``
   takes it back into a mirror (every file in its backup and on the array), adopt again and
   apply again change nothing; the system moves to systemd-boot behind shim (GRUB's kernel
   hooks off, systemd-boot's own postinst run again) and a second kernel is installed with
   apt from a login and from ``env -i chroot``;
4. disk A alone under Secure Boot: shim, the signed systemd-boot, the signed second kernel;
5. disk B alone with fresh Secure Boot NVRAM: shim's fallback, then systemd-boot;
6. a disk whose shim would start an unsigned systemd-boot: shim refuses it.

Debian 12's proof is tests/vm/test_readme_installer.py's; the power cuts during an adoption and
the bad input are tests/vm/test_interrupted.py's and tests/vm/test_shared_disks.py's.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from ci import chroot_install, roots
from ci.installed import (
    ADOPT_ACTION,
    FALLBACK_ACTION,
    HEAL_ACTION,
    RELEASE_ALL_ACTION,
    ROOT_FS_UUID,
    SDBOOT_ACTION,
    UPGRADE_ACTION,
    InstalledBoot,
    after_reboot,
    boot_installed,
    build_target_archives,
)
from ci.measure import measurements
from ci.vm import ESP_OFFSET, Assets, VmError, boot_firmware, fresh_vars, member_files
from ci.vm.scripts import esp_mirror_cli
from esp_mirror_plugin import __version__

pytestmark = [pytest.mark.vm, pytest.mark.installed]


@dataclass(frozen=True)
class Scene:
    work: Path
    machine: chroot_install.Machine
    nvram: Path  # what the install left in NVRAM: one entry per disk


@pytest.fixture(scope="module")
def scene(vm_assets: Assets, trixie_root: roots.Root, module_dir: Path, request: pytest.FixtureRequest) -> Scene:
    measured = measurements(request.config)
    work = module_dir
    archives = build_target_archives(trixie_root, work)
    program = esp_mirror_cli()  # the zip application of this source, as a guest runs it
    nvram = fresh_vars(work / "install-vars.fd", vm_assets, keys="ms")  # Secure Boot, as on a server
    machine = chroot_install.install(work, archives, program, nvram, assets=vm_assets)
    guest = machine.result.guest
    assert guest.rc == 0, f"{guest.stdout[-5000:]}\n{guest.stderr[-3000:]}\nserial log: {guest.serial_log}"
    measured.record("installed system", "Debian 13 installed at chroot time (guest)", guest.seconds)
    measured.record("installed system", "esp-mirror apply at chroot time", machine.result.phase_seconds("apply"))
    return Scene(work, machine, shutil.copyfile(nvram, work / "installed-vars.fd"))


def _boot(scene: Scene, name: str, disks: list[Path], *, fresh: bool = False, nvram: Path | None = None, **kwargs):
    """Boot with a copy of ``nvram`` (default: what the install left), or fresh NVRAM with Microsoft's keys."""
    vars_file = scene.work / f"{name}-vars.fd"
    if fresh:
        fresh_vars(vars_file, keys="ms")
    else:
        shutil.copyfile(nvram or scene.nvram, vars_file)
    return boot_installed(disks, vars_file, scene.work, name=name, secure_boot=True, **kwargs), vars_file


@pytest.fixture(scope="module")
def a_alone(scene: Scene, vm_assets: Assets, request: pytest.FixtureRequest) -> InstalledBoot:
    # qemu -snapshot: A's members stay as the install left them, only behind, while B moves ahead
    boot, _ = _boot(scene, "a-alone", scene.machine.disks[:1], assets=vm_assets, snapshot=True)
    _record(request, "Debian 13, GRUB behind shim, disk A alone", boot)
    return boot


@pytest.fixture(scope="module")
def b_fresh(scene: Scene, a_alone: InstalledBoot, vm_assets: Assets, request: pytest.FixtureRequest) -> InstalledBoot:
    boot, _ = _boot(
        scene, "b-fresh", scene.machine.disks[1:], fresh=True, assets=vm_assets, resets=1, action=FALLBACK_ACTION
    )
    _record(request, "Debian 13, GRUB behind shim, disk B alone, fresh NVRAM", boot)
    return boot


@dataclass(frozen=True)
class Both:
    boot: InstalledBoot
    nvram: Path

    @property
    def first(self) -> dict[str, str]:
        """What the system reported before ``release --all`` rebooted it."""
        return self.boot.earlier[0]


@pytest.fixture(scope="module")
def both(scene: Scene, b_fresh: InstalledBoot, vm_assets: Assets, request: pytest.FixtureRequest) -> Both:
    actions = (
        HEAL_ACTION,
        UPGRADE_ACTION,
        RELEASE_ALL_ACTION,
        after_reboot(ADOPT_ACTION),
        after_reboot(SDBOOT_ACTION),
    )
    boot, nvram = _boot(scene, "both", scene.machine.disks, assets=vm_assets, action=actions, timeout=2400)
    _record(request, "Debian 13, both disks: heal, upgrade, release --all, adopt, systemd-boot", boot)
    measured = measurements(request.config)
    for section, what in (
        ("adopt", "esp-mirror adopt on the running system, its ESP unmounted"),
        ("kernel-login", "apt-get install of a second kernel, from a login shell"),
        ("kernel-clean", "apt-get install of it, from env -i chroot"),
    ):
        found = re.search(r"^(?:exit \d+ )?seconds ([\d.]+)$", boot.section(section), re.MULTILINE)
        if found:
            measured.record("Debian 13", what, float(found.group(1)), "TCG guest, both disks")
    return Both(boot, nvram)


@pytest.fixture(scope="module")
def sd_a(scene: Scene, both: Both, vm_assets: Assets, request: pytest.FixtureRequest) -> InstalledBoot:
    # A's boot is kept: the members are compared after it
    boot, _ = _boot(scene, "sd-a-alone", scene.machine.disks[:1], nvram=both.nvram, assets=vm_assets)
    _record(request, "Debian 13, systemd-boot behind shim, disk A alone", boot)
    return boot


@pytest.fixture(scope="module")
def sd_b(scene: Scene, sd_a: InstalledBoot, vm_assets: Assets, request: pytest.FixtureRequest) -> InstalledBoot:
    boot, _ = _boot(
        scene, "sd-b-fresh", scene.machine.disks[1:], fresh=True, assets=vm_assets, resets=1, snapshot=True,
        action=FALLBACK_ACTION,
    )  # fmt: skip
    _record(request, "Debian 13, systemd-boot behind shim, disk B alone, fresh NVRAM", boot)
    return boot


def _record(request: pytest.FixtureRequest, what: str, boot: InstalledBoot) -> None:
    measured = measurements(request.config)
    measured.record("boot", f"{what}: power on to power off (host)", boot.seconds, str(boot.serial_log))
    if "MultiUser" in boot.times():
        measured.record("boot", f"{what}: kernel start to multi-user.target", boot.times()["MultiUser"])


def _booted_entry(boot: InstalledBoot) -> str:
    text = boot.section("efibootmgr")
    current = re.search(r"^BootCurrent: (\w{4})$", text, re.MULTILINE).group(1)
    return re.search(rf"^Boot{current}\*? (.+?)(\t.*)?$", text, re.MULTILINE).group(1)


def _assert_secure_boot(boot: InstalledBoot) -> None:
    section = boot.section("secure-boot")
    assert "SecureBoot enabled" in section and "secureboot: Secure boot enabled" in section, section


def _assert_multi_user_with_esp_from_md(boot: InstalledBoot, esp_from_md: bool = True) -> None:
    assert boot.section("multi-user").strip() == "active", boot.serial_log
    source, fstype, _options = boot.section("esp-mount").split()
    assert fstype == "vfat" and bool(re.fullmatch(r"/dev/md\d+", source)) is esp_from_md, (source, boot.serial_log)
    root_source, _root_type, root_options = boot.section("root-mount").split()
    assert root_source.startswith("/dev/md") and root_options.split(",")[0] == "rw", boot.section("root-mount")


# --- the install at chroot time ------------------------------------------------------------------


def test_apply_at_chroot_time_takes_the_installers_esp_partition_and_adds_partition_1_beside_the_root(
    scene: Scene,
) -> None:
    sections = scene.machine.result.sections
    apply = sections["apply"]
    assert "esp-mirror apply: done" in apply, apply[-4000:]
    # every GPT entry there was, and the root's md superblocks, as they were
    assert sections["before"] == sections["after"] and "Partition unique GUID" in sections["before"]
    assert "sgdisk --zap-all" not in apply and "wipefs --all /dev/vda\n" not in apply
    new_partition = r"\] sgdisk --new=1:2048:1050623 --typecode=1:EF00 \S+ --change-name=1:esp-mirror /dev/vdb\n"
    assert re.search(new_partition, apply), apply
    assert not re.search(r"\] sgdisk \S*.* /dev/vda\n", apply), apply  # A's table is not written at all
    assert "vda2 (" in apply and "left exactly as they are" in apply  # the plan named the root's member
    # GRUB's configuration by esp-mirror, the root by UUID; one entry per disk, each starting shim
    assert f"root=UUID={ROOT_FS_UUID}" in sections["grub.cfg"], sections["grub.cfg"]
    entry = r"^Boot[0-9A-F]{4}\* (Debian \(esp-mirror espvm-[AB]\))\t.*shimx64\.efi"
    labels = re.findall(entry, sections["efibootmgr"], re.MULTILINE)
    assert sorted(labels) == ["Debian (esp-mirror espvm-A)", "Debian (esp-mirror espvm-B)"], sections["efibootmgr"]
    esp_lines = [line for line in sections["fstab"].splitlines() if "/boot/efi" in line and not line.startswith("#")]
    assert len(esp_lines) == 1, sections["fstab"]


@pytest.mark.parametrize("which", ["a", "b"])
def test_each_disk_alone_boots_shim_grub_and_the_kernel_under_secure_boot(
    which: str, a_alone: InstalledBoot, b_fresh: InstalledBoot
) -> None:
    """A through its own entry; B with fresh NVRAM through the fallback path (shim, its fallback)."""
    boot = {"a": a_alone, "b": b_fresh}[which]
    _assert_multi_user_with_esp_from_md(boot)
    _assert_secure_boot(boot)
    for array in ("esp", "root"):
        assert "[2/1]" in boot.mdstat_line(array), boot.section("mdstat")
    if which == "a":
        assert _booted_entry(boot) == "Debian (esp-mirror espvm-A)", boot.section("efibootmgr")
    else:
        section = boot.section("fallback")
        assert re.search(r"^last event: \S+ boot entries set at boot: [0-9A-F]{4} 'debian'", section, re.MULTILINE) or (
            "entries exit 0 changed 0" in section
        ), section
        assert "entries again exit 0 changed 0" in section, section


# --- both disks: heal, upgrades, back to one ESP and adopted again ------------------------------------


def test_heal_at_boot_takes_the_stale_member_back_by_itself(both: Both) -> None:
    first = both.first
    heal = first["heal"]
    healthy = float(re.search(r"^healthy after multi-user: (-?[\d.]+) s$", heal, re.MULTILINE).group(1))
    assert healthy <= 90, heal
    assert first["status"].rstrip().endswith("healthy\nexit 0"), first["status"]
    assert "[2/2] [UU]" in first["root-back"], first["root-back"]


def test_grubs_and_shims_package_scripts_from_a_clean_environment_keep_nvram(both: Both) -> None:
    upgrade = both.first["upgrade"]
    assert upgrade.startswith("exit 0\n") and "update-grub exit 0" in upgrade, upgrade
    assert "shim-signed exit 0" in upgrade and "grub-efi-amd64-signed exit 0" in upgrade, upgrade
    assert "nvram unchanged" in upgrade and "fallback is shim" in upgrade, upgrade
    assert "fallback has fbx64.efi (shim's)" in upgrade, upgrade
    check = both.first["installed-check"]
    assert "exit 0" in check and "member files: identical" in check, check
    assert both.first["installed-version"].strip() == f"esp-mirror {__version__}"


def test_release_all_leaves_disk_as_partition_the_machines_esp_and_the_machine_boots_from_it(both: Both) -> None:
    release = both.first["release-all"]
    assert release.startswith("exit 0 "), release
    assert "array lines: 0" in release and "record: ls: cannot access" in release, release
    assert re.search(r"^fstab: UUID=\S+\s+/boot/efi\s+vfat", release, re.MULTILINE), release
    # after the reboot, before the adoption: the plain partition of disk A is the ESP
    after = both.boot
    assert after.section("stage").strip() == "after-reboot"
    assert after.section("esp-mount").split()[:2] == ["/dev/vda1", "vfat"], after.section("esp-mount")


def _by_path(sha256sums: str) -> dict[str, str]:
    """sha256sum's lines as {path without "./": digest}."""
    pairs = (line.split("  ", 1) for line in sha256sums.splitlines() if line.strip())
    return {path.removeprefix("./"): digest for digest, path in pairs}


def test_adopt_with_the_esp_unmounted_keeps_every_file_in_the_backup_and_on_the_array(both: Both) -> None:
    boot = both.boot
    adopt = boot.section("adopt")
    assert "mounted before: nothing" in adopt and "\nexit 0\n" in adopt, adopt[-4000:]
    before = boot.section("esp-before").splitlines()
    assert len(before) > 10 and any("grubx64.efi" in line for line in before), before
    # the tar holds every file of the live ESP with the same sha256 (read back from the tar)
    assert _by_path(boot.section("backup-files")) == _by_path(boot.section("esp-before"))
    assert boot.section("old-files").strip() == "exit 0", boot.section("old-files")  # and the array has them
    assert "] verify: every directory and file of /run/esp-mirror/adopt-read-vda1 is in the archive" in adopt, adopt
    assert boot.section("status").rstrip().endswith("healthy\nexit 0"), boot.section("status")


def test_adopt_again_and_apply_again_change_nothing_on_disks_whose_root_is_in_use(both: Both) -> None:
    again = both.boot.section("adopted-again")
    assert "esp-mirror adopt: nothing to adopt" in again and "adopt exit 0" in again, again
    changed = re.findall(r"^changed: (.*)$", again, re.MULTILINE)
    assert all(c.startswith("bootloader ") and ("grub-install" in c or "update-grub" in c) for c in changed), again


def test_systemd_boots_own_postinst_succeeds_on_the_mirror_and_leaves_one_entry_per_disk(both: Both) -> None:
    section = both.boot.section("sdboot13")
    assert re.search(r"^apply exit 0 ", section, re.MULTILINE), section
    assert re.search(r"^reconfigure exit 0 ", section, re.MULTILINE), section
    assert "nvram unchanged" in section and "entries starting shim: 2" in section, section
    for line in ("fallback is shim", "fallback has fbx64.efi", "systemd-boot is the signed build"):
        assert line in section, (line, section)
    csv = "csv: shimx64.efi,Debian,\\EFI\\systemd\\systemd-bootx64.efi \\0,This is the boot entry for Debian"
    assert csv in section, section
    sdboot = both.boot.section("sdboot")
    assert re.search(r"^update exit 0 ", sdboot, re.MULTILINE) and "sd-boot updated" in sdboot, sdboot
    assert "fallback still shim" in sdboot and "seed writer: /dev/null" in sdboot, sdboot


@pytest.mark.parametrize("how", ["login", "clean"])
def test_a_kernel_installed_with_apt_gets_its_entry_on_every_member_whoever_runs_apt(both: Both, how: str) -> None:
    section = both.boot.section(f"kernel-{how}")
    assert re.search(r"^exit 0 seconds ", section, re.MULTILINE), section
    files = re.search(r"^kernel files: (.*)$", section, re.MULTILINE).group(1).split()
    entries = re.search(r"^entries: (.*)$", section, re.MULTILINE).group(1).split()
    assert any(f.endswith("/linux") for f in files) and len(entries) == 1, section
    check = both.boot.section("kernel-login-check" if how == "login" else "sdboot-check")
    assert "exit 0" in check and "member files: identical" in check, check


def test_apt_remove_takes_the_kernel_off_the_mirror_and_a_stopped_array_stops_apt(both: Both) -> None:
    removed = both.boot.section("kernel-remove")
    assert re.search(r"^exit 0 seconds ", removed, re.MULTILINE) and "kernel files: \nentries: \n" in removed, removed
    stopped = both.boot.section("stopped")
    assert re.search(r"^kernel hooks exit [1-9]", stopped, re.MULTILINE), stopped
    assert re.search(r"^apt exit [1-9]", stopped, re.MULTILINE), stopped
    assert "entries untouched" in stopped and "nvram untouched" in stopped, stopped


def test_status_names_a_zero_path_entry_and_entries_removes_it_once(both: Both) -> None:
    section = both.boot.section("stray")
    assert "bootctl update exit 0" in section and re.search(r"^status exit [1-9]", section, re.MULTILINE), section
    assert "entries again exit 0 changed 0" in section and "left: 0" in section, section


# --- systemd-boot behind shim, each disk alone --------------------------------------------------


@pytest.mark.parametrize("which", ["a", "b"])
def test_systemd_boot_behind_shim_starts_the_new_kernel_from_each_disk_under_secure_boot(
    which: str, sd_a: InstalledBoot, sd_b: InstalledBoot, both: Both
) -> None:
    boot = {"a": sd_a, "b": sd_b}[which]
    second = re.search(r"^kernel files: \S*/([^/\s]+-cloud-amd64)/", both.boot.section("kernel-clean"), re.MULTILINE)
    assert second and boot.section("kernel").strip() == second.group(1), (boot.section("kernel"), boot.serial_log)
    assert "BOOT_IMAGE=" not in boot.section("cmdline"), boot.section("cmdline")  # systemd-boot, not GRUB
    _assert_multi_user_with_esp_from_md(boot)
    _assert_secure_boot(boot)
    if which == "a":
        assert _booted_entry(boot) == "Debian (esp-mirror espvm-A)", boot.section("efibootmgr")
    else:
        assert "entries again exit 0 changed 0" in boot.section("fallback"), boot.section("fallback")


def test_after_systemd_boot_started_disk_a_its_members_hold_the_same_files(sd_a: InstalledBoot, scene: Scene) -> None:
    a, b = (member_files(disk, ESP_OFFSET) for disk in scene.machine.disks)
    assert sorted(a) == sorted(b) and [p for p in a if a[p] != b[p]] == []
    assert "loader/random-seed" not in a and any(p.endswith("-cloud-amd64/linux") for p in a)


def test_an_unsigned_systemd_boot_behind_shim_is_refused(
    scene: Scene, trixie_root: roots.Root, vm_assets: Assets
) -> None:
    """The other side of the signed chain: a disk whose shim (\\EFI\\BOOT\\BOOTX64.EFI) would start a
    systemd-boot built without Debian's signature (Debian 12's, from this host) as its second
    stage. Under Secure Boot shim refuses it and nothing of systemd-boot runs."""
    disk = scene.work / "unsigned.img"
    with disk.open("wb") as image:
        image.truncate(64 * 1024 * 1024)
    subprocess.run(["sgdisk", "--new=1:2048:0", "--typecode=1:EF00", str(disk)], check=True, capture_output=True)
    sectors = (64 * 1024 * 1024 - ESP_OFFSET) // 512 - 33  # up to the backup GPT
    mkfs = ["mkfs.vfat", "-F", "32", "--offset", str(ESP_OFFSET // 512), str(disk), str(sectors // 2)]
    subprocess.run(mkfs, check=True, capture_output=True)
    env = {"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"}
    image = f"{disk}@@{ESP_OFFSET}"
    shim = trixie_root.path / "usr/lib/shim/shimx64.efi.signed"
    unsigned = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")
    for argv in (
        ["mmd", "-i", image, "::/EFI", "::/EFI/BOOT"],
        ["mcopy", "-i", image, str(shim), "::/EFI/BOOT/BOOTX64.EFI"],
        ["mcopy", "-i", image, str(unsigned), "::/EFI/BOOT/grubx64.efi"],
    ):
        subprocess.run(argv, check=True, env=env)
    vars_file = fresh_vars(scene.work / "unsigned-vars.fd", keys="ms")
    refused = {"Security Violation": "shim refused the unsigned systemd-boot"}
    with pytest.raises(VmError, match="shim refused the unsigned systemd-boot"):
        boot_firmware([disk], vars_file, 240, assets=vm_assets, log_dir=scene.work, secure_boot=True,
                      give_up_on=refused)  # fmt: skip
    log = max(scene.work.glob("espvm-boot-*/serial.log"), key=lambda p: p.stat().st_mtime).read_text(errors="replace")
    assert "systemd-boot" not in log and "Linux version" not in log, log[-2000:]
