"""Every path that writes to the mirrored ESP finds it, whoever runs it, and stops loudly when it
cannot: part of the installed system's group (:mod:`.installed`).

An upgrade runs from a login shell, from cron (PATH=/usr/bin:/bin), from an agent without PAM,
from a rescue system's ``env -i chroot``: settings in the environment (``SYSTEMD_RELAX_ESP_CHECKS``
in /etc/environment and systemd's DefaultEnvironment, :mod:`.upgrades`) reach only some of them.
Debian's kernel hook ``zz-systemd-boot`` starts with ``bootctl is-installed || exit 0``; without the
variable bootctl refuses the md ESP, the hook exits 0, and the new kernel never gets an entry. So:

- **bootctl, wrapped.** Where dpkg is the package manager, ``/usr/bin/bootctl`` is diverted
  (``dpkg-divert --local --rename``: packages install the real one as ``/usr/bin/bootctl.esp-mirror``)
  and a wrapper takes its place, as proxmox-boot-tool diverts grub-install: every caller, by path
  or by name, gets the relaxed ESP checks, the ESP's path and ``--no-variables`` (esp-mirror makes
  the boot entries; bootctl's own would name no partition). Elsewhere the wrapper is
  /usr/local/sbin/bootctl, first on the PATH of shells, services and hooks.
- **kernel-install told where $BOOT is:** ``BOOT_ROOT=`` in /etc/kernel/install.conf (systemd 253
  and later check the ESP themselves; 252 searches /efi, /boot, /boot/efi), with the settings of
  /usr/lib/kernel/install.conf it would no longer read.
- **Loud when the ESP is not there:** one guard script, /usr/local/lib/esp-mirror/esp-mounted,
  exits 1 naming esp-mirror and the fix unless the mirror's FAT is mounted at the mount point. The
  hooks that put kernels on the ESP run it first: the kernel's and the initramfs' post-update
  hooks (Debian), a kernel-install plugin (every distribution with kernel-install: Fedora's,
  RHEL's and openSUSE's dracut runs from it); apt runs it before it unpacks a package whose
  scripts write to the ESP (GRUB and shim, or a kernel and systemd-boot), which would otherwise
  skip the ESP and exit 0; pacman before a transaction that changes a kernel, mkinitcpio or
  systemd (mkinitcpio's hook writes where its presets say).

``esp-mirror refresh`` writes all of it again; ``esp-mirror release --all`` takes it away
(:func:`removal`), and docs/operating.md ("Whoever runs the upgrade") says what to remove by hand.
"""

from __future__ import annotations

import re
from pathlib import Path

from esp_mirror_plugin.pipeline.bootloaders import RANDOM_SEED, spec
from esp_mirror_plugin.pipeline.kinds import BootloaderKind
from esp_mirror_plugin.pipeline.steps import Command, EditBlock, RemoveBlock, Step, WriteFile
from esp_mirror_plugin.system.target import Target

BOOTCTL = "/usr/bin/bootctl"
DIVERTED = "/usr/bin/bootctl.esp-mirror"
LOCAL_BOOTCTL = "/usr/local/sbin/bootctl"
GUARD = "/usr/local/lib/esp-mirror/esp-mounted"
INSTALL_CONF = "/etc/kernel/install.conf"
DEFAULT_INSTALL_CONF = "/usr/lib/kernel/install.conf"
DIVERSIONS = "var/lib/dpkg/diversions"
APT_HOOK = "/etc/apt/apt.conf.d/90esp-mirror"
# Hooks that put a kernel or initramfs on the ESP (with systemd-boot), by when they run.
HOOK_DIRS = ("/etc/kernel/postinst.d", "/etc/kernel/postrm.d", "/etc/initramfs/post-update.d")
KERNEL_INSTALL_PLUGIN = "/etc/kernel/install.d/00-esp-mirror.install"
HOOK_NAME = "00-esp-mirror"  # before initramfs-tools, systemd-boot and zz-systemd-boot
# pacman runs it before a transaction that installs, upgrades or removes a kernel or what makes
# its initramfs (mkinitcpio's hook then writes kernel and initramfs where the presets say).
PACMAN_HOOK = "/etc/pacman.d/hooks/00-esp-mirror.hook"
PACMAN_TARGETS = ("linux*", "mkinitcpio", "systemd")
APT = ("apt-get", "apt")


