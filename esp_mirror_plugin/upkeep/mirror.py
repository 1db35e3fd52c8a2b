"""The running mirror, read from the system: array, members, mount, firmware boot entries and
which disk this boot came from. Read-only; the upkeep commands plan from this snapshot."""

from __future__ import annotations

import os
from dataclasses import dataclass

from esp_mirror_plugin.errors import BadInput
from esp_mirror_plugin.hooks import bootentries
from esp_mirror_plugin.pipeline import adoption, naming
from esp_mirror_plugin.pipeline import record as records
from esp_mirror_plugin.pipeline.bootloaders import on_esp
from esp_mirror_plugin.pipeline.kinds import BootloaderKind
from esp_mirror_plugin.pipeline.record import Record, recorded_kind
from esp_mirror_plugin.system import nvram
from esp_mirror_plugin.system.discovery import (
    EFI_GLOBAL,
    EFIVARS,
    HostView,
    Mount,
    Unreadable,
    blkid_export,
    efivar,
    md_detail,
    read_mounts,
    secure_boot,
)
from esp_mirror_plugin.system.runner import CommandFailed, Runner
from esp_mirror_plugin.upkeep import history, lastcheck, loaders
from esp_mirror_plugin.upkeep import journal as journal_file
from esp_mirror_plugin.upkeep.lastcheck import LastCheck
from esp_mirror_plugin.upkeep.loaders import MemberLoaders
from esp_mirror_plugin.upkeep.settings import drift

LOADER_VENDOR = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"
NO_SUPERBLOCK = "No md superblock detected"


@dataclass(frozen=True)
class MemberState:
    node: str  # /dev/vda1
    disk: str  # /dev/vda
    slot: int | None  # role in the array; None for a spare
    state: str  # md's dev-*/state: in_sync, faulty, spare, ...
    partuuid: str  # GPT partition GUID (lower case)

    @property
    def active(self) -> bool:
        return "in_sync" in self.state.split(",") and "faulty" not in self.state

    @property
    def number(self) -> int:
        """The partition's number on its disk (the digits that end its node)."""
        digits = self.node[len(self.node.rstrip("0123456789")) :]
        return int(digits) if digits else 1

    @property
    def usable(self) -> bool:
        """In the array and not failed: active, or being rebuilt."""
        return "faulty" not in self.state


@dataclass(frozen=True)
class ArrayState:
    device: str  # /dev/md/esp
    kernel_name: str  # md127
    uuid: str
    level: str
    metadata: str
    raid_disks: int
    degraded: int  # missing or failed members
    array_state: str
    sync_action: str  # idle, check, resync, recover, repair
    sync_completed: str  # "none" or "done / total" sectors
    mismatch_cnt: int
    members: tuple[MemberState, ...]
    resync_start: str = "none"  # "none", or where a resync md still owes starts (sectors)

    def member(self, disk_or_node: str) -> MemberState | None:
        path = os.path.realpath(disk_or_node)
        return next((m for m in self.members if path in (m.node, m.disk)), None)


@dataclass(frozen=True)
class Returning:
    """A partition that carries a member of our array and is not in it, which heal takes back."""

    node: str
    disk: str
    events: int


@dataclass(frozen=True)
class OutOfArray:
    """The partitions of this machine that carry a member of the array and are not in it."""

    add: tuple[Returning, ...]  # heal takes them back
    left_out: tuple[str, ...]  # heal must not: why, and what to do


@dataclass(frozen=True)
class EntryState:
    member: MemberState
    entry: nvram.BootEntry | None  # our entry on this member's partition
    file_exists: bool | None  # the loader it names exists on the mounted ESP; None: ESP not mounted


