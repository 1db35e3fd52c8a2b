"""What apply set up, recorded in the target for the upkeep commands (status, check, repair,
replace, add, entries, refresh): /etc/esp-mirror/esp-mirror.yaml. Written by the bootloader
hook; ``add`` keeps its member count.

Keys added after the first release have defaults, so a record an older esp-mirror wrote still
loads: its ``members`` is then unknown (None), its ``metrics_dir`` the setting's default, its
``fs_uuid`` the one esp-mirror derives from the array's UUID, its bootloader kind and loader id
the ones its loader path names (:func:`recorded_kind`, :func:`recorded_loader_id`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass, fields

import yaml

from esp_mirror_plugin.errors import BadInput
from esp_mirror_plugin.pipeline import bootloaders
from esp_mirror_plugin.pipeline.kinds import BootloaderKind
from esp_mirror_plugin.pipeline.request import METRICS_DIR, metrics_dir_problem

PATH = "etc/esp-mirror/esp-mirror.yaml"


@dataclass(frozen=True)
class Record:
    profile: str
    array: str  # /dev/md/<name>
    mountpoint: str
    loader: str  # \EFI\...\x.efi: what every boot entry starts
    entry_label: str
    esp_start: int  # bytes
    esp_size: int  # bytes
    members: int | None = None  # md raid devices (add grows it); None: an older record does not say
    metrics_dir: str = METRICS_DIR  # where the weekly check writes esp_mirror.prom, when it exists
    fs_uuid: str | None = None  # the FAT's on the array (XXXX-XXXX); None: an older record does not say
    bootloader: str | None = None  # grub, systemd-boot, efi, zfsbootmenu; None: an older record does not say
    loader_id: str | None = None  # the loader id apply used (\EFI\<loader_id>\); None: an older record does not say
    loader_args: str = ""  # what every boot entry passes its loader (shim: systemd-boot); "": nothing

    def render(self) -> str:
        body = {k: v for k, v in asdict(self).items() if not (k == "loader_args" and not v)}
        return (
            "# Written by esp-mirror apply: what it set up. The upkeep commands (status, check,\n"
            "# repair, replace, add, entries) read it; re-running apply rewrites it.\n"
            + yaml.safe_dump(body, sort_keys=False)
        )


def kind_of_loader(loader: str) -> BootloaderKind:
    """The bootloader kind of a record older than its ``bootloader`` field, from its loader path
    (each kind's ``recognises``: GRUB's and shim's files are named so; any other file is an image
    given by path)."""
    return bootloaders.kind_of_loader(loader)


def recorded_kind(record: Record) -> BootloaderKind:
    """The bootloader kind apply recorded; for a record older than that field, its loader path's."""
    return BootloaderKind(record.bootloader) if record.bootloader else kind_of_loader(record.loader)


def recorded_loader_id(record: Record) -> str:
    """The loader id apply recorded; for a record older than that field, the directory its loader
    is in (``debian`` of ``\\EFI\\debian\\grubx64.efi``)."""
    if record.loader_id is not None:
        return record.loader_id
    parts = record.loader.strip("\\").split("\\")
    return parts[1] if len(parts) > 2 else ""


def path_in(root: str) -> str:
    return os.path.join(root, PATH)


def load(root: str = "/") -> Record | None:
    """The record of the system at ``root``; None when esp-mirror never set it up."""
    path = path_in(root)
    try:
        with open(path) as handle:
            data = yaml.safe_load(handle) or {}
    except FileNotFoundError:
        return None
    except (OSError, yaml.YAMLError) as exc:
        raise BadInput(
            f"{path} cannot be read ({' '.join(str(exc).split())}): run `esp-mirror apply` again to rewrite it"
        ) from None
    names = {f.name for f in fields(Record)}
    required = {f.name for f in fields(Record) if f.default is dataclasses.MISSING}
    if not isinstance(data, dict) or not required <= set(data) or not set(data) <= names:
        raise BadInput(
            f"{path} is not an esp-mirror record (keys {', '.join(sorted(required))}; "
            f"optional {', '.join(sorted(names - required))}): run `esp-mirror apply` again to rewrite it"
        )
    record = Record(**data)
    problem = metrics_dir_problem(record.metrics_dir)
    if problem:
        raise BadInput(f"{path}: metrics_dir {record.metrics_dir!r} {problem}: run `esp-mirror apply` again")
    return record
