"""Apply: the Applier runs exactly the planned steps, reports failures precisely, always cleans up."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from conftest import json_commands

from esp_mirror_plugin.errors import StepFailed
from esp_mirror_plugin.pipeline.execute import Applier
from esp_mirror_plugin.pipeline.steps import (
    Command,
    CopyFile,
    EditBlock,
    Group,
    MakeDir,
    Var,
    VerifyFat,
    WaitForPartition,
    WriteFile,
)
from esp_mirror_plugin.system.recording import RecordingRunner
from esp_mirror_plugin.system.runner import Result


class EnvRecordingRunner(RecordingRunner):
    """A RecordingRunner that also keeps the root and environment each command was given."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.contexts: list[tuple[str, dict]] = []

    def run(self, argv, *, root="/", env=None, timeout=None, ok=(0,)) -> Result:
        self.contexts.append((root, dict(env or {})))
        return super().run(argv, root=root, env=env, timeout=timeout, ok=ok)


def ok(argv):
    return Result(argv, 0)


def applier(runner, **kwargs) -> tuple[Applier, io.StringIO]:
    out = io.StringIO()
    return Applier(runner, out, **kwargs), out


# -- WaitForPartition --------------------------------------------------------------------------


def test_wait_for_partition_asks_nothing_when_the_node_is_there():
    runner = RecordingRunner()
    app, _ = applier(runner, exists=lambda path: path == "/dev/sda1", sleep=lambda s: None)
    app.execute(Group("pre_partition", (WaitForPartition("/dev/sda", 1, "/dev/sda1", why="w"),)))
    assert runner.calls == [] and (app.done, app.changed) == (1, 0)


def test_wait_for_partition_runs_partx_only_when_the_node_does_not_show_up():
    present: set[str] = set()
    naps: list[float] = []

    def partx(argv):
        if argv == ("partx", "--add", "--nr", "1", "/dev/loop3"):
            present.add("/dev/loop3p1")
            return Result(argv, 0)
        return None

    runner = RecordingRunner(responders=[partx])
    app, _ = applier(runner, exists=present.__contains__, sleep=naps.append, bindings={"LOOP_1": "/dev/loop3"})
    app.execute(
        Group("pre_partition", (WaitForPartition(Var("LOOP_1"), 1, Var("LOOP_1") / "p1", why="w", timeout=0.05),))
    )
    assert runner.calls == [("partx", "--add", "--nr", "1", "/dev/loop3")]
    assert naps and set(naps) == {0.1}  # it waited (through the injected sleep) before asking
    assert (app.done, app.changed) == (1, 1)


def test_wait_for_partition_gives_up_with_what_to_check():
    runner = RecordingRunner(responders=[ok])
    app, _ = applier(runner, exists=lambda path: False, sleep=lambda s: None)
    with pytest.raises(StepFailed) as failure:
        app.execute(Group("pre_partition", (WaitForPartition("/dev/sdb", 1, "/dev/sdb1", why="w", timeout=0.02),)))
    assert failure.value.group == "pre_partition"
    assert failure.value.detail == (
        "/dev/sdb1 did not appear within 0.02 s, even after partx --add; check `lsblk /dev/sdb` and dmesg"
    )
    assert runner.calls == [("partx", "--add", "--nr", "1", "/dev/sdb")]


# -- commands ----------------------------------------------------------------------------------


def test_a_failing_command_raises_step_failed_with_command_line_exit_code_and_stderr():
    create = ("mdadm", "--create", "/dev/md/esp", "--run", "--level=1", "/dev/sda1", "/dev/sdb1")
    runner = RecordingRunner()
    runner.script(create, returncode=1, stderr="mdadm: cannot open /dev/sda1: Device or resource busy\n")
    app, _ = applier(runner)
    with pytest.raises(StepFailed) as failure:
        app.execute(
            Group(
                "post_format",
                (Command(create, why="RAID1"), Command(("mkfs.vfat", "/dev/md/esp"), why="never reached")),
            )
        )
    assert (failure.value.group, failure.value.step) == ("post_format", " ".join(create))
    assert failure.value.detail == (
        f"command: {' '.join(create)}\nexit code: 1\nstderr: mdadm: cannot open /dev/sda1: Device or resource busy"
    )
    assert runner.calls == [create]


