"""pre_partition: one GPT ESP partition on every member disk, and nothing else of any disk touched.

Where a member's partition comes from was decided by :mod:`esp_mirror_plugin.pipeline.members`:
partition 1 is added in the free space (``sgdisk`` writes that one table entry), an empty ESP
partition is taken where it is, a member of the array is kept. Only ``--wipe`` erases whole
disks, and the plan lists every partition it destroys.
"""

from __future__ import annotations

from collections.abc import Sequence

from esp_mirror_plugin.pipeline import naming
from esp_mirror_plugin.pipeline.kinds import EspFrom
from esp_mirror_plugin.pipeline.layout import Layout
from esp_mirror_plugin.pipeline.members import Member
from esp_mirror_plugin.pipeline.steps import Command, Settle, Step, WaitForPartition, render_arg


def plan(layout: Layout) -> tuple[tuple[Step, ...], tuple[str, ...]]:
    """(steps, notes) of apply's pre_partition. Before a new array is created every member is
    wiped inside, also ESP partitions made by an earlier run that stopped before its wipefs."""
    wipe_all = layout.array_action == "create"
    return steps(layout.members, layout.first_sector, layout.last_sector, wipe_all=wipe_all), notes(layout.members)


def notes(members: Sequence[Member]) -> tuple[str, ...]:
    """What the plan says of each disk's other partitions: left exactly as they are, or (--wipe)
    erased, each one named."""
    out = []
    for m in members:
        if m.erased:
            out.append(f"--wipe erases all of {m.disk.given}: {'; '.join(m.erased)}")
        elif m.beside:
            what = {
                EspFrom.MADE: "only partition 1 is added to its table",
                EspFrom.TAKEN: f"its empty ESP partition {render_arg(m.node)} is taken as it is",
                EspFrom.MEMBER: f"{render_arg(m.node)} is a member of the mirror already",
                EspFrom.ADOPTED: f"its ESP {render_arg(m.node)} joins the mirror (its files kept in the backup)",
                EspFrom.LIVE: f"the live ESP {render_arg(m.node)} joins the mirror last",
                EspFrom.COPIED: f"{render_arg(m.node)} of the copied table joins the mirror",
            }[m.source]
            out.append(f"{m.disk.given}: {what}; left exactly as they are: {'; '.join(m.beside)}")
    return tuple(out)


def steps(members: Sequence[Member], first_sector: int, last_sector: int, wipe_all: bool = False) -> tuple[Step, ...]:
    """Partition every member disk that has no ESP partition yet, sectors first..last, then clear
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
                WaitForPartition(m.device, m.number, m.node, why="the kernel must know the partition before it is used")
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
                why=f"ESP partition on {m.disk.given}"
                + (" (sgdisk writes this one entry of its table; no other partition changes)" if m.beside else ""),
            )
        )
        out.append(WaitForPartition(m.device, 1, m.node, why="the kernel must see the new partition"))
    if new:
        out.append(Settle(why="udev has seen the new partitions before they are used"))
    wipe = [m for m in members if m.source is not EspFrom.LIVE] if wipe_all else new
    wipe += [m for m in members if m.source is EspFrom.TAKEN and m not in wipe]
    if wipe:
        out.append(
            Command(
                ("wipefs", "--all", *(m.node for m in wipe)),
                why="no stale RAID or filesystem signature inside the ESP partitions",
            )
        )
    return tuple(out)
