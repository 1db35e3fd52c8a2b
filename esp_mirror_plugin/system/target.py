"""The target root as a hook sees it when it plans: its files, kernels, units and programs.

An installer fills the target between the hooks (the base system after ``post_format``, the
kernel and mdadm before ``initramfs_config``, shim before ``bootloader``), so nothing here is
read ahead or cached: each hook looks at the target when it plans. Paths are resolved the way a
chroot would see them (:func:`esp_mirror_plugin.system.files.resolve_in_root`), so an absolute symlink
in the target never leads onto the host.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from esp_mirror_plugin.errors import BadInput
from esp_mirror_plugin.system import files
from esp_mirror_plugin.system.runner import which_in_root

UNIT_DIRS = ("etc/systemd/system", "usr/lib/systemd/system", "lib/systemd/system")
PYTHON_MIN = (3, 11)
# A few standard library modules esp-mirror imports: a "minimal" Python (Debian's python3-minimal,
# an image's stripped interpreter) has os.py but not all of them.
_STDLIB = ("argparse", "dataclasses", "json", "subprocess", "zipfile")  # a module.py or a package
_LIBS = ("usr/lib", "usr/lib64", "usr/local/lib")
_VERSIONED = re.compile(r"^python(\d+)\.(\d+)$")


@dataclass(frozen=True)
class Python:
    """The python3 that ``#!/usr/bin/env python3`` finds in the target."""

    path: str  # as the target sees it: /usr/bin/python3
    version: tuple[int, int] | None  # None: no standard library found for it
    missing: str = ""  # a standard library module that is not there

    @property
    def usable(self) -> bool:
        return self.version is not None and self.version >= PYTHON_MIN and not self.missing

    def problem(self) -> str:
        if self.version is None:
            return f"{self.path} has no standard library under /usr/lib"
        shown = ".".join(map(str, self.version))
        if self.version < PYTHON_MIN:
            return f"{self.path} is Python {shown}; esp-mirror needs {'.'.join(map(str, PYTHON_MIN))} or later"
        return f"Python {shown} at {self.path} lacks its standard library ({self.missing} is missing)"


