"""The upkeep commands on the command line: status, check, repair, replace, add, entries, heal,
release, refresh, as the rows of :mod:`esp_mirror_plugin.upkeep.table` list them.

What each one does is in :mod:`esp_mirror_plugin.upkeep.commands` (its row's ``work``, under its
lock); here each one's result is shown (its row's ``show``: text, or ``--json``), and a plan is
confirmed.
"""

from __future__ import annotations

import argparse
import io
import json
from typing import Any, TextIO

from esp_mirror_plugin.cli.interact import confirmed
from esp_mirror_plugin.system import lock
from esp_mirror_plugin.system.discovery import HostView
from esp_mirror_plugin.system.runner import Runner, ShRunner
from esp_mirror_plugin.upkeep import commands, compare, loaders, plans
from esp_mirror_plugin.upkeep.mirror import MirrorState
from esp_mirror_plugin.upkeep.table import JSON, UPKEEP


def run(args: argparse.Namespace, out: TextIO, stdin: TextIO, runner: Runner | None, host: HostView | None) -> int:
    command = UPKEEP[args.command]
    show = globals()[command.show]
    as_json = JSON in command.options and args.json  # a command without --json shows text
    call = commands.Call(
        options=args,
        command_line=args.command_line,
        runner=runner or ShRunner(),
        host=host or HostView(),
        progress=io.StringIO() if as_json else out,
        show=lambda result: show(args, result, out),
        confirm=lambda: confirmed(args.command, args.yes, stdin, out, dry_run_hint=True),
    )
    return commands.run(command, call)


def show_report(args: argparse.Namespace, report: dict[str, Any], out: TextIO) -> None:
    """What a changing command (or heal) did: its report under --json; its text was its progress."""
    if args.json:
        json.dump(report, out, indent=2, default=str)
        print(file=out)


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


def show_status(args: argparse.Namespace, state: MirrorState, out: TextIO) -> None:
    if args.json:
        json.dump(status_json(state), out, indent=2)
        print(file=out)
        return
    if state.record is None and state.array is None:
        print(
            "esp-mirror: not set up here (no /etc/esp-mirror/esp-mirror.yaml, no /dev/md/esp): `esp-mirror apply` "
            "(new disks) or `esp-mirror adopt` (a running system's ESP) sets it up",
            file=out,
        )
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


def show_check(args: argparse.Namespace, result: commands.CheckResult, out: TextIO) -> None:
    md_check = not args.no_md_check
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
        return
    found = (
        f"mismatch_cnt {result.mismatch_cnt}"
        if md_check
        else f"not started (--no-md-check); mismatch_cnt {result.mismatch_cnt} as md's last check left it"
    )
    print(f"md check of {plans.require_array(result.state).device}: {found} ({result.seconds:.1f} s)", file=out)
    print(compare.describe(result.differences), end="", file=out)
    _print_signature_differences(result.signature_differences, out)


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
