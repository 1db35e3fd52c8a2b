"""esp-mirror command line: plan, apply, profiles.

Exit codes: 0 done, 1 a step failed (re-running apply continues), 2 bad input (nothing changed).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
import traceback
from dataclasses import asdict
from typing import TextIO

from esp_mirror_plugin import __version__, host

from esp_mirror_plugin.cli import upkeep as cli_upkeep

from esp_mirror_plugin.system import lock

from esp_mirror_plugin.pipeline import profiles
from esp_mirror_plugin.pipeline.context import prepare
from esp_mirror_plugin.pipeline.digest import plan_digest
from esp_mirror_plugin.errors import BadInput, StepFailed
from esp_mirror_plugin.pipeline.kinds import BootloaderKind, InitramfsMode
from esp_mirror_plugin.pipeline.request import Request, coerce, load_config
from esp_mirror_plugin.pipeline.steps import Group


UPKEEP = ("status", "check", "repair", "replace", "add", "entries")
AFTER_FAILURE = {
    "apply": "Fix the cause and run the same `esp-mirror apply` again: it continues from here.",
    "check": "The mirror was not changed; run `esp-mirror check` again once the cause is fixed.",
    "entries": "Fix the cause and run `esp-mirror entries` again.",
    **dict.fromkeys(("repair", "replace", "add"),
                    "Run `esp-mirror status` to see which members are in the array now; add missing ones "
                    "back with `esp-mirror replace --old missing --new DISK`, and `mount` the ESP if it is "
                    "not mounted."),
}


def is_root() -> bool:
    return os.geteuid() == 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="esp-mirror", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"esp-mirror {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an internal error")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("plan", "print every command and file write, change nothing"),
                       ("apply", "carry out the plan")):
        p = sub.add_parser(name, help=text, description=text)
        _install_options(p)
        if name == "apply":
            p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
            p.add_argument("--expect-plan", metavar="DIGEST",
                           help="refuse unless the plan is still the one with this digest (from plan --json)")
        else:
            p.add_argument("--json", action="store_true", help="the plan as JSON")
    p = sub.add_parser("profiles", help="list the built-in profiles, or show one")
    p.add_argument("name", nargs="?")
    cli_upkeep.add_parsers(sub)
    return parser


def _install_options(p: argparse.ArgumentParser) -> None:
    a = p.add_argument
    a("--config", metavar="FILE.yaml", help="settings file (same keys as the options, e.g. esp_size: 512M)")
    a("--profile", help="built-in profile name or path to a YAML profile (default: debian)")
    a("--disk", dest="disks", action="append", metavar="DISK",
      help="a whole disk or a disk image file; repeat for each mirror member")
    a("--target", help="root of the system being installed (default: /)")
    a("--esp-size", help="size of each ESP partition (default: 512M)")
    a("--mountpoint", help="ESP mount point in the target (default: the profile's)")
    a("--label", help="FAT volume label (default: ESP)")
    a("--array-name", help="md array name: /dev/md/NAME (default: esp)")
    a("--metadata", help="md metadata version; only 1.0 is accepted")
    a("--bootloader", choices=[k.value for k in BootloaderKind], help="default: the profile's")
    a("--efi-image", metavar="PATH", help="EFI binary for --bootloader efi or zfsbootmenu")
    a("--loader-id", help="directory under \\EFI\\ (default: the profile's)")
    a("--entry-label", help="boot entry label prefix (default: the profile's)")
    a("--no-nvram", action="store_const", const=True, help="make no firmware boot entries")
    a("--initramfs", choices=[m.value for m in InitramfsMode], help="default: regenerate")
    a("--wipe", action="store_const", const=True, help="erase existing partition tables on the disks")
    a("--degraded", action="store_const", const=True, help="allow a one-disk mirror")


def request_from_args(args: argparse.Namespace) -> Request:
    values = load_config(args.config) if args.config else {}
    cli = {k: getattr(args, k) for k in ("profile", "disks", "target", "esp_size", "mountpoint", "label",
                                         "array_name", "metadata", "bootloader", "efi_image", "loader_id",
                                         "entry_label", "no_nvram", "initramfs", "wipe", "degraded")}
    values.update(coerce({k: v for k, v in cli.items() if v is not None}, "command line"))
    values.setdefault("disks", ())
    return Request(**values)


def render(groups: list[Group], ctx, out: TextIO) -> None:
    r = ctx.request
    print(f"# esp-mirror plan: profile {ctx.profile.name} ({ctx.profile.description})", file=out)
    print(f"# {len(r.disks)} disks -> RAID1 {r.device} (metadata 1.0, UUID {ctx.layout.array_uuid}), "
          f"FAT32 UUID={ctx.layout.fs_uuid} at {r.mountpoint} in target {r.target}", file=out)
    print(f"# bootloader {r.bootloader}, initramfs {r.initramfs}, boot entries: "
          f"{'yes' if ctx.layout.nvram else 'no'}", file=out)
    print(f"# digest {plan_digest(ctx, groups)} (apply --expect-plan takes it)", file=out)
    for group in groups:
        print(f"\n{group.render()}", end="", file=out)


def plan_json(groups: list[Group], ctx) -> dict:
    return {
        "profile": ctx.profile.name,
        "request": {k: (v if not isinstance(v, tuple) else list(v)) for k, v in asdict(ctx.request).items()},
        "array": {"device": ctx.request.device, "uuid": ctx.layout.array_uuid, "action": ctx.layout.array_action},
        "filesystem": {"uuid": ctx.layout.fs_uuid, "mkfs": ctx.layout.make_fs},
        "members": [{"disk": m.disk.given, "partition_guid": m.guid, "exists": m.exists}
                    for m in ctx.layout.members],
        "nvram": ctx.layout.nvram,
        "unverified": list(ctx.snapshot.unread),
        "digest": plan_digest(ctx, groups),
        "groups": [g.to_json() for g in groups],
    }


def main(argv: list[str] | None = None, out: TextIO | None = None, err: TextIO | None = None,
         runner=None, host_view=None, stdin: TextIO | None = None) -> int:
    out, err, stdin = out or sys.stdout, err or sys.stderr, stdin or sys.stdin
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    args.command_line = shlex.join(["esp-mirror", *argv])  # who holds the lock, for a second run
    try:
        return _run(args, out, stdin, runner, host_view)
    except BadInput as exc:
        print(f"esp-mirror: error: {exc}", file=err)
        return exc.exit_code
    except BrokenPipeError:  # `esp-mirror plan ... | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except StepFailed as exc:
        print(f"esp-mirror: error: [{exc.group}] step failed: {exc.step}\n{exc.detail}\n"
              f"Nothing after this step was done. {AFTER_FAILURE.get(args.command, AFTER_FAILURE['apply'])}",
              file=err)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"esp-mirror: interrupted. {AFTER_FAILURE.get(args.command, AFTER_FAILURE['apply'])}", file=err)
        return 130
    except Exception as exc:  # a bug: one line, the traceback only when asked for
        if args.debug:
            traceback.print_exc(file=err)
        print(f"esp-mirror: internal error: {type(exc).__name__}: {exc} (this is a bug; run again with "
              "--debug for the traceback and report it)", file=err)
        return 1


def _run(args: argparse.Namespace, out: TextIO, stdin: TextIO, runner, host_view) -> int:
    if args.command == "profiles":
        return _profiles(args.name, out)
    root = is_root()
    if args.command in UPKEEP:
        if not root:
            raise BadInput(f"{args.command} reads md and EFI state and must run as root: run it with sudo")
        return cli_upkeep.run(args, out, stdin, runner, host_view)
    if args.command == "plan":
        return _plan(args, out, runner, host_view, lenient=not root)
    if not root:
        raise BadInput("apply changes disks and must run as root: run it with sudo")
    with lock.held(args.command_line):
        ctx = prepare(request_from_args(args), runner=runner, host=host_view)
        groups = host.plan(ctx, host.get_plugin_manager())
        if args.expect_plan and args.expect_plan != plan_digest(ctx, groups):
            raise BadInput(f"the plan is no longer the one with digest {args.expect_plan} (now "
                           f"{plan_digest(ctx, groups)}): the disks, the boot entries or a file it edits "
                           "changed since; review a new `esp-mirror plan` and apply that")
        return _apply(groups, ctx, args.yes, out, stdin)


def _plan(args: argparse.Namespace, out: TextIO, runner, host_view, lenient: bool) -> int:
    ctx = prepare(request_from_args(args), runner=runner, host=host_view, lenient=lenient)
    groups = host.plan(ctx, host.get_plugin_manager())
    if args.json:
        json.dump(plan_json(groups, ctx), out, indent=2)
        print(file=out)
    else:
        render(groups, ctx, out)
    return 0


def _apply(groups, ctx, yes: bool, out: TextIO, stdin: TextIO) -> int:
    if not yes:
        if not stdin.isatty():
            raise BadInput("apply changes disks: pass --yes to confirm (there is no terminal to ask on)")
        render(groups, ctx, out)
        print("\nType 'yes' to carry out this plan: ", end="", file=out, flush=True)
        if stdin.readline().strip() != "yes":
            print("Nothing done.", file=out)
            return 2
    started = time.monotonic()
    print(f"esp-mirror apply: profile {ctx.profile.name}, {len(ctx.request.disks)} disks, "
          f"target {ctx.request.target}", file=out)
    applier = host.apply(groups, ctx, out)
    print(f"esp-mirror apply: done in {time.monotonic() - started:.1f} s: {applier.done} steps, "
          f"{applier.changed} changed; {ctx.request.device} mirrored on "
          f"{', '.join(d for d in ctx.request.disks)}, mounted at {ctx.layout.esp_dir}", file=out)
    return 0


def _profiles(name: str | None, out: TextIO) -> int:
    if name:
        prof = profiles.load_profile(name)
        print(f"# {prof.name}: {prof.source}", file=out)
        print(profiles.raw_profile_text(name), file=out)
        return 0
    for n in profiles.builtin_names():
        prof = profiles.load_profile(n)
        print(f"{n:10} {prof.description}", file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