@dataclass(frozen=True)
class Target:
    """The root of the system being installed (``/`` on the installed system itself)."""

    root: str

    def path(self, rel: str) -> str:
        """How plans name a file of the target: the root joined with ``rel`` (lexically)."""
        return os.path.normpath(os.path.join(self.root, rel.lstrip("/")))

    def resolve(self, rel: str) -> Path:
        """The host path of ``rel`` as seen from inside the target.

        :raises BadInput: the symbolic links on the way loop.
        """
        try:
            return files.resolve_in_root(self.root, rel)
        except OSError as exc:
            raise BadInput(f"{self.path(rel)}: {exc.strerror}: fix the symbolic links on that path") from None

    def exists(self, rel: str) -> bool:
        return self.resolve(rel).exists()

    def present(self, *rels: str) -> tuple[str, ...]:
        """The paths (as plans name them) of those of ``rels`` that are in the target: a file, a
        directory or a link, a dangling one too (what an undo removes)."""
        return tuple(self.path(rel) for rel in rels if os.path.lexists(self.path(rel)))

    def has_block(self, rel: str) -> bool:
        """The file holds esp-mirror's marked block (a broken one counts: its edit then refuses,
        naming it)."""
        try:
            return files.split_block(self.text(rel))[1] is not None
        except ValueError:
            return True

    def text(self, rel: str) -> str:
        """The file's text; "" when it does not exist.

        :raises BadInput: it is not a regular file, cannot be read, or is not UTF-8 text.
        """
        return read_text(self.resolve(rel), self.path(rel))

    def kernels(self) -> tuple[str, ...]:
        """Kernel versions installed in the target (the directories under /lib/modules)."""
        modules = self.resolve("lib/modules")
        return tuple(sorted(p.name for p in modules.glob("*") if p.is_dir())) if modules.is_dir() else ()

    def os_release(self) -> dict[str, str]:
        """The target's /etc/os-release (else /usr/lib/os-release) as a dict; {} when it has none
        (an installer's target before the base system is in)."""
        for rel in ("etc/os-release", "usr/lib/os-release"):
            text = self.text(rel) if self.resolve(rel).is_file() else ""
            if text:
                out = {}
                for line in text.splitlines():
                    key, sep, value = line.partition("=")
                    if sep and key.strip() and not key.lstrip().startswith("#"):
                        out[key.strip()] = value.strip().strip("\"'")
                return out
        return {}

    def has_shim(self) -> bool:
        """Debian's signed shim is installed (GRUB's loader is then shimx64.efi)."""
        return self.resolve("usr/lib/shim/shimx64.efi.signed").is_file()

    def has_unit(self, name: str) -> bool:
        """A systemd unit file of that name is installed or written in the target."""
        return any(self.resolve(f"{d}/{name}").exists() for d in UNIT_DIRS)

    def unit_enabled(self, name: str) -> bool:
        """``systemctl enable NAME`` has nothing left to do in the target: every unit its [Install]
        section names (WantedBy=, RequiredBy=, UpheldBy=) has the link in /etc/systemd/system, or
        it has no such line (a static unit). A unit that is not installed is not enabled."""
        found = next((d for d in UNIT_DIRS if self.resolve(f"{d}/{name}").is_file()), None)
        if found is None:
            return False
        section, links = "", []
        for line in self.resolve(f"{found}/{name}").read_text(errors="replace").splitlines():
            line = line.strip()
            if line.startswith("["):
                section = line
                continue
            key, sep, value = line.partition("=")
            kind = {"WantedBy": "wants", "RequiredBy": "requires", "UpheldBy": "upholds"}.get(key.strip())
            if section == "[Install]" and sep and kind:
                links += [f"etc/systemd/system/{unit}.{kind}/{name}" for unit in value.split()]
        return all(os.path.lexists(self.path(link)) for link in links)

    def python(self) -> Python | None:
        """The target's python3 (on the PATH, as ``env`` finds it) with its version, or None."""
        found = which_in_root("python3", self.root)
        if found is None:
            return None
        named = _VERSIONED.match(self.resolve(found).name)
        if named:
            versions = [(int(named[1]), int(named[2]))]
        else:  # a binary called python3: the newest standard library there is
            versions = sorted(
                {
                    (int(m[1]), int(m[2]))
                    for lib in _LIBS
                    if self.resolve(lib).is_dir()
                    for entry in self.resolve(lib).iterdir()
                    if (m := _VERSIONED.match(entry.name))
                },
                reverse=True,
            )
        for version in versions:
            for lib in _LIBS:
                directory = f"{lib}/python{version[0]}.{version[1]}"
                if self.exists(f"{directory}/os.py"):
                    missing = next(
                        (
                            m
                            for m in _STDLIB
                            if not (self.exists(f"{directory}/{m}.py") or self.exists(f"{directory}/{m}/__init__.py"))
                        ),
                        "",
                    )
                    return Python(found, version, missing)
        return Python(found, None)

    def writable(self, rel: str) -> str | None:
        """Why the file or directory ``rel`` cannot be written (a read-only file system, no write
        permission for root), or None when it can. Only root's permissions are looked at as root."""
        path = self.resolve(rel)
        try:
            flags = os.statvfs(path).f_flag
        except OSError as exc:
            return f"cannot look at it ({exc.strerror})"
        if flags & os.ST_RDONLY:
            return "it is on a read-only file system"
        if os.geteuid() == 0 and not os.access(path, os.W_OK):
            return "it is not writable (permissions or the immutable attribute)"
        return None

    def has_program(self, name: str) -> bool:
        """``name`` is on the target's PATH (as the chroot would run it)."""
        return which_in_root(name, self.root) is not None


def read_text(path: Path, shown: str) -> str:
    """Text of a file esp-mirror edits; "" when missing. Refuses what it cannot edit safely."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return ""
    except IsADirectoryError:
        raise BadInput(f"{shown} is a directory, not a file: move it away; esp-mirror writes a file there") from None
    except OSError as exc:
        raise BadInput(f"cannot read {shown} ({exc.strerror}): run esp-mirror as root") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(
            f"{shown} is not UTF-8 text (byte {exc.start}): esp-mirror edits text files only; "
            "convert it (iconv -t UTF-8) and run again"
        ) from None
