"""An apply that was killed at any step continues when run again: each step's "is it done?" looks
at what the kernel and the disks say (tests/vm/test_interrupted.py kills real runs in a guest).

The machine is ``two_disks``; each test leaves it the way a killed apply would.
"""

from __future__ import annotations

import io

import pytest
from conftest import FakeHost, json_commands, starting
from test_idempotency import build_members, finish, plan_of

from esp_mirror_plugin.errors import StepFailed
from esp_mirror_plugin.pipeline import fat
from esp_mirror_plugin.pipeline.execute import Applier
from esp_mirror_plugin.system.recording import RecordingRunner
from esp_mirror_plugin.system.runner import Result

MKFS = fat.mkfs("/dev/md/esp", 512 * 1024 * 1024, 512, "ESP", "932D8E71")


def kinds(plan: dict, group: str) -> list[str]:
    steps = next(g for g in plan["groups"] if g["name"] == group)["steps"]
    return [" ".join(s["argv"][:2]) if s["kind"] == "command" else s["kind"] for s in steps]


def test_a_create_that_reached_one_member_only_is_made_again_on_both(two_disks):
    """Killed inside mdadm --create: sda1 carries the array's superblock, sdb1 none, no FAT."""
    first = plan_of(two_disks)
    build_members(two_disks, first, inner_fs=False)
    two_disks.disks["/dev/sdb"].partitions[0].probe.clear()
    again = plan_of(two_disks)
    assert again["array"]["action"] == "create" and again["array"]["uuid"] == first["array"]["uuid"]
    cmds = json_commands(again)
    assert ("wipefs", "--all", "/dev/sda1", "/dev/sdb1") in cmds
    assert len(starting(cmds, "mdadm", "--create")) == 1 and len(starting(cmds, "mkfs.vfat")) == 1


def test_a_half_made_array_that_holds_a_fat_is_never_made_again(two_disks):
    first = plan_of(two_disks)
    build_members(two_disks, first, inner_fs=True)
    two_disks.disks["/dev/sdb"].partitions[0].probe.clear()
    outcome = two_disks.cli("plan", *two_disks.args())
    assert outcome.code == 2 and "are not members of the existing ESP array" in outcome.error


def test_members_whose_array_was_never_started_are_assembled_and_checked(two_disks):
    first = plan_of(two_disks)
    build_members(two_disks, first, inner_fs=True)
    again = plan_of(two_disks)
    assert again["array"]["action"] == "assemble"
    assert kinds(again, "post_format")[:3] == ["mdadm --assemble", "settle", "ensure-fat"]


@pytest.mark.parametrize("detail_answers", [False, True], ids=["detail-fails", "detail-answers"])
def test_an_inactive_array_holding_the_members_is_stopped_first(two_disks, detail_answers):
    """udev's incremental assembly (or a killed run) left /dev/md/esp inactive on the members.
    mdadm --detail may answer for such an array (an mdadm --create killed 0.3 s in, in the VM:
    the run again stopped on md's missing sync_action before)."""
    first = plan_of(two_disks)
    build_members(two_disks, first, inner_fs=True, holders=("md127",))
    md = two_disks.sysroot / "sys/block/md127/md"
    if detail_answers:
        two_disks.add_array("/dev/md/esp", "md127", uuid=first["array"]["uuid"], members=("/dev/sda1", "/dev/sdb1"))
        (md / "sync_action").unlink()  # only a running array has one
    else:
        two_disks.link("/dev/md/esp", "/dev/md127")
        (two_disks.sysroot / "dev/md127").touch()
        md.mkdir(parents=True)
        two_disks.fail(("mdadm", "--detail", "--export", "/dev/md/esp"), 1, "mdadm: cannot open /dev/md/esp\n")
    (md / "array_state").write_text("inactive\n")
    again = plan_of(two_disks)
    post = json_commands(again, "post_format")
    assert post[:2] == [("mdadm", "--stop", "/dev/md/esp"), starting(post, "mdadm", "--assemble")[0]]


