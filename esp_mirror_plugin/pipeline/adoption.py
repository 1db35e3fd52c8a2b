"""`esp-mirror adopt`: a running system's ESP taken into the mirror, with no reinstall and no
moment without a bootable ESP.

The ESP the system boots from now (the *live* ESP: what the target's fstab mounts at the
profile's mount point, or ``--esp``) stays untouched until the mirror holds a verified copy
of it and the system uses the mirror. In order (:mod:`esp_mirror_plugin.hooks.adopt` plans it):

1. backups under /var/lib/esp-mirror/adopt/: a tar of every ESP involved, each disk's GPT
   (``sgdisk --backup``), the firmware entries (``efibootmgr -v``) and the fstab lines the mirror
   takes over; then the journal /var/lib/esp-mirror/adopt.json (phase "copy");
2. the array made degraded on the other members: a blank disk gets partition 1 as apply makes
   it, an ESP partition another disk has already becomes a member where it is (nothing else on
   that disk changes); FAT32 with the live ESP's label, the live ESP's files copied onto it and
   checked (every directory, every file's sha256);
3. the switch: mdadm.conf lists the array, fstab mounts it (the old line commented out in the
   same write), the live ESP unmounted and the array mounted in its place; journal phase
   "switched";
4. what apply does next (the initramfs, the bootloader on the array, one boot entry per disk,
   the disk of the live ESP last in BootOrder, the installed system's group);
5. only then the live ESP's partition is wiped and added, md copies the array onto it, BootOrder
   gets the disk order, and the journal goes.

Run again after an interruption, the same command finds where it stopped: before the switch
(the array does not hold the system's ESP yet) it makes the array's FAT again and copies again;
after it (the array is mounted at the mount point) it goes on from step 4. What it looks at is the
machine itself (what is mounted where, which partitions are in the array); the journal says
which partition was the live ESP once fstab no longer names it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

from esp_mirror_plugin.errors import BadInput, size_text
from esp_mirror_plugin.pipeline import checks, fat, members, naming
from esp_mirror_plugin.pipeline.bootloaders import spec
from esp_mirror_plugin.pipeline.disks import GPT_BACKUP, MIB, Holds, model
from esp_mirror_plugin.pipeline.kinds import AdoptPhase, EspFrom, Init
from esp_mirror_plugin.pipeline.members import ArrayPlan, Member
from esp_mirror_plugin.pipeline.profiles import Profile
from esp_mirror_plugin.pipeline.request import Resolved
from esp_mirror_plugin.system.discovery import DiskFacts, HostView, Mount, Partition, Snapshot
from esp_mirror_plugin.system.runner import CommandFailed, Runner
from esp_mirror_plugin.system.state import ADOPT_BACKUPS as BACKUP_DIR
from esp_mirror_plugin.system.state import ADOPT_JOURNAL as JOURNAL
from esp_mirror_plugin.system.state import STATE_DIR
from esp_mirror_plugin.system.target import Target

STAGING = "/run/esp-mirror/adopt"  # the new array while the files are copied onto it
READING = "/run/esp-mirror/adopt-read"  # another disk's ESP, mounted read-only for its backup
NEW, COPY, SWITCHED = AdoptPhase.NEW, AdoptPhase.COPY, AdoptPhase.SWITCHED
# Where distributions and boot managers keep scripts that copy one ESP onto the others.
SYNC_HOOK_DIRS = (
    "etc/zfsbootmenu/generate-zbm.post.d",
    "etc/kernel/postinst.d",
    "etc/kernel/postrm.d",
    "etc/kernel/install.d",
    "etc/initramfs/post-update.d",
    "etc/initramfs-tools/hooks",
    "etc/grub.d",
)
PROXMOX_UUIDS = "etc/kernel/proxmox-boot-uuids"
_FSCK_COUNT = re.compile(r"(\d+) files, (\d+)/(\d+) clusters")


class NothingToDo(Exception):
    """The target is an esp-mirror mirror already: adopt has nothing to do (exit code 0)."""


@dataclass(frozen=True)
class AdoptJournal:
    """What an adoption that has begun to change the machine is doing (/var/lib/esp-mirror/adopt.json)."""

    command: str  # the command line, for status and the message after a failure
    live: str  # the partition GUID of the live ESP (lower case)
    disks: tuple[str, ...]  # the disks as given
    phase: AdoptPhase = COPY  # COPY: the array may be made again; SWITCHED: the array is the ESP now

    def text(self) -> str:
        body = {"command": self.command, "live": self.live, "disks": list(self.disks), "phase": str(self.phase)}
        return json.dumps(body, indent=2) + "\n"


def journal_path(root: str) -> str:
    return os.path.join(root, JOURNAL)


def load_journal(root: str) -> AdoptJournal | None:
    """The journal of an adoption that has not finished, or None.

    :raises BadInput: it exists but cannot be read (naming the file and what to do).
    """
    path = journal_path(root)
    try:
        with open(path, encoding="utf-8") as handle:
            body = json.load(handle)
        phase = str(body["phase"])
        journal = AdoptJournal(
            command=str(body["command"]),
            live=str(body["live"]).lower(),
            disks=tuple(str(d) for d in body["disks"]),
            phase=AdoptPhase(phase) if phase in (COPY, SWITCHED) else COPY,
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BadInput(
            f"cannot read the journal of an interrupted adoption {path} ({exc}): see `esp-mirror status` and "
            f"the backups in {os.path.join(root, BACKUP_DIR)}, then remove the file and run adopt again"
        ) from None
    if phase not in (COPY, SWITCHED):
        raise BadInput(f"{path} has an unknown phase {phase!r}: remove it and run adopt again")
    return journal


@dataclass(frozen=True)
class FatUse:
    """What ``fsck.fat -n`` says of a FAT: damage (lines), and how much of it is in use."""

    problems: tuple[str, ...]
    files: int = 0
    used_clusters: int = 0
    clusters: int = 0
    missing: bool = False  # the kernel has no node for the partition: nothing could be read

    def used_bytes(self, size: int) -> int:
        """At most this many bytes are in use (a cluster is at most ``size`` / clusters)."""
        return -(-self.used_clusters * size // self.clusters) if self.clusters else size


def read_fat(runner: Runner, node: str) -> FatUse:
    """``fsck.fat -n`` of ``node`` (read-only; the dirty bit of a mounted FAT is no damage)."""
    try:
        result = runner.run(("fsck.fat", "-n", node), ok=(0, 1))
    except CommandFailed as exc:
        text = exc.result.stdout + exc.result.stderr
        return FatUse(tuple(fat.fsck_problems(text) or [exc.stderr_line]))
    text = result.stdout + result.stderr
    count = _FSCK_COUNT.search(text)
    problems = tuple(fat.fsck_problems(text)) if result.returncode else ()
    if count is None:
        return FatUse(problems or ("fsck.fat printed no file count",))
    files, used, total = (int(n) for n in count.groups())
    return FatUse(problems, files, used, total)


@dataclass(frozen=True)
class Facts:
    """What an adoption reads besides the snapshot: the target's fstab and journal, whether
    esp-mirror set the target up already, each ESP's FAT, free space for the backups and the
    scripts that keep ESPs in step."""

    fstab: str
    journal: AdoptJournal | None
    record: bool  # /etc/esp-mirror/esp-mirror.yaml exists
    fats: dict[str, FatUse]  # partition node -> its FAT
    free: int  # bytes free where the backups go
    sync_hooks: tuple[str, ...]  # files that copy between ESPs (made unnecessary by the mirror)
    shim: bool  # the target has Debian's signed shim (GRUB's entries start shimx64.efi)
    command: str  # this command line
    esp: str | None = None  # --esp: the live ESP's partition, when the mount and fstab do not say


@dataclass(frozen=True)
class Backup:
    """One ESP's files, kept as a tar before the first change."""

    node: str
    source: str  # the directory its files are read from (a mount point)
    mount: bool  # it has to be mounted read-only at ``source`` first
    tar: str


