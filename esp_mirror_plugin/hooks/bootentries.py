"""Firmware boot entries: plan one entry per member disk (:mod:`esp_mirror_plugin.system.nvram`
reads them).

An entry of ours carries " (esp-mirror <disk>)" in its label and points at one member's partition
GUID (efibootmgr writes ``HD(part,GPT,<GUID>,…)/File(\\EFI\\…)``), so every member needs its own entry.
Planning is idempotent: matching entries are kept, missing ones created with chosen free numbers,
stale ones of ours deleted, BootOrder set explicitly (ours first, in disk order, then the rest).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from esp_mirror_plugin.pipeline.bootloaders import on_esp
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


NO_PARTITION = "00000000-0000-0000-0000-000000000000"


def strays(state: BootState, exists: Callable[[str], bool], esp_dir: str) -> tuple[BootEntry, ...]:
    """Entries someone else made that start a loader on the mirrored ESP (mounted at ``esp_dir``;
    ``exists`` says whether a path is there) but name no partition (``HD(0,GPT,00000000-...)``):
    what ``bootctl`` writes when it registers itself on an ESP it cannot tell the partition of,
    an md array. The firmware cannot start them; they are removed. An entry for another disk's
    partition is never one, whatever file it starts."""
    return tuple(
        e for e in state.entries if e.partuuid == NO_PARTITION and e.loader and exists(on_esp(esp_dir, e.loader))
    )


def duplicates(entry: BootEntry, partuuids: set[str], loader: str) -> bool:
    """An entry someone else made (the distribution's installer, shim's fallback) that starts our
    loader from one of our partitions: it does what an entry of ours does, so it is folded into
    ours (removed), never kept beside it."""
    return entry.partuuid in partuuids and entry.loader.lower() == loader.lower()


@dataclass(frozen=True)
class _Entries:
    kept: dict[str, str]  # partuuid -> the number of a matching entry of ours
    delete: tuple[BootEntry, ...]  # stale entries of ours, and others' entries folded into ours
    numbers: dict[str, str]  # partuuid -> the number of its entry of ours, kept or to be created


def _entries(
    state: BootState,
    members: list[Member],
    entry_label: str,
    loader: str,
    stray: tuple[BootEntry, ...] = (),
    args: str = "",
) -> _Entries:
    partuuids = {m.partuuid for m in members}
    kept: dict[str, str] = {}
    delete: list[BootEntry] = []
    for entry in state.entries:
        if not is_ours(entry, entry_label, partuuids):
            if duplicates(entry, partuuids, loader) or entry in stray:
                delete.append(entry)
            continue
        wanted = next(
            (m for m in members if m.partuuid == entry.partuuid and label_for(entry_label, m) == entry.label), None
        )
        same = entry.loader.lower() == loader.lower() and entry.args == args
        if wanted and entry.active and same and wanted.partuuid not in kept:
            kept[wanted.partuuid] = entry.number
        else:
            delete.append(entry)
    used = {e.number for e in state.entries} | set(state.order)  # a dangling BootOrder number too
    free = (f"{n:04X}" for n in range(0x10000) if f"{n:04X}" not in used)
    numbers = {m.partuuid: kept.get(m.partuuid) or next(free) for m in members}  # numbers in disk order
    return _Entries(kept, tuple(delete), numbers)


def plan(
    state: BootState,
    members: list[Member],
    entry_label: str,
    loader: str,
    first: tuple[str, ...] | None = None,
    stray: tuple[BootEntry, ...] = (),
    args: str = "",
) -> tuple[Command, ...]:
    """The efibootmgr commands that make NVRAM hold exactly one entry of ours per member.

    :param first: the members' partition GUIDs in the order their entries lead BootOrder
        (default: disk order).
    :param stray: entries of a loader on the ESP that name no partition (:func:`strays`): removed.
    :param args: what each entry passes its loader (``efibootmgr --unicode``; shim: its second stage).
    """
    planned = _entries(state, members, entry_label, loader, stray, args)
    commands = []
    for entry in planned.delete:
        what = (
            "stale entry"
            if f" ({TAG} " in entry.label
            else "entry that names no partition (HD(0,GPT,00000000-...)): the firmware cannot start it"
            if entry in stray
            else "entry that duplicates ours (same partition and loader)"
        )
        commands.append(
            Command(
                ("efibootmgr", "--quiet", "--bootnum", entry.number, "--delete-bootnum"),
                why=f"remove {what} {entry.number} {entry.label!r}",
            )
        )
    for member in reversed(members):  # each create goes first in BootOrder: last disk first
        if member.partuuid in planned.kept:
            continue
        commands.append(
            Command(
                (
                    "efibootmgr",
                    "--quiet",
                    "--create",
                    "--bootnum",
                    planned.numbers[member.partuuid],
                    "--disk",
                    member.disk,
                    "--part",
                    str(member.part),
                    "--label",
                    label_for(entry_label, member),
                    "--loader",
                    loader,
                    *(("--unicode", args) if args else ()),
                ),
                why=f"boot entry for {member.tag} (partition {member.partuuid})",
            )
        )
    desired = _desired(state, planned, first or tuple(m.partuuid for m in members))
    if _order_after(state.order, commands) != desired:
        commands.append(
            Command(
                ("efibootmgr", "--quiet", "--bootorder", ",".join(desired)),
                why="ours first, in disk order; the other entries keep their order"
                if first is None
                else "ours first; the other entries keep their order",
            )
        )
    return tuple(commands)


def disk_order(state: BootState, members: list[Member], entry_label: str, loader: str, args: str = "") -> Command:
    """Once :func:`plan`'s commands ran (with another ``first``): ours first in disk order."""
    planned = _entries(state, members, entry_label, loader, args=args)
    desired = _desired(state, planned, tuple(m.partuuid for m in members))
    return Command(
        ("efibootmgr", "--quiet", "--bootorder", ",".join(desired)),
        why="ours first, in disk order; the other entries keep their order",
    )


