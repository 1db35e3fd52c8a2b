"""Raw disk and NVRAM image files, and reading an ESP member's FAT from the host with mtools."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ci.vm.assets import Assets
from ci.vm.command import run_command

ESP_OFFSET = 1048576  # sector 2048: where the hand recipe starts partition 1, as sgdisk does by default

_MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1"}


def blank_disk(path: Path, size_mib: int) -> Path:
    """Create (or truncate to empty) a sparse raw disk image of ``size_mib`` MiB and return its path."""
    with path.open("wb") as image:
        image.truncate(size_mib * 1024 * 1024)
    return path


def fresh_vars(path: Path, assets: Assets | None = None, keys: str = "") -> Path:
    """Copy OVMF's pristine NVRAM template to ``path``: a machine that has never seen any disk.

    :param keys: "" no Secure Boot keys; "ms" Microsoft's keys enrolled, "snakeoil" the snakeoil
        key: Secure Boot on. OVMF's plain build enforces it too (without SMM to guard the
        variables; seen: it refuses an unsigned systemd-boot), but starts qemu's ``-kernel``
        image all the same, so one NVRAM file serves the installer guest first and the firmware
        boots of the disks later.
    """
    assets = assets or Assets.ensure()
    template = {"": assets.ovmf_vars, "ms": assets.ovmf_vars_ms, "snakeoil": assets.ovmf_vars_snakeoil}[keys]
    shutil.copyfile(template, path)
    return path


def _mtools_image(image: Path, offset: int) -> str:
    return f"{image}@@{offset}"


def read_member(image: Path, offset: int, path: str) -> bytes:
    """Return the bytes of ``path`` (e.g. "EFI/BOOT/BOOTX64.EFI") in the FAT at ``offset`` of ``image``.

    A RAID1 member with metadata 1.0 has the file system at offset 0 of its partition, so this
    reads what the firmware reads from that disk.
    """
    argv = ["mcopy", "-n", "-i", _mtools_image(image, offset), f"::/{path.lstrip('/')}", "-"]
    return run_command(argv, env=_MTOOLS_ENV)


def list_member(image: Path, offset: int) -> list[str]:
    """Return every path in the FAT at ``offset`` of ``image``, recursively, like "EFI/BOOT/BOOTX64.EFI"."""
    out = run_command(["mdir", "-/", "-b", "-i", _mtools_image(image, offset), "::/"], env=_MTOOLS_ENV)
    return sorted(line.removeprefix("::/").rstrip("/") for line in out.decode().splitlines() if line.strip())


def member_files(image: Path, offset: int) -> dict[str, bytes]:
    """Every regular file in the FAT at ``offset`` of ``image`` (path: bytes), as the firmware
    reads that disk."""
    out = run_command(["mdir", "-/", "-b", "-i", _mtools_image(image, offset), "::/"], env=_MTOOLS_ENV)
    paths = [line.removeprefix("::/") for line in out.decode().splitlines() if line.strip()]
    return {p: read_member(image, offset, p) for p in sorted(paths) if not p.endswith("/")}


def partition_uuid(image: Path, number: int = 1) -> str:
    """Return the GPT partition GUID (lowercase) of partition ``number`` of ``image``, read with sfdisk."""
    table = json.loads(run_command(["sfdisk", "--json", str(image)]))["partitiontable"]
    for partition in table.get("partitions", []):
        if partition["node"] == f"{image}{number}":
            return str(partition["uuid"]).lower()
    raise LookupError(f"{image} has no partition {number}")
