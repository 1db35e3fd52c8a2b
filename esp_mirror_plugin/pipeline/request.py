"""What the user asked for: one frozen :class:`Request`, from CLI options or a config file.

The Request's fields ARE the settings table: each field's :class:`Setting` metadata says how the
command line spells it (the option, its help) and how a config file's value is read; its default
is the default everywhere. The CLI's options (:func:`esp_mirror_plugin.cli.install_options`),
the config file's keys (:data:`CONFIG_KEYS`) and the defaults all come from here, so adding a
setting is one field. Installers build a Request directly. Values left as None take the
profile's default (:meth:`Request.resolve`).
"""

from __future__ import annotations

import enum
import functools
import os
import re
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from esp_mirror_plugin.errors import BadInput
from esp_mirror_plugin.pipeline.disks import MIB
from esp_mirror_plugin.pipeline.kinds import BootloaderKind, InitramfsMode
from esp_mirror_plugin.pipeline.profiles import read_yaml_text

if TYPE_CHECKING:
    from esp_mirror_plugin.pipeline.profiles import Profile

_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]i?B?|[KMGT]|)\s*$", re.IGNORECASE)
METRICS_DIR = "/var/lib/prometheus/node-exporter"  # Debian's node_exporter textfile collector directory
_PLAIN_PATH = re.compile(r"/[A-Za-z0-9._+,:@=/-]*")


class Kind(enum.Enum):
    """How a setting's value is written on the command line and in a config file."""

    TEXT = "text"
    PATH = "path"  # relative to where the command runs
    PATHS = "paths"  # a list of paths; on the command line the option is repeated
    SIZE = "size"  # "512M", "1G", or a number of MiB
    CHOICE = "choice"  # one value of the field's StrEnum
    FLAG = "flag"  # true/false; on the command line the option alone means true


@dataclass(frozen=True)
class Setting:
    help: str
    kind: Kind = Kind.TEXT
    option: str | None = ""  # "" derives --field-name; None: a config file key only
    metavar: str | None = None
    shown_default: str = ""  # how --help names the default, when the field's default does not say it
    adopt: bool = True  # `esp-mirror adopt` takes it too (it never wipes, and mirrors two disks or more)


def setting(value: Any, help: str, kind: Kind = Kind.TEXT, **extra: Any) -> Any:
    """A Request field that is a user setting: its default ``value``, how it is given and described."""
    return field(default=value, metadata={"setting": Setting(help, kind, **extra)})


@dataclass(frozen=True)
class Request:
    """Everything that decides the plan, besides the profile and the machine's state."""

    disks: tuple[str, ...] = setting(
        (),
        "a whole disk or a disk image file; repeat for each mirror member",
        Kind.PATHS,
        option="--disk",
        metavar="DISK",
    )
    profile: str = setting("debian", "built-in profile name or path to a YAML profile")
    target: str | None = setting(
        None,
        "root of the system being installed (image files need it: they are not this machine's disks)",
        Kind.PATH,
        shown_default="/",
    )
    esp_size: int = setting(512 * MIB, "size of each ESP partition", Kind.SIZE, shown_default="512M")
    esp_start: int = setting(1 * MIB, "where the ESP starts on each disk", Kind.SIZE, option=None)
    mountpoint: str | None = setting(None, "ESP mount point in the target", shown_default="the profile's")
    label: str = setting("ESP", "FAT volume label")
    array_name: str = setting("esp", "md array name: /dev/md/NAME, stored as any:NAME")
    metadata: str = setting("1.0", "md metadata version; only 1.0 is accepted")
    bootloader: BootloaderKind | None = setting(
        None, "what goes on the ESP", Kind.CHOICE, shown_default="the profile's"
    )
    efi_image: str | None = setting(None, "EFI binary for --bootloader efi or zfsbootmenu", Kind.PATH, metavar="PATH")
    loader_id: str | None = setting(None, "directory under \\EFI\\", shown_default="the profile's")
    entry_label: str | None = setting(None, "boot entry label prefix", shown_default="the profile's")
    no_nvram: bool = setting(False, "make no firmware boot entries", Kind.FLAG)
    initramfs: InitramfsMode = setting(InitramfsMode.REGENERATE, "what to do with the initramfs", Kind.CHOICE)
    wipe: bool = setting(
        False,
        "erase the whole disks first (every partition on them; refused while one is in use)",
        Kind.FLAG,
        adopt=False,
    )
    degraded: bool = setting(False, "allow a one-disk mirror", Kind.FLAG, adopt=False)
    metrics_dir: str = setting(
        METRICS_DIR,
        "the installed system's node_exporter textfile directory: the weekly check writes esp_mirror.prom "
        "there when it exists",
        metavar="DIR",
    )
    arch: str = field(default_factory=lambda: os.uname().machine)  # the machine's (platform.machine()), not a setting

    def __post_init__(self) -> None:
        """Installers may write ``bootloader="grub"``; the choices become their enums here."""
        for name, choices in (("bootloader", BootloaderKind), ("initramfs", InitramfsMode)):
            value = getattr(self, name)
            if value is not None and not isinstance(value, choices):
                object.__setattr__(self, name, _choice(choices, value, name, "request"))
        object.__setattr__(self, "disks", tuple(self.disks))

    def resolve(self, profile: Profile) -> Resolved:
        """This request with every profile default filled in."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(
            target=self.target or "/",
            mountpoint=self.mountpoint or profile.esp_mountpoint,
            bootloader=self.bootloader or profile.bootloader,
            loader_id=self.loader_id or profile.loader_id,
            entry_label=self.entry_label or profile.entry_label,
        )
        return Resolved(**values)

    @property
    def device(self) -> str:
        return f"/dev/md/{self.array_name}"


@dataclass(frozen=True)
class Resolved(Request):
    """A request whose profile defaults are filled in (:meth:`Request.resolve`): what hooks get."""

    target: str = "/"
    mountpoint: str = ""
    bootloader: BootloaderKind = BootloaderKind.GRUB
    loader_id: str = ""
    entry_label: str = ""


def settings() -> dict[str, Setting]:
    """The user settings, by field name, in the order of the Request's fields."""
    return {f.name: f.metadata["setting"] for f in fields(Request) if "setting" in f.metadata}


