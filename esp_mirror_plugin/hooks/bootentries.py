"""Firmware boot entries: plan one entry per member disk (:mod:`esp_mirror_plugin.system.nvram`
reads them).

An entry of ours carries " (esp-mirror <disk>)" in its label and points at one member's partition
GUID (efibootmgr writes ``HD(part,GPT,<GUID>,…)/File(\\EFI\\…)``), so every member needs its own entry.
Planning is idempotent: matching entries are kept, missing ones created with chosen free numbers,
stale ones of ours deleted, BootOrder set explicitly (ours first, in disk order, then the rest).
"""

from __future__ import annotations

from dataclasses import dataclass

from esp_mirror_plugin.pipeline.steps import Command
from esp_mirror_plugin.system.nvram import BootEntry, BootState

TAG = "esp-mirror"


@dataclass(frozen=True)
class Member:
    """One member disk as a boot entry sees it."""

    disk: str  # the whole-disk device for `efibootmgr --disk`
    tag: str  # names the disk in the label (serial or kernel name)
    part: int
    partuuid: str


def label_for(entry_label: str, member: Member) -> str:
    return f"{entry_label} ({TAG} {member.tag})"


def is_ours(entry: BootEntry, entry_label: str, partuuids: set[str]) -> bool:
    """Our entries: tagged, and either on one of our partitions or under our label."""
    tagged = f" ({TAG} " in entry.label and entry.label.endswith(")")
    return tagged and (entry.partuuid in partuuids or entry.label.startswith(f"{entry_label} ({TAG} "))


def plan(state: BootState, members: list[Member], entry_label: str, loader: str) -> tuple[Command, ...]:
    """The efibootmgr commands that make NVRAM hold exactly one entry of ours per member."""
    partuuids = {m.partuuid for m in members}
    ours = [e for e in state.entries if is_ours(e, entry_label, partuuids)]
    kept: dict[str, str] = {}  # partuuid -> boot number
    delete: list[BootEntry] = []
    for entry in ours:
        wanted = next(
            (m for m in members if m.partuuid == entry.partuuid and label_for(entry_label, m) == entry.label), None
        )
        if wanted and entry.active and entry.loader.lower() == loader.lower() and wanted.partuuid not in kept:
            kept[wanted.partuuid] = entry.number
        else:
            delete.append(entry)
    used = {e.number for e in state.entries} | set(state.order)  # a dangling BootOrder number too
    free = (f"{n:04X}" for n in range(0x10000) if f"{n:04X}" not in used)
    numbers, commands = {}, []
    for entry in delete:
        commands.append(
            Command(
                ("efibootmgr", "--quiet", "--bootnum", entry.number, "--delete-bootnum"),
                why=f"remove stale entry {entry.number} {entry.label!r}",
            )
        )
    for member in members:  # numbers in disk order
        numbers[member.partuuid] = kept.get(member.partuuid) or next(free)
    for member in reversed(members):  # each create goes first in BootOrder: last disk first
        if member.partuuid in kept:
            continue
        number = numbers[member.partuuid]
        commands.append(
            Command(
                (
                    "efibootmgr",
                    "--quiet",
                    "--create",
                    "--bootnum",
                    number,
                    "--disk",
                    member.disk,
                    "--part",
                    str(member.part),
                    "--label",
                    label_for(entry_label, member),
                    "--loader",
                    loader,
                ),
                why=f"boot entry for {member.tag} (partition {member.partuuid})",
            )
        )
    deleted = {e.number for e in delete}
    first = [numbers[m.partuuid] for m in members]
    present = {e.number for e in state.entries}  # a BootOrder number without its Boot#### is dropped
    rest = [n for n in state.order if n not in first and n not in deleted and n in present]
    desired = tuple(first + rest)
    if _order_after(state.order, commands) != desired:
        commands.append(
            Command(
                ("efibootmgr", "--quiet", "--bootorder", ",".join(desired)),
                why="ours first, in disk order; the other entries keep their order",
            )
        )
    return tuple(commands)


def _order_after(order: tuple[str, ...], commands: list[Command]) -> tuple[str, ...]:
    """BootOrder after the commands: efibootmgr drops a deleted entry from it and puts a created one
    first. Entries are created last disk first, so on a clean NVRAM no --bootorder is needed."""
    result = list(order)
    for command in commands:
        number = str(command.argv[command.argv.index("--bootnum") + 1])
        result = [n for n in result if n != number]
        if "--create" in command.argv:
            result.insert(0, number)
    return tuple(result)
