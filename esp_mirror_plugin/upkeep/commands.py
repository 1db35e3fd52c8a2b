"""What the upkeep commands do, apart from how the command line shows it.

:func:`run` carries out one row of :mod:`.table`: it takes the lock the row names and calls the
row's work function here (``run_<command>``), which reads the mirror, plans, and hands its result
to :attr:`Call.show` (the command line's renderer). The changing ones plan a :class:`Planned`:
the groups of steps, what ``--json`` reports about them, and what must happen right before the
first step (repair keeps the versions of files it will overwrite); :func:`carry_out` checks it,
shows it, asks, and runs it through the same executor as apply.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from esp_mirror_plugin.errors import BadInput
from esp_mirror_plugin.hooks import bootentries, installed, partition
from esp_mirror_plugin.pipeline import adoption, fat, naming
from esp_mirror_plugin.pipeline import record as records
from esp_mirror_plugin.pipeline.checks import MAX_DISKS
from esp_mirror_plugin.pipeline.execute import Applier, counts, forecast
from esp_mirror_plugin.pipeline.kinds import EspFrom
from esp_mirror_plugin.pipeline.members import Member, disk_tag
from esp_mirror_plugin.pipeline.preflight import Preflight
from esp_mirror_plugin.pipeline.profiles import load_profile
from esp_mirror_plugin.pipeline.record import Record
from esp_mirror_plugin.pipeline.steps import Group, Step
from esp_mirror_plugin.system import lock
from esp_mirror_plugin.system.discovery import DiskFacts, HostView, blkid_export, describe_disks, read_mounts
from esp_mirror_plugin.system.runner import CommandFailed, Runner
from esp_mirror_plugin.upkeep import compare, heal, history, lastcheck, loaders, metrics, plans, settings
from esp_mirror_plugin.upkeep import journal as journal_file
from esp_mirror_plugin.upkeep import release as releases
from esp_mirror_plugin.upkeep.journal import RepairJournal
from esp_mirror_plugin.upkeep.lastcheck import LastCheck
from esp_mirror_plugin.upkeep.mirror import DEFAULT_ARRAY, ArrayState, MemberState, MirrorState, examine, read_mirror
from esp_mirror_plugin.upkeep.table import Command

WORK_DIR = "/run/esp-mirror"


@dataclass(frozen=True)
class Call:
    """One upkeep command line, as :func:`run` carries it out."""

    options: argparse.Namespace  # as parsed (``options.command`` is the command's name)
    command_line: str  # who holds the lock, for a second run
    runner: Runner
    host: HostView
    progress: TextIO  # steps and what was done, as it happens: the output, or nowhere under --json
    show: Callable[[Any], None]  # the command's renderer (its row's ``show``): prints a result
    confirm: Callable[[], bool]  # may a shown plan be carried out? (--yes, or asked on a terminal)


def run(command: Command, call: Call) -> int:
    """Carry out one row of :mod:`.table`: its work function, under its lock. Returns the exit code."""
    work: Callable[[Call], int] = getattr(sys.modules[__name__], command.work)
    if command.lock is None:
        return work(call)
    with lock.held(call.command_line, wait=command.lock.wait):
        return work(call)


def mirror_of(call: Call, read_loaders: bool = False) -> MirrorState:
    """The mirror as it is now, from the record apply left."""
    return read_mirror(call.runner, records.load(call.host.sysroot), call.host, read_loaders=read_loaders)


@dataclass
class Planned:
    """A changing upkeep command, planned: nothing has run yet."""

    groups: list[Group]
    report: dict[str, Any] = field(default_factory=dict)  # for --json, besides the plan
    before: Callable[[], list[str]] = list  # right before the first step; says what it did
    after: tuple[str, ...] = ()  # what the administrator runs next, said once the plan is carried out


@dataclass(frozen=True)
class CheckResult:
    mismatch_cnt: int
    differences: list[compare.Difference]
    members: list[str]
    seconds: float
    state: MirrorState  # the mirror as the check left it (mismatch_cnt, sync progress, loaders)
    last: LastCheck  # what was kept in /var/lib/esp-mirror/last-check.json
    signature_differences: list[loaders.SignatureDifference] = field(default_factory=list)


def install_hint_of(record: Record | None) -> Callable[[str], str]:
    """How to install a missing program, from the profile apply recorded."""
    if record is not None:
        try:
            return load_profile(record.profile).install_fix
        except BadInput:
            pass
    return lambda tool: "install the package that ships it"


@contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """A private directory for member copies, removed afterwards."""
    os.makedirs(WORK_DIR, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=prefix, dir=WORK_DIR))
    try:
        yield workdir
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def compare_members(
    runner: Runner, state: MirrorState, workdir: Path
) -> tuple[dict[str, Path], list[compare.Difference]]:
    """Copy each usable member's files (read-only, with mtools) and list the differences."""
    array = plans.require_array(state)
    nodes = [m.node for m in array.members if m.usable]
    copies = {node: workdir / os.path.basename(node) for node in nodes}
    trees = {node: compare.copy_member(runner, node, copies[node]) for node in nodes}
    return copies, compare.differences(trees)


