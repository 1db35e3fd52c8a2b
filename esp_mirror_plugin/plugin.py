"""esp-mirror's own implementation of the four hooks. Thin: each delegates to a planner module."""

from __future__ import annotations

from . import bootloader as boot
from . import hookimpl, initramfs, partition, periodic, raid
from .context import Context


@hookimpl
def pre_partition(ctx: Context) -> None:
    ctx.execute("pre_partition", partition.plan(ctx.layout))


@hookimpl
def post_format(ctx: Context) -> None:
    ctx.execute("post_format", raid.plan(ctx.request, ctx.profile, ctx.layout, ctx.snapshot.mdadm_conf)
                + periodic.plan(ctx.request, ctx.profile))


@hookimpl
def initramfs_config(ctx: Context) -> None:
    ctx.execute("initramfs_config", initramfs.plan(ctx.request, ctx.profile, ctx.snapshot.target_kernels))


@hookimpl
def bootloader(ctx: Context) -> None:
    steps, notes = boot.plan(ctx.request, ctx.profile, ctx.layout, ctx.snapshot)
    ctx.execute("bootloader", steps, notes)
