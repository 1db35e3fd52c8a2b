"""Executors: what a hook's planned steps turn into.

:class:`PlanRecorder` only collects them (``plan``, and the first half of ``apply``);
:class:`Applier` carries them out through the runner with timed progress lines. There is no
``if dry_run`` anywhere else: the choice of executor is the only difference.

:func:`would_change` is each step's "is it done already?": the Applier skips a step it says
False for (and counts it unchanged), and ``plan --json`` shows its answer for every step, so a
plan can say whether apply would change anything (what ``ansible --check`` asks).
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import singledispatchmethod
from pathlib import Path
from typing import Any, Protocol, TextIO

from esp_mirror_plugin.errors import StepFailed
from esp_mirror_plugin.pipeline import fat
from esp_mirror_plugin.pipeline.steps import (
    AddMember,
    AttachImage,
    Command,
    CopyFile,
    EditBlock,
    EnsureFat,
    Group,
    InstallProgram,
    LoadDebconf,
    MakeDir,
    RemoveBlock,
    Settle,
    Step,
    UuidLink,
    VerifyCopy,
    VerifyFat,
    WaitForPartition,
    WaitForSync,
    WriteFile,
    resolve_arg,
)
from esp_mirror_plugin.system import files
from esp_mirror_plugin.system.discovery import HostView, Unreadable, read_mounts
from esp_mirror_plugin.system.runner import CommandFailed, Runner

UDEV_CONTROL = "/run/udev/control"  # exists while udevd runs


class Undecidable(Exception):
    """A fact that "is it done already?" needs could not be read; the message names it and what to check."""


@dataclass(frozen=True)
class Now:
    """What a step's "is it done already?" looks at: md's sysfs through ``host``, device nodes
    through ``exists``, files in the target directly, and the values that steps of this run bound
    (``bindings``: none while planning, so a step that needs one is undecided)."""

    host: HostView
    exists: Callable[[str], bool]
    bindings: Mapping[str, str]


@functools.singledispatch
def would_change(step: Step, now: Now) -> bool | None:
    """Whether carrying ``step`` out now changes the machine; None when only running it can tell.

    The Applier asks this before a step that may be done already and skips it (unchanged) on
    False; programs it runs count as changes, and a udev settle never does. ``plan --json``
    shows the answer for every step against the machine as it is when planning: the first step
    that would change is exact (everything before it leaves the machine as it is); later ones
    are told from the machine before that change. None: the step decides with a probe of its own
    while it runs (``losetup --list``, ``fsck.fat -n``) or needs a value an earlier step of the
    same run binds (a loop device).

    :raises Undecidable: a fact it needs (md's sysfs, debconf's database) cannot be read.
    :raises OSError: a file in the target cannot be read.
    """
    raise TypeError(f"no decision for {type(step).__name__}")


@would_change.register
def _(step: Command | AddMember, now: Now) -> bool:
    return True  # what a program did is not known, so running it counts as a change


@would_change.register
def _(step: Settle, now: Now) -> bool:
    return False  # waiting for udev changes nothing


@would_change.register
def _(step: UuidLink, now: Now) -> bool | None:
    return None  # which link is told by blkid while apply runs


@would_change.register
def _(step: AttachImage | EnsureFat, now: Now) -> None:
    return None  # their own probe decides while they run


@would_change.register
def _(step: WriteFile, now: Now) -> bool:
    return files.differs(files.resolve_in_root(step.root, step.path), step.data)


@would_change.register
def _(step: InstallProgram, now: Now) -> bool:
    return files.differs(files.resolve_in_root(step.root, step.path), step.data)


@would_change.register
def _(step: CopyFile, now: Now) -> bool:
    return files.differs(files.resolve_in_root(step.root, step.dest), Path(step.source).read_bytes())


@would_change.register
def _(step: EditBlock, now: Now) -> bool:
    path = files.resolve_in_root(step.root, step.path)
    return files.differs(path, files.block_edited(path, step.block, step.retire))


@would_change.register
def _(step: RemoveBlock, now: Now) -> bool:
    path = files.resolve_in_root(step.root, step.path)
    if not path.exists():
        return False
    text = files.block_removed(path, step.keep, step.remove_empty)
    return text is None or files.differs(path, text)


@would_change.register
def _(step: VerifyCopy | VerifyFat, now: Now) -> bool:
    return False  # it only reads


@would_change.register
def _(step: MakeDir, now: Now) -> bool:
    return not files.resolve_in_root(step.root, step.path).is_dir()


@would_change.register
def _(step: WaitForPartition, now: Now) -> bool | None:
    try:
        node = resolve_arg(step.node, now.bindings)
    except KeyError:  # a loop device this run attaches
        return None
    return not now.exists(node)


@would_change.register
def _(step: LoadDebconf, now: Now) -> bool:
    try:
        with open(step.database, encoding="utf-8", errors="replace") as handle:
            values = files.debconf_values(handle.read())
    except FileNotFoundError:
        values = {}
    except OSError as exc:
        raise Undecidable(f"cannot read {step.database}: {exc.strerror}") from None
    return not all(values.get(question) == value for question, value in step.answers)


@would_change.register
def _(step: WaitForSync, now: Now) -> bool:
    return not md_sync(step, now.host).finished


@dataclass(frozen=True)
class MdSync:
    """What md says about an array's resync, recovery or check (its sysfs)."""

    action: str  # sync_action: idle, resync, recover, check, ...
    completed: str  # sync_completed: "123 / 456" sectors, or none
    array_state: str  # clean, active, read-auto, ...
    pending: tuple[str, ...]  # members not in sync yet (only when the step waits for a clean array)
    resync_start: str = "none"  # resync_start: "none", or the sector a resync md still owes starts at

    @property
    def idle(self) -> bool:
        return self.action == "idle"

    @property
    def resync_owed(self) -> bool:
        """md still owes a resync (after a cut, or one not started yet): sync_action reads "idle"
        meanwhile, on a read-auto array for as long as nothing writes to it."""
        return self.resync_start not in ("none", "")

    @property
    def finished(self) -> bool:
        return self.idle and not self.pending and not self.resync_owed


