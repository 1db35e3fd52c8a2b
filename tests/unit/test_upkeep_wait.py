"""WaitForSync: the Applier waits for md's check or recovery, with progress lines, on an injected
clock (no real time passes) and md's sysfs seen through the host view."""

from __future__ import annotations

import io
import re

import pytest
from conftest import FakeClock, Mirror

from esp_mirror_plugin.errors import StepFailed
from esp_mirror_plugin.pipeline.execute import Applier
from esp_mirror_plugin.pipeline.steps import Group, WaitForSync
from esp_mirror_plugin.system.recording import RecordingRunner
from esp_mirror_plugin.system.runner import Result

RECOVERY = WaitForSync("/dev/md/esp", clean=True, why="recovery copies the ESP onto /dev/vdc1")
CHECK = WaitForSync("/dev/md/esp", why="the check reads the whole ESP")
DONE = re.compile(r"  \[(\w+)\]   done \(0\.\d s\)")
# nothing to wait for: the step changes nothing, and plan --json says so beforehand (would_change)
UNCHANGED = re.compile(r"  \[(\w+)\]   unchanged \(0\.\d s\)")


class Waiter:
    """An Applier on a fake clock whose sleeps call ``timeline(elapsed)`` to change md's sysfs."""

    def __init__(self, mirror: Mirror, timeline=lambda elapsed: None) -> None:
        self.out = io.StringIO()
        self.clock = FakeClock(on_sleep=timeline)
        self.applier = Applier(RecordingRunner(), self.out, host=mirror.host, clock=self.clock, sleep=self.clock.sleep)

    def run(self, step: WaitForSync, group: str) -> list[str]:
        try:
            self.applier.execute(Group(group, (step,)))
        finally:
            self.lines = self.out.getvalue().splitlines()
        return self.lines


def wait(mirror: Mirror, step: WaitForSync, group: str, timeline) -> tuple[Applier, FakeClock, list[str]]:
    waiter = Waiter(mirror, timeline)
    return waiter.applier, waiter.clock, waiter.run(step, group)


def test_a_check_is_waited_for_with_progress_every_two_seconds(mirror):
    mirror.set_md(array_state="active", sync_action="check", sync_completed="131072 / 1048448")

    def timeline(elapsed: float) -> None:
        if elapsed >= 4:
            mirror.set_md(array_state="clean", sync_action="idle", sync_completed="none")
        elif elapsed >= 2:
            mirror.set_md(sync_completed="524224 / 1048448")

    applier, clock, lines = wait(mirror, CHECK, "check", timeline)

    assert lines[:3] == [
        "  [check] wait for /dev/md/esp to finish its check (progress shown; mdadm --readwrite if read-auto)",
        "  [check]   check 13% (131072 / 1048448 sectors)",
        "  [check]   check 50% (524224 / 1048448 sectors)",
    ]
    assert DONE.fullmatch(lines[3]) and len(lines) == 4
    assert (clock.naps, clock.elapsed) == ([0.5] * 8, 4.0)
    assert (applier.done, applier.changed) == (1, 1)


def test_a_recovery_is_waited_for_until_every_member_is_in_sync(mirror):
    mirror.set_member("/dev/vdb1", "spare", None)  # after `mdadm --add`, before md starts the recovery
    mirror.set_md(degraded=1)

    def timeline(elapsed: float) -> None:
        if elapsed >= 5:
            mirror.set_md(sync_action="idle", sync_completed="none", degraded=0)
            mirror.set_member("/dev/vdb1", "in_sync", 1)
        elif elapsed >= 3:
            mirror.set_md(sync_completed="786336 / 1048448")
        elif elapsed >= 1:
            mirror.set_md(sync_action="recover", sync_completed="262112 / 1048448")

    _, clock, lines = wait(mirror, RECOVERY, "replace", timeline)

    assert lines[:4] == [
        "  [replace] wait for /dev/md/esp to finish recovery (progress shown; mdadm --readwrite if read-auto)",
        "  [replace]   waiting for md to start the recovery",
        "  [replace]   recover 25% (262112 / 1048448 sectors)",
        "  [replace]   recover 75% (786336 / 1048448 sectors)",
    ]
    assert DONE.fullmatch(lines[4]) and len(lines) == 5
    assert clock.elapsed == 5.0


def test_a_long_recovery_is_not_cut_short(mirror):
    mirror.take_out("/dev/vdb1")
    mirror.set_md(sync_action="recover", sync_completed="0 / 1048448")

    def timeline(elapsed: float) -> None:
        if elapsed >= 90:
            mirror.set_md(sync_action="idle", sync_completed="none", degraded=0)
        else:
            mirror.set_md(sync_completed=f"{int(1048448 * elapsed / 90)} / 1048448")

    _, clock, lines = wait(mirror, RECOVERY, "repair", timeline)

    assert clock.elapsed == 90.0
    assert lines[1] == "  [repair]   recover 0% (0 / 1048448 sectors)"
    assert lines[-2] == "  [repair]   recover 98% (1025149 / 1048448 sectors)"  # at 88 s
    assert len(lines) == 1 + 45 + 1  # one progress line per 2 s of the 90


def test_a_slot_nobody_fills_does_not_hold_up_the_wait(mirror):
    """A repair on a degraded mirror rebuilds the members it has; the empty slot stays empty."""
    mirror.take_out("/dev/vdb1")

    applier, clock, lines = wait(mirror, RECOVERY, "repair", lambda elapsed: None)

    assert UNCHANGED.fullmatch(lines[1]) and len(lines) == 2
    assert clock.elapsed == 0 and (applier.done, applier.changed) == (1, 0)


