"""`esp-mirror repair`: rebuild every other member from a chosen source, after checking it.

Also the pieces it stands on: fsck.fat output that is not damage (fat.fsck_problems) and the
read-only comparison of the members' files (compare.copy_member, differences, backup).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from pathlib import Path

import pytest
from conftest import (
    FAT_MTIME,
    FSCK_DIRTY,
    Mirror,
    assert_upkeep_only_read,
    fast_applier,
    guid_of,
    upkeep_changes,
)

from esp_mirror_plugin.errors import StepFailed
from esp_mirror_plugin.pipeline import fat
from esp_mirror_plugin.system.recording import RecordingRunner
from esp_mirror_plugin.system.runner import Result
from esp_mirror_plugin.upkeep import compare
from esp_mirror_plugin.upkeep.compare import Difference, FileInfo

FW_FILE = "EFI/FW.TXT"
FW_TEXT = b"written by the firmware, behind the back of md\n"
DAMAGE = "/EFI/BOOT/BOOTX64.EFI  Contains a free cluster (1234). Assuming EOF."


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def plan_commands(report: dict) -> list[tuple[str, ...]]:
    return [tuple(s["argv"]) for g in report["plan"] for s in g["steps"] if s["kind"] == "command"]


def repair_from_a(mirror: Mirror) -> list[tuple[str, ...]]:
    esp = mirror.esp
    return [
        ("umount", str(esp)),
        ("mdadm", "/dev/md/esp", "--fail", "/dev/vdb1", "--remove", "/dev/vdb1"),
        ("mdadm", "--zero-superblock", "/dev/vdb1"),
        ("mdadm", "/dev/md/esp", "--add", "/dev/vdb1"),
        ("mount", "-t", "vfat", "-o", "umask=0077", "/dev/md/esp", str(esp)),
        ("rm", "--", str(mirror.sysroot / "var/lib/esp-mirror/repair.json")),
    ]


# -- fsck.fat -n: what is damage --------------------------------------------------------------


def test_the_dirty_bit_of_a_mounted_fat_is_not_damage():
    assert fat.fsck_problems(FSCK_DIRTY.format(node="/dev/vda1")) == []


def test_a_clean_fat_has_no_problems():
    assert fat.fsck_problems("fsck.fat 4.2 (2021-01-31)\n/dev/vda1: 6 files, 5174/130796 clusters\n") == []


def test_clusters_no_file_references_are_not_damage():
    # a member read while its array is mounted, right after writes (found by the repair kill loop:
    # repair refused its source just after apply): every file is whole
    output = (
        "fsck.fat 4.2 (2021-01-31)\nReclaimed 329 unused clusters (168448 bytes).\n"
        "/dev/vda1: 9 files, 12/65516 clusters\n"
    )
    assert fat.fsck_problems(output) == []
    assert fat.fsck_problems("Reclaimed 1 unused cluster (512 bytes).\n") == []


def test_real_damage_is_kept_among_the_benign_lines():
    output = FSCK_DIRTY.format(node="/dev/vda1").replace("Leaving filesystem", f"{DAMAGE}\nLeaving filesystem")
    assert fat.fsck_problems(output) == [DAMAGE]


def test_a_backup_boot_sector_differing_elsewhere_than_the_dirty_bit_is_kept():
    output = FSCK_DIRTY.format(node="/dev/vda1").replace("  65:01/00", "  65:01/00\n  71:45/4e")
    assert fat.fsck_problems(output) == ["  71:45/4e"]


# -- compare: the members' files --------------------------------------------------------------


def info(data: bytes, mtime: float = FAT_MTIME) -> FileInfo:
    return FileInfo(len(data), mtime, hashlib.sha256(data).hexdigest())


def test_identical_trees_have_no_differences():
    tree = {"EFI/debian/grubx64.efi": info(b"MZ grub\n")}
    assert compare.differences({"/dev/vda1": tree, "/dev/vdb1": dict(tree)}) == []


def test_differences_are_by_content_not_by_time_and_name_missing_files():
    grub, other = b"MZ grub\n", b"MZ grub, patched\n"
    trees = {
        "/dev/vda1": {"EFI/debian/grubx64.efi": info(grub), "EFI/debian/grub.cfg": info(b"cfg", 1)},
        "/dev/vdb1": {
            "EFI/debian/grubx64.efi": info(other),
            "EFI/debian/grub.cfg": info(b"cfg", 2),
            FW_FILE: info(FW_TEXT),
        },
        "/dev/vdc1": {"EFI/debian/grubx64.efi": info(grub), "EFI/debian/grub.cfg": info(b"cfg", 3)},
    }

    assert compare.differences(trees) == [  # sorted by path; grub.cfg only differs in time
        Difference(FW_FILE, {"/dev/vda1": None, "/dev/vdb1": info(FW_TEXT), "/dev/vdc1": None}),
        Difference(
            "EFI/debian/grubx64.efi", {"/dev/vda1": info(grub), "/dev/vdb1": info(other), "/dev/vdc1": info(grub)}
        ),
    ]


def test_difference_json_gives_each_members_version_or_null():
    diff = Difference(FW_FILE, {"/dev/vda1": None, "/dev/vdb1": info(FW_TEXT)})
    assert diff.to_json() == {
        "path": FW_FILE,
        "members": {
            "/dev/vda1": None,
            "/dev/vdb1": {"size": 47, "mtime": FAT_MTIME, "sha256": hashlib.sha256(FW_TEXT).hexdigest()},
        },
    }


def test_backup_tars_each_other_members_versions_of_the_differing_files(tmp_path):
    copies = {}
    for node, files in {
        "/dev/vda1": {"EFI/debian/grubx64.efi": b"A"},
        "/dev/vdb1": {"EFI/debian/grubx64.efi": b"B", FW_FILE: FW_TEXT},
        "/dev/vdc1": {"EFI/debian/grubx64.efi": b"A"},
    }.items():
        copies[node] = tmp_path / "copies" / node[5:]
        for path, data in files.items():
            (copies[node] / path).parent.mkdir(parents=True, exist_ok=True)
            (copies[node] / path).write_bytes(data)
    diffs = [
        Difference(FW_FILE, {"/dev/vda1": None, "/dev/vdb1": info(FW_TEXT), "/dev/vdc1": None}),
        Difference(
            "EFI/debian/grubx64.efi", {"/dev/vda1": info(b"A"), "/dev/vdb1": info(b"B"), "/dev/vdc1": info(b"A")}
        ),
    ]

    written = compare.backup(copies, diffs, {"/dev/vda1"}, tmp_path / "backups", "20240101-120000")

    tar_b = tmp_path / "backups/repair-20240101-120000-vdb1.tar"
    tar_c = tmp_path / "backups/repair-20240101-120000-vdc1.tar"
    assert written == [tar_b, tar_c]  # the kept source gets none
    with tarfile.open(tar_b) as tar:
        assert sorted(tar.getnames()) == [FW_FILE, "EFI/debian/grubx64.efi"]
        assert tar.extractfile(FW_FILE).read() == FW_TEXT
    with tarfile.open(tar_c) as tar:  # C has no FW.TXT: nothing of it to keep
        assert tar.getnames() == ["EFI/debian/grubx64.efi"]


def test_backup_writes_nothing_for_a_member_without_versions_of_the_differing_files(tmp_path):
    diffs = [Difference(FW_FILE, {"/dev/vda1": info(FW_TEXT), "/dev/vdb1": None})]
    copies = {"/dev/vda1": tmp_path / "vda1", "/dev/vdb1": tmp_path / "vdb1"}
    assert compare.backup(copies, diffs, {"/dev/vda1"}, tmp_path / "backups", "s") == []


class EnvRunner(RecordingRunner):
    """Records the environment each command was given, too."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.envs: list[dict[str, str]] = []

    def run(self, argv, *, root="/", env=None, timeout=None, ok=(0,)) -> Result:
        self.envs.append(dict(env or {}))
        return super().run(argv, root=root, env=env, timeout=timeout, ok=ok)


