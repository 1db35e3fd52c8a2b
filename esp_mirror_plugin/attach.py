"""What has to be attached around the hooks, and detached after them (also after a failure):
loop devices for disk image files, and /proc, /sys, /dev inside a target root for chroot."""

from __future__ import annotations

import os

from .context import Context
from .steps import Command, Group, Step, Var


def around(ctx: Context, hook_groups: list[Group]) -> tuple[Group, Group]:
    """(setup, cleanup) groups for the planned hook groups."""
    setup: list[Step] = []
    cleanup: list[Step] = []
    request, layout = ctx.request, ctx.layout
    for member in layout.members:
        if member.loop_var:
            setup.append(Command(("losetup", "--find", "--show", "--partscan", member.disk.path),
                                 binds=member.loop_var, why=f"loop device for the image {member.disk.given}"))
    in_target = any(isinstance(s, Command) and os.path.normpath(s.root) != "/"
                    for g in hook_groups for s in g.steps)
    if in_target:
        for fs in ("proc", "sys", "dev"):
            where = os.path.join(request.target, fs)
            if ctx.snapshot.mounted_at(where) is None:
                setup.append(Command(("mount", "--bind", f"/{fs}", where), why="chroot needs it"))
                cleanup.insert(0, Command(("umount", where), why="undo the bind mount", cleanup=True))
    if layout.image_mode:
        if layout.mount:
            cleanup.append(Command(("umount", layout.esp_dir), why="release the image's ESP", cleanup=True))
        cleanup.append(Command(("mdadm", "--stop", request.device), why="release the members", cleanup=True))
        for member in layout.members:
            cleanup.append(Command(("losetup", "--detach", Var(member.loop_var)),
                                   why=f"detach {member.disk.given}", cleanup=True))
    return Group("setup", tuple(setup)), Group("cleanup", tuple(cleanup))