@dataclass(frozen=True)
class Adoption:
    """How a live ESP is taken into the mirror, and how far an earlier run of it got."""

    live: Member  # the live ESP's partition: it joins the array last
    label: str  # the FAT label the array gets (the live ESP's)
    phase: AdoptPhase
    journal: AdoptJournal  # what the journal says, or will say
    component_kib: int  # what each member gives the array (mdadm --size): fits the smallest
    retire: tuple[str, ...] = ()  # fstab lines that mount an ESP involved: the mirror's line replaces them
    live_mounted: bool = True  # the live ESP is mounted at the mount point now
    staged: bool = False  # the array is mounted at STAGING (a run stopped while copying)
    stop: tuple[str, ...] = ()  # md arrays holding the other members' partitions: stopped before the create
    unmount: tuple[str, ...] = ()  # other ESPs' mount points, taken down before they are wiped
    joined: bool = False  # the live partition is in the array already
    backups: tuple[Backup, ...] = ()
    gpt_backups: tuple[tuple[str, str], ...] = ()  # (disk, file)
    backup_dir: str = ""
    fstab_lines: str = ""  # what is kept of fstab (the lines that mount an ESP involved)
    boot_text: str = ""  # efibootmgr -v as read
    notes: tuple[str, ...] = ()
    others: tuple[Member, ...] = field(default=())  # every member but the live one, in disk order
    reload_systemd: bool = False  # the running system's systemd reads fstab again after the switch
    staging: str = STAGING  # where the new array is mounted while the files are copied onto it

    @property
    def switched(self) -> bool:
        return self.phase == SWITCHED


