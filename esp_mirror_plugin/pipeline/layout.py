"""From (request, profile, snapshot) to a :class:`Layout`: the one builder of the mirror's layout,
for apply and for adopt.

Each disk's member comes from :mod:`.members` (the one builder of members), every refusal from
:mod:`.checks`, raised before anything changes. What differs between the two commands is the
array: apply makes it on its members, or finds it running or on its members already; adopt
(:mod:`.adoption`) makes it degraded beside the live ESP, which joins last. Everything else (the
ESP's directory, the FAT's volume id, whether md still copies, the boot entries) is decided
here, once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from esp_mirror_plugin.errors import BadInput, size_text
from esp_mirror_plugin.pipeline import adoption as adoptions
from esp_mirror_plugin.pipeline import checks, fat, members, naming
from esp_mirror_plugin.pipeline.adoption import Adoption
from esp_mirror_plugin.pipeline.disks import GPT_BACKUP, MIB, model
from esp_mirror_plugin.pipeline.members import ArrayPlan, Geometry, Member
from esp_mirror_plugin.pipeline.profiles import Profile
from esp_mirror_plugin.pipeline.request import Resolved
from esp_mirror_plugin.system.discovery import ArrayFacts, HostView, Snapshot

NO_EFIVARS = (
    "WARNING: no EFI variables here (/sys/firmware/efi/efivars is empty): no boot entries are made; the "
    "firmware boots each disk through the \\EFI\\BOOT\\ fallback path; pass --no-nvram "
    "to silence this"
)
IMAGES = (
    "image files are not this machine's disks: no firmware boot entries are made (--no-nvram); the "
    "firmware boots them via the \\EFI\\BOOT\\ fallback path"
)


@dataclass(frozen=True)
class Layout:
    members: tuple[Member, ...]
    raid_devices: int  # members plus "missing" slots for a --degraded array
    array_uuid: str  # mdadm form
    array_action: str  # "create", "assemble" or "keep"
    fs_uuid: str  # XXXX-XXXX
    volume_id: str  # 8 hex digits, for mkfs
    make_fs: bool
    esp_dir: str  # target + mountpoint, where the ESP is mounted on this machine
    mount: bool  # mount the array at esp_dir
    image_mode: bool
    nvram: bool
    first_sector: int  # where a partition esp-mirror makes goes
    last_sector: int
    sector_size: int
    notes: tuple[str, ...] = ()
    stop_first: str = ""  # an array device that exists but is not running: stopped before it is made
    resyncing: bool = False  # the running array is still copying onto a member: wait for it
    esp_size: int = 0  # what a new member's partition gets (the record keeps it for replace and add)
    adoption: Adoption | None = None  # `esp-mirror adopt`: the live ESP and how far its adoption got

    @property
    def fat_size(self) -> int:
        """The size mkfs plans the FAT for: the smallest member's partition (the array is no larger)."""
        return min(m.size for m in self.members)

    @property
    def esp_start(self) -> int:
        """Where a partition esp-mirror makes starts, in bytes (the record keeps it for replace and add)."""
        return self.first_sector * self.sector_size

    def entry_order(self) -> tuple[str, ...] | None:
        """The members' partition GUIDs in the BootOrder the bootloader hook sets, or None for the
        disks' order. An adoption wipes the live ESP and rebuilds it after the entries are made:
        until then its disk boots last."""
        if self.adoption is None:
            return None
        live = self.adoption.live.guid
        return (*(m.guid for m in self.members if m.guid != live), live)


