"""The upkeep commands: status, check, repair, replace, add, entries (all take --json).

They work on the running system. Read-only ones (status, check) just report; the others plan
steps, show them, ask (or take --yes), then run them through the same executor as apply;
``--dry-run`` stops after showing the plan.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from esp_mirror_plugin.hooks import bootentries

from esp_mirror_plugin.upkeep import compare

from esp_mirror_plugin.system import lock

from esp_mirror_plugin.upkeep import record as records

from esp_mirror_plugin.upkeep import plans as upkeep
from esp_mirror_plugin.system.discovery import HostView, describe_disks, read_mounts
from esp_mirror_plugin.errors import BadInput
from esp_mirror_plugin.pipeline.execute import Applier
from esp_mirror_plugin.pipeline.layout import disk_tag
from esp_mirror_plugin.upkeep.mirror import MirrorState, read_mirror
from esp_mirror_plugin.pipeline.preflight import Preflight
from esp_mirror_plugin.pipeline.profiles import load_profile
from esp_mirror_plugin.system.runner import CommandFailed, Runner, ShRunner
from esp_mirror_plugin.pipeline.steps import Group

BACKUP_DIR = "/var/lib/esp-mirror"
WORK_DIR = "/run/esp-mirror"


def add_parsers(sub) -> None:
    p = sub.add_parser("status", help="the mirror's health: array, members, mount, boot entries")
    _common(p)
    p = sub.add_parser("check", help="md consistency check, then compare the members' files (read-only)")
    _common(p)
    p = sub.add_parser("repair", help="make every member equal to the chosen one (full rebuild from it)")
    p.add_argument("--source", required=True, metavar="DISK|auto",
                   help="the member to keep; auto: the disk the firmware booted from")
    p.add_argument("--backup-dir", default=BACKUP_DIR, help=f"where overwritten files are kept (default {BACKUP_DIR})")
    _changing(p)
    p = sub.add_parser("replace", help="replace a failed or missing member with a new disk")
    p.add_argument("--old", required=True, metavar="DISK|missing", help="the member to replace, or missing")
    p.add_argument("--new", required=True, metavar="DISK", help="the new (blank) disk")
    p.add_argument("--wipe", action="store_true", help="erase an existing partition table on the new disk")
    _changing(p)
    p = sub.add_parser("add", help="grow the mirror by one member")
    p.add_argument("--disk", required=True, metavar="DISK", help="the new (blank) disk")
    p.add_argument("--wipe", action="store_true", help="erase an existing partition table on the disk")
    _changing(p)
    p = sub.add_parser("entries", help="one firmware boot entry per member, ours first, stale ones removed")
    _changing(p)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _changing(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--dry-run", action="store_true", help="show what would be done, change nothing")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")


def run(args: argparse.Namespace, out: TextIO, stdin: TextIO, runner: Runner | None,
        host: HostView | None) -> int:
    """Run one upkeep command. All but ``status`` hold the lock (:mod:`.lock`) throughout, so the
    weekly check never runs into a repair; ``status`` only reports who holds it."""
    runner = runner or ShRunner()
    host = host or HostView()
    handler = {"status": _status, "check": _check, "repair": _repair, "replace": _replace,
               "add": _add, "entries": _entries}[args.command]
    if args.command == "status":
        return handler(args, read_mirror(runner, records.load(host.sysroot), host), runner, host, out, stdin)
    with lock.held(args.command_line):
        state = read_mirror(runner, records.load(host.sysroot), host)
        return handler(args, state, runner, host, out, stdin)


# -- status ------------------------------------------------------------------------------------


def status_json(state: MirrorState) -> dict:
    a = state.array
    booted = state.booted_member
    return {
        "setup": state.record is not None,
        "exit_code": state.exit_code(),
        "problems": state.problems(),
        "array": None if a is None else {
            "device": a.device, "kernel_name": a.kernel_name, "uuid": a.uuid, "level": a.level,
            "metadata": a.metadata, "raid_disks": a.raid_disks, "degraded": a.degraded,
            "array_state": a.array_state, "sync_action": a.sync_action, "sync_completed": a.sync_completed,
            "mismatch_cnt": a.mismatch_cnt,
            "members": [{"node": m.node, "disk": m.disk, "slot": m.slot, "state": m.state,
                         "partuuid": m.partuuid} for m in a.members],
        },
        "mount": None if state.mount is None else {"mountpoint": state.mount.mountpoint,
                                                    "device": state.mount.device},
        "mounted_members": list(state.mounted_members),
        "entries": [{"disk": e.member.disk, "partuuid": e.member.partuuid,
                     "entry": e.entry.number if e.entry else None,
                     "label": e.entry.label if e.entry else None,
                     "loader": e.entry.loader if e.entry else None, "file_exists": e.file_exists}
                    for e in state.entries],
        "efivars": state.efivars,
        "boot_current": state.boot_current,
        "loader_device_partuuid": state.loader_partuuid,
        "booted_disk": booted.disk if booted else None,
        "busy": lock.holder(),
    }


def _status(args, state: MirrorState, runner, host, out: TextIO, stdin) -> int:
    if args.json:
        json.dump(status_json(state), out, indent=2)
        print(file=out)
        return state.exit_code()
    if state.record is None and state.array is None:
        print("esp-mirror: not set up here (no /etc/esp-mirror/esp-mirror.yaml, no /dev/md/esp)", file=out)
        return 2
    a = state.array
    if a is None:
        print(f"{state.record.array}: not running", file=out)
    else:
        print(f"{a.device} ({a.kernel_name}): {a.level}, metadata {a.metadata}, "
              f"{a.raid_disks - a.degraded}/{a.raid_disks} members, {a.array_state}, "
              f"{a.sync_action}{'' if a.sync_completed == 'none' else ' ' + a.sync_completed}, "
              f"mismatch_cnt {a.mismatch_cnt}", file=out)
        entries = {e.member.node: e for e in state.entries}
        rows = [("member", "disk", "state", "partition GUID", "boot entry", "loader file")]
        for m in a.members:
            e = entries.get(m.node)
            entry = "-" if not state.efivars else (f"Boot{e.entry.number}" if e and e.entry else "MISSING")
            file = ("-" if not (e and e.entry) or e.file_exists is None
                    else "ok" if e.file_exists else "MISSING")
            rows.append((m.node, m.disk, m.state, m.partuuid, entry, file))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)
    if state.mount:
        print(f"ESP: {state.mount.mountpoint} mounted from {state.mount.device}", file=out)
    booted = state.booted_member
    if state.boot_current or state.loader_partuuid:
        print(f"this boot: Boot{state.boot_current or '?'}"
              + (f" from {booted.disk}" if booted else " (not from a member of ours)"), file=out)
    busy = lock.holder()
    if busy:
        print(f"busy: {busy} (the state above may be changing)", file=out)
    problems = state.problems()
    print("healthy" if not problems else "problems:\n" + "\n".join(f"  - {p}" for p in problems), file=out)
    return state.exit_code()


# -- check -------------------------------------------------------------------------------------


def compare_members(runner: Runner, state: MirrorState, workdir: Path):
    """Copy each usable member's files (read-only) and list the differences."""
    nodes = [m.node for m in state.array.members if m.usable]
    copies = {node: workdir / os.path.basename(node) for node in nodes}
    trees = {node: compare.copy_member(runner, node, copies[node]) for node in nodes}
    return copies, compare.differences(trees)