def gather(
    request: Resolved,
    snapshot: Snapshot,
    runner: Runner,
    target: Target,
    command: str,
    esp: str | None = None,
) -> Facts:
    """Read what :func:`build` decides from (read-only)."""
    journal = load_journal(target.root)
    fats: dict[str, FatUse] = {}
    if journal is None or journal.phase != SWITCHED:  # the FATs whose files are backed up and copied
        for disk in snapshot.disks:
            for part in disk.partitions:
                if part.fstype != "vfat":
                    continue
                if disk.kind == "block" and not part.devnum:  # in the table, unknown to the kernel
                    fats[_node(disk, part)] = FatUse(("the kernel has no node for it",), missing=True)
                else:
                    fats[_node(disk, part)] = read_fat(runner, _node(disk, part))
    backup_parent = target.resolve(STATE_DIR)
    while not backup_parent.exists():
        backup_parent = backup_parent.parent
    stat = os.statvfs(backup_parent)
    hooks: list[str] = []
    for directory in SYNC_HOOK_DIRS:
        where = target.resolve(directory)
        if where.is_dir():
            for entry in sorted(where.iterdir()):
                if entry.is_file() and _copies_esps(entry.read_bytes(), directory):
                    hooks.append(target.path(f"{directory}/{entry.name}"))
    if target.exists(PROXMOX_UUIDS):
        hooks.append(target.path(PROXMOX_UUIDS))
    return Facts(
        fstab=target.text("etc/fstab"),
        journal=journal,
        record=target.exists("etc/esp-mirror/esp-mirror.yaml"),
        fats=fats,
        free=stat.f_bavail * stat.f_frsize,
        sync_hooks=tuple(hooks),
        shim=target.has_shim(),
        command=command,
        esp=esp,
    )


# An ESP's path in a script: /efi, /boot/efi, /boot/efi2, /efi-b, ... (not "defined", "efibootmgr")
_ESP_PATH = re.compile(r"(?:^|[\s'\"=:(])/(?:boot/)?efi[\w.-]*(?=/|\s|'|\"|$)", re.IGNORECASE | re.MULTILINE)
_COPY_TOOL = re.compile(r"\b(?:rsync|cp|mcopy)\b")