def test_copy_member_flushes_the_cache_lists_then_copies_everything_read_only(tmp_path):
    dest = tmp_path / "copies/vdb1"

    def mcopy(argv):
        if argv[0] == "mcopy":
            (Path(argv[-1]) / "EFI/debian").mkdir(parents=True)
            (Path(argv[-1]) / "EFI/debian/grubx64.efi").write_bytes(b"MZ grub\n")
            return Result(argv, 0)
        return None

    runner = EnvRunner(responders=[mcopy])
    runner.script(("blockdev", "--flushbufs", "/dev/vdb1"))
    runner.script(
        ("mdir", "-/", "-b", "-i", "/dev/vdb1", "::/"), "::/EFI/\n::/EFI/debian/\n::/EFI/debian/grubx64.efi\n"
    )

    files = compare.copy_member(runner, "/dev/vdb1", dest)

    assert runner.calls == [
        ("blockdev", "--flushbufs", "/dev/vdb1"),
        ("mdir", "-/", "-b", "-i", "/dev/vdb1", "::/"),
        ("mcopy", "-s", "-p", "-m", "-n", "-i", "/dev/vdb1", "::/*", f"{dest}/"),
    ]
    assert runner.envs[1:] == [{"MTOOLS_SKIP_CHECK": "1"}] * 2
    assert list(files) == ["EFI/debian/grubx64.efi"]
    assert (files["EFI/debian/grubx64.efi"].size, files["EFI/debian/grubx64.efi"].sha256) == (
        8,
        hashlib.sha256(b"MZ grub\n").hexdigest(),
    )


