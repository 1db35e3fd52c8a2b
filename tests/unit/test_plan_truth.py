"""The plan tells the truth: what cannot be read is said, a reviewed plan binds apply, an
installer can use the hooks one by one, writes stay inside the target, and one esp-mirror runs
at a time. (The refusals themselves are in test_bad_input.py.)"""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path

import pytest
from conftest import KVER, FakeHost, Machine, assert_only_read, commands

from esp_mirror_plugin import cli, hookimpl, host
from esp_mirror_plugin.cli import install as cli_install
from esp_mirror_plugin.errors import BadInput, ExitCode
from esp_mirror_plugin.pipeline.context import prepare
from esp_mirror_plugin.pipeline.execute import Applier, PlanRecorder
from esp_mirror_plugin.pipeline.request import Request
from esp_mirror_plugin.pipeline.steps import CopyFile, EditBlock, Group, WriteFile
from esp_mirror_plugin.system import files, lock
from esp_mirror_plugin.system.recording import RecordingRunner
from esp_mirror_plugin.system.runner import CommandFailed

# -- a plan by a user who cannot read the disks -------------------------------------------------


def test_a_plan_by_a_user_lists_the_disks_it_could_not_read_and_apply_would_read_them_again(two_disks, monkeypatch):
    two_disks.host.unreadable.add("/dev/sdb")
    monkeypatch.setattr(cli, "is_root", lambda: False)

    outcome = two_disks.cli("plan", *two_disks.args())
    raw = json.loads(two_disks.cli("plan", "--json", *two_disks.args()).out)

    assert outcome.code == 0, outcome.err
    assert (
        "# note: UNVERIFIED: could not read disk /dev/sdb (Permission denied). This plan takes them as empty; "
        "apply, which runs as root, reads them again and refuses what is not safe"
    ) in outcome.out
    assert raw["unverified"] == ["disk /dev/sdb (Permission denied)"]
    assert ("blkid", "-p", "-o", "export", "/dev/sdb") not in outcome.calls  # never probed as if it were blank
    assert_only_read(outcome.calls)


def test_a_users_plan_cannot_be_applied_by_its_digest_when_root_sees_more(two_disks, monkeypatch):
    two_disks.host.unreadable.add("/dev/sdb")
    monkeypatch.setattr(cli, "is_root", lambda: False)
    unverified = json.loads(two_disks.cli("plan", "--json", *two_disks.args()).out)["digest"]
    monkeypatch.setattr(cli, "is_root", lambda: True)
    two_disks.host.unreadable.clear()
    verified = json.loads(two_disks.cli("plan", "--json", *two_disks.args()).out)["digest"]
    assert unverified is None and verified  # no digest at all: apply, reading everything, never makes it


def test_a_users_plan_says_when_the_boot_entries_could_not_be_read(two_disks, monkeypatch):
    two_disks.fail(("efibootmgr", "-v"), 2, "efibootmgr: EFI variables are not supported on this system.\n")
    monkeypatch.setattr(cli, "is_root", lambda: False)
    plan = json.loads(two_disks.cli("plan", "--json", *two_disks.args()).out)
    assert plan["unverified"] == [
        "the firmware's boot entries (efibootmgr -v) (efibootmgr: EFI variables are not supported on this system.)"
    ]


def test_status_with_an_unreadable_md_attribute_is_bad_input_not_healthy(mirror):
    (mirror.md / "mismatch_cnt").unlink()
    outcome = mirror.cli("status")
    assert (outcome.code, outcome.error) == (
        2,
        "cannot read /sys/block/md127/md/mismatch_cnt (No such file or directory) while reading /dev/md/esp: "
        "run esp-mirror as root",
    )