def metrics_dir_problem(path: str) -> str | None:
    """Why ``path`` cannot be the metrics directory the weekly check is given, or None. It goes
    into a systemd unit and a shell script as it is, so it is an absolute path of plain characters."""
    if not _PLAIN_PATH.fullmatch(path) or ".." in path.split("/"):
        return "must be an absolute path of letters, digits and ._+,:@=/- (no spaces or quotes)"
    return None


def default_of(name: str) -> Any:
    return next(f.default for f in fields(Request) if f.name == name)


@functools.cache
def _hints() -> dict[str, Any]:
    return typing.get_type_hints(Request)


def choices(name: str) -> tuple[str, ...]:
    """The values a CHOICE setting takes (its field's StrEnum)."""
    return tuple(str(c.value) for c in _enum_of(_hints()[name]))


CONFIG_KEYS = frozenset(settings())


def parse_size(value: str | int, what: str) -> int:
    """Bytes from "512M", "512MiB", "1G" or a plain number of MiB."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value * MIB
    match = _SIZE.match(str(value))
    if not match:
        raise BadInput(f"{what} {value!r} is not a size: use e.g. 512M or 1G")
    number, unit = int(match.group(1)), (match.group(2) or "M")[0].upper()
    return number * {"K": 1024, "M": MIB, "G": 1024 * MIB, "T": 1024 * 1024 * MIB}[unit]


def load_config(path: str) -> dict[str, Any]:
    """The settings in a YAML config file, checked for unknown keys, as Request keyword values."""
    import yaml

    file = Path(path)
    if file.is_dir():
        raise BadInput(f"config file {path} is a directory, not a YAML file: give the file")
    if not file.is_file():
        raise BadInput(f"config file {path} does not exist: give the path of a YAML file")
    text = read_yaml_text("config file", file)
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise BadInput(f"config file {path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict):
        raise BadInput(f"config file {path}: must be a mapping of settings")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - CONFIG_KEYS)
    if unknown:
        raise BadInput(
            f"config file {path}: unknown setting {unknown[0]!r}: allowed are {', '.join(sorted(CONFIG_KEYS))}"
        )
    return coerce(data, f"config file {path}")


def coerce(values: dict[str, Any], where: str) -> dict[str, Any]:
    """Turn loosely typed settings (YAML or CLI) into Request field values, by each one's kind."""
    table = settings()
    hints = _hints()
    out = dict(values)
    for key, value in values.items():
        if value is None:
            continue
        kind, shown = table[key].kind, key.replace("_", "-")
        if kind is Kind.SIZE:
            out[key] = parse_size(value, f"{where}: {shown}")
        elif kind is Kind.PATHS:
            if not isinstance(value, list | tuple):
                raise BadInput(f"{where}: {shown} must be a list of paths")
            out[key] = tuple(os.path.abspath(str(v)) for v in value)
        elif kind is Kind.PATH:
            out[key] = os.path.abspath(str(value))
        elif kind is Kind.CHOICE:
            out[key] = _choice(_enum_of(hints[key]), value, shown, where)
        elif kind is Kind.FLAG:
            if not isinstance(value, bool):
                raise BadInput(f"{where}: {shown} must be true or false")
        else:
            out[key] = str(value)
    return out


def _enum_of(hint: Any) -> type[enum.Enum]:
    return next(a for a in (*typing.get_args(hint), hint) if isinstance(a, type) and issubclass(a, enum.Enum))


def _choice(choices: type[enum.Enum], value: Any, what: str, where: str) -> Any:
    try:
        return choices(str(value))
    except ValueError:
        allowed = ", ".join(str(e.value) for e in choices)
        raise BadInput(f"{where}: unknown {what} {value!r}: use one of {allowed}") from None