def test_an_empty_fat_is_an_empty_tree_not_an_error(tmp_path):
    runner = RecordingRunner()
    runner.script(("blockdev", "--flushbufs", "/dev/vdb1"))
    runner.script(("mdir", "-/", "-b", "-i", "/dev/vdb1", "::/"), returncode=1, stderr='mdir: File "::/" not found\n')

    assert compare.copy_member(runner, "/dev/vdb1", tmp_path / "vdb1") == {}
    assert not any(c[0] == "mcopy" for c in runner.calls)


def test_a_member_mtools_cannot_read_is_a_step_failure_with_the_command_and_its_stderr(tmp_path):
    runner = RecordingRunner()
    runner.script(("blockdev", "--flushbufs", "/dev/vdb1"))
    runner.script(
        ("mdir", "-/", "-b", "-i", "/dev/vdb1", "::/"),
        returncode=1,
        stderr="init :: non DOS media\nCannot initialize '::'\n",
    )

    with pytest.raises(StepFailed) as failure:
        compare.copy_member(runner, "/dev/vdb1", tmp_path / "vdb1")

    assert (failure.value.group, failure.value.step) == ("compare", "read the files of /dev/vdb1")
    assert failure.value.detail == (
        "command: mdir -/ -b -i /dev/vdb1 ::/\nexit code: 1\nstderr: init :: non DOS media\nCannot initialize '::'"
    )


def test_a_cache_that_cannot_be_flushed_stops_the_comparison(tmp_path):
    runner = RecordingRunner()
    runner.script(
        ("blockdev", "--flushbufs", "/dev/vdb1"),
        returncode=1,
        stderr="blockdev: cannot open /dev/vdb1: No such device or address\n",
    )
    with pytest.raises(StepFailed) as failure:
        compare.copy_member(runner, "/dev/vdb1", tmp_path / "vdb1")
    assert (failure.value.step, failure.value.detail) == (
        "blockdev --flushbufs /dev/vdb1",
        "command: blockdev --flushbufs /dev/vdb1\nexit code: 1\n"
        "stderr: blockdev: cannot open /dev/vdb1: No such device or address",
    )
    assert runner.calls == [("blockdev", "--flushbufs", "/dev/vdb1")]


# -- the repair plan --------------------------------------------------------------------------


def test_repair_from_a_with_the_esp_mounted_plans_a_full_rebuild_of_b(mirror):
    outcome = mirror.cli("repair", "--source", "/dev/vda", "--dry-run", "--json")

    assert outcome.code == 0, outcome.err
    report = json.loads(outcome.out)
    [group] = report["plan"]
    assert group["name"] == "repair"
    assert group["notes"] == ["source: /dev/vda1 on /dev/vda; fsck.fat -n found no damage"]
    kinds = ["write-file"] + ["command"] * 3 + ["write-file", "command", "wait-for-sync"] + ["command"] * 2
    assert [s["kind"] for s in group["steps"]] == kinds
    assert plan_commands(report) == repair_from_a(mirror)
    assert group["steps"][6] == {
        "kind": "wait-for-sync",
        "device": "/dev/md/esp",
        "clean": True,
        "work": "recovery",
        "why": "the recovery copies the whole source member",
        "would_change": False,  # told from md as it is before the members are taken out
    }
    assert {k: report[k] for k in ("applied", "source", "differences", "backups")} == {
        "applied": False,
        "source": "/dev/vda1",
        "differences": [],
        "backups": [],
    }
    assert_upkeep_only_read(outcome.calls)