def test_a_missing_program_is_reported_as_not_installed():
    runner = RecordingRunner()
    runner.script(
        ("chroot", "/mnt", "dracut", "--regenerate-all", "--force"),
        returncode=127,
        stderr="chroot: failed to run command 'dracut': No such file or directory",
    )
    app, _ = applier(runner)
    with pytest.raises(StepFailed) as failure:
        app.execute(
            Group("initramfs_config", (Command(("dracut", "--regenerate-all", "--force"), root="/mnt", why="rebuild"),))
        )
    assert failure.value.detail.splitlines()[:2] == [
        "command: chroot /mnt dracut --regenerate-all --force",
        "exit code: 127 (dracut is not installed)",
    ]


def test_extra_ok_codes_are_accepted():
    runner = RecordingRunner()
    runner.script(("mdadm", "--wait", "/dev/md/esp"), returncode=1)
    app, _ = applier(runner)
    app.execute(Group("post_format", (Command(("mdadm", "--wait", "/dev/md/esp"), ok_codes=(0, 1), why="w"),)))
    assert app.done == 1


def test_cleanup_failures_are_warnings_and_the_rest_of_cleanup_still_runs():
    runner = RecordingRunner(responders=[ok])
    runner.script(("umount", "/mnt/boot/efi"), returncode=32, stderr="umount: /mnt/boot/efi: not mounted.")
    app, out = applier(runner)
    app.execute(
        Group(
            "cleanup",
            (
                Command(("umount", "/mnt/boot/efi"), why="u", cleanup=True),
                Command(("mdadm", "--stop", "/dev/md/esp"), why="s", cleanup=True),
            ),
        )
    )
    assert runner.calls == [("umount", "/mnt/boot/efi"), ("mdadm", "--stop", "/dev/md/esp")]
    assert out.getvalue().splitlines()[:2] == [
        "  [cleanup] umount /mnt/boot/efi",
        "  [cleanup]   not needed or failed (cleanup goes on): stderr: umount: /mnt/boot/efi: not mounted.",
    ]
    assert (app.done, app.changed) == (1, 1)


def test_a_bound_value_substitutes_into_later_commands():
    runner = RecordingRunner(responders=[ok])
    runner.script(("losetup", "--find", "--show", "--partscan", "/img/a.img"), stdout="/dev/loop7\n")
    app, _ = applier(runner)
    app.execute(
        Group(
            "setup",
            (
                Command(("losetup", "--find", "--show", "--partscan", "/img/a.img"), binds="LOOP_1", why="l"),
                Command(("sgdisk", "--new=1:2048:1050623", Var("LOOP_1")), why="p"),
                Command(("wipefs", "--all", Var("LOOP_1") / "p1"), why="w"),
            ),
        )
    )
    assert app.bindings == {"LOOP_1": "/dev/loop7"}
    assert runner.calls[1:] == [("sgdisk", "--new=1:2048:1050623", "/dev/loop7"), ("wipefs", "--all", "/dev/loop7p1")]


def test_environment_and_target_root_reach_the_runner():
    runner = EnvRecordingRunner(responders=[ok])
    app, _ = applier(runner)
    app.execute(
        Group(
            "bootloader",
            (
                Command(
                    ("bootctl", "install", "--esp-path=/boot/efi", "--no-variables"),
                    root="/mnt",
                    env=(("SYSTEMD_RELAX_ESP_CHECKS", "1"),),
                    why="b",
                ),
            ),
        )
    )
    assert runner.calls == [("chroot", "/mnt", "bootctl", "install", "--esp-path=/boot/efi", "--no-variables")]
    assert runner.contexts == [("/mnt", {"SYSTEMD_RELAX_ESP_CHECKS": "1"})]


def test_file_steps_report_changes_once_and_print_timed_progress(tmp_path):
    payload = tmp_path / "linux.efi"
    payload.write_bytes(b"MZ payload")
    esp = tmp_path / "esp"
    steps = (
        MakeDir(str(esp / "EFI/BOOT"), why="d"),
        CopyFile(str(payload), str(esp / "EFI/BOOT/BOOTX64.EFI"), why="c"),
        WriteFile(str(tmp_path / "etc/dracut.conf.d/90-esp-mirror.conf"), 'mdadmconf="yes"\n', why="w"),
        EditBlock(str(tmp_path / "etc/fstab"), "UUID=C982-96CB /boot/efi vfat umask=0077 0 2", why="e"),
    )
    first, out = applier(RecordingRunner())
    first.execute(Group("bootloader", steps))
    second, _ = applier(RecordingRunner())
    second.execute(Group("bootloader", steps))
    assert (first.done, first.changed, second.done, second.changed) == (4, 4, 4, 0)
    assert (esp / "EFI/BOOT/BOOTX64.EFI").read_bytes() == b"MZ payload"
    lines = out.getvalue().splitlines()
    assert lines[0] == f"  [bootloader] mkdir -p {esp}/EFI/BOOT"
    assert re.fullmatch(r"  \[bootloader\]   done \(\d+\.\d s\)", lines[1])