@dataclass(frozen=True)
class MirrorState:
    record: Record | None
    array: ArrayState | None
    mount: Mount | None  # what is mounted at the record's mount point
    mounted_members: tuple[str, ...]  # members mounted directly (never should be)
    efivars: bool
    boot: nvram.BootState | None
    nvram_error: str | None  # why efibootmgr -v failed, when it did
    entries: tuple[EntryState, ...]
    boot_current: str | None
    loader_partuuid: str | None  # LoaderDevicePartUUID: the partition this boot came from
    settings: tuple[str, ...] = ()  # the installed system's settings that are not as esp-mirror writes them
    unfinished: tuple[str, ...] = ()  # commands that were interrupted, and how to finish them
    last_event: str | None = None  # the history's last line ("... healed at boot: ...")
    last_check: LastCheck | None = None  # what the last `esp-mirror check` found; None: none ran here
    last_check_error: str | None = None  # why the last check's result cannot be read, and what to do
    record_time: float | None = None  # when the record was last written (its mtime); None: no record
    strays: tuple[nvram.BootEntry, ...] = ()  # entries of a loader on the ESP that name no partition
    secure_boot: bool | None = None  # the firmware enforces Secure Boot; None: no EFI variables say
    loaders: tuple[MemberLoaders, ...] = ()  # the loader chain as each in-sync member holds it
    foreign: tuple[nvram.BootEntry, ...] = ()  # entries on a member's partition esp-mirror did not make
    # a degraded array's members that are still on a disk here but out of it (heal's), or why that
    # cannot be told; None when the array is not degraded (nothing was looked for)
    outside: OutOfArray | None = None
    outside_error: str | None = None

    @property
    def kind(self) -> BootloaderKind | None:
        """The recorded bootloader kind (from the loader's name for an older record)."""
        if self.record is None:
            return None
        return recorded_kind(self.record)

    def duplicate(self, entry: nvram.BootEntry) -> MemberState | None:
        """The member whose partition a foreign ``entry`` starts our loader from: it does what
        ours does (shim's fallback fbx64.efi makes one after a boot with empty NVRAM)."""
        if self.array is None or self.record is None:
            return None
        partuuids = {m.partuuid for m in self.array.members}
        if not bootentries.duplicates(entry, partuuids, self.record.loader):
            return None
        return next(m for m in self.array.members if m.partuuid == entry.partuuid)

    @property
    def booted_member(self) -> MemberState | None:
        """The member the firmware booted from: systemd's LoaderDevicePartUUID, else BootCurrent."""
        if self.array is None:
            return None
        uuid = self.loader_partuuid
        if uuid is None and self.boot is not None and self.boot_current:
            entry = self.boot.entry(self.boot_current)
            uuid = entry.partuuid if entry else None
        return next((m for m in self.array.members if uuid and m.partuuid == uuid), None)

    def problems(self) -> list[str]:
        """What is not healthy, one line each saying what to run; empty when all is well."""
        if self.array is None:
            return (
                [f"{self.record.array} is not running: assemble it (`mdadm --assemble --scan --run`)"]
                if self.record
                else []
            ) + list(self.unfinished)
        out = []
        a = self.array
        if a.degraded:
            out.append(self._degraded(a))
        for m in a.members:  # a failed one is in the degraded line, with its fix
            if not m.active and m.usable and a.sync_action == "idle":
                out.append(
                    f"member {m.node} is {m.state}: replace it with `esp-mirror replace --old {m.disk} --new DISK`"
                )
        if a.sync_action != "idle":
            out.append(f"{a.device} is busy: {a.sync_action} {a.sync_completed}")
        elif a.resync_start not in ("none", ""):  # md shows "idle" while a read-auto array owes its resync
            out.append(
                f"{a.device} owes a resync md has not started (array {a.array_state}; the members may differ): "
                f"run `mdadm --readwrite {a.device}`"
            )
        if a.mismatch_cnt:
            out.append(f"the last check found {a.mismatch_cnt} mismatched sectors: run `esp-mirror check`")
        for node in self.mounted_members:
            out.append(f"member {node} is mounted directly: unmount it, mount {a.device}")
        if self.record and (self.mount is None):
            out.append(f"nothing is mounted at {self.record.mountpoint}: run `mount {self.record.mountpoint}`")
        if self.nvram_error:
            out.append(
                f"the boot entries cannot be read (efibootmgr -v: {self.nvram_error}): check `efibootmgr -v` by hand"
            )
        out += self.settings
        out += self.unfinished
        if self.last_check_error:
            out.append(self.last_check_error)
        for stray in self.strays:
            out.append(
                f"boot entry {stray.number} {stray.label!r} starts {stray.loader} on the ESP but names no partition "
                "(HD(0,GPT,00000000-...), made by a bootctl that could not tell the array's partition): "
                "run `esp-mirror entries` to remove it"
            )
        for entry in self.foreign:
            member = self.duplicate(entry)
            if member is not None:
                out.append(
                    f"boot entry {entry.number} {entry.label!r} starts {entry.loader} from member {member.node} "
                    "but was not made by esp-mirror (shim's fallback makes one after a boot with no entry): "
                    "run `esp-mirror entries` to fold it into ours"
                )
        if self.kind is not None:
            out += loaders.unsigned_problems(self.secure_boot, self.loaders, self.kind)
        out += [d.problem() for d in loaders.differences(self.loaders)]
        if self.efivars:
            for e in self.entries:
                if e.entry is None:
                    out.append(f"no boot entry for {e.member.disk} ({e.member.partuuid}): run `esp-mirror entries`")
                elif e.file_exists is False:
                    out.append(
                        f"boot entry {e.entry.number} names {e.entry.loader}, which is not on the ESP: "
                        "re-run `esp-mirror apply` to install the bootloader again"
                    )
        return out

    def _degraded(self, a: ArrayState) -> str:
        """The degraded array, with the fix for each member it lacks: heal for one that is still on
        a disk here (out of the array), replace for a failed one and for one that is gone."""
        fixes = []
        present = self.outside.add if self.outside else ()
        if present:
            nodes = ", ".join(f"{r.node} ({r.disk})" for r in present)
            fixes.append(
                f"{nodes} {'is' if len(present) == 1 else 'are'} here but out of the array: run `esp-mirror heal`"
            )
        fixes += self.outside.left_out if self.outside else ()
        if self.outside_error:
            fixes.append(f"whether a member is still here cannot be told: {self.outside_error}")
        failed = [m for m in a.members if "faulty" in m.state]
        fixes += [f"{m.node} failed: run `esp-mirror replace --old {m.disk} --new DISK`" for m in failed]
        rebuilding = [m for m in a.members if m.usable and not m.active and m.slot is not None]
        if rebuilding and a.sync_action != "idle":
            nodes = ", ".join(m.node for m in rebuilding)
            fixes.append(f"md is rebuilding {nodes}: wait for it (`cat /proc/mdstat` shows how far)")
        else:
            rebuilding = []
        found = len(present) + len(self.outside.left_out if self.outside else ()) + len(failed) + len(rebuilding)
        if a.degraded > found:
            fixes.append("put in a new disk and run `esp-mirror replace --old missing --new DISK`")
        lead = f"{a.device} is degraded: {a.degraded} of {a.raid_disks} members missing or failed"
        return "; ".join([lead, *fixes])

    def exit_code(self) -> int:
        """0 healthy, 1 degraded or entries missing (or a command left unfinished), 2 not set up."""
        if self.record is None and self.array is None and not self.unfinished:
            return 2
        return 1 if self.array is None or self.problems() else 0