def test_repair_dry_run_prints_the_plan_after_the_comparison(mirror):
    journal = journal_of(mirror)

    def journal_text(phase: str) -> str:
        return (
            '{\n  "source": "/dev/vda1",\n  "rebuild": [\n    "/dev/vdb1"\n  ],\n'
            f'  "mountpoint": "/boot/efi",\n  "phase": "{phase}"\n}}\n'
        )

    def indent(text: str) -> str:
        return "".join(f"    | {line}\n" for line in text.splitlines())

    outcome = mirror.cli("repair", "--source", "/dev/vda", "--dry-run")

    assert outcome.code == 0
    assert outcome.out == (
        "member files: identical\n"
        "# == repair ==\n"
        "# note: source: /dev/vda1 on /dev/vda; fsck.fat -n found no damage\n"
        "# what this repair is doing, so that running it again after an interruption finishes it\n"
        f"write {journal} (mode 0644):\n"
        f"{indent(journal_text('take-out'))}\n"
        "# nothing may write to the ESP while members are rebuilt\n"
        f"umount {mirror.esp}\n"
        "# take /dev/vdb1 out; /dev/vda1 is the only copy left\n"
        "mdadm /dev/md/esp --fail /dev/vdb1 --remove /dev/vdb1\n"
        "# /dev/vdb1 comes back as a new member: a full copy, no bitmap shortcut\n"
        "mdadm --zero-superblock /dev/vdb1\n"
        "# every member to rebuild is out\n"
        f"write {journal} (mode 0644):\n"
        f"{indent(journal_text('rebuild'))}\n"
        "# /dev/vdb1 is rebuilt from /dev/vda1\n"
        "mdadm /dev/md/esp --add /dev/vdb1\n"
        "# the recovery copies the whole source member\n"
        "wait for /dev/md/esp to finish recovery (progress shown; mdadm --readwrite if read-auto)\n"
        "# the ESP back in place\n"
        f"mount -t vfat -o umask=0077 /dev/md/esp {mirror.esp}\n"
        "# the repair is finished\n"
        f"rm -- {journal}\n"
    )


def test_repair_reads_every_member_then_checks_the_source_fat_before_planning(mirror):
    outcome = mirror.cli("repair", "--source", "/dev/vdb1", "--dry-run")

    reads = [c for c in outcome.calls if c[0] in ("blockdev", "mdir", "mcopy", "fsck.fat")]
    work = mirror.root / "run/esp-mirror"
    assert [c[:-1] if c[0] == "mcopy" else c for c in reads] == [
        ("blockdev", "--flushbufs", "/dev/vda1"),
        ("mdir", "-/", "-b", "-i", "/dev/vda1", "::/"),
        ("mcopy", "-s", "-p", "-m", "-n", "-i", "/dev/vda1", "::/*"),
        ("blockdev", "--flushbufs", "/dev/vdb1"),
        ("mdir", "-/", "-b", "-i", "/dev/vdb1", "::/"),
        ("mcopy", "-s", "-p", "-m", "-n", "-i", "/dev/vdb1", "::/*"),
        ("blockdev", "--flushbufs", "/dev/vdb1"),
        ("fsck.fat", "-n", "/dev/vdb1"),
    ]
    assert all(c[-1].startswith(f"{work}/repair-") for c in reads if c[0] == "mcopy")
    assert list(work.iterdir()) == []  # the copies are gone afterwards