def build(
    request: Resolved,
    profile: Profile,
    snapshot: Snapshot,
    *,
    target_given: bool = True,
    adopt: adoptions.Facts | None = None,
    host: HostView | None = None,
) -> Layout:
    """Decide every action from the snapshot; refuse unsafe or inconsistent states.

    :param target_given: ``--target`` was given (image files need it).
    :param adopt: `esp-mirror adopt`'s facts (:func:`.adoption.gather`): the layout is the adoption's.
    :raises BadInput: anything unsafe, before anything changed.
    :raises adoption.NothingToDo: adopt was asked of a mirror already.
    """
    checks.check_settings(request)
    esp_dir = os.path.normpath(os.path.join(request.target, request.mountpoint.lstrip("/")))
    adoption = None
    if adopt is not None:
        array, adoption = adoptions.decide(request, profile, snapshot, adopt, esp_dir, host or HostView())
        place = members.requested(request.esp_start, request.esp_size, snapshot.disks[0].sector_size)
    else:
        array, place = _apply(request, snapshot, esp_dir, target_given)
    image_mode = snapshot.disks[0].kind == "image"
    notes = list(array.notes)
    nvram = not request.no_nvram
    if nvram and image_mode:
        nvram = False
        notes.append(IMAGES)
    elif nvram and not snapshot.efivars:
        nvram = False
        notes.append(NO_EFIVARS)
    volume = array.fs_uuid.replace("-", "") if array.fs_uuid else naming.volume_id(array.uuid)
    return Layout(
        members=array.members,
        raid_devices=array.raid_devices,
        array_uuid=array.uuid,
        array_action=array.action,
        fs_uuid=naming.fstab_uuid(volume),
        volume_id=volume,
        make_fs=array.make_fs,
        esp_dir=esp_dir,
        mount=array.mount,
        image_mode=image_mode,
        nvram=nvram,
        first_sector=place.first,
        last_sector=place.last,
        sector_size=place.sector,
        notes=tuple(notes),
        stop_first=array.stop_first,
        resyncing=_resyncing(snapshot.array) and array.action == "keep",
        esp_size=members.record_size(array.members),
        adoption=adoption,
    )


def _resyncing(array: ArrayFacts | None) -> bool:
    return array is not None and (array.sync_action in ("resync", "recover") or array.resync_owed)


def _apply(request: Resolved, snapshot: Snapshot, esp_dir: str, target_given: bool) -> tuple[ArrayPlan, Geometry]:
    """apply's array: its members (:mod:`.members`), then whether it is made, found on them, or running."""
    checks.check_count(request)
    checks.check_disks(snapshot.disks)
    checks.check_image_target(snapshot.disks, request.target, target_given)
    derived = members.derived_uuid(request, snapshot.disks)
    ours = naming.mdadm_uuid(snapshot.array.uuid) if snapshot.array is not None else derived
    _check_running_array(snapshot, derived)
    place, notes = members.geometry(request, snapshot.disks, ours)
    _check_fits(request, snapshot, place)
    image_mode = snapshot.disks[0].kind == "image"
    chosen: list[Member] = []
    for index, disk in enumerate(snapshot.disks, start=1):
        disk_model = model(disk, ours, place.first, place.last, request.array_name)
        source, esp = members.choose(disk_model, place, wipe=request.wipe, command="apply")
        loop_var = f"LOOP_{index}" if image_mode else None
        chosen.append(members.member(disk_model, source, esp, place, loop_var=loop_var, wipe=request.wipe))
    uuid, action, fs_uuid, make_fs = _array_state(request, snapshot, chosen)
    return (
        ArrayPlan(
            members=tuple(chosen),
            uuid=uuid,
            action=action,
            fs_uuid=fs_uuid,
            make_fs=make_fs,
            mount=_check_mount(snapshot, esp_dir, request.device),
            raid_devices=max(len(chosen), 2),
            stop_first=snapshot.inactive if action != "keep" else "",
            notes=notes,
        ),
        place,
    )


def _check_running_array(snapshot: Snapshot, derived: str) -> None:
    """An array running under the mirror's name must be the one on these disks."""
    array = snapshot.array
    if array is None:
        return
    carried = {naming.mdadm_uuid(p.md_uuid) for d in snapshot.disks for p in d.partitions if p.is_esp and p.md_uuid}
    if naming.mdadm_uuid(array.uuid) in carried:
        return
    if derived in carried:
        raise BadInput(
            f"{array.device} is running but is another array (UUID {array.uuid}): "
            "stop it, or pass --array-name to use another name"
        )
    raise BadInput(
        f"{array.device} already exists and is not on these disks: pass --array-name NAME to choose another name"
    )


