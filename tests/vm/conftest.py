"""Fixtures for the VM tests (tests marked ``vm`` boot OVMF in qemu; see ci/vm).

A machine that cannot run them FAILS these tests with the reason, so CI never skips them silently;
set ESP_MIRROR_VM_SKIP_OK=1 to skip them instead (e.g. on a laptop without qemu).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from ci import roots
from ci.measure import measurements
from ci.vm import Assets, build_payload, preflight


@pytest.fixture(scope="session")
def vm_assets() -> Assets:
    """The kernel, busybox, systemd-stub and OVMF, downloaded once into the cache."""
    reason = preflight()
    if reason:
        if os.environ.get("ESP_MIRROR_VM_SKIP_OK") == "1":
            pytest.skip(reason)
        pytest.fail(f"{reason} (or set ESP_MIRROR_VM_SKIP_OK=1 to skip the VM tests)", pytrace=False)
    return Assets.ensure()


@pytest.fixture(scope="session")
def initramfs_tools_root(request: pytest.FixtureRequest) -> roots.Root:
    """The cached initramfs-tools target root (ci/roots.py), built if missing; its build time is
    recorded once per session."""
    root = roots.ensure_root(roots.INITRAMFS_TOOLS)
    measurements(request.config).record(
        "root build",
        "initramfs-tools (mmdebstrap)",
        root.build_seconds,
        "built now" if root.built_now else "cached, built earlier",
    )
    return root


@pytest.fixture(scope="session")
def trixie_root(request: pytest.FixtureRequest) -> roots.Root:
    """The cached Debian 13 target root (ci/roots.py: shim, signed GRUB and systemd-boot, a second
    kernel's package in /root), built if missing."""
    root = roots.ensure_root(roots.TRIXIE)
    measurements(request.config).record(
        "root build",
        "Debian 13 (mmdebstrap)",
        root.build_seconds,
        "built now" if root.built_now else "cached, built earlier",
    )
    return root


@pytest.fixture(scope="session")
def payload_efi(vm_assets: Assets) -> Path:
    """The EFI payload (a unified kernel image) to install on the ESP, built once per session."""
    return build_payload(vm_assets, vm_assets.cache_dir / "payload" / "espvm-payload.efi")


@pytest.fixture
def vm_workdir(tmp_path: Path) -> Path:
    """A directory for this test's disk images, NVRAM files and serial logs (kept by pytest only
    if the test fails: ``tmp_path_retention_policy`` in pyproject.toml)."""
    return tmp_path


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A directory for the disks one test module's tests share, removed when they are done unless
    one of them failed. pytest keeps a module's ``mktemp`` directories to the end of the session,
    and a whole run's images hold ~9.5 GB: more than CI's disk has free (a full disk pauses qemu's
    guest, which then looks frozen)."""
    failed_before = request.session.testsfailed
    path = tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2])
    yield path
    if request.session.testsfailed == failed_before:
        shutil.rmtree(path)