def test_repair_of_three_members_takes_both_others_out_before_adding_them_back(mirror_of):
    mirror = mirror_of("vda", "vdb", "vdc")
    mirror.mountinfo = [line for line in mirror.mountinfo if " 9:127 " not in line]  # ESP not mounted
    mirror._write_proc()

    report = json.loads(mirror.cli("repair", "--source", "/dev/vdb", "--dry-run", "--json").out)

    assert plan_commands(report) == [  # nothing to unmount, nothing to mount back
        ("mdadm", "/dev/md/esp", "--fail", "/dev/vda1", "--remove", "/dev/vda1"),
        ("mdadm", "--zero-superblock", "/dev/vda1"),
        ("mdadm", "/dev/md/esp", "--fail", "/dev/vdc1", "--remove", "/dev/vdc1"),
        ("mdadm", "--zero-superblock", "/dev/vdc1"),
        ("mdadm", "/dev/md/esp", "--add", "/dev/vda1"),
        ("mdadm", "/dev/md/esp", "--add", "/dev/vdc1"),
        ("rm", "--", str(journal_of(mirror))),
    ]


# -- choosing the source ----------------------------------------------------------------------


def test_source_auto_is_the_disk_the_firmware_booted_from(mirror):
    mirror.boot(number="0002")  # as in the VM: efibootmgr -n <B>, then a firmware boot
    report = json.loads(mirror.cli("repair", "--source", "auto", "--dry-run", "--json").out)
    assert report["source"] == "/dev/vdb1"
    assert plan_commands(report)[1] == ("mdadm", "/dev/md/esp", "--fail", "/dev/vda1", "--remove", "/dev/vda1")


def test_source_auto_without_any_boot_information_is_refused_naming_source(mirror):
    outcome = mirror.cli("repair", "--source", "auto", "--yes")

    assert (outcome.code, outcome.error) == (
        2,
        "cannot tell which disk this boot came from (no LoaderDevicePartUUID, and BootCurrent is not an "
        "entry of ours): choose with --source DISK",
    )
    assert outcome.out == "member files: identical\n"  # what to choose from
    assert_upkeep_only_read(outcome.calls)


def test_a_source_that_is_not_a_member_is_refused(mirror):
    outcome = mirror.cli("repair", "--source", "/dev/vdc", "--yes")
    assert (outcome.code, outcome.error) == (
        2,
        "/dev/vdc is not a member of /dev/md/esp: pass one of its members, /dev/vda, /dev/vdb, to --source",
    )
    assert_upkeep_only_read(outcome.calls)


def test_a_member_that_is_not_in_sync_cannot_be_the_source(mirror):
    mirror.set_member("/dev/vdb1", "spare", 1)
    mirror.set_md(degraded=1, sync_action="recover", sync_completed="131072 / 1048448")
    outcome = mirror.cli("repair", "--source", "/dev/vdb", "--yes")
    assert (outcome.code, outcome.error) == (
        2,
        "/dev/vdb1 is spare, not an in-sync member: it cannot be the source; pass an in-sync member to "
        "--source (`esp-mirror status` shows each member's state)",
    )
    assert_upkeep_only_read(outcome.calls)


def test_source_auto_refuses_a_booted_member_that_is_not_in_sync(mirror):
    mirror.set_member("/dev/vdb1", "faulty", 1)
    mirror.set_md(degraded=1)
    mirror.boot(loader_partuuid=guid_of("vdb"))

    outcome = mirror.cli("repair", "--source", "auto", "--dry-run", "--json")

    assert (outcome.code, outcome.error) == (
        2,
        "/dev/vdb1 is faulty, not an in-sync member: it cannot be the source; pass an in-sync member to "
        "--source (`esp-mirror status` shows each member's state)",
    )


def test_a_damaged_source_fat_is_refused_and_nothing_is_changed(mirror):
    mirror.fsck["/dev/vda1"] = (1, FSCK_DIRTY.replace("Leaving filesystem", f"{DAMAGE}\nLeaving filesystem"))
    mirror.members["/dev/vdb1"][FW_FILE] = FW_TEXT
    mirror.accept_changes()  # whatever it tried would succeed
    backups = mirror.root / "backups"

    outcome = mirror.cli("repair", "--source", "/dev/vda", "--backup-dir", str(backups), "--yes")

    assert (outcome.code, outcome.error) == (
        2,
        f"the FAT on the source /dev/vda1 is damaged ({DAMAGE}): choose another --source, or repair it "
        "with fsck.fat first",
    )
    assert_upkeep_only_read(outcome.calls)
    assert not backups.exists()
    assert (mirror.member_nodes(), mirror.md_attr("degraded")) == (["/dev/vda1", "/dev/vdb1"], "0")


