"""What the user asked for: one frozen :class:`Request`, from CLI options or a config file.

Installers build a Request directly; the CLI builds it from ``--config FILE.yaml`` overlaid with
its options. Values left as None take the profile's default (see :func:`resolve`).
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

from esp_mirror_plugin.errors import BadInput
from esp_mirror_plugin.pipeline.kinds import BootloaderKind, InitramfsMode
from esp_mirror_plugin.pipeline.profiles import Profile

MIB = 1024 * 1024
_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]i?B?|[KMGT]|)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Request:
    """Everything that decides the plan, besides the profile and the machine's state."""

    disks: tuple[str, ...]
    profile: str = "debian"
    target: str = "/"
    esp_size: int = 512 * MIB  # bytes
    esp_start: int = 1 * MIB  # bytes from the start of each disk
    mountpoint: str | None = None  # None: the profile's
    label: str = "ESP"  # the FAT volume label
    array_name: str = "esp"  # /dev/md/<name>, stored as any:<name>
    metadata: str = "1.0"
    bootloader: BootloaderKind | None = None  # None: the profile's
    efi_image: str | None = None
    loader_id: str | None = None  # None: the profile's; \EFI\<loader_id>\
    entry_label: str | None = None  # None: the profile's; entries are "<label> (esp-mirror <disk>)"
    no_nvram: bool = False
    initramfs: InitramfsMode = InitramfsMode.REGENERATE
    wipe: bool = False
    degraded: bool = False
    arch: str = platform.machine()

    def __post_init__(self) -> None:
        """Installers may write ``bootloader="grub"``; the choices become their enums here."""
        for name, enum in (("bootloader", BootloaderKind), ("initramfs", InitramfsMode)):
            value = getattr(self, name)
            if value is not None and not isinstance(value, enum):
                object.__setattr__(self, name, _choice(enum, value, name, "request"))
        object.__setattr__(self, "disks", tuple(self.disks))

    def resolve(self, profile: Profile) -> Request:
        """This request with every profile default filled in."""
        return replace(
            self,
            mountpoint=self.mountpoint or profile.esp_mountpoint,
            bootloader=self.bootloader or profile.bootloader,
            loader_id=self.loader_id or profile.loader_id,
            entry_label=self.entry_label or profile.entry_label,
        )

    @property
    def device(self) -> str:
        return f"/dev/md/{self.array_name}"


# Keys a config file may hold: Request fields; sizes accept "512M", "1G" etc.
CONFIG_KEYS = {f.name for f in fields(Request)} - {"arch"}


def parse_size(value: str | int, what: str) -> int:
    """Bytes from "512M", "512MiB", "1G" or a plain number of MiB."""
    if isinstance(value, int):
        return value * MIB
    match = _SIZE.match(str(value))
    if not match:
        raise BadInput(f"{what} {value!r} is not a size: use e.g. 512M or 1G")
    number, unit = int(match.group(1)), (match.group(2) or "M")[0].upper()
    return number * {"K": 1024, "M": MIB, "G": 1024 * MIB, "T": 1024 * 1024 * MIB}[unit]


def load_config(path: str) -> dict[str, Any]:
    """The settings in a YAML config file, checked for unknown keys, as Request keyword values."""
    file = Path(path)
    if not file.is_file():
        raise BadInput(f"config file {path} does not exist: give the path of a YAML file")
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise BadInput(f"config file {path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict):
        raise BadInput(f"config file {path}: must be a mapping of settings")
    data = {k.replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - CONFIG_KEYS)
    if unknown:
        raise BadInput(f"config file {path}: unknown setting {unknown[0]!r}: allowed are "
                       f"{', '.join(sorted(CONFIG_KEYS))}")
    return coerce(data, f"config file {path}")


def coerce(values: dict[str, Any], where: str) -> dict[str, Any]:
    """Turn loosely typed settings (YAML or CLI) into Request field values."""
    out = dict(values)
    for key in ("esp_size", "esp_start"):
        if key in out and out[key] is not None:
            out[key] = parse_size(out[key], f"{where}: {key.replace('_', '-')}")
    if "disks" in out:
        if not isinstance(out["disks"], list | tuple):
            raise BadInput(f"{where}: disks must be a list of paths")
        out["disks"] = tuple(os.path.abspath(str(d)) for d in out["disks"])
    for key in ("efi_image", "target"):  # relative to where the command runs
        if out.get(key) is not None:
            out[key] = os.path.abspath(str(out[key]))
    if out.get("bootloader") is not None:
        out["bootloader"] = _choice(BootloaderKind, out["bootloader"], "bootloader", where)
    if out.get("initramfs") is not None:
        out["initramfs"] = _choice(InitramfsMode, out["initramfs"], "initramfs", where)
    if "metadata" in out:
        out["metadata"] = str(out["metadata"])
    for key in ("no_nvram", "wipe", "degraded"):
        if key in out and not isinstance(out[key], bool):
            raise BadInput(f"{where}: {key.replace('_', '-')} must be true or false")
    return out


def _choice(enum: type, value: Any, what: str, where: str):
    try:
        return enum(str(value))
    except ValueError:
        allowed = ", ".join(e.value for e in enum)
        raise BadInput(f"{where}: unknown {what} {value!r}: use one of {allowed}") from None
