"""The loader files the firmware starts, read from EACH member, and their signatures.

md keeps the members equal only for what is written through the array. A firmware update, an EFI
tool or a package installed while a disk was out can leave one member with an unsigned or
differently signed loader: with Secure Boot on, that disk alone no longer boots, and nothing else
shows it until the day it is the only disk left. So status (read straight from each member with
``mcopy``, read-only, as the firmware sees it) and check (from its copies of the members) look at
the chain: the entry's loader, shim's second stage, the removable fallback path, and for check
shim's helpers (MokManager, fallback) where any member has them.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from esp_mirror_plugin.pipeline.bootloaders import SIGN_IMAGE, signed_packages
from esp_mirror_plugin.pipeline.kinds import BootloaderKind
from esp_mirror_plugin.system import pe
from esp_mirror_plugin.system.pe import Signature
from esp_mirror_plugin.system.runner import CommandFailed, Runner
from esp_mirror_plugin.upkeep.compare import MTOOLS_ENV


@dataclass(frozen=True)
class LoaderFile:
    """One file of the chain on one member."""

    path: str  # as an EFI path: \EFI\debian\shimx64.efi
    signature: Signature | None  # None: not on this member (or unreadable, below)
    unreadable: str = ""  # why the member could not be read; "" when it was

    def describe(self) -> str:
        if self.unreadable:
            return f"cannot be read ({self.unreadable})"
        return "missing" if self.signature is None else self.signature.describe()

    @property
    def boots_under_secure_boot(self) -> bool:
        """Carries a signature the firmware can check (whether a key it holds trusts it, it tells)."""
        return self.signature is not None and self.signature.signed

    def key(self) -> tuple[str, ...] | None:
        """What two members must share for their copies to count as signed alike; None: unknown."""
        if self.unreadable:
            return None
        s = self.signature
        return ("missing",) if s is None else ("not-pe",) if not s.pe else ("signed", s.digest) if s.signed else ("-",)

    def to_json(self) -> dict[str, Any]:
        s = self.signature
        return {
            "path": self.path,
            "present": s is not None,
            "pe": s.pe if s else None,
            "signed": s.signed if s else None,
            "signers": list(s.signers) if s else [],
            "digest": s.digest if s else "",
            "unreadable": self.unreadable or None,
        }


@dataclass(frozen=True)
class MemberLoaders:
    """The chain's files as one member holds them."""

    node: str  # /dev/vda1
    disk: str  # /dev/vda, what `repair --source` takes
    files: tuple[LoaderFile, ...]

    def file(self, path: str) -> LoaderFile | None:
        return next((f for f in self.files if f.path.lower() == path.lower()), None)


@dataclass(frozen=True)
class SignatureDifference:
    """A file of the chain that members hold signed differently (or that some lack)."""

    path: str
    versions: tuple[tuple[str, LoaderFile], ...]  # (member node, its copy)
    right: str | None  # the disk to repair from when one can tell (the only signed version); else None

    def members_line(self) -> str:
        return ", ".join(f"{node} {f.describe()}" for node, f in self.versions)

    def problem(self) -> str:
        source = self.right or "DISK"
        hint = "" if self.right else " (the disk whose copy is right)"
        return (
            f"{self.path} is not signed alike on the members ({self.members_line()}): the disks do not boot alike; "
            f"run `esp-mirror check`, then `esp-mirror repair --source {source}`{hint}"
        )

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "members": {node: f.to_json() for node, f in self.versions}, "right": self.right}


def efi_suffix(loader: str) -> str:
    """x64 or aa64, from the loader's name (shimaa64.efi, grubaa64.efi, systemd-bootaa64.efi);
    x64 when the name does not say (an image given by path)."""
    return "aa64" if loader.lower().endswith("aa64.efi") else "x64"


def _directory(loader: str) -> str:
    return loader.rsplit("\\", 1)[0]


def fallback(loader: str) -> str:
    """The removable-media path every member also carries (apply puts a copy there)."""
    return f"\\EFI\\BOOT\\BOOT{efi_suffix(loader).upper()}.EFI"


def chain(loader: str, args: str = "") -> tuple[str, ...]:
    """The files a boot from a member starts: the entry's loader, shim's second stage when the
    loader is shim (the one its entry names, systemd-boot on Debian 13; else GRUB in the same
    directory), and the fallback path."""
    name = loader.rsplit("\\", 1)[-1].lower()
    named = args.split()[0] if args.split() and args.split()[0].lower().endswith(".efi") else ""
    second = (named or f"{_directory(loader)}\\grub{efi_suffix(loader)}.efi",) if name.startswith("shim") else ()
    return tuple(dict.fromkeys((loader, *second, fallback(loader))))


def shim_helpers(loader: str) -> tuple[str, ...]:
    """MokManager and shim's fallback, beside the loader and beside the fallback path: check
    compares them where any member has them (they are started only now and then)."""
    suffix = efi_suffix(loader)
    return tuple(f"{d}\\{n}{suffix}.efi" for d in (_directory(loader), "\\EFI\\BOOT") for n in ("mm", "fb"))


def _mtools_path(efi_path: str) -> str:
    return "::/" + efi_path.strip("\\").replace("\\", "/")


