"""What a plan is made of: frozen step objects that ``plan`` prints and ``apply`` executes.

A step never runs itself: :mod:`esp_mirror_plugin.pipeline.execute` gives each kind its meaning. Printing
and running read the same object, so a plan cannot differ from what apply does.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from esp_mirror_plugin.system.runner import full_argv


@dataclass(frozen=True)
class Var:
    """A value known only while apply runs (a loop device name), printed as a shell variable.

    ``suffix`` is appended to the value: ``Var("LOOP_A", "p1")`` is the first partition node.
    """

    name: str
    suffix: str = ""

    def render(self) -> str:
        return f'"${{{self.name}}}{self.suffix}"'

    def __truediv__(self, suffix: str) -> Var:
        return Var(self.name, self.suffix + suffix)


Arg = str | Var


def render_arg(arg: Arg) -> str:
    return arg.render() if isinstance(arg, Var) else shlex.quote(arg)


def resolve_arg(arg: Arg, bindings: Mapping[str, str]) -> str:
    if isinstance(arg, Var):
        if arg.name not in bindings:
            raise KeyError(f"${arg.name} is used before the step that sets it ran")
        return bindings[arg.name] + arg.suffix
    return arg


@dataclass(frozen=True)
class Command:
    """Run a program. ``root`` is the target for in-target commands (chroot unless it is ``/``).

    ``binds`` stores the command's stripped stdout under that name for later :class:`Var` use.
    ``cleanup`` steps run even after a failure, and their own failure is only a warning.
    """

    argv: tuple[Arg, ...]
    why: str
    root: str = "/"
    env: tuple[tuple[str, str], ...] = ()
    ok_codes: tuple[int, ...] = (0,)
    binds: str | None = None
    cleanup: bool = False

    def describe(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env)
        line = " ".join(render_arg(a) for a in full_argv(self.argv, self.root))
        line = f"{env} {line}" if env else line
        return f"{line}" + (f"   # -> ${self.binds}" if self.binds else "")

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "command",
            "argv": [a if isinstance(a, str) else a.render() for a in full_argv(self.argv, self.root)],
            "env": dict(self.env),
            "why": self.why,
            **({"binds": self.binds} if self.binds else {}),
        }


@dataclass(frozen=True)
class WriteFile:
    """Write a whole file that esp-mirror owns (a drop-in). Unchanged content means no write.

    ``path`` is where it lands on this machine; it is resolved inside ``root`` (the target) as a
    chroot would, so a symlink in the target never leads onto the host. This holds for every
    file step.
    """

    path: str
    content: str
    why: str
    mode: int = 0o644
    root: str = "/"
    encoding: str = "utf-8"  # utf-16-le for what EFI programs read (shim's fallback reads BOOTX64.CSV so)
    backup: bool = True  # keep the previous content as PATH~ (not on the ESP: FAT keeps no owners, and the
    # firmware and EFI programs see every file there)

    @property
    def data(self) -> bytes:
        """The bytes written."""
        return self.content.encode(self.encoding)

    def describe(self) -> str:
        coded = "" if self.encoding == "utf-8" else f", {self.encoding.upper()}"
        return f"write {self.path} (mode {self.mode:04o}{coded}):\n" + _indent(self.content)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "write-file",
            "path": self.path,
            "mode": f"{self.mode:04o}",
            "content": self.content,
            **({"encoding": self.encoding} if self.encoding != "utf-8" else {}),
            "why": self.why,
        }


@dataclass(frozen=True)
class InstallProgram:
    """Write a program esp-mirror owns (its zip application), whole, with ``mode``. The plan
    shows what it is, its size and sha256; unchanged content means no write."""

    path: str
    data: bytes = field(repr=False)
    summary: str
    why: str
    mode: int = 0o755
    root: str = "/"

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def describe(self) -> str:
        size = f"{len(self.data)} bytes, sha256 {self.sha256}"
        return f"install {self.path} (mode {self.mode:04o}): {self.summary}; {size}"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "install-program",
            "path": self.path,
            "mode": f"{self.mode:04o}",
            "summary": self.summary,
            "size": len(self.data),
            "sha256": self.sha256,
            "why": self.why,
        }


@dataclass(frozen=True)
class EditBlock:
    """Own one marked block inside a file someone else owns; the rest of the file is untouched.

    The block is replaced in place when present, appended otherwise; the file is created with
    ``mode`` when missing. ``retire`` names lines of the file (outside the block, compared without
    their surrounding blanks) that the block takes over: they are commented out in the same write
    (an adoption's old fstab line for the ESP), so the file never holds both or neither.
    """

    path: str
    block: str
    why: str
    mode: int = 0o644
    root: str = "/"
    retire: tuple[str, ...] = ()

    def describe(self) -> str:
        retired = "".join(f"\n  and comment out: {line}" for line in self.retire)
        return f"edit {self.path}: managed block{retired}\n" + _indent(self.block)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "edit-block",
            "path": self.path,
            "block": self.block,
            **({"retire": list(self.retire)} if self.retire else {}),
            "why": self.why,
        }


@dataclass(frozen=True)
class RemoveBlock:
    """Give back a file in which esp-mirror owned a marked block (:class:`EditBlock`): the block
    and its markers go, and ``keep`` (plain lines, which are then the file's own, no longer
    esp-mirror's) takes its place in the same write; the rest of the file is untouched. With
    ``remove_empty`` a file left with nothing but blank lines is removed (a file esp-mirror
    created, whose absence means something: kernel-install reads /usr/lib's install.conf only
    when /etc has none). A file without the block is left as it is."""

    path: str
    why: str
    keep: str = ""
    root: str = "/"
    remove_empty: bool = False

    def describe(self) -> str:
        kept = "; in its place:\n" + _indent(self.keep) if self.keep else ""
        gone = " (the file goes when nothing else is left in it)" if self.remove_empty else ""
        return f"edit {self.path}: remove the managed block{gone}{kept}"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "remove-block",
            "path": self.path,
            "keep": self.keep,
            "remove_empty": self.remove_empty,
            "why": self.why,
        }


@dataclass(frozen=True)
class CopyFile:
    """Copy a file (the bootloader payload). Identical content at ``dest`` means no write."""

    source: str
    dest: str
    why: str
    root: str = "/"
    mode: int = 0o644

    def describe(self) -> str:
        return f"copy {self.source} -> {self.dest}"

    def to_json(self) -> dict[str, Any]:
        return {"kind": "copy-file", "source": self.source, "dest": self.dest, "why": self.why}


@dataclass(frozen=True)
class VerifyCopy:
    """Check that ``dest`` (a directory, or a tar archive of ``source``) holds what ``source``
    holds: the same directories and files, every file with the same sha256. Changes nothing; a
    difference stops the run before anything relies on the copy."""

    source: str
    dest: str
    why: str

    def describe(self) -> str:
        where = f"the archive {self.dest}" if self.dest.endswith(".tar") else self.dest
        return f"verify: every directory and file of {self.source} is in {where}, each file with the same sha256"

    def to_json(self) -> dict[str, Any]:
        return {"kind": "verify-copy", "source": self.source, "dest": self.dest, "why": self.why}


@dataclass(frozen=True)
class MakeDir:
    path: str
    why: str
    root: str = "/"

    def describe(self) -> str:
        return f"mkdir -p {shlex.quote(self.path)}"

    def to_json(self) -> dict[str, Any]:
        return {"kind": "mkdir", "path": self.path, "why": self.why}


@dataclass(frozen=True)
class WaitForPartition:
    """Wait until the kernel shows partition ``number`` of ``disk`` as ``node``.

    If it has not appeared after a short wait, ask the kernel with ``partx --add`` (loop devices
    and hosts without udev often need that), then wait again up to ``timeout`` seconds.
    """

    disk: Arg
    number: int
    node: Arg
    why: str
    timeout: float = 15.0

    def describe(self) -> str:
        return (
            f"wait for {render_arg(self.node)} (partx --add --nr {self.number} "
            f"{render_arg(self.disk)} if the kernel has not seen it; at most {self.timeout:g} s)"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "wait-for-partition",
            "disk": render_arg(self.disk),
            "number": self.number,
            "node": render_arg(self.node),
            "timeout": self.timeout,
            "why": self.why,
        }


@dataclass(frozen=True)
class EnsureFat:
    """Check the FAT on ``device`` (``fsck.fat -n``, read-only). When it is damaged and holds no
    files, run ``make`` (mkfs); when it holds files, stop and say how to repair it."""

    device: str
    make: Command
    why: str

    def describe(self) -> str:
        return (
            f"fsck.fat -n {shlex.quote(self.device)}; when it finds damage and the FAT holds no files: "
            + self.make.describe()
        )

    def to_json(self) -> dict[str, Any]:
        return {"kind": "ensure-fat", "device": self.device, "make": self.make.to_json(), "why": self.why}


@dataclass(frozen=True)
class VerifyFat:
    """Check the FAT on ``device`` (``fsck.fat -n``, read-only) and stop the run when it is
    damaged: what comes after relies on it (a released member that must boot on its own).
    Changes nothing."""

    device: str
    why: str

    def describe(self) -> str:
        return f"fsck.fat -n {shlex.quote(self.device)}   (stop when it finds damage)"

    def to_json(self) -> dict[str, Any]:
        return {"kind": "verify-fat", "device": self.device, "why": self.why}


@dataclass(frozen=True)
class LoadDebconf:
    """Run ``load`` (debconf-set-selections) unless the debconf database ``database`` (a host path
    to the target's config.dat) already holds every ``answers`` (question, value): the load takes
    seconds of perl, and a re-run of apply must not pay it again for nothing."""

    load: Command
    answers: tuple[tuple[str, str], ...]
    database: str
    why: str

    def describe(self) -> str:
        return f"{self.load.describe()}   (unless {self.database} holds these answers already)"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "load-debconf",
            "load": self.load.to_json(),
            "answers": dict(self.answers),
            "database": self.database,
            "why": self.why,
        }


@dataclass(frozen=True)
class AttachImage:
    """The loop device of ``image``: the one already attached to it (a run that was interrupted
    left it), else a new one (``losetup --find --show --partscan``). Its name goes into ``binds``."""

    image: str
    binds: str
    why: str

    def describe(self) -> str:
        image = shlex.quote(self.image)
        return f"losetup --list --associated {image} || losetup --find --show --partscan {image}   # -> ${self.binds}"

    def to_json(self) -> dict[str, Any]:
        return {"kind": "attach-image", "image": self.image, "binds": self.binds, "why": self.why}


@dataclass(frozen=True)
class AddMember:
    """Put ``node`` back into ``device``: ``--re-add`` (md copies only what changed when it has a
    write-intent bitmap), and when md refuses that, ``--add`` (a full recovery)."""

    device: str
    node: str
    why: str

    def describe(self) -> str:
        device, node = shlex.quote(self.device), shlex.quote(self.node)
        return f"mdadm {device} --re-add {node} || mdadm {device} --add {node}"

    def to_json(self) -> dict[str, Any]:
        return {"kind": "add-member", "device": self.device, "node": self.node, "why": self.why}


@dataclass(frozen=True)
class WaitForSync:
    """Wait, showing progress, until the array's resync/recovery/check has finished and no resync
    is pending (md's resync_start is "none"). An array that is read-auto (assembled and not
    written since) is made writable first (``mdadm --readwrite``): md keeps its work pending
    until then, and ``mdadm --wait`` would wait for it for ever.

    ``clean`` also waits until every member in the array is in sync (a member just added is a
    spare until md starts its recovery). A slot nobody fills (a degraded mirror) does not count.
    ``work`` names what is waited for in the plan (default: recovery when ``clean``, else its check).
    """

    device: str
    why: str
    clean: bool = False
    work: str = ""

    @property
    def what(self) -> str:
        return self.work or ("recovery" if self.clean else "its check")

    def describe(self) -> str:
        return f"wait for {self.device} to finish {self.what} (progress shown; mdadm --readwrite if read-auto)"

    def to_json(self) -> dict[str, Any]:
        return {"kind": "wait-for-sync", "device": self.device, "clean": self.clean, "work": self.what, "why": self.why}


@dataclass(frozen=True)
class Settle:
    """Wait until udev has handled the events of the steps before (new partitions, a new array),
    so its links and rules have run before anything uses the devices. Nothing to wait for where
    udev does not run (an installer's chroot without udev, a CI guest)."""

    why: str
    timeout: int = 30

    def describe(self) -> str:
        return f"udevadm settle --timeout={self.timeout} (where udev runs)"

    def to_json(self) -> dict[str, Any]:
        return {"kind": "settle", "timeout": self.timeout, "why": self.why}


@dataclass(frozen=True)
class UuidLink:
    """The ``/dev/disk/by-uuid`` link udev makes for the file system mounted at ``mountpoint``,
    made where udev does not run (an installer's environment, a chroot): grub-mkconfig names the
    root by ``root=UUID=`` only when that link exists, else by its md device number, which the
    installed system may give to another array. Nothing to do where the link is there."""

    mountpoint: str
    why: str

    def describe(self) -> str:
        return (
            f"ln -s DEVICE /dev/disk/by-uuid/UUID for the file system mounted at {shlex.quote(self.mountpoint)} "
            "(blkid gives UUID), unless udev made it"
        )

    def to_json(self) -> dict[str, Any]:
        return {"kind": "uuid-link", "mountpoint": self.mountpoint, "why": self.why}


Step = (
    Command
    | WriteFile
    | InstallProgram
    | EditBlock
    | RemoveBlock
    | CopyFile
    | VerifyCopy
    | MakeDir
    | WaitForPartition
    | EnsureFat
    | VerifyFat
    | LoadDebconf
    | AttachImage
    | AddMember
    | WaitForSync
    | Settle
    | UuidLink
)


@dataclass(frozen=True)
class Group:
    """The steps one hook (or the setup/cleanup around the hooks) planned, in order."""

    name: str
    steps: tuple[Step, ...] = ()
    notes: tuple[str, ...] = field(default=())

    def render(self) -> str:
        """The group as plan text: a header, its notes, each step's reason and command/file."""
        lines = [f"# == {self.name} =="] + [f"# note: {note}" for note in self.notes]
        for step in self.steps:
            lines += [f"# {step.why}", step.describe()]
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "notes": list(self.notes), "steps": [s.to_json() for s in self.steps]}


def _indent(text: str) -> str:
    return "".join(f"    | {line}\n" for line in text.rstrip("\n").split("\n"))
