"""The bootloader hook's notes about Secure Boot: what the firmware will refuse to start.

With Secure Boot on (read at discovery, :func:`esp_mirror_plugin.system.discovery.secure_boot`)
an unsigned loader does not start from ANY disk, and apply would otherwise succeed in silence.
A note, not a refusal: a machine may be installed with Secure Boot on to be switched off later,
or the key may be enrolled after apply (MOK). Nothing is said when Secure Boot is off or unknown.
"""

from __future__ import annotations

from esp_mirror_plugin.pipeline.kinds import BootloaderKind
from esp_mirror_plugin.pipeline.request import Resolved
from esp_mirror_plugin.system import pe
from esp_mirror_plugin.system.discovery import Snapshot
from esp_mirror_plugin.system.target import Target

SIGN_IMAGE = "sign it (`sbsign --key KEY --cert CERT`) with a key in db or shim's MOK list"


def signed_packages(kind: BootloaderKind, suffix: str = "x64") -> str:
    """The packages of a signed loader of ``kind`` (GRUB or systemd-boot) on the distributions
    that ship them signed; "" for an image given by path (whoever builds it signs it)."""
    arch = "arm64" if suffix == "aa64" else "amd64"
    if kind is BootloaderKind.SYSTEMD_BOOT:
        return f"systemd-boot-efi-{arch}-signed on Debian 13 and later"
    if kind is BootloaderKind.GRUB:
        return f"shim-signed and grub-efi-{arch}-signed on Debian and Ubuntu"
    return ""


def notes(request: Resolved, snapshot: Snapshot, target: Target, loader: str, suffix: str) -> tuple[str, ...]:
    """One line when the loader this plan installs (``loader``, an EFI path; ``suffix`` x64 or
    aa64) carries no signature while the firmware enforces Secure Boot, naming what to do."""
    if not snapshot.secure_boot:
        return ()
    kind = request.bootloader
    if kind.needs_image:
        image = request.efi_image or ""
        try:
            with open(image, "rb") as handle:
                signed = pe.signature(handle.read()).signed
        except OSError:  # the layout refuses an image that is not there
            return ()
        if signed:
            return ()
        return (
            f"Secure Boot is on and {image} carries no signature: the firmware will refuse to start it from "
            f"every disk; {SIGN_IMAGE}",
        )
    if kind is BootloaderKind.SYSTEMD_BOOT:
        signed_file = f"usr/lib/systemd/boot/efi/systemd-boot{suffix}.efi.signed"
        if target.exists(signed_file):
            return ()
        return (
            f"Secure Boot is on and the target has no signed systemd-boot ({target.path(signed_file)}): the "
            f"firmware will refuse to start it from every disk; install {signed_packages(kind, suffix)}",
        )
    if loader.rsplit("\\", 1)[-1].lower().startswith("shim"):
        return ()
    return (
        f"Secure Boot is on and the target has no shim (the entries would start GRUB, {loader}, directly): "
        f"the firmware will refuse to start it from every disk; install {signed_packages(kind, suffix)}, "
        "then plan again",
    )
