"""What an unfinished repair or release was doing, so the same command run again finishes it.

A repair takes every member but the source out of the array and adds them back empty. Killed in
between, the array alone no longer says which members were meant to come back (they are simply
gone) or where the ESP was mounted (it was unmounted first). The journal,
/var/lib/esp-mirror/repair.json, says it: written before the first change, rewritten once every
member is out (phase "rebuild"), removed as the last step, after the recovery and the mount.

A release (:mod:`.release`) takes members out for good: once one is out and its superblock
zeroed, nothing on the disks says it was a member, and with ``--all`` the record goes too. Its
journal, /var/lib/esp-mirror/release.json, says which partitions, with which volume ids, and keeps
the record; phase "take-out" while the partitions may still be members, "finish" once each is a
plain ESP.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

from esp_mirror_plugin.errors import BadInput
from esp_mirror_plugin.hooks import bootentries
from esp_mirror_plugin.pipeline.record import Record
from esp_mirror_plugin.system.state import RELEASE_JOURNAL as RELEASE_PATH
from esp_mirror_plugin.system.state import REPAIR_JOURNAL as PATH

TAKE_OUT, REBUILD = "take-out", "rebuild"
FINISH = "finish"  # a release: every released partition is a plain ESP


def path_in(root: str) -> str:
    return os.path.join(root, PATH)


@dataclass(frozen=True)
class RepairJournal:
    source: str  # the member node every other one is rebuilt from
    rebuild: tuple[str, ...]  # the member nodes taken out and added back
    mountpoint: str | None  # where the ESP was mounted before the repair, if it was
    phase: str = TAKE_OUT  # "take-out": members may still be in the array; "rebuild": all are out

    def text(self) -> str:
        body = {
            "source": self.source,
            "rebuild": list(self.rebuild),
            "mountpoint": self.mountpoint,
            "phase": self.phase,
        }
        return json.dumps(body, indent=2) + "\n"


def load(root: str) -> RepairJournal | None:
    """The journal of an unfinished repair, or None when every repair finished.

    :raises BadInput: it exists but cannot be read or is not a journal (naming the file to remove).
    """
    path = path_in(root)
    try:
        with open(path, encoding="utf-8") as handle:
            body = json.load(handle)
        journal = RepairJournal(
            source=str(body["source"]),
            rebuild=tuple(str(n) for n in body["rebuild"]),
            mountpoint=None if body["mountpoint"] is None else str(body["mountpoint"]),
            phase=str(body["phase"]),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BadInput(
            f"cannot read the journal of an interrupted repair {path} ({exc}): check the array with "
            "`esp-mirror status`, then remove the file and run the repair again"
        ) from None
    if journal.phase not in (TAKE_OUT, REBUILD):
        raise BadInput(f"{path} has an unknown phase {journal.phase!r}: remove it and run the repair again")
    return journal


# -- release ----------------------------------------------------------------------------------


def release_path_in(root: str) -> str:
    return os.path.join(root, RELEASE_PATH)


@dataclass(frozen=True)
class Released:
    """A member partition that leaves the mirror."""

    node: str  # /dev/vdb1
    disk: str  # /dev/vdb
    partuuid: str  # its GPT partition GUID (lower case): what its boot entry names
    tag: str  # names the disk in boot entry labels (its serial number, else its kernel name)
    volume_id: str  # the FAT volume id it gets, XXXX-XXXX

    @property
    def number(self) -> int:
        digits = self.node[len(self.node.rstrip("0123456789")) :]
        return int(digits) if digits else 1

    def entry(self) -> bootentries.Member:
        return bootentries.Member(disk=self.disk, tag=self.tag, part=self.number, partuuid=self.partuuid)


@dataclass(frozen=True)
class ReleaseJournal:
    """What a release that has begun is doing."""

    command: str  # the command line, for status and the refusals of another one
    everything: bool  # --all
    release: tuple[Released, ...]  # with --all, the one that stays the machine's ESP first
    members: int  # the array's members once the release is done (0 with --all)
    mountpoint: str | None  # where the ESP was mounted when the release began
    fs_uuid: str  # the array's FAT volume id (XXXX-XXXX): fstab's UUID=
    array_uuid: str  # the array's UUID (mdadm's form)
    record: Record  # the record as it was (with --all it is removed before the journal)
    phase: str = TAKE_OUT

    @property
    def keep(self) -> Released | None:
        """With --all: the partition that is the machine's ESP afterwards."""
        return self.release[0] if self.everything else None

    def text(self) -> str:
        body = {
            "command": self.command,
            "all": self.everything,
            "release": [asdict(r) for r in self.release],
            "members": self.members,
            "mountpoint": self.mountpoint,
            "fs_uuid": self.fs_uuid,
            "array_uuid": self.array_uuid,
            "record": asdict(self.record),
            "phase": self.phase,
        }
        return json.dumps(body, indent=2) + "\n"

    def unfinished(self) -> str:
        """The line status shows for it, with what finishes it."""
        return f"a release was interrupted ({self.phase}): run it again to finish it: {self.command}"


def load_release(root: str) -> ReleaseJournal | None:
    """The journal of a release that has not finished, or None.

    :raises BadInput: it exists but cannot be read (naming the file and what to do).
    """
    path = release_path_in(root)
    try:
        with open(path, encoding="utf-8") as handle:
            body = json.load(handle)
        journal = ReleaseJournal(
            command=str(body["command"]),
            everything=bool(body["all"]),
            release=tuple(Released(**{k: str(v) for k, v in r.items()}) for r in body["release"]),
            members=int(body["members"]),
            mountpoint=None if body["mountpoint"] is None else str(body["mountpoint"]),
            fs_uuid=str(body["fs_uuid"]),
            array_uuid=str(body["array_uuid"]),
            record=Record(**body["record"]),
            phase=str(body["phase"]),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BadInput(
            f"cannot read the journal of an interrupted release {path} ({exc}): check the disks with "
            "`esp-mirror status` and `blkid`, then remove the file and run the release again"
        ) from None
    if journal.phase not in (TAKE_OUT, FINISH):
        raise BadInput(f"{path} has an unknown phase {journal.phase!r}: remove it and run the release again")
    return journal
