"""Everything a planned step would trip on, checked before any step runs.

``plan`` runs these checks on every group it records, and an installer's hook runs them on its
group before the first of its steps: a program that is not installed, a unit that does not
exist, a marked block that is broken, a file that is not text, a path that is a directory. So a
refusal comes before anything changed, never half way through an apply.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from esp_mirror_plugin.errors import BadInput
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
    Step,
    VerifyFat,
    WaitForPartition,
    WriteFile,
)
from esp_mirror_plugin.system import files
from esp_mirror_plugin.system.runner import Runner
from esp_mirror_plugin.system.target import Target, read_text


@dataclass
class Preflight:
    """Checks groups of steps in order, remembering what earlier steps will write."""

    runner: Runner
    hint: Callable[[str], str]  # the fix for a missing program: "install it with `apt-get install --yes mdadm`"
    written: set[str] = field(default_factory=set)  # host paths earlier steps write

    def check(self, group: Group) -> None:
        """:raises BadInput: at the first step that could not run as planned."""
        for step in group.steps:
            self._check(step)

    def _check(self, step: Step) -> None:
        if isinstance(step, Command):
            self._command(step)
        elif isinstance(step, WaitForPartition):
            self._program("partx", "/")
        elif isinstance(step, AddMember):
            self._program("mdadm", "/")
        elif isinstance(step, AttachImage):
            self._program("losetup", "/")
        elif isinstance(step, EnsureFat):
            for program in ("fsck.fat", "mdir"):
                self._program(program, "/")
            self._command(step.make)
        elif isinstance(step, VerifyFat):
            self._program("fsck.fat", "/")
        elif isinstance(step, RemoveBlock):
            path = self._resolved(step.root, step.path)
            try:
                files.split_block(read_text(path, step.path))
            except ValueError as exc:
                raise BadInput(f"{step.path} {exc}") from None
        elif isinstance(step, LoadDebconf):
            self._command(step.load)
        elif isinstance(step, EditBlock):
            path = self._resolved(step.root, step.path)
            text = read_text(path, step.path)
            try:
                files.split_block(text)
            except ValueError as exc:
                raise BadInput(f"{step.path} {exc}") from None
            self.written.add(str(path))
        elif isinstance(step, WriteFile | CopyFile | InstallProgram):
            dest = step.dest if isinstance(step, CopyFile) else step.path
            path = self._resolved(step.root, dest)
            if path.is_dir():
                raise BadInput(f"{dest} is a directory: move it away; esp-mirror writes a file there")
            self._parents_are_dirs(path, dest)
            if isinstance(step, CopyFile) and os.path.isdir(step.source):
                raise BadInput(f"{step.source} is a directory, not a file: give the file to install")
            if isinstance(step, CopyFile) and not (os.path.isfile(step.source) and os.access(step.source, os.R_OK)):
                raise BadInput(f"{step.source} is not a readable file: pass the path of the file to install")
            self.written.add(str(path))
        elif isinstance(step, MakeDir):
            path = self._resolved(step.root, step.path)
            if path.exists() and not path.is_dir():
                raise BadInput(f"{step.path} exists and is not a directory: move it away")
            self._parents_are_dirs(path, step.path)

    @staticmethod
    def _resolved(root: str, path: str) -> Path:
        return Target(root).resolve(path)

    @staticmethod
    def _parents_are_dirs(path: Path, shown: str) -> None:
        for parent in path.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise BadInput(f"{parent} is not a directory, so {shown} cannot be written: move it away")
                return

    def _program(self, program: str, root: str) -> None:
        if self.runner.which(program, root) is None:
            where = "" if os.path.normpath(root) == "/" else f" in the target {root}"
            raise BadInput(f"{program} is not installed{where}: {self.hint(program)}")

    def _command(self, step: Command) -> None:
        program = step.argv[0]
        if not isinstance(program, str):
            return
        self._program(program, step.root)
        args = [a for a in step.argv[1:] if isinstance(a, str)]
        target = Target(step.root)
        if program == "systemctl" and args[:1] == ["enable"]:
            for unit in (a for a in args[1:] if not a.startswith("-")):
                if not target.has_unit(unit) and not any(
                    str(target.resolve(f"{d}/{unit}")) in self.written for d in ("etc/systemd/system",)
                ):
                    raise BadInput(
                        f"the unit {unit} is not installed in the target {step.root}, so "
                        f"`systemctl enable {unit}` would fail after the disks were changed: install "
                        "the package that ships it, or use a profile without it"
                    )
        elif (
            program == "rc-update"
            and args[:1] == ["add"]
            and len(args) > 1
            and not target.exists(f"etc/init.d/{args[1]}")
        ):
            raise BadInput(
                f"the OpenRC service {args[1]} is not installed in the target {step.root} "
                f"(no /etc/init.d/{args[1]}), so `rc-update add {args[1]}` would fail: "
                "install the package that ships it first"
            )
