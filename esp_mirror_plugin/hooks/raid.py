"""post_format: the RAID1 array (metadata 1.0), its FAT32, mdadm.conf, fstab and the mount."""

from __future__ import annotations

from esp_mirror_plugin.errors import BadInput
from esp_mirror_plugin.hooks import fstab
from esp_mirror_plugin.pipeline import fat
from esp_mirror_plugin.pipeline.layout import Layout
from esp_mirror_plugin.pipeline.profiles import Profile
from esp_mirror_plugin.pipeline.request import Resolved
from esp_mirror_plugin.pipeline.steps import Arg, Command, EditBlock, MakeDir, Settle, Step, WaitForSync
from esp_mirror_plugin.system.files import without_block
from esp_mirror_plugin.system.target import Target


def array_line(request: Resolved, layout: Layout) -> str:
    # mdadm <= 4.2 uses name=; 4.3+ ignores it when reading, so it is harmless there.
    return f"ARRAY {request.device} metadata=1.0 UUID={layout.array_uuid} name=any:{request.array_name}"


# mdadm --monitor (mdmonitor.service) refuses to run, and the unit fails at every boot, without a
# MAILADDR or PROGRAM line. A distribution's mdadm package writes its default only when it finds no
# mdadm.conf; when esp-mirror wrote the file first (an installer calls post_format before it
# installs mdadm), the block carries that default too, until the file has one of its own.
MONITOR_DEFAULT = "MAILADDR root"


def mdadm_conf_block(request: Resolved, layout: Layout, current: str) -> str:
    """Our block of mdadm.conf: the ARRAY line, and the monitor's default address if the rest of
    the file names none."""
    own = [line.split()[:1] for line in _outside_block(current, "mdadm.conf").splitlines()]
    if ["MAILADDR"] in own or ["PROGRAM"] in own:
        return array_line(request, layout)
    return f"{array_line(request, layout)}\n{MONITOR_DEFAULT}"


def plan(request: Resolved, profile: Profile, layout: Layout, target: Target) -> tuple[Step, ...]:
    _check_fstab(request, target)
    steps: list[Step] = []
    nodes = tuple(m.node for m in layout.members)
    if layout.stop_first:
        steps.append(
            Command(
                ("mdadm", "--stop", layout.stop_first),
                why="it exists but was never started (an interrupted run, or assembly from too few members)",
            )
        )
    if layout.array_action == "create":
        missing = ("missing",) * (layout.raid_devices - len(nodes))
        steps.append(create(request, layout, (*nodes, *missing)))
    elif layout.array_action == "assemble":  # the members that carry its superblock (an adoption's
        # live ESP joins last, and may not yet)
        carrying = tuple(m.node for m in layout.members if m.superblock)
        steps.append(
            Command(
                ("mdadm", "--assemble", request.device, "--run", f"--uuid={layout.array_uuid}", *carrying),
                why="the array exists on the disks but is not running",
            )
        )
    if layout.array_action != "keep":
        steps.append(Settle(why="udev names the new array (/dev/disk/by-id/md-uuid-...) before it is used"))
    make = fat.mkfs(request.device, layout.fat_size, layout.sector_size, request.label, layout.volume_id)
    if layout.make_fs:
        steps.append(make)
    elif layout.mount:  # not mounted yet: a FAT already there may be one an interrupted mkfs left half made
        steps.append(fat.ensure(request.device, make))
    # else it is mounted: in use, and fsck.fat -n of a mounted FAT reports what the kernel has not written yet
    if layout.mount:
        steps.append(MakeDir(layout.esp_dir, why="the ESP mount point", root=request.target))
        steps.append(
            fat.mount(
                request.device,
                layout.esp_dir,
                why="the installer and the bootloader write to the array, never a member",
            )
        )
    edit = mdadm_conf_edit(request, profile, layout, target)
    if edit is not None:
        steps.append(edit)
    steps.append(
        EditBlock(
            target.path("etc/fstab"),
            fstab.line(layout.fs_uuid, request.mountpoint),
            root=target.root,
            why="one fstab line for the ESP, by the array's FAT UUID",
        )
    )
    if layout.array_action != "keep" or layout.resyncing:
        steps.append(
            WaitForSync(
                request.device,
                work="its resync",
                why="let the initial resync finish so every member is a full copy (an array assembled "
                "again, after a cut, owes one and stays read-auto until its first write)",
            )
        )
    return tuple(steps)


def create(request: Resolved, layout: Layout, devices: tuple[Arg, ...], size_kib: int | None = None) -> Command:
    """``mdadm --create`` of the ESP's RAID1 over ``devices`` (a "missing" one leaves its slot
    empty); ``size_kib`` limits what each member gives (mdadm --size), so a smaller member added
    later fits."""
    return Command(
        (
            "mdadm",
            "--create",
            request.device,
            "--run",
            "--level=1",
            f"--raid-devices={len(devices)}",
            "--metadata=1.0",
            "--homehost=any",
            f"--name={request.array_name}",
            f"--uuid={layout.array_uuid}",
            *((f"--size={size_kib}",) if size_kib else ()),
            *devices,
        ),
        why="RAID1 over the ESP partitions; metadata 1.0 keeps each member a plain FAT32",
    )


def mdadm_conf_edit(request: Resolved, profile: Profile, layout: Layout, target: Target) -> EditBlock | None:
    """post_format's edit of mdadm.conf, or None when the file lists the array outside our block
    already. initramfs_config plans from it too: the file as this edit leaves it is what the
    generator copies into the image."""
    conf = target.text(profile.mdadm_conf)
    if _listed_elsewhere(conf, layout.array_uuid, target.path(profile.mdadm_conf)):
        return None
    return EditBlock(
        target.path(profile.mdadm_conf),
        mdadm_conf_block(request, layout, conf),
        root=target.root,
        why="the booted system assembles the ESP array by UUID",
    )


def _listed_elsewhere(text: str, uuid: str, shown: str) -> bool:
    """True when mdadm.conf already lists this array outside our block (e.g. written by mkconf)."""
    return any(
        line.split()[:1] == ["ARRAY"] and f"UUID={uuid}" in line for line in _outside_block(text, shown).splitlines()
    )


def _outside_block(text: str, name: str) -> str:
    try:
        return without_block(text)
    except ValueError as exc:
        raise BadInput(f"{name} {exc}") from None


def _check_fstab(request: Resolved, target: Target) -> None:
    others = fstab.conflicting_lines(
        _outside_block(target.text("etc/fstab"), target.path("etc/fstab")), request.mountpoint
    )
    if others:
        raise BadInput(
            f"{target.path('etc/fstab')} already mounts {request.mountpoint}: "
            f"{others[0]!r}; remove or comment out that line, esp-mirror adds its own"
        )
