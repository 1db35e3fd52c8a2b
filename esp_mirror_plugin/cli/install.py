"""plan, apply and profiles: the install path of the command line."""

from __future__ import annotations

import argparse
import io
import json
import shlex
import time
from dataclasses import asdict
from typing import Any, TextIO

from esp_mirror_plugin import host
from esp_mirror_plugin.cli.interact import confirmed
from esp_mirror_plugin.errors import BadInput
from esp_mirror_plugin.pipeline import profiles
from esp_mirror_plugin.pipeline.adoption import NothingToDo
from esp_mirror_plugin.pipeline.context import Adopt, Context, prepare
from esp_mirror_plugin.pipeline.digest import is_plan_digest, plan_digest
from esp_mirror_plugin.pipeline.execute import counts, forecast
from esp_mirror_plugin.pipeline.request import Request, coerce, load_config, settings
from esp_mirror_plugin.pipeline.steps import Group
from esp_mirror_plugin.system import lock
from esp_mirror_plugin.system.discovery import HostView
from esp_mirror_plugin.system.runner import Runner


def run(
    args: argparse.Namespace,
    out: TextIO,
    stdin: TextIO,
    runner: Runner | None,
    host_view: HostView | None,
    *,
    lenient: bool,
) -> int:
    if args.command == "profiles":
        return _profiles(args.name, out)
    if args.command == "adopt":
        return _adopt(args, out, stdin, runner, host_view)
    if args.command == "plan":
        ctx = prepare(request_from_args(args), runner=runner, host=host_view, lenient=lenient)
        groups = host.plan(ctx, host.get_plugin_manager())
        if args.json:
            json.dump(plan_json(groups, ctx), out, indent=2)
            print(file=out)
        else:
            render(groups, ctx, out)
        return 0
    _check_digest_given(args.expect_plan, "`esp-mirror plan` (or plan --json's digest)")
    with lock.held(args.command_line):
        ctx = prepare(request_from_args(args), runner=runner, host=host_view)
        groups = host.plan(ctx, host.get_plugin_manager())
        _check_digest(args.expect_plan, plan_digest(ctx, groups), "esp-mirror plan", "apply")
        if not args.yes and stdin.isatty():
            render(groups, ctx, out)
        if not confirmed("apply", args.yes, stdin, out):
            return 2
        return _apply(groups, ctx, out, as_json=args.json)


def _check_digest_given(given: str | None, where: str) -> None:
    if given is not None and not is_plan_digest(given):
        raise BadInput(
            f"--expect-plan {given!r} is not a plan digest (64 hexadecimal digits): copy the digest line of {where}"
        )


def _check_digest(given: str | None, digest: str, review: str, command: str) -> None:
    if given and given != digest:
        raise BadInput(
            f"the plan is no longer the one with digest {given} (now {digest}): the "
            "disks, the boot entries or a file it edits changed since, or the options differ from the "
            f"plan's; review a new `{review}` and {command} that"
        )


# What adopt keeps of its command line (the journal's "run it again"): the same for --dry-run and
# the run it reviewed, so both plan the same journal and have the same digest.
_NOT_KEPT = ("--dry-run", "--yes", "--json")


def adopt_command(command_line: str) -> str:
    """The command line without the words that only say how to run it (--dry-run, --yes, --json,
    --expect-plan DIGEST)."""
    words, kept = shlex.split(command_line), []
    skip = False
    for word in words:
        if skip:
            skip = False
        elif word == "--expect-plan":
            skip = True
        elif word not in _NOT_KEPT and not word.startswith("--expect-plan="):
            kept.append(word)
    return shlex.join(kept)


def _adopt(
    args: argparse.Namespace, out: TextIO, stdin: TextIO, runner: Runner | None, host_view: HostView | None
) -> int:
    """adopt: plan the adoption (or say there is nothing to adopt), show it, confirm, carry it out."""
    _check_digest_given(args.expect_plan, "`esp-mirror adopt --dry-run` (or its --json digest)")
    with lock.held(args.command_line):
        try:
            ctx = prepare(
                request_from_args(args),
                runner=runner,
                host=host_view,
                adopt=Adopt(args.esp, adopt_command(args.command_line)),
            )
        except NothingToDo as done:
            if args.json:
                json.dump({"nothing_to_do": True, "message": str(done)}, out, indent=2)
                print(file=out)
            else:
                print(f"esp-mirror adopt: {done}", file=out)
            return 0
        groups = host.plan(ctx, host.get_plugin_manager())
        _check_digest(args.expect_plan, plan_digest(ctx, groups), "esp-mirror adopt --dry-run", "adopt")
        if args.dry_run:
            if args.json:
                json.dump(plan_json(groups, ctx), out, indent=2)
                print(file=out)
            else:
                render(groups, ctx, out)
            return 0
        if not args.yes and stdin.isatty():
            render(groups, ctx, out)
        if not confirmed("adopt", args.yes, stdin, out, dry_run_hint=True):
            return 2
        return _apply(groups, ctx, out, as_json=args.json, command="adopt")


def request_from_args(args: argparse.Namespace) -> Request:
    """The Request from ``--config`` overlaid with the options given on the command line."""
    values = load_config(args.config) if args.config else {}
    given = {name: getattr(args, name, None) for name, s in settings().items() if s.option is not None}
    values.update(coerce({k: v for k, v in given.items() if v is not None}, "command line"))
    return Request(**values)


