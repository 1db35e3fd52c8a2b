"""heal: members of the ESP array that are present but out of it go back in, without a person.

md leaves a member that missed writes out when it returns ("kicking non-fresh"), and mdadm's
incremental assembly re-adds it only with a bitmap (see :mod:`esp_mirror_plugin.hooks.heal` for
when this runs). What heal may touch is decided from the superblocks, never from names:

- a partition whose md superblock (``mdadm --examine --export``) carries the running ESP array's
  UUID, and nothing else;
- that nothing holds (an array that assembled it on its own, device-mapper);
- whose event count is not higher than the array's: a member with newer writes than the running
  array is someone's decision (which copy is right), never overwritten automatically.

Each goes back with ``--re-add``, else ``--add`` (a full copy: seconds for an ESP), and heal waits
for md's recovery, so the line it adds to the history (:mod:`.history`) says what is true.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from esp_mirror_plugin.errors import BadInput
from esp_mirror_plugin.pipeline import naming
from esp_mirror_plugin.pipeline.profiles import load_profile
from esp_mirror_plugin.pipeline.record import Record
from esp_mirror_plugin.pipeline.steps import AddMember, Command, Step, WaitForSync
from esp_mirror_plugin.system.discovery import HostView
from esp_mirror_plugin.system.nvram import BootEntry
from esp_mirror_plugin.system.runner import CommandFailed, Runner
from esp_mirror_plugin.upkeep.mirror import ArrayState, read_array

NO_SUPERBLOCK = "No md superblock detected"
REASONS = {"boot": "at boot", "hot-plug": "on hot-plug", "hand": "by hand"}


@dataclass(frozen=True)
class Returning:
    """A partition that carries a member of our array and is not in it."""

    node: str
    disk: str
    events: int


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


def start_steps(devices: tuple[str, ...], record: Record, mounted: bool) -> tuple[Step, ...]:
    """What mdadm's last-resort timer would have run, and the mount that waited for it."""
    steps: list[Step] = [
        Command(("mdadm", "--run", device), why="the array waits for a member that is not there: it runs without it")
        for device in devices
    ]
    if not mounted:
        steps.append(Command(("mount", record.mountpoint), why="fstab's ESP line, which waited for the array"))
    return tuple(steps)


def examine(runner: Runner, node: str) -> dict[str, str] | None:
    """The md superblock of ``node`` (``--examine --export``), None when it has none.

    :raises BadInput: it cannot be read: "cannot tell" is never "no superblock".
    """
    try:
        result = runner.run(("mdadm", "--examine", "--export", node), ok=(0, 1))
    except CommandFailed as exc:
        raise BadInput(f"cannot read the md superblock of {node} ({exc.stderr_line}): run esp-mirror as root") from None
    if result.returncode == 1:
        if NO_SUPERBLOCK in result.stderr:
            return None
        line = (result.stderr.strip().splitlines() or ["mdadm --examine failed"])[-1]
        raise BadInput(f"cannot read the md superblock of {node} ({line}): run esp-mirror as root")
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)


def _events(info: dict[str, str], node: str) -> int:
    try:
        return int(info["MD_EVENTS"])
    except (KeyError, ValueError):
        raise BadInput(
            f"mdadm --examine --export {node} shows no event count: is mdadm 3.x or later installed?"
        ) from None


def _partitions(host: HostView, device: str | None) -> list[str]:
    """Kernel names of the partitions to look at: all, or the one given."""
    if device is not None:
        name = os.path.basename(host.realpath(device))
        if not host.exists(f"/sys/class/block/{name}/partition"):
            raise BadInput(f"{device} is not a partition: give the partition that came back (e.g. /dev/sdb1)")
        return [name]
    return [n for n in host.listdir("/sys/class/block") if host.exists(f"/sys/class/block/{n}/partition")]


def find(runner: Runner, host: HostView, array: ArrayState, device: str | None = None) -> HealPlan:
    """What heal does for ``array``: the partitions of ours to take back, and those it leaves out."""
    ours = naming.mdadm_uuid(array.uuid)
    active = next((m for m in array.members if m.active), None)
    if active is None:
        raise BadInput(f"{array.device} has no active member to copy from: see `esp-mirror status`")
    array_events = _events(examine(runner, active.node) or {}, active.node)
    members = {os.path.basename(m.node) for m in array.members}
    add: list[Returning] = []
    left_out: list[str] = []
    for name in _partitions(host, device):
        if name in members:
            continue
        node = f"/dev/{name}"
        info = examine(runner, node)
        if info is None or naming.mdadm_uuid(info.get("MD_UUID", "")) != ours:
            continue  # not ours: another array's member, or no md at all
        disk = "/dev/" + os.path.basename(os.path.dirname(host.realpath(f"/sys/class/block/{name}")))
        holders = host.listdir(f"/sys/class/block/{name}/holders")
        events = _events(info, node)
        if holders:
            left_out.append(
                f"{node} carries a member of {array.device} but {', '.join(holders)} holds it: stop that "
                f"(`mdadm --stop /dev/{holders[0]}` if it is an array), then run `esp-mirror heal`"
            )
        elif events > array_events:
            left_out.append(
                f"{node} ({disk}) has newer writes than {array.device} (events {events} > {array_events}) "
                "and is not overwritten automatically: to keep the running array's copy, run "
                f"`mdadm {array.device} --add {node}`"
            )
        else:
            add.append(Returning(node, disk, events))
    return HealPlan(array, tuple(add), tuple(left_out))


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