def check(
    runner: Runner,
    host: HostView,
    state: MirrorState,
    progress: TextIO,
    md_check: bool = True,
    now: Callable[[], float] = time.time,
) -> CheckResult:
    """md's consistency check (progress shown), then the members' files compared; the result is
    kept for status and the metrics (:mod:`.lastcheck`). Changes nothing on the mirror.

    Without ``md_check`` md's check is not started (the distribution's runs on its own schedule):
    mismatch_cnt is what md's last check left.
    """
    array = plans.require_array(state)
    started = time.monotonic()
    Applier(runner, progress, host=host, exists=host.exists).execute(Group("check", plans.check_steps(array, md_check)))
    after = read_mirror(runner, state.record, host, read_loaders=False) if md_check else state
    if after.array is None:  # never a count of 0 for an array that could not be read
        raise BadInput(f"{array.device} stopped running during the check: see `esp-mirror status`")
    with scratch("check-") as workdir:
        copies, diffs = compare_members(runner, state, workdir)
        chains = member_loaders(state, copies)
    mismatch_cnt = after.array.mismatch_cnt
    last = LastCheck(now(), mismatch_cnt, len(diffs), md_check)
    try:
        lastcheck.save(host.sysroot, last)
    except OSError as exc:
        raise BadInput(
            f"the check finished ({last.line()}) but its result cannot be kept in "
            f"{lastcheck.path_in(host.sysroot)} ({exc.strerror}): make that directory writable for root"
        ) from None
    return CheckResult(
        mismatch_cnt,
        diffs,
        [m.node for m in array.members if m.usable],
        time.monotonic() - started,
        replace(after, last_check=last, last_check_error=None, loaders=chains),
        last,
        loaders.differences(chains),
    )


def member_loaders(state: MirrorState, copies: dict[str, Path]) -> tuple[loaders.MemberLoaders, ...]:
    """The loader chain of each copied member (as status reads it from the members), with shim's
    MokManager and fallback where any member has them."""
    array = plans.require_array(state)
    assert state.record is not None  # require_array checked it
    loader = state.record.loader
    paths = (*loaders.chain(loader, state.record.loader_args), *loaders.present(copies, loaders.shim_helpers(loader)))
    disks = {m.node: m.disk for m in array.members}
    return loaders.from_copies(copies, disks, tuple(dict.fromkeys(paths)))


@dataclass(frozen=True)
class FatDamage:
    """What ``fsck.fat -n`` found wrong with a member's FAT."""

    line: str  # its first line of damage, or why it could not check
    checked: bool = True  # False: fsck.fat could not check it at all


def fat_damage(runner: Runner, node: str) -> FatDamage | None:
    """``fsck.fat -n`` (read-only) of the FAT on a member; None when it is whole (the dirty bit of
    a mounted FAT is not damage)."""
    compare.fresh_view(runner, node)
    try:
        fsck = runner.run(("fsck.fat", "-n", node), ok=(0, 1))
    except CommandFailed as exc:
        return FatDamage((fat.fsck_problems(exc.result.stdout + exc.result.stderr) or [exc.stderr_line])[0], False)
    damage = fat.fsck_problems(fsck.stdout + fsck.stderr) if fsck.returncode != 0 else []
    return FatDamage(damage[0]) if damage else None


def check_source_fat(runner: Runner, source: MemberState) -> None:
    """The member a repair copies from must hold a whole FAT (``fsck.fat -n``, read-only).

    :raises BadInput: fsck.fat cannot check it, or finds damage beyond the dirty bit.
    """
    damage = fat_damage(runner, source.node)
    if damage is None:
        return
    what = (
        f"the FAT on the source {source.node} is damaged"
        if damage.checked
        else (f"fsck.fat cannot check the source {source.node}")
    )
    raise BadInput(f"{what} ({damage.line}): choose another --source, or repair it with fsck.fat first")


def repair_source(state: MirrorState, given: str, journal: RepairJournal | None) -> MemberState:
    """The member a repair copies from: ``--source`` (DISK, partition or "auto"), or, after an
    interrupted repair, the one it was copying from (a different explicit source is refused: the
    members it took out hold nothing yet)."""
    if journal is None:
        return plans.source_member(state, given)
    array = plans.require_array(state)
    member = array.member(journal.source)
    if member is None or not member.active:
        raise BadInput(
            f"an interrupted repair was rebuilding from {journal.source}, which is no longer an in-sync member of "
            f"{array.device}: see `esp-mirror status`; the overwritten files are in the backup tars"
        )
    if given != "auto" and plans.source_member(state, given).node != member.node:
        raise BadInput(
            f"an interrupted repair from {member.node} is not finished: run `esp-mirror repair --source {member.disk}` "
            "to finish it first"
        )
    return member