def test_the_runner_raises_for_an_exit_code_its_caller_did_not_accept():
    runner = RecordingRunner()
    runner.script(("blkid", "-p", "-o", "export", "/dev/sdz"), returncode=2, stderr="blkid: error: /dev/sdz: nope")
    assert runner.run(("blkid", "-p", "-o", "export", "/dev/sdz"), ok=(0, 2)).returncode == 2
    with pytest.raises(CommandFailed) as failure:
        runner.run(("blkid", "-p", "-o", "export", "/dev/sdz"))
    assert str(failure.value) == (
        "command: blkid -p -o export /dev/sdz\nexit code: 2\nstderr: blkid: error: /dev/sdz: nope"
    )


# -- an internal error is one line ---------------------------------------------------------------


def test_an_unexpected_exception_is_one_line_and_debug_shows_the_traceback(two_disks, monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(cli_install, "prepare", broken)
    outcome = two_disks.cli("plan", *two_disks.args())
    assert outcome.code == ExitCode.INTERNAL_ERROR == 70
    assert outcome.err == (
        "esp-mirror: internal error: ZeroDivisionError: division by zero (this is a bug; run "
        "again with --debug for the traceback and report it)\n"
    )
    debug = two_disks.cli("--debug", "plan", *two_disks.args())
    assert debug.code == 70 and "Traceback (most recent call last)" in debug.err and "in broken" in debug.err


# -- a reviewed plan binds apply -----------------------------------------------------------------


def test_apply_with_the_digest_of_the_reviewed_plan_runs_it(images):
    digest = json.loads(images.cli("plan", "--json", *images.args()).out)["digest"]
    outcome = images.cli("apply", "--yes", "--expect-plan", digest, *images.args())
    assert outcome.code == 0, outcome.err
    assert any(argv[:2] == ("mdadm", "--create") for argv in outcome.calls)


@pytest.mark.parametrize("change", ["fstab", "disk"])
def test_apply_refuses_a_digest_when_the_machine_changed_since_the_plan(two_disks, change):
    digest = json.loads(two_disks.cli("plan", "--json", *two_disks.args(), "--no-nvram").out)["digest"]
    if change == "fstab":
        with open(two_disks.target / "etc/fstab", "a") as fstab:
            fstab.write("tmpfs /tmp tmpfs defaults 0 0\n")
    else:
        two_disks.add_partition(two_disks.disks["/dev/sdb"], 1, 2048, 4096)
    before = two_disks.target_state()

    outcome = two_disks.cli(
        "apply",
        "--yes",
        "--expect-plan",
        digest,
        *two_disks.args(),
        "--no-nvram",
        *(["--wipe"] if change == "disk" else []),
    )

    assert outcome.code == 2
    assert outcome.error.startswith(f"the plan is no longer the one with digest {digest} (now ")
    assert outcome.error.endswith(
        "): the disks, the boot entries or a file it edits changed since, or the options differ from the plan's; "
        "review a new `esp-mirror plan` and apply that"
    )
    assert_only_read(outcome.calls)
    assert two_disks.target_state() == before


def test_the_digest_is_the_same_for_the_same_machine_and_request(two_disks):
    plans = [json.loads(two_disks.cli("plan", "--json", *two_disks.args()).out) for _ in range(2)]
    assert plans[0]["digest"] == plans[1]["digest"]
    text = two_disks.cli("plan", *two_disks.args()).out
    assert f"# digest {plans[0]['digest']} (apply --expect-plan takes it)" in text


# -- an installer uses the hooks one by one -------------------------------------------------------


def installer_machine(machine: Machine, profile: str = "alpine") -> tuple[Machine, Request]:
    """Two image files and an EMPTY target: what an installer has before it installs anything."""
    machine.add_image("a.img")
    machine.add_image("b.img")
    empty = machine.root / "installing"
    empty.mkdir()
    request = Request(disks=("/images/a.img", "/images/b.img"), profile=profile, target=str(empty), arch="x86_64")
    return machine, request


def test_prepare_looks_at_nothing_in_an_empty_target_and_each_hook_reads_it_when_called(machine):
    machine, request = installer_machine(machine)
    target = Path(request.target)
    ctx = prepare(request, runner=machine.runner, host=machine.host)  # no kernel, no /etc yet: fine
    ctx.executor = recorder = PlanRecorder()
    pm = host.get_plugin_manager(load_entrypoints=False)

    (target / "lib/modules" / KVER).mkdir(parents=True)  # the installer installs the kernel ...
    (target / "etc/init.d").mkdir(parents=True)
    (target / "etc/init.d/mdadm-raid").write_text("#!/sbin/openrc-run\n")  # ... and mdadm
    machine.add_target_programs("mdadm", root=target)
    pm.hook.post_format(ctx=ctx)
    pm.hook.initramfs_config(ctx=ctx)

    regenerate = [argv for argv in commands(recorder.groups, "initramfs_config") if "mkinitfs" in argv]
    assert regenerate == [("chroot", str(target), "mkinitfs", "-b", "/", KVER)]


def test_grub_auto_picks_shim_when_the_installer_installed_it_after_prepare(machine):
    machine, request = installer_machine(machine, profile="debian")
    target = Path(request.target)
    ctx = prepare(request, runner=machine.runner, host=machine.host)
    ctx.executor = recorder = PlanRecorder()
    shim = target / "usr/lib/shim/shimx64.efi.signed"
    shim.parent.mkdir(parents=True)
    shim.write_bytes(b"MZ")
    host.get_plugin_manager(load_entrypoints=False).hook.bootloader(ctx=ctx)
    record = next(s for g in recorder.groups for s in g.steps if isinstance(s, WriteFile))
    assert "loader: \\EFI\\debian\\shimx64.efi" in record.content


def test_attached_sets_up_loop_devices_first_and_releases_everything_also_after_an_error(machine):
    machine, request = installer_machine(machine)
    machine.accept_changes()
    out = io.StringIO()
    ctx = prepare(request, runner=machine.runner, host=machine.host)
    ctx.executor = Applier(machine.runner, out, sleep=lambda s: None)

    with pytest.raises(RuntimeError, match="the installer's own step failed"), host.attached(ctx):
        host.get_plugin_manager(load_entrypoints=False).hook.pre_partition(ctx=ctx)
        raise RuntimeError("the installer's own step failed")

    calls = machine.runner.calls
    losetups = [c for c in calls if c[:2] == ("losetup", "--find")]
    detaches = [c for c in calls if c[:2] == ("losetup", "--detach")]
    assert [c[-1] for c in losetups] == ["/images/a.img", "/images/b.img"]
    assert calls.index(losetups[-1]) < next(i for i, c in enumerate(calls) if c[0] == "sgdisk")
    assert len(detaches) == 2 and calls.index(detaches[0]) > next(i for i, c in enumerate(calls) if c[0] == "wipefs")
    assert ("mdadm", "--stop", "/dev/md/esp") in calls


def test_bind_mounts_come_right_before_the_first_command_in_the_target_and_are_undone(machine):
    machine, request = installer_machine(machine, profile="debian")
    target = Path(request.target)
    ctx = prepare(request, runner=machine.runner, host=machine.host)
    ctx.executor = recorder = PlanRecorder()
    pm = host.get_plugin_manager(load_entrypoints=False)
    with host.attached(ctx):
        pm.hook.pre_partition(ctx=ctx)
        pm.hook.post_format(ctx=ctx)  # debian: nothing runs in the target here
        assert not any(argv[:2] == ("mount", "--bind") for argv in commands(recorder.groups))
        (target / "lib/modules" / KVER).mkdir(parents=True)  # the installer installed the system
        machine.add_target_programs("mdadm", root=target)
        pm.hook.initramfs_config(ctx=ctx)
    initramfs = [g for g in recorder.groups if g.name == "initramfs_config"]
    assert [type(s).__name__ for s in initramfs[0].steps][:6] == ["MakeDir", "Command"] * 3  # no /proc yet
    assert commands(recorder.groups, "initramfs_config")[:3] == [
        ("mount", "--bind", f"/{fs}", f"{target}/{fs}") for fs in ("proc", "sys", "dev")
    ]
    assert commands(recorder.groups, "cleanup")[:3] == [("umount", f"{target}/{fs}") for fs in ("dev", "sys", "proc")]


class Ordered:
    """A third-party plugin placing its bootloader steps before and after esp-mirror's."""

    @hookimpl(tryfirst=True)
    def bootloader(self, ctx):
        ctx.execute("site-firmware-before", (), ("check the firmware version first",))
        ctx.state["order"] = ["first"]

    class Last:
        @hookimpl(trylast=True)
        def bootloader(self, ctx):
            ctx.state["order"].append("last")
            ctx.execute("site-inventory-after", (), ("record the new boot entries in the inventory",))


def test_tryfirst_and_trylast_place_a_plugins_hook_around_esp_mirrors(two_disks):
    request = Request(disks=("/dev/sda", "/dev/sdb"), target=str(two_disks.target), arch="x86_64")
    ctx = prepare(request, runner=two_disks.runner, host=two_disks.host)
    pm = host.get_plugin_manager(load_entrypoints=False)
    pm.register(Ordered.Last())
    pm.register(Ordered())
    groups = [g.name for g in host.plan(ctx, pm)]
    assert groups[-5:] == [
        "site-firmware-before",
        "bootloader",
        "installed-system",
        "site-inventory-after",
        "cleanup",
    ]
    assert ctx.state["order"] == ["first", "last"]


# -- writes stay inside the target ------------------------------------------------------------------


def test_an_absolute_symlink_in_the_target_is_followed_inside_it_and_kept(tmp_path):
    target, host_etc = tmp_path / "target", tmp_path / "host-etc"
    (target / "etc/mdadm").mkdir(parents=True)
    host_etc.mkdir()
    (target / "etc/mdadm.conf.real").write_text("MAILADDR root\n")
    (target / "etc/mdadm/mdadm.conf").symlink_to("/etc/mdadm.conf.real")  # absolute: means the target's /etc
    (host_etc / "mdadm.conf.real").write_text("the host's own file\n")

    step = EditBlock(str(target / "etc/mdadm/mdadm.conf"), "ARRAY /dev/md/esp", why="w", root=str(target))
    Applier(RecordingRunner(), io.StringIO()).execute(Group("post_format", (step,)))

    assert (target / "etc/mdadm/mdadm.conf").is_symlink()
    assert "ARRAY /dev/md/esp" in (target / "etc/mdadm.conf.real").read_text()
    assert (host_etc / "mdadm.conf.real").read_text() == "the host's own file\n"


def test_dot_dot_never_climbs_above_the_target_root(tmp_path):
    (tmp_path / "target/etc").mkdir(parents=True)
    (tmp_path / "target/etc/fstab").symlink_to("../../../../outside")
    assert files.resolve_in_root(str(tmp_path / "target"), "etc/fstab") == tmp_path / "target/outside"


def test_a_symlink_loop_in_the_target_is_bad_input_before_anything_runs(two_disks):
    fstab = two_disks.target / "etc/fstab"
    fstab.unlink()
    fstab.symlink_to("fstab")
    outcome = two_disks.cli("plan", *two_disks.args())
    assert (outcome.code, outcome.error) == (
        2,
        f"{two_disks.target}/etc/fstab: too many levels of symbolic links: fix the symbolic links on that path",
    )


def test_a_new_file_gets_the_mode_asked_for_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        files.write_atomic(tmp_path / "timer", "x", mode=0o644)
        source = tmp_path / "payload.efi"
        source.write_bytes(b"MZ")
        Applier(RecordingRunner(), io.StringIO()).execute(
            Group(
                "bootloader",
                (CopyFile(str(source), str(tmp_path / "esp/BOOTX64.EFI"), why="w", root=str(tmp_path), mode=0o755),),
            )
        )
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "timer").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "esp/BOOTX64.EFI").stat().st_mode) == 0o755


