"""Per-distribution profiles: YAML files validated into frozen :class:`Profile` objects.

Built-in profiles ship inside the package (``esp_mirror_plugin/profiles/*.yaml``, the top-level
``profiles/`` directory of the source tree). A user profile is a path to a YAML file that may
``extends:`` a built-in profile (or another file); mappings merge key by key, lists replace.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from esp_mirror_plugin.errors import BadInput
from esp_mirror_plugin.pipeline.kinds import BootloaderKind, Generator, OwnCheck

# The schema: key -> (type, required). A dict value is a nested schema for a mapping.
_ARGV = "argv"  # a list of strings
_ARGV_LIST = "argv-list"  # a list of argv
_SCHEMA: dict[str, Any] = {
    "description": (str, True),
    "extends": (str, False),
    "esp_mountpoint": (str, True),
    "mdadm_conf": (str, True),
    "loader_id": (str, True),
    "entry_label": (str, True),
    "bootloader": (str, True),
    "initramfs": ({
        "generator": (str, True),
        "regenerate": (_ARGV, True),
        "settings": (dict, False),
        "dropin_dir": (bool, False),
    }, True),
    "grub": ({
        "install": (_ARGV_LIST, True),
        "loader": (str, True),
    }, True),
    "boot_assembly": (_ARGV_LIST, True),
    "periodic_check": (_ARGV_LIST, True),
    "own_check": (str, True),
    "packages": ({
        "install": (_ARGV, True),
        "names": (dict, True),
    }, True),
}


@dataclass(frozen=True)
class InitramfsSettings:
    generator: Generator
    regenerate: tuple[str, ...]  # argv; "{kver}" in it means one run per installed kernel
    settings: tuple[tuple[str, str], ...] = ()  # generator settings (dracut: key="value")
    dropin_dir: bool = False  # mkinitcpio: /etc/mkinitcpio.conf.d/ is read (v36+)

    @property
    def per_kernel(self) -> bool:
        return any("{kver}" in arg for arg in self.regenerate)


@dataclass(frozen=True)
class Profile:
    """What differs between distributions. Everything else is the same everywhere."""

    name: str
    source: str
    description: str
    esp_mountpoint: str
    mdadm_conf: str
    loader_id: str
    entry_label: str
    bootloader: BootloaderKind
    initramfs: InitramfsSettings
    grub_install: tuple[tuple[str, ...], ...]  # argv with {grub_target} {esp} {loader_id} placeholders
    grub_loader: str  # the file entries start under \EFI\<loader_id>\; "auto": shim when installed
    boot_assembly: tuple[tuple[str, ...], ...]
    periodic_check: tuple[tuple[str, ...], ...]  # enable the distribution's own md check
    own_check: OwnCheck  # where the distribution has none: esp-mirror's own weekly check
    install_command: tuple[str, ...]
    package_names: tuple[tuple[str, str], ...]

    def package_for(self, tool: str) -> str:
        return dict(self.package_names).get(tool, tool)

    def install_hint(self, tool: str) -> str:
        return " ".join((*self.install_command, self.package_for(tool)))


def builtin_names() -> list[str]:
    return sorted(p.name[:-5] for p in _builtin_dir().iterdir() if p.name.endswith(".yaml"))


def load_profile(name_or_path: str) -> Profile:
    """Load a built-in profile by name or a user profile by path; raise BadInput when invalid."""
    data, source = _load_merged(name_or_path, seen=())
    name = Path(source).stem if _is_path(name_or_path) else name_or_path
    return _build(name, source, data)


def raw_profile_text(name_or_path: str) -> str:
    return _locate(name_or_path).read_text()


def _builtin_dir():
    return resources.files("esp_mirror_plugin") / "profiles"


def _is_path(name_or_path: str) -> bool:
    return "/" in name_or_path or name_or_path.endswith((".yaml", ".yml"))


def _locate(name_or_path: str):
    if _is_path(name_or_path):
        path = Path(name_or_path)
        if not path.is_file():
            raise BadInput(f"profile file {name_or_path} does not exist: give an existing YAML file "
                           f"or one of the built-in profiles: {', '.join(builtin_names())}")
        return path
    candidate = _builtin_dir() / f"{name_or_path}.yaml"
    if not candidate.is_file():
        raise BadInput(f"unknown profile {name_or_path!r}: use one of {', '.join(builtin_names())} "
                       f"or a path to a YAML file (see `esp-mirror profiles`)")
    return candidate


def _load_merged(name_or_path: str, seen: tuple[str, ...]) -> tuple[dict, str]:
    location = _locate(name_or_path)
    source = str(location)
    if source in seen:
        raise BadInput(f"profile {source}: `extends` loops back to itself: remove the cycle")
    try:
        data = yaml.safe_load(location.read_text()) or {}
    except yaml.YAMLError as exc:
        raise BadInput(f"profile {source}: not valid YAML ({_one_line(exc)}): fix the syntax") from None
    if not isinstance(data, dict):
        raise BadInput(f"profile {source}: must be a mapping of keys, got {type(data).__name__}")
    _check(data, _SCHEMA, source, prefix="", require=False)
    parent = data.get("extends")
    if parent is None:
        return data, source
    base, _ = _load_merged(parent, seen + (source,))
    merged = _merge(base, {k: v for k, v in data.items() if k != "extends"})
    return merged, source


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _check(data: dict, schema: dict, source: str, prefix: str, require: bool) -> None:
    """Unknown keys and wrong types always fail; missing keys only for the merged result."""
    for key, value in data.items():
        where = f"{prefix}{key}"
        if key not in schema:
            allowed = ", ".join(sorted(schema))
            raise BadInput(f"profile {source}: unknown key {where!r}: allowed here are {allowed}")
        kind, _ = schema[key]
        if isinstance(kind, dict):
            if not isinstance(value, dict):
                raise BadInput(f"profile {source}: {where!r} must be a mapping with keys "
                               f"{', '.join(sorted(kind))}")
            _check(value, kind, source, f"{where}.", require)
        elif not _type_ok(kind, value):
            raise BadInput(f"profile {source}: {where!r} must be {_type_name(kind)}, "
                           f"got {type(value).__name__} {value!r}")
    if require:
        for key, (kind, required) in schema.items():
            if required and key not in data:
                raise BadInput(f"profile {source}: missing key {prefix + key!r} "
                               f"({_type_name(kind)}): add it or `extends:` a profile that has it")
            if isinstance(kind, dict) and key in data:
                _check(data[key], kind, source, f"{prefix}{key}.", require)


def _type_ok(kind: Any, value: Any) -> bool:
    if kind == _ARGV:
        return isinstance(value, list) and bool(value) and all(isinstance(a, str) for a in value)
    if kind == _ARGV_LIST:
        return isinstance(value, list) and all(_type_ok(_ARGV, v) for v in value)
    if kind is dict:
        return isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    return isinstance(value, kind)


def _type_name(kind: Any) -> str:
    return {_ARGV: "a non-empty list of strings (an argv)", _ARGV_LIST: "a list of argv lists",
            dict: "a mapping of strings to strings", str: "a string", bool: "true or false"}.get(
        kind, "a mapping") if not isinstance(kind, dict) else "a mapping"


def _enum(source: str, key: str, enum: type, value: str):
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(e.value for e in enum)
        raise BadInput(f"profile {source}: {key!r} is {value!r}: allowed are {allowed}") from None


def _build(name: str, source: str, data: dict) -> Profile:
    _check(data, _SCHEMA, source, prefix="", require=True)
    ird = data["initramfs"]
    return Profile(
        name=name,
        source=source,
        description=data["description"],
        esp_mountpoint=data["esp_mountpoint"],
        mdadm_conf=data["mdadm_conf"],
        loader_id=data["loader_id"],
        entry_label=data["entry_label"],
        bootloader=_enum(source, "bootloader", BootloaderKind, data["bootloader"]),
        initramfs=InitramfsSettings(
            generator=_enum(source, "initramfs.generator", Generator, ird["generator"]),
            regenerate=tuple(ird["regenerate"]),
            settings=tuple(ird.get("settings", {}).items()),
            dropin_dir=ird.get("dropin_dir", False),
        ),
        grub_install=tuple(tuple(a) for a in data["grub"]["install"]),
        grub_loader=data["grub"]["loader"],
        boot_assembly=tuple(tuple(a) for a in data["boot_assembly"]),
        periodic_check=tuple(tuple(a) for a in data["periodic_check"]),
        own_check=_enum(source, "own_check", OwnCheck, data["own_check"]),
        install_command=tuple(data["packages"]["install"]),
        package_names=tuple(sorted(data["packages"]["names"].items())),
    )


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
