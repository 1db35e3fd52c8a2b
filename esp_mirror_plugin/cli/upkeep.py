"""The upkeep commands on the command line: status, check, repair, replace, add, entries, heal,
refresh.

What each one does is in :mod:`esp_mirror_plugin.upkeep.commands`; here it is shown (text or
``--json``), confirmed, and carried out through the same executor as apply. All but ``status``
hold the lock (:mod:`esp_mirror_plugin.system.lock`) throughout, so the weekly check never runs
into a repair; ``status`` only says who holds it.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path
from typing import Any, TextIO

from esp_mirror_plugin.cli.interact import confirmed
from esp_mirror_plugin.errors import BadInput
from esp_mirror_plugin.pipeline import record as records
from esp_mirror_plugin.pipeline.execute import Applier, counts, forecast
from esp_mirror_plugin.pipeline.preflight import Preflight
from esp_mirror_plugin.pipeline.record import Record
from esp_mirror_plugin.pipeline.steps import Group
from esp_mirror_plugin.system import lock
from esp_mirror_plugin.system.discovery import HostView, read_mounts
from esp_mirror_plugin.system.runner import Runner, ShRunner
from esp_mirror_plugin.upkeep import commands, compare, heal, history, loaders, metrics, plans
from esp_mirror_plugin.upkeep import journal as journal_file
from esp_mirror_plugin.upkeep.lastcheck import LastCheck
from esp_mirror_plugin.upkeep.mirror import ArrayState, MirrorState, read_mirror

HEAL_LOCK_WAIT = 300.0  # at boot, heal may queue behind a check or another heal's recovery


def run(args: argparse.Namespace, out: TextIO, stdin: TextIO, runner: Runner | None, host: HostView | None) -> int:
    runner = runner or ShRunner()
    host = host or HostView()
    if args.command == "status":
        return _status(args, read_mirror(runner, records.load(host.sysroot), host), out)
    with lock.held(args.command_line, wait=HEAL_LOCK_WAIT if args.command == "heal" else None):
        if args.command == "heal":
            return _heal(args, runner, host, out)
        state = read_mirror(runner, records.load(host.sysroot), host, read_loaders=False)
        if args.command == "check":
            return _check(args, state, runner, host, out)
        if args.command == "repair":
            return _repair(args, state, runner, host, out, stdin)
        if args.command in ("replace", "add"):
            new, old = (args.new, args.old) if args.command == "replace" else (args.disk, None)
            planned = commands.plan_new_member(runner, host, state, new, old, args.wipe, args.command)
        elif args.command == "refresh":
            planned = commands.plan_refresh(state, host.sysroot)
        else:
            planned = commands.plan_entries(runner, host, state)
        return _carry_out(args, state, planned, runner, host, out, stdin)


# -- status ------------------------------------------------------------------------------------


def status_json(state: MirrorState) -> dict[str, Any]:
    a = state.array
    booted = state.booted_member
    chains = {m.node: [f.to_json() for f in m.files] for m in state.loaders}
    return {
        "setup": state.record is not None,
        "exit_code": state.exit_code(),
        "problems": state.problems(),
        "array": None
        if a is None
        else {
            "device": a.device,
            "kernel_name": a.kernel_name,
            "uuid": a.uuid,
            "level": a.level,
            "metadata": a.metadata,
            "raid_disks": a.raid_disks,
            "degraded": a.degraded,
            "array_state": a.array_state,
            "sync_action": a.sync_action,
            "sync_completed": a.sync_completed,
            "mismatch_cnt": a.mismatch_cnt,
            "members": [
                {
                    "node": m.node,
                    "disk": m.disk,
                    "slot": m.slot,
                    "state": m.state,
                    "partuuid": m.partuuid,
                    "loaders": chains.get(m.node, []),
                }
                for m in a.members
            ],
        },
        "mount": None if state.mount is None else {"mountpoint": state.mount.mountpoint, "device": state.mount.device},
        "mounted_members": list(state.mounted_members),
        "entries": [
            {
                "disk": e.member.disk,
                "partuuid": e.member.partuuid,
                "entry": e.entry.number if e.entry else None,
                "label": e.entry.label if e.entry else None,
                "loader": e.entry.loader if e.entry else None,
                "file_exists": e.file_exists,
            }
            for e in state.entries
        ],
        "foreign_entries": [
            {
                "entry": e.number,
                "label": e.label,
                "loader": e.loader,
                "partuuid": e.partuuid,
                "duplicates_ours": state.duplicate(e) is not None,
            }
            for e in state.foreign
        ],
        "efivars": state.efivars,
        "secure_boot": state.secure_boot,
        "boot_current": state.boot_current,
        "loader_device_partuuid": state.loader_partuuid,
        "booted_disk": booted.disk if booted else None,
        "busy": lock.holder(),
        "last_event": state.last_event,
        "last_check": state.last_check.to_json() if state.last_check else None,
    }


def _metrics_file(args: argparse.Namespace) -> Path | None:
    """Where --metrics or --metrics-dir asks for the metrics, checked before anything runs."""
    if args.metrics is not None:
        return metrics.file_for(args.metrics)
    if args.metrics_dir is not None:
        return metrics.file_in(args.metrics_dir)
    return None


def _write_metrics(file: Path | None, state: MirrorState, last_check: LastCheck | None) -> None:
    if file is not None:
        metrics.write(file, metrics.render(state, last_check, time.time()))


def _status(args: argparse.Namespace, state: MirrorState, out: TextIO) -> int:
    file = _metrics_file(args)
    _show_status(args, state, out)
    _write_metrics(file, state, state.last_check)
    return state.exit_code()


def _show_status(args: argparse.Namespace, state: MirrorState, out: TextIO) -> None:
    if args.json:
        json.dump(status_json(state), out, indent=2)
        print(file=out)
        return
    if state.record is None and state.array is None:
        print("esp-mirror: not set up here (no /etc/esp-mirror/esp-mirror.yaml, no /dev/md/esp)", file=out)
        if state.unfinished:
            print("problems:\n" + "\n".join(f"  - {p}" for p in state.unfinished), file=out)
        return
    a = state.array
    if a is None:
        print(f"{state.record.array if state.record else '/dev/md/esp'}: not running", file=out)
    else:
        print(
            f"{a.device} ({a.kernel_name}): {a.level}, metadata {a.metadata}, "
            f"{a.raid_disks - a.degraded}/{a.raid_disks} members, {a.array_state}, "
            f"{a.sync_action}{'' if a.sync_completed == 'none' else ' ' + a.sync_completed}, "
            f"mismatch_cnt {a.mismatch_cnt}",
            file=out,
        )
        entries = {e.member.node: e for e in state.entries}
        rows = [("member", "disk", "state", "partition GUID", "boot entry", "loader file")]
        for m in a.members:
            e = entries.get(m.node)
            entry = "-" if not state.efivars else (f"Boot{e.entry.number}" if e and e.entry else "MISSING")
            file = "-" if not (e and e.entry) or e.file_exists is None else "ok" if e.file_exists else "MISSING"
            rows.append((m.node, m.disk, m.state, m.partuuid, entry, file))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)
    if state.mount:
        print(f"ESP: {state.mount.mountpoint} mounted from {state.mount.device}", file=out)
    booted = state.booted_member
    if state.boot_current or state.loader_partuuid:
        print(
            f"this boot: Boot{state.boot_current or '?'}"
            + (f" from {booted.disk}" if booted else " (not from a member of ours)"),
            file=out,
        )
    if a is not None:
        print(f"Secure Boot: {_secure_boot(state)}", file=out)
    _show_loaders(state, out)
    _show_foreign(state, out)
    if state.last_event:
        print(f"last event: {state.last_event}", file=out)
    if state.last_check:
        print(f"last check: {state.last_check.line()}", file=out)
    busy = lock.holder()
    if busy:
        print(f"busy: {busy} (the state above may be changing)", file=out)
    problems = state.problems()
    print("healthy" if not problems else "problems:\n" + "\n".join(f"  - {p}" for p in problems), file=out)


def _secure_boot(state: MirrorState) -> str:
    if state.secure_boot is not None:
        return "on" if state.secure_boot else "off"
    return "unknown (no EFI variables)" if not state.efivars else "unknown (the firmware has no SecureBoot variable)"


def _show_loaders(state: MirrorState, out: TextIO) -> None:
    """Each in-sync member's loader files and their signatures, as read from that member."""
    if not state.loaders:
        return
    print("loader files, read from each member:", file=out)
    rows = [(m.node if i == 0 else "", f.path, f.describe()) for m in state.loaders for i, f in enumerate(m.files)]
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    for node, path, desc in rows:
        print(f"  {node.ljust(widths[0])}  {path.ljust(widths[1])}  {desc}", file=out)


