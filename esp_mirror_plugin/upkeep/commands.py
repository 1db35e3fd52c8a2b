"""What check, repair, replace, add and entries do, apart from how the command line shows it.

The changing ones return a :class:`Planned`: the groups of steps (which the caller shows, checks
and runs through an executor), what ``--json`` reports about them, and what must happen right
before the first step (repair keeps the versions of files it will overwrite).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from esp_mirror_plugin.errors import BadInput
from esp_mirror_plugin.hooks import bootentries, installed
from esp_mirror_plugin.pipeline import fat
from esp_mirror_plugin.pipeline.execute import Applier
from esp_mirror_plugin.pipeline.layout import MAX_DISKS, disk_tag
from esp_mirror_plugin.pipeline.profiles import load_profile
from esp_mirror_plugin.pipeline.record import Record
from esp_mirror_plugin.pipeline.steps import Group
from esp_mirror_plugin.system.discovery import DiskFacts, HostView, describe_disks, read_mounts
from esp_mirror_plugin.system.runner import CommandFailed, Runner
from esp_mirror_plugin.upkeep import compare, lastcheck, loaders, plans, settings
from esp_mirror_plugin.upkeep import journal as journal_file
from esp_mirror_plugin.upkeep.journal import RepairJournal
from esp_mirror_plugin.upkeep.lastcheck import LastCheck
from esp_mirror_plugin.upkeep.mirror import MemberState, MirrorState, read_mirror

WORK_DIR = "/run/esp-mirror"


@dataclass
class Planned:
    """A changing upkeep command, planned: nothing has run yet."""

    groups: list[Group]
    report: dict[str, Any] = field(default_factory=dict)  # for --json, besides the plan
    before: Callable[[], list[str]] = list  # right before the first step; says what it did


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
    paths = (*loaders.chain(loader), *loaders.present(copies, loaders.shim_helpers(loader)))
    disks = {m.node: m.disk for m in array.members}
    return loaders.from_copies(copies, disks, tuple(dict.fromkeys(paths)))


def check_source_fat(runner: Runner, source: MemberState) -> None:
    """The member a repair copies from must hold a whole FAT (``fsck.fat -n``, read-only).

    :raises BadInput: fsck.fat cannot check it, or finds damage beyond the dirty bit.
    """
    compare.fresh_view(runner, source.node)
    try:
        fsck = runner.run(("fsck.fat", "-n", source.node), ok=(0, 1))
    except CommandFailed as exc:
        why = (fat.fsck_problems(exc.result.stdout + exc.result.stderr) or [exc.stderr_line])[0]
        raise BadInput(
            f"fsck.fat cannot check the source {source.node} ({why}): "
            "choose another --source, or repair it with fsck.fat first"
        ) from None
    damage = fat.fsck_problems(fsck.stdout + fsck.stderr) if fsck.returncode != 0 else []
    if damage:
        raise BadInput(
            f"the FAT on the source {source.node} is damaged ({damage[0]}): "
            "choose another --source, or repair it with fsck.fat first"
        )


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
    runner: Runner, host: HostView, state: MirrorState, new: str, old: str | None, wipe: bool, command: str
) -> Planned:
    """replace (``old`` a member or "missing") or add (``old`` None): partition ``new`` like the
    others, add it, wait for the recovery, then its boot entry (and drop the old disk's).

    The same command run again after an interruption continues: a new disk that already carries
    its ESP partition (the GUID made from its identity) is not partitioned again, one already in
    the array is not added again, an old member already taken out is not taken out again.
    """
    array = plans.require_array(state)
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
    resumed = plans.resumed_member(disk, record, sector, joined)
    if resumed is None:
        plans.new_disk_checks(disk, array, record, sector, wipe)
    steps, member = plans.member_steps(
        state, disk, sector, wipe, old=old_member, grow=old is None, resumed=resumed, joined=joined, root=host.sysroot
    )
    notes = [f"mdadm.conf names {array.device} by UUID: it stays as it is"]
    if joined is not None and joined.active:
        notes.append(f"{disk.given} is an in-sync member already (an earlier {command}?): only the boot entries follow")
    elif resumed is not None:
        notes.append(f"{disk.given} carries the ESP partition an earlier {command} made: continuing from there")
    groups = [Group(command, steps, tuple(notes))]
    entry = bootentries.Member(disk=disk.path, tag=disk_tag(disk), part=1, partuuid=member.guid)
    if state.efivars and state.boot is not None:
        extra = (entry,) if joined is None else ()  # a member already is one of the array's
        members = plans.entry_members(array, facts, without=old_member.node if old_member else None, extra=extra)
        groups.append(Group("entries", plans.entry_steps(state, members)))
    else:
        groups.append(Group("entries", (), ("no EFI variables: run `esp-mirror entries` on the booted system",)))
    return Planned(
        groups, {"new": disk.path, "partition_guid": member.guid, "old": old_member.node if old_member else old}
    )


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