def test_a_rewrite_keeps_mode_and_one_backup_syncs_the_directory_and_drops_stale_temporaries(tmp_path, monkeypatch):
    path = tmp_path / "fstab"
    path.write_text("old\n")
    path.chmod(0o600)
    (tmp_path / ".fstab.abc123.esp-mirror").write_text("half a write from a killed run")
    synced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))

    assert files.write_atomic(path, "new\n") is True

    assert (path.read_text(), stat.S_IMODE(path.stat().st_mode)) == ("new\n", 0o600)
    assert (tmp_path / "fstab~").read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fstab", "fstab~"]
    assert str(tmp_path) in synced  # the directory, after the rename


# -- one esp-mirror at a time --------------------------------------------------------------------


def test_a_second_run_waits_then_refuses_naming_the_holder(tmp_path):
    path = str(tmp_path / "esp-mirror.lock")
    clock = iter(range(0, 1000, 10))
    with lock.held("esp-mirror repair --source /dev/vda --yes", path=path):
        assert lock.holder(path).startswith(f"pid {os.getpid()}: esp-mirror repair --source /dev/vda --yes, since ")
        with (
            pytest.raises(BadInput) as refused,
            lock.held("esp-mirror check", path=path, wait=30, sleep=lambda s: None, clock=lambda: next(clock)),
        ):
            pass
    assert str(refused.value).startswith(f"another esp-mirror is running (pid {os.getpid()}: esp-mirror repair")
    assert str(refused.value).endswith(f"and still holds {path} after 30 s: let it finish, then run this again")
    assert lock.holder(path) is None
    with lock.held("esp-mirror check", path=path, wait=0):  # free again
        pass


