"""The EFI payload: a unified kernel image (systemd-stub + Debian kernel + payload initrd).

This is the file esp-mirror installs on the ESP. The stub's built-in command line is used both
at the removable-media path \\EFI\\BOOT\\BOOTX64.EFI (where the firmware passes none) and from an
NVRAM entry without optional data. systemd-stub sets LoaderDevicePartUUID, which names the
partition the firmware loaded it from.
"""

from __future__ import annotations

import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ci.vm.assets import AssetError, Assets
from ci.vm.command import run_command
from ci.vm.initrd import payload_initrd

PAYLOAD_CMDLINE = "console=ttyS0 panic=-1 quiet"
_OS_RELEASE = 'ID=espvm\nNAME="esp-mirror VM payload"\n'
_PAGE = 4096


@dataclass(frozen=True)
class PeLayout:
    """The two facts about a PE image that placing new sections needs."""

    image_base: int
    section_alignment: int
    end_of_sections: int  # relative virtual address just past the last section


def pe_layout(image: bytes) -> PeLayout:
    """Parse the PE/COFF headers of a PE32+ image (like systemd's linuxx64.efi.stub)."""
    (pe_offset,) = struct.unpack_from("<I", image, 0x3C)
    if image[pe_offset : pe_offset + 4] != b"PE\0\0":
        raise AssetError("the EFI stub is not a PE image")
    coff = pe_offset + 4
    _machine, sections, _time, _symtab, _symbols, optional_size, _flags = struct.unpack_from("<HHIIIHH", image, coff)
    optional = coff + 20
    (magic,) = struct.unpack_from("<H", image, optional)
    if magic != 0x20B:
        raise AssetError(f"the EFI stub is not PE32+ (optional header magic {magic:#x})")
    (image_base,) = struct.unpack_from("<Q", image, optional + 24)
    (section_alignment,) = struct.unpack_from("<I", image, optional + 32)
    table = optional + optional_size
    end = 0
    for index in range(sections):
        virtual_size, virtual_address = struct.unpack_from("<II", image, table + 40 * index + 8)
        end = max(end, virtual_address + virtual_size)
    return PeLayout(image_base, section_alignment, end)


def _align(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


def build_payload(assets: Assets, output: Path) -> Path:
    """Write the unified kernel image to ``output`` (atomically, so concurrent builds are safe) and return it.

    New sections go after the stub's last one, each at a page-aligned virtual address (a multiple
    of the stub's SectionAlignment), as systemd's documentation for objcopy describes.
    """
    layout = pe_layout(assets.efi_stub.read_bytes())
    alignment = max(layout.section_alignment, _PAGE)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".espvm-uki-", dir=output.parent) as tmp:
        parts = {
            ".osrel": _OS_RELEASE.encode(),
            ".cmdline": PAYLOAD_CMDLINE.encode() + b"\0",
            ".linux": assets.vmlinuz.read_bytes(),
            ".initrd": payload_initrd(assets),
        }
        argv = ["objcopy"]
        address = _align(layout.end_of_sections, alignment)
        for name, data in parts.items():
            part = Path(tmp) / name.lstrip(".")
            part.write_bytes(data)
            argv += [
                "--add-section", f"{name}={part}",
                "--change-section-vma", f"{name}={layout.image_base + address:#x}",
            ]  # fmt: skip
            address = _align(address + len(data), alignment)
        staged = Path(tmp) / output.name
        argv += [str(assets.efi_stub), str(staged)]
        run_command(argv)
        staged.replace(output)
    return output


def snakeoil_signed(assets: Assets, image: Path, output: Path) -> Path:
    """``image`` signed with OVMF's snakeoil key (sbsign), written to ``output``: the one image
    OVMF's Secure Boot build starts with the snakeoil NVRAM (images.fresh_vars ``keys``)."""
    key, cert = assets.snakeoil_key
    with tempfile.TemporaryDirectory(prefix="espvm-snakeoil-") as tmp:
        plain_key = Path(tmp) / "key.pem"  # sbsign asks for a passphrase on a terminal; openssl takes it
        run_command(["openssl", "pkey", "-in", str(key), "-passin", "pass:snakeoil", "-out", str(plain_key)])
        run_command(["sbsign", "--key", str(plain_key), "--cert", str(cert), "--output", str(output), str(image)])
    return output
