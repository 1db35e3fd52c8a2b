"""esp-mirror as one file: a Python zip application with its pure-Python dependencies.

apply puts it on the installed system (``/usr/local/sbin/esp-mirror``), so that the upkeep
commands and the periodic check run the same esp-mirror version that set the mirror up, on any
distribution with Python 3.11 or later, without a package of its own. It holds
``esp_mirror_plugin`` (with the profiles), pluggy, PyYAML (its pure-Python part: PyYAML falls
back to it without libyaml) and sh, taken from where this esp-mirror runs (a venv, a wheel
install, or this very zip application), and starts ``esp_mirror_plugin.cli.main``.

The archive is the same bytes for the same sources and Python (fixed times and order), so
``plan`` can show its size and sha256 and apply writes exactly that. Next to each module it holds
the module's bytecode (``name.pyc``, the layout zipimport looks for; hash-based and unchecked,
PEP 552): a zip's modules are otherwise compiled on every start, which costs esp-mirror ~0.1 s
natively and seconds under emulation, at boot, weekly and every few minutes for the metrics. The
code is marshalled in format 2, whose bytes do not depend on what the process has loaded (format
3's back-references follow reference counts). A python3 of another version skips the bytecode
(its magic number differs) and compiles the sources, as before.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import io
import marshal
import os
import zipfile
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from importlib.util import MAGIC_NUMBER, source_hash
from pathlib import Path

PACKAGES = ("esp_mirror_plugin", "pluggy", "yaml", "sh")
DISTRIBUTIONS = {"esp_mirror_plugin": "esp-mirror-plugin", "pluggy": "pluggy", "yaml": "PyYAML", "sh": "sh"}
SHEBANG = b"#!/usr/bin/env python3\n"
MAIN = "import sys\n\nfrom esp_mirror_plugin.cli import main\n\nsys.exit(main())\n"
VERSIONS = "ESP_MIRROR_VERSIONS"  # what is inside, one "distribution version" per line
_WHEN = (1980, 1, 1, 0, 0, 0)  # zip's earliest time: the same bytes on every build
_KEEP = (".py", ".yaml", ".typed", ".8")  # .8: the manual page (esp_mirror_plugin/man)
_KEEP_NAMES = ("esp-mirror",)  # the bash completion (esp_mirror_plugin/completion), named after the command


@dataclass(frozen=True)
class Zipapp:
    data: bytes
    versions: tuple[tuple[str, str], ...]  # (distribution, version) of what is inside

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def summary(self) -> str:
        """What the plan says it is (the step adds its size and sha256)."""
        inside = ", ".join(f"{name} {version}" for name, version in self.versions)
        return f"esp-mirror as one Python zip application ({inside}), run by the target's python3"


def _files(package: str) -> list[tuple[str, bytes]]:
    """(path in the archive, content) of a package's modules and data, from wherever it is."""
    out: list[tuple[str, bytes]] = []

    def walk(node: Traversable, prefix: str) -> None:
        for child in node.iterdir():
            name = f"{prefix}/{child.name}"
            if child.is_dir():
                if child.name != "__pycache__":
                    walk(child, name)
            elif child.name.endswith(_KEEP) or child.name in _KEEP_NAMES:
                out.append((name, child.read_bytes()))

    walk(_package_root(package), package)
    return out


def _package_root(package: str) -> Traversable:
    """The directory of an imported package, on disk or inside a zip archive (this application).

    Found from the module's ``__file__``: sh replaces its module object in ``sys.modules`` and so
    has no ``__spec__`` for importlib.resources to follow.
    """
    module = importlib.import_module(package)
    directory = os.path.dirname(module.__file__ or "")
    if os.path.isdir(directory):
        return Path(directory)
    archive, inner = directory, ""
    while archive and not os.path.isfile(archive):
        archive, tail = os.path.split(archive)
        inner = f"{tail}/{inner}"
    return zipfile.Path(archive, at=inner)


def _version(package: str) -> str:
    from importlib import metadata  # only when building from a directory: it costs ~20 ms to import

    try:
        return metadata.version(DISTRIBUTIONS[package])
    except metadata.PackageNotFoundError:
        if package == "esp_mirror_plugin":
            from esp_mirror_plugin import __version__

            return __version__
        return "as found"


@functools.cache
def build() -> Zipapp:
    """The zip application of the running esp-mirror (made once per process). When esp-mirror
    runs from such a zip application itself, that is the one: its bytes are taken as they are."""
    running = _running_archive()
    if running is not None:
        with zipfile.ZipFile(running) as archive:
            listed = archive.read(VERSIONS).decode().splitlines()
        return Zipapp(Path(running).read_bytes(), tuple(tuple(line.split(" ", 1)) for line in listed))  # type: ignore[misc]
    versions = tuple((DISTRIBUTIONS[p], _version(p)) for p in PACKAGES)
    entries = {
        "__main__.py": MAIN.encode(),
        VERSIONS: "".join(f"{name} {version}\n" for name, version in versions).encode(),
    }
    for package in PACKAGES:
        entries.update(_files(package))
    entries.update({f"{name}c": _bytecode(name, data) for name, data in list(entries.items()) if name.endswith(".py")})
    buffer = io.BytesIO()
    buffer.write(SHEBANG)
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, data in sorted(entries.items()):
            _add(archive, name, data)
    return Zipapp(buffer.getvalue(), versions)


_UNCHECKED_HASH = (0b01).to_bytes(4, "little")  # PEP 552 flags: hash-based, source not checked
_MARSHAL_FORMAT = 2  # no back-references: the same bytes in every process (see the module docstring)


def _bytecode(name: str, source: bytes) -> bytes:
    """The .pyc zipimport loads instead of compiling ``name`` (a path inside the archive)."""
    code = compile(source, name, "exec", dont_inherit=True, optimize=0)
    return MAGIC_NUMBER + _UNCHECKED_HASH + source_hash(source) + marshal.dumps(code, _MARSHAL_FORMAT)


def _running_archive() -> str | None:
    """The zip application esp-mirror runs from, or None when it runs from a directory."""
    import esp_mirror_plugin

    path = os.path.dirname(esp_mirror_plugin.__file__ or "")
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    return path if os.path.isfile(path) and zipfile.is_zipfile(path) else None


def _add(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=_WHEN)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    archive.writestr(info, data, compresslevel=1)
