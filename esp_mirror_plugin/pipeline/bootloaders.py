"""The bootloader kinds, one table: what each puts on the ESP and everything else that differs.

:class:`~esp_mirror_plugin.pipeline.kinds.BootloaderKind` is the closed set of names
(``--bootloader``, a profile's ``bootloader``, the record's ``bootloader``); :class:`Bootloader` is
one kind's row, :func:`spec` reads it. Every
place that does something differently for one kind reads its row, never the kind's name: the
bootloader hook (:mod:`esp_mirror_plugin.hooks.bootloader`: loader path, payload, shim's
fallback), the Secure Boot notes, the settings for upgrades and for whoever runs them
(:mod:`esp_mirror_plugin.hooks.upgrades`, :mod:`esp_mirror_plugin.hooks.anycaller`), adopt's
check of the live ESP, the layout's refusal without ``--efi-image``, and the upkeep commands
through the record (:func:`esp_mirror_plugin.pipeline.record.recorded_kind`).

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
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from esp_mirror_plugin.errors import BadInput
from esp_mirror_plugin.pipeline.kinds import BootloaderKind
from esp_mirror_plugin.pipeline.steps import Command, CopyFile, MakeDir, Step, UuidLink, WriteFile
from esp_mirror_plugin.system import pe

if TYPE_CHECKING:
    from esp_mirror_plugin.pipeline.profiles import Profile
    from esp_mirror_plugin.pipeline.request import Resolved
    from esp_mirror_plugin.system.target import Target


# Where the file the entries start is on the ESP, from (request, profile, EFI suffix, the target).
LoaderPath = Callable[["Resolved", "Profile", str, "Target"], str]
# What the entries pass the loader (efibootmgr --unicode), from the same; "": nothing.
LoaderArgs = Callable[["Resolved", "Profile", str, "Target"], str]
# The steps that put the kind's files on the mounted array, from (request, profile, where the ESP
# is mounted, the target, whether esp-mirror makes NVRAM boot entries: the steps' words say what
# follows them).
Payload = Callable[["Resolved", "Profile", str, "Target", bool], tuple[Step, ...]]
# After the payload, when the target has kernels: what writes the kind's configuration for them
# (GRUB's grub.cfg), from (request, profile, the target).
Config = Callable[["Resolved", "Profile", "Target"], tuple[Step, ...]]
# With Secure Boot on: the note when the loader will not start, or None, from
# (request, target, loader path, EFI suffix).
Unsigned = Callable[["Resolved", "Profile", "Target", str, str], "str | None"]


@dataclass(frozen=True)
class Bootloader:
    """One bootloader kind: everything esp-mirror does differently for it."""

    loader: LoaderPath  # the file every boot entry starts, as an EFI path with backslashes
    payload: Payload  # what goes on the ESP (the bootloader hook, before the entries)
    args: LoaderArgs  # what every boot entry passes the loader (shim: its second stage)
    config: Config  # the kind's configuration for the target's kernels (the hook's last steps)
    unsigned: Unsigned  # the Secure Boot note: the loader carries no signature the firmware accepts
    # a record older than its bootloader field names this kind when its loader path passes this;
    # None: the kind of any loader path no other kind recognises (exactly one kind)
    recognises: Callable[[str], bool] | None
    needs_image: bool = False  # the payload is the file given with --efi-image (the layout refuses without)
    signed_packages: str = ""  # the packages of its signed loader ({arch}: amd64, arm64); "": none ship it
    live_files: tuple[str, ...] = ()  # adopt: the live ESP holds one of these ({loader_id}); (): not checked
    shim_fallback: bool = False  # may start through Debian's shim: its fallback goes beside \EFI\BOOT\
    bootctl: bool = False  # installed by bootctl, which needs SYSTEMD_RELAX_ESP_CHECKS=1 on md (upgrades too)
    kernels_on_esp: bool = False  # reads kernels from the ESP: kernel-install, kernel hooks, mkinitcpio
    apt_packages: tuple[str, ...] = ()  # what apt unpacks whose scripts write to the ESP (name prefixes)
    distributor: bool = False  # Debian's package upgrades install into \EFI\<GRUB_DISTRIBUTOR>\ only


_ARCH = {
    "x86_64": ("x64", "x86_64-efi"),
    "aarch64": ("aa64", "arm64-efi"),
}
RANDOM_SEED = "loader/random-seed"
SIGN_IMAGE = "sign it (`sbsign --key KEY --cert CERT`) with a key in db or shim's MOK list"


def arch_names(arch: str) -> tuple[str, str]:
    """(EFI suffix, grub target) for the machine architecture."""
    if arch not in _ARCH:
        raise BadInput(f"architecture {arch} is not supported: esp-mirror knows x86_64 and aarch64")
    return _ARCH[arch]


def fallback_name(arch: str) -> str:
    return f"BOOT{arch_names(arch)[0].upper()}.EFI"


def on_esp(esp_dir: str, loader: str) -> str:
    """Where the file an entry starts (``\\EFI\\x\\y.efi``) is on the ESP mounted at ``esp_dir``."""
    return os.path.join(esp_dir, *loader.strip("\\").split("\\"))


def signed_packages(kind: BootloaderKind, suffix: str = "x64") -> str:
    """The packages of a signed loader of ``kind`` on the distributions that ship them signed
    (``suffix`` x64 or aa64); "" for an image given by path (whoever builds it signs it)."""
    return spec(kind).signed_packages.format(arch="arm64" if suffix == "aa64" else "amd64")


# -- the loader paths --------------------------------------------------------------------------


def _image_loader(request: Resolved, profile: Profile, suffix: str, target: Target) -> str:
    return f"\\EFI\\{request.loader_id}\\{os.path.basename(request.efi_image or '')}"


def _zbm_loader(request: Resolved, profile: Profile, suffix: str, target: Target) -> str:
    return "\\EFI\\ZBM\\VMLINUZ.EFI"


def sd_boot_behind_shim(profile: Profile, suffix: str, target: Target) -> bool:
    """systemd-boot starts through shim: the release lays it out so (its profile says) and the
    target has both signed builds (Debian 13: shim-signed, systemd-boot-efi-amd64-signed)."""
    return (
        profile.systemd_boot.shim
        and target.exists(f"usr/lib/shim/shim{suffix}.efi.signed")
        and target.exists(f"usr/lib/systemd/boot/efi/systemd-boot{suffix}.efi.signed")
    )


def _sd_boot_loader(request: Resolved, profile: Profile, suffix: str, target: Target) -> str:
    if sd_boot_behind_shim(profile, suffix, target):
        return f"\\EFI\\{request.loader_id}\\shim{suffix}.efi"
    return f"\\EFI\\systemd\\systemd-boot{suffix}.efi"


def _sd_boot_args(request: Resolved, profile: Profile, suffix: str, target: Target) -> str:
    """Behind shim, what the entries pass it: systemd-boot, as Debian 13's systemd-boot postinst
    writes it (its check for an entry of its own looks for these words)."""
    if sd_boot_behind_shim(profile, suffix, target):
        return f"\\EFI\\systemd\\systemd-boot{suffix}.efi \\0"
    return ""


def _no_args(request: Resolved, profile: Profile, suffix: str, target: Target) -> str:
    return ""


def _grub_loader(request: Resolved, profile: Profile, suffix: str, target: Target) -> str:
    name = profile.grub.loader
    if name == "auto":
        name = f"{'shim' if target.has_shim() else 'grub'}{suffix}.efi"
    return f"\\EFI\\{request.loader_id}\\{name}"


# -- the payloads ------------------------------------------------------------------------------


def _copies(request: Resolved, esp_dir: str, efi_paths: list[str]) -> tuple[Step, ...]:
    """The image given with --efi-image at each of ``efi_paths`` and at the fallback path."""
    image = request.efi_image
    assert image is not None  # check_settings refuses the request without one
    steps: list[Step] = []
    for efi_path in (*efi_paths, f"\\EFI\\BOOT\\{fallback_name(request.arch)}"):
        dest = on_esp(esp_dir, efi_path)
        directory = MakeDir(os.path.dirname(dest), why="directory on the ESP", root=request.target)
        if directory not in steps:
            steps.append(directory)
        steps.append(CopyFile(image, dest, why=f"{request.bootloader} image at {efi_path}", root=request.target))
    return tuple(steps)


def _image_payload(request: Resolved, profile: Profile, esp_dir: str, target: Target, nvram: bool) -> tuple[Step, ...]:
    return _copies(request, esp_dir, [_image_loader(request, profile, "", target)])


def _zbm_payload(request: Resolved, profile: Profile, esp_dir: str, target: Target, nvram: bool) -> tuple[Step, ...]:
    return _copies(request, esp_dir, ["\\EFI\\ZBM\\VMLINUZ.EFI", "\\EFI\\ZBM\\VMLINUZ-BACKUP.EFI"])


def _sd_boot_payload(
    request: Resolved, profile: Profile, esp_dir: str, target: Target, nvram: bool
) -> tuple[Step, ...]:
    return (
        Command(
            ("bootctl", "install", f"--esp-path={request.mountpoint}", "--no-variables"),
            root=request.target,
            env=(("SYSTEMD_RELAX_ESP_CHECKS", "1"),),
            why="systemd-boot (and its own \\EFI\\BOOT copy) onto the array; "
            + ("entries are ours" if nvram else "no NVRAM entries: the firmware starts its \\EFI\\BOOT copy"),
        ),
        Command(
            ("rm", "-f", os.path.join(request.mountpoint, RANDOM_SEED)),
            root=request.target,
            why="no seed file: sd-boot then never writes to one member from UEFI",
        ),
        Command(
            ("systemctl", "mask", "systemd-boot-random-seed.service", "systemd-boot-system-token.service"),
            root=request.target,
            why="they would recreate the seed file (the unit's name before systemd 253: "
            "systemd-boot-system-token.service)",
        ),
        *_shim_before_sd_boot(request, profile, esp_dir, target),
    )


def _shim_before_sd_boot(request: Resolved, profile: Profile, esp_dir: str, target: Target) -> tuple[Step, ...]:
    """Behind shim (:func:`sd_boot_behind_shim`), the layout Debian 13's systemd-boot postinst
    makes: shim, its fallback and MokManager in \\EFI\\<id>\\, shim as the fallback path's loader with
    its fallback beside it, and the CSV from which the fallback makes an entry for a disk that has
    none (shim, with systemd-boot as its argument)."""
    suffix, _ = arch_names(request.arch)
    if not sd_boot_behind_shim(profile, suffix, target):
        return ()
    vendor = f"\\EFI\\{request.loader_id}"
    steps: list[Step] = [MakeDir(on_esp(esp_dir, vendor), why="shim's directory on the ESP", root=request.target)]
    for name in ("shim", "fb", "mm"):
        source = target.resolve(f"usr/lib/shim/{name}{suffix}.efi.signed")
        if source.is_file():
            dest = on_esp(esp_dir, f"{vendor}\\{name}{suffix}.efi")
            steps.append(CopyFile(str(source), dest, why=f"{name}{suffix}.efi, signed", root=request.target))
    shim = str(target.resolve(f"usr/lib/shim/shim{suffix}.efi.signed"))
    fallback = f"\\EFI\\BOOT\\{fallback_name(request.arch)}"
    steps.append(CopyFile(shim, on_esp(esp_dir, fallback), why=f"shim at {fallback}: it starts what the CSV names"))
    fb = target.resolve(f"usr/lib/shim/fb{suffix}.efi.signed")
    if fb.is_file():
        dest = on_esp(esp_dir, f"\\EFI\\BOOT\\fb{suffix}.efi")
        steps.append(CopyFile(str(fb), dest, why="shim's fallback: with no boot entry it makes one for this disk"))
    label = request.entry_label
    csv = f"shim{suffix}.efi,{label},\\EFI\\systemd\\systemd-boot{suffix}.efi \\0,This is the boot entry for {label}\n"
    steps.append(
        WriteFile(
            on_esp(esp_dir, f"{vendor}\\BOOT{suffix.upper()}.CSV"),
            csv,
            why="what shim's fallback makes an entry from: shim with systemd-boot as its argument",
            root=request.target,
            encoding="utf-16-le",
            backup=False,
        )
    )
    return tuple(steps)


def _no_config(request: Resolved, profile: Profile, target: Target) -> tuple[Step, ...]:
    return ()


def _grub_config(request: Resolved, profile: Profile, target: Target) -> tuple[Step, ...]:
    """GRUB's configuration for the kernels in the target, as the distribution writes it
    (update-grub, grub2-mkconfig -o ...), with the root named by UUID whatever md number an array
    has now. Nothing when the target has no kernel yet (an installer adds one later and runs it)."""
    if not target.kernels():
        return ()
    return (
        UuidLink(request.target, why="grub-mkconfig names the root by UUID only when udev's link for it exists"),
        Command(
            profile.grub.mkconfig,
            root=request.target,
            why="GRUB's configuration for the target's kernels: the installed system boots with no step of "
            "the installer's own",
        ),
    )


def _fill(arg: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        arg = arg.replace(key, value)
    return arg


def _grub_payload(request: Resolved, profile: Profile, esp_dir: str, target: Target, nvram: bool) -> tuple[Step, ...]:
    fallback = f"\\EFI\\BOOT\\{fallback_name(request.arch)}"
    _, grub_target = arch_names(request.arch)
    values = {"{grub_target}": grub_target, "{esp}": request.mountpoint, "{loader_id}": request.loader_id}
    return tuple(
        Command(
            tuple(_fill(a, values) for a in argv),
            root=request.target,
            why=f"GRUB on the array (\\EFI\\{request.loader_id}\\ and {fallback}); "
            + (
                "the NVRAM entries are made per disk below"
                if nvram
                else f"no NVRAM entries: the firmware starts {fallback}"
            ),
        )
        for argv in profile.grub.install
    )


# -- the Secure Boot notes ---------------------------------------------------------------------


def _image_unsigned(request: Resolved, profile: Profile, target: Target, loader: str, suffix: str) -> str | None:
    image = request.efi_image or ""
    try:
        with open(image, "rb") as handle:
            signed = pe.signature(handle.read()).signed
    except OSError:  # the layout refuses an image that is not there
        return None
    if signed:
        return None
    return (
        f"Secure Boot is on and {image} carries no signature: the firmware will refuse to start it from "
        f"every disk; {SIGN_IMAGE}"
    )


def _sd_boot_unsigned(request: Resolved, profile: Profile, target: Target, loader: str, suffix: str) -> str | None:
    """systemd-boot under Secure Boot: signed by the distribution and started by its shim (the
    firmware trusts Microsoft's keys, shim the distribution's), as the release lays it out."""
    if sd_boot_behind_shim(profile, suffix, target):
        return None
    signed_file = f"usr/lib/systemd/boot/efi/systemd-boot{suffix}.efi.signed"
    packages = profile.systemd_boot.signed_packages.format(arch="arm64" if suffix == "aa64" else "amd64")
    if not packages:
        return (
            f"Secure Boot is on and {profile.name}{' ' + profile.release if profile.release else ''} ships no signed "
            "systemd-boot: the firmware will refuse to start it from every disk; use --bootloader grub with "
            f"{signed_packages(BootloaderKind.GRUB, suffix)}"
        )
    missing = [] if target.exists(signed_file) else [packages]
    if profile.systemd_boot.shim and not target.exists(f"usr/lib/shim/shim{suffix}.efi.signed"):
        missing.append("shim-signed")
    return (
        f"Secure Boot is on and the target lacks the signed chain for systemd-boot (shim, then systemd-boot "
        f"{target.path(signed_file)}): the firmware will refuse to start it from every disk; install "
        f"{' and '.join(missing) or packages}, then plan again"
    )


def _grub_unsigned(request: Resolved, profile: Profile, target: Target, loader: str, suffix: str) -> str | None:
    if loader.rsplit("\\", 1)[-1].lower().startswith("shim"):
        return None
    return (
        f"Secure Boot is on and the target has no shim (the entries would start GRUB, {loader}, directly): "
        f"the firmware will refuse to start it from every disk; install "
        f"{signed_packages(request.bootloader, suffix)}, then plan again"
    )


# -- the table ---------------------------------------------------------------------------------


def spec(kind: BootloaderKind) -> Bootloader:
    """``kind``'s row of the table."""
    return BOOTLOADERS[kind]