def plan_repair(
    runner: Runner,
    state: MirrorState,
    source: MemberState,
    copies: dict[str, Path],
    diffs: list[compare.Difference],
    backup_dir: Path,
    root: str,
    journal: RepairJournal | None,
) -> Planned:
    """Rebuild every other member from ``source``; keep their versions of differing files first.
    With the ``journal`` of an interrupted repair, finish that one."""
    check_source_fat(runner, source)
    array = plans.require_array(state)
    notes = [f"source: {source.node} on {source.disk}; fsck.fat -n found no damage"]
    if journal is None:
        journal = RepairJournal(
            source=source.node,
            rebuild=tuple(m.node for m in array.members if m.node != source.node),
            mountpoint=state.mount.mountpoint if state.mount is not None else None,
        )
    else:
        notes.append(
            f"an interrupted repair ({journal_file.path_in(root)}, phase {journal.phase}) "
            "is finished from where it stopped"
        )
    if diffs:
        notes.append(
            f"before any change, the other members' versions of {len(diffs)} differing files "
            f"are kept in a tar under {backup_dir}"
        )
    backups: list[Path] = []

    def keep_backups() -> list[str]:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        backups.extend(compare.backup(copies, diffs, {source.node}, backup_dir, stamp))
        return [f"kept the overwritten versions in {tar}" for tar in backups]

    report = {"source": source.node, "differences": [d.to_json() for d in diffs], "backups": backups}
    steps = plans.repair_steps(state, source, journal, root)
    return Planned([Group("repair", steps, tuple(notes))], report, keep_backups)


def member_facts(
    runner: Runner, host: HostView, state: MirrorState, more: tuple[str, ...] = ()
) -> dict[str, DiskFacts]:
    """DiskFacts of the members' disks (and ``more``), by the path they were given as."""
    array = plans.require_array(state)
    paths = tuple(dict.fromkeys([m.disk for m in array.members] + list(more)))
    facts = describe_disks(paths, runner, host, read_mounts(host), ours=array.kernel_name)
    return {f.given: f for f in facts}


def plan_new_member(
    runner: Runner,
    host: HostView,
    state: MirrorState,
    new: str,
    old: str | None,
    wipe: bool,
    command: str,
    *,
    copy_table: bool = False,
    add_others: bool = False,
) -> Planned:
    """replace (``old`` a member or "missing") or add (``old`` None): partition ``new`` like the
    others, add it, wait for the recovery, then its boot entry (and drop the old disk's). With
    ``copy_table`` (replace) the new disk gets a surviving member's whole partition table instead,
    and the other md arrays on the disks (an md root) get the new disk's partitions, printed as
    the exact ``mdadm`` lines or, with ``add_others``, run after the ESP's recovery.

    The same command run again after an interruption continues: a new disk that already carries
    its ESP partition (the GUID made from its identity) is not partitioned again, one already in
    the array is not added again, an old member already taken out is not taken out again.
    """
    array = plans.require_array(state)
    if add_others and not copy_table:
        raise BadInput(
            "--add-others adds the new disk's other partitions, which only --copy-table makes: pass both, or neither"
        )
    joined = array.member(new)  # in the array: an earlier run of this command added it, or a mistake
    if joined is not None and old not in (None, "missing") and array.member(old or "") is not None:
        # the old member is still in: no run of this command added the new disk (it takes the old out first)
        raise BadInput(f"{new} is already a member of {array.device}: give a disk that is not in the mirror")
    old_member = None
    if old == "missing":
        if not array.degraded and joined is None:
            raise BadInput(f"no member of {array.device} is missing: name the disk to replace with --old DISK")
    elif old is not None:
        old_member = array.member(old)
        if old_member is None and joined is None and not array.degraded:
            raise BadInput(
                f"{old} is not a member of {array.device}: members are "
                f"{', '.join(m.disk for m in array.members)}; use --old missing for a disk that is gone"
            )
    elif array.raid_disks >= MAX_DISKS and joined is None:
        raise BadInput(
            f"{array.device} already has {MAX_DISKS} members, the most esp-mirror mirrors: replace one instead "
            "(`esp-mirror replace --old DISK --new DISK`)"
        )
    facts = member_facts(runner, host, state, (new,))
    disk = facts[new]
    sector = next((facts[m.disk].sector_size for m in array.members if m.disk in facts and m.disk != disk.path), 512)
    record = state.record
    assert record is not None  # require_array checked it
    copy = None
    if copy_table:
        member, copy = _copied_member(host, state, facts, disk, old_member, joined, wipe, add_others)
    else:
        member = plans.new_member(disk, array, record, sector, wipe, joined=joined, command=command)
    steps = plans.member_steps(
        state, member, old=old_member, grow=old is None, joined=joined, root=host.sysroot, copy=copy
    )
    notes = [f"mdadm.conf names {array.device} by UUID: it stays as it is", *partition.notes([member])]
    after: tuple[str, ...] = ()
    if copy is not None:
        notes.append(
            f"{disk.given} gets the partition table of {copy.survivor.given}"
            + (" (written by an earlier run: kept)" if not copy.needed else ", with new GUIDs")
        )
        notes += copy.notes
        if copy.lines() and not add_others:
            after = (
                "esp-mirror: the ESP is whole; the other arrays on the disks get their members back with:",
                *(f"  {line}" for line in copy.lines()),
                "(or run the same replace with --add-others to have esp-mirror run them)",
            )
            notes.append("then, for the other arrays on the disks: " + "; ".join(copy.lines()))
    if joined is not None and joined.active:
        notes.append(f"{disk.given} is an in-sync member already (an earlier {command}?): only the boot entries follow")
    elif member.source is EspFrom.TAKEN and member.guid == naming.partition_guid(disk.identity):
        notes.append(f"{disk.given} carries the ESP partition an earlier {command} made: continuing from there")
    groups = [Group(command, steps, tuple(notes))]
    entry = bootentries.Member(disk=disk.path, tag=disk_tag(disk), part=member.number, partuuid=member.guid)
    if state.efivars and state.boot is not None:
        extra = (entry,) if joined is None else ()  # a member already is one of the array's
        members = plans.entry_members(array, facts, without=old_member.node if old_member else None, extra=extra)
        groups.append(Group("entries", plans.entry_steps(state, members)))
    else:
        groups.append(Group("entries", (), ("no EFI variables: run `esp-mirror entries` on the booted system",)))
    report: dict[str, Any] = {
        "new": disk.path,
        "partition_guid": member.guid,
        "old": old_member.node if old_member else old,
    }
    if copy is not None:
        report["other_arrays"] = [
            {"device": o.device, "name": o.name, "node": o.node, "commands": [list(c) for c in o.commands()]}
            for o in copy.others
        ]
    return Planned(groups, report, after=after)