def _check_fits(request: Resolved, snapshot: Snapshot, place: Geometry) -> None:
    if fat.sectors_per_cluster(place.size, place.sector) is None:
        minimum = fat.minimum_size(place.sector) // MIB
        raise BadInput(
            f"ESP size {size_text(place.size)} is too small for FAT32 with "
            f"{place.sector}-byte sectors: use --esp-size {minimum}M or more"
        )
    for disk in snapshot.disks:
        if place.start + place.size + GPT_BACKUP > disk.size:
            room = (disk.size - place.start - GPT_BACKUP) // MIB
            fix = (
                f"use --esp-size {room}M or less"
                if fat.sectors_per_cluster(room * MIB, place.sector) is not None
                else "use a larger disk"
            )
            raise BadInput(
                f"ESP of {size_text(place.size)} does not fit on {disk.given} ({size_text(disk.size)}): {fix}"
            )


def _array_state(request: Resolved, snapshot: Snapshot, chosen: list[Member]) -> tuple[str, str, str, bool]:
    """(array UUID, "create"/"assemble"/"keep", FAT UUID or "", whether to mkfs)."""
    supers = {m.superblock for m in chosen if m.superblock}
    array = snapshot.array
    if array is not None:
        if array.level != "raid1":
            raise BadInput(
                f"{array.device} is {array.level}, not raid1: the ESP must be a RAID1 mirror; if that array "
                f"is not needed, stop it (`mdadm --stop {array.device}`) and pass --wipe to start over"
            )
        strangers = [
            m.disk.given
            for m in chosen
            if not (m.superblock and naming.mdadm_uuid(m.superblock) == naming.mdadm_uuid(array.uuid))
        ]
        if strangers:
            raise BadInput(
                f"disk {strangers[0]} is not a member of the running array {array.device}: "
                f"add it with `esp-mirror add --disk {strangers[0]}`"
            )
        if array.fstype not in ("", "vfat"):
            raise BadInput(f"{array.device} holds {array.fstype}, not FAT: refusing to format it; check what it is")
        return naming.mdadm_uuid(array.uuid), "keep", array.fs_uuid, array.fstype == ""
    derived = members.derived_uuid(request, [m.disk for m in chosen])
    half_made = any(not m.superblock for m in chosen) and not any(_holds_fat(m) for m in chosen)
    if supers and {naming.mdadm_uuid(s) for s in supers} == {derived} and half_made:
        # an array this very apply began to create on some members only (a run interrupted in
        # mdadm --create) and that holds no FAT: nothing on it yet, so it is made again. When
        # every member carries it, it is assembled below.
        return derived, "create", "", True
    if len(supers) > 1:
        raise BadInput("the ESP partitions carry superblocks of different arrays: pass --wipe to start over")
    if supers:
        part = next(p for m in chosen if m.superblock and (p := m.partition) is not None)
        without = [m.disk.given for m in chosen if not m.superblock]
        if without:
            raise BadInput(
                f"disks {', '.join(without)} are not members of the existing ESP array "
                f"{part.md_name}: use `esp-mirror add` for new disks, or --wipe to start over"
            )
        fs_uuid = part.inner_uuid if part.inner_fstype == "vfat" else ""
        return naming.mdadm_uuid(part.md_uuid), "assemble", fs_uuid, part.inner_fstype == ""
    return derived, "create", "", True


def _holds_fat(member: Member) -> bool:
    part = member.partition
    return part is not None and part.inner_fstype == "vfat"


def _check_mount(snapshot: Snapshot, esp_dir: str, device: str) -> bool:
    mounted = snapshot.mounted_at(esp_dir)
    if mounted is None:
        return True
    array = snapshot.array
    if array is not None and mounted.device in (array.device, array.kernel_device):
        return False
    raise BadInput(
        f"{esp_dir} is already mounted from {mounted.device}: unmount it first "
        f"(umount {esp_dir}); esp-mirror mounts {device} there"
    )
