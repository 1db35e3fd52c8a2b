"""release: a member disk taken out of the mirror as a plain ESP that boots alone (``--disk``),
or the mirror undone (``--all``), planned as steps; and the journal that lets a run that was
cut finish the job.

With metadata 1.0 a member's FAT starts at its partition's first byte and md's superblock is at
its end: out of the array and rid of the superblock, the partition is a FAT32 that the firmware
and Linux read as any ESP. What makes it a safe one:

- it gets a FAT volume id of its own (``fatlabel -i``, which writes the boot sector and its
  backup) while its superblock still hides it from blkid, so no partition ever shows the array's
  FAT id beside the array: fstab's ``UUID=`` of the array's FAT never resolves to it. The id is
  made from the partition's GUID (:func:`~esp_mirror_plugin.pipeline.naming.released_volume_id`),
  so a run again gives the same one. With ``--all`` the first disk's partition, the machine's
  ESP from then on, gets the array's FAT id: fstab's line names what it named before;
- ``fsck.fat -n`` checks it before the plan (a damaged member is refused) and once it is plain
  (a run that finds damage stops, naming the repair);
- heal takes back only partitions whose superblock is the array's: once it is zeroed, heal
  never adds the disk again (tests/unit/test_upkeep_release.py runs heal after a release).

The journal, /var/lib/esp-mirror/release.json, is written before the first change. Its phases:

- ``take-out``: the released partitions may still be members (with ``--all``, the array may
  still run, or run again after a boot). Each is read again: in the array, it is taken out;
  with a superblock, it is zeroed; its volume id is written and its FAT checked again.
- ``finish``: every released partition is a plain FAT ESP with its own volume id, checked.
  From here nothing reads or writes them: the array shrinks and the record counts its members
  (``--disk``); or fstab, mdadm.conf, the mount, the installed system's units and hooks and the
  record (``--all``); the boot entries; the journal goes last.

The journal keeps the record as it was, so a run cut after ``--all`` removed the record finishes.
"""

from __future__ import annotations

import os
from dataclasses import replace

from esp_mirror_plugin.hooks import bootentries, fstab, installed
from esp_mirror_plugin.pipeline import fat
from esp_mirror_plugin.pipeline import record as records
from esp_mirror_plugin.pipeline.profiles import load_profile
from esp_mirror_plugin.pipeline.steps import Command, Group, RemoveBlock, Step, VerifyFat, WriteFile
from esp_mirror_plugin.system import files
from esp_mirror_plugin.system.discovery import HostView
from esp_mirror_plugin.system.target import Target
from esp_mirror_plugin.upkeep import journal as journal_file
from esp_mirror_plugin.upkeep import metrics, settings
from esp_mirror_plugin.upkeep.journal import Released, ReleaseJournal, release_path_in
from esp_mirror_plugin.upkeep.mirror import MirrorState

GROUP = "release"
TAKE_OUT, FINISH = journal_file.TAKE_OUT, journal_file.FINISH


def fat_id(volume_id: str) -> str:
    """fatlabel's spelling of a volume id: eight hex digits."""
    return volume_id.replace("-", "")


# -- take-out: the partitions, the array ----------------------------------------------------------


