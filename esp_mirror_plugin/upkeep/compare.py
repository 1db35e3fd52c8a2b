"""Compare the FILES of the mirror's members, read-only.

With metadata 1.0 each member is a plain FAT32 at offset 0, so mtools reads it straight from the
member partition (never mounting it, never writing to it) — the same view the firmware has.
Anything written to one member behind md's back (firmware, an EFI tool) shows up here by name.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from esp_mirror_plugin.errors import StepFailed
from esp_mirror_plugin.system.files import write_atomic
from esp_mirror_plugin.system.runner import CommandFailed, Runner

MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1"}


@dataclass(frozen=True)
class FileInfo:
    size: int
    mtime: float
    sha256: str


@dataclass(frozen=True)
class Difference:
    path: str
    versions: dict[str, FileInfo | None]  # member node -> its version (None: missing there)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "members": {
                node: None if v is None else {"size": v.size, "mtime": v.mtime, "sha256": v.sha256}
                for node, v in self.versions.items()
            },
        }


def describe(diffs: list[Difference]) -> str:
    """The differences as check and repair show them: each differing path, each member's version."""
    if not diffs:
        return "member files: identical\n"
    lines = [f"member files: {len(diffs)} differ"]
    for d in diffs:
        lines.append(f"  {d.path}")
        for node, v in d.versions.items():
            desc = (
                "missing"
                if v is None
                else (
                    f"{v.size} bytes, modified {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(v.mtime))} UTC, "
                    f"sha256 {v.sha256[:12]}"
                )
            )
            lines.append(f"    {node}: {desc}")
    return "".join(f"{line}\n" for line in lines)


def fresh_view(runner: Runner, node: str) -> None:
    """Drop the member's block-device cache. md writes go around it, so a member read before
    (an earlier check, fsck) may otherwise be served from stale cached blocks."""
    try:
        runner.run(("blockdev", "--flushbufs", node))
    except CommandFailed as exc:
        raise StepFailed("compare", f"blockdev --flushbufs {node}", exc.result.describe()) from None


def copy_member(runner: Runner, node: str, dest: Path) -> dict[str, FileInfo]:
    """Copy every file of the FAT on ``node`` into ``dest`` (mtools, read-only); describe them."""
    dest.mkdir(parents=True, exist_ok=True)
    fresh_view(runner, node)
    try:
        listing = runner.run(("mdir", "-/", "-b", "-i", node, "::/"), env=MTOOLS_ENV, ok=(0, 1))
        if listing.returncode == 1 and "not found" not in listing.stderr:  # an empty FAT lists as "not found"
            raise CommandFailed(listing)
        if listing.ok and listing.stdout.strip():
            runner.run(("mcopy", "-s", "-p", "-m", "-n", "-i", node, "::/*", f"{dest}/"), env=MTOOLS_ENV)
    except CommandFailed as exc:
        raise StepFailed("compare", f"read the files of {node}", exc.result.describe()) from None
    files = {}
    for base, _, names in os.walk(dest):
        for name in names:
            path = Path(base, name)
            data = path.read_bytes()
            files[str(path.relative_to(dest))] = FileInfo(
                len(data), path.stat().st_mtime, hashlib.sha256(data).hexdigest()
            )
    return files


def differences(trees: dict[str, dict[str, FileInfo]]) -> list[Difference]:
    """Files whose content differs between members, or that some members lack."""
    paths = sorted({p for tree in trees.values() for p in tree})
    out = []
    for path in paths:
        versions = {node: tree.get(path) for node, tree in trees.items()}
        hashes = {v.sha256 if v else None for v in versions.values()}
        if len(hashes) > 1:
            out.append(Difference(path, versions))
    return out


def backup(copies: dict[str, Path], diffs: list[Difference], keep: set[str], directory: Path, stamp: str) -> list[Path]:
    """Tar, per member not in ``keep``, its versions of the differing files. Returns the tar paths.

    Each tar is made in memory (the files of an ESP) and written like every other file esp-mirror
    writes (:func:`esp_mirror_plugin.system.files.write_atomic`): a cut write leaves no half tar."""
    written = []
    for node, root in copies.items():
        if node in keep:
            continue
        mine = [d.path for d in diffs if d.versions.get(node) is not None]
        if not mine:
            continue
        target = directory / f"repair-{stamp}-{os.path.basename(node)}.tar"
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for path in mine:
                tar.add(root / path, arcname=path)
        write_atomic(target, buffer.getvalue(), 0o644, preserve=False)
        written.append(target)
    return written
