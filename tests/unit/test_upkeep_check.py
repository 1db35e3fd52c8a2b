"""`esp-mirror check`: md's consistency check, then the members' files compared (read-only)."""

from __future__ import annotations

import hashlib
import json
import re
import stat
import time

import pytest
from conftest import ESP_FILES, FAT_MTIME, fast_applier, upkeep_changes

from esp_mirror_plugin.upkeep import lastcheck

FW_FILE, FW_TEXT = "EFI/FW.TXT", b"written by the firmware, behind the back of md\n"


@pytest.fixture
def checked(mirror, monkeypatch):
    mirror.accept_changes()
    fast_applier(mirror, monkeypatch)
    return mirror


def test_check_of_a_healthy_mirror_runs_only_the_md_check_and_exits_0(checked):
    outcome = checked.cli("check")

    assert (outcome.code, outcome.err) == (0, "")
    assert upkeep_changes(outcome.calls) == [("sync",), ("mdadm", "--misc", "--action=check", "/dev/md/esp")]
    lines = outcome.out.splitlines()
    # the fake md finishes the check at once: the wait then finds nothing to wait for ("unchanged")
    assert [line for line in lines if not re.fullmatch(r"  \[check\]   (done|unchanged) \(.*", line)] == [
        "  [check] sync",
        "  [check] mdadm --misc --action=check /dev/md/esp",
        "  [check] wait for /dev/md/esp to finish its check (progress shown; mdadm --readwrite if read-auto)",
        lines[-2],
        "member files: identical",
    ]
    assert re.fullmatch(r"md check of /dev/md/esp: mismatch_cnt 0 \(\d+\.\d s\)", lines[-2])


def test_check_finds_a_file_written_to_one_member_and_exits_1(checked):
    checked.members["/dev/vdb1"][FW_FILE] = FW_TEXT
    checked.set_md(mismatch_cnt=8)

    outcome = checked.cli("check", "--json")

    assert outcome.code == 1
    report = json.loads(outcome.out)
    assert isinstance(report.pop("seconds"), float)
    assert report == {
        "mismatch_cnt": 8,
        "md_check": True,
        "members": ["/dev/vda1", "/dev/vdb1"],
        "differences": [
            {
                "path": FW_FILE,
                "members": {
                    "/dev/vda1": None,
                    "/dev/vdb1": {
                        "size": len(FW_TEXT),
                        "mtime": FAT_MTIME,
                        "sha256": hashlib.sha256(FW_TEXT).hexdigest(),
                    },
                },
            }
        ],
        "signature_differences": [],  # the loaders are not touched
    }
    assert list((checked.root / "run/esp-mirror").iterdir()) == []  # the copies are removed


def test_mismatched_sectors_alone_fail_the_check(checked):
    checked.set_md(mismatch_cnt=128)
    outcome = checked.cli("check")
    assert outcome.code == 1
    assert outcome.out.splitlines()[-1] == "member files: identical"


def test_an_empty_member_fat_differs_in_every_file(checked):
    checked.members["/dev/vdb1"] = {}

    report = json.loads(checked.cli("check", "--json").out)

    assert [(d["path"], d["members"]["/dev/vdb1"]) for d in report["differences"]] == [
        (path, None) for path in sorted(ESP_FILES)
    ]


def test_check_reads_only_usable_members(checked):
    checked.set_member("/dev/vdb1", "faulty", 1)
    checked.set_md(degraded=1)

    outcome = checked.cli("check", "--json")

    assert json.loads(outcome.out)["members"] == ["/dev/vda1"]
    assert not any("/dev/vdb1" in c for c in outcome.calls if c[0] in ("mdir", "mcopy"))


# -- --no-md-check: the distribution's md check runs on its own schedule -------------------------


