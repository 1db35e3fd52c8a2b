"""From (request, profile, snapshot) to a :class:`Layout`: what exists, what must be made, and
whether it is safe at all. Every refusal is a :class:`BadInput` raised before anything changes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from esp_mirror_plugin.errors import BadInput, size_text
from esp_mirror_plugin.pipeline import fat, naming
from esp_mirror_plugin.pipeline.profiles import Profile
from esp_mirror_plugin.pipeline.request import METRICS_DIR, MIB, Request, Resolved, metrics_dir_problem
from esp_mirror_plugin.pipeline.steps import Arg, Var
from esp_mirror_plugin.system.discovery import DiskFacts, Partition, Snapshot

if TYPE_CHECKING:
    from esp_mirror_plugin.pipeline.adoption import Adoption

MAX_DISKS = 8
GPT_BACKUP = 34 * 4096  # backup GPT at the end of the disk (generous for 4Kn)


@dataclass(frozen=True)
class Member:
    """One disk of the mirror and its ESP partition."""

    disk: DiskFacts
    device: Arg  # the whole disk as commands see it: /dev/sda, or $LOOP_1 for an image file
    node: Arg  # the ESP partition: /dev/sda1, "${LOOP_1}p1"
    guid: str  # the partition GUID (existing, or the one sgdisk will set)
    exists: bool  # our ESP partition is already there
    wipe: bool  # wipe the disk's old signatures first (only with --wipe)
    loop_var: str | None  # the variable holding the loop device, for image files
    number: int = 1  # the partition's number: 1 where esp-mirror made it, any for an adopted ESP
    size: int = 0  # the partition's size in bytes (existing, or the one sgdisk will make)

    @property
    def tag(self) -> str:
        return disk_tag(self.disk)

    @property
    def partition(self) -> Partition | None:
        return self.disk.partition(self.number) if self.exists else None

    @property
    def superblock(self) -> str:
        """The array UUID in our existing ESP partition's md superblock, "" when none."""
        part = self.partition
        return part.md_uuid if part is not None else ""


def disk_tag(disk: DiskFacts) -> str:
    """Names the disk in boot entry labels: its serial number, else its kernel name."""
    ident = disk.identity
    return ident.split(":", 1)[1] if ident.startswith("serial:") else disk.name


@dataclass(frozen=True)
class Layout:
    members: tuple[Member, ...]
    raid_devices: int  # members plus "missing" slots for a --degraded array
    array_uuid: str  # mdadm form
    array_action: str  # "create", "assemble" or "keep"
    fs_uuid: str  # XXXX-XXXX
    volume_id: str  # 8 hex digits, for mkfs
    make_fs: bool
    esp_dir: str  # target + mountpoint, where the ESP is mounted on this machine
    mount: bool  # mount the array at esp_dir
    image_mode: bool
    nvram: bool
    first_sector: int
    last_sector: int
    sector_size: int
    notes: tuple[str, ...] = ()
    stop_first: str = ""  # an array device that exists but is not running: stopped before it is made
    resyncing: bool = False  # the running array is still copying onto a member: wait for it
    esp_size: int = 0  # what a new member's partition gets (the record keeps it for replace and add)
    adoption: Adoption | None = None  # `esp-mirror adopt`: the live ESP and how far its adoption got