def _check(args, state: MirrorState, runner, host, out: TextIO, stdin) -> int:
    array = upkeep.require_array(state)
    applier = Applier(runner, out if not args.json else open(os.devnull, "w"), host=host, exists=host.exists)
    started = time.monotonic()
    applier.execute(Group("check", upkeep.check_steps(array)))
    mismatches = read_mirror(runner, state.record, host).array.mismatch_cnt
    workdir = Path(tempfile.mkdtemp(prefix="check-", dir=_workdir()))
    try:
        _, diffs = compare_members(runner, state, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    seconds = time.monotonic() - started
    if args.json:
        json.dump({"mismatch_cnt": mismatches, "differences": [d.to_json() for d in diffs],
                   "members": [m.node for m in array.members if m.usable], "seconds": round(seconds, 1)},
                  out, indent=2)
        print(file=out)
    else:
        print(f"md check of {array.device}: mismatch_cnt {mismatches} ({seconds:.1f} s)", file=out)
        _print_differences(diffs, out)
    return 0 if mismatches == 0 and not diffs else 1


def _print_differences(diffs, out: TextIO) -> None:
    if not diffs:
        print("member files: identical", file=out)
        return
    print(f"member files: {len(diffs)} differ", file=out)
    for d in diffs:
        print(f"  {d.path}", file=out)
        for node, v in d.versions.items():
            desc = "missing" if v is None else (
                f"{v.size} bytes, modified {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(v.mtime))} UTC, "
                f"sha256 {v.sha256[:12]}")
            print(f"    {node}: {desc}", file=out)


def _workdir() -> str:
    os.makedirs(WORK_DIR, exist_ok=True)
    return WORK_DIR


# -- changing commands -------------------------------------------------------------------------


def _install_hint(state: MirrorState) -> Callable[[str], str]:
    if state.record is not None:
        try:
            return load_profile(state.record.profile).install_hint
        except BadInput:
            pass
    return lambda tool: f"your package manager (the package that has {tool})"


def _carry_out(args, state: MirrorState, groups: list[Group], runner, host, out: TextIO, stdin, extra: dict,
               before: Callable[[], None] = lambda: None) -> int:
    """Check the plan (:mod:`.preflight`); show it; with --dry-run stop; else confirm, run
    ``before`` (e.g. keep backups), and apply. JSON gets the plan too."""
    preflight = Preflight(runner, _install_hint(state))
    for group in groups:
        preflight.check(group)
    plan = [g.to_json() for g in groups]
    if args.json:
        out_text = open(os.devnull, "w")
    else:
        out_text = out
        for group in groups:
            print(group.render(), end="", file=out)
    if args.dry_run:
        if args.json:
            json.dump({"plan": plan, "applied": False, **extra}, out, indent=2, default=str)
            print(file=out)
        return 0
    if not args.yes:
        if not stdin.isatty():
            raise BadInput(f"{args.command} changes disks: pass --yes to confirm "
                           "(there is no terminal to ask on), or --dry-run to only look")
        print("Type 'yes' to carry out this plan: ", end="", file=out, flush=True)
        if stdin.readline().strip() != "yes":
            print("Nothing done.", file=out)
            return 2
    before()
    applier = Applier(runner, out_text, host=host, exists=host.exists)
    for group in groups:
        applier.execute(group)
    if args.json:
        json.dump({"plan": plan, "applied": True, **extra}, out, indent=2, default=str)
        print(file=out)
    return 0


def _repair(args, state: MirrorState, runner, host, out: TextIO, stdin) -> int:
    upkeep.require_array(state)
    workdir = Path(tempfile.mkdtemp(prefix="repair-", dir=_workdir()))
    try:
        copies, diffs = compare_members(runner, state, workdir)
        try:
            source = upkeep.source_member(state, args.source)
        except BadInput:
            if args.source == "auto" and not args.json:
                _print_differences(diffs, out)
            raise
        compare.fresh_view(runner, source.node)
        try:
            fsck = runner.run(("fsck.fat", "-n", source.node), ok=(0, 1))
        except CommandFailed as exc:
            why = (upkeep.fsck_problems(exc.result.stdout + exc.result.stderr) or [exc.stderr_line])[0]
            raise BadInput(f"fsck.fat cannot check the source {source.node} ({why}): "
                           "choose another --source, or repair it with fsck.fat first") from None
        damage = upkeep.fsck_problems(fsck.stdout + fsck.stderr) if fsck.returncode != 0 else []
        if damage:
            raise BadInput(f"the FAT on the source {source.node} is damaged ({damage[0]}): "
                           "choose another --source, or repair it with fsck.fat first")
        notes = [f"source: {source.node} on {source.disk}; fsck.fat -n found no damage"]
        if diffs:
            notes.append(f"before any change, the other members' versions of {len(diffs)} differing files "
                         f"are kept in a tar under {args.backup_dir}")
        steps = upkeep.repair_steps(state, source)
        backups: list[Path] = []

        def keep_backups() -> None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            backups.extend(compare.backup(copies, diffs, {source.node}, Path(args.backup_dir), stamp))
            for tar in backups:
                print(f"kept the overwritten versions in {tar}", file=out if not args.json else open(os.devnull, "w"))

        if not args.json:
            _print_differences(diffs, out)
        extra = {"source": source.node, "differences": [d.to_json() for d in diffs], "backups": backups}
        code = _carry_out(args, state, [Group("repair", steps, tuple(notes))], runner, host, out, stdin, extra,
                          before=keep_backups)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return code


def _member_facts(state: MirrorState, runner, host, more: tuple[str, ...] = ()):
    mounts = read_mounts(host)
    paths = tuple(dict.fromkeys([m.disk for m in state.array.members] + list(more)))
    facts = describe_disks(paths, runner, host, mounts, ours=state.array.kernel_name)
    return {f.given: f for f in facts}


def _grow(args, state: MirrorState, runner, host, out, stdin, *, new: str, old: str | None) -> int:
    array = upkeep.require_array(state)
    old_member = None
    if old == "missing":
        if not array.degraded:
            raise BadInput(f"no member of {array.device} is missing: name the disk to replace with --old DISK")
    elif old is not None:
        old_member = array.member(old)
        if old_member is None:
            raise BadInput(f"{old} is not a member of {array.device}: members are "
                           f"{', '.join(m.disk for m in array.members)}; use --old missing for a disk that is gone")
    elif array.raid_disks >= 8:
        raise BadInput(f"{array.device} already has 8 members, the most esp-mirror mirrors")
    facts = _member_facts(state, runner, host, (new,))
    disk = facts[new]
    sector = next((facts[m.disk].sector_size for m in array.members if m.disk in facts), 512)
    upkeep.new_disk_checks(disk, array, state.record, sector, args.wipe)
    steps, member = upkeep.member_steps(state, disk, sector, args.wipe, old=old_member, grow=old is None)
    groups = [Group(args.command, steps, (f"mdadm.conf names {array.device} by UUID: it stays as it is",))]
    entry = bootentries.Member(disk=disk.path, tag=disk_tag(disk), part=1, partuuid=member.guid)
    if state.efivars and state.boot is not None:
        members = upkeep.entry_members(array, facts, without=old_member.node if old_member else None, extra=(entry,))
        groups.append(Group("entries", upkeep.entry_steps(state, members)))
    else:
        groups.append(Group("entries", (), ("no EFI variables: run `esp-mirror entries` on the booted system",)))
    return _carry_out(args, state, groups, runner, host, out, stdin,
                      {"new": disk.path, "partition_guid": member.guid,
                       "old": old_member.node if old_member else old})


def _replace(args, state, runner, host, out, stdin) -> int:
    return _grow(args, state, runner, host, out, stdin, new=args.new, old=args.old)


def _add(args, state, runner, host, out, stdin) -> int:
    return _grow(args, state, runner, host, out, stdin, new=args.disk, old=None)


def _entries(args, state: MirrorState, runner, host, out, stdin) -> int:
    array = upkeep.require_array(state)
    facts = _member_facts(state, runner, host)
    steps = upkeep.entry_steps(state, upkeep.entry_members(array, facts))
    notes = () if steps else ("NVRAM already holds one entry of ours per member, first in BootOrder",)
    return _carry_out(args, state, [Group("entries", steps, notes)], runner, host, out, stdin, {})