def guard(mountpoint: str, fs_uuid: str, device: str, packages: tuple[str, ...], esp_mirror: bool = True) -> str:
    """The guard script: exit 0 when the mirror's FAT is mounted at ``mountpoint``, else say so
    (and that `esp-mirror status` shows the mirror, where ``esp_mirror`` is put there).

    With ``--apt`` it reads the package files apt is about to unpack (DPkg::Pre-Install-Pkgs) and
    checks only when one of them is one of ``packages`` (name prefixes).
    """
    names = "|".join(f"{p}*" for p in packages) or "-"
    status = "; \\`esp-mirror status\\` shows the mirror" if esp_mirror else ""
    return f"""#!/bin/sh
# esp-mirror: is the mirrored ESP ({device}, FAT UUID {fs_uuid}) mounted at {mountpoint}?
# Run before an update writes there (a kernel, an initramfs, the bootloader's package): without
# it those skip the ESP and exit 0, and the next boot does not offer what was installed.
# Written by esp-mirror apply and refresh.
if [ "${{1:-}}" = --apt ]; then
    touches=
    while read -r deb; do
        case "${{deb##*/}}" in {names}) touches=${{deb##*/}} ;; esac
    done
    [ -n "$touches" ] || exit 0
fi
found=$(findmnt -n -o UUID --mountpoint {mountpoint} 2>/dev/null)
[ "$found" = "{fs_uuid}" ] && exit 0
echo "esp-mirror: the mirrored ESP ({device}, FAT UUID {fs_uuid}) is not mounted at {mountpoint}" \\
     "${{found:+(FAT $found is) }}so this update cannot put its files there: assemble and mount it" \\
     "(\\`mdadm --assemble --scan; mount {mountpoint}\\`), then run the update again" \\
     "(\\`dpkg --configure -a\\` for a package left half configured){status}" >&2
exit 1
"""


def wrapper(real: str, mountpoint: str) -> str:
    """bootctl as every caller gets it."""
    seed = f"{mountpoint.rstrip('/')}/{RANDOM_SEED}"
    return f"""#!/bin/sh
# esp-mirror: bootctl on the mirrored ESP ({mountpoint}, an md RAID1 array), whoever runs it.
# bootctl refuses an ESP on md unless SYSTEMD_RELAX_ESP_CHECKS=1 is in its environment, which
# cron, rescue chroots and agents without PAM do not give it. esp-mirror makes one boot entry
# per disk: --no-variables keeps bootctl from adding one that names no partition. The random
# seed `bootctl install` writes goes: systemd-boot would rewrite it at every boot on the one
# disk it started from, behind md's back.
# Written by esp-mirror apply and refresh (the real bootctl is {real}).
SYSTEMD_RELAX_ESP_CHECKS=1 {real} --esp-path={mountpoint} --no-variables "$@"
rc=$?
rm -f {seed}
exit $rc
"""


def diverted(target: Target) -> bool:
    """/usr/bin/bootctl is diverted to where esp-mirror diverts it (dpkg's diversions file holds
    triples of lines: the file, where it went, and the package or ":" for a local one)."""
    lines = target.text(DIVERSIONS).splitlines()
    return any(lines[i : i + 2] == [BOOTCTL, DIVERTED] for i in range(0, len(lines) - 1, 3))


def _bootctl(target: Target, mountpoint: str) -> tuple[Step, ...]:
    why = "bootctl finds the md ESP whoever runs it (no environment needed), and never adds an entry"
    if target.has_program("dpkg-divert"):
        if not (diverted(target) or target.exists(BOOTCTL)):
            return ()
        divert = Command(
            ("dpkg-divert", "--local", "--rename", "--divert", DIVERTED, "--add", BOOTCTL),
            root=target.root,
            why="packages install the real bootctl beside the wrapper, which takes its path",
        )
        wrap = WriteFile(target.path(BOOTCTL), wrapper(DIVERTED, mountpoint), mode=0o755, why=why, root=target.root)
        return (wrap,) if diverted(target) else (divert, wrap)
    if not target.has_program("bootctl"):
        return ()
    text = wrapper(BOOTCTL, mountpoint)
    return (WriteFile(target.path(LOCAL_BOOTCTL), text, mode=0o755, why=why, root=target.root),)


