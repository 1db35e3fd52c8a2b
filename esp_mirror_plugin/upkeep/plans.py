"""After install: check, repair, replace, add and entries — planned as steps, run by an executor.

Nothing here lets md choose which copy wins: a repair names its source member and rebuilds every
other member from it (fail, zero, add, full recovery). Plans are pure functions of the mirror's
state (:mod:`.mirror`), so ``--dry-run`` prints exactly what would run.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, replace

from esp_mirror_plugin.errors import BadInput, size_text
from esp_mirror_plugin.hooks import bootentries, partition
from esp_mirror_plugin.pipeline import checks, fat, members, naming
from esp_mirror_plugin.pipeline import record as records
from esp_mirror_plugin.pipeline.disks import GPT_BACKUP, gpt_backup, model
from esp_mirror_plugin.pipeline.kinds import EspFrom
from esp_mirror_plugin.pipeline.members import Member, disk_tag
from esp_mirror_plugin.pipeline.record import Record
from esp_mirror_plugin.pipeline.steps import Command, Settle, Step, WaitForPartition, WaitForSync, WriteFile
from esp_mirror_plugin.system.discovery import DiskFacts, HostView, Partition
from esp_mirror_plugin.upkeep import journal as journal_file
from esp_mirror_plugin.upkeep.journal import RepairJournal
from esp_mirror_plugin.upkeep.mirror import ArrayState, MemberState, MirrorState


def require_array(state: MirrorState) -> ArrayState:
    if state.record is None:
        raise BadInput(
            "no esp-mirror setup here (/etc/esp-mirror/esp-mirror.yaml is missing): run `esp-mirror apply` (new "
            "disks) or `esp-mirror adopt` (a running system's ESP) first"
        )
    if state.array is None:
        raise BadInput(
            f"{state.record.array} is not running: assemble it first "
            f"(mdadm --assemble --scan --run) or boot the installed system"
        )
    return state.array


def check_steps(array: ArrayState, md_check: bool = True) -> tuple[Step, ...]:
    """What check runs before it compares the members' files; without ``md_check`` md's own
    check is left to the distribution's schedule (nothing is written to sync_action)."""
    flush = Command(("sync",), why="flush the page cache, so every member holds what the ESP holds")
    if not md_check:
        return (flush,)
    return (
        flush,
        Command(
            ("mdadm", "--misc", "--action=check", array.device),
            why="md reads every member and counts sectors that differ (mismatch_cnt)",
        ),
        WaitForSync(array.device, why="the check reads the whole ESP"),
    )


def source_member(state: MirrorState, source: str) -> MemberState:
    """The member named by DISK/partition, or "auto": the one the firmware booted from."""
    array = require_array(state)
    if source == "auto":
        member = state.booted_member
        if member is None:
            raise BadInput(
                "cannot tell which disk this boot came from (no LoaderDevicePartUUID, and "
                "BootCurrent is not an entry of ours): choose with --source DISK"
            )
    else:
        member = array.member(source)
    if member is None:
        raise BadInput(
            f"{source} is not a member of {array.device}: pass one of its members, "
            f"{', '.join(m.disk for m in array.members)}, to --source"
        )
    if not member.active:
        raise BadInput(
            f"{member.node} is {member.state}, not an in-sync member: it cannot be the source; pass an in-sync "
            "member to --source (`esp-mirror status` shows each member's state)"
        )
    return member


