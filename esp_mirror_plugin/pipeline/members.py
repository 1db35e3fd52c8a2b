"""The one builder of members: for each disk, the ESP partition the mirror uses, and where it
comes from (:class:`~esp_mirror_plugin.pipeline.kinds.EspFrom`).

apply (the CLI and the hooks), adopt, replace and add all decide here, from a disk's model
(:mod:`.disks`): a member of the array already is kept; an ESP partition that holds nothing (or a
FAT without files) is taken where it is; a disk without one gets partition 1 in the free space
at the ESP's place, which adds that one entry to its table and touches no other partition. Only
``--wipe`` erases a whole disk, and never while the system uses a partition of it. adopt also
takes ESPs with files (their files are kept in its backup first). The refusals are
:mod:`.checks`'.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from esp_mirror_plugin.errors import BadInput, size_text
from esp_mirror_plugin.pipeline import checks, naming
from esp_mirror_plugin.pipeline.disks import GPT_BACKUP, MIB, DiskModel, EspPartition, Holds, model
from esp_mirror_plugin.pipeline.kinds import EspFrom
from esp_mirror_plugin.pipeline.request import Request, Resolved, default_of
from esp_mirror_plugin.pipeline.steps import Arg, Var
from esp_mirror_plugin.system.discovery import DiskFacts, Partition


@dataclass(frozen=True)
class Member:
    """One disk of the mirror and its ESP partition."""

    disk: DiskFacts
    device: Arg  # the whole disk as commands see it: /dev/sda, or $LOOP_1 for an image file
    node: Arg  # the ESP partition: /dev/sda1, "${LOOP_1}p1"
    guid: str  # the partition GUID (existing, or the one sgdisk will set)
    source: EspFrom  # where the partition comes from
    loop_var: str | None = None  # the variable holding the loop device, for image files
    number: int = 1  # the partition's number: 1 where esp-mirror makes it, any for one it takes
    size: int = 0  # the partition's size in bytes (existing, or the one sgdisk will make)
    wipe: bool = False  # --wipe: the whole disk is erased first
    erased: tuple[str, ...] = ()  # with --wipe: each partition the wipe destroys, described
    beside: tuple[str, ...] = ()  # the other partitions, described: left exactly as they are

    @property
    def exists(self) -> bool:
        """The partition is in the table already (taken, a member, or adopted)."""
        return self.source.exists

    @property
    def tag(self) -> str:
        return disk_tag(self.disk)

    @property
    def partition(self) -> Partition | None:
        return self.disk.partition(self.number) if self.exists else None

    @property
    def superblock(self) -> str:
        """The array UUID in the partition's md superblock, "" when none."""
        part = self.partition
        return part.md_uuid if part is not None and part.fstype == "linux_raid_member" else ""


@dataclass(frozen=True)
class Geometry:
    """Where the ESP partitions are on every disk, in logical sectors."""

    first: int
    last: int
    sector: int

    @property
    def start(self) -> int:
        return self.first * self.sector

    @property
    def size(self) -> int:
        return (self.last - self.first + 1) * self.sector


@dataclass(frozen=True)
class ArrayPlan:
    """What is done with the array and on which members: apply's way (:mod:`.layout`) or adopt's
    (:mod:`.adoption`) decides it; the layout adds what both share."""

    members: tuple[Member, ...]
    uuid: str  # mdadm form
    action: str  # "create", "assemble" or "keep"
    fs_uuid: str  # the FAT's UUID when it is there already, else ""
    make_fs: bool
    mount: bool
    raid_devices: int
    stop_first: str = ""
    notes: tuple[str, ...] = ()


def disk_tag(disk: DiskFacts) -> str:
    """Names the disk in boot entry labels: its serial number, else its kernel name."""
    ident = disk.identity
    return ident.split(":", 1)[1] if ident.startswith("serial:") else disk.name


def derived_uuid(request: Request, disks: Sequence[DiskFacts]) -> str:
    """The array UUID (mdadm form) esp-mirror gives the mirror of these disks under this name."""
    return naming.mdadm_uuid(naming.array_uuid([d.identity for d in disks], request.array_name))


