"""Debian packages the VM harness boots: kernel, busybox, systemd-stub and OVMF.

Everything comes from the machine's own apt sources with ``apt-get download`` and is unpacked
with ``dpkg -x`` into a cache directory, so nothing is installed on the host. A second call finds
the unpacked packages and downloads nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ci.vm.command import HOST_PATH, CommandError, run_command

KERNEL_METAPACKAGE = "linux-image-amd64"
_COMPLETE_STAMP = ".espvm-complete"

# Host tools the harness runs, and the Debian package that provides each. The guest chroots into
# the host root, so the tools that the guest scripts call must be on the host too.
_REQUIRED_TOOLS: dict[str, str] = {
    "qemu-system-x86_64": "qemu-system-x86",
    "apt-get": "apt",
    "apt-cache": "apt",
    "dpkg": "dpkg",
    "objcopy": "binutils",
    "depmod": "kmod",
    "modprobe": "kmod",
    "mcopy": "mtools",
    "mdir": "mtools",
    "sfdisk": "fdisk",
    "sgdisk": "gdisk",
    "mdadm": "mdadm",
    "mkfs.vfat": "dosfstools",
    "efibootmgr": "efibootmgr",
}


class AssetError(RuntimeError):
    """A downloaded file (package content, the EFI stub) is not what the harness expects."""


_APT_HINT = "(if apt cannot find the package, run: apt-get update)"


def default_cache_dir() -> Path:
    """Return ``$ESP_MIRROR_VM_CACHE``, else ``$XDG_CACHE_HOME/esp-mirror-vm`` (~/.cache by default)."""
    explicit = os.environ.get("ESP_MIRROR_VM_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "esp-mirror-vm"


@contextlib.contextmanager
def cache_lock(cache: Path, name: str) -> Iterator[None]:
    """Hold the lock ``name`` of the cache ``cache`` (an flock on ``cache/.NAME.lock``): ci/test's
    two lanes of tests ask for the same assets and roots at once, and the second waits for the
    first to build them instead of building them over it."""
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / f".{name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


def preflight() -> str | None:
    """Say in one line why the harness cannot run on this machine, or return None if it can."""
    if os.geteuid() != 0:
        return "the VM harness must run as root (the guest chroots into the host root over 9p)"
    missing = sorted({pkg for tool, pkg in _REQUIRED_TOOLS.items() if shutil.which(tool, path=HOST_PATH) is None})
    if missing:
        return f"missing host tools; run: apt-get install {' '.join(missing)}"
    return None


def kernel_package() -> str:
    """Return the versioned kernel package that linux-image-amd64 depends on, e.g. linux-image-6.1.0-56-amd64."""
    argv = ["apt-cache", "depends", "--no-recommends", "--no-suggests", KERNEL_METAPACKAGE]
    out = run_command(argv, hint=_APT_HINT).decode()
    for line in out.splitlines():
        key, _, value = line.strip().partition(":")
        if key == "Depends" and value.strip().startswith("linux-image-"):
            return value.strip()
    raise CommandError(f"apt-cache depends {KERNEL_METAPACKAGE} names no linux-image-* package; run: apt-get update")


def second_kernel_package() -> str:
    """The cloud flavour of the kernel :func:`kernel_package` names (linux-image-6.1.0-56-cloud-amd64):
    a second kernel an installed system can install with apt."""
    return kernel_package().removesuffix("-amd64") + "-cloud-amd64"


def package_file(package: str, cache_dir: Path) -> Path:
    """The .deb of ``package``, downloaded into ``cache_dir/deb/`` once."""
    debs = cache_dir / "deb"
    found = sorted(debs.glob(f"{package}_*.deb"))
    if found:
        return found[-1]
    debs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"espvm-{package}-", dir=debs) as tmp:
        Path(tmp).chmod(0o777)  # apt drops to the _apt user to download
        run_command(["apt-get", "download", package], cwd=Path(tmp), hint=_APT_HINT)
        (deb,) = Path(tmp).glob("*.deb")
        return deb.rename(debs / deb.name)


def _unpack(package: str, cache_dir: Path) -> Path:
    """Download ``package`` and unpack it into ``cache_dir/pkg/<package>``, unless already done."""
    root = cache_dir / "pkg" / package
    if (root / _COMPLETE_STAMP).exists():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"espvm-{package}-", dir=root.parent) as tmp:
        tmp_dir = Path(tmp)
        deb = package_file(package, tmp_dir)
        unpacked = tmp_dir / "root"
        run_command(["dpkg", "-x", str(deb), str(unpacked)])
        (unpacked / _COMPLETE_STAMP).write_text(deb.name + "\n")
        shutil.rmtree(root, ignore_errors=True)
        unpacked.rename(root)
    return root


def _one(pattern: str, root: Path) -> Path:
    """Return the single file matching ``pattern`` under ``root``."""
    matches = sorted(root.glob(pattern))
    if len(matches) != 1:
        raise AssetError(f"expected one {pattern} in {root}, found {len(matches)}; delete {root} and retry")
    return matches[0]


@dataclass(frozen=True)
class Assets:
    """Paths to the unpacked packages in the cache."""

    cache_dir: Path
    kver: str
    kernel_root: Path
    vmlinuz: Path
    modules_dir: Path
    busybox: Path
    efi_stub: Path
    ovmf_code: Path
    ovmf_vars: Path
    ovmf_secboot_code: Path  # Secure Boot and SMM (qemu.run_qemu's secure_boot)

    @property
    def ovmf_vars_ms(self) -> Path:
        """NVRAM with Microsoft's keys enrolled and Secure Boot on: shim (signed by Microsoft) boots."""
        return self.ovmf_vars.with_name("OVMF_VARS_4M.ms.fd")

    @property
    def ovmf_vars_snakeoil(self) -> Path:
        """NVRAM whose only key is the snakeoil pair (:attr:`snakeoil_key`), Secure Boot on."""
        return self.ovmf_vars.with_name("OVMF_VARS_4M.snakeoil.fd")

    @property
    def snakeoil_key(self) -> tuple[Path, Path]:
        """(private key, certificate) of the snakeoil NVRAM's key; the key's passphrase is "snakeoil"."""
        share = self.ovmf_vars.parent.parent / "ovmf"
        return share / "PkKek-1-snakeoil.key", share / "PkKek-1-snakeoil.pem"

    @classmethod
    def ensure(cls, cache_dir: Path | None = None) -> Assets:
        """Download and unpack what is missing from the cache, then return the paths."""
        cache = (cache_dir or default_cache_dir()).resolve()
        with cache_lock(cache, "assets"):
            kernel_root = _unpack(kernel_package(), cache)
            busybox_root = _unpack("busybox-static", cache)
            stub_root = _unpack("systemd-boot-efi", cache)
            ovmf_root = _unpack("ovmf", cache)
            vmlinuz = _one("boot/vmlinuz-*", kernel_root)
            kver = vmlinuz.name.removeprefix("vmlinuz-")
            modules_dir = kernel_root / "lib" / "modules" / kver
            if not (modules_dir / "modules.dep").exists():
                run_command(["depmod", "-b", str(kernel_root), kver])
        return cls(
            cache_dir=cache,
            kver=kver,
            kernel_root=kernel_root,
            vmlinuz=vmlinuz,
            modules_dir=modules_dir,
            busybox=busybox_root / "bin" / "busybox",
            efi_stub=stub_root / "usr" / "lib" / "systemd" / "boot" / "efi" / "linuxx64.efi.stub",
            ovmf_code=ovmf_root / "usr" / "share" / "OVMF" / "OVMF_CODE_4M.fd",
            ovmf_vars=ovmf_root / "usr" / "share" / "OVMF" / "OVMF_VARS_4M.fd",
            ovmf_secboot_code=ovmf_root / "usr" / "share" / "OVMF" / "OVMF_CODE_4M.secboot.fd",
        )