def repair_steps(state: MirrorState, source: MemberState, journal: RepairJournal, root: str) -> tuple[Step, ...]:
    """Rebuild every member in ``journal.rebuild`` from ``source``: a deliberate full copy, not md's
    `repair`; from where an interrupted repair stopped when the journal was already there.

    The journal is written before the first change and rewritten once every member is out, so a
    re-run knows which members to bring back and where to mount the ESP; it goes last.
    """
    array = require_array(state)
    path = journal_file.path_in(root)
    why = "what this repair is doing, so that running it again after an interruption finishes it"
    steps: list[Step] = [WriteFile(path, journal.text(), why=why, root=root)]
    if state.mount is not None:
        steps.append(
            Command(("umount", state.mount.mountpoint), why="nothing may write to the ESP while members are rebuilt")
        )
    if journal.phase == journal_file.TAKE_OUT:
        for node in journal.rebuild:
            if array.member(node) is not None:
                steps.append(
                    Command(
                        ("mdadm", array.device, "--fail", node, "--remove", node),
                        why=f"take {node} out; {source.node} is the only copy left",
                    )
                )
                steps.append(
                    Command(
                        ("mdadm", "--zero-superblock", node),
                        why=f"{node} comes back as a new member: a full copy, no bitmap shortcut",
                    )
                )
            else:  # taken out by the interrupted run; its superblock may or may not be zeroed yet
                steps.append(
                    Command(
                        ("wipefs", "--all", "--types", "linux_raid_member", node),
                        why=f"{node} comes back as a new member: a full copy, no bitmap shortcut",
                    )
                )
        rebuild = replace(journal, phase=journal_file.REBUILD)
        steps.append(WriteFile(path, rebuild.text(), why="every member to rebuild is out", root=root))
    for node in journal.rebuild:
        if journal.phase == journal_file.TAKE_OUT or array.member(node) is None:
            steps.append(Command(("mdadm", array.device, "--add", node), why=f"{node} is rebuilt from {source.node}"))
    steps.append(WaitForSync(array.device, clean=True, why="the recovery copies the whole source member"))
    mountpoint = state.mount.mountpoint if state.mount is not None else journal.mountpoint
    if mountpoint is not None:
        steps.append(fat.mount(array.device, mountpoint, why="the ESP back in place"))
    steps.append(Command(("rm", "--", path), why="the repair is finished"))
    return tuple(steps)


def check_new_disk(disk: DiskFacts, array: ArrayState, sector: int) -> None:
    """A new member's disk exists, is a whole disk, is not in the mirror yet, and has the members'
    sector size."""
    checks.check_disks((disk,))
    if disk.kind != "block":
        raise BadInput(f"{disk.given} is not a block device: give the new disk, e.g. /dev/sdc")
    if array.member(disk.path) is not None:
        raise BadInput(f"{disk.given} is already a member of {array.device}: give a disk that is not in the mirror")
    if disk.sector_size != sector:
        raise BadInput(
            f"{disk.given} has {disk.sector_size}-byte sectors, the members {sector}: "
            "a RAID1 ESP needs one sector size; use a matching disk"
        )


def new_member(
    disk: DiskFacts,
    array: ArrayState,
    record: Record,
    sector: int,
    wipe: bool,
    *,
    joined: MemberState | None = None,
    command: str = "add",
) -> Member:
    """The new member on ``disk``, as :mod:`~esp_mirror_plugin.pipeline.members` decides it with
    the recorded place of the ESP: partition 1 on a blank disk (or one erased with ``wipe``), an
    empty ESP partition there already taken, or the partition an interrupted run of the same
    command made (in the array already: ``joined``).

    :raises BadInput: the disk is unsafe or unfit (apply's refusals for one disk).
    """
    if joined is None:
        check_new_disk(disk, array, sector)
    if record.esp_start + record.esp_size + GPT_BACKUP > disk.size:
        raise BadInput(
            f"{disk.given} ({size_text(disk.size)}) is too small for the {size_text(record.esp_size)} ESP: "
            "use a larger disk"
        )
    place = members.requested(record.esp_start, record.esp_size, sector)
    disk_model = model(disk, array.uuid, place.first, place.last)
    source, esp = members.choose(disk_model, place, wipe=wipe, command=command)
    if source is EspFrom.TAKEN and esp is not None and (esp.start, esp.size) != (place.start, place.size):
        raise BadInput(
            f"{disk.given}'s ESP partition {esp.describe()} is not where the mirror's are "
            f"({size_text(place.size)} at {size_text(place.start)}): delete it (esp-mirror makes partition 1), "
            "or pass --wipe to erase the disk"
        )
    return members.member(disk_model, source, esp, place, wipe=wipe)


