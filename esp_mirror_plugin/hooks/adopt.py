"""`esp-mirror adopt`: the steps that take a live ESP into the mirror (the decisions and the order
are in :mod:`esp_mirror_plugin.pipeline.adoption`).

Until the switch, esp-mirror's own ``pre_partition`` and ``post_format`` hooks plan these steps
instead of apply's: the backups, the other members, the degraded array with a verified copy of
the live ESP, and the switch of fstab and the mount. After it they plan what apply plans for a
running mirror. The ``bootloader`` hook ends with :func:`finish_steps`: the live ESP's partition
joins the array last.
"""

from __future__ import annotations

import os

from esp_mirror_plugin.hooks import bootentries, fstab, partition, raid
from esp_mirror_plugin.hooks.bootloader import entry_members, loader_args, loader_path
from esp_mirror_plugin.pipeline import adoption as adoptions
from esp_mirror_plugin.pipeline import fat
from esp_mirror_plugin.pipeline.adoption import COPY, SWITCHED, Adoption
from esp_mirror_plugin.pipeline.kinds import AdoptPhase
from esp_mirror_plugin.pipeline.layout import Layout
from esp_mirror_plugin.pipeline.profiles import Profile
from esp_mirror_plugin.pipeline.request import Resolved
from esp_mirror_plugin.pipeline.steps import (
    Command,
    EditBlock,
    MakeDir,
    Settle,
    Step,
    VerifyCopy,
    WaitForSync,
    WriteFile,
)
from esp_mirror_plugin.system import nvram
from esp_mirror_plugin.system.discovery import Snapshot
from esp_mirror_plugin.system.target import Target

BACKUP = "adopt-backup"
FINISH = "adopt-finish"


def _adoption(layout: Layout) -> Adoption:
    assert layout.adoption is not None  # the hooks call these only for an adoption
    return layout.adoption


def backup_steps(request: Resolved, layout: Layout) -> tuple[Step, ...]:
    """Before the first change: every ESP's files, each disk's GPT, the boot entries and the fstab
    lines the mirror takes over, under /var/lib/esp-mirror/adopt/; then the journal."""
    adoption = _adoption(layout)
    where = adoption.backup_dir
    steps: list[Step] = [MakeDir(where, why="the adoption's backups", root=request.target)]
    for backup in adoption.backups:
        why = f"the files of {backup.node} as they were"
        if backup.mount:
            steps += [
                MakeDir(backup.source, why=f"{backup.node} is read from here"),
                Command(
                    ("mount", "-t", "vfat", "-o", f"ro,{fat.MOUNT_OPTIONS}", backup.node, backup.source),
                    why=f"{backup.node} read-only, to back up its files",
                ),
            ]
        steps.append(Command(("tar", "--create", f"--file={backup.tar}", f"--directory={backup.source}", "."), why=why))
        steps.append(
            VerifyCopy(
                backup.source,
                backup.tar,
                why=f"the backup must hold every file of {backup.node} before anything changes (nothing has yet)",
            )
        )
        if backup.mount:
            steps.append(Command(("umount", backup.source), why=f"{backup.node} is backed up"))
    for disk, file in adoption.gpt_backups:
        steps.append(
            Command(
                ("sgdisk", f"--backup={file}", disk),
                why=f"the partition table of {disk} as it was (sgdisk --load-backup={file} {disk} puts it back)",
            )
        )
    if adoption.boot_text:
        steps.append(
            WriteFile(
                os.path.join(where, "efibootmgr-v.txt"),
                adoption.boot_text,
                why="the firmware's boot entries as they were (efibootmgr -v)",
                root=request.target,
            )
        )
    if adoption.fstab_lines:
        steps.append(
            WriteFile(
                os.path.join(where, "fstab.lines"),
                "# the lines of /etc/fstab that esp-mirror adopt commented out (its own line replaces them)\n"
                + adoption.fstab_lines,
                why="the old fstab lines for the ESP",
                root=request.target,
            )
        )
    steps.append(_journal(request, adoption, COPY, "what this adoption does, so that running it again finishes it"))
    return tuple(steps)


def _journal(request: Resolved, adoption: Adoption, phase: AdoptPhase, why: str) -> WriteFile:
    journal = adoption.journal
    text = adoptions.AdoptJournal(journal.command, journal.live, journal.disks, phase).text()
    return WriteFile(adoptions.journal_path(request.target), text, why=why, root=request.target)


