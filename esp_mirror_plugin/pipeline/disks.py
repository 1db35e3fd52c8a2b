"""What a disk holds, as every esp-mirror command reads it: one model, no decisions.

:func:`model` sorts a disk (its :class:`~esp_mirror_plugin.system.discovery.DiskFacts`) into

* its ESP partitions (GPT type EF00), each with what it holds: a member of the mirror's array,
  nothing, a FAT without files, a FAT with files, or something else;
* whether partition 1 can be added at the ESP's place (the free space there, on a GPT whose entry
  1 is free, or a disk that holds nothing at all), and if not, why not;
* every other partition with its use (mounted, an md, LVM or ZFS member, swap, a file system),
  which nothing esp-mirror does may touch unless ``--wipe`` erases the whole disk.

:mod:`esp_mirror_plugin.pipeline.members` decides from it; the plan shows its descriptions.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from esp_mirror_plugin.errors import size_text
from esp_mirror_plugin.pipeline import naming
from esp_mirror_plugin.system.discovery import DiskFacts, Partition

MIB = 1024 * 1024
GPT_BACKUP = 34 * 4096  # the backup GPT at the end of a disk (generous for 4Kn)
GPT_ENTRIES = 128 * 128  # the bytes of a GPT's partition entry array: 128 entries of 128 bytes


def gpt_backup(sector_size: int) -> int:
    """The bytes the backup GPT takes at the end of a disk with ``sector_size``: its entry array
    and its header's sector. A copy of a table fits on a disk that has these after its last
    partition (a disk the same size as the one it comes from, when that one's last partition
    runs to its last usable sector)."""
    return GPT_ENTRIES + sector_size


# The GPT types a reader knows by name (sgdisk's codes in brackets), for the plan and messages.
_TYPE_NAMES = {
    naming.ESP_TYPE_GUID: "EFI system (EF00)",
    "0FC63DAF-8483-4772-8E79-3D69D8477DE4": "Linux file system (8300)",
    "A19D880F-05FC-4D3B-A006-743F0F84911E": "Linux RAID (FD00)",
    "E6D6D379-F507-44C2-A23C-238F2A3DF928": "Linux LVM (8E00)",
    "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F": "Linux swap (8200)",
    "6A898CC3-1DD2-11B2-99A6-080020736631": "ZFS (BF00)",
    "6A85CF4D-1DD2-11B2-99A6-080020736631": "Solaris root (BF01)",
    "21686148-6449-6E6F-744E-656564454649": "BIOS boot (EF02)",
    "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709": "Linux root x86-64 (8304)",
    "BC13C2FF-59E6-4262-A352-B275FD6F7172": "Linux extended boot (EA00)",
    "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7": "Microsoft basic data (0700)",
}
# What blkid's TYPE says a partition is part of: it belongs to something bigger than this disk.
_MEMBER_OF = {
    "linux_raid_member": "an md RAID member",
    "LVM2_member": "an LVM physical volume",
    "zfs_member": "a ZFS pool member",
    "swap": "swap space",
    "crypto_LUKS": "a LUKS container",
    "bcache": "a bcache device",
}


class Holds(StrEnum):
    """What an ESP partition (GPT type EF00) holds."""

    MEMBER = "member"  # a member of the mirror's array
    NOTHING = "nothing"  # no signature blkid knows
    EMPTY_FAT = "empty-fat"  # a FAT with no files (directories at most)
    FILES = "files"  # a FAT with files: an ESP in use, or its copy (adopt takes those)
    OTHER = "other"  # another array's member, another file system, a FAT mtools cannot read

    @property
    def empty(self) -> bool:
        """Nothing of value in it: esp-mirror may take the partition as it is."""
        return self in (Holds.NOTHING, Holds.EMPTY_FAT)


@dataclass(frozen=True)
class EspPartition:
    """One ESP partition of a disk and what it holds."""

    part: Partition
    node: str
    holds: Holds
    sector: int
    in_use: str = ""  # why the running system uses it ("mounted at /boot/efi", "in use by md3"); "" when not

    @property
    def size(self) -> int:
        return self.part.size * self.sector

    @property
    def start(self) -> int:
        return self.part.start * self.sector

    def describe(self) -> str:
        """``sda1 (512 MiB at 1 MiB, a FAT with 12 files)``, for messages."""
        return f"{_name(self.node)} ({size_text(self.size)} at {size_text(self.start)}, {self.contents()})"

    def contents(self) -> str:
        part = self.part
        if self.holds is Holds.MEMBER:
            return f"a member of the array {part.md_name or part.md_uuid}"
        if self.holds is Holds.NOTHING:
            return "no file system"
        if self.holds is Holds.EMPTY_FAT:
            return "a FAT without files"
        if self.holds is Holds.FILES:
            return f"a FAT with {part.fat_files} file{'' if part.fat_files == 1 else 's'}"
        if part.fstype == "vfat":
            return "a FAT that mtools cannot read"
        if part.fstype == "linux_raid_member":
            return f"a member of another md array ({part.md_name or part.md_uuid})"
        return _MEMBER_OF.get(part.fstype, part.fstype)


@dataclass(frozen=True)
class OtherPartition:
    """A partition that is not an ESP: esp-mirror never touches it (``--wipe`` erases it with the disk)."""

    part: Partition
    node: str
    sector: int
    in_use: str = ""  # why the running system uses it ("mounted at /", "in use by md127"); "" when not

    def describe(self) -> str:
        """``sda2 (1.5 GiB, Linux RAID (FD00), an md RAID member 'any:root', in use by md127)``."""
        part = self.part
        what = [size_text(part.size * self.sector), _TYPE_NAMES.get(part.type_guid, f"type {part.type_guid}")]
        if part.fstype == "linux_raid_member":
            what.append(f"an md RAID member {part.md_name!r}" if part.md_name else "an md RAID member")
        elif part.fstype:
            what.append(_MEMBER_OF.get(part.fstype, part.fstype) + (f" {part.label!r}" if part.label else ""))
        else:
            what.append("no file system blkid knows")
        if self.in_use:
            what.append(self.in_use)
        return f"{_name(self.node)} ({', '.join(what)})"


@dataclass(frozen=True)
class DiskModel:
    """What one disk holds (:func:`model`)."""

    facts: DiskFacts
    esps: tuple[EspPartition, ...]
    others: tuple[OtherPartition, ...]
    blank: bool  # no partition table and no signature, or an empty GPT
    no_room: str  # why partition 1 cannot be added at the ESP's place; "" when it can
    in_use: str  # why the whole disk is in use (mounted, held, swap); "" when it is not
    whole: str = ""  # what a signature on the whole disk says it is (an LVM PV, an MBR table ...); "" when none
    in_the_way: OtherPartition | None = None  # the partition where partition 1 would go

    def member(self) -> EspPartition | None:
        """The ESP partition that is a member of the mirror's array already, if any."""
        return next((e for e in self.esps if e.holds is Holds.MEMBER), None)

    @property
    def used(self) -> tuple[OtherPartition, ...]:
        """The other partitions the running system uses."""
        return tuple(o for o in self.others if o.in_use)