def _show_foreign(state: MirrorState, out: TextIO) -> None:
    """Boot entries on a member's partition that esp-mirror did not make."""
    if not state.foreign:
        return
    print("boot entries on the members' partitions not made by esp-mirror:", file=out)
    members = {m.partuuid: m.node for m in state.array.members} if state.array else {}
    for e in state.foreign:
        same = " (duplicates ours)" if state.duplicate(e) is not None else ""
        print(f"  Boot{e.number} {e.label!r} {e.loader} on {members.get(e.partuuid, e.partuuid)}{same}", file=out)


# -- check -------------------------------------------------------------------------------------


def _check(args: argparse.Namespace, state: MirrorState, runner: Runner, host: HostView, out: TextIO) -> int:
    md_check = not args.no_md_check
    file = _metrics_file(args)
    if state.record is None or state.array is None:
        _write_metrics(file, state, state.last_check)  # nothing to check, but the collector learns why
    result = commands.check(runner, host, state, io.StringIO() if args.json else out, md_check=md_check)
    array = plans.require_array(state)
    if args.json:
        json.dump(
            {
                "mismatch_cnt": result.mismatch_cnt,
                "md_check": md_check,
                "differences": [d.to_json() for d in result.differences],
                "signature_differences": [d.to_json() for d in result.signature_differences],
                "members": result.members,
                "seconds": round(result.seconds, 1),
            },
            out,
            indent=2,
        )
        print(file=out)
    else:
        found = (
            f"mismatch_cnt {result.mismatch_cnt}"
            if md_check
            else f"not started (--no-md-check); mismatch_cnt {result.mismatch_cnt} as md's last check left it"
        )
        print(f"md check of {array.device}: {found} ({result.seconds:.1f} s)", file=out)
        _print_differences(result.differences, out)
        _print_signature_differences(result.signature_differences, out)
    _write_metrics(file, result.state, result.last)
    return 0 if result.last.success and not result.signature_differences else 1


