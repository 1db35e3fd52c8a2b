"""Fixtures for the real-distribution tests (marker ``distro``): cached Debian 12 target roots.

The roots are built once (mmdebstrap from the machine's apt sources, see ci/roots.py) and reused
by every later run; each test works on an overlay of a root, never on the cached root itself.
Like the VM tests, a machine that cannot run them FAILS them with the reason; set
ESP_MIRROR_VM_SKIP_OK=1 to skip instead.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from ci import roots
from ci.measure import measurements


def _preflight() -> str | None:
    if os.geteuid() != 0:
        return "the real-distribution tests must run as root (chroot, overlay and bind mounts)"
    if shutil.which("mmdebstrap") is None:
        return "mmdebstrap is not installed; run ci/bootstrap (or apt-get install mmdebstrap)"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "this kernel has no overlay filesystem, which the tests use to keep cached roots pristine"
    return None


def _require_host() -> None:
    reason = _preflight()
    if reason:
        if os.environ.get("ESP_MIRROR_VM_SKIP_OK") == "1":
            pytest.skip(reason)
        pytest.fail(f"{reason} (or set ESP_MIRROR_VM_SKIP_OK=1 to skip these tests)", pytrace=False)


def _root(request: pytest.FixtureRequest, spec: roots.RootSpec) -> roots.Root:
    _require_host()
    root = roots.ensure_root(spec)
    how = "built now" if root.built_now else "cached, built earlier"
    measurements(request.config).record("root build", f"{spec.name} (mmdebstrap)", root.build_seconds, how)
    return root


@pytest.fixture(scope="session")
def initramfs_tools_root(request: pytest.FixtureRequest) -> roots.Root:
    """Debian 12 with initramfs-tools, GRUB and systemd-boot (built once, cached)."""
    return _root(request, roots.INITRAMFS_TOOLS)


@pytest.fixture(scope="session")
def dracut_root(request: pytest.FixtureRequest) -> roots.Root:
    """Debian 12 with dracut (built once, cached)."""
    return _root(request, roots.DRACUT)
