"""heal: members of the ESP array that are present but out of it go back in, without a person.

md leaves a member that missed writes out when it returns ("kicking non-fresh"), and mdadm's
incremental assembly re-adds it only with a bitmap (see :mod:`esp_mirror_plugin.hooks.heal` for
when this runs). What heal may touch is decided from the superblocks, never from names
(:func:`esp_mirror_plugin.upkeep.mirror.out_of_array`, which status reads to tell a member heal
takes back from one that is gone):

- a partition whose md superblock (``mdadm --examine --export``) carries the running ESP array's
  UUID, and nothing else;
- that nothing holds (an array that assembled it on its own, device-mapper);
- whose event count is not higher than the array's: a member with newer writes than the running
  array is someone's decision (which copy is right), never overwritten automatically.

Each goes back with ``--re-add``, else ``--add`` (a full copy: seconds for an ESP), and heal waits
for md's recovery, so the line it adds to the history (:mod:`.history`) says what is true.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from esp_mirror_plugin.errors import BadInput
from esp_mirror_plugin.pipeline.profiles import load_profile
from esp_mirror_plugin.pipeline.record import Record
from esp_mirror_plugin.pipeline.steps import AddMember, Command, Step, WaitForSync
from esp_mirror_plugin.system.discovery import HostView
from esp_mirror_plugin.system.nvram import BootEntry
from esp_mirror_plugin.system.runner import Runner
from esp_mirror_plugin.upkeep.mirror import ArrayState, Returning, examine, out_of_array, read_array

REASONS = {"boot": "at boot", "hot-plug": "on hot-plug", "hand": "by hand"}


@dataclass(frozen=True)
class HealPlan:
    array: ArrayState
    add: tuple[Returning, ...]  # go back in
    left_out: tuple[str, ...]  # members of ours heal must not take back: why, and what to do

    def steps(self) -> tuple[Step, ...]:
        if not self.add:
            return ()
        why = "a member of this array that is present but out of it goes back in"
        return (
            *(AddMember(self.array.device, r.node, why=f"{why} ({r.disk}, events {r.events})") for r in self.add),
            WaitForSync(self.array.device, clean=True, why="md copies the array onto it; heal reports when done"),
        )


def wait_for_array(
    runner: Runner,
    host: HostView,
    record: Record,
    seconds: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> ArrayState:
    """The running array, waiting up to ``seconds`` for it (at boot it may start late).

    :raises BadInput: it is not running after that.
    """
    deadline = clock() + seconds
    while True:
        array = read_array(runner, host, record.array)
        if array is not None:
            return array
        if clock() >= deadline:
            raise BadInput(
                f"{record.array} is not running, so nothing can go back into it: assemble it "
                "(`mdadm --assemble --scan --run`), then run `esp-mirror heal`"
            )
        sleep(1.0)


def array_uuid(host: HostView, record: Record) -> str | None:
    """The array's UUID as mdadm.conf lists it (esp-mirror's ARRAY line), None when it is not there."""
    conf = load_profile(record.profile).mdadm_conf
    for line in (host.read(conf) or "").splitlines():
        fields = line.split()
        if fields[:2] == ["ARRAY", record.array]:
            return next((f.split("=", 1)[1] for f in fields[2:] if f.startswith("UUID=")), None)
    return None


def waiting_arrays(runner: Runner, host: HostView, record: Record) -> tuple[str, ...]:
    """md devices that hold members of our array without running it: incremental assembly
    gathered the members present and waits for the rest. At boot with a disk gone, mdadm's
    last-resort timer should start such an array degraded after 30 s; when the initramfs's udev
    attached the member, the real root's udev never sees MD_STARTED=unsafe again and no timer is
    made (systemd #25617, mdadm #263: seen here when the initramfs did not wait for a degraded
    root), and then nothing mounts the ESP."""
    uuid = array_uuid(host, record)
    if uuid is None:
        return ()
    found = []
    for name in host.listdir("/sys/block"):
        md = f"/sys/block/{name}/md"
        if (
            not name.startswith("md")
            or not host.exists(f"{md}/array_state")
            or host.attr(f"{md}/array_state") != "inactive"
        ):
            continue
        members = [entry[4:] for entry in host.listdir(md) if entry.startswith("dev-")]
        uuids = {(examine(runner, f"/dev/{member}") or {}).get("MD_UUID") for member in members}
        if members and uuids == {uuid}:
            found.append(f"/dev/{name}")
    return tuple(found)


def start_steps(devices: tuple[str, ...], record: Record, mounted: bool, *, systemd: bool) -> tuple[Step, ...]:
    """What mdadm's last-resort timer would have run, and the mount that waited for it.

    Under systemd the mount is its mount unit's (``systemctl start /boot/efi`` names the unit by
    its path): heal runs once local-fs.target is reached, which does not wait for the ESP's
    ``nofail`` mount, and a mount unit still at work (seen: 24 s for a degraded array under
    TCG) is joined, not mounted over a second time."""
    steps: list[Step] = [
        Command(("mdadm", "--run", device), why="the array waits for a member that is not there: it runs without it")
        for device in devices
    ]
    if not mounted:
        why = "fstab's ESP line, which waited for the array"
        argv = ("systemctl", "start", record.mountpoint) if systemd else ("mount", record.mountpoint)
        steps.append(Command(argv, why=why + (" (its mount unit: joined if it is at work)" if systemd else "")))
    return tuple(steps)


def find(runner: Runner, host: HostView, array: ArrayState, device: str | None = None) -> HealPlan:
    """What heal does for ``array``: the partitions of ours to take back, and those it leaves out
    (:func:`~esp_mirror_plugin.upkeep.mirror.out_of_array`, which status reads too)."""
    outside = out_of_array(runner, host, array, device)
    return HealPlan(array, outside.add, outside.left_out)


def started_line(record: Record, waiting: tuple[str, ...]) -> str:
    """The history line for an array heal started at boot without its missing members, or for
    the ESP heal mounted at boot (its mount unit had not)."""
    if not waiting:
        return f"mounted at boot: {record.array} at {record.mountpoint} (its mount had not happened)"
    where = ", ".join(waiting)
    return f"started at boot: {record.array} ({where}) without its missing members, mounted at {record.mountpoint}"


def event_line(plan: HealPlan, why: str, seconds: float) -> str:
    """The history line for what heal did."""
    where = REASONS.get(why, why)
    if not plan.add:
        return f"not healed {where}: " + "; ".join(plan.left_out)
    back = ", ".join(f"{r.node} ({r.disk})" for r in plan.add)
    line = f"healed {where}: {back} back in {plan.array.device}, in sync after {seconds:.1f} s"
    return line + ("; left out: " + "; ".join(plan.left_out) if plan.left_out else "")


def entries_line(folded: tuple[BootEntry, ...]) -> str:
    """The history line for boot entries heal set at boot after shim's fallback made its own."""
    made = ", ".join(f"{e.number} {e.label!r}" for e in folded)
    return f"boot entries set at boot: {made} (made by shim's fallback) folded into ours, one per member"