def _copied_member(
    host: HostView,
    state: MirrorState,
    facts: dict[str, DiskFacts],
    disk: DiskFacts,
    old: MemberState | None,
    joined: MemberState | None,
    wipe: bool,
    add_others: bool,
) -> tuple[Member, plans.TableCopy]:
    """replace --copy-table: the new disk's member in the partition table of a surviving member's
    disk (the first in-sync one, not the one replaced)."""
    array = plans.require_array(state)
    survivor = next((m for m in array.members if m.active and (old is None or m.node != old.node)), None)
    if survivor is None or survivor.disk not in facts:
        raise BadInput(
            f"no in-sync member of {array.device} is left to copy a partition table from: "
            "leave out --copy-table, and partition the new disk for the other arrays by hand"
        )
    source = facts[survivor.disk]
    if joined is None:
        plans.check_new_disk(disk, array, source.sector_size)
    old_disk = facts.get(old.disk) if old is not None else None
    copy = plans.table_copy(
        disk,
        source,
        survivor.number,
        old=old_disk,
        wipe=wipe,
        add_others=add_others,
        host=host,
        esp_array=array.kernel_name,
    )
    esp = source.partition(survivor.number)
    assert esp is not None  # the survivor's member is a partition of its disk
    guid = dict(copy.guids)[survivor.number]
    member = Member(
        disk=disk,
        device=disk.path,
        node=naming.partition_node(disk.path, survivor.number),
        guid=guid,
        source=EspFrom.COPIED if copy.needed else EspFrom.TAKEN,
        number=survivor.number,
        size=esp.size * source.sector_size,
        beside=tuple(
            f"{naming.partition_node(disk.path, p.number)} (as {source.given}'s)"
            for p in source.partitions
            if p.number != survivor.number
        ),
    )
    return member, copy


def plan_entries(runner: Runner, host: HostView, state: MirrorState) -> Planned:
    """One boot entry of ours per member, ours first in BootOrder, stale ones of ours removed."""
    array = plans.require_array(state)
    steps = plans.entry_steps(state, plans.entry_members(array, member_facts(runner, host, state)))
    notes = () if steps else ("NVRAM already holds one entry of ours per member, first in BootOrder",)
    return Planned([Group("entries", steps, notes)])


def plan_refresh(state: MirrorState, root: str) -> Planned:
    """The installed system's group (esp-mirror itself, heal, the periodic check, the upgrade
    settings) planned again from the record, as apply planned it: after fwupd was installed, after
    a package replaced a file, or to put this esp-mirror version there."""
    array = plans.require_array(state)
    assert state.record is not None  # require_array checked it
    steps, notes = installed.plan(settings.setup(state.record, array.uuid, root))
    return Planned([Group(installed.GROUP, steps, notes)])


