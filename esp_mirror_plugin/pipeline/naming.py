"""Naming rules for disks, partitions and the identifiers esp-mirror creates.

New identifiers (partition GUIDs, the array UUID, the FAT volume id) are derived from the disks'
identities with UUIDv5, so ``plan`` prints the very values ``apply`` will use. A replacement disk
has another identity (serial number, WWN or image path) and so gets fresh partition GUIDs, which
per-partition boot entries need (two entries must never point at one GUID).
"""

from __future__ import annotations

import os
import uuid

from esp_mirror_plugin.pipeline.steps import Arg, Var
from esp_mirror_plugin.system.discovery import ESP_TYPE_GUID as ESP_TYPE_GUID  # the type names its partitions

_NAMESPACE = uuid.UUID("6f0c1b2e-6a35-4b55-9d1e-5e8f2a9c0e51")
PARTITION_NAME = "esp-mirror"


def partition_node(disk: Arg, number: int) -> Arg:
    """The kernel's name for partition ``number`` of ``disk``.

    The kernel appends "p" when the disk name ends in a digit: sda -> sda1, nvme0n1 -> nvme0n1p1,
    mmcblk0 -> mmcblk0p1, loop0 -> loop0p1. /dev/disk/by-* links must be resolved first.
    """
    if isinstance(disk, Var):
        return disk / f"p{number}"  # loop devices always end in a digit
    return f"{disk}p{number}" if disk[-1].isdigit() else f"{disk}{number}"


def kernel_path(path: str) -> str:
    """/dev/disk/by-id/... and other links resolved to the /dev node they point at."""
    return os.path.realpath(path)


def partition_guid(identity: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"esp-partition:{identity}"))


def table_guids(identity: str, numbers: list[int], esp_number: int) -> tuple[str, dict[int, str]]:
    """The disk GUID and each partition's GUID of a partition table copied onto the disk with
    ``identity`` (``replace --copy-table``): new ones, derived like the ESP's, so a run again finds
    the copy it made; the ESP's partition gets :func:`partition_guid`'s."""
    guids = {
        n: partition_guid(identity) if n == esp_number else str(uuid.uuid5(_NAMESPACE, f"partition:{identity}:{n}"))
        for n in numbers
    }
    return str(uuid.uuid5(_NAMESPACE, f"disk:{identity}")), guids


def array_uuid(identities: list[str], array_name: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"array:{array_name}:{','.join(sorted(identities))}"))


def mdadm_uuid(value: str) -> str:
    """mdadm's 8:8:8:8 form of a UUID (either form accepted)."""
    hexits = value.replace("-", "").replace(":", "").lower()
    return ":".join(hexits[i : i + 8] for i in range(0, 32, 8))


def volume_id(array: str) -> str:
    """The FAT volume serial (8 hex digits) derived from the array UUID."""
    return uuid.uuid5(_NAMESPACE, f"vfat:{mdadm_uuid(array)}").hex[:8].upper()


def fstab_uuid(vol_id: str) -> str:
    """How blkid and fstab spell a FAT volume serial: XXXX-XXXX."""
    return f"{vol_id[:4]}-{vol_id[4:]}".upper()


def released_volume_id(partuuid: str, taken: str = "") -> str:
    """The FAT volume serial (8 hex digits) a member's partition gets when it leaves the mirror
    (``esp-mirror release``), from its partition GUID: never the array's FAT's (``taken``), so
    fstab's UUID= of the array's FAT never resolves to it, and the same again when a release
    that was interrupted runs again."""
    n = 0
    while True:
        serial = uuid.uuid5(_NAMESPACE, f"vfat-released:{partuuid.lower()}:{n}").hex[:8].upper()
        if serial != taken.replace("-", "").upper():
            return serial
        n += 1