DEFAULT_ARRAY = "/dev/md/esp"  # the array looked at where no record names one


def read_mirror(
    runner: Runner,
    record: Record | None,
    host: HostView | None = None,
    array_device: str = DEFAULT_ARRAY,
    read_loaders: bool = True,
) -> MirrorState:
    """The mirror's state. ``read_loaders``: also read the loader chain from each in-sync member
    (mtools; what status shows): the commands that change things do not need it."""
    host = host or HostView()
    device = record.array if record else array_device
    array = read_array(runner, host, device)
    mounts = read_mounts(host)
    mount = next((m for m in reversed(mounts) if record and m.mountpoint == os.path.normpath(record.mountpoint)), None)
    members = {m.node for m in array.members} if array else set()
    mounted_members = tuple(m.device for m in mounts if m.device in members)
    efivars = bool(host.listdir(EFIVARS))
    boot, nvram_error = None, None
    if efivars:
        try:
            boot = nvram.parse(runner.run(("efibootmgr", "-v")).stdout)
        except CommandFailed as exc:
            nvram_error = exc.stderr_line
    entries: tuple[EntryState, ...] = ()
    if array and record and boot is not None:
        entries = tuple(_entry_state(m, boot, mount, host) for m in array.members if m.usable)
    foreign: tuple[nvram.BootEntry, ...] = ()
    if array and record and boot is not None:
        partuuids = {m.partuuid for m in array.members}
        ours = [e for e in boot.entries if bootentries.is_ours(e, record.entry_label, partuuids)]
        foreign = tuple(e for e in boot.entries if e.partuuid in partuuids and e not in ours)
    outside, outside_error = None, None
    if array and array.degraded:
        try:
            outside = out_of_array(runner, host, array)
        except BadInput as exc:
            outside_error = str(exc)
    chains: tuple[MemberLoaders, ...] = ()
    if array and record and read_loaders:
        active = [(m.node, m.disk) for m in array.members if m.active]
        chains = loaders.read_members(runner, active, loaders.chain(record.loader, record.loader_args))
    settings: list[str] = []
    if array and record:
        try:
            settings = drift(record, array.uuid, host.sysroot)
        except OSError as exc:
            settings = [f"cannot compare the installed system's settings ({exc}): run esp-mirror as root"]
    unfinished = []
    try:
        journal = journal_file.load(host.sysroot)
        if journal:
            unfinished.append(f"a repair from {journal.source} was interrupted: run `esp-mirror repair --source auto`")
    except BadInput as exc:
        unfinished.append(str(exc))
    try:
        adopting = adoption.load_journal(host.sysroot)
        if adopting:
            unfinished.append(
                f"an adoption of the ESP on partition {adopting.live} was interrupted "
                f"({'after' if adopting.phase == adoption.SWITCHED else 'before'} the switch to the array): "
                f"run it again to finish it: {adopting.command}"
            )
    except BadInput as exc:
        unfinished.append(str(exc))
    try:
        releasing = journal_file.load_release(host.sysroot)
        if releasing:
            unfinished.append(releasing.unfinished())
    except BadInput as exc:
        unfinished.append(str(exc))
    last_check, last_check_error = None, None
    try:
        last_check = lastcheck.load(host.sysroot)
    except BadInput as exc:
        last_check_error = str(exc)
    record_time = None
    if record is not None:
        try:
            record_time = os.stat(records.path_in(host.sysroot)).st_mtime
        except OSError:  # a record given without its file (a test), or gone since it was read
            record_time = None
    try:
        events = history.read(host.sysroot)
    except OSError as exc:
        events = [f"(the history {history.path_in(host.sysroot)} cannot be read: {exc.strerror})"]
    return MirrorState(
        record=record,
        array=array,
        mount=mount,
        mounted_members=mounted_members,
        efivars=efivars,
        boot=boot,
        nvram_error=nvram_error,
        entries=entries,
        boot_current=_boot_current(host),
        loader_partuuid=_loader_partuuid(host),
        settings=tuple(settings),
        unfinished=tuple(unfinished),
        last_event=events[-1] if events else None,
        last_check=last_check,
        last_check_error=last_check_error,
        record_time=record_time,
        strays=bootentries.strays(boot, host.exists, mount.mountpoint) if boot is not None and mount else (),
        secure_boot=secure_boot(host),
        loaders=chains,
        foreign=foreign,
        outside=outside,
        outside_error=outside_error,
    )