def md_sync(step: WaitForSync, host: HostView) -> MdSync:
    """The state of ``step``'s array. A slot nobody fills (a degraded mirror) is not pending.

    :raises Undecidable: md's sync state cannot be read (an unreadable state is never "idle").
    """
    md = f"/sys/block/{os.path.basename(host.realpath(step.device))}/md"
    try:
        action, completed = host.attr(f"{md}/sync_action"), host.attr(f"{md}/sync_completed")
    except Unreadable as exc:
        raise Undecidable(f"{exc}: is {step.device} still running?") from None
    states = {d[4:]: host.read(f"{md}/{d}/state") for d in host.listdir(md) if d.startswith("dev-")}
    pending = tuple(
        name
        for name, state in states.items()
        if step.clean and state is not None and not {"in_sync", "faulty"} & set(state.strip().split(","))
    )
    resync_start = (host.read(f"{md}/resync_start") or "none").strip()
    return MdSync(action, completed, (host.read(f"{md}/array_state") or "").strip(), pending, resync_start)


def forecast(groups: list[Group], now: Now) -> list[dict[str, Any]]:
    """The groups as ``--json`` shows them, each step with ``would_change`` (:func:`would_change`
    against the machine as it is; None also where a fact it needs cannot be read)."""
    out = []
    for group in groups:
        shown = group.to_json()
        for step, data in zip(group.steps, shown["steps"], strict=True):
            try:
                data["would_change"] = would_change(step, now)
            except (Undecidable, OSError):
                data["would_change"] = None
        out.append(shown)
    return out


def counts(shown: list[dict[str, Any]]) -> dict[str, int]:
    """How many steps of a :func:`forecast` would change something, and how many only running can tell."""
    decisions = [s["would_change"] for g in shown for s in g["steps"]]
    return {"would_change": decisions.count(True), "undecided": sum(d is None for d in decisions)}


class Executor(Protocol):
    def execute(self, group: Group) -> None:
        """Carry out (or record) one group of steps, in order."""
        ...


@dataclass
class PlanRecorder:
    groups: list[Group] = field(default_factory=list)

    def execute(self, group: Group) -> None:
        self.groups.append(group)