def member_steps(
    state: MirrorState,
    new: Member,
    *,
    old: MemberState | None,
    grow: bool,
    joined: MemberState | None = None,
    root: str = "/",
    copy: TableCopy | None = None,
) -> tuple[Step, ...]:
    """Partition ``new``'s disk like the others (or take its empty ESP partition, or give it a
    surviving disk's table: ``copy``) and add it to the array (replacing ``old``, or growing);
    from where an interrupted run of the same command stopped (its partition is there already;
    ``joined``: it is in the array already). Growing, the record at ``root`` gets the new member
    count. With ``copy``, the other arrays' members follow the ESP's recovery when it says so."""
    array, record = require_array(state), state.record
    assert record is not None  # require_array checked it
    place = members.requested(record.esp_start, record.esp_size, new.disk.sector_size)
    steps: list[Step] = []
    if old is not None:
        steps.append(
            Command(
                ("mdadm", array.device, "--fail", old.node, "--remove", old.node),
                why=f"take the old member {old.node} out of the array",
            )
        )
        steps.append(
            Command(
                ("mdadm", "--zero-superblock", old.node),
                cleanup=True,
                why="the old disk must never be assembled again (a dead disk may refuse: fine)",
            )
        )
    if copy is not None and copy.needed:
        steps += copy.steps()
    if joined is None:
        if copy is not None:
            steps.append(WaitForPartition(new.device, new.number, new.node, why="the kernel must know the partition"))
            steps.append(Command(("wipefs", "--all", new.node), why="no stale signature inside the ESP partition"))
        else:
            steps += partition.steps([new], place.first, place.last, wipe_all=True)
        steps.append(Command(("mdadm", array.device, "--add", new.node), why=f"{new.node} joins the mirror"))
    more = grow and (joined is None or joined.slot is None)
    if more:
        steps.append(
            Command(
                ("mdadm", "--grow", array.device, f"--raid-devices={array.raid_disks + 1}"),
                why="one more active member: the new one is rebuilt",
            )
        )
    count = array.raid_disks + more
    if grow and record.members != count:
        steps.append(
            WriteFile(
                records.path_in(root),
                replace(record, members=count).render(),
                root=root,
                why=f"the record counts {count} members (status and the metrics, while the array is not running)",
            )
        )
    steps.append(WaitForSync(array.device, clean=True, why=f"recovery copies the ESP onto {new.node}"))
    if copy is not None and copy.add_others:
        for other in copy.others:
            steps += other.steps()
    return tuple(steps)


@dataclass(frozen=True)
class OtherArray:
    """An md array beside the ESP's (an md root) with a member on the disk whose table the new disk
    gets: the new disk's partition of the same number takes the old disk's place in it."""

    device: str  # /dev/md126
    name: str  # its name as blkid reads it ("any:root"), or ""
    number: int  # the partition number of its members on the disks
    node: str  # the new disk's partition
    old: str = ""  # the old disk's partition, still listed in the array
    joined: bool = False  # the new partition is in it already (an earlier run added it)

    def commands(self) -> tuple[tuple[str, ...], ...]:
        """The exact ``mdadm`` lines, in order; none when the new partition is in already."""
        if self.joined:
            return ()
        out: list[tuple[str, ...]] = []
        if self.old:
            out.append(("mdadm", self.device, "--fail", self.old, "--remove", self.old))
        out.append(("mdadm", self.device, "--add", self.node))
        return tuple(out)

    def steps(self) -> tuple[Step, ...]:
        what = f"{self.device} ({self.name})" if self.name else self.device
        return tuple(
            Command(argv, why=f"{self.node} takes the old disk's place in {what}: md copies it in the background")
            for argv in self.commands()
        )


