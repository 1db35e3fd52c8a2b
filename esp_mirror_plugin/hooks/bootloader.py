"""bootloader: the payload on the mirrored ESP, the removable fallback path, one entry per disk.

Every kind also puts a copy of its loader at \\EFI\\BOOT\\BOOTX64.EFI (BOOTAA64.EFI on aarch64),
so a machine that has never seen the disks (fresh NVRAM, a CI image) still boots from any one.

systemd-boot: bootctl refuses an ESP that is not a plain partition, so it runs with
SYSTEMD_RELAX_ESP_CHECKS=1 and --no-variables (esp-mirror makes the entries). sd-boot refreshes
``\\loader\\random-seed`` from UEFI on every boot when that file exists; such a write lands on ONE
member behind md's back. So the seed file is removed and the units that would recreate it are
masked (systemd-boot-random-seed.service; systemd-boot-system-token.service before systemd 253):
no file, no firmware-side writes.
"""

from __future__ import annotations

import os

from esp_mirror_plugin.errors import BadInput
from esp_mirror_plugin.hooks import anycaller, bootentries, secureboot
from esp_mirror_plugin.pipeline import record as records
from esp_mirror_plugin.pipeline.kinds import BootloaderKind
from esp_mirror_plugin.pipeline.layout import Layout
from esp_mirror_plugin.pipeline.profiles import Profile
from esp_mirror_plugin.pipeline.record import Record
from esp_mirror_plugin.pipeline.request import Resolved
from esp_mirror_plugin.pipeline.steps import Command, CopyFile, MakeDir, Step, WriteFile
from esp_mirror_plugin.system import nvram
from esp_mirror_plugin.system.discovery import Snapshot
from esp_mirror_plugin.system.target import Target

_ARCH = {
    "x86_64": ("x64", "x86_64-efi"),
    "aarch64": ("aa64", "arm64-efi"),
}


def arch_names(arch: str) -> tuple[str, str]:
    """(EFI suffix, grub target) for the machine architecture."""
    if arch not in _ARCH:
        raise BadInput(f"architecture {arch} is not supported: esp-mirror knows x86_64 and aarch64")
    return _ARCH[arch]


def fallback_name(arch: str) -> str:
    return f"BOOT{arch_names(arch)[0].upper()}.EFI"


def loader_path(request: Resolved, profile: Profile, has_shim: bool) -> str:
    """The file the boot entries start, as an EFI path with backslashes."""
    suffix, _ = arch_names(request.arch)
    kind = request.bootloader
    if kind is BootloaderKind.EFI:
        return f"\\EFI\\{request.loader_id}\\{os.path.basename(request.efi_image or '')}"
    if kind is BootloaderKind.ZFSBOOTMENU:
        return "\\EFI\\ZBM\\VMLINUZ.EFI"
    if kind is BootloaderKind.SYSTEMD_BOOT:
        return f"\\EFI\\systemd\\systemd-boot{suffix}.efi"
    name = profile.grub.loader
    if name == "auto":
        name = f"{'shim' if has_shim else 'grub'}{suffix}.efi"
    return f"\\EFI\\{request.loader_id}\\{name}"