def take_out(state: MirrorState, journal: ReleaseJournal, carrying: set[str], root: str) -> tuple[Step, ...]:
    """The ``take-out`` phase from where it stands: the journal, the partitions out of the array
    (``--disk``) or the array stopped (``--all``), each partition's own volume id, its superblock
    zeroed, its FAT checked; then the journal's ``finish``.

    :param carrying: the released partitions that still carry the array's superblock.
    """
    steps: list[Step] = [
        WriteFile(
            release_path_in(root),
            journal.text(),
            root=root,
            why="what this release is doing, so that running it again after an interruption finishes it",
        )
    ]
    array = state.array
    if journal.everything:
        if state.mount is not None:
            steps.append(
                Command(("umount", state.mount.mountpoint), why="nothing may write to the ESP while it changes")
            )
        if array is not None:
            steps.append(
                Command(("mdadm", "--stop", array.device), why="the mirror is undone: its members become plain ESPs")
            )
    else:
        assert array is not None  # the refusals before: a release of a disk needs the running array
        out = [r for r in journal.release if array.member(r.node) is not None]
        mountpoint = state.mount.mountpoint if state.mount is not None else journal.mountpoint
        if out and state.mount is not None:
            steps.append(
                Command(
                    ("umount", state.mount.mountpoint),
                    why="for a moment, so the member taken out holds a FAT that was cleanly unmounted",
                )
            )
        for r in out:
            steps.append(
                Command(
                    ("mdadm", array.device, "--fail", r.node, "--remove", r.node),
                    why=f"take {r.node} out of {array.device}",
                )
            )
        if mountpoint is not None and (out or state.mount is None):
            steps.append(fat.mount(array.device, mountpoint, why="the ESP back in place, on the members that stay"))
    # the partition that stays the ESP last: when its superblock goes, no other member can make
    # an array again that would show the same FAT id beside it
    for r in (*journal.release[1:], journal.release[0]) if journal.everything else journal.release:
        keep = r == journal.keep
        why = (
            f"the array's FAT id {r.volume_id}, which fstab names: {r.node} is the machine's ESP from now on"
            if keep
            else f"a FAT id of its own ({r.volume_id}), before its superblock goes: fstab's UUID={journal.fs_uuid} "
            "never resolves to it"
        )
        steps.append(Command(("fatlabel", "-i", r.node, fat_id(r.volume_id)), why=why))
        if r.node in carrying:
            steps.append(
                Command(
                    ("mdadm", "--zero-superblock", r.node),
                    why=f"{r.node} is no member any more: nothing assembles it, heal never takes it back; "
                    "its FAT at the partition's start stays",
                )
            )
        steps.append(VerifyFat(r.node, why=f"{r.node} boots on its own: its FAT must be whole"))
    steps.append(
        WriteFile(
            release_path_in(root),
            replace(journal, phase=FINISH).text(),
            root=root,
            why="every released partition is a plain ESP",
        )
    )
    return tuple(steps)


# -- finish: what follows, from the array, NVRAM and the files -----------------------------------------


def shrink(state: MirrorState, journal: ReleaseJournal, root: str) -> tuple[Step, ...]:
    """``--disk``, once its partitions are plain: the array shrinks to the members that stay, so
    it is not reported degraded, and the record counts them."""
    array = state.array
    assert array is not None  # the refusals before
    steps: list[Step] = []
    if array.raid_disks > journal.members:
        force = ("--force",) if journal.members == 1 else ()  # mdadm asks for it before a one-member array
        steps.append(
            Command(
                ("mdadm", "--grow", array.device, f"--raid-devices={journal.members}", *force),
                why=f"{journal.members} active member{'s' if journal.members != 1 else ''}: the mirror is whole, "
                "not degraded",
            )
        )
    record = state.record or journal.record
    if record.members != journal.members:
        steps.append(
            WriteFile(
                records.path_in(root),
                replace(record, members=journal.members).render(),
                root=root,
                why=f"the record counts {journal.members} members (status and the metrics, while the array is "
                "not running)",
            )
        )
    return tuple(steps)


