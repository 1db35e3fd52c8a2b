"""Executors: what a hook's planned steps turn into.

:class:`PlanRecorder` only collects them (``plan``, and the first half of ``apply``);
:class:`Applier` carries them out through the runner with timed progress lines. There is no
``if dry_run`` anywhere else: the choice of executor is the only difference.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import singledispatchmethod
from pathlib import Path
from typing import Protocol, TextIO

from esp_mirror_plugin.errors import StepFailed
from esp_mirror_plugin.hooks import fat
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
    Settle,
    Step,
    WaitForPartition,
    WaitForSync,
    WriteFile,
    resolve_arg,
)
from esp_mirror_plugin.system import files
from esp_mirror_plugin.system.discovery import HostView, Unreadable
from esp_mirror_plugin.system.runner import CommandFailed, Runner

UDEV_CONTROL = "/run/udev/control"  # exists while udevd runs


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

    def execute(self, group: Group) -> None:
        for note in group.notes:
            print(f"  [{group.name}] note: {note}", file=self.out)
        for step in group.steps:
            started = time.monotonic()
            print(f"  [{group.name}] {step.describe().splitlines()[0]}", file=self.out, flush=True)
            try:
                changed = self._apply(step, group.name)
            except StepFailed as failure:
                if not getattr(step, "cleanup", False):
                    raise
                last = failure.detail.strip().splitlines()[-1]
                print(f"  [{group.name}]   not needed or failed (cleanup goes on): {last}", file=self.out)
                continue
            except OSError as exc:
                raise StepFailed(group.name, step.describe().splitlines()[0], f"{exc}") from exc
            self.done += 1
            self.changed += bool(changed)
            state = "done" if changed else "unchanged"
            print(f"  [{group.name}]   {state} ({time.monotonic() - started:.1f} s)", file=self.out, flush=True)

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
        return files.write_atomic(files.resolve_in_root(step.root, step.path), step.content, step.mode)

    @_apply.register
    def _(self, step: InstallProgram, group: str) -> bool:
        return files.write_atomic(files.resolve_in_root(step.root, step.path), step.data, step.mode, preserve=False)

    @_apply.register
    def _(self, step: EditBlock, group: str) -> bool:
        return files.edit_block(files.resolve_in_root(step.root, step.path), step.block, step.mode)

    @_apply.register
    def _(self, step: CopyFile, group: str) -> bool:
        return files.write_atomic(
            files.resolve_in_root(step.root, step.dest), Path(step.source).read_bytes(), step.mode, preserve=False
        )

    @_apply.register
    def _(self, step: MakeDir, group: str) -> bool:
        path = files.resolve_in_root(step.root, step.path)
        if path.is_dir():
            return False
        path.mkdir(parents=True)
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
    def _(self, step: WaitForPartition, group: str) -> bool:
        node = resolve_arg(step.node, self.bindings)
        disk = resolve_arg(step.disk, self.bindings)
        if self._wait(node, min(3.0, step.timeout)):
            return False
        try:  # exit 1: the kernel has it already (busy); the node check below decides
            self.runner.run(("partx", "--add", "--nr", str(step.number), disk), ok=(0, 1))
        except CommandFailed as exc:
            raise StepFailed(group, step.describe(), exc.result.describe()) from None
        if self._wait(node, step.timeout):
            return True
        raise StepFailed(
            group,
            step.describe(),
            f"{node} did not appear within {step.timeout:g} s, even after partx --add; check `lsblk {disk}` and dmesg",
        )

    def _wait(self, node: str, seconds: float) -> bool:
        deadline = self.clock() + seconds
        while True:
            if self.exists(node):
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
        try:
            with open(step.database, encoding="utf-8", errors="replace") as handle:
                values = files.debconf_values(handle.read())
        except FileNotFoundError:
            values = {}
        except OSError as exc:
            raise StepFailed(group, step.describe(), f"cannot read {step.database}: {exc.strerror}") from None
        if all(values.get(question) == value for question, value in step.answers):
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
        md = f"/sys/block/{os.path.basename(self.host.realpath(step.device))}/md"
        last_report, started, woken = 0.0, self.clock(), False
        while True:
            try:  # what md is doing must be known: an unreadable state is not "idle"
                action, completed = self.host.attr(f"{md}/sync_action"), self.host.attr(f"{md}/sync_completed")
            except Unreadable as exc:
                raise StepFailed(group, step.describe(), f"{exc}: is {step.device} still running?") from None
            idle = action == "idle"
            states = {d[4:]: self.host.read(f"{md}/{d}/state") for d in self.host.listdir(md) if d.startswith("dev-")}
            pending = [
                name
                for name, state in states.items()
                if step.clean and state is not None and not {"in_sync", "faulty"} & set(state.strip().split(","))
            ]
            if idle and not pending:
                return True
            if not woken and (self.host.read(f"{md}/array_state") or "").strip() == "read-auto":
                # assembled and not written since: md keeps its resync or recovery pending for good
                print(f"  [{group}]   {step.device} is read-auto: mdadm --readwrite starts md's work", file=self.out)
                try:
                    self.runner.run(("mdadm", "--readwrite", step.device))
                except CommandFailed as exc:
                    raise StepFailed(group, step.describe(), exc.result.describe()) from None
                woken = True
            if idle and self.clock() - started > 30:
                raise StepFailed(
                    group,
                    step.describe(),
                    f"{', '.join(pending)} still not in sync and no "
                    "recovery runs: see /proc/mdstat and `mdadm --detail`",
                )
            if self.clock() - last_report >= 2:
                state = "waiting for md to start the recovery" if idle else f"{action} {_percent(completed)}"
                print(f"  [{group}]   {state}", file=self.out, flush=True)
                last_report = self.clock()
            self.sleep(0.5)


def _percent(completed: str) -> str:
    """ "123 / 456" sectors as a percentage, for progress lines."""
    done, _, total = completed.partition("/")
    try:
        return f"{100 * int(done) / int(total):.0f}% ({completed.strip()} sectors)"
    except ValueError:
        return completed
