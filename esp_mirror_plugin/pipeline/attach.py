"""What has to be attached before the hooks and released after them (also after a failure):
loop devices for disk image files, and, when the disks are image files, the array and its mount.
Bind mounts for chroot are made by :meth:`esp_mirror_plugin.context.Context.execute` where the
first in-target command needs them, and undone here."""

from __future__ import annotations

from typing import TYPE_CHECKING

from esp_mirror_plugin.pipeline.steps import AttachImage, Command, Step, Var

if TYPE_CHECKING:
    from esp_mirror_plugin.pipeline.context import Context


def setup_steps(ctx: Context) -> tuple[Step, ...]:
    """Loop devices for image files (``$LOOP_n``, used by every later step); an image that an
    interrupted run left attached keeps its loop device."""
    return tuple(
        AttachImage(m.disk.path, m.loop_var, why=f"loop device for the image {m.disk.given}")
        for m in ctx.layout.members
        if m.loop_var
    )


def cleanup_steps(ctx: Context) -> tuple[Step, ...]:
    """Undo the bind mounts, then release image files: unmount their ESP, stop the array, detach."""
    steps: list[Step] = list(ctx.cleanup_steps())
    layout = ctx.layout
    if layout.image_mode:
        if layout.mount:
            steps.append(Command(("umount", layout.esp_dir), why="release the image's ESP", cleanup=True))
        steps.append(Command(("mdadm", "--stop", ctx.request.device), why="release the members", cleanup=True))
        for member in layout.members:
            if member.loop_var:
                steps.append(
                    Command(
                        ("losetup", "--detach", Var(member.loop_var)), why=f"detach {member.disk.given}", cleanup=True
                    )
                )
    return tuple(steps)
