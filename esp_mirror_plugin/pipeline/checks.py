"""Every refusal that comes before a plan, once: the settings, the disks given, and what a disk's
model (:mod:`.disks`) says esp-mirror may not do to it. Each raises :class:`BadInput` with one
line naming the problem and the fix; :mod:`.members` and the builders call them, nothing here
decides what happens to a disk.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from esp_mirror_plugin.errors import BadInput, size_text
from esp_mirror_plugin.pipeline import fat
from esp_mirror_plugin.pipeline.bootloaders import spec
from esp_mirror_plugin.pipeline.disks import MIB, DiskModel, EspPartition, Holds
from esp_mirror_plugin.pipeline.request import METRICS_DIR, Resolved, metrics_dir_problem
from esp_mirror_plugin.system.discovery import DiskFacts

MAX_DISKS = 8

# Characters mkfs.fat refuses in a volume label (what FAT short names cannot hold).
_FAT_LABEL_BAD = frozenset('"*+,./:;<=>?[\\]|')
# What FAT long names, and the firmware's parsing of \EFI\<id>\ paths, do not take in a name.
_PATH_SEGMENT_BAD = frozenset('"*/:<>?\\|')


# -- the settings -------------------------------------------------------------------------------


def _shown(chars: set[str]) -> str:
    return " ".join(repr(c) if ord(c) < 32 else c for c in sorted(chars))


def fat_label_problem(label: str) -> str | None:
    """Why ``label`` is not a FAT volume label that mkfs.fat takes as it is, or None."""
    bad = {c for c in label if c in _FAT_LABEL_BAD or ord(c) < 32 or ord(c) == 127}
    if not label:
        return "it is empty"
    if not label.isascii() or len(label.encode()) > 11:
        return "FAT labels are at most 11 ASCII characters"
    if bad:
        return f"FAT labels cannot contain {_shown(bad)}"
    if label != label.upper():
        return "FAT labels are upper case"
    if label.startswith(" "):
        return "a FAT label cannot start with a space"
    return None


def path_segment_problem(name: str) -> str | None:
    """Why ``name`` is not one directory name under \\EFI\\, or None."""
    bad = {c for c in name if c in _PATH_SEGMENT_BAD or ord(c) < 32}
    if not name or name in (".", ".."):
        return "it is empty" if not name else f"{name} is not a name"
    if bad:
        return f"it contains {_shown(bad)}"
    if name != name.strip() or name.endswith("."):
        return "it starts or ends with a space, or ends with a dot"
    if len(name) > 64:
        return "it is longer than 64 characters"
    return None


def check_settings(request: Resolved) -> None:
    """The settings themselves, before any disk is looked at."""
    if request.metadata != "1.0":
        raise BadInput(
            f"metadata {request.metadata} is not supported: the ESP must use md metadata 1.0 "
            "(superblock at the end, so firmware sees a plain FAT32); drop --metadata"
        )
    if not request.array_name or "/" in request.array_name or " " in request.array_name:
        raise BadInput(
            f"array name {request.array_name!r} is not valid: it names /dev/md/NAME, so it cannot be empty or "
            "hold a / or a space; use a short word like esp"
        )
    if (
        not request.mountpoint
        or not request.mountpoint.startswith("/")
        or ".." in request.mountpoint.split("/")
        or os.path.normpath(request.mountpoint) == "/"
    ):
        raise BadInput(f"mount point {request.mountpoint!r} must be an absolute path like /boot/efi")
    problem = metrics_dir_problem(request.metrics_dir)
    if problem:
        raise BadInput(f"metrics dir {request.metrics_dir!r} {problem}: use e.g. {METRICS_DIR}")
    problem = fat_label_problem(request.label)
    if problem:
        raise BadInput(f"label {request.label!r} is not a valid FAT label: {problem}; use e.g. ESP")
    problem = path_segment_problem(request.loader_id or "")
    if problem:
        raise BadInput(
            f"loader id {request.loader_id!r} is not one directory name under \\EFI\\: {problem}; use e.g. debian"
        )
    if spec(request.bootloader).needs_image:
        if not request.efi_image:
            raise BadInput(f"bootloader {request.bootloader} needs the EFI image to install: pass --efi-image PATH")
        problem = _file_problem(request.efi_image)
        if problem:
            raise BadInput(f"EFI image {request.efi_image} {problem}")
    if not os.path.isdir(request.target):
        raise BadInput(
            f"target {request.target} is not a directory: pass the root of the system being installed (default /)"
        )
    for name, value in (("--esp-size", request.esp_size), ("esp_start", request.esp_start)):
        if value % MIB:
            raise BadInput(
                f"{name} {value // 1024}K is not a whole number of MiB (partitions are aligned to 1 MiB): "
                f"use e.g. {'512M' if name == '--esp-size' else '1M'}"
            )


def _file_problem(path: str) -> str | None:
    """What keeps ``path`` from being an EFI image esp-mirror can copy, and the fix; None when nothing."""
    if os.path.isdir(path):
        return "is a directory, not an EFI image: give the file"
    if not os.path.exists(path):
        return "does not exist: pass the path of an EFI binary"
    if not os.path.isfile(path):
        return "is not a regular file: pass the path of an EFI binary"
    if not os.access(path, os.R_OK):
        return "cannot be read: run esp-mirror as root, or make the file readable"
    return None


# -- the disks given ----------------------------------------------------------------------------


def check_count(request: Resolved) -> None:
    """apply's number of disks: 2 to 8, or one with --degraded."""
    count = len(request.disks)
    if count == 0:
        raise BadInput("no disks given: pass --disk DISK at least twice (one per mirror member)")
    if count < 2 and not request.degraded:
        raise BadInput(
            f"only one disk given ({request.disks[0]}): a mirror needs 2 to {MAX_DISKS}; "
            "add another --disk, or pass --degraded to build a one-disk mirror to grow later"
        )
    if count > MAX_DISKS:
        raise BadInput(f"{count} disks given: esp-mirror mirrors 2 to {MAX_DISKS} disks; pass fewer --disk")