def _copies_esps(text: bytes, directory: str) -> bool:
    """A script that copies onto ESPs: a ZFSBootMenu post-generation hook, proxmox-boot-tool, or a
    kernel/initramfs/GRUB hook that names an ESP's path and runs a copy tool."""
    if directory.startswith("etc/zfsbootmenu"):
        return True
    body = text.decode("utf-8", "replace")
    return "proxmox-boot-tool" in body or bool(_ESP_PATH.search(body) and _COPY_TOOL.search(body))


def _node(disk: DiskFacts, part: Partition) -> str:
    return str(naming.partition_node(disk.path, part.number))


def decide(
    request: Resolved, profile: Profile, snapshot: Snapshot, facts: Facts, esp_dir: str, host: HostView
) -> tuple[ArrayPlan, Adoption]:
    """The array the adoption makes (its members from :mod:`.members`), with its :class:`Adoption`.

    :raises NothingToDo: the target is an esp-mirror mirror already.
    :raises BadInput: anything that makes the adoption unsafe, before anything changed.
    """
    disks = snapshot.disks
    journal = facts.journal
    array = snapshot.array
    mounted = snapshot.mounted_at(esp_dir)
    on_array = mounted is not None and array is not None and mounted.device in (array.device, array.kernel_device)
    if journal is None and facts.record:
        raise NothingToDo(
            f"nothing to adopt: esp-mirror set this system up already ({request.device} "
            f"{'is mounted at ' + esp_dir if on_array else 'is recorded in /etc/esp-mirror/esp-mirror.yaml'}); "
            "`esp-mirror status` shows its health"
        )
    _check_request(request, disks)
    if journal is not None and set(journal.disks) != set(request.disks):
        raise BadInput(
            f"an adoption of {', '.join(journal.disks)} is not finished ({journal_path(request.target)}): "
            f"run it again as it was started: {journal.command}"
        )
    live_disk, live_part = _live(request, disks, snapshot, facts, esp_dir, host)
    derived = members.derived_uuid(request, disks)
    # Once the journal says "switched", the array is the ESP, whether it runs and is mounted yet or
    # not (after a power cut it is neither until the system assembles and mounts it): it is never
    # made again. Before that, an array mounted at the mount point holds a verified copy: the
    # switch happened, the journal's rewrite did not.
    phase = (
        SWITCHED
        if on_array or (journal is not None and journal.phase == SWITCHED)
        else (COPY if journal is not None else NEW)
    )
    joined = (live_part.fstype == "linux_raid_member" and naming.mdadm_uuid(live_part.md_uuid) == derived) or (
        array is not None and array.kernel_device.rsplit("/", 1)[-1] in live_part.holders
    )
    if phase == SWITCHED and mounted is not None and not on_array:
        raise BadInput(
            f"{esp_dir} is mounted from {mounted.device}, but the adoption had switched the ESP to {request.device}: "
            f"unmount it (umount {esp_dir}), then run adopt again"
        )
    if not joined and live_part.holders:
        raise BadInput(
            f"the live ESP {_node(live_disk, live_part)} is held by {', '.join(live_part.holders)} (another md array "
            f"or device-mapper): stop that first (`mdadm --stop /dev/{live_part.holders[0]}`), then run adopt again"
        )
    if phase != SWITCHED:
        _check_live_fat(request, live_disk, live_part, facts, esp_dir, mounted)
    sector = disks[0].sector_size
    place = members.requested(request.esp_start, request.esp_size, sector)
    live = Member(
        disk=live_disk,
        device=live_disk.path,
        node=_node(live_disk, live_part),
        guid=live_part.guid,
        source=EspFrom.LIVE,
        number=live_part.number,
        size=live_part.size * sector,
        beside=tuple(o.describe() for o in model(live_disk, derived, place.first, place.last).others),
    )
    chosen: list[Member] = []
    others: list[Member] = []
    stop: set[str] = set()
    unmount: list[str] = []
    for disk in disks:
        if disk is live_disk:
            chosen.append(live)
            continue
        member, held, mounts = _other(request, disk, derived, place, phase, facts)
        stop |= set(held)
        unmount += mounts
        others.append(member)
        chosen.append(member)
    if phase != SWITCHED:  # the array is made again: whatever of it runs is stopped first
        if array is not None:
            stop.add(array.device)
        if snapshot.inactive:
            stop.add(snapshot.inactive)
    smallest = min(m.size for m in chosen)
    if phase != SWITCHED:
        _check_room_for_files(live, facts.fats[str(live.node)], smallest, sector, request)
    retire = _retire(facts.fstab, request.mountpoint, disks, chosen, host)
    label = live_part.label if live_part.label and not checks.fat_label_problem(live_part.label) else request.label
    backup_dir = os.path.join(request.target, BACKUP_DIR)
    backups: list[Backup] = []
    notes: list[str] = []
    if phase == NEW:
        backups, need = _backups(chosen, live, facts, esp_dir, mounted, backup_dir)
        if need > facts.free:
            raise BadInput(
                f"no room for the backups: {backup_dir} needs about {size_text(need)} (the ESPs' files "
                f"and each disk's GPT) and its file system has {size_text(facts.free)} free: free space "
                f"there, then run adopt again"
            )
    if label != live_part.label:
        notes.append(
            f"the live ESP has no FAT label esp-mirror can keep ({live_part.label!r}): the mirror's is {label}"
        )
    notes += [
        f"{hook} copies between ESPs or names them: with the mirror it is no longer needed (remove or disable it "
        "once the adoption is done; esp-mirror leaves it as it is)"
        for hook in facts.sync_hooks
    ]
    staged = snapshot.mounted_at(STAGING) is not None  # (the module's value: tests point it elsewhere)
    adoption = Adoption(
        live=live,
        label=label,
        phase=phase,
        journal=journal or AdoptJournal(facts.command, live.guid, request.disks),
        component_kib=(smallest - fat.MD_RESERVE) // MIB * 1024,
        retire=retire,
        live_mounted=mounted is not None and mounted.source == live_part.devnum,
        staged=staged,
        stop=tuple(sorted({host.realpath(device) for device in stop})),
        unmount=tuple(dict.fromkeys(unmount)),
        joined=joined,
        backups=tuple(backups),
        gpt_backups=tuple((d.path, os.path.join(backup_dir, f"gpt-{d.name}.bin")) for d in disks if d.pttype == "gpt")
        if phase == NEW
        else (),
        backup_dir=backup_dir,
        fstab_lines="".join(f"{line}\n" for line in retire),
        boot_text=snapshot.boot_text,
        notes=tuple(notes),
        others=tuple(others),
        staging=STAGING,
        reload_systemd=os.path.normpath(request.target) == "/"
        and profile.init is Init.SYSTEMD
        and host.systemd_booted(),
    )
    switched = phase == SWITCHED
    action = "create" if not switched else "keep" if array is not None else "assemble"
    plan = ArrayPlan(
        members=tuple(chosen),
        uuid=derived,
        action=action,
        fs_uuid=array.fs_uuid if switched and array is not None else "",
        make_fs=not switched,
        mount=switched and mounted is None,  # after a reboot, before the system mounted the array
        raid_devices=len(chosen),
        stop_first=snapshot.inactive if action == "assemble" else "",
    )
    return plan, adoption


