"""What an unfinished repair was doing, so the same command run again finishes it.

A repair takes every member but the source out of the array and adds them back empty. Killed in
between, the array alone no longer says which members were meant to come back (they are simply
gone) or where the ESP was mounted (it was unmounted first). The journal,
/var/lib/esp-mirror/repair.json, says it: written before the first change, rewritten once every
member is out (phase "rebuild"), removed as the last step, after the recovery and the mount.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from esp_mirror_plugin.errors import BadInput
from esp_mirror_plugin.system.state import REPAIR_JOURNAL as PATH

TAKE_OUT, REBUILD = "take-out", "rebuild"


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