def test_no_md_check_starts_no_md_check_and_reads_mismatch_cnt_as_md_left_it(checked):
    checked.set_md(mismatch_cnt=16)  # what the distribution's last checkarray run left

    outcome = checked.cli("check", "--no-md-check")

    assert upkeep_changes(outcome.calls) == [("sync",)]  # nothing is written to sync_action
    assert checked.md_attr("sync_action") == "idle"
    assert outcome.code == 1
    lines = outcome.out.splitlines()
    assert lines[0] == "  [check] sync"
    assert re.fullmatch(
        r"md check of /dev/md/esp: not started \(--no-md-check\); mismatch_cnt 16 as md's last check left it "
        r"\(\d+\.\d s\)",
        lines[-2],
    )
    assert lines[-1] == "member files: identical"


def test_no_md_check_still_compares_the_member_files(checked):
    checked.members["/dev/vdb1"][FW_FILE] = FW_TEXT

    outcome = checked.cli("check", "--no-md-check", "--json")

    report = json.loads(outcome.out)
    assert (outcome.code, report["md_check"], report["mismatch_cnt"]) == (1, False, 0)
    assert [d["path"] for d in report["differences"]] == [FW_FILE]


# -- the result is kept: /var/lib/esp-mirror/last-check.json -------------------------------------


def test_check_keeps_its_result_for_status_and_the_metrics(checked):
    checked.members["/dev/vdb1"][FW_FILE] = FW_TEXT
    checked.members["/dev/vdb1"]["EFI/debian/grub.cfg"] = b"changed on one member\n"
    before = time.time()

    assert checked.cli("check").code == 1

    path = checked.sysroot / lastcheck.PATH
    kept = json.loads(path.read_text())
    assert before <= kept.pop("timestamp") <= time.time()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", kept.pop("time"))
    assert kept == {"mismatch_cnt": 0, "files_differing": 2, "success": False, "md_check": True}
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_status_shows_the_last_check(checked):
    checked.set_md(mismatch_cnt=0)
    assert checked.cli("check", "--no-md-check").code == 0

    text, report = checked.cli("status"), json.loads(checked.cli("status", "--json").out)

    [line] = [line for line in text.out.splitlines() if line.startswith("last check: ")]
    assert re.fullmatch(
        r"last check: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC: clean, mismatch_cnt \(as the distribution's md check "
        r"left it\) 0, member files identical",
        line,
    )
    assert text.code == 0 and text.out.endswith("healthy\n")
    assert {k: v for k, v in report["last_check"].items() if k not in ("timestamp", "time")} == {
        "mismatch_cnt": 0,
        "files_differing": 0,
        "success": True,
        "md_check": False,
    }


def test_status_names_the_drift_the_last_check_found(checked):
    checked.members["/dev/vdb1"][FW_FILE] = FW_TEXT
    checked.set_md(mismatch_cnt=8)
    checked.cli("check")

    line = next(x for x in checked.cli("status").out.splitlines() if x.startswith("last check: "))

    assert line.endswith(": DRIFT, mismatch_cnt 8, 1 member files differ (`esp-mirror check` names them)")


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (
            '{"timestamp": "yesterday", "mismatch_cnt": 0, "files_differing": 0, "md_check": true}',
            "could not convert string to float: 'yesterday'",
        ),
        ('{"timestamp": 1, "mismatch_cnt": 0, "files_differing": 0}', "no 'md_check'"),
        ("[]", "list indices must be integers or slices, not str"),
    ],
    ids=["bad-timestamp", "missing-key", "not-an-object"],
)
def test_an_unreadable_last_check_is_a_problem_that_says_what_to_do(checked, content, why):
    path = checked.sysroot / lastcheck.PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)

    outcome = checked.cli("status", "--json")

    report = json.loads(outcome.out)
    assert (outcome.code, report["last_check"]) == (1, None)
    assert report["problems"] == [
        f"cannot read the last check's result {path} ({why}): "
        "remove it and run `esp-mirror check`, which writes it again"
    ]