def test_an_inactive_array_a_create_left_before_any_superblock_is_stopped_and_made_again(two_disks):
    """Killed inside mdadm --create before it wrote a superblock: /dev/md/esp names an md device
    that never started, and the members carry nothing."""
    first = plan_of(two_disks)
    build_members(two_disks, first, inner_fs=False)
    for disk in ("/dev/sda", "/dev/sdb"):
        two_disks.disks[disk].partitions[0].probe.clear()
    two_disks.link("/dev/md/esp", "/dev/md127")
    (two_disks.sysroot / "dev/md127").touch()
    md = two_disks.sysroot / "sys/block/md127/md"
    md.mkdir(parents=True)
    (md / "array_state").write_text("clear\n")
    again = plan_of(two_disks)
    post = json_commands(again, "post_format")
    assert post[0] == ("mdadm", "--stop", "/dev/md/esp") and post[1][:2] == ("mdadm", "--create")


def post_format_waits(plan: dict) -> list[dict]:
    steps = [step for g in plan["groups"] if g["name"] == "post_format" for step in g["steps"]]
    return [step for step in steps if step["kind"] == "wait-for-sync"]


@pytest.mark.parametrize(
    ("sync_action", "resync_start", "waits"),
    [
        ("resync", "1024", True),  # the resync runs: an interrupted run did not wait for it
        # a power cut during the resync: the array, assembled again, stays read-auto with the
        # resync owed, and md shows "idle" meanwhile (found in tests/vm/test_interrupted.py)
        ("idle", "1024", True),
        ("idle", "none", False),
    ],
)
def test_a_resync_an_interrupted_run_did_not_wait_for_is_waited_for(two_disks, sync_action, resync_start, waits):
    first = plan_of(two_disks)
    build_members(two_disks, first, inner_fs=True, holders=("md127",))
    two_disks.add_array("/dev/md/esp", "md127", uuid=first["array"]["uuid"], members=("/dev/sda1", "/dev/sdb1"),
                        fs={"TYPE": "vfat", "UUID": first["filesystem"]["uuid"]})  # fmt: skip
    md = two_disks.sysroot / "sys/block/md127/md"
    (md / "sync_action").write_text(f"{sync_action}\n")
    (md / "resync_start").write_text(f"{resync_start}\n")
    again = plan_of(two_disks)
    assert again["array"]["action"] == "keep"
    assert [s["work"] for s in post_format_waits(again)] == (["its resync"] if waits else [])
    tools = [c[:2] for c in json_commands(again, "post_format")]
    assert ("mdadm", "--readwrite") not in tools and ("mdadm", "--wait") not in tools  # the wait does both


def test_an_array_whose_sync_state_cannot_be_read_is_not_taken_for_idle(two_disks):
    first = plan_of(two_disks)
    build_members(two_disks, first, inner_fs=True, holders=("md127",))
    two_disks.add_array("/dev/md/esp", "md127", uuid=first["array"]["uuid"], members=("/dev/sda1", "/dev/sdb1"))
    (two_disks.sysroot / "sys/block/md127/md/sync_action").unlink()
    outcome = two_disks.cli("apply", "--yes", *two_disks.args())
    assert outcome.code == 2
    assert outcome.error.startswith("cannot read the array /dev/md/esp (cannot read /sys/block/md127/md/sync_action")


def test_members_assembled_again_are_waited_for_after_the_mount(two_disks):
    first = plan_of(two_disks)
    build_members(two_disks, first, inner_fs=True)
    again = plan_of(two_disks)
    assert starting(json_commands(again, "post_format"), "mdadm", "--assemble")
    kinds = [s["kind"] for g in again["groups"] if g["name"] == "post_format" for s in g["steps"]]
    assert kinds.index("wait-for-sync") > kinds.index("command")  # after the assemble
    assert [s["work"] for s in post_format_waits(again)] == ["its resync"]
    assert [s["work"] for s in post_format_waits(first)] == ["its resync"]  # a new array's first resync too


