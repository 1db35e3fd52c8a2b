"""esp-mirror: a redundant EFI System Partition on every disk.

The ESP becomes an md RAID1 array with metadata 1.0 (superblock at the end, so the firmware reads
each member as a plain FAT32), and every member disk gets its own firmware boot entry.

The hook markers live here, as in pluggy's eggsample. The marker project name, the PluginManager
name and the entry-point group are the same string, :data:`PROJECT`.

What an installer uses is importable from here: :mod:`host` (the PluginManager and
``attached``), :func:`prepare`, :class:`Request`, the executors :class:`Applier` and
:class:`PlanRecorder`, and :mod:`hookspecs`. They are imported on first use, so that
``esp-mirror --version`` loads none of them. This module is the bottom layer (ARCHITECTURE.md):
it imports no module of the package, the public API being looked up by name, so a type checker
sees those names as ``Any``; an installer that wants their types imports them from their modules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

PROJECT = "esp_mirror"
__version__ = "0.1.0"  # the one version: pyproject.toml reads it, tests/unit/test_version.py ties galaxy.yml to it

if TYPE_CHECKING:  # the markers' types; the package's modules are never imported from here
    import pluggy

    hookspec: pluggy.HookspecMarker
    hookimpl: pluggy.HookimplMarker

_PUBLIC = {
    "host": ("esp_mirror_plugin.host", None),
    "hookspecs": ("esp_mirror_plugin.hookspecs", None),
    "prepare": ("esp_mirror_plugin.pipeline.context", "prepare"),
    "Request": ("esp_mirror_plugin.pipeline.request", "Request"),
    "Applier": ("esp_mirror_plugin.pipeline.execute", "Applier"),
    "PlanRecorder": ("esp_mirror_plugin.pipeline.execute", "PlanRecorder"),
}


def __getattr__(name: str) -> Any:
    """The markers and the public API, made or imported when first asked for (PEP 562)."""
    if name in ("hookspec", "hookimpl"):
        import pluggy

        globals()["hookspec"] = pluggy.HookspecMarker(PROJECT)
        globals()["hookimpl"] = pluggy.HookimplMarker(PROJECT)
        return globals()[name]
    if name in _PUBLIC:
        module, attr = _PUBLIC[name]
        value = importlib.import_module(module)
        return getattr(value, attr) if attr else value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PROJECT",
    "Applier",
    "PlanRecorder",
    "Request",
    "__version__",
    "hookimpl",
    "hookspec",
    "hookspecs",
    "host",
    "prepare",
]