def partition_steps(layout: Layout) -> tuple[Step, ...]:
    """pre_partition of an adoption before the switch: what an interrupted run left is taken down,
    blank disks get partition 1, the other disks' ESP partitions are wiped (their files are in the
    backup) to become members where they are. The live ESP is not touched."""
    adoption = _adoption(layout)
    steps: list[Step] = []
    if adoption.staged:
        steps.append(Command(("umount", adoption.staging), why="an interrupted run left the new array mounted here"))
    for device in adoption.stop:
        steps.append(
            Command(("mdadm", "--stop", device), why="an interrupted run made the array: it is made again from scratch")
        )
    for mountpoint in adoption.unmount:
        steps.append(Command(("umount", mountpoint), why="another disk's ESP becomes a member of the mirror"))
    steps += partition.steps(adoption.others, layout.first_sector, layout.last_sector, wipe_all=True)
    return tuple(steps)


def switch_steps(request: Resolved, profile: Profile, layout: Layout, target: Target) -> tuple[Step, ...]:
    """post_format of an adoption before the switch: the degraded array, FAT32 with the live ESP's
    label, the files copied and checked; then mdadm.conf, fstab and the mount switched to it."""
    adoption = _adoption(layout)
    live, device, esp, staging = adoption.live, request.device, layout.esp_dir, adoption.staging
    devices = tuple("missing" if m.guid == live.guid else m.node for m in layout.members)
    smallest = min(m.size for m in layout.members)
    steps: list[Step] = [
        raid.create(request, layout, devices, adoption.component_kib),
        Settle(why="udev names the new array before it is used"),
        fat.mkfs(device, smallest, layout.sector_size, adoption.label, layout.volume_id),
    ]
    if not adoption.live_mounted:
        steps += [
            MakeDir(esp, why="the ESP mount point", root=request.target),
            fat.mount(
                str(live.node), esp, why="the live ESP, whose files are copied (an interrupted run unmounted it)"
            ),
        ]
    steps += [
        MakeDir(staging, why="the new array is mounted here while the files are copied"),
        fat.mount(device, staging, why="the array, to copy the live ESP's files onto it"),
        Command(
            ("cp", "--recursive", "--preserve=timestamps", "--no-target-directory", esp, staging),
            why=f"every file of the live ESP {live.node} onto the array",
        ),
        VerifyCopy(esp, staging, why="the array must hold every file before the system uses it"),
        Command(("umount", staging), why="the array is mounted at the mount point next"),
    ]
    edit = raid.mdadm_conf_edit(request, profile, layout, target)
    if edit is not None:
        steps.append(edit)
    steps += [
        EditBlock(
            target.path("etc/fstab"),
            fstab.line(layout.fs_uuid, request.mountpoint),
            root=target.root,
            retire=adoption.retire,
            why="fstab mounts the array by its FAT UUID; the old line for the ESP is commented out in the same write",
        ),
        Command(("umount", esp), why=f"the live ESP {live.node} is copied: the array takes its place"),
        fat.mount(device, esp, why="from now on the system writes to the array"),
    ]
    if adoption.reload_systemd:
        steps.append(Command(("systemctl", "daemon-reload"), why="systemd's mount unit follows the new fstab line"))
    steps.append(_journal(request, adoption, SWITCHED, "the array is the ESP now: a run again goes on from here"))
    if len(adoption.others) > 1:
        steps.append(WaitForSync(device, work="its resync", why="the other members are full copies of each other"))
    return tuple(steps)


def finish_steps(
    request: Resolved, profile: Profile, layout: Layout, snapshot: Snapshot, target: Target
) -> tuple[tuple[Step, ...], tuple[str, ...]]:
    """Last: the live ESP's partition is wiped and added, md copies the array onto it, BootOrder
    gets the disk order, the journal goes."""
    adoption = _adoption(layout)
    live, device = adoption.live, request.device
    steps: list[Step] = []
    if not adoption.joined:
        steps += [
            Command(
                ("sync", "--file-system", layout.esp_dir),
                why="what the array holds reaches its disks before the other copy goes (a power cut may follow)",
            ),
            Command(
                ("wipefs", "--all", str(live.node)),
                why=f"the old ESP's FAT on {live.node} goes (its files are on the array and in the backup)",
            ),
            Command(("mdadm", device, "--add", str(live.node)), why=f"{live.node} joins the mirror"),
        ]
    steps.append(
        WaitForSync(device, clean=True, work="recovery", why=f"md copies the array onto {live.node}: every disk boots")
    )
    if layout.nvram:
        state = snapshot.boot or nvram.BootState(None, (), ())
        loader, args = loader_path(request, profile, target), loader_args(request, profile, target)
        steps.append(bootentries.disk_order(state, entry_members(layout), request.entry_label, loader, args))
    journal = adoptions.journal_path(request.target)
    steps.append(Command(("rm", "--", journal), why="the adoption is finished"))
    notes = (
        *adoption.notes,
        f"the backups stay in {adoption.backup_dir}: remove them once the machine has booted from each disk",
    )
    return tuple(steps), notes