def plan_release(
    runner: Runner,
    host: HostView,
    state: MirrorState,
    disk: str | None,
    everything: bool,
    one_member: bool,
) -> Planned:
    """release: ``disk``'s member out of the mirror as a plain ESP that boots alone, or with
    ``everything`` the mirror undone (:mod:`.release`); after an interruption, that release
    finished from its journal. Every refusal comes here, before anything changes."""
    root = host.sysroot
    if disk is None and not everything:
        raise BadInput("name what to release: --disk DISK (one member), or --all (undo the mirror)")
    if one_member and everything:
        raise BadInput("--one-member keeps a mirror of one disk, --all undoes the mirror: pass one of them")
    if journal_file.load(root) is not None:
        raise BadInput("a repair was interrupted: finish it first (`esp-mirror repair --source auto`), then release")
    adopting = adoption.load_journal(root)
    if adopting is not None:
        raise BadInput(f"an adoption is not finished: finish it first by running it again ({adopting.command})")
    journal = journal_file.load_release(root)
    notes: list[str] = []
    if journal is None and everything and state.record is None and state.array is None:
        # undone already (a run again after one that ended, or was cut after its last step): the
        # end --all promises holds, as a run again of apply changes nothing. A record gone while
        # /dev/md/esp runs is refused below (no setup to undo from)
        done = (
            f"esp-mirror: nothing to undo: no mirror of esp-mirror's here (no /{records.PATH}, no "
            f"{DEFAULT_ARRAY}, no unfinished release); `esp-mirror adopt` mirrors the ESP again"
        )
        return Planned([], {"all": True, "release": [], "keep": None, "members": 0, "phase": None}, after=(done,))
    if journal is None:
        journal, notes = _release_start(runner, host, state, disk, everything, one_member)
    else:
        _release_again(state, journal, disk, everything)
        notes.append(
            f"an interrupted release ({journal_file.release_path_in(root)}, phase {journal.phase}) is finished "
            "from where it stopped"
        )
    steps: tuple[Step, ...] = ()
    if journal.phase == releases.TAKE_OUT:
        steps = releases.take_out(state, journal, _carrying(runner, state, journal), root)
    if everything:  # with the record gone (a run cut at its end) state.mount is not looked for
        esp = os.path.normpath(journal.record.mountpoint)
        mounted = journal.phase == releases.FINISH and any(m.mountpoint == esp for m in read_mounts(host))
        steps += releases.undo(journal, root, mounted)
    else:
        steps += releases.shrink(state, journal, root)
    groups = [Group(releases.GROUP, steps, tuple(notes)), releases.entries(state, journal)]
    if everything:
        groups.append(releases.installed_system(journal, host))
    groups.append(releases.finish(journal, root))
    report: dict[str, Any] = {
        "all": journal.everything,
        "release": [r.node for r in journal.release],
        "keep": journal.keep.node if journal.keep else None,
        "volume_ids": {r.node: r.volume_id for r in journal.release},
        "members": journal.members,
        "phase": journal.phase,
    }
    return Planned(groups, report, after=_release_done(journal))


