"""Hook specifications: the contract between an installer and esp-mirror (or other plugins).

An installer calls the four hooks in this order, each once, with keyword arguments::

    pm.hook.pre_partition(ctx=ctx)      # before the installer creates its own partitions
    pm.hook.post_format(ctx=ctx)        # after partitioning and formatting, target root mounted
    pm.hook.initramfs_config(ctx=ctx)   # once the target's packages (kernel, mdadm) are installed
    pm.hook.bootloader(ctx=ctx)         # last: the ESP is mounted at target + mount point

``ctx`` is a :class:`esp_mirror_plugin.pipeline.context.Context` made by
:func:`esp_mirror_plugin.pipeline.context.prepare`, which already validated the request against the
disks: by the time a hook runs, the disks are known to be safe to use. The target is read by
each hook when it is called (``ctx.target``), so an installer may call ``prepare`` before it has
installed anything there. Call the hooks inside ``with host.attached(ctx):``, which attaches
loop devices for image files first and releases them (and any chroot bind mounts) at the end,
also after an error.

Rules for every implementation:

- Do the work through ``ctx.execute(group, steps)`` only, with step objects from
  :mod:`esp_mirror_plugin.pipeline.steps`; never start a process or write a file directly. That is what
  makes ``esp-mirror plan`` show exactly what ``apply`` does, and what checks every step before
  the first one runs (:mod:`esp_mirror_plugin.pipeline.preflight`).
- Plan from ``ctx.snapshot``, ``ctx.layout`` and ``ctx.target`` (read-only facts), so a re-run
  converges.
- Fail loudly: raise :class:`esp_mirror_plugin.errors.BadInput` (nothing changed yet) or let
  :class:`esp_mirror_plugin.errors.StepFailed` propagate. Never swallow an error; the pipeline
  stops at the first one and names the hook.
- Return None. Share state with later hooks through ``ctx.state``.

Order among plugins: pluggy calls the implementations of one hook last registered first, and
esp-mirror's own is registered first, so a third-party plugin runs before it unless it says
otherwise. Say it: ``@hookimpl(tryfirst=True)`` runs before esp-mirror's steps (check firmware,
add a partition of your own before the ESP is made), ``@hookimpl(trylast=True)`` after them
(record the new boot entries in an inventory), and ``@hookimpl(wrapper=True)`` around them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from esp_mirror_plugin import hookspec

if TYPE_CHECKING:
    from esp_mirror_plugin.pipeline.context import Context


# -------------------------------------------------------------------------------------------
# Disk phase
# -------------------------------------------------------------------------------------------


@hookspec
def pre_partition(ctx: Context) -> None:
    """Create the ESP partition on every member disk.

    Called before the installer creates its own partitions, so the ESP comes first on each disk.
    esp-mirror's implementation makes a GPT partition 1 (type EF00, a fresh partition GUID per
    disk, name "esp-mirror") of ``ctx.request.esp_size`` at ``ctx.request.esp_start``, erasing
    old tables only with ``--wipe``, and waits until the kernel shows each partition node.

    :param ctx: the prepared context; ``ctx.layout.members`` lists each disk's device and node.
    :return: None. Steps go through ``ctx.execute("pre_partition", steps)``.
    """


@hookspec
def post_format(ctx: Context) -> None:
    """Build the mirrored ESP: the array, its filesystem, mdadm.conf, fstab and the mount.

    Called after the installer formatted its own filesystems and mounted the target root at
    ``ctx.request.target``. esp-mirror's implementation creates (or assembles) the RAID1 array
    with metadata 1.0, ``--homehost=any --name=<array name>``, makes FAT32 on it, writes the ARRAY
    line to the profile's mdadm.conf and one line to fstab (marked blocks in the target), and
    mounts the array at target + mount point.

    :param ctx: the prepared context.
    :return: None. Steps go through ``ctx.execute("post_format", steps)``.
    """


# -------------------------------------------------------------------------------------------
# System phase
# -------------------------------------------------------------------------------------------


@hookspec
def initramfs_config(ctx: Context) -> None:
    """Write the initramfs generator's settings and regenerate the images exactly once.

    Called after the target's packages are installed (kernel, mdadm, the generator) and before
    the bootloader. ``ctx.request.initramfs`` says what to do: ``regenerate`` (settings + one
    rebuild, in the target, unless the stamp ``/var/lib/esp-mirror/initramfs.sha256`` says the
    last rebuild had the same inputs), ``configure-only`` (settings only, for image pipelines that
    rebuild later) or ``skip``. Must not regenerate more than once per apply.

    :param ctx: the prepared context; ``ctx.profile.initramfs`` holds the generator settings.
    :return: None. Steps go through ``ctx.execute("initramfs_config", steps)``.
    """


@hookspec
def bootloader(ctx: Context) -> None:
    """Install the boot payload on the mirrored ESP and register one boot entry per disk.

    Called last, with the array mounted at target + mount point. Installs the bootloader kind of
    ``ctx.request.bootloader`` (a plain EFI image, ZFSBootMenu, systemd-boot or GRUB), the
    removable fallback ``\\EFI\\BOOT\\BOOTX64.EFI``, and unless ``ctx.layout.nvram`` is false, one
    efibootmgr entry per member disk with ours first in BootOrder (stale entries of ours removed).

    :param ctx: the prepared context; ``ctx.snapshot.boot`` holds the NVRAM entries read before.
    :return: None. Steps go through ``ctx.execute("bootloader", steps)``.
    """
