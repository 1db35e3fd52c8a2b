"""The mirror's health as Prometheus metrics, for node_exporter's textfile collector.

:func:`render` is a pure function of the mirror's state, the last check's result and the time:
the Prometheus text format, every family with ``# HELP`` and ``# TYPE``, every series labelled
with the array (``array="/dev/md/esp"``), member series also with ``member`` (the partition) and
``disk``. What cannot be read is left out rather than guessed, and says so where an alert must
see it: an array that is not running is ``esp_mirror_array_running 0``, NVRAM that cannot be
read ``esp_mirror_efivars_readable 0``; an unknown Secure Boot state leaves
``esp_mirror_secure_boot`` out (an alert on it then sees no series, not a wrong "off").

:func:`write` puts the text in place the way the textfile collector needs: a temporary file in
the same directory, synced, renamed over the file (:func:`esp_mirror_plugin.system.files.write_atomic`),
so node_exporter never reads half a file. ``status`` and ``check`` write it, with ``--metrics FILE``
or ``--metrics-dir DIR`` (DIR/esp_mirror.prom, when DIR exists).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from esp_mirror_plugin.errors import BadInput
from esp_mirror_plugin.system import files
from esp_mirror_plugin.upkeep.lastcheck import LastCheck
from esp_mirror_plugin.upkeep.mirror import DEFAULT_ARRAY, ArrayState, MemberState, MirrorState

FILE_NAME = "esp_mirror.prom"  # in the collector's directory: node_exporter reads *.prom

# name -> help; every family is a gauge, and is written in this order
FAMILIES: dict[str, str] = {
    "esp_mirror_array_running": "1 when the md array of the ESP is running, 0 when it is not (or not set up here).",
    "esp_mirror_members_expected": (
        "Members the array is made of (md raid_disks; while it is not running, what esp-mirror recorded)."
    ),
    "esp_mirror_members_active": "Members in sync.",
    "esp_mirror_members_faulty": "Members md marked faulty.",
    "esp_mirror_members_missing": "Member slots no partition fills.",
    "esp_mirror_sync_progress_ratio": (
        "Progress of the running resync, recovery or check, 0 to 1; 1 when none is running."
    ),
    "esp_mirror_mismatch_cnt": "md's mismatch_cnt: sectors that differed between the members at its last check.",
    "esp_mirror_files_differing": "Files that differed between the members at the last esp-mirror check.",
    "esp_mirror_efivars_readable": "1 when the firmware's boot entries could be read, else 0.",
    "esp_mirror_boot_entry_missing": "1 when the member has no firmware boot entry of esp-mirror's, else 0.",
    "esp_mirror_boot_disk_info": "The member this boot came from (LoaderDevicePartUUID or BootCurrent).",
    "esp_mirror_secure_boot": (
        "1 when the firmware enforces Secure Boot, 0 when it does not; absent when no EFI variable says."
    ),
    "esp_mirror_member_loader_signed": (
        "1 when the member's copy of the loader file (path) carries a signature, 0 when it is unsigned, "
        "missing or not an EFI image; absent when the member could not be read."
    ),
    "esp_mirror_last_check_timestamp_seconds": "When the last esp-mirror check finished, seconds since the epoch.",
    "esp_mirror_last_check_success": "1 when the last esp-mirror check found no mismatch and no file drift, else 0.",
    "esp_mirror_record_timestamp_seconds": (
        "When esp-mirror last wrote its record of the setup here (apply, or add growing the mirror), "
        "seconds since the epoch."
    ),
    "esp_mirror_status_exit_code": "What `esp-mirror status` exits with: 0 healthy, 1 problems, 2 not set up.",
    "esp_mirror_metrics_timestamp_seconds": "When this file was written, seconds since the epoch.",
}


@dataclass(frozen=True)
class Sample:
    name: str
    labels: tuple[tuple[str, str], ...]
    value: float

    def text(self) -> str:
        shown = ",".join(f'{key}="{_escape(value)}"' for key, value in self.labels)
        return f"{self.name}{{{shown}}} {_number(self.value)}"


def samples(state: MirrorState, last_check: LastCheck | None, now: float) -> list[Sample]:
    """Every series, in no particular order (:func:`render` orders them by family)."""
    a = state.array
    device = a.device if a is not None else state.record.array if state.record is not None else DEFAULT_ARRAY
    array = (("array", device),)
    out: list[Sample] = []

    def add(name: str, value: float, *labels: tuple[str, str]) -> None:
        out.append(Sample(name, (*array, *labels), value))

    add("esp_mirror_array_running", int(a is not None))
    if a is not None:
        filled = sum(1 for m in a.members if m.slot is not None)
        add("esp_mirror_members_expected", a.raid_disks)
        add("esp_mirror_members_active", sum(1 for m in a.members if m.active))
        add("esp_mirror_members_faulty", sum(1 for m in a.members if not m.usable))
        add("esp_mirror_members_missing", max(0, a.raid_disks - filled))
        add("esp_mirror_sync_progress_ratio", sync_progress(a))
        add("esp_mirror_mismatch_cnt", a.mismatch_cnt)
    else:
        expected = state.record.members if state.record is not None else None
        add("esp_mirror_members_active", 0)
        add("esp_mirror_members_faulty", 0)
        if expected is not None:  # a record written before esp-mirror kept the count does not say
            add("esp_mirror_members_expected", expected)
            add("esp_mirror_members_missing", expected)
    readable = state.efivars and state.boot is not None
    add("esp_mirror_efivars_readable", int(readable))
    if readable:
        for e in state.entries:
            add("esp_mirror_boot_entry_missing", int(e.entry is None), *_member(e.member))
    booted = state.booted_member
    if booted is not None:
        add("esp_mirror_boot_disk_info", 1, *_member(booted))
    if state.secure_boot is not None:  # unknown is left out, never reported as off
        add("esp_mirror_secure_boot", int(state.secure_boot))
    members = {m.node: m for m in a.members} if a is not None else {}
    for chain in state.loaders:
        for f in chain.files:
            if not f.unreadable and chain.node in members:
                signed = int(f.boots_under_secure_boot)
                add("esp_mirror_member_loader_signed", signed, *_member(members[chain.node]), ("path", f.path))
    if last_check is not None:
        add("esp_mirror_files_differing", last_check.files_differing)
        add("esp_mirror_last_check_timestamp_seconds", last_check.timestamp)
        add("esp_mirror_last_check_success", int(last_check.success))
    if state.record_time is not None:  # how long a check has had to run, when none has
        add("esp_mirror_record_timestamp_seconds", state.record_time)
    add("esp_mirror_status_exit_code", state.exit_code())
    add("esp_mirror_metrics_timestamp_seconds", now)
    return out


def render(state: MirrorState, last_check: LastCheck | None, now: float) -> str:
    """The metrics file's text: each family that has a series, with its HELP and TYPE lines.

    ``last_check`` is the check that just ran (``check``), or the one kept (``status``:
    ``state.last_check``); ``now`` is the time the file is written.
    """
    by_family: dict[str, list[Sample]] = {}
    for sample in samples(state, last_check, now):
        if sample.name not in FAMILIES:
            raise KeyError(f"{sample.name} is not in FAMILIES: give it a help text there")
        by_family.setdefault(sample.name, []).append(sample)
    lines = []
    for name, help_text in FAMILIES.items():
        if name in by_family:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
            lines += [s.text() for s in by_family[name]]
    return "".join(f"{line}\n" for line in lines)


def sync_progress(array: ArrayState) -> float:
    """md's sync_completed ("done / total" sectors) as a ratio; 1 when nothing runs, 0 while a
    resync or recovery waits to start ("delayed", or pending on a read-auto array)."""
    done, _, total = array.sync_completed.partition(" / ")
    if done.isdigit() and total.isdigit():
        return min(1.0, int(done) / int(total)) if int(total) else 1.0
    return 1.0 if array.sync_action in ("idle", "frozen") else 0.0


def file_for(path: str) -> Path:
    """Where ``--metrics FILE`` writes, checked before anything runs.

    :raises BadInput: its directory does not exist, or FILE is a directory.
    """
    file = Path(os.path.abspath(path))
    if not file.parent.is_dir():
        raise BadInput(
            f"cannot write the metrics to {path}: the directory {file.parent} does not exist; create it "
            f"(node_exporter's textfile collector directory) or give a file in an existing directory"
        )
    if file.is_dir():
        raise BadInput(f"--metrics {path} is a directory: give a file name such as {file / FILE_NAME}")
    return file


def file_in(directory: str) -> Path | None:
    """``--metrics-dir DIR``: DIR/esp_mirror.prom when DIR exists, else None (no collector here)."""
    return Path(directory, FILE_NAME) if os.path.isdir(directory) else None


def write(file: Path, text: str) -> None:
    """Replace ``file`` with ``text`` (mode 0644): a temp file in its directory, synced, renamed.

    :raises BadInput: it cannot be written (naming why).
    """
    try:
        files.write_atomic(file, text, 0o644, preserve=False)
    except OSError as exc:
        raise BadInput(
            f"cannot write the metrics to {file} ({exc.strerror}): run esp-mirror as root, or give a writable file"
        ) from None


def _member(member: MemberState) -> tuple[tuple[str, str], tuple[str, str]]:
    return ("member", member.node), ("disk", member.disk)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) or not float(value).is_integer() else str(int(value))