def _check_request(request: Resolved, disks: tuple[DiskFacts, ...]) -> None:
    if request.wipe:
        raise BadInput("adopt never wipes a disk: leave out --wipe (a blank disk gets its ESP partition as it is)")
    if len(disks) < 2:
        raise BadInput(
            "adopt needs the disk of the live ESP and at least one more: pass --disk for each disk of the mirror"
        )
    checks.check_disks(disks, partition_hint="name the live ESP with --esp if fstab does not")
    for disk in disks:
        if disk.kind != "block":
            raise BadInput(
                f"disk {disk.given} is not a block device: adopt works on a running machine's disks "
                "(attach an image with `losetup --find --show --partscan` and pass the loop device)"
            )
        if disk.pttype == "dos":
            raise BadInput(
                f"disk {disk.given} has an MBR (dos) partition table: esp-mirror mirrors ESPs on GPT disks; "
                f"convert it first (`sgdisk --mbrtogpt {disk.path}`, then check the boot) or leave it out"
            )


def _live(
    request: Resolved,
    disks: tuple[DiskFacts, ...],
    snapshot: Snapshot,
    facts: Facts,
    esp_dir: str,
    host: HostView,
) -> tuple[DiskFacts, Partition]:
    """The live ESP: the journal's (an adoption under way), ``--esp``, what is mounted at the
    mount point, or what fstab mounts there."""
    found = [(d, p) for d in disks for p in d.partitions]
    if facts.journal is not None:
        match = next(((d, p) for d, p in found if p.guid == facts.journal.live), None)
        if match is None:
            raise BadInput(
                f"the interrupted adoption's live ESP (partition {facts.journal.live}) is on none of the disks "
                f"given: run it again as it was started: {facts.journal.command}"
            )
        return match
    mounted = snapshot.mounted_at(esp_dir)
    live_arg = facts.esp
    if live_arg is not None:
        node = host.realpath(live_arg)
        match = next(((d, p) for d, p in found if _node(d, p) == node), None)
        if match is None:
            raise BadInput(f"--esp {live_arg} is not a partition of the disks given: pass one of theirs")
        if mounted is not None and mounted.source != match[1].devnum:
            raise BadInput(
                f"{esp_dir} is mounted from {mounted.device}, not from {live_arg}: name the ESP mounted there, "
                f"or unmount it first (umount {esp_dir})"
            )
        return match
    if mounted is not None:
        if mounted.fstype == "autofs":
            raise BadInput(
                f"{esp_dir} is an automount point: mount the ESP (`ls {esp_dir}` triggers it) or stop the "
                "automount, then run adopt again"
            )
        match = next(((d, p) for d, p in found if p.devnum and p.devnum == mounted.source), None)
        if match is None:
            raise BadInput(
                f"{esp_dir} is mounted from {mounted.device}, which is on none of the disks given: "
                "pass its disk with --disk too"
            )
        return match
    lines = _mounting(facts.fstab, request.mountpoint)
    if not lines:
        raise BadInput(
            f"no ESP to adopt: nothing is mounted at {esp_dir} and the target's fstab mounts nothing there: "
            "name the ESP with --esp PARTITION (or give --mountpoint)"
        )
    spec = lines[0].split()[0]
    match = next(((d, p) for d, p in found if _names(spec, d, p, host)), None)
    if match is None:
        raise BadInput(
            f"fstab mounts {spec} at {request.mountpoint}, which is on none of the disks given: "
            "pass its disk with --disk too, or name the ESP with --esp"
        )
    return match


