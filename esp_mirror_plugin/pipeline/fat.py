"""FAT32 on the array: cluster size, the smallest viable ESP, and the mkfs command.

FAT32 needs at least 65,525 clusters. The cluster size is chosen here, not left to mkfs.fat's
heuristics, so the plan shows the exact command and the size check uses the same arithmetic.
"""

from __future__ import annotations

import re

from esp_mirror_plugin.pipeline.disks import MIB
from esp_mirror_plugin.pipeline.steps import Command, EnsureFat

# Every mount of the ESP: private to root (bootctl warns about a world-readable random seed).
MOUNT_OPTIONS = "umask=0077"
FAT32_MIN_CLUSTERS = 65525 + 16  # a little margin over the FAT32 definition
RESERVED_SECTORS = 32
MD_RESERVE = 1 * MIB  # md metadata 1.0 keeps its superblock (and bad-block log) at the end
MAX_CLUSTER = 4096  # 4 KiB clusters: what firmware and Windows use on an ESP


# fsck.fat -n on a FAT that Linux has mounted (or that was not unmounted) reports the dirty bit
# and the backup boot sector differing in that one byte (offset 65): not damage.
_BENIGN_FSCK = (
    re.compile(r"^fsck\.fat "),
    re.compile(r"^There are differences between boot sector and its backup"),
    re.compile(r"^This is mostly harmless"),
    re.compile(r"^\s+65:0[01]/0[01]$"),
    re.compile(r"^\s+Not automatically fixing this"),
    re.compile(r"^Dirty bit is set"),
    re.compile(r"^\s*Automatically removing dirty bit"),
    re.compile(r"^Leaving filesystem unchanged"),
    re.compile(r"^\S+: \d+ files, \d+/\d+ clusters$"),
    re.compile(r"^\s*$"),
    # the free-cluster count in the FSInfo sector is a hint that firmware and Linux rarely update
    re.compile(r"^Free cluster summary wrong \(\d+ vs\. really \d+\)$"),
    re.compile(r"^\s+Auto-correcting\.$"),
    # clusters marked used that no file references: the allocations of writes still in flight on
    # a mounted FAT (a member read while the array is mounted), or space lost by a cut write;
    # every file is whole, and fsck.fat -a gives the space back
    re.compile(r"^Reclaimed \d+ unused clusters? \(\d+ bytes\)\.$"),
)


def fsck_problems(output: str) -> list[str]:
    """The lines of ``fsck.fat -n`` output that report real damage."""
    return [line for line in output.splitlines() if not any(p.match(line) for p in _BENIGN_FSCK)]


def _clusters(size: int, sector: int, per_cluster: int) -> int:
    sectors = (size - MD_RESERVE) // sector - RESERVED_SECTORS
    estimate = sectors // per_cluster
    fat_sectors = -(-(estimate + 2) * 4 // sector)
    return (sectors - 2 * fat_sectors) // per_cluster


def sectors_per_cluster(size: int, sector: int) -> int | None:
    """The largest cluster (at most 4 KiB) that still gives a valid FAT32, or None if none does."""
    per_cluster = max(MAX_CLUSTER // sector, 1)
    while per_cluster >= 1:
        if _clusters(size, sector, per_cluster) >= FAT32_MIN_CLUSTERS:
            return per_cluster
        per_cluster //= 2
    return None


def capacity(size: int, sector: int) -> int:
    """Bytes of file data a FAT32 made by :func:`mkfs` on an array of ``size`` holds (0: none fits)."""
    per_cluster = sectors_per_cluster(size, sector)
    return _clusters(size, sector, per_cluster) * per_cluster * sector if per_cluster else 0


def minimum_size(sector: int) -> int:
    """The smallest ESP (whole MiB) that holds a FAT32 at this logical sector size."""
    mib = 1
    while sectors_per_cluster(mib * MIB, sector) is None:
        mib += 1
    return mib * MIB


def mkfs(device: str, size: int, sector: int, label: str, volume_id: str) -> Command:
    return Command(
        (
            "mkfs.vfat",
            "-F",
            "32",
            "-S",
            str(sector),
            "-s",
            str(sectors_per_cluster(size, sector)),
            "-n",
            label,
            "-i",
            volume_id,
            device,
        ),
        why=f"FAT32 on the array, volume id {volume_id}, {sector}-byte sectors",
    )


def mount(device: str, where: str, why: str) -> Command:
    """Mount the array's FAT (never a member) with the ESP's options."""
    return Command(("mount", "-t", "vfat", "-o", MOUNT_OPTIONS, device, where), why=why)


def ensure(device: str, make: Command) -> EnsureFat:
    """Before an existing FAT is used: ``fsck.fat -n``; one that is damaged and holds no files (an
    mkfs that did not finish) is made again with ``make``; one that holds files is never touched."""
    return EnsureFat(device, make, why="a FAT that an interrupted mkfs left half made is made again, never mounted")
