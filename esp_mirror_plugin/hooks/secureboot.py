"""The bootloader hook's notes about Secure Boot: what the firmware will refuse to start.

With Secure Boot on (read at discovery, :func:`esp_mirror_plugin.system.discovery.secure_boot`)
an unsigned loader does not start from ANY disk, and apply would otherwise succeed in silence.
A note, not a refusal: a machine may be installed with Secure Boot on to be switched off later,
or the key may be enrolled after apply (MOK). Nothing is said when Secure Boot is off or unknown.
What counts as signed, and what to install, is the kind's row
(:mod:`esp_mirror_plugin.pipeline.bootloaders`: ``unsigned``, ``signed_packages``).
"""

from __future__ import annotations

from esp_mirror_plugin.pipeline.bootloaders import spec
from esp_mirror_plugin.pipeline.profiles import Profile
from esp_mirror_plugin.pipeline.request import Resolved
from esp_mirror_plugin.system.discovery import Snapshot
from esp_mirror_plugin.system.target import Target


def notes(
    request: Resolved, profile: Profile, snapshot: Snapshot, target: Target, loader: str, suffix: str
) -> tuple[str, ...]:
    """One line when the loader this plan installs (``loader``, an EFI path; ``suffix`` x64 or
    aa64) carries no signature while the firmware enforces Secure Boot, naming what to do."""
    if not snapshot.secure_boot:
        return ()
    problem = spec(request.bootloader).unsigned(request, profile, target, loader, suffix)
    return (problem,) if problem else ()
