"""initramfs_config: the generator's settings for the ESP array, and ONE regeneration.

No distribution needs the ESP assembled inside the initramfs (the booted system assembles it),
but generators copy mdadm.conf into the image, and hostonly dracut can bake ``rd.md.uuid=`` of
any md device mounted while it runs, which makes boot wait for the ESP. So the image is rebuilt
once with the new mdadm.conf, and dracut is told not to write a hostonly command line.

The rebuild takes minutes, and a second apply must not pay them (nor report a change) for
nothing: a stamp in the target (:data:`STAMP`) holds the sha256 of what esp-mirror gave the
generator the last time it rebuilt (:func:`inputs_digest`), and the rebuild is planned only when
that differs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from collections.abc import Sequence

from esp_mirror_plugin.errors import BadInput
from esp_mirror_plugin.hooks.raid import mdadm_conf_edit
from esp_mirror_plugin.pipeline.kinds import Generator
from esp_mirror_plugin.pipeline.layout import Layout
from esp_mirror_plugin.pipeline.profiles import Profile
from esp_mirror_plugin.pipeline.request import Resolved
from esp_mirror_plugin.pipeline.steps import Command, EditBlock, Step, WriteFile
from esp_mirror_plugin.system.files import with_block
from esp_mirror_plugin.system.state import INITRAMFS_STAMP as STAMP
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
# The sha256 of the inputs of the last rebuild esp-mirror completed (line 1), then its commands.

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
        Command(_kernel_argv(ird.regenerate, k), root=request.target, why=f"{why} (kernel {k})") for k in kernels
    )


def _kernel_argv(template: tuple[str, ...], kver: str) -> tuple[str, ...]:
    return tuple(a.replace("{kver}", kver) for a in template)


def regenerate_argvs(profile: Profile, kernels: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    """The argv of each regeneration command, as :func:`regenerate_steps` plans them."""
    template = profile.initramfs.regenerate
    return tuple(_kernel_argv(template, k) for k in kernels) if profile.initramfs.per_kernel else (template,)


def inputs_digest(planned: Sequence[tuple[str, str]], argvs: Sequence[tuple[str, ...]]) -> str:
    """The sha256 of what esp-mirror gives the generator: ``planned`` (path in the target, full
    content after this apply), in the order given, and the regeneration commands' argv. Hashed as
    compact JSON ``{"files": [[path, content], ...], "argv": [[arg, ...], ...]}`` (UTF-8, not
    ASCII-escaped), so no two different inputs read alike."""
    data = {"files": [list(file) for file in planned], "argv": [list(argv) for argv in argvs]}
    return hashlib.sha256(json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()


def planned_inputs(
    request: Resolved, profile: Profile, layout: Layout, target: Target, config: tuple[Step, ...]
) -> tuple[tuple[str, str], ...]:
    """(path in the target, full content) of each file of this apply the generator reads, as it
    will be when the regeneration runs: mdadm.conf with post_format's edit, then the generator's
    files that ``config`` writes or edits, in plan order. Planned, not read: ``plan`` runs before
    any of these writes."""

    def inside(path: str) -> str:
        return os.path.normpath("/" + os.path.relpath(path, target.root))

    planned = {inside(target.path(profile.mdadm_conf)): target.text(profile.mdadm_conf)}
    mdadm = mdadm_conf_edit(request, profile, layout, target)
    for step in ((mdadm,) if mdadm else ()) + config:
        if isinstance(step, WriteFile):
            planned[inside(step.path)] = step.content
        elif isinstance(step, EditBlock):
            rel = inside(step.path)
            try:
                planned[rel] = with_block(planned[rel] if rel in planned else target.text(rel), step.block)
            except ValueError as exc:
                raise BadInput(f"{step.path} {exc}") from None
        else:
            raise AssertionError(step)
    return tuple(planned.items())


def require_mdadm(profile: Profile, target: Target) -> None:
    """The installed system assembles the array with mdadm (udev's incremental assembly at boot,
    the generator's md hook): a target without it would boot with nothing at the ESP's mount
    point. Checked here, when the installer has put the target's packages there (hookspecs).

    :raises BadInput: mdadm is not in the target, and the profile does not say the distribution
        assembles md another way (``needs_mdadm: false``).
    """
    if not profile.needs_mdadm or target.has_program("mdadm"):
        return
    where = "" if os.path.normpath(target.root) == "/" else f" in the target {target.root}"
    raise BadInput(
        f"mdadm is not installed{where}, so the installed system could not assemble the mirrored ESP at boot: "
        f"{profile.install_fix('mdadm')}"
    )


def plan(
    request: Resolved, profile: Profile, layout: Layout, target: Target
) -> tuple[tuple[Step, ...], tuple[str, ...]]:
    """The generator's settings and the one regeneration, for the kernels installed now; the
    regeneration only when its inputs changed since the last one esp-mirror completed (a note
    says so otherwise).

    :raises BadInput: the target has no mdadm (:func:`require_mdadm`).
    """
    require_mdadm(profile, target)
    config = config_steps(profile, target) if request.initramfs.configures else ()
    if not request.initramfs.regenerates:
        return config, ()
    kernels = target.kernels()
    rebuild = regenerate_steps(request, profile, kernels)
    argvs = regenerate_argvs(profile, kernels)
    digest = inputs_digest(planned_inputs(request, profile, layout, target, config), argvs)
    if target.text(STAMP).split("\n", 1)[0] == digest:
        return config, (
            f"the initramfs was regenerated with these settings already ({target.path(STAMP)}): "
            "nothing to rebuild; delete that file to force it",
        )
    # Written only after the rebuild succeeded: a run killed between the two leaves the old stamp
    # (or none), so the next apply rebuilds again, never skips an image that was not made.
    stamp = WriteFile(
        target.path(STAMP),
        digest + "\n" + "".join(shlex.join(argv) + "\n" for argv in argvs),
        why="remember what the initramfs was rebuilt from (sha256 of mdadm.conf, the generator's "
        "files esp-mirror writes and the commands): the next apply rebuilds only when it changes",
        root=target.root,
    )
    return (*config, *rebuild, stamp), ()