def test_the_dirty_bit_alone_does_not_stop_a_repair(mirror):
    mirror.fsck["/dev/vda1"] = (1, FSCK_DIRTY)
    outcome = mirror.cli("repair", "--source", "/dev/vda", "--dry-run")
    assert (outcome.code, outcome.err) == (0, "")


def test_a_source_fsck_cannot_read_is_refused(mirror):
    mirror.fsck["/dev/vda1"] = (4, "fsck.fat 4.2 (2021-01-31)\nopen: No such device or address\n")
    outcome = mirror.cli("repair", "--source", "/dev/vda", "--dry-run")
    assert (outcome.code, outcome.error) == (
        2,
        "fsck.fat cannot check the source /dev/vda1 (open: No such device or address): choose another "
        "--source, or repair it with fsck.fat first",
    )


# -- confirming, dry runs and carrying it out ---------------------------------------------------


def test_dry_run_changes_nothing_and_writes_no_backup(mirror):
    mirror.members["/dev/vdb1"][FW_FILE] = FW_TEXT
    backups = mirror.root / "backups"

    outcome = mirror.cli("repair", "--source", "/dev/vda", "--backup-dir", str(backups), "--dry-run", "--json")

    report = json.loads(outcome.out)
    assert report["plan"][0]["notes"][1] == (
        f"before any change, the other members' versions of 1 differing files are kept in a tar under {backups}"
    )
    assert (report["applied"], report["backups"]) == (False, [])
    assert_upkeep_only_read(outcome.calls)
    assert not backups.exists()


def test_repair_without_yes_and_without_a_terminal_is_refused(mirror):
    outcome = mirror.cli("repair", "--source", "/dev/vda")

    assert (outcome.code, outcome.error) == (
        2,
        "repair changes disks: pass --yes to confirm (there is no terminal to ask on), or --dry-run to only look",
    )
    assert "mdadm /dev/md/esp --fail /dev/vdb1 --remove /dev/vdb1" in outcome.out  # the plan was shown
    assert_upkeep_only_read(outcome.calls)


def test_repair_asks_on_a_terminal_and_does_nothing_unless_told_yes(mirror):
    outcome = mirror.cli("repair", "--source", "/dev/vda", stdin=Terminal("no\n"))
    assert outcome.code == 2
    assert outcome.out.endswith("Type 'yes' to carry out this plan: Nothing done.\n")
    assert_upkeep_only_read(outcome.calls)


@pytest.mark.parametrize("stdin", [io.StringIO(""), Terminal("no\n")], ids=["no-terminal", "answered-no"])
def test_a_repair_that_is_not_confirmed_writes_no_backup(mirror, stdin):
    mirror.members["/dev/vdb1"][FW_FILE] = FW_TEXT
    backups = mirror.root / "backups"

    outcome = mirror.cli("repair", "--source", "/dev/vda", "--backup-dir", str(backups), stdin=stdin)

    assert outcome.code == 2
    assert not backups.exists() or list(backups.iterdir()) == []


def test_repair_runs_exactly_the_planned_commands_and_leaves_a_healthy_mounted_mirror(mirror):
    mirror.accept_changes()
    planned = plan_commands(json.loads(mirror.cli("repair", "--source", "/dev/vda", "--dry-run", "--json").out))

    outcome = mirror.cli("repair", "--source", "/dev/vda", "--yes")

    assert (outcome.code, outcome.err) == (0, "")
    assert upkeep_changes(outcome.calls) == planned == repair_from_a(mirror)
    assert (
        "  [repair] wait for /dev/md/esp to finish recovery (progress shown; mdadm --readwrite if read-auto)\n"
        in outcome.out
    )
    status = json.loads(mirror.cli("status", "--json").out)
    assert (status["exit_code"], status["mount"]["device"]) == (0, "/dev/md127")


