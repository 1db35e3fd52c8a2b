"""esp-mirror's own implementation of the four hooks. Thin: each delegates to a planner module.

Each hook plans from the target as it is when the hook is called (``ctx.target``): an
installer installs the kernel, mdadm and shim between the hooks.
"""

from __future__ import annotations

from esp_mirror_plugin import hookimpl
from esp_mirror_plugin.hooks import adopt, initramfs, installed, partition, raid
from esp_mirror_plugin.hooks import bootloader as boot
from esp_mirror_plugin.pipeline.context import Context
from esp_mirror_plugin.pipeline.kinds import AdoptPhase


@hookimpl
def pre_partition(ctx: Context) -> None:
    adoption = ctx.layout.adoption
    if adoption is not None and adoption.phase is AdoptPhase.NEW:
        ctx.execute(adopt.BACKUP, adopt.backup_steps(ctx.request, ctx.layout))
    if adoption is not None and not adoption.switched:
        ctx.execute("pre_partition", adopt.partition_steps(ctx.layout), partition.notes(ctx.layout.members))
    else:
        ctx.execute("pre_partition", *partition.plan(ctx.layout))


@hookimpl
def post_format(ctx: Context) -> None:
    adoption = ctx.layout.adoption
    if adoption is not None and not adoption.switched:
        ctx.execute("post_format", adopt.switch_steps(ctx.request, ctx.profile, ctx.layout, ctx.target))
    else:
        ctx.execute("post_format", raid.plan(ctx.request, ctx.profile, ctx.layout, ctx.target))


@hookimpl
def initramfs_config(ctx: Context) -> None:
    steps, notes = initramfs.plan(ctx.request, ctx.profile, ctx.layout, ctx.target)
    ctx.execute("initramfs_config", steps, notes)


@hookimpl
def bootloader(ctx: Context) -> None:
    steps, notes = boot.plan(ctx.request, ctx.profile, ctx.layout, ctx.snapshot, ctx.target)
    ctx.execute("bootloader", steps, notes)
    request = ctx.request
    setup = installed.Setup(
        ctx.profile,
        ctx.target,
        ctx.layout.array_uuid,
        request.mountpoint,
        request.bootloader,
        request.loader_id,
        request.metrics_dir,
        request.device,
        ctx.layout.fs_uuid,
    )
    ctx.execute(installed.GROUP, *installed.plan(setup))
    if ctx.layout.adoption is not None:
        ctx.execute(adopt.FINISH, *adopt.finish_steps(request, ctx.profile, ctx.layout, ctx.snapshot, ctx.target))