@dataclass(frozen=True)
class TableCopy:
    """``replace --copy-table``: the new disk gets the partition table of a disk that survived,
    with new GUIDs, so that every array on the disks (the ESP's, an md root) gets its member back."""

    survivor: DiskFacts
    new: DiskFacts
    esp_number: int
    needed: bool  # the table is still to be written (False: an earlier run wrote it)
    wipe: bool  # --wipe: the new disk is erased first
    disk_guid: str
    guids: tuple[tuple[int, str], ...]  # partition number -> its new GUID
    others: tuple[OtherArray, ...] = ()
    add_others: bool = False  # run the other arrays' lines too (else the plan prints them)
    notes: tuple[str, ...] = ()  # what esp-mirror leaves to the administrator (a ZFS pool, swap ...)

    def steps(self) -> tuple[Step, ...]:
        new, survivor = self.new.path, self.survivor.path
        out: list[Step] = []
        if self.wipe:
            out.append(Command(("wipefs", "--all", new), why=f"erase old signatures on {self.new.given} (--wipe)"))
            out.append(
                Command(("sgdisk", "--zap-all", new), ok_codes=(0, 2), why=f"erase the old tables of {new} (--wipe)")
            )
        out.append(
            Command(
                ("sgdisk", f"--replicate={new}", survivor),
                why=f"{new} gets the partition table of {survivor}: every partition at the same place",
            )
        )
        out.append(
            Command(
                (
                    "sgdisk",
                    f"--disk-guid={self.disk_guid}",
                    *(f"--partition-guid={n}:{g}" for n, g in self.guids),
                    new,
                ),
                why="new GUIDs: no two disks share one (each boot entry names the partition it starts)",
            )
        )
        for number, _ in self.guids:
            node = naming.partition_node(new, number)
            out.append(WaitForPartition(new, number, node, why="the kernel must know the copied partition"))
        out.append(Settle(why="udev has seen the new partitions before they are used"))
        return tuple(out)

    def lines(self) -> tuple[str, ...]:
        """What the administrator runs once the ESP is whole (when the plan does not run it)."""
        return tuple(shlex.join(argv) for other in self.others for argv in other.commands())


def _layout(disk: DiskFacts) -> list[tuple[int, int, int, str]]:
    return [(p.number, p.start, p.size, p.type_guid) for p in disk.partitions]