@pytest.mark.parametrize(("array_state", "woken"), [("read-auto", True), ("clean", False)])
def test_waiting_on_a_read_auto_array_makes_it_writable_so_md_starts(tmp_path, array_state, woken):
    from esp_mirror_plugin.pipeline.steps import WaitForSync

    md = tmp_path / "sys/block/md127/md"
    md.mkdir(parents=True)
    (tmp_path / "dev/md").mkdir(parents=True)
    (tmp_path / "dev/md127").touch()
    (tmp_path / "dev/md/esp").symlink_to("../md127")
    (md / "array_state").write_text(f"{array_state}\n")
    (md / "sync_completed").write_text("none\n")
    actions = iter(["resync\n", "idle\n"])

    def sleep(seconds: float) -> None:
        (md / "sync_action").write_text(next(actions))

    sleep(0)
    runner = RecordingRunner(responders=[lambda argv: Result(argv, 0)])
    Applier(runner, io.StringIO(), host=FakeHost(tmp_path, set()), sleep=sleep)._apply(
        WaitForSync("/dev/md/esp", why="w"), "post_format"
    )
    assert (("mdadm", "--readwrite", "/dev/md/esp") in runner.calls) is woken


# -- a FAT that mkfs did not finish ---------------------------------------------------------------


def ensure(responses: dict[tuple[str, ...], Result]) -> tuple[RecordingRunner, io.StringIO, bool]:
    runner = RecordingRunner(responders=[lambda argv: responses.get(argv) or Result(argv, 0)])
    out = io.StringIO()
    changed = Applier(runner, out)._apply(fat.ensure("/dev/md/esp", MKFS), "post_format")
    return runner, out, changed


FSCK = ("fsck.fat", "-n", "/dev/md/esp")
MDIR = ("mdir", "-/", "-b", "-i", "/dev/md/esp", "::/")
HALF_MADE = "fsck.fat 4.2 (2021-01-31)\nFATs differ but appear to be intact.\nFree cluster summary uninitialized\n"


def test_a_clean_fat_is_left_as_it_is():
    runner, _, changed = ensure({FSCK: Result(FSCK, 0, "fsck.fat 4.2\n/dev/md/esp: 3 files, 10/130000 clusters\n")})
    assert (runner.calls, changed) == ([FSCK], False)


def test_a_damaged_fat_without_files_is_made_again():
    runner, out, changed = ensure(
        {FSCK: Result(FSCK, 1, HALF_MADE), MDIR: Result(MDIR, 1, "", "mdir: Cannot initialize '::'\n")}
    )
    assert runner.calls == [FSCK, MDIR, MKFS.argv] and changed
    assert "a half-made FAT (FATs differ but appear to be intact.) and no files: made again" in out.getvalue()


def test_a_fat_that_cannot_even_be_checked_and_lists_nothing_is_made_again():
    runner, _, _ = ensure(
        {FSCK: Result(FSCK, 2, "", "fsck.fat: Logical sector size is zero.\n"), MDIR: Result(MDIR, 1)}
    )
    assert runner.calls == [FSCK, MDIR, MKFS.argv]


def test_a_damaged_fat_with_files_is_never_made_again_and_the_fix_is_named():
    with pytest.raises(StepFailed) as failure:
        ensure({FSCK: Result(FSCK, 1, HALF_MADE), MDIR: Result(MDIR, 0, "::/EFI/\n::/EFI/debian/\n")})
    assert failure.value.detail == (
        "the FAT on /dev/md/esp is damaged (FATs differ but appear to be intact.) and holds 2 files or "
        "directories, so it is not made again: repair it with `fsck.fat -a /dev/md/esp` (or copy the files off "
        "and remove its FAT with `wipefs --all /dev/md/esp`), then run the same esp-mirror command again"
    )


def test_the_plan_shows_the_check_with_the_mkfs_it_may_run(two_disks):
    first = plan_of(two_disks)
    build_members(two_disks, first, inner_fs=True)
    text = two_disks.cli("plan", *two_disks.args()).out
    assert "fsck.fat -n /dev/md/esp; when it finds damage and the FAT holds no files: mkfs.vfat -F 32" in text


def test_a_fresh_apply_makes_the_fat_without_checking_one(two_disks):
    assert "ensure-fat" not in kinds(plan_of(two_disks), "post_format")


def test_a_mounted_fat_is_in_use_and_not_checked_again(two_disks):
    """fsck.fat -n of a mounted FAT reads what the kernel has not written yet ("Reclaimed ...
    unused clusters"): the second apply on a finished mirror must not take that for damage."""
    finish(two_disks, plan_of(two_disks))
    again = plan_of(two_disks)
    assert again["array"]["action"] == "keep"
    assert "ensure-fat" not in kinds(again, "post_format")
    assert starting(json_commands(again), "fsck.fat") == []
