"""esp-mirror: a redundant EFI System Partition on every disk.

The ESP becomes an md RAID1 array with metadata 1.0 (superblock at the end, so the firmware reads
each member as a plain FAT32), and every member disk gets its own firmware boot entry.

The hook markers live here, as in pluggy's eggsample. The marker project name, the PluginManager
name and the entry-point group are the same string, :data:`PROJECT`.
"""

import pluggy

PROJECT = "esp_mirror"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)
__version__ = "0.1.0"  # keep equal to pyproject.toml's version

__all__ = ["PROJECT", "hookimpl", "hookspec", "__version__"]
