"""pre_partition: one GPT ESP partition on every member disk."""

from __future__ import annotations

from collections.abc import Sequence

from esp_mirror_plugin.pipeline import naming
from esp_mirror_plugin.pipeline.layout import Layout, Member
from esp_mirror_plugin.pipeline.steps import Command, Settle, Step, WaitForPartition


def plan(layout: Layout) -> tuple[Step, ...]:
    # Before a new array is created every member is wiped, also ESP partitions made by an
    # earlier run that stopped before its wipefs.
    return steps(layout.members, layout.first_sector, layout.last_sector, wipe_all=layout.array_action == "create")


def steps(members: Sequence[Member], first_sector: int, last_sector: int, wipe_all: bool = False) -> tuple[Step, ...]:
    """Partition every member disk that has no ESP of ours yet, sectors first..last, then clear
    old signatures inside the new partitions (inside all of them with ``wipe_all``).

    A partition that is in the table already may still be unknown to the kernel (a run killed
    after sgdisk wrote the table, before the kernel re-read it): every member waits for its node,
    which asks the kernel with ``partx --add`` when it is missing.
    """
    out: list[Step] = []
    new = [m for m in members if not m.exists]
    for m in members:
        if m.exists:
            out.append(
                WaitForPartition(m.device, 1, m.node, why="the kernel must know the partition before it is used")
            )
            continue
        if m.wipe:
            out.append(Command(("wipefs", "--all", m.device), why=f"erase old signatures on {m.disk.given} (--wipe)"))
        if m.wipe or not m.disk.pttype:
            why = (
                f"erase the old partition tables of {m.disk.given} (--wipe)"
                if m.wipe
                else f"{m.disk.given} holds no table, but a killed sgdisk may have left half a GPT that blkid "
                "does not see and sgdisk --new trips on; only the GPT areas are written, as --new does"
            )
            # sgdisk exits 2 on a GPT it cannot read, after erasing it all the same
            out.append(Command(("sgdisk", "--zap-all", m.device), ok_codes=(0, 2), why=why))
        out.append(
            Command(
                (
                    "sgdisk",
                    f"--new=1:{first_sector}:{last_sector}",
                    "--typecode=1:EF00",
                    f"--partition-guid=1:{m.guid}",
                    f"--change-name=1:{naming.PARTITION_NAME}",
                    m.device,
                ),
                why=f"ESP partition on {m.disk.given}",
            )
        )
        out.append(WaitForPartition(m.device, 1, m.node, why="the kernel must see the new partition"))
    if new:
        out.append(Settle(why="udev has seen the new partitions before they are used"))
    wipe = members if wipe_all else new
    if wipe:
        out.append(
            Command(
                ("wipefs", "--all", *(m.node for m in wipe)),
                why="no stale RAID or filesystem signature inside the ESP partitions",
            )
        )
    return tuple(out)