def _check_room_for_files(live: Member, use: FatUse, smallest: int, sector: int, request: Resolved) -> None:
    """The live ESP's files fit on the mirror's FAT (whose members are no larger than the smallest)."""
    used, room = use.used_bytes(live.size), fat.capacity(smallest, sector)
    if used + MIB <= room:
        return
    fix = (
        f"pass a larger --esp-size (at least {-(-(used + 2 * MIB + smallest - room) // MIB)}M) for the new partitions"
        if smallest == request.esp_size and smallest < live.size
        else "free space on the ESP first, or leave out the disk with the smallest ESP partition"
    )
    raise BadInput(
        f"the live ESP {live.node} holds up to {size_text(used)} of files, and a FAT32 on the mirror (its smallest "
        f"member: {size_text(smallest)}) holds {size_text(room)}: {fix}"
    )


def _check_live_fat(
    request: Resolved, disk: DiskFacts, part: Partition, facts: Facts, esp_dir: str, mounted: Mount | None
) -> None:
    node = _node(disk, part)
    if part.fstype != "vfat":
        what = part.fstype or "no file system blkid knows"
        raise BadInput(f"the live ESP {node} holds {what}, not FAT: esp-mirror adopts a FAT ESP only")
    _check_node(disk, part, facts)
    problems = facts.fats[node].problems
    if problems:
        raise BadInput(
            f"fsck.fat -n finds damage on the live ESP {node} ({problems[0].strip()}): repair it first "
            f"(`umount {esp_dir}; fsck.fat -a {node}; mount {esp_dir}`), then run adopt again"
        )
    elsewhere = [m for m in part.mountpoints if m != esp_dir]
    if elsewhere:
        raise BadInput(
            f"the live ESP {node} is mounted twice ({esp_dir} and {elsewhere[0]}): unmount the second "
            f"(`umount {elsewhere[0]}`) and remove its fstab line, then run adopt again"
        )
    if not part.is_esp:
        raise BadInput(
            f"{node} is not an EFI System Partition (its GPT type is {part.type_guid}): the firmware does not "
            f"boot from it; name the ESP with --esp, or set its type first (`sgdisk --typecode=N:EF00`)"
        )
    checks.check_fat32_fits(node, part.size * disk.sector_size, disk.sector_size)
    if spec(request.bootloader).live_files and mounted is not None:
        _check_loader(request, esp_dir, facts)


