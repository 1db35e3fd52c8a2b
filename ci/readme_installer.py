"""The README's installer example, run as written: its ``install(disks, target, installer)``
drives esp-mirror's four hooks, and a test's ``installer`` does the installer's own steps
between them (see ci/installed.py).

The Debian it installs comes from mmdebstrap (the cached roots of ci/roots.py). Running mmdebstrap
inside the TCG guest would take many minutes, and the guest has no network, so a root is split
on the host into two tar archives, which the guest's installer unpacks at the points where an
installer unpacks packages:

* the base system: everything but the files of the kernel package and of mdadm;
* the kernel and mdadm: the files dpkg lists for ``linux-image-<version>`` and ``mdadm``, plus the
  kernel's generated initramfs.
"""

from __future__ import annotations

import os
import re
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ci.vm.scripts import REPO_ROOT

README = REPO_ROOT / "README.md"
MARKER = "<!-- installer-example:"
PACKAGES = ("linux-image-{kver}", "mdadm")


def readme_example(readme: Path = README) -> str:
    """The Python block that follows the installer-example marker in the README."""
    text = readme.read_text()
    after = text[text.index(MARKER) :]
    match = re.search(r"```python\n(.*?)```", after, re.DOTALL)
    if match is None:
        raise LookupError(f"no ```python block after {MARKER!r} in {readme}")
    return match.group(1)


def run_readme_install(disks: tuple[str, ...], target: str, installer: Any) -> None:
    """Execute the README's block as it is, then call its ``install``."""
    namespace: dict[str, Any] = {}
    exec(compile(readme_example(), f"{README} (installer example)", "exec"), namespace)
    namespace["install"](disks, target, installer)


@dataclass(frozen=True)
class SystemArchives:
    base: Path  # the base system
    kernel_and_mdadm: Path
    seconds: float  # to make them


def _package_files(root: Path, kver: str) -> set[str]:
    """The files (not directories) of the kernel and mdadm packages, as paths in ``root`` with
    links on the way (/lib -> usr/lib) resolved, plus the kernel's initramfs."""
    from esp_mirror_plugin.system.files import resolve_in_root

    out = {f"boot/initrd.img-{kver}"}
    for package in PACKAGES:
        listing = root / "var/lib/dpkg/info" / f"{package.format(kver=kver)}.list"
        for line in listing.read_text().splitlines():
            real = resolve_in_root(str(root), line)
            if real.is_file() and not real.is_symlink():
                out.add(str(real.relative_to(root)))
    return out


def split_system(root: Path, kver: str, out_dir: Path) -> SystemArchives:
    """Write the two archives of the root directory ``root`` into ``out_dir``."""
    started = time.monotonic()
    package_files = _package_files(root, kver)
    base, extra = out_dir / "system-base.tar", out_dir / "system-kernel-mdadm.tar"
    with tarfile.open(base, "w") as base_tar, tarfile.open(extra, "w") as extra_tar:
        for directory, dirs, names in os.walk(root):
            dirs.sort()
            rel_dir = os.path.relpath(directory, root)
            for name in [*dirs, *sorted(names)]:
                rel = os.path.normpath(os.path.join(rel_dir, name))
                if rel == ".espvm-root.json":
                    continue
                archive = extra_tar if rel in package_files else base_tar
                archive.add(root / rel, arcname=rel, recursive=False)
    return SystemArchives(base, extra, time.monotonic() - started)
