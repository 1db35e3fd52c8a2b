"""esp-mirror on real firmware: install in a guest with the real CLI, then boot each disk alone.

The image installed is the payload UKI signed with OVMF's snakeoil key, and the boots of the two
disks run OVMF's Secure Boot build with the snakeoil NVRAM: the firmware checks the image's
signature on each member. The CI image build's disks hold the same UKI unsigned: the same
firmware refuses it, so the check is real.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ci.measure import measurements
from ci.scenarios import (
    boot_alone,
    detail,
    disk_serial,
    entry_label,
    esp_lines,
    image_build,
    install,
    partition_uuid,
)
from ci.vm import (
    ESP_OFFSET,
    Assets,
    VmError,
    blank_disk,
    boot_firmware,
    fresh_vars,
    list_member,
    read_member,
    snakeoil_signed,
)
from esp_mirror_plugin.system import nvram

pytestmark = pytest.mark.vm
FALLBACK = r"\EFI\BOOT\BOOTX64.EFI"


def _loader(payload: Path) -> str:
    return rf"\EFI\debian\{payload.name}"


@pytest.fixture(scope="module")
def signed_efi(vm_assets: Assets, payload_efi: Path, module_dir: Path) -> Path:
    """The payload UKI signed with the snakeoil key (sbsign)."""
    return snakeoil_signed(vm_assets, payload_efi, module_dir / "espvm-signed.efi")


@pytest.fixture(scope="module")
def two_disks(vm_assets: Assets, signed_efi: Path, module_dir: Path):
    """Two blank disks, esp-mirror applied twice in one guest; the disks and install NVRAM (the
    snakeoil key enrolled: the install guest's plain OVMF keeps it without acting on it)."""
    work = module_dir
    disks = [blank_disk(work / f"disk-{n}.img", 1024) for n in "ab"]
    nvram = fresh_vars(work / "install-vars.fd", vm_assets, keys="snakeoil")
    result = install(disks, nvram, signed_efi, applies=2, assets=vm_assets, timeout=1200)
    assert result.guest.rc == 0, f"{result.guest.stdout}\n{result.guest.stderr}\nserial: {result.guest.serial_log}"
    return result, disks, nvram, work


def test_apply_builds_a_raid1_metadata_1_0_esp_with_one_entry_per_disk(two_disks, signed_efi: Path) -> None:
    result, disks, _, _ = two_disks
    md = detail(result)
    assert (md["MD_LEVEL"], md["MD_METADATA"], md["MD_NAME"], md["MD_DEVICES"]) == ("raid1", "1.0", "any:esp", "2")
    assert re.search(r"active raid1 vd[ab]1\[\d\] vd[ab]1\[\d\]", result.section("mdstat"))
    assert "[2/2] [UU]" in result.section("mdstat")
    # exactly one ESP line in fstab, by the FAT UUID; mdadm.conf lists the array by its UUID
    (line,) = esp_lines(result.section("fstab"))
    assert line.startswith("UUID=") and "\tvfat\t" in line
    assert f"UUID={md['MD_UUID']}" in result.section("mdadm.conf")
    # each member is a raid member to blkid, so the FAT UUID in fstab resolves only to the array
    assert result.section("members").count("TYPE=linux_raid_member") == 2
    assert "/dev/md" in result.section("mounts")
    # one entry per disk, on that disk's partition, ours first in BootOrder in disk order
    boot = nvram.parse(result.section("efibootmgr"))
    ours = {e.label: e for e in boot.entries if "(esp-mirror " in e.label}
    assert sorted(ours) == [entry_label(disk_serial(0)), entry_label(disk_serial(1))]
    for index, disk in enumerate(disks):
        entry = ours[entry_label(disk_serial(index))]
        assert entry.partuuid == partition_uuid(disk)
        assert entry.loader == _loader(signed_efi)
    assert boot.order[:2] == tuple(ours[entry_label(disk_serial(i))].number for i in range(2))


def test_second_apply_changes_nothing(two_disks) -> None:
    result, _, _, _ = two_disks
    assert detail(result, 1)["MD_UUID"] == detail(result, 0)["MD_UUID"]
    for name in ("fstab", "mdadm.conf", "mdstat"):
        assert result.section(name, 1) == result.section(name, 0), name
    first, second = (nvram.parse(result.section("efibootmgr", run)) for run in (0, 1))
    assert (second.order, second.entries) == (first.order, first.entries)
    assert re.search(r"done in [\d.]+ s: \d+ steps, 0 changed", result.section("apply", 1)), result.section("apply", 1)


@pytest.mark.parametrize("index", [0, 1], ids=["disk-A-alone", "disk-B-alone"])
def test_each_disk_alone_boots_through_its_own_entry_with_secure_boot_enforced(
    two_disks, signed_efi: Path, vm_assets: Assets, index: int, request: pytest.FixtureRequest
) -> None:
    _, disks, nvram, work = two_disks
    boot = boot_alone(disks[index], nvram, work, f"alone-{index}", vm_assets, secure_boot=True)
    measurements(request.config).record(
        "boot", f"signed UKI, disk {'AB'[index]} alone, Secure Boot on: power on to off", boot.seconds, "SMM, TCG"
    )
    assert boot.secure_boot is True, boot.serial_log
    assert boot.boot_entry_description == entry_label(disk_serial(index)), boot.serial_log
    assert boot.boot_entry_partuuid == partition_uuid(disks[index])
    assert boot.loader_device_partuuid == partition_uuid(disks[index])
    assert boot.loader_image_identifier == _loader(signed_efi)


def test_disk_b_boots_with_fresh_secure_boot_nvram_through_the_fallback_path(two_disks, vm_assets: Assets) -> None:
    _, disks, _, work = two_disks
    boot = boot_alone(disks[1], None, work, "fresh-b", vm_assets, secure_boot=True, keys="snakeoil")
    assert boot.secure_boot is True, boot.serial_log
    assert boot.loader_device_partuuid == partition_uuid(disks[1]), boot.serial_log
    assert boot.loader_image_identifier == FALLBACK


def test_each_member_read_alone_on_the_host_is_a_fat32_with_identical_files(two_disks) -> None:
    _, disks, _, _ = two_disks
    listings = [list_member(disk, ESP_OFFSET) for disk in disks]
    assert listings[0] == listings[1]
    assert "EFI/BOOT/BOOTX64.EFI" in listings[0]
    files = [p for p in listings[0] if p.upper().endswith(".EFI")]
    for path in files:
        assert read_member(disks[0], ESP_OFFSET, path) == read_member(disks[1], ESP_OFFSET, path), path


# A mirror of three boots from each of them: tests/vm/test_upkeep.py boots a third member that
# add made, tests/vm/test_fleet.py the one replace made; this install of three is extended only.
@pytest.mark.extended
def test_three_disks_each_boots_alone(vm_assets: Assets, payload_efi: Path, tmp_path: Path) -> None:
    disks = [blank_disk(tmp_path / f"disk-{n}.img", 1024) for n in "abc"]
    nvram = fresh_vars(tmp_path / "install-vars.fd", vm_assets)
    result = install(disks, nvram, payload_efi, assets=vm_assets)
    assert result.guest.rc == 0, f"{result.guest.stdout}\n{result.guest.stderr}"
    assert detail(result)["MD_DEVICES"] == "3"
    for index, disk in enumerate(disks):
        boot = boot_alone(disk, nvram, tmp_path, f"alone-{index}", vm_assets)
        assert boot.boot_entry_description == entry_label(disk_serial(index)), boot.serial_log
        assert boot.loader_device_partuuid == partition_uuid(disk)


def test_ci_image_build_with_image_files_boots_with_fresh_nvram_and_secure_boot_refuses_it_unsigned(
    vm_assets: Assets, payload_efi: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    vars_file = fresh_vars(tmp_path / "builder-vars.fd", vm_assets)
    guest, sections, images = image_build(payload_efi, ["image-a.img", "image-b.img"], vars_file, vm_assets)
    assert guest.rc == 0, f"{guest.stdout}\n{guest.stderr}"
    assert sections["losetup"].strip() == ""  # every loop device detached again
    assert " active " not in sections["mdstat"]  # the array was stopped
    assert len(esp_lines(sections["fstab"])) == 1
    nvram_before = nvram.parse(sections["efibootmgr"])
    assert not [e for e in nvram_before.entries if "(esp-mirror " in e.label]  # --no-nvram: none made
    for name, image in zip("ab", images, strict=True):
        boot = boot_alone(image, None, tmp_path, f"image-{name}", vm_assets)
        measurements(request.config).record(
            "boot", f"unsigned UKI, image {name.upper()} alone, no Secure Boot: power on to off", boot.seconds, "TCG"
        )
        assert boot.loader_device_partuuid == partition_uuid(image), boot.serial_log
        assert boot.loader_image_identifier == FALLBACK
        assert boot.secure_boot is not True
    # the same UKI, unsigned, under the Secure Boot firmware that started the signed one above
    vars_file = fresh_vars(tmp_path / "refused-vars.fd", vm_assets, keys="snakeoil")
    refused = {"Access Denied": "the firmware refused the image"}
    with pytest.raises(VmError, match="the firmware refused the image") as raised:
        boot_firmware(images[:1], vars_file, assets=vm_assets, log_dir=tmp_path, secure_boot=True, give_up_on=refused)
    log = Path(re.search(r"serial log: (\S+)", str(raised.value)).group(1)).read_text(errors="replace")
    assert re.search(r"BdsDxe: failed to load Boot\w{4} .*: Access Denied", log), log[-2000:]