def _print_signature_differences(diffs: list[loaders.SignatureDifference], out: TextIO) -> None:
    """The loader files the members hold signed differently: those disks do not boot alike."""
    if not diffs:
        return
    print(f"loader signatures: {len(diffs)} differ between the members (the disks do not boot alike)", file=out)
    for d in diffs:
        print(f"  {d.path}", file=out)
        for node, f in d.versions:
            digest = f" (certificates sha256 {f.signature.digest[:12]})" if f.signature and f.signature.signed else ""
            print(f"    {node}: {f.describe()}{digest}", file=out)
    right = next((d.right for d in diffs if d.right), None)
    print(
        f"  run `esp-mirror repair --source {right or 'DISK'}`"
        + ("" if right else " with the disk whose copies are right"),
        file=out,
    )


def _print_differences(diffs: list[compare.Difference], out: TextIO) -> None:
    if not diffs:
        print("member files: identical", file=out)
        return
    print(f"member files: {len(diffs)} differ", file=out)
    for d in diffs:
        print(f"  {d.path}", file=out)
        for node, v in d.versions.items():
            desc = (
                "missing"
                if v is None
                else (
                    f"{v.size} bytes, modified {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(v.mtime))} UTC, "
                    f"sha256 {v.sha256[:12]}"
                )
            )
            print(f"    {node}: {desc}", file=out)


# -- heal --------------------------------------------------------------------------------------


def _heal(args: argparse.Namespace, runner: Runner, host: HostView, out: TextIO) -> int:
    """Members of ours that are present but out of the array go back in (no confirmation: it is
    meant to run unattended, and takes back only what the superblocks say is ours and older).
    Exit 0 when the array has all it can get, 1 when a member of ours was left out."""
    record = records.load(host.sysroot)
    if record is None:
        raise BadInput("no esp-mirror setup here (/etc/esp-mirror/esp-mirror.yaml is missing): nothing to heal")
    at_boot = args.why == "boot" and not args.dry_run
    waiting: tuple[str, ...] = ()
    try:
        array: ArrayState | None = heal.wait_for_array(runner, host, record, args.wait)
    except BadInput:
        waiting = heal.waiting_arrays(runner, host, record) if at_boot else ()
        if not waiting:
            raise
        array = None
    mounted = any(m.mountpoint == record.mountpoint for m in read_mounts(host))
    if at_boot and (waiting or not mounted):
        # the boot left the ESP unmounted: its array waits for a missing disk, or its mount unit
        # gave up or failed before the array was ready
        start = Group("heal", heal.start_steps(waiting, record, mounted))
        Preflight(runner, commands.install_hint_of(record)).check(start)
        Applier(runner, io.StringIO() if args.json else out, host=host, exists=host.exists).execute(start)
        event = history.append(host.sysroot, heal.started_line(record, waiting))
        print(event, file=io.StringIO() if args.json else out)
    if array is None:
        array = heal.wait_for_array(runner, host, record, 10.0)
    found = heal.find(runner, host, array, args.device)
    group = Group("heal", found.steps(), found.left_out)
    Preflight(runner, commands.install_hint_of(record)).check(group)
    shown = io.StringIO() if args.json else out
    report: dict[str, Any] = {
        "array": array.device,
        "add": [r.node for r in found.add],
        "left_out": list(found.left_out),
        "plan": group.to_json(),
        "applied": False,
        "event": None,
    }
    if args.dry_run:
        print(group.render(), end="", file=shown)
    elif found.add or found.left_out:
        started = time.monotonic()
        Applier(runner, shown, host=host, exists=host.exists).execute(group)
        report["applied"] = True
        report["event"] = history.append(host.sysroot, heal.event_line(found, args.why, time.monotonic() - started))
        print(report["event"], file=shown)
    else:
        missing = array.degraded
        print(
            f"nothing to heal: {array.device} has {array.raid_disks - missing} of {array.raid_disks} members"
            + (" and no partition here carries a missing one" if missing else ""),
            file=shown,
        )
    if at_boot:
        report["entries"] = _entries_after_the_fallback(runner, host, record, shown)
    if args.json:
        json.dump(report, out, indent=2)
        print(file=out)
    return 1 if found.left_out else 0