# -- esp-mirror apply on image files -------------------------------------------------------------


def resolved(argv: tuple[str, ...], bindings: dict[str, str]) -> tuple[str, ...]:
    return tuple(re.sub(r'^"\$\{(\w+)\}(.*)"$', lambda m: bindings[m[1]] + m[2], a) for a in argv)


def test_apply_on_image_files_runs_exactly_the_planned_commands_in_order(images):
    plan = json.loads(images.cli("plan", "--json", *images.args()).out)
    loops = {"LOOP_1": f"{images.root}/dev/loop1", "LOOP_2": f"{images.root}/dev/loop2"}

    outcome = images.cli("apply", "--yes", *images.args())

    assert outcome.code == 0, outcome.err
    changing = [c for c in outcome.calls if c[0] not in ("blkid", "sfdisk")]
    attach = [
        call
        for image in ("/images/a.img", "/images/b.img")
        for call in (
            ("losetup", "--list", "--noheadings", "--output", "NAME", "--associated", image),  # none attached yet
            ("losetup", "--find", "--show", "--partscan", image),
        )
    ]
    assert changing[:4] == attach
    assert changing[4:] == [resolved(c, loops) for c in json_commands(plan)]
    assert [g["name"] for g in plan["groups"]] == [
        "notes",
        "setup",
        "pre_partition",
        "post_format",
        "initramfs_config",
        "bootloader",
        "installed-system",
        "cleanup",
    ]
    assert changing[-2:] == [("losetup", "--detach", loops["LOOP_1"]), ("losetup", "--detach", loops["LOOP_2"])]
    assert not any(c[0] == "efibootmgr" for c in outcome.calls)  # image files are not this machine's disks
    fstab = (images.target / "etc/fstab").read_text()
    assert fstab.endswith(
        f"UUID={plan['filesystem']['uuid']}\t/boot/efi\tvfat\t"
        "umask=0077,nofail,x-systemd.device-timeout=45s\t0\t2\n# END esp-mirror\n"
    )
    assert (images.target / "etc/mdadm/mdadm.conf").read_text().splitlines()[1] == (
        f"ARRAY /dev/md/esp metadata=1.0 UUID={plan['array']['uuid']} name=any:esp"
    )
    assert outcome.out.splitlines()[-1].startswith("esp-mirror apply: done in ")
    assert outcome.out.splitlines()[-1].endswith(
        f"/dev/md/esp mirrored on /images/a.img, /images/b.img, mounted at {images.target}/boot/efi"
    )


def test_apply_failing_in_post_format_still_cleans_up_and_says_rerun_continues(images):
    images.fail(("mdadm", "--create"), 1, "mdadm: cannot open /dev/loop1p1: Device or resource busy\n")
    loops = {"LOOP_1": f"{images.root}/dev/loop1", "LOOP_2": f"{images.root}/dev/loop2"}

    outcome = images.cli("apply", "--yes", *images.args())

    assert outcome.code == 1
    [create] = [c for c in outcome.calls if c[:2] == ("mdadm", "--create")]
    line = " ".join(create)
    head, detail = outcome.err.split("\n", 1)
    assert head.startswith("esp-mirror: error: [post_format] step failed: mdadm --create /dev/md/esp --run ")
    assert head.endswith('"${LOOP_1}p1" "${LOOP_2}p1"')
    assert detail == (
        f"command: {line}\nexit code: 1\n"
        f"stderr: mdadm: cannot open /dev/loop1p1: Device or resource busy\n"
        "Nothing after this step was done. Fix the cause and run the same `esp-mirror apply` again: "
        "it continues from here.\n"
    )
    after = outcome.calls[outcome.calls.index(create) + 1 :]
    target = str(images.target)
    assert after == [
        ("umount", f"{target}/dev"),
        ("umount", f"{target}/sys"),
        ("umount", f"{target}/proc"),
        ("umount", f"{target}/boot/efi"),
        ("mdadm", "--stop", "/dev/md/esp"),
        ("losetup", "--detach", loops["LOOP_1"]),
        ("losetup", "--detach", loops["LOOP_2"]),
    ]
    assert not any(c[0] == "mkfs.vfat" for c in outcome.calls)