def _name(node: str) -> str:
    return node.rsplit("/", 1)[-1]


def model(disk: DiskFacts, array_uuid: str, first: int, last: int, array_name: str = "") -> DiskModel:
    """Read ``disk`` into what it holds. The mirror's array, whose members are ours, is the one
    with ``array_uuid`` (mdadm form, or ""), or with ``array_name``: the name esp-mirror gives
    its arrays (``any:NAME``), on any set of disks. ``first``..``last`` are the sectors partition
    1 would take."""
    busy: dict[str, str] = {}
    for node, why in disk.busy:
        short = why.split(" ", 1)[1] if why.startswith(f"{node} ") else why
        busy.setdefault(node, short.removeprefix("is ").removesuffix(" (an md array, LVM or dm device)"))
    esps, others = [], []
    for part in disk.partitions:
        node = str(naming.partition_node(disk.path, part.number))
        if part.is_esp:
            holds = _holds(part, array_uuid, array_name)
            esps.append(EspPartition(part, node, holds, disk.sector_size, busy.get(_name(node), "")))
        else:
            others.append(OtherPartition(part, node, disk.sector_size, busy.get(_name(node), "")))
    foreign = sorted(set(disk.signatures) - {"gpt", "PMBR", disk.pttype})
    blank = not foreign and (not disk.pttype or (disk.pttype == "gpt" and not disk.partitions))
    whole = _MEMBER_OF.get(foreign[0], foreign[0]) if foreign else ""
    if not whole and disk.pttype == "dos":
        whole = "an MBR (dos) partition table"
    no_room, number = ("", 0) if blank else _no_room(disk, whole, first, last)
    return DiskModel(
        facts=disk,
        esps=tuple(esps),
        others=tuple(others),
        blank=blank,
        no_room=no_room,
        in_use=busy.get(disk.name, ""),
        whole=whole,
        in_the_way=next((o for o in others if o.part.number == number), None),
    )


def _holds(part: Partition, array_uuid: str, array_name: str) -> Holds:
    if part.fstype == "linux_raid_member":
        ours = bool(array_uuid) and naming.mdadm_uuid(part.md_uuid) == naming.mdadm_uuid(array_uuid)
        ours = ours or (bool(array_name) and part.md_name == f"any:{array_name}")
        return Holds.MEMBER if ours else Holds.OTHER
    if not part.fstype:
        return Holds.NOTHING
    if part.fstype == "vfat" and part.fat_files is not None:
        return Holds.FILES if part.fat_files else Holds.EMPTY_FAT
    return Holds.OTHER


def _no_room(disk: DiskFacts, whole: str, first: int, last: int) -> tuple[str, int]:
    """Why partition 1 cannot go at sectors first..last of ``disk`` ("" when it can), and the
    number of the partition in the way (0: none)."""
    if whole:
        return f"it holds {whole}", 0
    if disk.pttype != "gpt":
        return f"it has a {disk.pttype or 'partition'} table esp-mirror does not edit", 0
    if (last + 1) * disk.sector_size + GPT_BACKUP > disk.size:
        return f"it is too small ({size_text(disk.size)})", 0
    for part in disk.partitions:
        if part.start <= last and part.start + part.size - 1 >= first:
            node = _name(str(naming.partition_node(disk.path, part.number)))
            return f"sectors {first}-{last} are {node}'s", part.number
    if disk.partition(1) is not None:
        return f"its partition 1 ({_name(str(naming.partition_node(disk.path, 1)))}) is elsewhere", 1
    return "", 0