def _release_start(
    runner: Runner,
    host: HostView,
    state: MirrorState,
    disk: str | None,
    everything: bool,
    one_member: bool,
) -> tuple[journal_file.ReleaseJournal, list[str]]:
    """A new release's journal, after its refusals; and the plan's notes."""
    array = plans.require_array(state)
    record = state.record
    assert record is not None  # require_array checked it
    busy = array.sync_action != "idle" or array.resync_start not in ("none", "")
    if busy or any(not m.active for m in array.members):
        raise BadInput(
            f"{array.device} is not at rest (md: {array.sync_action} {array.sync_completed}; members "
            f"{', '.join(f'{m.node} {m.state}' for m in array.members)}): every member must be in sync; wait for "
            "md (`esp-mirror status`), or take a failed member out first (`esp-mirror replace`)"
        )
    if everything:
        chosen = list(array.members)  # in slot order: the first disk's stays the ESP
    else:
        assert disk is not None
        member = array.member(disk)
        if member is None:
            raise BadInput(
                f"{disk} is not a member of {array.device}: its members are "
                f"{', '.join(m.disk for m in array.members)}; release one of them, or undo the mirror with --all"
            )
        if array.degraded:
            raise BadInput(
                f"{array.device} is degraded ({array.degraded} of {array.raid_disks} members missing): release takes "
                "a disk out of a whole mirror; put the missing one back first (`esp-mirror replace --old missing "
                "--new DISK`), or undo the mirror with `esp-mirror release --all`"
            )
        left = [m for m in array.members if m.node != member.node]
        if not left:
            raise BadInput(
                f"{disk} holds the last member of {array.device}: `esp-mirror release --all` undoes the mirror and "
                f"leaves {member.node} the machine's ESP"
            )
        if len(left) == 1 and not one_member:
            raise BadInput(
                f"releasing {disk} leaves {array.device} one member ({left[0].node}), a mirror of nothing: "
                f"`esp-mirror release --all` undoes the mirror (each disk keeps a plain ESP that boots, "
                f"{left[0].disk}'s mounted); --one-member keeps the array of one, for `esp-mirror add` to grow again"
            )
        if one_member and len(left) != 1:
            raise BadInput(
                f"--one-member is for a mirror of two disks; {array.device} keeps {len(left)} members: leave it out"
            )
        chosen = [member]
    for m in chosen:
        damage = fat_damage(runner, m.node)
        if damage is not None:
            what = "its FAT is damaged" if damage.checked else "fsck.fat cannot check its FAT"
            raise BadInput(
                f"{m.node} cannot be released: {what} ({damage.line}); `esp-mirror repair --source DISK` "
                "with a good member makes it whole again"
            )
    facts = member_facts(runner, host, state)
    fs_uuid = _array_fat_uuid(runner, array.device) or record.fs_uuid or naming.fstab_uuid(naming.volume_id(array.uuid))
    chosen_released = tuple(
        journal_file.Released(
            node=m.node,
            disk=m.disk,
            partuuid=m.partuuid,
            tag=disk_tag(facts[m.disk]),
            volume_id=fs_uuid
            if everything and i == 0
            else naming.fstab_uuid(naming.released_volume_id(m.partuuid, taken=fs_uuid)),
        )
        for i, m in enumerate(chosen)
    )
    journal = journal_file.ReleaseJournal(
        command=shlex.join(
            ["esp-mirror", "release", *(["--all"] if everything else ["--disk", str(disk)])]
            + (["--one-member"] if one_member else [])
        ),
        everything=everything,
        release=chosen_released,
        members=0 if everything else array.raid_disks - 1,
        mountpoint=state.mount.mountpoint if state.mount is not None else None,
        fs_uuid=fs_uuid,
        array_uuid=naming.mdadm_uuid(array.uuid),
        record=record,
    )
    notes = [
        f"{r.node} ({r.disk}): fsck.fat -n found no damage; FAT volume id {r.volume_id}"
        + (" (the array's: fstab names it)" if everything and i == 0 else " (its own)")
        for i, r in enumerate(chosen_released)
    ]
    if everything:
        keep, others = chosen_released[0], chosen_released[1:]
        notes.append(f"{keep.node} is the machine's ESP at {record.mountpoint} afterwards")
        if others:
            notes.append(
                f"{', '.join(r.disk for r in others)} keep{'s' if len(others) == 1 else ''} an entry of "
                f"{'its' if len(others) == 1 else 'their'} own: a copy of the ESP as it is now, which upgrades no "
                f"longer update (they write to {keep.node}); remove such an entry with `efibootmgr -b NNNN -B` when "
                "it should not be a fallback"
            )
        if array.degraded:
            notes.append(
                f"{array.degraded} member{'s' if array.degraded != 1 else ''} of {array.device} "
                f"{'is' if array.degraded == 1 else 'are'} not here and keep{'s' if array.degraded == 1 else ''} "
                "the array's superblock: zero it (`mdadm --zero-superblock PARTITION`) before that disk comes back, "
                "or md assembles the old mirror from it; esp-mirror's entry for it goes"
            )
        notes.append(
            "the initramfs keeps the old mdadm.conf until it is rebuilt (the next kernel update, or by hand): its "
            "ARRAY line then finds no member and is passed over"
        )
    else:
        notes.append(
            f"{array.device} keeps {journal.members} member{'s' if journal.members != 1 else ''} and its FAT id "
            f"{fs_uuid}, which fstab names"
            + (
                "; a one-member array mirrors nothing until `esp-mirror add --disk DISK`"
                if journal.members == 1
                else ""
            )
        )
    return journal, notes


def _array_fat_uuid(runner: Runner, device: str) -> str | None:
    """The volume id of the FAT on the array, as blkid reads it (what fstab's UUID= finds)."""
    try:
        found = blkid_export(runner, ("blkid", "-p", "-o", "export", device))
    except CommandFailed as exc:
        raise BadInput(f"cannot read the FAT on {device} ({exc.stderr_line}): run esp-mirror as root") from None
    return found.get("UUID") if found.get("TYPE") == "vfat" else None


def _release_again(
    state: MirrorState, journal: journal_file.ReleaseJournal, disk: str | None, everything: bool
) -> None:
    """An interrupted release is finished by the same command only; a ``--disk`` one needs the array."""
    same = journal.everything == everything and (
        everything
        or (disk is not None and os.path.realpath(disk) in {journal.release[0].disk, journal.release[0].node})
    )
    if not same:
        raise BadInput(f"an interrupted release is not finished: run it again to finish it first: {journal.command}")
    if not everything:
        plans.require_array(replace(state, record=state.record or journal.record))


