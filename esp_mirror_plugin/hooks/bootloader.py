"""bootloader: the payload on the mirrored ESP, the removable fallback path, one entry per disk.

What each bootloader kind puts on the ESP, and which file its entries start, is its row of the
table in :mod:`esp_mirror_plugin.pipeline.bootloaders`; this hook plans them for the kind asked.
"""

from __future__ import annotations

import os

from esp_mirror_plugin.hooks import bootentries, installed, secureboot
from esp_mirror_plugin.pipeline import record as records
from esp_mirror_plugin.pipeline.bootloaders import arch_names, fallback_name, on_esp, spec
from esp_mirror_plugin.pipeline.layout import Layout
from esp_mirror_plugin.pipeline.profiles import Profile
from esp_mirror_plugin.pipeline.record import Record
from esp_mirror_plugin.pipeline.request import Resolved
from esp_mirror_plugin.pipeline.steps import CopyFile, Step, WriteFile
from esp_mirror_plugin.system import nvram
from esp_mirror_plugin.system.discovery import Snapshot
from esp_mirror_plugin.system.target import Target


def loader_path(request: Resolved, profile: Profile, target: Target) -> str:
    """The file the boot entries start, as an EFI path with backslashes."""
    suffix, _ = arch_names(request.arch)
    return spec(request.bootloader).loader(request, profile, suffix, target)


def loader_args(request: Resolved, profile: Profile, target: Target) -> str:
    """What the boot entries pass their loader ("": nothing): shim's second stage, for systemd-boot."""
    suffix, _ = arch_names(request.arch)
    return spec(request.bootloader).args(request, profile, suffix, target)


def payload_steps(request: Resolved, profile: Profile, layout: Layout, target: Target) -> tuple[Step, ...]:
    """What goes on the ESP for the kind asked (its loader and the fallback path's copy)."""
    return spec(request.bootloader).payload(request, profile, layout.esp_dir, target, layout.nvram)


def shim_fallback_steps(request: Resolved, profile: Profile, layout: Layout, target: Target) -> tuple[Step, ...]:
    """Shim's fallback (fb<arch>.efi, signed) beside shim at \\EFI\\BOOT\\, for GRUB through
    Debian's shim. Started with no boot entry (fresh NVRAM, a new machine), shim runs it; it
    makes an entry from \\EFI\\<loader_id>\\BOOT<ARCH>.CSV for the disk it started from and
    resets, and ``esp-mirror entries`` folds that entry into ours. Debian's ``grub-install
    --removable`` puts shim, GRUB and MokManager there but leaves the fallback out."""
    if not spec(request.bootloader).shim_fallback or profile.grub.loader != "auto" or not target.has_shim():
        return ()
    suffix, _ = arch_names(request.arch)
    source = f"usr/lib/shim/fb{suffix}.efi.signed"
    if not target.exists(source):
        return ()
    dest = on_esp(layout.esp_dir, f"\\EFI\\BOOT\\fb{suffix}.efi")
    why = "shim's fallback: with no boot entry it makes one for the disk it started from"
    return (CopyFile(str(target.resolve(source)), dest, why=why, root=request.target),)


def record_step(request: Resolved, profile: Profile, loader: str, layout: Layout, args: str = "") -> WriteFile:
    rec = Record(
        profile=profile.name,
        array=request.device,
        mountpoint=request.mountpoint,
        loader=loader,
        entry_label=request.entry_label,
        esp_size=layout.esp_size,
        members=layout.raid_devices,
        metrics_dir=request.metrics_dir,
        fs_uuid=layout.fs_uuid,
        bootloader=request.bootloader.value,
        loader_id=request.loader_id,
        loader_args=args,
        esp_start=layout.esp_start,
    )
    return WriteFile(
        records.path_in(request.target),
        rec.render(),
        root=request.target,
        why="what was set up, for status, check, repair, replace, add and entries",
    )


def plan(
    request: Resolved, profile: Profile, layout: Layout, snapshot: Snapshot, target: Target
) -> tuple[tuple[Step, ...], tuple[str, ...]]:
    """(steps, notes) for the bootloader hook; shim is looked for in the target now."""
    loader = loader_path(request, profile, target)
    args = loader_args(request, profile, target)
    steps = (
        *payload_steps(request, profile, layout, target),
        *shim_fallback_steps(request, profile, layout, target),
        record_step(request, profile, loader, layout, args),
    )
    signing = secureboot.notes(request, profile, snapshot, target, loader, arch_names(request.arch)[0])
    config = spec(request.bootloader).config(request, profile, target)
    if not layout.nvram:
        later = (
            "; `esp-mirror entries` on the installed system makes them, one per disk, once it runs with EFI variables"
            if installed.puts_esp_mirror(target)
            else ""  # esp-mirror is not put there: nothing there to make them
        )
        return steps + config, (
            "no NVRAM boot entries (--no-nvram or no EFI variables): the firmware boots "
            f"each disk through \\EFI\\BOOT\\{fallback_name(request.arch)}{later}",
            *signing,
        )
    members = entry_members(layout)
    state = snapshot.boot or nvram.BootState(None, (), ())
    first = layout.entry_order()
    stray = bootentries.strays(state, os.path.isfile, layout.esp_dir)
    entries = bootentries.plan(state, members, request.entry_label, loader, first, stray, args)
    return steps + entries + config, signing


def entry_members(layout: Layout) -> list[bootentries.Member]:
    """The members as their boot entries name them: disk, tag, partition number and GUID."""
    return [bootentries.Member(disk=m.disk.path, tag=m.tag, part=m.number, partuuid=m.guid) for m in layout.members]