def table_copy(
    new: DiskFacts,
    survivor: DiskFacts,
    esp_number: int,
    *,
    old: DiskFacts | None,
    wipe: bool,
    add_others: bool,
    host: HostView,
    esp_array: str,
) -> TableCopy:
    """How ``new`` gets ``survivor``'s table: written now (a blank disk, or with ``wipe``), or
    already (an earlier run: the same partitions with this disk's GUIDs); the other arrays with a
    member on ``survivor`` that lack one (degraded, or still listing ``old``'s partition), and
    what else the survivor's partitions hold.

    :raises BadInput: a new disk with a table of its own (without ``wipe``), or too small.
    """
    numbers = [p.number for p in survivor.partitions]
    disk_guid, guids = naming.table_guids(new.identity, numbers, esp_number)
    same = new.pttype == "gpt" and _layout(new) == _layout(survivor)
    done = same and all(p.guid == guids[p.number] for p in new.partitions)
    disk_model = model(new, "", 0, 0)
    if not done and not same and not disk_model.blank:
        if not wipe:
            listing = "; ".join(o.describe() for o in disk_model.others) or new.pttype or ", ".join(new.signatures)
            raise BadInput(
                f"disk {new.given} is not blank ({listing}): --copy-table writes {survivor.given}'s partition table "
                "onto a blank disk only; pass --wipe to erase it first"
            )
        checks.check_wipe(disk_model)
    end = max((p.start + p.size for p in survivor.partitions), default=0) * survivor.sector_size
    need = end + gpt_backup(survivor.sector_size)
    if need > new.size:
        raise BadInput(
            f"{new.given} ({size_text(new.size)}) is smaller than {survivor.given}'s partitions need "
            f"({size_text(need)}, {size_text(need - new.size)} more than it has): use a disk at least as large"
        )
    others, notes = [], []
    for part in survivor.partitions:
        if part.number == esp_number:
            continue
        node = str(naming.partition_node(new.path, part.number))
        arrays = [h for h in part.holders if h.startswith("md") and h != esp_array]
        for md in arrays:
            old_part = old.partition(part.number) if old is not None else None
            old_node = str(naming.partition_node(old.path, part.number)) if old is not None and old_part else ""
            listed = old_part is not None and md in old_part.holders
            degraded = (host.read(f"/sys/block/{md}/md/degraded") or "0").strip() not in ("", "0")
            if not (listed or degraded):
                continue
            joined = (new.partition(part.number) is not None) and md in new.partition(part.number).holders  # type: ignore[union-attr]
            others.append(OtherArray(f"/dev/{md}", part.md_name, part.number, node, old_node if listed else "", joined))
        if not arrays:
            note = _left_to_do(part, node, survivor.given)
            if note:
                notes.append(note)
    return TableCopy(
        survivor=survivor,
        new=new,
        esp_number=esp_number,
        needed=not done,
        wipe=wipe and not done and not same and not disk_model.blank,
        disk_guid=disk_guid,
        guids=tuple(sorted(guids.items())),
        others=tuple(others),
        add_others=add_others,
        notes=tuple(notes),
    )


def _left_to_do(part: Partition, node: str, survivor: str) -> str:
    """What the new disk's copy of a partition that is in no md array needs, which esp-mirror leaves
    to the administrator ("" for a partition that holds nothing)."""
    where = f"partition {part.number} of {survivor}"
    if part.fstype == "zfs_member":
        pool = part.label or "POOL"
        return (
            f"{where} is a member of the ZFS pool {pool!r}: give the pool {node} in the old disk's place "
            f"(`zpool status {pool}` names the missing device; `zpool replace {pool} OLD-DEVICE {node}`); "
            "esp-mirror does not run zpool"
        )
    if part.fstype == "LVM2_member":
        return f"{where} is an LVM physical volume: {node} is empty; make it one again as the volume group needs"
    if part.fstype == "swap":
        return f"{where} is swap: `mkswap {node}` and name it in fstab to use it"
    if part.fstype:
        return f"{where} holds {part.fstype}: {node} is empty; restore it as it needs"
    return ""


def entry_steps(state: MirrorState, members: list[bootentries.Member]) -> tuple[Step, ...]:
    """One entry of ours per member, ours first in BootOrder, stale ones of ours removed."""
    if not state.efivars or state.boot is None:
        raise BadInput(
            "no EFI variables here (/sys/firmware/efi/efivars is empty): boot entries can only be "
            "made on a system booted through UEFI"
        )
    record = state.record
    assert record is not None  # require_array checked it
    return bootentries.plan(
        state.boot, members, record.entry_label, record.loader, stray=state.strays, args=record.loader_args
    )


def entry_members(
    array: ArrayState,
    facts: dict[str, DiskFacts],
    *,
    without: str | None = None,
    extra: tuple[bootentries.Member, ...] = (),
) -> list[bootentries.Member]:
    """Boot-entry members: the array's usable members in slot order (minus ``without``), then
    ``extra``; each named as apply named it (``facts`` maps a disk path to its DiskFacts)."""
    out = [
        bootentries.Member(disk=m.disk, tag=disk_tag(facts[m.disk]), part=m.number, partuuid=m.partuuid)
        for m in array.members
        if m.usable and m.node != without
    ]
    return out + list(extra)
