"""Decode the EFI variables that the payload prints as hex on the serial port."""

from __future__ import annotations

import re
import struct
import uuid
from dataclasses import dataclass

from ci.vm.initrd import DONE_MARKER, VAR_MARKER

_VAR_LINE = re.compile(rf"{VAR_MARKER} (?P<name>[A-Za-z0-9]+)-(?P<guid>[0-9a-f-]{{36}}) (?P<hex>[0-9a-f]*)")

_MEDIA_DEVICE_PATH = 0x04
_HARD_DRIVE = 0x01
_FILE_PATH = 0x04
_END_OF_PATH = 0x7F
_SIGNATURE_GUID = 0x02


@dataclass(frozen=True)
class LoadOption:
    """A decoded EFI_LOAD_OPTION (the value of a Boot#### variable)."""

    description: str
    partuuid: str | None  # GUID of the HD() media node, lowercase; None for a whole-device path
    file_path: str | None  # the File() media node, e.g. \\EFI\\BOOT\\BOOTX64.EFI


def ucs2(data: bytes) -> str:
    """Decode a UCS-2 (UTF-16LE) string, stopping at the first NUL."""
    text = data.decode("utf-16-le", errors="replace")
    return text.split("\0", 1)[0]


def boot_number(data: bytes) -> str:
    """Decode a UINT16 variable (BootCurrent) as the 4 hex digits of a Boot#### name."""
    (number,) = struct.unpack_from("<H", data)
    return f"{number:04X}"


def boot_order(data: bytes) -> tuple[str, ...]:
    """Decode BootOrder (a UINT16 array) into Boot#### numbers."""
    return tuple(f"{number:04X}" for number in struct.unpack(f"<{len(data) // 2}H", data))


def load_option(data: bytes) -> LoadOption:
    """Decode an EFI_LOAD_OPTION: attributes, path list length, UCS-2 description, device path."""
    _attributes, path_length = struct.unpack_from("<IH", data)
    description_end = 6
    while data[description_end : description_end + 2] != b"\0\0":
        description_end += 2
    description = ucs2(data[6:description_end])
    path = data[description_end + 2 : description_end + 2 + path_length]
    partuuid: str | None = None
    files: list[str] = []
    offset = 0
    while offset + 4 <= len(path):
        node_type, subtype, length = struct.unpack_from("<BBH", path, offset)
        if node_type == _END_OF_PATH or length < 4:
            break
        body = path[offset + 4 : offset + length]
        if node_type == _MEDIA_DEVICE_PATH and subtype == _HARD_DRIVE and body[37] == _SIGNATURE_GUID:
            partuuid = str(uuid.UUID(bytes_le=body[20:36]))
        elif node_type == _MEDIA_DEVICE_PATH and subtype == _FILE_PATH:
            files.append(ucs2(body))
        offset += length
    return LoadOption(description, partuuid, "".join(files) or None)


def serial_variables(serial_text: str) -> dict[str, bytes] | None:
    """Return the variables printed by the payload (name → data without the attributes word).

    Return None unless the payload's done marker is in the log. Names have no GUID suffix.
    """
    if DONE_MARKER not in serial_text:
        return None
    found: dict[str, bytes] = {}
    for match in _VAR_LINE.finditer(serial_text):
        found[match["name"]] = bytes.fromhex(match["hex"])[4:]
    return found