def _check_loader(request: Resolved, esp_dir: str, facts: Facts) -> None:
    """The live ESP holds the bootloader the request names: adopt keeps the machine's bootloader,
    it never switches it behind the administrator's back."""
    wanted = [w.replace("{loader_id}", request.loader_id) for w in spec(request.bootloader).live_files]
    if any(os.path.isfile(os.path.join(esp_dir, w)) for w in wanted):
        return
    there = sorted(os.listdir(os.path.join(esp_dir, "EFI"))) if os.path.isdir(os.path.join(esp_dir, "EFI")) else []
    raise BadInput(
        f"the live ESP holds no {request.bootloader} at \\{wanted[0].rsplit('/', 1)[0].replace('/', chr(92))}\\ "
        f"(its \\EFI\\ holds {', '.join(there) or 'nothing'}): pass the bootloader it boots "
        "(--bootloader and --loader-id), adopt does not switch bootloaders"
    )


def _check_node(disk: DiskFacts, part: Partition, facts: Facts) -> None:
    """The partition's node exists: the kernel knows the partition (fsck.fat could read nothing)."""
    node = _node(disk, part)
    use = facts.fats.get(node)
    if use is not None and use.missing:
        raise BadInput(
            f"the partition {node} is in {disk.given}'s table but the kernel has no node for it: let the kernel "
            f"read it (`partx --add --nr {part.number} {disk.path}`, or reboot), then run adopt again"
        )


def _other(
    request: Resolved, disk: DiskFacts, derived: str, place: members.Geometry, phase: AdoptPhase, facts: Facts
) -> tuple[Member, tuple[str, ...], list[str]]:
    """Another disk's member, as :func:`.members.choose` decides it for adopt: its ESP partition
    where it is (with files: kept in the backup, then made a member), or partition 1 on a disk with
    room. Also the md arrays that hold it (stopped before the array is made) and where it is mounted."""
    disk_model = model(disk, derived, place.first, place.last)
    held: tuple[str, ...] = ()
    if len(disk_model.esps) == 1:
        esp = disk_model.esps[0]
        part, node = esp.part, esp.node
        if part.fstype == "linux_raid_member" and esp.holds is not Holds.MEMBER:
            raise BadInput(
                f"the ESP partition {node} carries a member of another md array ({part.md_name or part.md_uuid}): "
                f"stop and take it apart first (`mdadm --detail --scan`), or leave {disk.given} out"
            )
        if part.fstype not in ("", "vfat", "linux_raid_member"):
            raise BadInput(
                f"the ESP partition {node} holds {part.fstype}, not FAT: check what it is; wipe it "
                f"(`wipefs --all {node}`) if it is not needed, then run adopt again"
            )
        if phase != SWITCHED and part.fstype == "vfat":
            _check_node(disk, part, facts)
            if facts.fats[node].problems:
                raise BadInput(
                    f"fsck.fat -n finds damage on {node} ({facts.fats[node].problems[0].strip()}), whose files adopt "
                    f"keeps in a backup before it becomes a member: repair it (`fsck.fat -a {node}`) or, if its "
                    f"files are not needed, wipe it (`wipefs --all {node}`), then run adopt again"
                )
        ours = esp.holds is Holds.MEMBER
        held = tuple(f"/dev/{h}" for h in part.holders if h.startswith("md")) if ours and phase != SWITCHED else ()
        if part.holders and not held and phase != SWITCHED:
            raise BadInput(
                f"the ESP partition {node} is held by {', '.join(part.holders)}: stop that first, then run adopt again"
            )
    source, esp_found = members.choose(disk_model, place, wipe=False, command="adopt")
    chosen = members.member(disk_model, source, esp_found, place)
    if esp_found is None:
        return chosen, (), []
    # where it is mounted goes before it is wiped; also the read-only mount an interrupted
    # backup left (a run again reads the backup from there and does not mount it again)
    return chosen, held, [m for m in esp_found.part.mountpoints if m != STAGING]


