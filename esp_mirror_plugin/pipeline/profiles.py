"""Per-distribution profiles: YAML files validated into frozen :class:`Profile` objects.

Built-in profiles ship inside the package (``esp_mirror_plugin/profiles/*.yaml``, the top-level
``profiles/`` directory of the source tree). A user profile is a path to a YAML file that may
``extends:`` a built-in profile (or another file); mappings merge key by key, lists replace.

What differs between releases of one distribution is data too: a profile's ``releases:`` maps a
release (the target's ``/etc/os-release`` ``VERSION_ID``) to the keys that differ there, merged
like ``extends:``. A target gets the entry of the highest release not above its own
(:func:`release_for`); a target without an os-release (an installer's, before the base system is
in) gets none.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from esp_mirror_plugin.errors import BadInput
from esp_mirror_plugin.pipeline.kinds import BootloaderKind, Generator, Init, OwnCheck

# The YAML mirrors these dataclasses: a key per field, a mapping per nested dataclass. Their type
# hints ARE the schema (:func:`_check`): str, bool, a StrEnum (one of its values), Argv (a
# non-empty list of strings), tuple[Argv, ...] (a list of them), Mapping[str, str].
Argv = tuple[str, ...]
NOT_IN_YAML = {"yaml": False}


@dataclass(frozen=True)
class Initramfs:
    generator: Generator
    regenerate: Argv  # "{kver}" in it means one run per installed kernel
    settings: Mapping[str, str] = field(default_factory=dict)  # generator settings (dracut: key="value")
    dropin_dir: bool = False  # mkinitcpio: /etc/mkinitcpio.conf.d/ is read (v36+)

    @property
    def per_kernel(self) -> bool:
        return any("{kver}" in arg for arg in self.regenerate)


@dataclass(frozen=True)
class Grub:
    install: tuple[Argv, ...]  # argv with {grub_target} {esp} {loader_id} placeholders
    loader: str  # the file entries start under \EFI\<loader_id>\; "auto": shim when installed
    # writes GRUB's configuration for the kernels in the target: the bootloader hook's last step
    mkconfig: Argv = ("grub-mkconfig", "-o", "/boot/grub/grub.cfg")


@dataclass(frozen=True)
class SystemdBoot:
    """How a release lays out systemd-boot."""

    # signed by the distribution and started by its signed shim, when the target has both: the
    # entries start shim with systemd-boot as its argument, \EFI\BOOT\ holds shim and its fallback
    # (Debian 13's systemd-boot postinst makes this layout)
    shim: bool = False
    # the packages of the signed systemd-boot ({arch}: amd64, arm64); "": the release ships none
    signed_packages: str = ""


@dataclass(frozen=True)
class Packages:
    install: Argv  # the package manager's install command
    names: Mapping[str, str]  # program -> the package that has it ("": none here, see install_fix)


@dataclass(frozen=True)
class Profile:
    """What differs between distributions. Everything else is the same everywhere."""

    description: str
    esp_mountpoint: str
    mdadm_conf: str
    loader_id: str
    entry_label: str
    bootloader: BootloaderKind
    initramfs: Initramfs
    grub: Grub
    boot_assembly: tuple[Argv, ...]
    periodic_check: tuple[Argv, ...]  # enable the distribution's own md check
    own_check: OwnCheck  # esp-mirror's weekly check: with md's check where the distribution has none
    packages: Packages
    init: Init  # the installed system's init: how heal runs at boot and on hot-plug
    # debconf answers for package upgrades ("owner question" -> "type value"; {array_uuid} is
    # filled in): what GRUB's and shim's maintainer scripts read before they run grub-install
    debconf: Mapping[str, str] = field(default_factory=dict)
    # the installed system assembles md with mdadm (its udev rules, its generator hook), so a
    # target without mdadm is refused; false: the distribution assembles md another way
    needs_mdadm: bool = True
    systemd_boot: SystemdBoot = field(default_factory=SystemdBoot)
    # release -> the keys that differ there (checked like the profile's own); see the module docstring
    releases: Mapping[str, Any] = field(default_factory=dict)
    name: str = field(default="", metadata=NOT_IN_YAML)
    source: str = field(default="", metadata=NOT_IN_YAML)
    release: str = field(default="", metadata=NOT_IN_YAML)  # the releases entry merged in ("": none)
    version: str = field(default="", metadata=NOT_IN_YAML)  # the target's VERSION_ID it was loaded for

    def package_for(self, tool: str) -> str:
        return self.packages.names.get(tool, tool)

    def install_hint(self, tool: str) -> str:
        return " ".join((*self.packages.install, self.package_for(tool)))

    def install_fix(self, tool: str) -> str:
        """What a message tells the user who lacks ``tool``: the command that installs the package
        that ships it, or, when ``packages.names`` does not say which package that is (or names
        it "": the distribution ships none, as a profile that extends another may say), no guess."""
        if self.packages.names.get(tool):
            return f"install it with `{self.install_hint(tool)}`"
        return f"install the package that ships it (the {self.name or 'given'} profile does not name it)"


def builtin_names() -> list[str]:
    return sorted(p.name[:-5] for p in _builtin_dir().iterdir() if p.name.endswith(".yaml"))


def load_profile(name_or_path: str, version: str = "") -> Profile:
    """Load a built-in profile by name or a user profile by path, for a target of release
    ``version`` (its os-release VERSION_ID; "": none known); raise BadInput when invalid."""
    data, source = _load_merged(name_or_path, seen=())
    release = release_for(data.get("releases", {}), version)
    if release:
        data = _merge(data, data["releases"][release])
    _check(data, Profile, source, prefix="", require=True)
    name = Path(source).stem if _is_path(name_or_path) else name_or_path
    profile: Profile = _build(Profile, data, source, name=name, source=source, release=release, version=version)
    return profile


# Keys a release may not change: they decide the Request's defaults, which prepare() fills in
# before anything of the target is read.
_NOT_PER_RELEASE = ("releases", "esp_mountpoint", "bootloader", "loader_id", "entry_label", "description")


def release_for(releases: Mapping[str, Any], version: str) -> str:
    """The entry of ``releases`` for a target of ``version``: the highest release not above it
    (dotted numbers compared as numbers: "24.04" < "24.10"), or "" when none is."""

    def key(text: str) -> tuple[int, ...]:
        return tuple(int(part) if part.isdigit() else -1 for part in text.split("."))

    if not version:
        return ""
    below = [r for r in releases if key(r) <= key(version)]
    return max(below, key=key) if below else ""


def raw_profile_text(name_or_path: str) -> str:
    return _read(_locate(name_or_path))


def extends_chain(name_or_path: str) -> list[str]:
    """The profiles a profile's ``extends:`` names, nearest first (empty when it extends none)."""
    chain: list[str] = []
    location = _locate(name_or_path)
    while True:
        data = _yaml_load(_read(location))
        parent = data.get("extends") if isinstance(data, dict) else None
        if not isinstance(parent, str) or parent in chain:
            return chain
        chain.append(parent)
        location = _locate(parent)


