"""What a plan says apply would change: ``would_change`` is the Applier's own "is it done already?",
so ``plan --json`` (and ``--dry-run --json`` of the upkeep commands) can tell beforehand whether
apply changes anything, and ``apply --json`` reports what it did."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from conftest import FakeHost

from esp_mirror_plugin.pipeline.execute import Applier, Now, counts, forecast, would_change
from esp_mirror_plugin.pipeline.steps import (
    AddMember,
    AttachImage,
    Command,
    CopyFile,
    EditBlock,
    EnsureFat,
    Group,
    InstallProgram,
    LoadDebconf,
    MakeDir,
    RemoveBlock,
    Settle,
    Var,
    VerifyFat,
    WaitForPartition,
    WaitForSync,
    WriteFile,
)
from esp_mirror_plugin.system import files
from esp_mirror_plugin.system.recording import RecordingRunner
from esp_mirror_plugin.system.runner import Result

MKFS = Command(("mkfs.vfat", "/dev/md/esp"), why="w")


def ran_changed(applier: Applier, step) -> bool | None:
    before = applier.changed
    applier.execute(Group("g", (step,)))
    return applier.changed > before


FILE_STEPS = {
    "write-file": lambda root: WriteFile(str(root / "etc/a.conf"), "a=1\n", why="w", root=str(root)),
    "install-program": lambda root: InstallProgram(str(root / "usr/sbin/x"), b"#!x\n", "x", why="w", root=str(root)),
    "edit-block": lambda root: EditBlock(str(root / "etc/fstab"), "UUID=1 /boot/efi vfat", why="w", root=str(root)),
    "copy-file": lambda root: CopyFile(str(root.parent / "payload.efi"), str(root / "efi/BOOTX64.EFI"), why="w"),
    "mkdir": lambda root: MakeDir(str(root / "boot/efi"), why="w", root=str(root)),
}


@pytest.mark.parametrize("kind", FILE_STEPS)
def test_a_file_step_would_change_exactly_when_the_applier_then_changes_something(tmp_path, kind):
    root = tmp_path / "target"
    (root / "etc").mkdir(parents=True)
    (root / "etc/fstab").write_text("UUID=0a1b / ext4 defaults 0 1\n")
    (tmp_path / "payload.efi").write_bytes(b"MZ payload\n")
    step = FILE_STEPS[kind](root)
    applier = Applier(RecordingRunner(), io.StringIO())

    assert would_change(step, applier.now) is True
    assert ran_changed(applier, step) is True
    assert would_change(step, applier.now) is False
    state = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert ran_changed(applier, step) is False
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == state  # told unchanged: nothing written


def test_a_block_given_back_would_change_exactly_when_the_applier_then_changes_the_file(tmp_path):
    fstab = tmp_path / "etc/fstab"
    fstab.parent.mkdir()
    fstab.write_text(
        "UUID=0a1b / ext4 defaults 0 1\n"
        f"{files.BEGIN}\nUUID=C982-96CB\t/boot/efi\tvfat\tumask=0077,nofail\t0\t2\n{files.END}\n"
        "UUID=5e6f none swap sw 0 0\n"
    )
    plain = "UUID=C982-96CB\t/boot/efi\tvfat\tumask=0077,nofail\t0\t2"
    step = RemoveBlock(str(fstab), why="w", keep=plain, root=str(tmp_path))
    applier = Applier(RecordingRunner(), io.StringIO())

    assert would_change(step, applier.now) is True
    assert ran_changed(applier, step) is True
    assert fstab.read_text() == f"UUID=0a1b / ext4 defaults 0 1\n{plain}\nUUID=5e6f none swap sw 0 0\n"
    assert (tmp_path / "etc/fstab~").exists()  # one backup, as every edit keeps
    assert would_change(step, applier.now) is False
    assert ran_changed(applier, step) is False


def test_a_file_left_empty_by_giving_back_its_block_goes_when_asked_and_a_missing_one_stays_missing(tmp_path):
    conf = tmp_path / "etc/kernel/install.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text(f"{files.BEGIN}\nlayout=bls\nBOOT_ROOT=/boot/efi\n{files.END}\n")
    step = RemoveBlock(str(conf), why="w", root=str(tmp_path), remove_empty=True)
    applier = Applier(RecordingRunner(), io.StringIO())

    assert would_change(step, applier.now) is True
    assert ran_changed(applier, step) is True
    assert not conf.exists()
    assert would_change(step, applier.now) is False
    assert ran_changed(applier, step) is False and not conf.exists()


def test_a_file_without_our_block_is_left_as_it_is(tmp_path):
    environment = tmp_path / "etc/environment"
    environment.parent.mkdir()
    environment.write_text("LANG=C.UTF-8\n")
    step = RemoveBlock(str(environment), why="w", root=str(tmp_path), remove_empty=True)
    assert would_change(step, Applier(RecordingRunner(), io.StringIO()).now) is False
    assert ran_changed(Applier(RecordingRunner(), io.StringIO()), step) is False
    assert environment.read_text() == "LANG=C.UTF-8\n"


def test_debconf_answers_already_in_the_database_are_not_loaded_again(tmp_path):
    database = tmp_path / "config.dat"
    step = LoadDebconf(
        Command(("debconf-set-selections", "/etc/esp-mirror/debconf.preseed"), why="w"),
        (("grub2/update_nvram", "false"),),
        str(database),
        why="w",
    )
    runner = RecordingRunner(responders=[lambda argv: Result(argv, 0)])
    applier = Applier(runner, io.StringIO())
    database.write_text("Name: grub2/update_nvram\nTemplate: grub2/update_nvram\nValue: true\n")
    assert would_change(step, applier.now) is True
    assert ran_changed(applier, step) is True and len(runner.calls) == 1

    database.write_text("Name: grub2/update_nvram\nTemplate: grub2/update_nvram\nValue: false\n")
    assert would_change(step, applier.now) is False
    assert ran_changed(applier, step) is False and len(runner.calls) == 1


def test_a_partition_node_that_is_there_is_not_waited_for_and_a_loop_devices_is_told_while_apply_runs():
    there = WaitForPartition("/dev/sda", 1, "/dev/sda1", why="w")
    loop = WaitForPartition(Var("LOOP_1"), 1, Var("LOOP_1") / "p1", why="w")
    runner = RecordingRunner()
    applier = Applier(runner, io.StringIO(), exists=lambda path: path in ("/dev/sda1", "/dev/loop3p1"))
    assert would_change(there, applier.now) is False
    assert would_change(loop, applier.now) is None  # no loop device is attached while planning
    applier.bindings["LOOP_1"] = "/dev/loop3"
    assert would_change(loop, applier.now) is False
    assert ran_changed(applier, there) is False and runner.calls == []


def test_a_finished_recovery_is_nothing_to_wait_for_and_one_that_runs_is(tmp_path):
    md = tmp_path / "sys/block/md127/md"
    (md / "dev-vdb1").mkdir(parents=True)
    (tmp_path / "dev/md").mkdir(parents=True)
    (tmp_path / "dev/md127").touch()
    (tmp_path / "dev/md/esp").symlink_to("../md127")
    for name, value in (("sync_action", "idle"), ("sync_completed", "none"), ("array_state", "clean")):
        (md / name).write_text(f"{value}\n")
    (md / "dev-vdb1/state").write_text("in_sync\n")
    step = WaitForSync("/dev/md/esp", clean=True, why="w")
    applier = Applier(RecordingRunner(), io.StringIO(), host=FakeHost(tmp_path, set()), sleep=lambda s: None)
    assert would_change(step, applier.now) is False
    assert ran_changed(applier, step) is False

    (md / "dev-vdb1/state").write_text("spare\n")  # just added: md has not started its recovery
    assert would_change(step, applier.now) is True


def test_programs_always_count_a_udev_settle_never_and_probing_steps_are_told_while_apply_runs():
    now = Now(FakeHost(Path("/nonexistent"), set()), lambda path: False, {})
    assert would_change(MKFS, now) is True
    assert would_change(AddMember("/dev/md/esp", "/dev/vdb1", why="w"), now) is True
    assert would_change(Settle(why="w"), now) is False
    assert would_change(AttachImage("/images/a.img", "LOOP_1", why="w"), now) is None  # losetup --list decides
    assert would_change(EnsureFat("/dev/md/esp", MKFS, why="w"), now) is None  # fsck.fat -n decides
    assert would_change(VerifyFat("/dev/vdb1", why="w"), now) is False  # it only reads


def test_a_forecast_counts_and_leaves_what_it_cannot_read_undecided(tmp_path):
    (tmp_path / "etc/fstab").mkdir(parents=True)  # a directory where a file is edited: unreadable as text
    groups = [
        Group("one", (MKFS, Settle(why="w"))),
        Group("two", (EditBlock(str(tmp_path / "etc/fstab"), "x", why="w", root=str(tmp_path)),)),
    ]
    shown = forecast(groups, Applier(RecordingRunner(), io.StringIO()).now)
    assert [[s["would_change"] for s in g["steps"]] for g in shown] == [[True, False], [None]]
    assert shown[0]["steps"][0] == {**MKFS.to_json(), "would_change": True}
    assert counts(shown) == {"would_change": 1, "undecided": 1}


# -- on the command line --------------------------------------------------------------------------


def test_plan_json_tells_each_step_and_counts_them(two_disks):
    outcome = two_disks.cli("plan", "--json", *two_disks.args())
    assert outcome.code == 0, outcome.err
    plan = json.loads(outcome.out)
    steps = [s for g in plan["groups"] for s in g["steps"]]
    assert all(s["would_change"] is True for s in steps if s["kind"] == "command")
    assert all(s["would_change"] is False for s in steps if s["kind"] == "settle")
    assert plan["would_change"] == sum(s["would_change"] is True for s in steps) > 0
    assert plan["undecided"] == sum(s["would_change"] is None for s in steps)


def test_plan_json_carries_the_text_plan(two_disks):
    text = two_disks.cli("plan", *two_disks.args())
    plan = json.loads(two_disks.cli("plan", "--json", *two_disks.args()).out)
    assert plan["text"] == text.out


def test_apply_json_reports_the_plan_and_what_each_step_changed(images):
    plan = json.loads(images.cli("plan", "--json", *images.args()).out)

    outcome = images.cli("apply", "--yes", "--json", *images.args())

    assert (outcome.code, outcome.err) == (0, "")
    report = json.loads(outcome.out)  # nothing but the report on stdout
    assert (report["digest"], report["groups"], report["text"]) == (plan["digest"], plan["groups"], plan["text"])
    assert report["applied"] is True
    assert report["done"] == len(report["steps"]) == sum(len(g["steps"]) for g in plan["groups"])
    assert report["changed"] == sum(s["changed"] is True for s in report["steps"]) > 0
    assert report["steps"][0] == {
        "group": "setup",
        "step": "losetup --list --associated /images/a.img || losetup --find --show --partscan /images/a.img"
        "   # -> $LOOP_1",
        "changed": True,
    }
    assert report["log"][-1].startswith("esp-mirror apply: done in ")
    assert f"{report['done']} steps, {report['changed']} changed" in report["log"][-1]


def test_a_repeated_add_has_nothing_to_do_and_says_so_in_its_dry_run(mirror):
    """The disk is an in-sync member with its boot entry: the wait for its recovery finds nothing
    to wait for, and no entry is missing (what the Ansible member module relies on)."""
    outcome = mirror.cli("add", "--disk", "/dev/vda", "--dry-run", "--json")
    assert outcome.code == 0, outcome.err
    report = json.loads(outcome.out)
    assert (report["would_change"], report["undecided"], report["applied"]) == (0, 0, False)
    assert [s["kind"] for g in report["plan"] for s in g["steps"]] == ["wait-for-sync"]


def test_an_upkeep_command_carried_out_reports_how_many_steps_changed(mirror):
    mirror.delete_entry("0002")
    mirror.accept_changes()
    outcome = mirror.cli("entries", "--yes", "--json")
    assert outcome.code == 0, outcome.err
    report = json.loads(outcome.out)
    assert (report["applied"], report["would_change"], report["changed"]) == (True, 2, 2)