def _fill(arg: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        arg = arg.replace(key, value)
    return arg


def payload_steps(request: Resolved, profile: Profile, layout: Layout) -> tuple[Step, ...]:
    kind = request.bootloader
    fallback = f"\\EFI\\BOOT\\{fallback_name(request.arch)}"
    _, grub_target = arch_names(request.arch)
    steps: list[Step] = []
    if kind.needs_image:
        image = request.efi_image
        assert image is not None  # check_settings refuses the request without one
        copies = (
            [loader_path(request, profile, False)]
            if kind is BootloaderKind.EFI
            else ["\\EFI\\ZBM\\VMLINUZ.EFI", "\\EFI\\ZBM\\VMLINUZ-BACKUP.EFI"]
        )
        for efi_path in (*copies, fallback):
            dest = bootentries.on_esp(layout.esp_dir, efi_path)
            directory = MakeDir(os.path.dirname(dest), why="directory on the ESP", root=request.target)
            if directory not in steps:
                steps.append(directory)
            steps.append(CopyFile(image, dest, why=f"{kind} image at {efi_path}", root=request.target))
    elif kind is BootloaderKind.SYSTEMD_BOOT:
        steps.append(
            Command(
                ("bootctl", "install", f"--esp-path={request.mountpoint}", "--no-variables"),
                root=request.target,
                env=(("SYSTEMD_RELAX_ESP_CHECKS", "1"),),
                why="systemd-boot (and its own \\EFI\\BOOT copy) onto the array; entries are ours",
            )
        )
        steps.append(
            Command(
                ("rm", "-f", os.path.join(request.mountpoint, anycaller.RANDOM_SEED)),
                root=request.target,
                why="no seed file: sd-boot then never writes to one member from UEFI",
            )
        )
        steps.append(
            Command(
                ("systemctl", "mask", "systemd-boot-random-seed.service", "systemd-boot-system-token.service"),
                root=request.target,
                why="they would recreate the seed file (the unit's name before systemd 253: "
                "systemd-boot-system-token.service)",
            )
        )
    else:
        values = {"{grub_target}": grub_target, "{esp}": request.mountpoint, "{loader_id}": request.loader_id}
        for argv in profile.grub.install:
            steps.append(
                Command(
                    tuple(_fill(a, values) for a in argv),
                    root=request.target,
                    why=f"GRUB on the array (\\EFI\\{request.loader_id}\\ and {fallback}); "
                    "the NVRAM entries are made per disk below",
                )
            )
    return tuple(steps)


def shim_fallback_steps(request: Resolved, profile: Profile, layout: Layout, target: Target) -> tuple[Step, ...]:
    """Shim's fallback (fb<arch>.efi, signed) beside shim at \\EFI\\BOOT\\, for GRUB through
    Debian's shim. Started with no boot entry (fresh NVRAM, a new machine), shim runs it; it
    makes an entry from \\EFI\\<loader_id>\\BOOT<ARCH>.CSV for the disk it started from and
    resets, and ``esp-mirror entries`` folds that entry into ours. Debian's ``grub-install
    --removable`` puts shim, GRUB and MokManager there but leaves the fallback out."""
    if request.bootloader is not BootloaderKind.GRUB or profile.grub.loader != "auto" or not target.has_shim():
        return ()
    suffix, _ = arch_names(request.arch)
    source = f"usr/lib/shim/fb{suffix}.efi.signed"
    if not target.exists(source):
        return ()
    dest = bootentries.on_esp(layout.esp_dir, f"\\EFI\\BOOT\\fb{suffix}.efi")
    why = "shim's fallback: with no boot entry it makes one for the disk it started from"
    return (CopyFile(str(target.resolve(source)), dest, why=why, root=request.target),)


def record_step(request: Resolved, profile: Profile, loader: str, layout: Layout) -> WriteFile:
    rec = Record(
        profile=profile.name,
        array=request.device,
        mountpoint=request.mountpoint,
        loader=loader,
        entry_label=request.entry_label,
        esp_start=request.esp_start,
        esp_size=layout.esp_size,
        members=layout.raid_devices,
        metrics_dir=request.metrics_dir,
        fs_uuid=layout.fs_uuid,
        bootloader=request.bootloader.value,
        loader_id=request.loader_id,
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
    loader = loader_path(request, profile, target.has_shim())
    steps = (
        *payload_steps(request, profile, layout),
        *shim_fallback_steps(request, profile, layout, target),
        record_step(request, profile, loader, layout),
    )
    signing = secureboot.notes(request, snapshot, target, loader, arch_names(request.arch)[0])
    if not layout.nvram:
        return steps, (
            "no NVRAM boot entries (--no-nvram or no EFI variables): the firmware boots "
            f"each disk through \\EFI\\BOOT\\{fallback_name(request.arch)}",
            *signing,
        )
    members = entry_members(layout)
    state = snapshot.boot or nvram.BootState(None, (), ())
    first = None
    if layout.adoption is not None:  # the live ESP is wiped and rebuilt after this: its disk boots last until then
        live = layout.adoption.live.guid
        first = (*(m.partuuid for m in members if m.partuuid != live), live)
    stray = bootentries.strays(state, os.path.isfile, layout.esp_dir)
    return steps + bootentries.plan(state, members, request.entry_label, loader, first, stray), signing


def entry_members(layout: Layout) -> list[bootentries.Member]:
    """The members as their boot entries name them: disk, tag, partition number and GUID."""
    return [bootentries.Member(disk=m.disk.path, tag=m.tag, part=m.number, partuuid=m.guid) for m in layout.members]
