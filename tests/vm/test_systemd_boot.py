"""systemd-boot on the mirrored ESP, installed for real by ``esp-mirror apply --bootloader systemd-boot``.

bootctl refuses an ESP on md; esp-mirror runs it with SYSTEMD_RELAX_ESP_CHECKS=1 and
--no-variables (it makes the boot entries itself). The loader writes \\loader\\random-seed from
UEFI on boot when that file exists, which lands on ONE member behind md's back, so esp-mirror
removes the file and masks the service that would recreate it. These tests install onto a
Debian 12 root (systemd 252) in a guest, boot the firmware with one disk, and compare the
members byte for byte afterwards.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ci import roots
from ci.installed import (
    TargetImage,
    build_target_image,
    copy_sparse,
    parse_sections,
    systemd_boot_script,
)
from ci.vm import (
    ESP_OFFSET,
    Assets,
    blank_disk,
    boot_firmware,
    fresh_vars,
    list_member,
    partition_uuid,
    read_member,
    run_in_guest,
)

pytestmark = [pytest.mark.vm, pytest.mark.installed]
SEED = "loader/random-seed"


@pytest.fixture(scope="module")
def target_image(module_dir: Path) -> TargetImage:
    return build_target_image(roots.ensure_root(roots.INITRAMFS_TOOLS), module_dir)


def _install_and_boot_disk_a(image: TargetImage, payload: Path, work: Path, assets: Assets, *, seed_after: bool):
    disks = [blank_disk(work / f"disk-{n}.img", 1024) for n in "ab"]
    root_disk = copy_sparse(image.path, work / "target-root.img")
    nvram = fresh_vars(work / "install-vars.fd", assets)
    guest = run_in_guest(
        systemd_boot_script(payload, seed_after=seed_after), [*disks, root_disk], nvram, assets=assets, log_dir=work
    )
    sections, _ = parse_sections(guest.stdout)
    assert guest.rc == 0, f"{guest.stdout[-3000:]}\n{guest.stderr[-3000:]}\nserial log: {guest.serial_log}"
    before = [list_member(d, ESP_OFFSET) for d in disks]
    boot = boot_firmware(disks[:1], shutil.copyfile(nvram, work / "boot-a-vars.fd"), assets=assets, log_dir=work)
    return disks, sections, before, boot


def _differing(disks: list[Path]) -> list[str]:
    listings = [list_member(d, ESP_OFFSET) for d in disks]
    assert listings[0] == listings[1], listings
    return [
        p
        for p in listings[0]
        if "." in p.rsplit("/", 1)[-1] or p == SEED
        if read_member(disks[0], ESP_OFFSET, p) != read_member(disks[1], ESP_OFFSET, p)
    ]


# The installed system's systemd-boot boots hold this on every run (tests/vm/test_installed_system.py:
# each disk alone through systemd-boot and a new kernel, the members compared after disk A's);
# this one, systemd-boot put on by apply at install time from a chroot, runs with the extended set.
@pytest.mark.extended
def test_systemd_boot_boots_from_one_member_and_leaves_both_identical(
    target_image: TargetImage, payload_efi: Path, vm_assets: Assets, tmp_path: Path
) -> None:
    disks, sections, before, boot = _install_and_boot_disk_a(
        target_image, payload_efi, tmp_path, vm_assets, seed_after=False
    )
    files = sections["loader"].split()
    assert "/target/boot/efi/EFI/systemd/systemd-bootx64.efi" in files
    assert "/target/boot/efi/EFI/BOOT/BOOTX64.EFI" in files
    assert f"/target/boot/efi/{SEED}" not in files  # bootctl install made one; esp-mirror removed it
    assert sections["masked"].strip() == "/dev/null"  # systemd-boot-random-seed.service is masked
    # Debian 12's own seed writer (systemd-boot-system-token.service: bootctl random-seed
    # --graceful) does not find an ESP on md without relaxed checks, so it writes nothing.
    assert "random-seed" not in sections["after-strict"].split(), sections["random-seed-strict"]

    assert boot.boot_entry_description == "Debian (esp-mirror espvm-A)", boot.serial_log
    assert boot.boot_entry_partuuid == partition_uuid(disks[0])
    assert boot.loader_image_identifier == r"\EFI\systemd\systemd-bootx64.efi", boot.serial_log
    # nothing the loader did on this boot changed member A behind md's back
    assert [list_member(d, ESP_OFFSET) for d in disks] == before
    assert SEED not in before[0]
    assert _differing(disks) == []


@pytest.mark.extended  # why esp-mirror removes the seed: the reason, not the behaviour (which the test above holds)
def test_a_random_seed_file_would_desync_the_members_on_the_next_boot(
    target_image: TargetImage, payload_efi: Path, vm_assets: Assets, tmp_path: Path
) -> None:
    """Why esp-mirror keeps \\loader\\random-seed off the ESP: with the file present (made the
    way systemd-boot-system-token.service makes it, through md, so both members agree), one
    firmware boot rewrites it on the booted disk only."""
    disks, sections, before, boot = _install_and_boot_disk_a(
        target_image, payload_efi, tmp_path, vm_assets, seed_after=True
    )
    assert "random-seed" in sections["after-relaxed"].split(), sections["random-seed-relaxed"]
    assert SEED in before[0]
    assert boot.boot_entry_description == "Debian (esp-mirror espvm-A)", boot.serial_log
    assert _differing(disks) == [SEED]