def read_array(runner: Runner, host: HostView, device: str) -> ArrayState | None:
    """The running array's state from md's sysfs files and blkid, or None when it is not running.

    :raises BadInput: a file or probe that cannot be read: an unknown state is never reported
        as a healthy one.
    """
    info = md_detail(runner, host, device)
    if info is None:
        return None
    try:
        return _array_state(runner, host, device, info)
    except Unreadable as exc:
        raise BadInput(f"{exc} while reading {device}: run esp-mirror as root") from None
    except CommandFailed as exc:
        raise BadInput(f"cannot probe a member of {device} ({exc.stderr_line}): run esp-mirror as root") from None


def examine(runner: Runner, node: str) -> dict[str, str] | None:
    """The md superblock of ``node`` (``--examine --export``), None when it has none.

    A FAT's boot sector ends in the MBR signature: mdadm reads a plain FAT partition (a released
    member, a live ESP) as an MBR and exits 0 with nothing to export, so no array UUID is no
    superblock too.

    :raises BadInput: it cannot be read: "cannot tell" is never "no superblock".
    """
    try:
        result = runner.run(("mdadm", "--examine", "--export", node), ok=(0, 1))
    except CommandFailed as exc:
        raise BadInput(f"cannot read the md superblock of {node} ({exc.stderr_line}): run esp-mirror as root") from None
    if result.returncode == 1:
        if NO_SUPERBLOCK in result.stderr:
            return None
        line = (result.stderr.strip().splitlines() or ["mdadm --examine failed"])[-1]
        raise BadInput(f"cannot read the md superblock of {node} ({line}): run esp-mirror as root")
    info = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    return info if info.get("MD_UUID") else None


def _events(info: dict[str, str], node: str) -> int:
    try:
        return int(info["MD_EVENTS"])
    except (KeyError, ValueError):
        raise BadInput(
            f"mdadm --examine --export {node} shows no event count: is mdadm 3.x or later installed?"
        ) from None


def _partitions(host: HostView, device: str | None) -> list[str]:
    """Kernel names of the partitions to look at: all, or the one given."""
    if device is not None:
        name = os.path.basename(host.realpath(device))
        if not host.exists(f"/sys/class/block/{name}/partition"):
            raise BadInput(f"{device} is not a partition: give the partition that came back (e.g. /dev/sdb1)")
        return [name]
    return [n for n in host.listdir("/sys/class/block") if host.exists(f"/sys/class/block/{n}/partition")]