def _desired(state: BootState, planned: _Entries, first: tuple[str, ...]) -> tuple[str, ...]:
    ours = [planned.numbers[p] for p in first]
    deleted = {e.number for e in planned.delete}
    present = {e.number for e in state.entries}  # a BootOrder number without its Boot#### is dropped
    rest = [n for n in state.order if n not in ours and n not in deleted and n in present]
    return tuple(ours + rest)


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


def released_label(entry_label: str, member: Member) -> str:
    """The label of a released disk's entry (``esp-mirror release``): the disk named as in ours,
    without esp-mirror's tag, so no esp-mirror command takes it for one of its own and removes
    it as stale once its partition is no member."""
    return f"{entry_label} ({member.tag})"


def release(
    state: BootState,
    released: list[Member],
    stay: set[str],
    entry_label: str,
    loader: str,
    everything: bool = False,
) -> tuple[Command, ...]:
    """The efibootmgr commands that give each ``released`` disk an entry of its own, starting
    ``loader`` from its partition under :func:`released_label`: made before esp-mirror's entry
    for that partition is removed, so the disk is never without one. BootOrder: the entries of
    ours of the members that stay (their partition GUIDs: ``stay``), then the released disks' in
    the order given, then the rest. An entry already made (a release run again) is kept. With
    ``everything`` (the mirror undone) every other entry of esp-mirror's goes too: a member's
    that is not here to be released."""
    partuuids = {m.partuuid for m in released}
    kept: dict[str, str] = {}
    delete: list[BootEntry] = []
    for entry in state.entries:
        if entry.partuuid not in partuuids:
            if everything and is_ours(entry, entry_label, set()):
                delete.append(entry)
            continue
        member = next(m for m in released if m.partuuid == entry.partuuid)
        own = entry.label == released_label(entry_label, member) and entry.loader.lower() == loader.lower()
        if own and entry.active and member.partuuid not in kept:
            kept[member.partuuid] = entry.number
        elif f" ({TAG} " in entry.label:
            delete.append(entry)
    used = {e.number for e in state.entries} | set(state.order)
    free = (f"{n:04X}" for n in range(0x10000) if f"{n:04X}" not in used)
    numbers = {m.partuuid: kept.get(m.partuuid) or next(free) for m in released}
    commands = [
        Command(
            (
                "efibootmgr",
                "--quiet",
                "--create",
                "--bootnum",
                numbers[m.partuuid],
                "--disk",
                m.disk,
                "--part",
                str(m.part),
                "--label",
                released_label(entry_label, m),
                "--loader",
                loader,
            ),
            why=f"{m.tag} boots alone from its partition {m.partuuid}: an entry that is not esp-mirror's",
        )
        for m in reversed(released)
        if m.partuuid not in kept
    ]
    commands += [
        Command(
            ("efibootmgr", "--quiet", "--bootnum", e.number, "--delete-bootnum"),
            why=f"remove esp-mirror's entry {e.number} {e.label!r}: its partition is no member now",
        )
        for e in delete
    ]
    ours = [
        n
        for n in state.order
        if (e := state.entry(n)) is not None and e.partuuid in stay and is_ours(e, entry_label, stay)
    ]
    plain = [numbers[m.partuuid] for m in released]
    gone = {e.number for e in delete}
    present = {e.number for e in state.entries}
    rest = [n for n in state.order if n not in ours and n not in plain and n not in gone and n in present]
    desired = tuple(ours + plain + rest)
    if _order_after(state.order, commands) != desired:
        commands.append(
            Command(
                ("efibootmgr", "--quiet", "--bootorder", ",".join(desired)),
                why="the mirror's entries first, then the released disks', then the others in their order",
            )
        )
    return tuple(commands)
