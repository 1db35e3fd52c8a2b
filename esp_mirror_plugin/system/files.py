"""Editing files in the target: atomically, keeping mode and owner, with one backup.

esp-mirror owns either a whole drop-in file or one marked block inside someone else's file.
Both edits are idempotent: when the result equals the current content nothing is written.

Every path is resolved inside the target root as a chroot would (:func:`resolve_in_root`): a
symlink is followed within the root, so writing through it keeps the link and never reaches
the host. A write goes to a temporary file in the same directory, is synced, renamed over the
old file, and the directory is synced too, so a crash leaves the old file or the new one.
"""

from __future__ import annotations

import errno
import glob
import os
import tempfile
from collections import deque
from pathlib import Path

BEGIN = "# BEGIN esp-mirror (managed block: esp-mirror rewrites what is between these lines)"
END = "# END esp-mirror"
MAX_LINKS = 40  # as the kernel's ELOOP limit


def resolve_in_root(root: str, path: str) -> Path:
    """The host path of ``path`` as seen from inside ``root``, with chroot semantics.

    Symlinks are followed inside the root: an absolute link target starts again at the root,
    and ``..`` never climbs above it. The last components need not exist.

    :raises OSError: ELOOP after too many links.
    """
    top = os.path.realpath(root)
    if os.path.isabs(path) and os.path.normpath(path).startswith(top.rstrip("/") + "/"):
        path = os.path.relpath(path, top)  # a host path already under the root
    parts = deque(p for p in path.split("/") if p not in ("", "."))
    current, links = top, 0
    while parts:
        part = parts.popleft()
        if part == "..":
            current = top if current == top else os.path.dirname(current)
            continue
        candidate = os.path.join(current, part)
        if os.path.islink(candidate):
            links += 1
            if links > MAX_LINKS:
                raise OSError(errno.ELOOP, "too many levels of symbolic links", candidate)
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = top
            parts.extendleft(reversed([p for p in target.split("/") if p not in ("", ".")]))
            continue
        current = candidate
    return Path(current)


def without_block(text: str) -> str:
    """``text`` with our marked block (and its markers) removed."""
    before, _, after = split_block(text)
    return before + after


def with_block(text: str, block: str) -> str:
    """``text`` with our block replaced in place, or appended when it is not there yet."""
    body = f"{BEGIN}\n{block.rstrip(chr(10))}\n{END}\n"
    before, found, after = split_block(text)
    if found is not None:
        return before + body + after
    if text and not text.endswith("\n"):
        text += "\n"
    return text + body


def split_block(text: str) -> tuple[str, str | None, str]:
    """(before, our block or None, after).

    :raises ValueError: a BEGIN marker without its END, or our block twice.
    """
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.rstrip("\n") == BEGIN]
    if not starts:
        return text, None, ""
    if len(starts) > 1:
        raise ValueError(f"has {len(starts)} blocks marked {BEGIN!r}: keep one, delete the others")
    start = starts[0]
    end = next((i for i in range(start + 1, len(lines)) if lines[i].rstrip("\n") == END), None)
    if end is None:
        raise ValueError(f"has {BEGIN!r} without {END!r}: repair the file by hand")
    return "".join(lines[:start]), "".join(lines[start + 1 : end]), "".join(lines[end + 1 :])


def write_atomic(path: Path, content: str | bytes, mode: int = 0o644, preserve: bool = True) -> bool:
    """Write ``content`` to ``path`` via a synced temp file and rename. Returns False if unchanged.

    With ``preserve`` an existing file keeps its mode and owner, and its previous content is kept
    as ``path~`` (written the same atomic way); a new file gets ``mode``. Without ``preserve``
    (files on the ESP, where FAT has no owners) the file gets ``mode`` and no backup.
    """
    data = content.encode() if isinstance(content, str) else content
    if not differs(path, data):
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = path.stat() if path.exists() else None
    if existing is not None and preserve:
        _replace(path.with_name(path.name + "~"), path.read_bytes(), existing.st_mode & 0o7777, existing)
        _replace(path, data, existing.st_mode & 0o7777, existing)
    else:
        _replace(path, data, mode, None)
    return True


def differs(path: Path, content: str | bytes) -> bool:
    """Whether writing ``content`` to ``path`` changes it: the one "is it written already?" of
    :func:`write_atomic`, which ``plan`` also asks (:func:`esp_mirror_plugin.pipeline.execute.would_change`)."""
    data = content.encode() if isinstance(content, str) else content
    return not (path.is_file() and path.read_bytes() == data)


def _replace(path: Path, data: bytes, mode: int, owner: os.stat_result | None) -> None:
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".esp-mirror", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            if owner is not None:
                os.fchown(handle.fileno(), owner.st_uid, owner.st_gid)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    sync_dir(path.parent)


def remove_stale_temporaries(path: Path) -> None:
    """Delete temp files an interrupted write of ``path`` left behind (never anything else)."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.esp-mirror"):
        stale.unlink(missing_ok=True)


def sync_dir(directory: Path) -> None:
    """fsync a directory, so a rename in it survives a power cut."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems (vfat on old kernels) refuse fsync on directories
        pass
    finally:
        os.close(fd)