def check_disks(
    disks: Sequence[DiskFacts], *, partition_hint: str = "esp-mirror creates the ESP partition itself"
) -> None:
    """Each disk given exists and is a whole disk or an image file, each is given once (by any of
    its names, or as two paths to one storage), and together they are of one kind and one
    logical sector size."""
    seen: dict[str, str] = {}
    for disk in disks:
        if disk.kind == "missing":
            raise BadInput(f"disk {disk.given} does not exist: check the path (lsblk lists disks)")
        if disk.kind == "other":
            raise BadInput(
                f"disk {disk.given} is neither a block device nor an image file: "
                "pass a whole disk such as /dev/sda or a disk image file"
            )
        if disk.kind == "partition":
            raise BadInput(f"{disk.given} is a partition, not a whole disk: pass the disk it is on ({partition_hint})")
        if disk.key in seen:
            raise BadInput(f"disk {disk.given} is the same device as {seen[disk.key]}: list each disk once")
        seen[disk.key] = disk.given
        for key in disk.storage:
            if key in seen:
                raise BadInput(f"disk {disk.given} is the same storage as {seen[key]} ({_same(key)}): {_same_fix(key)}")
            seen[key] = disk.given
    if {d.kind for d in disks} == {"block", "image"}:
        raise BadInput("mix of block devices and image files: give only disks, or only image files")
    sizes = {d.sector_size for d in disks}
    if len(sizes) > 1:
        listing = ", ".join(f"{d.given}={d.sector_size}" for d in disks)
        raise BadInput(
            f"disks have different logical sector sizes ({listing}): "
            "a RAID1 ESP needs members with one sector size; pick matching disks"
        )


def check_image_target(disks: Sequence[DiskFacts], target: str, target_given: bool) -> None:
    """Image files are not this machine's disks: the root their files go to is named."""
    if any(d.kind == "image" for d in disks) and not target_given:
        raise BadInput(
            "image files are not this machine's disks: pass --target ROOT, the image's root "
            "(or --target / to set up this machine's own /etc for them)"
        )


def _same(key: str) -> str:
    kind, _, value = key.partition(":")
    return {
        "wwid": f"same WWN {value}",
        "serial": f"same serial number {value}",
        "file": "both are the same image file",
    }.get(kind, key)


def _same_fix(key: str) -> str:
    if key.startswith("file:"):
        return "list each image once (detach the extra loop device with losetup --detach)"
    return (
        "multipath or dual-path SAS shows one disk under two names; pass each physical disk once "
        "(lsblk -o NAME,WWN,SERIAL shows which names share a disk)"
    )


# -- one disk, from its model -------------------------------------------------------------------


def check_not_in_use(disk: DiskModel) -> None:
    """The whole disk is not in use (a file system on it, held by md or LVM, swap)."""
    if disk.in_use:
        raise BadInput(
            f"disk {disk.facts.given} is in use: {disk.facts.name} {_is(disk.in_use)}; choose a disk that nothing uses"
        )