def record_size(members: tuple[Member, ...]) -> int:
    """The partition size a new member gets: the smallest member's, in whole MiB, rounded up (a
    partition of it holds the array, whose members are no larger than the smallest)."""
    return -(-min(m.size for m in members) // MIB) * MIB


def esp_partition(disk: DiskFacts, array_uuid: str) -> Partition | None:
    """The disk's ESP partition of the mirror whose (mdadm) UUID is ``array_uuid``: partition 1
    as esp-mirror makes it, or an ESP partition that carries a member of that array (one that
    `esp-mirror adopt` took in where it was)."""
    first = disk.partition(1)
    if _is_our_partition(first):
        return first
    return next(
        (
            p
            for p in disk.partitions
            if p.is_esp
            and p.fstype == "linux_raid_member"
            and naming.mdadm_uuid(p.md_uuid) == naming.mdadm_uuid(array_uuid)
        ),
        None,
    )


def check_disks(request: Request, disks: tuple[DiskFacts, ...], array_uuid: str = "") -> None:
    """Refuse disk arguments that are wrong or unsafe. Runs before anything else. With
    ``array_uuid``, an ESP partition that carries a member of that array is ours, wherever it is."""
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
            raise BadInput(
                f"{disk.given} is a partition, not a whole disk: pass the disk it is on "
                f"(esp-mirror creates the ESP partition itself)"
            )
        if disk.key in seen:
            raise BadInput(f"disk {disk.given} is the same device as {seen[disk.key]}: list each disk once")
        seen[disk.key] = disk.given
        for key in disk.storage:
            if key in seen:
                raise BadInput(f"disk {disk.given} is the same storage as {seen[key]} ({_same(key)}): {_same_fix(key)}")
            seen[key] = disk.given
        mine = esp_partition(disk, array_uuid) if array_uuid else disk.partition(1)
        ours = mine is not None and (bool(array_uuid) or _is_our_partition(mine))
        # On a disk that already carries our ESP nothing is partitioned or wiped: only the disk
        # itself and the ESP partition matter (the installed system's root may share the disk).
        esp_node = disk.name + ("p" if disk.name[-1:].isdigit() else "") + str(mine.number if mine else 1)
        busy = [why for node, why in disk.busy if not ours or node in (disk.name, esp_node)]
        if busy:
            raise BadInput(f"disk {disk.given} is in use: {busy[0]}; choose a disk that nothing uses")
        holder_types = {
            "LVM2_member": "an LVM physical volume",
            "linux_raid_member": "an md RAID member",
            "swap": "swap space",
        }
        used = [t for t in disk.signatures if t in holder_types]
        used += [p.fstype for p in disk.partitions if p.fstype in holder_types and not ours]
        if used and not request.wipe:
            raise BadInput(
                f"disk {disk.given} holds {holder_types[used[0]]}: make sure it is unused, then pass --wipe to erase it"
            )
    kinds = {d.kind for d in disks}
    if kinds == {"block", "image"}:
        raise BadInput("mix of block devices and image files: give only disks, or only image files")
    sizes = {d.sector_size for d in disks}
    if len(sizes) > 1:
        listing = ", ".join(f"{d.given}={d.sector_size}" for d in disks)
        raise BadInput(
            f"disks have different logical sector sizes ({listing}): "
            "a RAID1 ESP needs members with one sector size; pick matching disks"
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


# Characters mkfs.fat refuses in a volume label (what FAT short names cannot hold).
_FAT_LABEL_BAD = frozenset('"*+,./:;<=>?[\\]|')
# What FAT long names, and the firmware's parsing of \EFI\<id>\ paths, do not take in a name.
_PATH_SEGMENT_BAD = frozenset('"*/:<>?\\|')


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
    if request.bootloader is not None and request.bootloader.needs_image:
        if not request.efi_image:
            raise BadInput(f"bootloader {request.bootloader} needs the EFI image to install: pass --efi-image PATH")
        problem = _file_problem(request.efi_image)
        if problem:
            raise BadInput(f"EFI image {request.efi_image} {problem}")
    if not os.path.isdir(request.target):
        raise BadInput(
            f"target {request.target} is not a directory: pass the root of the system being installed (default /)"
        )
    if request.esp_size % MIB:
        raise BadInput(
            f"--esp-size {request.esp_size // 1024}K is not a whole number of MiB (partitions are aligned "
            "to 1 MiB): use e.g. 512M"
        )
    if request.esp_start % MIB:
        raise BadInput(
            f"esp_start {request.esp_start // 1024}K is not a whole number of MiB (partitions are aligned "
            "to 1 MiB): use e.g. 1M"
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


def _is_our_partition(part: Partition | None) -> bool:
    return (
        part is not None
        and part.number == 1
        and part.type_guid == naming.ESP_TYPE_GUID
        and part.name == naming.PARTITION_NAME
    )


def holds_data(disk: DiskFacts) -> bool:
    """A partition table with partitions, or any other signature: only --wipe may erase it.
    An empty GPT is not data (partition 1 is simply added to it)."""
    empty_gpt = disk.pttype == "gpt" and not disk.partitions
    return bool(disk.pttype and not empty_gpt) or bool(set(disk.signatures) - {"gpt", "PMBR"})


def build(request: Resolved, profile: Profile, snapshot: Snapshot) -> Layout:
    """Decide every action from the snapshot; refuse unsafe or inconsistent states."""
    check_settings(request)
    derived = derived_uuid(request, snapshot.disks)
    check_disks(request, snapshot.disks, derived)
    sector = snapshot.disks[0].sector_size
    first = request.esp_start // sector
    last = first + request.esp_size // sector - 1
    _check_size(request, snapshot, sector)

    image_mode = snapshot.disks[0].kind == "image"
    notes: list[str] = []
    members = []
    for index, disk in enumerate(snapshot.disks, start=1):
        loop_var = f"LOOP_{index}" if image_mode else None
        device: Arg = Var(loop_var) if loop_var else disk.path
        existing = esp_partition(disk, derived)
        adopted = existing is not None and not _is_our_partition(existing)  # `esp-mirror adopt` took it in
        if (
            existing is not None
            and not adopted
            and (existing.start, existing.start + existing.size - 1) != (first, last)
        ):
            raise BadInput(
                f"disk {disk.given} already has an esp-mirror ESP of "
                f"{size_text(existing.size * sector)} at sector {existing.start}: re-run with "
                f"--esp-size {existing.size * sector // MIB}M, or --wipe to start over"
            )
        foreign = existing is None and holds_data(disk)
        if foreign and not request.wipe:
            raise BadInput(
                f"disk {disk.given} already has a partition table or data "
                f"({disk.pttype or ', '.join(disk.signatures)}): esp-mirror never wipes "
                "silently; pass --wipe to erase it"
            )
        number = existing.number if existing is not None else 1
        members.append(
            Member(
                disk=disk,
                device=device,
                node=naming.partition_node(device, number),
                guid=existing.guid if existing is not None else naming.partition_guid(disk.identity),
                exists=existing is not None,
                wipe=foreign,
                loop_var=loop_var,
                number=number,
                size=existing.size * sector if existing is not None else request.esp_size,
            )
        )

    array_uuid, action, fs_uuid, make_fs = _array_state(request, snapshot, members)
    array = snapshot.array
    resyncing = array is not None and (array.sync_action in ("resync", "recover") or array.resync_owed)
    volume = fs_uuid.replace("-", "") if fs_uuid else naming.volume_id(array_uuid)
    esp_dir = os.path.normpath(os.path.join(request.target, request.mountpoint.lstrip("/")))
    mount = _check_mount(snapshot, esp_dir, request.device)

    nvram = not request.no_nvram
    if nvram and image_mode:
        nvram = False
        notes.append(
            "image files are not this machine's disks: no firmware boot entries are made "
            "(--no-nvram); the firmware boots them via \\EFI\\BOOT\\ fallback path"
        )
    elif nvram and not snapshot.efivars:
        nvram = False
        notes.append(
            "WARNING: no EFI variables here (/sys/firmware/efi/efivars is empty): no boot "
            "entries are made; the firmware will boot via the \\EFI\\BOOT\\ fallback path. "
            "Run `esp-mirror apply` again on the booted system, or pass --no-nvram to silence this"
        )
    return Layout(
        members=tuple(members),
        raid_devices=max(len(members), 2),
        array_uuid=array_uuid,
        array_action=action,
        fs_uuid=naming.fstab_uuid(volume),
        volume_id=volume,
        make_fs=make_fs,
        esp_dir=esp_dir,
        mount=mount,
        image_mode=image_mode,
        nvram=nvram,
        first_sector=first,
        last_sector=last,
        sector_size=sector,
        notes=tuple(notes),
        stop_first=snapshot.inactive if action != "keep" else "",
        resyncing=resyncing,
        esp_size=record_size(tuple(members)),
    )


def derived_uuid(request: Request, disks: tuple[DiskFacts, ...]) -> str:
    """The array UUID (mdadm form) esp-mirror gives the mirror of these disks under this name."""
    return naming.mdadm_uuid(naming.array_uuid([d.identity for d in disks], request.array_name))


def _check_size(request: Resolved, snapshot: Snapshot, sector: int) -> None:
    if fat.sectors_per_cluster(request.esp_size, sector) is None:
        minimum = fat.minimum_size(sector) // MIB
        raise BadInput(
            f"ESP size {size_text(request.esp_size)} is too small for FAT32 with "
            f"{sector}-byte sectors: use --esp-size {minimum}M or more"
        )
    for disk in snapshot.disks:
        if request.esp_start + request.esp_size + GPT_BACKUP > disk.size:
            room = (disk.size - request.esp_start - GPT_BACKUP) // MIB
            fix = (
                f"use --esp-size {room}M or less"
                if fat.sectors_per_cluster(room * MIB, sector) is not None
                else "use a larger disk"
            )
            raise BadInput(
                f"ESP of {size_text(request.esp_size)} does not fit on {disk.given} ({size_text(disk.size)}): {fix}"
            )


def _array_state(request: Resolved, snapshot: Snapshot, members: list[Member]) -> tuple[str, str, str, bool]:
    """(array UUID, "create"/"assemble"/"keep", FAT UUID or "", whether to mkfs)."""
    supers = {m.superblock for m in members if m.superblock}
    array = snapshot.array
    if array is not None:
        if supers and naming.mdadm_uuid(array.uuid) not in {naming.mdadm_uuid(s) for s in supers}:
            raise BadInput(
                f"{array.device} is running but is another array (UUID {array.uuid}): "
                "stop it, or pass --array-name to use another name"
            )
        if not supers:
            raise BadInput(
                f"{array.device} already exists and is not on these disks: "
                "pass --array-name NAME to choose another name"
            )
        if array.level != "raid1":
            raise BadInput(
                f"{array.device} is {array.level}, not raid1: the ESP must be a RAID1 mirror; if that array "
                f"is not needed, stop it (`mdadm --stop {array.device}`) and pass --wipe to start over"
            )
        strangers = [
            m.disk.given
            for m in members
            if not (m.superblock and naming.mdadm_uuid(m.superblock) == naming.mdadm_uuid(array.uuid))
        ]
        if strangers:
            raise BadInput(
                f"disk {strangers[0]} is not a member of the running array {array.device}: "
                f"add it with `esp-mirror add --disk {strangers[0]}`"
            )
        if array.fstype not in ("", "vfat"):
            raise BadInput(f"{array.device} holds {array.fstype}, not FAT: refusing to format it; check what it is")
        return naming.mdadm_uuid(array.uuid), "keep", array.fs_uuid, array.fstype == ""
    derived = derived_uuid(request, tuple(m.disk for m in members))
    half_made = any(not m.superblock for m in members) and not any(_holds_fat(m) for m in members)
    if supers and {naming.mdadm_uuid(s) for s in supers} == {derived} and half_made:
        # an array this very apply began to create on some members only (a run interrupted in
        # mdadm --create) and that holds no FAT: nothing on it yet, so it is made again. When
        # every member carries it, it is assembled below.
        return derived, "create", "", True
    if len(supers) > 1:
        raise BadInput("the ESP partitions carry superblocks of different arrays: pass --wipe to start over")
    if supers:
        part = next(p for m in members if m.superblock and (p := m.partition) is not None)
        without = [m.disk.given for m in members if not m.superblock]
        if without:
            raise BadInput(
                f"disks {', '.join(without)} are not members of the existing ESP array "
                f"{part.md_name}: use `esp-mirror add` for new disks, or --wipe to start over"
            )
        fs_uuid = part.inner_uuid if part.inner_fstype == "vfat" else ""
        return naming.mdadm_uuid(part.md_uuid), "assemble", fs_uuid, part.inner_fstype == ""
    return derived, "create", "", True


def _holds_fat(member: Member) -> bool:
    part = member.partition
    return part is not None and part.inner_fstype == "vfat"


def _check_mount(snapshot: Snapshot, esp_dir: str, device: str) -> bool:
    mounted = snapshot.mounted_at(esp_dir)
    if mounted is None:
        return True
    array = snapshot.array
    if array is not None and mounted.device in (array.device, array.kernel_device):
        return False
    raise BadInput(
        f"{esp_dir} is already mounted from {mounted.device}: unmount it first "
        f"(umount {esp_dir}); esp-mirror mounts {device} there"
    )