def _mounting(fstab: str, mountpoint: str) -> list[str]:
    """The fstab lines (not comments) that mount something at ``mountpoint``."""
    out = []
    for raw in fstab.splitlines():
        words = raw.split()
        if len(words) >= 2 and not words[0].startswith("#") and os.path.normpath(words[1]) == mountpoint:
            out.append(raw.strip())
    return out


def _names(spec: str, disk: DiskFacts, part: Partition, host: HostView) -> bool:
    """Whether an fstab device field names this partition."""
    key, _, value = spec.partition("=")
    value = value.strip("\"'")
    if key == "UUID" and value:
        return value.lower() in (part.fs_uuid.lower(), part.md_uuid.lower()) and bool(part.fs_uuid or part.md_uuid)
    if key == "LABEL" and value:
        return value == part.label
    if key == "PARTUUID" and value:
        return value.lower() == part.guid
    if key == "PARTLABEL" and value:
        return value == part.name
    if spec.startswith("/dev/"):
        return host.realpath(spec) == _node(disk, part)
    return False


def _retire(
    fstab: str, mountpoint: str, disks: tuple[DiskFacts, ...], members: list[Member], host: HostView
) -> tuple[str, ...]:
    """The fstab lines the mirror's line replaces: every line that mounts an ESP partition of the
    mirror (the live one at the mount point, other disks' copies anywhere) and any other line for
    the mount point."""
    parts = [(m.disk, m.partition) for m in members if m.partition is not None]
    out = []
    for raw in fstab.splitlines():
        words = raw.split()
        if len(words) < 2 or words[0].startswith("#"):
            continue
        at_mountpoint = os.path.normpath(words[1]) == mountpoint
        if at_mountpoint or any(_names(words[0], d, p, host) for d, p in parts if p is not None):
            out.append(raw.strip())
    return tuple(out)


def _backups(
    chosen: list[Member], live: Member, facts: Facts, esp_dir: str, mounted: Mount | None, backup_dir: str
) -> tuple[list[Backup], int]:
    """A tar for each ESP that holds a FAT, read where it is mounted, or from its partition mounted
    read-only (the live ESP too, when fstab names it and nothing mounts it now); and how many bytes
    the backups take at most."""
    out = []
    need = MIB + sum(GPT_BACKUP for _ in chosen)
    for member in chosen:
        part = member.partition
        node = str(member.node)
        if part is None or (part.fstype != "vfat" and member is not live):
            continue
        name = os.path.basename(node)
        if member is live and mounted is not None and mounted.source == part.devnum:
            source, mount = esp_dir, False
        elif part.mountpoints:
            source, mount = part.mountpoints[0], False
        else:
            source, mount = f"{READING}-{name}", True
        out.append(Backup(node, source, mount, os.path.join(backup_dir, f"esp-{name}.tar")))
        need += facts.fats[node].used_bytes(member.size) + 64 * 1024
    return out, need