def read_members(runner: Runner, members: Iterable[tuple[str, str]], paths: Sequence[str]) -> tuple[MemberLoaders, ...]:
    """Each member's (node, disk) copy of ``paths``, read with mtools from the member partition
    (read-only, after dropping its cache as compare.fresh_view does). A member that cannot be read
    is said so per file, never taken for one that lacks the files.

    One ``mcopy`` per member writes the files into a private directory, read from there: an EFI
    image is megabytes (a UKI tens), which piped into Python cost seconds per file in a slow VM,
    and every process counts there too."""
    out = []
    with tempfile.TemporaryDirectory(prefix="esp-mirror-loaders-") as scratch:
        for number, (node, disk) in enumerate(members):
            try:
                runner.run(("blockdev", "--flushbufs", node))
            except CommandFailed as exc:
                why = f"blockdev --flushbufs: {exc.stderr_line}"
                out.append(MemberLoaders(node, disk, tuple(LoaderFile(p, None, why) for p in paths)))
                continue
            out.append(MemberLoaders(node, disk, _read(runner, node, paths, Path(scratch, str(number)))))
    return tuple(out)


def _read(runner: Runner, node: str, paths: Sequence[str], dest: Path) -> tuple[LoaderFile, ...]:
    """``paths`` (whose file names differ) from ``node`` into the directory ``dest``."""
    names = [p.rsplit("\\", 1)[-1].lower() for p in paths]
    if len(set(names)) < len(names):  # two files of one name: one directory each
        return tuple(f for i, p in enumerate(paths) for f in _read(runner, node, [p], dest / str(i)))
    dest.mkdir(parents=True)
    sources = [_mtools_path(p) for p in paths]
    try:
        result = runner.run(("mcopy", "-n", "-i", node, *sources, f"{dest}/"), env=MTOOLS_ENV, ok=(0, 1))
    except CommandFailed as exc:
        return tuple(LoaderFile(p, None, f"mcopy: {exc.stderr_line}") for p in paths)
    copied = {f.name.lower(): f for f in dest.iterdir()}
    out = []
    for path, name, source in zip(paths, names, sources, strict=True):
        if name in copied:
            out.append(LoaderFile(path, pe.signature(copied[name].read_bytes())))
        elif f'"{source.lower()}" not found' in result.stderr.lower():
            out.append(LoaderFile(path, None))
        else:
            out.append(LoaderFile(path, None, f"mcopy: {CommandFailed(result).stderr_line or 'copied nothing'}"))
    return tuple(out)


def from_copies(copies: dict[str, Path], disks: dict[str, str], paths: Sequence[str]) -> tuple[MemberLoaders, ...]:
    """The same, from check's copies of the members (node -> directory); FAT names are matched
    without regard to case, as the firmware matches them."""
    out = []
    for node, root in copies.items():
        names = _names(root)
        files = []
        for path in paths:
            found = names.get(path.strip("\\").replace("\\", "/").lower())
            files.append(LoaderFile(path, pe.signature(found.read_bytes()) if found else None))
        out.append(MemberLoaders(node, disks.get(node, node), tuple(files)))
    return tuple(out)


def present(copies: dict[str, Path], paths: Sequence[str]) -> tuple[str, ...]:
    """Those of ``paths`` that at least one member's copy holds."""
    held = set().union(*(_names(root) for root in copies.values())) if copies else set()
    return tuple(p for p in paths if p.strip("\\").replace("\\", "/").lower() in held)


def _names(root: Path) -> dict[str, Path]:
    out = {}
    for base, _, names in os.walk(root):
        for name in names:
            path = Path(base, name)
            out[str(path.relative_to(root)).replace(os.sep, "/").lower()] = path
    return out


def differences(members: Sequence[MemberLoaders]) -> list[SignatureDifference]:
    """The files whose signature is not the same on every member that could be read: signed on
    one and unsigned (or missing) on another, or signed with different certificate tables."""
    paths = list(dict.fromkeys(f.path for m in members for f in m.files))
    out = []
    for path in paths:
        versions = [(m, f) for m in members if (f := m.file(path)) is not None and f.key() is not None]
        if len({f.key() for _, f in versions}) < 2:
            continue
        signed = {f.key() for _, f in versions if f.boots_under_secure_boot}
        right = next((m.disk for m, f in versions if f.boots_under_secure_boot), None) if len(signed) == 1 else None
        out.append(SignatureDifference(path, tuple((m.node, f) for m, f in versions), right))
    return out


def unsigned_problems(secure_boot: bool | None, members: Sequence[MemberLoaders], kind: BootloaderKind) -> list[str]:
    """With Secure Boot on: every member's file of the chain that carries no signature, or is
    missing. That disk does not boot, whatever the others do."""
    if not secure_boot:
        return []
    out = []
    for m in members:
        for f in m.files:
            if f.unreadable or f.boots_under_secure_boot:
                continue
            if f.signature is None:
                what = f"member {m.node} has no {f.path}"
            elif not f.signature.pe:
                what = f"member {m.node}'s {f.path} is not an EFI image"
            else:
                what = f"member {m.node}'s {f.path} carries no signature"
            packages = signed_packages(kind, efi_suffix(f.path))
            fix = f"install the signed loader ({packages})" if packages else SIGN_IMAGE
            out.append(
                f"{what} and the firmware enforces Secure Boot: that disk will not boot; "
                f"{fix} and run `esp-mirror apply`"
            )
    return out