def kind_of_loader(loader: str) -> BootloaderKind:
    """The kind whose loader path ``loader`` is (a record older than its ``bootloader`` field): the
    first kind that recognises it, else the one that takes any other file."""
    for kind in BootloaderKind:
        recognises = BOOTLOADERS[kind].recognises
        if recognises is not None and recognises(loader):
            return kind
    return next(k for k in BootloaderKind if BOOTLOADERS[k].recognises is None)


BOOTLOADERS: dict[BootloaderKind, Bootloader] = {
    BootloaderKind.EFI: Bootloader(
        loader=_image_loader,
        payload=_image_payload,
        args=_no_args,
        config=_no_config,
        unsigned=_image_unsigned,
        recognises=None,  # any other file is an image given by path
        needs_image=True,
    ),
    BootloaderKind.ZFSBOOTMENU: Bootloader(
        loader=_zbm_loader,
        payload=_zbm_payload,
        args=_no_args,
        config=_no_config,
        unsigned=_image_unsigned,
        recognises=lambda loader: loader.upper().startswith("\\EFI\\ZBM\\"),
        needs_image=True,
    ),
    BootloaderKind.SYSTEMD_BOOT: Bootloader(
        loader=_sd_boot_loader,
        payload=_sd_boot_payload,
        args=_sd_boot_args,
        config=_no_config,
        unsigned=_sd_boot_unsigned,
        recognises=lambda loader: loader.lower().startswith("\\efi\\systemd\\"),
        signed_packages="systemd-boot-efi-{arch}-signed on Debian 13 and later",
        live_files=("EFI/systemd/systemd-bootx64.efi", "EFI/systemd/systemd-bootaa64.efi"),
        bootctl=True,
        kernels_on_esp=True,
        # a kernel's scripts put it on the ESP with systemd-boot, whose own package updates it
        apt_packages=("linux-image-", "systemd-boot"),
    ),
    BootloaderKind.GRUB: Bootloader(
        loader=_grub_loader,
        payload=_grub_payload,
        args=_no_args,
        config=_grub_config,
        unsigned=_grub_unsigned,
        recognises=lambda loader: loader.lower().rsplit("\\", 1)[-1].startswith(("grub", "shim")),
        signed_packages="shim-signed and grub-efi-{arch}-signed on Debian and Ubuntu",
        live_files=tuple(
            f"EFI/{{loader_id}}/{n}" for n in ("grubx64.efi", "grubaa64.efi", "shimx64.efi", "shimaa64.efi")
        ),
        shim_fallback=True,
        apt_packages=("grub-efi", "shim-"),  # GRUB's and shim's scripts run grub-install
        distributor=True,
    ),
}