def undo(journal: ReleaseJournal, root: str, mounted: bool) -> tuple[Step, ...]:
    """``--all``, once every partition is plain: mdadm.conf's ARRAY line and fstab's line of the
    array go with esp-mirror's blocks (fstab gets the plain ESP's line in their place, the same
    FAT id), and the ESP is mounted from the partition that stays (unless it is ``mounted``)."""
    keep = journal.keep
    assert keep is not None
    record = journal.record
    target = Target(root)
    steps: list[Step] = []
    conf = load_profile(record.profile).mdadm_conf
    if target.has_block(conf):
        steps.append(
            RemoveBlock(
                target.path(conf),
                keep=_kept_lines(target.text(conf)),
                root=root,
                why="no array to assemble: its ARRAY line goes (a MAILADDR line the block carried stays, for the "
                "other arrays' monitor)",
            )
        )
    if target.has_block("etc/fstab"):
        steps.append(
            RemoveBlock(
                target.path("etc/fstab"),
                keep=fstab.plain_line(keep.volume_id, record.mountpoint),
                root=root,
                why=f"the ESP is {keep.node} now: a plain fstab line, by the same FAT id, that is no longer "
                "esp-mirror's",
            )
        )
    if not mounted:
        steps.append(fat.mount(keep.node, record.mountpoint, why=f"the machine's ESP, from {keep.node}"))
    return tuple(steps)


def _kept_lines(conf: str) -> str:
    """The lines of esp-mirror's block of mdadm.conf other than its ARRAY line (MAILADDR root)."""
    try:
        _, block, _ = files.split_block(conf)
    except ValueError:
        return ""  # the preflight refuses the broken block
    return "\n".join(line for line in (block or "").splitlines() if line.split()[:1] != ["ARRAY"])


def entries(state: MirrorState, journal: ReleaseJournal) -> Group:
    """Each released disk's own boot entry (its partition keeps booting alone), esp-mirror's
    entries for it removed; the entries of the members that stay untouched."""
    if not state.efivars or state.boot is None:
        note = (
            "no EFI variables here: each released disk's entry is left as it is (one of esp-mirror's, which "
            "`esp-mirror entries` removes once its partition is no member); make it again on the booted system"
        )
        return Group("entries", (), (note,))
    stay = {m.partuuid for m in state.array.members if m.usable} if state.array is not None else set()
    stay -= {r.partuuid for r in journal.release}
    record = state.record or journal.record
    released = [r.entry() for r in journal.release]
    steps = bootentries.release(state.boot, released, stay, record.entry_label, record.loader, journal.everything)
    return Group("entries", steps, () if steps else ("each released disk has its own entry already",))


def installed_system(journal: ReleaseJournal, host: HostView) -> Group:
    """``--all``: what apply left on the installed system that expects the mirror, taken away
    (:func:`~esp_mirror_plugin.hooks.installed.removal`), and the metrics file its timers wrote
    (left, it would only go stale and raise the metrics' alerts)."""
    keep = journal.keep
    assert keep is not None
    root, record = host.sysroot, journal.record
    steps, notes = installed.removal(
        settings.setup(record, journal.array_uuid, root), device_link(host, keep), running=host.systemd_booted()
    )
    metrics_file = os.path.join(record.metrics_dir, metrics.FILE_NAME)
    why = "no mirror is left to describe: the metrics would only go stale"
    gone = tuple(Command(("rm", "-f", "--", p), why=why) for p in Target(root).present(metrics_file))
    return Group(installed.GROUP, (*steps, *gone), notes)


def device_link(host: HostView, released: Released) -> str:
    """How a package's debconf answer names the partition that is the ESP: its first
    /dev/disk/by-id link, as Ubuntu's grub-multi-install picks one, else its by-partuuid link."""
    for name in host.listdir("/dev/disk/by-id"):
        if host.realpath(f"/dev/disk/by-id/{name}") == released.node:
            return f"/dev/disk/by-id/{name}"
    return f"/dev/disk/by-partuuid/{released.partuuid}"


def finish(journal: ReleaseJournal, root: str) -> Group:
    """The last steps: the record (``--all``), then the journal."""
    steps: list[Step] = []
    if journal.everything:
        steps += [
            Command(("rm", "-f", "--", p), why="esp-mirror no longer keeps a mirror here: its record goes")
            for p in Target(root).present(records.PATH)
        ]
    steps.append(Command(("rm", "-f", "--", release_path_in(root)), why="the release is finished"))
    return Group("finish", tuple(steps))