def _install_conf(target: Target, mountpoint: str) -> EditBlock:
    """BOOT_ROOT for kernel-install, with the settings of /usr/lib's install.conf that
    /etc's (which replaces it) does not set already."""
    own = {line.split("=", 1)[0].strip() for line in target.text(INSTALL_CONF).splitlines() if "=" in line}
    inherited = [
        line.strip()
        for line in target.text(DEFAULT_INSTALL_CONF).splitlines()
        if "=" in line and not line.lstrip().startswith("#") and line.split("=", 1)[0].strip() not in own
    ]
    block = "\n".join([*inherited, f"BOOT_ROOT={mountpoint}"])
    return EditBlock(
        target.path(INSTALL_CONF),
        block,
        root=target.root,
        why="kernel-install puts kernels on the mirrored ESP without looking for it (systemd 253 and later "
        f"would check it and refuse md); {DEFAULT_INSTALL_CONF}'s settings are kept",
    )


def _hooks(target: Target, kernel_hooks: bool) -> tuple[Step, ...]:
    why = "a kernel or initramfs update stops with esp-mirror's message when the ESP is not mounted"
    call = f'#!/bin/sh\n# esp-mirror: {why}.\nexec {GUARD} "$@"\n'
    steps: list[Step] = []
    if kernel_hooks:
        steps += [
            WriteFile(target.path(f"{d}/{HOOK_NAME}"), call, mode=0o755, why=why, root=target.root) for d in HOOK_DIRS
        ]
    plugin = f"#!/bin/sh\n# esp-mirror: {why} (kernel-install runs every plugin; this one first).\nexec {GUARD}\n"
    steps.append(WriteFile(target.path(KERNEL_INSTALL_PLUGIN), plugin, mode=0o755, why=why, root=target.root))
    return tuple(steps)


PRESETS = "etc/mkinitcpio.d"
_ASSIGNMENT = re.compile(r"""^\s*(\w+)=["']?([^"'\s]+)""", re.MULTILINE)


def notes(target: Target, mountpoint: str, bootloader: BootloaderKind) -> tuple[str, ...]:
    """What the kernel path of a distribution leaves outside the ESP that systemd-boot reads from:
    mkinitcpio's presets (Arch: its pacman hook runs ``mkinitcpio -P``) name where each kernel and
    initramfs go. dracut's kernel hook on Fedora and openSUSE is a kernel-install plugin, which
    BOOT_ROOT and the guard cover."""
    if not spec(bootloader).kernels_on_esp:
        return ()
    out = []
    presets = target.resolve(PRESETS)
    for preset in sorted(presets.glob("*.preset")) if presets.is_dir() else ():
        values = dict(_ASSIGNMENT.findall(preset.read_text(errors="replace")))
        ukis = [v for k, v in values.items() if k.endswith("_uki")]
        outside = [
            v
            for k, v in values.items()
            if (k.endswith("_image") or k == "ALL_kver") and not v.startswith(mountpoint.rstrip("/") + "/")
        ]
        if outside and not any(v.startswith(mountpoint.rstrip("/") + "/") for v in ukis):
            out.append(
                f"mkinitcpio's preset {PRESETS}/{preset.name} puts {', '.join(sorted(set(outside)))} outside the "
                f"mirrored ESP ({mountpoint}), where systemd-boot cannot read them: set its *_uki= into "
                f"{mountpoint}/EFI/Linux/, or install kernels with kernel-install, which puts them on the ESP"
            )
    return tuple(out)


def _pacman_hook() -> str:
    targets = "".join(f"Target = {t}\n" for t in PACMAN_TARGETS)
    return (
        "# esp-mirror: before pacman changes a kernel or what writes it and its initramfs to the ESP,\n"
        "# the mirrored ESP must be mounted, or they land in the empty mount point.\n"
        "[Trigger]\nType = Package\nOperation = Install\nOperation = Upgrade\nOperation = Remove\n"
        f"{targets}\n"
        "[Action]\nDescription = esp-mirror: is the mirrored ESP mounted?\nWhen = PreTransaction\n"
        f"Exec = {GUARD}\nAbortOnFail\n"
    )


