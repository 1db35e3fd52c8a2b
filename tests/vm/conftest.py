"""Fixtures for the VM tests (tests marked ``vm`` boot OVMF in qemu; see ci/vm).

A machine that cannot run them FAILS these tests with the reason, so CI never skips them silently;
set ESP_MIRROR_VM_SKIP_OK=1 to skip them instead (e.g. on a laptop without qemu).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
def payload_efi(vm_assets: Assets) -> Path:
    """The EFI payload (a unified kernel image) to install on the ESP, built once per session."""
    return build_payload(vm_assets, vm_assets.cache_dir / "payload" / "espvm-payload.efi")


@pytest.fixture
def vm_workdir(tmp_path: Path) -> Path:
    """A directory for this test's disk images, NVRAM files and serial logs (kept by pytest)."""
    return tmp_path