def test_status_does_not_wait_but_says_who_is_changing_the_mirror(mirror):
    with lock.held("esp-mirror replace --old missing --new /dev/vdc --yes"):
        outcome = mirror.cli("status")
        report = json.loads(mirror.cli("status", "--json").out)
    assert outcome.code == 0
    assert "busy: pid " in outcome.out and "esp-mirror replace --old missing --new /dev/vdc --yes" in outcome.out
    assert "esp-mirror replace" in report["busy"]


def test_apply_holds_the_lock_while_it_runs(images):
    seen: list[str | None] = []

    def peek(argv):
        if argv[:2] == ("sgdisk", "--new=1:2048:1050623"):
            seen.append(lock.holder())

    images.runner.responders.insert(0, peek)
    outcome = images.cli("apply", "--yes", *images.args())
    assert outcome.code == 0, outcome.err
    assert len(seen) == 2 and all(h and "esp-mirror apply --yes --disk /images/a.img" in h for h in seen)
    assert lock.holder() is None


def test_waiting_for_a_resync_whose_state_cannot_be_read_fails_instead_of_reading_idle(tmp_path):
    from esp_mirror_plugin.errors import StepFailed
    from esp_mirror_plugin.pipeline.steps import WaitForSync

    sysroot = tmp_path / "host"
    (sysroot / "dev/md").mkdir(parents=True)
    (sysroot / "dev/md127").touch()
    (sysroot / "dev/md/esp").symlink_to("../md127")
    (sysroot / "sys/block/md127/md").mkdir(parents=True)  # no sync_action: md is not telling
    app = Applier(RecordingRunner(), io.StringIO(), host=FakeHost(sysroot, set()), sleep=lambda s: None)
    with pytest.raises(StepFailed) as failure:
        app.execute(Group("post_format", (WaitForSync("/dev/md/esp", why="w"),)))
    assert failure.value.detail == (
        "cannot read /sys/block/md127/md/sync_action (No such file or directory): is /dev/md/esp still running?"
    )
