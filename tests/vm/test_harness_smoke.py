"""The harness proves itself with the hand recipe before esp-mirror exists.

Two blank disks get a mirrored ESP and one boot entry each; then each disk alone must boot from
its own entry, and a disk in a machine that has never seen it must boot from the fallback path.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from ci.vm import (
    ESP_OFFSET,
    Assets,
    blank_disk,
    boot_firmware,
    fresh_vars,
    partition_uuid,
    read_member,
    run_in_guest,
)
from ci.vm.scripts import guest_device, hand_recipe_argv, script

pytestmark = pytest.mark.vm


def test_hand_recipe_mirrors_the_esp_and_each_disk_boots_alone(
    vm_assets: Assets, payload_efi: Path, vm_workdir: Path
) -> None:
    disk_a, disk_b = (blank_disk(vm_workdir / f"disk-{name}.img", 1024) for name in "ab")
    install_vars = fresh_vars(vm_workdir / "install-vars.fd", vm_assets)

    install = run_in_guest(
        script(hand_recipe_argv(payload_efi, [guest_device(0), guest_device(1)]), ["cat", "/proc/mdstat"]),
        [disk_a, disk_b],
        install_vars,
        assets=vm_assets,
    )
    assert install.rc == 0, f"hand recipe failed:\n{install.stderr}\nserial log: {install.serial_log}"
    assert re.search(r"^md\d+ : active raid1 vd[ab]1\[\d\] vd[ab]1\[\d\]$", install.stdout, re.M), install.stdout

    esp_a, esp_b = partition_uuid(disk_a), partition_uuid(disk_b)
    assert esp_a != esp_b
    fallback = "EFI/BOOT/BOOTX64.EFI"
    assert read_member(disk_a, ESP_OFFSET, fallback) == read_member(disk_b, ESP_OFFSET, fallback)
    assert read_member(disk_a, ESP_OFFSET, fallback) == payload_efi.read_bytes()

    for index, (disk, esp) in enumerate(((disk_a, esp_a), (disk_b, esp_b))):
        nvram = shutil.copyfile(install_vars, vm_workdir / f"{disk.stem}-vars.fd")
        boot = boot_firmware([disk], nvram, assets=vm_assets)
        assert boot.boot_entry_description == f"hand recipe ({guest_device(index)})", boot.serial_log
        assert boot.boot_entry_partuuid == esp, f"booted {boot.boot_entry}; serial log: {boot.serial_log}"
        assert boot.loader_device_partuuid == esp
        assert boot.loader_image_identifier == r"\EFI\esp-mirror\payload.efi"

    unknown_machine = boot_firmware([disk_b], fresh_vars(vm_workdir / "fresh-vars.fd", vm_assets), assets=vm_assets)
    assert unknown_machine.boot_entry_partuuid is None  # OVMF's own entry for the whole disk
    assert unknown_machine.loader_device_partuuid == esp_b
    assert unknown_machine.loader_image_identifier == r"\EFI\BOOT\BOOTX64.EFI"
