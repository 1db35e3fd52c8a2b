"""initramfs_config: the generator's settings for the ESP array, and ONE regeneration.

No distribution needs the ESP assembled inside the initramfs (the booted system assembles it),
but generators copy mdadm.conf into the image, and hostonly dracut can bake ``rd.md.uuid=`` of
any md device mounted while it runs, which makes boot wait for the ESP. So the image is rebuilt
once with the new mdadm.conf, and dracut is told not to write a hostonly command line.
"""

from __future__ import annotations

from esp_mirror_plugin.errors import BadInput
from esp_mirror_plugin.pipeline.kinds import Generator
from esp_mirror_plugin.pipeline.profiles import Profile
from esp_mirror_plugin.pipeline.request import Resolved
from esp_mirror_plugin.pipeline.steps import Command, EditBlock, Step, WriteFile
from esp_mirror_plugin.system.target import Target

DRACUT_DROPIN = "etc/dracut.conf.d/90-esp-mirror.conf"
# dracut settings that are lists: a drop-in must add to them (+=), not replace earlier files' values.
DRACUT_LISTS = {
    "add_dracutmodules",
    "omit_dracutmodules",
    "add_drivers",
    "force_drivers",
    "omit_drivers",
    "install_items",
    "filesystems",
}
MKINITCPIO_CONF = "etc/mkinitcpio.conf"
MKINITCPIO_DROPIN = "etc/mkinitcpio.conf.d/90-esp-mirror.conf"
MKINITFS_CONF = "etc/mkinitfs/mkinitfs.conf"

# Sourced by bash after the HOOKS of mkinitcpio.conf: mdadm_udev after block and before
# filesystems, exactly once, every other hook kept in place (the old "mdadm" alias is dropped).
MKINITCPIO_HOOKS = """\
# esp-mirror: assemble md arrays (the mirrored ESP) in the initramfs: mdadm_udev goes after
# block and before filesystems, exactly once; every other hook stays where it was.
_esp_mirror_hooks=()
for _esp_mirror_hook in "${HOOKS[@]}"; do
    case $_esp_mirror_hook in
        mdadm_udev|mdadm) continue ;;
        filesystems) _esp_mirror_hooks+=(mdadm_udev) ;;
    esac
    _esp_mirror_hooks+=("$_esp_mirror_hook")
done
case " ${_esp_mirror_hooks[*]} " in
    *" mdadm_udev "*) ;;
    *) _esp_mirror_hooks+=(mdadm_udev) ;;
esac
HOOKS=("${_esp_mirror_hooks[@]}")
unset _esp_mirror_hooks _esp_mirror_hook
"""

# mkinitfs.conf is sourced by sh: add the "raid" feature (mdadm and mdadm.conf) if missing.
MKINITFS_FEATURES = 'case " $features " in *" raid "*) ;; *) features="$features raid" ;; esac'


def config_steps(profile: Profile, target: Target) -> tuple[Step, ...]:
    ird = profile.initramfs
    why = f"{ird.generator} settings for the mirrored ESP"
    match ird.generator:
        case Generator.INITRAMFS_TOOLS:
            return ()  # its mdadm hook copies mdadm.conf into the image by itself
        case Generator.DRACUT:
            body = "".join(
                f'{key}{"+=" if key in DRACUT_LISTS else "="}"{value}"\n' for key, value in ird.settings.items()
            )
            return (
                WriteFile(target.path(DRACUT_DROPIN), "# Written by esp-mirror.\n" + body, why=why, root=target.root),
            )
        case Generator.MKINITCPIO:
            if ird.dropin_dir:
                return (WriteFile(target.path(MKINITCPIO_DROPIN), MKINITCPIO_HOOKS, why=why, root=target.root),)
            return (EditBlock(target.path(MKINITCPIO_CONF), MKINITCPIO_HOOKS, why=why, root=target.root),)
        case Generator.MKINITFS:
            return (EditBlock(target.path(MKINITFS_CONF), MKINITFS_FEATURES, why=why, root=target.root),)
    raise AssertionError(ird.generator)


def regenerate_steps(request: Resolved, profile: Profile, kernels: tuple[str, ...]) -> tuple[Command, ...]:
    """The one regeneration (per installed kernel for generators that take a version)."""
    ird = profile.initramfs
    why = "rebuild the initramfs once, with the new mdadm.conf and settings"
    if not ird.per_kernel:
        return (Command(ird.regenerate, root=request.target, why=why),)
    if not kernels:
        raise BadInput(
            f"no kernel in {request.target}/lib/modules to build an initramfs for: install "
            "the kernel first, or pass --initramfs configure-only"
        )
    return tuple(
        Command(tuple(a.replace("{kver}", k) for a in ird.regenerate), root=request.target, why=f"{why} (kernel {k})")
        for k in kernels
    )


def plan(request: Resolved, profile: Profile, target: Target) -> tuple[Step, ...]:
    """The generator's settings and the one regeneration, for the kernels installed now."""
    steps: tuple[Step, ...] = ()
    if request.initramfs.configures:
        steps += config_steps(profile, target)
    if request.initramfs.regenerates:
        steps += regenerate_steps(request, profile, target.kernels())
    return steps
