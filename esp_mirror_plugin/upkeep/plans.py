"""After install: check, repair, replace, add and entries — planned as steps, run by an executor.

Nothing here lets md choose which copy wins: a repair names its source member and rebuilds every
other member from it (fail, zero, add, full recovery). Plans are pure functions of the mirror's
state (:mod:`.mirror`), so ``--dry-run`` prints exactly what would run.
"""

from __future__ import annotations

from dataclasses import replace

from esp_mirror_plugin.errors import BadInput, size_text
from esp_mirror_plugin.hooks import bootentries, partition
from esp_mirror_plugin.pipeline import checks, fat, members
from esp_mirror_plugin.pipeline import record as records
from esp_mirror_plugin.pipeline.disks import GPT_BACKUP, model
from esp_mirror_plugin.pipeline.kinds import EspFrom
from esp_mirror_plugin.pipeline.members import Member, disk_tag
from esp_mirror_plugin.pipeline.record import Record
from esp_mirror_plugin.pipeline.steps import Command, Step, WaitForSync, WriteFile
from esp_mirror_plugin.system.discovery import DiskFacts
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
    checks.check_disks((disk,))
    if disk.kind != "block":
        raise BadInput(f"{disk.given} is not a block device: give the new disk, e.g. /dev/sdc")
    if joined is None and array.member(disk.path) is not None:
        raise BadInput(f"{disk.given} is already a member of {array.device}: give a disk that is not in the mirror")
    if disk.sector_size != sector:
        raise BadInput(
            f"{disk.given} has {disk.sector_size}-byte sectors, the members {sector}: "
            "a RAID1 ESP needs one sector size; use a matching disk"
        )
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
) -> tuple[Step, ...]:
    """Partition ``new``'s disk like the others (or take its empty ESP partition) and add it to the
    array (replacing ``old``, or growing); from where an interrupted run of the same command
    stopped (its partition is there already; ``joined``: it is in the array already). Growing,
    the record at ``root`` gets the new member count."""
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
    if joined is None:
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
    return tuple(steps)


def entry_steps(state: MirrorState, members: list[bootentries.Member]) -> tuple[Step, ...]:
    """One entry of ours per member, ours first in BootOrder, stale ones of ours removed."""
    if not state.efivars or state.boot is None:
        raise BadInput(
            "no EFI variables here (/sys/firmware/efi/efivars is empty): boot entries can only be "
            "made on a system booted through UEFI"
        )
    record = state.record
    assert record is not None  # require_array checked it
    return bootentries.plan(state.boot, members, record.entry_label, record.loader, stray=state.strays)


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