def _carrying(runner: Runner, state: MirrorState, journal: journal_file.ReleaseJournal) -> set[str]:
    """The released partitions that still carry the array's md superblock (a member carries it).

    :raises BadInput: one cannot be read, or carries another array's (not esp-mirror's to zero).
    """
    out = set()
    for r in journal.release:
        if state.array is not None and state.array.member(r.node) is not None:
            out.add(r.node)
            continue
        info = examine(runner, r.node)
        if info is None:
            continue
        if naming.mdadm_uuid(info.get("MD_UUID", "")) != journal.array_uuid:
            raise BadInput(
                f"{r.node} carries the superblock of another md array ({info.get('MD_UUID')}), not the mirror's: "
                f"see `mdadm --examine {r.node}`; esp-mirror zeroes only its own"
            )
        out.add(r.node)
    return out


def _release_done(journal: journal_file.ReleaseJournal) -> tuple[str, ...]:
    """What the administrator reads once the release is done."""
    record = journal.record
    if journal.keep is not None:
        keep = journal.keep
        return (
            f"esp-mirror: the mirror is undone: {keep.node} is the ESP at {record.mountpoint} (UUID={keep.volume_id}); "
            "each disk keeps a plain ESP and its own boot entry; `esp-mirror adopt` mirrors the ESP again",
        )
    return tuple(
        f"esp-mirror: {r.node} is a plain ESP (FAT volume id {r.volume_id}) that boots alone from its entry "
        f"{bootentries.released_label(record.entry_label, r.entry())!r}; {record.array} has {journal.members} "
        f"member{'s' if journal.members != 1 else ''}"
        for r in journal.release
    )


# -- the commands, as their rows in table.py name them ---------------------------------------------


def run_status(call: Call) -> int:
    """The mirror's health, shown; the metrics written when asked for. Takes no lock."""
    state = mirror_of(call, read_loaders=True)
    file = metrics_file(call.options)
    call.show(state)
    write_metrics(file, state, state.last_check)
    return state.exit_code()


def run_check(call: Call) -> int:
    """md's check and the member comparison (:func:`check`), shown; the metrics written when asked
    for. Exit 1 when the check found a problem."""
    state = mirror_of(call)
    file = metrics_file(call.options)
    if state.record is None or state.array is None:
        write_metrics(file, state, state.last_check)  # nothing to check, but the collector learns why
    result = check(call.runner, call.host, state, call.progress, md_check=not call.options.no_md_check)
    call.show(result)
    write_metrics(file, result.state, result.last)
    return 0 if result.last.success and not result.signature_differences else 1


def run_repair(call: Call) -> int:
    """The members compared (the differences shown), the source chosen (or the interrupted
    repair's), every other member rebuilt from it."""
    state = mirror_of(call)
    plans.require_array(state)
    journal = journal_file.load(call.host.sysroot)
    with scratch("repair-") as workdir:
        copies, diffs = compare_members(call.runner, state, workdir)
        print(compare.describe(diffs), end="", file=call.progress)
        source = repair_source(state, call.options.source, journal)
        planned = plan_repair(
            call.runner, state, source, copies, diffs, Path(call.options.backup_dir), call.host.sysroot, journal
        )
        return carry_out(call, state, planned)


def run_replace(call: Call) -> int:
    state = mirror_of(call)
    o = call.options
    planned = plan_new_member(
        call.runner,
        call.host,
        state,
        o.new,
        o.old,
        o.wipe,
        "replace",
        copy_table=o.copy_table,
        add_others=o.add_others,
    )
    return carry_out(call, state, planned)


def run_add(call: Call) -> int:
    state = mirror_of(call)
    o = call.options
    return carry_out(call, state, plan_new_member(call.runner, call.host, state, o.disk, None, o.wipe, "add"))


def run_entries(call: Call) -> int:
    state = mirror_of(call)
    return carry_out(call, state, plan_entries(call.runner, call.host, state))


def run_release(call: Call) -> int:
    state = mirror_of(call)
    o = call.options
    planned = plan_release(call.runner, call.host, state, o.disk, o.all, o.one_member)
    return carry_out(call, state, planned)


def run_refresh(call: Call) -> int:
    state = mirror_of(call)
    return carry_out(call, state, plan_refresh(state, call.host.sysroot))


def carry_out(call: Call, state: MirrorState, planned: Planned) -> int:
    """Check the plan (:mod:`~esp_mirror_plugin.pipeline.preflight`); show it; with --dry-run stop;
    else confirm, run what must come first (keeping backups), and apply. The report (what
    ``--json`` prints) is the plan, each step with ``would_change`` (``would_change``: 0 and
    ``undecided``: 0 mean there is nothing to do), and after applying how many steps ``changed``.
    Exit 2 when the plan was not confirmed."""
    if not planned.groups:  # nothing is there to change: said, not confirmed
        for line in planned.after:
            print(line, file=call.progress)
        call.show({"plan": [], **counts([]), "applied": False, **planned.report})
        return 0
    preflight = Preflight(call.runner, install_hint_of(state.record))
    for group in planned.groups:
        preflight.check(group)
    for group in planned.groups:
        print(group.render(), end="", file=call.progress)
    applier = Applier(call.runner, call.progress, host=call.host, exists=call.host.exists)
    plan = forecast(planned.groups, applier.now)
    report = {"plan": plan, **counts(plan), "applied": False, **planned.report}
    if call.options.dry_run:
        call.show(report)
        return 0
    if not call.confirm():
        return 2
    for line in planned.before():
        print(line, file=call.progress)
    for group in planned.groups:
        applier.execute(group)
    for line in planned.after:
        print(line, file=call.progress)
    call.show({**report, "applied": True, "changed": applier.changed})
    return 0