def plan(
    target: Target,
    mountpoint: str,
    bootloader: BootloaderKind,
    fs_uuid: str,
    device: str,
    manager: str,
    esp_mirror: bool = True,
) -> tuple[Step, ...]:
    """The steps of this module for the installed system ``target``.

    :param manager: the distribution's package manager (the profile's install command): apt's
        and pacman's hooks stop a transaction that would miss the ESP; dpkg's kernel hooks run
        the guard.
    :param esp_mirror: esp-mirror is put on the installed system (the guard's message names it).
    """
    steps: list[Step] = list(_bootctl(target, mountpoint))
    kernels = spec(bootloader).kernels_on_esp  # systemd-boot: kernel updates write to the ESP
    apt = manager in APT
    pacman = manager == "pacman" and kernels
    packages = spec(bootloader).apt_packages if apt else ()
    if kernels or packages:
        steps.append(
            WriteFile(
                target.path(GUARD),
                guard(mountpoint, fs_uuid, device, packages, esp_mirror),
                mode=0o755,
                why="one check of the mirrored ESP for every hook that writes there",
                root=target.root,
            )
        )
    if kernels:
        steps.append(_install_conf(target, mountpoint))
        steps += _hooks(target, kernel_hooks=apt)
    if packages:
        steps.append(
            WriteFile(
                target.path(APT_HOOK),
                f"// esp-mirror: before apt unpacks a package that writes to the ESP ({', '.join(packages)}),\n"
                "// the mirrored ESP must be mounted, or its scripts skip it silently.\n"
                f'DPkg::Pre-Install-Pkgs {{"{GUARD} --apt";}};\n',
                why="apt stops before an upgrade that would miss the unmounted ESP, and says why",
                root=target.root,
            )
        )
    if pacman:
        steps.append(
            WriteFile(
                target.path(PACMAN_HOOK),
                _pacman_hook(),
                why="pacman stops before a kernel upgrade that would miss the unmounted ESP, and says why",
                root=target.root,
            )
        )
    return tuple(steps)


def removal(target: Target) -> tuple[Step, ...]:
    """What :func:`plan` put in place, taken away (``esp-mirror release --all``), callers before
    what they call: the hooks of apt, pacman, the kernel and kernel-install that run the guard;
    BOOT_ROOT's block of install.conf (the file goes when esp-mirror made it: kernel-install
    then reads /usr/lib's again and finds a plain ESP itself); bootctl's wrapper, and its
    diversion undone, which puts the real bootctl back at its path; then the guard. Only what is
    there is planned, so a run again after an interruption plans what is left."""
    why = "nothing writes to a mirrored ESP any more: the guard and what runs it go"
    callers = (*(f"{d}/{HOOK_NAME}" for d in HOOK_DIRS), KERNEL_INSTALL_PLUGIN, APT_HOOK, PACMAN_HOOK)
    steps: list[Step] = [Command(("rm", "-f", "--", p), why=why) for p in target.present(*callers)]
    if target.has_block(INSTALL_CONF):
        steps.append(
            RemoveBlock(
                target.path(INSTALL_CONF),
                why="kernel-install finds a plain ESP itself",
                root=target.root,
                remove_empty=True,
            )
        )
    why_bootctl = "bootctl runs as its package installed it: a plain ESP needs no wrapper"
    if diverted(target):
        steps += [Command(("rm", "-f", "--", p), why=why_bootctl) for p in target.present(BOOTCTL)]
        steps.append(
            Command(
                ("dpkg-divert", "--local", "--rename", "--remove", BOOTCTL),
                root=target.root,
                why="the real bootctl goes back to its path",
            )
        )
    elif _our_wrapper(target.resolve(LOCAL_BOOTCTL)):
        steps.append(Command(("rm", "-f", "--", target.path(LOCAL_BOOTCTL)), why=why_bootctl))
    steps += [Command(("rm", "-f", "--", p), why=why) for p in target.present(GUARD)]
    return tuple(steps)


def _our_wrapper(path: Path) -> bool:
    """``path`` is esp-mirror's bootctl wrapper (:func:`wrapper`), not a file someone else put there."""
    try:
        return path.is_file() and b"\n# esp-mirror: bootctl on the mirrored ESP" in path.read_bytes()[:200]
    except OSError:
        return False