def render(groups: list[Group], ctx: Context, out: TextIO) -> None:
    r = ctx.request
    print(f"# esp-mirror plan: profile {ctx.profile.name} ({ctx.profile.description})", file=out)
    print(f"# {release_line(ctx)}", file=out)
    print(
        f"# {len(r.disks)} disks -> RAID1 {r.device} (metadata 1.0, UUID {ctx.layout.array_uuid}), "
        f"FAT32 UUID={ctx.layout.fs_uuid} at {r.mountpoint} in target {r.target}",
        file=out,
    )
    print(
        f"# bootloader {r.bootloader}, initramfs {r.initramfs}, boot entries: {'yes' if ctx.layout.nvram else 'no'}",
        file=out,
    )
    adoption = ctx.layout.adoption
    if adoption is not None:
        live = adoption.live
        print(
            f"# adopt: the live ESP {live.node} ({live.disk.given}) joins last; "
            + {
                "new": f"backups in {adoption.backup_dir}",
                "copy": "an earlier run stopped before the switch: the array is made and filled again",
                "switched": "an earlier run switched to the array: it goes on from there",
            }[adoption.phase],
            file=out,
        )
    if ctx.snapshot.unread:
        print(
            "# no digest: this plan could not read everything (UNVERIFIED below), so apply --expect-plan "
            "cannot be given one; run plan as root for a plan with a digest",
            file=out,
        )
    else:
        command = "adopt" if adoption is not None else "apply"
        print(f"# digest {plan_digest(ctx, groups)} ({command} --expect-plan takes it)", file=out)
    for group in groups:
        print(f"\n{group.render()}", end="", file=out)


def release_line(ctx: Context) -> str:
    """Which release of the distribution the plan is for: the target's os-release, and the entry of
    the profile's ``releases`` that it picked."""
    found = ctx.target.os_release()
    profile = ctx.profile
    settings = (
        f"the profile's settings for release {profile.release}" if profile.release else "the profile's own settings"
    )
    if not found:
        return f"planned for: no /etc/os-release in the target {ctx.request.target} yet: {settings}"
    name = found.get("PRETTY_NAME") or found.get("NAME", "an unnamed system")
    version = found.get("VERSION_ID", "")
    return f"planned for: {name}" + (f" (VERSION_ID {version})" if version else " (no VERSION_ID)") + f": {settings}"


def plan_json(groups: list[Group], ctx: Context) -> dict[str, Any]:
    """``plan --json``: the layout, the digest (null when the plan could not read everything), the
    plan's text and its groups, each step with ``would_change`` (what apply would find done
    already), and how many steps would change."""
    shown = forecast(groups, host.applier_for(ctx).now)
    text = io.StringIO()
    render(groups, ctx, text)
    return {
        "profile": ctx.profile.name,
        "release": {"os_release": ctx.target.os_release(), "profile_release": ctx.profile.release or None},
        "request": {k: (v if not isinstance(v, tuple) else list(v)) for k, v in asdict(ctx.request).items()},
        "array": {"device": ctx.request.device, "uuid": ctx.layout.array_uuid, "action": ctx.layout.array_action},
        "filesystem": {"uuid": ctx.layout.fs_uuid, "mkfs": ctx.layout.make_fs},
        "members": [{"disk": m.disk.given, "partition_guid": m.guid, "exists": m.exists} for m in ctx.layout.members],
        "nvram": ctx.layout.nvram,
        "unverified": list(ctx.snapshot.unread),
        "digest": None if ctx.snapshot.unread else plan_digest(ctx, groups),
        **counts(shown),
        "text": text.getvalue(),
        "groups": shown,
    }


def _apply(groups: list[Group], ctx: Context, out: TextIO, *, as_json: bool, command: str = "apply") -> int:
    """Carry the plan out with progress lines; with ``as_json`` they go into the report instead,
    which is the plan (as ``plan --json``, told before the first step) and what each step did."""
    started = time.monotonic()
    planned = plan_json(groups, ctx) if as_json else {}
    log = io.StringIO()
    shown = log if as_json else out
    print(
        f"esp-mirror {command}: profile {ctx.profile.name}, {len(ctx.request.disks)} disks, "
        f"target {ctx.request.target}",
        file=shown,
    )
    applier = host.apply(groups, ctx, shown)
    seconds = time.monotonic() - started
    print(
        f"esp-mirror {command}: done in {seconds:.1f} s: {applier.done} steps, "
        f"{applier.changed} changed; {ctx.request.device} mirrored on {', '.join(ctx.request.disks)}, "
        f"mounted at {ctx.layout.esp_dir}",
        file=shown,
    )
    if as_json:
        report = {
            **planned,
            "applied": True,
            "done": applier.done,
            "changed": applier.changed,
            "steps": [
                {"group": group, "step": step.describe().splitlines()[0], "changed": changed}
                for group, step, changed in applier.outcomes
            ],
            "seconds": round(seconds, 1),
            "log": log.getvalue().splitlines(),
        }
        json.dump(report, out, indent=2)
        print(file=out)
    return 0


def _profiles(name: str | None, out: TextIO) -> int:
    """The built-in profiles, or one profile (a built-in name or a YAML file) as the planner uses
    it: a profile that extends none is its file, comments and all; one that extends others is
    shown merged, every key, laid out as the built-in files are."""
    if name:
        prof = profiles.load_profile(name)
        chain = profiles.extends_chain(name)
        print(f"# {prof.name}: {prof.source}", file=out)
        if not chain:
            print(profiles.raw_profile_text(name), file=out)
            return 0
        print(f"# merged with {' and '.join(chain)} (extends): the profile as the planner uses it", file=out)
        print(profiles.profile_text(prof), file=out)
        return 0
    for n in profiles.builtin_names():
        print(f"{n:10} {profiles.load_profile(n).description}", file=out)
    return 0
