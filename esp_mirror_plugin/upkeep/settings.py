"""Are the installed system's settings still what esp-mirror writes? (for status and check)

The "installed-system" group (:mod:`esp_mirror_plugin.hooks.installed`) is planned again from
what apply recorded, and every file it would write is compared with the file there: a package
that replaced a config file, fwupd installed after esp-mirror, an older esp-mirror at
/usr/local/sbin. The commands it would run (``systemctl enable``, ``debconf-set-selections``)
are not looked at: ``esp-mirror refresh`` runs them again anyway.
"""

from __future__ import annotations

from esp_mirror_plugin.errors import BadInput
from esp_mirror_plugin.hooks import installed
from esp_mirror_plugin.pipeline import naming
from esp_mirror_plugin.pipeline.profiles import load_profile
from esp_mirror_plugin.pipeline.record import Record, recorded_kind, recorded_loader_id
from esp_mirror_plugin.pipeline.steps import EditBlock, InstallProgram, Step, WriteFile
from esp_mirror_plugin.system import files
from esp_mirror_plugin.system.target import Target


def setup(record: Record, array_uuid: str, root: str) -> installed.Setup:
    """What the group is planned from, on the installed system (``root``: its file system)."""
    return installed.Setup(
        load_profile(record.profile),
        Target(root),
        naming.mdadm_uuid(array_uuid),
        record.mountpoint,
        recorded_kind(record),
        recorded_loader_id(record),
        record.metrics_dir,
        record.array,
        record.fs_uuid or naming.fstab_uuid(naming.volume_id(array_uuid)),  # an older record does not say
    )


def _differs(step: Step) -> bool:
    if not isinstance(step, WriteFile | EditBlock | InstallProgram):
        return False
    path = files.resolve_in_root(step.root, step.path)
    try:
        current = path.read_bytes()
    except FileNotFoundError:
        return True
    if isinstance(step, InstallProgram):
        return current != step.data
    if isinstance(step, WriteFile):
        return current != step.content.encode()
    try:
        _, block, _ = files.split_block(current.decode())
    except (ValueError, UnicodeDecodeError):
        return True
    return block is None or block.rstrip("\n") != step.block.rstrip("\n")


def drift(record: Record, array_uuid: str, root: str) -> list[str]:
    """Problems, one line each with what to run; [] when every file is as esp-mirror writes it.

    :raises OSError: a file cannot be read (status says so rather than guessing).
    """
    try:
        steps, _ = installed.plan(setup(record, array_uuid, root))
    except BadInput as exc:
        return [f"the installed system's settings cannot be kept: {exc}"]
    stale = [step.path for step in steps if _differs(step)]  # type: ignore[union-attr]
    if not stale:
        return []
    return [
        f"{', '.join(stale)} differ from what esp-mirror writes (a package replaced them, or something "
        "was installed later): run `esp-mirror refresh`"
    ]