def test_a_member_not_in_sync_with_no_recovery_fails_after_30_s_saying_where_to_look(mirror):
    mirror.set_member("/dev/vdb1", "spare", None)  # added, and md never starts a recovery

    waiter = Waiter(mirror)
    with pytest.raises(StepFailed) as failure:
        waiter.run(RECOVERY, "replace")

    assert (failure.value.group, failure.value.step) == (
        "replace",
        "wait for /dev/md/esp to finish recovery (progress shown; mdadm --readwrite if read-auto)",
    )
    assert failure.value.detail == (
        "vdb1 still not in sync and no recovery runs: see /proc/mdstat and `mdadm --detail`"
    )
    assert waiter.lines[1:] == ["  [replace]   waiting for md to start the recovery"] * 16  # every 2 s
    assert waiter.clock.elapsed == 30.5


def test_waiting_for_a_check_does_not_wait_for_missing_members(mirror):
    mirror.take_out("/dev/vdb1")

    _, clock, lines = wait(mirror, CHECK, "check", lambda elapsed: None)

    assert clock.naps == [] and UNCHANGED.fullmatch(lines[1])


def test_the_wait_follows_the_array_link_to_its_kernel_name(mirror):
    mirror.set_md(sync_action="resync", sync_completed="1 / 2")
    other = mirror.sysroot / "sys/block/md126/md"
    other.mkdir(parents=True)
    (other / "sync_action").write_text("idle\n")  # another array, idle: must not be the one read

    def timeline(elapsed: float) -> None:
        mirror.set_md(sync_action="idle")

    _, clock, lines = wait(mirror, CHECK, "check", timeline)

    assert clock.naps == [0.5] and lines[1] == "  [check]   resync 50% (1 / 2 sectors)"


RESYNC = WaitForSync("/dev/md/esp", work="its resync", why="let the initial resync finish")


def test_a_read_auto_array_that_owes_its_resync_is_made_writable_and_waited_for(mirror):
    """After a power cut during the resync the array comes back read-auto: md shows "idle" and only
    resync_start tells that the members still differ (`mdadm --wait` waits for ever there)."""
    mirror.set_md(array_state="read-auto", sync_action="idle", sync_completed="none", resync_start="65536")

    def readwrite(argv):
        if argv == ("mdadm", "--readwrite", "/dev/md/esp"):
            mirror.set_md(array_state="active", sync_action="resync", sync_completed="65536 / 131072")
        return Result(argv, 0)

    def timeline(elapsed: float) -> None:
        if elapsed >= 3:
            mirror.set_md(array_state="clean", sync_action="idle", sync_completed="none", resync_start="none")

    waiter = Waiter(mirror, timeline)
    waiter.applier.runner = RecordingRunner(responders=[readwrite])
    lines = waiter.run(RESYNC, "post_format")

    assert waiter.applier.runner.calls == [("mdadm", "--readwrite", "/dev/md/esp")]
    assert lines[1:3] == [
        "  [post_format]   /dev/md/esp is read-auto: mdadm --readwrite starts md's work",
        "  [post_format]   resync 50% (65536 / 131072 sectors)",
    ]
    assert DONE.fullmatch(lines[-1]) and waiter.clock.elapsed == 3.0


def test_an_owed_resync_md_does_not_start_fails_after_30_s_naming_the_fix(mirror):
    mirror.set_md(array_state="clean", sync_action="idle", sync_completed="none", resync_start="65536")

    waiter = Waiter(mirror)
    with pytest.raises(StepFailed) as failure:
        waiter.run(RESYNC, "post_format")

    assert failure.value.detail == (
        "md owes /dev/md/esp a resync (from sector 65536) and does not start it (array state clean): "
        "see /proc/mdstat; `mdadm --readwrite /dev/md/esp` starts it on a read-auto array"
    )
    assert waiter.applier.runner.calls == []  # not read-auto: nothing to make writable
    assert waiter.clock.elapsed == 30.5


def test_an_array_in_sync_is_not_waited_for(mirror):
    mirror.set_md(array_state="clean", sync_action="idle", sync_completed="none", resync_start="none")
    _, clock, lines = wait(mirror, RESYNC, "post_format", lambda elapsed: None)
    assert UNCHANGED.fullmatch(lines[1]) and clock.elapsed == 0


def test_a_read_auto_array_that_stays_so_is_asked_again_every_5_s(mirror):
    mirror.set_md(array_state="read-auto", sync_action="idle", sync_completed="none", resync_start="0")
    calls = []

    def readwrite(argv):
        calls.append(argv)
        if len(calls) == 2:  # the first request did not take (exit 1: md says it is writable already)
            mirror.set_md(array_state="active", sync_action="resync", sync_completed="0 / 131072")
        return Result(argv, 0 if len(calls) == 2 else 1)

    def timeline(elapsed: float) -> None:
        if elapsed >= 8:
            mirror.set_md(array_state="clean", sync_action="idle", sync_completed="none", resync_start="none")

    waiter = Waiter(mirror, timeline)
    waiter.applier.runner = RecordingRunner(responders=[readwrite])
    lines = waiter.run(RESYNC, "post_format")

    assert calls == [("mdadm", "--readwrite", "/dev/md/esp")] * 2
    assert lines.count("  [post_format]   /dev/md/esp is read-auto: mdadm --readwrite starts md's work") == 2
    assert DONE.fullmatch(lines[-1]) and waiter.clock.elapsed == 8.0
