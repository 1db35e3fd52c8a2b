"""The target root as a hook sees it when it plans: its files, kernels, units and programs.

An installer fills the target between the hooks (the base system after ``post_format``, the
kernel and mdadm before ``initramfs_config``, shim before ``bootloader``), so nothing here is
read ahead or cached: each hook looks at the target when it plans. Paths are resolved the way a
chroot would see them (:func:`esp_mirror_plugin.system.files.resolve_in_root`), so an absolute symlink
in the target never leads onto the host.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from esp_mirror_plugin.errors import BadInput
from esp_mirror_plugin.system import files
from esp_mirror_plugin.system.runner import which_in_root

UNIT_DIRS = ("etc/systemd/system", "usr/lib/systemd/system", "lib/systemd/system")


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

    def text(self, rel: str) -> str:
        """The file's text; "" when it does not exist.

        :raises BadInput: it is not a regular file, cannot be read, or is not UTF-8 text.
        """
        return read_text(self.resolve(rel), self.path(rel))

    def kernels(self) -> tuple[str, ...]:
        """Kernel versions installed in the target (the directories under /lib/modules)."""
        modules = self.resolve("lib/modules")
        return tuple(sorted(p.name for p in modules.glob("*") if p.is_dir())) if modules.is_dir() else ()

    def has_shim(self) -> bool:
        """Debian's signed shim is installed (GRUB's loader is then shimx64.efi)."""
        return self.resolve("usr/lib/shim/shimx64.efi.signed").is_file()

    def has_unit(self, name: str) -> bool:
        """A systemd unit file of that name is installed or written in the target."""
        return any(self.resolve(f"{d}/{name}").exists() for d in UNIT_DIRS)

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