def _entries_after_the_fallback(runner: Runner, host: HostView, record: Record, shown: TextIO) -> str | None:
    """At boot, when shim's fallback made an entry of its own for a member (the firmware found
    none: a new main board, cleared NVRAM), the entries are set as ``esp-mirror entries`` sets
    them: one of ours per member, first, the fallback's folded in; else the next disk failure
    finds the other disks without an entry. Only then: an ordinary boot writes no EFI variable.
    Returns the history line, or None when nothing was done."""
    state = read_mirror(runner, record, host, read_loaders=False)
    folded = tuple(e for e in state.foreign if state.duplicate(e) is not None)
    if not folded or state.boot is None:
        return None
    for group in commands.plan_entries(runner, host, state).groups:
        Preflight(runner, commands.install_hint_of(record)).check(group)
        Applier(runner, shown, host=host, exists=host.exists).execute(group)
    event = history.append(host.sysroot, heal.entries_line(folded))
    print(event, file=shown)
    return event


# -- changing commands -------------------------------------------------------------------------


def _repair(
    args: argparse.Namespace, state: MirrorState, runner: Runner, host: HostView, out: TextIO, stdin: TextIO
) -> int:
    plans.require_array(state)
    journal = journal_file.load(host.sysroot)
    with commands.scratch("repair-") as workdir:
        copies, diffs = commands.compare_members(runner, state, workdir)
        if not args.json:
            _print_differences(diffs, out)
        source = commands.repair_source(state, args.source, journal)
        planned = commands.plan_repair(
            runner, state, source, copies, diffs, Path(args.backup_dir), host.sysroot, journal
        )
        return _carry_out(args, state, planned, runner, host, out, stdin)


def _carry_out(
    args: argparse.Namespace,
    state: MirrorState,
    planned: commands.Planned,
    runner: Runner,
    host: HostView,
    out: TextIO,
    stdin: TextIO,
) -> int:
    """Check the plan (:mod:`~esp_mirror_plugin.pipeline.preflight`); show it; with --dry-run stop;
    else confirm, run what must come first (keeping backups), and apply. JSON gets the plan too,
    each step with ``would_change`` (``would_change``: 0 and ``undecided``: 0 mean there is
    nothing to do), and after applying how many steps ``changed``."""
    preflight = Preflight(runner, commands.install_hint_of(state.record))
    for group in planned.groups:
        preflight.check(group)
    shown = io.StringIO() if args.json else out
    for group in planned.groups:
        print(group.render(), end="", file=shown)
    applier = Applier(runner, shown, host=host, exists=host.exists)
    plan = forecast(planned.groups, applier.now)
    report = {"plan": plan, **counts(plan), "applied": False, **planned.report}
    if args.dry_run:
        if args.json:
            json.dump(report, out, indent=2, default=str)
            print(file=out)
        return 0
    if not confirmed(args.command, args.yes, stdin, out, dry_run_hint=True):
        return 2
    for line in planned.before():
        print(line, file=shown)
    for group in planned.groups:
        applier.execute(group)
    if args.json:
        json.dump({**report, "applied": True, "changed": applier.changed}, out, indent=2, default=str)
        print(file=out)
    return 0