def metrics_file(options: argparse.Namespace) -> Path | None:
    """Where --metrics or --metrics-dir asks for the metrics, checked before anything runs."""
    if options.metrics is not None:
        return metrics.file_for(options.metrics)
    if options.metrics_dir is not None:
        return metrics.file_in(options.metrics_dir)
    return None


def write_metrics(file: Path | None, state: MirrorState, last_check: LastCheck | None) -> None:
    if file is not None:
        metrics.write(file, metrics.render(state, last_check, time.time()))


def run_heal(call: Call) -> int:
    """Members of ours that are present but out of the array go back in (no confirmation: it is
    meant to run unattended, and takes back only what the superblocks say is ours and older).
    Exit 0 when the array has all it can get, 1 when a member of ours was left out."""
    runner, host, why, dry_run = call.runner, call.host, call.options.why, call.options.dry_run
    record = records.load(host.sysroot)
    if record is None:
        raise BadInput(
            "no esp-mirror setup here (/etc/esp-mirror/esp-mirror.yaml is missing): nothing to heal; `esp-mirror "
            "apply` (new disks) or `esp-mirror adopt` (a running system's ESP) sets one up"
        )
    at_boot = why == "boot" and not dry_run
    waiting: tuple[str, ...] = ()
    try:
        array: ArrayState | None = heal.wait_for_array(runner, host, record, call.options.wait)
    except BadInput:
        waiting = heal.waiting_arrays(runner, host, record) if at_boot else ()
        if not waiting:
            raise
        array = None
    mounted = any(m.mountpoint == record.mountpoint for m in read_mounts(host))
    if at_boot and (waiting or not mounted):
        # the boot left the ESP unmounted: its array waits for a missing disk, or its mount unit
        # gave up or failed before the array was ready
        start = Group("heal", heal.start_steps(waiting, record, mounted, systemd=host.systemd_booted()))
        Preflight(runner, install_hint_of(record)).check(start)
        Applier(runner, call.progress, host=host, exists=host.exists).execute(start)
        print(history.append(host.sysroot, heal.started_line(record, waiting)), file=call.progress)
    if array is None:
        array = heal.wait_for_array(runner, host, record, 10.0)
    found = heal.find(runner, host, array, call.options.device)
    group = Group("heal", found.steps(), found.left_out)
    Preflight(runner, install_hint_of(record)).check(group)
    report: dict[str, Any] = {
        "array": array.device,
        "add": [r.node for r in found.add],
        "left_out": list(found.left_out),
        "plan": group.to_json(),
        "applied": False,
        "event": None,
    }
    if dry_run:
        print(group.render(), end="", file=call.progress)
    elif found.add or found.left_out:
        started = time.monotonic()
        Applier(runner, call.progress, host=host, exists=host.exists).execute(group)
        report["applied"] = True
        report["event"] = history.append(host.sysroot, heal.event_line(found, why, time.monotonic() - started))
        print(report["event"], file=call.progress)
    else:
        missing = array.degraded
        print(
            f"nothing to heal: {array.device} has {array.raid_disks - missing} of {array.raid_disks} members"
            + (" and no partition here carries a missing one" if missing else ""),
            file=call.progress,
        )
    if at_boot:
        report["entries"] = entries_after_the_fallback(runner, host, record, call.progress)
    call.show(report)
    return 1 if found.left_out else 0


def entries_after_the_fallback(runner: Runner, host: HostView, record: Record, progress: TextIO) -> str | None:
    """At boot, when shim's fallback made an entry of its own for a member (the firmware found
    none: a new main board, cleared NVRAM), the entries are set as ``esp-mirror entries`` sets
    them: one of ours per member, first, the fallback's folded in; else the next disk failure
    finds the other disks without an entry. Only then: an ordinary boot writes no EFI variable.
    Returns the history line, or None when nothing was done."""
    state = read_mirror(runner, record, host, read_loaders=False)
    folded = tuple(e for e in state.foreign if state.duplicate(e) is not None)
    if not folded or state.boot is None:
        return None
    for group in plan_entries(runner, host, state).groups:
        Preflight(runner, install_hint_of(record)).check(group)
        Applier(runner, progress, host=host, exists=host.exists).execute(group)
    event = history.append(host.sysroot, heal.entries_line(folded))
    print(event, file=progress)
    return event
