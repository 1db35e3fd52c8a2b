"""The result of the last `esp-mirror check`, kept for status and the metrics:
/var/lib/esp-mirror/last-check.json. check rewrites it (atomically, synced) each time it
finishes; status shows it as "last check: ..." and the metrics as
``esp_mirror_last_check_timestamp_seconds`` and ``esp_mirror_last_check_success``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from esp_mirror_plugin.errors import BadInput
from esp_mirror_plugin.system import files
from esp_mirror_plugin.system.state import LAST_CHECK as PATH


def path_in(root: str) -> str:
    return os.path.join(root, PATH)


@dataclass(frozen=True)
class LastCheck:
    timestamp: float  # when the check finished, seconds since the epoch
    mismatch_cnt: int  # md's count after the check (after the distribution's check with md_check False)
    files_differing: int  # files that differ between the members
    md_check: bool  # esp-mirror ran md's check itself (False: check --no-md-check)

    @property
    def success(self) -> bool:
        return self.mismatch_cnt == 0 and self.files_differing == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "timestamp": self.timestamp,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.timestamp)),
            "mismatch_cnt": self.mismatch_cnt,
            "files_differing": self.files_differing,
            "success": self.success,
            "md_check": self.md_check,
        }

    def line(self) -> str:
        """One line for status: when, what md counted, what the file comparison found."""
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.timestamp))
        md = "mismatch_cnt" if self.md_check else "mismatch_cnt (as the distribution's md check left it)"
        found = (
            "member files identical"
            if not self.files_differing
            else f"{self.files_differing} member files differ (`esp-mirror check` names them)"
        )
        return f"{when}: {'clean' if self.success else 'DRIFT'}, {md} {self.mismatch_cnt}, {found}"


def save(root: str, result: LastCheck) -> None:
    """Write ``result`` in place of the previous one (a temp file, synced, renamed)."""
    text = json.dumps(result.to_json(), indent=2) + "\n"
    files.write_atomic(Path(path_in(root)), text, 0o644, preserve=False)


def load(root: str) -> LastCheck | None:
    """The last check's result; None when no check has finished here yet.

    :raises BadInput: the file exists but cannot be read or is not a check result (naming the
        file and that the next check rewrites it).
    """
    path = path_in(root)
    try:
        with open(path, encoding="utf-8") as handle:
            body = json.load(handle)
        if not isinstance(body["md_check"], bool):
            raise TypeError(f"md_check is {body['md_check']!r}, not true or false")
        result = LastCheck(
            timestamp=float(body["timestamp"]),
            mismatch_cnt=int(body["mismatch_cnt"]),
            files_differing=int(body["files_differing"]),
            md_check=body["md_check"],
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        why = f"no {exc.args[0]!r}" if isinstance(exc, KeyError) else str(exc)
        raise BadInput(
            f"cannot read the last check's result {path} ({why}): remove it and run `esp-mirror check`, "
            "which writes it again"
        ) from None
    return result