@dataclass
class Applier:
    """Runs steps for real. ``bindings`` holds values of :class:`~.steps.Var` set by earlier steps."""

    runner: Runner
    out: TextIO = sys.stdout
    exists: Callable[[str], bool] = os.path.exists
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    host: HostView = field(default_factory=HostView)
    bindings: dict[str, str] = field(default_factory=dict)
    done: int = 0
    changed: int = 0
    outcomes: list[tuple[str, Step, bool | None]] = field(default_factory=list)  # group, step, changed (None: a
    # cleanup step that was not needed or failed)

    @property
    def now(self) -> Now:
        """What :func:`would_change` looks at for this applier (the values its steps bound so far)."""
        return Now(self.host, self.exists, self.bindings)

    def execute(self, group: Group) -> None:
        for note in group.notes:
            print(f"  [{group.name}] note: {note}", file=self.out)
        for step in group.steps:
            started = time.monotonic()
            print(f"  [{group.name}] {step.describe().splitlines()[0]}", file=self.out, flush=True)
            try:
                changed = self._carry_out(step, group.name)
            except StepFailed as failure:
                if not getattr(step, "cleanup", False):
                    raise
                last = failure.detail.strip().splitlines()[-1]
                print(f"  [{group.name}]   not needed or failed (cleanup goes on): {last}", file=self.out)
                self.outcomes.append((group.name, step, None))
                continue
            except OSError as exc:
                raise StepFailed(group.name, step.describe().splitlines()[0], f"{exc}") from exc
            self.done += 1
            self.changed += bool(changed)
            self.outcomes.append((group.name, step, changed))
            state = "done" if changed else "unchanged"
            print(f"  [{group.name}]   {state} ({time.monotonic() - started:.1f} s)", file=self.out, flush=True)

    def _carry_out(self, step: Step, group: str) -> bool:
        try:
            return self._apply(step, group)
        except Undecidable as exc:
            raise StepFailed(group, step.describe().splitlines()[0], str(exc)) from None

    def _done_already(self, step: Step) -> bool:
        return would_change(step, self.now) is False

    @singledispatchmethod
    def _apply(self, step: Step, group: str) -> bool:
        raise TypeError(f"no way to apply {type(step).__name__}")

    @_apply.register
    def _(self, step: Command, group: str) -> bool:
        try:
            argv = tuple(resolve_arg(a, self.bindings) for a in step.argv)
        except KeyError as exc:  # a cleanup step whose setup step never ran
            raise StepFailed(group, step.describe(), str(exc.args[0])) from None
        try:
            result = self.runner.run(argv, root=step.root, env=dict(step.env), ok=step.ok_codes)
        except CommandFailed as exc:
            raise StepFailed(group, step.describe().splitlines()[0], exc.result.describe()) from None
        if step.binds:
            self.bindings[step.binds] = result.stdout.strip()
        return True

    @_apply.register
    def _(self, step: WriteFile, group: str) -> bool:
        if self._done_already(step):
            return False
        target = files.resolve_in_root(step.root, step.path)
        return files.write_atomic(target, step.data, step.mode, preserve=step.backup)

    @_apply.register
    def _(self, step: InstallProgram, group: str) -> bool:
        if self._done_already(step):
            return False
        return files.write_atomic(files.resolve_in_root(step.root, step.path), step.data, step.mode, preserve=False)

    @_apply.register
    def _(self, step: EditBlock, group: str) -> bool:
        if self._done_already(step):
            return False
        return files.edit_block(files.resolve_in_root(step.root, step.path), step.block, step.mode, step.retire)

    @_apply.register
    def _(self, step: RemoveBlock, group: str) -> bool:
        if self._done_already(step):
            return False
        return files.remove_block(files.resolve_in_root(step.root, step.path), step.keep, step.remove_empty)

    @_apply.register
    def _(self, step: VerifyFat, group: str) -> bool:
        try:
            fsck = self.runner.run(("fsck.fat", "-n", step.device), ok=(0, 1))
            problems = fat.fsck_problems(fsck.stdout + fsck.stderr) if fsck.returncode else []
        except CommandFailed as exc:  # it cannot even be checked
            problems = fat.fsck_problems(exc.result.stdout + exc.result.stderr) or [exc.stderr_line]
        if problems:
            raise StepFailed(
                group,
                step.describe(),
                f"the FAT on {step.device} is damaged ({problems[0].strip()}): repair it with "
                f"`fsck.fat -a {step.device}`, then run the same esp-mirror command again",
            )
        print(f"  [{group}]   fsck.fat -n found no damage on {step.device}", file=self.out)
        return False

    @_apply.register
    def _(self, step: VerifyCopy, group: str) -> bool:
        different = files.tree_differences(Path(step.source), Path(step.dest))
        if different:
            raise StepFailed(
                group,
                step.describe(),
                f"the copy is not whole: {'; '.join(different[:5])}"
                + (f" (and {len(different) - 5} more)" if len(different) > 5 else ""),
            )
        print(f"  [{group}]   every file of {step.source} is in {step.dest}, byte for byte", file=self.out)
        return False

    @_apply.register
    def _(self, step: CopyFile, group: str) -> bool:
        if self._done_already(step):
            return False
        return files.write_atomic(
            files.resolve_in_root(step.root, step.dest), Path(step.source).read_bytes(), step.mode, preserve=False
        )

    @_apply.register
    def _(self, step: MakeDir, group: str) -> bool:
        if self._done_already(step):
            return False
        files.resolve_in_root(step.root, step.path).mkdir(parents=True)
        return True

    @_apply.register
    def _(self, step: Settle, group: str) -> bool:
        if self.runner.which("udevadm") is None or not self.host.exists(UDEV_CONTROL):
            return False
        try:
            self.runner.run(("udevadm", "settle", f"--timeout={step.timeout}"))
        except CommandFailed as exc:  # a queue that does not drain: say so, the next step may still work
            print(f"  [{group}]   udev did not settle: {exc.stderr_line}", file=self.out)
        return False

    @_apply.register
    def _(self, step: UuidLink, group: str) -> bool:
        target = os.path.normpath(step.mountpoint)
        holding = [
            m
            for m in read_mounts(self.host)
            if target == m.mountpoint or target.startswith(m.mountpoint.rstrip("/") + "/")
        ]
        mount = max(holding, key=lambda m: len(m.mountpoint), default=None)  # what holds the target's root
        if mount is None or not mount.device.startswith("/dev/"):
            print(f"  [{group}]   {step.mountpoint} is on no block device: no link to make", file=self.out)
            return False
        device = self.host.realpath(mount.device)
        try:
            uuid = self.runner.run(("blkid", "-s", "UUID", "-o", "value", device), ok=(0, 2)).stdout.strip()
        except CommandFailed as exc:
            raise StepFailed(group, step.describe(), exc.result.describe()) from None
        if not uuid:
            print(f"  [{group}]   blkid finds no file system UUID on {device}: no link to make", file=self.out)
            return False
        made = files.ensure_link(self.host.at(f"/dev/disk/by-uuid/{uuid}"), self.host.at(device))
        if made:
            print(f"  [{group}]   /dev/disk/by-uuid/{uuid} -> {device} (udev does not run here)", file=self.out)
        return made

    @_apply.register
    def _(self, step: WaitForPartition, group: str) -> bool:
        node = resolve_arg(step.node, self.bindings)
        disk = resolve_arg(step.disk, self.bindings)
        if self._until(lambda: self._done_already(step), min(3.0, step.timeout)):
            return False
        try:  # exit 1: the kernel has it already (busy); the node check below decides
            self.runner.run(("partx", "--add", "--nr", str(step.number), disk), ok=(0, 1))
        except CommandFailed as exc:
            raise StepFailed(group, step.describe(), exc.result.describe()) from None
        if self._until(lambda: self._done_already(step), step.timeout):
            return True
        raise StepFailed(
            group,
            step.describe(),
            f"{node} did not appear within {step.timeout:g} s, even after partx --add; check `lsblk {disk}` and dmesg",
        )

    def _until(self, done: Callable[[], bool], seconds: float) -> bool:
        """Whether ``done()`` came true within ``seconds`` (it is asked every 0.1 s)."""
        deadline = self.clock() + seconds
        while True:
            if done():
                return True
            if self.clock() >= deadline:
                return False
            self.sleep(0.1)

    @_apply.register
    def _(self, step: AttachImage, group: str) -> bool:
        try:
            attached = self.runner.run(
                ("losetup", "--list", "--noheadings", "--output", "NAME", "--associated", step.image)
            ).stdout.split()
            if attached:  # an interrupted run attached it: the array may be running on it
                self.bindings[step.binds] = attached[0]
                return False
            found = self.runner.run(("losetup", "--find", "--show", "--partscan", step.image))
        except CommandFailed as exc:
            raise StepFailed(group, step.describe(), exc.result.describe()) from None
        self.bindings[step.binds] = found.stdout.strip()
        return True

    @_apply.register
    def _(self, step: EnsureFat, group: str) -> bool:
        try:
            fsck = self.runner.run(("fsck.fat", "-n", step.device), ok=(0, 1))
            problems = fat.fsck_problems(fsck.stdout + fsck.stderr) if fsck.returncode else []
        except CommandFailed as exc:  # it cannot even be checked: not a FAT anyone reads
            problems = fat.fsck_problems(exc.result.stdout + exc.result.stderr) or [exc.stderr_line]
        if not problems:
            return False
        listing = self.runner.run(("mdir", "-/", "-b", "-i", step.device, "::/"), ok=(0, 1))
        names = listing.stdout.split() if listing.returncode == 0 else []
        if names:
            raise StepFailed(
                group,
                step.describe(),
                f"the FAT on {step.device} is damaged ({problems[0].strip()}) and holds {len(names)} files or "
                f"directories, so it is not made again: repair it with `fsck.fat -a {step.device}` (or copy "
                "the files off and remove its FAT with `wipefs --all " + step.device + "`), then run the same "
                "esp-mirror command again",
            )
        print(f"  [{group}]   a half-made FAT ({problems[0].strip()}) and no files: made again", file=self.out)
        return self._apply(step.make, group)

    @_apply.register
    def _(self, step: LoadDebconf, group: str) -> bool:
        if self._done_already(step):
            return False
        return self._apply(step.load, group)

    @_apply.register
    def _(self, step: AddMember, group: str) -> bool:
        try:
            self.runner.run(("mdadm", step.device, "--re-add", step.node))
            return True
        except CommandFailed as exc:
            print(f"  [{group}]   no re-add ({exc.stderr_line}): a full --add", file=self.out, flush=True)
        try:
            self.runner.run(("mdadm", step.device, "--add", step.node))
        except CommandFailed as exc:
            raise StepFailed(group, step.describe(), exc.result.describe()) from None
        return True

    @_apply.register
    def _(self, step: WaitForSync, group: str) -> bool:
        last_report, started, woken_at = 0.0, self.clock(), None
        if self._done_already(step):
            return False
        while True:
            sync = md_sync(step, self.host)
            if sync.finished:
                return True
            if sync.array_state == "read-auto" and (woken_at is None or self.clock() - woken_at >= 5):
                # assembled and not written since: md keeps its resync or recovery pending for good;
                # asked again every 5 s while it stays so (exit 1: writable already, md was quicker)
                woken = f"  [{group}]   {step.device} is read-auto: mdadm --readwrite starts md's work"
                print(woken, file=self.out, flush=True)
                try:
                    self.runner.run(("mdadm", "--readwrite", step.device), ok=(0, 1))
                except CommandFailed as exc:
                    raise StepFailed(group, step.describe(), exc.result.describe()) from None
                woken_at = self.clock()
                continue  # what md does now
            if sync.idle and self.clock() - started > 30:
                raise StepFailed(group, step.describe(), _not_starting(step.device, sync))
            if self.clock() - last_report >= 2:
                start = "the recovery" if step.clean else step.what
                state = f"waiting for md to start {start}" if sync.idle else f"{sync.action} {_percent(sync.completed)}"
                print(f"  [{group}]   {state}", file=self.out, flush=True)
                last_report = self.clock()
            self.sleep(0.5)


def _not_starting(device: str, sync: MdSync) -> str:
    """Why a wait gave up: md was idle for 30 s with work still owed."""
    if sync.pending:
        return (
            f"{', '.join(sync.pending)} still not in sync and no recovery runs: see /proc/mdstat and `mdadm --detail`"
        )
    return (
        f"md owes {device} a resync (from sector {sync.resync_start}) and does not start it "
        f"(array state {sync.array_state or 'unknown'}): see /proc/mdstat; "
        f"`mdadm --readwrite {device}` starts it on a read-auto array"
    )


def _percent(completed: str) -> str:
    """ "123 / 456" sectors as a percentage, for progress lines."""
    done, _, total = completed.partition("/")
    try:
        return f"{100 * int(done) / int(total):.0f}% ({completed.strip()} sectors)"
    except ValueError:
        return completed