@pytest.mark.parametrize(("source", "backups"), [("a", ["vdb1"]), ("b", [])])
def test_a_file_written_to_one_member_is_repaired_from_the_chosen_source_and_kept(mirror, source, backups):
    """As tests/vm/test_upkeep.py: the firmware wrote EFI/FW.TXT to B only."""
    mirror.members["/dev/vdb1"][FW_FILE] = FW_TEXT
    mirror.accept_changes()
    a_before = dict(mirror.members["/dev/vda1"])
    backup_dir = mirror.root / "backups"

    outcome = mirror.cli("repair", "--source", f"/dev/vd{source}", "--backup-dir", str(backup_dir), "--yes", "--json")

    assert outcome.code == 0, outcome.err
    report = json.loads(outcome.out)
    assert (report["applied"], report["source"]) == (True, f"/dev/vd{source}1")
    assert report["differences"] == [
        {
            "path": FW_FILE,
            "members": {
                "/dev/vda1": None,
                "/dev/vdb1": {"size": len(FW_TEXT), "mtime": FAT_MTIME, "sha256": hashlib.sha256(FW_TEXT).hexdigest()},
            },
        }
    ]
    tars = [Path(b) for b in report["backups"]]
    assert [re.fullmatch(r"repair-\d{8}-\d{6}-(vd.1)\.tar", t.name)[1] for t in tars] == backups
    assert all(t.parent == backup_dir for t in tars)
    if tars:  # B's version is overwritten: it is kept, and the plan's notes say where
        with tarfile.open(tars[0]) as tar:
            assert tar.getnames() == [FW_FILE] and tar.extractfile(FW_FILE).read() == FW_TEXT
        assert report["backups"] == [str(tars[0])]
    after = mirror.members
    assert after["/dev/vda1"] == after["/dev/vdb1"] == ({**a_before, FW_FILE: FW_TEXT} if source == "b" else a_before)


def test_repair_text_output_names_each_differing_file_and_each_members_version(mirror):
    mirror.members["/dev/vdb1"][FW_FILE] = FW_TEXT
    outcome = mirror.cli("repair", "--source", "/dev/vdb", "--dry-run")
    sha = hashlib.sha256(FW_TEXT).hexdigest()[:12]
    assert outcome.out.startswith(
        "member files: 1 differ\n"
        "  EFI/FW.TXT\n"
        "    /dev/vda1: missing\n"
        f"    /dev/vdb1: 47 bytes, modified 2023-11-14 22:13:20 UTC, sha256 {sha}\n"
        "# == repair ==\n"
    )


def test_a_failing_step_stops_the_repair_and_reports_the_command(mirror):
    mirror.accept_changes()
    mirror.fail(
        ("mdadm", "/dev/md/esp", "--add"), 1, "mdadm: add new device failed for /dev/vdb1 as 2: Invalid argument\n"
    )

    outcome = mirror.cli("repair", "--source", "/dev/vda", "--yes")

    assert outcome.code == 1
    assert outcome.err.startswith(
        "esp-mirror: error: [repair] step failed: mdadm /dev/md/esp --add /dev/vdb1\n"
        "command: mdadm /dev/md/esp --add /dev/vdb1\nexit code: 1\n"
        "stderr: mdadm: add new device failed for /dev/vdb1 as 2: Invalid argument\n"
    )
    assert upkeep_changes(outcome.calls)[-1] == ("mdadm", "/dev/md/esp", "--add", "/dev/vdb1")  # no mount after it


def test_a_failed_repair_does_not_tell_the_user_to_rerun_apply(mirror):
    mirror.accept_changes()
    mirror.fail(("mdadm", "/dev/md/esp", "--add"), 1, "mdadm: add new device failed\n")

    outcome = mirror.cli("repair", "--source", "/dev/vda", "--yes")

    assert outcome.code == 1
    assert "esp-mirror apply" not in outcome.err


def test_repair_on_a_degraded_mirror_never_leaves_the_esp_unmounted(mirror, monkeypatch):
    fast_applier(mirror, monkeypatch)  # the wait runs on a fake clock
    mirror.take_out("/dev/vdb1")
    mirror.accept_changes()

    outcome = mirror.cli("repair", "--source", "/dev/vda", "--yes")

    assert any(f" {mirror.esp} " in line for line in mirror.mountinfo), (outcome.code, outcome.err)


# -- an interrupted repair --------------------------------------------------------------------


def journal_of(mirror: Mirror) -> Path:
    return mirror.sysroot / "var/lib/esp-mirror/repair.json"