def record_size(members: Sequence[Member]) -> int:
    """The partition size a new member gets: the smallest member's, in whole MiB, rounded up (a
    partition of it holds the array, whose members are no larger than the smallest)."""
    return -(-min(m.size for m in members) // MIB) * MIB


def requested(start: int, size: int, sector: int) -> Geometry:
    return Geometry(start // sector, start // sector + size // sector - 1, sector)


def geometry(request: Resolved, disks: Sequence[DiskFacts], array_uuid: str) -> tuple[Geometry, tuple[str, ...]]:
    """Where apply's ESP partitions go, and a note when it is not where the request says: the ESP
    partitions the disks have to be taken (empty ones, or members of the array) must all be of one
    size at one place, and a partition made beside them gets the same; with none, the request's
    ``--esp-size`` at ``esp_start``.

    :raises BadInput: the disks' ESP partitions differ, or differ from a ``--esp-size`` given.
    """
    sector = disks[0].sector_size
    asked = requested(request.esp_start, request.esp_size, sector)
    found: dict[str, EspPartition] = {}
    for disk in disks:
        disk_model = model(disk, array_uuid, asked.first, asked.last)
        if len(disk_model.esps) == 1 and disk_model.esps[0].holds is Holds.FILES and not request.wipe:
            # an ESP with files is adopt's, whatever its size: said before any size is weighed
            checks.check_esp_takeable(disk_model, disk_model.esps[0], command="apply")
        esps = [e for e in disk_model.esps if e.holds.empty]  # members are in an array already: as they are
        if len(disk_model.esps) == 1 and esps and not request.wipe:
            found[disk.given] = esps[0]
    if not found:
        return asked, ()
    places = {(e.part.start, e.part.size) for e in found.values()}
    if len(places) > 1:
        listing = "; ".join(f"{given}: {e.describe()}" for given, e in found.items())
        raise BadInput(
            f"the ESP partitions differ ({listing}): a mirror takes ESP partitions of one size at one place "
            "on every disk; make them alike (or erase the odd one with `wipefs --all` and delete it, and "
            "esp-mirror makes partition 1), then run again"
        )
    start, size = places.pop()
    there = Geometry(start, start + size - 1, sector)
    explicit = request.esp_size != default_of("esp_size")
    if explicit and there.size != request.esp_size:
        one = next(iter(found.values()))
        raise BadInput(
            f"--esp-size {size_text(request.esp_size)} differs from the ESP partitions the disks have "
            f"({one.describe()}): re-run with --esp-size {there.size // MIB}M (or leave it out), "
            "or --wipe to start over"
        )
    if there == asked:
        return there, ()
    note = f"the disks' ESP partitions are {size_text(there.size)} at {size_text(there.start)}: the mirror uses them"
    return there, (note + (", and a partition made beside them is the same" if len(found) < len(disks) else ""),)


def choose(disk: DiskModel, place: Geometry, *, wipe: bool, command: str) -> tuple[EspFrom, EspPartition | None]:
    """Where ``disk``'s ESP partition comes from, or a refusal: a member of the array is kept, an
    empty ESP partition taken (for adopt also one with files), free space at the ESP's place gets
    partition 1; ``wipe`` erases the whole disk (never while a partition of it is in use).

    :raises BadInput: through :mod:`.checks`.
    """
    checks.check_not_in_use(disk)
    member = disk.member()
    if member is not None:
        if command != "adopt":
            checks.check_member_free(disk, member)
        return EspFrom.MEMBER, member
    if wipe and not disk.blank:
        checks.check_wipe(disk)
        return EspFrom.MADE, None
    checks.check_one_esp(disk)
    if disk.esps:
        esp = disk.esps[0]
        checks.check_esp_takeable(disk, esp, command=command)
        return (EspFrom.ADOPTED if esp.holds is Holds.FILES else EspFrom.TAKEN), esp
    checks.check_room(disk, place.start, place.size, command=command)
    if place.start + place.size + GPT_BACKUP > disk.facts.size:
        raise BadInput(
            f"the {size_text(place.size)} ESP does not fit on {disk.facts.given} ({size_text(disk.facts.size)}): "
            "use a smaller --esp-size or a larger disk"
        )
    return EspFrom.MADE, None


def member(
    disk: DiskModel,
    source: EspFrom,
    esp: EspPartition | None,
    place: Geometry,
    *,
    device: Arg | None = None,
    loop_var: str | None = None,
    wipe: bool = False,
) -> Member:
    """The member ``choose`` decided on, as commands name it (``device``: $LOOP_N for an image)."""
    facts = disk.facts
    device = device if device is not None else (Var(loop_var) if loop_var else facts.path)
    number = esp.part.number if esp is not None else 1
    erasing = wipe and source is EspFrom.MADE and not disk.blank
    return Member(
        disk=facts,
        device=device,
        node=naming.partition_node(device, number),
        guid=esp.part.guid if esp is not None else naming.partition_guid(facts.identity),
        source=source,
        loop_var=loop_var,
        number=number,
        size=esp.size if esp is not None else place.size,
        wipe=erasing,
        erased=tuple(o.describe() for o in disk.others) + tuple(e.describe() for e in disk.esps) if erasing else (),
        beside=() if erasing else tuple(o.describe() for o in disk.others),
    )