RETIRED = "# esp-mirror: "  # what a line our block took over starts with once it is commented out


def edit_block(path: Path, block: str, mode: int = 0o644, retire: tuple[str, ...] = ()) -> bool:
    return write_atomic(path, block_edited(path, block, retire), mode)


def block_edited(path: Path, block: str, retire: tuple[str, ...] = ()) -> str:
    """What :func:`edit_block` makes of ``path``: its text (none when missing) with our block, and
    each line in ``retire`` (outside the block) commented out."""
    current = path.read_text() if path.exists() else ""
    if retire:
        before, found, after = split_block(current)
        before, after = (_retired(part, retire) for part in (before, after))
        current = before + (f"{BEGIN}\n{found}{END}\n" if found is not None else "") + after
    return with_block(current, block)


def block_removed(path: Path, keep: str = "", remove_empty: bool = False) -> str | None:
    """What :func:`remove_block` makes of ``path``: its text without our block (``keep``'s lines
    in its place); None when the file goes (``remove_empty`` and nothing but blank lines left).
    A missing file, or one without our block, stays as it is.

    :raises ValueError: a broken block (:func:`split_block`).
    """
    current = path.read_text() if path.exists() else ""
    before, found, after = split_block(current)
    if found is None:
        return current
    kept = f"{keep.rstrip(chr(10))}\n" if keep.strip() else ""
    text = before + kept + after
    return None if remove_empty and not text.strip() else text


def remove_block(path: Path, keep: str = "", remove_empty: bool = False) -> bool:
    """Our block out of ``path`` (``keep`` in its place), atomically; the file removed when
    ``remove_empty`` and nothing else is left. Returns False when there was nothing to do."""
    text = block_removed(path, keep, remove_empty)
    if text is None:
        path.unlink()
        sync_dir(path.parent)
        return True
    if not path.exists():
        return False
    return write_atomic(path, text)


def _retired(text: str, retire: tuple[str, ...]) -> str:
    wanted = {line.strip() for line in retire}
    return "".join(
        f"{RETIRED}{line.lstrip()}" if line.strip() in wanted else line for line in text.splitlines(keepends=True)
    )


def tree_differences(source: Path, dest: Path) -> list[str]:
    """What ``dest`` lacks or holds differently from ``source``: directories and files (by path
    relative to each, file contents by sha256), and what ``dest`` holds beyond ``source``. Symbolic
    links are not followed (FAT has none). ``dest`` may be a tar archive of ``source`` (made with
    ``--directory=SOURCE .``): its members are compared the same way."""
    return _differences(_walk(source), _archived(dest) if dest.is_file() else _walk(dest), source)


def _walk(top: Path) -> dict[str, str]:
    import hashlib

    found: dict[str, str] = {}
    for where, dirs, names in os.walk(top):
        rel = os.path.relpath(where, top)
        for name in dirs:
            found[os.path.normpath(os.path.join(rel, name))] = "directory"
        for name in names:
            with open(os.path.join(where, name), "rb") as handle:
                found[os.path.normpath(os.path.join(rel, name))] = hashlib.file_digest(handle, "sha256").hexdigest()
    return found


def _archived(archive: Path) -> dict[str, str]:
    """The directories and files of a tar archive, as :func:`_walk` describes a tree."""
    import hashlib
    import tarfile

    found: dict[str, str] = {}
    with tarfile.open(archive) as tar:
        for info in tar:
            rel = os.path.normpath(info.name)
            if rel == ".":
                continue
            if info.isdir():
                found[rel] = "directory"
            elif info.isfile():
                data = tar.extractfile(info)
                found[rel] = hashlib.sha256(data.read()).hexdigest() if data is not None else ""
            else:
                found[rel] = f"a {info.type!r} member"
    return found


def _differences(have: dict[str, str], copied: dict[str, str], source: Path) -> list[str]:
    out = []
    for rel in sorted(set(have) | set(copied)):
        if rel not in copied:
            out.append(f"{rel} is missing")
        elif rel not in have:
            out.append(f"{rel} is not in {source}")
        elif have[rel] != copied[rel]:
            out.append(f"{rel} differs (sha256 {have[rel][:12]} there, {copied[rel][:12]} here)")
    return out


def debconf_values(text: str) -> dict[str, str]:
    """Question -> value from debconf's database file (``/var/cache/debconf/config.dat``: stanzas
    of ``Name:``, ``Template:``, ``Value:``, ... separated by blank lines)."""
    values = {}
    for stanza in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[:1] not in " \t")
        if "Name" in fields:
            values[fields["Name"]] = fields.get("Value", "")
    return values


def ensure_link(link: Path, points_to: Path) -> bool:
    """A symbolic link ``link`` -> ``points_to`` (relative, as udev makes them); False when a link
    (or file) is there already. The one link esp-mirror makes: /dev/disk/by-uuid/UUID for the
    target's root where udev does not run (pipeline/execute.py)."""
    if os.path.lexists(link):
        return False
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(points_to, link.parent), link)
    return True
