"""A digest that binds a reviewed plan to the machine it was made on.

``plan`` shows it and ``plan --json`` carries it; ``apply --expect-plan DIGEST`` recomputes it
from what apply sees and refuses when it differs: a disk, the array, the boot entries or a file
that the plan edits changed since the plan was reviewed, or the plan itself would be different.
A plan that could not read everything (``plan`` by a user who is not root) has none: apply,
which reads everything, could never compute the same one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from typing import TYPE_CHECKING, Any

from esp_mirror_plugin.pipeline.steps import CopyFile, EditBlock, Group, InstallProgram, WriteFile
from esp_mirror_plugin.system import files

if TYPE_CHECKING:
    from esp_mirror_plugin.pipeline.context import Context


_FORMAT = re.compile(r"[0-9a-f]{64}")


def is_plan_digest(text: str) -> bool:
    """Is ``text`` written as :func:`plan_digest` writes one (sha256, 64 lower-case hex digits)?"""
    return _FORMAT.fullmatch(text) is not None


def _facts(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


def _file_state(root: str, path: str) -> str | None:
    try:
        return hashlib.sha256(files.resolve_in_root(root, path).read_bytes()).hexdigest()
    except OSError:
        return None


def plan_digest(ctx: Context, groups: list[Group]) -> str:
    """sha256 over the facts the plan was made from and the plan itself."""
    snapshot = ctx.snapshot
    edited = {}
    for group in groups:
        for step in group.steps:
            if isinstance(step, EditBlock | WriteFile | CopyFile | InstallProgram):
                path = step.dest if isinstance(step, CopyFile) else step.path
                edited[path] = _file_state(step.root, path)
    document = {
        "request": _facts(ctx.request),
        "profile": _facts(ctx.profile),
        "disks": [_facts(d) for d in snapshot.disks],
        "array": _facts(snapshot.array),
        "efivars": snapshot.efivars,
        "boot": _facts(snapshot.boot),
        "unread": list(snapshot.unread),
        "files": edited,
        "plan": [g.to_json() for g in groups],
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()