def test_apply_failing_to_attach_the_second_image_detaches_the_first_and_exits_1(images):
    images.fail(
        ("losetup", "--find", "--show", "--partscan", "/images/b.img"),
        1,
        "losetup: /images/b.img: failed to set up loop device: No such device\n",
    )
    outcome = images.cli("apply", "--yes", *images.args())
    assert outcome.code == 1
    assert outcome.err.startswith(
        "esp-mirror: error: [setup] step failed: losetup --list --associated /images/b.img || "
        "losetup --find --show --partscan /images/b.img"
    )
    assert outcome.calls[-1] == ("losetup", "--detach", f"{images.root}/dev/loop1")  # LOOP_2 never existed
    assert '  [cleanup] losetup --detach "${LOOP_2}"\n  [cleanup]   not needed or failed' in outcome.out


def test_apply_prints_each_step_with_its_group(images):
    outcome = images.cli("apply", "--yes", *images.args())
    assert outcome.code == 0, outcome.err
    assert (
        "  [setup] losetup --list --associated /images/a.img || losetup --find --show --partscan /images/a.img"
        "   # -> $LOOP_1\n" in outcome.out
    )
    assert '  [pre_partition] wait for "${LOOP_1}p1"' in outcome.out
    assert "  [post_format] mkfs.vfat -F 32 -S 512 -s 8 -n ESP" in outcome.out
    assert Path(images.root / "dev/loop1p1").exists()  # sgdisk's partition appeared; no partx was needed
    assert not any(c[0] == "partx" for c in outcome.calls)


def test_an_image_an_interrupted_run_left_attached_keeps_its_loop_device(images):
    """A run killed after losetup left /images/a.img on a loop device (maybe with the array
    running on it): the re-run uses that one, never a second loop device on the same file."""
    left = f"{images.root}/dev/loop9"
    images.runner.responders.insert(
        0,
        lambda argv: (
            Result(argv, 0, f"{left}\n") if argv[:2] == ("losetup", "--list") and argv[-1] == "/images/a.img" else None
        ),
    )
    outcome = images.cli("apply", "--yes", *images.args())
    assert outcome.code == 0, outcome.err
    assert ("losetup", "--find", "--show", "--partscan", "/images/a.img") not in outcome.calls
    assert next(c for c in outcome.calls if c[:2] == ("sgdisk", "--new=1:2048:1050623"))[-1] == left


# -- a FAT that must be whole (release) ---------------------------------------------------------------

FSCK_OK = "fsck.fat 4.2 (2021-01-31)\n/dev/vdb1: 6 files, 5174/130796 clusters\n"
DAMAGED = "/EFI/BOOT/BOOTX64.EFI  Contains a free cluster (1234). Assuming EOF."


def test_verify_fat_reads_and_changes_nothing_when_the_fat_is_whole():
    runner = RecordingRunner()
    runner.script(("fsck.fat", "-n", "/dev/vdb1"), FSCK_OK)
    out = io.StringIO()
    applier = Applier(runner, out)

    applier.execute(Group("release", (VerifyFat("/dev/vdb1", why="w"),)))

    assert (runner.calls, applier.changed) == ([("fsck.fat", "-n", "/dev/vdb1")], 0)
    assert "  [release]   fsck.fat -n found no damage on /dev/vdb1\n" in out.getvalue()


@pytest.mark.parametrize(
    ("code", "stdout", "found"),
    [(1, FSCK_OK.replace("/dev/vdb1:", f"{DAMAGED}\n/dev/vdb1:"), DAMAGED), (4, "", "open: No such device")],
    ids=["damaged", "unreadable"],
)
def test_verify_fat_stops_the_run_on_damage_naming_the_repair(code, stdout, found):
    runner = RecordingRunner()
    runner.script(
        ("fsck.fat", "-n", "/dev/vdb1"), stdout, returncode=code, stderr="open: No such device\n" if code == 4 else ""
    )

    with pytest.raises(StepFailed) as failure:
        Applier(runner, io.StringIO()).execute(Group("release", (VerifyFat("/dev/vdb1", why="w"),)))

    assert failure.value.detail == (
        f"the FAT on /dev/vdb1 is damaged ({found}): repair it with `fsck.fat -a /dev/vdb1`, then run the same "
        "esp-mirror command again"
    )