def check_member_free(disk: DiskModel, esp: EspPartition) -> None:
    """A member of the mirror that something else holds or mounts (another md array assembled it)."""
    if esp.in_use:
        raise BadInput(
            f"disk {disk.facts.given} is in use: {esp.node.rsplit('/', 1)[-1]} {_is(esp.in_use)}; "
            "choose a disk that nothing uses"
        )


def _is(use: str) -> str:
    """A use as a sentence says it: "mounted at /" is "is mounted at /", "holds ..." stays."""
    return use if use.startswith(("holds ", "is ")) else f"is {use}"


def check_wipe(disk: DiskModel) -> None:
    """--wipe erases every partition of the disk: refused while the system uses one of them."""
    if disk.used:
        listing = "; ".join(o.describe() for o in disk.used)
        raise BadInput(
            f"--wipe would erase all of {disk.facts.given}, and the running system uses {listing}: "
            "leave out --wipe (esp-mirror adds its ESP beside partitions in use), or free them first"
        )


def check_one_esp(disk: DiskModel) -> None:
    if len(disk.esps) > 1:
        names = ", ".join(e.describe() for e in disk.esps)
        raise BadInput(
            f"disk {disk.facts.given} has {len(disk.esps)} ESP partitions ({names}): esp-mirror takes one per disk; "
            "change the type of the one that is not an ESP (sgdisk --typecode=N:8300), or leave the disk out"
        )


def check_esp_takeable(disk: DiskModel, esp: EspPartition, *, command: str) -> None:
    """An ESP partition that apply (or replace, add) may take as it is: it holds nothing of value
    and nothing uses it."""
    node = esp.node
    if esp.holds is Holds.FILES:
        if command == "adopt":
            return
        raise BadInput(
            f"disk {disk.facts.given}'s ESP partition {esp.describe()} holds files, which {command} never "
            f"overwrites: take it into the mirror with its files with `esp-mirror adopt`, or, if they are not "
            f"needed, erase it first (`wipefs --all {node}`)"
        )
    if esp.holds is Holds.OTHER:
        raise BadInput(
            f"disk {disk.facts.given}'s ESP partition {esp.describe()} is not empty: check what it is; "
            f"if it is not needed, erase it (`wipefs --all {node}`), then run {command} again"
        )
    if command != "adopt" and esp.in_use:  # adopt unmounts its ESPs itself
        raise BadInput(
            f"disk {disk.facts.given}'s ESP partition {esp.node} {_is(esp.in_use)}: the mirror needs it unused; "
            f"free it first, then run {command} again"
        )
    check_fat32_fits(node, esp.size, esp.sector)


def check_room(disk: DiskModel, start: int, size: int, *, command: str) -> None:
    """Partition 1 can be added at ``start`` (bytes) with ``size`` on a disk without an ESP partition."""
    if not disk.no_room:
        return
    given, sector = disk.facts.given, disk.facts.sector_size
    other = "or leave it out" if command == "adopt" else "or pass --wipe to erase the whole disk"
    if disk.whole and command != "adopt":
        raise BadInput(f"disk {given} holds {disk.whole}: make sure it is unused, then pass --wipe to erase it")
    blocker = disk.in_the_way
    if blocker is not None and blocker.in_use:
        raise BadInput(
            f"disk {given} has no ESP partition and no room for one of {size_text(size)} at {size_text(start)}: "
            f"{blocker.describe()} is there, and esp-mirror never moves a partition in use; choose another disk"
        )
    raise BadInput(
        f"disk {given} has no ESP partition and no room for one of {size_text(size)} at "
        f"{size_text(start)} ({disk.no_room}): give it an EF00 partition of that size there "
        f"(sgdisk --new=1:{start // sector}:+{size // MIB}M --typecode=1:EF00 {disk.facts.path}), {other}"
    )


def check_fat32_fits(what: str, size: int, sector: int) -> None:
    """A partition of ``size`` holds a FAT32 with the md superblock at its end."""
    if fat.sectors_per_cluster(size, sector) is None:
        raise BadInput(
            f"the ESP partition {what} ({size_text(size)}) is too small for FAT32 plus the md superblock "
            f"with {sector}-byte sectors: it needs {size_text(fat.minimum_size(sector))}; leave that disk out "
            "or make its ESP larger first"
        )
