"""Editing files in the target: atomically, keeping mode and owner, with one backup.

esp-mirror owns either a whole drop-in file or one marked block inside someone else's file.
Both edits are idempotent: when the result equals the current content nothing is written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

BEGIN = "# BEGIN esp-mirror (managed block: esp-mirror rewrites what is between these lines)"
END = "# END esp-mirror"


def without_block(text: str) -> str:
    """``text`` with our marked block (and its markers) removed."""
    before, _, after = _split(text)
    return before + after


def with_block(text: str, block: str) -> str:
    """``text`` with our block replaced in place, or appended when it is not there yet."""
    body = f"{BEGIN}\n{block.rstrip(chr(10))}\n{END}\n"
    before, found, after = _split(text)
    if found is not None:
        return before + body + after
    if text and not text.endswith("\n"):
        text += "\n"
    return text + body


def _split(text: str) -> tuple[str, str | None, str]:
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.rstrip("\n") == BEGIN]
    if not starts:
        return text, None, ""
    start = starts[0]
    end = next((i for i in range(start + 1, len(lines)) if lines[i].rstrip("\n") == END), None)
    if end is None:
        raise ValueError(f"found {BEGIN!r} without {END!r}: repair the file by hand")
    return "".join(lines[:start]), "".join(lines[start + 1:end]), "".join(lines[end + 1:])


def write_atomic(path: Path, content: str | bytes, mode: int = 0o644, preserve: bool = True) -> bool:
    """Write ``content`` to ``path`` via a temp file and rename. Returns False if unchanged.

    With ``preserve`` an existing file keeps its mode and owner, and its previous content is kept
    as ``path~``. Files on the ESP (FAT has no owners or modes) are written with preserve=False.
    """
    data = content.encode() if isinstance(content, str) else content
    if path.is_file() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = path.stat() if path.exists() else None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if existing is not None and preserve:
            os.chmod(tmp, existing.st_mode & 0o7777)
            os.chown(tmp, existing.st_uid, existing.st_gid)
            shutil.copy2(path, path.with_name(path.name + "~"))
        elif preserve:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return True


def edit_block(path: Path, block: str, mode: int = 0o644) -> bool:
    current = path.read_text() if path.exists() else ""
    return write_atomic(path, with_block(current, block), mode)