def profile_text(profile: Profile) -> str:
    """The profile as the planner uses it, every key (defaults included), as YAML laid out as the
    built-in files are: a block per mapping, an argv as a flow list. :func:`load_profile` of it
    gives the same profile."""
    return "\n".join(_yaml_lines(_as_data(profile), ""))


def _as_data(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {name: _as_data(getattr(value, name)) for name in _yaml_fields(type(value))}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [_as_data(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _as_data(v) for k, v in value.items()}
    return value


def _yaml_lines(data: dict[str, Any], pad: str) -> list[str]:
    lines = []
    for key, value in data.items():
        if isinstance(value, dict) and value:
            lines += [f"{pad}{_flow(key)}:", *_yaml_lines(value, pad + "  ")]
        elif isinstance(value, list) and value and all(isinstance(v, list) for v in value):
            lines += [f"{pad}{_flow(key)}:", *(f"{pad}  - {_flow(v)}" for v in value)]
        else:
            lines.append(f"{pad}{_flow(key)}: {_flow(value)}")
    return lines


def _flow(value: Any) -> str:
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, allow_unicode=True)
    return str(text).removesuffix("\n").removesuffix("\n...")


def _builtin_dir() -> Traversable:
    return resources.files("esp_mirror_plugin") / "profiles"


def _is_path(name_or_path: str) -> bool:
    return "/" in name_or_path or name_or_path.endswith((".yaml", ".yml"))


def _locate(name_or_path: str) -> Traversable:
    if _is_path(name_or_path):
        path = Path(name_or_path)
        if path.is_dir():
            raise BadInput(f"profile file {name_or_path} is a directory, not a YAML file: give the file")
        if not path.is_file():
            raise BadInput(
                f"profile file {name_or_path} does not exist: give an existing YAML file "
                f"or one of the built-in profiles: {', '.join(builtin_names())}"
            )
        return path
    candidate = _builtin_dir() / f"{name_or_path}.yaml"
    if not candidate.is_file():
        raise BadInput(
            f"unknown profile {name_or_path!r}: use one of {', '.join(builtin_names())} "
            f"or a path to a YAML file (see `esp-mirror profiles`)"
        )
    return candidate


def read_yaml_text(what: str, location: Traversable | Path) -> str:
    """The text of a YAML file the user gave (``what``: "profile file", "config file"), or one
    line naming why it cannot be read."""
    try:
        return location.read_text()
    except OSError as exc:
        raise BadInput(
            f"{what} {location} cannot be read ({exc.strerror}): make it readable, or run esp-mirror as root"
        ) from None
    except UnicodeDecodeError as exc:
        raise BadInput(f"{what} {location} is not UTF-8 text (byte {exc.start}): give a YAML file") from None


def _read(location: Traversable) -> str:
    return read_yaml_text("profile file", location)


def _yaml_load(text: str) -> Any:
    import yaml

    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _load_merged(name_or_path: str, seen: tuple[str, ...]) -> tuple[dict[str, Any], str]:
    import yaml

    location = _locate(name_or_path)
    source = str(location)
    if source in seen:
        raise BadInput(f"profile {source}: `extends` loops back to itself: remove the cycle")
    try:
        data = _yaml_load(_read(location)) or {}
    except yaml.YAMLError as exc:
        raise BadInput(f"profile {source}: not valid YAML ({_one_line(exc)}): fix the syntax") from None
    if not isinstance(data, dict):
        raise BadInput(
            f"profile {source}: must be a mapping of keys, got {type(data).__name__}: write `key: value` lines "
            "(`esp-mirror profiles debian` shows one)"
        )
    parent = data.pop("extends", None)
    if parent is not None and not isinstance(parent, str):
        raise BadInput(
            f"profile {source}: 'extends' must be a string, got {type(parent).__name__} {parent!r}: "
            "name a built-in profile or a YAML file"
        )
    _check(data, Profile, source, prefix="", require=False, extra=("extends",))
    for release, keys in data.get("releases", {}).items():
        if not isinstance(keys, dict):
            raise BadInput(f"profile {source}: 'releases.{release}' must be a mapping of the keys that differ there")
        fixed = sorted(set(keys) & set(_NOT_PER_RELEASE))
        if fixed:
            raise BadInput(
                f"profile {source}: 'releases.{release}' sets {fixed[0]!r}, which is the same for every release: "
                "set it at the top of the profile"
            )
        _check(keys, Profile, source, prefix=f"releases.{release}.", require=False)
    if parent is None:
        return data, source
    base, _ = _load_merged(parent, (*seen, source))
    return _merge(base, data, top=True), source


def _merge(base: dict[str, Any], over: dict[str, Any], top: bool = False) -> dict[str, Any]:
    """``over`` merged into ``base``, mappings key by key; at the top a profile's ``releases``
    replaces its parent's whole (release numbers belong to one distribution: Ubuntu's 24.04 is
    no Debian release)."""
    out = dict(base)
    for key, value in over.items():
        if top and key == "releases":
            out[key] = value
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


@functools.cache
def _yaml_fields(cls: type) -> dict[str, Any]:
    """The fields of a profile dataclass that a YAML file sets, with their resolved types."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.metadata.get("yaml", True)}


def _required(cls: type, name: str) -> bool:
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _check(
    data: dict[str, Any], cls: type, source: str, prefix: str, require: bool, extra: tuple[str, ...] = ()
) -> None:
    """Unknown keys and wrong types always fail; missing keys only for the merged result."""
    schema = _yaml_fields(cls)
    for key, value in data.items():
        where = f"{prefix}{key}"
        if key not in schema:
            allowed = ", ".join(sorted((*schema, *extra)))
            raise BadInput(f"profile {source}: unknown key {where!r}: allowed here are {allowed}")
        kind = schema[key]
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            if not isinstance(value, dict):
                raise BadInput(
                    f"profile {source}: {where!r} must be a mapping with keys {', '.join(sorted(_yaml_fields(kind)))}"
                )
            _check(value, kind, source, f"{where}.", require)
        elif not _type_ok(kind, value):
            raise BadInput(
                f"profile {source}: {where!r} must be {_type_name(kind)}, got {type(value).__name__} {value!r}"
            )
    if require:
        for key, kind in schema.items():
            if key not in data and _required(cls, key):
                raise BadInput(
                    f"profile {source}: missing key {prefix + key!r} "
                    f"({_type_name(kind)}): add it or `extends:` a profile that has it"
                )


def _type_ok(kind: Any, value: Any) -> bool:
    if kind == Argv:
        return isinstance(value, list) and bool(value) and all(isinstance(a, str) for a in value)
    if kind == tuple[Argv, ...]:
        return isinstance(value, list) and all(_type_ok(Argv, v) for v in value)
    if kind == Mapping[str, Any]:  # releases: each entry is checked by _load_merged
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    if typing.get_origin(kind) is Mapping:
        return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return isinstance(value, str)  # which value is checked when the profile is built
    return isinstance(value, kind)


def _type_name(kind: Any) -> str:
    if kind == Argv:
        return "a non-empty list of strings (an argv)"
    if kind == tuple[Argv, ...]:
        return "a list of argv lists"
    if kind == Mapping[str, Any]:
        return 'a mapping of releases (quoted: "13") to the keys that differ there'
    if typing.get_origin(kind) is Mapping:
        return "a mapping of strings to strings"
    if dataclasses.is_dataclass(kind):
        return "a mapping"
    return {str: "a string", bool: "true or false"}.get(kind, "a string")


def _build(cls: type, data: dict[str, Any], origin: str, prefix: str = "", **given: Any) -> Any:
    """The dataclass ``cls`` from checked ``data``: lists become tuples, strings become enums."""
    values: dict[str, Any] = dict(given)
    for key, kind in _yaml_fields(cls).items():
        if key not in data:
            continue
        value = data[key]
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            values[key] = _build(kind, value, origin, f"{prefix}{key}.")
        elif isinstance(kind, type) and issubclass(kind, enum.Enum):
            values[key] = _enum(origin, f"{prefix}{key}", kind, value)
        elif kind == Argv:
            values[key] = tuple(value)
        elif kind == tuple[Argv, ...]:
            values[key] = tuple(tuple(argv) for argv in value)
        elif typing.get_origin(kind) is Mapping:
            values[key] = dict(value)
        else:
            values[key] = value
    return cls(**values)


def _enum(source: str, key: str, choices: type[enum.Enum], value: str) -> Any:
    try:
        return choices(value)
    except ValueError:
        allowed = ", ".join(str(e.value) for e in choices)
        raise BadInput(f"profile {source}: {key!r} is {value!r}: allowed are {allowed}") from None


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