def out_of_array(runner: Runner, host: HostView, array: ArrayState, device: str | None = None) -> OutOfArray:
    """The partitions here (or ``device`` alone) that carry a member of ``array`` and are not in
    it, as heal decides from their superblocks (:mod:`esp_mirror_plugin.upkeep.heal`): those it
    takes back, and those it must leave out, with why and what to do.

    :raises BadInput: a superblock cannot be read, or the array has no active member.
    """
    ours = naming.mdadm_uuid(array.uuid)
    active = next((m for m in array.members if m.active), None)
    if active is None:
        raise BadInput(f"{array.device} has no active member to copy from: see `esp-mirror status`")
    array_events = _events(examine(runner, active.node) or {}, active.node)
    members = {os.path.basename(m.node) for m in array.members}
    add: list[Returning] = []
    left_out: list[str] = []
    for name in _partitions(host, device):
        if name in members:
            continue
        node = f"/dev/{name}"
        info = examine(runner, node)
        if info is None or naming.mdadm_uuid(info.get("MD_UUID", "")) != ours:
            continue  # not ours: another array's member, or no md at all
        disk = "/dev/" + os.path.basename(os.path.dirname(host.realpath(f"/sys/class/block/{name}")))
        holders = host.listdir(f"/sys/class/block/{name}/holders")
        events = _events(info, node)
        if holders:
            left_out.append(
                f"{node} carries a member of {array.device} but {', '.join(holders)} holds it: stop that "
                f"(`mdadm --stop /dev/{holders[0]}` if it is an array), then run `esp-mirror heal`"
            )
        elif events > array_events:
            left_out.append(
                f"{node} ({disk}) has newer writes than {array.device} (events {events} > {array_events}) "
                "and is not overwritten automatically: to keep the running array's copy, run "
                f"`mdadm {array.device} --add {node}`"
            )
        else:
            add.append(Returning(node, disk, events))
    return OutOfArray(tuple(add), tuple(left_out))


def _array_state(runner: Runner, host: HostView, device: str, info: dict[str, str]) -> ArrayState:
    name = os.path.basename(host.realpath(device))
    md = f"/sys/block/{name}/md"
    members = []
    for entry in host.listdir(md):
        if not entry.startswith("dev-"):
            continue
        node = f"/dev/{entry[4:]}"
        slot = host.attr(f"{md}/{entry}/slot")
        disk = os.path.basename(os.path.dirname(host.realpath(f"/sys/class/block/{entry[4:]}")))
        part = blkid_export(runner, ("blkid", "-p", "-o", "export", node))
        members.append(
            MemberState(
                node=node,
                disk=f"/dev/{disk}",
                slot=int(slot) if slot.isdigit() else None,
                state=host.attr(f"{md}/{entry}/state"),
                partuuid=part.get("PART_ENTRY_UUID", "").lower(),
            )
        )
    members.sort(key=lambda m: (m.slot is None, m.slot if m.slot is not None else 0, m.node))

    def number(key: str) -> int:
        return int(host.attr(f"{md}/{key}"))

    return ArrayState(
        device=device,
        kernel_name=name,
        uuid=info.get("MD_UUID", ""),
        level=info.get("MD_LEVEL", ""),
        metadata=info.get("MD_METADATA", ""),
        raid_disks=number("raid_disks"),
        degraded=number("degraded"),
        array_state=host.attr(f"{md}/array_state"),
        sync_action=host.attr(f"{md}/sync_action"),
        sync_completed=host.attr(f"{md}/sync_completed"),
        mismatch_cnt=number("mismatch_cnt"),
        members=tuple(members),
        resync_start=(host.read(f"{md}/resync_start") or "none").strip(),
    )


def _entry_state(member: MemberState, boot: nvram.BootState, mount: Mount | None, host: HostView) -> EntryState:
    entry = next(
        (e for e in boot.entries if e.partuuid == member.partuuid and f" ({bootentries.TAG} " in e.label), None
    )
    exists = None
    if entry is not None and mount is not None:
        exists = host.exists(on_esp(mount.mountpoint, entry.loader))
    return EntryState(member, entry, exists)


def _boot_current(host: HostView) -> str | None:
    data = efivar(host, f"BootCurrent-{EFI_GLOBAL}")
    return f"{int.from_bytes(data[:2], 'little'):04X}" if data else None


def _loader_partuuid(host: HostView) -> str | None:
    data = efivar(host, f"LoaderDevicePartUUID-{LOADER_VENDOR}")
    return data.decode("utf-16-le").rstrip("\0").lower() if data else None
