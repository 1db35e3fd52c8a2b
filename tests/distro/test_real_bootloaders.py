"""esp-mirror's bootloader hook with the real installers, on the host.

A tmpfs at target/boot/efi stands in for the mounted array (mounted after prepare(), where
post_format would mount the array; bootctl wants the root of a file system there, and the host
has no md and no vfat). Image files as disks mean no NVRAM entries. GRUB needs its prefix on a
real block device, so GRUB is tested in the guests of tests/vm/test_readme_installer.py and
tests/vm/test_installed_system.py, and systemd-boot's firmware-side behaviour in
tests/vm/test_systemd_boot.py.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ci.installer import prepare_on_images
from ci.roots import Root, chroot_mounts, writable_view
from ci.vm import Assets, build_payload
from ci.vm.command import run_command
from esp_mirror_plugin.pipeline.bootloaders import BootloaderKind
from esp_mirror_plugin.pipeline.kinds import InitramfsMode

pytestmark = pytest.mark.distro


@contextlib.contextmanager
def _esp(target: Path) -> Iterator[Path]:
    esp = target / "boot/efi"
    esp.mkdir(parents=True, exist_ok=True)
    run_command(["mount", "-t", "tmpfs", "-o", "mode=0700", "espvm-esp", str(esp)])
    try:
        yield esp
    finally:
        run_command(["umount", str(esp)])


@pytest.fixture
def systemd_boot(initramfs_tools_root: Root, tmp_path: Path):
    """The debian profile with --bootloader systemd-boot, applied to the Debian 12 root."""
    with writable_view(initramfs_tools_root, tmp_path / "view") as target, chroot_mounts(target):
        install = prepare_on_images(
            "debian", target, tmp_path, initramfs=InitramfsMode.SKIP, bootloader=BootloaderKind.SYSTEMD_BOOT
        )
        with _esp(target) as esp:
            install.bootloader()
            yield target, esp, install


def test_systemd_boot_is_installed_on_the_esp_without_a_random_seed(systemd_boot) -> None:
    target, esp, install = systemd_boot
    assert (esp / "EFI/systemd/systemd-bootx64.efi").is_file()
    assert (esp / "EFI/BOOT/BOOTX64.EFI").read_bytes() == (esp / "EFI/systemd/systemd-bootx64.efi").read_bytes()
    assert not (esp / "loader/random-seed").exists(), "bootctl install writes one; esp-mirror must remove it"
    assert os.readlink(target / "etc/systemd/system/systemd-boot-random-seed.service") == "/dev/null"
    assert not [c for c in install.runner.commands if "efibootmgr" in c]  # image files: no NVRAM entries


def test_systemd_boot_masks_debian_12s_seed_writer_too(systemd_boot) -> None:
    """systemd 252 (Debian 12) has no systemd-boot-random-seed.service (that name is from v253);
    its seed writer is systemd-boot-system-token.service, ExecStart=bootctl random-seed --graceful,
    which creates \\loader\\random-seed on the ESP whenever it finds the ESP (with relaxed checks,
    or when bootctl learns to accept md), and sd-boot then rewrites that file on one member."""
    target, _, _ = systemd_boot
    writer = "systemd-boot-system-token.service"
    unit = (target / "lib/systemd/system" / writer).read_text()
    assert "ExecStart=bootctl random-seed" in unit
    masked = target / "etc/systemd/system" / writer
    assert masked.is_symlink() and os.readlink(masked) == "/dev/null", f"{writer} is not masked"


@pytest.fixture(scope="module")
def unified_kernel_image() -> Path:
    """The VM tests' payload: a unified kernel image (systemd-stub + Debian kernel + initrd)."""
    assets = Assets.ensure()
    return build_payload(assets, assets.cache_dir / "payload" / "espvm-payload.efi")


@pytest.mark.parametrize(
    ("kind", "paths"),
    [
        (BootloaderKind.EFI, ("EFI/debian/espvm-payload.efi", "EFI/BOOT/BOOTX64.EFI")),
        (BootloaderKind.ZFSBOOTMENU, ("EFI/ZBM/VMLINUZ.EFI", "EFI/ZBM/VMLINUZ-BACKUP.EFI", "EFI/BOOT/BOOTX64.EFI")),
    ],
    ids=["efi", "zfsbootmenu"],
)
def test_an_efi_image_given_by_path_lands_at_its_paths_and_the_fallback(
    kind: BootloaderKind, paths: tuple[str, ...], unified_kernel_image: Path, tmp_path: Path
) -> None:
    target = tmp_path / "target"
    (target / "etc").mkdir(parents=True)
    install = prepare_on_images(
        "debian", target, tmp_path, initramfs=InitramfsMode.SKIP, bootloader=kind, efi_image=unified_kernel_image
    )
    with _esp(target) as esp:
        install.bootloader()
        found = sorted(str(p.relative_to(esp)) for p in esp.rglob("*") if p.is_file())
        assert found == sorted(paths)
        for path in paths:
            assert (esp / path).read_bytes() == unified_kernel_image.read_bytes(), path
