"""VM test harness: boot OVMF in qemu (TCG) with raw disk images to test esp-mirror for real.

OVMF under TCG (it fails under KVM here), the host root shared read-only over 9p as the guest's
root, a payload UKI that prints the EFI variables it was booted with. Typical use::

    from ci.vm import Assets, blank_disk, boot_firmware, fresh_vars, run_in_guest

    assets = Assets.ensure()
    disks = [blank_disk(tmp / "a.img", 1024), blank_disk(tmp / "b.img", 1024)]
    nvram = fresh_vars(tmp / "vars.fd")
    result = run_in_guest("sh /path/to/script /dev/vda /dev/vdb", disks, nvram)
    boot = boot_firmware(disks[:1], nvram)
"""

from ci.vm.assets import AssetError, Assets, default_cache_dir, preflight
from ci.vm.command import CommandError
from ci.vm.efivars import LoadOption
from ci.vm.guest import BootResult, GuestResult, boot_firmware, run_after_firmware_boot, run_in_guest
from ci.vm.images import ESP_OFFSET, blank_disk, fresh_vars, list_member, member_files, partition_uuid, read_member
from ci.vm.payload import PAYLOAD_CMDLINE, build_payload, snakeoil_signed
from ci.vm.qemu import VmError

__all__ = [
    "ESP_OFFSET",
    "PAYLOAD_CMDLINE",
    "AssetError",
    "Assets",
    "BootResult",
    "CommandError",
    "GuestResult",
    "LoadOption",
    "VmError",
    "blank_disk",
    "boot_firmware",
    "build_payload",
    "default_cache_dir",
    "fresh_vars",
    "list_member",
    "member_files",
    "partition_uuid",
    "preflight",
    "read_member",
    "run_after_firmware_boot",
    "run_in_guest",
    "snakeoil_signed",
]
