"""pre_partition: one GPT ESP partition on every member disk."""

from __future__ import annotations

from . import disks as names
from .layout import Layout
from .steps import Command, Step, WaitForPartition


def plan(layout: Layout) -> tuple[Step, ...]:
    steps: list[Step] = []
    new = [m for m in layout.members if not m.exists]
    for m in new:
        if m.wipe:
            steps.append(Command(("wipefs", "--all", m.device),
                                 why=f"erase old signatures on {m.disk.given} (--wipe)"))
            steps.append(Command(("sgdisk", "--zap-all", m.device),
                                 why=f"erase the old partition tables of {m.disk.given} (--wipe)"))
        steps.append(Command(
            ("sgdisk", f"--new=1:{layout.first_sector}:{layout.last_sector}", "--typecode=1:EF00",
             f"--partition-guid=1:{m.guid}", f"--change-name=1:{names.PARTITION_NAME}", m.device),
            why=f"ESP partition on {m.disk.given}"))
        steps.append(WaitForPartition(m.device, 1, m.node, why="the kernel must see the new partition"))
    if new:
        steps.append(Command(("wipefs", "--all", *(m.node for m in new)),
                             why="no stale RAID or filesystem signature inside the new partitions"))
    return tuple(steps)