def killed_after_taking_b_out(mirror: Mirror) -> None:
    """What `repair --source /dev/vda` leaves when killed right after `--fail --remove /dev/vdb1`."""
    journal = journal_of(mirror)
    journal.parent.mkdir(parents=True, exist_ok=True)
    journal.write_text(
        json.dumps({"source": "/dev/vda1", "rebuild": ["/dev/vdb1"], "mountpoint": mirror.esp, "phase": "take-out"})
    )
    mirror.mountinfo = [line for line in mirror.mountinfo if f" {mirror.esp} " not in line]
    mirror._write_proc()
    mirror.take_out("/dev/vdb1")


def test_a_repair_killed_after_taking_a_member_out_brings_it_back_and_mounts_the_esp_again(mirror):
    """Without the journal the re-run would see a one-member array with nothing to rebuild, and
    leave /dev/vdb1 out and the ESP unmounted for good."""
    killed_after_taking_b_out(mirror)
    mirror.accept_changes()

    outcome = mirror.cli("repair", "--source", "/dev/vda", "--yes")

    assert (outcome.code, outcome.err) == (0, "")
    assert upkeep_changes(outcome.calls) == [
        ("wipefs", "--all", "--types", "linux_raid_member", "/dev/vdb1"),  # zeroed or not: it comes back new
        ("mdadm", "/dev/md/esp", "--add", "/dev/vdb1"),
        ("mount", "-t", "vfat", "-o", "umask=0077", "/dev/md/esp", mirror.esp),
        ("rm", "--", str(journal_of(mirror))),
    ]
    assert "is finished from where it stopped" in outcome.out
    assert not journal_of(mirror).exists()
    status = json.loads(mirror.cli("status", "--json").out)
    assert (status["exit_code"], status["mount"]["device"]) == (0, "/dev/md127")


def test_a_repair_killed_during_the_recovery_only_waits_mounts_and_finishes(mirror):
    killed_after_taking_b_out(mirror)
    journal = json.loads(journal_of(mirror).read_text())
    journal_of(mirror).write_text(json.dumps({**journal, "phase": "rebuild"}))
    mirror.accept_changes()
    mirror.cli("repair", "--source", "/dev/vda", "--yes")  # adds vdb1 (the fake recovers at once)
    journal_of(mirror).write_text(json.dumps({**journal, "phase": "rebuild"}))
    mirror.mountinfo = [line for line in mirror.mountinfo if f" {mirror.esp} " not in line]
    mirror._write_proc()

    report = json.loads(mirror.cli("repair", "--source", "auto", "--dry-run", "--json").out)

    assert plan_commands(report) == [
        ("mount", "-t", "vfat", "-o", "umask=0077", "/dev/md/esp", mirror.esp),
        ("rm", "--", str(journal_of(mirror))),
    ]
    assert report["source"] == "/dev/vda1"  # the journal's, not the booted disk's


def test_an_interrupted_repair_cannot_be_finished_from_another_source(mirror_of):
    mirror = mirror_of("vda", "vdb", "vdc")
    killed_after_taking_b_out(mirror)

    outcome = mirror.cli("repair", "--source", "/dev/vdc", "--yes")

    assert outcome.code == 2
    assert outcome.err == (
        "esp-mirror: error: an interrupted repair from /dev/vda1 is not finished: run "
        "`esp-mirror repair --source /dev/vda` to finish it first\n"
    )
    assert_upkeep_only_read(outcome.calls)


def test_a_broken_journal_is_refused_with_the_file_to_remove(mirror):
    journal_of(mirror).parent.mkdir(parents=True, exist_ok=True)
    journal_of(mirror).write_text("{half")

    outcome = mirror.cli("repair", "--source", "/dev/vda", "--yes")

    assert outcome.code == 2
    assert outcome.err.startswith(
        f"esp-mirror: error: cannot read the journal of an interrupted repair {journal_of(mirror)} ("
    )
    assert outcome.err.endswith("then remove the file and run the repair again\n")
    assert_upkeep_only_read(outcome.calls)


def test_status_names_an_interrupted_repair_and_the_command_that_finishes_it(mirror):
    killed_after_taking_b_out(mirror)

    outcome = mirror.cli("status", "--json")

    assert outcome.code == 1
    problems = json.loads(outcome.out)["problems"]
    assert "a repair from /dev/vda1 was interrupted: run `esp-mirror repair --source auto`" in problems
